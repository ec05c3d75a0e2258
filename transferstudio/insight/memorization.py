"""Memorization check: is a generated picture a near-copy of one of the training pictures?

For every sample, the nearest training picture by two distances. Both are computed on small
square versions (centre crop, `work_size` px: the samples' own size, at most 64 px) and both
tolerate small shifts and mirroring: the training picture is slid over the sample's centre by up
to 1/16 of the width, pixel by pixel, and also tried mirrored (training flips pictures); the
smallest distance counts. The pictures are lightly blurred first (a 5-tap binomial filter, about
one pixel) and the compared windows keep 2 px inside their edges, so a shifted copy matches exactly.

- pixel distance: the RMS difference of the RGB values (0..1). Colour, brightness and layout
  count; the blur keeps sub-pixel shifts, re-compression and pixel noise from counting much.
- feature distance: structure only. The luminance, area-averaged down to 16 × 16 and to 8 × 8,
  each level shifted to zero mean and scaled to unit length (so a brightness or contrast change
  drops out and noise is averaged away), the two levels joined; the Euclidean distance between
  two such descriptors: 0 for the same layout of light and dark, about 1.4 for unrelated
  pictures. A cheap, offline stand-in for a learned perceptual feature, chosen because it ignores
  what re-compression, a small shift or a ±3 % exposure change alter and keeps what tells two
  pictures of one family (two skylines, two landscapes) apart: where the light and dark are.

One score decides: the mean of the two distances, each divided by the spacing of that training
picture — its distance to its own nearest other training picture, i.e. how different "a
different picture" is around it (dense groups of similar pictures, such as dark night scenes,
get a tighter bound than pictures that stand alone). Spacings are kept between half and all of
FIXED_SPACING (what the sample project's 24 cities measure), so a small or very varied set cannot
stretch "near" far; with one training picture FIXED_SPACING is used as it is. A sample scoring
under COPY_SCORE (0.6) is well inside that spacing — distinct pictures score about 1 — and counts
as a near-copy.

Calibration (tests/test_memorization.py checks the main cases; worst score of near-copies, lowest
score of pictures that are not copies; the perturbations are at the model's size unless said):
  sample project, 24 cities at 32 px: the picture itself 0.00; shifted 1–2 px 0.00, 2 px at
    128 px 0.32; JPEG q40 0.45 (at 128 px 0.16); brightness ±3 % 0.11; Gaussian noise σ 0.02
    0.25, σ 0.04 0.50; blurred (σ 1 px) 0.27; shift 1 px + JPEG + 3 % + noise σ 0.02 together
    0.49 — versus 64 new procedural cities 0.78, 32 samples of the demo's fine-tuned starter and
    32 of the GAN demo's adapted starter 0.84;
  the same at 64 px: near-copies ≤ 0.31, new cities ≥ 0.74; at 16 px (the tiny test models):
    1 px shifts, ±3 %, noise σ 0.02 and blur ≤ 0.52, but JPEG q40 (0.85), noise σ 0.04 (0.78),
    all together (0.79) and 2 px shifts (1/8 of so small a picture: 1.13) are not flagged, vs
    new cities ≥ 0.79;
  24 procedural landscapes: ≤ 0.47 vs ≥ 0.67 new ones at 32 px; at 64 px ≤ 0.29 vs ≥ 0.56 (one
    of 64 new dark night landscapes, nearly the same moon over a black ridge, is flagged);
  5 cities ≤ 0.50 vs ≥ 0.78; 2 cities ≤ 0.38 vs ≥ 0.85; 1 city ≤ 0.29 vs ≥ 1.14;
  5 landscapes ≤ 0.33 vs ≥ 0.69; 12 cities + 12 landscapes ≤ 0.50 vs ≥ 0.77.
  Models made to copy: the starter fine-tuned on one city without flips (600 steps, lr 2e-3,
  every sample a slightly blurred copy) scores 0.43–0.63, 14 of 16 samples flagged (0.46–0.67,
  11 of 16, against the 24 cities that include it). With flips (600 steps, lr 1e-3) its samples
  are double exposures of the city and its mirror image: 0.44–1.07, 9 of 16 flagged; after 1000
  steps at lr 2e-3, blurrier blends: 0.56–1.05, 4 of 16. The slow test's run (no flips, seed 1):
  0.40–0.59, all 16 flagged; the sample project fine-tuned as the demo does (450 steps, 22 of its
  cities): 0.92–1.34, none flagged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

__all__ = ["COPY_SCORE", "FIXED_SPACING", "MemorizationResult", "SampleMatch", "check_memorization", "fixed_spacing",
           "memorization_grid", "work_size"]

COPY_SCORE = 0.6
# (pixel, feature) spacing by work size: the median distance from each of the sample project's 24
# cities to its nearest other one, at 16, 32 and 64 px (interpolated between, by log size).
FIXED_SPACING = {16: (0.032, 0.33), 32: (0.049, 0.54), 64: (0.068, 0.63)}
MAX_WORK_SIZE = 64
FEATURE_LEVELS = (16, 8)
CANDIDATES = 8  # per sample, the training pictures scored with their own spacing
SPACING_RANGE = (0.5, 1.0)  # measured spacings are kept within these multiples of FIXED_SPACING
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32) / 16
_BLUR_REACH = 2  # px the blur reaches: each side of a window it is not compared
_STD_FLOOR = 0.01  # a flat picture has no structure to normalise: its descriptor stays near zero


@dataclass(frozen=True)
class SampleMatch:
    index: int  # the sample's position in the samples given
    nearest: str  # the nearest training picture's name (file name)
    nearest_index: int  # its position in the training pictures given
    nearest_path: str | None  # its path, when it was given as a path
    mirrored: bool  # it is nearest as a mirror image
    pixel_distance: float  # RMS of RGB 0..1 at the best shift
    feature_distance: float  # structure descriptor distance at the best shift (0..2)
    pixel_spacing: float  # that training picture's distance to its nearest other one (pixels)
    feature_spacing: float  # the same by features
    score: float  # mean of the two distances over the training set's spacing
    flagged: bool  # a near-copy: score < the threshold


@dataclass(frozen=True)
class MemorizationResult:
    matches: tuple[SampleMatch, ...]
    training_count: int
    work_size: int  # px of the square versions compared
    pixel_spacing: float  # median spacing (pixels) of the training pictures nearest to the samples
    feature_spacing: float  # the same for the feature distance
    spacing_from: str  # "training" (measured on the training pictures) or "fixed" (FIXED_SPACING)
    score_threshold: float

    @property
    def flagged(self) -> list[SampleMatch]:
        return [m for m in self.matches if m.flagged]

    @property
    def any_flagged(self) -> bool:
        return any(m.flagged for m in self.matches)

    @property
    def closest(self) -> SampleMatch:
        return min(self.matches, key=lambda m: m.score)

    def verdict(self) -> str:
        """One or two plain sentences for the report."""
        n, k = len(self.matches), len(self.flagged)
        if k == 0:
            closest = self.closest
            return (f"No near-copies: none of the {n} samples is a copy of a training picture. The closest one "
                    f"(sample {closest.index + 1}, next to {closest.nearest}) scores {closest.score:.2f}: 1 is as "
                    f"far as your pictures typically are from each other, near-copies score under "
                    f"{self.score_threshold:.2f}.")
        which = "all" if k == n else f"{k} of the {n}"
        return (f"Near-copies found: {which} samples are close copies of training pictures (red frames). The "
                f"model has started to memorise your pictures instead of learning their style: use an earlier "
                f"step (the best step by validation loss, if there is one), fewer steps or a lower learning "
                f"rate, or add more pictures.")

    def to_dict(self) -> dict[str, Any]:
        return {"any_flagged": self.any_flagged, "flagged": len(self.flagged), "samples": len(self.matches),
                "training_pictures": self.training_count, "work_size": self.work_size,
                "thresholds": {"score": self.score_threshold, "pixel_spacing": self.pixel_spacing,
                               "feature_spacing": self.feature_spacing, "spacing_from": self.spacing_from,
                               "rule": "flagged when (pixel_distance / pixel_spacing + feature_distance / "
                                       "feature_spacing) / 2 < score"},
                "verdict": self.verdict(), "matches": [asdict(m) for m in self.matches]}


# --- the pictures as compared ------------------------------------------------------------------

def work_size(samples: Sequence[Image.Image]) -> int:
    """The side (px) pictures are compared at: the samples' own (smallest) side, at most 64."""
    return max(8, min(MAX_WORK_SIZE, min(min(s.size) for s in samples)))


