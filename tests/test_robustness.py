"""The bad-input matrix across commands: NaN losses, unwritable outputs, interruption, fuzzed parsers."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from landscape.foundation import checkpoint, toy
from landscape.cli.main import cli
from landscape.foundation.errors import DataError, UserError
from tests.conftest import write_jsonl


def finetune_(base, data, out, *, on_step=None, device="cpu", **settings):
    """landscape.training.finetune.finetune with its settings given as keywords."""
    from landscape.foundation.configs import FinetuneConfig, LoadConfig
    from landscape.training import finetune as F

    return F.finetune(base, data, out, FinetuneConfig(**settings), load=LoadConfig(device=device), on_step=on_step)

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_exit_2(r, match):
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert "Traceback" not in r.output


@pytest.fixture()
def nan_ckpt(tmp_path, tokenizer):
    cfg = toy.tiny_config("llama", vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=32, layers=2, heads=4)
    model = toy.build_model(cfg)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    return checkpoint.save_checkpoint(model, tokenizer, tmp_path / "nan")


def test_nan_losses_are_one_line_errors(nan_ckpt, text_data, tmp_path):
    one_line_exit_2(run("loss", nan_ckpt, "--data", text_data), "the loss is nan")
    one_line_exit_2(run("sharpness", nan_ckpt, "--data", text_data, "--metrics", "lambda_max"),
                    "curvature is undefined")


def test_non_finite_training_loss_stops_with_one_line(nan_ckpt, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat sat on the mat ."}] * 8)
    r = run("finetune", nan_ckpt, "--data", train, "--out", tmp_path / "o", "--max-steps", 5, "--batch-size", 4,
            "--eval-fraction", 0, "--device", "cpu")
    one_line_exit_2(r, "training loss became")
    assert not (tmp_path / "o").exists()


def test_unwritable_outputs_are_one_line_errors_and_leave_nothing(llama_dir, text_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_exit_2(run("surface", llama_dir, "--data", text_data, "--x", "-1:1:3", "--out", blocker / "s.h5"),
                    "cannot write")
    one_line_exit_2(run("finetune", llama_dir, "--data", text_data, "--out", blocker / "ft", "--max-steps", 1),
                    "a_file")
    s = tmp_path / "s.h5"
    assert run("surface", llama_dir, "--data", text_data, "--x", "-1:1:3", "--out", s).exit_code == 0
    one_line_exit_2(run("plot", s, "--out", blocker / "p.html"), "a_file")
    one_line_exit_2(run("forgetting", llama_dir, llama_dir, "--store", blocker / "r.sqlite"), "a_file")


def test_full_disk_leaves_no_half_written_file(llama_dir, text_data, tmp_path, monkeypatch):
    import h5py

    real = h5py.File

    def full(path, mode="r", *a, **k):
        if mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", full)
    out = tmp_path / "s.h5"
    one_line_exit_2(run("surface", llama_dir, "--data", text_data, "--x", "-1:1:3", "--out", out),
                    "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]  # the input only


def test_sigint_during_finetune_keeps_the_state_and_resume_matches(llama_dir, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"task : reverse input : {a} output :", "completion": a}
                                               for a in ("red", "blue", "cat", "dog", "mat", "green")] * 4)
    args = ["finetune", str(llama_dir), "--data", str(train), "--max-steps", "300", "--batch-size", "4",
            "--save-every", "5", "--optimizer", "sam", "--eval-fraction", "0", "--device", "cpu", "--quiet", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    full = subprocess.run([sys.executable, "-m", "landscape.cli", *args, "--out", str(tmp_path / "full")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    # SIGINT as in a terminal even when pytest itself runs with it ignored (a background job)
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli", *args, "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = tmp_path / "cut.partial" / "train_state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert state.exists() and not cut.exists()
    done = torch.load(state, weights_only=True)["step"]
    assert 0 < done < 300
    # one line that says what was kept and how to go on (it was a bare "aborted")
    assert err.strip().splitlines()[-1] == (f"interrupted after step {done} of 300: the training state is kept in "
                                            f"{cut}.partial; the same command with --resume continues from step {done}")
    res = subprocess.run([sys.executable, "-m", "landscape.cli", *args, "--out", str(cut), "--resume"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["fingerprint"] == json.loads(full.stdout)["fingerprint"]


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_ctrl_c_in_the_middle_of_a_step_is_taken_at_the_step_boundary(llama_dir, tmp_path, monkeypatch, request,
                                                                      optimizer):
    """SIGINT delivered inside a step (between SAM's passes / inside the optimizer update) must not
    save a half-updated state: the step finishes, its state is saved, and the resumed run ends with
    the uninterrupted run's weights, bit for bit."""
    from landscape.training import finetune as F

    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"task : reverse input : {a} output :", "completion": a}
                                               for a in ("red", "blue", "cat", "dog")] * 3)
    kw = dict(max_steps=6, batch_size=4, optimizer=optimizer, eval_fraction=0, device="cpu", save_every=100)
    full = finetune_(llama_dir, train, tmp_path / "full", **kw)
    real, calls = F.train_step, [0]

    def step_with_a_signal_inside(model, opt, micro, cfg, lr, **k):
        calls[0] += 1
        if calls[0] == 3:  # the signal lands mid-step, before the update is applied
            os.kill(os.getpid(), signal.SIGINT)
        return real(model, opt, micro, cfg, lr, **k)

    monkeypatch.setattr(F, "train_step", step_with_a_signal_inside)
    # Ctrl-C as in a terminal, whatever started pytest (a background job inherits SIGINT ignored,
    # and then finetune leaves it ignored, as Python does: tested below)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(KeyboardInterrupt):
        finetune_(llama_dir, train, tmp_path / "cut", **kw)
    monkeypatch.setattr(F, "train_step", real)
    assert torch.load(tmp_path / "cut.partial" / F.STATE_FILE, weights_only=True)["step"] == 3  # step 3 finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
    res = finetune_(llama_dir, train, tmp_path / "cut", resume=True, **kw)
    assert res["fingerprint"] == full["fingerprint"]


