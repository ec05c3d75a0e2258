"""The Train view: run controls, progress, a live loss chart and a gallery of previews.

The view owns the TrainingWorker of the current run. It shows a project's history from its
run folder (metrics.jsonl, previews/), so a reopened project shows what it trained before.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QImage, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QPlainTextEdit, QProgressBar,
                               QPushButton, QSizePolicy, QSlider, QSplitter, QVBoxLayout, QWidget)

from transferstudio.core.events import Failed, Finished, Stopped
from transferstudio.qt import history
from transferstudio.qt.workers import PreviewImages, TrainingWorker
from transferstudio.ui.widgets import ElidedLabel



def ema_weight(total_steps: int) -> float:
    """Smoothing of the loss line, averaging over ~1/20 of the run (5…100 steps): per-step
    diffusion loss is very noisy, but a fixed long window lags far behind a short run."""
    window = min(100.0, max(5.0, total_steps / 20))
    return 1.0 - 1.0 / window


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


class EtaEstimator:
    """Time left, from the wall-clock pace since the run started or last resumed: the time spent
    drawing previews and saving counts (it recurs), the time spent loading or paused does not.
    `reset()` at start, pause, resume and stop; `update()` answers None until a few steps and
    seconds have passed since then (the first steps after a (re)start are the slow ones)."""

    MIN_STEPS = 3
    MIN_SECONDS = 2.0

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._anchor: tuple[int, float] | None = None

    def update(self, step: int, total: int, now: float) -> float | None:
        if self._anchor is None or step < self._anchor[0]:
            self._anchor = (step, now)
            return None
        first, since = self._anchor
        done, elapsed = step - first, now - since
        if done < self.MIN_STEPS or elapsed < self.MIN_SECONDS:
            return None
        return max(0.0, (total - step) * elapsed / done)


class StepAxis(pg.AxisItem):
    """Steps are whole numbers: ticks only at integers, written as integers."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, float]]:  # noqa: N802, N803
        levels = [(spacing, offset) for spacing, offset in super().tickSpacing(minVal, maxVal, size)
                  if spacing >= 1 and float(spacing).is_integer()]
        return levels or [(1.0, 0.0)]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:  # noqa: N802
        return [str(int(round(v * scale))) for v in values]


class LossAxis(pg.AxisItem):
    """Loss values with as many decimals as the tick spacing needs, never more than four
    significant digits of difference (no "0.066400000000001")."""

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:  # noqa: N802
        if self.logMode:
            return super().tickStrings(values, scale, spacing)
        return [format_loss_tick(v * scale, spacing * scale) for v in values]


def format_loss_tick(value: float, spacing: float) -> str:
    if not math.isfinite(value):
        return ""
    if abs(value) < 1e-12:
        return "0"
    if abs(value) >= 10_000 or abs(value) < 1e-4:
        return f"{value:.3g}"
    places = 0 if spacing <= 0 or spacing >= 1 else math.ceil(-math.log10(spacing) - 1e-9)
    magnitude = math.floor(math.log10(abs(value)))  # digits before the point
    places = min(places, max(0, 3 - magnitude))  # at most four significant digits
    return f"{value:.{places}f}"


_SERIES_NAMES = {"loss: generator": "generator", "loss: discriminator": "discriminator",
                 "loss: autoencoder": "reconstruction", "d_accuracy": "discriminator accuracy",
                 "augment_p": "augmentation strength", "loss: your pictures": "your pictures",
                 "loss: class pictures": "class pictures (prior)"}
_SERIES_COLOURS = {"loss: discriminator": "#e07b39", "d_accuracy": "#e07b39", "augment_p": "#4c9f70",
                   "loss: class pictures": "#e07b39"}
VALIDATION_COLOUR = "#8e44ad"
VALIDATION_COLOUR_DARK = "#c39bd3"  # the same purple, light enough to read on a dark chart
# The small chart under the loss: what it can show (key in the run's numbers, menu text, axis label).
EXTRA_CHARTS = (("lr", "Learning rate", "lr"), ("images/s", "Images per second", "images/s"),
                ("", "Nothing", ""))
