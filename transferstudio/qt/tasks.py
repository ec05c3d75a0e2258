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
            "resolution_multiple": multiple,
            "methods": list(caps.methods) if caps is not None else None,
            "objective": caps.objective if caps is not None else "diffusion",
            "preview": caps.preview if caps is not None else "image",
            "truncation": bool(caps is not None and caps.truncation),
            "suggested": dict(caps.suggested) if caps is not None else {}}


def export_formats(family: str | None, method: str, adapter: str = "lora") -> list[tuple[str, str, str]]:
    """(key, label, description) of the export formats that apply to models of the family with
    this key (None: an unknown model, which gets the formats every model has) and method.

    The descriptions say what the file really is for this model: the generic text of a format
    that writes different layouts for different models (diffusers: a pipeline LoRA file for
    models that take prompts, a peft adapter file for the others) is replaced by the one that
    holds here, decided from the family's capabilities."""
    from transferstudio.export.formats import formats_for

    formats = formats_for(family, method)
    caps = _typical_capabilities(family)
    return [(key, label, _describe(key, description, caps, method, adapter)) for key, label, description in formats]


def _typical_capabilities(family: str | None) -> Any:
    if not family:
        return None
    from transferstudio.backbones.registry import family as family_of

    try:
        return family_of(family).typical_capabilities()
    except (KeyError, NotImplementedError):
        return None


def _describe(key: str, description: str, caps: Any, method: str, adapter: str) -> str:
    """The help text of one format for this model, method and adapter."""
    if key != "diffusers" or caps is None:
        return description
    if method != "lora":
        return "For Python scripts: the whole model as a diffusers folder that `from_pretrained` loads."
    if adapter in ("loha", "lokr"):
        from transferstudio.export.writers import LYCORIS_LOADING

        how = LYCORIS_LOADING.get(adapter)
        if how:
            return f"For Python scripts: a {adapter.upper()} adapter file (.safetensors). Load it with {how}"
    if caps.conditioning == "text":  # a diffusers pipeline with a LoRA loader (prompts, text encoders)
        return ("For Python scripts: a LoRA file in the layout diffusers' `pipe.load_lora_weights(file)` reads "
                "(the base model's pipeline, then the file).")
    # Models without prompts have no pipeline LoRA loader: the file is a peft adapter.
    return ("For Python scripts: a LoRA adapter file in peft's format (the weights, with their LoraConfig as "
            "JSON under the file's `lora_config` metadata key). Load it into the base model's denoiser with peft: "
            "`inject_adapter_in_model(LoraConfig(**config), unet)` then `set_peft_model_state_dict(unet, weights)`.")


def export_project(project: Any, out: str | Path, fmt: str, overwrite: bool, strength: float = 1.0,
                   run_dir: str | Path | None = None, step: int | str | None = None) -> Any:
    from transferstudio.export.formats import export
    from transferstudio.insight.summary import export_insights
    from transferstudio.project.lock import check_not_training

    check_not_training(project.folder)  # another process writes and prunes its checkpoints
    run = Path(run_dir) if run_dir else None
    return export(project, Path(out), fmt, strength=strength, overwrite=overwrite, run_dir=run, step=step,
                  insights=export_insights(project, run))


REPORT_FOLDER = "report"  # a run's transfer report, inside its folder


def make_report(project: Any, run_folder: str | Path) -> str:
    """Write the transfer report of the run in `run_folder` into its `report/` folder; the path
    of report.html."""
    from transferstudio.insight.report import write_report
    from transferstudio.project.run import Run

    run = Run.open(Path(run_folder))
    return str(write_report(project, Path(run_folder) / REPORT_FOLDER, run))


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
    base_notes: tuple[str, ...] = ()  # per picture, e.g. "PSNR 24.1 dB" (reconstruction models)
    trained_notes: tuple[str, ...] = ()


class _Quiet:
    """No progress shown, never cancelled (a comparison called without a TaskControl)."""

    def report(self, done: int, total: int, text: str = "") -> None:
        pass

    def check(self) -> None:
        pass


