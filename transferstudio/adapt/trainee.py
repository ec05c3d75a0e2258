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
        self.roles: dict[str, nn.Module] = {DENOISER: backbone.denoiser}
        self.lora_configs: dict[str, Any] = {}
        if config.method == "full":
            if not backbone.caps.supports_full_finetune:
                raise UserError("Full fine-tuning is not available for this model: it is too large "
                                "to train every weight on an ordinary computer.",
                                "Choose the LoRA method instead.")
            backbone.denoiser.requires_grad_(True)
        elif config.method == "lora":
            self.lora_configs[DENOISER] = adapters.add_lora(
                backbone.denoiser, rank=config.rank, alpha=config.alpha, dropout=config.dropout,
                targets=backbone.lora_targets(), dora=config.dora)
            if config.train_text_encoder and backbone.caps.text_encoders:
                for role, encoder in zip(TEXT_ROLES, backbone.text_encoders()):
                    self.lora_configs[role] = adapters.add_lora(
                        encoder, rank=config.rank, alpha=config.alpha, dropout=config.dropout,
                        targets=backbone.text_encoder_lora_targets(), dora=config.dora)
                    self.roles[role] = encoder
        else:
            raise UserError(f"Unknown training method '{config.method}'.", "Use 'lora' or 'full'.")

    def parameters(self) -> Iterator[nn.Parameter]:
        for module in self.roles.values():
            yield from (p for p in module.parameters() if p.requires_grad)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train_mode(self, on: bool) -> None:
        for module in self.roles.values():
            module.train(on)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trainable weights by role, detached CPU copies."""
        if self.method == "full":
            return {DENOISER: {k: v.detach().cpu().clone() for k, v in self.backbone.denoiser.state_dict().items()}}
        return {role: adapters.lora_state_dict(module) for role, module in self.roles.items()}

    def load_state(self, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        for role, weights in parts.items():
            module = self.roles.get(role)
            if module is None:
                raise UserError(f"The saved weights include '{role}', which this run does not train.",
                                "The project's settings changed since this checkpoint was written.")
            if self.method == "full":
                module.load_state_dict(weights)
            else:
                adapters.load_lora_state_dict(module, weights)

    def set_strength(self, strength: float) -> None:
        """Adapter strength for sampling (LoRA only; 0 = base model)."""
        if self.method == "lora":
            for module in self.roles.values():
                adapters.set_lora_strength(module, strength)

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
    data = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    return TrainConfig.from_dict(data["config"])
