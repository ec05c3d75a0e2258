"""Unconditional pixel-space diffusion: diffusers UNet2DModel + a DDPM/DDIM scheduler.

Layouts: a pipeline folder (model_index.json, unet/, scheduler/) like google/ddpm-*,
or a bare UNet folder (config.json + weights), which gets a default 1000-step scheduler.
This module reads configs only (no torch); the loaded model is ddpm_backbone.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.backbones.diffusers_folder import component_problems, read_json, weight_problems
from transferstudio.backbones.spec import Capabilities, DomainScale, Family, Inspection, folder_size, resized_channels
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:
    from transferstudio.backbones.base import Backbone

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                     "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                     "prediction_type": "epsilon", "clip_sample": True}


def _unet_folder(path: Path) -> Path | None:
    """The folder holding the UNet config, or None if this is not a DDPM layout."""
    index = read_json(path / "model_index.json")
    if index is not None:
        return path / "unet" if index.get("_class_name") in PIPELINES else None
    config = read_json(path / "config.json")
    if config is not None and config.get("_class_name") == "UNet2DModel":
        return path
    return None


def _downsampling(config: dict[str, Any]) -> int:
    return 2 ** max(0, len(config.get("down_block_types", ())) - 1)


# The domain check: the plain denoising error at 4 fixed noise levels on the user's pictures over
# that on the model's own samples. Calibrated on the starter (trained on procedural landscapes),
# 8 pictures: held-out landscapes ≈ 1.0, the sample cities ≈ 1.4–1.7, random noise ≈ 3.4–3.7.
DOMAIN = DomainScale(measure="how well it takes noise off the pictures (denoising error at 4 fixed noise levels)",
                     close=1.3, related=2.5)


def _caps(resolution: int, multiple: int, prediction_type: str) -> Capabilities:
    return Capabilities(conditioning="none", native_resolution=resolution, resolution_multiple=multiple,
                        supports_full_finetune=True, text_encoders=0, prediction_type=prediction_type,
                        latent=False, label="Unconditional diffusion model (DDPM/DDIM, pixel space)",
                        domain=DOMAIN)


class DDPMFamily(Family):
    key = "ddpm"
    torch_module = "transferstudio.backbones.ddpm_backbone"
    backbone_name = "DDPMBackbone"

    def initialize(self, folder: Path, *, resolution: int = 32, seed: int = 0, size: str = "starter",
                   like: Path | None = None) -> Path:
        """A DDPM pipeline folder with seeded random weights: the architecture and noise schedule
        of the DDPM at `like` (default: the starter model), narrower ("tiny") or wider ("large"),
        at `resolution` px (what `transferstudio pretrain --family ddpm` starts from)."""
        import torch
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

        from transferstudio.core.paths import resource

        source = Path(like) if like is not None else resource("starter")
        unet_dir = _unet_folder(source)
        if unet_dir is None:
            raise BackboneError(f"{source} is not a DDPM to copy the architecture of.", "Pick a DDPM folder.")
        config = dict(UNet2DModel.load_config(unet_dir))
        channels, groups = resized_channels(config["block_out_channels"], size)
        config.update(block_out_channels=channels, sample_size=int(resolution), norm_num_groups=groups,
                      attention_head_dim=min(int(config.get("attention_head_dim") or 8), channels[-1]))
        if int(resolution) % _downsampling(config):
            raise BackboneError(f"{resolution} px is not a multiple of {_downsampling(config)}.",
                                "Use 32, 64 or 128 px.")
        scheduler_config = read_json(source / "scheduler" / "scheduler_config.json") or DEFAULT_SCHEDULER
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            unet = UNet2DModel.from_config(config)
        scheduler = DDPMScheduler.from_config(scheduler_config)
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
        return Path(folder)

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if not path.is_dir():
            return None
        unet_dir = _unet_folder(path)
        if unet_dir is None:
            return None
        problems: list[str] = []
        if unet_dir == path:
            problems += weight_problems(path, "UNet")
        else:
            problems += component_problems(path, {"unet": True, "scheduler": False})
        config = read_json(unet_dir / "config.json") or {}
        if config and config.get("_class_name") not in (None, "UNet2DModel"):
            problems.append(f"its UNet is a {config.get('_class_name')}, not an unconditional UNet2DModel")
        size = config.get("sample_size") or 0
        resolution = int(size if isinstance(size, int) else size[0]) if size else None
        sched = read_json(path / "scheduler" / "scheduler_config.json") or DEFAULT_SCHEDULER
        return Inspection(path=path, family=self.key if not problems else None,
                          label="Unconditional diffusion model (DDPM/DDIM, pixel space)",
                          usable=not problems, problems=tuple(problems), native_resolution=resolution,
                          prediction_type=str(sched.get("prediction_type", "epsilon")),
                          size_bytes=folder_size(path),
                          details=(("layout", "pipeline folder" if unet_dir != path else "bare UNet folder"),
                                   ("prompts", "no (unconditional)")))

    def capabilities(self, found: Inspection) -> Capabilities | None:
        unet_dir = _unet_folder(Path(found.path))
        config = read_json(unet_dir / "config.json") if unet_dir else None
        if not config:
            return None
        return _caps(found.native_resolution or 0, _downsampling(config), found.prediction_type or "epsilon")

    def typical_capabilities(self) -> Capabilities:
        return _caps(0, 8, "epsilon")

    def load(self, path: Path, *, prediction_type: str = "") -> Backbone:
        from diffusers import UNet2DModel

        path = Path(path)
        unet_dir = _unet_folder(path)
        if unet_dir is None:
            raise BackboneError(f"{path} is not an unconditional diffusion model folder.")
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BackboneError(f"Could not load the UNet from {unet_dir}: {exc}",
                                "The folder may be incomplete or damaged.") from None
        sched = dict(read_json(path / "scheduler" / "scheduler_config.json") or DEFAULT_SCHEDULER)
        if prediction_type:
            sched["prediction_type"] = prediction_type
        return self.backbone_class()(unet, sched, source=path)

    def skeleton(self, path: Path) -> Backbone:
        from diffusers import UNet2DModel

        path = Path(path)
        unet_dir = _unet_folder(path)
        if unet_dir is None:
            raise BackboneError(f"{path} is not an unconditional diffusion model folder.")
        unet = UNet2DModel.from_config(UNet2DModel.load_config(unet_dir))
        return self.backbone_class()(unet, dict(read_json(path / "scheduler" / "scheduler_config.json") or DEFAULT_SCHEDULER),
                            source=path)
