"""Adapters through peft, on any torch module (UNets and text encoders alike): LoRA (and DoRA),
LoHa and LoKr. The kind is data (TrainConfig.adapter); everything after injection — which weights
train, saving, loading, strength, merging — is the same code for every kind."""
from __future__ import annotations

import re
from typing import Any, Sequence

from torch import nn

ADAPTER = "default"
# How peft names each kind's weights (the prefix of their parameter names).
MARKERS = {"lora": "lora_", "loha": "hada_", "lokr": "lokr_"}


def adapter_config(*, kind: str = "lora", rank: int, alpha: float, dropout: float, targets: Sequence[str],
                   dora: bool = False, conv: Sequence[str] = (), conv_rank: int = 0, conv_alpha: float = 0.0) -> Any:
    """The peft config of one adapter. `conv`: the targets that are spatial convolutions; they take
    `conv_rank`/`conv_alpha` (0: the same as rank/alpha) through peft's rank/alpha patterns."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    patterns: dict[str, Any] = {}
    conv_r, conv_a = int(conv_rank or rank), float(conv_alpha or alpha)
    if conv and (conv_r != rank or conv_a != alpha):
        # peft matches a pattern against the end of a module's path, as a regular expression.
        patterns = {"rank_pattern": {re.escape(t): conv_r for t in conv},
                    "alpha_pattern": {re.escape(t): conv_a for t in conv}}
    if kind == "lora":
        # Gaussian A and zero B: the adapted model starts exactly at the base model (with DoRA
        # the magnitude starts at the base weights' norms, so it does too).
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                          init_lora_weights="gaussian", use_dora=dora, **patterns)
    if dora:
        raise ValueError("DoRA is an option of LoRA adapters only")
    # LyCORIS kinds: one factor starts at zero, so these start at the base model too. Dropout is
    # module dropout (a whole layer's adapter left out for a step): their rank dropout can divide
    # by zero on narrow layers.
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, module_dropout=dropout, target_modules=list(targets), **patterns)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, module_dropout=dropout, target_modules=list(targets), **patterns)
    raise ValueError(f"unknown adapter kind {kind!r}; use one of {', '.join(MARKERS)}")


def lora_config(*, rank: int, alpha: float, dropout: float, targets: list[str], dora: bool = False) -> Any:
    return adapter_config(rank=rank, alpha=alpha, dropout=dropout, targets=targets, dora=dora)


def add_adapter(module: nn.Module, config: Any) -> Any:
    """Inject the adapter `config` in place (the module keeps its class); only its weights train."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    for name, param in module.named_parameters():
        param.requires_grad_(is_adapter_weight(name))
    return config


def add_lora(module: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str],
             dora: bool = False) -> Any:
    """Inject a LoRA (or DoRA) adapter in place (the module keeps its class) and return its config."""
    return add_adapter(module, lora_config(rank=rank, alpha=alpha, dropout=dropout, targets=targets, dora=dora))


def is_adapter_weight(name: str) -> bool:
    """A parameter (or state-dict key) that belongs to an adapter of any kind."""
    return any(marker in name for marker in MARKERS.values())


def has_lora(module: nn.Module) -> bool:
    return any(is_adapter_weight(name) for name, _ in module.named_parameters())


def _adapter_layers(module: nn.Module) -> list[tuple[str, Any]]:
    """peft's adapter layers (LoRA and LyCORIS alike) that carry our adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, layer) for name, layer in module.named_modules()
            if isinstance(layer, BaseTunerLayer) and hasattr(layer, "set_scale")
            and ADAPTER in getattr(layer, "scaling", {})]


def conv_layers(module: nn.Module) -> set[str]:
    """Paths of the adapted layers that are spatial convolutions (a kernel larger than 1x1)."""
    out = set()
    for name, layer in _adapter_layers(module):
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv2d) and tuple(base.kernel_size) != (1, 1):
            out.add(name)
    return out


def lora_state_dict(module: nn.Module) -> dict[str, Any]:
    """peft-format adapter weights (keys like `…to_q.lora_A.weight`, `…to_q.hada_w1_a`,
    `…to_q.lokr_w1`), detached CPU copies."""
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
    for _, layer in _adapter_layers(module):
        layer.set_scale(ADAPTER, strength)
        # A DoRA layer at scale 0 still rescales the base weight by its trained magnitude:
        # the base model is the layer with its adapter switched off.
        off = strength == 0
        if layer.disable_adapters != off:
            trainable = [p.requires_grad for p in layer.parameters()]
            layer.enable_adapters(not off)
            for param, flag in zip(layer.parameters(), trainable):  # switching touches requires_grad
                param.requires_grad_(flag)
