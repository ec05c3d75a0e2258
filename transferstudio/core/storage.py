"""Full disks and places TransferStudio may not write to, in one sentence each.

Writers fail in many shapes: an OSError with ENOSPC / EACCES / EROFS from Python, a
`SafetensorError("… No space left on device …")` from safetensors' Rust writer, a torch
`RuntimeError("[enforce fail at inline_container.cc:…] . unexpected pos …")` when torch.save
runs out of room. `is_disk_full` / `is_not_writable` recognise them; `disk_full` and
`not_writable` make the UserError a user reads ("the disk is full (needs ~N MB, M MB free)").
"""
from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

from transferstudio.core.errors import UserError

DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
NOT_WRITABLE_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.EROFS))

# What non-OSError writers say when the disk fills: safetensors (Rust io::Error text) and
# torch.save (its zip writer notices the short write as a wrong position).
_DISK_FULL_WORDS = ("no space left on device", "storagefull", "os error 28", "code: 28",
                    "disk quota exceeded", "unexpected pos", "file write failed")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in DISK_FULL_ERRNOS
    text = str(exc).lower()
    return any(word in text for word in _DISK_FULL_WORDS)


def is_not_writable(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in NOT_WRITABLE_ERRNOS
    text = str(exc).lower()
    return "permission denied" in text or "read-only file system" in text


def free_bytes(path: Path) -> int | None:
    """Free space where `path` is (or would be), or None when the system cannot say."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return int(shutil.disk_usage(candidate).free)
        except (OSError, ValueError):
            return None
    return None


def megabytes(n: int | float) -> str:
    mb = n / 1e6
    return f"{mb:.1f} MB" if mb < 100 else f"{mb:,.0f} MB"


def space_words(needed: int | None, free: int | None) -> str:
    """"needs ~12.3 MB, 1.0 MB free" (the parts that are known)."""
    parts = []
    if needed is not None:
        parts.append(f"needs ~{megabytes(needed)}")
    if free is not None:
        parts.append(f"{megabytes(free)} free")
    return ", ".join(parts)


def disk_full(where: Path, what: str, advice: str, *, needed: int | None = None, free: int | None = None,
              cls: type[UserError] = UserError) -> UserError:
    """"The disk is full (needs ~N MB, M MB free): <what>." `free` is looked up when not given."""
    free = free_bytes(where) if free is None else free
    words = space_words(needed, free)
    return cls(f"The disk is full{f' ({words})' if words else ''}: {what}.", advice)


def not_writable(where: Path, advice: str = "", *, cls: type[UserError] = UserError) -> UserError:
    return cls(f"TransferStudio may not write to {where}; choose a folder you can write to.", advice)


def where_of(exc: OSError, default: Path) -> Path:
    """The folder a failed write was aimed at (the parent of the file or folder it names)."""
    name = getattr(exc, "filename", None)
    if isinstance(name, (str, Path)) and str(name):
        return Path(name).parent
    return Path(default)


def user_error(exc: BaseException, default: Path, *, what: str | None = None, advice: str = "",
               cls: type[UserError] = UserError) -> UserError | None:
    """The UserError for a write that failed for lack of space or permission; None for others."""
    where = where_of(exc, default) if isinstance(exc, OSError) else Path(default)
    if is_disk_full(exc):
        return disk_full(where, what or f"nothing more could be written to {where}",
                         advice or "Free some space on that drive, then try again.", cls=cls)
    if is_not_writable(exc):
        return not_writable(where, advice, cls=cls)
    return None


def sha256_file(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks (checkpoint manifests, export provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
