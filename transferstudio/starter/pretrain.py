"""`transferstudio pretrain`: make your own pretrained backbone from a large picture folder — the
first half of transfer learning, in the user's hands.

The family makes a model with seeded random weights (`Family.initialize`); a hidden project
beside the output trains it on the folder with the ordinary Trainer (so it pauses, stops with
Ctrl-C and continues where it stopped when run again, like any training); when it finishes,
the trained model is saved with the family's own layout (a GAN folder: safetensors + JSON),
ready to be picked as the backbone of a project on a small set. The same seed, settings and
pictures give bit-identical weights.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from transferstudio.core.commands import Commands
from transferstudio.core.errors import UserError
from transferstudio.project.config import TrainConfig


@dataclass
class PretrainJob:
    family: str
    images: Path
    out: Path
    steps: int = 4000
    seed: int = 0
    resolution: int = 32
    batch_size: int = 32
    learning_rate: float = 2e-3
    size: str = "starter"  # the family's size preset ("tiny" for tests)
    preview_every: int = 500
    checkpoint_every: int = 500


def work_folder(out: Path) -> Path:
    """Where the pretraining project lives while it runs (kept, so an interrupted run continues)."""
    out = Path(out)
    return out.parent / f".{out.name}.pretraining"


def pretraining_config(job: PretrainJob, caps: Any) -> TrainConfig:
    config = TrainConfig()
    config.suggest_for(caps)
    config.method = "full" if "full" in caps.methods else config.method  # every weight starts random
    config.ema = True  # the average of the last steps is the better pretrained model
    config.steps, config.seed, config.batch_size = job.steps, job.seed, job.batch_size
    config.learning_rate, config.flip, config.schedule, config.warmup_steps = job.learning_rate, True, "constant", 0
    config.preview_every, config.checkpoint_every, config.keep_checkpoints = job.preview_every, job.checkpoint_every, 2
    config.preview_seeds = list(range(1, 17))
    if hasattr(config, "augment"):
        config.augment = "off"  # a large set: the discriminator cannot memorise it
    return config


def pretrain(job: PretrainJob, commands: Commands | None = None) -> Iterator[Any]:
    """The Trainer's events while the model pretrains; then the backbone is written to `job.out`."""
    from transferstudio.backbones.registry import family as family_of
    from transferstudio.project.project import create_project, load_project
    from transferstudio.training.trainer import TrainJob, train

    try:
        family = family_of(job.family)
    except KeyError:
        raise UserError(f"There is no model family '{job.family}'.", "Use --family gan, vae or ddpm.") from None
    initialize: Callable[..., Any] | None = getattr(family, "initialize", None)
    if initialize is None:
        raise UserError(f"Pretraining a new {job.family} model is not available.",
                        "Use --family gan, vae or ddpm.")
    out = Path(job.out).expanduser()
    if out.exists():
        raise UserError(f"{out} already exists.", "Choose a new folder for the pretrained model.")
    work = work_folder(out)
    project_folder = work / "project"
    if (project_folder / "project.json").is_file():
        project = load_project(project_folder)  # an interrupted pretraining continues
    else:
        if work.exists():
            shutil.rmtree(work)
        init = initialize(work / "random-init", resolution=job.resolution, seed=job.seed, size=job.size)
        from transferstudio.backbones.registry import inspect_backbone

        config = pretraining_config(job, inspect_backbone(init).caps)
        project = create_project(project_folder, backbone=init, images=Path(job.images).expanduser(),
                                 name=f"Pretraining {out.name}", config=config)
    finished = None
    for event in train(TrainJob(project, steps=job.steps), commands):
        if type(event).__name__ == "Finished":
            finished = event
        yield event
    if finished is not None:
        save_pretrained(project, out, job)
        shutil.rmtree(work, ignore_errors=True)


def save_pretrained(project: Any, out: Path, job: PretrainJob) -> None:
    """The finished pretraining's model (EMA weights where kept) in its family's layout at `out`,
    with how it was made (PRETRAINING.json) and its training curve (pretraining-metrics.jsonl)."""
    import json

    from transferstudio.adapt.restore import load_trained
    from transferstudio.data.scan import scan_images
    from transferstudio.export.formats import staged_write

    trained = load_trained(project)

    def write(staged: Path) -> None:
        trained.backbone.save_full(staged)
        metrics = trained.run_dir / "metrics.jsonl"
        if metrics.is_file():
            shutil.copyfile(metrics, staged / "pretraining-metrics.jsonl")
        about = {"family": job.family, "images": str(project.images),
                 "pictures": len(scan_images(project.images).images), "steps": trained.checkpoint.step,
                 "seed": job.seed, "size": job.size, "resolution": job.resolution,
                 "settings": trained.config.to_dict()}
        (staged / "PRETRAINING.json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")

    staged_write(Path(out), write, folder=True)
