import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.foundation import data
from landscape.foundation.errors import DataError
from tests.conftest import write_jsonl


def test_completion_only_masking_counted_exactly(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "task : reverse input : red blue output :",
                                             "completion": "blue red"}])
    bs = data.load_batches(f, tokenizer, batch_size=4, max_length=64)
    b = bs.batches[0]
    n_prompt = 1 + 9  # <s> + 9 words
    n_completion = 2 + 1  # 2 words + </s>
    assert b.input_ids.shape == (1, n_prompt + n_completion)
    assert b.n_tokens == n_completion == bs.n_tokens
    assert (b.labels[0, :n_prompt] == data.IGNORE).all()
    assert b.labels[0, n_prompt:].tolist() == b.input_ids[0, n_prompt:].tolist()
    assert b.input_ids[0, -1] == tokenizer.eos_token_id


def test_text_and_input_ids_predict_every_position_after_the_first(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat sat"}, {"input_ids": [3, 4, 5, 6, 7]}])
    b = data.load_batches(f, tokenizer, batch_size=2).batches[0]
    assert b.input_ids[0, :4].tolist() == [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(["the", "cat", "sat"])
    assert b.n_tokens == 3 + 4
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b.labels[0, 4] == data.IGNORE and b.input_ids[0, 4] == tokenizer.pad_token_id  # right padding


def test_batches_are_fixed_and_ordered(text_data, tokenizer):
    a = data.load_batches(text_data, tokenizer, batch_size=4)
    b = data.load_batches(text_data, tokenizer, batch_size=4)
    assert a.fingerprint == b.fingerprint and len(a) == 2
    for x, y in zip(a, b):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    assert len(data.load_batches(text_data, tokenizer, batch_size=2, num_batches=2)) == 2
    assert data.load_batches(text_data, tokenizer, batch_size=4, max_length=8).fingerprint != a.fingerprint


def test_truncation_and_dropping_are_counted(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "long.jsonl", [{"text": "the cat sat on the mat ."},
                                              {"prompt": "the cat sat on the mat", "completion": "red"}])
    bs = data.load_batches(f, tokenizer, max_length=4)
    assert bs.n_truncated == 2 and bs.n_dropped == 1 and bs.n_examples == 1
    assert bs.batches[0].input_ids.shape[1] == 4


def test_ids_outside_vocabulary_rejected(tmp_path):
    f = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [1, 2, 300]}])
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        data.load_batches(f, None, vocab_size=100)


@pytest.mark.parametrize("content,match", [
    ("", "empty data file"),
    ("\n\n", "empty data file"),
    ('{"text": "ok"}\n{"text": "a"\n', r":2: not valid JSON"),
    ('{"text": "ok"}\n{"txt": "a"}\n', r":2: unknown key\(s\) 'txt'"),
    ('{"prompt": "a", "complection": "b"}\n', r":1: unknown key\(s\) 'complection'"),
    ('{"prompt": "a"}\n', r":1: keys \['prompt'\]"),
    ('[1, 2]\n', ":1: each record must be a JSON object"),
    ('{"text": 3}\n', "'text' must be a string"),
    ('{"input_ids": [1, "a"]}\n', "list of integers"),
    ('{"input_ids": []}\n', "list of integers"),
    ('{"text": "  "}\n', "empty text"),
    ('{"text": "a", "input_ids": [1]}\n', "expected one of"),
])
def test_malformed_data_gives_one_line_with_location(tmp_path, tokenizer, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        data.load_batches(f, tokenizer)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_options(tmp_path, text_data, tokenizer):
    with pytest.raises(DataError, match="no such data file"):
        data.read_jsonl(tmp_path / "none.jsonl")
    for kw in ({"batch_size": 0}, {"max_length": 1}, {"num_batches": 0}):
        with pytest.raises(DataError):
            data.load_batches(text_data, tokenizer, **kw)


def test_text_without_tokenizer_is_a_user_error(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "a b"}])
    with pytest.raises(DataError, match="needs a tokenizer"):
        data.load_batches(f, None)


@settings(max_examples=60, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=12), min_size=1, max_size=9),
       batch_size=st.integers(1, 5), max_length=st.integers(2, 14))
def test_loader_invariants_property(tmp_path_factory, seqs, batch_size, max_length):
    """Every kept example appears once, in order, cut to max_length; tokens = Σ (len − 1)."""
    f = tmp_path_factory.mktemp("h") / "ids.jsonl"
    f.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    kept = [s[:max_length] for s in seqs if len(s[:max_length]) >= 2]
    if not kept:
        with pytest.raises(DataError):
            data.load_batches(f, None, batch_size=batch_size, max_length=max_length)
        return
    bs = data.load_batches(f, None, batch_size=batch_size, max_length=max_length, pad_id=0)
    assert bs.n_tokens == sum(len(s) - 1 for s in kept)
    rows = [b.input_ids[i, : int(b.attention_mask[i].sum())].tolist() for b in bs for i in range(len(b.input_ids))]
    assert rows == kept
    assert all(len(b.input_ids) <= batch_size for b in bs)


def test_the_toy_tokenizer_corpus_leaves_out_the_real_model_data():
    """data/real (real-world suites) must not change the demo model's vocabulary, or a fresh
    `make demo` would build another model than the one the README's table comes from."""
    from landscape.foundation.data import data_dir
    from landscape.study.demo import all_texts

    words = {w for t in all_texts(data_dir()) for w in t.split()}
    assert "Kabul" not in words and "Reverse" not in words
    assert "forest" in words or "city" in words  # the toy world's own words are there
