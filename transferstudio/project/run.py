"""A run folder, read once: `Run.open(folder)`.

Layout (the engine writes it; everything here reads it without torch, so the window can show
runs at once):
  config.json            the settings the run was started with (app version, backbone, images)
  metrics.jsonl          one JSON object per optimizer step
  log.txt                what happened, with times
  previews/step-N/       seed-S.png (+ prompts.txt)
  checkpoints/step-N/    weights.safetensors, optimizer.pt, rng.pt, state.json; COMPLETE last
  exports.jsonl          one line per export made from this run
  validation.jsonl       one JSON object per validation measure: step, val_loss (+ PSNR/SSIM for VAEs)

config.json may also say `validation_pictures` (the held-out file names, fixed for the run) and
`baseline: "scratch"` (a from-scratch comparison run: same architecture, random weights).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferstudio.core.errors import ProjectError
from transferstudio.project.config import SPEED_ONLY_SETTINGS, TrainConfig

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EXPORTS = "exports.jsonl"
VALIDATION = "validation.jsonl"
CHECKPOINTS = "checkpoints"
PREVIEWS = "previews"
MARKER = "COMPLETE"
WEIGHTS = "weights.safetensors"
EMA = "ema.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    state: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest first (a folder counts only with its marker)."""
    folder = Path(run_dir) / CHECKPOINTS
    out: list[CheckpointInfo] = []
    try:
        children = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return out
    for path in children:
        if not path.name.startswith("step-") or not (path / MARKER).is_file():
            continue
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            out.append(CheckpointInfo(path=path, step=int(state["step"]), state=state))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged: ignore, an older one may be good
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> CheckpointInfo | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def read_run_settings(run_dir: Path) -> tuple[dict[str, Any], TrainConfig]:
    """(config.json as a dict, its settings) — ProjectError naming the file when it is unusable."""
    file = Path(run_dir) / CONFIG
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProjectError(f"The run {Path(run_dir).name} has no {CONFIG}.",
                           "Start a fresh run (`train --fresh`); the other runs are untouched.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProjectError(f"The run settings {file} are damaged ({exc}).",
                           "Start a fresh run (`train --fresh`); the other runs are untouched.") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ProjectError(f"The run settings {file} are not TransferStudio settings.",
                           "Start a fresh run (`train --fresh`); the other runs are untouched.")
    try:
        config = TrainConfig.from_dict(data["config"])
    except (TypeError, ValueError) as exc:
        raise ProjectError(f"The run settings {file} are invalid ({exc}).",
                           "Start a fresh run (`train --fresh`).") from None
    # Field checks only: a run made before a conflict rule existed must stay readable (export).
    problems = config.field_problems()
    if problems:
        raise ProjectError(f"The run settings {file} are invalid: {problems[0]}.",
                           "Start a fresh run (`train --fresh`).")
    return data, config


