"""The memory plan, GPU detection and new-project checks for the window: jobs for TaskWorker.

Each runs on a worker thread; torch and the engine are imported inside them, never at module
import, so the widgets that use them stay light. Results are plain dicts and numbers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PICTURE_LOOK_LIMIT = 20_000  # files looked at before a folder is called picture-less


def detect_gpu() -> dict[str, Any] | None:
    """The CUDA GPU training would use: name, free and total bytes and its preset tier; None without one."""
    from transferstudio.project.presets import tier_for
    from transferstudio.training.memory_plan import detect_gpu as _detect

    found = _detect()
    if found is None:
        return None
    import torch

    return {"name": found.name, "free": found.free, "total": found.total, "tier": tier_for(found.total),
            "count": torch.cuda.device_count()}


def model_facts(path: str | Path) -> dict[str, Any]:
    """What the New Project dialog and the presets need of a model: whether it is usable (and why
    not), its label, and its capabilities as plain values (`caps`: a dict a SimpleNamespace can
    be made from for project.presets)."""
    from transferstudio.backbones.registry import inspect_backbone

    found = inspect_backbone(Path(path))
    caps = found.caps
    facts: dict[str, Any] = {"path": str(found.path), "usable": bool(found.usable and caps is not None),
                             "label": found.label, "problems": list(found.problems), "advice": found.advice,
                             "caps": None}
    if caps is not None:
        facts["caps"] = {"objective": caps.objective, "latent": caps.latent, "conditioning": caps.conditioning,
                         "prediction_type": caps.prediction_type,
                         "supports_full_finetune": caps.supports_full_finetune, "methods": tuple(caps.methods),
                         "suggested": tuple(caps.suggested), "native_resolution": caps.native_resolution,
                         "label": caps.label or found.label}
    elif found.usable:
        facts["problems"] = ["TransferStudio cannot tell what this model can do."]
    return facts


def pictures_problem(folder: str | Path) -> str:
    """"" when the folder (or a folder inside it) holds a picture that opens; else why it is no
    image folder. Looks at the first readable picture only, so large folders answer quickly."""
    from transferstudio.data.images import ImageProblem, SUPPORTED_SUFFIXES, probe

    root = Path(folder).expanduser()
    if not root.is_dir():
        return "Choose a folder, not a file." if root.exists() else "Not found."
    looked = unreadable = 0
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(here) / name
            if path.suffix.lower() not in SUPPORTED_SUFFIXES or path.stem.lower().endswith(".mask"):
                continue
            looked += 1
            try:
                probe(path)
                return ""
            except (ImageProblem, OSError, ValueError):
                unreadable += 1
            if looked >= PICTURE_LOOK_LIMIT:
                break
        if looked >= PICTURE_LOOK_LIMIT:
            break
    kinds = "PNG, JPEG, WebP or BMP"
    if unreadable:
        return f"None of the {unreadable} pictures here could be opened; they may be damaged."
    return f"No pictures in this folder ({kinds}, subfolders included)."


class PlanSession:
    """Keeps one model's memory planner between estimates (building it is the slow part): the
    settings form asks again after every change. Use from one worker at a time."""

    def __init__(self, backbone: str | Path) -> None:
        self.backbone = str(backbone)
        self._planner: Any = None
        self._device: str | None = None
        self._facts: dict[str, Any] | None = None

    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            self._facts = model_facts(self.backbone)
        return self._facts

    def estimate(self, settings: dict[str, Any], *, advise: bool = True) -> dict[str, Any]:
        """The plan of a run with these settings (TrainConfig as a dict) against the detected GPU's
        free memory, as plain values; with the model's facts (`facts`) and the GPU (`gpu`, None
        without one)."""
        from transferstudio.core.errors import UserError
        from transferstudio.project.config import TrainConfig
        from transferstudio.training.memory_plan import MemoryPlanner

        facts = self.facts()
        if not facts["usable"]:
            raise UserError(facts["problems"][0] if facts["problems"] else "The model cannot be used.",
                            facts.get("advice") or "")
        config = TrainConfig.from_dict(settings)
        device = "cpu" if config.device == "cpu" else "cuda"
        gpu = detect_gpu() if device == "cuda" else None
        if self._planner is None or self._device != device:
            self._planner, self._device = MemoryPlanner(self.backbone, device=device), device
        plan = self._planner.plan(config, free=gpu["free"] if gpu else None, advise=advise)
        return {"total": plan.total, "free": plan.free, "fits": plan.fits(), "device": plan.device,
                "precision": plan.precision, "summary": plan.summary(), "describe": plan.describe(),
                "parts": plan.parts(), "advice": list(plan.advice), "gpu": gpu, "facts": facts}
