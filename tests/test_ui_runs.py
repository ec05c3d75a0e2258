"""Every run of a project can be exported from the window, not only the newest."""
from __future__ import annotations

import json

import pytest

from transferstudio.core.events import Finished
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project
from transferstudio.training.trainer import TrainJob, train
from transferstudio.ui.export_dialog import ExportDialog

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")


def test_export_dialog_exports_the_run_the_user_picks(qtbot, tmp_path, tiny_ddpm, image_folder):
    config = TrainConfig(method="lora", steps=2, batch_size=2, rank=2, alpha=2, preview_every=0,
                         preview_seeds=[1], preview_steps=2, checkpoint_every=2, device="cpu", precision="fp32")
    project = create_project(tmp_path / "project", backbone=tiny_ddpm, images=image_folder, config=config)
    for _ in range(2):  # two fresh runs
        ends = [e for e in train(TrainJob(project, fresh=True)) if isinstance(e, Finished)]
        assert ends
    older, newer = project.runs()

    dialog = ExportDialog(project, method="lora")
    qtbot.addWidget(dialog)
    qtbot.waitUntil(dialog.formats_ready, timeout=60_000)
    assert dialog.run.count() == 2 and dialog.run.isVisibleTo(dialog)
    assert dialog.run_dir() == str(newer)  # the newest run first
    dialog.run.setCurrentIndex(1)
    qtbot.waitUntil(dialog.formats_ready, timeout=60_000)
    assert dialog.run_dir() == str(older)

    dialog.name.setText("older-run")
    with qtbot.waitSignal(dialog.exported, timeout=120_000):
        dialog.start_export()
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=60_000)
    manifest = json.loads((project.folder / "exports" / "older-run.json").read_text())
    assert manifest["run"]["folder"] == str(older)
    assert [row["format"] for row in
            (json.loads(line) for line in (older / "exports.jsonl").read_text().splitlines())] == ["diffusers"]
    assert not (newer / "exports.jsonl").exists()


def test_compare_shows_the_run_the_user_picks(qtbot, tmp_path, tiny_ddpm, image_folder):
    from transferstudio.ui.compare_view import CompareView

    config = TrainConfig(method="lora", steps=2, batch_size=2, rank=2, alpha=2, preview_every=0,
                         preview_seeds=[1], preview_steps=2, checkpoint_every=2, device="cpu", precision="fp32")
    project = create_project(tmp_path / "project", backbone=tiny_ddpm, images=image_folder, config=config)
    for steps in (2, 4):  # two fresh runs of different lengths
        assert [e for e in train(TrainJob(project, fresh=True, steps=steps)) if isinstance(e, Finished)]
    older, newer = project.runs()

    view = CompareView()
    qtbot.addWidget(view)
    view.set_project(project, trained=True)
    assert view.run.count() == 2 and view.run.isVisibleTo(view)
    view.steps.setValue(2)
    view.count.setValue(1)
    with qtbot.waitSignal(view.compared, timeout=120_000) as newest:
        view.generate()
    assert newest.args[0].step == 4  # the newest run by default
    qtbot.waitUntil(lambda: view.task is None, timeout=60_000)
    view.run.setCurrentIndex(1)
    assert view.session.run_dir == older
    with qtbot.waitSignal(view.compared, timeout=120_000) as picked:
        view.generate()
    assert picked.args[0].step == 2
    qtbot.waitUntil(lambda: view.task is None, timeout=60_000)


def test_export_dialog_offers_the_best_step_when_the_run_overfit(qtbot, tmp_path, tiny_ddpm, monkeypatch):
    from tiny_ddpm import make_images

    config = TrainConfig(method="lora", steps=6, batch_size=2, rank=2, alpha=2, preview_every=0, preview_seeds=[1],
                         preview_steps=2, checkpoint_every=2, keep_checkpoints=1, validation="2", validation_every=0,
                         device="cpu", precision="fp32")
    project = create_project(tmp_path / "project", backbone=tiny_ddpm, images=make_images(tmp_path / "i", n=10),
                             config=config)
    scripted = iter([0.5, 0.3, 0.1, 0.4])  # steps 0, 2, 4, 6: best at 4

    def fake(objective, images, ctx, *, seed):
        value = next(scripted)
        return value, [value]

    monkeypatch.setattr("transferstudio.training.trainer.mean_error", fake)
    assert [e for e in train(TrainJob(project)) if isinstance(e, Finished)]
    dialog = ExportDialog(project, method="lora")
    qtbot.addWidget(dialog)
    qtbot.waitUntil(dialog.formats_ready, timeout=60_000)
    assert dialog.checkpoint.count() == 2 and dialog.checkpoint.isVisibleTo(dialog)
    assert dialog.checkpoint_step() == "best" and "step 4" in dialog.checkpoint.currentText()
    dialog.name.setText("best")
    with qtbot.waitSignal(dialog.exported, timeout=120_000) as exported:
        dialog.start_export()
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=60_000)
    assert exported.args[0].step == 4
