"""The page shown when no project is open: new, open, the sample project, and recent projects."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from transferstudio.qt.recent import RecentProjects


class WelcomePage(QWidget):
    new_requested = Signal()
    open_requested = Signal()
    sample_requested = Signal()
    project_chosen = Signal(str)  # a recent project's folder

    def __init__(self, app_name: str, recent: RecentProjects, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._recent = recent
        title = QLabel(f"<h1>{app_name}</h1><p>Teach a pretrained image generator your own pictures — "
                       "offline, on this computer.</p>")
        title.setWordWrap(True)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        new = QPushButton("New project…")
        new.clicked.connect(self.new_requested)
        open_ = QPushButton("Open project…")
        open_.clicked.connect(self.open_requested)
        self.sample_button = QPushButton("Open the sample project")
        self.sample_button.setToolTip("A ready project (“Landscapes → cities”) with a small bundled model.")
        self.sample_button.clicked.connect(self.sample_requested)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (new, open_, self.sample_button):
            b.setMinimumHeight(36)
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.recent_list = QListWidget()
        self.recent_list.setMaximumWidth(640)
        self.recent_list.itemActivated.connect(
            lambda item: self.project_chosen.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.recent_label = QLabel("Recent projects")
        col = QVBoxLayout(self)
        col.addStretch(1)
        col.addWidget(title)
        col.addLayout(buttons)
        col.addSpacing(24)
        col.addWidget(self.recent_label, 0, Qt.AlignmentFlag.AlignHCenter)
        col.addWidget(self.recent_list, 0, Qt.AlignmentFlag.AlignHCenter)
        col.addStretch(2)
        recent.changed.connect(self.refresh)
        self.refresh()

    def showEvent(self, event: Any) -> None:  # noqa: N802
        self.refresh()  # a recent project's folder may have gone meanwhile
        super().showEvent(event)

    def refresh(self) -> None:
        self.recent_list.clear()
        for folder in self._recent.existing():
            item = QListWidgetItem(f"{Path(folder).name}   ({folder})")
            item.setData(Qt.ItemDataRole.UserRole, folder)
            self.recent_list.addItem(item)
        shown = self.recent_list.count() > 0
        self.recent_list.setVisible(shown)
        self.recent_label.setVisible(shown)
