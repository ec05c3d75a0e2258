"""Sliced Wasserstein distance (SWD) between image sets over Laplacian-pyramid patches.

Follows Karras et al. 2018 ("Progressive Growing of GANs", appendix D):
  1. build a Laplacian pyramid of every image (5-tap binomial filter), from full
     resolution down to `min_res` (the coarsest level is the low-pass image itself);
  2. take `patches` random 7x7 neighbourhoods per image and level -> 7*7*3 descriptors;
  3. normalise each colour channel of the descriptors by its mean/std over the set;
  4. SWD = mean over `repeats` x `directions` random unit directions of the mean
     absolute difference between the sorted projections of the two sets.
Distances are reported x1e3 like the paper's tables. Lower is closer; identical
sets give 0. The paper stops at 16 px; for the 32-64 px images used here the
default goes down to 8 px so the coarsest level (a 7x7 window covers almost the
whole image) measures global composition: sky above, ground below.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["swd", "laplacian_pyramid", "to_array"]

_KERNEL = np.array([1, 4, 6, 4, 1], np.float32) / 16.0
SCALE = 1e3  # reported distances are multiplied by this (paper convention)


def to_array(images, size: int | None = None) -> np.ndarray:
    """PIL images / HxWx3 uint8 arrays / an (N,H,W,3) array -> (N,S,S,3) float32 in 0..1.

    Images of another size are resized (bicubic) to `size` (default: the first one's).
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        arr = images
        if size is not None and arr.shape[1:3] != (size, size):
            images = list(arr)
        else:
            return arr[..., :3].astype(np.float32) / 255.0
    out = []
    for im in images:
        pil = im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
        pil = pil.convert("RGB")
        if size is None:
            size = pil.width
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BICUBIC)
        out.append(np.asarray(pil, np.float32) / 255.0)
    if not out:
        raise ValueError("empty image set")
    return np.stack(out)


def _blur(x: np.ndarray) -> np.ndarray:
    # separable binomial filter on (N,H,W,C), reflect padding keeps edges unbiased
    p = np.pad(x, ((0, 0), (2, 2), (0, 0), (0, 0)), mode="reflect")
    x = sum(_KERNEL[i] * p[:, i:i + x.shape[1]] for i in range(5))
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="reflect")
    return sum(_KERNEL[i] * p[:, :, i:i + x.shape[2]] for i in range(5))


def _down(x: np.ndarray) -> np.ndarray:
    return _blur(x)[:, ::2, ::2]


