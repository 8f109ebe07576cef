"""Chat records and the data formats users keep (jsonl, json, parquet, csv, save_to_disk dirs).

The chat loss rule (landscape.foundation.data): for each assistant message i, the tokens of
render(messages[:i+1]) that follow render(messages[:i], add_generation_prompt=True). Checked here
against a hand computation with the tokenizer's own ``apply_chat_template`` on the toy word
tokenizer; the SmolLM2 check (ChatML) is in test_real.py.
"""

import copy
import json

import pytest
import torch

from landscape.foundation import data
from landscape.foundation.configs import ConfigError
from landscape.foundation.errors import DataError
from tests.conftest import write_jsonl

# Words of the toy vocabulary; roles are out of vocabulary (→ <unk>), which is fine for the rule.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
CONV = [{"role": "system", "content": "the cat"},
        {"role": "user", "content": "one plus two"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "the color of the cat"},
        {"role": "assistant", "content": "blue red"}]


@pytest.fixture()
def chat_tok(tokenizer):
    t = copy.deepcopy(tokenizer)
    t.chat_template = TEMPLATE
    return t


def ids_of(tok, msgs, gen=False):
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def hand_mask(tok, msgs, first=0):
    full = ids_of(tok, msgs)
    mask = [False] * len(full)
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and i >= first:
            a, b = len(ids_of(tok, msgs[:i], True)), len(ids_of(tok, msgs[:i + 1]))
            mask[a:b] = [True] * (b - a)
    return full, mask


def row(batch, i):
    keep = batch.attention_mask[i] == 1
    return batch.input_ids[i][keep].tolist(), (batch.labels[i][keep] != data.IGNORE).tolist()


def test_messages_loss_is_on_assistant_turns_exactly_as_the_rule(tmp_path, chat_tok):
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONV}])
    b = data.load_batches(f, chat_tok, batch_size=1, max_length=128).batches[0]
    ids, mask = row(b, 0)
    want_ids, want_mask = hand_mask(chat_tok, CONV)
    assert ids == want_ids and mask == want_mask
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "three . blue red ."
    assert b.n_tokens == sum(want_mask)


def test_conversational_prompt_completion_and_sharegpt(tmp_path, chat_tok):
    pc = {"prompt": CONV[:4], "completion": CONV[4:]}
    share = {"conversations": [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
                                "value": m["content"]} for m in CONV]}
    f = write_jsonl(tmp_path / "c.jsonl", [pc, share, {"messages": CONV}])
    b = data.load_batches(f, chat_tok, batch_size=3, max_length=128).batches[0]
    ids, mask = row(b, 0)
    assert (ids, mask) == tuple(hand_mask(chat_tok, CONV, first=4))  # only the completion's assistant turn
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "blue red ."
    assert row(b, 1) == row(b, 2)  # ShareGPT = messages


@pytest.mark.parametrize("rec,match", [
    ({"messages": [{"role": "user", "content": "the cat"}]}, "no assistant turn"),
    ({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]},
     "completion has no assistant turn"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "role 'robot'"),
    ({"messages": [{"role": "user", "text": "a"}]}, r"messages\[0\] must be"),  # the first: 0, as rec["messages"][0]
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}, r"messages\[1\] has role"),
    ({"messages": []}, "non-empty list"),
    ({"conversations": [{"from": "bot", "value": "a"}]}, "from 'bot'"),
    ({"messages": [{"role": "assistant", "content": 3}]}, "content must be a string"),
])
def test_malformed_chat_records_give_one_line(tmp_path, chat_tok, rec, match):
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONV}, rec])
    with pytest.raises(DataError, match=match) as e:
        data.load_batches(f, chat_tok)
    assert ":2:" in str(e.value) and "\n" not in str(e.value)


def test_chat_needs_a_template_whose_renderings_are_prefixes(tmp_path, tokenizer, chat_tok):
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONV}])
    with pytest.raises(DataError, match="needs a chat template"):
        data.load_batches(f, tokenizer)  # the toy tokenizer has none
    bad = copy.deepcopy(chat_tok)  # a generation prompt the assistant rendering does not start with
    bad.chat_template = TEMPLATE.replace("assistant : {% endif %}", "output : {% endif %}")
    with pytest.raises(DataError, match="not prefixes"):
        data.load_batches(f, bad)


