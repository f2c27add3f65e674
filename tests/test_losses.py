"""InfoNCE / NT-Xent and the auxiliary loss, against naive computations (SPEC §2 "Loss")."""

from __future__ import annotations

import math

import pytest
import torch

from ctxssl_cli.losses import aux_loss, info_nce


def naive_info_nce(z_x: torch.Tensor, z_y: torch.Tensor, t: float) -> float:
    n = len(z_x)
    outs = [v / v.norm() for v in list(z_x) + list(z_y)]  # 2n unit vectors
    total = 0.0
    for r in range(2 * n):
        pos = r + n if r < n else r - n
        denom = sum(math.exp(float(outs[r] @ outs[j]) / t) for j in range(2 * n) if j != r)
        total += -(float(outs[r] @ outs[pos]) / t - math.log(denom))
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
