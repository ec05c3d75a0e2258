"""The LoRA baked into the base model (or a full fine-tune as it is), saved as a diffusers
folder or as one original-layout `.safetensors` checkpoint that A1111/ComfyUI/Forge load.

The single-file writer is the model library's (`library.original_layout.save_single_file`), the
inverse of its loader, so a checkpoint we write is one we can read back.
Merging changes the loaded backbone in place: a TrainedModel is used up by one merged export.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from transferstudio.core.errors import ExportError
from transferstudio.adapt.adapters import ADAPTER


def merge_and_unload(module: nn.Module, strength: float = 1.0) -> int:
    """Fold every LoRA layer of `module` into its base weight at `strength` and put the plain
    base layer back in its place (what peft's `merge_and_unload` does for a PeftModel; our
    adapters are injected without that wrapper). Returns how many layers were merged."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        if ADAPTER not in layer.scaling:
            continue
        layer.set_scale(ADAPTER, strength)  # scaling = strength * alpha / r, as in sampling
        # safe_merge refuses NaN/inf instead of writing a broken checkpoint.
        try:
            layer.merge(safe_merge=True, adapter_names=[ADAPTER])
        except ValueError as exc:
            raise ExportError(f"The adapter at {name} holds invalid numbers and cannot be merged.",
                              "Export an earlier checkpoint, or retrain with a lower learning rate.") from exc
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(layers)


def bake(trained: Any, strength: float = 1.0) -> None:
    """Make the backbone's modules plain weights: LoRA merged at `strength`; full fine-tunes as trained."""
    if trained.config.method != "lora":
        return
    for module in trained.trainee.roles.values():
        merge_and_unload(module, strength)


def plain_modules(backbone: Any) -> list[nn.Module]:
    found = [backbone.denoiser]
    for name in ("vae",):
        if getattr(backbone, name, None) is not None:
            found.append(getattr(backbone, name))
    return found + list(backbone.text_encoders())


def save_merged_diffusers(trained: Any, folder: Path, *, strength: float = 1.0, fp16: bool = False) -> None:
    """A complete diffusers pipeline folder (`from_pretrained` loads it) with the LoRA merged."""
    bake(trained, strength)
    backbone = trained.backbone
    if fp16:
        for module in plain_modules(backbone):
            module.to(torch.float16)
    backbone.save_full(Path(folder))


def save_merged_single_file(trained: Any, file: Path, *, variant: str, strength: float = 1.0, fp16: bool = False,
                            metadata: Mapping[str, str] | None = None) -> None:
    """One original-layout checkpoint (A1111/ComfyUI/Forge, diffusers' `from_single_file`)."""
    from transferstudio.library.original_layout import save_single_file

    bake(trained, strength)
    backbone = trained.backbone
    encoders = backbone.text_encoders()
    file = Path(file)
    try:
        save_single_file(file, backbone.unet, backbone.vae, encoders[0], encoders[1] if len(encoders) > 1 else None,
                         family=variant, dtype=torch.float16 if fp16 else None, metadata=metadata)
    finally:
        # The writer streams into `<file>.partial` first: never leave that behind on failure.
        partial = file.with_name(file.name + ".partial")
        if partial.exists():
            os.unlink(partial)
