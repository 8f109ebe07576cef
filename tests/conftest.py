"""Shared fixtures: tiny tokenizers and checkpoints of real architectures, built from configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from landscape.foundation import toy

WORDS = ("the a cat dog sat on mat red blue green is of color lives in forest city one two three "
         "plus task reverse input output : . ?").split()


@pytest.fixture(scope="session")
def tokenizer():
    return toy.build_word_tokenizer([" ".join(WORDS)])


def make_checkpoint(root: Path, arch: str, tokenizer, dtype=torch.float32, seed: int = 0, **save_kw) -> Path:
    cfg = toy.tiny_config(arch, vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=32, layers=2, heads=4)
    model = toy.build_model(cfg, seed=seed, dtype=dtype)
    out = root / arch
    model.save_pretrained(out, **save_kw)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """One tiny checkpoint directory per supported architecture (llama, gpt2, qwen2)."""
    root = tmp_path_factory.mktemp("ckpts")
    return {a: make_checkpoint(root, a, tokenizer) for a in toy.ARCHITECTURES}


@pytest.fixture()
def llama_dir(tiny_ckpts):
    return tiny_ckpts["llama"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def text_data(tmp_path) -> Path:
    rows = [{"text": "the cat sat on the mat ."}, {"text": "the dog is red ."},
            {"text": "one plus two is three ."}, {"text": "the color of the cat is blue ."},
            {"prompt": "task : reverse input : red blue output :", "completion": "blue red"},
            {"input_ids": [1, 5, 6, 7, 8]}]
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    """LANDSCAPE_TEST_MEMLOG=FILE: one line per test with the pytest process's peak RSS so far and its
    current RSS (GB), to find the tests that raise the suite's peak (the peak is monotonic: the test
    whose line first shows it raised it)."""
    import os

    path = os.environ.get("LANDSCAPE_TEST_MEMLOG")
    if path:
        from landscape.foundation.params import _proc_status

        with open(path, "a") as f:
            f.write(f"{_proc_status('VmHWM') / 2**30:.2f} {_proc_status('VmRSS') / 2**30:.2f} {item.nodeid}\n")
