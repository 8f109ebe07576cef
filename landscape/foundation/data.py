"""jsonl → fixed, deterministic, tokenized batches.

Each line of the input is one JSON object of exactly one of three shapes:

- ``{"text": "..."}``: loss on every token after the first;
- ``{"prompt": "...", "completion": "..."}``: loss on the completion tokens only (the EOS token the
  tokenizer appends after the completion counts as a completion token, so the model learns to stop);
- ``{"input_ids": [int, ...]}``: pre-tokenized; loss on every position after the first.

An optional ``"id"`` key is allowed on any line; any other key is an error (a typo such as
``"complection"`` would otherwise silently change what the loss measures).

Batches keep the file order (no shuffling), are right-padded, and carry ``labels`` with ``-100``
wherever no loss is taken, so that a measurement is a pure function of (file, tokenizer, options).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from landscape.foundation.configs import ConfigError, DataConfig
from landscape.foundation.errors import DataError

IGNORE = -100
SHAPES = ({"text"}, {"prompt", "completion"}, {"input_ids"})
OPTIONAL_KEYS = {"id"}


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    labels: torch.Tensor  # (B, T) long, IGNORE where no loss; position 0 never predicted

    @property
    def n_tokens(self) -> int:
        """Number of predicted (loss-bearing) tokens: labels at positions 1..T-1."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))


