"""Image-quality figures and a reconstruction loss for image batches, in plain torch (no downloads).

All functions take (B, 3, H, W) tensors in [-1, 1] (the range the models work in) and compare
them as [0, 1] images.

- `psnr(a, b)`: peak signal-to-noise ratio in dB per image (peak 1.0 on the [0, 1] scale);
  `inf` for identical images.
- `ssim(a, b)`: the structural similarity index of Wang et al. 2004 ("Image quality assessment:
  from error visibility to structural similarity"): an 11x11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, data range 1, no padding ("valid" windows only, as the reference
  MATLAB code and skimage's `gaussian_weights=True` do), the SSIM map averaged over the image and
  the three channels. Images smaller than 11 px get a window as large as the image (sigma scaled
  by the same factor), so 8 px pictures still get a figure.
- `ms_ssim(a, b)`: multi-scale SSIM (Wang, Simoncelli & Bovik 2003) with the paper's five
  scale weights, as many scales as the image size allows (renormalised weights).
- `laplacian_pyramid_l1(a, b, levels)`: a training loss, the mean L1 difference per pyramid
  level (5-tap binomial filter, reflect padding: the same pyramid as
  `transferstudio.starter.metric.laplacian_pyramid`, rewritten in torch here because backbones
  sit below starter). It weighs fine detail (edges, texture) as much as colour, which plain
  L1/MSE reconstruction losses underweight; it needs no pretrained network (unlike LPIPS).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ms_ssim", "laplacian_pyramid", "laplacian_pyramid_l1", "to_unit"]

_C1 = 0.01 ** 2
_C2 = 0.03 ** 2
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, float32 (or float64 if given)."""
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(a.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two [-1, 1] batches, on the [0, 1] scale; inf where identical."""
    _check(a, b)
    mse = (to_unit(a) - to_unit(b)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)  # mse 0 -> inf


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords ** 2) / (2.0 * sigma ** 2))
    g = g / g.sum()
    w2 = torch.outer(g, g).to(dtype=like.dtype, device=like.device)
    return w2.expand(channels, 1, size, size).contiguous()


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, win: int, sigma: float):
    """SSIM and contrast-structure maps of two [0, 1] batches (valid windows only)."""
    c = x.shape[1]
    win = min(win, x.shape[-2], x.shape[-1])
    sigma = sigma * win / 11.0 if win < 11 else sigma
    w = _gaussian_window(win, sigma, c, x)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    # (co)variances are shift-invariant: take them of per-image-centred values, which keeps
    # E[x^2] - E[x]^2 from cancelling catastrophically in float32 on flat areas
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    yc = y - y.mean(dim=(-2, -1), keepdim=True)
    mxc, myc = filt(xc), filt(yc)
    sxx = filt(xc * xc) - mxc * mxc
    syy = filt(yc * yc) - myc * myc
    sxy = filt(xc * yc) - mxc * myc
    cs = (2.0 * sxy + _C2) / (sxx + syy + _C2)
    lum = (2.0 * mu_x * mu_y + _C1) / (mu_x * mu_x + mu_y * mu_y + _C1)
    return lum * cs, cs


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of two [-1, 1] batches (Wang et al. 2004, Gaussian 11x11, sigma 1.5).

    Computed on [0, 1] images, averaged over valid window positions and channels. 1 for
    identical images; symmetric in a and b; at most 1.
    """
    _check(a, b)
    s, _ = _ssim_maps(to_unit(a), to_unit(b), window, sigma)
    return s.flatten(1).mean(1)


def ms_ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5,
            scales: int | None = None) -> torch.Tensor:
    """Per-image multi-scale SSIM of two [-1, 1] batches.

    Five scales (the paper's weights) for images of 176 px and more; smaller images use as many
    scales as keep the coarsest one at least 8 px (at least one), weights renormalised to sum 1.
    Contrast-structure terms are clamped at 0 before the weighted product (negative values
    would make the power undefined), as common implementations do.
    """
    _check(a, b)
    x, y = to_unit(a), to_unit(b)
    side = min(x.shape[-2:])
    if scales is None:
        scales = 1
        while scales < 5 and side // (2 ** scales) >= 8:
            scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    vals = []
    for i in range(scales):
        s, cs = _ssim_maps(x, y, window, sigma)
        if i == scales - 1:
            vals.append(s.flatten(1).mean(1).clamp_min(0.0))
        else:
            vals.append(cs.flatten(1).mean(1).clamp_min(0.0))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stack = torch.stack(vals, dim=1)  # (B, scales)
    return torch.prod(stack ** weights, dim=1)


# ------------------------------------------------------------------ Laplacian pyramid

def _binomial(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    kh = k.view(1, 1, 1, 5).expand(c, 1, 1, 5)
    kv = k.view(1, 1, 5, 1).expand(c, 1, 5, 1)
    # reflect padding needs the padded side to exceed the pad; tiny levels fall back to replicate
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode=mode), kh, groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode=mode), kv, groups=c)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    z = x.new_zeros((b, c, like.shape[-2], like.shape[-1]))
    z[:, :, ::2, ::2] = x
    return _binomial(z) * 4.0  # zero insertion removed 3/4 of the energy


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest band first; the last entry is the low-pass residual. Stops early at 2 px."""
    out = []
    cur = x
    for _ in range(max(0, levels - 1)):
        if min(cur.shape[-2:]) < 4:
            break
        low = _binomial(cur)[:, :, ::2, ::2]
        out.append(cur - _up(low, cur))
        cur = low
    out.append(cur)
    return out


def laplacian_pyramid_l1(a: torch.Tensor, b: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Mean over pyramid levels of the mean absolute difference (a differentiable scalar).

    Inputs are used as given (any range; the models' [-1, 1] is fine). Every band counts the
    same per pixel, so the few pixels of the coarse bands (overall colour, composition) weigh as
    much as the many of the finest band (edges, texture). 0 exactly when a == b.
    """
    _check(a, b)
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    return torch.stack([(la - lb).abs().mean() for la, lb in zip(pa, pb)]).mean()
