"""Small shared widgets: a path picker and message labels. Qt and stdlib only (no torch)."""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

# The only hard-coded colours: everything else follows the system palette (dark or light).
ERROR_RED = "#d83b3b"
WARNING_ORANGE = "#d9822b"
OK_GREEN = "#3f9c4a"

SAFETENSORS_FILTER = "Model weights (*.safetensors);;All files (*)"


def human_bytes(n: int | float | None) -> str:
    if n is None or n < 0:
        return "—"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def nearest_existing_dir(path: str | os.PathLike | None) -> str:
    """Where a file dialog should open: the path itself or its closest existing parent."""
    if not path:
        return str(Path.home())
    p = Path(path).expanduser()
    for candidate in (p, *p.parents):
        if candidate.is_dir():
            return str(candidate)
    return str(Path.home())


class MessageLabel(QLabel):
    """A wrapping label for a one-line status: plain, muted, warning or error."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self._level = "plain"
        self.setVisible(bool(text))

    def level(self) -> str:
        return self._level

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802
        super().changeEvent(event)
        # The user switched light/dark: recompute the muted tone from the new palette.
        if theme_changed(self, event) and self._level in ("plain", "muted"):
            self.show_message(self.text(), self._level)

    def show_message(self, text: str, level: str = "plain") -> None:
        """level: plain | muted | ok | warning | error. Empty text hides the label."""
        self._level = level
        paint_level(self, level)
        self.setText(text)
        self.setVisible(bool(text))


def theme_changed(widget: QWidget, event: QEvent) -> bool:
    """Whether `event` says the application's palette changed (light ↔ dark) under a widget that set
    its own text colour (it gets a PaletteChange, not the ApplicationPaletteChange). False for the
    change the widget's own colour causes, so recolouring does not recurse."""
    if event.type() not in (QEvent.Type.ApplicationPaletteChange, QEvent.Type.PaletteChange):
        return False
    wanted = QApplication.palette(widget).color(QPalette.ColorRole.Window)
    seen = widget.property("_themed_window")
    widget.setProperty("_themed_window", wanted.name())
    return seen is not None and seen != wanted.name()


def paint_level(label: QWidget, level: str) -> None:
    """Give `label` the text colour of `level`, noting the theme it was painted for (theme_changed)."""
    label.setProperty("_themed_window", QApplication.palette(label).color(QPalette.ColorRole.Window).name())
    pal = label.palette()
    pal.setColor(QPalette.ColorRole.WindowText, level_colour(label, level))
    label.setPalette(pal)


