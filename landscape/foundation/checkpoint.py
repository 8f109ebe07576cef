"""Load a local Hugging Face causal-LM checkpoint directory safely, fingerprint it, save one.

Safety rules (docs/reference/checkpoints.md):
- weights are read from ``*.safetensors`` (single file or sharded with ``model.safetensors.index.json``);
  pickle weights (``pytorch_model*.bin``) are refused unless the caller passes ``trust_pickle=True``,
  and even then are read with ``torch.load(weights_only=True)`` (transformers' own loader);
- ``trust_remote_code`` is never set unless the caller asks;
- nothing is fetched from a hub: ``local_files_only=True`` everywhere.

A checkpoint's *fingerprint* is the SHA-256 of its config.json and weight files (names and bytes),
so results are keyed by content, not by path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from landscape.foundation.configs import ConfigError, LoadConfig
from landscape.foundation.convert import read_provenance
from landscape.foundation.errors import CheckpointError
from landscape.foundation.io import atomic_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, whatever the caller passes

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "float16": torch.float16,
    "fp16": torch.float16,
}

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a dtype string (``float32``, ``bfloat16``, ``float64``, ``float16``) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ConfigError("dtype", f"unknown dtype {name!r}; choose one of float32, bfloat16, float64, float16") from None


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an unavailable device is a user error."""
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but no CUDA device is available")
    return device


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFE = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"


@dataclass
class AdapterFiles:
    """A PEFT adapter directory, validated: its config, its weights and the base it applies to."""

    path: Path
    config: Path
    weights: Path
    base: Path
    peft_type: str


@dataclass
class CheckpointFiles:
    """What a checkpoint directory holds, validated (for an adapter: its base's files, and the adapter)."""

    path: Path
    config: Path
    weights: list[Path]
    format: str  # "safetensors" | "pickle"
    adapter: AdapterFiles | None = None

    @property
    def identity(self) -> list[Path]:
        """The files a fingerprint covers: config and weights, and an adapter's own two files."""
        extra = [self.adapter.config, self.adapter.weights] if self.adapter else []
        return [self.config, *self.weights, *extra]


def _shards_from_index(index_path: Path) -> list[Path]:
    try:
        index = json.loads(index_path.read_text())
        names = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index_path}: malformed shard index ({type(e).__name__}: {e})") from None
    shards = [index_path.parent / n for n in names]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(f"{index_path}: shard(s) listed but missing: {', '.join(missing)}")
    return shards


def _safetensors_header(f: Path) -> tuple[dict, int]:
    """(tensor name → {dtype, shape, data_offsets}, header length) of a safetensors file."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > min(size - 8, 100_000_000):
            raise ValueError("header length out of range")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header, n


def _check_safetensors(f: Path) -> None:
    """Read the header and check that it describes exactly the bytes on disk (catches truncation)."""
    try:
        header, n = _safetensors_header(f)
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        size = f.stat().st_size
        if 8 + n + end != size:
            raise ValueError(f"header describes {8 + n + end} bytes but the file has {size} (truncated?)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{f}: corrupt safetensors file ({e})") from None


def weight_bytes(weights: list[Path], dtype: torch.dtype) -> int:
    """The model's bytes in ``dtype``, from the safetensors headers (nothing loaded)."""
    entries = sum(math.prod(v["shape"]) for f in weights for v in _safetensors_header(f)[0].values())
    return entries * torch.empty((), dtype=dtype).element_size()


def _json_with(path: Path, key: str, what: str) -> dict:
    """A JSON object file that has ``key``; else one CheckpointError line ``PATH: WHAT (why)``."""
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"no {key}")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: {what} ({e})") from None
    return obj


def _adapter_base(p: Path, declared, base) -> Path:
    """The base directory of the adapter at ``p``: ``base`` when given, else its declared
    ``base_model_name_or_path`` when that is a local directory (absolute, or relative to the adapter
    or the working directory)."""
    if base is not None:
        return Path(base)
    if not isinstance(declared, str) or not declared:
        raise CheckpointError(f"{p}: the adapter names no base model; give its base directory (adapter_base)",
                              field="adapter_base")
    for cand in (Path(declared), p / declared):
        if (cand / "config.json").is_file():
            return cand
    raise CheckpointError(f"{p}: the adapter's base {declared!r} is not a local checkpoint directory (nothing is "
                          "downloaded); give its base directory (adapter_base)", field="adapter_base")


