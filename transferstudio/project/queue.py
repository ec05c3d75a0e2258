"""The training queue: runs of one or more projects, trained one after another.

The queue lives in `queue.json` in the app data folder (`core.paths.user_data_dir()`), written
atomically, so it survives a restart (of the window or of `transferstudio queue run`). Each entry
names a project folder, a kind ("train": continue the project's run or start one, as `train` does;
"scratch": its from-scratch baseline), an optional step total, when it was added, and its state:

    waiting → running → done | failed | stopped

A stopped entry (the person stopped it; its run saved a checkpoint) runs again — continuing
from that checkpoint — the next time the queue runs; remove it to drop it. An entry left
"running" by a process that is gone (a crash, a power cut) is waiting again when the queue is
loaded: the engine continues a run from its last checkpoint. An entry that a live process is
training stays "running" (the window and the command line may share one queue).

A damaged queue file never stops anything: it is moved aside as `queue.json.damaged`, the queue
starts empty, and `Queue.problem` says so in one sentence. Stdlib only (no Qt, no torch).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferstudio.core.atomic import write_json_atomic
from transferstudio.core.errors import UserError
from transferstudio.core.paths import user_data_dir
from transferstudio.project.lock import LockOwner, _host, _proc_start

QUEUE_FILE = "queue.json"
SCHEMA_VERSION = 1
KINDS = ("train", "scratch")
STATES = ("waiting", "running", "done", "failed", "stopped")
RUNNABLE = ("waiting", "stopped")  # what `next_runnable` picks, first in the list first


class QueueError(UserError):
    """A queue command that cannot be done (no such entry, an entry that is training)."""


def queue_file() -> Path:
    return user_data_dir() / QUEUE_FILE


@dataclass
class Entry:
    project: Path  # the project folder (absolute)
    kind: str = "train"  # "train" | "scratch"
    steps: int | None = None  # total steps wanted; None: the project's setting
    added: float = field(default_factory=time.time)
    state: str = "waiting"
    message: str = ""  # why it failed, where it stopped, how it finished
    run: str = ""  # the run it trains, once known (a baseline continues its own run, not the latest)
    owner: dict[str, Any] | None = None  # the process training it, while "running"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def name(self) -> str:
        return self.project.name

    @property
    def runnable(self) -> bool:
        return self.state in RUNNABLE

    def describe(self) -> str:
        """One line: what it trains."""
        what = "from-scratch baseline of " if self.kind == "scratch" else ""
        steps = f", {self.steps} steps" if self.steps else ""
        return f"{what}{self.name}{steps}"

    def added_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.added))

    def owner_alive(self) -> bool:
        if self.owner is None:
            return False
        owner = LockOwner.from_text(json.dumps(self.owner))
        return owner is not None and owner.alive()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "project": str(self.project), "kind": self.kind, "steps": self.steps,
                "added": self.added, "added_text": self.added_text(), "state": self.state,
                "message": self.message, "run": self.run, "owner": self.owner}

    @classmethod
    def from_dict(cls, data: Any) -> "Entry":
        """Raises ValueError for anything that is not a well-formed entry."""
        if not isinstance(data, dict):
            raise ValueError("an entry is not an object")
        project, kind, state = data.get("project"), data.get("kind", "train"), data.get("state", "waiting")
        steps, added = data.get("steps"), data.get("added", 0.0)
        if not isinstance(project, str) or not project:
            raise ValueError("an entry has no project folder")
        if kind not in KINDS:
            raise ValueError(f"an entry has the unknown kind {kind!r}")
        if state not in STATES:
            raise ValueError(f"an entry has the unknown state {state!r}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"an entry has the step count {steps!r}")
        if isinstance(added, bool) or not isinstance(added, (int, float)):
            raise ValueError("an entry has no time it was added")
        owner = data.get("owner")
        return cls(project=Path(project), kind=kind, steps=steps, added=float(added), state=state,
                   message=str(data.get("message") or ""), run=str(data.get("run") or ""),
                   owner=owner if isinstance(owner, dict) else None,
                   id=str(data.get("id") or uuid.uuid4().hex[:12]))


class Queue:
    """The entries in order. Change it, then `save()`; to share it with another process, load
    it again right before a change (`Queue.load()` is cheap) and address entries by `id`."""

    def __init__(self, path: Path | None = None, entries: list[Entry] | None = None) -> None:
        self.path = Path(path) if path is not None else queue_file()
        self.entries: list[Entry] = list(entries or [])
        self.problem = ""  # a damaged file was set aside: what happened, in one sentence
        self.recovered: list[Entry] = []  # entries a crash left "running", waiting again

    # --- file ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None = None) -> "Queue":
        queue = cls(path)
        try:
            text = queue.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return queue
        except IsADirectoryError:
            queue.problem = f"The queue file {queue.path} is a folder; the queue is empty."
            return queue
        except UnicodeDecodeError:
            return queue._set_aside("it is not text")
        except OSError as exc:  # unreadable (permissions): say so, leave it where it is
            queue.problem = f"The queue file {queue.path} cannot be read ({exc.strerror or exc}); the queue is empty."
            return queue
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
                raise ValueError("it has no list of entries")
            version = data.get("schema_version", 1)
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise ValueError(f"it was written by a newer TransferStudio (queue version {version})")
            queue.entries = [Entry.from_dict(item) for item in data["entries"]]
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return queue._set_aside(str(exc))
        for entry in queue.entries:
            if entry.state == "running" and not entry.owner_alive():
                entry.state, entry.owner = "waiting", None
                entry.message = "interrupted; continues from its last checkpoint"
                queue.recovered.append(entry)
        return queue

    def _set_aside(self, why: str) -> "Queue":
        aside = self.path.with_name(self.path.name + ".damaged")
        if aside.exists():
            aside = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.damaged")
        try:
            os.replace(self.path, aside)
            kept = f"it was kept as {aside}"
        except OSError as exc:
            kept = f"it could not be moved aside ({exc.strerror or exc})"
        self.entries = []
        self.problem = f"The queue file {self.path} was damaged ({why}); {kept} and the queue starts empty."
        return self

    def save(self) -> None:
        write_json_atomic(self.path, {"schema_version": SCHEMA_VERSION,
                                      "entries": [e.to_dict() for e in self.entries]})

    # --- changes -------------------------------------------------------------------------
    def add(self, project: Path, kind: str = "train", steps: int | None = None) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if steps is not None and steps < 1:
            raise QueueError(f"{steps} is not a step count.", "Give 1 or more, or leave it out.")
        entry = Entry(project=Path(project).expanduser().resolve(), kind=kind, steps=steps)
        self.entries.append(entry)
        return entry

    def index(self, entry_id: str) -> int:
        for i, entry in enumerate(self.entries):
            if entry.id == entry_id:
                return i
        raise QueueError("That entry is no longer in the queue.", "It may have been removed elsewhere.")

    def get(self, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def _checked(self, index: int) -> int:
        if not 0 <= index < len(self.entries):
            count = len(self.entries)
            raise QueueError(f"The queue has no entry {index + 1}" + (f" (it has {count})." if count else
                                                                    " (it is empty)."),
                             "See the numbers with `transferstudio queue list`.")
        return index

    def remove(self, index: int) -> Entry:
        entry = self.entries[self._checked(index)]
        if entry.state == "running" and entry.owner_alive():
            raise QueueError(f"Entry {index + 1} ({entry.describe()}) is training now.",
                             "Stop that run first (it saves a checkpoint), then remove it.")
        return self.entries.pop(index)

    def move(self, index: int, to: int) -> None:
        """Put entry `index` at position `to` (both from 0; `to` past the end: last)."""
        entry = self.entries.pop(self._checked(index))
        self.entries.insert(max(0, min(to, len(self.entries))), entry)

    def next_runnable(self) -> Entry | None:
        """The first entry waiting (or stopped, to be continued), in queue order."""
        return next((e for e in self.entries if e.runnable), None)

    def running_elsewhere(self) -> Entry | None:
        """An entry another live process is training (one queue runner at a time)."""
        return next((e for e in self.entries if e.state == "running" and e.owner_alive()
                     and e.owner is not None and e.owner.get("pid") != os.getpid()), None)

    def waiting(self) -> list[Entry]:
        return [e for e in self.entries if e.runnable]

    def mark(self, entry_id: str, state: str, message: str = "") -> Entry:
        """Set an entry's state. "running" records this process as its owner."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        entry = self.entries[self.index(entry_id)]
        entry.state, entry.message = state, message
        entry.owner = _this_process() if state == "running" else None
        return entry

    def clear_finished(self) -> int:
        """Remove the done entries; how many went."""
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.state != "done"]
        return before - len(self.entries)


def _this_process() -> dict[str, Any]:
    owner = LockOwner(pid=os.getpid(), host=_host(), started=time.time(), proc_start=_proc_start(os.getpid()))
    return owner.to_dict()
