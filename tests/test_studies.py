"""A study's fine-tunes: an interrupted one is continued from its saved state (a 1.5B fine-tune is
20 minutes of a study), an interrupted run of other settings is replaced, a finished one reused."""

from pathlib import Path

import pytest

from landscape.foundation import checkpoint
from landscape.foundation.configs import FinetuneConfig, LoadConfig
from landscape.study.studies import _done, _finetuned
from landscape.training.finetune import finetune
from tests.conftest import write_jsonl

TEXTS = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the color of the cat is blue .",
         "a bird can fly .", "the sun is hot ."]


def _cut_at_3(base, train, out, run):
    def stop(state, opt):
        if state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(base, train, out, run, load=LoadConfig(device="cpu"), on_step=stop)
    assert out.with_name(out.name + ".partial").is_dir()


def test_a_study_continues_an_interrupted_finetune_and_replaces_another_runs_state(llama_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in TEXTS])
    run = FinetuneConfig(lr=1e-2, max_steps=6, batch_size=2, save_every=2, eval_fraction=0.0, overwrite=True)
    fp = checkpoint.fingerprint(llama_dir)
    args = lambda out: (llama_dir, fp, out, train, run, None, "float32", False)  # noqa: E731

    assert _finetuned(*args(tmp_path / "full")) == "trained"
    want = checkpoint.fingerprint(tmp_path / "full")
    assert _finetuned(*args(tmp_path / "full")) == "reused"
    bf16 = (llama_dir, fp, tmp_path / "full", train, run, None, "bfloat16", False)
    assert _done(*bf16[:7]) is False  # trained in float32: not the bf16 study's run

    _cut_at_3(llama_dir, train, tmp_path / "cut", run)
    assert _finetuned(*args(tmp_path / "cut")) == "resumed"
    assert checkpoint.fingerprint(tmp_path / "cut") == want  # the uninterrupted run's weights, bit for bit
    assert not (tmp_path / "cut.partial").exists()

    _cut_at_3(llama_dir, train, tmp_path / "other", run.replace(lr=2e-2))  # another setting's interrupted run
    assert _finetuned(*args(tmp_path / "other")) == "trained"
    assert checkpoint.fingerprint(tmp_path / "other") == want


def test_the_lr_sweep_protocol_picks_each_methods_best_rate_by_task_em():
    """Biderman et al. 2024's reading: a method at the rate that learns the task best (ties: the one
    that forgets less), forgetting as the plain suite mean; a best rate at the grid's edge is flagged."""
    from landscape.study.demo import TOY
    from landscape.study.sweep import best_per_method, lr_sweep

    spec = lr_sweep(TOY, fast=True)
    fams = {(r[1], len(r) > 5) for r in spec.runs}
    assert fams == {("adamw", False), ("sam", False), ("asam", False), ("adamw", True)}
    sam = sorted(r[2] for r in spec.runs if r[1] == "sam")
    assert sam == pytest.approx([1e-3 / 3, 1e-3, 3e-3], rel=0.02)  # the claim-carrying SAM run's rate (ρ 0.05)
    assert all(r[4] == 0.05 for r in spec.runs if r[1] == "sam") and spec.probe is None and spec.predictors is None
    assert spec.flatness["metrics"] == [] and spec.seeds == (0,)

    def ck(fam, lr, em, suite_mean, average):
        return {"label": f"{fam}-{lr}", "optimizer": fam, "lr": lr, "task_exact_match": em,
                "forgetting": {"suite_mean": {"delta": suite_mean}, "average": {"delta": average}}}

    r = best_per_method([ck("adamw", 1e-3, 0.9, 0.20, 0.25), ck("adamw", 3e-4, 0.5, 0.05, 0.06),
                         ck("adamw", 3e-3, 0.9, 0.30, 0.31),  # ties with 1e-3 on EM, forgets more
                         ck("sam", 1e-3, 0.7, 0.10, 0.12), ck("sam", 3e-3, 0.95, 0.28, 0.30)])
    a, s = r["methods"]["adamw"], r["methods"]["sam"]
    assert [x["lr"] for x in a["rates"]] == [3e-4, 1e-3, 3e-3]
    assert a["best"]["lr"] == 1e-3 and a["best_at_edge"] is False
    assert s["best"]["lr"] == 3e-3 and s["best_at_edge"] is True
    (v,) = r["against_adamw"]
    assert v["method"] == "sam" and v["forgetting_difference"] == pytest.approx(0.28 - 0.20)
    assert "Biderman" in r["protocol"] and r["seeds"] == 1


