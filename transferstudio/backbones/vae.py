"""Variational autoencoders: a diffusers `AutoencoderKL` — the starter VAE, a Stable Diffusion VAE
folder (`vae/` of a pipeline, or a bare AutoencoderKL folder), or a single VAE `.safetensors` as
A1111/Forge/ComfyUI keep them in `models/VAE` (loaded with the bundled SD VAE config).

Methods: "decoder" (the default) trains the decoder only — the encoder and so the latent space
stay as they are, so the adapted VAE drops into existing SD pipelines (how the ft-EMA/ft-MSE SD
VAEs were made); "full" trains the encoder too (the latent space moves: not for SD pipelines).

Objective (`Reconstruction`): L1 + an L1 over a Laplacian pyramid (a structural term that needs
no downloaded network: it weighs edges and textures at every scale, where plain L1 mostly sees
flat colour), + the KL term when the encoder trains, + optionally a small patch discriminator from
a chosen step (its own phase and optimizer, hinge loss), as the published VAE recipes do.
Previews: held-out pictures, original beside reconstruction, with PSNR/SSIM.

This module reads configs and headers only (no torch); the loaded model and its objective are
vae_backbone.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.backbones.diffusers_folder import read_json, weight_problems
from transferstudio.backbones.spec import Capabilities, DomainScale, Family, Inspection, folder_size, resized_channels
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:
    from transferstudio.backbones.base import Backbone

LABEL = "Variational autoencoder (VAE)"
SINGLE_FILE_CONFIG = "sd1"  # a VAE file carries no config; SD 1.x/2.x/XL VAEs share one architecture
_DIFFUSERS_KEY = "encoder.down_blocks.0.resnets.0.conv1.weight"


def _vae_config(path: Path) -> dict[str, Any] | None:
    config = read_json(Path(path) / "config.json")
    return config if config and config.get("_class_name") == "AutoencoderKL" else None


def _scale(config: dict[str, Any]) -> int:
    return 2 ** max(0, len(config.get("block_out_channels", (0,))) - 1)


def _resolution(config: dict[str, Any]) -> int:
    size = config.get("sample_size") or 256
    return int(size if isinstance(size, int) else size[0])


# A VAE folder's config.json may say its prior decodes to pictures worth previewing (the starter
# VAE, trained with a strong KL term); diffusers ignores keys that start with "_".
PRIOR_FLAG = "_transferstudio_prior_samples"


# The domain check: the mean absolute reconstruction error (pixels in [-1, 1]) on the user's
# pictures over that on pictures decoded from the prior (VAEs whose prior decodes to pictures:
# calibrated on the starter VAE, 8 pictures: held-out landscapes ≈ 0.8, the sample cities ≈ 1.4,
# noise ≈ 3.8, flat colours ≈ 6). A VAE without such a prior makes no pictures of its own: its
# reference is an absolute scale instead, 0.08, about what Stable Diffusion's VAE reaches on
# photographs (PSNR ≈ 24.5 dB), so "close" there means "reconstructed as well as a good VAE
# reconstructs its own domain" (not calibrated on such a VAE here: none ships).
DOMAIN_MEASURE = "how well it redraws the pictures (mean absolute reconstruction error)"
DOMAIN = DomainScale(measure=DOMAIN_MEASURE, close=1.05, related=2.5)
DOMAIN_ABSOLUTE = DomainScale(measure=DOMAIN_MEASURE, close=1.05, related=2.5, reference=0.08)


def _caps(resolution: int, multiple: int, label: str = LABEL, prior: bool = False) -> Capabilities:
    return Capabilities(prior_samples=prior, conditioning="none", native_resolution=resolution, resolution_multiple=multiple,
                        supports_full_finetune=True, text_encoders=0, prediction_type="", latent=False,
                        methods=("decoder", "full"), preview="reconstruction", objective="reconstruction",
                        formats=("single-file", "pipeline"), label=label,
                        domain=DOMAIN if prior else DOMAIN_ABSOLUTE)


class VAEFamily(Family):
    key = "vae"
    torch_module = "transferstudio.backbones.vae_backbone"
    backbone_name = "VAEBackbone"

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if path.is_file():
            return self._inspect_file(path)
        config = _vae_config(path) if path.is_dir() else None
        if config is None:
            return None
        problems = weight_problems(path, "VAE")
        label = "Variational autoencoder (AutoencoderKL folder)"
        return Inspection(path=path, family=self.key if not problems else None, label=label, usable=not problems,
                          problems=tuple(problems), native_resolution=_resolution(config),
                          size_bytes=folder_size(path),
                          details=(("layout", "diffusers AutoencoderKL folder"), ("prompts", "no (a VAE)")),
                          caps=_caps(_resolution(config), _scale(config), label, bool(config.get(PRIOR_FLAG)))
                          if not problems else None)

    def _inspect_file(self, path: Path) -> Inspection | None:
        from transferstudio.backbones.sdfiles.detect import detect

        if path.suffix.lower() not in (".safetensors", ".sft"):
            return None
        found = detect(path)
        if found.kind != "vae":
            return None
        config = self._file_config()
        label = "Stable Diffusion VAE (single file)"
        return Inspection(path=path, family=self.key, label=label, usable=True,
                          native_resolution=_resolution(config), size_bytes=found.size_bytes or path.stat().st_size,
                          details=(("layout", "single-file VAE"), ("prompts", "no (a VAE)")),
                          caps=_caps(_resolution(config), _scale(config), label))

    @staticmethod
    def _file_config() -> dict[str, Any]:
        from transferstudio.backbones.sdfiles._paths import loading_root

        return read_json(loading_root() / SINGLE_FILE_CONFIG / "vae" / "config.json") or {}

    def typical_capabilities(self) -> Capabilities:
        return _caps(0, 8)

    def initialize(self, folder: Path, *, resolution: int = 32, seed: int = 0, size: str = "starter",
                   like: Path | None = None) -> Path:
        """An AutoencoderKL folder with seeded random weights: the architecture of the VAE at `like`
        (default: the starter VAE), narrower ("tiny") or wider ("large"), at `resolution` px (what
        `transferstudio pretrain --family vae` starts from)."""
        import torch
        from diffusers import AutoencoderKL

        from transferstudio.core.paths import resource

        source = Path(like) if like is not None else resource("starter_vae")
        config = _vae_config(source)
        if config is None:
            raise BackboneError(f"{source} is not a VAE to copy the architecture of.", "Pick an AutoencoderKL folder.")
        channels, groups = resized_channels(config["block_out_channels"], size)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        config.update(block_out_channels=channels, norm_num_groups=groups, sample_size=int(resolution))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            vae = AutoencoderKL.from_config(config)
        vae.save_pretrained(folder, safe_serialization=True)
        return Path(folder)

    def load(self, path: Path, *, prediction_type: str = "") -> Backbone:
        return self.torch_parts().load(Path(path))

    def skeleton(self, path: Path) -> Backbone:
        return self.torch_parts().skeleton(Path(path))
