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
# The sharded and the one-process gradients differ in their summation order, and fd divides that
# rounding by the step: these tests compare the code paths at a step where it stays below their
# tolerances (the 21k-parameter test Llama's default step before 2026-12-05; the default is now half,
# tuned for the eigenvalue on SmolLM2, where trace probes here were 6e-4–2e-3 apart).
FD_STEP = ["--fd-step", 1.4e-4]


def check(mode, *args):
    """tests/fsdp_check.py MODE ARGS under torchrun (two gloo ranks); the last arg is the cwd."""
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node=2", str(HERE / "fsdp_check.py"), mode, *map(str, args[:-1])]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent), "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=args[-1])
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def evald(tmp_path_factory):
    texts = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the a cat .",
             "the color of the cat is blue .", "red blue green .", "the dog lives in the forest .", "two ."]
    return write_jsonl(tmp_path_factory.mktemp("fsdp") / "eval.jsonl", [{"text": t} for t in texts])


def test_sharded_curvature_and_sharpness_equal_one_process(llama_dir, evald):
    # 3 batches over 2 ranks: one rank runs a zero-weight padding pass so that FSDP's gathers pair up
    common = ["sharpness", llama_dir, "--data", evald, "--batch-size", 3, "--metrics",
              "lambda_max,lambda_min,trace,sam,asam,eps,avg", "--hvp-method", "fd", "--trace-samples", 5,
              "--tol", 1e-6, "--device", "cpu", "--json", "--quiet", *FD_STEP]
    one = json.loads(run(common).stdout)
    two = json.loads(run([*common, "--shard", "fsdp"], n=2).stdout)
    assert two["config"]["shard"] == {"mode": "fsdp", "processes": 2}
    assert one["config"]["shard"]["mode"] == "none"
    assert two["config"]["n_params"] == one["config"]["n_params"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-7)
    for k in ("lambda_max", "lambda_min"):  # fd products: rounding differs, ~1e-5
        # tol 1e-6 is below the fd products' accuracy: both report null, with the reason, alike; the
        # estimates behind them still agree
        assert (one["metrics"][k] is None) == (two["metrics"][k] is None) and ("nulls" in one) == ("nulls" in two)
        est = lambda r: r["metrics"]["details"]["eigen"][k]  # noqa: E731
        assert est(two) == pytest.approx(est(one), rel=1e-4, abs=1e-4), k
    # a Rademacher probe's fd product: the two summation orders give products 1.4e-4 (nearest rounding)
    # and 1.9e-4 (dithered) apart at this step (measured 2026-12-05); five of them summed, 1.4e-3
    assert two["metrics"]["hessian_trace"] == pytest.approx(one["metrics"]["hessian_trace"], rel=5e-3)
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
    mc = write_jsonl(tmp_path / "colors.jsonl", [{"context": f"the color of {e} is", "choices": ["red", "blue", "green"],
                                                  "answer": i % 3} for i, e in enumerate(["cat", "dog", "mat"])])
    args = ["forgetting", llama_dir, llama_dir, "--suite", suite, "--suite", mc, "--suite", evald, "--device", "cpu",
            "--json", "--quiet"]
    (a,) = json.loads(run(args, tmp=tmp_path).stdout)  # a list, one result per tuned checkpoint
    (b,) = json.loads(run([*args, "--shard", "fsdp"], n=2, tmp=tmp_path).stdout)
    assert set(a["suites"]) == {"gen", "colors", "eval"}  # generation, multiple choice, loss
    assert json.dumps(a["suites"], sort_keys=True) == json.dumps(b["suites"], sort_keys=True)


