"""The training engine as a user of the CLI or the window would notice it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from transferstudio.core.commands import Commands
from transferstudio.core.events import (Checkpoint, Failed, Finished, Paused, Preview, Resumed, Started,
                                        Step, Stopped)
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.adapt import checkpoints as ckpt
from transferstudio.training.trainer import TrainJob, train

FAST = dict(preview_steps=3, preview_seeds=[1, 2], batch_size=2)


def _project(tmp_path, backbone, images, **settings):
    cfg = TrainConfig(**{**FAST, **settings})
    return create_project(tmp_path / "project", backbone=backbone, images=images, config=cfg)


def _run(project, commands=None, **job):
    return list(train(TrainJob(project, **job), commands))


def test_lora_overfits_two_images_and_previews_move(tmp_path, tiny_ddpm):
    from tiny_ddpm import make_images

    images = make_images(tmp_path / "two", n=2, size=16)
    project = _project(tmp_path, tiny_ddpm, images, steps=60, learning_rate=3e-3, preview_every=30,
                       checkpoint_every=30, rank=8, alpha=8)
    events = _run(project)
    assert isinstance(events[0], Started) and events[0].images == 2
    assert isinstance(events[-1], Finished)
    losses = [e.loss for e in events if isinstance(e, Step)]
    assert len(losses) == 60
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15]), "loss should go down when overfitting"

    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.step for p in previews] == [0, 30, 60]
    first = np.asarray(Image.open(previews[0].paths[0]), np.float32)
    last = np.asarray(Image.open(previews[-1].paths[0]), np.float32)
    assert np.abs(first - last).mean() > 1.0, "previews should change as the model learns"
    run = events[0].run_dir
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(1, 61))
    assert (run / "config.json").is_file()
    assert ckpt.latest_checkpoint(run).step == 60


def test_resume_gives_the_same_weights_as_training_straight(tmp_path, tiny_ddpm, image_folder):
    settings = dict(steps=10, learning_rate=1e-3, preview_every=0, checkpoint_every=100, seed=7,
                    crop="random", dropout=0.1)
    straight = create_project(tmp_path / "a", backbone=tiny_ddpm, images=image_folder,
                              config=TrainConfig(**{**FAST, **settings}))
    split = create_project(tmp_path / "b", backbone=tiny_ddpm, images=image_folder,
                           config=TrainConfig(**{**FAST, **settings}))
    assert isinstance(_run(straight)[-1], Finished)
    first = _run(split, steps=5)
    assert isinstance(first[-1], Finished) and first[-1].step == 5
    second = _run(split, steps=10)
    assert second[0].start_step == 5 and isinstance(second[-1], Finished)
    assert len(split.runs()) == 1, "resuming continues the same run"

    a = load_file(ckpt.latest_checkpoint(straight.latest_run()).path / ckpt.WEIGHTS)
    b = load_file(ckpt.latest_checkpoint(split.latest_run()).path / ckpt.WEIGHTS)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    steps = [json.loads(l)["step"] for l in (split.latest_run() / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_pause_resume_and_stop_take_effect_within_one_step(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=200, preview_every=0)
    commands = Commands()
    events = []
    for event in train(TrainJob(project), commands):
        events.append(event)
        if isinstance(event, Step) and event.step == 2:
            commands.pause()
        if isinstance(event, Paused):
            assert event.step == 2
            commands.resume()
        if isinstance(event, Resumed):
            commands.stop()
    kinds = [type(e) for e in events]
    assert Paused in kinds and Resumed in kinds
    assert isinstance(events[-1], Stopped) and events[-1].step == 2
    assert isinstance(events[-2], Checkpoint)
    saved = ckpt.latest_checkpoint(project.latest_run())
    assert saved.step == 2 and (saved.path / ckpt.MARKER).is_file()
    # A later `train` continues from there.
    again = _run(load_project(project.folder), steps=4)
    assert again[0].start_step == 2 and isinstance(again[-1], Finished)


def test_previews_and_saves_asked_for_while_paused_are_made_at_once(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=200, preview_every=0)
    commands = Commands()
    events = []
    for event in train(TrainJob(project), commands):
        events.append(event)
        if isinstance(event, Step) and event.step == 2:
            commands.pause()
        if isinstance(event, Paused):
            commands.sample_now()
            commands.save_now()
        if isinstance(event, Checkpoint) and commands.paused:
            commands.resume()
        if isinstance(event, Resumed):
            commands.stop()
    kinds = [type(e).__name__ for e in events]
    paused, resumed = kinds.index("Paused"), kinds.index("Resumed")
    assert "Preview" in kinds[paused:resumed] and "Checkpoint" in kinds[paused:resumed], kinds
    assert [e.step for e in events[paused:resumed] if isinstance(e, (Preview, Checkpoint))] == [2, 2]


def test_bad_images_are_skipped_with_reasons_and_training_goes_on(tmp_path, tiny_ddpm, image_folder):
    (image_folder / "empty.png").write_bytes(b"")
    (image_folder / "notes.jpg").write_text("this is not a picture")
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=2, preview_every=0)
    events = _run(project)
    started = events[0]
    reasons = dict((Path(p).name, r) for p, r in started.skipped)
    assert set(reasons) == {"empty.png", "notes.jpg"}
    assert all(r for r in reasons.values())
    assert isinstance(events[-1], Finished)
    log = (started.run_dir / "log.txt").read_text()
    assert "empty.png" in log and "notes.jpg" in log


def test_an_empty_image_folder_fails_with_advice(tmp_path, tiny_ddpm):
    empty = tmp_path / "nothing"
    empty.mkdir()
    project = _project(tmp_path, tiny_ddpm, empty, steps=2)
    events = _run(project)
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].message and events[0].advice


def test_checkpoints_are_pruned_and_incomplete_ones_ignored(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=8, checkpoint_every=2, keep_checkpoints=2,
                       preview_every=0)
    events = _run(project)
    run = events[0].run_dir
    assert [c.step for c in ckpt.complete_checkpoints(run)] == [6, 8]
    # A crash mid-write leaves a folder without the marker: it must not be used.
    (run / "checkpoints" / "step-000010").mkdir()
    assert ckpt.latest_checkpoint(run).step == 8


def test_full_finetune_with_ema_exports_a_diffusers_folder(tmp_path, tiny_ddpm, image_folder):
    from diffusers import DDPMPipeline

    from transferstudio.export.formats import export_project

    project = _project(tmp_path, tiny_ddpm, image_folder, steps=3, method="full", ema=True, ema_decay=0.5,
                       preview_every=0, learning_rate=1e-3)
    assert isinstance(_run(project)[-1], Finished)
    result = export_project(project, tmp_path / "export")
    assert result.kind == "full"
    pipe = DDPMPipeline.from_pretrained(result.path, local_files_only=True)
    base = DDPMPipeline.from_pretrained(tiny_ddpm, local_files_only=True)
    changed = [not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), base.unet.parameters())]
    assert any(changed)
    assert not any(result.path.rglob("*.bin")), "weights are safetensors only"


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_export_loads_with_peft_and_reproduces_the_app_sample(tmp_path, tiny_ddpm, image_folder, dora):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open

    from transferstudio.export.formats import export_project
    from transferstudio.adapt.restore import load_trained

    project = _project(tmp_path, tiny_ddpm, image_folder, steps=6, rank=4, alpha=12, learning_rate=5e-3,
                       preview_every=0, dora=dora)
    assert isinstance(_run(project)[-1], Finished)
    out = export_project(project, tmp_path / "my-lora.safetensors").path
    with safe_open(out, "pt") as fh:
        meta = fh.metadata()
    config = json.loads(meta["lora_config"])  # the whole LoraConfig, as peft wrote it
    assert config["r"] == 4 and config["lora_alpha"] == 12 and config["use_dora"] is dora
    assert any("lora_magnitude_vector" in k for k in load_file(out)) is dora

    app_image = load_trained(project).backbone.sample(seeds=[5], steps=4)[0]

    unet = UNet2DModel.from_pretrained(tiny_ddpm, subfolder="unet", local_files_only=True)
    base_pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_pretrained(tiny_ddpm, subfolder="scheduler"))
    base_image = base_pipe(generator=[torch.Generator().manual_seed(5)], num_inference_steps=4, eta=0.0).images[0]
    inject_adapter_in_model(LoraConfig(**config), unet)
    assert not set_peft_model_state_dict(unet, load_file(out)).unexpected_keys
    lora_image = base_pipe(generator=[torch.Generator().manual_seed(5)], num_inference_steps=4, eta=0.0).images[0]

    a, b, c = (np.asarray(i, np.float32) for i in (app_image, lora_image, base_image))
    assert np.abs(a - b).max() <= 2, "the exported LoRA reproduces the app's sample"
    assert np.abs(b - c).mean() > 0.5, "and differs from the base model"


def test_engine_import_graph_has_no_qt():
    code = ("import sys, transferstudio.cli, transferstudio.training.trainer, transferstudio.export.formats,"
            " transferstudio.backbones.registry, transferstudio.data.dataset;"
            " bad=[m for m in sys.modules if m.startswith(('PySide6','superqt','pyqtgraph'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
