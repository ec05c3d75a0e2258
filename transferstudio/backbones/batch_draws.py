"""Per-picture random draws of a training step, the same whichever process trains which picture.

In a data-parallel run every process holds the same random generators and sees the same global
batch; each trains some of its rows. Drawing noise for its own rows only would give the rows
other noise than a one-process run gives them (and the same noise in every process). So each
per-picture draw (noise, timesteps, the latent sample, offsets) is drawn for the whole global
batch and the process keeps its rows: 2 processes × 2 pictures train exactly what 1 × 4 trains,
and the generators stay in step in every process (a run can continue with another count).

Outside `rows_of(...)` the helpers are plain torch calls with the same arguments, so a
one-process run draws exactly what it drew before.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Rows:
    """This process's rows [start, stop) of a global batch of `size` pictures."""

    start: int
    stop: int
    size: int

    @property
    def count(self) -> int:
        return self.stop - self.start


_ROWS: ContextVar[Rows | None] = ContextVar("transferstudio_rows", default=None)


@contextmanager
def rows_of(rows: Rows | None) -> Iterator[None]:
    """Per-picture draws inside the block are drawn for `rows.size` pictures and cut to `rows`
    (None: no cutting)."""
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def _global(shape: tuple[int, ...] | torch.Size) -> tuple[tuple[int, ...], Rows | None]:
    shape = tuple(int(s) for s in shape)
    rows = _ROWS.get()
    if rows is None or not shape or shape[0] != rows.count:
        return shape, None  # not a per-picture draw of this batch (e.g. a probe on other pictures)
    return (rows.size, *shape[1:]), rows


def randn(shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
          device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.randn with the batch dimension first."""
    full, rows = _global(shape)
    drawn = torch.randn(full, generator=generator, device=device, dtype=dtype)
    return drawn if rows is None else drawn[rows.start:rows.stop]


def rand(shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
         device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    full, rows = _global(shape)
    drawn = torch.rand(full, generator=generator, device=device, dtype=dtype)
    return drawn if rows is None else drawn[rows.start:rows.stop]


def randint(low: int, high: int, shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
            device: torch.device | str | None = None) -> torch.Tensor:
    full, rows = _global(shape)
    drawn = torch.randint(low, high, full, generator=generator, device=device)
    return drawn if rows is None else drawn[rows.start:rows.stop]
