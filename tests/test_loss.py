import pytest
import torch
import torch.nn.functional as F

from landscape.foundation import checkpoint, data, loss, objective


@pytest.fixture(scope="module")
def model64(tiny_ckpts):
    return checkpoint.load_checkpoint(tiny_ckpts["llama"], dtype="float64")


def test_batch_split_invariance(model64, text_data):
    """Two batches of 3 give exactly the token-weighted loss of one batch of 6."""
    m, tok = model64.model, model64.tokenizer
    one = loss.evaluate(m, data.load_batches(text_data, tok, batch_size=6))
    two = loss.evaluate(m, data.load_batches(text_data, tok, batch_size=3))
    six = loss.evaluate(m, data.load_batches(text_data, tok, batch_size=1))
    assert one.tokens == two.tokens == six.tokens
    assert one.loss == pytest.approx(two.loss, rel=1e-12)
    assert one.loss == pytest.approx(six.loss, rel=1e-12)


def test_matches_hand_computed_cross_entropy(model64, text_data):
    m, tok = model64.model, model64.tokenizer
    bs = data.load_batches(text_data, tok, batch_size=2)
    total, n = 0.0, 0
    for b in bs:
        for i in range(len(b.input_ids)):
            L = int(b.attention_mask[i].sum())
            ids = b.input_ids[i:i + 1, :L]
            with torch.no_grad():
                lp = F.log_softmax(m(ids).logits[0, :-1], -1)
            for t in range(1, L):
                if b.labels[i, t] != data.IGNORE:
                    total -= float(lp[t - 1, ids[0, t]])
                    n += 1
    r = loss.evaluate(m, bs)
    assert r.tokens == n
    assert r.loss == pytest.approx(total / n, rel=1e-10)


def test_matches_transformers_own_loss_on_unpadded_text(model64, tmp_path):
    from tests.conftest import write_jsonl

    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat sat on the mat ."}])
    b = data.load_batches(f, model64.tokenizer).batches[0]
    with torch.no_grad():
        hf = model64.model(input_ids=b.input_ids, labels=b.input_ids).loss
    # transformers upcasts logits to float32 for its loss; ours stays float64
    assert loss.evaluate(model64.model, [b]).loss == pytest.approx(float(hf), rel=1e-7)


def test_loss_and_grad_accumulates_exactly(model64, text_data):
    m, tok = model64.model, model64.tokenizer
    l1, g1 = objective.loss_and_grad(m, data.load_batches(text_data, tok, batch_size=6))
    l2, g2 = objective.loss_and_grad(m, data.load_batches(text_data, tok, batch_size=2))
    assert l1 == pytest.approx(l2, rel=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert all(p.grad is None for p in m.parameters())


def test_bf16_model_loss_is_computed_in_float32(tiny_ckpts, text_data):
    ck = checkpoint.load_checkpoint(tiny_ckpts["llama"], dtype="bfloat16")
    b = data.load_batches(text_data, ck.tokenizer, batch_size=6).batches[0]
    s = loss.nll_sum(ck.model, b)
    assert s.dtype == torch.float32 and torch.isfinite(s)
