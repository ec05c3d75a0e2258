"""Where things live: bundled resources (one function for source, wheel and frozen builds)
and the user's own folders (settings, logs, caches) via platformdirs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "TransferStudio"


def resources_dir() -> Path:
    """The bundled `resources/` folder.

    Frozen (PyInstaller): `sys._MEIPASS/resources`. Source checkout: `<repo>/resources`.
    Installed wheel: the `transferstudio/_resources` package data.
    `TRANSFERSTUDIO_RESOURCES` overrides all (tests, unusual installs).
    """
    override = os.environ.get("TRANSFERSTUDIO_RESOURCES")
    if override:
        return Path(override)
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        return Path(sys._MEIPASS) / "resources"
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "resources"
    if checkout.is_dir():
        return checkout
    return package / "_resources"


def resource(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def user_data_dir() -> Path:
    from platformdirs import user_data_dir as _dir

    return Path(os.environ.get("TRANSFERSTUDIO_HOME") or _dir(APP, appauthor=False))


def user_log_dir() -> Path:
    return user_data_dir() / "logs"


def user_cache_dir() -> Path:
    return user_data_dir() / "cache"
