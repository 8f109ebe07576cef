"""Records → fixed, deterministic, tokenized batches.

Where records come from (:func:`read_records`): a jsonl file (one JSON object per line), a ``.json``
file (JSON lines, or one JSON array of objects), a ``.parquet`` or ``.csv`` file, or a directory
written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``split`` names one of a
DatasetDict's splits). Column names are the keys below; a tabular row's empty (null) cells are
absent keys, since a table gives every row every column.

Each record is one object of exactly one of these shapes:

- ``{"text": "..."}``: loss on every token after the first;
- ``{"prompt": "...", "completion": "..."}``: loss on the completion tokens only (the EOS token the
  tokenizer appends after the completion counts as a completion token, so the model learns to stop);
- ``{"input_ids": [int, ...]}``: pre-tokenized; loss on every position after the first;
- chat ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``, any number of
  turns, rendered with the tokenizer's own chat template; loss on the assistant turns only;
- conversational ``{"prompt": [messages], "completion": [messages]}``: loss on the assistant turns of
  the completion;
- ShareGPT ``{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}``, read as
  messages.

Chat loss rule (TRL's conversational prompt-completion rule, applied turn by turn): for each
loss-bearing assistant message i, the tokens of ``render(messages[:i+1])`` that follow
``render(messages[:i], add_generation_prompt=True)`` — for a ChatML template the content, the
``<|im_end|>`` and the newline after it. A template whose renderings are not token prefixes of each
other cannot locate those tokens and is an error, as are chat records for a tokenizer without a
template and conversations without an assistant turn.

An optional ``"id"`` key is allowed on any record; any other key is an error (a typo such as
``"complection"`` would otherwise silently change what the loss measures).

Batches keep the record order (no shuffling), are right-padded, and carry ``labels`` with ``-100``
wherever no loss is taken, so that a measurement is a pure function of (records, tokenizer, options).
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
SHAPES = ({"text"}, {"prompt", "completion"}, {"input_ids"}, {"messages"}, {"conversations"})
OPTIONAL_KEYS = {"id"}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TABULAR = {".parquet": "parquet", ".csv": "csv"}

@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    labels: torch.Tensor  # (B, T) long, IGNORE where no loss; position 0 never predicted

    @property
    def n_tokens(self) -> int:
        """Number of predicted (loss-bearing) tokens: labels at positions 1..T-1 (on the meta device,
        where a plan has shapes only, all of them)."""
        if self.labels.device.type == "meta":
            return self.labels.shape[0] * max(0, self.labels.shape[1] - 1)
        return int((self.labels[:, 1:] != IGNORE).sum())

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))

    def rows(self, r: int, n: int) -> "Batch":
        """Rows r, r+n, r+2n, ... (one of n ranks' share of this batch, for FSDP data parallelism); a
        rank left without a row gets row 0 with no loss-bearing token, so every rank runs a pass."""
        if r < self.input_ids.shape[0]:
            return Batch(self.input_ids[r::n], self.attention_mask[r::n], self.labels[r::n])
        return Batch(self.input_ids[:1], self.attention_mask[:1], torch.full_like(self.labels[:1], IGNORE))


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


def _json_array(p: Path) -> tuple[bytes, list[tuple[str, object]]] | None:
    """A ``.json`` file holding one JSON array of records, or None when it is JSON lines."""
    raw = p.read_bytes()
    try:
        whole = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(whole, list):
        return None
    return raw, [(f"{p}: item {i}", rec) for i, rec in enumerate(whole, 1)]


def _rows(rows: list[dict], where: str) -> list[tuple[str, dict]]:
    """Table rows as records: a null cell is an absent key (a table gives every row every column)."""
    def strip(v):
        if isinstance(v, list):
            return [{k: x for k, x in m.items() if x is not None} if isinstance(m, dict) else m for m in v]
        return v

    return [(f"{where}: row {i}", {k: strip(v) for k, v in r.items() if v is not None}) for i, r in enumerate(rows, 1)]


def _canonical(rows: list[tuple[str, dict]]) -> bytes:
    return json.dumps([r for _, r in rows], sort_keys=True, ensure_ascii=False).encode()


def _read_table(p: Path, kind: str) -> list[tuple[str, dict]]:
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            import csv

            with open(p, newline="", encoding="utf-8") as f:
                rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
    except ImportError as e:
        raise DataError(f"{p}: reading {kind} needs {e.name} (pip install pyarrow)") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not a readable {kind} file ({type(e).__name__}: {e})") from None
    return _rows(rows, str(p))


def _read_dataset_dir(p: Path, split: str | None) -> list[tuple[str, dict]]:
    """Rows of a ``save_to_disk`` directory (a Dataset, or one split of a DatasetDict)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{p}: a datasets directory needs the datasets package (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(str(p))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{p}: not a readable datasets directory ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = sorted(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            what = "holds several splits" if split is None else f"has no split {split!r}"
            raise ConfigError("data_split", f"{p} {what}; choose one of {', '.join(names)}")
        ds, where = ds[split], f"{p}[{split}]"
    else:
        if split is not None:
            raise ConfigError("data_split", f"{p} is a single Dataset without splits (got {split!r})")
        where = str(p)
    return _rows(ds.to_list(), where)


def read_records(path: str | os.PathLike, split: str | None = None) -> tuple[bytes, list[tuple[str, dict]]]:
    """The data's identity bytes and its records as (where, record), not yet validated.

    jsonl: the file's bytes are its identity; other formats: the canonical JSON of their records.
    ``split`` names a split of a DatasetDict directory (needed when it holds several).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such data file")
    if p.is_dir():
        if not any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
            raise DataError(f"{p}: is a directory but not a datasets directory (save_to_disk); "
                            "expected a .jsonl, .json, .parquet or .csv file")
        rows = _read_dataset_dir(p, split)
        return _canonical(rows), rows
    if split is not None:
        raise ConfigError("data_split", f"{p} is a file; only a datasets directory has splits")
    kind = TABULAR.get(p.suffix.lower())
    if kind:
        rows = _read_table(p, kind)
        return _canonical(rows), rows
    if p.suffix.lower() == ".json" and (arr := _json_array(p)) is not None:
        return arr
    raw, lines = read_json_lines(p)
    return raw, [(f"{p}:{lineno}", rec) for lineno, rec in lines]


def _read_records(path: str | os.PathLike, split: str | None = None) -> tuple[bytes, list[dict]]:
    """The data's identity bytes and its validated records, from one read."""
    raw, rows = read_records(path, split)
    records = [validate_record(rec, where) for where, rec in rows]
    if not records:
        raise DataError(f"{path}: empty data file (no records)")
    return raw, records


def read_jsonl(path: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Read and validate the records of any accepted format; errors name the file and the line/row."""
    return _read_records(path, split)[1]


def _validate_messages(msgs, where: str, key: str, from_key: str = "role", text_key: str = "content") -> list[dict]:
    """A list of chat messages, as ``{"role", "content"}`` dicts (ShareGPT's from/value translated)."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: {key!r} must be a non-empty list of messages")
    out = []
    for j, m in enumerate(msgs):  # the index a user finds the message at: msgs[j], 0-based like JSON paths
        if not isinstance(m, dict) or set(m) != {from_key, text_key}:
            got = sorted(m) if isinstance(m, dict) else type(m).__name__
            raise DataError(f"{where}: {key}[{j}] must be {{{from_key!r}, {text_key!r}}}, got {got}")
        role, content = m[from_key], m[text_key]
        roles = SHAREGPT_ROLES if from_key == "from" else {r: r for r in ROLES}
        if role not in roles:
            raise DataError(f"{where}: {key}[{j}] has {from_key} {role!r}; expected one of {', '.join(roles)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: {key}[{j}] {text_key} must be a string, got {type(content).__name__}")
        out.append({"role": roles[role], "content": content})
    return out


def _validate_chat(rec: dict, shape: set, where: str) -> dict:
    """Chat records in one form: ``{"messages": [...], "loss_from": index of the first trained message}``."""
    if shape == {"conversations"}:
        msgs, first = _validate_messages(rec["conversations"], where, "conversations", "from", "value"), 0
    elif shape == {"messages"}:
        msgs, first = _validate_messages(rec["messages"], where, "messages"), 0
    else:
        prompt = _validate_messages(rec["prompt"], where, "prompt")
        msgs, first = prompt + _validate_messages(rec["completion"], where, "completion"), len(prompt)
    if not any(m["role"] == "assistant" for m in msgs[first:]):
        part = "completion" if first else "conversation"
        raise DataError(f"{where}: the {part} has no assistant turn (the loss is taken on assistant turns)")
    out = {"messages": msgs, "loss_from": first}
    if "id" in rec:
        out["id"] = rec["id"]
    return out


def validate_record(rec, where: str) -> dict:
    """Check one record against the accepted shapes; return it (chat shapes in one normalized form)."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: each record must be a JSON object, got {type(rec).__name__}")
    keys = set(rec) - OPTIONAL_KEYS
    shape = next((s for s in SHAPES if keys == s), None)
    if shape is None:
        unknown = sorted(keys - set().union(*SHAPES))
        detail = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else f"keys {sorted(keys)}"
        raise DataError(f"{where}: {detail}; expected one of {{\"text\"}}, {{\"prompt\", \"completion\"}}, "
                        "{\"input_ids\"}, {\"messages\"}, {\"conversations\"}")
    if shape == {"input_ids"}:
        ids = rec["input_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"{where}: input_ids must be a non-empty list of integers")
        if min(ids) < 0:
            raise DataError(f"{where}: input_ids must be non-negative")
    elif shape in ({"messages"}, {"conversations"}) or isinstance(rec.get("prompt"), list):
        return _validate_chat(rec, shape, where)
    else:
        for k in shape:
            if not isinstance(rec[k], str):
                raise DataError(f"{where}: {k!r} must be a string, got {type(rec[k]).__name__}")
        if shape == {"text"} and not rec["text"].strip():
            raise DataError(f"{where}: empty text")
        if shape == {"prompt", "completion"} and not rec["completion"].strip():
            raise DataError(f"{where}: empty completion")
    return rec


def _render_ids(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja's TemplateError and whatever the template itself raises
        raise DataError(f"{where}: the chat template failed on this conversation ({type(e).__name__}: {e})") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(messages: list[dict], loss_from: int, tokenizer, where: str = "") -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and the loss mask of its assistant turns (the module's rule)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: chat data needs a chat template, and the checkpoint's tokenizer has none "
                        "(load it with a chat_template file, or give text records)")
    ids = _render_ids(tokenizer, messages, False, where)
    mask = [False] * len(ids)
    for i in range(loss_from, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        before = _render_ids(tokenizer, messages[:i], True, where) if i else []
        upto = _render_ids(tokenizer, messages[:i + 1], False, where)
        if upto[:len(before)] != before or ids[:len(upto)] != upto:
            raise DataError(f"{where}: the chat template's renderings of this conversation are not prefixes of "
                            f"each other, so assistant turn {i + 1}'s tokens cannot be located")
        mask[len(before):len(upto)] = [True] * (len(upto) - len(before))
    return ids, mask


def encode_record(rec: dict, tokenizer, where: str = "") -> tuple[list[int], list[bool]]:
    """Token ids and a per-position 'loss is taken here' mask for one (validated) record."""
    if "input_ids" in rec:
        ids = list(rec["input_ids"])
        return ids, [False] + [True] * (len(ids) - 1)
    if "messages" in rec:
        return encode_chat(rec["messages"], rec.get("loss_from", 0), tokenizer, where)
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
    of the file's lines; the fingerprint then covers those records, not the whole file (one split of
    a DatasetDict directory: ``records=read_jsonl(path, split)``).

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


def speaks_toy_world(tokenizer) -> bool:
    """Whether the embedded (invented) data means anything to a model with this tokenizer: the toy
    world's models (the demo model, the test fixtures) have a word-level tokenizer built from it. A
    real model's subword tokenizer encodes the toy text too, but the model never saw that world."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def refuse_toy_default(tokenizer, field: str) -> None:
    """A measurement left without data on a model outside the toy world is refused with one line naming
    the flag and the real data that ships, never run silently on the invented text."""
    if not speaks_toy_world(tokenizer):
        from landscape.foundation.configs import ConfigError

        invented, real, path = (("suites", "ones", "suites") if field in ("suites", "probe_suites")
                                else ("text", "general English", "general.jsonl"))
        raise ConfigError(field, f"required for this checkpoint: the default is the toy world's invented {invented}, "
                                 f"which only the demo model knows (real {real} ship in {data_dir() / 'real' / path})")


def batches_for(ckpt, cfg: DataConfig | None = None) -> Batches:
    """:func:`load_batches` with the tokenizer, vocabulary and position limit of a loaded checkpoint,
    on the checkpoint's device. ``cfg.data`` None: the embedded eval data, for toy-world models only."""
    cfg = cfg or DataConfig()
    if ckpt.device.type == "meta" and (cfg.data is None or ckpt.tokenizer is None):
        return planned_batches(ckpt, cfg)
    if cfg.data is None:
        refuse_toy_default(ckpt.tokenizer, "data")
    path = cfg.data or default_eval_data()
    bs = load_batches(path, ckpt.tokenizer, batch_size=cfg.batch_size,
                      max_length=resolve_max_length(ckpt.model.config, cfg.max_length), num_batches=cfg.num_batches,
                      vocab_size=ckpt.vocab_size, records=read_jsonl(path, cfg.data_split) if cfg.data_split else None)
    return bs.to(ckpt.device)


def planned_batches(ckpt, cfg: DataConfig) -> Batches:
    """The batches a plan for a model on the meta device (a config-only directory) assumes when no data
    is given (or there is no tokenizer to read it): ``num_batches`` (1) of ``batch_size`` sequences of
    ``max_length`` tokens each, every one full length — the most memory data of that shape can take."""
    T = resolve_max_length(ckpt.model.config, cfg.max_length)
    ids = torch.zeros(cfg.batch_size, T, dtype=torch.long, device="meta")
    one = Batch(ids, torch.ones_like(ids), ids.clone())
    n = cfg.num_batches or 1
    return Batches([one] * n, "", f"planned: {n} × {cfg.batch_size} × {T} tokens", n * cfg.batch_size,
                   config={"batch_size": cfg.batch_size, "max_length": T, "num_batches": n})
