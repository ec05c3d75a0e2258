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


def validation_wanted(setting: str, total: int, *, family_default: int = 0) -> int:
    """How many of `total` pictures the validation setting asks to hold out (split_held_out then
    keeps at most one in five). auto: the family's own default when it has one (a VAE shows
    held-out reconstructions), else one in ten from 20 pictures up — fewer pictures all train."""
    from transferstudio.project.config import validation_request

    kind, value = validation_request(setting) or ("auto", 0.0)
    if kind == "none":
        return 0
    if kind == "count":
        return int(value)
    if kind == "percent":
        return int(round(total * value / 100.0))
    if family_default:
        return family_default
    return total // 10 if total >= 20 else 0


def split_by_names(records: Sequence[Any], names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The split a run recorded (held-out file names), so a resumed run validates on the same
    pictures even when pictures were added; names no longer present are dropped."""
    wanted = set(names)
    held = [r for r in records if r.path.name in wanted]
    return [r for r in records if r.path.name not in wanted], held


def reference_picture(path: Path, size: int) -> Image.Image:
    """A held-out picture as the model sees it: centre crop to a square, `size` pixels."""
    return ImageOps.fit(open_rgb(path), (size, size), Image.Resampling.LANCZOS)
