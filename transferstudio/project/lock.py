"""One trainer per project: a lock file in the project folder, held for the whole run.

`training.lock` holds the owner's pid, host and start time as JSON. It is created with
O_CREAT|O_EXCL, so of two trainers starting at once exactly one gets it; the other is told
"This project is training in another process (pid N on HOST)." and changes nothing.

A lock left by a process that no longer runs (same host, pid gone, or the pid now belongs to
a process started later), or a lock file nobody can read, is stale: the next trainer takes it
over and says so. A lock from another host cannot be checked from here and is respected.
`export` and `sample` call `check_not_training` first: they read the checkpoints a running
trainer writes and prunes. Stdlib only.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferstudio.core.errors import UserError

LOCK_FILE = "training.lock"
_WRITE_GRACE_S = 2.0  # a lock file younger than this may still be being written by its owner


# A training process that another process started for it (a data-parallel run's main process)
# takes the lock in the name of that one: the app that started the run owns it, as when it trains
# in its own process (it may export meanwhile), and the lock goes when the app goes.
OWNER_PID_VARIABLE = "TRANSFERSTUDIO_LOCK_FOR_PID"


def _owner_pid() -> int:
    try:
        given = int(os.environ.get(OWNER_PID_VARIABLE, "") or 0)
    except ValueError:
        given = 0
    return given if given > 0 and _pid_alive(given) else os.getpid()


class ProjectBusy(UserError):
    """The project is being trained by another process (or another trainer in this one)."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    proc_start: str = ""  # the process's start time as the OS counts it (Linux), against pid reuse
    token: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": self.host, "started": self.started,
                "started_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
                "proc_start": self.proc_start, "token": self.token}

    @classmethod
    def from_text(cls, text: str) -> "LockOwner | None":
        try:
            data = json.loads(text)
            pid, host = data["pid"], data["host"]
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or not isinstance(host, str):
                return None
            started = float(data.get("started") or 0.0)
            return cls(pid=pid, host=host, started=started, proc_start=str(data.get("proc_start") or ""),
                       token=str(data.get("token") or ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @property
    def here(self) -> bool:
        return self.host == _host()

    @property
    def this_process(self) -> bool:
        return self.here and self.pid == os.getpid()

    def alive(self) -> bool:
        """False only when this host can tell the owner is gone."""
        if not self.here:
            return True
        if not _pid_alive(self.pid):
            return False
        if self.proc_start and _proc_start(self.pid) not in ("", self.proc_start):
            return False  # the pid was reused by a process started later
        return _proc_state(self.pid) != "Z"  # a zombie has ended; only its parent has not reaped it

    def busy_error(self) -> ProjectBusy:
        since = time.strftime("%H:%M", time.localtime(self.started)) if self.started else "an unknown time"
        if self.this_process:
            return ProjectBusy(f"This project is already training in this process (pid {self.pid} on "
                               f"{self.host}).", "Wait for that run to end, or stop it first.")
        advice = f"Wait for it to end (it started at {since}), or stop it there."
        if not self.here:
            advice += (f" If nothing is training on {self.host} any more, delete the file "
                       f"{LOCK_FILE} in the project folder.")
        return ProjectBusy(f"This project is training in another process (pid {self.pid} on {self.host}).",
                           advice)


class ProjectLock:
    """`acquire()` takes the project's lock (ProjectBusy when a live owner holds it) and
    returns a note when it took over a stale one; `release()` gives it back (idempotent)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.owner: LockOwner | None = None

    @property
    def held(self) -> bool:
        return self.owner is not None

    def acquire(self) -> str | None:
        if self.owner is not None:
            return None
        note = None
        pid = _owner_pid()
        for _ in range(20):  # each round either takes the lock, refuses, or clears a stale one
            owner = LockOwner(pid=pid, host=_host(), started=time.time(),
                              proc_start=_proc_start(pid), token=uuid.uuid4().hex)
            try:
                made = _create(self.path, json.dumps(owner.to_dict(), indent=1) + "\n")
            except OSError as exc:
                raise _unwritable(self.path.parent, exc) from None
            if made:
                self.owner = owner
                return note
            found, text = _read_settled(self.path)
            if text is None:
                continue  # released meanwhile: try again
            if found is not None and found.alive():
                raise found.busy_error()
            if _remove_if_same(self.path, text):
                note = _stale_note(found)
        raise ProjectBusy("This project's training lock keeps changing hands.",
                          f"Another TransferStudio seems to be starting on it; try again, or delete "
                          f"{self.path} if none is running.")

    def release(self) -> None:
        owner, self.owner = self.owner, None
        if owner is None:
            return
        try:  # only our own lock: never remove one another process took over meanwhile
            found = LockOwner.from_text(self.path.read_text(encoding="utf-8"))
            if found is not None and found.token == owner.token:
                self.path.unlink()
        except OSError:
            pass

    def __enter__(self) -> "ProjectLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def training_owner(folder: Path) -> LockOwner | None:
    """The live process training the project in `folder`, or None (stale locks count as none)."""
    found, text = _read_settled(Path(folder) / LOCK_FILE)
    if text is None or found is None or not found.alive():
        return None
    return found


def check_not_training(folder: Path) -> None:
    """ProjectBusy when another process trains the project (this process's own run is fine:
    the window may export its last checkpoint while it trains on)."""
    owner = training_owner(folder)
    if owner is not None and not owner.this_process:
        raise owner.busy_error()


def release_left_for(folder: Path, pid: int) -> bool:
    """Remove the lock a process took in `pid`'s name (OWNER_PID_VARIABLE) and could not give back
    (it was killed): called by `pid` once that process has ended. Whether one was removed."""
    path = Path(folder) / LOCK_FILE
    found, text = _read_settled(path)
    if text is None or found is None or found.pid != pid or not found.here:
        return False
    return _remove_if_same(path, text)


# --- helpers ----------------------------------------------------------------------------------

def _host() -> str:
    try:
        return socket.gethostname() or "this computer"
    except OSError:
        return "this computer"


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` if it does not exist: True when this call made it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            path.unlink()
        except OSError:
            pass
        raise
    os.close(fd)
    return True


def _read_settled(path: Path) -> tuple[LockOwner | None, str | None]:
    """(owner, raw text) of the lock file; text None when there is no file. A file that cannot
    be parsed is re-read for a moment, as its owner may be writing it right now."""
    deadline = time.monotonic() + _WRITE_GRACE_S
    while True:
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8", errors="replace")
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None, None
        except OSError:
            return None, ""  # unreadable: stale (the trainer that made it could not be us)
        owner = LockOwner.from_text(text)
        if owner is not None or age > _WRITE_GRACE_S or time.monotonic() > deadline:
            return owner, text
        time.sleep(0.05)


def _remove_if_same(path: Path, text: str) -> bool:
    """Remove the stale lock if it still holds `text` (another starter may have replaced it).
    The file is first renamed to a unique name, so two starters cannot both remove a fresh one."""
    aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    try:
        moved = aside.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        moved = text
    if moved != text:  # someone else's fresh lock: put it back
        try:
            os.link(aside, path)
        except OSError:
            pass
        try:
            aside.unlink()
        except OSError:
            pass
        return False
    try:
        aside.unlink()
    except OSError:
        pass
    return True


def _stale_note(found: LockOwner | None) -> str:
    if found is None:
        return (f"Took over the project's unreadable training lock ({LOCK_FILE}); no other "
                "process is training it.")
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(found.started)) if found.started else "earlier"
    return (f"Took over a stale training lock: the process that held it (pid {found.pid} on {found.host}, "
            f"since {since}) is no longer running.")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True
    return True


def _unwritable(folder: Path, exc: OSError) -> UserError:
    import errno

    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return UserError(f"The disk is full: the training lock cannot be written in {folder}.",
                         "Free some space on that disk and start again; nothing was changed.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"TransferStudio may not write in the project folder {folder}.",
                         "Check its permissions, or copy the project to a folder you can write to; "
                         "nothing was changed.")
    return UserError(f"Cannot write the training lock in {folder}: {exc.strerror or exc}.",
                     "Check that the disk is connected and writable; nothing was changed.")


def _proc_state(pid: int) -> str:
    """The process's state letter (Linux: R, S, Z…); "" where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _proc_start(pid: int) -> str:
    """When the process started, in the kernel's clock ticks (Linux); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
