"""Put a run's trained weights back onto a freshly loaded backbone (sample, export, compare)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferstudio.backbones.base import Backbone
from transferstudio.core.errors import CheckpointError
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import Project
from transferstudio.adapt import checkpoints as ckpt
from transferstudio.adapt.trainee import Trainee, run_config


@dataclass
class TrainedModel:
    backbone: Backbone
    trainee: Trainee
    config: TrainConfig
    run_dir: Path
    checkpoint: ckpt.CheckpointInfo


def find_trained(project: Project, run_dir: Path | None = None) -> tuple[Path, ckpt.CheckpointInfo]:
    """The newest run (or `run_dir`) and its last complete checkpoint."""
    runs = [Path(run_dir)] if run_dir else list(reversed(project.runs()))
    for run in runs:
        found = ckpt.latest_checkpoint(run)
        if found is not None and (run / "config.json").is_file():
            return run, found
    raise CheckpointError("This project has no trained weights yet.", "Train it first.")


def load_trained(project: Project, run_dir: Path | None = None, *, use_ema: bool = True,
                 backbone: Backbone | None = None) -> TrainedModel:
    from transferstudio.backbones.registry import load_backbone

    run, found = find_trained(project, run_dir)
    config = run_config(run)
    backbone = backbone or load_backbone(project.backbone, prediction_type=project.prediction_type)
    trainee = Trainee(backbone, config)
    weights = ckpt.EMA if use_ema and (found.path / ckpt.EMA).is_file() else ckpt.WEIGHTS
    parts = ckpt.split_roles(ckpt.read_weights(found.path, weights))
    if weights == ckpt.EMA:
        for role, state in parts.items():
            trainee.roles[role].load_state_dict(state, strict=False)
    else:
        trainee.load_state(parts)
    trainee.train_mode(False)
    return TrainedModel(backbone=backbone, trainee=trainee, config=config, run_dir=run, checkpoint=found)