def test_each_rank_holds_and_reads_its_rows_and_measurements_leave_them_bit_identical(llama_dir, evald, tmp_path):
    out = tmp_path / "check.json"
    check("measure", llama_dir, evald, out, tmp_path)
    got = json.loads(out.read_text())
    for rank in got["ranks"]:
        assert rank == {**rank, "rows_match": True, "unchanged": True, "sharded": True}
        # a whole model measured after a sharded one in the same process: the same numbers
        for k in ("sam", "eps"):
            assert rank[f"whole_{k}"] == pytest.approx(rank[f"sharded_{k}"], rel=1e-4, abs=1e-7), k
    assert sum(rk["held"] for rk in got["ranks"]) == got["total"]  # the rows partition the model
    assert max(rk["held"] for rk in got["ranks"]) <= 0.55 * got["total"]


def test_dithered_fd_steps_on_the_shards_equal_the_one_process_steps(llama_dir, tmp_path):
    out = tmp_path / "dither.json"
    check("dither", llama_dir, out, tmp_path)
    got = json.loads(out.read_text())
    assert all(rk["same"] for rk in got) and all(rk["moved"] > 0 for rk in got)


def test_a_sharded_bf16_checkpoint_is_measured_in_float32_rows_of_its_values(llama_dir, evald, tmp_path):
    """FSDP-sharded bf16 parameters cannot be widened in place, so `sharpness --dtype bfloat16 --shard
    fsdp` loads each rank's rows as float32 copies of the bf16 values: the one-process float32 view's
    numbers (λ_max, SAM sharpness), reported as bfloat16 weights computed in float32."""
    import torch

    from landscape.foundation.checkpoint import load_checkpoint

    half = tmp_path / "bf16"
    load_checkpoint(llama_dir).model.to(dtype=torch.bfloat16).save_pretrained(half)
    for f in Path(llama_dir).iterdir():
        if "token" in f.name:
            (half / f.name).write_bytes(f.read_bytes())
    common = ["sharpness", half, "--dtype", "bfloat16", "--data", evald, "--batch-size", 4, "--metrics",
              "lambda_max,sam", "--hvp-method", "fd", "--tol", 1e-4, "--device", "cpu", "--json", "--quiet", *FD_STEP]
    one = json.loads(run(common).stdout)
    two = json.loads(run([*common, "--shard", "fsdp"], n=2).stdout)
    assert two["config"]["shard"]["mode"] == "fsdp" and one["config"]["dtype"] == two["config"]["dtype"] == "bfloat16"
    assert one["hvp"]["compute_dtype"] == two["hvp"]["compute_dtype"] == "float32"
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-7)
    est = lambda r: r["metrics"]["details"]["eigen"]["lambda_max"]  # noqa: E731
    assert est(two) == pytest.approx(est(one), rel=1e-4)
    assert two["metrics"]["sam_sharpness"] == pytest.approx(one["metrics"]["sam_sharpness"], rel=1e-4, abs=1e-7)


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


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    rows = [{"prompt": f"task : reverse input : {a} {b} output :", "completion": f"{b} {a}"}
            for a in ("red", "blue", "cat") for b in ("one", "two", "mat", "dog")]
    return write_jsonl(tmp_path_factory.mktemp("fsdp_train") / "train.jsonl", rows)


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])  # ASAM: the same path, |w|-scaled (measured 8e-7)
def test_sharded_finetune_equals_one_process(llama_dir, train, tmp_path, optimizer):
    """Each micro-batch's rows are split across the ranks and FSDP sums their gradients: the
    one-process gradient of that micro-batch, so SAM's per-micro-batch ε is the one-process ε."""
    import torch

    from landscape.foundation import checkpoint

    common = ["finetune", llama_dir, "--data", train, "--optimizer", optimizer, "--rho", 0.05, "--lr", 3e-3,
              "--max-steps", 3, "--batch-size", 3, "--grad-accum", 2, "--eval-fraction", 0, "--device", "cpu",
              "--quiet"]
    run([*common, "--out", tmp_path / "one"])
    run([*common, "--out", tmp_path / "two", "--shard", "fsdp"], n=2)
    a = checkpoint.load_checkpoint(tmp_path / "one").model.state_dict()  # the gathered dir loads as any HF dir
    b = checkpoint.load_checkpoint(tmp_path / "two").model.state_dict()
    base = checkpoint.load_checkpoint(llama_dir).model.state_dict()
    moved = max(float((a[k] - base[k]).abs().max()) for k in a)
    assert moved > 1e-3
    # summation order differs; AdamW's g/√v turns that rounding into up to ~3e-5 on the odd weight
    # whose gradient is ~0 (measured: 1 of 2048 entries), so: no entry off by 1e-4, 99.9% within 1e-6
    diff = torch.cat([(a[k] - b[k]).abs().reshape(-1) for k in a])
    assert float(diff.max()) < 1e-4 and float((diff > 1e-6).float().mean()) < 1e-3
    log = json.loads((tmp_path / "two" / "training_log.json").read_text())["log"]
    log1 = json.loads((tmp_path / "one" / "training_log.json").read_text())["log"]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in log1], rel=1e-5)


