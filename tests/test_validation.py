"""Held-out validation (issue 15): the split is never trained on and stays fixed for the run, the
validation loss is measured at fixed noise, the best step is the argmin, checkpoints keep their
validation loss (the best one survives pruning), an overfitting run is warned about, and a
from-scratch baseline run trains the same architecture from random weights."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tiny_ddpm import make_images
from transferstudio import cli
from transferstudio.core.events import Message, Validation
from transferstudio.data.dataset import TrainingImages
from transferstudio.data.holdout import validation_wanted
from transferstudio.project.config import TrainConfig, validation_request
from transferstudio.project.project import create_project, load_project
from transferstudio.project.run import Run, best_validation, continuable_run, project_runs, rising_for
from transferstudio.training.trainer import TrainJob, train

FAST = dict(preview_steps=2, preview_seeds=[1], batch_size=2, preview_every=0, device="cpu", precision="fp32")


def _project(tmp_path, backbone, images, **settings):
    return create_project(tmp_path / "project", backbone=backbone, images=images,
                          config=TrainConfig(**{**FAST, **settings}))


def test_the_setting_reads_none_counts_and_percents():
    assert validation_request("auto") == ("auto", 0.0)
    assert validation_request(" None ") == ("none", 0.0)
    assert validation_request("3") == ("count", 3.0)
    assert validation_request("12.5%") == ("percent", 12.5)
    for bad in ("three", "-1", "120%", "%", ""):
        assert validation_request(bad) is None
    assert any(p.startswith("validation:") for p in TrainConfig(validation="lots").problems())
    # auto holds out one in ten from 20 pictures up; a reconstruction family keeps its own default
    assert validation_wanted("auto", 19) == 0 and validation_wanted("auto", 40) == 4
    assert validation_wanted("auto", 10, family_default=4) == 4
    assert validation_wanted("25%", 8) == 2 and validation_wanted("none", 100) == 0


def test_held_out_pictures_are_never_trained_on_and_stay_fixed(tmp_path, tiny_ddpm, monkeypatch):
    images = make_images(tmp_path / "images", n=10)
    project = _project(tmp_path, tiny_ddpm, images, steps=6, validation="2", validation_every=2,
                       checkpoint_every=3)
    trained: set[str] = set()
    measured: set[str] = set()
    original = TrainingImages.load_batch

    def spy(self, indices, rng):
        names = {self.record(i).path.name for i in indices}
        (trained if rng is not None else measured).update(names)
        return original(self, indices, rng)

    monkeypatch.setattr(TrainingImages, "load_batch", spy)
    events = list(train(TrainJob(project)))
    (run,) = project_runs(project)
    held = run.validation_pictures
    assert len(held) == 2 and not trained & set(held)
    assert set(held) <= measured and len(trained) == 8

    rows = run.validation()
    assert [r["step"] for r in rows] == [0, 2, 3, 4, 6]  # start, every 2, and each checkpoint (3, 6)
    assert [e.step for e in events if isinstance(e, Validation)] == [0, 2, 3, 4, 6]
    assert run.best() == best_validation(rows) == min(((r["step"], r["val_loss"]) for r in rows),
                                                      key=lambda sv: (sv[1], sv[0]))
    # every checkpoint keeps its validation loss
    assert all(c.state["val_loss"] == next(r["val_loss"] for r in rows if r["step"] == c.step)
               for c in run.checkpoints)

    # More pictures later (their names sort first): the continued run holds out the same two.
    make_images(tmp_path / "more", n=3, seed=5)
    for p in (tmp_path / "more").iterdir():
        shutil.copy(p, images / ("a_" + p.name))
    trained.clear()
    list(train(TrainJob(project, steps=8)))
    assert Run.open(run.folder).validation_pictures == held and not trained & set(held)


def test_the_measure_is_fixed_noise_so_an_untouched_model_measures_the_same(tmp_path, tiny_ddpm):
    images = make_images(tmp_path / "images", n=10)
    first = _project(tmp_path / "a", tiny_ddpm, images, steps=1, validation="2", learning_rate=1e-7)
    second = _project(tmp_path / "b", tiny_ddpm, images, steps=1, validation="2", learning_rate=1e-7)
    values = []
    for project in (first, second):
        list(train(TrainJob(project)))
        (run,) = project_runs(project)
        values.append(run.validation()[0]["val_loss"])
    assert values[0] == values[1]


def test_the_best_checkpoint_survives_pruning(tmp_path, tiny_ddpm, monkeypatch):
    """Checkpoints at 2, 4, 6, 8 with keep 1: the one with the lowest validation loss stays."""
    images = make_images(tmp_path / "images", n=10)
    project = _project(tmp_path, tiny_ddpm, images, steps=8, validation="2", validation_every=0,
                       checkpoint_every=2, keep_checkpoints=1)
    scripted = iter([0.5, 0.3, 0.1, 0.4, 0.6])  # steps 0, 2, 4, 6, 8: step 4 is the best

    def fake(objective, images, ctx, *, seed):
        value = next(scripted)
        return value, [value]

    monkeypatch.setattr("transferstudio.training.trainer.mean_error", fake)
    events = list(train(TrainJob(project)))
    (run,) = project_runs(project)
    assert [c.step for c in run.checkpoints] == [4, 8]
    assert run.best() == (4, 0.1)
    # 0.4 and 0.6 after the best at 0.1: two clear rises, not yet the three that warn
    assert not [e for e in events if isinstance(e, Message) and "overfitting" in e.text]


def test_a_run_whose_validation_keeps_rising_is_warned_once(tmp_path, tiny_ddpm, monkeypatch):
    images = make_images(tmp_path / "images", n=10)
    project = _project(tmp_path, tiny_ddpm, images, steps=6, validation="2", validation_every=1,
                       checkpoint_every=100)
    scripted = iter([0.5, 0.2, 0.205, 0.3, 0.35, 0.4, 0.5])

    def fake(objective, images, ctx, *, seed):
        value = next(scripted)
        return value, [value]

    monkeypatch.setattr("transferstudio.training.trainer.mean_error", fake)
    events = list(train(TrainJob(project)))
    warnings = [e for e in events if isinstance(e, Message) and "overfitting" in e.text]
    assert len(warnings) == 1 and "step 1" in warnings[0].text
    # 0.205 is within the noise allowance (3%): the rise counts from 0.3 on
    assert rising_for([{"step": i, "val_loss": v} for i, v in enumerate([0.5, 0.2, 0.205, 0.3, 0.35, 0.4])]) == 3


def test_no_split_below_twenty_pictures_and_none_measured(tmp_path, tiny_ddpm):
    project = _project(tmp_path, tiny_ddpm, make_images(tmp_path / "images", n=6), steps=2)
    events = list(train(TrainJob(project)))
    (run,) = project_runs(project)
    assert run.validation_pictures == [] and run.validation() == []
    assert not [e for e in events if isinstance(e, Validation)]


def test_a_scratch_baseline_trains_the_same_model_from_random_weights(tmp_path, tiny_ddpm, capsys):
    images = make_images(tmp_path / "images", n=10)
    project = _project(tmp_path, tiny_ddpm, images, steps=2, method="lora", validation="2")
    list(train(TrainJob(project)))
    assert cli.main(["train", str(project.folder), "--scratch"]) == 0
    assert "validation loss at step" in capsys.readouterr().out
    normal, baseline = project_runs(project)
    assert baseline.baseline == "scratch" and normal.baseline is None
    assert baseline.config.method == "full"  # every weight trains from random
    assert baseline.validation_pictures == normal.validation_pictures  # the same split: comparable curves
    start = load_file(str(baseline.folder / "scratch-model" / "unet" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(tiny_ddpm / "unet" / "diffusion_pytorch_model.safetensors"))
    assert start.keys() == base.keys() and any(not torch.equal(start[k], base[k]) for k in base)
    # A plain `train` goes on with the normal run, never the baseline; the baseline continues by name.
    assert continuable_run(load_project(project.folder)).id == normal.id
    assert cli.main(["train", str(project.folder), "--run", baseline.id, "--steps", "3"]) == 0
    assert Run.open(baseline.folder).trained_step == 3


def test_a_stable_diffusion_model_gets_no_scratch_baseline(tmp_path, tiny_sd1_dir, capsys):
    images = make_images(tmp_path / "images", n=4)
    project = _project(tmp_path, tiny_sd1_dir, images, steps=1)
    assert cli.main(["train", str(project.folder), "--scratch"]) != 0
    assert "cannot be trained from scratch" in capsys.readouterr().err
    assert project_runs(load_project(project.folder)) == []


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_every_family_measures_validation(tmp_path, family):
    """The VAE's reconstruction error and the GAN's coverage distance come out as validation losses."""
    from transferstudio.starter.sample import starter_gan, starter_vae

    backbone = starter_vae() if family == "vae" else starter_gan()
    images = make_images(tmp_path / "images", n=10, size=32)
    extra = dict(method="decoder") if family == "vae" else dict(method="full", batch_size=4)
    project = _project(tmp_path, backbone, images, steps=1, validation="2", **extra)
    events = list(train(TrainJob(project)))
    measures = [e for e in events if isinstance(e, Validation)]
    assert [m.step for m in measures] == [0, 1] and all(m.loss > 0 for m in measures)
    rows = [json.loads(line) for line in (project_runs(project)[0].folder / "validation.jsonl").read_text().splitlines()]
    if family == "vae":
        assert {"psnr", "ssim", "val_loss"} <= set(rows[0])


def test_export_offers_the_best_step_and_its_manifest_says_how_it_did(tmp_path, tiny_ddpm, monkeypatch, capsys):
    images = make_images(tmp_path / "images", n=10)
    project = _project(tmp_path, tiny_ddpm, images, steps=6, validation="2", validation_every=0,
                       checkpoint_every=2, keep_checkpoints=1)
    scripted = iter([0.5, 0.3, 0.1, 0.4])  # steps 0, 2, 4, 6

    def fake(objective, images, ctx, *, seed):
        value = next(scripted)
        return value, [value]

    monkeypatch.setattr("transferstudio.training.trainer.mean_error", fake)
    list(train(TrainJob(project)))
    out = tmp_path / "best.safetensors"
    assert cli.main(["export", str(project.folder), "--out", str(out), "--step", "best"]) == 0
    assert "from step 4" in capsys.readouterr().out
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["run"]["steps"] == 4
    assert manifest["transfer"]["validation"] == {"held_out_pictures": 2, "val_loss": 0.1, "best_step": 4,
                                                  "best_val_loss": 0.1, "measures": 3}
    assert cli.main(["export", str(project.folder), "--out", str(tmp_path / "s2"), "--step", "2"]) != 0
    assert "no checkpoint at step 2" in capsys.readouterr().err
