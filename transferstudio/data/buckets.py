"""Aspect-ratio buckets: train wide and tall images without square crops."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from transferstudio.data.scan import ImageRecord

_MIN_AREA_FRACTION = 0.9


def native_size(native: int, multiple: int) -> int:
    """`native` rounded down to a multiple of `multiple` (the square bucket side)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    side = native // multiple * multiple
    if side < multiple:
        raise ValueError(f"resolution {native} is smaller than the size multiple {multiple}")
    return side


def make_buckets(native: int, multiple: int, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets with area <= native², sorted from tallest to widest.

    For each height step below native, the widest width that fits the area is
    taken, so every bucket uses nearly the full pixel budget (>= 90%); portrait
    buckets mirror landscape ones.
    """
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    side = native_size(native, multiple)
    area = side * side
    landscape: dict[int, int] = {}  # width -> largest height
    h = side
    while h >= multiple:
        w = area // h // multiple * multiple
        if w / h > max_aspect + 1e-9:
            # One last bucket at exactly the aspect limit, if it still uses
            # most of the pixel budget (e.g. 1408x704 at 1024).
            w = int(max_aspect * h + 1e-9) // multiple * multiple
            if w >= h and w * h >= _MIN_AREA_FRACTION * area:
                landscape[w] = max(landscape.get(w, 0), h)
            break
        landscape[w] = max(landscape.get(w, 0), h)
        h -= multiple
    pairs = set()
    for w, h in landscape.items():
        pairs.add((w, h))
        pairs.add((h, w))
    return sorted(pairs, key=lambda b: (b[0] / b[1], b[0]))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Bucket closest in log aspect ratio; ties go to the larger area."""
    if not buckets:
        raise ValueError("no buckets")
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def assign_bucket(width: int, height: int, native: int, multiple: int, enabled: bool = True) -> tuple[int, int]:
    if not enabled:
        side = native_size(native, multiple)
        return side, side
    return nearest_bucket(width, height, make_buckets(native, multiple))


def bucket_summary(
    records: Iterable[ImageRecord], native: int, multiple: int, enabled: bool = True
) -> dict[tuple[int, int], int]:
    """Samples per (width, height) bucket, counting repeats; ordered tall to wide."""
    side = native_size(native, multiple)
    buckets = make_buckets(native, multiple) if enabled else [(side, side)]
    counts: dict[tuple[int, int], int] = {}
    for r in records:
        b = nearest_bucket(r.width, r.height, buckets) if enabled else (side, side)
        counts[b] = counts.get(b, 0) + max(1, r.repeats)
    return {b: counts[b] for b in buckets if b in counts}
