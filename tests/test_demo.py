"""End-to-end tier: the demo through the CLI, building its model from scratch (slow; CI runs it)."""

import json

import pytest
from click.testing import CliRunner

from landscape.cli.main import cli


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path):
    r = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(tmp_path / "demo"), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["losses"]["general"] < 2.0  # pretraining worked: far below ln(vocab) ≈ 5.5
    assert all(out["losses"][f"task:{t}"] > out["losses"]["general"] for t in ("count", "reverse", "translate"))
    assert out["curvature"]["lambda_max"] > 0 and out["curvature"]["lambda_min"] < out["curvature"]["lambda_max"]
    # a second run reuses the model instead of training again
    r2 = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(tmp_path / "demo"), "--json", "--quiet"])
    assert json.loads(r2.stdout)["model"]["reused"] is True
    r3 = CliRunner().invoke(cli, ["info", str(tmp_path / "demo" / "base"), "--json"])
    assert json.loads(r3.stdout)["model_type"] == "llama"
