"""The LoRA baked into the base model's weights (a full fine-tune stays as it is), before a
merged export writes the model (export/writers.py).

Merging changes the loaded backbone in place: a TrainedModel is used up by one merged export.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from transferstudio.core.errors import ExportError
from transferstudio.adapt.adapters import ADAPTER


def merge_and_unload(module: nn.Module, strength: float = 1.0) -> int:
    """Fold every adapter layer of `module` (LoRA, LoHa, LoKr) into its base weight at `strength`
    and put the plain base layer back in its place (what peft's `merge_and_unload` does for a
    PeftModel; our adapters are injected without that wrapper). Returns how many layers were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        if ADAPTER not in getattr(layer, "scaling", {}):
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
    for role, module in trained.trainee.roles.items():
        if trained.trainee.plans[role].how == "lora":
            merge_and_unload(module, strength)
