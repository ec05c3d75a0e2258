"""Scanning an artist's folder into training records, listing what was skipped."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from transferstudio.core.errors import DatasetError
from transferstudio.data.images import SUPPORTED_SUFFIXES, ImageProblem, probe

# Image-like files we cannot read: reported as skipped so the user knows why
# their picture is missing, instead of being silently ignored.
_UNSUPPORTED_IMAGE_SUFFIXES = frozenset({
    ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".jpe",
    ".psd", ".psb", ".kra", ".xcf", ".clip", ".svg", ".ico", ".tga", ".exr",
    ".hdr", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2",
})
_IGNORED_DIRS = frozenset({"__MACOSX"})  # zip-extraction debris from macOS
_REPEATS_DIR = re.compile(r"^(\d+)_(.+)$")
# Larger numbers are names like "2024_sketches", not kohya repeat counts.
_MAX_REPEATS = 1000

_SUPPORTED_TEXT = ", ".join(sorted(SUPPORTED_SUFFIXES))
MASK_SUFFIX = ".mask"  # `city.mask.png` is the mask of `city.png`


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption: str
    repeats: int
    width: int  # after EXIF orientation
    height: int
    mask: Path | None = None  # `name.mask.png` beside it: which parts train (masked loss)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class ScanResult:
    folder: Path
    images: tuple[ImageRecord, ...]
    skipped: tuple[SkippedFile, ...]

    @property
    def samples_per_epoch(self) -> int:
        return sum(r.repeats for r in self.images)

    def summary(self) -> str:
        """E.g. "24 images (48 with repeats), 2 skipped"; parts shown when they say something."""
        n = len(self.images)
        text = f"{n} image" + ("" if n == 1 else "s")
        if self.samples_per_epoch != n:
            text += f" ({self.samples_per_epoch} with repeats)"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text


def caption_path(image: Path) -> Path:
    """The `.txt` sidecar that holds `image`'s caption (kohya's convention: same name, `.txt`)."""
    return Path(image).with_suffix(".txt")


def write_caption(image: Path, text: str) -> Path:
    """Write `text` as `image`'s caption file, atomically (a reader never sees half a file); the
    file written. OSError when it cannot be written."""
    from transferstudio.core.atomic import write_text_atomic

    target = caption_path(image)
    write_text_atomic(target, text.strip())
    return target


def read_caption(path: Path) -> str:
    """Caption text with whitespace collapsed; "" when unreadable.

    UTF-8 (BOM tolerated) first; UTF-16 with BOM (Notepad "Unicode"); else
    cp1252 so an old Windows-encoded file still yields its words.
    """
    try:
        raw = path.read_bytes()
    except OSError:
        return ""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = raw.decode("utf-16", errors="replace")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
    return " ".join(text.split())


def _starts_with_word(caption: str, word: str) -> bool:
    c, w = caption.casefold(), word.casefold()
    return c.startswith(w) and (len(c) == len(w) or not (c[len(w)].isalnum() or c[len(w)] == "_"))


def apply_trigger(caption: str, trigger: str) -> str:
    trigger = " ".join(trigger.split())
    if not trigger:
        return caption
    if not caption:
        return trigger
    if _starts_with_word(caption, trigger):
        return caption
    return f"{trigger}, {caption}"


def repeats_for(rel_dir_parts: tuple[str, ...], root_name: str) -> int:
    """Repeats from the nearest `N_name` folder (the chosen folder itself counts)."""
    for name in reversed((root_name, *rel_dir_parts)):
        m = _REPEATS_DIR.match(name)
        if m:
            n = int(m.group(1))
            if n > _MAX_REPEATS:
                continue
            return max(1, n)
    return 1


def scan_images(folder: str | Path, trigger: str = "") -> ScanResult:
    """Find usable images under `folder` (recursive, sorted by relative path).

    Every image file is decoded once to catch truncated/corrupt files now
    rather than mid-training. Hidden files/folders are ignored; folder
    symlinks are not followed (avoids loops).
    """
    root = Path(folder).expanduser()
    advice = "Pick the folder that holds your training images."
    if not root.exists():
        raise DatasetError(f"Image folder not found: {root}", advice)
    if not root.is_dir():
        raise DatasetError(f"Not a folder: {root}", advice)

    skipped: list[SkippedFile] = []
    candidates: list[tuple[Path, Path]] = []  # (relative path, absolute path)
    captions: dict[tuple[Path, str], Path] = {}  # (dir, stem) -> caption file
    masks: dict[tuple[Path, str], Path] = {}  # (dir, stem) -> mask picture

    def walk_error(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        skipped.append(SkippedFile(where, f"cannot open folder ({exc.strerror or exc})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS
        )
        here = Path(dirpath)
        for name in filenames:
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if suffix == ".txt":
                captions[(here, path.stem)] = path
            elif suffix in SUPPORTED_SUFFIXES and path.stem.lower().endswith(MASK_SUFFIX):
                masks[(here, path.stem[: -len(MASK_SUFFIX)])] = path  # a mask, not a picture to train on
            elif suffix in SUPPORTED_SUFFIXES:
                candidates.append((path.relative_to(root), path))
            elif suffix in _UNSUPPORTED_IMAGE_SUFFIXES:
                reason = f"unsupported format ({suffix}) — save it as PNG or JPEG"
                if suffix in (".jfif", ".jpe"):
                    reason = f"unsupported extension ({suffix}) — rename it to .jpg"
                skipped.append(SkippedFile(path, reason))

    candidates.sort(key=lambda c: c[0].as_posix())
    records: list[ImageRecord] = []
    for rel, path in candidates:
        try:
            width, height = probe(path)
        except ImageProblem as exc:
            skipped.append(SkippedFile(path, exc.reason))
            continue
        cap_file = captions.get((path.parent, path.stem))
        caption = read_caption(cap_file) if cap_file else ""
        records.append(ImageRecord(
            path=path,
            caption=apply_trigger(caption, trigger),
            repeats=repeats_for(rel.parent.parts, root.name),
            width=width,
            height=height,
            mask=masks.get((path.parent, path.stem)),
        ))

    skipped.sort(key=lambda s: _rel_key(s.path, root))
    if not records:
        if skipped:
            first = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:3])
            more = "" if len(skipped) <= 3 else f"; and {len(skipped) - 3} more"
            raise DatasetError(
                f"No usable images in {root}: {len(skipped)} file(s) skipped ({first}{more}).",
                f"Supported formats: {_SUPPORTED_TEXT}. Replace or re-export the skipped files.",
            )
        raise DatasetError(
            f"No images found in {root}.",
            f"Put {_SUPPORTED_TEXT} files in it (subfolders are included).",
        )
    return ScanResult(folder=root, images=tuple(records), skipped=tuple(skipped))


def _rel_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