_UNCHARTED = {"d_real", "d_fake"}  # kept in metrics.jsonl; the accuracy says the same to a person


class LossBuffer:
    """Growing numpy buffers of (step, loss, smoothed loss) with amortised appends."""

    def __init__(self) -> None:
        self.weight = ema_weight(500)
        self.clear()

    def clear(self, total_steps: int | None = None) -> None:
        if total_steps:
            self.weight = ema_weight(total_steps)
        self._x = np.empty(1024)
        self._y = np.empty(1024)
        self._s = np.empty(1024)
        self.n = 0
        self._ema = 0.0
        self._weight = 0.0  # for the start-up bias correction of the EMA

    def extend(self, steps: Any, losses: Any) -> None:
        steps = np.asarray(steps, dtype=np.float64)
        losses = np.asarray(losses, dtype=np.float64)
        need = self.n + len(steps)
        if need > len(self._x):
            size = max(need, 2 * len(self._x))
            self._x, self._y, self._s = (np.resize(a, size) for a in (self._x, self._y, self._s))
        for i, (x, y) in enumerate(zip(steps, losses)):
            if math.isfinite(y):
                self._ema = self.weight * self._ema + (1 - self.weight) * y
                self._weight = self.weight * self._weight + (1 - self.weight)
            j = self.n + i
            self._x[j], self._y[j] = x, y
            self._s[j] = self._ema / self._weight if self._weight else y
        self.n = need

    @property
    def steps(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def losses(self) -> np.ndarray:
        return self._y[: self.n]

    @property
    def smoothed(self) -> np.ndarray:
        return self._s[: self.n]


class PreviewGrid(QWidget):
    """Paints one step's samples as large as the space allows, captioned by seed (and prompt)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmaps: list[QPixmap] = []
        self._captions: list[str] = []
        self._placeholder = "Previews appear here while training."
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 160)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(600, 400)

    def set_images(self, images: list[QImage], captions: list[str]) -> None:
        self._pixmaps = [QPixmap.fromImage(i) for i in images]  # GUI thread only
        self._captions = captions
        self.update()

    def clear(self, placeholder: str | None = None) -> None:
        self._pixmaps, self._captions = [], []
        if placeholder is not None:
            self._placeholder = placeholder
        self.update()

    def image_count(self) -> int:
        return len(self._pixmaps)

    def paintEvent(self, event: Any) -> None:  # noqa: N802
        painter = QPainter(self)
        rect = self.rect()
        if not self._pixmaps:
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self._placeholder)
            return
        n = len(self._pixmaps)
        text_h = self.fontMetrics().height() + 4
        gap = 8
        # Choose the column count that gives the biggest tiles.
        best = (0.0, 1)
        for cols in range(1, n + 1):
            rows = math.ceil(n / cols)
            w = (rect.width() - gap * (cols + 1)) / cols
            h = (rect.height() - gap * (rows + 1)) / rows - text_h
            side = min(w, h)
            if side > best[0]:
                best = (side, cols)
        side, cols = best
        if side <= 4:
            return
        rows = math.ceil(n / cols)
        x0 = (rect.width() - (cols * side + (cols - 1) * gap)) / 2
        y0 = gap  # top-aligned, right under the gallery's title
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        for i, pix in enumerate(self._pixmaps):
            r, c = divmod(i, cols)
            x = x0 + c * (side + gap)
            y = y0 + r * (side + text_h + gap)
            # Small model outputs stay crisp (nearest neighbour); large ones are smoothed.
            small = pix.width() * 2 <= side
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, not small)
            scale = min(side / pix.width(), side / pix.height())
            w, h = pix.width() * scale, pix.height() * scale
            painter.drawPixmap(QRectF(x + (side - w) / 2, y + (side - h) / 2, w, h), pix,
                               QRectF(pix.rect()))
            caption = self.fontMetrics().elidedText(self._captions[i] if i < len(self._captions) else "",
                                                    Qt.TextElideMode.ElideRight, int(side))
            painter.drawText(QRectF(x, y + side + 2, side, text_h), Qt.AlignmentFlag.AlignHCenter, caption)


class TrainView(QWidget):
    start_requested = Signal()  # the window decides: continue the last run or start fresh
    running_changed = Signal(bool)
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
        self._chart_empty = True

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

        # --- loss chart
        self.plot = pg.PlotWidget(axisItems={"bottom": StepAxis("bottom"), "left": LossAxis("left")})
        self.plot.setMinimumHeight(160)
        self._style_plot()
        item = self.plot.getPlotItem()
        item.setLabel("bottom", "step")
        item.setLabel("left", "loss")
        item.showGrid(x=True, y=True, alpha=0.2)
        item.getAxis("left").enableAutoSIPrefix(False)  # "loss (x0.001)" made 0.066 read as 66
        item.addLegend(offset=(-10, 10), brush=self._legend_brush())
        # Thousands of points stay smooth: draw only what is visible, peak-downsampled.
        item.setDownsampling(auto=True, mode="peak")
        item.setClipToView(True)
        item.getViewBox().setLimits(xMin=-0.5)  # no negative steps (auto-range pads), step 0 whole
        accent = self.palette().color(QPalette.ColorRole.Highlight)
        raw = pg.mkColor(accent)
        raw.setAlpha(70)
        self.raw_curve = self.plot.plot(pen=pg.mkPen(raw, width=1), name="loss")
        self.smooth_curve = self.plot.plot(pen=pg.mkPen(accent, width=2), name="smoothed")
        # The loss on held-out pictures (never trained on), measured every few steps, and its lowest
        # point: where it turns up while the training loss keeps falling, the model is overfitting.
        self.val_steps, self.val_losses = np.zeros(0), np.zeros(0)
        purple = self._validation_colour()
        self.val_curve = self.plot.plot(pen=pg.mkPen(purple, width=2), symbol="o", symbolSize=5,
                                        symbolBrush=purple, symbolPen=None)
        self.best_marker = pg.InfiniteLine(angle=90, movable=False,
                                           pen=pg.mkPen(purple, width=1, style=Qt.PenStyle.DashLine),
                                           label="best",  # at the foot: the legend covers the top
                                           labelOpts={"position": 0.08, "color": purple})
        self.best_marker.hide()
        self.plot.addItem(self.best_marker)
        self.best_step: int | None = None
        # Models trained in phases (a GAN's generator and discriminator, a VAE with a discriminator)
        # get one smoothed curve per phase here, and the discriminator's accuracy and the
        # augmentation strength (0–1) on a second chart below.
        self.series: dict[str, LossBuffer] = {}
        self.series_curves: dict[str, Any] = {}
        self.signal_plot = pg.PlotWidget(axisItems={"bottom": StepAxis("bottom")})
        self.signal_plot.setMinimumHeight(90)
        self.signal_plot.setMaximumHeight(150)
        self._style_plot(self.signal_plot)
        signal_item = self.signal_plot.getPlotItem()
        signal_item.setLabel("left", "0 – 1")
        signal_item.showGrid(x=True, y=True, alpha=0.2)
        signal_item.addLegend(offset=(-10, 5), brush=self._legend_brush())
        signal_item.setYRange(0, 1, padding=0.05)
        signal_item.setXLink(self.plot.getPlotItem())
        self.signal_plot.setToolTip("Discriminator accuracy: how often it tells your pictures from generated ones. "
                                    "Near 100% for long means it is memorising your pictures (more augmentation, "
                                    "FreezeD or fewer steps help); near 50% means it cannot tell them apart.")
        self.signal_plot.hide()

        # The learning rate or the speed, on a small chart under the loss (same steps).
        self.extra: dict[str, tuple[list[float], list[float]]] = {"lr": ([], []), "images/s": ([], [])}
        self._live_rates: dict[int, float] = {}  # images/s a live run reported (not in metrics.jsonl)
        self.run_dir: Path | None = None  # whose numbers the charts show
        self.extra_plot = pg.PlotWidget(axisItems={"bottom": StepAxis("bottom"), "left": LossAxis("left")})
        self.extra_plot.setMinimumHeight(70)
        self.extra_plot.setMaximumHeight(130)
        self._style_plot(self.extra_plot)
        extra_item = self.extra_plot.getPlotItem()
        extra_item.showGrid(x=True, y=True, alpha=0.2)
        extra_item.getAxis("left").enableAutoSIPrefix(False)  # 0.0005, not "(x1e-06)" 500
        extra_item.setXLink(self.plot.getPlotItem())
        extra_item.getViewBox().enableAutoRange(x=False)  # the steps the loss chart shows
        extra_item.setDownsampling(auto=True, mode="peak")
        extra_item.setClipToView(True)
        self.extra_curve = self.extra_plot.plot(pen=pg.mkPen(self.palette().color(QPalette.ColorRole.Highlight),
                                                             width=2))
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
        # One width for the charts' value axes, so their step axes line up.
        width = self.fontMetrics().horizontalAdvance("0.00000") + self.fontMetrics().height() + 12
        for chart in (self.plot, self.signal_plot, self.extra_plot):
            chart.getPlotItem().getAxis("left").setWidth(width)
        c.addWidget(self.plot, 1)
        c.addWidget(self.signal_plot)
        c.addWidget(self.extra_plot)
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
        self._fit_ranges(force=True)

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
        self.raw_curve.setData([], [])
        self.smooth_curve.setData([], [])
        self.val_steps, self.val_losses = np.zeros(0), np.zeros(0)
        self.val_curve.setData([], [])
        self._show_best(None)
        self._clear_series()
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
        self._clear_series()
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
        keep = self.val_steps < event.step  # a resumed run measures its first step again
        self.val_steps = np.append(self.val_steps[keep], event.step)
        self.val_losses = np.append(self.val_losses[keep], event.loss)
        self._show_best((event.best_step, event.best_loss))
        self._redraw_loss()

    def _show_best(self, best: tuple[int, float] | None) -> None:
        self.best_step = best[0] if best is not None else None
        self.best_marker.setVisible(best is not None and len(self.val_steps) > 1)
        if best is None:
            self.validation_label.clear()
            return
        self.best_marker.setValue(best[0])
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
        was = self.is_running()
        self._state = state
        self._update_buttons()
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
        phased = any(name.startswith("loss: ") for name in self.series)
        if phased == self.raw_curve.isVisible():  # the phases' own curves say it all
            legend = self.plot.getPlotItem().legend
            for curve, name in ((self.raw_curve, "loss"), (self.smooth_curve, "smoothed")):
                curve.setVisible(not phased)
                if phased:
                    legend.removeItem(curve)
                else:
                    legend.addItem(curve, name)
        self.raw_curve.setData(self.loss.steps, self.loss.losses)
        self.smooth_curve.setData(self.loss.steps, self.loss.smoothed)
        self.smooth_curve.setSymbol("o" if self.loss.n == 1 else None)  # one point draws no line
        if self.loss.n == 1:
            self.smooth_curve.setSymbolBrush(self.smooth_curve.opts["pen"].color())
        self.val_curve.setData(self.val_steps, self.val_losses)
        legend = self.plot.getPlotItem().legend
        listed = any(getattr(sample, "item", None) is self.val_curve for sample, _ in legend.items)
        if bool(len(self.val_steps)) != listed:  # named in the legend only when there is a validation split
            legend.addItem(self.val_curve, "validation") if len(self.val_steps) else legend.removeItem(self.val_curve)
        for name, curve in self.series_curves.items():
            curve.setData(self.series[name].steps, self.series[name].smoothed)
        self._log_scale = self._losses_of_different_scales()
        self.plot.getPlotItem().setLogMode(y=self._log_scale)
        self.signal_plot.setVisible(any(not name.startswith("loss: ") for name in self.series_curves))
        self._fit_ranges()

    def extra_key(self) -> str:
        """What the small chart shows: "lr", "images/s" or "" (nothing)."""
        return str(self.extra_choice.currentData() or "")

    def set_extra_chart(self, key: str) -> None:
        self.extra_choice.setCurrentIndex(max(0, self.extra_choice.findData(key)))

    def _redraw_extra(self, *_: Any) -> None:
        self.export_csv_button.setEnabled(self.run_dir is not None)
        key = self.extra_key()
        self.extra_plot.setVisible(bool(key))
        if not key:
            return
        xs, ys = (np.asarray(v, dtype=np.float64) for v in self.extra[key])
        keep = np.isfinite(ys)
        xs, ys = xs[keep], ys[keep]
        self.extra_curve.setData(xs, ys)
        view = self.extra_plot.getPlotItem().getViewBox()
        if ys.size and float(ys.max() - ys.min()) > 1e-9 * max(1e-12, float(np.abs(ys).max())):
            view.enableAutoRange(y=True)
        else:  # nothing yet, or a constant learning rate: from 0 to a little above it (not ±0.5)
            top = float(np.abs(ys).max()) * 1.25 if ys.size and np.abs(ys).max() > 0 else 1.0
            self.extra_plot.setYRange(min(0.0, float(ys.min())) if ys.size else 0.0, top, padding=0)
        label = next(axis for k, _t, axis in EXTRA_CHARTS if k == key)
        self.extra_plot.getPlotItem().setLabel("left", label)

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
        if self._chart_empty:
            self._fit_ranges(force=True)

    def _fit_ranges(self, force: bool = False) -> None:
        """An empty chart spans the planned steps and losses 0–1 (not pyqtgraph's 0.1 … 0.9 steps);
        one point or a flat line gets a readable span around it (auto-range would make it ±0.5, with
        negative steps and losses, or 15-digit ticks); from two steps on, auto-range takes over."""
        ys = [self.loss.losses, self.val_losses] + [b.smoothed for n, b in self.series.items()
                                                    if n in self.series_curves and n.startswith("loss: ")]
        xs = [self.loss.steps, self.val_steps] + [b.steps for n, b in self.series.items()
                                                  if n in self.series_curves and n.startswith("loss: ")]
        y = np.concatenate([np.asarray(v, dtype=np.float64) for v in ys])
        x = np.concatenate([np.asarray(v, dtype=np.float64) for v in xs])
        y = y[np.isfinite(y)]
        view = self.plot.getPlotItem().getViewBox()
        if y.size == 0:
            mode = "empty"
        elif x.max() - x.min() < 2 or y.max() - y.min() <= 1e-9 * max(1.0, float(np.abs(y).max())):
            mode = "few"
        else:
            mode = "auto"
        if mode == "auto":
            if self._chart_empty or force:  # hand the ranges back to auto-range once
                view.enableAutoRange()
            self._chart_empty = False
            return
        self._chart_empty = True
        if mode == "empty":
            self.plot.setXRange(0, max(4, self._planned_total), padding=0.02)
            self.plot.setYRange(0, 1, padding=0.02)
            return
        self.plot.setXRange(max(0.0, float(x.min()) - 2), float(x.max()) + 2, padding=0)
        if getattr(self, "_log_scale", False):  # a log axis takes log10 values
            y = np.log10(y[y > 0]) if np.any(y > 0) else np.zeros(1)
            self.plot.setYRange(float(y.min()) - 0.1, float(y.max()) + 0.1, padding=0)
            return
        level = max(float(np.abs(y).max()), 1e-6)
        low, high = float(y.min()) - 0.1 * level, float(y.max()) + 0.1 * level
        if float(y.min()) >= 0:
            low = max(0.0, low)  # a loss is not negative
        self.plot.setYRange(low, high, padding=0)

    def _losses_of_different_scales(self) -> bool:
        """Phases whose losses differ tenfold or more (a VAE's reconstruction beside its
        discriminator) share the chart on a log scale, so both stay readable."""
        levels = [float(np.median(b.smoothed)) for n, b in self.series.items() if n.startswith("loss: ") and b.n]
        if not levels and self.loss.n:
            levels.append(float(np.median(self.loss.smoothed)))
        if len(self.val_losses):  # the validation measure beside the losses (a GAN's is another kind)
            levels.append(float(np.median(self.val_losses)))
        levels = [v for v in levels if v > 0 and math.isfinite(v)]
        return len(levels) > 1 and max(levels) / min(levels) >= 10

    def _series_buffer(self, name: str, total_steps: int | None) -> "LossBuffer":
        buffer = self.series.get(name)
        if buffer is None:
            buffer = self.series[name] = LossBuffer()
            buffer.clear(total_steps)
            chart = self.plot if name.startswith("loss: ") else self.signal_plot
            if name in _UNCHARTED:
                return buffer
            colour = _SERIES_COLOURS.get(name) or self.palette().color(QPalette.ColorRole.Highlight)
            self.series_curves[name] = chart.plot(pen=pg.mkPen(colour, width=2), name=_SERIES_NAMES.get(name, name))
        return buffer

    def _clear_series(self) -> None:
        for name, curve in self.series_curves.items():
            chart = self.plot if name.startswith("loss: ") else self.signal_plot
            chart.getPlotItem().removeItem(curve)
        self.series.clear()
        self.series_curves.clear()
        self.signal_plot.hide()

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

    def _legend_brush(self) -> Any:
        """The chart's background, nearly opaque, behind the legend (curves pass under it)."""
        colour = self.palette().color(QPalette.ColorRole.Base)
        colour.setAlpha(220)
        return pg.mkBrush(colour)

    def is_dark(self) -> bool:
        """Whether the palette is a dark one (light text on a dark background)."""
        pal = self.palette()
        return pal.color(QPalette.ColorRole.Base).lightness() < pal.color(QPalette.ColorRole.Text).lightness()

    def _validation_colour(self) -> str:
        return VALIDATION_COLOUR_DARK if self.is_dark() else VALIDATION_COLOUR

    def changeEvent(self, event: Any) -> None:  # noqa: N802
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange) and \
                hasattr(self, "extra_curve"):
            self.restyle()

    def restyle(self) -> None:
        """Colour the charts from the palette again (the theme changed: light ↔ dark)."""
        pal = self.palette()
        accent = pal.color(QPalette.ColorRole.Highlight)
        raw = pg.mkColor(accent)
        raw.setAlpha(70)
        for plot in (self.plot, self.signal_plot, self.extra_plot):
            self._style_plot(plot)
            legend = plot.getPlotItem().legend
            if legend is not None:
                legend.setBrush(self._legend_brush())
                legend.setLabelTextColor(pal.color(QPalette.ColorRole.Text))
        self.raw_curve.setPen(pg.mkPen(raw, width=1))
        self.smooth_curve.setPen(pg.mkPen(accent, width=2))
        if self.loss.n == 1:
            self.smooth_curve.setSymbolBrush(accent)
        self.extra_curve.setPen(pg.mkPen(accent, width=2))
        purple = self._validation_colour()
        self.val_curve.setPen(pg.mkPen(purple, width=2))
        self.val_curve.setSymbolBrush(purple)
        self.best_marker.setPen(pg.mkPen(purple, width=1, style=Qt.PenStyle.DashLine))
        self.best_marker.label.setColor(purple)
        for name, curve in self.series_curves.items():
            if name not in _SERIES_COLOURS:
                curve.setPen(pg.mkPen(accent, width=2))
        self.update()

    def _style_plot(self, plot: Any = None) -> None:
        # Follow the system palette (light or dark) instead of pyqtgraph's black default.
        plot = plot or self.plot
        pal = self.palette()
        plot.setBackground(pal.color(QPalette.ColorRole.Base))
        fg = pal.color(QPalette.ColorRole.Text)
        for name in ("left", "bottom"):
            axis = plot.getPlotItem().getAxis(name)
            axis.setPen(pg.mkPen(fg))
            axis.setTextPen(pg.mkPen(fg))