@dataclass(frozen=True)
class Run:
    """One run of a project, as its folder says."""

    folder: Path
    data: dict[str, Any]  # config.json
    config: TrainConfig
    checkpoints: tuple[CheckpointInfo, ...]

    @classmethod
    def open(cls, folder: Path) -> "Run":
        data, config = read_run_settings(folder)
        return cls(folder=Path(folder), data=data, config=config,
                   checkpoints=tuple(complete_checkpoints(folder)))

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def latest(self) -> CheckpointInfo | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def trained_step(self) -> int:
        return self.latest.step if self.latest else 0

    @property
    def total(self) -> int:
        """The step total the run was last asked for (a continued run may have raised it)."""
        planned = self.latest.state.get("total") if self.latest else None
        return max(int(self.config.steps), int(planned) if isinstance(planned, int) else 0)

    @property
    def method(self) -> str:
        return self.config.method

    def can_continue(self, total: int | None = None) -> bool:
        """True when continuing from the last complete checkpoint would train more steps."""
        return 0 < self.trained_step < max(self.total, total or 0)

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl rows; lines cut by a crash are skipped."""
        return [row for row in read_jsonl(self.folder / METRICS) if isinstance(row.get("step"), int)]

    def final_loss(self, step: int | None = None) -> float | None:
        loss = None
        for row in self.metrics():
            if step is not None and row["step"] > step:
                break
            value = row.get("loss")
            if isinstance(value, (int, float)) and math.isfinite(value):
                loss = float(value)
        return loss

    def preview_steps(self) -> list[int]:
        folder = self.folder / PREVIEWS
        steps = []
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_dir() and p.name.startswith("step-"):
                    try:
                        steps.append(int(p.name[5:]))
                    except ValueError:
                        pass
        return sorted(steps)

    def exports(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / EXPORTS)

    @property
    def baseline(self) -> str | None:
        """"scratch" for a from-scratch comparison run, None for a normal run."""
        value = self.data.get("baseline")
        return value if isinstance(value, str) and value else None

    @property
    def validation_pictures(self) -> list[str]:
        names = self.data.get("validation_pictures")
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def validation(self, step: int | None = None) -> list[dict[str, Any]]:
        """validation.jsonl rows with a finite val_loss (up to `step`), in step order."""
        return validation_rows(self.folder, step)

    @property
    def best_checkpoint(self) -> CheckpointInfo | None:
        """The kept checkpoint with the lowest validation loss (the one Export offers as best)."""
        return best_checkpoint(self.checkpoints)

    def best(self) -> tuple[int, float] | None:
        """(step, validation loss) of the lowest validation loss measured, or None."""
        return best_validation(self.validation(self.trained_step if self.latest else None))

    def describe(self) -> str:
        """One line for `transferstudio runs`."""
        latest = self.latest
        where = f"{latest.step}/{self.total} steps" if latest else f"0/{self.total} steps (no checkpoint)"
        loss = self.final_loss(latest.step if latest else None)
        parts = [self.id, self.method, where]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if self.exports():
            parts.append(f"{len(self.exports())} export(s)")
        if self.can_continue():
            parts.append("can continue")
        return "  ".join(parts)


def validation_rows(run_dir: Path, step: int | None = None) -> list[dict[str, Any]]:
    rows = [r for r in read_jsonl(Path(run_dir) / VALIDATION)
            if isinstance(r.get("step"), int) and isinstance(r.get("val_loss"), (int, float))
            and math.isfinite(r["val_loss"]) and (step is None or r["step"] <= step)]
    by_step = {r["step"]: r for r in rows}  # a step measured twice (a resumed run) counts once: the last
    return [by_step[s] for s in sorted(by_step)]


def best_checkpoint(checkpoints: Any) -> CheckpointInfo | None:
    scored = [c for c in checkpoints if isinstance(c.state.get("val_loss"), (int, float))
              and math.isfinite(c.state["val_loss"])]
    return min(scored, key=lambda c: (c.state["val_loss"], c.step)) if scored else None


def best_validation(rows: list[dict[str, Any]]) -> tuple[int, float] | None:
    """The step with the lowest validation loss (the earliest of equals)."""
    if not rows:
        return None
    best = min(rows, key=lambda r: (r["val_loss"], r["step"]))
    return int(best["step"]), float(best["val_loss"])


RISE_TOLERANCE = 0.03  # a measure counts as risen when it is 3% above the best (a few pictures are noisy)
OVERFIT_AFTER = 3  # measures in a row clearly above the best before a run is said to overfit


def rising_for(rows: list[dict[str, Any]]) -> int:
    """How many measures in a row, ending with the last, the validation loss has stayed clearly
    (RISE_TOLERANCE) above its best so far: the overfitting signal."""
    best, count = math.inf, 0
    for row in rows:
        value = row["val_loss"]
        if value < best:
            best = value
        count = count + 1 if value > best * (1 + RISE_TOLERANCE) else 0
    return count


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, one per line; a line cut by a crash is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def record_export(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one export to the run's exports.jsonl (a line is written whole or not at all)."""
    with (Path(run_dir) / EXPORTS).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def project_runs(project: Any) -> list[Run]:
    """Every readable run of a project, oldest first (folders without settings are skipped)."""
    runs = []
    for folder in project.runs():
        try:
            runs.append(Run.open(folder))
        except ProjectError:
            continue
    return runs


