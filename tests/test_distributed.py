"""Two gloo processes under torchrun give the one-process results: surfaces, curvature, SAM training."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from landscape.foundation import checkpoint
from tests.conftest import write_jsonl

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or TORCHRUN is None,
                                reason="torch.distributed / torchrun not available")


def run(args, n=1, tmp=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    if n == 1:
        cmd = [sys.executable, "-m", "landscape.cli", *map(str, args)]
    else:
        cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={n}", "-m", "landscape.cli", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    texts = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the a cat .",
             "the color of the cat is blue .", "red blue green .", "the dog lives in the forest .", "two ."]
    evald = write_jsonl(root / "eval.jsonl", [{"text": t} for t in texts])
    train = write_jsonl(root / "train.jsonl", [{"prompt": f"task : reverse input : {a} {b} output :",
                                                "completion": f"{b} {a}"}
                                               for a in ("red", "blue", "cat") for b in ("one", "two", "mat", "dog")])
    return root, evald, train


def test_two_process_surface_equals_one_process(llama_dir, data, tmp_path):
    _, evald, _ = data
    common = ["surface", llama_dir, "--data", evald, "--batch-size", 2, "--x", "-1:1:5", "--y", "-1:1:4",
              "--device", "cpu", "--quiet"]
    run([*common, "--out", tmp_path / "one.h5"])
    r = run([*common, "--out", tmp_path / "two.h5", "--json"], n=2)
    assert len([ln for ln in r.stdout.splitlines() if ln.strip()]) == 1  # rank 0 alone prints
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        np.testing.assert_allclose(b["loss"][()], a["loss"][()], rtol=1e-6)
        assert b["done"][()].all()
    assert not (tmp_path / "two.h5.partial").exists()


def test_two_process_curvature_equals_one_process(llama_dir, data):
    _, evald, _ = data
    common = ["sharpness", llama_dir, "--data", evald, "--batch-size", 2, "--metrics", "lambda_max,trace,sam",
              "--trace-samples", 5, "--tol", 1e-6, "--device", "cpu", "--json", "--quiet"]
    one = json.loads(run(common).stdout)
    two = json.loads(run(common, n=2).stdout)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    for k in ("lambda_max", "hessian_trace", "sam_sharpness"):
        assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-4), k


def test_two_process_sam_training_equals_one_process_with_the_same_global_batch(llama_dir, data, tmp_path):
    _, _, train = data
    common = ["finetune", llama_dir, "--data", train, "--optimizer", "sam", "--rho", 0.05, "--lr", 3e-3,
              "--max-steps", 3, "--batch-size", 2, "--eval-fraction", 0, "--device", "cpu", "--quiet"]
    run([*common, "--grad-accum", 2, "--out", tmp_path / "one"])  # 2 micro-batches, per-micro-batch ε
    run([*common, "--grad-accum", 1, "--out", tmp_path / "two"], n=2)  # 2 ranks × 1 micro-batch
    a = checkpoint.load_checkpoint(tmp_path / "one").model.state_dict()
    b = checkpoint.load_checkpoint(tmp_path / "two").model.state_dict()
    base = checkpoint.load_checkpoint(llama_dir).model.state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)
    log = json.loads((tmp_path / "two" / "training_log.json").read_text())
    log1 = json.loads((tmp_path / "one" / "training_log.json").read_text())
    assert [r["loss"] for r in log["log"]] == pytest.approx([r["loss"] for r in log1["log"]], rel=1e-5)


def test_two_process_forgetting_equals_one_process(llama_dir, tiny_ckpts, tmp_path):
    suite = write_jsonl(tmp_path / "colors.jsonl", [{"context": f"the color of {e} is", "choices": ["red", "blue", "green"],
                                                     "answer": i % 3} for i, e in enumerate(["cat", "dog", "mat"])])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "the cat sat on the mat ."}, {"text": "the dog is red ."}])
    args = ["forgetting", llama_dir, tiny_ckpts["qwen2"], "--suite", suite, "--suite", text, "--json", "--quiet",
            "--device", "cpu"]
    (one,), (two,) = json.loads(run(args).stdout), json.loads(run(args, n=2).stdout)
    for name in ("colors", "text"):
        assert two["suites"][name]["tuned"] == pytest.approx(one["suites"][name]["tuned"], rel=1e-6)
        assert two["suites"][name]["delta"] == pytest.approx(one["suites"][name]["delta"], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("metrics", ["loss,lambda_max,predictors", "loss,meter"])
def test_two_process_probe_equals_one_process(llama_dir, data, tmp_path, metrics):
    """finetune --probe-every under torchrun: every rank measures its share of the probe batches and the
    sums are all-reduced, so the trajectory equals one process's (same global batch) — the full
    predictors, and the forgetting meter (its step-0 gradient and log-probabilities per rank)."""
    _, evald, train = data
    common = ["finetune", llama_dir, "--data", train, "--lr", 3e-3, "--max-steps", 2, "--batch-size", 2,
              "--eval-fraction", 0, "--device", "cpu", "--quiet", "--probe-every", 1, "--probe-data", evald,
              "--probe-batch-size", 2, "--probe-num-batches", 2, "--probe-metrics", metrics,
              "--probe-tol", 1e-6, "--probe-max-iter", 30]
    run([*common, "--grad-accum", 2, "--out", tmp_path / "one"])
    run([*common, "--grad-accum", 1, "--out", tmp_path / "two"], n=2)
    one, two = (json.loads((tmp_path / k / "trajectory.json").read_text())["records"] for k in ("one", "two"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1, 2]
    for a, b in zip(one, two):
        for k in ("loss", "lambda_max", "delta_norm", "general_loss_increase", "grad_delta", "kl_base_tuned"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (a["step"], k)
    assert metrics == "loss,lambda_max,predictors" or one[-1]["kl_base_tuned"] > 0


def test_all_reduce_packs_small_tensors_and_reduces_large_ones_in_place(tmp_path):
    """Gradients and vectors are summed over ranks in buckets of at most BUCKET_BYTES (a tensor larger
    than that alone, in place), never in one weight-sized concatenation; every tensor, contiguous or not,
    comes back whole (2 gloo ranks: each value doubled)."""
    script = tmp_path / "ar.py"
    script.write_text(
        "import torch\n"
        "from landscape.foundation import distributed as dist\n"
        "dist.init_from_env()\n"
        "dist.BUCKET_BYTES = 64\n"
        "g = torch.Generator().manual_seed(0)\n"
        "ts = [torch.randn(3, generator=g), torch.randn(40, generator=g), torch.randn(5, 4, generator=g).t(),\n"
        "      torch.randn(2, generator=g, dtype=torch.float64), torch.randn(7, generator=g)]\n"
        "before = [t.clone() for t in ts]\n"
        "sizes, cat = [], torch.cat\n"
        "def spy(xs, *a, **k):\n"
        "    out = cat(xs, *a, **k)\n"
        "    sizes.append(out.numel() * out.element_size())\n"
        "    return out\n"
        "torch.cat = spy\n"
        "dist.all_reduce_(ts)\n"
        "assert all(torch.equal(t, 2 * b) and t.shape == b.shape for t, b in zip(ts, before))\n"
        "assert sizes and max(sizes) <= 64, sizes\n"
        "dist.shutdown()\n")
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node=2", str(script)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
