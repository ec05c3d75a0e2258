"""The shape of a GAN (`GANConfig`), saved as JSON beside or inside its safetensors weights.
Standard library only: the GAN family reads it to inspect a model without importing torch."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GANConfig:
    resolution: int = 32
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 4
    g_channels: list[int] = field(default_factory=lambda: [128, 128, 64, 64])  # at 4, 8, 16, … px
    d_channels: list[int] = field(default_factory=lambda: [64, 64, 128, 128])  # at res, res/2, … 4 px

    def __post_init__(self) -> None:
        levels = int(round(math.log2(self.resolution))) - 1
        if 2 ** (levels + 1) != self.resolution or self.resolution < 8:
            raise ValueError(f"resolution must be a power of two ≥ 8, not {self.resolution}")
        if len(self.g_channels) != levels or len(self.d_channels) != levels:
            raise ValueError(f"a {self.resolution} px GAN needs {levels} channel counts for each network")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GANConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})
