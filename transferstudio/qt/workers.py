"""Worker threads: a training run (events -> signals) and one-shot tasks.

Signals are emitted from the worker thread on QObjects that live on the GUI thread, so
Qt queues them to the GUI's event loop. QImages are made here; QPixmaps only on the GUI.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from PySide6.QtCore import QObject, QThread, Signal
from PySide6.QtGui import QImage

from transferstudio.core.commands import Commands
from transferstudio.core.errors import UserError
from transferstudio.core.events import EventHandler, Failed, Step

log = logging.getLogger(__name__)

# At most this many Step batches per second reach the GUI thread.
STEP_INTERVAL_S = 0.1

_live: "weakref.WeakSet[QThread]" = weakref.WeakSet()


def live_threads() -> list[QThread]:
    """Worker threads still running (tests fail when one outlives its test)."""
    return [t for t in list(_live) if t.isRunning()]


def pil_to_qimage(image: Any) -> QImage:
    """A PIL image as a QImage that owns its pixels (safe to send across threads)."""
    rgba = image.convert("RGBA")
    data = rgba.tobytes("raw", "RGBA")
    return QImage(data, rgba.width, rgba.height, rgba.width * 4, QImage.Format.Format_RGBA8888).copy()


@dataclass(frozen=True)
class PreviewImages:
    """A Preview event with its pictures converted to QImage on the worker."""

    step: int
    images: tuple[QImage, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    paths: tuple[Path, ...]
    metrics: tuple[tuple[str, float], ...] = ()  # e.g. held-out PSNR/SSIM (reconstruction models)


class _EventSignals(EventHandler):
    """Engine events -> the worker's signals (emitted on the worker thread, queued to the GUI)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def on_preview(self, event: Any) -> None:
        self.worker.preview.emit(PreviewImages(step=event.step, images=tuple(pil_to_qimage(i) for i in event.images),
                                               prompts=event.prompts, seeds=event.seeds, paths=event.paths,
                                               metrics=tuple(sorted(event.metrics.items()))))

    def on_started(self, event: Any) -> None:
        self.worker.started.emit(event)

    def on_validation(self, event: Any) -> None:
        self.worker.validation.emit(event)

    def on_checkpoint(self, event: Any) -> None:
        self.worker.checkpoint.emit(event)

    def on_message(self, event: Any) -> None:
        self.worker.message.emit(event.text, event.level)

    def on_progress(self, event: Any) -> None:
        self.worker.progress.emit(event)

    def on_paused(self, event: Any) -> None:
        self.worker.paused.emit(event.step)

    def on_resumed(self, event: Any) -> None:
        self.worker.resumed.emit(event.step)

    def on_finished(self, event: Any) -> None:
        self.worker._end = event  # before the signal: the GUI may ask for it at once
        self.worker.ended.emit(event)

    on_stopped = on_failed = on_finished


class _Thread(QThread):
    def __init__(self, body: Callable[[], None], name: str) -> None:
        super().__init__()
        self._body = body
        self.setObjectName(name)

    def run(self) -> None:
        self._body()


