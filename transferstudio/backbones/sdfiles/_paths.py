"""Where the bundled loading files live (source tree, or a frozen one-folder build)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG_KEYS = ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner")


def loading_root() -> Path:
    """Folder holding `resources/loading/<key>/` pipeline skeletons."""
    override = os.environ.get("TRANSFERSTUDIO_RESOURCES")
    if override:
        return Path(override) / "loading"
    frozen = getattr(sys, "_MEIPASS", None)  # PyInstaller unpacks data next to the app
    if frozen:
        return Path(frozen) / "resources" / "loading"
    return Path(__file__).resolve().parents[3] / "resources" / "loading"
