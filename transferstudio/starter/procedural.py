"""Two procedural image domains for the starter backbone and the sample project.

Source domain (broad): landscapes -- skies at dawn/day/dusk/night, sun or moon,
mountain ridges, hills, lakes with reflections, trees.
Target domain (narrow, related): cities of the same world -- skylines at dusk and
night with lit windows, sometimes a moon, distant mountains or a river reflection.

Everything is numpy only (PIL just wraps the result), deterministic per seed, and
rendered at a multiple of the output size then box-downsampled for antialiasing.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "landscape", "city", "landscape_array", "city_array",
    "landscape_batch", "city_batch", "make_grid", "write_sample_images",
]

# Separate salts so landscape(seed) and city(seed) never share a random stream.
_SALT_LANDSCAPE = 0x1A7D
_SALT_CITY = 0xC17E

# (zenith, horizon) sky colours, linear-ish 0..1 RGB.
_SKY = {
    "dawn": ((0.30, 0.38, 0.66), (0.99, 0.72, 0.55)),
    "day": ((0.18, 0.42, 0.82), (0.68, 0.84, 0.97)),
    "dusk": ((0.17, 0.12, 0.36), (0.99, 0.48, 0.25)),
    "night": ((0.015, 0.02, 0.07), (0.09, 0.12, 0.26)),
}
# How much light falls on the land; scales every ground colour.
_LIGHT = {"dawn": 0.62, "day": 1.0, "dusk": 0.42, "night": 0.14}


def _supersample(size: int) -> int:
    # 3x (96-288 px canvas) gives smooth edges and keeps 20k images at 32 px under a minute.
    return 3 if size <= 96 else 2


def _jitter(rng: np.random.Generator, color, amount: float = 0.06) -> np.ndarray:
    c = np.asarray(color, dtype=np.float32)
    return np.clip(c * (1.0 + rng.normal(0.0, amount, 3)), 0.0, 1.0).astype(np.float32)


def _downsample(img: np.ndarray, ss: int) -> np.ndarray:
    r = img.shape[0] // ss
    small = img.reshape(r, ss, r, ss, 3).mean(axis=(1, 3))
    return (np.clip(small, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class _Canvas:
    """Float canvas with normalised coordinates u (x, 0..1) and v (y, 0 = top)."""

    def __init__(self, res: int) -> None:
        self.res = res
        coords = (np.arange(res, dtype=np.float32) + 0.5) / res
        self.u = coords[None, :]
        self.v = coords[:, None]
        self.img = np.zeros((res, res, 3), dtype=np.float32)

    def fill(self, mask: np.ndarray, color) -> None:
        self.img[mask] = color

    def blend(self, alpha: np.ndarray, color) -> None:
        a = alpha[..., None]
        self.img *= 1.0 - a
        self.img += a * np.asarray(color, dtype=np.float32)


# ---------------------------------------------------------------- shared parts

def _sky(cv: _Canvas, rng, tod: str, horizon_v: float):
    top, hor = _SKY[tod]
    top, hor = _jitter(rng, top), _jitter(rng, hor)
    # Gradient reaches the horizon colour at the horizon; gamma shapes the band.
    t = np.clip(cv.v / max(horizon_v, 1e-3), 0.0, 1.0) ** rng.uniform(1.3, 2.6)
    cv.img[:] = top * (1.0 - t[..., None]) + hor * t[..., None]
    return top, hor


def _stars(cv: _Canvas, rng, horizon_v: float, count: int) -> None:
    r = cv.res
    px = max(1, int(round(r * 0.007)))
    xs = rng.integers(0, r - px, count)
    ys = (rng.random(count) ** 1.5 * horizon_v * 0.85 * r).astype(int)
    bright = rng.uniform(0.35, 1.0, count)
    for x, y, b in zip(xs, ys, bright):
        cv.img[y:y + px, x:x + px] = np.maximum(cv.img[y:y + px, x:x + px], b)


def _glow(cv: _Canvas, cx: float, cy: float, radius: float, color, strength: float) -> None:
    d2 = (cv.u - cx) ** 2 + (cv.v - cy) ** 2
    g = np.exp(-d2 / (radius * radius)) * strength
    cv.img += g[..., None] * np.asarray(color, dtype=np.float32)


def _disc(cv: _Canvas, cx: float, cy: float, r: float) -> np.ndarray:
    return (cv.u - cx) ** 2 + (cv.v - cy) ** 2 <= r * r


def _sun(cv: _Canvas, rng, tod: str, hor) -> None:
    if tod == "day":
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.35), rng.uniform(0.035, 0.06)
        col = np.array([1.0, 0.98, 0.88], np.float32)
    else:
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.35, 0.62), rng.uniform(0.05, 0.09)
        col = np.clip(np.array([1.0, 0.86, 0.55], np.float32) * (0.6 + 0.4 * hor) + 0.15, 0, 1)
    _glow(cv, cx, cy, r * rng.uniform(3.0, 5.0), col, 0.45)
    cv.fill(_disc(cv, cx, cy, r), col)


def _moon(cv: _Canvas, rng) -> None:
    cx, cy, r = rng.uniform(0.12, 0.88), rng.uniform(0.08, 0.35), rng.uniform(0.03, 0.055)
    col = _jitter(rng, (0.95, 0.93, 0.82), 0.03)
    _glow(cv, cx, cy, r * 4.0, (0.5, 0.55, 0.7), 0.25)
    lit = _disc(cv, cx, cy, r)
    if rng.random() < 0.5:  # crescent: bite taken out by an offset disc
        ang = rng.uniform(0, 2 * np.pi)
        bite = _disc(cv, cx + np.cos(ang) * r * 0.6, cy + np.sin(ang) * r * 0.6, r)
        lit &= ~bite
    cv.fill(lit, col)


def _profile(rng, u: np.ndarray, base: float, amp: float, *, octaves: int = 5,
             rough: float = 0.5, peaky: bool = True, f0=(1.0, 2.5)) -> np.ndarray:
    """Ridge top as a v coordinate per column (smaller v = higher)."""
    h = np.zeros_like(u)
    a, total = 1.0, 0.0
    f = rng.uniform(*f0)
    for i in range(octaves):
        s = np.sin(2 * np.pi * f * u + rng.uniform(0, 2 * np.pi))
        if peaky and i < 2:
            s = 1.0 - 2.0 * np.abs(s)  # sharp crests only on the broad octaves
        h += a * s
        total += a
        a *= rough
        f *= rng.uniform(1.8, 2.3)
    return base - amp * h / total


def _lit(color, tod: str, hor) -> np.ndarray:
    # Ground colour under the current light: dimmed and tinted by the horizon.
    c = np.asarray(color, np.float32) * _LIGHT[tod]
    tint = 0.65 + 0.35 * np.asarray(hor, np.float32) / max(float(np.max(hor)), 1e-3)
    return np.clip(c * tint, 0.0, 1.0)


def _ridge_layer(cv: _Canvas, top: np.ndarray, color, shade: float = 0.25,
                 sun_side: float = 0.0) -> np.ndarray:
    """Fill everything below `top`; darken downward and light sun-facing slopes."""
    mask = cv.v >= top
    depth = np.clip((cv.v - top) * 3.0, 0.0, 1.0)
    k = 1.0 - shade * depth
    if sun_side:
        slope = np.gradient(top[0]) * cv.res  # dv/du per column
        k = k * (1.0 + 0.18 * np.tanh(-slope * sun_side * 2.0))[None, :]
    layer = np.asarray(color, np.float32) * k[..., None]
    cv.img[mask] = layer[mask]
    return mask


def _reflect(cv: _Canvas, rng, water_v: float, water_col, darken: float) -> None:
    """Mirror the scene above `water_v` into the rows below it, with ripples."""
    r = cv.res
    y0 = int(round(water_v * r))
    if y0 >= r - 1:
        return
    rows = np.arange(y0, r)
    src = np.clip(2 * y0 - rows - 1, 0, r - 1)
    dist = (rows - y0) / r
    amp = rng.uniform(0.004, 0.012) * r * (0.3 + 4.0 * dist)
    freq = rng.uniform(0.8, 1.6) * 2 * np.pi / max(1.0, r * 0.02)
    off = amp * np.sin(rows * freq + rng.uniform(0, 2 * np.pi))
    xs = np.clip((np.arange(r)[None, :] + off[:, None]).astype(int), 0, r - 1)
    refl = cv.img[src[:, None], xs]
    t = (0.25 + darken * dist / max(1e-3, 1.0 - water_v))[:, None, None]
    t = np.clip(t, 0.0, 0.85)
    cv.img[y0:] = refl * (1.0 - t) + np.asarray(water_col, np.float32) * t
    # thin shore line so the water edge reads at low resolution
    cv.img[y0:y0 + max(1, r // 128)] *= 0.75


def _trees(cv: _Canvas, rng, ground: np.ndarray, count: int, color, scale: float) -> None:
    r = cv.res
    g = ground[0]
    for _ in range(count):
        tx = rng.uniform(0.0, 1.0)
        col = np.clip(np.asarray(color) * rng.uniform(0.75, 1.15), 0, 1)
        base = float(g[min(r - 1, int(tx * r))]) + 0.01
        th = scale * rng.uniform(0.6, 1.3)
        x0, x1 = int((tx - th * 0.4) * r), int((tx + th * 0.4) * r) + 1
        y0, y1 = int((base - th) * r), int(base * r) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, r), min(y1, r)
        if x1 <= x0 or y1 <= y0:
            continue
        u = cv.u[:, x0:x1]
        v = cv.v[y0:y1]
        if rng.random() < 0.65:  # conifer: triangle with a small trunk
            w = th * 0.28
            frac = (v - (base - th)) / th
            m = (np.abs(u - tx) <= w * frac) & (frac <= 0.88)
            m |= (np.abs(u - tx) <= th * 0.035) & (frac > 0.8)
        else:  # broadleaf: round crown on a trunk
            cr = th * 0.33
            m = (u - tx) ** 2 + ((v - (base - th + cr)) * 1.1) ** 2 <= cr * cr
            m |= (np.abs(u - tx) <= th * 0.04) & (v > base - th + cr)
        cv.img[y0:y1, x0:x1][m] = col


# ---------------------------------------------------------------- landscapes

def _render_landscape(seed: int, res: int) -> np.ndarray:
    rng = np.random.default_rng([_SALT_LANDSCAPE, int(seed)])
    cv = _Canvas(res)
    tod = ("dawn", "day", "dusk", "night")[rng.choice(4, p=[0.22, 0.36, 0.24, 0.18])]
    water = rng.random() < 0.45
    horizon = rng.uniform(0.52, 0.72)
    top, hor = _sky(cv, rng, tod, horizon)
    if tod == "night":
        _stars(cv, rng, horizon, int(rng.integers(15, 60)))
        if rng.random() < 0.8:
            _moon(cv, rng)
    elif rng.random() < 0.85:
        _sun(cv, rng, tod, hor)
    if tod != "night" and rng.random() < 0.5:
        _clouds(cv, rng, tod, hor, horizon)

    sun_side = rng.choice([-1.0, 1.0])
    # Mountain ridges, far to near: hazier (closer to the horizon colour) when far.
    n_mtn = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.3, 0.35, 0.25]))
    rock = _jitter(rng, [(0.42, 0.40, 0.48), (0.36, 0.32, 0.30), (0.30, 0.36, 0.42)][rng.integers(3)], 0.1)
    base = horizon - 0.02 * n_mtn
    for i in range(n_mtn):
        far = 1.0 - i / max(n_mtn, 1)
        amp = rng.uniform(0.08, 0.22) * (0.7 + 0.5 * far)
        ridge = _profile(rng, cv.u, base, amp, rough=rng.uniform(0.3, 0.45), f0=(0.6, 1.6))
        col = _lit(rock * (0.75 + 0.25 * far), tod, hor)
        col = col * (1.0 - 0.55 * far) + hor * 0.55 * far * (0.5 if tod == "night" else 0.85)
        mask = _ridge_layer(cv, ridge, col, sun_side=sun_side if tod != "night" else 0.0)
        if i == 0 and tod in ("day", "dawn") and rng.random() < 0.6:
            snowline = float(ridge.min()) + amp * rng.uniform(0.25, 0.45)
            snowline = snowline + 0.02 * np.sin(cv.u * rng.uniform(20, 40) + rng.uniform(0, 6))
            snow = mask & (cv.v < snowline)
            cv.fill(snow, np.clip(_lit((0.95, 0.96, 1.0), tod, hor) * 1.1, 0, 1))
        base += rng.uniform(0.03, 0.07)

    grass = _jitter(rng, [(0.26, 0.48, 0.18), (0.36, 0.50, 0.20), (0.20, 0.40, 0.22)][rng.integers(3)], 0.1)
    if water:
        water_v = max(base, horizon) + rng.uniform(0.0, 0.05)
        # far shore: a thin strip of low hills with trees, drawn before the mirror
        if rng.random() < 0.6:
            shore = _profile(rng, cv.u, water_v - 0.01, rng.uniform(0.02, 0.05),
                             peaky=False, octaves=3, f0=(1.5, 3.0))
            col = _lit(grass * 0.7, tod, hor)
            _ridge_layer(cv, shore, col, shade=0.1)
            _trees(cv, rng, shore, int(rng.integers(0, 14)), col * 0.6, rng.uniform(0.04, 0.08))
        wcol = np.clip(top * 0.5 + hor * 0.3, 0, 1)
        _reflect(cv, rng, water_v, wcol, darken=rng.uniform(0.1, 0.4))
        # near bank on one side, sometimes
        if rng.random() < 0.4:
            side = rng.choice([-1.0, 1.0])
            bank = water_v + 0.25 + side * (cv.u - 0.5) * rng.uniform(0.5, 1.2) + \
                _profile(rng, cv.u, 0.0, 0.03, peaky=False, octaves=3)
            col = _lit(grass * 0.55, tod, hor)
            _ridge_layer(cv, bank, col, shade=0.3)
            _trees(cv, rng, bank, int(rng.integers(1, 6)), col * 0.55, rng.uniform(0.15, 0.3))
    else:
        n_hills = int(rng.integers(1, 3))
        hbase = max(base, horizon + 0.05)
        for j in range(n_hills):
            hb = hbase + j * rng.uniform(0.08, 0.14)
            hill = _profile(rng, cv.u, hb, rng.uniform(0.03, 0.08), peaky=False, octaves=3,
                            f0=(0.5, 1.5))
            col = _lit(grass * (0.75 + 0.25 * j), tod, hor)
            col = col * 0.85 + hor * 0.15 * _LIGHT[tod] * (1 - j * 0.5)
            _ridge_layer(cv, hill, col, shade=0.35, sun_side=sun_side if tod != "night" else 0.0)
            n_trees = int(rng.integers(0, 10))
            _trees(cv, rng, hill, n_trees, col * 0.55, rng.uniform(0.05, 0.11) * (1 + j))
    return cv.img


def _clouds(cv: _Canvas, rng, tod: str, hor, horizon: float) -> None:
    base = {"day": (0.97, 0.97, 1.0), "dawn": (1.0, 0.8, 0.75), "dusk": (0.95, 0.55, 0.5)}[tod]
    col = np.clip(np.asarray(base, np.float32) * (0.7 + 0.3 * np.asarray(hor)), 0, 1)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.08, horizon * 0.75)
        w, h = rng.uniform(0.08, 0.22), rng.uniform(0.015, 0.035)
        a = np.zeros((cv.res, cv.res), np.float32)
        for _ in range(4):  # a few lumps make a cloud
            dx, dy = rng.normal(0, w * 0.5), rng.normal(0, h * 0.5)
            a = np.maximum(a, np.exp(-(((cv.u - cx - dx) / w) ** 2 + ((cv.v - cy - dy) / h) ** 2) ** 2))
        cv.blend(np.clip(a * 1.2, 0, 1) * rng.uniform(0.5, 0.9), col)


# ---------------------------------------------------------------- cities

_WINDOW_COLS = np.array([[1.0, 0.86, 0.45], [1.0, 0.72, 0.34], [1.0, 0.95, 0.7],
                         [0.75, 0.88, 1.0]], np.float32)


def _buildings(cv: _Canvas, rng, ground_v: float, top_range, width_range, color,
               lit_p, win_bright: float, haze_col, haze: float) -> None:
    r = cv.res
    x = int(rng.uniform(-0.05, 0.0) * r)
    ground = int(ground_v * r)
    while x < r:
        w = max(2, int(rng.uniform(*width_range) * r))
        tv = rng.uniform(*top_range)
        ytop = max(0, int(tv * r))
        x0, x1 = max(0, x), min(r, x + w)
        body = np.clip(np.asarray(color) * rng.uniform(0.7, 1.3), 0, 1)
        body = body * (1 - haze) + haze_col * haze
        if x1 > x0 and ytop < ground:
            cv.img[ytop:ground, x0:x1] = body
            # stepped crown or antenna to break the box shapes
            kind = rng.random()
            if kind < 0.25 and w > 6:
                sw = max(2, int(w * rng.uniform(0.4, 0.7)))
                sx = x + (w - sw) // 2
                sh = int(rng.uniform(0.03, 0.1) * r)
                cv.img[max(0, ytop - sh):ytop, max(0, sx):min(r, sx + sw)] = body
            elif kind < 0.4:
                ax = x + w // 2
                ah = int(rng.uniform(0.04, 0.12) * r)
                aw = max(1, r // 160)
                if 0 <= ax < r:
                    cv.img[max(0, ytop - ah):ytop, ax:ax + aw] = body
                    if rng.random() < 0.6:  # aircraft warning light
                        cv.img[max(0, ytop - ah):max(0, ytop - ah) + 2 * aw, ax:ax + aw] = (1.0, 0.2, 0.15)
            _windows(cv, rng, x, x0, x1, ytop, ground, lit_p, win_bright, haze_col, haze)
        x += w + int(rng.choice([0, 0, 0, 1, 2]) * r * 0.01)


def _windows(cv: _Canvas, rng, x, x0, x1, ytop, ground, lit_p, bright, haze_col, haze) -> None:
    r = cv.res
    sx = max(2, int(r * rng.uniform(0.035, 0.06)))
    sy = max(2, int(r * rng.uniform(0.04, 0.065)))
    ww = max(1, int(sx * rng.uniform(0.4, 0.6)))
    wh = max(1, int(sy * rng.uniform(0.4, 0.6)))
    margin = int(sx * 0.5)
    lx = np.arange(x0, x1) - x - margin
    ly = np.arange(ytop, ground) - ytop - int(sy * 0.6)
    if lx.size == 0 or ly.size == 0:
        return
    inx = (lx >= 0) & (lx % sx < ww) & (np.arange(x0, x1) < x1 - margin)
    iny = (ly >= 0) & (ly % sy < wh)
    cols, rows = lx // sx, ly // sy
    ncol, nrow = int(cols.max()) + 2, int(rows.max()) + 2
    # per-window on/off and colour, floors lit in bands look like offices
    floor_p = np.clip(lit_p * rng.uniform(0.3, 1.7, nrow), 0, 0.95)
    on = rng.random((nrow, ncol)) < floor_p[:, None]
    tint = rng.integers(0, len(_WINDOW_COLS), (nrow, ncol))
    if rng.random() < 0.7:  # most buildings share one light colour
        tint[:] = rng.integers(0, 3)
    lum = rng.uniform(0.7, 1.0, (nrow, ncol))
    rr = np.clip(rows, 0, nrow - 1)[:, None]
    cc = np.clip(cols, 0, ncol - 1)[None, :]
    m = iny[:, None] & inx[None, :] & on[rr, cc]
    col = _WINDOW_COLS[tint[rr, cc]] * (lum[rr, cc] * bright)[..., None]
    col = col * (1 - haze) + haze_col * haze
    region = cv.img[ytop:ground, x0:x1]
    region[m] = col[m]


def _render_city(seed: int, res: int) -> np.ndarray:
    rng = np.random.default_rng([_SALT_CITY, int(seed)])
    cv = _Canvas(res)
    tod = ("dusk", "night")[int(rng.random() < 0.5)]
    water = rng.random() < 0.4
    ground_v = rng.uniform(0.7, 0.8) if water else rng.uniform(0.9, 1.0)
    horizon = ground_v - rng.uniform(0.05, 0.15)
    top, hor = _sky(cv, rng, tod, horizon)
    if tod == "night":
        _stars(cv, rng, horizon * 0.7, int(rng.integers(5, 30)))
    if rng.random() < (0.5 if tod == "night" else 0.2):
        _moon(cv, rng)
    elif tod == "dusk" and rng.random() < 0.4:
        _sun(cv, rng, tod, hor)
    # city glow on the horizon
    _glow(cv, 0.5, ground_v, 0.45, (0.35, 0.22, 0.12), 0.35 if tod == "night" else 0.2)
    if rng.random() < 0.35:  # distant mountains: the same world as the landscapes
        ridge = _profile(rng, cv.u, horizon - 0.08, rng.uniform(0.08, 0.18))
        col = _lit((0.35, 0.33, 0.42), tod, hor) * 0.5 + hor * 0.35
        _ridge_layer(cv, ridge, col, shade=0.1)

    dark = _jitter(rng, (0.10, 0.10, 0.15), 0.15)
    mid = dark * 0.8 + hor * 0.2
    # back row: taller, hazy, dimmer windows
    haze = hor * 0.5 + top * 0.5  # between horizon and zenith: reads as distance, not as paint
    _buildings(cv, rng, ground_v, (0.26, 0.55), (0.05, 0.12), mid, rng.uniform(0.1, 0.35),
               0.6, haze, 0.3)
    # front row: lower, darker, brighter windows
    _buildings(cv, rng, ground_v, (0.42, 0.72), (0.06, 0.16), dark * 0.6, rng.uniform(0.2, 0.6),
               1.0, hor, 0.0)
    if water:
        _reflect(cv, rng, ground_v, np.clip(top * 0.6 + 0.02, 0, 1), darken=rng.uniform(0.2, 0.5))
    else:
        y0 = int(ground_v * res)
        cv.img[y0:] = dark * 0.4
    return cv.img


# ---------------------------------------------------------------- public API

def landscape_array(seed: int, size: int) -> np.ndarray:
    """One landscape as an (size, size, 3) uint8 array."""
    ss = _supersample(size)
    return _downsample(_render_landscape(seed, size * ss), ss)


def city_array(seed: int, size: int) -> np.ndarray:
    """One city skyline as an (size, size, 3) uint8 array."""
    ss = _supersample(size)
    return _downsample(_render_city(seed, size * ss), ss)


def landscape(seed: int, size: int) -> Image.Image:
    return Image.fromarray(landscape_array(seed, size))


def city(seed: int, size: int) -> Image.Image:
    return Image.fromarray(city_array(seed, size))


def landscape_batch(seeds: Iterable[int], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8; row i equals landscape_array(seeds[i], size)."""
    return np.stack([landscape_array(int(s), size) for s in seeds])


def city_batch(seeds: Iterable[int], size: int) -> np.ndarray:
    return np.stack([city_array(int(s), size) for s in seeds])


def make_grid(images: Sequence, cols: int, pad: int = 2, bg=(255, 255, 255)) -> Image.Image:
    """Tile PIL images or HxWx3 uint8 arrays into one image, row-major."""
    arrs = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, np.uint8)
            for im in images]
    if not arrs:
        raise ValueError("make_grid needs at least one image")
    h, w = arrs[0].shape[:2]
    cols = max(1, min(cols, len(arrs)))
    rows = (len(arrs) + cols - 1) // cols
    grid = np.empty((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), np.uint8)
    grid[:] = bg
    for i, a in enumerate(arrs):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = a[:h, :w, :3]
    return Image.fromarray(grid)


def write_sample_images(directory, n: int = 24, seed: int = 2024, size: int = 128) -> list[str]:
    """Write the sample target set city_000.png ... (reproducible from `seed`)."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(directory, f"city_{i:03d}.png")
        city(seed * 1000 + i, size).save(p, optimize=True)
        paths.append(p)
    return paths
