"""Forgetting: how much a fine-tuned checkpoint lost against its base, on held-out task suites.

A suite is one jsonl file (its name is the file's stem); every line is one item, all of one kind:

- multiple choice ``{"context": str, "choices": [str, ...], "answer": int}`` — each choice is scored
  by the log-likelihood of ``" " + choice`` after the context, as the common harnesses do:
  ``acc`` = argmax of Σ log p(choice tokens), ``acc_norm`` = argmax of that sum divided by the
  choice's length in characters (lm-evaluation-harness's length normalisation);
- generation ``{"prompt": str, "completion": str}`` — ``exact_match`` of the greedy continuation
  (up to EOS, whitespace-normalised) with the completion;
- text ``{"text": str}`` — the shared token-weighted ``loss`` (and its ``perplexity``);
- chat ``{"messages": [{"role", "content"}, ...]}`` — the same loss on the assistant turns, rendered
  with the checkpoint's chat template (the rule of :mod:`landscape.foundation.data`).

An optional ``"id"`` is allowed on any line. Suites are grouped into categories by a
``categories.json`` next to them (``{"knowledge": ["facts_color", ...], ...}``); a suite in no
category goes to ``"other"``. The paper (Li et al. 2024) averages four categories: domain
knowledge, reasoning, understanding, exams; ``data/suites`` has the same structure at toy scale.

Forgetting of a suite, signed so that **positive = forgotten**:
``delta = base − tuned`` for accuracies (higher is better), ``delta = tuned − base`` for losses;
``relative = 100 · delta / base`` (Luo et al. 2023's FG). Categories average their accuracy suites;
``average`` is the mean over categories (Li et al. 2024's protocol: each category counts once, however
many suites it holds); ``suite_mean`` is the plain mean over the accuracy suites (Biderman et al. 2024's
protocol). Loss suites are reported, not averaged with accuracies.

Scores are cached in a :class:`landscape.foundation.store.Store` under (checkpoint fingerprint, "suite",
suite fingerprint + scorer settings + library version), so a batch never re-scores a pair.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

import landscape
from landscape.foundation.configs import ForgettingConfig, LoadConfig
from landscape.foundation.data import position_limit
from landscape.foundation.errors import DataError, UserError

KINDS = {"mc": {"context", "choices", "answer"}, "generation": {"prompt", "completion"}, "text": {"text"},
         "chat": {"messages"}}
METRIC = {"mc": "acc", "generation": "exact_match", "text": "loss", "chat": "loss"}
LOWER_IS_BETTER = {"loss", "perplexity"}


@dataclass
class Suite:
    name: str
    path: str
    kind: str  # mc | generation | text
    items: list[dict]
    fingerprint: str
    category: str = "other"
    extra: dict = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return METRIC[self.kind]


def _validate_item(rec, where: str) -> str:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: each line must be a JSON object")
    keys = set(rec) - {"id"}
    kind = next((k for k, ks in KINDS.items() if keys == ks), None)
    if kind is None:
        missing = [f"{k!r}" for k in ("answer", "choices") if "context" in keys and k not in keys]
        hint = f"missing {', '.join(missing)}; " if missing else ""
        raise DataError(f"{where}: {hint}keys {sorted(keys)}; expected {{context, choices, answer}} (multiple "
                        "choice), {prompt, completion} (generation), {text} or {messages} (chat)")
    if kind == "chat":
        from landscape.foundation.data import validate_record

        validate_record(rec, where)
    elif kind == "mc":
        ch, ans = rec["choices"], rec["answer"]
        if not isinstance(rec["context"], str):
            raise DataError(f"{where}: 'context' must be a string")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c.strip() for c in ch):
            raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(ch):
            raise DataError(f"{where}: 'answer' must be an index into choices (0..{len(ch) - 1}), got {ans!r}")
    else:
        for k in KINDS[kind]:
            if not isinstance(rec[k], str) or not rec[k].strip():
                raise DataError(f"{where}: {k!r} must be a non-empty string")
    return kind


def load_suite(path: str | os.PathLike, category: str = "other") -> Suite:
    """Read and validate one suite file; errors name the file and line."""
    from landscape.foundation.data import read_json_lines

    p = Path(path)
    raw, lines = read_json_lines(p, "suite file")
    items, kinds = [], set()
    for lineno, rec in lines:
        kinds.add(_validate_item(rec, f"{p}:{lineno}"))
        if len(kinds) > 1:
            raise DataError(f"{p}:{lineno}: a suite must hold one kind of item, found {sorted(kinds)}")
        items.append(rec)
    if not items:
        raise DataError(f"{p}: empty suite")
    return Suite(p.stem, str(p), kinds.pop(), items, hashlib.sha256(raw).hexdigest(), category)


def read_categories(path: str | os.PathLike) -> dict[str, list[str]]:
    p = Path(path)
    try:
        cats = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: unreadable categories file ({e})") from None
    if not isinstance(cats, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                             for v in cats.values()):
        raise DataError(f"{p}: categories must be {{\"category\": [\"suite\", ...]}}")
    return cats


def load_suites(paths=None, categories: str | os.PathLike | None = None) -> list[Suite]:
    """The suites at ``paths`` (files or directories of ``*.jsonl``), default ``data/suites``.

    Categories come from ``categories`` or else a ``categories.json`` beside the suites.
    """
    if not paths:
        from landscape.foundation.data import data_dir

        paths = [data_dir() / "suites"]
    files: list[Path] = []
    cat_files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise DataError(f"{p}: no *.jsonl suites in this directory")
            files += found
            cat_files.append(p / "categories.json")
        else:
            files.append(p)
            cat_files.append(p.parent / "categories.json")
    names = [f.stem for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two suites share the name {dup[0]!r}; suite names (file stems) must be unique")
    cats: dict[str, list[str]] = {}
    for cf in ([Path(categories)] if categories else [c for c in dict.fromkeys(cat_files) if c.is_file()]):
        if categories and not cf.is_file():
            raise DataError(f"{cf}: no such categories file")
        for c, members in read_categories(cf).items():
            cats.setdefault(c, []).extend(members)
    of = {s: c for c, members in cats.items() for s in members}
    return [load_suite(f, of.get(f.stem, "other")) for f in files]


# --------------------------------------------------------------------------------------------
# Scorers. Each takes (model, tokenizer, items) and returns a dict of metrics plus "n".

def _encode_pair(tok, context: str, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) for ``context + " " + choice``, split the way the joint
    tokenization splits them when it can (BPE merges across the boundary), else encoded apart."""
    ctx = tok(context, add_special_tokens=True)["input_ids"]
    whole = tok(context + " " + choice, add_special_tokens=True)["input_ids"]
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tok(" " + choice, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[float]:
    """Σ log p(continuation | context) for each (context ids, continuation ids) pair.

    Sequences longer than the model's positions keep their last tokens. Pairs are batched by length
    (right-padded); log-probabilities are taken in float32 at least.
    """
    return _sharded(_continuation_logprobs_local, model, pairs, batch_size)


def _sharded(score, model, items: list, batch_size: int) -> list:
    """``score(model, items, batch_size)``; under torchrun each rank scores its share and every rank
    gets every score, in the order of ``items``. A sharded model is one model across the ranks:
    they score every item together (each forward gathers the weights on all of them)."""
    from landscape.foundation import distributed as dist
    from landscape.foundation.params import any_sharded

    if dist.world() == 1 or any_sharded(model.parameters()):
        return score(model, items, batch_size)
    mine = dist.shard(list(range(len(items))))
    part = score(model, [items[i] for i in mine], batch_size)
    merged = {k: v for got in dist.all_gather_object(dict(zip(mine, part))) for k, v in got.items()}
    return [merged[i] for i in range(len(items))]


@torch.no_grad()
def _continuation_logprobs_local(model, pairs, batch_size):
    device = next(model.parameters()).device
    limit = position_limit(model.config)
    seqs = []
    for ctx, cont in pairs:
        ids = (ctx + cont)[-limit:]
        seqs.append((ids, min(len(cont), len(ids) - 1)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = len(seqs[idx[0]][0])
        ids = torch.zeros((len(idx), T), dtype=torch.long)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            x = seqs[i][0]
            ids[r, :len(x)] = torch.tensor(x)
            att[r, :len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False).logits
        for r, i in enumerate(idx):
            x, n = seqs[i]
            L = len(x)
            lg = logits[r, L - 1 - n:L - 1].to(torch.promote_types(logits.dtype, torch.float32))  # (n, V)
            tgt = torch.tensor(x[L - n:], device=lg.device)
            out[i] = float((lg.gather(-1, tgt[:, None])[:, 0] - torch.logsumexp(lg, -1)).sum())
    return out


def score_mc(model, tok, items: list[dict], batch_size: int = 32) -> dict:
    """Multiple choice by log-likelihood: ``acc`` and length-normalised ``acc_norm``."""
    groups = []
    for it in items:
        encoded = [_encode_pair(tok, it["context"], c) for c in it["choices"]]
        groups.append((encoded[0][0], [cont for _, cont in encoded]))
    lps = choice_logprobs(model, groups, batch_size)
    correct, acc_norm = [], 0
    for it, s in zip(items, lps):
        norm = [x / len(c) for x, c in zip(s, it["choices"])]
        correct.append(int(max(range(len(s)), key=s.__getitem__) == it["answer"]))
        acc_norm += int(max(range(len(norm)), key=norm.__getitem__) == it["answer"])
    chance = sum(1 / len(it["choices"]) for it in items) / len(items)  # what guessing scores
    return {"acc": sum(correct) / len(items), "acc_norm": acc_norm / len(items), "n": len(items), "chance": chance,
            "correct": correct}


@torch.no_grad()
def choice_logprobs(model, groups: list[tuple[list[int], list[list[int]]]], batch_size: int = 32) -> list[list[float]]:
    """Σ log p(choice | context) for every choice of every (context ids, [choice ids, ...]) group.

    The context runs once per group and its key/value cache serves all of its choices (a choice of
    one token needs no second pass at all): about a third of the forward work of scoring every
    (context, choice) pair on its own, with the same numbers (tested against
    :func:`continuation_logprobs`). Groups that pass the model's positions are scored pair by pair.
    """
    return _sharded(choice_logprobs_local, model, groups, batch_size)


@torch.no_grad()
def choice_logprobs_local(model, groups, batch_size: int = 32) -> list[list[float]]:
    limit = position_limit(model.config)
    out: list = [None] * len(groups)
    long = [i for i, (ctx, conts) in enumerate(groups) if len(ctx) + max(map(len, conts)) > limit]
    for i in long:
        ctx, conts = groups[i]
        out[i] = _continuation_logprobs_local(model, [(ctx, c) for c in conts], batch_size)
    order = sorted((i for i in range(len(groups)) if out[i] is None), key=lambda i: -len(groups[i][0]))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for i, lp in zip(idx, _shared_or_pairwise(model, [groups[i] for i in idx], batch_size)):
            out[i] = lp
    return out


def _shared_or_pairwise(model, groups, batch_size: int) -> list[list[float]]:
    """Shared-context scoring, or pair by pair for models whose cache cannot be extended by a second
    padded pass (state-space and recurrent layers, e.g. RecurrentGemma): same numbers, more work."""
    if not getattr(model, "_landscape_no_shared_context", False):
        try:
            return _shared_context_batch(model, groups)
        except (ValueError, NotImplementedError, AttributeError, TypeError, IndexError, RuntimeError):
            model._landscape_no_shared_context = True
    return [_continuation_logprobs_local(model, [(ctx, c) for c in conts], batch_size) for ctx, conts in groups]


def _shared_context_batch(model, groups) -> list[list[float]]:
    """One left-padded forward over the contexts (with cache), one over the choices' later tokens."""
    device = next(model.parameters()).device
    B, Lc = len(groups), max(len(ctx) for ctx, _ in groups)
    ids = torch.zeros((B, Lc), dtype=torch.long)
    mask = torch.zeros((B, Lc), dtype=torch.long)
    for r, (ctx, _) in enumerate(groups):  # left padding: every context ends at position Lc - 1
        ids[r, Lc - len(ctx):] = torch.tensor(ctx)
        mask[r, Lc - len(ctx):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper takes **kwargs
    accepts = inspect.signature(inner.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    cache_kw = "cache" if "cache" in accepts else "past_key_values"  # transformers renamed it in 5.x
    res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep)  # (B, 1, V) logits
    first = torch.log_softmax(res.logits[:, -1].to(torch.promote_types(res.logits.dtype, torch.float32)), -1)
    rows = [(r, cont) for r, (_, conts) in enumerate(groups) for cont in conts]
    lps = [float(first[r, cont[0]]) if cont else 0.0 for r, cont in rows]  # an empty choice scores 0
    multi = [k for k, (_, cont) in enumerate(rows) if len(cont) > 1]
    if multi:
        sel = torch.tensor([rows[k][0] for k in multi], device=device)
        cache = res.cache if getattr(res, "cache", None) is not None else res.past_key_values
        cache.reorder_cache(sel)  # each row's context cache, once per multi-token choice
        K = max(len(rows[k][1]) - 1 for k in multi)
        feed = torch.zeros((len(multi), K), dtype=torch.long)
        fmask = torch.zeros((len(multi), K), dtype=torch.long)
        for m, k in enumerate(multi):
            cont = rows[k][1][:-1]  # fed tokens; token j+1 is predicted at fed position j
            feed[m, :len(cont)] = torch.tensor(cont)
            fmask[m, :len(cont)] = 1
        feed, fmask = feed.to(device), fmask.to(device)
        pos2 = mask.sum(-1)[sel][:, None] + torch.arange(K, device=device)[None]
        logits = model(input_ids=feed, attention_mask=torch.cat([mask[sel], fmask], 1), position_ids=pos2,
                       use_cache=False, **{cache_kw: cache}).logits
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        for m, k in enumerate(multi):
            cont = rows[k][1]
            tgt = torch.tensor(cont[1:], device=device)
            lps[k] += float(logp[m, :len(cont) - 1].gather(-1, tgt[:, None]).sum())
    out, k = [], 0
    for _, conts in groups:
        out.append(lps[k:k + len(conts)])
        k += len(conts)
    return out


def _norm_text(s: str) -> str:
    return " ".join(s.split())


@torch.no_grad()
def score_generation(model, tok, items: list[dict], batch_size: int = 32, max_new_tokens: int | None = None) -> dict:
    """Exact match of the greedy continuation (stopped at EOS) with the completion."""
    device = next(model.parameters()).device
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
    correct = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        prompts = [tok(it["prompt"], add_special_tokens=True)["input_ids"] for it in chunk]
        need = max(len(tok(" " + it["completion"], add_special_tokens=False)["input_ids"]) for it in chunk) + 1
        n_new = max_new_tokens or need
        T = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every row ends where generation starts
            ids[r, T - len(p):] = torch.tensor(p)
            att[r, T - len(p):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=n_new,
                             do_sample=False, pad_token_id=pad, eos_token_id=eos)[:, T:]
        for it, row in zip(chunk, gen.tolist()):
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            correct.append(int(_norm_text(tok.decode(row, skip_special_tokens=True)) == _norm_text(it["completion"])))
    return {"exact_match": sum(correct) / len(items), "n": len(items), "correct": correct}


def score_text(model, tok, items: list[dict], batch_size: int = 16) -> dict:
    """The shared token-weighted loss over the texts, and its perplexity."""
    import math

    from landscape.foundation import data, loss

    recs = [{"text": it["text"]} if "text" in it else data.validate_record({"messages": it["messages"]}, "suite")
            for it in items]
    bs = data.load_batches("suite", tok, batch_size=batch_size, max_length=position_limit(model.config),
                           records=recs, vocab_size=model.get_input_embeddings().num_embeddings)
    r = loss.evaluate(model, bs)
    return {"loss": r.loss, "perplexity": math.exp(min(r.loss, 700)), "tokens": r.tokens, "n": len(items)}


def score_suite(model, tok, suite: Suite, batch_size: int = 32) -> dict:
    if tok is None:
        raise UserError(f"suite {suite.name}: the checkpoint has no tokenizer")
    was_training = model.training
    model.eval()
    try:
        if suite.kind == "mc":
            r = score_mc(model, tok, suite.items, batch_size)
        elif suite.kind == "generation":
            r = score_generation(model, tok, suite.items, batch_size)
        else:
            r = score_text(model, tok, suite.items, max(1, batch_size // 2))
    finally:
        model.train(was_training)
    return {"metric": suite.metric, "score": r[suite.metric], **r}


def scorer_config(suite: Suite, tokenizer=None) -> dict:
    """What a cached score depends on (not the batch size: it only changes float rounding); a chat
    suite's score also depends on the chat template it is rendered with."""
    out = {"suite": suite.name, "suite_fingerprint": suite.fingerprint, "kind": suite.kind,
           "version": landscape.__version__, "per_item": True}
    if suite.kind == "chat":
        template = getattr(tokenizer, "chat_template", None) or ""
        out["chat_template"] = hashlib.sha256(str(template).encode()).hexdigest()[:16]
    return out


def evaluate_checkpoint(ck, suites: list[Suite], store=None, batch_size: int = 32, progress: bool = False) -> dict:
    """{suite name: score dict} for a loaded checkpoint, through the store's cache."""
    from landscape.foundation.progress import tqdm

    from landscape.foundation.store import Store

    store = store or Store(None)
    out = {}
    for s in tqdm(suites, desc=f"suites {Path(ck.path).name}", disable=not progress, leave=False):
        out[s.name] = store.cached(ck.fingerprint, "suite", scorer_config(s, ck.tokenizer),
                                   lambda s=s: score_suite(ck.model, ck.tokenizer, s, batch_size))
    return out


# --------------------------------------------------------------------------------------------
# Deltas

def signed_delta(metric: str, base: float, tuned: float) -> tuple[float, float | None]:
    """(delta, relative %): positive = forgotten, whichever direction the metric improves in."""
    d = (tuned - base) if metric in LOWER_IS_BETTER else (base - tuned)
    return d, (100.0 * d / base if base else None)


def _row(metric, base, tuned) -> dict:
    d, rel = signed_delta(metric, base, tuned)
    return {"metric": metric, "base": base, "tuned": tuned, "delta": d, "relative": rel}


def compare(base_scores: dict, tuned_scores: dict, suites: list[Suite]) -> dict:
    """Per-suite, per-category and average forgetting from two score dicts: ``average`` the mean of the
    category means, ``suite_mean`` the plain mean over the accuracy suites (see the module docstring)."""
    rows, cats = {}, {}
    for s in suites:
        b, t = base_scores[s.name], tuned_scores[s.name]
        rows[s.name] = {**_row(b["metric"], b["score"], t["score"]), "category": s.category, "n": b.get("n")}
        if b.get("correct") is not None and t.get("correct") is not None:
            rows[s.name]["changed"] = {"lost": [i for i, (x, y) in enumerate(zip(b["correct"], t["correct"])) if x > y],
                                       "gained": [i for i, (x, y) in enumerate(zip(b["correct"], t["correct"])) if x < y]}
        if "acc_norm" in b:
            rows[s.name]["acc_norm"] = _row("acc_norm", b["acc_norm"], t["acc_norm"])
        if b["metric"] not in LOWER_IS_BETTER:
            cats.setdefault(s.category, []).append(s.name)
    categories = {}
    for c, names in cats.items():
        b = sum(rows[n]["base"] for n in names) / len(names)
        t = sum(rows[n]["tuned"] for n in names) / len(names)
        categories[c] = {**_row("accuracy", b, t), "suites": names}
    average = suite_mean = None
    if categories:
        b = sum(c["base"] for c in categories.values()) / len(categories)
        t = sum(c["tuned"] for c in categories.values()) / len(categories)
        average = _row("accuracy", b, t)
        acc = [n for names in cats.values() for n in names]
        suite_mean = _row("accuracy", sum(rows[n]["base"] for n in acc) / len(acc),
                          sum(rows[n]["tuned"] for n in acc) / len(acc))
        average["items"] = item_uncertainty(rows, categories)
        suite_mean["items"] = item_uncertainty(rows, categories, plain=True)
    return {"suites": rows, "categories": categories, "average": average, "suite_mean": suite_mean}


ITEMS_OVER = ("the suites' items, paired (each item scored by both models); normal approximation; the "
              "variation between fine-tuning seeds is not in it")


def _weights(categories: dict, plain: bool) -> dict:
    """Each accuracy suite's weight in ``average`` (each category 1/K, shared by its suites) or, ``plain``,
    in ``suite_mean`` (1/S)."""
    if plain:
        names = [n for c in categories.values() for n in c["suites"]]
        return {n: 1 / len(names) for n in names}
    return {n: 1 / (len(categories) * len(c["suites"])) for c in categories.values() for n in c["suites"]}


def item_uncertainty(rows: dict, categories: dict, other: dict | None = None, plain: bool = False) -> dict | None:
    """How far the suites' items carry a forgetting figure: from each suite's changed items
    (``rows[suite]["changed"]``, :func:`compare`), the weighted mean of the per-item change d (1 = the
    item was lost against the base, −1 = gained), its standard error Σ w² var(d)/n over the suites, a
    95% interval, the items lost and gained, and the exact sign-test (McNemar) p-value of lost vs
    gained. ``other``: another checkpoint's rows against the same base — then d is this one's change
    minus the other's (the base cancels) and the figure is the difference in forgetting between them.
    None when a suite has no per-item scores (lm-eval tasks, scores cached before they were kept)."""
    import numpy as np
    from scipy import stats

    est = var = 0.0
    lost = gained = 0
    for name, w in _weights(categories, plain).items():
        ch = [r[name].get("changed") for r in (rows, other) if r is not None]
        n = rows[name].get("n")
        if any(c is None for c in ch) or not n:
            return None
        d = np.zeros(n)
        for sign, c in zip((1, -1), ch):
            np.add.at(d, c["lost"], sign)
            np.add.at(d, c["gained"], -sign)
        est += w * d.mean()
        var += w * w * (d.var(ddof=1) if n > 1 else 0.0) / n
        lost, gained = lost + int((d > 0).sum()), gained + int((d < 0).sum())
    se = float(np.sqrt(var))
    p = float(stats.binomtest(lost, lost + gained, 0.5).pvalue) if lost + gained else 1.0
    return {"delta": float(est), "se": se, "ci": [float(est - 1.96 * se), float(est + 1.96 * se)] if lost + gained else None,
            "lost": lost, "gained": gained, "p_sign": p, "over": ITEMS_OVER}


def forgetting(base, tuned, config: ForgettingConfig | None = None, *, store=None, load: LoadConfig | None = None,
               progress: bool = False) -> list[dict]:
    """Forgetting of each checkpoint in ``tuned`` against ``base`` (paths); the base is scored once.

    Returns one dict per tuned checkpoint: ``{"base", "tuned", "base_fingerprint",
    "tuned_fingerprint", "suites", "categories", "average", "scores"}``.
    """
    from landscape.foundation import checkpoint
    from landscape.foundation.store import Store

    cfg, load = config or ForgettingConfig(), load or LoadConfig()
    tuned = [tuned] if isinstance(tuned, (str, os.PathLike)) else list(tuned)
    if not tuned:
        raise UserError("give at least one tuned checkpoint")
    for p in [base, *tuned]:  # every path checked before anything is scored
        checkpoint.inspect_checkpoint(p, trust_pickle=load.trust_pickle)
    if not cfg.suites and not cfg.lm_eval_tasks:
        from landscape.foundation.data import refuse_toy_default

        refuse_toy_default(checkpoint.load_tokenizer(base, load.trust_remote_code), "suites")
    suite_list = load_suites(cfg.suites, cfg.categories) if (cfg.suites or not cfg.lm_eval_tasks) else []
    store = store if store is not None else Store(None)

    def scores_of(path):
        ck = checkpoint.load_checkpoint(path, load)
        sc = evaluate_checkpoint(ck, suite_list, store, cfg.batch_size, progress)
        if cfg.lm_eval_tasks:
            from landscape.measures.lmeval import score_lm_eval

            sc.update(score_lm_eval(ck, cfg.lm_eval_tasks, cfg.lm_eval_include, store, limit=cfg.lm_eval_limit,
                                    batch_size=cfg.batch_size))
        fp = ck.fingerprint
        del ck
        return fp, sc

    all_suites = suite_list + [Suite(t, "lm_eval", "mc", [], "", "lm_eval") for t in cfg.lm_eval_tasks]
    base_fp, base_scores = scores_of(base)
    results = []
    for t in tuned:
        fp, sc = scores_of(t)
        results.append({"base": str(base), "tuned": str(t), "base_fingerprint": base_fp, "tuned_fingerprint": fp,
                        **compare(base_scores, sc, all_suites),
                        "scores": {"base": base_scores, "tuned": sc}})
    return results
