"""The Report tab: the transfer report of a trained run (did starting pretrained help, is it
overfitting or copying), made on a worker thread and shown here as the same report.html that
`transferstudio report` writes (it lives in the run's `report/` folder, readable offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from transferstudio.qt import history, tasks
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.widgets import MessageLabel


class ReportView(QWidget):
    failed = Signal(str, str)  # message, advice
    crashed = Signal(str)
    report_ready = Signal(str)  # path of report.html

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Any = None
        self.task: TaskWorker | None = None
        self.run = QComboBox()
        self.run.setToolTip("The training run to report on (a from-scratch baseline of the project is compared "
                            "with it automatically).")
        self.run.currentIndexChanged.connect(lambda *_: self._show_existing())
        self.make_button = QPushButton("Make report")
        self.make_button.setToolTip("Sample the base and the trained model at the same seeds, measure them against "
                                    "your held-out pictures, check for copies of your pictures and compare with "
                                    "a from-scratch run if there is one. About a minute for the starter on a CPU.")
        self.make_button.clicked.connect(self.make_report)
        self.open_button = QPushButton("Open in browser")
        self.open_button.setToolTip("The same report.html, in your web browser (it works offline).")
        self.open_button.clicked.connect(self._open_in_browser)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setFixedWidth(160)
        policy = self.busy.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # showing it never moves the buttons
        self.busy.setSizePolicy(policy)
        self.busy.hide()
        self.status = MessageLabel()
        top = QHBoxLayout()
        top.addWidget(QLabel("Run"))
        top.addWidget(self.run, 1)
        top.addWidget(self.make_button)
        top.addWidget(self.open_button)
        top.addWidget(self.busy)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(self.browser, 1)
        self.set_project(None)

    # --- state ------------------------------------------------------------------------------
    def set_project(self, project: Any) -> None:
        self.project = project
        self.refresh_runs()

    def refresh_runs(self) -> None:
        """The project's trained runs (not its from-scratch baselines), newest first."""
        keep = self.run.currentData()
        self.run.blockSignals(True)
        self.run.clear()
        if self.project is not None:
            for run in history.trained_runs(self.project):
                if run.baseline is None:
                    self.run.addItem(f"{run.id} — {run.method}, {run.trained_step}/{run.total} steps", str(run.folder))
        index = self.run.findData(keep)
        self.run.setCurrentIndex(index if index >= 0 else 0)
        self.run.blockSignals(False)
        self._show_existing()

    def report_path(self) -> Path | None:
        folder = self.run.currentData()
        return Path(folder) / tasks.REPORT_FOLDER / "report.html" if folder else None

    def is_busy(self) -> bool:
        return self.task is not None and self.task.is_running()

    def _show_existing(self) -> None:
        path = self.report_path()
        busy = self.is_busy()
        self.make_button.setEnabled(path is not None and not busy)
        if path is None:
            self.browser.clear()
            self.status.setText("Train the project first: the report looks at a trained run.")
        elif path.is_file():
            self.browser.setSource(QUrl.fromLocalFile(str(path)))
            self.browser.reload()
            self.status.setText(f"{path}")
        else:
            self.browser.clear()
            self.status.setText("No report of this run yet: Make report looks at what it learned.")
        self.open_button.setEnabled(path is not None and path.is_file())

    # --- making one -------------------------------------------------------------------------
    def make_report(self) -> None:
        folder = self.run.currentData()
        if self.project is None or not folder or self.is_busy():
            return
        self.task = TaskWorker(tasks.make_report, self.project, folder, name="report")
        self.task.succeeded.connect(self._made)
        self.task.failed.connect(self._failed)
        self.task.crashed.connect(self._crashed)
        self.task.done.connect(self._done)
        self.make_button.setEnabled(False)
        self.busy.show()
        self.status.setText("Making the report: sampling both models, measuring, checking for copies…")
        self.task.start()

    def _made(self, path: str) -> None:
        self._show_existing()
        self.report_ready.emit(str(path))

    def _failed(self, message: str, advice: str) -> None:
        self.status.setText(f"{message} {advice}".strip())
        self.failed.emit(message, advice)

    def _crashed(self, text: str) -> None:
        self.status.setText("The report failed because of an internal error (details in the log).")
        self.crashed.emit(text)

    def _done(self) -> None:
        self.busy.hide()
        self.task = None
        self.make_button.setEnabled(self.run.currentData() is not None)

    def _open_in_browser(self) -> None:
        path = self.report_path()
        if path is not None and path.is_file():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def wait_idle(self, timeout_s: float) -> bool:
        return self.task is None or self.task.wait(timeout_s)
