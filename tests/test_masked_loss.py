"""Masked loss (issue 18): a picture's transparency, or a `name.mask.png` beside it, says which
parts train; pictures without either train everywhere."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferstudio import cli


def make_masked_folder(folder, size: int = 24):
    folder.mkdir(parents=True, exist_ok=True)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = (200, 30, 30)
    rgba[:, : size // 2, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    Image.fromarray(np.full((size, size, 3), (20, 200, 20), np.uint8)).save(folder / "photo.png")
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = 255  # top half trains
    Image.fromarray(mask, "L").save(folder / "photo.mask.png")
    Image.fromarray(np.full((size, size, 3), (20, 20, 200), np.uint8)).save(folder / "plain.png")
    return folder


def test_mask_pictures_are_masks_not_training_pictures(tmp_path):
    from transferstudio.data.scan import scan_images

    scan = scan_images(make_masked_folder(tmp_path / "pics"))
    records = {r.path.name: r for r in scan.images}
    assert set(records) == {"cutout.png", "photo.png", "plain.png"}
    assert records["photo.png"].mask.name == "photo.mask.png"
    assert records["cutout.png"].mask is None and records["plain.png"].mask is None


def test_masks_travel_with_their_pictures_through_crop_and_flip(tmp_path):
    from transferstudio.data.dataset import TrainingImages
    from transferstudio.data.scan import scan_images

    records = scan_images(make_masked_folder(tmp_path / "pics")).images
    images = TrainingImages(records, 24, 8, buckets=False, flip=True, masked=True)
    names = [r.path.name for r in records]
    flips = 0
    rng = torch.Generator().manual_seed(0)
    for _ in range(8):
        batch = images.load_batch(list(range(len(records))), rng)
        masks = {n: m[0] for n, m in zip(names, batch.masks)}
        cutout = masks["cutout.png"]
        left, right = float(cutout[:, :12].mean()), float(cutout[:, 12:].mean())
        assert {round(left), round(right)} == {0, 1}  # one half, whichever way it was flipped
        flips += left < right
        assert float(masks["photo.png"][:12].mean()) == 1 and float(masks["photo.png"][12:].mean()) == 0
        assert float(masks["plain.png"].min()) == 1  # no mask: everything trains
        red = batch.pixels[names.index("cutout.png")]
        assert float(red[0].mean()) > 0.4  # transparent pixels keep their colour, not white
    assert 0 < flips < 8
    assert TrainingImages(records, 24, 8, buckets=False).load_batch([0], None).masks is None  # off: no masks


def test_masked_out_pixels_get_no_gradient(tiny_ddpm):
    """What the denoiser predicts where the mask is 0 gets no gradient (it is not trained there);
    where it is 1 it does; an all-ones mask is the plain loss."""
    from transferstudio.backbones.base import Conditioning
    from transferstudio.backbones.diffusion import diffusion_loss, noise_scheduler
    from transferstudio.backbones.registry import load_backbone

    scheduler = noise_scheduler(load_backbone(tiny_ddpm).scheduler_config)
    size = 16
    prediction = torch.zeros(2, 3, size, size, requires_grad=True)

    class Stub:  # a denoiser whose output is the tensor we watch
        def predict(self, noisy, timesteps, cond):
            return prediction

    clean = torch.rand(2, 3, size, size) * 2 - 1
    mask = torch.zeros(2, 1, size, size)
    mask[..., : size // 2] = 1

    def loss(m):
        return diffusion_loss(Stub(), scheduler, clean, Conditioning(), generator=torch.Generator().manual_seed(3),
                              mask=m)

    loss(mask).backward()
    grad = prediction.grad
    assert float(grad[..., size // 2:].abs().max()) == 0
    assert float(grad[..., : size // 2].abs().min()) > 0
    assert float(loss(torch.ones(2, 1, size, size))) == pytest.approx(float(loss(None)), rel=1e-6)


@pytest.mark.parametrize("model", ["tiny_ddpm", "tiny_sd1_dir"])  # pixels, and latents 8× smaller
def test_masked_training_through_the_cli(tmp_path, request, model):
    pics = make_masked_folder(tmp_path / "pics", size=32)
    project = tmp_path / "p"
    assert cli.main(["new", str(project), "--backbone", str(request.getfixturevalue(model)), "--images", str(pics),
                     "--steps", "2", "--masked-loss", "--batch-size", "3", "--method", "lora"]) == 0
    assert json.loads((project / "project.json").read_text())["config"]["masked_loss"] is True
    assert cli.main(["train", str(project)]) == 0
