"""The Train tab's charts: the loss (raw, smoothed, per phase, validation with its best step), a
0–1 chart for a GAN's discriminator accuracy and augmentation strength, and a small chart of the
learning rate or the speed under them. pyqtgraph (and numpy) load with this module, which the
Train tab imports only once the window is on screen (`TrainView.charts`), never at start-up.

`LossCharts` draws what its TrainView holds (`loss`, `series`, `val_steps`/`val_losses`,
`best_step`, `extra`): the view keeps the numbers, the charts only show them."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QVBoxLayout, QWidget

from transferstudio.qt.run_metrics import EXTRA_CHARTS

if TYPE_CHECKING:
    from transferstudio.ui.train_view import TrainView

SERIES_NAMES = {"loss: generator": "generator", "loss: discriminator": "discriminator",
                "loss: autoencoder": "reconstruction", "d_accuracy": "discriminator accuracy",
                "augment_p": "augmentation strength", "loss: your pictures": "your pictures",
                "loss: class pictures": "class pictures (prior)"}
SERIES_COLOURS = {"loss: discriminator": "#e07b39", "d_accuracy": "#e07b39", "augment_p": "#4c9f70",
                  "loss: class pictures": "#e07b39"}
UNCHARTED = {"d_real", "d_fake"}  # kept in metrics.jsonl; the accuracy says the same to a person
VALIDATION_COLOUR = "#8e44ad"
VALIDATION_COLOUR_DARK = "#c39bd3"  # the same purple, light enough to read on a dark chart


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


def is_dark(widget: QWidget) -> bool:
    """Whether the palette is a dark one (light text on a dark background)."""
    pal = widget.palette()
    return pal.color(QPalette.ColorRole.Base).lightness() < pal.color(QPalette.ColorRole.Text).lightness()


class LossCharts(QWidget):
    def __init__(self, view: "TrainView", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self._planned_total = 1  # the chart's step axis spans this while it is empty
        self._chart_empty = True
        self._log_scale = False

        # --- loss chart
        self.plot = pg.PlotWidget(axisItems={"bottom": StepAxis("bottom"), "left": LossAxis("left")})
        self.plot.setMinimumHeight(160)
        self._style_plot(self.plot)
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
        purple = self._validation_colour()
        self.val_curve = self.plot.plot(pen=pg.mkPen(purple, width=2), symbol="o", symbolSize=5,
                                        symbolBrush=purple, symbolPen=None)
        self.best_marker = pg.InfiniteLine(angle=90, movable=False,
                                           pen=pg.mkPen(purple, width=1, style=Qt.PenStyle.DashLine),
                                           label="best",  # at the foot: the legend covers the top
                                           labelOpts={"position": 0.08, "color": purple})
        self.best_marker.hide()
        self.plot.addItem(self.best_marker)
        # Models trained in phases (a GAN's generator and discriminator, a VAE with a discriminator)
        # get one smoothed curve per phase here, and the discriminator's accuracy and the
        # augmentation strength (0–1) on a second chart below.
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
        self.extra_curve = self.extra_plot.plot(pen=pg.mkPen(accent, width=2))

        c = QVBoxLayout(self)
        c.setContentsMargins(0, 0, 0, 0)
        c.setSpacing(2)
        # One width for the charts' value axes, so their step axes line up.
        width = self.fontMetrics().horizontalAdvance("0.00000") + self.fontMetrics().height() + 12
        for chart in (self.plot, self.signal_plot, self.extra_plot):
            chart.getPlotItem().getAxis("left").setWidth(width)
        c.addWidget(self.plot, 1)
        c.addWidget(self.signal_plot)
        c.addWidget(self.extra_plot)

    # --- drawing the view's numbers ------------------------------------------------------------
    def redraw(self) -> None:
        """Everything from the view's numbers (after a load, or when the charts are first made)."""
        self.redraw_loss()
        # Auto-range waits for the next paint; the small chart's step axis follows the loss chart's,
        # and its curve is clipped to it: take the ranges now.
        self.plot.getPlotItem().getViewBox().updateAutoRange()
        self.redraw_extra()

    def redraw_loss(self) -> None:
        v = self.view
        for name in v.series:  # a curve for each phase seen so far
            self._series_curve(name)
        for name in [n for n in self.series_curves if n not in v.series]:  # series cleared meanwhile
            chart = self.plot if name.startswith("loss: ") else self.signal_plot
            chart.getPlotItem().removeItem(self.series_curves.pop(name))
        phased = any(name.startswith("loss: ") for name in v.series)
        if phased == self.raw_curve.isVisible():  # the phases' own curves say it all
            legend = self.plot.getPlotItem().legend
            for curve, name in ((self.raw_curve, "loss"), (self.smooth_curve, "smoothed")):
                curve.setVisible(not phased)
                if phased:
                    legend.removeItem(curve)
                else:
                    legend.addItem(curve, name)
        self.raw_curve.setData(v.loss.steps, v.loss.losses)
        self.smooth_curve.setData(v.loss.steps, v.loss.smoothed)
        self.smooth_curve.setSymbol("o" if v.loss.n == 1 else None)  # one point draws no line
        if v.loss.n == 1:
            self.smooth_curve.setSymbolBrush(self.smooth_curve.opts["pen"].color())
        val_steps, val_losses = np.asarray(v.val_steps, dtype=np.float64), np.asarray(v.val_losses, dtype=np.float64)
        self.val_curve.setData(val_steps, val_losses)
        legend = self.plot.getPlotItem().legend
        listed = any(getattr(sample, "item", None) is self.val_curve for sample, _ in legend.items)
        if bool(len(val_steps)) != listed:  # named in the legend only when there is a validation split
            legend.addItem(self.val_curve, "validation") if len(val_steps) else legend.removeItem(self.val_curve)
        for name, curve in self.series_curves.items():
            curve.setData(v.series[name].steps, v.series[name].smoothed)
        self.best_marker.setVisible(v.best_step is not None and len(val_steps) > 1)
        if v.best_step is not None:
            self.best_marker.setValue(v.best_step)
        self._log_scale = self._losses_of_different_scales()
        self.plot.getPlotItem().setLogMode(y=self._log_scale)
        self.signal_plot.setVisible(any(not name.startswith("loss: ") for name in self.series_curves))
        self.fit_ranges()

    def redraw_extra(self) -> None:
        key = self.view.extra_key()
        self.extra_plot.setVisible(bool(key))
        if not key:
            return
        xs, ys = (np.asarray(values, dtype=np.float64) for values in self.view.extra[key])
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

    def set_planned_total(self, total: int) -> None:
        self._planned_total = max(1, int(total))
        if self._chart_empty:
            self.fit_ranges(force=True)

    def fit_ranges(self, force: bool = False) -> None:
        """An empty chart spans the planned steps and losses 0–1 (not pyqtgraph's 0.1 … 0.9 steps);
        one point or a flat line gets a readable span around it (auto-range would make it ±0.5, with
        negative steps and losses, or 15-digit ticks); from two steps on, auto-range takes over."""
        v = self.view
        phases = [n for n in v.series if n in self.series_curves and n.startswith("loss: ")]
        ys = [v.loss.losses, v.val_losses] + [v.series[n].smoothed for n in phases]
        xs = [v.loss.steps, v.val_steps] + [v.series[n].steps for n in phases]
        y = np.concatenate([np.asarray(a, dtype=np.float64) for a in ys])
        x = np.concatenate([np.asarray(a, dtype=np.float64) for a in xs])
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
        if self._log_scale:  # a log axis takes log10 values
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
        v = self.view
        levels = [float(np.median(b.smoothed)) for n, b in v.series.items() if n.startswith("loss: ") and b.n]
        if not levels and v.loss.n:
            levels.append(float(np.median(v.loss.smoothed)))
        if len(v.val_losses):  # the validation measure beside the losses (a GAN's is another kind)
            levels.append(float(np.median(np.asarray(v.val_losses, dtype=np.float64))))
        levels = [x for x in levels if x > 0 and math.isfinite(x)]
        return len(levels) > 1 and max(levels) / min(levels) >= 10

    def _series_curve(self, name: str) -> Any:
        curve = self.series_curves.get(name)
        if curve is None and name not in UNCHARTED:
            chart = self.plot if name.startswith("loss: ") else self.signal_plot
            colour = SERIES_COLOURS.get(name) or self.palette().color(QPalette.ColorRole.Highlight)
            curve = self.series_curves[name] = chart.plot(pen=pg.mkPen(colour, width=2),
                                                          name=SERIES_NAMES.get(name, name))
        return curve

    # --- colours -----------------------------------------------------------------------------------
    def _legend_brush(self) -> Any:
        """The chart's background, nearly opaque, behind the legend (curves pass under it)."""
        colour = self.palette().color(QPalette.ColorRole.Base)
        colour.setAlpha(220)
        return pg.mkBrush(colour)

    def _validation_colour(self) -> str:
        return VALIDATION_COLOUR_DARK if is_dark(self) else VALIDATION_COLOUR

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
        if self.view.loss.n == 1:
            self.smooth_curve.setSymbolBrush(accent)
        self.extra_curve.setPen(pg.mkPen(accent, width=2))
        purple = self._validation_colour()
        self.val_curve.setPen(pg.mkPen(purple, width=2))
        self.val_curve.setSymbolBrush(purple)
        self.best_marker.setPen(pg.mkPen(purple, width=1, style=Qt.PenStyle.DashLine))
        self.best_marker.label.setColor(purple)
        for name, curve in self.series_curves.items():
            if name not in SERIES_COLOURS:
                curve.setPen(pg.mkPen(accent, width=2))
        self.update()

    def _style_plot(self, plot: Any) -> None:
        # Follow the system palette (light or dark) instead of pyqtgraph's black default.
        pal = self.palette()
        plot.setBackground(pal.color(QPalette.ColorRole.Base))
        fg = pal.color(QPalette.ColorRole.Text)
        for name in ("left", "bottom"):
            axis = plot.getPlotItem().getAxis(name)
            axis.setPen(pg.mkPen(fg))
            axis.setTextPen(pg.mkPen(fg))