class TrainingWorker(QObject):
    """Runs `train(TrainJob(project, ...), commands)` on its own QThread.

    Every Step is delivered (in batches, `steps`), but at most ~10 batches a second, so a fast
    loop cannot flood the GUI; other events flush pending steps first to keep the order.
    """

    started = Signal(object)  # Started
    steps = Signal(object)  # list[Step], oldest first
    preview = Signal(object)  # PreviewImages
    checkpoint = Signal(object)  # Checkpoint
    validation = Signal(object)  # Validation
    message = Signal(str, str)  # text, level
    progress = Signal(object)  # Progress: work between steps (encoding for the cache, drawing previews)
    paused = Signal(int)
    resumed = Signal(int)
    ended = Signal(object)  # Finished | Stopped | Failed
    crashed = Signal(str)  # traceback of a programming error (already logged)
    done = Signal()  # the thread has ended (after `ended` or `crashed`)

    def __init__(self, project: Any, *, fresh: bool = False, steps: int | None = None,
                 keep_run_settings: bool = False, scratch: bool = False,
                 train_fn: Callable[[Any, Commands], Iterable[Any]] | None = None,
                 parent: QObject | None = None) -> None:
        """`train_fn(job, commands)` replaces the engine's `train` (tests feed scripted events).
        `keep_run_settings`: continue the last run with its own settings although the project's
        differ (the window asks first; without it the engine refuses and names the differences)."""
        super().__init__(parent)
        self.project = project
        self._train_fn = train_fn
        self.fresh = fresh
        self.keep_run_settings = keep_run_settings
        self.scratch = scratch  # a from-scratch baseline run (same model, random weights)
        self.total_steps = steps
        self.commands = Commands()
        self._pending: list[Step] = []
        self._last_emit = 0.0
        self._end: Any = None
        self._signals = _EventSignals(self)
        self._thread = _Thread(self._run, "training")
        self._thread.finished.connect(self.done)
        _live.add(self._thread)

    # --- GUI side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def pause(self) -> None:
        self.commands.pause()

    def resume(self) -> None:
        self.commands.resume()

    def stop(self) -> None:
        """Ask the loop to stop after the current step; it saves a checkpoint first."""
        self.commands.stop()

    def sample_now(self) -> None:
        self.commands.sample_now()

    def save_now(self) -> None:
        self.commands.save_now()

    def wait(self, timeout_s: float) -> bool:
        return self._thread.wait(int(timeout_s * 1000))

    def stop_and_wait(self, timeout_s: float = 60.0) -> bool:
        """Stop, let the loop save, and wait for the thread. False if it is still running."""
        self.stop()
        return self.wait(timeout_s)

    @property
    def end_event(self) -> Any:
        return self._end

    # --- worker thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            from transferstudio.training.trainer import TrainJob, train  # imports torch: worker only

            job = TrainJob(self.project, steps=self.total_steps, fresh=self.fresh,
                           keep_run_settings=self.keep_run_settings, scratch=self.scratch)
            run = self._train_fn or train
            asked = int(getattr(self.project.config, "processes", 1) or 1)
            if self._train_fn is None and asked > 1:  # several GPUs: the app starts the processes
                from transferstudio.core.events import Message
                from transferstudio.training.launch import processes_here, train_processes

                processes, note = processes_here(asked, self.project.config.device)
                if note:
                    self._signals.handle(Message(note, "info"))
                if processes > 1:
                    def run(job: Any, commands: Any) -> Any:
                        return train_processes(job, processes, commands)
            for event in run(job, self.commands):
                self._dispatch(event)
            if self._end is None:  # the contract says one end event; never leave the GUI waiting
                self._flush()
                self._end = Failed("Training ended without saying why.", "See the log for details.")
                self.ended.emit(self._end)
        except Exception:  # programming error: log it in full and tell the GUI
            text = traceback.format_exc()
            log.error("training crashed:\n%s", text)
            self._flush()
            self.crashed.emit(text)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Step):  # batched: a fast loop must not flood the GUI thread
            self._pending.append(event)
            now = time.monotonic()
            if now - self._last_emit >= STEP_INTERVAL_S:
                self._flush(now)
            return
        self._flush()
        self._signals.handle(event)

    def _flush(self, now: float | None = None) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._last_emit = now if now is not None else time.monotonic()
            self.steps.emit(batch)


class Cancelled(Exception):
    """Raised inside a task that saw its `cancelled()` flag set; the worker then sends `cancelled`."""


class TaskControl:
    """What a task that reports progress gets as its `control` argument: `report(done, total,
    text)` from the worker thread (queued to the GUI as the worker's `progress` signal), and
    `check()`, which raises Cancelled once the person pressed Cancel."""

    def __init__(self, worker: "TaskWorker") -> None:
        self._worker = worker
        self._cancel = threading.Event()

    def report(self, done: int, total: int, text: str = "") -> None:
        self._worker.progress.emit(int(done), int(total), str(text))

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()


class TaskWorker(QObject):
    """Runs `fn(*args, **kwargs)` once on its own thread.

    `succeeded(result)`, or `failed(message, advice)` for a UserError, or `crashed(traceback)`
    for a programming error (logged in full), or `cancelled()` when the task stopped because
    `cancel()` asked it to; then `done`. With `control=True` the function gets a TaskControl
    as the keyword `control`: it reports `progress(done, total, text)` and stops between
    pieces of work when cancelled.
    """

    succeeded = Signal(object)
    failed = Signal(str, str)
    crashed = Signal(str)
    cancelled = Signal()
    progress = Signal(int, int, str)  # done, total, what it is doing
    done = Signal()

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "task", parent: QObject | None = None,
                 control: bool = False, **kwargs: Any) -> None:
        super().__init__(parent)
        self.control = TaskControl(self)
        if control:
            kwargs = {**kwargs, "control": self.control}
        self._call = (fn, args, kwargs)
        self.name = name
        self._thread = _Thread(self._run, name)
        self._thread.finished.connect(self._finished)
        _live.add(self._thread)
        _keep.add(self)

    def start(self) -> "TaskWorker":
        self._thread.start()
        return self

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def cancel(self) -> None:
        """Ask the task to stop at its next check (tasks without checks run to their end)."""
        self.control._cancel.set()

    def is_cancelled(self) -> bool:
        return self.control.cancelled()

    def wait(self, timeout_s: float) -> bool:
        return self._thread.wait(int(timeout_s * 1000))

    def _run(self) -> None:
        fn, args, kwargs = self._call
        try:
            result = fn(*args, **kwargs)
        except Cancelled:
            self.cancelled.emit()
        except UserError as exc:
            self.failed.emit(exc.message, exc.advice)
        except Exception:
            text = traceback.format_exc()
            log.error("task %s crashed:\n%s", self.name, text)
            self.crashed.emit(text)
        else:
            self.succeeded.emit(result)

    def _finished(self) -> None:
        self.done.emit()
        _keep.discard(self)


# Keeps a running TaskWorker alive when its caller holds no reference; dropped when done.
_keep: set[TaskWorker] = set()
