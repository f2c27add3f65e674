"""Parameterised 2D augmentations (SPEC §3.4): views of one stored image, made on the device, with every
parameter recorded so that the action between two views is known exactly.

A view is described by 9 numbers (`ViewParams`, the AUGMENT2D schema's order: crop 4, color 4, blur 1):
- crop: the box (top, left, height, width) relative to the image size, in [0, 1]; resized to out_size x out_size
  with bilinear interpolation, exactly as torchvision's `resized_crop(..., antialias=False)` on a box of whole
  pixels (samples clamped to the box's edge pixels);
- color: brightness, contrast, saturation factors (1 = unchanged) and a hue shift in turns ([-0.5, 0.5], 0 =
  unchanged), torchvision's ColorJitter semantics, applied in the fixed order brightness, contrast, saturation,
  hue, with a clamp to [0, 1] after each;
- blur: Gaussian sigma in pixels of the output view (0 = no blur, the image is left bit for bit unchanged).

`sample_params` draws them like SimCLR/EquiMod's pipeline (`AugmentSettings`); `apply_params` is a pure,
batched function of (image, params): a view computed in a batch is bit for bit the view computed alone (CPU).

**Action convention** (`relative_action`): the action that maps view x to view y is the difference of their
parameters in an additive parameterisation: crop y - x; log(factor_y) - log(factor_x) for brightness, contrast
and saturation; the hue difference wrapped to [-0.5, 0.5); sigma_y - sigma_x. Why:
- a difference is *relative*, like the relative rotation R(x)^-1 R(y) of the 3D benchmark: the same action
  applied to different source views names the same change, so the context can teach the model how the
  representation moves rather than where a view sits (the absolute parameters of y would make the action
  carry no information about x at all);
- log makes the multiplicative factors additive (factor_y = factor_x * exp(a)) and symmetric (doubling and
  halving are +-log 2), so a(x->y) = -a(y->x) for every component, and composing actions adds them;
- hue is an angle: its difference is wrapped to the shorter way round the colour circle.
The auxiliary target (`absolute_target`) is the absolute parameters of a view in the same parameterisation
(log factors), so the predictor regresses quantities on the same scale as the actions.

Training pairs (`AugmentPairSampler`) follow PairSampler's contract (data/pairs.py): object order from
(seed, epoch), parameters from (seed, epoch, step) drawn for the whole global batch, DDP rank r of W takes the
contiguous slice [r*G/W, (r+1)*G/W). The batch holds the uint8 source images and both views' parameters;
`make_views` renders the views where the batch is (on the GPU after `.to(device)`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from ctxssl_cli.data.pairs import PairSampler, TensorBatch, check_batch_setup
from ctxssl_cli.data.schema import AUGMENT2D
from ctxssl_cli.errors import CtxsslError

_PARAMS = 2  # rng stream tag (pairs.py uses 0 for the permutation, 1 for the views)
_CANDIDATES = 10  # RandomResizedCrop's rejection loop: tries per image before the centre-crop fallback


class ViewParams:
    """Column layout of a (B, 9) float32 view-parameter tensor (the AUGMENT2D schema's order)."""

    NAMES = ("top", "left", "height", "width", "brightness", "contrast", "saturation", "hue", "sigma")
    TOP, LEFT, HEIGHT, WIDTH, BRIGHTNESS, CONTRAST, SATURATION, HUE, SIGMA = range(9)
    DIM = 9
    CROP = slice(AUGMENT2D.indices("crop")[0], AUGMENT2D.indices("crop")[-1] + 1)  # 0:4
    COLOR = slice(AUGMENT2D.indices("color")[0], AUGMENT2D.indices("color")[-1] + 1)  # 4:8
    BLUR = slice(AUGMENT2D.indices("blur")[0], AUGMENT2D.indices("blur")[-1] + 1)  # 8:9
    IDENTITY = (0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)  # the whole image, unchanged

    @staticmethod
    def identity(n: int, device="cpu") -> torch.Tensor:
        """(n, 9) parameters that leave an image unchanged (at out_size == its size)."""
        return torch.tensor(ViewParams.IDENTITY, dtype=torch.float32, device=device).repeat(n, 1)

    @staticmethod
    def make(n: int = 1, device="cpu", **values) -> torch.Tensor:
        """(n, 9) identity parameters with the named columns replaced, e.g. make(4, hue=0.1, sigma=1.0)."""
        p = ViewParams.identity(n, device)
        for name, v in values.items():
            if name not in ViewParams.NAMES:
                raise ValueError(f"unknown view parameter {name!r}; use one of {ViewParams.NAMES}")
            p[:, ViewParams.NAMES.index(name)] = torch.as_tensor(v, dtype=torch.float32, device=device)
        return p


assert AUGMENT2D.dim == ViewParams.DIM  # the schema and this layout are one definition


@dataclass(frozen=True)
class AugmentSettings:
    """How views are drawn. Defaults: SimCLR's CIFAR pipeline as EquiMod uses it (crop, colour jitter, blur)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of the box; 0.2 (not 0.08) suits 32 px images
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # box width/height (relative units = pixels if square)
    jitter_p: float = 0.8  # probability of colour jitter; otherwise factors 1 and hue 0
    brightness: float = 0.4  # factor ~ U(1 - b, 1 + b); < 1 so that log(factor) stays finite
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift ~ U(-h, h) turns, <= 0.5
    blur_p: float = 0.5  # probability of blur; otherwise sigma 0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma ~ U(lo, hi), pixels of the output view

    def __post_init__(self):
        def bad(what, fix):
            raise CtxsslError(f"bad augmentation setting: {what}", fix)

        s0, s1 = map(float, self.crop_scale)
        r0, r1 = map(float, self.crop_ratio)
        if not 0 < s0 <= s1 <= 1:
            bad(f"crop_scale {list(self.crop_scale)}", "use 0 < min <= max <= 1, e.g. --set data.augment.crop_scale='[0.2, 1.0]'")
        if not 0 < r0 <= r1:
            bad(f"crop_ratio {list(self.crop_ratio)}", "use 0 < min <= max, e.g. --set data.augment.crop_ratio='[0.75, 1.333]'")
        for name in ("jitter_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                bad(f"{name} {getattr(self, name)}", "use a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                bad(f"{name} {getattr(self, name)}", "use a jitter strength in [0, 1) (factors must stay > 0)")
        if not 0 <= self.hue <= 0.5:
            bad(f"hue {self.hue}", "use a hue jitter in [0, 0.5]")
        b0, b1 = map(float, self.blur_sigma)
        if not 0 < b0 <= b1:
            bad(f"blur_sigma {list(self.blur_sigma)}", "use 0 < min <= max, e.g. --set data.augment.blur_sigma='[0.1, 2.0]'")

    @property
    def blur_kernel_size(self) -> int:
        """Blur taps: 2*ceil(3*sigma_max)+1 (>= 3). Fixed by the settings, never by a batch, so that a view does
        not depend on the other views it is rendered with."""
        return max(3, 2 * math.ceil(3 * float(self.blur_sigma[1])) + 1)


DEFAULT_SETTINGS = AugmentSettings()
_PAIR_FIELDS = ("crop_scale", "crop_ratio", "blur_sigma")  # (min, max) ranges; the other fields are numbers


def settings_from(mapping: dict | None, key: str = "data.augment") -> AugmentSettings:
    """A run spec's `data.augment` mapping (field -> value, as YAML gives it: ranges as 2-element lists) ->
    AugmentSettings; an empty mapping gives the defaults. Unknown fields, wrong types and out-of-range values
    raise CtxsslError naming `key`."""
    if not mapping:
        return DEFAULT_SETTINGS
    if not isinstance(mapping, dict):
        raise CtxsslError(f"{key} must be a mapping, got {mapping!r}", f"e.g. --set {key}='{{crop_scale: [0.2, 1.0]}}'")
    fields = [f.name for f in dataclasses.fields(AugmentSettings)]
    kw = {}
    for name, value in mapping.items():
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else "valid fields: " + ", ".join(fields)
            raise CtxsslError(f"unknown augmentation setting '{key}.{name}'", hint)
        default = getattr(DEFAULT_SETTINGS, name)
        if name in _PAIR_FIELDS:
            if isinstance(value, (list, tuple)):  # YAML 1.1 reads 1e-1 as a string: take numeric strings too
                value = [_number_or_text(v) for v in value]
            ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
            if not ok:
                raise CtxsslError(f"{key}.{name} must be a [min, max] pair of numbers, got {value!r}",
                                  f"e.g. --set {key}.{name}='[{default[0]:g}, {default[1]:g}]'")
            kw[name] = (float(value[0]), float(value[1]))
        else:
            if not _is_number(value):
                raise CtxsslError(f"{key}.{name} must be a number, got {value!r}", f"e.g. --set {key}.{name}={default:g}")
            kw[name] = float(value)
    try:
        return AugmentSettings(**kw)
    except CtxsslError as e:
        raise CtxsslError(f"{key}: {e.what}", e.fix) from None


def _number_or_text(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_number(value) -> bool:
    """A finite int or float (bools are not numbers here; an int too large for a float is not finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) < 1e300


# ---- sampling ------------------------------------------------------------------------------------------

# Columns of sample_params' one uniform draw: C candidates each of crop area, log-ratio, top, left; then the
# jitter gate, the 4 jitter values, the blur gate, sigma.
_C = _CANDIDATES
_U_AREA, _U_RATIO, _U_TOP, _U_LEFT = (slice(k * _C, (k + 1) * _C) for k in range(4))
_U_JIT_GATE, _U_JIT, _U_BLUR_GATE, _U_SIGMA = 4 * _C, slice(4 * _C + 1, 4 * _C + 5), 4 * _C + 5, 4 * _C + 6
_U_COLS = 4 * _C + 7


def sample_params(n: int, generator: torch.Generator, settings: AugmentSettings = DEFAULT_SETTINGS) -> torch.Tensor:
    """(n, 9) float32 view parameters on the CPU, a pure function of the generator's state (one uniform draw of
    shape (n, 47); row i of the result depends on row i of the draw only)."""
    st = settings
    u = torch.rand((int(n), _U_COLS), generator=generator, dtype=torch.float32)  # (n, 47)

    # crop: RandomResizedCrop's rejection loop on all C candidates at once; the first valid one wins
    s0, s1 = map(float, st.crop_scale)
    lr0, lr1 = math.log(st.crop_ratio[0]), math.log(st.crop_ratio[1])
    area = s0 + (s1 - s0) * u[:, _U_AREA]  # (n, C) fraction of the image
    ratio = torch.exp(lr0 + (lr1 - lr0) * u[:, _U_RATIO])  # (n, C) width / height
    w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # (n, C) relative to the image's sides
    valid = (w <= 1) & (h <= 1)  # (n, C)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # (n, 1) first valid candidate (0 if none)

    def pick(t):  # (n, C) -> (n,)
        return t.gather(1, first).squeeze(1)

    w, h = pick(w), pick(h)
    top, left = pick(u[:, _U_TOP]) * (1 - h), pick(u[:, _U_LEFT]) * (1 - w)  # uniform position in the image
    # torchvision's fallback: a centred box of the image's ratio (1: the relative square) clipped to the ratios
    fh, fw = 1.0, 1.0
    if st.crop_ratio[0] > 1.0:
        fh = 1.0 / st.crop_ratio[0]
    elif st.crop_ratio[1] < 1.0:
        fw = float(st.crop_ratio[1])
    none = ~valid.any(dim=1)  # (n,)
    crop = torch.stack([torch.where(none, (1 - fh) / 2, top), torch.where(none, (1 - fw) / 2, left),
                        torch.where(none, fh, h), torch.where(none, fw, w)], dim=1)  # (n, 4)

    # colour jitter: all four factors or none (RandomApply(ColorJitter, p))
    span = torch.tensor([st.brightness, st.contrast, st.saturation, st.hue], dtype=torch.float32)  # (4,)
    centre = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float32)  # (4,) the identity
    color = centre + span * (2 * u[:, _U_JIT] - 1)  # (n, 4) uniform in [centre - span, centre + span]
    color = torch.where((u[:, _U_JIT_GATE] < st.jitter_p)[:, None], color, centre)

    # blur: sigma or 0 (RandomApply(GaussianBlur, p))
    b0, b1 = map(float, st.blur_sigma)
    sigma = torch.where(u[:, _U_BLUR_GATE] < st.blur_p, b0 + (b1 - b0) * u[:, _U_SIGMA], 0.0)  # (n,)
    return torch.cat([crop, color, sigma[:, None]], dim=1).contiguous()  # (n, 9)


