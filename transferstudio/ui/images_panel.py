"""The training images: folder choice, a thumbnail grid, per-image captions, skipped files.

Stays responsive with thousands of images: the folder scan and thumbnail decoding run on
worker threads (QImage only there; QPixmap is made on the GUI thread), thumbnails are
decoded only for rows the view asks to paint, and they are cached in memory (LRU) and
optionally on disk.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRect,
    QRectF,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QFocusEvent,
    QFont,
    QFontMetrics,
    QIcon,
    QImage,
    QImageReader,
    QKeyEvent,
    QKeySequence,
    QPainter,
    QPalette,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from transferstudio.core.atomic import write_text_atomic
from transferstudio.core.errors import UserError
from transferstudio.data.buckets import bucket_summary, nearest_bucket, make_buckets, native_size
from transferstudio.data.scan import ImageRecord, ScanResult, apply_trigger, read_caption, scan_images
from transferstudio.ui.widgets import MessageLabel, nearest_existing_dir

THUMB_SIZE = 128
CLASS_THUMB = 64  # the class pictures' strip
CLASS_SHOWN = 48  # at most this many of them are shown
ThumbReadyRole = Qt.ItemDataRole.UserRole + 1  # True once the real thumbnail is in the cache
PathRole = Qt.ItemDataRole.UserRole + 2


def caption_path(image: Path) -> Path:
    """The `.txt` sidecar the scanner reads for `image`."""
    return image.with_suffix(".txt")


def format_buckets(summary: dict[tuple[int, int], int]) -> str:
    return " · ".join(f"{w}×{h}: {n}" for (w, h), n in summary.items())


# --- thumbnails ---------------------------------------------------------------------------
def make_thumbnail(path: str, size: int = THUMB_SIZE, cache_dir: str | None = None) -> QImage:
    """Decode a small QImage (worker thread). Reads/writes the disk cache when given."""
    cached_file = None
    if cache_dir:
        try:
            st = os.stat(path)
            key = f"{os.path.abspath(path)}|{st.st_mtime_ns}|{st.st_size}|{size}"
            cached_file = os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest() + ".png")
            if os.path.exists(cached_file):
                image = QImage(cached_file)
                if not image.isNull():
                    return image
        except OSError:
            cached_file = None
    image = _decode_scaled(path, size)
    if cached_file and not image.isNull():
        try:
            os.makedirs(cache_dir, exist_ok=True)  # type: ignore[arg-type]
            tmp = f"{cached_file}.{threading.get_ident()}.tmp.png"
            if image.save(tmp, "PNG"):
                os.replace(tmp, cached_file)  # readers never see half a file
        except OSError:
            pass  # the cache is an optimisation; a read-only disk must not break the grid
    return image


def pad_square(image: QImage, size: int) -> QImage:
    """Centre on a transparent square, so every grid cell lines up whatever the aspect ratio.
    QPainter on a QImage is safe off the GUI thread."""
    if image.isNull() or (image.width() == size and image.height() == size):
        return image
    canvas = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    canvas.fill(Qt.GlobalColor.transparent)
    painter = QPainter(canvas)
    painter.drawImage((size - image.width()) // 2, (size - image.height()) // 2, image)
    painter.end()
    return canvas


def _decode_scaled(path: str, size: int) -> QImage:
    reader = QImageReader(path)
    reader.setAutoTransform(True)  # EXIF orientation, as training sees it
    src = reader.size()
    if src.isValid() and src.width() > 0 and src.height() > 0:
        # Let the decoder shrink (JPEG decodes at 1/8 directly): far faster than full size.
        scaled = src.scaled(QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio)
        if src.width() > size or src.height() > size:
            reader.setScaledSize(scaled)
        image = reader.read()
        if not image.isNull():
            if image.width() > size or image.height() > size:  # rotated by EXIF
                image = image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                     Qt.TransformationMode.SmoothTransformation)
            return image
    return _decode_with_pil(path, size)


def _decode_with_pil(path: str, size: int) -> QImage:
    try:
        from transferstudio.data.images import open_rgb

        im = open_rgb(Path(path))
        im.thumbnail((size, size))
        data = im.tobytes("raw", "RGB")
        return QImage(data, im.width, im.height, im.width * 3, QImage.Format.Format_RGB888).copy()
    except Exception:  # noqa: BLE001 — a thumbnail that cannot be made is just blank
        return QImage()


class _ThumbSignals(QObject):
    loaded = Signal(str, QImage)


class _ThumbRunnable(QRunnable):
    def __init__(self, loader: "ThumbnailLoader") -> None:
        super().__init__()
        self._loader = loader

    def run(self) -> None:
        while True:
            job = self._loader._next_job()
            if job is None:
                return
            path, size, cache_dir = job
            image = pad_square(make_thumbnail(path, size, cache_dir), size)
            self._loader._job_done(path, image)


class ThumbnailLoader(QObject):
    """Decodes thumbnails on its own small pool, newest request first.

    The view asks for rows as they scroll into sight, so the most recent requests are the
    visible ones; old requests beyond `max_pending` are dropped (they are asked again if
    they come back into view).
    """

    loaded = Signal(str, QImage)

    def __init__(self, parent: QObject | None = None, *, cache_dir: str | None = None,
                 size: int = THUMB_SIZE, max_pending: int = 400) -> None:
        super().__init__(parent)
        self.size = size
        self.cache_dir = cache_dir
        self.max_pending = max_pending
        self.pool = QThreadPool(self)
        # Leave a core for the GUI thread (and for training, which may run meanwhile).
        self.pool.setMaxThreadCount(max(1, min(4, (os.cpu_count() or 2) - 1)))
        self._lock = threading.Lock()
        self._stack: OrderedDict[str, None] = OrderedDict()  # last = newest
        self._running = 0
        self._signals = _ThumbSignals()
        self._signals.loaded.connect(self.loaded, Qt.ConnectionType.QueuedConnection)

    def request(self, path: str) -> None:
        with self._lock:
            if path in self._stack:
                self._stack.move_to_end(path)
                return
            self._stack[path] = None
            while len(self._stack) > self.max_pending:
                self._stack.popitem(last=False)
            start = self._running < self.pool.maxThreadCount()
            if start:
                self._running += 1
        if start:
            self.pool.start(_ThumbRunnable(self))

    def cancel_all(self) -> None:
        with self._lock:
            self._stack.clear()

    def is_pending(self, path: str) -> bool:
        with self._lock:
            return path in self._stack

    def wait(self, msecs: int = -1) -> bool:
        self.cancel_all()
        return self.pool.waitForDone(msecs)

    def _next_job(self) -> tuple[str, int, str | None] | None:
        with self._lock:
            if not self._stack:
                self._running -= 1
                return None
            path, _ = self._stack.popitem(last=True)
            return path, self.size, self.cache_dir

    def _job_done(self, path: str, image: QImage) -> None:
        self._signals.loaded.emit(path, image)


class ThumbnailCache:
    """In-memory LRU of QPixmaps (GUI thread only)."""

    def __init__(self, capacity: int = 800) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, QPixmap] = OrderedDict()

    def get(self, key: str) -> QPixmap | None:
        pix = self._items.get(key)
        if pix is not None:
            self._items.move_to_end(key)
        return pix

    def put(self, key: str, pix: QPixmap) -> None:
        self._items[key] = pix
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


# --- model ----------------------------------------------------------------------------------
class ImagesModel(QAbstractListModel):
    """One row per usable image; decoration comes from the thumbnail cache or a placeholder."""

    def __init__(self, loader: ThumbnailLoader, cache: ThumbnailCache, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._records: list[ImageRecord] = []
        self._row_of: dict[str, int] = {}
        self._root: Path | None = None
        self._loader = loader
        self._cache = cache
        self._failed: set[str] = set()
        self._placeholder = QPixmap()
        self._show_captions = True
        loader.loaded.connect(self._thumbnail_loaded)

    def set_show_captions(self, show: bool) -> None:
        """Whether the tooltips name each picture's caption (models that take prompts)."""
        self._show_captions = bool(show)

    def set_records(self, records: list[ImageRecord], root: Path | None) -> None:
        self.beginResetModel()
        self._records = list(records)
        self._root = root
        self._row_of = {str(r.path): i for i, r in enumerate(self._records)}
        self._failed.clear()
        self.endResetModel()

    def set_placeholder(self, pix: QPixmap) -> None:
        self._placeholder = pix

    def record(self, row: int) -> ImageRecord:
        return self._records[row]

    def records(self) -> list[ImageRecord]:
        return list(self._records)

    def replace_record(self, row: int, record: ImageRecord) -> None:
        self._records[row] = record
        index = self.index(row)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.ToolTipRole])

    def row_of(self, path: str | Path) -> int:
        return self._row_of.get(str(path), -1)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._records)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._records):
            return None
        rec = self._records[index.row()]
        key = str(rec.path)
        if role == Qt.ItemDataRole.DisplayRole:
            return rec.path.name
        if role == Qt.ItemDataRole.DecorationRole:
            pix = self._cache.get(key)
            if pix is not None:
                return pix
            if key not in self._failed:
                self._loader.request(key)  # only rows the view paints get decoded
            return self._placeholder
        if role == ThumbReadyRole:
            return key in self._cache
        if role == PathRole:
            return key
        if role == Qt.ItemDataRole.ToolTipRole:
            rel = self._relative(rec.path)
            lines = [rel, f"{rec.width}×{rec.height} px"]
            if rec.repeats > 1:
                lines.append(f"repeated {rec.repeats}× (folder name)")
            if self._show_captions:
                lines.append(f"Caption: {rec.caption}" if rec.caption else "No caption")
            return "\n".join(lines)
        return None

    def _relative(self, path: Path) -> str:
        if self._root is not None:
            try:
                return path.relative_to(self._root).as_posix()
            except ValueError:
                pass
        return str(path)

    def _thumbnail_loaded(self, path: str, image: QImage) -> None:
        if image.isNull():
            self._failed.add(path)
            return
        self._cache.put(path, QPixmap.fromImage(image))  # GUI thread: QPixmap is safe here
        row = self._row_of.get(path, -1)
        if row >= 0:
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole, ThumbReadyRole])


