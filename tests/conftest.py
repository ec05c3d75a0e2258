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
    """Fail a test that leaves a worker QThread running (it would outlive its window). Window test
    modules use it for every test (`pytestmark = pytest.mark.usefixtures(...)`); Qt is imported
    here, not at the top, so engine tests stay Qt-free."""
    from transferstudio.qt.workers import live_threads

    yield
    running = live_threads()
    if running:
        names = [t.objectName() for t in running]
        for thread in running:
            thread.wait(120_000)  # let it end so later tests are not disturbed
        pytest.fail(f"test left worker threads running: {names}")
