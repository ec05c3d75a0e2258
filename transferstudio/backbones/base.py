"""The one interface every backbone family implements: its spec.

A family module holds everything the rest of the program asks of a model family: labels and
`Capabilities` ("does it take prompts?", "which exports apply?"), loading, which modules train
and how (`training_roles`), the training objective (`objective`: phases with their own
optimizers, so a GAN's two networks or a VAE's reconstruction fit without special cases),
previews (`sample`) and export knowledge (`ExportSpec`, `save_lora`, `save_full`,
`save_single_file`, `kohya_unet_names`). The loop, exports, library and window ask these,
never "is it SDXL?". Adding a family is one module plus `registry.register`.

This module holds the torch half (`Backbone`, `RolePlan`, `Conditioning`); the values a family
gives without loading a model (`Family`, `Capabilities`, `Inspection`, `ExportSpec`) are in
spec.py, which imports no torch, and are re-exported here.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

# The torch-free values live in spec.py (inspection must not import torch); they are
# re-exported here, where most of the program imports them from.
from transferstudio.backbones.spec import (Capabilities, DomainScale, ExportSpec, Family, Inspection,  # noqa: F401
                                           _human_size, folder_size, resized_channels)


@dataclass(frozen=True)
class RolePlan:
    """One module that trains: fully (every weight) or through a LoRA on `targets`."""

    module: nn.Module
    how: str  # "full" | "lora"
    targets: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()  # submodules of a "full" module that stay as they are (e.g. FreezeD)
    conv: tuple[str, ...] = ()  # of `targets`, the spatial convolutions: they take the conv rank/alpha


@dataclass
class Conditioning:
    """Inputs the denoiser needs besides the noisy sample and timestep."""

    kwargs: dict[str, Any] = field(default_factory=dict)


class Backbone(ABC):
    """A loaded model family instance. Modules start on the CPU in fp32."""

    family: str = ""
    caps: Capabilities
    source: Path
    scheduler_config: dict[str, Any]  # diffusion families: the training noise scheduler's config

    # --- modules -----------------------------------------------------------------
    @property
    @abstractmethod
    def denoiser(self) -> nn.Module:
        """The main module: the one LoRA goes on, or that full fine-tuning trains (a diffusion
        family's UNet, a VAE's decoder, a GAN's generator)."""

    def text_encoders(self) -> list[nn.Module]:
        """Text encoders that may take LoRA, in order (te1, te2). Empty if unconditional."""
        return []

    @abstractmethod
    def lora_targets(self) -> list[str]:
        """peft `target_modules` for the denoiser."""

    def text_encoder_lora_targets(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "out_proj"]

    def adapter_targets(self, layers: str) -> tuple[list[str], list[str]]:
        """The denoiser's adapter `target_modules` for a layer preset (TrainConfig.layers:
        "attention", "attention+ff", "all-linear", "all+conv"), and which of them are spatial
        convolutions (they take the conv rank/alpha). Families without presets adapt their
        `lora_targets()` whatever the preset."""
        return list(self.lora_targets()), []

    @abstractmethod
    def to(self, device: torch.device, dtype: torch.dtype) -> "Backbone":
        """Move modules; frozen parts (VAE, text encoders) may take `dtype`, the trained
        weights stay fp32 (autocast handles mixed precision)."""

    def enable_gradient_checkpointing(self) -> None:
        module = self.denoiser
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()

    # --- training (the diffusion objective asks these; other objectives need not) ----
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,H,W) in [-1,1] -> the space the denoiser works in (latents or pixels).
        Called under no_grad."""
        raise NotImplementedError(f"{self.family} has no denoising space")

    def encode_conditioning(self, captions: Sequence[str], *, original_sizes: Sequence[tuple[int, int]],
                            crop_top_left: Sequence[tuple[int, int]], target_size: tuple[int, int],
                            train_text_encoder: bool) -> Conditioning:
        """Captions and size info -> denoiser kwargs. Unconditional families ignore all of it."""
        return Conditioning()

    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) of the latents pictures encode to, scaled as the denoiser sees them, so a
        latent is mean + std · noise: what an encoding cache keeps. None for families whose
        denoiser works on the pixels (nothing worth caching). Called under no_grad."""
        return None

    def text_features(self, captions: Sequence[str], *, train_text_encoder: bool = False) -> dict[str, torch.Tensor] | None:
        """The text encoders' outputs for `captions` (each tensor batch first), which
        `conditioning_from` turns into denoiser kwargs; a text-embedding cache keeps them per
        caption. None: no text encoders."""
        return None

    def conditioning_from(self, features: dict[str, torch.Tensor] | None, *, original_sizes: Sequence[tuple[int, int]] = (),
                          crop_top_left: Sequence[tuple[int, int]] = (),
                          target_size: tuple[int, int] = (0, 0)) -> Conditioning:
        """Text features (from `text_features` or a cache) and size info -> denoiser kwargs."""
        return Conditioning()

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Run the denoiser; returns what the scheduler's prediction_type says it predicts."""
        raise NotImplementedError(f"{self.family} is not a denoiser")

    # --- sampling ----------------------------------------------------------------
    @abstractmethod
    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None,
               negative_prompt: str = "") -> list[Any]:
        """PIL images, one per seed (prompts paired with seeds for text families).
        Uses the modules as they are now (with any adapter applied). Deterministic per seed."""

    # --- what trains, and on what objective ---------------------------------------
    def configure(self, config: Any) -> None:
        """Called once with the run's settings before `training_roles` (e.g. to build a
        discriminator the settings ask for)."""

    def training_roles(self, method: str, *, train_text_encoder: bool = False) -> dict[str, RolePlan]:
        """The modules a run trains, by role name (the prefix of their checkpoint keys)."""
        if method == "full":
            return {"model": RolePlan(self.denoiser, "full")}
        return {"model": RolePlan(self.denoiser, "lora", tuple(self.lora_targets()))}

    @abstractmethod
    def objective(self, config: Any) -> Any:
        """The training objective (an `objective.Objective`)."""

    # --- saving ------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        return ExportSpec()

    def save_full(self, folder: Path) -> None:
        """Save the whole (fully fine-tuned) model in diffusers layout with safetensors."""
        raise NotImplementedError(f"{self.family} does not support full fine-tuning export")

    def save_lora(self, file: Path, states: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict],
                  metadata: dict[str, str]) -> None:
        """One `.safetensors` LoRA file for Python users: peft-format weights of the denoiser with
        its LoraConfig in the metadata (`peft.inject_adapter_in_model` + `set_peft_model_state_dict`).
        Families with a diffusers LoRA loader write its layout instead."""
        from safetensors.torch import save_file

        role = next(iter(states))
        save_file(states[role], str(file), metadata={"format": "peft", "lora_config": json.dumps(configs[role]),
                                                     **metadata})

    def save_single_file(self, file: Path, *, dtype: torch.dtype | None = None,
                         metadata: dict[str, str] | None = None) -> None:
        raise NotImplementedError(f"{self.family} has no single-file checkpoint layout")

    def kohya_unet_names(self, paths: list[str]) -> dict[str, str]:
        """Denoiser module path -> kohya module name; only families with `caps.kohya_lora`."""
        raise NotImplementedError(f"{self.family} has no kohya naming")

    def kohya_fused_layers(self, paths: list[str]) -> dict[str, dict]:
        """For adapted denoiser `paths`, the kohya layers that hold several of them (an original
        layer diffusers splits, e.g. SD3/FLUX's fused q/k/v) or whose row halves are swapped:
        kohya name -> {"parts": ((module path, output rows), ...) in row order, "swap": bool}.
        Empty for families whose kohya layers are their diffusers modules."""
        return {}

    def base_row_norms(self, path: str) -> torch.Tensor:
        """The row norms of the denoiser module's base weight (a DoRA magnitude for a part of a
        fused kohya layer that was not adapted)."""
        raise NotImplementedError(f"{self.family} has no fused kohya layers")

    def plain_modules(self) -> list[nn.Module]:
        """Every module of the model (for casting a merged export to fp16)."""
        return [self.denoiser, *self.text_encoders()]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
