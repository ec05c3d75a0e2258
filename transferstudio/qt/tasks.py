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
    caps = info.caps
    text = caps is not None and caps.conditioning == "text"
    full = caps is not None and caps.supports_full_finetune
    multiple = caps.resolution_multiple if caps is not None else 8
    return {"path": str(info.path), "family": info.family, "label": info.label, "usable": info.usable,
            "problems": list(info.problems), "native_resolution": info.native_resolution,
            "prediction_type": info.prediction_type, "size_bytes": info.size_bytes,
            "details": list(info.details), "text": text, "supports_full_finetune": full,
            "resolution_multiple": multiple}


def export_formats(family: str | None, method: str) -> list[tuple[str, str, str]]:
    """(key, label, description) of the export formats that apply to this model and method."""
    try:
        from transferstudio.export.formats import formats_for
    except ImportError:  # an engine without the format registry: its plain list
        from transferstudio.export import diffusers_export

        return [(f, f, "") for f in diffusers_export.FORMATS]
    return formats_for(family or "ddpm", method)


def export_project(project: Any, out: str | Path, fmt: str, overwrite: bool, strength: float = 1.0) -> Any:
    try:
        from transferstudio.export.formats import export
    except ImportError:
        from transferstudio.export.diffusers_export import export_project as _export

        return _export(project, Path(out), fmt=fmt, overwrite=overwrite)
    return export(project, Path(out), fmt, strength=strength, overwrite=overwrite)


def sample_project_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("transferstudio.starter.sample") is not None
    except ImportError:
        return False


def starter_model_present() -> bool:
    from transferstudio.core.paths import resource

    starter = resource("starter")
    return (starter / "model_index.json").is_file() or (starter / "config.json").is_file()


def ensure_sample_project(parent: str | Path) -> Path:
    from transferstudio.starter.sample import ensure_sample_project as _ensure

    return Path(_ensure(Path(parent)))


@dataclass(frozen=True)
class ComparePair:
    base: tuple[QImage, ...]  # one picture per seed
    trained: tuple[QImage, ...]
    seeds: tuple[int, ...]
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
        from transferstudio.adapt.restore import find_trained, load_trained

        _, found = find_trained(self.project)
        if self._model is None or found.path != self._checkpoint:
            self._model = load_trained(self.project)
            self._checkpoint = self._model.checkpoint.path
            self._base_cache.clear()
        return self._model

    def _base_samples(self, model: Any, seeds: list[int], prompts: list[str] | None, steps: int) -> list[Any]:
        if model.config.method == "lora":  # strength 0 is exactly the base model
            model.trainee.set_strength(0.0)
            return model.backbone.sample(seeds=seeds, prompts=prompts, steps=steps)
        if self._base_backbone is None:  # full fine-tune changed every weight: load the original
            from transferstudio.backbones.registry import load_backbone

            self._base_backbone = load_backbone(self.project.backbone,
                                                prediction_type=self.project.prediction_type)
        return self._base_backbone.sample(seeds=seeds, prompts=prompts, steps=steps)

    def compare(self, seed: int, prompt: str, strength: float, steps: int, count: int = 1) -> ComparePair:
        """`count` pictures per side, from seeds seed, seed+1, …; the base side is cached per seed."""
        import torch

        model = self._load()
        text = model.backbone.caps.conditioning == "text"
        prompts = [prompt] if text else None  # one prompt serves every seed
        seeds = list(range(seed, seed + max(1, count)))
        key = (prompt if text else "", steps)
        with torch.no_grad():
            missing = [s for s in seeds if (s, *key) not in self._base_cache]
            if missing:
                pictures = self._base_samples(model, missing, prompts, steps)
                for s, picture in zip(missing, pictures):
                    self._base_cache[(s, *key)] = pil_to_qimage(picture)
            model.trainee.set_strength(strength)
            trained = model.backbone.sample(seeds=seeds, prompts=prompts, steps=steps)
        return ComparePair(base=tuple(self._base_cache[(s, *key)] for s in seeds),
                           trained=tuple(pil_to_qimage(p) for p in trained), seeds=tuple(seeds),
                           prompt=prompt if text else "", strength=strength, step=model.checkpoint.step)


def make_demo_project(folder: str | Path, *, steps: int, size: int = 32, images: int = 8) -> Path:
    """A small self-contained project (a randomly initialised pixel UNet and simple pictures),
    for measuring the window and taking screenshots without any download."""
    import numpy as np
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from PIL import Image

    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project

    folder = Path(folder)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    model = folder / "model"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        model, safe_serialization=True)
    pictures = folder / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(images):  # soft sunsets: a warm gradient sky over a dark hill line
        sky = np.stack([0.9 - 0.3 * yy, 0.4 + 0.3 * yy * rng.random(), 0.3 + 0.5 * yy], -1)
        hill = yy > 0.6 + 0.15 * np.sin(xx * (3 + i) + rng.random() * 6)
        arr = np.where(hill[..., None], [0.1, 0.15 + 0.1 * rng.random(), 0.1], sky)
        Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(pictures / f"sunset_{i:02d}.png")
    config = TrainConfig(steps=steps, learning_rate=1e-3, batch_size=2, preview_every=max(1, steps // 4),
                         preview_steps=10, checkpoint_every=max(1, steps // 2), rank=8, alpha=8.0)
    create_project(folder / "project", backbone=model, images=pictures, name="Sunsets", config=config)
    return folder / "project"


# --- model library ------------------------------------------------------------------------

def discover_models(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The models in the user's folders and tool installs, as plain dicts for the library dialog.

    settings: folders (list of paths), a1111, comfyui, hf_cache (paths or ""/None: not scanned),
    include_starter (default True). Reads headers only; unusable models come with their problems.
    """
    from transferstudio.core.paths import user_cache_dir
    from transferstudio.library.discovery import discover

    def path_or_none(key: str) -> Path | None:
        value = settings.get(key)
        return Path(str(value)).expanduser() if value else None

    starter = None
    if settings.get("include_starter", True):
        from transferstudio.starter.sample import starter_model

        starter = starter_model()
    entries = discover([Path(str(f)).expanduser() for f in settings.get("folders") or [] if f],
                       a1111=path_or_none("a1111"), comfyui=path_or_none("comfyui"),
                       hf_cache=path_or_none("hf_cache"), starter=starter, cache_dir=user_cache_dir())
    return [{"path": str(e.path), "name": e.name, "kind": e.kind, "family": e.family, "label": e.label,
             "native_resolution": e.native_resolution, "size_bytes": e.size_bytes, "usable": e.usable,
             "problems": list(e.problems), "advice": e.advice, "prediction_type": e.prediction_type,
             "source": e.source} for e in entries]


def lora_folders(a1111: str | Path | None = None, comfyui: str | Path | None = None) -> list[Path]:
    """The LoRA folders of the configured installs. `export.formats` imports nothing heavy at
    module level, so the export dialog may call this on the GUI thread."""
    from transferstudio.export.formats import lora_folders as _folders

    return _folders(Path(a1111).expanduser() if a1111 else None, Path(comfyui).expanduser() if comfyui else None)


def unique_path(path: str | Path) -> Path:
    """`path` or the first free `name-2`, `name-3`… beside it (export never overwrites silently)."""
    from transferstudio.export.formats import unique_path as _unique

    return _unique(Path(path))