def continuable_run(project: Any) -> Run | None:
    """The run a plain `train` continues: the newest one with a complete checkpoint. Runs that
    never reached one (a start that failed or was killed) are passed over, so they cannot hide
    the last good run. Damaged settings of that run: ProjectError, never a silent new run.
    The engine and the window both ask this, so they never disagree."""
    for folder in reversed(project.runs()):
        if complete_checkpoints(folder):
            run = Run.open(folder)
            if run.baseline is None:  # a scratch baseline is continued only when named
                return run
    return None


def find_run(project: Any, run_id: str | None) -> Run | None:
    """The run named `run_id` (its folder name, or a unique prefix), or the newest run with a
    complete checkpoint when `run_id` is None. ProjectError naming the choices if not found."""
    if run_id is None:
        for run in reversed(project_runs(project)):
            if run.latest is not None and run.baseline is None:
                return run
        return None
    folders = [f for f in project.runs() if f.name == run_id] or \
        [f for f in project.runs() if f.name.startswith(run_id)]
    if len(folders) != 1:
        names = ", ".join(f.name for f in project.runs()) or "none yet"
        what = "matches several runs" if folders else "is not a run of this project"
        raise ProjectError(f"'{run_id}' {what}.", f"Runs: {names} (see `transferstudio runs`).")
    return Run.open(folders[0])


# --- what a continued run uses, and what a killed start leaves behind --------------------------

def settings_differences(run_config: TrainConfig, config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(field, run's value, project's value) for every setting but `steps` that differs. A
    continued run keeps its own settings (its checkpoints depend on them); only the total grows."""
    out = []
    ours, theirs = run_config.to_dict(), config.to_dict()
    for name, value in ours.items():
        if name != "steps" and name not in SPEED_ONLY_SETTINGS and theirs.get(name) != value:
            out.append((name, value, theirs.get(name)))
    return out


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """'method (run: lora, project: full), learning_rate (run: 0.001, project: 0.0005)'"""
    return ", ".join(f"{name} (run: {_shown(old)}, project: {_shown(new)})" for name, old, new in differences)


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value if value else "''"
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "…"


# What a run folder holds before its first complete checkpoint (the trainer wrote nothing else).
_ORPHAN_FILES = {CONFIG, METRICS, "log.txt"}
_ORPHAN_DIRS = {PREVIEWS, CHECKPOINTS}


def is_orphan_run(run_dir: Path) -> bool:
    """True for a run folder left by a start that ended or was killed before its first complete
    checkpoint: nothing in it but config.json, log.txt, metrics.jsonl, previews/ and a
    checkpoints/ that is empty or holds only `.tmp-*` leftovers of an interrupted write.
    Anything else in it (exports, notes, a checkpoint folder without its marker) keeps it."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir() or run_dir.is_symlink():
            return False
        for child in run_dir.iterdir():
            if child.is_symlink():
                return False
            if child.name in _ORPHAN_FILES and child.is_file():
                continue
            if child.name in _ORPHAN_DIRS and child.is_dir():
                continue
            return False
        checkpoints = run_dir / CHECKPOINTS
        if checkpoints.is_dir() and any(not c.name.startswith(".tmp-") for c in checkpoints.iterdir()):
            return False
    except OSError:
        return False
    return True


def remove_run_folder(run_dir: Path) -> bool:
    """Delete an orphan run folder (checked again right before); True when it is gone."""
    import shutil

    if not is_orphan_run(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not Path(run_dir).exists()


def remove_orphan_runs(project: Any, keep: Path | None = None) -> list[str]:
    """Remove the project's orphan run folders (but `keep`); the names of those removed.
    Call it only while holding the project's training lock: a run that is starting right now
    looks exactly like an orphan."""
    removed = []
    for folder in project.runs():
        if keep is not None and Path(folder) == Path(keep):
            continue
        if remove_run_folder(folder):
            removed.append(folder.name)
    return removed
