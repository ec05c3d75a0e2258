"""The Pictures tab: the folder choice, what its scan found (counts, buckets, skipped files), the
thumbnail grid (`thumb_grid`), the selected picture and its caption (`caption_editor`), and the
class pictures made for prior preservation.

Stays responsive with thousands of images: the scan (`qt.pictures.FolderScanner`) and thumbnail
decoding (`qt.thumbnails.ThumbnailLoader`) run on worker threads of the qt bridge, thumbnails are
decoded only for rows the view paints, and caption files are read and written through
`qt.pictures` — this module never touches a file or a thread itself.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QIcon, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QFileDialog, QHBoxLayout, QHeaderView, QLabel,
                               QListView, QListWidget, QListWidgetItem, QPushButton, QSplitter, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from transferstudio.qt.pictures import FolderScanner, ImagesModel, PathRole, ThumbReadyRole, caption_path
from transferstudio.qt.thumbnails import THUMB_SIZE, ThumbnailCache, ThumbnailLoader
from transferstudio.ui.caption_editor import PictureDetails
from transferstudio.ui.thumb_grid import make_grid, make_placeholder
from transferstudio.ui.widgets import MessageLabel, nearest_existing_dir

if TYPE_CHECKING:
    from transferstudio.data.scan import ScanResult

# The data layer (and with it PIL and numpy) loads with the first scan, not with the window.

__all__ = ["ImagesPanel", "PathRole", "ThumbReadyRole", "caption_path", "format_buckets"]

CLASS_THUMB = 64  # the class pictures' strip
CLASS_SHOWN = 48  # at most this many of them are shown
EMPTY_HINT = "Drop a folder of images here,\nor use “Choose folder…”."


def format_buckets(summary: dict[tuple[int, int], int]) -> str:
    return " · ".join(f"{w}×{h}: {n}" for (w, h), n in summary.items())


class ImagesPanel(QWidget):
    """Signals: `folder_chosen(str)` and `folder_dropped(str)` (user picked/dropped a folder),
    `scanned(object)` (ScanResult, trigger applied), `scan_failed(str)`, `caption_saved(str)`
    (path of the .txt written)."""

    folder_chosen = Signal(str)
    folder_dropped = Signal(str)
    scanned = Signal(object)
    scan_failed = Signal(str)
    caption_saved = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, thumb_cache_dir: str | os.PathLike | None = None,
                 memory_cache_size: int = 800) -> None:
        super().__init__(parent)
        self._folder: str | None = None
        self._trigger = ""
        self._result: ScanResult | None = None
        self._bucket_params: tuple[int, int, bool] | None = None
        self._current_row = -1
        self._captions_enabled = True

        self.loader = ThumbnailLoader(self, cache_dir=str(thumb_cache_dir) if thumb_cache_dir else None)
        self.cache = ThumbnailCache(memory_cache_size)
        self.model = ImagesModel(self.loader, self.cache, self)
        self.scanner = FolderScanner(self)
        self.scanner.done.connect(self._scan_done)
        self.scanner.failed.connect(self._scan_failed)

        self._build()
        self.setAcceptDrops(True)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        self._set_current(-1)
        self._show_empty_state()

    # --- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.choose_button = QPushButton("Choose folder…")
        self.choose_button.setToolTip("Pick the folder with your training images (or drop it here).")
        self.choose_button.clicked.connect(self.browse)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.setToolTip("Read the folder again (after adding or changing files).")
        self.rescan_button.clicked.connect(self.rescan)
        self.path_label = QLabel()
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.path_label.setMinimumWidth(50)
        self.counts_label = MessageLabel()
        bold = self.counts_label.font()
        bold.setBold(True)
        self.counts_label.setFont(bold)
        self.trigger_label = MessageLabel()
        self.trigger_label.setTextFormat(Qt.TextFormat.RichText)
        self.buckets_label = MessageLabel()
        self.buckets_label.setToolTip(
            "Images are grouped by shape (aspect-ratio buckets) and trained at these sizes; "
            "counts include repeats.")
        top = QHBoxLayout()
        top.addWidget(self.choose_button)
        top.addWidget(self.rescan_button)
        top.addWidget(self.path_label, 1)

        self.view, self.delegate = make_grid(self.model)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.model.set_placeholder(make_placeholder(self.palette()))

        # Below the grid: the selected image, and its caption (for models that take prompts).
        self.details = PictureDetails()
        self.details.saved.connect(self._caption_saved)
        self.caption_box = self.details  # (older name)
        for name in ("preview", "image_name", "image_info", "caption_edit", "caption_title", "caption_status",
                     "trained_as", "no_captions"):
            setattr(self, name, getattr(self.details, name))
        self.no_selection = MessageLabel()
        self.no_selection.setAlignment(Qt.AlignmentFlag.AlignCenter)
        below = QWidget()
        below_layout = QVBoxLayout(below)
        below_layout.setContentsMargins(0, 6, 0, 0)
        below_layout.addWidget(self.details, 1)
        below_layout.addWidget(self.no_selection, 1)
        below.setMinimumHeight(THUMB_SIZE + 12)

        self.skipped_title = QLabel()
        self.skipped_list = QTreeWidget()
        self.skipped_list.setHeaderLabels(["Skipped file", "Reason"])
        self.skipped_list.setRootIsDecorated(False)
        self.skipped_list.setUniformRowHeights(True)
        self.skipped_list.setAlternatingRowColors(True)
        self.skipped_list.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.skipped_list.header().setStretchLastSection(True)
        self.skipped_list.hide()
        self.skipped_title.hide()

        # The grid above, the selected picture below: the grid gets the panel's whole width, so it
        # shows as many columns as fit instead of one narrow one beside the caption editor.
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(below)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([400, THUMB_SIZE + 60])

        # Prior preservation: the class pictures the base model made for this project (read-only).
        self.class_title = QLabel()
        self.class_title.setToolTip("Made once by the base model for prior preservation (Settings ▸ Class "
                                    "pictures) and trained on beside yours; made again when the base model or "
                                    "those settings change.")
        self.class_strip = QListWidget()
        self.class_strip.setViewMode(QListView.ViewMode.IconMode)
        self.class_strip.setFlow(QListView.Flow.LeftToRight)
        self.class_strip.setWrapping(False)
        self.class_strip.setIconSize(QSize(CLASS_THUMB, CLASS_THUMB))
        self.class_strip.setFixedHeight(CLASS_THUMB + 34)
        self.class_strip.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.class_strip.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.class_strip.setMovement(QListView.Movement.Static)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        for widget in (self.counts_label, self.trigger_label, self.buckets_label):
            layout.addWidget(widget)
        layout.addWidget(self.splitter, 1)
        for widget in (self.skipped_title, self.skipped_list, self.class_title, self.class_strip):
            layout.addWidget(widget)
        self.set_class_pictures([], "")

    def set_class_pictures(self, paths: list[str], prompt: str) -> None:
        """Show the project's class pictures (prior preservation); hidden when there are none."""
        self.class_strip.clear()
        for path in paths[:CLASS_SHOWN]:
            pixmap = QPixmap(path)
            if not pixmap.isNull():
                pixmap = pixmap.scaled(CLASS_THUMB, CLASS_THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation)
            item = QListWidgetItem(QIcon(pixmap), "")
            item.setToolTip(path)
            self.class_strip.addItem(item)
        what = f" of “{prompt}”" if prompt else ""
        more = f" (showing {CLASS_SHOWN})" if len(paths) > CLASS_SHOWN else ""
        self.class_title.setText(f"Class pictures{what}: {len(paths)} made by the base model{more}")
        self.class_title.setVisible(bool(paths))
        self.class_strip.setVisible(bool(paths))

    # --- public API -----------------------------------------------------------------------------
    def folder(self) -> str | None:
        return self._folder

    def scan_result(self) -> ScanResult | None:
        """The last scan with the current trigger and any edited captions applied."""
        if self._result is None:
            return None
        from transferstudio.data.scan import apply_trigger

        records = tuple(replace(r, caption=apply_trigger(r.caption, self._trigger)) for r in self.model.records())
        return replace(self._result, images=records)

    def is_scanning(self) -> bool:
        return self.scanner.scanning

    def set_folder(self, path: str | os.PathLike | None, trigger: str = "") -> None:
        """Show `path` and scan it in the background (returns at once; `scanned` follows)."""
        self.save_caption()  # never lose an edit when the folder changes
        self._trigger = " ".join(trigger.split())
        self.details.set_trigger(self._trigger)
        self._folder = str(path) if path else None
        self._result = None
        self._set_current(-1)
        self.model.set_records([], None)
        self.loader.cancel_all()
        self._update_trigger_label()
        self.skipped_list.clear()
        self._show_skipped()
        self.buckets_label.show_message("")
        if self._folder is None:
            self.scanner.cancel()
            self._show_empty_state()
            return
        self.path_label.setText(self._folder)
        self.path_label.setToolTip(self._folder)
        self.counts_label.show_message("Scanning…", "muted")
        self.view.set_hint("Reading the folder…")
        self.scanner.scan(self._folder)

    def rescan(self) -> None:
        if self._folder:
            self.set_folder(self._folder, self._trigger)

    def set_trigger(self, trigger: str) -> None:
        self._trigger = " ".join(trigger.split())
        self.details.set_trigger(self._trigger)
        self._update_trigger_label()

    def trigger(self) -> str:
        return self._trigger

    def set_captions_enabled(self, enabled: bool) -> None:
        """Captions and the trigger word are for models that take prompts. A model without them
        (unconditional) never reads a caption: the caption editor, "Trained as" and the trigger line
        are hidden and the panel says so once; the pictures stay as they are."""
        self._captions_enabled = bool(enabled)
        self.model.set_show_captions(self._captions_enabled)
        self.details.set_captions_enabled(self._captions_enabled)
        self._update_trigger_label()

    def captions_enabled(self) -> bool:
        return self._captions_enabled

    def set_bucket_params(self, native: int, multiple: int, enabled: bool) -> None:
        """native: the training resolution in px (0 = unknown: no bucket line)."""
        self._bucket_params = (int(native), int(multiple), bool(enabled)) if native > 0 else None
        self._update_buckets()
        self._update_image_info()

    def set_running(self, running: bool) -> None:
        """While training, the folder cannot change (captions stay editable for the next run)."""
        self.choose_button.setEnabled(not running)
        self.setAcceptDrops(not running)

    def browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Choose your image folder", nearest_existing_dir(self._folder))
        if chosen:
            self._user_chose(os.path.normpath(chosen))

    def has_unsaved_caption(self) -> bool:
        return self.details.has_unsaved()

    def save_caption(self) -> bool:
        """Write the edited caption of the selected image. True if nothing is left unsaved."""
        return self.details.save()

    def select_row(self, row: int) -> None:
        self.view.setCurrentIndex(self.model.index(row))

    def shutdown(self, msecs: int = 5000) -> None:
        """Save the caption and wait for worker threads (call before the app exits)."""
        self.save_caption()
        self.loader.wait(msecs)
        self.scanner.wait(msecs)

    # --- scan results ------------------------------------------------------------------------------
    def _scan_done(self, result: ScanResult) -> None:
        self._result = result
        self.model.set_records(list(result.images), result.folder)
        self.view.set_hint("")
        self.counts_label.show_message(result.summary(), "plain")
        self.skipped_list.clear()
        for s in result.skipped:
            item = QTreeWidgetItem([_rel(s.path, result.folder), s.reason])
            item.setToolTip(0, str(s.path))
            item.setToolTip(1, s.reason)
            self.skipped_list.addTopLevelItem(item)
        self._show_skipped()
        self._update_buckets()
        if self.model.rowCount():
            self.select_row(0)
        self.scanned.emit(self.scan_result())

    def _scan_failed(self, message: str) -> None:
        self.counts_label.show_message(message, "error")
        self.view.set_hint("No usable images here.")
        self.scan_failed.emit(message)

    # --- display helpers ----------------------------------------------------------------------
    def _show_empty_state(self) -> None:
        self.path_label.setText("")
        self.counts_label.show_message("No image folder chosen.", "muted")
        self.view.set_hint(EMPTY_HINT)
        self.rescan_button.setEnabled(False)

    def _show_skipped(self) -> None:
        n = self.skipped_list.topLevelItemCount()
        self.skipped_title.setText(f"Skipped files ({n}) — these will not be trained on:")
        self.skipped_title.setVisible(n > 0)
        self.skipped_list.setVisible(n > 0)
        if n:  # just tall enough for its rows, up to about six
            rows = min(n, 6)
            row_h = self.skipped_list.sizeHintForRow(0)
            header = self.skipped_list.header().sizeHint().height()
            self.skipped_list.setFixedHeight(header + rows * max(row_h, 1) + 2 * self.skipped_list.frameWidth() + 2)
        self.rescan_button.setEnabled(self._folder is not None)

    def _update_trigger_label(self) -> None:
        if not self._captions_enabled:
            self.trigger_label.show_message("")
        elif self._trigger:
            self.trigger_label.show_message(
                f"Trigger word: <b>{_html(self._trigger)}</b> — added to every caption", "plain")
        else:
            self.trigger_label.show_message("No trigger word: captions are used as written.", "muted")

    def _update_buckets(self) -> None:
        if self._result is None or self._bucket_params is None or not self.model.rowCount():
            self.buckets_label.show_message("")
            return
        from transferstudio.data.buckets import bucket_summary

        native, multiple, enabled = self._bucket_params
        try:
            summary = bucket_summary(self.model.records(), native, multiple, enabled)
        except ValueError as exc:
            self.buckets_label.show_message(f"Buckets: {exc}", "warning")
            return
        prefix = "Buckets: " if enabled else "Square crops: "
        self.buckets_label.show_message(prefix + format_buckets(summary), "plain")

    def _update_image_info(self) -> None:
        if self._current_row < 0:
            return
        rec = self.model.record(self._current_row)
        parts = [f"{rec.width}×{rec.height} px"]
        if self._bucket_params is not None:
            from transferstudio.data.buckets import make_buckets, native_size, nearest_bucket

            native, multiple, enabled = self._bucket_params
            try:
                if enabled:
                    w, h = nearest_bucket(rec.width, rec.height, make_buckets(native, multiple))
                else:
                    w = h = native_size(native, multiple)
                parts.append(f"trained at {w}×{h}")
            except ValueError:
                pass
        if rec.repeats > 1:
            parts.append(f"repeated {rec.repeats}×")
        self.details.set_info(" · ".join(parts))

    # --- selection and captions ----------------------------------------------------------------------
    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self.save_caption()  # the edit belongs to the previous image
        self._set_current(current.row() if current.isValid() else -1)

    def _set_current(self, row: int) -> None:
        self._current_row = row
        self.details.setVisible(row >= 0)
        self.no_selection.show_message("" if row >= 0 else "Select an image to see and edit its caption.", "muted")
        self.details.show_record(self.model.record(row) if row >= 0 else None)
        if row >= 0:
            self._update_image_info()
            self._update_preview()

    def _caption_saved(self, path: str, record: Any) -> None:
        row = self.model.row_of(record.path)
        if row >= 0:
            self.model.replace_record(row, record)
        self.caption_saved.emit(path)

    def _update_preview(self) -> None:
        if self._current_row < 0:
            return
        index = self.model.index(self._current_row)
        self.details.set_preview(self.model.data(index, Qt.ItemDataRole.DecorationRole))
        if not self.model.data(index, ThumbReadyRole):
            QTimer.singleShot(150, self._update_preview_if_ready)

    def _update_preview_if_ready(self) -> None:
        if self._current_row >= 0 and self.model.data(self.model.index(self._current_row), ThumbReadyRole):
            self._update_preview()

    # --- folder choice and drops ---------------------------------------------------------------
    def _user_chose(self, path: str, dropped: bool = False) -> None:
        self.set_folder(path, self._trigger)
        if dropped:
            self.folder_dropped.emit(path)
        self.folder_chosen.emit(path)

    @staticmethod
    def _dropped_folder(event: QDragEnterEvent | QDropEvent) -> str | None:
        mime = event.mimeData()
        if not mime.hasUrls():
            return None
        urls = [u for u in mime.urls() if u.isLocalFile()]
        if len(urls) != 1:
            return None
        local = urls[0].toLocalFile()
        return os.path.normpath(local) if os.path.isdir(local) else None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if self._dropped_folder(event):
            event.acceptProposedAction()
            self.view.set_hint("Drop to use this folder")

    def dragLeaveEvent(self, event: Any) -> None:  # noqa: N802
        self.view.set_hint("" if self.model.rowCount() else EMPTY_HINT)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        folder = self._dropped_folder(event)
        if folder:
            event.acceptProposedAction()
            self._user_chose(folder, dropped=True)

    def hideEvent(self, event: Any) -> None:  # noqa: N802
        self.save_caption()
        super().hideEvent(event)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
