"""Project files: atomic, versioned, portable."""
from __future__ import annotations

import json

import pytest

from transferstudio.core.errors import ProjectError
from transferstudio.project.config import TrainConfig, field_help
from transferstudio.project.project import SCHEMA_VERSION, create_project, load_project


def test_round_trip_keeps_settings_and_stores_inside_paths_relative(tmp_path):
    images = tmp_path / "proj" / "images"
    images.mkdir(parents=True)
    cfg = TrainConfig(steps=77, rank=8, alpha=3.5, preview_prompts=["a cat"], trigger="zq")
    project = create_project(tmp_path / "proj", backbone=tmp_path / "model", images=images, config=cfg)
    data = json.loads(project.file.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["images"] == "images"
    moved = tmp_path / "moved"
    (tmp_path / "proj").rename(moved)
    again = load_project(moved)
    assert again.images == moved / "images"
    assert again.config == cfg


def test_every_setting_has_help_and_invalid_values_are_named():
    for name in TrainConfig().to_dict():
        assert field_help(name), name
    bad = TrainConfig(steps=0, method="magic", learning_rate=5.0)
    problems = " ".join(bad.problems())
    assert "steps" in problems and "method" in problems and "learning_rate" in problems


def test_old_and_future_schemas(tmp_path):
    (tmp_path / "project.json").write_text(json.dumps(
        {"name": "old", "backbone": "/m", "images": "/i", "steps": 12, "rank": 2}))
    project = load_project(tmp_path)
    assert project.config.steps == 12 and project.config.rank == 2
    (tmp_path / "project.json").write_text(json.dumps({"schema_version": 999, "backbone": "/m", "images": "/i"}))
    with pytest.raises(ProjectError, match="newer"):
        load_project(tmp_path)


def test_creating_over_an_existing_project_is_refused(tmp_path):
    create_project(tmp_path, backbone=tmp_path, images=tmp_path)
    with pytest.raises(ProjectError, match="already exists"):
        create_project(tmp_path, backbone=tmp_path, images=tmp_path)
