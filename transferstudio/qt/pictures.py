"""The training pictures as the window shows them: a scan of the folder on a worker thread
(`FolderScanner`, the data layer's `scan_images`), a list model of the usable pictures whose
thumbnails come from `ThumbnailLoader`, and the caption files beside them, read and written
through here (atomically) so no widget touches the files itself."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, QRunnable, Qt,
                            QThreadPool, Signal)
from PySide6.QtGui import QImage, QPixmap

from transferstudio.core.errors import UserError
from transferstudio.qt.thumbnails import ThumbnailCache, ThumbnailLoader

if TYPE_CHECKING:
    from transferstudio.data.scan import ImageRecord, ScanResult

ThumbReadyRole = Qt.ItemDataRole.UserRole + 1  # True once the real thumbnail is in the cache
PathRole = Qt.ItemDataRole.UserRole + 2


# --- caption files (the data layer reads and writes them; widgets never touch the files) ----------
def caption_path(image: Path) -> Path:
    """The `.txt` sidecar of `image` (data.scan.caption_path)."""
    from transferstudio.data.scan import caption_path as sidecar

    return sidecar(image)


def load_caption(image: Path) -> tuple[str, bool]:
    """The caption file's text now (it may have been edited elsewhere since the scan) and whether
    there is one."""
    from transferstudio.data.scan import read_caption

    sidecar = caption_path(image)
    exists = sidecar.exists()
    return (read_caption(sidecar) if exists else ""), exists


def save_caption(record: ImageRecord, text: str) -> tuple[Path, ImageRecord]:
    """Write `text` as the caption of `record`'s picture (data.scan.write_caption, atomic). The file
    written and the record with the new caption; OSError when it cannot be written."""
    from transferstudio.data.scan import write_caption

    return write_caption(record.path, text), replace(record, caption=" ".join(text.split()))


def scan_images(folder: str | Path, trigger: str = "") -> "ScanResult":
    """The data layer's scan (imported on the worker thread that calls it: PIL and numpy load
    there, not on the GUI thread)."""
    from transferstudio.data.scan import scan_images as scan

    return scan(folder, trigger)


# --- the list model -------------------------------------------------------------------------------
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


# --- scanning -------------------------------------------------------------------------------------
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


class FolderScanner(QObject):
    """Scans one folder at a time on its own thread; a newer request supersedes an older one
    (which is taken off the queue if it has not started, and whose result is ignored if it has).
    `done(ScanResult)` (raw captions: the trigger is applied by whoever shows them) or
    `failed(message)`."""

    done = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.generation = 0
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self._signals = _ScanSignals(self)
        self._signals.done.connect(self._done)
        self._signals.failed.connect(self._failed)
        # Runnables are kept alive here until they report (or are taken off the queue).
        self._scans: dict[int, _ScanRunnable] = {}
        self._retired: _ScanRunnable | None = None
        self.scanning = False

    def scan(self, folder: str) -> None:
        self.generation += 1
        self.scanning = True
        for generation, queued in list(self._scans.items()):
            if self.pool.tryTake(queued):  # a superseded scan still queued need not run
                del self._scans[generation]
        runnable = _ScanRunnable(self.generation, folder, self._signals)
        runnable.setAutoDelete(False)
        self._scans[self.generation] = runnable
        self.pool.start(runnable)

    def cancel(self) -> None:
        """Whatever is scanning now is no longer wanted."""
        self.generation += 1
        self.scanning = False

    def wait(self, msecs: int = -1) -> bool:
        return self.pool.waitForDone(msecs)

    def _done(self, generation: int, result: ScanResult) -> None:
        self._retire(generation)
        if generation == self.generation:  # else a newer folder was chosen meanwhile
            self.scanning = False
            self.done.emit(result)

    def _failed(self, generation: int, message: str) -> None:
        self._retire(generation)
        if generation == self.generation:
            self.scanning = False
            self.failed.emit(message)

    def _retire(self, generation: int) -> None:
        # Freed one report later: the worker may still be returning from run() right now.
        self._retired = self._scans.pop(generation, None)