def test_a_resumed_sharded_finetune_equals_an_uninterrupted_one(llama_dir, train, tmp_path):
    check("resume", llama_dir, train, tmp_path, tmp_path)
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["states"] == ["train_state.rank0-of-2.pt", "train_state.rank1-of-2.pt"]  # each rank its rows
    assert got["resumed_from"] == 3 and got["resumed"] == got["full"]  # bit-identical weights


def test_sharded_predict_equals_one_process(llama_dir, evald, tmp_path):
    """Δw formed row by row from two sharded models; the predictors (fd curvature along Δw) agree to
    fd rounding, the line losses and ‖Δw‖ to float rounding."""
    tuned = tmp_path / "tuned"
    import torch

    from landscape.foundation import checkpoint

    ck = checkpoint.load_checkpoint(llama_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ck.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-2)
    checkpoint.save_checkpoint(ck.model, ck.tokenizer, tuned)
    common = ["predict", llama_dir, tuned, "--data", evald, "--batch-size", 3, "--device", "cpu", "--json",
              "--quiet", "--hvp-method", "fd", "--line", "0:1:3"]
    one = json.loads(run(common).stdout)["results"][0]
    two = json.loads(run([*common, "--shard", "fsdp"], n=2).stdout)["results"][0]
    assert two["line"]["loss"] == pytest.approx(one["line"]["loss"], rel=1e-6)
    for k, v in one["metrics"].items():
        if isinstance(v, float):
            # κ is an fd Rayleigh quotient at the default step (no --fd-step on predict): 2.9e-3 apart
            assert two["metrics"][k] == pytest.approx(v, rel=5e-3, abs=1e-6), k


def test_shard_auto_chooses_fsdp_only_under_torchrun_when_three_weight_copies_do_not_fit(llama_dir, monkeypatch):
    import torch

    from landscape.foundation import checkpoint, distributed, params

    files = checkpoint.inspect_checkpoint(llama_dir)
    cpu = torch.device("cpu")
    assert checkpoint.shard_mode("auto", files, torch.float32, cpu) == "none"  # one process
    monkeypatch.setattr(distributed, "world", lambda: 2)
    weights = 4 * sum(p.numel() for p in checkpoint.load_checkpoint(llama_dir).model.parameters())
    monkeypatch.setattr(params, "free_memory", lambda device: 3 * weights + 1)
    assert checkpoint.shard_mode("auto", files, torch.float32, cpu) == "none"
    monkeypatch.setattr(params, "free_memory", lambda device: 3 * weights - 1)
    assert checkpoint.shard_mode("auto", files, torch.float32, cpu) == "fsdp"
    assert checkpoint.shard_mode("fsdp", files, torch.float32, cpu) == "fsdp"


def test_a_sharded_lora_sam_finetune_equals_one_process(llama_dir, train, tmp_path):
    """The base sharded by FSDP, the adapter whole on every rank (its gradients summed over ranks)."""
    from safetensors.torch import load_file

    common = ["finetune", llama_dir, "--data", train, "--optimizer", "sam", "--rho", 0.05, "--lr", 3e-2,
              "--max-steps", 3, "--batch-size", 3, "--grad-accum", 2, "--eval-fraction", 0, "--device", "cpu",
              "--quiet", "--lora", 4]
    run([*common, "--out", tmp_path / "one"])
    run([*common, "--out", tmp_path / "two", "--shard", "fsdp"], n=2)
    a = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert set(a) == set(b) and max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-2  # it learned
    for k in a:
        assert float((a[k] - b[k]).abs().max()) < 1e-5, k