def _up(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    z = np.zeros((n, h * 2, w * 2, c), np.float32)
    z[:, ::2, ::2] = x
    return _blur(z) * 4.0  # zero-insertion removed 3/4 of the energy


def laplacian_pyramid(x: np.ndarray, min_res: int = 8) -> list[np.ndarray]:
    """Finest level first; the last entry is the low-pass residual at >= min_res."""
    levels = []
    cur = x.astype(np.float32)
    while cur.shape[1] // 2 >= min_res and cur.shape[1] % 2 == 0:
        low = _down(cur)
        levels.append(cur - _up(low))
        cur = low
    levels.append(cur)
    return levels


def _descriptors(level: np.ndarray, patches: int, rng: np.random.Generator, k: int = 7) -> np.ndarray:
    n, h, w, c = level.shape
    if h < k or w < k:  # too small for a 7x7 window: pad by reflection
        ph, pw = max(0, k - h), max(0, k - w)
        level = np.pad(level, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
        n, h, w, c = level.shape
    ys = rng.integers(0, h - k + 1, (n, patches))
    xs = rng.integers(0, w - k + 1, (n, patches))
    d = np.arange(k)
    idx_n = np.arange(n)[:, None, None, None]
    desc = level[idx_n, ys[:, :, None, None] + d[None, None, :, None],
                 xs[:, :, None, None] + d[None, None, None, :]]  # (n, P, k, k, c)
    return desc.reshape(n * patches, k, k, c)


def _normalise(desc: np.ndarray, mean=None, std=None) -> np.ndarray:
    if mean is None:
        mean = desc.mean(axis=(0, 1, 2), keepdims=True)
        std = desc.std(axis=(0, 1, 2), keepdims=True)
    desc = (desc - mean) / np.maximum(std, 1e-8)
    return desc.reshape(desc.shape[0], -1).astype(np.float32)


def _quantiles(sorted_proj: np.ndarray, m: int) -> np.ndarray:
    # nearest-rank resampling so sets of different size compare quantile by quantile
    n = sorted_proj.shape[1]
    if n == m:
        return sorted_proj
    return sorted_proj[:, ((np.arange(m) + 0.5) * n / m).astype(int)]


def _sliced_wd(a: np.ndarray, b: np.ndarray, rng, directions: int, repeats: int) -> float:
    m = min(a.shape[0], b.shape[0])
    vals = []
    for _ in range(repeats):
        dirs = rng.standard_normal((directions, a.shape[1])).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        # (directions, samples) layout: sorting contiguous rows is much faster
        pa = np.sort(dirs @ a.T, axis=1)
        pb = np.sort(dirs @ b.T, axis=1)
        vals.append(float(np.mean(np.abs(_quantiles(pa, m) - _quantiles(pb, m)))))
    return float(np.mean(vals))


def swd(images_a, images_b, *, seed: int = 0, size: int | None = None, min_res: int | None = None,
        patches: int = 128, directions: int = 512, repeats: int = 4,
        normalize: str = "per_set") -> dict:
    """SWD between two image sets (counts may differ), deterministic given `seed`.

    images_a/images_b: lists of PIL images or HxWx3 uint8 arrays, or (N,H,W,3) uint8.
    size: common square size (default: that of the first image of `images_a`).
    min_res: coarsest pyramid level (default 8 for images <= 64 px, else 16 as in the paper).
    normalize: "per_set" (paper: each set by its own channel mean/std, so global colour
      shifts are ignored), "reference" (both by the statistics of set B, so colour and
      brightness count too and distances of several sets to one reference are on one
      scale) or "joint" (both by the pooled statistics of A and B).
    Returns {"resolutions": [...], "distances": [...] (x1e3, finest first), "average": float,
      "scale": 1e3, "n_a": int, "n_b": int}.
    """
    a = to_array(images_a, size)
    b = to_array(images_b, a.shape[1])
    if min_res is None:
        min_res = 8 if a.shape[1] <= 64 else 16
    if normalize not in ("per_set", "reference", "joint"):
        raise ValueError("normalize must be 'per_set', 'reference' or 'joint'")
    pyr_a, pyr_b = laplacian_pyramid(a, min_res), laplacian_pyramid(b, min_res)
    resolutions, dists = [], []
    for lvl, (la, lb) in enumerate(zip(pyr_a, pyr_b)):
        # same patch positions for both sets, so identical sets give exactly 0
        da = _descriptors(la, patches, np.random.default_rng([seed, lvl]))
        db = _descriptors(lb, patches, np.random.default_rng([seed, lvl]))
        if normalize in ("joint", "reference"):
            pool = np.concatenate([da, db]) if normalize == "joint" else db
            mean = pool.mean(axis=(0, 1, 2), keepdims=True)
            std = pool.std(axis=(0, 1, 2), keepdims=True)
            da, db = _normalise(da, mean, std), _normalise(db, mean, std)
        else:
            da, db = _normalise(da), _normalise(db)
        resolutions.append(int(la.shape[1]))
        rng = np.random.default_rng([seed, lvl, 1])
        dists.append(_sliced_wd(da, db, rng, directions, repeats) * SCALE)
    return {"resolutions": resolutions, "distances": dists, "average": float(np.mean(dists)),
            "scale": SCALE, "n_a": int(a.shape[0]), "n_b": int(b.shape[0])}
