"""Before training: is this pretrained model a good starting point for the user's pictures?

The check asks the model's own family objective (`Objective.evaluate`, the measure the
validation loss uses too) how well the model handles a fixed sample of the user's pictures,
and compares that with how well it handles pictures of its own domain: its own samples (or,
for a model that cannot make pictures, the typical error its family spec states). The ratio
becomes a plain verdict — close / related / far — through limits the family's spec module
sets (`Capabilities.domain`, a `DomainScale`); nothing here asks which family a model is.

Calibration (8 pictures each, 128 px, centre-cropped to the model's 32 px; score, verdict):

    model         held-out landscapes  sample cities   random noise   flat colours
    starter DDPM  0.93 close           1.43 related    3.59 far       2.95 far
    starter VAE   0.72 close           1.37 related    3.71 far       6.13 far
    starter GAN   0.17 close           1.33 related    2.47 far       3.52 far

Five more sets of 8 landscapes: DDPM 0.86–1.26, VAE 0.68–0.99 (all close). All 24 cities: DDPM
1.74, VAE 1.43 (related). A GAN is asked through its discriminator (`Objective.domain_error`):
the generator's coverage distance, which its validation uses, put the dark night cities as close
as its night landscapes (0.75 vs 1.08), while the discriminator orders them (other landscape sets:
0.17–0.18; flat colours 3.5–4.7).

Everything is seeded: the same model and pictures give the same number. The last check is
kept in the project folder (`domain-check.json`) with a key of what it was computed from, so
the window and the report show it again without recomputing until the model or the pictures
change.

Heavy imports (torch, the backbones) happen inside the functions: `read_saved` and
`saved_key` are cheap and safe to call from the window's thread.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from transferstudio.core.atomic import write_json_atomic
from transferstudio.core.errors import DatasetError

SAVED_FILE = "domain-check.json"
MEASURE_VERSION = 2  # bump when the measure changes: older saved checks then no longer match
SEED = 15_2024  # the noise (timesteps' noise, GAN latents) of both measures
OWN_SEEDS = 9_000  # the model's own pictures come from seeds OWN_SEEDS, OWN_SEEDS + 1, …
OWN_STEPS = 10  # sampling steps for the model's own pictures (families that take steps)
VERDICTS = ("close", "related", "far")

Progress = Callable[[str], None]


@dataclass
class DomainCheck:
    verdict: str  # "close" | "related" | "far"
    score: float  # the number shown: user_error / own_error (how many times worse on your pictures)
    user_error: float  # the family measure's mean on the user's pictures
    own_error: float  # the same measure on pictures of the model's own domain
    measure: str  # what was measured, in one short phrase
    advice: str  # what it means for the artist, in plain words
    pictures: int  # how many of the user's pictures were used
    reference: str = ""  # what the model's own error was measured on
    thresholds: tuple[float, float] = (0.0, 0.0)  # the family's (close, related) limits on the score

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["thresholds"] = list(self.thresholds)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DomainCheck":
        verdict = str(data["verdict"])
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}")
        low, high = (data.get("thresholds") or (0.0, 0.0))[:2]
        return cls(verdict=verdict, score=float(data["score"]), user_error=float(data["user_error"]),
                   own_error=float(data["own_error"]), measure=str(data.get("measure", "")),
                   advice=str(data.get("advice", "")), pictures=int(data.get("pictures", 0)),
                   reference=str(data.get("reference", "")), thresholds=(float(low), float(high)))

    def headline(self) -> str:
        """The first line `transferstudio check` prints, e.g. "related 2.41"."""
        return f"{self.verdict} {self.score:.2f}"

    def explanation(self) -> str:
        """What was compared, in one or two sentences."""
        close, related = self.thresholds
        return (f"Measured {self.measure}: {self.user_error:.4g} on {self.pictures} of your pictures, "
                f"{self.own_error:.4g} on {self.reference or 'its own kind of pictures'} — {self.score:.2f} times "
                f"as much (up to {close:g} counts as close, up to {related:g} as related, above that far).")


# --- the check ----------------------------------------------------------------------------------

def check_domain(project: Any, *, backbone: Any = None, pictures: int = 8,
                 progress: Progress | None = None) -> DomainCheck:
    """How close the project's model is to its pictures. `backbone`: the model already loaded
    (else it loads from `project.backbone`); `pictures`: how many of the user's pictures (spread
    evenly over the folder in name order) and of the model's own samples are measured.
    Raises DatasetError / BackboneError (UserErrors) when the pictures or the model cannot be used."""
    from transferstudio.adapt.device import free_device_memory, place_for_sampling
    from transferstudio.data.scan import scan_images

    say = progress or (lambda _text: None)
    config = project.config
    say("Reading your pictures…")
    scan = scan_images(project.images)  # first: a folder without pictures needs no model loaded
    loaded = backbone is None
    if loaded:
        from transferstudio.backbones.registry import load_backbone

        say("Loading the model…")
        backbone = load_backbone(project.backbone, prediction_type=getattr(project, "prediction_type", ""))
        place_for_sampling(backbone, config)  # a GPU when there is one (large models), else the CPU
    try:
        return _check(scan, backbone, config, max(1, int(pictures)), say)
    finally:
        if loaded:
            free_device_memory(_device_of(backbone))


def _check(scan: Any, backbone: Any, config: Any, pictures: int, say: Progress) -> DomainCheck:
    from dataclasses import replace

    from transferstudio.adapt.device import autocast_dtype

    caps = backbone.caps
    scale = caps.domain
    # without captions: the model's own pictures are made without a prompt, and both sides must be
    # measured alike (families without conditioning ignore captions anyway)
    chosen = [replace(r, caption="") for r in spread(list(scan.images), pictures)]
    device = _device_of(backbone)
    amp = autocast_dtype(device, getattr(config, "precision", "auto"))
    objective = backbone.objective(config)
    modes = [(m, m.training) for m in backbone.plain_modules()]
    for module, _ in modes:
        module.eval()
    try:
        say(f"Measuring {len(chosen)} of your pictures…")
        user = _mean_error(backbone, objective, chosen, config, device, amp)
        if user is None:
            raise DatasetError(f"{caps.label or 'This model'} has no measure of how well it fits pictures.",
                               "The domain check is not available for this model.")
        if scale.reference > 0:  # the family's stated typical error on its own domain
            own, reference = scale.reference, "its own kind of pictures (the usual error of a good model of its family)"
        else:
            say("Making pictures of its own…")
            own, made = _own_error(backbone, objective, len(chosen), config, device, amp)
            reference = f"{made} pictures it made itself"
    finally:
        for module, training in modes:
            module.train(training)
    if not (math.isfinite(user) and math.isfinite(own)):
        raise DatasetError("The domain check measured no usable number (the model's output is not finite).",
                           "Check that the model loads and samples correctly (Compare tab).")
    score = user / max(own, 1e-12)
    verdict = "close" if score <= scale.close else "related" if score <= scale.related else "far"
    return DomainCheck(verdict=verdict, score=score, user_error=user, own_error=own, measure=scale.measure,
                       advice=advice_for(verdict, caps), pictures=len(chosen), reference=reference,
                       thresholds=(float(scale.close), float(scale.related)))


def spread(items: list[Any], count: int) -> list[Any]:
    """`count` items spread evenly over `items` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def advice_for(verdict: str, caps: Any) -> str:
    """Plain words for an artist about what the verdict means for training."""
    small = bool(getattr(caps, "supports_full_finetune", False)) and "full" in tuple(getattr(caps, "methods", ()))
    if verdict == "close":
        return ("Your pictures look like what this model already knows: starting from it should pay off. "
                "A short run with the usual settings is a good start.")
    if verdict == "related":
        return ("Your pictures share a good deal with what this model knows, but not everything: starting from it "
                "still helps. Expect to need more steps than for close pictures, and compare a few checkpoints.")
    options = ["more steps"]
    if "lora" in tuple(getattr(caps, "methods", ())):
        options.append("a higher LoRA rank")
    if small:
        options.append("full fine-tuning (this model is small enough)")
    return ("Your pictures are far from what this model knows: expect less gain from starting pretrained. "
            f"Try {', '.join(options[:-1]) + ' and ' + options[-1] if len(options) > 1 else options[0]}, "
            "or pick a base model made for pictures like yours.")