def inspect_adapter(p: Path, trust_pickle: bool = False, base=None) -> CheckpointFiles:
    """Validate a PEFT adapter directory and its base; the base's files with the adapter attached."""
    cfg_path = p / ADAPTER_CONFIG
    cfg = _json_with(cfg_path, "peft_type", "malformed adapter config")
    if (p / ADAPTER_SAFE).is_file():
        weights = p / ADAPTER_SAFE
        _check_safetensors(weights)
    elif (p / ADAPTER_PICKLE).is_file():
        if not trust_pickle:
            raise CheckpointError(f"{p}: adapter weights are pickle (.bin), which can run code when loaded; convert "
                                  "them to safetensors or set trust_pickle (loaded with weights_only=True)",
                                  field="trust_pickle")
        weights = p / ADAPTER_PICKLE
    else:
        raise CheckpointError(f"{p}: adapter without weights (expected {ADAPTER_SAFE})")
    base_dir = _adapter_base(p, cfg.get("base_model_name_or_path"), base)
    if (base_dir / ADAPTER_CONFIG).is_file() and not (base_dir / "config.json").is_file():
        raise CheckpointError(f"{p}: its base {base_dir} is itself an adapter; merge it first")
    files = inspect_checkpoint(base_dir, trust_pickle=trust_pickle)
    files.adapter = AdapterFiles(p, cfg_path, weights, files.path, str(cfg["peft_type"]))
    return files


def inspect_checkpoint(path: str | os.PathLike, trust_pickle: bool = False, adapter_base=None,
                       config_only: bool = False) -> CheckpointFiles:
    """Validate a checkpoint directory (or a PEFT adapter directory and its base) without loading it;
    raise :class:`CheckpointError` on problems. ``config_only``: a directory with config.json and no
    weights is accepted (format "config-only": a model to plan for, built on the meta device)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a directory (a checkpoint is a directory with config.json and weights)")
    config = p / "config.json"
    if not config.is_file() and (p / ADAPTER_CONFIG).is_file():
        return inspect_adapter(p, trust_pickle, adapter_base)
    if not config.is_file():
        raise CheckpointError(f"{p}: not a Hugging Face checkpoint (no config.json)")
    _json_with(config, "model_type", "malformed config.json")
    if (p / SAFE_INDEX).is_file():
        weights, fmt = _shards_from_index(p / SAFE_INDEX), "safetensors"
    elif (p / SAFE_SINGLE).is_file():
        weights, fmt = [p / SAFE_SINGLE], "safetensors"
    elif (p / PICKLE_INDEX).is_file() or (p / PICKLE_SINGLE).is_file():
        if not trust_pickle:
            raise CheckpointError(
                f"{p}: weights are pickle (.bin), which can run code when loaded; "
                "convert them to safetensors or set trust_pickle (loaded with weights_only=True)",
                field="trust_pickle")
        weights = _shards_from_index(p / PICKLE_INDEX) if (p / PICKLE_INDEX).is_file() else [p / PICKLE_SINGLE]
        fmt = "pickle"
    elif config_only:
        weights, fmt = [], "config-only"
    else:
        raise CheckpointError(f"{p}: no weights found (expected {SAFE_SINGLE} or {SAFE_INDEX}; a directory with "
                              "only config.json can be planned for: dry_run)")
    if fmt == "safetensors":
        for w in weights:
            _check_safetensors(w)
    return CheckpointFiles(path=p, config=config, weights=weights, format=fmt)


def fingerprint_files(files: list[Path], chunk: int = 1 << 22) -> str:
    """SHA-256 over (file name, size, bytes) of each file, in the given order."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike, trust_pickle: bool = True, adapter_base=None) -> str:
    """Content fingerprint of a checkpoint: SHA-256 of config.json and every weight file (an adapter:
    also its config and weights, so adapter and base are both covered)."""
    files = inspect_checkpoint(path, trust_pickle=trust_pickle, adapter_base=adapter_base)
    return fingerprint_files(files.identity)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its tokenizer (or None) and its identity."""

    path: Path
    model: torch.nn.Module
    tokenizer: object | None
    fingerprint: str
    dtype: torch.dtype
    device: torch.device
    meta: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """The checkpoint's tokenizer, or ``None`` when the directory has none."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p}: tokenizer files present but unreadable ({type(e).__name__}: {e})") from None


