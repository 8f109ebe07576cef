"""StochasticAdamW: unbiased rounding, torch's AdamW on float32 bit for bit, and bf16 fine-tunes that
keep the small updates torch's bf16 AdamW loses."""

import math

import pytest
import torch

from landscape.training.rounding import StochasticAdamW, stochastic_round


@pytest.mark.parametrize("dtype,spacing", [(torch.bfloat16, 2.0 ** -7), (torch.float16, 2.0 ** -10)])
def test_stochastic_rounding_is_unbiased_and_keeps_representable_values(dtype, spacing):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for frac in (1 / 8, 1 / 2, 7 / 8):  # x between 1 and 1 + spacing: up with probability frac
        x = torch.full((n,), 1.0 + frac * spacing)
        y = stochastic_round(x, dtype, g).float()
        assert set(y.unique().tolist()) == {1.0, 1.0 + spacing}
        up = float((y > 1).float().mean())
        assert abs(up - frac) < 5 * math.sqrt(frac * (1 - frac) / n)  # 5 binomial standard errors
    x = torch.randn(n, generator=g) * 3
    exact = x.to(dtype).float()  # representable values stay themselves, whatever the draw
    assert torch.equal(stochastic_round(exact, dtype, g).float(), exact)
    assert torch.equal(stochastic_round(-exact, dtype, g).float(), -exact)


def test_float32_parameters_take_torchs_adamw_update_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(3000, generator=g)
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    a = StochasticAdamW([ours], lr=3e-3, weight_decay=0.1)
    b = torch.optim.AdamW([ref], lr=3e-3, weight_decay=0.1, foreach=False)
    for _ in range(5):
        grad = torch.randn(3000, generator=g)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
        assert torch.equal(ours.detach(), ref.detach())
    assert torch.equal(a.state[ours]["exp_avg_sq"], b.state[ref]["exp_avg_sq"])


def _drift(opt_cls, dtype, lr, steps=30, n=100_000):
    """30 AdamW steps under a steady gradient (drift 1e-3, noise 1e-3) on weights of scale 0.02: the
    displacement, projected on float32 AdamW's (1 = as far along it)."""
    g = torch.Generator().manual_seed(0)
    w0 = (torch.randn(n, generator=g) * 0.02).to(dtype).float()  # the same start in both precisions
    p32, p = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.to(dtype))
    o32 = torch.optim.AdamW([p32], lr=lr, weight_decay=0.0, foreach=False)
    o = opt_cls([p], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        grad = torch.randn(n, generator=g) * 1e-3 + 1e-3
        p32.grad, p.grad = grad.clone(), grad.to(dtype)
        o32.step()
        o.step()
    d32, d = (p32.detach() - w0).double(), (p.detach().float() - w0).double()
    return float(d @ d32 / (d32 @ d32)), float((d == 0).double().mean())


@pytest.mark.parametrize("lr", [1e-5, 5e-5])
def test_bf16_weights_move_as_far_as_float32_ones_where_torchs_bf16_adamw_stalls(lr):
    along, frozen = _drift(StochasticAdamW, torch.bfloat16, lr)
    # each entry's rounding noise is a random walk of ≤ 30 half-spacings (~3e-4); projected on the
    # drift over 1e5 entries its share is ~1e-3, far inside 3%
    assert along == pytest.approx(1.0, abs=0.03), along
    torch_along, torch_frozen = _drift(torch.optim.AdamW, torch.bfloat16, lr)
    assert torch_along < 0.9 and torch_frozen > 0.4  # what the fine-tuner used before (0.40 / 0.85 at 1e-5)
    assert frozen < torch_frozen


def test_a_strided_parameter_is_updated_whole_like_a_contiguous_one():
    """A transposed view (not contiguous) takes the same update as its contiguous copy (float32: exact)."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(40, 30, generator=g)
    strided = torch.nn.Parameter(base.t())  # 30 × 40, strides (1, 30)
    plain = torch.nn.Parameter(base.t().contiguous())
    assert not strided.is_contiguous()
    a, b = StochasticAdamW([strided], lr=1e-2), StochasticAdamW([plain], lr=1e-2)
    for _ in range(3):
        grad = torch.randn(30, 40, generator=g)
        strided.grad, plain.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(strided.detach(), plain.detach())