def _device_of(backbone: Any) -> Any:
    import torch

    for module in backbone.plain_modules():
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def _mean_error(backbone: Any, objective: Any, records: list[Any], config: Any, device: Any,
                amp: Any = None) -> float | None:
    """The family measure's mean over `records` at the model's native size (centre crops), with
    the same seeded noise every time: the validation loss's helper."""
    import torch

    from transferstudio.backbones.objective import StepContext
    from transferstudio.data.dataset import TrainingImages
    from transferstudio.training.validation import mean_error

    caps = backbone.caps
    images = TrainingImages(records, caps.native_resolution, caps.resolution_multiple, buckets=False, flip=False,
                            crop="center")
    generator = torch.Generator(device).manual_seed(SEED)
    ctx = StepContext(step=1, device=torch.device(device), amp=amp, generator=generator, config=config)
    measured = mean_error(objective, images, ctx, seed=SEED, measure=objective.domain_error)
    return None if measured is None else measured[0]


def _own_error(backbone: Any, objective: Any, count: int, config: Any, device: Any,
               amp: Any = None) -> tuple[float, int]:
    """The same measure on `count` pictures the model makes from fixed seeds, passed through the
    same reading, cropping and scaling as the user's pictures."""
    from transferstudio.data.scan import scan_images

    seeds = list(range(OWN_SEEDS, OWN_SEEDS + max(1, count)))
    side = backbone.caps.native_resolution
    kwargs: dict[str, Any] = {"size": (side, side)}
    if backbone.caps.conditioning == "text":
        kwargs["prompts"] = [""] * len(seeds)  # unconditional: the model's own idea of a picture
    made = backbone.sample(seeds=seeds, steps=OWN_STEPS, **kwargs)
    with tempfile.TemporaryDirectory(prefix="domain-check-") as tmp:
        for i, picture in enumerate(made):
            picture.convert("RGB").save(Path(tmp) / f"own_{i:03d}.png")
        records = list(scan_images(tmp).images)
        value = _mean_error(backbone, objective, records, config, device, amp)
    if value is None:
        raise DatasetError("The model's own pictures could not be measured.", "")
    return value, len(records)


