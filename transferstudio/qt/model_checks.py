"""What the window learns about the open project's base model, in the background: the inspection
("what is this model, what can it do?") and the domain check ("how close is it to my pictures?").

`ModelChecks` follows a `ProjectState`: a new project, or another model or picture folder, starts
the inspection; the inspection's result becomes the state's typed `capabilities`; a usable model
is then checked against the pictures (the saved check at once while it still matches, else a
check on a worker thread once the choice has stayed put for a moment, one at a time).
QtCore only: the widgets show what its signals say."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from transferstudio.qt import tasks
from transferstudio.qt.project_state import ModelCapabilities, ProjectState
from transferstudio.qt.workers import TaskWorker

DOMAIN_CHECK_DELAY_MS = 1000  # the model and pictures stay chosen this long before the domain check starts


class ModelChecks(QObject):
    inspecting = Signal(str)  # path: an inspection started
    inspected = Signal(object)  # the inspection dict of the project's current model
    inspect_failed = Signal(str)  # one sentence
    domain_busy = Signal()  # a check is on its way
    domain_cleared = Signal()  # nothing to say (no project, or the model is not usable)
    domain_checked = Signal(object)  # the check's dict, or None when it could not run
    domain_failed = Signal(str)  # why it could not run (one sentence)

    def __init__(self, state: ProjectState, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.inspection: dict[str, Any] | None = None  # of the project's current model
        self.inspect_task: TaskWorker | None = None
        self.domain_task: TaskWorker | None = None
        self._domain_again = False  # the model or pictures changed during a check: check again after it
        self._domain_timer = QTimer(self)  # a model picked and at once replaced is not worth loading
        self._domain_timer.setObjectName("domain_timer")
        self._domain_timer.setSingleShot(True)
        self._domain_timer.setInterval(DOMAIN_CHECK_DELAY_MS)
        self._domain_timer.timeout.connect(self._start_domain_check)

    # --- inspection --------------------------------------------------------------------------
    def inspect(self, path: str | Path) -> None:
        """Inspect the project's (new) model; the state's capabilities are None until it reports."""
        path = str(path)
        self.inspection = None
        self.state.capabilities = None
        self.inspecting.emit(path)
        task = TaskWorker(tasks.inspect_backbone, path, name="inspect")
        task.succeeded.connect(lambda info, p=path: self._inspected(p, info))
        task.failed.connect(lambda m, a, p=path: self._inspect_failed(p, f"{m} {a}".strip()))
        task.crashed.connect(lambda _t, p=path: self._inspect_failed(
            p, "Could not inspect this model (details in the log file)."))
        task.done.connect(lambda t=task: t.wait(5))
        self.inspect_task = task.start()

    def _is_current(self, path: str) -> bool:
        project = self.state.project
        return project is not None and Path(path) == project.backbone

    def _inspect_failed(self, path: str, message: str) -> None:
        if self._is_current(path):
            self.inspect_failed.emit(message)

    def _inspected(self, path: str, info: dict[str, Any]) -> None:
        if not self._is_current(path):
            return  # an older request; the user has picked another model since
        self.inspection = info
        self.state.capabilities = ModelCapabilities.from_inspection(info)
        self.inspected.emit(info)

    def usable(self) -> bool:
        caps = self.state.capabilities
        return caps is not None and caps.usable

    # --- domain check ------------------------------------------------------------------------
    def check_domain(self) -> None:
        """The saved check at once when it still matches, else "checking…" and a check in the
        background once the choice has stayed put for a moment. Asked again during a check, it
        checks again after it."""
        self._domain_timer.stop()
        project = self.state.project
        if project is None or not self.usable():
            self.domain_cleared.emit()
            return
        saved = tasks.saved_domain_check(project)
        if saved is not None:
            self.domain_checked.emit(saved)
            return
        self.domain_busy.emit()
        self._domain_timer.start()

    def stop(self) -> None:
        """No check starts from now on (a closing window); one running ends by itself."""
        self._domain_timer.stop()
        self._domain_again = False

    def _start_domain_check(self) -> None:
        project = self.state.project
        if project is None or not self.usable():
            return
        if self.state.run_state == "starting":
            # A run is loading its model: two models loading at once on two threads can break
            # (diffusers' empty-weights loading patches torch for the whole process). Check later.
            self._domain_timer.start()
            return
        if self.domain_task is not None:
            self._domain_again = True
            return
        snapshot = replace(project)  # the worker reads this copy while the window may change the project
        task = TaskWorker(tasks.check_domain, snapshot, name="domain-check")
        task.succeeded.connect(lambda info, s=snapshot: self._domain_checked(s, info))
        task.failed.connect(lambda m, a, s=snapshot: self._domain_checked(s, None, m))
        task.crashed.connect(lambda _t, s=snapshot: self._domain_checked(
            s, None, "an unexpected error (details in the log file)."))
        task.done.connect(lambda t=task: self._domain_done(t))
        self.domain_task = task.start()

    def _domain_checked(self, snapshot: Any, info: dict[str, Any] | None, problem: str = "") -> None:
        project = self.state.project
        if project is None or (project.folder, project.backbone, project.images) != \
                (snapshot.folder, snapshot.backbone, snapshot.images):
            return  # about a model or pictures no longer chosen
        if info is None:
            self.domain_failed.emit(problem)
        self.domain_checked.emit(info)

    def _domain_done(self, task: TaskWorker) -> None:
        task.wait(5)
        if self.domain_task is task:
            self.domain_task = None
        if self._domain_again:
            self._domain_again = False
            self.check_domain()