class CompareSession:
    """Keeps a loaded trained model between comparisons (loading is the slow part).

    Use from one worker at a time (the view runs one comparison after another).
    """

    def __init__(self, project: Any) -> None:
        self.project = project
        self.run_dir: Path | None = None  # the run to compare (None: the newest trained run)
        self._model: Any = None
        self._checkpoint: Path | None = None
        self._base_cache: dict[tuple[int, str, int, float], QImage] = {}
        self._base_backbone: Any = None  # an untouched copy, only for full fine-tunes

    @property
    def method(self) -> str | None:
        return None if self._model is None else self._model.config.method

    @property
    def text(self) -> bool | None:
        return None if self._model is None else self._model.backbone.caps.conditioning == "text"

    def _load(self) -> Any:
        from transferstudio.adapt.restore import find_trained, load_trained
        from transferstudio.project.lock import check_not_training

        check_not_training(self.project.folder)  # another process writes and prunes its checkpoints
        _, found = find_trained(self.project, self.run_dir)
        if self._model is None or found.path != self._checkpoint:
            from transferstudio.adapt.device import place_for_sampling

            self._model = load_trained(self.project, self.run_dir)
            place_for_sampling(self._model.backbone, self._model.config)  # the run's GPU, when there is one
            self._checkpoint = self._model.checkpoint.path
            self._base_cache.clear()
        return self._model

    def _base_samples(self, model: Any, seeds: list[int], prompts: list[str] | None, steps: int,
                      **extra: Any) -> list[Any]:
        if model.config.method == "lora":  # strength 0 is exactly the base model
            model.trainee.set_strength(0.0)
            return model.backbone.sample(seeds=seeds, prompts=prompts, steps=steps, **extra)
        # a full fine-tune changed every weight: the original model
        return self._base_backbone_for(model).sample(seeds=seeds, prompts=prompts, steps=steps, **extra)

    def _needs_base_load(self, model: Any) -> bool:
        return model.config.method != "lora" and self._base_backbone is None

    def compare(self, seed: int, prompt: str, strength: float, steps: int, count: int = 1,
                truncation: float = 1.0, control: Any = None) -> ComparePair:
        """`count` pictures per side, from seeds seed, seed+1, …; the base side is cached per seed.
        `truncation` applies to models that take it (GANs: both sides from the same latents).
        `control` (a TaskControl): progress per picture, and Cancel between pictures. Each picture
        is drawn on its own (one seed gives the same picture whatever the batch); base pictures
        already drawn stay cached when the comparison is cancelled."""
        import torch

        control = control or _Quiet()
        if self._model is None:
            control.report(0, 0, "Loading the trained model…")
        model = self._load()
        control.check()
        if model.backbone.caps.preview == "reconstruction":
            return self._compare_reconstructions(model, count, strength, control)
        text = model.backbone.caps.conditioning == "text"
        prompts = [prompt] if text else None  # one prompt serves every seed
        seeds = list(range(seed, seed + max(1, count)))
        extra = {"truncation": truncation} if model.backbone.caps.truncation else {}
        key = (prompt if text else "", steps, truncation if extra else 1.0)
        missing = [s for s in seeds if (s, *key) not in self._base_cache]
        total, done = len(missing) + len(seeds), 0
        trained = []
        if missing and self._needs_base_load(model):
            control.report(0, 0, "Loading the base model…")
        with torch.no_grad():
            for i, s in enumerate(missing):
                control.report(done, total, f"Base model: picture {i + 1} of {len(missing)}")
                picture = self._base_samples(model, [s], prompts, steps, **extra)[0]
                self._base_cache[(s, *key)] = pil_to_qimage(picture)
                done += 1
                control.check()
            model.trainee.set_strength(strength)
            for i, s in enumerate(seeds):
                control.report(done, total, f"Trained model: picture {i + 1} of {len(seeds)}")
                trained.append(model.backbone.sample(seeds=[s], prompts=prompts, steps=steps, **extra)[0])
                done += 1
                if done < total:
                    control.check()
        control.report(total, total, "")
        return ComparePair(base=tuple(self._base_cache[(s, *key)] for s in seeds),
                           trained=tuple(pil_to_qimage(p) for p in trained), seeds=tuple(seeds),
                           prompt=prompt if text else "", strength=strength, step=model.checkpoint.step)

    def _compare_reconstructions(self, model: Any, count: int, strength: float, control: Any) -> ComparePair:
        """Models that reconstruct (VAEs): the same held-out pictures through the base model and the
        trained one, original beside reconstruction, with each picture's PSNR."""
        import torch

        from transferstudio.data.holdout import reference_picture, split_held_out
        from transferstudio.data.scan import scan_images

        config = model.config
        scan = scan_images(self.project.images, trigger=config.trigger)
        _, held = split_held_out(scan.images, max(len(config.preview_seeds), count))
        held = (held or scan.images)[:max(1, count)]  # pictures never trained on, where there are some
        size = config.resolution or model.backbone.caps.native_resolution
        references = [reference_picture(r.path, size) for r in held]
        base = self._base_backbone_for(model)
        sides = []
        total, done = 2 * (1 + len(references)), 0
        with torch.no_grad():
            for name, backbone in (("Base model", base), ("Trained model", model.backbone)):
                control.report(done, total, f"{name}: reconstructing {len(references)} pictures")
                pictures = backbone.sample(seeds=[], references=references)  # one batch: as in training
                done += 1
                notes = []
                for i, ref in enumerate(references):
                    control.check()
                    control.report(done, total, f"{name}: measuring picture {i + 1} of {len(references)}")
                    metrics = backbone.reconstruction_metrics([ref])
                    notes.append(f"{metrics['psnr']:.1f} dB · {metrics['ssim']:.2f}")  # PSNR · SSIM
                    done += 1
                sides.append((tuple(pil_to_qimage(p) for p in pictures), tuple(notes)))
        control.report(total, total, "")
        names = tuple(range(1, len(references) + 1))
        return ComparePair(base=sides[0][0], trained=sides[1][0], seeds=names, prompt="", strength=strength,
                           step=model.checkpoint.step, base_notes=sides[0][1], trained_notes=sides[1][1])

    def _base_backbone_for(self, model: Any) -> Any:
        if self._base_backbone is None:  # every weight trained: the original model, loaded once
            from transferstudio.backbones.registry import load_backbone

            from transferstudio.adapt.device import place_for_sampling

            self._base_backbone = load_backbone(self.project.backbone, prediction_type=self.project.prediction_type)
            place_for_sampling(self._base_backbone, model.config)
        return self._base_backbone


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

    starters: list[tuple[str, Path]] = []
    if settings.get("include_starter", True):  # the starter models that ship: diffusion, VAE, GAN
        from transferstudio.starter.sample import starter_gan, starter_model, starter_vae

        starters = [("Starter model", starter_model()), ("Starter VAE", starter_vae()), ("Starter GAN", starter_gan())]
    entries = discover([Path(str(f)).expanduser() for f in settings.get("folders") or [] if f],
                       a1111=path_or_none("a1111"), comfyui=path_or_none("comfyui"),
                       hf_cache=path_or_none("hf_cache"), starters=starters, cache_dir=user_cache_dir())
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


# --- the domain check ------------------------------------------------------------------------------

def saved_domain_check(project: Any) -> dict[str, Any] | None:
    """The project's last domain check, as a plain dict for the model panel, when it still matches
    the project's model and pictures; else None. Cheap (lists files, imports no torch): the
    window may call it on its own thread."""
    from transferstudio.insight.domain import read_saved

    check = read_saved(project)
    return None if check is None else _domain_dict(check)


def check_domain(project: Any) -> dict[str, Any]:
    """Is the project's model a good starting point for its pictures? Reuses the saved check when it
    still matches, else measures (seconds for the starters) and saves the result in the project."""
    from transferstudio.insight.domain import check_domain as _check
    from transferstudio.insight.domain import read_saved, save

    check = read_saved(project)
    if check is None:
        check = _check(project)
        try:
            save(project, check)
        except OSError:  # a read-only project folder: the verdict still shows, it is measured again next time
            pass
    return _domain_dict(check)


def _domain_dict(check: Any) -> dict[str, Any]:
    return {**check.to_dict(), "headline": check.headline(), "explanation": check.explanation()}
