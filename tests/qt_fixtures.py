"""Fixtures shared by the window tests (imported by those modules only: engine tests stay Qt-free)."""
from __future__ import annotations

import pytest

from transferstudio.qt.workers import live_threads


@pytest.fixture(autouse=True)
def no_worker_threads_left(qtbot):
    """Fail a test that leaves a worker QThread running (it would outlive its window)."""
    yield
    running = live_threads()
    if running:
        names = [t.objectName() for t in running]
        for thread in running:
            thread.wait(120_000)  # let it end so later tests are not disturbed
        pytest.fail(f"test left worker threads running: {names}")
