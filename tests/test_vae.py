"""VAEs as a family: a tiny AutoencoderKL with SD's block structure is fine-tuned (decoder only)
through the CLI, exported as a diffusers folder and as one original-layout file, and each export
loads with diffusers' own loaders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferstudio import cli


def make_tiny_vae(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    with torch.no_grad():  # a sharp posterior, as a trained VAE has (a random one's is as wide as its prior)
        vae.quant_conv.bias[4:] = -10.0
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def make_pictures(folder: Path, n: int = 10, size: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):  # smooth two-colour pictures: learnable in a few steps
        a, b = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        t = np.linspace(0, 1, size)[None, :, None]
        Image.fromarray((a * (1 - t) + b * t).repeat(size, 0).astype(np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture
def vae_project(tmp_path):
    backbone = make_tiny_vae(tmp_path / "tiny-vae")
    images = make_pictures(tmp_path / "pictures")
    project = tmp_path / "project"
    return backbone, images, project


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def test_decoder_fine_tune_through_the_cli_exports_both_formats(vae_project, tmp_path, capsys):
    from diffusers import AutoencoderKL

    backbone, images, project = vae_project
    assert cli.main(["inspect", str(backbone)]) == 0
    assert "Variational autoencoder" in capsys.readouterr().out
    assert cli.main(["new", str(project), "--backbone", str(backbone), "--images", str(images), "--steps", "30",
                     "--lr", "0.003", "--batch-size", "4", "--checkpoint-every", "15", "--preview-every", "15",
                     "--device", "cpu", "--precision", "fp32"]) == 0
    settings = json.loads((project / "project.json").read_text())["config"]
    assert settings["method"] == "decoder"  # a VAE's default: the latent space stays the base's
    assert cli.main(["train", str(project)]) == 0
    out = capsys.readouterr().out
    (run,) = (project / "runs").iterdir()

    # Previews: held-out pictures beside their reconstructions, with PSNR/SSIM at each one.
    validation = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [row["step"] for row in validation] == [0, 15, 30]
    assert all(np.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1 for row in validation)
    first = sorted((run / "previews" / "step-000000").glob("seed-*.png"))
    assert len(first) == 2 and Image.open(first[0]).size == (16 * 2 + 2, 16)  # original | reconstruction
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert "finished at step 30" in out

    # Decoder only: the encoder (and so the latent space) is bit-identical to the base.
    base = AutoencoderKL.from_pretrained(backbone)
    folder = tmp_path / "adapted-vae"
    assert cli.main(["export", str(project), "--out", str(folder), "--format", "diffusers"]) == 0
    adapted = AutoencoderKL.from_pretrained(folder)
    for name, value in base.encoder.state_dict().items():
        assert torch.equal(value, adapted.encoder.state_dict()[name]), name
    assert torch.equal(base.quant_conv.weight, adapted.quant_conv.weight)
    assert not torch.equal(base.decoder.conv_out.weight, adapted.decoder.conv_out.weight)
    # The reconstruction error on the training pictures went down.
    from transferstudio.backbones.vae_backbone import _to_tensor

    pixels = _to_tensor([Image.open(p) for p in sorted(images.glob("*.png"))])
    with torch.no_grad():
        errors = [(vae.decode(vae.encode(pixels).latent_dist.mean).sample - pixels).abs().mean().item()
                  for vae in (base, adapted)]
    assert errors[1] < 0.9 * errors[0]

    # One original-layout file, as A1111/ComfyUI keep VAEs; diffusers' from_single_file reads it.
    single = tmp_path / "adapted-vae.safetensors"
    assert cli.main(["export", str(project), "--out", str(single), "--format", "single-file"]) == 0
    keys = set(_weights(single))
    assert "encoder.conv_in.weight" in keys and "decoder.up.0.block.0.conv1.weight" in keys
    assert not any(k.startswith("first_stage_model.") for k in keys)
    from_file = AutoencoderKL.from_single_file(str(single), config=str(folder), local_files_only=True)
    for name, value in adapted.state_dict().items():
        torch.testing.assert_close(from_file.state_dict()[name], value, msg=name)

    # Formats that need a Stable Diffusion model are not offered for a VAE.
    assert cli.main(["export", str(project), "--out", str(tmp_path / "k"), "--format", "kohya"]) == 2
    assert "does not apply" in capsys.readouterr().err


def test_full_fine_tune_trains_the_encoder_too(vae_project):
    from diffusers import AutoencoderKL

    backbone, images, project = vae_project
    assert cli.main(["new", str(project), "--backbone", str(backbone), "--images", str(images), "--steps", "4",
                     "--method", "full", "--batch-size", "4", "--checkpoint-every", "4", "--preview-every", "0",
                     "--device", "cpu", "--precision", "fp32", "--discriminator-start", "2"]) == 0
    assert cli.main(["train", str(project)]) == 0
    (run,) = (project / "runs").iterdir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "discriminator" in rows[-1]["losses"] and "discriminator" not in rows[0].get("losses", {})
    assert all("autoencoder" in row["losses"] for row in rows)  # the chart's curve starts at step 1
    weights = _weights(run / "checkpoints" / "step-000004" / "weights.safetensors")
    base = AutoencoderKL.from_pretrained(backbone)
    assert not torch.equal(weights["vae.encoder.conv_in.weight"], base.encoder.conv_in.weight)
    assert any(k.startswith("discriminator.") for k in weights)


def test_bad_vae_inputs_are_one_sentence(tmp_path, capsys):
    from transferstudio.backbones.registry import inspect_backbone, load_backbone
    from transferstudio.core.errors import BackboneError

    folder = make_tiny_vae(tmp_path / "v")
    # A VAE file of another architecture than Stable Diffusion's: refused when loading, in one sentence.
    tiny_file = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _weights(folder / "diffusion_pytorch_model.safetensors").items()},
              str(tiny_file))
    assert inspect_backbone(tiny_file).family == "vae"
    with pytest.raises(BackboneError, match="does not match the expected architecture"):
        load_backbone(tiny_file)
    # A truncated VAE file.
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_file.read_bytes()[:200])
    assert not inspect_backbone(cut).usable
    # A VAE folder without weights.
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    found = inspect_backbone(folder)
    assert not found.usable and "no weights" in found.problems[0]


def test_compare_shows_the_same_held_out_pictures_through_base_and_adapted(qtbot, vae_project):
    from transferstudio.project.project import load_project
    from transferstudio.ui.compare_view import CompareView

    backbone, images, project = vae_project
    assert cli.main(["new", str(project), "--backbone", str(backbone), "--images", str(images), "--steps", "4",
                     "--batch-size", "4", "--checkpoint-every", "4", "--preview-every", "0", "--device", "cpu",
                     "--precision", "fp32"]) == 0
    assert cli.main(["train", str(project)]) == 0
    view = CompareView()
    qtbot.addWidget(view)
    view.set_project(load_project(project), trained=True)
    view.count.setValue(2)
    with qtbot.waitSignal(view.compared, timeout=120_000) as got:
        view.generate()
    pair = got.args[0]
    assert len(pair.base) == len(pair.trained) == 2
    assert pair.base[0].width() == 16 * 2 + 2  # original | reconstruction
    assert all(" dB · " in note for note in pair.base_notes + pair.trained_notes)
    assert pair.base_notes != pair.trained_notes  # the adapted decoder reconstructs differently
    qtbot.waitUntil(lambda: view.task is None, timeout=60_000)


def test_settings_show_what_applies_to_a_vae(qtbot):
    from transferstudio.ui.settings_form import SettingsForm

    form = SettingsForm()
    qtbot.addWidget(form)
    form.set_capabilities(text=False, supports_full_finetune=True, methods=["decoder", "full"],
                          objective="reconstruction")
    assert form.config().method == "decoder"
    shown = lambda name: form.editors[name].isVisibleTo(form)  # noqa: E731
    form.advanced.expand(animate=False)
    form.show()
    assert shown("kl_weight") and shown("pyramid_weight") and shown("discriminator_start")
    assert not shown("rank") and not shown("noise_offset") and not shown("preview_steps")
    assert not form.editors["kl_weight"].isEnabled()  # decoder only: the encoder's KL term is off
    form.set_capabilities(text=True, supports_full_finetune=True, methods=["lora", "full"], objective="diffusion")
    assert form.config().method == "lora"
    assert shown("rank") and shown("noise_offset") and not shown("kl_weight")


def test_the_adapted_vae_goes_into_its_stable_diffusion_model(tmp_path, tiny_sd1_dir, capsys):
    from diffusers import AutoencoderKL

    project = tmp_path / "project"
    images = make_pictures(tmp_path / "pictures", size=32)
    assert cli.main(["new", str(project), "--backbone", str(tiny_sd1_dir / "vae"), "--images", str(images),
                     "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2", "--preview-every", "0",
                     "--device", "cpu", "--precision", "fp32", "--lr", "0.01"]) == 0
    assert cli.main(["train", str(project)]) == 0
    adapted = tmp_path / "vae-only"
    assert cli.main(["export", str(project), "--out", str(adapted), "--format", "diffusers"]) == 0
    capsys.readouterr()

    # Refused in one sentence: no pipeline named, or a VAE named where the SD model is needed.
    assert cli.main(["export", str(project), "--out", str(tmp_path / "x"), "--format", "pipeline-diffusers"]) == 2
    assert "--pipeline" in capsys.readouterr().err
    assert cli.main(["export", str(project), "--out", str(tmp_path / "x"), "--format", "pipeline-diffusers",
                     "--pipeline", str(adapted)]) == 2
    assert "is not a Stable Diffusion model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    folder = tmp_path / "sd-with-vae"
    assert cli.main(["export", str(project), "--out", str(folder), "--format", "pipeline-diffusers",
                     "--pipeline", str(tiny_sd1_dir)]) == 0
    inside = AutoencoderKL.from_pretrained(folder / "vae")
    mine = AutoencoderKL.from_pretrained(adapted)
    for name, value in mine.state_dict().items():
        assert torch.equal(inside.state_dict()[name], value), name
    assert (folder / "unet").is_dir() and (folder / "text_encoder").is_dir()

    single = tmp_path / "sd-with-vae.safetensors"
    assert cli.main(["export", str(project), "--out", str(single), "--format", "pipeline-single-file",
                     "--pipeline", str(tiny_sd1_dir)]) == 0
    tensors = _weights(single)
    assert torch.equal(tensors["first_stage_model.decoder.conv_out.weight"], mine.decoder.conv_out.weight)
    assert any(k.startswith("model.diffusion_model.") for k in tensors)


def test_starter_vae_previews_show_prior_samples_beside_the_reconstructions(tmp_path):
    """The starter VAE's prior decodes to pictures (its card says so): its previews show them after
    the held-out reconstructions, labelled; a VAE without the flag shows reconstructions only."""
    from transferstudio.project.project import load_project
    from transferstudio.starter.sample import create_sample_vae_project
    from transferstudio.training.trainer import TrainJob, train

    project = load_project(create_sample_vae_project(tmp_path / "vae", steps=1, batch_size=2, preview_every=0))
    previews = [e for e in train(TrainJob(project)) if type(e).__name__ == "Preview"]
    first = previews[0]
    seeds = project.config.preview_seeds
    assert len(first.images) == 2 * len(seeds)
    assert first.prompts[0] == "held-out picture 1" and first.prompts[-1] == f"from the prior, seed {seeds[-1]}"
    assert first.images[0].width > first.images[-1].width  # original | reconstruction, then one prior sample
    labels = (first.paths[0].parent / "prompts.txt").read_text().splitlines()
    assert labels[len(seeds)] == f"{len(seeds) + 1}\tfrom the prior, seed {seeds[0]}"


def test_a_vae_without_the_flag_previews_reconstructions_only(vae_project):
    from transferstudio.backbones.vae import VAEFamily

    backbone, _, _ = vae_project
    assert VAEFamily().load(backbone).caps.prior_samples is False
