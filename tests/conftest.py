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

from conftest_sd import tiny_sd1_dir, tiny_sd2v_dir, tiny_sdxl_dir  # noqa: E402,F401
from tiny_ddpm import make_images, make_tiny_ddpm  # noqa: E402


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
