"""The DDPM family's torch half: the loaded model (`DDPMBackbone`), its denoiser call, previews
and export. What a DDPM folder is, read from its configs, is ddpm.py (the family's spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones.base import Conditioning, count_parameters
from transferstudio.backbones.ddpm import _caps, _downsampling
from transferstudio.backbones.diffusion import DiffusionBackbone


class DDPMBackbone(DiffusionBackbone):
    family = "ddpm"

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], *, source: Path) -> None:
        self.unet = unet.float().eval()
        self.unet.requires_grad_(False)
        self.scheduler_config = scheduler_config
        self.source = Path(source)
        config = unet.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        self.caps = _caps(int(size), _downsampling(dict(config)),
                          str(scheduler_config.get("prediction_type", "epsilon")))
        self.device = torch.device("cpu")

    @property
    def denoiser(self) -> nn.Module:
        return self.unet

    def parameters_total(self) -> int:
        return count_parameters(self.unet)

    def lora_targets(self) -> list[str]:
        # Small pixel UNets have attention only at the lowest resolution: adapting the
        # resnet convolutions and time projections too is what lets LoRA change the look.
        return ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]

    def adapter_targets(self, layers: str) -> tuple[list[str], list[str]]:
        # Every preset: attention alone does not change such a model's look (above); the 3x3
        # resnet convolutions take the conv rank/alpha.
        return self.lora_targets(), ["conv1", "conv2"]

    def text_encoder_lora_targets(self) -> list[str]:
        return []

    def to(self, device: torch.device, dtype: torch.dtype) -> "DDPMBackbone":
        self.device = torch.device(device)
        self.unet.to(self.device)
        return self

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.unet(noisy, timesteps).sample

    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None,
               negative_prompt: str = "") -> list[Any]:
        from diffusers import DDIMPipeline, DDIMScheduler

        pipe = DDIMPipeline(unet=self.unet, scheduler=DDIMScheduler.from_config(self.scheduler_config))
        pipe.set_progress_bar_config(disable=True)
        was_training = self.unet.training
        self.unet.eval()
        try:
            with torch.no_grad():
                # One generator per image on the CPU: the same seed gives the same picture
                # whatever the batch or device, exactly as in a plain diffusers script.
                gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
                out = pipe(batch_size=len(gens), generator=gens, num_inference_steps=steps, eta=0.0,
                           output_type="pil")
        finally:
            self.unet.train(was_training)
        return list(out.images)

    def plain_modules(self) -> list[nn.Module]:
        return [self.unet]

    def save_full(self, folder: Path) -> None:
        from diffusers import DDPMPipeline, DDPMScheduler

        pipe = DDPMPipeline(unet=self.unet, scheduler=DDPMScheduler.from_config(self.scheduler_config))
        pipe.save_pretrained(folder, safe_serialization=True)
