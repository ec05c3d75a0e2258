"""Put a run's trained weights back onto a freshly loaded backbone (sample, export, compare)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferstudio.backbones.base import Backbone
from transferstudio.core.errors import CheckpointError, ProjectError
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import Project
from transferstudio.project.run import best_checkpoint, read_run_settings
from transferstudio.adapt import checkpoints as ckpt
from transferstudio.adapt import health
from transferstudio.adapt.trainee import Trainee, run_config


@dataclass
class TrainedModel:
    backbone: Backbone
    trainee: Trainee
    config: TrainConfig
    run_dir: Path
    checkpoint: ckpt.CheckpointInfo
    warnings: tuple[str, ...] = ()  # damaged or diverged checkpoints passed over, one sentence each


def find_trained(project: Project, run_dir: Path | None = None, *, problems: list[str] | None = None,
                 skip: Any = (), step: int | str | None = None) -> tuple[Path, ckpt.CheckpointInfo]:
    """The newest run (or `run_dir`) and its newest complete checkpoint whose files are whole.
    Damaged checkpoints are passed over; a sentence for each is added to `problems`. `skip`:
    checkpoint folders not to use (e.g. found to hold weights that are not numbers). `step`:
    that checkpoint only (a number, or "best": the lowest validation loss)."""
    runs = [Path(run_dir)] if run_dir else [r for r in reversed(project.runs()) if not _is_baseline(r)]
    damaged: list[str] = []
    for run in runs:
        if not (run / "config.json").is_file():
            continue
        candidates = [c for c in ckpt.complete_checkpoints(run) if c.path not in set(skip)]
        if step is not None:
            candidates = _at_step(run, candidates, step)
        if candidates:
            run_config(run)  # unusable run settings: that sentence first (ProjectError naming the file)
        found, bad = ckpt.newest_good(candidates)
        damaged += [ckpt.damaged_words(info, why) for info, why in bad]
        if found is not None:
            if problems is not None:
                problems.extend(damaged)
            return run, found
    if damaged:
        raise CheckpointError(f"{damaged[0]}, and no earlier checkpoint can be used.",
                              f"Train again: `transferstudio train {project.folder} --fresh`.")
    raise CheckpointError("This project has no trained weights yet.", "Train it first.")


def _is_baseline(run: Path) -> bool:
    """A from-scratch baseline run: used when named, never as "the trained model" of a project."""
    try:
        return bool(read_run_settings(run)[0].get("baseline"))
    except ProjectError:  # unreadable settings: find_trained names the file when it gets to it
        return False


def _at_step(run: Path, candidates: list[ckpt.CheckpointInfo], step: int | str) -> list[ckpt.CheckpointInfo]:
    kept = ", ".join(str(c.step) for c in candidates) or "none"
    if step == "best":
        best = best_checkpoint(candidates)
        if best is None:
            raise CheckpointError(f"The run {Path(run).name} has no checkpoint with a validation loss.",
                                  "Train with a validation split (Settings ▸ validation), or export the latest step.")
        return [best]
    found = [c for c in candidates if c.step == step]
    if not found:
        raise CheckpointError(f"The run {Path(run).name} has no checkpoint at step {step}.",
                              f"Checkpoints kept: {kept}.")
    return found


def load_trained(project: Project, run_dir: Path | None = None, *, use_ema: bool = True,
                 backbone: Backbone | None = None, step: int | str | None = None) -> TrainedModel:
    """The newest usable trained weights on a freshly loaded backbone. Damaged checkpoints and
    ones whose weights are not numbers (a diverged run) are passed over for the one before;
    `warnings` says which, in one sentence each."""
    from transferstudio.backbones.registry import load_backbone

    notes: list[str] = []
    diverged: list[str] = []
    skip: set[Path] = set()
    while True:
        try:
            run, found = find_trained(project, run_dir, problems=notes, skip=skip, step=step)
        except CheckpointError as exc:
            if diverged:
                raise CheckpointError(f"No trained weights of this project can be used: {diverged[0]}.",
                                      health.fresh_advice(project.folder)) from None
            if notes and "no earlier checkpoint" not in exc.message:
                raise CheckpointError(f"{notes[0]}, and no earlier checkpoint can be used.",
                                      f"Train again: `transferstudio train {project.folder} --fresh`.") from None
            raise
        weights = ckpt.EMA if use_ema and (found.path / ckpt.EMA).is_file() else ckpt.WEIGHTS
        try:
            state = ckpt.read_weights(found.path, weights)
        except CheckpointError:  # damage the checks could not see (an old checkpoint's data)
            notes.append(ckpt.damaged_words(found, f"{weights} cannot be read"))
            skip.add(found.path)
            continue
        bad = health.non_finite(state)
        if bad is not None:
            diverged.append(f"the checkpoint {found.path.name} of run {run.name} holds weights that are not "
                            f"numbers ({bad}), so that run diverged")
            notes.append(diverged[-1][0].upper() + diverged[-1][1:])
            skip.add(found.path)
            continue
        break
    config = run_config(run)
    backbone = backbone or load_backbone(project.backbone, prediction_type=project.prediction_type)
    trainee = Trainee(backbone, config)
    if weights == ckpt.EMA:  # the trained weights (other roles, buffers), then the averaged ones over them
        try:
            trainee.load_state(ckpt.split_roles(ckpt.read_weights(found.path, ckpt.WEIGHTS)))
        except CheckpointError:
            pass  # the average alone still makes the model
        for role, part in ckpt.split_roles(state).items():
            trainee.roles[role].load_state_dict(part, strict=False)
    else:
        trainee.load_state(ckpt.split_roles(state))
    trainee.train_mode(False)
    warnings = tuple(f"{note}; using {found.path.name} of run {run.name} instead." for note in dict.fromkeys(notes))
    return TrainedModel(backbone=backbone, trainee=trainee, config=config, run_dir=run, checkpoint=found,
                        warnings=warnings)