def with_chat_template(tokenizer, template_file: str | os.PathLike, where):
    """``tokenizer`` with its chat template replaced by the Jinja text of ``template_file``."""
    if tokenizer is None:
        raise CheckpointError(f"{where}: a chat template was given but the checkpoint has no tokenizer")
    p = Path(template_file)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("chat_template", f"{p}: cannot read ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise ConfigError("chat_template", f"{p}: empty template")
    tokenizer.chat_template = text
    return tokenizer


def enable_grad_checkpointing(model: torch.nn.Module) -> int:
    """Non-reentrant activation checkpointing of every decoder block (transformers' own), also in
    eval mode: transformers checkpoints a block only when its ``training`` flag is set, so that flag
    alone is set on each block — not on its children, so dropout stays off. Returns the blocks."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise CheckpointError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.2 (the older name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for m in blocks:
        m.training = True
    return len(blocks)


def recomputes_activations(model) -> bool:
    """Whether the model recomputes activations in its backward (transformers ≥ 5.2 names it activation
    checkpointing, the older name warns)."""
    with quiet_peft():
        for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
            if hasattr(model, attr):
                return bool(getattr(model, attr))
    return False


def load_checkpoint(path: str | os.PathLike, config: LoadConfig | None = None, *, curvature: bool = False,
                    **settings) -> Checkpoint:
    """Load a local HF causal-LM directory on ``config.device`` in ``config.dtype``, in eval mode.

    ``settings`` override fields of ``config`` (``load_checkpoint(p, dtype="bfloat16")``). Every
    parameter keeps ``requires_grad=True`` (curvature code needs gradients); dropout is off.
    Missing weights are an error, not a silent random initialisation.

    ``curvature``: the model is for a curvature measurement (sharded half precision: :func:`_held_dtype`).
    """
    cfg = (config or LoadConfig()).replace(**{k: str(v) if k == "device" else v for k, v in settings.items()})
    from landscape.foundation import params as P

    # planning for another machine (a dry run), a directory with only config.json is a model on meta
    files = inspect_checkpoint(path, trust_pickle=cfg.trust_pickle, adapter_base=cfg.adapter_base,
                               config_only=P.target() is not None)
    torch_dtype = resolve_dtype(cfg.dtype)
    if P.target() is not None:  # no weight is read: the plan needs shapes and dtypes only
        held = _held_dtype(torch_dtype, curvature, P.target().world > 1)
        return _marked(_on_meta(files, held or torch_dtype, cfg), torch_dtype, held)
    dev = resolve_device(cfg.device)
    sharded = shard_mode(cfg.shard, files, torch_dtype, dev) == "fsdp"
    held = _held_dtype(torch_dtype, curvature, sharded)
    if sharded:
        model, config_ = _sharded(files, torch_dtype, cfg, dev, held)
    else:
        model, config_ = _from_pretrained(files, torch_dtype, cfg.trust_remote_code, cfg.attn)
    if files.adapter is not None:
        model = attach_adapter(model, files.adapter, merge=cfg.adapter == "merge")
    if not sharded:
        model.to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    tokenizer = load_tokenizer(files.path, trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template is not None:
        tokenizer = with_chat_template(tokenizer, cfg.chat_template, files.path)
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > rows:
        raise CheckpointError(
            f"{files.path}: tokenizer has {len(tokenizer)} tokens but the embedding only {rows} rows"
        )
    adapter = files.adapter
    return _marked(Checkpoint(
        path=adapter.path if adapter else files.path,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint_files(files.identity),
        dtype=torch_dtype,
        device=dev,
        meta={"format": files.format, "model_type": config_.model_type, "n_params": count_params(model),
              "shard": "fsdp" if sharded else "none", **({"held_as": str(held).replace("torch.", "")} if held else {}),
              "attn_implementation": getattr(model.config, "_attn_implementation", None),
              **({"provenance": prov} if (prov := read_provenance(files.path)) else {}),
              **({"adapter": {"peft_type": adapter.peft_type, "base": str(adapter.base), "weights": cfg.adapter}}
                 if adapter else {})},
    ), torch_dtype, held)


VALUES = "landscape_values_dtype"  # a model attribute: the dtype its float32-held weights' values came from


def values_dtype(model) -> torch.dtype | None:
    """The bf16/fp16 dtype whose values a model's float32 weights hold (a sharded half-precision load
    for a curvature measurement, ``load_checkpoint(curvature=True)``), else None."""
    return getattr(model, VALUES, None)


def _marked(ck: "Checkpoint", values: torch.dtype, held: torch.dtype | None) -> "Checkpoint":
    """``ck`` with its model marked as holding ``values``-dtype numbers in ``held`` (when not None)."""
    if held is not None:
        setattr(ck.model, VALUES, values)
    return ck


def _held_dtype(dtype: torch.dtype, curvature: bool, sharded: bool) -> torch.dtype | None:
    """float32 for a curvature measurement's FSDP-sharded half-precision load. A bf16/fp16 model is
    measured in a float32 view of its weights (:func:`landscape.foundation.params.widened`), which
    FSDP-sharded parameters cannot take in place; so such a load holds each rank's rows as float32
    copies of their bf16/fp16 values (the same numbers, 4 bytes each — less than the 6 of an unsharded
    view beside its originals), and the model says so (:func:`values_dtype`)."""
    return torch.float32 if curvature and sharded and dtype in (torch.bfloat16, torch.float16) else None


@contextlib.contextmanager
def quiet_peft():
    """Warnings of peft's that a user cannot act on: peft 0.21 calls transformers' deprecated
    ``is_gradient_checkpointing``; ``get_peft_model`` warns that ``base_model_name_or_path`` "was renamed"
    whenever the model was loaded by another spelling of the same path (relative vs absolute) — the
    adapter's base is set explicitly to the absolute path right after (:func:`with_lora`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path` was renamed.*", category=UserWarning)
        yield


