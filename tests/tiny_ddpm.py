"""Tiny unconditional diffusion models and image folders, built from config objects."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_ddpm(folder: Path, *, size: int = 16, seed: int = 0, layout: str = "pipeline") -> Path:
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/) or a bare UNet folder."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    folder = Path(folder)
    if layout == "bare":
        unet.save_pretrained(folder, safe_serialization=True)
    else:
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
            folder, safe_serialization=True)
    return folder


def make_images(folder: Path, n: int = 4, size: int = 24, seed: int = 0, captions: bool = False) -> Path:
    """Simple coloured pictures (a bright square on a dark ground) that a model can overfit."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.zeros((size, size, 3), np.uint8)
        arr[...] = rng.integers(0, 60, 3)
        a, b = sorted(rng.integers(2, size - 2, 2))
        arr[a:b + 2, a:b + 2] = rng.integers(150, 255, 3)
        Image.fromarray(arr).save(folder / f"img_{i:02d}.png")
        if captions:
            (folder / f"img_{i:02d}.txt").write_text(f"a square number {i}")
    return folder
