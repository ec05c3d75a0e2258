"""One-shot engine jobs for TaskWorker. Each runs on a worker thread, so torch-heavy imports
happen here, inside the functions, never at module import."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtGui import QImage

from transferstudio.qt.workers import pil_to_qimage


def inspect_backbone(path: str | Path) -> dict[str, Any]:
    """What the model at `path` is, as a plain dict for the backbone panel and settings form."""
    from transferstudio.backbones.registry import inspect_backbone as _inspect

    info = _inspect(Path(path))
    caps = getattr(info, "caps", None)  # newer engines describe capabilities without loading
    details = dict(info.details)
    if caps is not None:
        text = caps.conditioning == "text"
        full = bool(caps.supports_full_finetune)
        multiple = int(caps.resolution_multiple)
    else:
        # Fallback until Inspection carries capabilities: unconditional models say so in details.
        text = info.family is not None and not details.get("prompts", "").startswith("no")
        full = info.family == "ddpm"
        multiple = 64 if text else 8
    return {"path": str(info.path), "family": info.family, "label": info.label, "usable": info.usable,
            "problems": list(info.problems), "native_resolution": info.native_resolution,
            "prediction_type": info.prediction_type, "size_bytes": info.size_bytes,
            "details": list(info.details), "text": text, "supports_full_finetune": full,
            "resolution_multiple": multiple}


def export_formats() -> tuple[str, ...]:
    from transferstudio.export import diffusers_export

    return tuple(diffusers_export.FORMATS)


def export_project(project: Any, out: str | Path, fmt: str, overwrite: bool) -> Any:
    from transferstudio.export.diffusers_export import export_project as _export

    return _export(project, Path(out), fmt=fmt, overwrite=overwrite)


def sample_project_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("transferstudio.starter.sample") is not None
    except ImportError:
        return False


def ensure_sample_project(parent: str | Path) -> Path:
    from transferstudio.starter.sample import ensure_sample_project as _ensure

    return Path(_ensure(Path(parent)))


@dataclass(frozen=True)
class ComparePair:
    base: QImage
    trained: QImage
    seed: int
    prompt: str
    strength: float
    step: int  # the checkpoint step the trained side comes from


class CompareSession:
    """Keeps a loaded trained model between comparisons (loading is the slow part).

    Use from one worker at a time (the view runs one comparison after another).
    """

    def __init__(self, project: Any) -> None:
        self.project = project
        self._model: Any = None
        self._checkpoint: Path | None = None
        self._base_cache: dict[tuple[int, str, int], QImage] = {}
        self._base_backbone: Any = None  # an untouched copy, only for full fine-tunes

    @property
    def method(self) -> str | None:
        return None if self._model is None else self._model.config.method

    @property
    def text(self) -> bool | None:
        return None if self._model is None else self._model.backbone.caps.conditioning == "text"

    def _load(self) -> Any:
        from transferstudio.training.restore import find_trained, load_trained

        _, found = find_trained(self.project)
        if self._model is None or found.path != self._checkpoint:
            self._model = load_trained(self.project)
            self._checkpoint = self._model.checkpoint.path
            self._base_cache.clear()
        return self._model

    def _base_sample(self, model: Any, seed: int, prompts: list[str] | None, steps: int) -> Any:
        if model.config.method == "lora":  # strength 0 is exactly the base model
            model.trainee.set_strength(0.0)
            return model.backbone.sample(seeds=[seed], prompts=prompts, steps=steps)[0]
        if self._base_backbone is None:  # full fine-tune changed every weight: load the original
            from transferstudio.backbones.registry import load_backbone

            self._base_backbone = load_backbone(self.project.backbone,
                                                prediction_type=self.project.prediction_type)
        return self._base_backbone.sample(seeds=[seed], prompts=prompts, steps=steps)[0]

    def compare(self, seed: int, prompt: str, strength: float, steps: int) -> ComparePair:
        import torch

        model = self._load()
        text = model.backbone.caps.conditioning == "text"
        prompts = [prompt] if text else None
        key = (seed, prompt if text else "", steps)
        with torch.no_grad():
            base = self._base_cache.get(key)
            if base is None:
                base = pil_to_qimage(self._base_sample(model, seed, prompts, steps))
                self._base_cache[key] = base
            model.trainee.set_strength(strength)
            trained = pil_to_qimage(model.backbone.sample(seeds=[seed], prompts=prompts, steps=steps)[0])
        return ComparePair(base=base, trained=trained, seed=seed, prompt=prompt if text else "",
                           strength=strength, step=model.checkpoint.step)
