"""The export formats: each one registered once, with when it applies.

A format applies to a model by its capabilities (does it take prompts, can its LoRA be named
for kohya, does it have a single-file layout) and to a training method; it never asks for a
family's name. Writers live in export/writers.py and register themselves here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transferstudio.core.errors import ExportError


@dataclass(frozen=True)
class ExportFormat:
    key: str
    label: str
    description: str
    methods: tuple[str, ...]  # training methods it applies to
    applies: Callable[[Any, str], bool]  # (capabilities, method) -> bool
    folder: Callable[[str], bool]  # method -> writes a folder (not one file)
    write: Callable[..., dict]  # (trained, staged_path, **ExportContext) -> manifest extras
    result_kind: Callable[[str], str] = lambda method: "merged"  # "lora" | "full" | "merged"
    listed: Callable[[str], bool] = lambda method: True  # offered in lists (it may still be asked for)

    def usable(self, caps: Any, method: str) -> bool:
        return method in self.methods and bool(self.applies(caps, method))

    def offered(self, caps: Any, method: str) -> bool:
        return self.usable(caps, method) and self.listed(method)


_FORMATS: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    _FORMATS[fmt.key] = fmt
    return fmt


def all_formats() -> dict[str, ExportFormat]:
    from transferstudio.export import writers  # noqa: F401  (registers the built-in formats)

    return dict(_FORMATS)


def get(key: str) -> ExportFormat:
    formats = all_formats()
    if key not in formats:
        raise ExportError(f"Unknown export format '{key}'.", f"Choose one of: {', '.join(formats)}.")
    return formats[key]


@dataclass(frozen=True)
class ExportContext:
    """What every writer gets besides the trained model and where to write."""

    title: str
    strength: float
    fp16: bool
    date: str
    dataset: dict
    base_sha256: str | None
    out: Path  # the final path (writers write to a staged path beside it)
