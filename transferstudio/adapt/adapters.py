"""LoRA adapters through peft, on any torch module (UNets and text encoders alike)."""
from __future__ import annotations

from typing import Any

from torch import nn

ADAPTER = "default"


def lora_config(*, rank: int, alpha: float, dropout: float, targets: list[str], dora: bool = False) -> Any:
    from peft import LoraConfig

    # Gaussian A and zero B: the adapted model starts exactly at the base model (with DoRA
    # the magnitude starts at the base weights' norms, so it does too).
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      init_lora_weights="gaussian", use_dora=dora)


def add_lora(module: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str],
             dora: bool = False) -> Any:
    """Inject a LoRA (or DoRA) adapter in place (the module keeps its class) and return its config."""
    from peft import inject_adapter_in_model

    config = lora_config(rank=rank, alpha=alpha, dropout=dropout, targets=targets, dora=dora)
    inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)
    return config


def has_lora(module: nn.Module) -> bool:
    return any("lora_" in name for name, _ in module.named_parameters())


def lora_state_dict(module: nn.Module) -> dict[str, Any]:
    """peft-format adapter weights (keys like `…to_q.lora_A.weight`), detached CPU copies."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(module, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def load_lora_state_dict(module: nn.Module, state: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"{len(unexpected)} adapter weights did not match the model, e.g. {unexpected[0]}")


def set_lora_strength(module: nn.Module, strength: float) -> None:
    """Scale the adapter's effect: 0 = base model, 1 = as trained."""
    from peft.tuners.lora import LoraLayer

    for layer in module.modules():
        if isinstance(layer, LoraLayer) and ADAPTER in layer.scaling:
            layer.set_scale(ADAPTER, strength)
            # A DoRA layer at scale 0 still rescales the base weight by its trained magnitude:
            # the base model is the layer with its adapter switched off.
            off = strength == 0
            if layer.disable_adapters != off:
                trainable = [p.requires_grad for p in layer.parameters()]
                layer.enable_adapters(not off)
                for param, flag in zip(layer.parameters(), trainable):  # switching touches requires_grad
                    param.requires_grad_(flag)
