"""The training queue as a view-model: the engine's `Queue` file, read again before every change
(the command line may change it meanwhile) and `queue_changed` after every change."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from transferstudio.project.queue import Entry, Queue


class QueueModel(QObject):
    queue_changed = Signal()
    problem_found = Signal(str)  # a damaged queue file was set aside; one sentence

    def __init__(self, path: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = path
        self._entries: list[Entry] = []
        self.problem = ""
        self.refresh()

    def _load(self) -> Queue:
        queue = Queue.load(self.path)
        if queue.problem:
            self.problem = queue.problem
            self.problem_found.emit(queue.problem)
        return queue

    def refresh(self) -> None:
        self._entries = self._load().entries
        self.queue_changed.emit()

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def _change(self, change: Callable[[Queue], Any]) -> Any:
        queue = self._load()
        try:
            result = change(queue)
        finally:
            self._entries = queue.entries
        queue.save()
        self.queue_changed.emit()
        return result

    def add(self, folder: Path, kind: str = "train", steps: int | None = None) -> Entry:
        return self._change(lambda q: q.add(folder, kind, steps))

    def remove(self, entry_id: str) -> None:
        self._change(lambda q: q.remove(q.index(entry_id)))

    def move(self, entry_id: str, by: int) -> None:
        """Up (-1) or down (+1) one place."""
        self._change(lambda q: q.move(q.index(entry_id), max(0, q.index(entry_id) + by)))

    def mark(self, entry_id: str, state: str, message: str = "") -> None:
        def change(q: Queue) -> None:
            if q.get(entry_id) is not None:  # removed meanwhile (e.g. on the command line): nothing to mark
                q.mark(entry_id, state, message)
        self._change(change)

    def next_runnable(self) -> Entry | None:
        return self._load().next_runnable()

    def running_elsewhere(self) -> Entry | None:
        return self._load().running_elsewhere()

    def get(self, entry_id: str) -> Entry | None:
        return next((e for e in self._entries if e.id == entry_id), None)

