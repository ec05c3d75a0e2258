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