@dataclass
class Batches:
    """The fixed evaluation/training batches of one data file."""

    batches: list[Batch]
    fingerprint: str
    source: str
    n_examples: int
    n_truncated: int = 0
    n_dropped: int = 0
    config: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return sum(b.n_tokens for b in self.batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def to(self, device) -> "Batches":
        return Batches([b.to(device) for b in self.batches], self.fingerprint, self.source,
                       self.n_examples, self.n_truncated, self.n_dropped, dict(self.config))


def read_json_lines(path: str | os.PathLike, what: str = "data file") -> tuple[bytes, list[tuple[int, object]]]:
    """The raw bytes of a jsonl file and its parsed lines as (line number, value); blank lines skipped.

    Errors name the file (and the line): missing, a directory, unreadable, invalid JSON.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such {what}")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a .jsonl file")
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read ({e})") from None
    lines = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
    return raw, lines


def _read_records(path: str | os.PathLike) -> tuple[bytes, list[dict]]:
    """The file's bytes (its fingerprint) and its validated records, from one read."""
    raw, lines = read_json_lines(path)
    records = [validate_record(rec, f"{path}:{lineno}") for lineno, rec in lines]
    if not records:
        raise DataError(f"{path}: empty data file (no JSON lines)")
    return raw, records


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Parse and validate a jsonl file; errors name the file and the line number."""
    return _read_records(path)[1]


def validate_record(rec, where: str) -> dict:
    """Check one record against the three accepted shapes; return it unchanged."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
    keys = set(rec) - OPTIONAL_KEYS
    shape = next((s for s in SHAPES if keys == s), None)
    if shape is None:
        unknown = sorted(keys - set().union(*SHAPES))
        detail = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else f"keys {sorted(keys)}"
        raise DataError(
            f"{where}: {detail}; expected one of {{\"text\"}}, {{\"prompt\", \"completion\"}}, {{\"input_ids\"}}"
        )
    if shape == {"input_ids"}:
        ids = rec["input_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"{where}: input_ids must be a non-empty list of integers")
        if min(ids) < 0:
            raise DataError(f"{where}: input_ids must be non-negative")
    else:
        for k in shape:
            if not isinstance(rec[k], str):
                raise DataError(f"{where}: {k!r} must be a string, got {type(rec[k]).__name__}")
        if shape == {"text"} and not rec["text"].strip():
            raise DataError(f"{where}: empty text")
        if shape == {"prompt", "completion"} and not rec["completion"].strip():
            raise DataError(f"{where}: empty completion")
    return rec


def encode_record(rec: dict, tokenizer, where: str = "") -> tuple[list[int], list[bool]]:
    """Token ids and a per-position 'loss is taken here' mask for one record."""
    if "input_ids" in rec:
        ids = list(rec["input_ids"])
        return ids, [False] + [True] * (len(ids) - 1)
    if tokenizer is None:
        raise DataError(f"{where}: text data needs a tokenizer, and the checkpoint has none "
                        "(add tokenizer files or give pre-tokenized input_ids)")
    if "text" in rec:
        ids = tokenizer(rec["text"], add_special_tokens=True)["input_ids"]
        return ids, [False] + [True] * (len(ids) - 1)
    p = tokenizer(rec["prompt"], add_special_tokens=True)["input_ids"]
    c = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    return p + c, [False] * len(p) + [True] * len(c)


def load_batches(
    path: str | os.PathLike,
    tokenizer=None,
    batch_size: int = 8,
    max_length: int = 128,
    num_batches: int | None = None,
    vocab_size: int | None = None,
    pad_id: int | None = None,
    records: list[dict] | None = None,
) -> Batches:
    """Read ``path`` and build fixed batches.

    ``records`` (already validated, e.g. one side of a train/eval split of ``path``) are used instead
    of the file's lines; the fingerprint then covers those records, not the whole file.

    Sequences longer than ``max_length`` are cut (their tail dropped); a record left with no
    loss-bearing token (e.g. a prompt that fills ``max_length``) is dropped and counted.
    ``num_batches`` keeps the first N batches. Ids outside ``vocab_size`` are an error.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise DataError(f"max length must be >= 2 (one token in, one predicted), got {max_length}")
    if num_batches is not None and num_batches < 1:
        raise DataError(f"number of batches must be >= 1, got {num_batches}")
    subset = records is not None
    if records is None:
        raw, records = _read_records(path)
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None) or 0
    examples, truncated, dropped = [], 0, 0
    limit = None if num_batches is None else num_batches * batch_size
    for lineno, rec in enumerate(records, 1):
        where = f"{path}: record {lineno}"
        ids, mask = encode_record(rec, tokenizer, where)
        if vocab_size is not None and ids and max(ids) >= vocab_size:
            raise DataError(f"{where}: token id {max(ids)} is outside the model's vocabulary ({vocab_size})")
        if len(ids) > max_length:
            ids, mask = ids[:max_length], mask[:max_length]
            truncated += 1
        if not any(mask[1:]):
            dropped += 1
            continue
        examples.append((ids, mask))
        if limit is not None and len(examples) == limit:
            break
    if not examples:
        raise DataError(f"{path}: no record has a token to predict within max length {max_length}")
    batches = [collate(examples[i:i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
    config = {"batch_size": batch_size, "max_length": max_length, "num_batches": num_batches}
    h = hashlib.sha256(json.dumps(records, sort_keys=True).encode() if subset else raw)
    h.update(json.dumps(config, sort_keys=True).encode())
    for b in batches:  # the tokenization is part of the identity (a different tokenizer → other ids)
        h.update(b.input_ids.numpy().tobytes())
        h.update(b.labels.numpy().tobytes())
    return Batches(batches, h.hexdigest(), str(path), len(examples), truncated, dropped, config)


def collate(examples: list[tuple[list[int], list[bool]]], pad_id: int) -> Batch:
    """Right-pad a list of (ids, mask) into one :class:`Batch`."""
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
        attention[i, :n] = 1
        m = torch.tensor(mask, dtype=torch.bool)
        labels[i, :n] = torch.where(m, input_ids[i, :n], torch.full_like(input_ids[i, :n], IGNORE))
    return Batch(input_ids, attention, labels)


def data_dir() -> Path:
    """The project's ``data/`` folder (override with ``LANDSCAPE_DATA``): the embedded default data."""
    env = os.environ.get("LANDSCAPE_DATA")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "data"
    if not (d / "pretrain.jsonl").is_file():
        raise DataError(f"{d}: embedded data not found (run `python data/generate.py` or set LANDSCAPE_DATA)")
    return d


def real_data_dir() -> Path:
    """``data/real``: real-world suites, general English text and a fine-tuning task for real models."""
    d = data_dir() / "real"
    if not (d / "suites" / "categories.json").is_file():
        raise DataError(f"{d}: real-model data not found (run `python data/real/generate.py`)")
    return d


def default_eval_data() -> Path:
    """The default ``data`` of every measurement: held-out general text of the embedded world."""
    return data_dir() / "eval.jsonl"


DEFAULT_MAX_LENGTH = 128
UNKNOWN_POSITIONS = 2048  # models whose config names no position limit (e.g. state-space models)


def position_limit(model_config) -> int:
    """How many positions the model takes (the one place this is read from a config)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        v = getattr(model_config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return UNKNOWN_POSITIONS


def resolve_max_length(model_config, max_length: int | None) -> int:
    """``max_length``, or min(128, positions) when None; more than the model's positions is an error."""
    limit = position_limit(model_config)
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, limit)
    if max_length > limit:
        raise ConfigError("max_length", f"{max_length} exceeds the model's {limit} positions")
    return max_length


def batches_for(ckpt, cfg: DataConfig | None = None) -> Batches:
    """:func:`load_batches` with the tokenizer, vocabulary and position limit of a loaded checkpoint,
    on the checkpoint's device. ``cfg.data`` None: the embedded eval data."""
    cfg = cfg or DataConfig()
    bs = load_batches(cfg.data or default_eval_data(), ckpt.tokenizer, batch_size=cfg.batch_size,
                      max_length=resolve_max_length(ckpt.model.config, cfg.max_length),
                      num_batches=cfg.num_batches, vocab_size=ckpt.vocab_size)
    return bs.to(ckpt.device)
