"""The thumbnail grid of the Pictures tab: as many columns as the width takes, each picture as
decoded (never tinted: the person judges its colours), names cut in the middle to fit."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QObject, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from transferstudio.qt.thumbnails import THUMB_SIZE


class ThumbDelegate(QStyledItemDelegate):
    """One grid cell: the thumbnail exactly as decoded (never tinted: the person judges its colours)
    with the file name under it, cut in the middle to fit. The selected picture gets a frame in the
    highlight colour around it; the one under the mouse a thin neutral one."""

    FRAME = 3  # px of the selection frame
    PAD = 6  # px between the cell's edge and the thumbnail's frame

    def __init__(self, thumb: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.thumb = thumb

    def cell_size(self, metrics: Any) -> QSize:
        return QSize(self.thumb + 2 * self.PAD + 2 * self.FRAME,
                     self.thumb + 2 * self.PAD + 2 * self.FRAME + metrics.height() + 4)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        return self.cell_size(option.fontMetrics)

    def thumb_rect(self, cell: QRect) -> QRect:
        """Where the thumbnail is drawn inside a cell (the frame goes around it)."""
        left = cell.left() + (cell.width() - self.thumb) // 2
        return QRect(left, cell.top() + self.PAD + self.FRAME, self.thumb, self.thumb)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        painter.save()
        pal = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hovered = bool(option.state & QStyle.StateFlag.State_MouseOver)
        box = self.thumb_rect(option.rect)
        pix = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pix, QPixmap) and not pix.isNull():
            scaled = pix if pix.width() <= box.width() and pix.height() <= box.height() else pix.scaled(
                box.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
            painter.drawPixmap(box.left() + (box.width() - scaled.width()) // 2,
                               box.top() + (box.height() - scaled.height()) // 2, scaled)
        if selected or hovered:
            colour = pal.color(QPalette.ColorGroup.Active if option.state & QStyle.StateFlag.State_Active
                               else QPalette.ColorGroup.Inactive, QPalette.ColorRole.Highlight) \
                if selected else pal.color(QPalette.ColorRole.Mid)
            width = self.FRAME if selected else 1
            pen = QPen(colour, width)
            pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            half = width / 2
            painter.drawRect(QRectF(box).adjusted(-half - 1, -half - 1, half + 1, half + 1))
        name = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        text_rect = QRect(option.rect.left() + 2, box.bottom() + self.FRAME + 3, option.rect.width() - 4,
                          option.fontMetrics.height())
        font = QFont(option.font)
        font.setBold(selected)
        painter.setFont(font)
        metrics = QFontMetrics(font)
        painter.setPen(pal.color(QPalette.ColorRole.Text))
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                         metrics.elidedText(name, Qt.TextElideMode.ElideMiddle, text_rect.width()))
        painter.restore()


class ThumbView(QListView):
    """Icon grid with a hint painted when empty."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hint = ""

    def set_hint(self, text: str) -> None:
        self.hint = text
        self.viewport().update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802
        super().paintEvent(event)
        if self.model() is not None and self.model().rowCount() == 0 and self.hint:
            painter = QPainter(self.viewport())
            painter.setPen(self.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text))
            painter.drawText(self.viewport().rect().adjusted(20, 20, -20, -20),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.hint)
            painter.end()


def make_placeholder(palette: QPalette, size: int = THUMB_SIZE) -> QPixmap:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    colour = QColor(palette.color(QPalette.ColorRole.Mid))
    colour.setAlpha(90)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    painter.drawRoundedRect(8, 8, size - 16, size - 16, 6, 6)
    painter.end()
    return pix


def make_grid(model: Any, parent: QWidget | None = None) -> tuple[ThumbView, ThumbDelegate]:
    """A wrapping grid over `model`: as many columns as the width takes, names cut in the middle,
    whole in the tooltip; the selection is a frame, never a tint over the picture. Fast with
    thousands of rows (uniform sizes, batched layout, only painted rows ask for thumbnails)."""
    view = ThumbView(parent)
    view.setModel(model)
    view.setViewMode(QListView.ViewMode.IconMode)
    view.setMovement(QListView.Movement.Static)
    view.setResizeMode(QListView.ResizeMode.Adjust)
    view.setUniformItemSizes(True)  # no per-row size queries: fast with thousands
    view.setLayoutMode(QListView.LayoutMode.Batched)
    view.setBatchSize(500)
    view.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
    delegate = ThumbDelegate(THUMB_SIZE, view)
    view.setItemDelegate(delegate)
    view.setGridSize(delegate.cell_size(view.fontMetrics()))
    view.setFlow(QListView.Flow.LeftToRight)
    view.setWrapping(True)
    view.setSpacing(0)
    view.setMouseTracking(True)  # the hover frame
    view.setWordWrap(False)
    view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    view.setMinimumWidth(view.gridSize().width() + 24)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setDragEnabled(False)
    view.setAcceptDrops(False)
    view.viewport().setAcceptDrops(False)  # drops go to the panel
    view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
    return view, delegate
