"""Thumbnails of the training pictures, off the GUI thread: decoded small (the decoder shrinks
JPEGs as it reads), cached on disk by path, modification time and size, and handed over as QImage;
QPixmaps are made on the GUI thread only (`ThumbnailCache`, an in-memory LRU). `ThumbnailLoader`
decodes on its own small pool, the newest request first (the rows the view paints now)."""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader, QPainter, QPixmap

THUMB_SIZE = 128


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
