"""InfoNCE / NT-Xent and the auxiliary loss, against naive computations (SPEC §2 "Loss")."""

from __future__ import annotations

import math

import pytest
import torch

from ctxssl_cli.losses import aux_loss, info_nce


def naive_info_nce(z_x: torch.Tensor, z_y: torch.Tensor, t: float, clamp: bool = False) -> float:
    n = len(z_x)
    outs = [v / v.norm() for v in list(z_x) + list(z_y)]  # 2n unit vectors

    def sim(a, b):
        c = float(outs[a] @ outs[b])
        return max(c, 1e-7) if clamp else c

    total = 0.0
    for r in range(2 * n):
        pos = r + n if r < n else r - n
        denom = sum(math.exp(sim(r, j) / t) for j in range(2 * n) if j != r)
        total += -(sim(r, pos) / t - math.log(denom))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_info_nce_matches_naive_loop(t):
    g = torch.Generator().manual_seed(0)
    z_x, z_y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert info_nce(z_x, z_y, t).item() == pytest.approx(naive_info_nce(z_x, z_y, t), rel=1e-5)


def test_info_nce_is_scale_invariant_and_float32():
    z_x, z_y = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(info_nce(z_x, z_y), info_nce(3 * z_x, 0.5 * z_y), atol=1e-5)
    out = info_nce(z_x.bfloat16(), z_y.bfloat16())
    assert out.dtype == torch.float32 and out.shape == ()


def test_info_nce_ddp_form_equals_single_batch_loss_and_gradients():
    g = torch.Generator().manual_seed(1)
    z_x = torch.randn(8, 5, generator=g, requires_grad=True)
    z_y = torch.randn(8, 5, generator=g, requires_grad=True)
    single = info_nce(z_x, z_y)
    gx, gy = torch.autograd.grad(single, (z_x, z_y))
    # two "ranks", each with 4 local pairs; all_x/all_y stand for a differentiable all-gather
    ranks = [info_nce(z_x[r * 4:(r + 1) * 4], z_y[r * 4:(r + 1) * 4], all_x=z_x, all_y=z_y, offset=r * 4)
             for r in range(2)]
    local_only = info_nce(z_x[:4], z_y[:4])
    assert not torch.allclose(ranks[0], local_only)  # the other rank's outputs are negatives too
    ddp = (ranks[0] + ranks[1]) / 2
    assert torch.allclose(ddp, single, atol=1e-6)
    dx, dy = torch.autograd.grad(ddp, (z_x, z_y))
    assert torch.allclose(dx, gx, atol=1e-6) and torch.allclose(dy, gy, atol=1e-6)


def test_info_nce_rejects_bad_arguments():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError):
        info_nce(z, z, all_x=z)
    with pytest.raises(ValueError):
        info_nce(z, z, all_x=z, all_y=z, offset=1)


def test_info_nce_decreases_on_a_toy_problem():
    torch.manual_seed(0)
    z_x = torch.randn(32, 16, requires_grad=True)
    z_y = torch.randn(32, 16, requires_grad=True)
    opt = torch.optim.Adam([z_x, z_y], lr=0.05)
    first = info_nce(z_x, z_y).item()
    for _ in range(100):
        opt.zero_grad()
        loss = info_nce(z_x, z_y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert loss.item() < info_nce(torch.randn(32, 16), torch.randn(32, 16)).item()


def test_aux_loss_matches_naive_and_touches_only_revealed():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(5, 6, generator=g, requires_grad=True)
    target = torch.randn(5, 6, generator=g)
    target[:, 0] = float("nan")  # a hidden component never leaks, not even a NaN
    revealed = torch.tensor([False, True, True, True, True, False])
    loss = aux_loss(pred, target, revealed)
    sq = [float(pred[i, j].detach() - target[i, j]) ** 2 for i in range(5) for j in range(6) if revealed[j]]
    naive = sum(sq) / len(sq)
    assert loss.item() == pytest.approx(naive, rel=1e-6)
    loss.backward()
    assert torch.all(pred.grad[:, ~revealed] == 0) and torch.all(pred.grad[:, revealed] != 0)


def test_aux_loss_nothing_revealed_is_a_connected_zero():
    pred = torch.randn(3, 6, requires_grad=True)
    loss = aux_loss(pred, torch.randn(3, 6), torch.zeros(6, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_aux_loss_decreases_on_a_toy_problem():
    torch.manual_seed(0)
    pred = torch.randn(16, 6, requires_grad=True)
    target = torch.randn(16, 6)
    revealed = torch.tensor([True] * 4 + [False] * 2)
    opt = torch.optim.SGD([pred], lr=16.0)  # the mean over 64 revealed entries scales the gradient by 2/64
    first = aux_loss(pred, target, revealed).item()
    for _ in range(50):
        opt.zero_grad()
        loss = aux_loss(pred, target, revealed)
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_clamped_info_nce_matches_naive_loop(t):
    g = torch.Generator().manual_seed(5)
    z_x, z_y = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)  # many negative cosines
    clamped = info_nce(z_x, z_y, t, clamp=True).item()
    assert clamped == pytest.approx(naive_info_nce(z_x, z_y, t, clamp=True), rel=1e-5)
    assert clamped != pytest.approx(info_nce(z_x, z_y, t).item(), rel=1e-3)  # the clamp changes this batch


def test_clamp_is_a_no_op_when_every_cosine_is_positive():
    g = torch.Generator().manual_seed(6)
    z_x, z_y = torch.rand(6, 4, generator=g) + 0.1, torch.rand(6, 4, generator=g) + 0.1  # positive orthant
    assert torch.equal(info_nce(z_x, z_y, 0.1, clamp=True), info_nce(z_x, z_y, 0.1))


def test_clamped_negatives_pass_no_gradient_and_ddp_form_holds():
    g = torch.Generator().manual_seed(7)
    base_x, base_y = torch.rand(4, 3, generator=g) + 0.1, torch.rand(4, 3, generator=g) + 0.1  # positive orthant
    base_y[0] = -1.0  # cosine < 0 with every other output: each of its similarities is clamped
    grads = {}
    for clamp in (True, False):
        z_x, z_y = base_x.clone().requires_grad_(), base_y.clone().requires_grad_()
        info_nce(z_x, z_y, 0.1, clamp=clamp).backward()
        grads[clamp] = z_y.grad[0]
    assert torch.count_nonzero(grads[True]) == 0 and torch.count_nonzero(grads[False]) > 0
    # split into two "ranks": the mean of the local losses equals the single-batch loss
    whole = info_nce(base_x, base_y, 0.1, clamp=True)
    parts = [info_nce(base_x[i:i + 2], base_y[i:i + 2], 0.1, base_x, base_y, offset=i, clamp=True) for i in (0, 2)]
    assert torch.allclose(torch.stack(parts).mean(), whole, rtol=1e-6)
