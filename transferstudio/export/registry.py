"""The export formats: each one registered once, with when it applies.

A format applies to a model by its capabilities (does it take prompts, can its LoRA be named
for kohya, does it have a single-file layout) and to a training method; it never asks for a
family's name. The built-in writers live in export/writers.py; a plug-in adds its own with
`register`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transferstudio.core.errors import ExportError
from transferstudio.export import writers


@dataclass(frozen=True)
class ExportFormat:
    key: str
    label: str
    description: str
    methods: tuple[str, ...] | None  # training methods it applies to (None: any)
    applies: Callable[[Any, str], bool]  # (capabilities, method) -> bool
    folder: Callable[[str], bool]  # method -> writes a folder (not one file)
    write: Callable[..., dict]  # (trained, staged_path, **ExportContext) -> manifest extras
    result_kind: Callable[[str], str] = lambda method: "merged"  # "lora" | "full" | "merged"
    listed: Callable[[str], bool] = lambda method: True  # offered in lists (it may still be asked for)
    suffix: str = ".safetensors"  # the file ending of a one-file format

    def usable(self, caps: Any, method: str) -> bool:
        return (self.methods is None or method in self.methods) and bool(self.applies(caps, method))

    def offered(self, caps: Any, method: str) -> bool:
        return self.usable(caps, method) and self.listed(method)


_FORMATS: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    _FORMATS[fmt.key] = fmt
    return fmt


def all_formats() -> dict[str, ExportFormat]:
    return dict(_FORMATS)


def get(key: str) -> ExportFormat:
    formats = all_formats()
    if key not in formats:
        raise ExportError(f"Unknown export format '{key}'.", f"Choose one of: {', '.join(formats)}.")
    return formats[key]


@dataclass(frozen=True)
class ExportContext:
    """What every writer gets besides the trained model and where to write."""

    title: str
    strength: float
    fp16: bool
    date: str
    dataset: dict
    base_sha256: str | None
    out: Path  # the final path (writers write to a staged path beside it)
    pipeline: Path | None = None  # the model the trained part belongs in (a VAE's Stable Diffusion model)


# --- the built-in formats, in the order the export dialog lists them --------------------------

def _declared(name: str) -> Any:
    """A format a family lists in its capabilities' `formats`."""
    return lambda caps, method: name in getattr(caps, "formats", ())


register(ExportFormat(
    "generator", "Generator (.safetensors)",
    "The trained generator (its averaged weights) with its settings inside: load it in Python with "
    "`transferstudio.backbones.gan_model.load_generator` (README), or pick it as a backbone to adapt further.",
    methods=None, applies=_declared("generator"), folder=lambda method: False, write=writers.write_generator,
    result_kind=lambda method: "full"))
register(ExportFormat(
    "onnx", "Generator, ONNX (.onnx)",
    "The generator as an ONNX graph for other tools and runtimes: input `z` (batch × 128 numbers), "
    "output `image` (batch × 3 × height × width, values from -1 to 1).",
    methods=None, applies=_declared("onnx"), folder=lambda method: False, write=writers.write_onnx,
    result_kind=lambda method: "full", suffix=".onnx"))
register(ExportFormat(
    "gan-folder", "GAN folder (generator + discriminator)",
    "Both networks as a GAN folder: a backbone to adapt again to other pictures.",
    methods=None, applies=_declared("gan-folder"), folder=lambda method: True, write=writers.write_gan_folder,
    result_kind=lambda method: "full"))
register(ExportFormat(
    "kohya", "LoRA for ComfyUI, A1111 / Forge (kohya .safetensors)",
    "The LoRA file most tools load: drop it into their LoRA folder. Small; the strength is set in the tool.",
    methods=("lora",), applies=lambda caps, method: bool(getattr(caps, "kohya_lora", False)),
    folder=lambda method: False, write=writers.write_kohya, result_kind=lambda method: "lora"))
register(ExportFormat(
    "diffusers", "diffusers (LoRA file or model folder)",
    "For Python scripts: a LoRA file that `load_lora_weights` reads, or for a full fine-tune a model folder "
    "that `from_pretrained` loads.",
    methods=None, applies=lambda caps, method: bool(getattr(caps, "diffusers_layout", True)),
    folder=lambda method: method != "lora", write=writers.write_diffusers,
    result_kind=lambda method: "lora" if method == "lora" else "full"))
register(ExportFormat(
    "merged-diffusers", "Merged model, diffusers folder",
    "The whole model with the training baked in at the chosen strength, as a diffusers folder. "
    "Large (a full model).",
    # a full fine-tune's diffusers export is already the whole model
    methods=("lora", "full"), applies=lambda caps, method: bool(getattr(caps, "diffusers_layout", True)),
    folder=lambda method: True, write=writers.write_merged_diffusers, listed=lambda method: method != "full"))
register(ExportFormat(
    "merged-single-file", "Merged checkpoint (.safetensors) for ComfyUI, A1111 / Forge",
    "The whole model with the training baked in at the chosen strength, as one checkpoint file for the "
    "tools' checkpoint folder. Large (a full model).",
    methods=("lora", "full"), applies=lambda caps, method: bool(getattr(caps, "single_file", False)),
    folder=lambda method: False, write=writers.write_merged_single_file))
register(ExportFormat(
    "single-file", "Single file (.safetensors) for ComfyUI, A1111 / Forge",
    "The trained model as one file in the original layout, e.g. a VAE for the tools' models/VAE folder "
    "(diffusers' `from_single_file` reads it too).",
    methods=None, applies=_declared("single-file"),
    folder=lambda method: False, write=writers.write_single_file, result_kind=lambda method: "full"))
register(ExportFormat(
    "pipeline-diffusers", "Stable Diffusion model with this VAE, diffusers folder",
    "The Stable Diffusion model you name (--pipeline) with the adapted VAE in place of its own, as a "
    "diffusers folder. Large (a full model).",
    methods=None, applies=_declared("pipeline"),
    folder=lambda method: True, write=writers.write_pipeline_diffusers, result_kind=lambda method: "merged"))
register(ExportFormat(
    "pipeline-single-file", "Stable Diffusion checkpoint with this VAE (.safetensors)",
    "The Stable Diffusion model you name (--pipeline) with the adapted VAE baked in, as one checkpoint "
    "for ComfyUI, A1111 / Forge. Large (a full model).",
    methods=None, applies=_declared("pipeline"),
    folder=lambda method: False, write=writers.write_pipeline_single_file, result_kind=lambda method: "merged"))
