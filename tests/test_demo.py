"""The shipped starter model, the sample project and a short demo run."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from transferstudio.starter.sample import ensure_sample_project, sample_images, starter_model


def test_shipped_starter_loads_and_makes_pictures():
    from transferstudio.backbones.registry import inspect_backbone, load_backbone

    found = inspect_backbone(starter_model())
    assert found.usable and found.family == "ddpm", found.describe()
    backbone = load_backbone(starter_model())
    image = np.asarray(backbone.sample(seeds=[3], steps=10)[0], np.float32)
    assert image.shape[2] == 3 and image.std() > 10, "a picture, not a flat colour"
    # Landscapes at every time of day, not one grey-pastel palette (what the first, epsilon-
    # prediction starter did): per-picture brightness varies and some pictures are night scenes.
    brightness = [np.asarray(im, np.float32).mean() for im in backbone.sample(seeds=range(8), steps=20)]
    assert np.std(brightness) > 25 and min(brightness) < 70, brightness
    weights = list(starter_model().rglob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) < 20e6


def test_shipped_starter_gan_draws_varied_landscapes():
    """The starter GAN loads from its folder, is small, has its card, and draws landscapes at
    every time of day from different latents (not one collapsed picture)."""
    from transferstudio.backbones.registry import inspect_backbone, load_backbone
    from transferstudio.starter.sample import starter_gan

    found = inspect_backbone(starter_gan())
    assert found.usable and found.family == "gan" and found.native_resolution == 32, found.describe()
    backbone = load_backbone(starter_gan())
    pictures = backbone.generate(list(range(64)))
    assert torch.isfinite(pictures).all() and pictures.shape == (64, 3, 32, 32)
    brightness = ((pictures + 1) * 127.5).mean(dim=(1, 2, 3))
    assert brightness.std() > 15 and brightness.min() < 70, brightness  # days, dusks and nights
    assert (pictures[:32] - pictures[32:]).abs().mean() > 0.2  # different latents, different pictures
    assert sum(f.stat().st_size for f in starter_gan().glob("*.safetensors")) < 20e6
    assert "python -m transferstudio.devtools.pretrain_gan" in (starter_gan() / "MODEL_CARD.md").read_text()


def test_sample_project_is_ready_and_survives_reopening(tmp_path):
    from transferstudio.project.project import load_project

    folder = ensure_sample_project(tmp_path)
    project = load_project(folder)
    assert project.backbone.resolve() == starter_model().resolve()
    assert json.loads(project.file.read_text())["backbone"] == "builtin:starter"
    assert len(list(project.images.glob("*.png"))) == len(list(sample_images().glob("*.png"))) >= 16
    assert ensure_sample_project(tmp_path) == folder


def test_short_demo_run_reports_both_distances_and_exports_a_loadable_model(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    from transferstudio.project.project import load_project
    from transferstudio.starter.demo import run_demo
    from transferstudio.adapt.restore import load_trained

    lines: list[str] = []
    from transferstudio.insight.report import write_report

    assert run_demo(tmp_path, steps=4, samples=6, sample_steps=4, log=lines.append, report_writer=write_report) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    # the project's transfer report, with the from-scratch baseline run of the same project beside it
    assert (tmp_path / "report" / "report.html").is_file()
    figures = json.loads((tmp_path / "report" / "report.json").read_text())["key_figures"]
    assert figures["scratch"]["run"] and figures["best_step"] is not None, figures
    assert report["swd_finetuned"] > 0 and report["swd_scratch"] > 0
    assert report["swd_colour_finetuned"] > 0 and report["swd_colour_base"] > 0
    for name in ("comparison.png", "preview-step-0.png", "preview-final.png"):
        assert (tmp_path / name).is_file()
    assert any("from scratch" in line for line in lines)

    # The export loads with diffusers' own API and reproduces the app's sample at the same seed.
    export = tmp_path / "export" / "starter-cities"
    unet = UNet2DModel.from_pretrained(export, subfolder="unet", local_files_only=True)
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_pretrained(export, subfolder="scheduler"))
    theirs = pipe(generator=[torch.Generator().manual_seed(7)], num_inference_steps=5, eta=0.0).images[0]
    ours = load_trained(load_project(tmp_path / "project")).backbone.sample(seeds=[7], steps=5)[0]
    assert np.abs(np.asarray(theirs, np.float32) - np.asarray(ours, np.float32)).max() <= 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_demo_shows_transfer(tmp_path):
    """The README's demo as shipped (about 4 minutes on 2 cores): the pretrained run ends much
    closer to the target cities than the same steps from random weights, with or without colour."""
    from transferstudio.starter.demo import run_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(min(4, os.cpu_count() or 1))  # it runs alone: use the cores, as the CLI does
    from transferstudio.insight.report import write_report

    try:
        assert run_demo(tmp_path, log=lambda line: None, report_writer=write_report) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "report.json").read_text())
    # measured (2 of the 24 cities held out): 167.6 vs 199.8 patterns, 206.2 vs 273.5 with colour
    assert report["swd_finetuned"] < 0.95 * report["swd_scratch"], report
    assert report["swd_colour_finetuned"] < 0.9 * report["swd_colour_scratch"], report
    # Fine-tuning moved the starter towards the cities, colour included.
    assert report["swd_colour_finetuned"] < 0.3 * report["swd_colour_base"], report
    # The transfer report: on the held-out cities the pretrained run reached the from-scratch run's
    # best validation loss many times sooner (measured: step 50 vs 400) and ends lower; nothing copied.
    figures = json.loads((tmp_path / "report" / "report.json").read_text())["key_figures"]
    scratch = figures["scratch"]
    assert scratch["speedup"] >= 3 and scratch["val_pretrained"] < 0.8 * scratch["val_scratch"], figures
    assert figures["memorization_flagged"] is False, figures


def test_short_vae_demo_runs_end_to_end(tmp_path, capsys):
    """`demo --family vae` in a few tiny steps: both runs, the table, report.json, the grid and
    both exports; the report's figures are those of the exported VAE."""
    from diffusers import AutoencoderKL
    from PIL import Image

    from transferstudio import cli
    from transferstudio.backbones.vae_backbone import VAEBackbone
    from transferstudio.starter.demo import held_out_cities, run_vae_demo, vae_quality

    lines: list[str] = []
    assert run_vae_demo(tmp_path, steps=2, batch_size=4, checkpoint_every=2, preview_every=0, held_out=8,
                        log=lines.append) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "decoder" and report["scratch_method"] == "full"
    assert report["held_out"]["count"] == 8 and report["train_steps"] == 2
    for key in ("base", "finetuned", "scratch"):
        assert np.isfinite(report[key]["psnr"]) and 0 < report[key]["ssim"] <= 1, report[key]
    assert [row["step"] for row in report["validation"]["finetuned"]] == [0, 2]
    grid = Image.open(tmp_path / "comparison.png")
    assert grid.width > 8 * 128 and grid.height > 4 * 128  # 4 rows of 8 enlarged pictures
    assert any("from scratch" in line for line in lines) and any("MS-SSIM" in line for line in lines)

    exported = AutoencoderKL.from_pretrained(tmp_path / "export" / "starter-vae-cities", local_files_only=True)
    _, pixels = held_out_cities(8)
    _, figures = vae_quality(VAEBackbone(exported, source=tmp_path), pixels)
    assert figures["psnr"] == pytest.approx(report["finetuned"]["psnr"], abs=1e-4)
    assert (tmp_path / "export" / "starter-vae-cities.safetensors").is_file()

    assert cli.main(["demo", "--family", "vae", "--method", "lora", "--out", str(tmp_path / "x")]) == 2
    assert "diffusion demo only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_vae_demo_shows_transfer(tmp_path):
    """`demo --family vae` as shipped: on 64 held-out cities the fine-tuned starter VAE
    reconstructs better than the starter did and than the same architecture trained from random
    weights for the same steps."""
    from transferstudio.starter.demo import run_vae_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    try:
        assert run_vae_demo(tmp_path, log=lambda line: None) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "report.json").read_text())
    tuned, base, scratch = report["finetuned"], report["base"], report["scratch"]
    # measured: 28.35 / 0.680 (fine-tuned), 26.18 / 0.564 (scratch), 26.79 / 0.639 (starter before)
    assert tuned["psnr"] > scratch["psnr"] + 1.0 and tuned["ssim"] > scratch["ssim"] + 0.06, report
    assert tuned["psnr"] > base["psnr"] + 0.5 and tuned["ssim"] > base["ssim"] + 0.02, report