def test_chat_template_file_replaces_the_tokenizers(tmp_path, llama_dir):
    from landscape.foundation import checkpoint

    (tmp_path / "t.jinja").write_text(TEMPLATE)
    ck = checkpoint.load_checkpoint(llama_dir, chat_template=str(tmp_path / "t.jinja"))
    assert ck.tokenizer.chat_template == TEMPLATE
    f = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONV}])
    assert data.load_batches(f, ck.tokenizer).n_tokens == sum(hand_mask(ck.tokenizer, CONV)[1])
    with pytest.raises(ConfigError, match="chat_template"):
        checkpoint.load_checkpoint(llama_dir, chat_template=str(tmp_path / "missing.jinja"))


RECORDS = [{"text": "the cat sat on the mat ."}, {"messages": CONV}, {"prompt": "one plus", "completion": "two"},
           {"input_ids": [1, 5, 6, 7]}, {"prompt": CONV[:2], "completion": CONV[2:3]}]


def _same(a, b):
    assert len(a) == len(b) and a.n_examples == b.n_examples
    for x, y in zip(a, b):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.attention_mask, y.attention_mask)


def test_every_format_gives_the_batches_of_the_jsonl(tmp_path, chat_tok):
    import datasets

    ref = data.load_batches(write_jsonl(tmp_path / "d.jsonl", RECORDS), chat_tok, batch_size=2)
    (tmp_path / "d.json").write_text(json.dumps(RECORDS))
    _same(ref, data.load_batches(tmp_path / "d.json", chat_tok, batch_size=2))
    # a table gives every row every column: the missing ones are nulls, read back as absent keys
    ds = datasets.Dataset.from_list([{k: r.get(k) for k in ("text", "messages", "prompt", "completion",
                                                              "input_ids")} for r in RECORDS[:4]])
    ds.to_parquet(tmp_path / "d.parquet")
    ref4 = data.load_batches(tmp_path / "d.jsonl", chat_tok, batch_size=2, records=data.read_jsonl(tmp_path / "d.jsonl")[:4])
    _same(ref4, data.load_batches(tmp_path / "d.parquet", chat_tok, batch_size=2))
    ds.save_to_disk(tmp_path / "saved")
    _same(ref4, data.load_batches(tmp_path / "saved", chat_tok, batch_size=2))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "dd")
    _same(ref4, data.load_batches(tmp_path / "dd", chat_tok, batch_size=2,
                                  records=data.read_jsonl(tmp_path / "dd", "train")))
    with pytest.raises(ConfigError, match="several splits; choose one of test, train"):
        data.load_batches(tmp_path / "dd", chat_tok)
    with pytest.raises(ConfigError, match="no split 'dev'"):
        data.read_jsonl(tmp_path / "dd", "dev")
    (tmp_path / "d.csv").write_text('text,prompt,completion\n"the cat sat on the mat .",,\n,one plus,two\n')
    _same(data.load_batches(tmp_path / "d.jsonl", chat_tok, records=[RECORDS[0], RECORDS[2]]),
          data.load_batches(tmp_path / "d.csv", chat_tok))


def test_tabular_errors_name_the_row(tmp_path, chat_tok):
    import datasets

    datasets.Dataset.from_list([{"text": "the cat"}, {"text": "   "}]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 2: empty text"):
        data.load_batches(tmp_path / "bad.parquet", chat_tok)
    datasets.Dataset.from_list([{"txt": "the cat"}]).save_to_disk(tmp_path / "bad")
    with pytest.raises(DataError, match=r"row 1: unknown key\(s\) 'txt'"):
        data.load_batches(tmp_path / "bad", chat_tok)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a datasets directory"):
        data.load_batches(tmp_path / "plain", chat_tok)
    with pytest.raises(ConfigError, match="only a datasets directory has splits"):
        data.read_jsonl(write_jsonl(tmp_path / "x.jsonl", RECORDS[:1]), "train")
