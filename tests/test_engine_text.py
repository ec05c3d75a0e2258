"""The engine on text-conditioned families (tiny SD 1.x, SD 2.x v-prediction, SDXL)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transferstudio.core.events import Finished, Preview, Started, Step
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project
from transferstudio.training.trainer import TrainJob, train


def _train(tmp_path, backbone, images, **settings):
    config = TrainConfig(**{**dict(preview_steps=3, preview_seeds=[1], batch_size=2, preview_every=0,
                                   learning_rate=5e-3, rank=4, alpha=8, trigger="zq"), **settings})
    project = create_project(tmp_path / "project", backbone=backbone, images=images, config=config)
    return project, list(train(TrainJob(project)))


@pytest.fixture()
def captioned(tmp_path):
    from tiny_ddpm import make_images

    return make_images(tmp_path / "images", n=3, size=64, captions=True)


def test_sd1_lora_with_text_encoder_exports_for_diffusers(tmp_path, tiny_sd1_dir, captioned):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from transferstudio.export.formats import export_project
    from transferstudio.adapt.restore import load_trained

    project, events = _train(tmp_path, tiny_sd1_dir, captioned, steps=4, train_text_encoder=True)
    assert isinstance(events[-1], Finished), events[-1]
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews[0].prompts[0].startswith("zq"), "preview prompts carry the trigger word"
    out = export_project(project, tmp_path / "style.safetensors").path

    trained = load_trained(project)
    prompt = "zq, a square"
    ours = trained.backbone.sample(seeds=[11], prompts=[prompt], steps=3)[0]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, safety_checker=None, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return np.asarray(pipe(prompt, num_inference_steps=3, eta=0.0, output_type="pil",
                               generator=[torch.Generator().manual_seed(11)]).images[0], np.float32)

    base = image()
    pipe.load_lora_weights(str(out))
    adapted = image()
    # Same image up to rounding of a few 8-bit levels (different but equivalent code paths).
    assert np.abs(adapted - np.asarray(ours, np.float32)).mean() < 0.5
    assert np.abs(adapted - np.asarray(ours, np.float32)).max() <= 6
    assert np.abs(adapted - base).mean() > 0.1


def test_sd2_v_prediction_trains_against_velocity(tmp_path, tiny_sd2v_dir, captioned):
    from transferstudio.backbones.registry import load_backbone

    backbone = load_backbone(tiny_sd2v_dir)
    assert backbone.scheduler_config["prediction_type"] == "v_prediction"
    _, events = _train(tmp_path, tiny_sd2v_dir, captioned, steps=2)
    assert isinstance(events[-1], Finished)


def test_sdxl_lora_runs_with_size_conditioning_and_buckets(tmp_path, tiny_sdxl_dir):
    from tiny_ddpm import make_images

    wide = make_images(tmp_path / "wide", n=2, size=64)
    from PIL import Image

    for p in wide.glob("*.png"):  # make them 2:1 so they land in a wide bucket
        Image.open(p).resize((128, 64)).save(p)
    project, events = _train(tmp_path, tiny_sdxl_dir, wide, steps=3, train_text_encoder=True)
    assert isinstance(events[-1], Finished), events[-1]
    assert isinstance(events[0], Started) and events[0].trainable_parameters > 0
    losses = [e.loss for e in events if isinstance(e, Step)]
    assert all(np.isfinite(losses))