# --- scanning -------------------------------------------------------------------------------
class _ScanSignals(QObject):
    done = Signal(int, object)  # generation, ScanResult
    failed = Signal(int, str)


class _ScanRunnable(QRunnable):
    def __init__(self, generation: int, folder: str, signals: _ScanSignals) -> None:
        super().__init__()
        self.generation = generation
        self.folder = folder
        self.signals = signals

    def run(self) -> None:
        # The raw captions are kept; the trigger is applied when a ScanResult is handed out,
        # so changing the trigger does not need a rescan.
        try:
            result = scan_images(self.folder, "")
        except UserError as exc:
            self.signals.failed.emit(self.generation, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 — shown to the user, then re-raised below
            self.signals.failed.emit(self.generation, f"Could not scan the folder: {exc}")
            raise
        self.signals.done.emit(self.generation, result)


# --- widgets --------------------------------------------------------------------------------
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


class _ThumbView(QListView):
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
        self._generation = 0
        self._scanning = False
        self._bucket_params: tuple[int, int, bool] | None = None
        self._current_row = -1
        self._loaded_caption = ""  # what the editor showed when loaded or last saved
        self._caption_error = False

        self.loader = ThumbnailLoader(self, cache_dir=str(thumb_cache_dir) if thumb_cache_dir else None)
        self.cache = ThumbnailCache(memory_cache_size)
        self.model = ImagesModel(self.loader, self.cache, self)
        self._scan_pool = QThreadPool(self)
        self._scan_pool.setMaxThreadCount(1)
        self._scan_signals = _ScanSignals(self)
        self._scan_signals.done.connect(self._scan_done)
        self._scan_signals.failed.connect(self._scan_failed)
        # Runnables are kept alive here until they report (or are taken off the queue).
        self._scans: dict[int, _ScanRunnable] = {}
        self._retired_scan: _ScanRunnable | None = None

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
        self.buckets_label = MessageLabel()
        self.buckets_label.setToolTip(
            "Images are grouped by shape (aspect-ratio buckets) and trained at these sizes; "
            "counts include repeats.")

        top = QHBoxLayout()
        top.addWidget(self.choose_button)
        top.addWidget(self.rescan_button)
        top.addWidget(self.path_label, 1)

        self.view = _ThumbView()
        self.view.setModel(self.model)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setUniformItemSizes(True)  # no per-row size queries: fast with thousands
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(500)
        self.view.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        # A wrapping grid: as many columns as the width takes, names cut in the middle, whole in the
        # tooltip; the selection is a frame, never a tint over the picture.
        self.delegate = ThumbDelegate(THUMB_SIZE, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setGridSize(self.delegate.cell_size(self.view.fontMetrics()))
        self.view.setFlow(QListView.Flow.LeftToRight)
        self.view.setWrapping(True)
        self.view.setSpacing(0)
        self.view.setMouseTracking(True)  # the hover frame
        self.view.setWordWrap(False)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.setMinimumWidth(self.view.gridSize().width() + 24)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setDragEnabled(False)
        self.view.setAcceptDrops(False)
        self.view.viewport().setAcceptDrops(False)  # drops go to the panel
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.selectionModel().currentChanged.connect(self._current_changed)
        self.model.set_placeholder(self._make_placeholder())

        # Below the grid: the selected image, and its caption (for models that take prompts).
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
        self.caption_edit.focus_lost.connect(self.save_caption)
        self.caption_edit.textChanged.connect(self._caption_typed)
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(1500)  # an edit is on disk soon even without leaving the field
        self._autosave.timeout.connect(self.save_caption)
        self.caption_edit.save_requested.connect(self.save_caption)
        self.caption_status = MessageLabel()
        self.trigger_label = MessageLabel()
        self.trigger_label.setTextFormat(Qt.TextFormat.RichText)
        self.trained_as = MessageLabel()
        self.trained_as.setTextFormat(Qt.TextFormat.PlainText)
        self.trained_as.setToolTip("The caption exactly as training will use it.")
        self.no_captions = MessageLabel()  # for models without prompts, instead of the caption editor

        self.caption_box = QWidget()
        cap = QHBoxLayout(self.caption_box)
        cap.setContentsMargins(0, 0, 0, 0)
        cap.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)
        text_col = QVBoxLayout()
        text_col.addWidget(self.image_name)
        text_col.addWidget(self.image_info)
        self.caption_title = QLabel("&Caption")
        self.caption_title.setBuddy(self.caption_edit)
        text_col.addWidget(self.caption_title)
        text_col.addWidget(self.caption_edit, 1)
        text_col.addWidget(self.caption_status)
        text_col.addWidget(self.trained_as)
        text_col.addWidget(self.no_captions)
        text_col.addStretch(0)
        cap.addLayout(text_col, 1)
        self._captions_enabled = True

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

        self.no_selection = MessageLabel()
        self.no_selection.setAlignment(Qt.AlignmentFlag.AlignCenter)
        details = QWidget()
        details_layout = QVBoxLayout(details)
        details_layout.setContentsMargins(0, 6, 0, 0)
        details_layout.addWidget(self.caption_box, 1)
        details_layout.addWidget(self.no_selection, 1)
        details.setMinimumHeight(THUMB_SIZE + 12)

        # The grid above, the selected picture below: the grid gets the panel's whole width, so it
        # shows as many columns as fit instead of one narrow one beside the caption editor.
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(details)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([400, THUMB_SIZE + 60])

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.counts_label)
        layout.addWidget(self.trigger_label)
        layout.addWidget(self.buckets_label)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.skipped_title)
        layout.addWidget(self.skipped_list)

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
        layout.addWidget(self.class_title)
        layout.addWidget(self.class_strip)
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

    def _make_placeholder(self) -> QPixmap:
        pix = QPixmap(THUMB_SIZE, THUMB_SIZE)
        pix.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pix)
        colour = QColor(self.palette().color(QPalette.ColorRole.Mid))
        colour.setAlpha(90)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawRoundedRect(8, 8, THUMB_SIZE - 16, THUMB_SIZE - 16, 6, 6)
        painter.end()
        return pix

    # --- public API -----------------------------------------------------------------------------
    def folder(self) -> str | None:
        return self._folder

    def scan_result(self) -> ScanResult | None:
        """The last scan with the current trigger and any edited captions applied."""
        if self._result is None:
            return None
        records = tuple(replace(r, caption=apply_trigger(r.caption, self._trigger))
                        for r in self.model.records())
        return replace(self._result, images=records)

    def is_scanning(self) -> bool:
        return self._scanning

    def set_folder(self, path: str | os.PathLike | None, trigger: str = "") -> None:
        """Show `path` and scan it in the background (returns at once; `scanned` follows)."""
        self.save_caption()  # never lose an edit when the folder changes
        self._trigger = " ".join(trigger.split())
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
            self._generation += 1
            self._scanning = False
            self._show_empty_state()
            return
        self.path_label.setText(self._folder)
        self.path_label.setToolTip(self._folder)
        self._start_scan()

    def rescan(self) -> None:
        if self._folder:
            self.set_folder(self._folder, self._trigger)

    def set_trigger(self, trigger: str) -> None:
        self._trigger = " ".join(trigger.split())
        self._update_trigger_label()
        self._update_trained_as()

    def trigger(self) -> str:
        return self._trigger

    def set_captions_enabled(self, enabled: bool) -> None:
        """Captions and the trigger word are for models that take prompts. A model without them
        (unconditional) never reads a caption: the caption editor, "Trained as" and the trigger line
        are hidden and the panel says so once; the pictures stay as they are."""
        self._captions_enabled = bool(enabled)
        self.model.set_show_captions(self._captions_enabled)
        for widget in (self.caption_title, self.caption_edit):
            widget.setVisible(self._captions_enabled)
        self.no_captions.show_message("" if self._captions_enabled else
                                      "This model does not take prompts: captions are not used.", "muted")
        self._update_trigger_label()
        self._update_trained_as()
        if self._current_row >= 0 and not self.has_unsaved_caption():
            sidecar = caption_path(self.model.record(self._current_row).path)
            self.caption_status.show_message(
                "" if not self._captions_enabled else
                f"Caption file: {sidecar.name}" if sidecar.exists() else "No caption file yet.", "muted")

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
        chosen = QFileDialog.getExistingDirectory(
            self, "Choose your image folder", nearest_existing_dir(self._folder))
        if chosen:
            self._user_chose(os.path.normpath(chosen))

    def has_unsaved_caption(self) -> bool:
        return self._current_row >= 0 and self.caption_edit.toPlainText() != self._loaded_caption

    def save_caption(self) -> bool:
        """Write the edited caption of the selected image (atomically). True if nothing is left
        unsaved. On failure the text stays in the editor with a red message."""
        self._autosave.stop()
        if not self.has_unsaved_caption():
            return True
        row = self._current_row
        record = self.model.record(row)
        text = self.caption_edit.toPlainText()
        target = caption_path(record.path)
        try:
            write_text_atomic(target, text.strip())
        except OSError as exc:
            self._caption_error = True
            self.caption_status.show_message(
                f"Could not save {target.name}: {exc.strerror or exc}. Your text is kept here.", "error")
            return False
        self._caption_error = False
        self._loaded_caption = text
        self.model.replace_record(row, replace(record, caption=" ".join(text.split())))
        self.caption_status.show_message(f"Saved to {target.name}", "muted")
        self._update_trained_as()
        self.caption_saved.emit(str(target))
        return True

    def select_row(self, row: int) -> None:
        self.view.setCurrentIndex(self.model.index(row))

    def shutdown(self, msecs: int = 5000) -> None:
        """Save the caption and wait for worker threads (call before the app exits)."""
        self.save_caption()
        self.loader.wait(msecs)
        self._scan_pool.waitForDone(msecs)

    # --- scanning ----------------------------------------------------------------------------
    def _start_scan(self) -> None:
        self._generation += 1
        self._scanning = True
        for generation, queued in list(self._scans.items()):
            if self._scan_pool.tryTake(queued):  # a superseded scan still queued need not run
                del self._scans[generation]
        runnable = _ScanRunnable(self._generation, self._folder or "", self._scan_signals)
        runnable.setAutoDelete(False)
        self._scans[self._generation] = runnable
        self.counts_label.show_message("Scanning…", "muted")
        self.view.set_hint("Reading the folder…")
        self._scan_pool.start(runnable)

    def _scan_done(self, generation: int, result: ScanResult) -> None:
        self._retire_scan(generation)
        if generation != self._generation:
            return  # a newer folder was chosen meanwhile
        self._scanning = False
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

    def _scan_failed(self, generation: int, message: str) -> None:
        self._retire_scan(generation)
        if generation != self._generation:
            return
        self._scanning = False
        self.counts_label.show_message(message, "error")
        self.view.set_hint("No usable images here.")
        self.scan_failed.emit(message)

    def _retire_scan(self, generation: int) -> None:
        # Freed one report later: the worker may still be returning from run() right now.
        self._retired_scan = self._scans.pop(generation, None)

    # --- display helpers ----------------------------------------------------------------------
    def _show_empty_state(self) -> None:
        self.path_label.setText("")
        self.counts_label.show_message("No image folder chosen.", "muted")
        self.view.set_hint("Drop a folder of images here,\nor use “Choose folder…”.")
        self.rescan_button.setEnabled(False)

    def _show_skipped(self) -> None:
        n = self.skipped_list.topLevelItemCount()
        self.skipped_title.setText(f"Skipped files ({n}) — these will not be trained on:")
        self.skipped_title.setVisible(n > 0)
        self.skipped_list.setVisible(n > 0)
        if n:  # just tall enough for its rows, up to about six
            rows = min(n, 6)
            row_h = self.skipped_list.sizeHintForRow(0) if n else 0
            header = self.skipped_list.header().sizeHint().height()
            self.skipped_list.setFixedHeight(header + rows * max(row_h, 1) + 2 * self.skipped_list.frameWidth() + 2)
        self.rescan_button.setEnabled(self._folder is not None)

    def _update_trigger_label(self) -> None:
        if not self._captions_enabled:
            self.trigger_label.show_message("")
            return
        if self._trigger:
            self.trigger_label.show_message(
                f"Trigger word: <b>{_html(self._trigger)}</b> — added to every caption", "plain")
        else:
            self.trigger_label.show_message(
                "No trigger word: captions are used as written.", "muted")

    def _update_buckets(self) -> None:
        if self._result is None or self._bucket_params is None or not self.model.rowCount():
            self.buckets_label.show_message("")
            return
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
        self.image_info.show_message(" · ".join(parts), "muted")

    def _update_trained_as(self) -> None:
        if self._current_row < 0 or not self._captions_enabled:
            self.trained_as.show_message("")
            return
        caption = " ".join(self.caption_edit.toPlainText().split())
        final = apply_trigger(caption, self._trigger)
        self.trained_as.show_message(
            f"Trained as: “{final}”" if final else "Trained with an empty caption.", "muted")

    # --- selection and caption editing -----------------------------------------------------------
    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self.save_caption()  # the edit belongs to the previous image
        self._set_current(current.row() if current.isValid() else -1)

    def _set_current(self, row: int) -> None:
        self._autosave.stop()
        self._current_row = row
        self.caption_box.setVisible(row >= 0)
        self.no_selection.show_message(
            "" if row >= 0 else "Select an image to see and edit its caption.", "muted")
        if row < 0:
            self._loaded_caption = ""
            self.caption_edit.blockSignals(True)
            self.caption_edit.setPlainText("")
            self.caption_edit.blockSignals(False)
            self.image_name.setText("")
            self.image_info.show_message("")
            self.preview.clear()
            self.caption_status.show_message("")
            self._update_trained_as()
            return
        rec = self.model.record(row)
        sidecar = caption_path(rec.path)
        # Read the file now (not the scan's copy): it may have been edited elsewhere.
        text = read_caption(sidecar) if sidecar.exists() else ""
        self._loaded_caption = text
        self.caption_edit.blockSignals(True)
        self.caption_edit.setPlainText(text)
        self.caption_edit.blockSignals(False)
        self.image_name.setText(rec.path.name)
        self.image_name.setToolTip(str(rec.path))
        self._update_image_info()
        self.caption_status.show_message(
            "" if not self._captions_enabled else
            f"Caption file: {sidecar.name}" if sidecar.exists() else "No caption file yet.", "muted")
        self._update_trained_as()
        self._update_preview()

    def _update_preview(self) -> None:
        if self._current_row < 0:
            return
        pix = self.model.data(self.model.index(self._current_row), Qt.ItemDataRole.DecorationRole)
        self.preview.setPixmap(pix if isinstance(pix, QPixmap) else QPixmap())
        if not self.model.data(self.model.index(self._current_row), ThumbReadyRole):
            QTimer.singleShot(150, self._update_preview_if_ready)

    def _update_preview_if_ready(self) -> None:
        if self._current_row >= 0 and self.model.data(self.model.index(self._current_row), ThumbReadyRole):
            self._update_preview()

    def _caption_typed(self) -> None:
        if self._current_row < 0:
            return
        dirty = self.has_unsaved_caption()
        if dirty:
            self._autosave.start()
            if not self._caption_error:
                self.caption_status.show_message("Edited — not saved yet", "muted")
        self._update_trained_as()

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
        if os.path.isdir(local):
            return os.path.normpath(local)
        return None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if self._dropped_folder(event):
            event.acceptProposedAction()
            self.view.set_hint("Drop to use this folder")

    def dragLeaveEvent(self, event: Any) -> None:  # noqa: N802
        self.view.set_hint("" if self.model.rowCount() else "Drop a folder of images here,\n"
                           "or use “Choose folder…”.")

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
