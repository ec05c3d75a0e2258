"""The window and several GPUs (issue 19): the GPUs setting is offered only where there are
several, and a project set to train with several processes is trained by them from the
window's worker, which shows the main process's events as for one."""
from __future__ import annotations

from pathlib import Path

import pytest

from tiny_ddpm import make_images
from transferstudio.core.events import Finished, Started
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.qt.workers import TrainingWorker
from transferstudio.ui.settings_form import SettingsForm


def _row_visible(form: SettingsForm, name: str) -> bool:
    editor = form.editors[name]
    for layout in (form._basic_form, form._advanced_form):
        if layout.indexOf(editor) >= 0:
            return layout.isRowVisible(editor)
    return False


def test_gpus_row_only_with_several_gpus(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    assert not _row_visible(form, "processes")  # one GPU or none: nothing to choose
    form.show_gpu_count(4)
    assert _row_visible(form, "processes") and form.editors["processes"].maximum() == 4
    form.editors["processes"].setValue(3)
    assert form.config().processes == 3
    form.show_gpu_count(1)  # a project that asks for several still shows what it asks
    assert _row_visible(form, "processes")
    form.editors["processes"].setValue(1)
    form.show_gpu_count(0)
    assert not _row_visible(form, "processes")


def test_a_saved_gpu_count_fits_this_computer(monkeypatch):
    import torch

    from transferstudio.training.launch import processes_here

    assert processes_here(1) == (1, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    count, note = processes_here(4)
    assert count == 1 and "no CUDA GPU" in note
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    count, note = processes_here(4)
    assert count == 2 and "has 2" in note
    assert processes_here(2) == (2, None)


@pytest.mark.timeout(300)
def test_worker_trains_with_several_processes(qtbot, tmp_path, tiny_ddpm, monkeypatch):
    from transferstudio.training import launch

    monkeypatch.setattr(launch, "processes_here", lambda asked, device="auto": (asked, None))  # as with 2 GPUs
    images = make_images(tmp_path / "images", n=4)
    config = TrainConfig(steps=2, batch_size=2, preview_seeds=[1], preview_steps=2, checkpoint_every=2,
                         validation="none", processes=2)
    project = create_project(tmp_path / "p", backbone=tiny_ddpm, images=images, config=config)
    worker = TrainingWorker(load_project(project.folder))
    seen: list[object] = []
    worker.started.connect(seen.append)
    with qtbot.waitSignal(worker.done, timeout=240_000):
        worker.start()
    worker.wait(10)
    assert isinstance(worker.end_event, Finished), worker.end_event
    started = [e for e in seen if isinstance(e, Started)]
    assert started and started[0].processes == 2
    assert Path(worker.end_event.weights).is_file()