def level_colour(widget: QWidget, level: str) -> QColor:
    """The text colour of a message level (plain | muted | ok | warning | error) in `widget`."""
    colour = {"error": QColor(ERROR_RED), "warning": QColor(WARNING_ORANGE), "ok": QColor(OK_GREEN)}.get(level)
    if colour is not None:
        return colour
    parent = widget.parentWidget()
    # The parent's palette where it has its own; else the application's, which is already the new one
    # while a theme change reaches the widgets (a parent may get the news after its children).
    parent_pal = (parent.palette() if parent is not None and parent.testAttribute(Qt.WidgetAttribute.WA_SetPalette)
                  else QApplication.palette(widget))
    colour = parent_pal.color(QPalette.ColorRole.WindowText)
    if level == "muted":  # halfway to the background: quieter, still readable
        bg = parent_pal.color(QPalette.ColorRole.Window)
        colour = QColor((colour.red() * 3 + bg.red() * 2) // 5, (colour.green() * 3 + bg.green() * 2) // 5,
                        (colour.blue() * 3 + bg.blue() * 2) // 5)
    return colour


class ElidedLabel(QLabel):
    """A one-line label that never asks for more room than it gets: a long text is cut with "…"
    and shown whole in the tooltip. Its text changing never widens a row or the window."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(0)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt naming)
        self._full = text or ""
        self.setToolTip(self._full)
        self._elide()

    def text(self) -> str:  # the whole text, not the cut one on screen
        return self._full

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(0, super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(self.fontMetrics().horizontalAdvance(self._full) + 4, super().sizeHint().height())

    def resizeEvent(self, event: QEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(0, self.width() - 2))
        super().setText(shown)


class HintLine(ElidedLabel):
    """A one-line hint, warning or error (MessageLabel's levels) under a field or beside a figure.
    Empty, it keeps its height, so what is below it never moves while someone types."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("", parent)
        self._level = "plain"
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(self.fontMetrics().lineSpacing() + 2)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def level(self) -> str:
        return self._level

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802
        super().changeEvent(event)
        # The theme changed (light ↔ dark): the plain and muted tones come from the new palette.
        if theme_changed(self, event) and self._level in ("plain", "muted"):
            self.show_message(self.text(), self._level, self.toolTip() if self.toolTip() != self.text() else "")

    def show_message(self, text: str, level: str = "plain", details: str = "") -> None:
        """The line (cut with "…" when long), and in its tooltip the whole of it, or `details`."""
        self._level = level
        paint_level(self, level)
        self.setText(text)
        if details:
            self.setToolTip(details)


class PathPicker(QWidget):
    """A path field with "Choose folder…" and/or "Choose file…" buttons; accepts drops too.

    `path_changed(str)` fires when the user picks, drops, or finishes typing a path.
    """

    path_changed = Signal(str)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        folders: bool = True,
        files: bool = False,
        file_filter: str = SAFETENSORS_FILTER,
        placeholder: str = "",
        dialog_title: str = "",
    ) -> None:
        super().__init__(parent)
        self._file_filter = file_filter
        self._dialog_title = dialog_title
        self._folders = folders
        self._files = files
        self._last_emitted = ""

        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        self.edit.editingFinished.connect(self._typed)
        self.edit.textChanged.connect(self._text_changed)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        self.folder_button = QPushButton("Choose folder…", self)
        self.folder_button.clicked.connect(self.browse_folder)
        self.folder_button.setVisible(folders)
        layout.addWidget(self.folder_button)
        self.file_button = QPushButton("Choose file…", self)
        self.file_button.clicked.connect(self.browse_file)
        self.file_button.setVisible(files)
        layout.addWidget(self.file_button)
        self.setAcceptDrops(True)

    # --- API --------------------------------------------------------------------
    def path(self) -> str:
        text = self.edit.text().strip()
        return str(Path(text).expanduser()) if text else ""

    def set_path(self, path: str | os.PathLike | None) -> None:
        """Show `path` without emitting `path_changed` (it came from the program)."""
        text = str(path) if path else ""
        self._last_emitted = text
        self.edit.setText(text)
        self.edit.setCursorPosition(0)  # the start of a long path says more than its end

    def setReadOnly(self, read_only: bool) -> None:  # noqa: N802 (Qt naming)
        self.edit.setReadOnly(read_only)
        self.folder_button.setEnabled(not read_only)
        self.file_button.setEnabled(not read_only)

    # --- user actions -------------------------------------------------------------
    def browse_folder(self) -> None:
        chosen = QFileDialog.getExistingDirectory(
            self, self._dialog_title or "Choose a folder", nearest_existing_dir(self.path())
        )
        if chosen:
            self._choose(chosen)

    def browse_file(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(
            self, self._dialog_title or "Choose a file", nearest_existing_dir(self.path()),
            self._file_filter,
        )
        if chosen:
            self._choose(chosen)

    def _choose(self, path: str) -> None:
        path = os.path.normpath(path)
        self.edit.setText(path)
        self.edit.setCursorPosition(0)
        self._emit(path)

    def _typed(self) -> None:
        self._emit(self.path())

    def _emit(self, path: str) -> None:
        if path != self._last_emitted:
            self._last_emitted = path
            self.path_changed.emit(path)

    def _text_changed(self, _text: str) -> None:
        self.edit.setToolTip(self.edit.text())  # long paths are cut off; hover shows all

    # --- drag and drop ----------------------------------------------------------------
    def _dropped_path(self, event: QDragEnterEvent | QDropEvent) -> str | None:
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        if len(urls) != 1 or not urls[0].isLocalFile():
            return None
        local = urls[0].toLocalFile()
        if (self._folders and os.path.isdir(local)) or (self._files and os.path.isfile(local)):
            return local
        return None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if self._dropped_path(event) and not self.edit.isReadOnly():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        path = self._dropped_path(event)
        if path and not self.edit.isReadOnly():
            event.acceptProposedAction()
            self._choose(path)
