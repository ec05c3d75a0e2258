"""Desktop entry point: `python -m transferstudio.app [PROJECT_DIR]`."""
from __future__ import annotations

import os

import transferstudio.core.offline  # noqa: F401  (first: no code path reaches a hub)

import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from logging.handlers import RotatingFileHandler  # noqa: E402
from pathlib import Path  # noqa: E402
from types import TracebackType  # noqa: E402
from typing import Sequence  # noqa: E402

from transferstudio import __version__  # noqa: E402
from transferstudio.core.paths import user_log_dir  # noqa: E402

log = logging.getLogger("transferstudio")
LOG_FILE = "transferstudio.log"


def setup_logging() -> Path:
    folder = user_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_FILE
    handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def install_excepthook() -> None:
    """Unexpected errors: the full traceback to the log, a readable dialog to the person."""
    showing = threading.Event()  # one dialog at a time, even if the dialog itself fails

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        text = "".join(traceback.format_exception(kind, value, tb))
        log.error("unhandled exception:\n%s", text)
        sys.__stderr__ and sys.__stderr__.write(text)
        from PySide6.QtCore import QThread
        from PySide6.QtWidgets import QApplication, QMessageBox

        app = QApplication.instance()
        if app is None or QThread.currentThread() is not app.thread() or showing.is_set():
            return
        showing.set()
        try:
            box = QMessageBox(QMessageBox.Icon.Critical, "TransferStudio — internal error",
                              "Something went wrong inside TransferStudio. Your project, settings and "
                              "pictures are safe; save your work if you can.")
            box.setInformativeText(f"{kind.__name__}: {value}\n\nThe full details are in the log folder "
                                   f"(Help ▸ Open Log Folder):\n{user_log_dir()}")
            box.setDetailedText(text)
            box.exec()
        finally:
            showing.clear()

    sys.excepthook = hook


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if "--self-check" in argv[1:]:  # the installation check; see transferstudio/selfcheck.py
        from transferstudio.selfcheck import main as self_check

        return self_check([a for a in argv[1:] if a != "--self-check"])
    log_path = setup_logging()
    log.info("TransferStudio %s starting (log: %s)", __version__, log_path)
    install_excepthook()

    from PySide6.QtCore import QCoreApplication, QSettings
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName("TransferStudio")
    QCoreApplication.setApplicationName("TransferStudio")
    QCoreApplication.setApplicationVersion(__version__)
    app = QApplication(argv)  # no palette or style set: the app follows the system's
    app.setApplicationDisplayName("TransferStudio")
    from PySide6.QtGui import QIcon

    from transferstudio.core.paths import resource

    app.setWindowIcon(QIcon(str(resource("icons", "transferstudio.png"))))

    from transferstudio.qt.workers import live_threads
    from transferstudio.ui.main_window import MainWindow

    settings = QSettings()
    window = MainWindow(settings)
    window.show()
    args = [a for a in argv[1:] if not a.startswith("-")]
    if args:
        window.open_project(Path(args[0]).expanduser())
    elif not settings.value("app/first_run_done", False, bool):
        # First start: open the ready-to-train sample project so there is something to try.
        settings.setValue("app/first_run_done", True)
        window.open_sample_project()

    def last_resort() -> None:
        # A run still going at exit (forced quit): it was asked to stop; give it time to save.
        for thread in live_threads():
            if not thread.wait(10_000):
                log.error("a worker thread did not end; exiting anyway (checkpoints are atomic)")
                logging.shutdown()
                os._exit(1)

    app.aboutToQuit.connect(last_resort)
    code = app.exec()
    log.info("TransferStudio exiting (%s)", code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
