"""Frozen weights stored in 8-bit floats (`fp8_base`): half the memory of the frozen model.

Under an adapter the base model never changes, so its weights can be kept in float8 (e4m3) and
brought to the run's compute format (bf16/fp16) one layer at a time as the layer runs — what
kohya's `--fp8_base` and ComfyUI's fp8 checkpoints do: each layer runs on a copy of its weights
cast to the compute format, made as it runs and freed once the backward pass used it. Which layers: the linear and
convolution layers of the denoiser and of every frozen text encoder (T5-XXL: 9.5 GB in bf16,
4.8 GB in fp8), except normalisation layers, position/patch embeddings, the model's own
keep-in-fp32 layers, and the adapters' own (trained, fp32) layers. The VAE stays as it is.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers that lose too much in fp8: diffusers' defaults, plus each model's own list (FLUX and SD3
# keep the linear layers of their adaptive norms, T5 its `wo` projections, in the compute format).
_SKIP = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")


def _adapter_patterns() -> tuple[str, ...]:
    """Names of the adapters' own layers (peft's LoRA, LoHa, LoKr): they train, so they stay."""
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer
    from peft.tuners.lora.layer import LoraLayer

    return tuple(name for layer in (LoraLayer, LoHaLayer, LoKrLayer) for name in layer.adapter_layer_names)


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def frozen_text_encoders(backbone: Any) -> list[nn.Module]:
    """The text encoders that do not train: every module of the model but the denoiser and the VAE."""
    denoiser, vae = backbone.denoiser, getattr(backbone, "vae", None)
    return [m for m in backbone.plain_modules() if m is not None and m is not denoiser and m is not vae
            and not _trains(m)]


def fp8_layers(backbone: Any) -> list[nn.Module]:
    """The layers whose weights `store_frozen_in_fp8` keeps in fp8 (the memory plan counts them)."""
    denoiser = backbone.denoiser
    encoders = frozen_text_encoders(backbone)
    adapters = _adapter_patterns()
    found: list[nn.Module] = []
    for model in (denoiser, *encoders):
        skip = _SKIP + adapters + tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ()) + \
            tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
        found += _walk(model, skip, "")
    return found


def _walk(module: nn.Module, skip: tuple[str, ...], prefix: str) -> list[nn.Module]:
    if prefix and any(re.search(pattern, prefix) for pattern in skip):
        return []
    if isinstance(module, _LAYERS):
        return [] if _trains(module) else [module]
    return [layer for name, child in module.named_children()
            for layer in _walk(child, skip, f"{prefix}.{name}" if prefix else name)]


def store_frozen_in_fp8(backbone: Any, compute: torch.dtype) -> int:
    """Keep the frozen layers' weights in fp8, computing in `compute`; how many parameters that is."""
    layers = fp8_layers(backbone)
    for layer in layers:
        _compute_from_fp8(layer, compute)
    return sum(p.numel() for layer in layers for p in layer.parameters(recurse=False))


def _compute_from_fp8(layer: nn.Module, compute: torch.dtype) -> None:
    """Store `layer`'s weights in fp8 and run it on a copy cast to `compute`. The stored weights
    are never swapped back and forth in place (diffusers' layerwise-casting hook does that): a
    convolution keeps its weight itself for the backward pass, and found it in fp8 there
    ("expected scalar type BFloat16 but found Float8_e4m3fn")."""
    for param in layer.parameters(recurse=False):
        param.data = param.data.to(FP8)

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = layer.weight.to(compute)
        bias = layer.bias.to(compute) if layer.bias is not None else None
        if isinstance(layer, nn.Linear):
            return torch.nn.functional.linear(x, weight, bias)
        return layer._conv_forward(x, weight, bias)

    layer.forward = forward


class TextEncodersAway:
    """Frozen text encoders moved to the computer's memory once every caption the run can meet is
    in the text cache (T5-XXL: 9.5 GB in bf16 that training then never uses); brought back to the
    GPU while previews are drawn, and for good if a caption turns up that was not encoded."""

    def __init__(self, backbone: Any, device: torch.device) -> None:
        self.modules = frozen_text_encoders(backbone)
        self.device = device
        self.away = False

    def size(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.modules for p in m.parameters())

    def send_away(self) -> None:
        for module in self.modules:
            module.to("cpu")
        self.away = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def back(self) -> None:
        for module in self.modules:
            module.to(self.device)
        self.away = False

    def nearby(self) -> Any:
        """A block in which they are on the GPU (previews), away again after it."""
        from contextlib import contextmanager

        @contextmanager
        def block() -> Any:
            if not self.away:
                yield
                return
            self.back()
            try:
                yield
            finally:
                self.send_away()

        return block()
