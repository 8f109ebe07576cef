"""benchmarks/gpu.py is run by hand on GPU machines; CI runs it on the CPU with a tiny config so that
it cannot rot between GPU sessions."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_bench_script_runs_on_cpu_with_a_tiny_config(tmp_path):
    out = tmp_path / "g.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--config", "tiny", "--big", "tiny",
                        "--device", "cpu", "--dtype", "float32", "--seq", "32", "--batch-size", "2", "--batches", "2",
                        "--repeat", "1", "--no-readme", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    m = res["model"]
    for k in ("surface_over_forward", "surface_regenerated_over_forward", "hvp_over_fwd_bwd", "sam_over_adamw"):
        assert math.isfinite(m[k]) and m[k] > 0, k
    assert m["hvp_graph_kept"] is True  # a tiny model's graphs fit
    assert res["big"]["directions"] == "regenerated"
    assert "| surface time per point / bare forward (directions held) |" in r.stdout


@pytest.mark.slow
def test_sharded_gpu_bench_script_runs_on_two_cpu_processes_with_a_tiny_config():
    from tests.test_distributed import TORCHRUN

    if TORCHRUN is None:
        pytest.skip("torchrun not available")
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node=2", str(ROOT / "benchmarks" / "gpu_fsdp.py"),
                        "--config", "tiny", "--seq", "32", "--batch-size", "4", "--repeat", "1", "--no-readme"],
                       capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                         "PATH": str(Path(sys.executable).parent)})
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout[r.stdout.index("["):])[0]
    assert row["gpus"] == 2 and row["params"] > 0
    for k in ("hvp_over_grad", "sam_over_adamw", "peak_gb_per_gpu"):
        assert math.isfinite(row[k]) and row[k] > 0, k
    assert 1.2 < row["hvp_over_grad"] < 4  # an fd product is two gradients


def test_real_1b_bench_jobs_run_on_a_tiny_checkpoint(llama_dir):
    """The 1.5B jobs take 20+ minutes each: a key error after the measurement loses it all (it did once).
    Every job runs here on the tiny model, in its own process as on the real one."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.real_1b import run

    for variant in ("float32", "bf16", "float32_of_bf16"):
        r = run("full", ckpt=str(llama_dir), variant=variant, seed=0)
        assert "error" not in r and r["lambda_max"] > 0 and r["eigen"]["hvps"] == r["hvps"], r
    same = [run("full", ckpt=str(llama_dir), variant=v, seed=0)["lambda_max"] for v in ("bf16", "float32_of_bf16")]
    assert same[0] == same[1]  # a bf16 checkpoint's view measures exactly its weights in float32
    r = run("block", ckpt=str(llama_dir), variant="bf16", params=r"^model\.layers\.1\.")
    assert "error" not in r and r["converged"] and r["dtype"] == "bfloat16", r
    r = run("plan", ckpt=str(llama_dir), dtype="float32")
    assert "error" not in r and r["plan"]["peak_bytes"] > r["plan"]["start_bytes"], r
    balls = [run("ball", ckpt=str(llama_dir), variant=v) for v in ("bf16", "float32_of_bf16")]
    assert all("error" not in b and b["sam"] > 0 and b["eps"] > 0 for b in balls), balls
    assert balls[0]["sam"] == balls[1]["sam"] and balls[0]["eps"] == balls[1]["eps"]
    r = run("line", ckpt=str(llama_dir), variant="bf16")
    assert "error" not in r and len(r["loss"]) == 5 and r["loss"][2] == pytest.approx(r["loss_at_origin"]), r
    task = str(ROOT / "data" / "real" / "tasks" / "reverse" / "train.jsonl")
    for opt, rounding in (("adamw", "stochastic"), ("lora-adamw", "none")):  # bf16 full; LoRA on float32
        r = run("train", ckpt=str(llama_dir), opt=opt, task=task)
        assert "error" not in r and r["steps"] == 3 and r["update_rounding"].startswith(rounding), r
    r = run("score", ckpt=str(llama_dir), suites=str(ROOT / "data" / "real" / "suites"))
    assert "error" not in r and r["items"] == 120 and r["seconds_per_item"] > 0, r