# --- keeping the last check ------------------------------------------------------------------------

def saved_key(project: Any) -> dict[str, Any]:
    """What a check was computed from: the model's files and the image folder's files (paths,
    names, sizes, mtimes) and the measure's version."""
    return {"version": MEASURE_VERSION, "backbone": _files_key(Path(project.backbone)),
            "images": _files_key(Path(project.images))}


def _files_key(path: Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    try:
        resolved = path.resolve()
    except OSError:
        resolved = path
    if path.is_file():
        st = path.stat()
        return {"path": str(resolved), "files": [[path.name, st.st_size, st.st_mtime_ns]]}
    files: list[list[Any]] = []
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                file = Path(dirpath) / name
                try:
                    st = file.stat()
                except OSError:
                    continue
                files.append([file.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    files.sort()
    return {"path": str(resolved), "files": files}


def save(project: Any, check: DomainCheck) -> Path:
    """Keep `check` in the project folder with the key of what it was computed from."""
    file = Path(project.folder) / SAVED_FILE
    write_json_atomic(file, {"key": saved_key(project), "check": check.to_dict()})
    return file


def read_saved(project: Any) -> DomainCheck | None:
    """The last check of this project, or None when there is none or the model or the pictures
    changed since (or the file cannot be read)."""
    import json

    file = Path(project.folder) / SAVED_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("key") != json.loads(json.dumps(saved_key(project))):
            return None
        return DomainCheck.from_dict(data["check"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
