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
from typing import Any, Callable, Mapping, Sequence  # noqa: E402

from transferstudio import __version__  # noqa: E402
from transferstudio.core.paths import user_log_dir  # noqa: E402

log = logging.getLogger("transferstudio")
LOG_FILE = "transferstudio.log"


# --- Linux: the X11 (xcb) platform plugin's system libraries ---------------------------------------
# Qt's xcb plugin needs a few X11 libraries that minimal installs leave out (libxcb-cursor0 since
# Qt 6.5); without them Qt prints a generic "could not load the Qt platform plugin" message and
# aborts. The launcher asks the dynamic linker first and names the packages to install.

# Fedora/RHEL packages of the libraries Debian names by their file (the rest are in "libxcb").
FEDORA_PACKAGES = {"libxcb-cursor.so.0": "xcb-util-cursor", "libxkbcommon-x11.so.0": "libxkbcommon-x11",
                   "libxkbcommon.so.0": "libxkbcommon", "libxcb-icccm.so.4": "xcb-util-wm",
                   "libxcb-keysyms.so.1": "xcb-util-keysyms", "libxcb-image.so.0": "xcb-util-image",
                   "libxcb-render-util.so.0": "xcb-util-renderutil", "libxcb-util.so.1": "xcb-util",
                   "libX11-xcb.so.1": "libX11-xcb"}


def qt_xcb_files() -> list[Path]:
    """The xcb platform plugin of the installed PySide6 and the Qt library it loads."""
    import importlib.util

    spec = importlib.util.find_spec("PySide6")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = []
    for folder in folders:
        qt = Path(folder) / "Qt"
        files += [qt / "plugins" / "platforms" / "libqxcb.so", *sorted((qt / "lib").glob("libQt6XcbQpa.so*"))[:1]]
    return [f for f in files if f.is_file()]


def missing_libraries(files: Sequence[Path], run: Callable[..., Any] | None = None) -> list[str]:
    """The shared libraries `ldd` reports as "not found" for `files` (none when ldd is missing)."""
    import subprocess

    run = run or subprocess.run
    missing: list[str] = []
    for file in files:
        try:
            done = run(["ldd", str(file)], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return []  # no ldd (or it hung): let Qt speak for itself
        for line in (done.stdout or "").splitlines():
            name, _, where = line.strip().partition("=>")
            if "not found" in where and name.strip() not in missing:
                missing.append(name.strip())
    return missing


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package of a library file: libxcb-cursor.so.0 -> libxcb-cursor0,
    libxkbcommon-x11.so.0 -> libxkbcommon-x11-0 (a digit before the version takes a hyphen)."""
    base, _, version = soname.partition(".so")
    version = version.lstrip(".").split(".")[0]
    base = base.lower()
    return f"{base}-{version}" if base[-1:].isdigit() and version else f"{base}{version}"


def xcb_problem(env: Mapping[str, str], platform: str, find_missing: Callable[[], list[str]],
                os_release: str = "") -> str | None:
    """What to tell a Linux user whose Qt would fail to open a window on X11 for want of system
    libraries, or None. Asked only when Qt would use xcb: on Linux, with QT_QPA_PLATFORM unset (and
    not a Wayland session, where Qt takes its Wayland plugin) or set to xcb. `os_release` (the text
    of /etc/os-release) picks the package manager's command."""
    if not platform.startswith("linux"):
        return None
    wanted = env.get("QT_QPA_PLATFORM", "").strip().lower()
    if wanted and not wanted.startswith("xcb"):
        return None
    if not wanted and env.get("XDG_SESSION_TYPE", "").lower() == "wayland" and env.get("WAYLAND_DISPLAY"):
        return None
    missing = find_missing()
    if not missing:
        return None
    ids = ""
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids += " " + value.strip().strip('"').lower()
    debian = sorted({debian_package(m) for m in missing})
    fedora = sorted({FEDORA_PACKAGES.get(m, "libxcb") for m in missing})
    apt = f"    sudo apt install {' '.join(debian)}"
    dnf = f"    sudo dnf install {' '.join(fedora)}"
    if any(name in ids for name in ("debian", "ubuntu")):
        how = f"Install them with:\n{apt}"
    elif any(name in ids for name in ("fedora", "rhel", "centos")):
        how = f"Install them with:\n{dnf}"
    else:
        how = f"Install them with your package manager, e.g.\n{apt}   (Debian, Ubuntu)\n{dnf}   (Fedora)"
    return ("TransferStudio cannot open its window: Qt's X11 platform plugin (xcb) needs system libraries "
            f"that are not installed: {', '.join(missing)}.\n{how}\nthen start TransferStudio again.")


def check_display_libraries() -> str | None:
    """xcb_problem for this computer."""
    try:
        os_release = Path("/etc/os-release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        os_release = ""
    return xcb_problem(os.environ, sys.platform, lambda: missing_libraries(qt_xcb_files()), os_release)


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
    problem = check_display_libraries()
    if problem:  # before QApplication: Qt would abort with its generic plugin message
        log.error("%s", problem)
        sys.stderr.write(problem + "\n")
        return 1
    install_excepthook()

    from PySide6.QtCore import QCoreApplication, QSettings
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName("TransferStudio")
    QCoreApplication.setApplicationName("TransferStudio")
    QCoreApplication.setApplicationVersion(__version__)
    app = QApplication(argv)
    app.setApplicationDisplayName("TransferStudio")
    settings = QSettings()
    from transferstudio.ui.theme import apply_theme, theme_setting

    apply_theme(theme_setting(settings), app)  # the system's light or dark unless Preferences says otherwise
    from PySide6.QtGui import QIcon

    from transferstudio.core.paths import resource

    app.setWindowIcon(QIcon(str(resource("icons", "transferstudio.png"))))

    from transferstudio.qt.workers import live_threads
    from transferstudio.ui.main_window import MainWindow

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
    if os.environ.get("TRANSFERSTUDIO_LAUNCH_PROBE"):
        _probe_launch(app, window)
    code = app.exec()
    log.info("TransferStudio exiting (%s)", code)
    return code


def _probe_launch(app: Any, window: Any) -> None:
    """For `devtools.launch_probe`: print the system's monotonic clock when the window is on
    screen and when the Model panel says "Ready to train" (the probe started the clock), then quit."""
    import time

    from PySide6.QtCore import QTimer

    def since_start() -> float:
        return time.monotonic()

    QTimer.singleShot(0, lambda: print(f"window shown: {since_start():.3f} s", flush=True))
    poll = QTimer(app)

    def check() -> None:
        if "Ready to train" in window.backbone_panel.status.text():
            print(f"ready to train: {since_start():.3f} s", flush=True)
            poll.stop()
            window.close()
            app.quit()

    poll.timeout.connect(check)
    poll.start(20)
    QTimer.singleShot(60_000, app.quit)


if __name__ == "__main__":
    raise SystemExit(main())