def test_a_run_started_with_sigint_ignored_leaves_it_ignored(llama_dir, tmp_path, request):
    """nohup and background jobs start us with SIGINT ignored; finetune must not make them
    interruptible (nor put a different handler back)."""
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "task : reverse input : red output :", "completion": "der"}] * 4)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    seen = []
    finetune_(llama_dir, train, tmp_path / "ft", max_steps=2, batch_size=4, eval_fraction=0, device="cpu",
              on_step=lambda st, o: seen.append(signal.getsignal(signal.SIGINT)))
    assert seen and all(h is signal.SIG_IGN for h in seen)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


# -------------------------------------------------------------------------------------------
# Properties and fuzzing of the parsers: they return or raise our one-line error, nothing else.

@settings(max_examples=300, deadline=None)
@given(lo=st.floats(allow_nan=True, allow_infinity=True), hi=st.floats(allow_nan=True, allow_infinity=True),
       n=st.integers(-5, 200_000))
def test_grid_parser_property(lo, hi, n):
    from landscape.measures.surface import parse_grid

    try:
        g = parse_grid(f"{lo}:{hi}:{n}")
    except UserError as e:
        assert str(e).startswith("x: grid ") and "\n" not in str(e)
        return
    assert len(g) == n and 1 <= n <= 100_000 and g[0] == lo and g[-1] == pytest.approx(hi)
    assert np.all(np.isfinite(g)) and (n == 1 or np.all(np.diff(g) > 0))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_grid_parser_fuzz(text):
    from landscape.measures.surface import parse_grid

    try:
        parse_grid(text)
    except UserError:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(json_values | st.fixed_dictionaries({"context": json_values, "choices": json_values,
                                                           "answer": json_values}), min_size=0, max_size=5),
       junk=st.text(max_size=20))
def test_suite_and_data_parsers_fuzz(tmp_path, lines, junk):
    from landscape.foundation import data
    from landscape.measures import forgetting

    f = tmp_path / "f.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines) + junk)
    for parse in (forgetting.load_suite, data.read_jsonl):
        try:
            parse(f)
        except DataError as e:
            assert "\n" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["base", "checkpoints", "flatness", "suites", "title", "bootstrap",
                                            "seed", "bogus"]), json_values, max_size=5))
@example(doc={"base": None, "flatness": {"\n": None}})  # CI 2026-11-30: a key with a line break
def test_manifest_parser_fuzz(tmp_path, doc):
    from landscape.study.manifest import load_manifest

    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        load_manifest(f)
    except UserError as e:
        assert "\n" not in str(e)
