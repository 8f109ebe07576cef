"""FSDP2 sharding (``--shard fsdp``) under torchrun with gloo: a sharded model gives the one-process
numbers — loss, curvature, sharpness, surfaces, forgetting — each rank holds only its rows, reads
only its rows of the file, and every measurement leaves them bit-identical."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import write_jsonl
from tests.test_distributed import TORCHRUN, pytestmark, run  # noqa: F401 (the skip marker)

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def evald(tmp_path_factory):
    texts = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the a cat .",
             "the color of the cat is blue .", "red blue green .", "the dog lives in the forest .", "two ."]
    return write_jsonl(tmp_path_factory.mktemp("fsdp") / "eval.jsonl", [{"text": t} for t in texts])


def test_sharded_curvature_and_sharpness_equal_one_process(llama_dir, evald):
    # 3 batches over 2 ranks: one rank runs a zero-weight padding pass so that FSDP's gathers pair up
    common = ["sharpness", llama_dir, "--data", evald, "--batch-size", 3, "--metrics",
              "lambda_max,lambda_min,trace,sam,asam,eps,avg", "--hvp-method", "fd", "--trace-samples", 5,
              "--tol", 1e-6, "--device", "cpu", "--json", "--quiet"]
    one = json.loads(run(common).stdout)
    two = json.loads(run([*common, "--shard", "fsdp"], n=2).stdout)
    assert two["config"]["shard"] == {"mode": "fsdp", "processes": 2}
    assert one["config"]["shard"]["mode"] == "none"
    assert two["config"]["n_params"] == one["config"]["n_params"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-7)
    for k in ("lambda_max", "lambda_min", "hessian_trace"):  # fd products: rounding differs, ~1e-5
        assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-4, abs=1e-4), k
    for k in ("sam_sharpness", "asam_sharpness", "eps_sharpness", "avg_sharpness"):
        assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-4, abs=1e-7), k
    assert len(two["cost"]["peak_rss_gb_per_process"]) == 2


def test_sharded_surface_equals_one_process(llama_dir, evald, tmp_path):
    common = ["surface", llama_dir, "--data", evald, "--batch-size", 3, "--x", "-1:1:5", "--y", "-1:1:3",
              "--device", "cpu", "--quiet"]
    run([*common, "--out", tmp_path / "one.h5"])
    run([*common, "--out", tmp_path / "two.h5", "--shard", "fsdp"], n=2)
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        np.testing.assert_allclose(b["loss"][()], a["loss"][()], rtol=1e-5)
        assert b["done"][()].all()


def test_sharded_loss_and_forgetting_equal_one_process(llama_dir, evald, tmp_path):
    one = json.loads(run(["loss", llama_dir, "--data", evald, "--batch-size", 3, "--device", "cpu", "--json"]).stdout)
    two = json.loads(run(["loss", llama_dir, "--data", evald, "--batch-size", 3, "--device", "cpu", "--json",
                          "--shard", "fsdp"], n=2).stdout)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-7) and two["tokens"] == one["tokens"]
    suite = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "the cat sat on", "completion": "the mat ."},
                                                 {"prompt": "one plus two is", "completion": "three ."},
                                                 {"prompt": "the dog is", "completion": "red ."}])
    args = ["forgetting", llama_dir, llama_dir, "--suite", suite, "--suite", evald, "--device", "cpu", "--json",
            "--quiet"]
    a = json.loads(run(args, tmp=tmp_path).stdout)
    b = json.loads(run([*args, "--shard", "fsdp"], n=2, tmp=tmp_path).stdout)
    assert json.dumps(a["suites"], sort_keys=True) == json.dumps(b["suites"], sort_keys=True)


def test_each_rank_holds_and_reads_its_rows_and_measurements_leave_them_bit_identical(llama_dir, evald, tmp_path):
    out = tmp_path / "check.json"
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node=2", str(HERE / "fsdp_check.py"), str(llama_dir), str(evald),
           str(out)]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent), "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    for rank in got["ranks"]:
        assert rank == {**rank, "rows_match": True, "unchanged": True, "sharded": True}
    assert sum(rk["held"] for rk in got["ranks"]) == got["total"]  # the rows partition the model
    assert max(rk["held"] for rk in got["ranks"]) <= 0.55 * got["total"]


def test_sharding_refusals_are_one_line(llama_dir, evald):
    base = [sys.executable, "-m", "landscape.cli", "sharpness", str(llama_dir), "--data", str(evald), "--metrics",
            "lambda_max", "--device", "cpu"]
    r = subprocess.run([*base, "--shard", "fsdp"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "torchrun" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    env_cmd = [TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "landscape.cli", "sharpness", str(llama_dir),
               "--data", str(evald), "--metrics", "lambda_max", "--device", "cpu", "--shard", "fsdp",
               "--hvp-method", "reverse"]
    r = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent),
                            "PATH": str(Path(sys.executable).parent)})
    assert r.returncode != 0 and "fd" in r.stderr and "double backward" in r.stderr
