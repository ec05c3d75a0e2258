"""The recently opened projects, newest first, kept in the application's settings."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal

MAX_RECENT = 10
KEY = "recent_projects"


class RecentProjects(QObject):
    changed = Signal()

    def __init__(self, settings: QSettings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings

    def folders(self) -> list[str]:
        value = self.settings.value(KEY, [])
        if isinstance(value, str):  # QSettings returns a bare string for one-item lists
            value = [value]
        return [str(v) for v in (value or [])]

    def existing(self) -> list[str]:
        return [f for f in self.folders() if Path(f).is_dir()]

    def add(self, folder: str | Path) -> None:
        folder = str(Path(folder).resolve())
        self._set([folder] + [f for f in self.folders() if f != folder])

    def forget(self, folder: str | Path) -> None:
        folder = str(Path(folder).resolve())
        self._set([f for f in self.folders() if f != folder])

    def clear(self) -> None:
        self._set([])

    def _set(self, folders: list[str]) -> None:
        self.settings.setValue(KEY, folders[:MAX_RECENT])
        self.changed.emit()
