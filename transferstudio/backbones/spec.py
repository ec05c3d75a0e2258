"""The torch-free half of the family interface: what a family says about a model without loading it.

`Family` recognises a path (`inspect`) and describes it (`Capabilities`, `Inspection`) from config
files and safetensors headers alone, so the window, the model library and `transferstudio inspect`
never import torch, diffusers or transformers to ask "what is this model?". Loading it is the
family's torch module's work (`Family.torch_module`, imported on the first `load`/`skeleton`);
`base.py` holds the `Backbone` interface that module implements, and re-exports these names.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferstudio.backbones.base import Backbone


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


class Family(ABC):
    """A backbone family: recognises a path and loads it.

    A family's module (its spec) is imported to inspect paths, so it must not import torch,
    diffusers or transformers; the parts that do (its `Backbone`, objective, networks) live in a
    module it names in `torch_module` (the dotted name, like the registry's BUILTIN), imported on
    the first load. That module imports the spec for its values, never the other way round."""

    key: str = ""
    torch_module: str = ""  # e.g. "transferstudio.backbones.ddpm_backbone"
    backbone_name: str = ""  # the family's Backbone class in `torch_module`

    def torch_parts(self) -> ModuleType:
        """The family's torch module (imports torch on first use: never needed to inspect)."""
        if not self.torch_module:
            raise NotImplementedError(f"{self.key} names no torch module")
        return importlib.import_module(self.torch_module)

    def backbone_class(self) -> type[Backbone]:
        """The family's Backbone class (from `torch_module`)."""
        return getattr(self.torch_parts(), self.backbone_name)

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


def folder_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
