"""What is being trained: the backbone's modules with LoRA adapters, or the whole denoiser.

One object that knows which parameters train, how to snapshot and restore them, and how
to put a finished run's weights back onto a freshly loaded backbone (sample, export, compare).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from transferstudio.backbones.base import Backbone
from transferstudio.core.errors import UserError
from transferstudio.project.config import TrainConfig
from transferstudio.adapt import adapters

DENOISER = "unet"
TEXT_ROLES = ("text_encoder", "text_encoder_2")


class Trainee:
    def __init__(self, backbone: Backbone, config: TrainConfig) -> None:
        self.backbone = backbone
        self.config = config
        self.method = config.method
        if config.method == "full" and not (backbone.caps.supports_full_finetune
                                            and "full" in backbone.caps.methods):
            raise UserError("Full fine-tuning is not available for this model: it is too large "
                            "to train every weight on an ordinary computer.",
                            "Choose the LoRA method instead.")
        if config.method not in backbone.caps.methods:
            raise UserError(f"Unknown training method '{config.method}'.",
                            f"Use {' or '.join(repr(m) for m in backbone.caps.methods)}.")
        text = bool(config.train_text_encoder and backbone.caps.text_encoders)
        backbone.configure(config)
        self.plans = backbone.training_roles(config.method, train_text_encoder=text)
        self.roles: dict[str, nn.Module] = {}
        self.lora_configs: dict[str, Any] = {}
        for role, plan in self.plans.items():
            if plan.how == "full":
                plan.module.requires_grad_(True)
                for name in plan.frozen:
                    plan.module.get_submodule(name).requires_grad_(False)
            else:
                self.lora_configs[role] = adapters.add_adapter(plan.module, adapters.adapter_config(
                    kind=config.adapter, rank=config.rank, alpha=config.alpha, dropout=config.dropout,
                    targets=list(plan.targets), dora=config.dora, conv=plan.conv, conv_rank=config.conv_rank,
                    conv_alpha=config.conv_alpha))
            self.roles[role] = plan.module

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.roles.values():
            yield from (p for p in module.parameters() if p.requires_grad)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train_mode(self, on: bool) -> None:
        for module in self.roles.values():
            module.train(on)

    def role_parameters(self, roles: Any = None) -> list[nn.Parameter]:
        """Trainable parameters of `roles` (None: all), for one phase's optimizer."""
        chosen = self.roles if roles is None else {r: self.roles[r] for r in roles if r in self.roles}
        return [p for module in chosen.values() for p in module.parameters() if p.requires_grad]

    def full_roles(self) -> list[str]:
        return [role for role, plan in self.plans.items() if plan.how == "full"]

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trainable weights by role, detached CPU copies."""
        out = {}
        for role, plan in self.plans.items():
            if plan.how == "full":
                out[role] = {k: v.detach().cpu().clone() for k, v in plan.module.state_dict().items()}
            else:
                out[role] = adapters.lora_state_dict(plan.module)
        return out

    def load_state(self, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        for role, weights in parts.items():
            module = self.roles.get(role)
            if module is None:
                raise UserError(f"The saved weights include '{role}', which this run does not train.",
                                "The project's settings changed since this checkpoint was written.")
            if self.plans[role].how == "full":
                module.load_state_dict(weights)
            else:
                adapters.load_lora_state_dict(module, weights)

    def set_strength(self, strength: float) -> None:
        """Adapter strength for sampling (adapters only; 0 = base model)."""
        for role, module in self.roles.items():
            if self.plans[role].how == "lora":
                adapters.set_lora_strength(module, strength)

    def conv_layers(self) -> dict[str, set[str]]:
        """Per adapted role, the paths of its adapted spatial convolutions (kohya's conv layers)."""
        return {role: adapters.conv_layers(self.roles[role]) for role in self.lora_configs}

    def lora_metadata(self) -> dict[str, str]:
        """The adapters' peft configs as JSON strings, for safetensors metadata."""
        return {f"{role}_lora_config": json.dumps(_config_dict(cfg)) for role, cfg in self.lora_configs.items()}


def _config_dict(config: Any) -> dict[str, Any]:
    data = config.to_dict()
    for key, value in list(data.items()):
        if isinstance(value, set):
            data[key] = sorted(value)
    return data


def run_config(run_dir: Path) -> TrainConfig:
    """The settings a run was started with (ProjectError naming the file if it is damaged)."""
    from transferstudio.project.run import read_run_settings

    return read_run_settings(run_dir)[1]
