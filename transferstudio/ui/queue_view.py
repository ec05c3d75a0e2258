"""Training ▸ Queue…: runs of one or more projects, trained one after another.

The list is the engine's queue file (shared with `transferstudio queue`); Up / Down / Remove
change it at once. "Run queue" trains each waiting entry in turn when the window is idle: it
opens the entry's project and starts it through the window's own training path (so a run looks
and saves exactly like one started by hand), and marks the entry done, failed or stopped when the
run ends. Stopping a queued run (Stop, or "Stop queue") stops the queue there; the stopped entry
continues from its checkpoint when the queue runs again.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from transferstudio.core.events import Failed, Finished, Stopped
from transferstudio.project.queue import Entry
from transferstudio.qt.queue import QueueModel

STATE_TEXT = {"waiting": "Waiting", "running": "Training…", "done": "Done", "failed": "Failed",
              "stopped": "Stopped"}


class QueueRunner(QObject):
    """Starts the queue's entries one by one on `window` (a MainWindow) while active."""

    active_changed = Signal(bool)
    entry_started = Signal(str)  # entry id
    entry_ended = Signal(str, str)  # entry id, state
    finished = Signal()  # no waiting entry is left

    def __init__(self, window: Any, model: QueueModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.window = window
        self.model = model
        self.active = False
        self.current: str | None = None  # the entry whose run is going
        window.train_view.run_finished.connect(self._run_finished)

    def start(self) -> None:
        self._set_active(True)
        self._start_next()

    def stop(self) -> None:
        """Stop the queue: the current run stops (it saves) and the rest stays waiting."""
        self._set_active(False)
        if self.current is not None and self.window.train_view.is_running():
            self.window.train_view.stop()

    def _set_active(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            self.active_changed.emit(active)

    def _start_next(self) -> None:
        if not self.active or self.current is not None or self.window.train_view.is_running():
            return  # a run that is going (the queue's or one started by hand) ends first
        entry = self.model.next_runnable()
        if entry is None:
            self._set_active(False)
            self.finished.emit()
            return
        self.current = entry.id
        self.model.mark(entry.id, "running", "opening the project")
        if not self._begin(entry):
            self.current = None
            self.model.mark(entry.id, "failed", "the project could not be opened or its settings are not valid")
            self.entry_ended.emit(entry.id, "failed")
            QTimer.singleShot(0, self._start_next)
            return
        self.model.mark(entry.id, "running", "training")
        self.entry_started.emit(entry.id)

    def _begin(self, entry: Entry) -> bool:
        window = self.window
        if not window.open_project(entry.project, offer_continue=False) or window.project is None:
            return False
        if entry.steps:
            config = window.settings_form.config()
            config.steps = entry.steps
            window.settings_form.set_config(config)  # the run trains to the entry's step total
        return bool(window.train_queued(scratch=entry.kind == "scratch"))

    def _run_finished(self, end: Any) -> None:
        entry_id, self.current = self.current, None
        if entry_id is not None:
            if isinstance(end, Finished):
                state, message = "done", f"finished at step {end.step}"
            elif isinstance(end, Stopped):
                state = "stopped"
                message = (f"stopped at step {end.step}; continues from its checkpoint" if end.checkpoint
                           else "stopped before its first step")
                self._set_active(False)  # a person stopped it: the queue waits for "Run queue"
            elif isinstance(end, Failed):
                state, message = "failed", f"{end.message} {end.advice}".strip()
            else:
                state, message = "failed", "internal error (Help ▸ Open Log Folder)"
            self.model.mark(entry_id, state, message)
            self.entry_ended.emit(entry_id, state)
        if self.active:  # after the window's own follow-up (e.g. a baseline queued behind this run)
            QTimer.singleShot(0, self._start_next)


class QueueDialog(QDialog):
    """The queue's entries with their state; Up / Down / Remove; add the open project."""

    def __init__(self, window: Any, model: QueueModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent if parent is not None else window)
        self.setWindowTitle("Training Queue")
        self.window_ = window
        self.model = model or QueueModel(parent=self)
        self.runner = QueueRunner(window, self.model, self)

        self.intro = QLabel("Runs here are trained one after another, in this order. The queue is kept "
                            "when the app closes; a stopped run continues from its checkpoint.")
        self.intro.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["#", "Training", "State", "Note"])
        self.tree.setRootIsDecorated(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setAlternatingRowColors(True)
        header = self.tree.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(1, 340)
        header.resizeSection(2, 96)  # "Training…" with room to spare
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #b00020;")
        self.problem.hide()
        self.status = QLabel()
        self.status.setWordWrap(True)

        self.up_button = QPushButton("Up")
        self.down_button = QPushButton("Down")
        self.remove_button = QPushButton("Remove")
        self.add_button = QPushButton("Add This Project")
        self.add_baseline_button = QPushButton("Add Its From-Scratch Baseline")
        self.add_baseline_button.setToolTip("The same model from random weights, for the same steps: the report "
                                            "then shows what starting pretrained bought (small models only).")
        self.run_button = QPushButton("Run Queue")
        self.run_button.setDefault(True)
        self.close_button = QPushButton("Close")

        edit_row = QHBoxLayout()
        for button in (self.up_button, self.down_button, self.remove_button):
            edit_row.addWidget(button)
        edit_row.addStretch(1)
        edit_row.addWidget(self.add_button)
        edit_row.addWidget(self.add_baseline_button)
        run_row = QHBoxLayout()
        run_row.addWidget(self.status, 1)
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.intro)
        layout.addWidget(self.problem)
        layout.addWidget(self.tree, 1)
        layout.addLayout(edit_row)
        layout.addLayout(run_row)
        self.resize(900, 440)

        self.up_button.clicked.connect(lambda: self._move(-1))
        self.down_button.clicked.connect(lambda: self._move(1))
        self.remove_button.clicked.connect(self.remove_selected)
        self.add_button.clicked.connect(lambda: self.add_project("train"))
        self.add_baseline_button.clicked.connect(lambda: self.add_project("scratch"))
        self.run_button.clicked.connect(self._toggle_run)
        self.close_button.clicked.connect(self.close)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.model.queue_changed.connect(self._fill)
        self.model.problem_found.connect(self._show_problem)
        self.runner.active_changed.connect(lambda _active: self._update_buttons())
        self.runner.finished.connect(lambda: self.status.setText("The queue is done."))
        window.project_opened.connect(lambda _p: self._update_buttons())
        window.project_closed.connect(self._update_buttons)
        if self.model.problem:
            self._show_problem(self.model.problem)
        self._fill()

    # --- actions ---------------------------------------------------------------------------
    def add_project(self, kind: str = "train") -> Entry | None:
        project = self.window_.project
        if project is None:
            return None
        entry = self.model.add(project.folder, kind)
        self._select(entry.id)
        return entry

    def remove_selected(self) -> None:
        entry_id = self.selected_id()
        if entry_id is None or entry_id == self.runner.current:
            return
        self.model.remove(entry_id)

    def _move(self, by: int) -> None:
        entry_id = self.selected_id()
        if entry_id is not None:
            self.model.move(entry_id, by)
            self._select(entry_id)

    def _toggle_run(self) -> None:
        if self.runner.active:
            self.runner.stop()
            self.status.setText("Stopping the queue: the current run saves a checkpoint.")
        else:
            self.model.refresh()
            busy = self.model.running_elsewhere()
            if busy is not None:
                self.status.setText(f"The queue is already running in another process (pid {busy.owner['pid']}, "
                                    f"training {busy.describe()}).")
                return
            self.status.setText("Running the queue…" if self.model.next_runnable() else "Nothing is waiting.")
            self.runner.start()

    # --- view --------------------------------------------------------------------------------
    def showEvent(self, event: Any) -> None:  # noqa: N802
        self.model.refresh()  # `transferstudio queue` may have changed it meanwhile
        super().showEvent(event)

    def selected_id(self) -> str | None:
        items = self.tree.selectedItems()
        return items[0].data(0, Qt.ItemDataRole.UserRole) if items else None

    def _select(self, entry_id: str) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, Qt.ItemDataRole.UserRole) == entry_id:
                self.tree.setCurrentItem(item)
                return

    def _fill(self) -> None:
        selected = self.selected_id()
        self.tree.clear()
        for i, entry in enumerate(self.model.entries(), 1):
            item = QTreeWidgetItem([str(i), entry.describe(), STATE_TEXT.get(entry.state, entry.state),
                                    entry.message])
            item.setData(0, Qt.ItemDataRole.UserRole, entry.id)
            item.setToolTip(1, f"{entry.describe()}\n{entry.project}\nadded {entry.added_text()}")
            item.setToolTip(3, entry.message)
            self.tree.addTopLevelItem(item)
        if selected is not None:
            self._select(selected)
        self._update_buttons()

    def _show_problem(self, text: str) -> None:
        self.problem.setText(text)
        self.problem.show()

    def _update_buttons(self) -> None:
        entries = self.model.entries()
        entry_id = self.selected_id()
        index = next((i for i, e in enumerate(entries) if e.id == entry_id), None)
        self.up_button.setEnabled(index is not None and index > 0)
        self.down_button.setEnabled(index is not None and index < len(entries) - 1)
        self.remove_button.setEnabled(index is not None and entry_id != self.runner.current)
        has_project = self.window_.project is not None
        self.add_button.setEnabled(has_project)
        self.add_baseline_button.setEnabled(has_project)
        self.run_button.setText("Stop Queue" if self.runner.active else "Run Queue")
        self.run_button.setEnabled(self.runner.active or any(e.runnable for e in entries))
