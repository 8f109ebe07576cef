"""Forgetting: scorers against hand computation, signs of the deltas, caching, suite errors, lm-eval."""

import json

import pytest
import torch
from click.testing import CliRunner

from landscape.foundation import checkpoint, data, loss, toy
from landscape.foundation.configs import DataConfig, FinetuneConfig, ForgettingConfig, LoadConfig
from landscape.training import finetune
from landscape.measures import forgetting as FG
from landscape.cli.main import cli
from landscape.foundation.store import Store
from tests.conftest import write_jsonl

ENTITIES = ("cat", "dog", "mat", "forest", "city")
COLORS = ("red", "blue", "green")


def facts(shift=0):
    return {e: COLORS[(i + shift) % 3] for i, e in enumerate(ENTITIES)}


@pytest.fixture()
def suite_dir(tmp_path):
    d = tmp_path / "suites"
    d.mkdir()
    write_jsonl(d / "colors.jsonl", [{"context": f"the color of {e} is", "choices": list(COLORS),
                                      "answer": COLORS.index(c)} for e, c in facts().items()])
    write_jsonl(d / "say.jsonl", [{"prompt": f"the color of {e} is", "completion": c} for e, c in facts().items()])
    write_jsonl(d / "text.jsonl", [{"text": f"the color of {e} is {c} ."} for e, c in facts().items()])
    (d / "categories.json").write_text(json.dumps({"knowledge": ["colors"], "generation": ["say"]}))
    return d