def _square(picture: Any, size: int) -> Image.Image:
    """A picture (PIL image or path) as a centre-cropped RGB square of `size` px."""
    if isinstance(picture, (str, Path)):
        from transferstudio.data.holdout import reference_picture

        return reference_picture(Path(picture), size)
    return ImageOps.fit(picture.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


def _prepared(picture: Any, size: int) -> np.ndarray:
    """(size, size, 3) RGB in 0..1, blurred (windows leave out the blur's reach at their edges)."""
    rgb = np.asarray(_square(picture, size), np.float32) / 255.0
    return np.moveaxis(_blur(np.moveaxis(rgb, -1, 0)), 0, -1)


@dataclass(frozen=True)
class _Geometry:
    size: int

    @property
    def margin(self) -> int:  # the largest shift tried, px: 1/16 of the side
        return max(1, round(self.size / 16))

    @property
    def crop(self) -> int:
        return self.size - 2 * (self.margin + _BLUR_REACH)

    def offsets(self) -> list[tuple[int, int]]:
        steps = range(-self.margin, self.margin + 1)
        return [(dy, dx) for dy in steps for dx in steps]

    def window(self, pictures: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
        """The part compared at offset (dy, dx). It keeps the blur's reach inside from its edges,
        so what it holds depends only on the picture inside the window: a shifted copy matches."""
        m, c = self.margin + _BLUR_REACH, self.crop
        return pictures[..., m + dy:m + dy + c, m + dx:m + dx + c, :]


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that area-average a length n_in signal to n_out samples."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    out = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            out[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
        out[i] /= out[i].sum()
    return out


def _blur(x: np.ndarray) -> np.ndarray:
    """A 5-tap binomial blur over the last two axes (reflected at the edges)."""
    pad = [(0, 0)] * (x.ndim - 2)
    p = np.pad(x, pad + [(2, 2), (0, 0)], mode="reflect")
    x = sum(_BINOMIAL[i] * p[..., i:i + x.shape[-2], :] for i in range(5))
    p = np.pad(x, pad + [(0, 0), (2, 2)], mode="reflect")
    return sum(_BINOMIAL[i] * p[..., i:i + x.shape[-1]] for i in range(5))


def _features(windows: np.ndarray) -> np.ndarray:
    """(..., C, C, 3) in 0..1 -> (..., F) structure descriptors (see the module's docstring)."""
    lum = windows @ _LUMA
    c = lum.shape[-1]
    parts = []
    for level in FEATURE_LEVELS:
        r = _area_matrix(c, level)
        small = (r @ lum @ r.T).reshape(*lum.shape[:-2], level * level)
        small = small - small.mean(axis=-1, keepdims=True)
        norm = np.linalg.norm(small, axis=-1, keepdims=True)
        parts.append(small / np.maximum(norm, _STD_FLOOR * level))
    return np.concatenate(parts, axis=-1) / np.sqrt(len(FEATURE_LEVELS))


class _Index:
    """The training pictures (and their mirror images) at every offset, ready to compare."""

    def __init__(self, pictures: np.ndarray, geometry: _Geometry) -> None:
        self.geometry = geometry
        self.pictures = np.stack([pictures, pictures[:, :, ::-1]], axis=1)  # (N, 2, W, W, 3)
        offsets = geometry.offsets()
        self.features = np.stack([_features(geometry.window(self.pictures, dy, dx)) for dy, dx in offsets],
                                 axis=2)  # (N, 2, K, F)

    def distances(self, queries: np.ndarray, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Pixel and feature distances (Q, N, 2) of centre crops `queries` (Q, C, C, 3), each the
        smallest over the offsets."""
        g = self.geometry
        q_feat = _features(queries).astype(np.float32)  # (Q, F)
        q_flat = queries.reshape(len(queries), -1).astype(np.float32)
        pixel = np.empty((len(queries), len(self.pictures), 2), np.float64)
        feature = np.empty_like(pixel)
        for start in range(0, len(self.pictures), chunk):
            part = self.pictures[start:start + chunk]
            windows = np.stack([g.window(part, dy, dx) for dy, dx in g.offsets()], axis=2)  # (n, 2, K, C, C, 3)
            w_flat = windows.reshape(*windows.shape[:3], -1).astype(np.float32)
            done = slice(start, start + len(part))
            pixel[:, done] = np.sqrt(_nearest_sq(q_flat, w_flat) / q_flat.shape[1])
            feature[:, done] = np.sqrt(_nearest_sq(q_feat, self.features[done].astype(np.float32)))
        return pixel, feature


def _nearest_sq(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (Q, n, 2) from each query (Q, D) to the nearest of the K
    offsets of each candidate (n, 2, K, D)."""
    q_sq = np.einsum("qd,qd->q", queries, queries)
    c_sq = np.einsum("...d,...d->...", candidates, candidates)
    dots = (candidates.reshape(-1, candidates.shape[-1]) @ queries.T).T.reshape(len(queries), *candidates.shape[:3])
    return np.maximum(q_sq[:, None, None, None] + c_sq[None] - 2.0 * dots, 0.0).min(axis=-1)


def fixed_spacing(size: int) -> tuple[float, float]:
    """The (pixel, feature) spacing assumed at `size` px where the training set cannot say."""
    sizes = sorted(FIXED_SPACING)
    x = float(np.clip(np.log2(size), np.log2(sizes[0]), np.log2(sizes[-1])))
    logs = np.log2(sizes)
    return (float(np.interp(x, logs, [FIXED_SPACING[s][0] for s in sizes])),
            float(np.interp(x, logs, [FIXED_SPACING[s][1] for s in sizes])))


def _name(picture: Any, i: int) -> str:
    return Path(picture).name if isinstance(picture, (str, Path)) else f"picture {i + 1}"


def _local_spacing(index: _Index, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, feature) distance from each training picture in `which` to its nearest other
    training picture (not itself, nor its own mirror image)."""
    pixel, feature = index.distances(index.geometry.window(index.pictures[which, 0]))
    rows = np.arange(len(which))
    pixel[rows, which] = np.inf
    feature[rows, which] = np.inf
    return pixel.min(axis=(1, 2)), feature.min(axis=(1, 2))


def check_memorization(samples: Sequence[Image.Image], training: Sequence[Any], *,
                       names: Sequence[str] | None = None, score_threshold: float = COPY_SCORE) -> MemorizationResult:
    """For each sample (PIL image) the nearest of the training pictures (paths or PIL images), its
    distances, and whether it is a near-copy. `names`: what to call the training pictures
    (default: their file names)."""
    samples, training = list(samples), list(training)
    if not samples:
        raise ValueError("no samples to check")
    if not training:
        raise ValueError("no training pictures to compare with")
    names = list(names) if names is not None else [_name(p, i) for i, p in enumerate(training)]
    size = work_size(samples)
    geometry = _Geometry(size)
    index = _Index(np.stack([_prepared(p, size) for p in training]), geometry)
    pixel, feature = index.distances(geometry.window(np.stack([_prepared(s, size) for s in samples])))
    count = len(training)
    fixed_p, fixed_f = fixed_spacing(size)
    spacing_p, spacing_f = np.full(count, fixed_p), np.full(count, fixed_f)
    if count > 1:
        # each sample's likeliest matches (by the fixed spacing), then their own spacing
        rough = ((pixel / fixed_p + feature / fixed_f) / 2).min(axis=2)  # (Q, N)
        candidates = np.unique(np.argsort(rough, axis=1)[:, :CANDIDATES])
        local_p, local_f = _local_spacing(index, candidates)
        spacing_p[candidates] = np.clip(local_p, fixed_p * SPACING_RANGE[0], fixed_p * SPACING_RANGE[1])
        spacing_f[candidates] = np.clip(local_f, fixed_f * SPACING_RANGE[0], fixed_f * SPACING_RANGE[1])
    scores = (pixel / spacing_p[None, :, None] + feature / spacing_f[None, :, None]) / 2.0  # (Q, N, 2)
    if count > 1:
        others = np.ones(count, bool)
        others[candidates] = False
        scores[:, others] = np.inf  # far from every sample: never the nearest
    matches = []
    for q in range(len(samples)):
        n, mirror = np.unravel_index(int(np.argmin(scores[q])), scores[q].shape)
        score = float(scores[q, n, mirror])
        path = training[n]
        matches.append(SampleMatch(index=q, nearest=names[n], nearest_index=int(n),
                                   nearest_path=str(path) if isinstance(path, (str, Path)) else None,
                                   mirrored=bool(mirror), pixel_distance=float(pixel[q, n, mirror]),
                                   feature_distance=float(feature[q, n, mirror]),
                                   pixel_spacing=float(spacing_p[n]), feature_spacing=float(spacing_f[n]),
                                   score=score, flagged=score < score_threshold))
    used = [m.nearest_index for m in matches]
    return MemorizationResult(matches=tuple(matches), training_count=count, work_size=size,
                              pixel_spacing=float(np.median(spacing_p[used])),
                              feature_spacing=float(np.median(spacing_f[used])),
                              spacing_from="training" if count > 1 else "fixed", score_threshold=score_threshold)


# --- the picture of it ----------------------------------------------------------------------------

_RED = (220, 30, 30)
_INK = (30, 30, 30)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def memorization_grid(result: MemorizationResult, samples: Sequence[Image.Image], training: Sequence[Any], *,
                      cell: int = 96, pairs_per_row: int = 4) -> Image.Image:
    """Each sample beside its nearest training picture (mirrored when that was nearer), with the
    distances under them; near-copies in a red frame, labelled. `samples` and `training` are the
    ones given to `check_memorization`."""
    from PIL import ImageDraw

    pad, frame, label_h = 8, 4, 50
    pair_w, pair_h = 2 * cell + 2 * frame + 2, cell + 2 * frame + label_h
    rows = (len(result.matches) + pairs_per_row - 1) // pairs_per_row
    cols = min(pairs_per_row, len(result.matches))
    sheet = Image.new("RGB", (pad + cols * (pair_w + pad), pad + rows * (pair_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for n, match in enumerate(result.matches):
        r, c = divmod(n, pairs_per_row)
        x, y = pad + c * (pair_w + pad), pad + r * (pair_h + pad)
        sample = samples[match.index].convert("RGB")
        # the training picture at the sample's resolution (as the model saw it), both enlarged alike
        nearest = _square(training[match.nearest_index], min(sample.size))
        if match.mirrored:
            nearest = ImageOps.mirror(nearest)
        if match.flagged:
            draw.rectangle([x, y, x + pair_w - 1, y + cell + 2 * frame - 1], fill=_RED)
        sheet.paste(_enlarged(sample, cell), (x + frame, y + frame))
        sheet.paste(_enlarged(nearest, cell), (x + frame + cell + 2, y + frame))
        lines = [(f"sample {match.index + 1} | {match.nearest}{' mirrored' if match.mirrored else ''}", _INK),
                 (f"pixel {match.pixel_distance:.3f} · feature {match.feature_distance:.2f}", _INK),
                 (f"NEAR-COPY (score {_score(match.score, result.score_threshold)})" if match.flagged
                  else f"score {_score(match.score, result.score_threshold)}", _RED if match.flagged else _INK)]
        for i, (words, colour) in enumerate(lines):
            draw.text((x + 2, y + cell + 2 * frame + 2 + 15 * i), _fit(draw, words, font, pair_w - 4), fill=colour,
                      font=font)
    return sheet


def _score(score: float, threshold: float) -> str:
    """Two decimals, or three where two would look the same as the threshold."""
    return f"{score:.3f}" if f"{score:.2f}" == f"{threshold:.2f}" else f"{score:.2f}"


def _enlarged(picture: Image.Image, cell: int) -> Image.Image:
    """`picture` at `cell` px: small ones enlarged without smoothing, so their pixels show."""
    square = ImageOps.fit(picture, (min(picture.size),) * 2)
    method = Image.Resampling.NEAREST if square.width <= cell else Image.Resampling.LANCZOS
    return square.resize((cell, cell), method)


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """`text`, shortened with … until it fits `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