def test_a_trajectory_is_reused_from_another_checkout_of_the_same_data(tmp_path):
    """The 1.5B study's probed fine-tunes (20 minutes each) are not retrained because the study runs
    from another clone: data paths compare by their last three parts; other settings still differ."""
    import json

    from landscape.foundation.configs import ProbeConfig
    from landscape.study.studies import _trajectory_of

    def cfg(root, every=5):
        return ProbeConfig(probe_every=every, probe_metrics=("forgetting", "task_loss"),
                           probe_task_data=f"{root}/data/real/tasks/reverse/eval.jsonl",
                           probe_suites=(f"{root}/data/real/suites",))

    (tmp_path / "trajectory.json").write_text(json.dumps({"config": cfg("/tmp/wtq").as_dict(), "records": []}))
    assert _trajectory_of(tmp_path, cfg("/work/main")) is not None
    assert _trajectory_of(tmp_path, cfg("/work/main", every=10)) is None
    other = ProbeConfig(**{**cfg("/work/main").as_dict(), "probe_suites": ("/work/main/data/suites",)})
    assert _trajectory_of(tmp_path, other) is None


def test_the_manifest_names_the_data_roots_files(tmp_path):
    """A study's predictors read the general text and the KL's task data from the data root (the
    1.5B study's first run stopped after 95 minutes of fine-tunes: kl_data was read from the study folder)."""
    import yaml

    from landscape.foundation.data import real_data_dir
    from landscape.study.real import QWEN15
    from landscape.study.studies import expand, study_manifest

    root = real_data_dir()
    m = yaml.safe_load(study_manifest(QWEN15, tmp_path, root, expand(QWEN15, False), False, tmp_path / "base").read_text())
    for k in ("data", "kl_data"):
        assert Path(m["predictors"][k]).is_file(), k
    assert m["flatness"]["metrics"] == [] and len(m["checkpoints"]) == 4


def test_a_study_with_a_missing_data_file_stops_before_any_fine_tune(tmp_path):
    from dataclasses import replace

    from landscape.foundation.data import real_data_dir
    from landscape.foundation.errors import UserError
    from landscape.study.real import QWEN15
    from landscape.study.studies import run_study

    bad = replace(QWEN15, predictors={**QWEN15.predictors, "kl_data": "tasks/reverse/missing.jsonl"})
    with pytest.raises(UserError, match="missing.jsonl: no such data file"):
        run_study(bad, tmp_path / "base", tmp_path, real_data_dir(), {})
    assert not (tmp_path / "ft").exists()


def test_the_1b_sweep_extends_the_study_with_its_checkpoints_unchanged(tmp_path):
    """--lr-sweep on the 1.5B study adds runs to the same study: every first-design fine-tune has the same
    settings (so its folder, trajectory and measurements are reused), each added setting differs, and the
    second SAM-vs-AdamW pair is at one rate."""
    from landscape.study.real import QWEN15, QWEN15_SWEEP
    from landscape.study.studies import expand

    first, swept = expand(QWEN15, False), expand(QWEN15_SWEEP, False)
    assert swept[:len(first)] == first and len(swept) == 7
    added = swept[len(first):]
    assert {(r["family"], r["lr"]) for r in added} == {("adamw", 1e-4), ("sam", 1e-4), ("adamw-lora", 1e-3)}
    assert all(r["probed"] and r["steps"] == first[0]["steps"] for r in added)
    by = {r["label"]: r for r in swept}
    for sam, adam, _ in QWEN15_SWEEP.comparisons:
        assert by[sam]["lr"] == by[adam]["lr"] and by[sam]["steps"] == by[adam]["steps"]