def hand_logprob(model, tok, context, choice):
    """log p(" choice" | context) with one unbatched, unpadded forward pass."""
    ctx = tok(context)["input_ids"]
    cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_hand_scored_five_item_suite(llama_dir, suite_dir):
    ck = checkpoint.load_checkpoint(llama_dir)
    suite = FG.load_suite(suite_dir / "colors.jsonl")
    assert suite.kind == "mc" and len(suite.items) == 5
    right = []
    for it in suite.items:
        s = [hand_logprob(ck.model, ck.tokenizer, it["context"], c) for c in it["choices"]]
        right.append(int(max(range(3), key=s.__getitem__) == it["answer"]))
    r = FG.score_suite(ck.model, ck.tokenizer, suite, batch_size=4)  # batched, padded
    assert r["acc"] == sum(right) / 5 and r["n"] == 5 and r["correct"] == right
    pairs = [FG._encode_pair(ck.tokenizer, it["context"], c) for it in suite.items for c in it["choices"]]
    batched = FG.continuation_logprobs(ck.model, pairs, batch_size=4)
    by_hand = [hand_logprob(ck.model, ck.tokenizer, it["context"], c) for it in suite.items for c in it["choices"]]
    assert batched == pytest.approx(by_hand, abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_shared_context_scoring_equals_scoring_every_pair(tiny_ckpts, arch):
    """One context forward + its key/value cache for all choices gives the pairwise log-likelihoods:
    contexts of different lengths (left padding), one-token and multi-token choices."""
    ck = checkpoint.load_checkpoint(tiny_ckpts[arch])
    tok = ck.tokenizer
    items = [("the cat sat on the", ["mat", "red blue", "dog is red ."]), ("one plus two is", ["three", "one two"]),
             ("the color of the cat is blue . the dog", ["is", "sat on the mat", "lives in forest city"])]
    groups = []
    for ctx, choices in items:
        enc = [FG._encode_pair(tok, ctx, c) for c in choices]
        groups.append((enc[0][0], [c for _, c in enc]))
    shared = FG.choice_logprobs(ck.model, groups, batch_size=2)
    pairwise = [FG.continuation_logprobs(ck.model, [(ctx, c) for c in conts]) for ctx, conts in groups]
    for a, b in zip(shared, pairwise):
        assert a == pytest.approx(b, abs=1e-5)
    if arch == "llama":  # the same through a PEFT wrapper (its forward takes **kwargs), with no deprecation warning
        import warnings

        from peft import LoraConfig, get_peft_model

        lora = get_peft_model(ck.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            wrapped = FG.choice_logprobs(lora, groups, batch_size=2)
        for a, b in zip(wrapped, pairwise):  # LoRA's B starts at zero: the base's values
            assert a == pytest.approx(b, abs=1e-5)


def test_length_normalisation_changes_the_pick_where_it_should(monkeypatch):
    items = [{"context": "x", "choices": ["a", "bbbbbbbb"], "answer": 1},  # Σ favours "a", per-char "bbbbbbbb"
             {"context": "x", "choices": ["cc", "dd"], "answer": 0}]  # equal lengths: both agree
    monkeypatch.setattr(FG, "_encode_pair", lambda tok, c, ch: ([0], [1]))
    monkeypatch.setattr(FG, "choice_logprobs", lambda m, groups, bs=32: [[-2.0, -3.0], [-1.0, -4.0]])
    r = FG.score_mc(None, None, items)
    assert r["acc"] == 0.5 and r["acc_norm"] == 1.0


def test_generation_exact_match_against_a_manual_greedy_decode(llama_dir, tmp_path):
    """Greedy by hand: g1 g2 g3 g4. With g4 declared the EOS token, the model "says" g1 g2 g3 and stops:
    that completion matches; the same plus one word does not; g1 g2 alone does not (no stop there)."""
    import copy

    ck = checkpoint.load_checkpoint(llama_dir)
    tok = copy.deepcopy(ck.tokenizer)
    for prompt in ("the color of cat is", "the dog lives in", "one plus two is", "a red mat", "the city"):
        ids = tok(prompt)["input_ids"]
        n0 = len(ids)
        for _ in range(4):
            with torch.no_grad():
                ids.append(int(ck.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        g = ids[n0:]
        if g[3] not in g[:3] and not set(tok.convert_ids_to_tokens(g)) & set(tok.all_special_tokens):
            break
    else:
        pytest.skip("no prompt gives four distinct ordinary greedy tokens on this random model")
    tok.eos_token = tok.convert_ids_to_tokens(g[3])
    said = tok.decode(g[:3], skip_special_tokens=True)
    suite = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": prompt, "completion": said},
                                                 {"prompt": prompt, "completion": said + " extra"},
                                                 {"prompt": prompt, "completion": tok.decode(g[:2])},
                                                 {"prompt": prompt, "completion": "  " + said.replace(" ", "   ")}])
    r = FG.score_suite(ck.model, tok, FG.load_suite(suite), batch_size=3)
    assert r["exact_match"] == 0.5 and r["n"] == 4 and r["correct"] == [1, 0, 0, 1]  # whitespace-normalised


def test_text_suite_is_the_shared_loss(llama_dir, suite_dir):
    ck = checkpoint.load_checkpoint(llama_dir)
    r = FG.score_suite(ck.model, ck.tokenizer, FG.load_suite(suite_dir / "text.jsonl"))
    ref = loss.evaluate(ck.model, data.batches_for(ck, DataConfig(data=str(suite_dir / "text.jsonl"), batch_size=2)))
    assert r["metric"] == "loss" and r["score"] == pytest.approx(ref.loss, rel=1e-6)


def test_base_vs_base_is_exactly_zero(llama_dir, suite_dir):
    (r,) = FG.forgetting(llama_dir, [llama_dir], ForgettingConfig(suites=[suite_dir]), load=LoadConfig(device="cpu"))
    assert set(r["suites"]) == {"colors", "say", "text"}
    assert all(row["delta"] == 0.0 for row in r["suites"].values())
    assert all(c["delta"] == 0.0 for c in r["categories"].values())
    assert r["average"]["delta"] == 0.0
    assert r["suites"]["colors"]["category"] == "knowledge" and r["suites"]["text"]["category"] == "other"
    assert "other" not in r["categories"]  # the loss suite is not averaged with accuracies


def train_on(model, tok, records, steps, seed=0):
    bs = data.load_batches("mem", tok, batch_size=5, max_length=16, records=records)
    finetune.train(model, bs, FinetuneConfig(max_steps=steps, lr=1e-2, seed=seed, grad_clip=None))


def test_destroying_fine_tune_shows_positive_forgetting(tokenizer, suite_dir, tmp_path):
    cfg = toy.tiny_config("llama", vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=32, layers=2, heads=4)
    model = toy.build_model(cfg, seed=0)
    train_on(model, tokenizer, [{"text": f"the color of {e} is {c} ."} for e, c in facts().items()], 150)
    checkpoint.save_checkpoint(model, tokenizer, tmp_path / "base")
    train_on(model, tokenizer, [{"text": f"the color of {e} is {c} ."} for e, c in facts(shift=1).items()], 150)
    checkpoint.save_checkpoint(model, tokenizer, tmp_path / "tuned")
    (r,) = FG.forgetting(tmp_path / "base", [tmp_path / "tuned"], ForgettingConfig(suites=[suite_dir]), load=LoadConfig(device="cpu"))
    colors = r["suites"]["colors"]
    assert colors["base"] == 1.0 and colors["tuned"] <= 0.2
    assert colors["delta"] == pytest.approx(colors["base"] - colors["tuned"]) and colors["delta"] >= 0.8
    assert colors["relative"] == pytest.approx(100 * colors["delta"])
    assert r["suites"]["text"]["delta"] > 0  # loss went up: positive = forgotten for losses too
    assert r["average"]["delta"] > 0


def test_scores_are_cached_and_the_base_is_scored_once(llama_dir, suite_dir, tmp_path, monkeypatch):
    calls = []
    real = FG.score_suite
    monkeypatch.setattr(FG, "score_suite", lambda *a, **k: calls.append(a[2].name) or real(*a, **k))
    store = Store(tmp_path / "r.sqlite")
    res = FG.forgetting(llama_dir, [llama_dir, llama_dir], ForgettingConfig(suites=[suite_dir / "colors.jsonl"]),
                        store=store, load=LoadConfig(device="cpu"))
    assert len(res) == 2 and calls == ["colors"]  # same fingerprint: one scoring for all three
    calls.clear()
    again = FG.forgetting(llama_dir, [llama_dir], ForgettingConfig(suites=[suite_dir / "colors.jsonl"]),
                          store=Store(tmp_path / "r.sqlite"), load=LoadConfig(device="cpu"))
    assert calls == [] and again[0]["scores"]["base"]["colors"]["cached"]
    write_jsonl(suite_dir / "colors.jsonl", [{"context": "the color of cat is", "choices": ["red", "blue"],
                                              "answer": 1}])
    FG.forgetting(llama_dir, [llama_dir], ForgettingConfig(suites=[suite_dir / "colors.jsonl"]),
                  store=Store(tmp_path / "r.sqlite"))
    assert calls == ["colors"]  # a changed suite is a new question


@pytest.mark.parametrize("row, match", [
    ({"context": "a", "choices": ["x", "y"]}, "missing 'answer'"),
    ({"context": "a", "choices": ["x", "y"], "answer": 2}, "answer"),
    ({"context": "a", "choices": ["x", "y"], "answer": True}, "answer"),
    ({"context": "a", "choices": [], "answer": 0}, "choices"),
    ({"context": "a", "choices": ["x", ""], "answer": 0}, "choices"),
    ({"prompt": "a", "target": "b"}, "expected"),
    ({"text": ""}, "non-empty"),
])
def test_malformed_suites_exit_2_with_one_line(llama_dir, tmp_path, row, match):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "ok", "choices": ["x", "y"], "answer": 0}, row]
                      if "context" in row else [row])
    r = CliRunner().invoke(cli, ["forgetting", str(llama_dir), str(llama_dir), "--suite", str(bad)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert "bad.jsonl:" in lines[0]


def test_other_suite_errors(llama_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a"}, {"prompt": "a", "completion": "b"}])
    for args, match in (([str(empty)], "empty suite"), ([str(mixed)], "one kind"),
                        ([str(tmp_path / "nope.jsonl")], "no such suite")):
        r = CliRunner().invoke(cli, ["forgetting", str(llama_dir), str(llama_dir), "--suite", *args])
        assert r.exit_code == 2 and match in r.stderr, r.output
    r = CliRunner().invoke(cli, ["forgetting", str(llama_dir), str(tmp_path / "missing")])
    assert r.exit_code == 2 and "missing" in r.stderr


def test_cli_json_shape(llama_dir, suite_dir):
    r = CliRunner().invoke(cli, ["forgetting", str(llama_dir), str(llama_dir), "--suite", str(suite_dir), "--json"])
    assert r.exit_code == 0, r.output
    (out,) = json.loads(r.stdout)  # a list whether one checkpoint or several
    r = CliRunner().invoke(cli, ["forgetting", str(llama_dir), str(llama_dir), str(llama_dir), "--suite",
                                 str(suite_dir), "--json"])
    assert [x["tuned"] for x in json.loads(r.stdout)] == [str(llama_dir)] * 2
    assert {"base", "tuned", "suites", "categories", "average"} <= set(out)
    assert set(out["suites"]["colors"]) >= {"metric", "base", "tuned", "delta", "relative"}
    assert set(out["average"]) == {"metric", "base", "tuned", "delta", "relative", "items"}
    assert (out["average"]["items"]["lost"], out["average"]["items"]["gained"]) == (0, 0)  # base against itself


def test_lm_eval_adapter_agrees_with_our_scorer(llama_dir, suite_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (optional extra [lmeval])")
    pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate")
    from landscape.measures import lmeval

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    lmeval.write_task_yaml(suite_dir / "colors.jsonl", tmp_path / "tasks", name="toy_colors")
    ck = checkpoint.load_checkpoint(llama_dir)
    theirs = lmeval.score_lm_eval(ck, ["toy_colors"], include=tmp_path / "tasks")["toy_colors"]
    ours = FG.score_suite(ck.model, ck.tokenizer, FG.load_suite(suite_dir / "colors.jsonl"))
    assert theirs["metric"] == "acc" and theirs["n"] == 5
    assert theirs["acc"] == ours["acc"] and theirs["acc_norm"] == ours["acc_norm"]
    (r,) = FG.forgetting(llama_dir, [llama_dir], ForgettingConfig(lm_eval_tasks=["toy_colors"],
                                                                  lm_eval_include=tmp_path / "tasks"))
    assert r["suites"]["toy_colors"]["delta"] == 0.0


def test_average_is_the_mean_of_category_means_and_suite_mean_the_plain_mean():
    """Two protocols by hand: knowledge holds three suites, reasoning one; the loss suite enters neither."""
    suites = [FG.Suite(n, n, "mc", [], n, category=c) for n, c in
              (("a", "knowledge"), ("b", "knowledge"), ("c", "knowledge"), ("d", "reasoning"))]
    suites.append(FG.Suite("txt", "txt", "text", [], "txt", category="other"))
    base = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    tuned = {"a": 0.6, "b": 0.8, "c": 0.7, "d": 0.6}  # only a forgets: 0.3
    bs = {**{k: {"metric": "accuracy", "score": v} for k, v in base.items()}, "txt": {"metric": "loss", "score": 2.0}}
    ts = {**{k: {"metric": "accuracy", "score": v} for k, v in tuned.items()}, "txt": {"metric": "loss", "score": 9.0}}
    r = FG.compare(bs, ts, suites)
    # Li et al.: knowledge forgets 0.1 (mean of 0.3, 0, 0), reasoning 0 → 0.05
    assert r["average"]["delta"] == pytest.approx(0.05, abs=1e-12)
    # Biderman et al.: 0.3 over four suites → 0.075
    assert r["suite_mean"]["delta"] == pytest.approx(0.075, abs=1e-12)
    assert r["suite_mean"]["base"] == pytest.approx(0.75, abs=1e-12)


def _scored(correct: list[int]) -> dict:
    return {"metric": "acc", "score": sum(correct) / len(correct), "n": len(correct), "correct": correct}


def test_item_interval_of_forgetting_by_hand():
    """The items' interval: two categories (knowledge: a, b; reasoning: c), weights 1/4, 1/4, 1/2. The
    estimate is the average's delta exactly; the SE is Σ w² var(d)/n written out; lost/gained count the
    flipped items; the sign test of 14 lost against 0 gained is 2 · 2⁻¹⁴; against itself nothing changed."""
    import numpy as np

    g = np.random.default_rng(0)
    n = {"a": 10, "b": 8, "c": 12}
    suites = [FG.Suite(k, k, "mc", [], k, category=c) for k, c in (("a", "knowledge"), ("b", "knowledge"), ("c", "reasoning"))]
    base = {k: [int(x) for x in g.random(m) < 0.8] for k, m in n.items()}
    tuned = {k: [int(x) for x in g.random(m) < 0.6] for k, m in n.items()}
    r = FG.compare({k: _scored(v) for k, v in base.items()}, {k: _scored(v) for k, v in tuned.items()}, suites)
    it = r["average"]["items"]
    assert it["delta"] == pytest.approx(r["average"]["delta"], abs=1e-12)
    d = {k: np.array(base[k]) - np.array(tuned[k]) for k in n}
    w = {"a": 0.25, "b": 0.25, "c": 0.5}
    se = np.sqrt(sum(w[k] ** 2 * d[k].var(ddof=1) / n[k] for k in n))
    assert it["se"] == pytest.approx(se, rel=1e-12)
    assert it["ci"] == pytest.approx([it["delta"] - 1.96 * se, it["delta"] + 1.96 * se], rel=1e-12)
    assert (it["lost"], it["gained"]) == (sum(int((x > 0).sum()) for x in d.values()),
                                          sum(int((x < 0).sum()) for x in d.values()))
    assert r["suite_mean"]["items"]["delta"] == pytest.approx(r["suite_mean"]["delta"], abs=1e-12)
    # one checkpoint against another (the base cancels): the difference of their forgettings
    other = {k: [int(x) for x in g.random(m) < 0.7] for k, m in n.items()}
    r2 = FG.compare({k: _scored(v) for k, v in base.items()}, {k: _scored(v) for k, v in other.items()}, suites)
    diff = FG.item_uncertainty(r["suites"], r["categories"], other=r2["suites"])
    assert diff["delta"] == pytest.approx(r["average"]["delta"] - r2["average"]["delta"], abs=1e-12)
    same = FG.item_uncertainty(r["suites"], r["categories"], other=r["suites"])
    assert (same["delta"], same["lost"], same["gained"], same["ci"], same["p_sign"]) == (0.0, 0, 0, None, 1.0)
    # fourteen items lost, none gained
    lost = {"a": [1] * 10, "b": [1] * 8, "c": [1] * 12}
    kept = {"a": [0] * 10, "b": [0] * 4 + [1] * 4, "c": [1] * 12}
    r3 = FG.compare({k: _scored(v) for k, v in lost.items()}, {k: _scored(v) for k, v in kept.items()}, suites)
    assert (r3["average"]["items"]["lost"], r3["average"]["items"]["gained"]) == (14, 0)
    assert r3["average"]["items"]["p_sign"] == pytest.approx(2 * 0.5 ** 14, rel=1e-12)


def test_items_interval_is_none_without_per_item_scores():
    """lm-eval tasks and scores cached before items were kept carry no per-item record: no interval."""
    suites = [FG.Suite("a", "a", "mc", [], "a", category="k")]
    r = FG.compare({"a": {"metric": "acc", "score": 0.9, "n": 10}}, {"a": {"metric": "acc", "score": 0.5, "n": 10}}, suites)
    assert r["average"]["items"] is None and r["average"]["delta"] == pytest.approx(0.4)
