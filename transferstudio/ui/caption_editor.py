"""The selected picture under the grid: a preview, its name and size, and its caption editor
(for models that take prompts) with what training will really read ("Trained as: …").

The caption is saved when the field loses focus, on Ctrl+S, when another picture is chosen, and
shortly after typing stops — through `qt.pictures.save_caption`, never written here."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QFocusEvent, QKeyEvent, QKeySequence, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from transferstudio.qt.pictures import caption_path, load_caption, save_caption
from transferstudio.qt.thumbnails import THUMB_SIZE
from transferstudio.ui.widgets import MessageLabel

if TYPE_CHECKING:
    from transferstudio.data.scan import ImageRecord

AUTOSAVE_MS = 1500  # an edit is on disk soon even without leaving the field


class CaptionEdit(QPlainTextEdit):
    focus_lost = Signal()
    save_requested = Signal()

    def event(self, event: QEvent) -> bool:
        # Claim Ctrl+S while typing, so a window-wide "Save" shortcut cannot make it ambiguous.
        if event.type() == QEvent.Type.ShortcutOverride and event.matches(QKeySequence.StandardKey.Save):
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.matches(QKeySequence.StandardKey.Save):
            self.save_requested.emit()
            event.accept()
            return
        super().keyPressEvent(event)

    def focusOutEvent(self, event: QFocusEvent) -> None:  # noqa: N802
        super().focusOutEvent(event)
        self.focus_lost.emit()


class PictureDetails(QWidget):
    """`saved(path, record)`: the caption file written and the record with its new caption."""

    saved = Signal(str, object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.record: ImageRecord | None = None
        self._trigger = ""
        self._captions_enabled = True
        self._loaded = ""  # what the editor showed when loaded or last saved
        self._error = False

        self.preview = QLabel()
        self.preview.setFixedSize(THUMB_SIZE, THUMB_SIZE)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_name = QLabel()
        self.image_name.setWordWrap(True)
        self.image_name.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        name_font = self.image_name.font()
        name_font.setBold(True)
        self.image_name.setFont(name_font)
        self.image_info = MessageLabel()

        self.caption_edit = CaptionEdit()
        self.caption_edit.setPlaceholderText("Describe this image (saved next to it as a .txt file).")
        self.caption_edit.setTabChangesFocus(True)
        self.caption_edit.setToolTip(
            "The caption for this image, saved as a .txt file with the same name. "
            "Saved when you leave the field, press Ctrl+S, or pick another image.")
        self.caption_edit.setMinimumHeight(self.fontMetrics().lineSpacing() * 3 + 12)
        self.caption_edit.focus_lost.connect(self.save)
        self.caption_edit.textChanged.connect(self._typed)
        self.caption_edit.save_requested.connect(self.save)
        self._autosave = QTimer(self)
        self._autosave.setObjectName("caption_autosave")
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(AUTOSAVE_MS)
        self._autosave.timeout.connect(self.save)
        self.caption_status = MessageLabel()
        self.trained_as = MessageLabel()
        self.trained_as.setTextFormat(Qt.TextFormat.PlainText)
        self.trained_as.setToolTip("The caption exactly as training will use it.")
        self.no_captions = MessageLabel()  # for models without prompts, instead of the caption editor

        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)
        col = QVBoxLayout()
        col.addWidget(self.image_name)
        col.addWidget(self.image_info)
        self.caption_title = QLabel("&Caption")
        self.caption_title.setBuddy(self.caption_edit)
        col.addWidget(self.caption_title)
        col.addWidget(self.caption_edit, 1)
        col.addWidget(self.caption_status)
        col.addWidget(self.trained_as)
        col.addWidget(self.no_captions)
        col.addStretch(0)
        row.addLayout(col, 1)

    # --- what is shown -----------------------------------------------------------------------
    def show_record(self, record: ImageRecord | None) -> None:
        """Show a picture (None: none) with its caption file as it is on disk now."""
        self._autosave.stop()
        self.record = record
        text, exists = load_caption(record.path) if record is not None else ("", False)
        self._loaded = text
        self.caption_edit.blockSignals(True)
        self.caption_edit.setPlainText(text)
        self.caption_edit.blockSignals(False)
        if record is None:
            self.image_name.setText("")
            self.image_info.show_message("")
            self.preview.clear()
            self.caption_status.show_message("")
        else:
            self.image_name.setText(record.path.name)
            self.image_name.setToolTip(str(record.path))
            self._show_file_status(exists)
        self._update_trained_as()

    def set_preview(self, pixmap: Any) -> None:
        self.preview.setPixmap(pixmap if isinstance(pixmap, QPixmap) else QPixmap())

    def set_info(self, text: str) -> None:
        self.image_info.show_message(text, "muted")

    def set_trigger(self, trigger: str) -> None:
        self._trigger = trigger
        self._update_trained_as()

    def set_captions_enabled(self, enabled: bool) -> None:
        """Captions are for models that take prompts; for the others the editor and "Trained as"
        are hidden and one line says so."""
        self._captions_enabled = bool(enabled)
        for widget in (self.caption_title, self.caption_edit):
            widget.setVisible(self._captions_enabled)
        self.no_captions.show_message("" if self._captions_enabled else
                                      "This model does not take prompts: captions are not used.", "muted")
        self._update_trained_as()
        if self.record is not None and not self.has_unsaved():
            self._show_file_status(caption_path(self.record.path).exists())

    # --- saving ------------------------------------------------------------------------------
    def has_unsaved(self) -> bool:
        return self.record is not None and self.caption_edit.toPlainText() != self._loaded

    def save(self) -> bool:
        """Write the edited caption (atomically). True if nothing is left unsaved. On failure the
        text stays in the editor with a red message."""
        self._autosave.stop()
        if not self.has_unsaved():
            return True
        record = self.record
        assert record is not None
        text = self.caption_edit.toPlainText()
        try:
            target, updated = save_caption(record, text)
        except OSError as exc:
            self._error = True
            self.caption_status.show_message(f"Could not save {caption_path(record.path).name}: "
                                             f"{exc.strerror or exc}. Your text is kept here.", "error")
            return False
        self._error = False
        self._loaded = text
        self.record = updated
        self.caption_status.show_message(f"Saved to {target.name}", "muted")
        self._update_trained_as()
        self.saved.emit(str(target), updated)
        return True

    # --- helpers -----------------------------------------------------------------------------
    def _show_file_status(self, exists: bool) -> None:
        assert self.record is not None
        self.caption_status.show_message(
            "" if not self._captions_enabled else
            f"Caption file: {caption_path(self.record.path).name}" if exists else "No caption file yet.", "muted")

    def _typed(self) -> None:
        if self.record is None:
            return
        if self.has_unsaved():
            self._autosave.start()
            if not self._error:
                self.caption_status.show_message("Edited — not saved yet", "muted")
        self._update_trained_as()

    def _update_trained_as(self) -> None:
        if self.record is None or not self._captions_enabled:
            self.trained_as.show_message("")
            return
        from transferstudio.data.scan import apply_trigger

        final = apply_trigger(" ".join(self.caption_edit.toPlainText().split()), self._trigger)
        self.trained_as.show_message(f"Trained as: “{final}”" if final else "Trained with an empty caption.", "muted")
