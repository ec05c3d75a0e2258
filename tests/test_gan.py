"""GANs as a family: a tiny GAN adapts through the CLI, previews from fixed latents, resumes to
bit-identical weights, keeps FreezeD's blocks as they were, and exports a generator that the
README's snippet and ONNX Runtime both turn into the app's picture."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from transferstudio import cli
from transferstudio.backbones.gan import GANFamily


def make_tiny_gan(folder: Path, seed: int = 0) -> Path:
    return GANFamily().initialize(folder, resolution=16, seed=seed, size="tiny")


def make_pictures(folder: Path, n: int = 8, size: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        a, b = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        t = np.linspace(0, 1, size)[:, None, None]
        Image.fromarray((a * (1 - t) + b * t).repeat(size, 1).astype(np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def new_project(tmp_path: Path, name: str, *extra: str, steps: int = 8) -> Path:
    backbone = tmp_path / "tiny-gan"
    if not backbone.exists():
        make_tiny_gan(backbone)
        make_pictures(tmp_path / "pictures")
    project = tmp_path / name
    assert cli.main(["new", str(project), "--backbone", str(backbone), "--images", str(tmp_path / "pictures"),
                     "--steps", str(steps), "--batch-size", "4", "--seed", "5", *extra]) == 0
    return project


def set_config(project: Path, **values) -> None:
    data = json.loads((project / "project.json").read_text())
    data["config"].update(values)
    (project / "project.json").write_text(json.dumps(data))


def latest_checkpoint(project: Path) -> Path:
    return sorted((project / "runs").glob("*/checkpoints/step-*"))[-1]


def test_tiny_gan_adapts_through_the_cli_and_exports_load_everywhere(tmp_path, capsys):
    project = new_project(tmp_path, "project", "--preview-every", "4")
    created = json.loads((project / "project.json").read_text())["config"]
    assert created["method"] == "full" and created["ema"] is True  # the family's suggestions
    assert created["learning_rate"] == 2e-3 and created["batch_size"] == 4  # what the user gave wins
    assert cli.main(["train", str(project)]) == 0
    run = next((project / "runs").iterdir())
    previews = sorted(p.name for p in (run / "previews").iterdir())
    assert previews == ["step-000000", "step-000004", "step-000008"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[-1]["losses"]) == {"discriminator", "generator"}
    assert {"d_real", "d_fake", "d_accuracy", "augment_p"} <= set(rows[-1]["signals"])

    capsys.readouterr()
    assert cli.main(["export", str(project), "--out", str(tmp_path / "city.safetensors")]) == 0
    assert "exported full weights from step 8" in capsys.readouterr().out
    assert cli.main(["export", str(project), "--out", str(tmp_path / "city-onnx"), "--format", "onnx"]) == 0
    assert cli.main(["sample", str(project), "--seed", "7", "--out", str(tmp_path / "app.png")]) == 0

    # The README's snippet: the same picture as the app for the same latent.
    from transferstudio.backbones.gan_model import latents, load_generator

    G = load_generator(tmp_path / "city.safetensors")
    with torch.no_grad():
        image = G(latents([7], G.config.z_dim)).clamp(-1, 1)
    snippet = ((image[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(snippet, np.asarray(Image.open(tmp_path / "app.png")))

    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "city-onnx.onnx"), providers=["CPUExecutionProvider"])
    z = latents([7, 8], G.config.z_dim)
    (onnx_out,) = session.run(["image"], {"z": z.numpy()})
    with torch.no_grad():
        torch_out = G(z).clamp(-1, 1).numpy()
    assert onnx_out.shape == (2, 3, 16, 16)
    assert np.abs(onnx_out - torch_out).max() < 1e-4

    # The export is the generator's EMA, not the raw trained weights.
    checkpoint = latest_checkpoint(project)
    ema = load_file(checkpoint / "ema.safetensors")
    exported = load_file(tmp_path / "city.safetensors")
    assert torch.equal(exported["convs.0.weight"], ema["generator.convs.0.weight"])


def test_export_offers_the_generator_formats_only(tmp_path):
    from transferstudio.export.formats import formats_for

    keys = [key for key, _, _ in formats_for(GANFamily().typical_capabilities(), "full")]
    assert keys == ["generator", "onnx", "gan-folder"]


def test_resume_continues_to_bit_identical_weights(tmp_path):
    """Stopped at step 9 and continued = trained straight through: G, D, both optimizers, EMA,
    the adaptive augmentation's strength and the random streams all come back."""
    straight = new_project(tmp_path, "straight", "--checkpoint-every", "9", steps=18)
    halves = new_project(tmp_path, "halves", "--checkpoint-every", "9", steps=18)
    for project in (straight, halves):
        set_config(project, augment="adaptive", augment_strength=0.3, r1_gamma=0.1)
    assert cli.main(["train", str(straight)]) == 0
    assert cli.main(["train", str(halves), "--steps", "9"]) == 0
    set_config(halves, steps=18)
    assert cli.main(["train", str(halves)]) == 0
    a, b = latest_checkpoint(straight), latest_checkpoint(halves)
    assert a.name == b.name == "step-000018"
    for name in ("weights.safetensors", "ema.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    opt_a = torch.load(a / "optimizer.pt", weights_only=True)
    opt_b = torch.load(b / "optimizer.pt", weights_only=True)
    assert opt_a["objective"] == opt_b["objective"] and opt_a["objective"]["adaptive"]["steps"] == 18


def test_freezed_leaves_the_first_discriminator_blocks_bit_identical(tmp_path):
    project = new_project(tmp_path, "project")
    set_config(project, freeze_discriminator_blocks=1)
    assert cli.main(["train", str(project)]) == 0
    base = load_file(tmp_path / "tiny-gan" / "discriminator.safetensors")
    trained = {k.removeprefix("discriminator."): v for k, v in
               load_file(latest_checkpoint(project) / "weights.safetensors").items() if k.startswith("discriminator.")}
    frozen = [k for k in base if k.startswith(("from_rgb.", "blocks.0."))]
    assert frozen and all(torch.equal(base[k], trained[k]) for k in frozen)
    assert not torch.equal(base["blocks.1.conv1.weight"], trained["blocks.1.conv1.weight"])
    assert not torch.equal(base["out.weight"], trained["out.weight"])


def test_augmentation_is_differentiable_so_the_generator_learns_through_it():
    from transferstudio.backbones.augment import augment
    from transferstudio.backbones.gan import sized_config
    from transferstudio.backbones.gan_model import Generator

    torch.manual_seed(0)
    G = Generator(sized_config(16, "tiny"))
    fake = G(torch.randn(4, G.config.z_dim))
    out = augment(fake, 1.0, torch.Generator().manual_seed(1))
    assert not torch.allclose(out, fake)  # it did change the pictures
    out.square().mean().backward()
    assert G.const.grad is not None and G.const.grad.abs().sum() > 0
    assert G.mapping.net[0].weight.grad.abs().sum() > 0


def test_consistency_term_is_zero_before_adaptation_and_pulls_back_after(tmp_path):
    from transferstudio.backbones.objective import StepContext
    from transferstudio.project.config import TrainConfig

    backbone = GANFamily().load(make_tiny_gan(tmp_path / "gan"))
    config = TrainConfig(method="full", consistency_weight=1.0)
    backbone.configure(config)
    objective = backbone.objective(config)
    ctx = StepContext(step=1, device=torch.device("cpu"), amp=None, generator=torch.Generator().manual_seed(0),
                      config=config)
    assert float(objective.consistency(ctx)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # the adapted generator drifts: its samples' relations change
        for p in backbone.generator.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    backbone.generator.requires_grad_(True)
    term = objective.consistency(ctx)
    assert float(term.detach()) > 0
    term.backward()
    assert backbone.generator.const.grad.abs().sum() > 0


def test_truncation_pulls_samples_towards_the_average(tmp_path):
    backbone = GANFamily().load(make_tiny_gan(tmp_path / "gan"))
    with torch.no_grad():
        backbone.generator.w_avg.copy_(torch.randn_like(backbone.generator.w_avg))
    full = backbone.generate([1, 2, 3, 4], truncation=1.0)
    zero = backbone.generate([1, 2, 3, 4], truncation=0.0)
    assert float((zero - zero[0]).abs().max()) < 1e-5  # ψ = 0: every latent gives the average picture
    assert float((full - full[0]).abs().max()) > 1e-3


def test_pretrain_makes_a_backbone_bit_identically_from_a_seed(tmp_path):
    pictures = make_pictures(tmp_path / "big", n=24)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli.main(["pretrain", "--family", "gan", "--images", str(pictures), "--out", str(out), "--steps", "6",
                         "--resolution", "16", "--size", "tiny", "--batch-size", "8", "--seed", "3"]) == 0
        outs.append(out)
        assert not (tmp_path / f".{name}.pretraining").exists()  # the work folder goes once it is saved
    for file in ("generator.safetensors", "discriminator.safetensors"):
        assert (outs[0] / file).read_bytes() == (outs[1] / file).read_bytes()
    about = json.loads((outs[0] / "PRETRAINING.json").read_text())
    assert about["steps"] == 6 and about["pictures"] == 24 and about["seed"] == 3
    # …and it is a backbone a project can adapt.
    assert cli.main(["inspect", str(outs[0])]) == 0


def test_bad_gan_inputs_get_one_sentence(tmp_path, capsys):
    folder = make_tiny_gan(tmp_path / "gan")
    (folder / "discriminator.safetensors").unlink()
    assert cli.main(["inspect", str(folder)]) == 1
    assert "discriminator.safetensors is missing" in capsys.readouterr().out

    other = make_tiny_gan(tmp_path / "gan2")
    data = (other / "generator.safetensors").read_bytes()
    (other / "generator.safetensors").write_bytes(data[: len(data) // 2])  # a truncated copy
    pictures = make_pictures(tmp_path / "pictures")
    assert cli.main(["new", str(tmp_path / "p"), "--backbone", str(other), "--images", str(pictures)]) == 0
    assert cli.main(["train", str(tmp_path / "p"), "--steps", "2"]) != 0
    err = capsys.readouterr().err
    assert "generator weights in generator.safetensors cannot be read" in err and "Traceback" not in err

    wrong = make_tiny_gan(tmp_path / "gan3")
    config = json.loads((wrong / "config.json").read_text())
    config["config"]["g_channels"] = [16, 16, 16]  # the weights no longer fit the config
    (wrong / "config.json").write_text(json.dumps(config))
    assert cli.main(["new", str(tmp_path / "q"), "--backbone", str(wrong), "--images", str(pictures)]) == 0
    assert cli.main(["train", str(tmp_path / "q"), "--steps", "2"]) != 0
    assert "does not match its config" in capsys.readouterr().err

    assert cli.main(["new", str(tmp_path / "r"), "--backbone", str(folder.parent / "gan3"), "--images",
                     str(pictures), "--resolution", "32"]) != 0
    assert "makes 16 px pictures only" in capsys.readouterr().err