def test_sharded_top_k_sketched_trace_density_and_per_layer_equal_one_process(llama_dir, evald):
    """The basis paths (thick-restart top-3, Hutch++'s sketch, SLQ) project against vectors of rows:
    their inner products are summed over the ranks."""
    common = ["sharpness", llama_dir, "--data", evald, "--batch-size", 3, "--metrics", "lambda_max,trace,density",
              "--top-k", 3, "--trace-method", "hutchpp", "--trace-samples", 9, "--per-layer", "--hvp-method", "fd",
              "--tol", 1e-6, "--device", "cpu", "--json", "--quiet", *FD_STEP]
    one = json.loads(run(common).stdout)
    two = json.loads(run([*common, "--shard", "fsdp"], n=2).stdout)
    est = lambda r: r["metrics"]["details"]["eigen"]["eigenvalues"]  # noqa: E731  (null at tol 1e-6: below fd's noise)
    assert (one["metrics"]["eigenvalues"] is None) == (two["metrics"]["eigenvalues"] is None)
    assert est(two) == pytest.approx(est(one), rel=1e-3, abs=1e-3)
    # Hutch++ builds its sketch from fd products of random vectors, whose rounding (~1e-2 relative at
    # this size, see fd_step) differs with the summation order: measured 2e-3 apart with nearest-rounded
    # steps, 1.4e-2 with dithered ones (2026-12-05; its stderr: ±100%)
    assert two["metrics"]["hessian_trace"] == pytest.approx(one["metrics"]["hessian_trace"], rel=3e-2)
    for name, row in one["metrics"]["per_layer"].items():
        assert two["metrics"]["per_layer"][name]["lambda_max"] == pytest.approx(row["lambda_max"], rel=1e-3), name
    a, b = one["metrics"]["density"], two["metrics"]["density"]
    assert np.allclose(b["density"], a["density"], rtol=1e-2, atol=1e-3 * max(a["density"]))


def test_sam_mixin_under_fsdp2_steps_like_one_process(llama_dir, tmp_path):
    """SAMMixin in a transformers Trainer on a model FSDP2-sharded by ``from_pretrained(distributed_config=
    ...)`` (two gloo ranks, 4 rows each): after 2 steps its weights equal one process's SAMTrainer on the
    8 rows to 1e-6, and differ from the sharded plain Trainer's (same SGD) by far more — before the fix pass 1's
    ``autograd.grad`` on the DTensor parameters gave None, no weight moved, and SAM was AdamW."""
    import torch
    from safetensors.torch import load_file
    from transformers import Trainer

    from landscape.foundation import checkpoint
    from landscape.training.sam import SAMMixin
    from tests.test_sam import sam_trainer_args, sam_trainer_rows

    for mode in ("sam", "plain"):
        check("sam_trainer", llama_dir, mode, tmp_path / f"{mode}.safetensors", tmp_path)
    ck = checkpoint.load_checkpoint(llama_dir)
    rows = sam_trainer_rows(ck.tokenizer)

    class T(SAMMixin, Trainer):
        pass

    T(model=ck.model, args=sam_trainer_args(tmp_path / "one", len(rows), steps=2), train_dataset=rows,
      sam_rho=0.05).train()
    sharded, plain = load_file(tmp_path / "sam.safetensors"), load_file(tmp_path / "plain.safetensors")
    one = {n: p.detach() for n, p in ck.model.named_parameters()}
    assert sharded.keys() == one.keys()
    off = max(float((sharded[n] - one[n]).abs().max()) for n in one)
    apart = max(float((plain[n] - one[n]).abs().max()) for n in one)
    assert off < 1e-6 and apart > 1e-3, (off, apart)
