"""Prior preservation (issue 18): class pictures are made once by the untouched base model, kept in
the project and reused, made again when the base or the setting changes, and their term is in
the logged loss."""
from __future__ import annotations

import json

from tiny_ddpm import make_images
from transferstudio.core.events import Message
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.project.run import project_runs
from transferstudio.training.prior import CLASS_FOLDER, MARKER
from transferstudio.training.trainer import TrainJob, train

FAST = dict(preview_steps=2, preview_seeds=[1], batch_size=2, preview_every=0, device="cpu", precision="fp32",
            rank=2, alpha=2.0)


def _sets(project) -> list:
    root = project.folder / CLASS_FOLDER
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_class_pictures_are_made_once_reused_and_remade_when_settings_change(tmp_path, tiny_ddpm):
    project = create_project(tmp_path / "p", backbone=tiny_ddpm, images=make_images(tmp_path / "i", n=4),
                             config=TrainConfig(**FAST, steps=2, class_pictures=3, prior_loss_weight=0.5))
    events = list(train(TrainJob(project)))
    (folder,) = _sets(project)
    pictures = sorted(folder.glob("class_*.png"))
    assert len(pictures) == 3 and (folder / MARKER).is_file()
    assert [e for e in events if isinstance(e, Message) and "class pictures" in e.text]
    stamps = [p.stat().st_mtime_ns for p in pictures]

    # the term is logged beside the loss on the user's pictures, every step
    (run,) = project_runs(project)
    rows = run.metrics()
    assert [sorted(r["losses"]) for r in rows] == [["class pictures", "your pictures"]] * 2
    assert all(abs(r["loss"] - (r["losses"]["your pictures"] + 0.5 * r["losses"]["class pictures"])) < 1e-5
               for r in rows)

    # a fresh run reuses them (nothing made, nothing said)
    events = list(train(TrainJob(project, fresh=True)))
    assert [p.stat().st_mtime_ns for p in sorted(folder.glob("class_*.png"))] == stamps
    assert not [e for e in events if isinstance(e, Message) and "class pictures" in e.text]

    # another count: a new set, and the stale one of the same base is removed
    project = load_project(project.folder)
    project.config.class_pictures = 2
    project.save()
    list(train(TrainJob(project, fresh=True)))
    (newer,) = _sets(project)
    assert newer != folder and len(list(newer.glob("class_*.png"))) == 2


def test_text_models_caption_the_class_pictures_with_the_class_prompt(tmp_path, tiny_sd1_dir):
    project = create_project(tmp_path / "p", backbone=tiny_sd1_dir, images=make_images(tmp_path / "i", n=2),
                             config=TrainConfig(**FAST, steps=1, class_pictures=2, class_prompt="a photo of a square"))
    list(train(TrainJob(project)))
    (folder,) = _sets(project)
    captions = sorted(folder.glob("class_*.txt"))
    assert len(captions) == 2 and all(c.read_text().strip() == "a photo of a square" for c in captions)
    assert json.loads((folder / MARKER).read_text())["prompt"] == "a photo of a square"


def test_without_the_setting_nothing_changes(tmp_path, tiny_ddpm):
    project = create_project(tmp_path / "p", backbone=tiny_ddpm, images=make_images(tmp_path / "i", n=4),
                             config=TrainConfig(**FAST, steps=1))
    list(train(TrainJob(project)))
    assert _sets(project) == [] and "losses" not in project_runs(project)[0].metrics()[0]
