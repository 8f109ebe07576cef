"""The CLI through click's CliRunner: results, and user errors → one line on stderr, exit 2."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from landscape.cli.main import cli
from tests.conftest import write_jsonl


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(r, match):
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in r.output


def test_loss_json(llama_dir, text_data):
    r = run("loss", llama_dir, "--data", text_data, "--json", "--batch-size", 2)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["tokens"] > 0 and out["loss"] > 0 and len(out["fingerprint"]) == 64
    assert out["data"]["batch_size"] == 2


def test_info(tiny_ckpts):
    for arch, d in tiny_ckpts.items():
        r = run("info", d, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["model_type"] == arch


@pytest.fixture()
def broken(tmp_path, llama_dir):
    def make(kind):
        d = tmp_path / kind
        shutil.copytree(llama_dir, d)
        if kind == "no_config":
            (d / "config.json").unlink()
        elif kind == "corrupt":
            (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
        elif kind == "pickle":
            from landscape.foundation.checkpoint import load_checkpoint

            sd = load_checkpoint(d).model.state_dict()
            (d / "model.safetensors").unlink()
            torch.save(sd, d / "pytorch_model.bin")
        return d
    return make


@pytest.mark.parametrize("kind,match", [("no_config", "no config.json"), ("corrupt", "corrupt safetensors"),
                                        ("pickle", "--trust-pickle")])
def test_bad_checkpoints_exit_2(broken, text_data, kind, match):
    assert_user_error(run("loss", broken(kind), "--data", text_data), match)


def test_pickle_accepted_with_flag(broken, text_data):
    r = run("loss", broken("pickle"), "--data", text_data, "--trust-pickle", "--json")
    assert r.exit_code == 0, r.output


def test_missing_checkpoint_dir(tmp_path, text_data):
    assert_user_error(run("loss", tmp_path / "nope", "--data", text_data), "no such checkpoint directory")


@pytest.mark.parametrize("content,match", [
    ("", "empty data file"),
    ('{"text": "the cat"}\n{"text": \n', "bad.jsonl:2: not valid JSON"),
    ('{"text": "the cat"}\n{"text": "a", "label": 1}\n', "bad.jsonl:2: unknown key(s) 'label'"),
])
def test_bad_data_exit_2(llama_dir, tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    assert_user_error(run("loss", llama_dir, "--data", f), match)


def test_impossible_options_exit_2(llama_dir, text_data):
    assert_user_error(run("loss", llama_dir, "--data", text_data, "--batch-size", 0), "--batch-size")
    assert_user_error(run("loss", llama_dir, "--data", text_data, "--max-length", 10_000), "positions")
    assert_user_error(run("loss", llama_dir, "--data", text_data, "--dtype", "int3"), "unknown dtype")
    assert_user_error(run("loss", llama_dir, "--bogus"), "No such option")
    assert_user_error(run("nonsense"), "No such command")
    assert_user_error(run("sharpness", llama_dir, "--data", text_data, "--metrics", "lambda_max,vibes"),
                      "unknown metric(s) vibes")


def test_debug_shows_the_traceback(tmp_path, text_data):
    r = run("--debug", "loss", tmp_path / "nope", "--data", text_data)
    assert r.exit_code != 0 and r.exception is not None and not isinstance(r.exception, SystemExit)


def test_seed_makes_output_identical_and_another_seed_differs(llama_dir, text_data):
    """A random measurement (average sharpness draws its noise from the seed): the same seed gives the
    same numbers, another seed other numbers, and the seed is recorded."""
    args = ("sharpness", llama_dir, "--data", text_data, "--metrics", "avg", "--avg-samples", 3, "--json")
    a, b, c = run(*args, "--seed", 5), run(*args, "--seed", 5), run(*args, "--seed", 6)
    assert a.exit_code == 0, a.output
    ja, jb, jc = (json.loads(x.stdout) for x in (a, b, c))
    assert ja["metrics"] == jb["metrics"] and ja["metrics"]["avg_sharpness"] != jc["metrics"]["avg_sharpness"]
    assert ja["config"]["seed"] == 5 and jc["config"]["seed"] == 6


def test_module_entry_point(llama_dir, text_data):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "landscape.cli", "loss", str(llama_dir), "--data", str(text_data),
                        "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tokens"] > 0
    p = subprocess.run([sys.executable, "-m", "landscape.cli", "loss", "/nonexistent/x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")


def test_finetune_cli_and_its_errors(llama_dir, tmp_path):
    rows = [{"prompt": f"task : reverse input : {a} output :", "completion": a} for a in ("red", "blue", "cat", "dog")]
    train = write_jsonl(tmp_path / "train.jsonl", rows * 3)
    out = tmp_path / "ft"
    r = run("finetune", llama_dir, "--data", train, "--out", out, "--optimizer", "asam", "--rho", 0.5,
            "--max-steps", 3, "--batch-size", 4, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["steps"] == 3 and res["optimizer"] == "asam" and (out / "training_log.json").is_file()
    assert_user_error(run("finetune", llama_dir, "--data", train, "--out", out), "already exists")
    assert_user_error(run("finetune", llama_dir, "--data", train, "--out", tmp_path / "x", "--resume"),
                      "no interrupted run")
    assert_user_error(run("finetune", llama_dir, "--data", train, "--out", tmp_path / "x", "--optimizer", "sgd"),
                      "sgd")
    assert_user_error(run("finetune", llama_dir, "--data", train, "--out", tmp_path / "x", "--lr", -1), "--lr")
    assert_user_error(run("finetune", llama_dir, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "x"),
                      "no such data file")
    assert_user_error(run("finetune", llama_dir, "--data", train, "--out", tmp_path / "x", "--grad-accum", 0),
                      "--grad-accum")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_sharpness_cache_graph_modes_agree(llama_dir, text_data):
    """--cache-graph changes how HVPs are computed, never the numbers (auto, bare flag = on, off)."""
    outs = {}
    for extra in ([], ["--cache-graph"], ["--cache-graph", "off"]):
        r = run("sharpness", llama_dir, "--data", text_data, "--metrics", "lambda_max,trace", "--trace-samples", 3,
                "--json", *extra)
        assert r.exit_code == 0, r.output
        outs[" ".join(extra)] = json.loads(r.stdout)
    assert outs["--cache-graph"]["cost"]["graph_cached"] is True
    assert outs["--cache-graph off"]["cost"]["graph_cached"] is False
    assert outs[""]["cost"]["graph_cached"] is True  # a tiny model's graphs fit
    assert outs[""]["where"] == {"weights": str(llama_dir), "data": str(text_data)}  # which weights, which tokens
    vals = {k: (o["metrics"]["lambda_max"], o["metrics"]["hessian_trace"]) for k, o in outs.items()}
    assert len(set(vals.values())) == 1, vals


def test_third_party_warnings_are_quiet_unless_debug():
    import subprocess
    import sys

    code = ("import warnings, sys; from landscape.cli.main import quiet_third_party; quiet_third_party(); "
            "warnings.warn_explicit('peft says', UserWarning, 'x.py', 1, module='peft.config'); "
            "warnings.warn_explicit('torch says', FutureWarning, 'y.py', 1, module='torch.nn'); "
            "warnings.warn_explicit('ours', UserWarning, 'z.py', 1, module='landscape.measures')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "peft says" not in r.stderr and "torch says" not in r.stderr and "ours" in r.stderr


def _subword_checkpoint(tmp_path):
    """A tiny model with a BPE tokenizer: outside the toy world, as every real model is."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import make_checkpoint

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(["the cat sat on the mat .", "the dog is red .", "one plus two is three ."] * 3,
                          trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<pad>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    return make_checkpoint(tmp_path, "llama", tok)


def test_a_real_model_is_never_measured_on_the_toy_world_silently(tmp_path, text_data):
    d = _subword_checkpoint(tmp_path)
    for command in ("loss", "sharpness", "surface", "predict"):
        args = {"surface": ["--x", "-1:1:3", "--out", tmp_path / "s.h5"], "predict": [d]}.get(command, [])
        r = run(command, d, *args)
        assert_user_error(r, "--data")
        assert "data/real/general.jsonl" in r.stderr
    r = run("forgetting", d, d)
    assert_user_error(r, "--suite")
    assert "data/real/suites" in r.stderr
    r = run("finetune", d, "--data", text_data, "--max-steps", 2, "--probe-every", 1, "--out", tmp_path / "ft")
    assert_user_error(r, "--probe-data")
    assert not (tmp_path / "ft").exists()
    # with data named, the same model measures
    r = run("loss", d, "--data", text_data, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["tokens"] > 0, r.output
    r = run("forgetting", d, d, "--suite", "data/real/suites", "--json")
    assert r.exit_code == 0, r.output


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(llama_dir, text_data, tmp_path):
    """Output redirected (a log, CI, nohup): a long loop says where it is in plain lines, never bars; a
    short one says nothing. LANDSCAPE_PROGRESS_EVERY shrinks the 30 s interval so the test sees lines."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-m", "landscape.cli", "finetune", str(llama_dir), "--data", str(text_data),
            "--max-steps", "6", "--batch-size", "2", "--eval-fraction", "0", "--device", "cpu", "--json"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for every, out in (("0.001", "a"), (None, "b")):
        e = {**env, "LANDSCAPE_PROGRESS_EVERY": every} if every else {k: v for k, v in env.items()
                                                                      if k != "LANDSCAPE_PROGRESS_EVERY"}
        with open(tmp_path / f"{out}.err", "w") as err:
            r = subprocess.run([*args, "--out", str(tmp_path / out)], stdout=subprocess.PIPE, stderr=err, text=True,
                               env=e, timeout=300)
        assert r.returncode == 0 and json.loads(r.stdout)["steps"] == 6
        text = (tmp_path / f"{out}.err").read_text()
        assert "\r" not in text
        if every:
            steps = [line for line in text.splitlines() if "/6 (" in line]
            assert steps and steps[-1].split(":")[1].strip().startswith("6/6"), text
        else:
            assert text == "", text


def test_help_puts_the_commands_own_options_first_and_the_shared_ones_in_sections():
    for command in ("sharpness", "finetune", "surface", "predict", "loss"):
        text = run(command, "--help").output
        heads = [line for line in text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
        engine = "How it is computed (chosen by the memory plan; set to override):"
        assert heads == [h for h in ("Options:", "Data:", "Output:", engine, "Loading the checkpoint (every command):")
                         if h in heads] and heads[0] == "Options:" and heads[-1].startswith("Loading"), (command, heads)
        loading = text[text.index("Loading the checkpoint"):]
        own = text[:text.index("Loading the checkpoint")]
        assert "--dtype" in loading and "--trust-remote-code" in loading and "--dtype" not in own
    sharp = run("sharpness", "--help").output
    assert sharp.index("--metrics") < sharp.index("Data:") < sharp.index("--batch-size") < sharp.index("Output:")
    # what is measured before how: the engine's knobs (planned by default) after the data and output
    assert sharp.index("--rho") < sharp.index("How it is computed") < sharp.index("--basis-dir") < sharp.index("--fd-step")
