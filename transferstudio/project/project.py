"""A project is a folder: project.json (settings, backbone, images) plus runs/<timestamp>/.

project.json is written atomically and carries a schema version; older versions are
migrated on load. Paths inside the project folder are stored relative to it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from transferstudio.core.atomic import write_json_atomic
from transferstudio.core.errors import ProjectError
from transferstudio.project.config import TrainConfig

PROJECT_FILE = "project.json"
SCHEMA_VERSION = 1
RUNS = "runs"


@dataclass
class Project:
    folder: Path
    name: str
    backbone: Path
    images: Path
    config: TrainConfig = field(default_factory=TrainConfig)
    prediction_type: str = ""  # user override for checkpoints that cannot tell ("" = detect)

    @property
    def file(self) -> Path:
        return self.folder / PROJECT_FILE

    @property
    def runs_dir(self) -> Path:
        return self.folder / RUNS

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "backbone": _store_path(self.backbone, self.folder),
            "images": _store_path(self.images, self.folder),
            "prediction_type": self.prediction_type,
            "config": self.config.to_dict(),
        }

    def save(self) -> None:
        write_json_atomic(self.file, self.to_dict())

    # --- runs ---------------------------------------------------------------------
    def runs(self) -> list[Path]:
        """Run folders, oldest first."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def latest_run(self) -> Path | None:
        runs = self.runs()
        return runs[-1] if runs else None

    def new_run_dir(self) -> Path:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.runs_dir / stamp
        n = 1
        while path.exists():
            n += 1
            path = self.runs_dir / f"{stamp}-{n}"
        path.mkdir(parents=True)
        return path


BUILTIN = "builtin:"  # bundled resources, e.g. "builtin:starter": valid in any installation


def _store_path(path: Path, folder: Path) -> str:
    path = Path(path)
    from transferstudio.core.paths import resources_dir

    try:
        if path.resolve().is_relative_to(resources_dir().resolve()):
            return BUILTIN + path.resolve().relative_to(resources_dir().resolve()).as_posix()
    except (OSError, ValueError):
        pass
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix() if \
            path.resolve().is_relative_to(folder.resolve()) else str(path)
    except (OSError, ValueError):
        return str(path)


def _load_path(value: str, folder: Path) -> Path:
    if value.startswith(BUILTIN):
        from transferstudio.core.paths import resource

        return resource(*value[len(BUILTIN):].split("/"))
    path = Path(value).expanduser()
    return path if path.is_absolute() else (folder / path)


def create_project(folder: Path, *, backbone: Path, images: Path, name: str | None = None,
                   config: TrainConfig | None = None, prediction_type: str = "") -> Project:
    folder = Path(folder)
    if (folder / PROJECT_FILE).exists():
        raise ProjectError(f"A project already exists in {folder}.",
                           "Open it instead, or choose an empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    project = Project(folder=folder, name=name or folder.name, backbone=Path(backbone).absolute(),
                      images=Path(images).absolute(), config=config or TrainConfig(),
                      prediction_type=prediction_type)
    problems = project.config.problems()
    if problems:
        raise ProjectError("Invalid settings: " + "; ".join(problems), "Fix the values and try again.")
    project.save()
    return project


def load_project(folder: Path) -> Project:
    folder = Path(folder)
    file = folder / PROJECT_FILE if folder.is_dir() or not folder.suffix else folder
    folder = file.parent
    if not file.is_file():
        raise ProjectError(f"No project found at {folder}.",
                           "Pick a folder that holds a project.json, or create a new project.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProjectError(f"The project file {file} is damaged ({exc}).",
                           "Restore it from a backup, or create a new project in another folder; "
                           "your images and runs are untouched.") from None
    if not isinstance(data, dict):
        raise ProjectError(f"The project file {file} is not a project.", "Create a new project.")
    data = migrate(data, file)
    try:
        config = TrainConfig.from_dict(data.get("config") or {})
        return Project(folder=folder, name=str(data.get("name") or folder.name),
                       backbone=_load_path(str(data["backbone"]), folder),
                       images=_load_path(str(data["images"]), folder), config=config,
                       prediction_type=str(data.get("prediction_type") or ""))
    except (KeyError, TypeError) as exc:
        raise ProjectError(f"The project file {file} is missing {exc}.",
                           "Create a new project; your images and runs are untouched.") from None


def migrate(data: dict[str, Any], file: Path) -> dict[str, Any]:
    """Bring an older project.json up to SCHEMA_VERSION; refuse newer ones."""
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ProjectError(f"{file} was made by a newer TransferStudio (schema {version}).",
                           "Update TransferStudio to open it.")
    if version == 0:  # pre-release layout: settings at top level
        config = {k: v for k, v in data.items() if k not in ("name", "backbone", "images")}
        data = {"name": data.get("name"), "backbone": data.get("backbone"),
                "images": data.get("images"), "config": config}
    data["schema_version"] = SCHEMA_VERSION
    return data
