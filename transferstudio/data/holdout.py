"""Held-out pictures: a few of the user's pictures that are never trained on, for previews and
metrics that show how a model does on pictures it has not seen (reconstruction families)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageOps

from transferstudio.data.images import open_rgb


def split_held_out(records: Sequence[Any], wanted: int) -> tuple[list[Any], list[Any]]:
    """(training records, held-out records). Every fifth picture at most is held out, and at
    least one picture always trains; the choice is fixed (evenly spaced over the sorted list),
    so a resumed or repeated run holds out the same pictures."""
    records = list(records)
    count = max(0, min(int(wanted), len(records) // 5 if len(records) >= 5 else len(records) - 1))
    if count == 0:
        return records, []
    step = len(records) / count
    held_index = {int(i * step + step / 2) for i in range(count)}
    held = [r for i, r in enumerate(records) if i in held_index]
    return [r for i, r in enumerate(records) if i not in held_index], held


def reference_picture(path: Path, size: int) -> Image.Image:
    """A held-out picture as the model sees it: centre crop to a square, `size` pixels."""
    return ImageOps.fit(open_rgb(path), (size, size), Image.Resampling.LANCZOS)
