"""Data layer: find, check and load training images. No Qt here.

`TrainingImages`/`Batch` import torch, so they load lazily: the UI can scan a
folder without paying for torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferstudio.data.buckets import bucket_summary, make_buckets, nearest_bucket
from transferstudio.data.images import (
    MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    ImageProblem,
    open_rgb,
    probe,
)
from transferstudio.data.scan import ImageRecord, ScanResult, SkippedFile, scan_images

if TYPE_CHECKING:
    from transferstudio.data.dataset import Batch, TrainingImages

__all__ = [
    "MAX_PIXELS", "SUPPORTED_SUFFIXES", "ImageProblem", "open_rgb", "probe",
    "ImageRecord", "ScanResult", "SkippedFile", "scan_images",
    "bucket_summary", "make_buckets", "nearest_bucket",
    "Batch", "TrainingImages",
]


def __getattr__(name: str) -> Any:
    if name in ("Batch", "TrainingImages"):
        from transferstudio.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
