"""GANs: a generator and a discriminator (backbones/gan_model.py) adapted to a few pictures.

A GAN backbone is a folder — `config.json` (`_class_name: "TransferStudioGAN"`),
`generator.safetensors`, `discriminator.safetensors` — as the starter GAN ships and
`transferstudio pretrain --family gan` writes; or an exported generator `.safetensors` alone
(its config in the metadata; a new discriminator then starts from random weights).

Training (`Adversarial`): two phases, the discriminator's then the generator's, each with its
own optimizer (Adam with β1 = 0, as StyleGAN2), non-saturating logistic loss, lazy R1 on real
pictures, differentiable augmentation of real and generated pictures (fixed or adaptive
strength), FreezeD (the discriminator's first blocks stay as pretrained), and an optional
cross-domain consistency term that keeps the source generator's diversity. The generator's
EMA is what previews, Compare and exports use.

This module reads configs and safetensors headers only (no torch); the loaded model, its
objective and its files are gan_backbone.py's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from transferstudio.backbones.gan_config import GANConfig
from transferstudio.backbones.spec import Capabilities, DomainScale, Family, Inspection, folder_size
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:
    from transferstudio.backbones.base import Backbone

CLASS_NAME = "TransferStudioGAN"
CONFIG_FILE, GENERATOR_FILE, DISCRIMINATOR_FILE = "config.json", "generator.safetensors", "discriminator.safetensors"
LABEL = "GAN (StyleGAN2-like generator)"


# What a new GAN project starts from: few-shot adaptation wants batches big enough for the
# discriminator's batch statistics, Adam at StyleGAN2's rate, the generator's EMA, and
# adaptive augmentation (see the sample GAN project for the measured settings).
SUGGESTED = (("method", "full"), ("batch_size", 16), ("learning_rate", 2e-3), ("steps", 500), ("ema", True),
             ("preview_every", 50), ("preview_seeds", tuple(range(1, 17))), ("checkpoint_every", 250),
             ("schedule", "constant"), ("augment", "adaptive"))
# Channels per resolution (px -> channels) of each size preset.
SIZES = {"starter": {4: 128, 8: 128, 16: 64, 32: 32, 64: 16, 128: 16},
         "large": {4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 32},
         "tiny": {4: 16, 8: 16, 16: 8, 32: 8, 64: 8, 128: 8}}


# The domain check asks the discriminator (Adversarial.domain_error): softplus(−logit) of the user's
# pictures over the same for pictures the generator made. On the starter GAN (8 pictures each):
# procedural landscapes 0.17–0.18, the sample cities 1.33, random noise 2.47, flat colours 3.5–4.7.
# (The coverage distance the validation uses put the night cities as close as the landscapes.)
DOMAIN = DomainScale(measure="how sure its discriminator is that the pictures are not like the ones it was "
                     "trained on", close=0.6, related=2.0)


def _caps(resolution: int) -> Capabilities:
    return Capabilities(conditioning="none", native_resolution=resolution, resolution_multiple=resolution,
                        supports_full_finetune=True, text_encoders=0, prediction_type="", latent=False,
                        methods=("full",), preview="image", objective="adversarial",
                        formats=("generator", "onnx", "gan-folder"), label=LABEL, diffusers_layout=False,
                        fixed_resolution=True, truncation=True, suggested=SUGGESTED, domain=DOMAIN,
                        data_parallel=False)  # its discriminator's minibatch statistics and adaptive
    # augmentation read the whole batch: several processes would train something else


def sized_config(resolution: int, size: str = "starter") -> GANConfig:
    """A GANConfig of one of the size presets at `resolution` px."""
    if size not in SIZES:
        raise BackboneError(f"Unknown GAN size '{size}'.", f"Use one of: {', '.join(SIZES)}.")
    if resolution not in SIZES[size] or resolution < 8:
        raise BackboneError(f"A GAN of {resolution} px cannot be made.", "Use 16, 32, 64 or 128 px.")
    levels = [4 * 2 ** i for i in range(int(resolution).bit_length() - 2)]
    widths = [SIZES[size][r] for r in levels]
    dim = 16 if size == "tiny" else 128
    return GANConfig(resolution=resolution, z_dim=dim, w_dim=dim, mapping_layers=2 if size == "tiny" else 4,
                     g_channels=widths, d_channels=widths[::-1])


def read_folder_config(folder: Path) -> GANConfig | None:
    """The GANConfig of a GAN folder, or None when `folder` is not one."""
    try:
        data = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("_class_name") != CLASS_NAME:
        return None
    try:
        return GANConfig.from_dict(data.get("config", {}))
    except (TypeError, ValueError):
        return None


def _file_config(path: Path) -> GANConfig | None:
    """The GANConfig in an exported generator's metadata, or None (its header alone is read)."""
    from transferstudio.backbones.sdfiles.detect import read_safetensors_header

    try:
        meta = read_safetensors_header(path).metadata or {}
        return GANConfig.from_dict(json.loads(meta["gan_config"])) if "gan_config" in meta else None
    except (OSError, BackboneError, ValueError, TypeError, KeyError):
        return None


class GANFamily(Family):
    key = "gan"
    torch_module = "transferstudio.backbones.gan_backbone"
    backbone_name = "GANBackbone"

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if path.is_file():
            if path.suffix.lower() != ".safetensors":
                return None
            config = _file_config(path)
            if config is None:
                return None
            return self._inspection(path, config, "exported generator (a new discriminator starts from random)")
        if not path.is_dir() or not (path / CONFIG_FILE).is_file():
            return None
        config = read_folder_config(path)
        if config is None:
            return None
        missing = [name for name in (GENERATOR_FILE, DISCRIMINATOR_FILE) if not (path / name).is_file()]
        if missing:
            return Inspection(path=path, family=None, label=LABEL, usable=False,
                              problems=tuple(f"{name} is missing" for name in missing),
                              advice="Copy the whole GAN folder again.")
        return self._inspection(path, config, "GAN folder (generator + discriminator)")

    def _inspection(self, path: Path, config: GANConfig, layout: str) -> Inspection:
        return Inspection(path=path, family=self.key, label=LABEL, usable=True,
                          native_resolution=config.resolution, size_bytes=folder_size(path),
                          details=(("layout", layout), ("prompts", "no (a GAN)"),
                                   ("latent", f"{config.z_dim} numbers per picture")),
                          caps=_caps(config.resolution))

    def typical_capabilities(self) -> Capabilities:
        return _caps(32)

    def initialize(self, folder: Path, *, resolution: int = 32, seed: int = 0, size: str = "starter",
                   like: Path | None = None) -> Path:
        """A GAN folder with seeded random weights: a size preset, or the architecture of the GAN at
        `like` (what `pretrain` starts from, and the from-scratch baseline of the demo)."""
        config = (read_folder_config(like) if like is not None else None) or sized_config(resolution, size)
        return self.torch_parts().initialize(Path(folder), config, seed=seed)

    def load(self, path: Path, *, prediction_type: str = "") -> Backbone:
        return self.torch_parts().load(Path(path))

    def skeleton(self, path: Path) -> Backbone:
        return self.torch_parts().skeleton(Path(path))
