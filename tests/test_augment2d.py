"""2D parameterised augmentations (SPEC §3.4): agreement with torchvision, purity (a view alone == the view in a
batch, bit for bit), parameter sampling, the action convention, and the pair sampler's determinism and DDP
slicing."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ctxssl_cli.data.augment2d import (AugmentPairSampler, AugmentSettings, ViewParams, absolute_target,
                                       apply_params, make_views, relative_action, sample_params)
from ctxssl_cli.data.pairs import PairBatchDataset
from ctxssl_cli.data.schema import AUGMENT2D
from ctxssl_cli.errors import CtxsslError


def _images(n, h=32, w=32, seed=0):
    """Smooth colourful images with some grey pixels (so HSV's hue-undefined case is exercised)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((n, 3, h // 4, w // 4), generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    img = img + 0.15 * torch.rand((n, 3, h, w), generator=g)
    img[:, :, :3, :3] = img[:, :1, :3, :3]  # a grey patch
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- rendering -----------------------------------------------------------------------------------------

def test_layout_matches_schema():
    assert ViewParams.DIM == AUGMENT2D.dim == 9
    assert tuple(range(9))[ViewParams.CROP] == AUGMENT2D.indices("crop")
    assert tuple(range(9))[ViewParams.COLOR] == AUGMENT2D.indices("color")
    assert tuple(range(9))[ViewParams.BLUR] == AUGMENT2D.indices("blur")


def test_identity_params_return_the_image():
    img = _images(3)
    out = apply_params(img, ViewParams.identity(3), 32)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 32, 32)
    assert torch.equal(out, img.float() / 255)  # exact at power-of-two sizes
    odd = _images(2, 24, 24)
    torch.testing.assert_close(apply_params(odd, ViewParams.identity(2), 24), odd.float() / 255, atol=1e-6, rtol=0)
    f = img.float() / 255  # float input is taken as [0, 1]
    assert torch.equal(apply_params(f, ViewParams.identity(3), 32), f)


@pytest.mark.parametrize("hw,box,size", [
    ((32, 32), (4, 6, 20, 16), 24),  # upsampling a crop
    ((32, 32), (0, 0, 32, 32), 20),  # downsampling the whole image (no antialias)
    ((32, 32), (10, 3, 13, 27), 32),
    ((24, 32), (2, 5, 18, 20), 28),  # non-square image: the box is relative to each side
])
def test_crop_resize_matches_torchvision(hw, box, size):
    h, w = hw
    img = _images(2, h, w, seed=1)
    t, l, bh, bw = box
    p = ViewParams.make(2, top=t / h, left=l / w, height=bh / h, width=bw / w)
    ours = apply_params(img, p, size)
    ref = TF.resized_crop(img.float() / 255, t, l, bh, bw, size=[size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=False)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)


def test_colour_matches_torchvision():
    img = _images(4, seed=2)
    f = img.float() / 255
    cases = [("brightness", TF.adjust_brightness, [0.6, 1.0, 1.3, 1.8], 1e-6),
             ("contrast", TF.adjust_contrast, [0.6, 0.9, 1.4, 2.0], 1e-5),
             ("saturation", TF.adjust_saturation, [0.0, 0.6, 1.4, 2.5], 1e-5),
             ("hue", TF.adjust_hue, [-0.5, -0.1, 0.07, 0.4], 1e-4)]
    for name, fn, values, tol in cases:
        ours = apply_params(img, ViewParams.make(4, **{name: values}), 32)
        ref = torch.stack([fn(f[i], values[i]) for i in range(4)])
        torch.testing.assert_close(ours, ref, atol=tol, rtol=0, msg=name)
    # all four, in torchvision's order brightness, contrast, saturation, hue
    p = ViewParams.make(4, brightness=[0.7, 1.3, 1.1, 0.9], contrast=[1.2, 0.7, 1.0, 1.3],
                        saturation=[0.8, 1.3, 0.6, 1.0], hue=[0.05, -0.08, 0.0, 0.1])
    ref = []
    for i in range(4):
        b, c, s, hu = p[i, 4:8].tolist()
        ref.append(TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(f[i], b), c), s), hu))
    torch.testing.assert_close(apply_params(img, p, 32), torch.stack(ref), atol=1e-4, rtol=0)


