"""Small image files for data-layer tests, including deliberately broken ones."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def solid(path: Path, size=(32, 24), color=(200, 30, 40), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def two_halves(path: Path, size=(40, 20), left=(255, 0, 0), right=(0, 0, 255), **save) -> Path:
    """Left half one colour, right half another: shows flips and rotations."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save)
    return path


def noisy(path: Path, size=(64, 64), seed=0, **save) -> Path:
    """Incompressible content, so truncating the file really cuts pixel data."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> Path:
    """A PNG written by hand; rows=None writes a tiny IDAT whatever the header claims."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00" * 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """Header claims a huge 1-bit image; the file itself is a few bytes."""
    return raw_png(path, width, height, 1, 0, None)


def rgb16_png(path: Path, value16: tuple[int, int, int], size=(4, 3)) -> Path:
    w, h = size
    pixel = struct.pack(">HHH", *value16)
    rows = b"".join(b"\x00" + pixel * w for _ in range(h))
    return raw_png(path, w, h, 16, 2, rows)


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """Stored 40×20 (red left, blue right) with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return two_halves(path, size=(40, 20), exif=exif, quality=95)
