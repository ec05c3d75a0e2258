"""Reading diffusers folder layouts (model_index.json + component folders) without weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
PICKLE_WEIGHT_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def pipeline_class(folder: Path) -> str | None:
    index = read_json(Path(folder) / "model_index.json")
    return str(index.get("_class_name")) if index else None


def component_problems(folder: Path, components: dict[str, bool]) -> list[str]:
    """Missing parts of a pipeline folder. `components` maps folder name -> has weights."""
    problems = []
    for name, needs_weights in components.items():
        sub = Path(folder) / name
        if not sub.is_dir():
            problems.append(f"missing the '{name}' folder")
            continue
        has_config = any((sub / c).is_file() for c in ("config.json", "scheduler_config.json",
                                                        "tokenizer_config.json", "vocab.json"))
        if not has_config:
            problems.append(f"'{name}' has no config file")
        if needs_weights:
            problems += weight_problems(sub, name)
    return problems


def weight_problems(sub: Path, name: str) -> list[str]:
    if any(any(sub.glob(f"*{w.split('.')[0]}*.safetensors")) for w in WEIGHT_NAMES) or \
            any(sub.glob("*.safetensors")):
        return []
    if any((sub / w).exists() for w in PICKLE_WEIGHT_NAMES) or any(sub.glob("*.bin")):
        return [f"'{name}' has only pickle (.bin) weights, which TransferStudio does not open "
                "because they can run code; convert them to .safetensors first"]
    return [f"'{name}' has no weights (.safetensors)"]