def test_short_gan_demo_runs_end_to_end(tmp_path, capsys):
    """`demo --family gan` in a few tiny steps: both runs, the table, report.json, both grids and
    both exports; the exported generator draws what the demo measured."""
    from PIL import Image

    from transferstudio import cli
    from transferstudio.backbones.gan_model import latents, load_generator
    from transferstudio.starter.demo_gan import run_gan_demo

    lines: list[str] = []
    assert run_gan_demo(tmp_path, steps=2, batch_size=4, checkpoint_every=2, preview_every=1, samples=16,
                        log=lines.append) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["family"] == "gan" and report["train_steps"] == 2 and report["samples"] == 16
    for key in ("base", "finetuned", "scratch"):
        row = report[key]
        assert np.isfinite(row["swd"]) and 0 < row["diversity"] < 1 and 0 < row["nearest_training"] < 1, row
    assert Image.open(tmp_path / "comparison.png").height > 4 * 128  # training pictures + 3 models
    assert Image.open(tmp_path / "evolution.png").height > 3 * 96  # previews at steps 0, 1, 2
    assert any("diversity" in line for line in lines) and any("from scratch" in line for line in lines)

    generator = load_generator(tmp_path / "export" / "starter-gan-cities.safetensors")
    with torch.no_grad():
        picture = generator(latents([1], generator.config.z_dim))
    assert picture.shape == (1, 3, 32, 32) and torch.isfinite(picture).all()
    assert (tmp_path / "export" / "starter-gan-cities-onnx.onnx").stat().st_size > 100_000

    assert cli.main(["demo", "--family", "gan", "--method", "lora", "--out", str(tmp_path / "x")]) == 2
    assert "diffusion demo only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_gan_demo_shows_transfer(tmp_path):
    """`demo --family gan` as shipped: the adapted starter GAN is much closer to held-out cities
    than the same GAN trained from scratch for the same steps, keeps a real set's variety and
    does not copy the 24 training pictures."""
    from transferstudio.starter.demo_gan import run_gan_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    try:
        assert run_gan_demo(tmp_path, log=lambda line: None) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "report.json").read_text())
    tuned, base, scratch, real = report["finetuned"], report["base"], report["scratch"], report["held_out_cities"]
    assert tuned["swd"] < 0.6 * scratch["swd"], report  # measured: 156.5 vs 450.6
    assert tuned["swd"] < base["swd"], report  # it did move from landscapes towards cities
    assert tuned["diversity"] > 0.5 * real["diversity"], report  # no mode collapse
    assert tuned["nearest_training"] > 0.5 * real["nearest_training"], report  # no copying