def attach_adapter(model, adapter: AdapterFiles, merge: bool = True):
    """The base ``model`` with the PEFT adapter applied: merged into its weights (a plain model of the
    base's architecture, Δw = the adapter's update), or kept as a ``PeftModel`` whose adapter
    parameters can be measured on their own (``params="adapter"``). Shape mismatches and unreadable
    adapters are one :class:`CheckpointError` line."""
    try:
        from peft import PeftModel
    except ImportError:
        raise CheckpointError(f"{adapter.path}: a PEFT adapter needs the peft package (pip install "
                              "'landscape[lora]')") from None
    try:
        with quiet_peft():
            pm = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as e:
        msg = _first_line(e)
        if "size mismatch" in str(e):
            msg = "adapter shapes do not match the base: " + next(
                (ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), msg)
        raise CheckpointError(f"{adapter.path}: cannot apply the adapter to {adapter.base} ({msg})") from None
    return pm.merge_and_unload() if merge else pm


def shard_mode(mode: str, files: CheckpointFiles, dtype: torch.dtype, device: torch.device) -> str:
    """"none" or "fsdp" for a ``LoadConfig.shard`` mode. "auto": fsdp under torchrun (2+ processes)
    when three copies of the weights (the weights, a gradient and one more weight-sized vector — the
    least any curvature command needs) exceed this process's free memory; none otherwise."""
    from landscape.foundation import distributed as dist
    from landscape.foundation.params import free_memory

    if mode != "auto":
        return mode
    if dist.world() < 2 or files.format != "safetensors" or files.adapter is not None:
        return "none"
    free = free_memory(device)
    return "fsdp" if free is not None and 3 * weight_bytes(files.weights, dtype) > free else "none"


