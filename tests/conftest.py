"""Shared fixtures. Everything is built locally; nothing is downloaded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from tiny_ddpm import make_images, make_tiny_ddpm  # noqa: E402
from tiny_sd import make_tiny_sd, make_tiny_sdxl  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny test models run faster on one thread than fighting over two cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory) -> Path:
    return make_tiny_ddpm(tmp_path_factory.mktemp("models") / "tiny-ddpm")


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    return make_images(tmp_path / "images", n=4)


# Tiny SD 1.x / SD 2.x-v / SDXL diffusers folders, built once per session. They are shared and
# must not be modified: copy one (shutil.copytree) before damaging it.

@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd1"), version="1")


@pytest.fixture(scope="session")
def tiny_sd2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd2v"), version="2v")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture()
def no_worker_threads_left(qtbot):
    """Fail a test that leaves work running after it: a worker QThread, a task in a QThreadPool
    (the global one or any pool a widget owns), or an active QTimer of the application (a debounce
    or retry that would start work after the test). Windows are closed first, as a person closing them would (that is
    when they stop their own timers), then checked. Window test modules use it for every test
    (`pytestmark = pytest.mark.usefixtures(...)`); Qt is imported here, not at the top, so engine
    tests stay Qt-free."""
    from PySide6.QtCore import QCoreApplication, QThreadPool, QTimer
    from PySide6.QtWidgets import QApplication

    from transferstudio.qt.workers import live_threads

    yield
    app = QApplication.instance()
    for widget in QApplication.topLevelWidgets():
        if widget.isVisible():
            widget.close()
    QCoreApplication.processEvents()
    problems = []

    running = live_threads()
    if running:
        names = [t.objectName() for t in running]
        for thread in running:
            thread.wait(120_000)  # let it end so later tests are not disturbed
        problems.append(f"worker threads still running: {names}")

    roots = [app, *QApplication.topLevelWidgets()]
    pools = [QThreadPool.globalInstance()] + [pool for root in roots for pool in root.findChildren(QThreadPool)]
    busy = [f"{type(pool.parent()).__name__ if pool.parent() else 'global'} pool" for pool in pools
            if pool.activeThreadCount() > 0]
    for pool in pools:
        pool.waitForDone(120_000)
    if busy:
        problems.append(f"thread-pool tasks still running: {busy}")

    # The application's own timers (owned by its windows, panels and workers); Qt's (a status bar
    # message clearing itself) and pyqtgraph's are theirs to manage.
    timers = [timer for root in roots for timer in root.findChildren(QTimer) if timer.isActive()
              and type(timer.parent()).__module__.startswith("transferstudio")]
    if timers:
        names = [f"{type(t.parent()).__name__}.{t.objectName() or 'QTimer'} ({t.interval()} ms)" for t in timers]
        for timer in timers:
            timer.stop()  # nothing of this test fires during the next one
        problems.append(f"timers still running: {names}")

    if problems:
        pytest.fail("test left work running: " + "; ".join(problems))
