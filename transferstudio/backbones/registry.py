"""Finds the family that claims a path, and loads it. Families are imported lazily.

Adding a family is one module (a `Family` and its `Backbone`) plus one line in BUILTIN, or
`register(MyFamily())` for one that lives outside the package (a plug-in, a test). Nothing here
imports torch, nor do the built-in family modules: inspecting a path reads configs and headers
only; each family imports its torch module (`Family.torch_module`) when it loads a model.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from transferstudio.backbones.spec import Family, Inspection, folder_size
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:
    from transferstudio.backbones.base import Backbone


# (module, class) of the built-in families, asked in this order. Single-file checkpoints are
# claimed by SD/SDXL (and SD3/FLUX transformer files) through the model library's detection.
BUILTIN = (
    ("transferstudio.backbones.ddpm", "DDPMFamily"),
    ("transferstudio.backbones.gan", "GANFamily"),  # before SD: it claims its own .safetensors generators
    ("transferstudio.backbones.vae", "VAEFamily"),  # before SD: it claims VAE-only files
    ("transferstudio.backbones.sd", "SDFamily"),
    ("transferstudio.backbones.sdxl", "SDXLFamily"),
    ("transferstudio.backbones.sd3", "SD3Family"),
    ("transferstudio.backbones.flux", "FluxFamily"),
)
_extra: list[Family] = []


def families() -> list[Family]:
    builtin = [getattr(importlib.import_module(module), name)() for module, name in BUILTIN]
    return _extra + builtin  # registered families are asked first: they may claim a layout more precisely


def register(family: Family) -> None:
    """Add a family (asked before the built-in ones); registering a key again replaces it."""
    unregister(family.key)
    _extra.append(family)


def unregister(key: str) -> None:
    _extra[:] = [f for f in _extra if f.key != key]


@contextmanager
def registered(family: Family) -> Iterator[Family]:
    """A family that is registered only inside the block (tests, temporary plug-ins)."""
    register(family)
    try:
        yield family
    finally:
        unregister(family.key)


def family(key: str) -> Family:
    for fam in families():
        if fam.key == key:
            return fam
    raise KeyError(key)


def inspect_backbone(path: Path) -> Inspection:
    path = Path(path).expanduser()
    if not path.exists():
        return Inspection(path=path, family=None, label="not found", usable=False,
                          problems=(f"Nothing exists at {path}.",))
    for fam in families():
        found = fam.inspect(path)
        if found is not None:
            if found.usable and found.caps is None:
                found = replace(found, caps=fam.capabilities(found))
            return found
    hint = ("A backbone is a diffusers model folder (with model_index.json or a UNet config.json), "
            "a Stable Diffusion .safetensors checkpoint or VAE, or a TransferStudio GAN folder.")
    return Inspection(path=path, family=None, label="not a backbone", usable=False,
                      problems=(f"TransferStudio does not recognise this as a model. {hint}",),
                      size_bytes=folder_size(path) if path.is_file() else 0)


def load_backbone(path: Path, *, prediction_type: str = "") -> Backbone:
    found = inspect_backbone(path)
    if not found.usable or found.family is None:
        reason = found.problems[0] if found.problems else f"{path} is not a usable backbone."
        raise BackboneError(reason, found.advice or "Pick a diffusers model folder or a Stable Diffusion "
                            ".safetensors file (run `transferstudio inspect PATH` for details).")
    return family(found.family).load(Path(path).expanduser(), prediction_type=prediction_type)


def random_copy(path: Path, folder: Path, *, seed: int) -> Path:
    """The model at `path` with its architecture kept and seeded random weights, written to
    `folder` (the from-scratch baseline). BackboneError for models whose family cannot do that
    (Stable Diffusion: far too large to train from scratch on one machine)."""
    found = inspect_backbone(path)
    fam = family(found.family) if found.usable and found.family is not None else None
    init = getattr(fam, "initialize", None)
    if init is None or found.caps is None or not found.caps.supports_full_finetune:
        raise BackboneError(f"{found.label} cannot be trained from scratch here: a from-scratch baseline is made "
                            "only for models small enough for full fine-tuning (the starter models, DDPMs, "
                            "VAEs and GANs).", "Compare with the base model in the report instead.")
    return init(Path(folder), resolution=int(found.caps.native_resolution or 32), seed=seed, size="starter",
                like=Path(path).expanduser())
