"""PSNR, SSIM, MS-SSIM and the Laplacian-pyramid loss that the VAE family reports and trains with."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferstudio.backbones.image_quality import (laplacian_pyramid, laplacian_pyramid_l1, ms_ssim,
                                                    psnr, ssim)


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish pictures: blurred noise, so SSIM has structure to compare
    x = torch.rand((n, 3, size // 4, size // 4), generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x * 2 - 1


def _noisy(x, amount, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + amount * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_identical_images_score_perfectly():
    x = _images()
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-6)
    assert torch.allclose(ms_ssim(x, x), torch.ones(4), atol=1e-6)
    assert ssim(x, x).shape == psnr(x, x).shape == (4,)  # one figure per image


def test_more_noise_scores_worse_on_every_metric():
    x = _images()
    levels = [0.02, 0.05, 0.1, 0.2, 0.4]
    p = [psnr(x, _noisy(x, s)).mean().item() for s in levels]
    s = [ssim(x, _noisy(x, s)).mean().item() for s in levels]
    m = [ms_ssim(x, _noisy(x, s)).mean().item() for s in levels]
    assert all(a > b for a, b in zip(p, p[1:])), p
    assert all(a > b for a, b in zip(s, s[1:])), s
    assert all(a > b for a, b in zip(m, m[1:])), m
    assert p[0] > 35 and p[-1] < 15


def test_psnr_is_the_textbook_formula():
    x = torch.zeros(1, 3, 8, 8)  # 0.5 grey on the [0, 1] scale
    y = torch.full((1, 3, 8, 8), 0.2)  # 0.6: difference 0.1 everywhere -> MSE 0.01 -> 20 dB
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # flat images have no variance: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    a = torch.full((1, 3, 32, 32), 0.2 * 2 - 1)
    b = torch.full((1, 3, 32, 32), 0.6 * 2 - 1)
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_matches_the_reference_implementation():
    # scikit-image 0.26 structural_similarity(a, b, channel_axis=2, data_range=1, gaussian_weights=True,
    # sigma=1.5, use_sample_covariance=False) on these float64 images gave 0.8866358484586861
    # (the Wang et al. settings); PSNR 17.19868151172686
    rng = np.random.default_rng(0)
    a = rng.random((32, 32, 3))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    ta = torch.from_numpy(a).permute(2, 0, 1)[None] * 2 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None] * 2 - 1
    assert ssim(ta, tb).item() == pytest.approx(0.8866358484586861, abs=1e-9)
    assert psnr(ta, tb).item() == pytest.approx(17.19868151172686, abs=1e-9)


def test_ssim_properties():
    x = _images()
    y = _noisy(x, 0.2)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)  # symmetric
    assert (ssim(x, y) <= 1).all() and (ssim(x, -x) < 0.5).all()
    # a brightness shift keeps the structure: SSIM drops far less than PSNR says
    shifted = (x + 0.2).clamp(-1, 1)
    assert ssim(x, shifted).mean() > ssim(x, y).mean()
    assert psnr(x, shifted).mean() < psnr(x, y).mean() + 5
    # pictures smaller than the 11x11 window still get a figure (window shrinks to the image)
    small = _images(size=8)
    assert torch.allclose(ssim(small, small), torch.ones(4), atol=1e-6)
    assert (ssim(small, _noisy(small, 0.3)) < 0.95).all()


def test_laplacian_pyramid_reassembles_and_the_loss_is_zero_only_for_equal_images():
    x = _images(2, 32)
    bands = laplacian_pyramid(x, 4)
    assert [b.shape[-1] for b in bands] == [32, 16, 8, 4]
    # collapsing the pyramid gives the image back
    from transferstudio.backbones.image_quality import _up
    cur = bands[-1]
    for band in reversed(bands[:-1]):
        cur = band + _up(cur, band)
    assert torch.allclose(cur, x, atol=1e-5)

    assert laplacian_pyramid_l1(x, x, 4).item() == 0.0
    y = _noisy(x, 0.1)
    loss = laplacian_pyramid_l1(x, y.requires_grad_(), 4)
    assert loss.item() > 0
    loss.backward()  # differentiable: it is a training loss
    assert y.grad is not None and torch.isfinite(y.grad).all()
    assert laplacian_pyramid_l1(x, _noisy(x, 0.3), 4) > laplacian_pyramid_l1(x, _noisy(x, 0.1), 4)
    # odd and tiny sizes do not fail
    odd = _images(1, 32)[:, :, :7, :5]
    assert math.isfinite(laplacian_pyramid_l1(odd, _noisy(odd, 0.1), 6).item())


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