def test_blur_matches_torchvision_and_sigma0_is_exact():
    img = _images(3, seed=3)
    f = img.float() / 255
    k = AugmentSettings().blur_kernel_size
    assert k == 13  # 2 * ceil(3 * 2.0) + 1
    sigmas = [0.3, 1.0, 2.0]
    ours = apply_params(img, ViewParams.make(3, sigma=sigmas), 32)
    ref = torch.stack([TF.gaussian_blur(f[i], kernel_size=[k, k], sigma=[s, s]) for i, s in enumerate(sigmas)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    mixed = apply_params(img, ViewParams.make(3, sigma=[0.0, 1.0, 0.0]), 32)
    assert torch.equal(mixed[0], f[0]) and torch.equal(mixed[2], f[2]) and not torch.equal(mixed[1], f[1])
    small = AugmentSettings(blur_sigma=(0.1, 0.5))
    assert small.blur_kernel_size == 5
    ref5 = TF.gaussian_blur(f[1], kernel_size=[5, 5], sigma=[0.4, 0.4])
    torch.testing.assert_close(apply_params(img[1:2], ViewParams.make(1, sigma=0.4), 32, small)[0], ref5,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [32, 24, 40])
def test_views_in_a_batch_equal_views_alone(size):
    img = _images(8, seed=4)
    st = AugmentSettings(jitter_p=1.0, blur_p=1.0)  # every factor active
    p = sample_params(8, _gen(0), st)
    p[3] = ViewParams.make(1, hue=0.2)[0]  # and a few partial ones
    p[5, ViewParams.SIGMA] = 0.0
    batch = apply_params(img, p, size, st)
    assert batch.shape == (8, 3, size, size) and batch.min() >= 0 and batch.max() <= 1
    for i in range(8):
        assert torch.equal(batch[i:i + 1], apply_params(img[i:i + 1], p[i:i + 1], size, st)), i
    assert torch.equal(batch[2:6], apply_params(img[2:6], p[2:6], size, st))


# ---- sampling ------------------------------------------------------------------------------------------

def test_sample_params_deterministic_and_in_range():
    st = AugmentSettings()
    p = sample_params(10_000, _gen(7), st)
    assert p.dtype == torch.float32 and p.shape == (10_000, 9)
    assert torch.equal(p, sample_params(10_000, _gen(7), st))
    assert not torch.equal(p, sample_params(10_000, _gen(8), st))
    top, left, h, w = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    eps = 1e-5
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 1 + eps).all() and (left + w <= 1 + eps).all()
    area, ratio = h * w, w / h
    assert (area >= 0.2 - eps).all() and (area <= 1 + eps).all()
    assert (ratio >= 3 / 4 - eps).all() and (ratio <= 4 / 3 + eps).all()
    b, c, s, hue, sigma = p[:, 4], p[:, 5], p[:, 6], p[:, 7], p[:, 8]
    for fct in (b, c, s):
        assert (fct >= 0.6 - eps).all() and (fct <= 1.4 + eps).all()
    assert (hue.abs() <= 0.1 + eps).all()
    assert ((sigma == 0) | ((sigma >= 0.1) & (sigma <= 2.0))).all()
    jittered = (p[:, 4:8] != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(dim=1).float().mean().item()
    assert abs(jittered - 0.8) < 0.02
    assert abs((sigma > 0).float().mean().item() - 0.5) < 0.02
    assert 0.45 < area.mean().item() < 0.65  # ~ U(0.2, 1), less the large boxes of extreme ratios
    assert ((top + h - 1).abs() > 1e-3).float().mean() > 0.5  # positions spread, not only at the edges


def test_sample_params_fallback_and_bad_settings():
    never = AugmentSettings(crop_scale=(0.9, 1.0), crop_ratio=(2.0, 3.0))  # no candidate fits: centre crop
    p = sample_params(50, _gen(0), never)
    torch.testing.assert_close(p[:, :4], torch.tensor([0.25, 0.0, 0.5, 1.0]).expand(50, 4))
    for bad in (dict(crop_scale=(0.5, 0.2)), dict(brightness=1.0), dict(hue=0.6), dict(blur_p=1.5),
                dict(blur_sigma=(0.0, 1.0)), dict(crop_ratio=(0.0, 1.0))):
        with pytest.raises(CtxsslError):
            AugmentSettings(**bad)


# ---- actions -------------------------------------------------------------------------------------------

def test_relative_action_convention():
    px, py = sample_params(64, _gen(1)), sample_params(64, _gen(2))
    assert torch.equal(relative_action(px, px), torch.zeros(64, 9))
    torch.testing.assert_close(relative_action(py, px), -relative_action(px, py), atol=1e-6, rtol=0)
    a = relative_action(px, py)
    assert (a[:, 7] >= -0.5).all() and (a[:, 7] < 0.5).all()
    non_hue = [i for i in range(9) if i != 7]
    torch.testing.assert_close(a[:, non_hue], (absolute_target(py) - absolute_target(px))[:, non_hue])
    x = ViewParams.make(2, brightness=[1.0, 0.5], hue=[0.45, -0.2], sigma=[0.0, 1.5], top=[0.1, 0.3])
    y = ViewParams.make(2, brightness=[2.0, 1.0], hue=[-0.45, 0.1], sigma=[1.0, 0.5], top=[0.3, 0.0])
    a = relative_action(x, y)
    torch.testing.assert_close(a[:, 4], torch.tensor([math.log(2), math.log(2)]))
    torch.testing.assert_close(a[:, 7], torch.tensor([0.1, 0.3]), atol=1e-6, rtol=0)  # 0.45 -> -0.45 wraps
    torch.testing.assert_close(a[:, 8], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(a[:, 0], torch.tensor([0.2, -0.3]))
    t = absolute_target(y)
    torch.testing.assert_close(t[:, 4], torch.log(y[:, 4]))
    assert torch.equal(t[:, [0, 1, 2, 3, 7, 8]], y[:, [0, 1, 2, 3, 7, 8]])


# ---- training pairs ------------------------------------------------------------------------------------

class _FakeSplit:
    """One stored image per object; pixel (0, 0) of channel 0 holds the object index."""

    name, n_views = "train", 1

    def __init__(self, n=20, res=16):
        self.n_objects, self.res = n, res
        self.labels = np.arange(n, dtype=np.int64) % 3

    def images(self, obj, view):
        obj, view = np.asarray(obj), np.asarray(view)
        assert obj.shape == view.shape and (view == 0).all()
        out = torch.stack([_images(1, self.res, self.res, seed=int(o))[0] for o in obj])
        out[:, 0, 0, 0] = torch.as_tensor(obj, dtype=torch.uint8)
        return out


def test_sampler_determinism_and_rank_slicing():
    split = _FakeSplit()
    s = AugmentPairSampler(split, global_batch_size=8, seed=3)
    assert s.steps_per_epoch == 20 // 8
    b = s.batch(0, 1)
    assert len(b) == 8 and b.source.dtype == torch.uint8 and b.source.shape == (8, 3, 16, 16)
    assert b.params_x.shape == b.params_y.shape == (8, 9) and b.params_x.dtype == torch.float32
    assert b.obj.dtype == torch.int64 and b.label.tolist() == (b.obj.numpy() % 3).tolist()
    assert b.source[:, 0, 0, 0].tolist() == b.obj.tolist() and len(set(b.obj.tolist())) == 8
    assert not torch.equal(b.params_x, b.params_y)
    again = AugmentPairSampler(split, 8, seed=3).batch(0, 1)
    for f in ("source", "params_x", "params_y", "label", "obj"):
        assert torch.equal(getattr(b, f), getattr(again, f)), f
    assert not torch.equal(s.batch(0, 0).params_x, b.params_x)
    assert not torch.equal(s.batch(1, 1).params_x, b.params_x)
    assert not torch.equal(AugmentPairSampler(split, 8, seed=4).batch(0, 1).params_x, b.params_x)
    r0 = AugmentPairSampler(split, 8, seed=3, rank=0, world_size=2).batch(0, 1)
    r1 = AugmentPairSampler(split, 8, seed=3, rank=1, world_size=2).batch(0, 1)
    assert len(r0) == len(r1) == 4
    for f in ("source", "params_x", "params_y", "label", "obj"):
        assert torch.equal(torch.cat([getattr(r0, f), getattr(r1, f)]), getattr(b, f)), f
    for a, a0, a1 in zip(make_views(b, 16), make_views(r0, 16), make_views(r1, 16)):  # views, actions, targets
        assert torch.equal(torch.cat([a0, a1]), a)
    ds = PairBatchDataset(s, epoch=0)
    assert len(ds) == 2 and torch.equal(ds[1].params_y, b.params_y)
    assert torch.equal(b.to("cpu").params_x, b.params_x)
    with pytest.raises(IndexError):
        s.indices(0, 2)
    with pytest.raises(CtxsslError):
        AugmentPairSampler(split, 7, seed=0, world_size=2)
    big = AugmentPairSampler(_FakeSplit(n=5), 8, seed=0).batch(0, 0)  # batch > split: permutations end to end
    assert len(big) == 8 and set(big.obj.tolist()) == set(range(5))


def test_make_views():
    split = _FakeSplit(n=10, res=32)
    b = AugmentPairSampler(split, 6, seed=0).batch(0, 0)
    x, y, action, tx, ty = make_views(b, 24)
    assert x.shape == y.shape == (6, 3, 24, 24) and x.dtype == torch.float32
    assert torch.equal(x, apply_params(b.source, b.params_x, 24))
    assert torch.equal(y, apply_params(b.source, b.params_y, 24))
    assert torch.equal(action, relative_action(b.params_x, b.params_y))
    assert torch.equal(tx, absolute_target(b.params_x)) and torch.equal(ty, absolute_target(b.params_y))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    img = _images(16, seed=5)
    p = sample_params(16, _gen(3), AugmentSettings(jitter_p=1.0, blur_p=1.0))
    cpu = apply_params(img, p, 28)
    gpu = apply_params(img.cuda(), p.cuda(), 28)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    b = AugmentPairSampler(_FakeSplit(), 8, seed=0).batch(0, 0).to("cuda")
    x, y, action, _, _ = make_views(b, 16)
    assert x.is_cuda and action.is_cuda
