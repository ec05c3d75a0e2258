"""Events the training engine yields. Small frozen values, safe to pass across threads."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Started:
    """Sent once before the first step: what the run will do."""

    run_dir: Path
    total_steps: int
    start_step: int  # > 0 when resuming from a checkpoint
    images: int  # usable images (without repeats)
    samples_per_epoch: int  # with repeats
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of files left out
    device: str
    trainable_parameters: int
    processes: int = 1  # data-parallel processes training together (each some rows of every batch)
    batch: int = 1  # pictures per batch, over all the processes
    accumulation: int = 1  # batches per optimizer step


@dataclass(frozen=True)
class Step:
    """Sent after every optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    images_per_s: float
    eta_s: float
    elapsed_s: float
    losses: tuple[tuple[str, float], ...] = ()  # each phase's loss when there are several (GAN: D and G)
    signals: tuple[tuple[str, float], ...] = ()  # other numbers worth charting (a discriminator's outputs)


@dataclass(frozen=True)
class Preview:
    """Samples made at a step with fixed seeds (and prompts, for text backbones)."""

    step: int
    images: tuple[Any, ...]  # PIL images
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    paths: tuple[Path, ...]
    metrics: dict = field(default_factory=dict)  # e.g. held-out PSNR/SSIM of a reconstruction family


@dataclass(frozen=True)
class Validation:
    """The loss on the held-out pictures (never trained on), at fixed noise: lower is better."""

    step: int
    loss: float
    best_step: int  # the step with the lowest validation loss so far
    best_loss: float
    rising: int = 0  # measures in a row, ending here, above the best: the overfitting signal


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


@dataclass(frozen=True)
class Message:
    """Something worth telling the user that is not an error (e.g. a skipped image)."""

    text: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class Progress:
    """Work before (or between) steps that takes a while, e.g. encoding the pictures once for the
    cache: `done` of `total` so far. The first of a task has done 0."""

    task: str  # what is being done, for the user ("Encoding your pictures for the cache")
    done: int
    total: int


@dataclass(frozen=True)
class Paused:
    """The loop is paused after `step`; it blocks until resumed or stopped."""

    step: int


@dataclass(frozen=True)
class Resumed:
    step: int


@dataclass(frozen=True)
class Finished:
    step: int
    final_loss: float
    checkpoint: Path | None
    weights: Path | None  # the trained weights of the last checkpoint


@dataclass(frozen=True)
class Stopped:
    """The user stopped the run; work was saved in `checkpoint`."""

    step: int
    checkpoint: Path | None


@dataclass(frozen=True)
class Failed:
    """A problem the user can act on, with advice. Programming errors are raised instead."""

    message: str
    advice: str = ""
    step: int = 0
    checkpoint: Path | None = None


EndEvent = (Finished, Stopped, Failed)


def _kind(event: Any) -> str:
    name = type(event).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class EventHandler:
    """Turns the engine's events into calls of `on_<kind>` (on_started, on_step, on_preview,
    on_checkpoint, on_message, on_progress, on_paused, on_resumed, on_finished, on_stopped, on_failed);
    kinds without a method go to `on_event`. `run(events)` handles a whole run and returns
    its end event (Finished / Stopped / Failed)."""

    end: Any = None

    def handle(self, event: Any) -> None:
        if isinstance(event, EndEvent):
            self.end = event
        method = getattr(self, "on_" + _kind(event), None)
        (method or self.on_event)(event)

    def on_event(self, event: Any) -> None:
        """Events this handler has no method for."""

    def run(self, events: Any) -> Any:
        for event in events:
            self.handle(event)
        return self.end