# ---- rendering -----------------------------------------------------------------------------------------

def apply_params(images: torch.Tensor, params: torch.Tensor, out_size: int,
                 settings: AugmentSettings = DEFAULT_SETTINGS) -> torch.Tensor:
    """Render views: images uint8 (0..255) or float (0..1) (B, 3, H, W), params (B, 9) on the same device ->
    float32 (B, 3, S, S) in [0, 1], S = out_size. Batched (no loop over B); row b depends on images[b] and
    params[b] only, bit for bit on the CPU. `settings` fixes the blur kernel size (`blur_kernel_size`); a sigma
    above the settings' maximum is blurred with that truncated kernel."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
    if params.shape != (images.shape[0], ViewParams.DIM):
        raise ValueError(f"expected params ({images.shape[0]}, {ViewParams.DIM}), got {tuple(params.shape)}")
    x = images.float() / 255.0 if not images.is_floating_point() else images.float()
    p = params.to(device=x.device, dtype=torch.float32)
    x = _crop_resize(x, p[:, ViewParams.CROP], int(out_size))  # (B, 3, S, S)
    x = _color(x, p[:, ViewParams.COLOR])
    return _blur(x, p[:, ViewParams.SIGMA], settings.blur_kernel_size)


def _crop_resize(x: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) float, box (B, 4) relative (top, left, height, width) -> (B, 3, S, S), one grid_sample.

    The sample positions are interpolate()'s (align_corners=False) inside the box, clamped to the box's edge
    pixels, so a box of whole pixels gives torchvision's resized_crop(antialias=False)."""
    _, _, hh, ww = x.shape
    j = torch.arange(size, device=x.device, dtype=torch.float32) + 0.5  # (S,) output pixel centres

    def axis(start, length, n):  # relative start/length (B,) -> normalised grid coordinates (B, S)
        start_px, len_px = start[:, None] * n, length[:, None] * n  # (B, 1) in pixels
        src = j * (len_px / size) - 0.5  # (B, S) source pixel index inside the box
        src = torch.minimum(src.clamp_min(0.0), (len_px - 1).clamp_min(0.0))  # edge pixels of the box
        return (2 * (start_px + src) + 1) / n - 1  # grid_sample's align_corners=False normalisation

    gy, gx = axis(box[:, 0], box[:, 2], hh), axis(box[:, 1], box[:, 3], ww)  # (B, S) each
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, S, S, 2) as (x, y)
    return functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R 601-2 luma (torchvision's weights)."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor (B,)."""
    f = factor[:, None, None, None]  # (B, 1, 1, 1)
    return (x * f + other * (1 - f)).clamp_(0.0, 1.0)


def _color(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Colour jitter in torchvision's order brightness, contrast, saturation, hue; c (B, 4)."""
    x = (x * c[:, 0, None, None, None]).clamp_(0.0, 1.0)  # brightness
    # contrast: blend with the mean grey level of each image, accumulated in float64 and rounded to float32 so
    # that a reduction split differently across threads (one image alone, or a batch) gives the same mean
    mean = _gray(x).double().mean(dim=(1, 2, 3), keepdim=True).float()  # (B, 1, 1, 1)
    x = _blend(x, mean, c[:, 1])
    x = _blend(x, _gray(x), c[:, 2])  # saturation
    hue = c[:, 3, None, None, None]  # (B, 1, 1, 1)
    return torch.where(hue == 0, x, _shift_hue(x, hue))  # hue 0: exactly unchanged (no HSV round trip)


_SEXTANT = (5.0, 3.0, 1.0)  # HSV -> RGB: the offset n of channel R, G, B in k = (n + 6h) mod 6


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1], shift (B, 1, 1, 1) turns: RGB -> HSV, h += shift (mod 1), HSV -> RGB.

    Hue is kept in sextants (6h) throughout; HSV -> RGB is v - v s clamp(min(k, 4 - k), 0, 1) per channel."""
    v = x.amax(dim=1)  # (B, H, W) value
    delta = v - x.amin(dim=1)  # (B, H, W) chroma
    r, g, b = x.unbind(dim=1)  # (B, H, W) each
    grey = delta == 0  # hue undefined: 0, as torchvision
    d = torch.where(grey, 1.0, delta)  # safe divisor
    s = delta / torch.where(v == 0, 1.0, v)  # (B, H, W) saturation (0 where v == 0, since then delta == 0)
    h6 = torch.where(v == r, (g - b) / d, torch.where(v == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    h6 = torch.where(grey, 0.0, h6) + 6.0 * shift[:, 0]  # (B, H, W) shifted hue in sextants (any sign)
    n = torch.tensor(_SEXTANT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + n, 6.0)  # (B, 3, H, W)
    f = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (v.unsqueeze(1) - (v * s).unsqueeze(1) * f).clamp_(0.0, 1.0)  # (B, 3, H, W)


def _blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (B,), reflect padding, as two grouped convolutions over the
    B*3 channels; sigma 0 leaves the image bit for bit unchanged.

    The taps exp(-k^2 / 2 sigma^2) / sum are torchvision's; the kernel size is fixed by the caller (the settings),
    never by the batch, so that a view does not depend on the views rendered with it."""
    b, c, hh, ww = x.shape
    r = min(kernel_size // 2, hh - 1, ww - 1)  # reflect padding needs pad < size
    if r < 1 or b == 0:
        return x
    # taps in float64 (exp is not correctly rounded, and its vectorised and scalar paths may differ in the last
    # bit; rounding a float64 result to float32 hides that), normalised per image
    offsets = torch.arange(-r, r + 1, device=x.device, dtype=torch.float64)  # (K,)
    blurred = sigma > 0  # (B,)
    s = torch.where(blurred, sigma, 1.0).double()[:, None]  # (B, 1)
    w = torch.exp(-(offsets * offsets) / (2 * s * s))  # (B, K)
    w = (w / w.sum(dim=1, keepdim=True)).float()
    w = w.repeat_interleave(c, dim=0)  # (B*3, K): channel-minor, as (B, 3) flattens
    t = functional.pad(x, (r, r, 0, 0), mode="reflect").reshape(1, b * c, hh, ww + 2 * r)  # (1, B*3, H, W+2r)
    t = functional.conv2d(t, w[:, None, None, :], groups=b * c).reshape(b, c, hh, ww)  # along the width
    t = functional.pad(t, (0, 0, r, r), mode="reflect").reshape(1, b * c, hh + 2 * r, ww)  # (1, B*3, H+2r, W)
    t = functional.conv2d(t, w[:, None, :, None], groups=b * c).reshape(b, c, hh, ww)  # along the height
    return torch.where(blurred[:, None, None, None], t.clamp_(0.0, 1.0), x)


# ---- actions and targets -------------------------------------------------------------------------------

_FACTORS = slice(ViewParams.BRIGHTNESS, ViewParams.SATURATION + 1)
_MIN_FACTOR = 1e-6  # log() floor for hand-made parameters with a zero factor (sampled factors are >= 1 - strength)


def absolute_target(params: torch.Tensor) -> torch.Tensor:
    """(B, 9) the auxiliary target of a view: its parameters with the three factors as logs."""
    t = params.float().clone()
    # log in float64, rounded to float32: the same value whatever the batch (see _blur on exp)
    t[:, _FACTORS] = torch.log(t[:, _FACTORS].double().clamp_min(_MIN_FACTOR)).float()
    return t


def relative_action(params_x: torch.Tensor, params_y: torch.Tensor) -> torch.Tensor:
    """(B, 9) the action mapping view x to view y: absolute_target(y) - absolute_target(x), hue wrapped to
    [-0.5, 0.5). Zero for identical views; a(y, x) = -a(x, y) (except a hue difference of exactly 1/2)."""
    a = absolute_target(params_y) - absolute_target(params_x)
    a[:, ViewParams.HUE] = torch.remainder(a[:, ViewParams.HUE] + 0.5, 1.0) - 0.5
    return a


AUX_TARGET_STD = 0.5  # model.action_units=standard: aux targets scaled to a quaternion component's spread
_STD_SAMPLES, _STD_SEED = 1 << 16, 0x57D


@functools.lru_cache(maxsize=None)
def unit_scales(settings: AugmentSettings = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard units of `model.action_units=standard`: per component, 1 / std of the action between two
    independently drawn views, and AUX_TARGET_STD / std of a view's aux target, each (9,) float32. A fixed
    function of the augmentation settings (65,536 seeded draws), so training and every later embed agree."""
    g = torch.Generator().manual_seed(_STD_SEED)
    st = settings or DEFAULT_SETTINGS
    px, py = sample_params(_STD_SAMPLES, g, st), sample_params(_STD_SAMPLES, g, st)
    a_std = relative_action(px, py).double().std(0)
    t_std = absolute_target(py).double().std(0)
    # a component the settings never vary (crop_scale [1, 1]: height and width always 1) keeps unit scale
    fixed_a, fixed_t = a_std <= 1e-6, t_std <= 1e-6
    return (torch.where(fixed_a, 1.0, 1.0 / a_std.clamp_min(1e-6)).float(),
            torch.where(fixed_t, 1.0, AUX_TARGET_STD / t_std.clamp_min(1e-6)).float())


# ---- training pairs ------------------------------------------------------------------------------------

@dataclass
class AugmentPairBatch(TensorBatch):
    source: torch.Tensor  # (B, 3, H, W) uint8, the stored image (view 0) of each object
    params_x: torch.Tensor  # (B, 9) float32, view x's parameters (ViewParams layout)
    params_y: torch.Tensor  # (B, 9) float32, view y's parameters
    label: torch.Tensor  # (B,) int64 class
    obj: torch.Tensor  # (B,) int64 object index in the split


class AugmentPairSampler:
    """Deterministic augmented training pairs: PairSampler's contract (module docstring) for one stored image
    per object. Works with PairBatchDataset and a DataLoader of any number of workers."""

    def __init__(self, split, global_batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 settings: AugmentSettings = DEFAULT_SETTINGS):
        g, w = check_batch_setup(global_batch_size, rank, world_size)
        if split.n_views < 1:
            raise CtxsslError(f"split {split.name} has no stored view per object", "re-run prepare")
        if split.n_objects < 1:
            raise CtxsslError(f"split {split.name} has no objects", "prepare a dataset with training objects")
        self.steps_per_epoch = max(1, split.n_objects // g)  # as PairSampler: the ragged tail is dropped
        self.split, self.global_batch_size, self.seed = split, g, int(seed)
        self.rank, self.world_size, self.settings = int(rank), w, settings
        self.local_batch_size = g // w
        self._perm_epoch, self._perm = None, None

    # The same object order as PairSampler for a seed: one definition (it reads split, global_batch_size, seed
    # and its cache attributes).
    permutation = PairSampler.permutation

    def _slice(self) -> slice:
        return slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """(B,) int64 objects of this rank's part of global batch `step` of `epoch` (each object's view 0)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside [0, {self.steps_per_epoch})")
        g = self.global_batch_size
        return self.permutation(epoch)[step * g:(step + 1) * g][self._slice()].astype(np.int64)

    def params(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(params_x, params_y), each (B, 9): drawn for the whole global batch from (seed, epoch, step), then
        this rank's slice."""
        g = self.global_batch_size
        state = np.random.SeedSequence([self.seed, _PARAMS, int(epoch), int(step)]).generate_state(1, np.uint64)
        gen = torch.Generator().manual_seed(int(state[0]))
        p = sample_params(2 * g, gen, self.settings)  # (2G, 9): rows [0, G) view x, [G, 2G) view y
        sl = self._slice()
        return p[:g][sl].contiguous(), p[g:][sl].contiguous()

    def batch(self, epoch: int, step: int) -> AugmentPairBatch:
        obj = self.indices(epoch, step)
        px, py = self.params(epoch, step)
        return AugmentPairBatch(
            source=self.split.images(obj, np.zeros_like(obj)), params_x=px, params_y=py,
            label=torch.from_numpy(np.asarray(self.split.labels)[obj].astype(np.int64)),
            obj=torch.from_numpy(obj))


def make_views(batch: AugmentPairBatch, out_size: int, settings: AugmentSettings = DEFAULT_SETTINGS):
    """Render a batch's two views where it lies (after batch.to(device)): returns x, y float32 (B, 3, S, S) in
    [0, 1] (not normalised), action (B, 9) = relative_action(x -> y), target_x, target_y (B, 9) absolute."""
    b = len(batch)
    views = apply_params(torch.cat([batch.source, batch.source]), torch.cat([batch.params_x, batch.params_y]),
                         out_size, settings)  # (2B, 3, S, S); each row as if rendered alone
    return (views[:b], views[b:], relative_action(batch.params_x, batch.params_y),
            absolute_target(batch.params_x), absolute_target(batch.params_y))
