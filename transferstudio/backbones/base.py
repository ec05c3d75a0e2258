"""The one interface every backbone family implements.

The rest of the program asks a backbone's `caps` ("does it take prompts?"), never
"is it SDXL?". Training-loss maths (noise, timesteps, targets, min-SNR) lives in
training/diffusion.py and is shared; a family only encodes inputs and runs its denoiser.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Capabilities:
    conditioning: str  # "text" | "none"
    native_resolution: int
    resolution_multiple: int  # bucket sides must be a multiple of this (64 for SD latents)
    supports_full_finetune: bool
    text_encoders: int  # how many text encoders can take LoRA (0 for unconditional)
    prediction_type: str  # "epsilon" | "v_prediction" | "sample"
    latent: bool  # trains in a VAE's latent space


@dataclass(frozen=True)
class Inspection:
    """What a path is, without loading weights where possible."""

    path: Path
    family: str | None  # registry key ("ddpm", "sd", "sdxl") or None when unusable
    label: str  # e.g. "Stable Diffusion 2.x (768 px, v-prediction)"
    usable: bool
    problems: tuple[str, ...] = ()
    native_resolution: int | None = None
    prediction_type: str | None = None
    size_bytes: int = 0
    details: tuple[tuple[str, str], ...] = ()  # extra (name, value) lines for `inspect`
    caps: Capabilities | None = None  # what the model can do, read from configs (usable models)

    def describe(self) -> str:
        lines = [f"{self.path}", f"  kind:        {self.label}"]
        if self.native_resolution:
            lines.append(f"  resolution:  {self.native_resolution} px")
        if self.prediction_type:
            lines.append(f"  predicts:    {self.prediction_type}")
        lines.append(f"  size:        {self.size_bytes / 1e6:.1f} MB")
        lines += [f"  {k + ':':<12} {v}" for k, v in self.details]
        lines.append(f"  usable:      {'yes' if self.usable else 'no'}")
        lines += [f"  problem:     {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class Conditioning:
    """Inputs the denoiser needs besides the noisy sample and timestep."""

    kwargs: dict[str, Any] = field(default_factory=dict)


class Backbone(ABC):
    """A loaded model family instance. Modules start on the CPU in fp32."""

    family: str = ""
    caps: Capabilities
    source: Path
    scheduler_config: dict[str, Any]  # the training noise scheduler's config (DDPMScheduler-compatible)

    # --- modules -----------------------------------------------------------------
    @property
    @abstractmethod
    def denoiser(self) -> nn.Module:
        """The module LoRA goes on, or that full fine-tuning trains (UNet)."""

    def text_encoders(self) -> list[nn.Module]:
        """Text encoders that may take LoRA, in order (te1, te2). Empty if unconditional."""
        return []

    @abstractmethod
    def lora_targets(self) -> list[str]:
        """peft `target_modules` for the denoiser."""

    def text_encoder_lora_targets(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "out_proj"]

    @abstractmethod
    def to(self, device: torch.device, dtype: torch.dtype) -> "Backbone":
        """Move modules; frozen parts (VAE, text encoders) may take `dtype`, the trained
        weights stay fp32 (autocast handles mixed precision)."""

    def enable_gradient_checkpointing(self) -> None:
        module = self.denoiser
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()

    # --- training ----------------------------------------------------------------
    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B,3,H,W) in [-1,1] -> the space the denoiser works in (latents or pixels).
        Called under no_grad."""

    def encode_conditioning(self, captions: Sequence[str], *, original_sizes: Sequence[tuple[int, int]],
                            crop_top_left: Sequence[tuple[int, int]], target_size: tuple[int, int],
                            train_text_encoder: bool) -> Conditioning:
        """Captions and size info -> denoiser kwargs. Unconditional families ignore all of it."""
        return Conditioning()

    @abstractmethod
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Run the denoiser; returns what the scheduler's prediction_type says it predicts."""

    # --- sampling ----------------------------------------------------------------
    @abstractmethod
    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None,
               negative_prompt: str = "") -> list[Any]:
        """PIL images, one per seed (prompts paired with seeds for text families).
        Uses the modules as they are now (with any adapter applied). Deterministic per seed."""

    # --- saving ------------------------------------------------------------------
    def save_full(self, folder: Path) -> None:
        """Save the whole (fully fine-tuned) model in diffusers layout with safetensors."""
        raise NotImplementedError(f"{self.family} does not support full fine-tuning export")


class Family(ABC):
    """A backbone family: recognises a path and loads it."""

    key: str = ""

    @abstractmethod
    def inspect(self, path: Path) -> Inspection | None:
        """An Inspection if this family claims `path` (usable or with problems), else None."""

    @abstractmethod
    def load(self, path: Path, *, prediction_type: str = "") -> Backbone:
        """Load from local files only. Raises BackboneError with advice when it cannot."""

    def capabilities(self, found: Inspection) -> Capabilities | None:
        """Capabilities of an inspected, usable model, from its configs alone (no weights)."""
        return None


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def folder_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
