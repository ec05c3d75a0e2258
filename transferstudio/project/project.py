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
    """Write a new project.json. Everything is checked before anything is written, and a
    refused or failed creation leaves no folder behind that was not there before."""
    folder = Path(folder)
    if (folder / PROJECT_FILE).exists():
        raise ProjectError(f"A project already exists in {folder}.",
                           "Open it instead, or choose an empty folder.")
    project = Project(folder=folder, name=name or folder.name, backbone=Path(backbone).absolute(),
                      images=Path(images).absolute(), config=config or TrainConfig(),
                      prediction_type=prediction_type)
    problems = project.config.problems()
    if problems:
        raise ProjectError("Invalid settings: " + "; ".join(problems) + ".", "Fix the values and try again.")
    images = Path(images).expanduser()
    advice = "Pick the folder that holds your training images."
    if not images.exists():
        raise ProjectError(f"Image folder not found: {images}.", advice)
    if not images.is_dir():
        raise ProjectError(f"The images path {images} is not a folder.", advice)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        project.save()
    except BaseException:
        for path in created:  # deepest first; only folders this call made, and only if empty
            try:
                path.rmdir()
            except OSError:
                break
        raise
    return project


def load_project(folder: Path) -> Project:
    """Read and check project.json: every field is validated, and anything wrong is one
    ProjectError sentence naming the file and the field."""
    folder = Path(folder)
    file = folder / PROJECT_FILE if folder.is_dir() or not folder.suffix else folder
    folder = file.parent
    if not file.is_file():
        raise ProjectError(f"No project found at {folder}.",
                           "Pick a folder that holds a project.json, or create a new project.")
    keep = "Restore it from a backup, or create a new project in another folder; your images and runs are untouched."
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProjectError(f"The project file {file} is damaged (not UTF-8 text: {exc.reason}).", keep) from None
    except OSError as exc:
        raise ProjectError(f"Cannot read the project file {file} ({exc.strerror or exc}).",
                           "Check that you may read it.") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProjectError(f"The project file {file} is damaged ({exc}).", keep) from None
    if not isinstance(data, dict):
        raise ProjectError(f"The project file {file} is not a project (it holds {_kind(data)}, "
                           "not an object).", keep)
    data = migrate(data, file)
    fix = f"Correct it in {file}, or create a new project; your images and runs are untouched."
    for key in ("backbone", "images"):
        if key not in data:
            raise ProjectError(f"The project file {file} has no '{key}'.", fix)
        if not isinstance(data[key], str) or not data[key].strip():
            raise ProjectError(f"The project file {file} has an unusable '{key}' ({_kind(data[key])}); "
                               "it must be a path.", fix)
    for key in ("name", "prediction_type"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ProjectError(f"The project file {file} has an unusable '{key}' ({_kind(data[key])}); "
                               "it must be text.", fix)
    if data.get("prediction_type") not in (None, *PREDICTION_TYPES):
        raise ProjectError(f"The project file {file} has an unknown 'prediction_type' "
                           f"{data['prediction_type']!r:.40}; it must be one of "
                           f"{', '.join(repr(p) for p in PREDICTION_TYPES)}.", fix)
    settings = data.get("config", {})
    if not isinstance(settings, dict):
        raise ProjectError(f"The project file {file} has unusable settings: 'config' is {_kind(settings)}, "
                           "not an object of named settings.", fix)
    config = TrainConfig.from_dict(settings)
    problems = config.field_problems()
    if problems:
        raise ProjectError(f"The project file {file} has invalid settings: {'; '.join(problems)}.", fix)
    return Project(folder=folder, name=str(data.get("name") or folder.name),
                   backbone=_load_path(data["backbone"], folder),
                   images=_load_path(data["images"], folder), config=config,
                   prediction_type=str(data.get("prediction_type") or ""))


PREDICTION_TYPES = ("", "epsilon", "v_prediction", "sample")


def _kind(value: object) -> str:
    """What a JSON value is, in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the value {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r:.40}" if value.strip() else "empty text"
    return "a list" if isinstance(value, list) else "an object"


def migrate(data: dict[str, Any], file: Path) -> dict[str, Any]:
    """Bring an older project.json up to SCHEMA_VERSION; refuse newer ones."""
    version = data.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ProjectError(f"The project file {file} has an invalid schema_version ({_kind(version)}); "
                           f"it must be a whole number (this TransferStudio writes {SCHEMA_VERSION}).",
                           f"Correct it in {file}, or create a new project; your images and runs are untouched.")
    if version > SCHEMA_VERSION:
        raise ProjectError(f"{file} was made by a newer TransferStudio (schema {version}).",
                           "Update TransferStudio to open it.")
    if version == 0:  # pre-release layout: settings at top level
        config = {k: v for k, v in data.items() if k not in ("name", "backbone", "images")}
        data = {"name": data.get("name"), "backbone": data.get("backbone"),
                "images": data.get("images"), "config": config}
    data["schema_version"] = SCHEMA_VERSION
    return data
