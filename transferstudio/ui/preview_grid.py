"""One step's pictures, painted as large as the space allows and captioned (by seed and prompt):
the Train tab's previews and both sides of Compare."""
from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QImage, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget


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
