"""Session fixtures: tiny SD 1.x / SD 2.x-v / SDXL diffusers folders, built once per test session.

Wire them for the whole suite from tests/conftest.py with
    from conftest_sd import tiny_sd1_dir, tiny_sd2v_dir, tiny_sdxl_dir  # noqa: F401
Folders are shared and must not be modified: copy one (shutil.copytree) before damaging it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # tests/ on sys.path (pytest's default rootdir-less import) or tests as a package
    from tiny_sd import make_tiny_sd, make_tiny_sdxl
except ImportError:
    from tests.tiny_sd import make_tiny_sd, make_tiny_sdxl

# Built folders by kind, so a fixture imported into several modules still builds only once.
_BUILT: dict[str, Path] = {}


def _tiny(factory: pytest.TempPathFactory, kind: str) -> Path:
    folder = _BUILT.get(kind)
    if folder is None or not (folder / "model_index.json").is_file():
        folder = factory.mktemp(f"tiny_{kind}")
        if kind == "sdxl":
            make_tiny_sdxl(folder)
        else:
            make_tiny_sd(folder, version="1" if kind == "sd1" else "2v")
        _BUILT[kind] = folder
    return folder


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "sd1")


@pytest.fixture(scope="session")
def tiny_sd2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "sd2v")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny(tmp_path_factory, "sdxl")
