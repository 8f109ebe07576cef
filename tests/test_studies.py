"""A study's fine-tunes: an interrupted one is continued from its saved state (a 1.5B fine-tune is
20 minutes of a study), an interrupted run of other settings is replaced, a finished one reused."""

import pytest

from landscape.foundation import checkpoint
from landscape.foundation.configs import FinetuneConfig, LoadConfig
from landscape.study.studies import _finetuned
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

    _cut_at_3(llama_dir, train, tmp_path / "cut", run)
    assert _finetuned(*args(tmp_path / "cut")) == "resumed"
    assert checkpoint.fingerprint(tmp_path / "cut") == want  # the uninterrupted run's weights, bit for bit
    assert not (tmp_path / "cut.partial").exists()

    _cut_at_3(llama_dir, train, tmp_path / "other", run.replace(lr=2e-2))  # another setting's interrupted run
    assert _finetuned(*args(tmp_path / "other")) == "trained"
    assert checkpoint.fingerprint(tmp_path / "other") == want
