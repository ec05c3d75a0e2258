"""Which device and number format to train with."""
from __future__ import annotations

import torch

from transferstudio.core.errors import UserError


def choose_device(preference: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; a named device must exist."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("No CUDA GPU is available on this computer.",
                        "Set the device to 'auto' or 'cpu'.")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("Apple MPS is not available on this computer.", "Set the device to 'auto' or 'cpu'.")
    return torch.device(preference)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (always on the CPU: it is faster there)."""
    if device.type == "cpu" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def frozen_dtype(device: torch.device, precision: str) -> torch.dtype:
    """dtype for frozen parts (VAE, text encoders): half precision on GPUs saves memory."""
    return autocast_dtype(device, precision) or torch.float32


def place_for_sampling(backbone: "object", config: "object") -> torch.device:
    """Put a loaded model on the device and number format the run trained with (a CUDA GPU or
    MPS when there is one and the run's settings allow it), for `sample` and Compare; the CPU
    keeps fp32. Returns the device."""
    try:
        device = choose_device(getattr(config, "device", "auto"))
    except UserError:  # the run's device is not on this computer: sample where we can
        device = choose_device("auto")
    if device.type != "cpu":
        backbone.to(device, frozen_dtype(device, getattr(config, "precision", "auto")))  # type: ignore[attr-defined]
    return device


def free_device_memory(device: torch.device | None) -> None:
    """Hand cached GPU memory back once a run or a comparison is done with it."""
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    elif device is not None and device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