def _on_meta(files: CheckpointFiles, torch_dtype, cfg: LoadConfig) -> Checkpoint:
    """The checkpoint's model on the meta device (shapes and dtypes, no memory, no weight read): what a
    plan for another machine needs (its activations are probed by a forward on meta tensors). The
    first model built this way is the one the plan's :class:`~landscape.foundation.params.Target` runs."""
    from transformers import AutoModelForCausalLM

    from landscape.foundation import params as P

    config = _config(files, cfg.trust_remote_code)
    with torch.device("meta"):
        model = with_attention(lambda impl: AutoModelForCausalLM.from_config(
            config, dtype=torch_dtype, attn_implementation=impl, trust_remote_code=cfg.trust_remote_code), cfg.attn)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    if P.target() is not None and P.target().model is None:
        P.target().model = model
    return Checkpoint(path=files.path, model=model, tokenizer=load_tokenizer(files.path, cfg.trust_remote_code),
                      fingerprint=fingerprint_files([files.config]), dtype=torch_dtype, device=torch.device("meta"),
                      meta={"format": files.format, "model_type": config.model_type, "n_params": count_params(model),
                            "shard": cfg.shard, "attn_implementation": getattr(model.config, "_attn_implementation", None)})


def _sharded(files: CheckpointFiles, torch_dtype, cfg: LoadConfig, device, held=None):
    """(model, config) built shard-wise (see :mod:`landscape.foundation.sharding`); with ``held``
    (float32) the model is built in ``held`` and the rows, read in ``torch_dtype``, are copied into it."""
    from transformers import AutoModelForCausalLM

    from landscape.foundation.sharding import load_sharded

    if files.format != "safetensors" or files.adapter is not None:
        what = "a PEFT adapter" if files.adapter is not None else "pickle weights"
        raise CheckpointError(f"{files.path}: sharded loading reads safetensors checkpoints; this is {what} "
                              "(merge or convert it first)")
    config = _config(files, cfg.trust_remote_code)

    def build():
        return with_attention(lambda impl: AutoModelForCausalLM.from_config(
            config, dtype=held or torch_dtype, attn_implementation=impl, trust_remote_code=cfg.trust_remote_code),
            cfg.attn)

    return load_sharded(build, files.weights, torch_dtype, device, files.path), config


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _config(files: CheckpointFiles, trust_remote_code: bool):
    """The checkpoint's transformers config; a failure is one CheckpointError line."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(files.path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{files.config}: cannot build a config ({_first_line(e)})") from None


def _from_pretrained(files: CheckpointFiles, torch_dtype, trust_remote_code: bool, attn_implementation):
    """(model, config) from a validated directory; any loader failure is one CheckpointError line."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our commands own the terminal
    config = _config(files, trust_remote_code)
    kwargs = dict(config=config, dtype=torch_dtype, local_files_only=True, trust_remote_code=trust_remote_code,
                  use_safetensors=files.format == "safetensors", weights_only=True, output_loading_info=True)
    try:
        model, info = with_attention(lambda impl: AutoModelForCausalLM.from_pretrained(
            files.path, **kwargs, attn_implementation=impl), attn_implementation)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{files.path}: cannot load weights ({_first_line(e)})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{files.path}: weights missing for {', '.join(missing[:3])}{more}")
    return model, config


def with_attention(build, attn: str = "auto"):
    """``build(impl)`` with the attention implementation asked for; "auto": SDPA, or eager where the
    architecture has no SDPA path (Gemma-2, GPT-J, ...: transformers refuses them with a ValueError)."""
    if attn != "auto":
        return build(attn)
    try:
        return build("sdpa")
    except ValueError as e:
        if "attention implementation" not in str(e) and "sdpa" not in str(e).lower():
            raise
        return build("eager")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model, tokenizer, out: str | os.PathLike, extra_files: dict[str, str] | None = None,
                    state_dict: dict | None = None) -> Path:
    """Write an HF checkpoint dir (safetensors + tokenizer) atomically (:func:`io.atomic_dir`).

    An existing ``out`` is replaced only after the new one is complete. ``state_dict``: the weights
    to write instead of the model's own (a sharded model's, gathered whole).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own commands own the terminal
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)
