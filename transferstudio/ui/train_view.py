"""The Train view: run controls, progress, a live loss chart and a gallery of previews.

The view owns the TrainingWorker of the current run. It shows a project's history from its
run folder (metrics.jsonl, previews/), so a reopened project shows what it trained before.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPalette
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar,
                               QPushButton, QSlider, QSplitter, QVBoxLayout, QWidget)

from transferstudio.core.events import Failed, Finished, Stopped
from transferstudio.qt import history
from transferstudio.qt.run_metrics import EXTRA_CHARTS, EtaEstimator, LossBuffer, ema_weight
from transferstudio.qt.workers import PreviewImages, TrainingWorker
from transferstudio.ui.preview_grid import PreviewGrid
from transferstudio.ui.widgets import ElidedLabel

if TYPE_CHECKING:
    from transferstudio.ui.loss_chart import LossCharts

__all__ = ["TrainView", "EtaEstimator", "LossBuffer", "PreviewGrid", "ema_weight", "format_duration", "EXTRA_CHARTS"]

CHART_NAMES = ("plot", "signal_plot", "extra_plot", "raw_curve", "smooth_curve", "val_curve", "best_marker",
               "extra_curve", "series_curves")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class TrainView(QWidget):
    start_requested = Signal()  # the window decides: continue the last run or start fresh
    running_changed = Signal(bool)
    run_state_changed = Signal(str)  # idle | starting | running | pausing | paused | stopping
    run_started = Signal(object)  # Started
    run_finished = Signal(object)  # Finished | Stopped | Failed | None (crash); the thread has ended
    failed = Signal(object)  # Failed: the window shows it with the engine's advice
    crashed = Signal(str)  # traceback of a programming error
    preview_added = Signal(int)  # step
    steps_received = Signal(int)  # latest step number

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.worker: TrainingWorker | None = None
        self.project: Any = None
        self.loss = LossBuffer()
        self._previews: list[tuple[int, list[QImage] | None, list[Path], list[str]]] = []
        self._state = "idle"  # idle | starting | running | pausing | paused | stopping
        self._last_step = 0
        self._total_steps = 0
        self.eta = EtaEstimator()
        self._clock = time.monotonic  # tests replace it
        self._preview_every = 0  # of the running run: the steps after which it draws previews
        self._drawing = False  # previews are being drawn (the steps stop meanwhile)
        self._planned_total = 1  # the chart's step axis spans this while it is empty

        # --- controls
        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Train the model on your pictures. Continues an unfinished run "
                                     "if there is one.")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Pause after the current step; Resume carries on.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step and save a checkpoint.")
        self.sample_button = QPushButton("Sample now")
        self.sample_button.setToolTip("Make preview samples after the current step (while paused: at once, of "
                                      "the model as it is now).")
        self.save_button = QPushButton("Save now")
        self.save_button.setToolTip("Save a checkpoint after the current step (while paused: at once).")
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start_requested)
        self.pause_button.clicked.connect(self._toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.sample_button.clicked.connect(self._sample_now)
        self.save_button.clicked.connect(self._save_now)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        buttons.addSpacing(16)
        buttons.addWidget(self.sample_button)
        buttons.addWidget(self.save_button)
        buttons.addSpacing(12)
        self.status = ElidedLabel("Not started.")  # long messages never widen the window
        self.status.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        buttons.addWidget(self.status, 1)

        # --- progress
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.progress.setMinimumWidth(160)
        # The speed rides in the bar's text ("step 5 / 300 · 4.1 images/s"); the time left and the
        # loss have fixed widths, so changing numbers never make the row jitter or widen.
        self.speed_label = QLabel("")  # the last speed, as text (shown in the bar)
        self.eta_label = QLabel("")
        self.loss_label = QLabel("")
        metrics = self.fontMetrics()
        self.eta_label.setFixedWidth(max(metrics.horizontalAdvance(t) for t in ("59 min 59 s left",
                                                                                 "estimating time…")) + 10)
        self.eta_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.loss_label.setFixedWidth(metrics.horizontalAdvance("loss ≈ 0.00000") + 10)
        self.loss_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.eta_label)
        progress_row.addWidget(self.loss_label)
        self.validation_label = QLabel("")
        self.validation_label.setToolTip("The loss on pictures kept out of training (Settings ▸ validation). It "
                                         "falls while the model learns what your pictures share; when it rises "
                                         "for a while the model is learning the training pictures by heart, and "
                                         "the checkpoint at its best step is the one to export.")
        progress_row.addSpacing(8)
        progress_row.addWidget(self.validation_label)

        # --- loss chart: the numbers live here; the charts (pyqtgraph) are made once the tab is on
        # screen (`charts`), so the window appears before pyqtgraph and numpy have loaded.
        self._charts: LossCharts | None = None
        self.chart_box = _ChartSlot(self)
        self.val_steps: Any = []  # the loss on held-out pictures (never trained on), every few steps
        self.val_losses: Any = []
        self.best_step: int | None = None
        # Models trained in phases (a GAN's generator and discriminator, a VAE with a discriminator):
        # one smoothed loss per phase, the discriminator's accuracy and the augmentation strength.
        self.series: dict[str, LossBuffer] = {}

        # The learning rate or the speed, on a small chart under the loss (same steps).
        self.extra: dict[str, tuple[list[float], list[float]]] = {"lr": ([], []), "images/s": ([], [])}
        self._live_rates: dict[int, float] = {}  # images/s a live run reported (not in metrics.jsonl)
        self.run_dir: Path | None = None  # whose numbers the charts show
        self.extra_choice = QComboBox()
        for key, text, _axis in EXTRA_CHARTS:
            self.extra_choice.addItem(text, key)
        self.extra_choice.setToolTip("What the small chart under the loss shows: the learning rate the schedule "
                                     "gives each step, or the training speed.")
        self.extra_choice.currentIndexChanged.connect(self._redraw_extra)
        self.export_csv_button = QPushButton("Export metrics as CSV…")
        self.export_csv_button.setToolTip("Save every step's loss, smoothed loss, learning rate, time, speed and "
                                          "validation loss as a CSV file (for a spreadsheet or a notebook).")
        self.export_csv_button.clicked.connect(lambda: self.export_metrics_csv())
        extra_row = QHBoxLayout()
        extra_row.setContentsMargins(0, 0, 0, 0)
        extra_label = QLabel("Below the loss:")
        extra_label.setBuddy(self.extra_choice)
        extra_row.addWidget(extra_label)
        extra_row.addWidget(self.extra_choice)
        extra_row.addStretch(1)
        extra_row.addWidget(self.export_csv_button)

        # --- preview gallery
        self.gallery = PreviewGrid()
        self.gallery_title = QLabel("Previews")
        font = self.gallery_title.font()
        font.setBold(True)
        self.gallery_title.setFont(font)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.slider.setToolTip("Go back through earlier previews (step 0 is the untrained model).")
        self.slider.valueChanged.connect(self._show_preview)
        self._follow_latest = True
        gallery_box = QWidget()
        g = QVBoxLayout(gallery_box)
        g.setContentsMargins(0, 0, 0, 0)
        head = QHBoxLayout()
        head.addWidget(self.gallery_title)
        head.addWidget(self.slider, 1)
        g.addLayout(head)
        g.addWidget(self.gallery, 1)

        # --- log of messages
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setPlaceholderText("Messages from the training run appear here.")
        self.log.setFixedHeight(self.fontMetrics().lineSpacing() * 4 + 12)

        charts = QWidget()
        c = QVBoxLayout(charts)
        c.setContentsMargins(0, 0, 0, 0)
        c.setSpacing(2)
        c.addWidget(self.chart_box, 1)
        c.addLayout(extra_row)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(charts)
        split.addWidget(gallery_box)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addLayout(progress_row)
        layout.addWidget(split, 1)
        layout.addWidget(self.log)
        self._update_buttons()

    # --- the charts, made when first needed -----------------------------------------------------
    @property
    def charts(self) -> "LossCharts":
        """The charts, made now if they are not yet (the first time the tab is painted, or asked)."""
        if self._charts is None:
            from transferstudio.ui.loss_chart import LossCharts

            self._charts = LossCharts(self)
            self.chart_box.set_chart(self._charts)
            # Laid out before the first drawing: the linked step axes and clipping need real sizes.
            self.chart_box.layout().activate()
            self._charts.set_planned_total(self._planned_total)
            self._charts.redraw()
        return self._charts

    def has_charts(self) -> bool:
        return self._charts is not None

    def __getattr__(self, name: str) -> Any:
        # view.plot, view.raw_curve…: the charts' items (made on first use).
        if name in CHART_NAMES:
            return getattr(self.charts, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # --- public --------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    def is_running(self) -> bool:
        return self.worker is not None and self._state != "idle"

    def set_project(self, project: Any) -> None:
        """Show the project's latest run (loss history, previews), or an empty view: nothing of
        the project shown before stays (its chart, previews, messages, time left)."""
        self.project = project
        self.clear()
        if project is not None:
            self._set_planned_total(max(1, project.config.steps))
            self.progress.setRange(0, max(1, project.config.steps))  # "step 0 / 300" before a run
            state = history.latest_run_state(project)
            if state is not None:
                self.load_history(state.run_dir, max(state.total, project.config.steps))
                self.progress.setRange(0, max(1, state.total))
                self.progress.setValue(state.checkpoint_step or (int(self.loss.steps[-1]) if self.loss.n else 0))
                self.status.setText(f"Last run: step {state.checkpoint_step} of {state.total} saved."
                                    if state.checkpoint_step else "Last run has no checkpoint yet.")
        self._update_buttons()

    def clear(self) -> None:
        self.loss.clear()
        self.val_steps, self.val_losses = [], []
        self._show_best(None)
        self.series.clear()
        self.run_dir = None
        self._live_rates.clear()
        for xs, ys in self.extra.values():
            xs.clear()
            ys.clear()
        self._redraw_extra()
        self._previews.clear()
        self.slider.setRange(0, 0)
        self.slider.setEnabled(False)
        self.gallery.clear("Previews appear here while training.")
        self.gallery_title.setText("Previews")
        self._follow_latest = True
        self._last_step = 0
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        for label in (self.speed_label, self.eta_label, self.loss_label):
            label.clear()
        self.eta.reset()
        self._drawing = False
        self.log.clear()
        self.status.setText("Not started.")
        self._set_planned_total(1)
        self._redraw_loss()  # the legend, the log scale and the axes' ranges follow the (empty) data

    def load_history(self, run_dir: Path, total_steps: int | None = None) -> None:
        if self.run_dir is None or Path(run_dir) != self.run_dir:
            self._live_rates.clear()
        self.run_dir = Path(run_dir)
        table = history.read_table(run_dir)
        for key in self.extra:
            xs, ys = self.extra[key]
            xs[:], ys[:] = list(table["step"]), list(table[key])
        for i, s in enumerate(self.extra["images/s"][0]):  # what the run itself measured, where known
            if int(s) in self._live_rates:
                self.extra["images/s"][1][i] = self._live_rates[int(s)]
        self._redraw_extra()
        steps, losses = history.read_metrics(run_dir)
        self.loss.clear(total_steps)
        self.loss.extend(steps, losses)
        self.series.clear()
        for name, (xs, ys) in history.read_series(run_dir).items():
            self._series_buffer(name, total_steps).extend(xs, ys)
        self.val_steps, self.val_losses, best = history.read_validation(run_dir)
        self._show_best(best)
        if total_steps:
            self._set_planned_total(total_steps)
        self._redraw_loss()
        if self.loss.n:
            self.loss_label.setText(f"loss ≈ {self.loss.smoothed[-1]:.4f}")
        self._previews = [(step, None, files, history.preview_captions(files))
                          for step, files in history.preview_files(run_dir)]
        self._follow_latest = True
        self._refresh_slider()

    def start_run(self, project: Any, *, fresh: bool, steps: int | None = None,
                  keep_run_settings: bool = False, scratch: bool = False) -> TrainingWorker:
        """Start training `project` on a worker thread (continue its last run unless `fresh`;
        with the run's own settings even where the project's differ, if `keep_run_settings`)."""
        assert not self.is_running(), "a run is already going"
        self.project = project
        worker = TrainingWorker(project, fresh=fresh, steps=steps, keep_run_settings=keep_run_settings,
                                scratch=scratch)
        worker.started.connect(self._on_started)
        worker.steps.connect(self._on_steps)
        worker.preview.connect(self._on_preview)
        worker.checkpoint.connect(lambda e: self._log(f"Checkpoint saved at step {e.step}."))
        worker.validation.connect(self._on_validation)
        worker.message.connect(lambda text, level: self._log(("⚠ " if level == "warning" else "") + text))
        worker.progress.connect(self._on_progress)
        worker.paused.connect(self._on_paused)
        worker.resumed.connect(self._on_resumed)
        worker.ended.connect(self._on_ended)
        worker.crashed.connect(self._on_crashed)
        worker.done.connect(self._on_done)
        self.worker = worker
        self.eta.reset()
        self.eta_label.clear()
        self.speed_label.clear()
        self._drawing = False
        self._set_state("starting")
        self.status.setText("Loading the model…")
        self.progress.setFormat("loading the model…")
        self._log("Starting the from-scratch baseline (the same model with random weights)…" if scratch else
                  "Starting a new run…" if fresh else "Starting (continues the last run if it is unfinished)…")
        worker.start()
        return worker

    def pause(self) -> None:
        if self.worker is not None and self._state in ("starting", "running"):
            self.worker.pause()
            self._set_state("pausing")
            self.status.setText("Pausing after this step…")

    def resume(self) -> None:
        if self.worker is not None and self._state in ("pausing", "paused"):
            self.worker.resume()
            self._set_state("running")
            self.eta.reset()  # the pace is measured again from the first steps after the pause
            self.eta_label.setText("")
            self.status.setText("Training…")

    def stop(self) -> None:
        if self.worker is not None and self._state not in ("idle", "stopping"):
            self.worker.stop()
            self._set_state("stopping")
            self.eta.reset()
            self.eta_label.clear()
            self.status.setText("Stopping — saving a checkpoint…")

    def stop_and_wait(self, timeout_s: float) -> bool:
        """Blocking stop for shutdown paths; True when the thread has ended."""
        if self.worker is None:
            return True
        self.stop()
        return self.worker.stop_and_wait(timeout_s)

    def preview_steps(self) -> list[int]:
        return [p[0] for p in self._previews]

    def show_preview_index(self, index: int) -> None:
        self.slider.setValue(index)
        self._show_preview(index)

    # --- worker events -----------------------------------------------------------------
    def _on_started(self, event: Any) -> None:
        # The engine has already trimmed metrics past a resumed checkpoint: reload from disk.
        self.load_history(event.run_dir, event.total_steps)
        self._preview_every = history.preview_every(event.run_dir)
        self._total_steps, self._last_step = event.total_steps, event.start_step
        self.progress.setRange(0, event.total_steps)
        self.progress.setValue(event.start_step)
        self.progress.setFormat("step %v / %m")
        self._set_state("running" if self._state == "starting" else self._state)
        where = f"from step {event.start_step}" if event.start_step else "from the beginning"
        self._log(f"Training {where} on {event.images} pictures ({event.device}); "
                  f"{event.trainable_parameters:,} weights to train.")
        if event.start_step == 0 and self._state == "running":
            # A new run first draws what the untrained model makes (step 0): seconds to a minute.
            self._drawing = True
            self.status.setText("Drawing the starting previews (the untrained model)…")
            self.progress.setFormat("drawing the starting previews…")
            self._log("Drawing the starting previews, to compare the training with…")
        elif self._state == "running":
            self.status.setText("Training…")
        self.run_started.emit(event)

    def _on_progress(self, event: Any) -> None:
        """Work between steps: the bar counts it while it lasts, then counts steps again."""
        if event.done < event.total:
            self._drawing = True
            self.status.setText(f"{event.task}…")
            if event.done:  # counted; a task that only announces itself leaves the step count alone
                self.progress.setRange(0, event.total)
                self.progress.setValue(event.done)
            self.progress.setFormat(f"{event.task.lower()}: %v / %m" if event.done else f"{event.task.lower()}…")
        else:
            self.progress.setRange(0, self._total_steps)
            self.progress.setValue(self._last_step)
            self.progress.setFormat("step %v / %m")
            self._log(f"{event.task}: done ({event.total}).")

    def _on_steps(self, batch: list[Any]) -> None:
        if self.loss.n:  # steps the run's history (read when it started) already holds are not added twice
            last = int(self.loss.steps[-1])
            batch = [s for s in batch if s.step > last]
            if not batch:
                return
        self.loss.extend([s.step for s in batch], [s.loss for s in batch])
        for step in batch:
            for name, value in history.step_series(step).items():
                self._series_buffer(name, step.total).extend([step.step], [value])
        self._redraw_loss()
        for s in batch:
            self._live_rates[s.step] = float(s.images_per_s)
            for key, value in (("lr", s.lr), ("images/s", s.images_per_s)):
                self.extra[key][0].append(float(s.step))
                self.extra[key][1].append(float(value))
        self._redraw_extra()
        last = batch[-1]
        self._last_step = last.step
        self.progress.setMaximum(last.total)
        self.progress.setValue(last.step)
        self.speed_label.setText(f"{last.images_per_s:.2f} images/s")
        self.progress.setFormat(f"step %v / %m · {last.images_per_s:.1f} images/s")
        self.loss_label.setText(f"loss ≈ {self.loss.smoothed[-1]:.4f}")
        if self._state in ("running", "pausing"):
            eta = self.eta.update(last.step, last.total, self._clock())
            self.eta_label.setText("estimating time…" if eta is None else f"{format_duration(eta)} left")
        if self._state == "running":
            self._say_what_comes_after(last.step, last.total)
        self.steps_received.emit(last.step)

    def _say_what_comes_after(self, step: int, total: int) -> None:
        """The steps stop for a while when the run draws previews or saves at its end: say so."""
        every = self._preview_every
        if step >= total:
            self._drawing = True
            self.status.setText("Saving the trained model and drawing the last previews…")
        elif every and step % every == 0:
            self._drawing = True
            self.status.setText(f"Drawing previews at step {step}…")
        elif self._drawing or self.status.text() != "Training…":
            self._drawing = False
            self.status.setText("Training…")

    def _on_validation(self, event: Any) -> None:
        keep = [i for i, s in enumerate(self.val_steps) if s < event.step]  # a resumed run measures its first step again
        self.val_steps = [float(self.val_steps[i]) for i in keep] + [float(event.step)]
        self.val_losses = [float(self.val_losses[i]) for i in keep] + [float(event.loss)]
        self._show_best((event.best_step, event.best_loss))
        self._redraw_loss()

    def _show_best(self, best: tuple[int, float] | None) -> None:
        self.best_step = best[0] if best is not None else None
        if best is None:
            self.validation_label.clear()
            return
        last = float(self.val_losses[-1]) if len(self.val_losses) else best[1]
        self.validation_label.setText(f"validation {last:.4f} · best at step {best[0]}")

    def _on_preview(self, preview: PreviewImages) -> None:
        captions = [f"seed {s}" + (f" · {p}" if p else "")
                    for s, p in zip(preview.seeds, list(preview.prompts) + [""] * len(preview.seeds))]
        metrics = dict(preview.metrics)
        if metrics:  # a reconstruction model: held-out pictures, original | reconstruction (+ prior samples)
            captions = list(preview.prompts) or [f"held-out picture {s}" for s in preview.seeds]
            self._log(f"step {preview.step}: held-out pictures PSNR {metrics.get('psnr', 0):.2f} dB, "
                                     f"SSIM {metrics.get('ssim', 0):.3f}")
        entry = (preview.step, list(preview.images), list(preview.paths), captions)
        self._previews = [p for p in self._previews if p[0] != preview.step] + [entry]
        self._previews.sort(key=lambda p: p[0])
        self._refresh_slider()
        if self._drawing and self._state == "running":
            self._drawing = False
            if preview.step == 0:
                self.progress.setFormat("step %v / %m")
                self.status.setText("Training — the first steps…")
            elif preview.step < self.progress.maximum():
                self.status.setText("Training…")
        self.preview_added.emit(preview.step)

    def _on_paused(self, step: int) -> None:
        self._set_state("paused")
        self.eta.reset()
        self.eta_label.setText("paused")
        self.status.setText(f"Paused at step {step}.")

    def _on_resumed(self, step: int) -> None:
        if self._state != "stopping":
            self._set_state("running")
            self.eta.reset()
            self.status.setText("Training…")

    def _on_ended(self, event: Any) -> None:
        self._drawing = False
        self.eta.reset()
        self.eta_label.clear()
        if isinstance(event, Finished):
            self.status.setText(f"Finished at step {event.step} (loss {event.final_loss:.4f}).")
            self._log(f"Finished at step {event.step}. Saved in {event.checkpoint}.")
        elif isinstance(event, Stopped):
            self.status.setText(f"Stopped at step {event.step}; saved.")
            self._log(f"Stopped at step {event.step}. Saved in {event.checkpoint}.")
        elif isinstance(event, Failed):
            self.status.setText("Training stopped with a problem.")
            self._log(f"Problem: {event.message} {event.advice}".strip())
            self.failed.emit(event)

    def _on_crashed(self, text: str) -> None:
        self.status.setText("Training stopped because of an internal error.")
        self._log("Internal error; the details are in the log file (Help ▸ Open Log Folder).")
        self.crashed.emit(text)

    def _on_done(self) -> None:
        worker = self.worker
        if worker is None:
            return
        worker.wait(5)  # `finished` is sent just before the thread really ends
        self._set_state("idle")
        self.progress.setFormat("step %v / %m")
        self.eta_label.clear()
        end = worker.end_event
        self.run_finished.emit(end)

    # --- helpers -------------------------------------------------------------------------
    def _toggle_pause(self) -> None:
        if self._state in ("pausing", "paused"):
            self.resume()
        else:
            self.pause()

    def _sample_now(self) -> None:
        if self.worker is None:
            return
        self.worker.sample_now()
        if self._state in ("pausing", "paused"):
            # A paused engine wakes for the request and draws at once.
            self._log(f"Drawing previews of the model as it is now (step {self._last_step})…")
        else:
            self._log("Samples will be made after this step.")
            if self._state == "running":
                self._drawing = True  # until they arrive
                self.status.setText("Drawing previews after this step…")

    def _save_now(self) -> None:
        if self.worker is None:
            return
        self.worker.save_now()
        if self._state in ("pausing", "paused"):
            self._log(f"Saving a checkpoint of step {self._last_step}…")
        else:
            self._log("A checkpoint will be saved after this step.")

    def _set_state(self, state: str) -> None:
        was, before = self.is_running(), self._state
        self._state = state
        self._update_buttons()
        if state != before:
            self.run_state_changed.emit(state)
        if was != self.is_running():
            self.running_changed.emit(self.is_running())

    def _update_buttons(self) -> None:
        s = self._state
        active = s in ("starting", "running")
        self.start_button.setEnabled(s == "idle" and self.project is not None)
        self.pause_button.setEnabled(s in ("starting", "running", "pausing", "paused"))
        self.pause_button.setText("Resume" if s in ("pausing", "paused") else "Pause")
        self.stop_button.setEnabled(s in ("starting", "running", "pausing", "paused"))
        # While paused too: the request waits for Resume (the engine reads it before the next step).
        self.sample_button.setEnabled(active or s in ("pausing", "paused"))
        self.save_button.setEnabled(active or s in ("pausing", "paused"))

    def _redraw_loss(self) -> None:
        if self._charts is not None:
            self._charts.redraw_loss()

    def extra_key(self) -> str:
        """What the small chart shows: "lr", "images/s" or "" (nothing)."""
        return str(self.extra_choice.currentData() or "")

    def set_extra_chart(self, key: str) -> None:
        self.extra_choice.setCurrentIndex(max(0, self.extra_choice.findData(key)))

    def _redraw_extra(self, *_: Any) -> None:
        self.export_csv_button.setEnabled(self.run_dir is not None)
        if self._charts is not None:
            self._charts.redraw_extra()

    def metrics_csv(self) -> str:
        """The CSV text of the shown run's numbers (see `history.metrics_csv`)."""
        if self.run_dir is None:
            return ",".join(history.CSV_COLUMNS) + "\n"
        table = history.read_table(self.run_dir)
        smooth = LossBuffer()
        smooth.weight = self.loss.weight  # the chart's smoothing
        smooth.extend(table["step"], table["loss"])
        return history.metrics_csv(table, smooth.smoothed, history.read_validation(self.run_dir)[:2],
                                   self._live_rates)

    def export_metrics_csv(self, path: Path | str | None = None) -> Path | None:
        """Write the shown run's numbers to a CSV file (asks where when `path` is None)."""
        if self.run_dir is None:
            return None
        if path is None:
            start = self.run_dir.parent.parent if self.run_dir.parent.name == "runs" else self.run_dir
            chosen, _ = QFileDialog.getSaveFileName(self, "Export metrics as CSV",
                                                    str(start / f"metrics-{self.run_dir.name}.csv"),
                                                    "CSV files (*.csv)")
            if not chosen:
                return None
            path = chosen
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        try:
            history.write_metrics_csv(path, self.metrics_csv())
        except OSError as e:
            self._log(f"Could not save {path}: {e.strerror or e}")
            return None
        self._log(f"Metrics saved in {path}.")
        return path

    def _set_planned_total(self, total: int) -> None:
        self._planned_total = max(1, int(total))
        if self._charts is not None:
            self._charts.set_planned_total(self._planned_total)

    def _series_buffer(self, name: str, total_steps: int | None) -> "LossBuffer":
        buffer = self.series.get(name)
        if buffer is None:
            buffer = self.series[name] = LossBuffer()
            buffer.clear(total_steps)
        return buffer

    def _refresh_slider(self) -> None:
        n = len(self._previews)
        at_end = self._follow_latest or self.slider.value() >= self.slider.maximum()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, n - 1))
        self.slider.setEnabled(n > 1)
        if at_end:
            self.slider.setValue(max(0, n - 1))
        self.slider.blockSignals(False)
        if n:
            self._show_preview(self.slider.value())
        else:
            self.gallery.clear()
            self.gallery_title.setText("Previews")

    def _show_preview(self, index: int) -> None:
        if not (0 <= index < len(self._previews)):
            return
        self._follow_latest = index == len(self._previews) - 1
        step, images, paths, captions = self._previews[index]
        if images is None:  # from disk: load once, when first shown
            images = [QImage(str(p)) for p in paths]
            self._previews[index] = (step, images, paths, captions)
        latest = " (latest)" if index == len(self._previews) - 1 else ""
        label = "untrained model" if step == 0 else f"step {step}"
        self.gallery_title.setText(f"Previews — {label}{latest}")
        self.gallery.set_images(images, captions)

    def _log(self, text: str) -> None:
        self.log.appendPlainText(text)

    def note(self, text: str) -> None:
        """A line in the run's message log from the window (e.g. what is queued next)."""
        self._log(text)

    def is_dark(self) -> bool:
        """Whether the palette is a dark one (light text on a dark background)."""
        pal = self.palette()
        return pal.color(QPalette.ColorRole.Base).lightness() < pal.color(QPalette.ColorRole.Text).lightness()

    def restyle(self) -> None:
        """Colour the charts from the palette again (the theme changed: light ↔ dark)."""
        if self._charts is not None:
            self._charts.restyle()


class _ChartSlot(QWidget):
    """Where the charts go: empty until the Train tab has first been painted, then the charts are
    made (just after that paint, so the window shows before pyqtgraph loads)."""

    def __init__(self, view: TrainView) -> None:
        super().__init__()
        self._view = view
        self._asked = False
        self.setMinimumHeight(160 + 70)
        QVBoxLayout(self).setContentsMargins(0, 0, 0, 0)

    def sizeHint(self) -> QSize:  # noqa: N802
        # What the charts ask for once made (pyqtgraph's plots), so the tab is laid out the same
        # before and after: nothing moves when they arrive.
        return super().sizeHint() if self._view.has_charts() else QSize(600, 612)

    def set_chart(self, chart: QWidget) -> None:
        self.layout().addWidget(chart)
        chart.show()  # a child added to a widget already on screen is not shown by itself

    def paintEvent(self, event: Any) -> None:  # noqa: N802
        super().paintEvent(event)
        if not self._asked and not self._view.has_charts():
            self._asked = True
            QTimer.singleShot(0, lambda: self._view.charts)
