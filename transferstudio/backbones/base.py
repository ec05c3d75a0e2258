"""The one interface every backbone family implements: its spec.

A family module holds everything the rest of the program asks of a model family: labels and
`Capabilities` ("does it take prompts?", "which exports apply?"), loading, which modules train
and how (`training_roles`), the training objective (`objective`: phases with their own
optimizers, so a GAN's two networks or a VAE's reconstruction fit without special cases),
previews (`sample`) and export knowledge (`ExportSpec`, `save_lora`, `save_full`,
`save_single_file`, `kohya_unet_names`). The loop, exports, library and window ask these,
never "is it SDXL?". Adding a family is one module plus `registry.register`.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class DomainScale:
    """How the domain check ("is this model a good start for my pictures?") reads a family's
    measure (`Objective.evaluate`): the score is the error on the user's pictures divided by the
    error on pictures of the model's own domain; up to `close` it says close, up to `related`
    related, above that far. The limits are calibrated per family on data we control."""

    measure: str = "the model's error on the pictures"  # what evaluate measures, in a few plain words
    close: float = 1.3
    related: float = 2.5
    reference: float = 0.0  # > 0: the family's typical error on its own domain, used instead of
    #   the model's own samples (models that cannot make pictures of their own)


@dataclass(frozen=True)
class Capabilities:
    conditioning: str  # "text" | "none"
    native_resolution: int
    resolution_multiple: int  # bucket sides must be a multiple of this (64 for SD latents)
    supports_full_finetune: bool
    text_encoders: int  # how many text encoders can take LoRA (0 for unconditional)
    prediction_type: str  # "epsilon" | "v_prediction" | "sample" ("" for non-diffusion families)
    latent: bool  # trains in a VAE's latent space
    methods: tuple[str, ...] = ("lora", "full")  # training methods the family offers
    kohya_lora: bool = False  # a LoRA exports in the kohya layout ComfyUI/A1111 load
    single_file: bool = False  # a merged model exports as one original-layout checkpoint
    preview: str = "image"  # what a preview is: "image" (samples from fixed seeds) or
    #   "reconstruction" (held-out pictures beside the model's reconstruction, with PSNR/SSIM)
    objective: str = "diffusion"  # "diffusion" | "reconstruction": which settings apply
    formats: tuple[str, ...] = ()  # family-specific export formats it writes (e.g. "single-file")
    label: str = ""  # what the family is called, for people (e.g. "Stable Diffusion XL")
    diffusers_layout: bool = True  # its trained weights export as diffusers files (LoRA or model folder)
    fixed_resolution: bool = False  # it makes pictures of its native size only (a GAN)
    truncation: bool = False  # sampling takes a truncation ψ (a GAN: closer to the average picture)
    suggested: tuple[tuple[str, Any], ...] = ()  # settings a new project of this model starts from
    prior_samples: bool = False  # a reconstruction model whose prior decodes to pictures worth previewing
    domain: DomainScale = DomainScale()  # how the domain check reads this family's measure
    # it trains data-parallel (several processes, each some rows of the global batch) with the
    # same result as one process: every loss is a mean of per-picture terms, drawn per picture
    data_parallel: bool = True


@dataclass(frozen=True)
class ExportSpec:
    """What the exports need to know of a loaded model (its family's export knowledge)."""

    variant: str | None = None  # original-layout key of a single-file checkpoint (sd1/sd2/sd2-v/sdxl)
    modelspec_architecture: str = "unconditional-diffusion"  # modelspec.architecture of the base
    modelspec_prediction: str | None = None  # modelspec.prediction_type ("epsilon" / "v")
    kohya_base_version: str | None = None  # ss_base_model_version (None: no kohya LoRA)
    kohya_text_prefixes: tuple[tuple[str, str], ...] = ()  # (role, prefix), e.g. ("text_encoder", "lora_te_")
    kohya_original_layout: bool = False  # kohya UNet names use the original (sgm) layout
    version_label: str | None = None  # A1111's "sd version" (SD1 / SD2 / SDXL)
    v_parameterization: bool = False
    is_v2: bool = False
    modelspec_implementation: str | None = None  # modelspec.implementation of original-layout files
    #   (None: Stability's generative-models for original layouts, "diffusers" otherwise)


@dataclass(frozen=True)
class RolePlan:
    """One module that trains: fully (every weight) or through a LoRA on `targets`."""

    module: nn.Module
    how: str  # "full" | "lora"
    targets: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()  # submodules of a "full" module that stay as they are (e.g. FreezeD)
    conv: tuple[str, ...] = ()  # of `targets`, the spatial convolutions: they take the conv rank/alpha


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
    variant: str | None = None  # a finer kind where the family has one (sd1 / sd2 / sdxl, as files say)
    advice: str = ""  # what to do about the problems

    def describe(self) -> str:
        """What `transferstudio inspect`, the model library and the model panel say about it."""
        lines = [f"{self.path}", f"  {'What:':<12} {self.label}"]
        if self.native_resolution:
            lines.append(f"  {'Resolution:':<12} {self.native_resolution} px")
        if self.prediction_type:
            lines.append(f"  {'Predicts:':<12} {self.prediction_type}")
        lines.append(f"  {'Size:':<12} {_human_size(self.size_bytes)}")
        lines += [f"  {k.capitalize() + ':':<12} {v}" for k, v in self.details]
        lines.append(f"  {'Usable:':<12} {'yes' if self.usable else 'no'}")
        lines += [f"  {'Problem:':<12} {p}" for p in self.problems]
        if self.advice:
            lines.append(f"  {'Advice:':<12} {self.advice}")
        return "\n".join(lines)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


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

    def typical_capabilities(self) -> Capabilities:
        """What models of this family can do, before a particular one is chosen (format lists)."""
        raise NotImplementedError

    def skeleton(self, path: Path) -> Backbone:
        """The model at `path` built from its configs alone with every weight on the meta device
        (shapes, no memory, nothing read but configs): what the memory plan measures. Call it
        inside `with torch.device("meta"):`, which puts the weights there for this thread only."""
        raise NotImplementedError(f"{self.key} cannot build its models without their weights")

    def kohya_unet_names(self, paths: list[str], unet_config: Any) -> dict[str, str]:
        """Denoiser module path -> kohya module name (families whose LoRAs export for kohya)."""
        raise NotImplementedError(f"{self.key} has no kohya naming")

    def kohya_text_prefixes(self) -> dict[str, str]:
        return {}


def resized_channels(channels: Any, size: str) -> tuple[list[int], int]:
    """A diffusers model's block widths for a size preset ("tiny", "starter" = as given, "large")
    and the largest GroupNorm group count (≤ 32) that divides them all."""
    channels = list(channels)
    if size == "tiny":
        channels = [8 * (i + 1) for i in range(len(channels))]
    elif size == "large":
        channels = [2 * c for c in channels]
    groups = 32
    while any(c % groups for c in channels):
        groups //= 2
    return channels, groups


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def folder_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
