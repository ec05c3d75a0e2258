"""A small self-contained project for measuring the window and taking screenshots (developer tool).

Builds a randomly initialised pixel UNet and simple pictures with torch, so it runs on a worker
thread (`TaskWorker(make_demo_project, ...)`); `measure_stall` uses it.
"""
from __future__ import annotations

from pathlib import Path


def make_demo_project(folder: str | Path, *, steps: int, size: int = 32, images: int = 8) -> Path:
    """A small self-contained project (a randomly initialised pixel UNet and simple pictures),
    for measuring the window and taking screenshots without any download."""
    import numpy as np
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from PIL import Image

    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project

    folder = Path(folder)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    model = folder / "model"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        model, safe_serialization=True)
    pictures = folder / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(images):  # soft sunsets: a warm gradient sky over a dark hill line
        sky = np.stack([0.9 - 0.3 * yy, 0.4 + 0.3 * yy * rng.random(), 0.3 + 0.5 * yy], -1)
        hill = yy > 0.6 + 0.15 * np.sin(xx * (3 + i) + rng.random() * 6)
        arr = np.where(hill[..., None], [0.1, 0.15 + 0.1 * rng.random(), 0.1], sky)
        Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(pictures / f"sunset_{i:02d}.png")
    config = TrainConfig(steps=steps, learning_rate=1e-3, batch_size=2, preview_every=max(1, steps // 4),
                         preview_steps=10, checkpoint_every=max(1, steps // 2), rank=8, alpha=8.0)
    create_project(folder / "project", backbone=model, images=pictures, name="Sunsets", config=config)
    return folder / "project"
