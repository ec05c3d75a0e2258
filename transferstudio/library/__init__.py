"""Offline model library: recognise, list and load the models an artist already has.

`detect` and `discovery` are stdlib-only (safe for fast scans); the loading and writing
modules import torch/diffusers, so they are imported lazily on first use.
"""
from __future__ import annotations

from typing import Any

from transferstudio.backbones.sdfiles.detect import Detection, detect, read_safetensors_header
from transferstudio.library.discovery import LibraryEntry, describe_file, discover

_LAZY = {
    "SingleFileComponents": "transferstudio.backbones.sdfiles.single_file",
    "load_single_file": "transferstudio.backbones.sdfiles.single_file",
    "convert_pickle_to_safetensors": "transferstudio.backbones.sdfiles.pickles",
    "save_single_file": "transferstudio.backbones.sdfiles.original_layout",
    "to_original_layout": "transferstudio.backbones.sdfiles.original_layout",
}

__all__ = ["Detection", "LibraryEntry", "describe_file", "detect", "discover", "read_safetensors_header", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
