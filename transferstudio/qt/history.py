"""What a project's run folders hold, read without torch (so the window can show it at once).

Uses the engine's torch-free readers of the on-disk contract: checkpoints/step-N/ counts only
with its COMPLETE marker; previews/step-N/seed-S.png; metrics.jsonl with one JSON object per step.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.core.errors import UserError
from transferstudio.project.run import (Run, best_validation, continuable_run, find_run, latest_checkpoint,
                                        project_runs, validation_rows)
from transferstudio.training.previews import preview_steps  # torch-free (PIL only, lazily)

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RunState:
    run_dir: Path
    checkpoint_step: int  # 0: no complete checkpoint
    total: int  # the step total the run was last asked for
    run: Run | None = None

    def resumable(self, wanted_total: int) -> bool:
        """True when continuing this run would train more steps (the engine's own rule)."""
        if self.run is not None:
            return self.run.can_continue(wanted_total)
        return 0 < self.checkpoint_step < max(self.total, wanted_total)


def latest_checkpoint_step(run_dir: Path) -> int:
    found = latest_checkpoint(run_dir)
    return found.step if found is not None else 0


def latest_run_state(project: Any) -> RunState | None:
    """The run `train` would continue (the newest with a complete checkpoint), else the newest
    readable run (to show its history); None when there is none or its settings are damaged."""
    try:
        run = continuable_run(project)
    except UserError:
        return None
    if run is None:
        folder = project.latest_run()
        try:
            run = Run.open(folder) if folder is not None else None
        except UserError:
            return None
    if run is None:
        return None
    return RunState(run_dir=run.folder, checkpoint_step=run.trained_step, total=run.total, run=run)


def preview_every(run_dir: Path) -> int:
    """How often (in steps) the run in `run_dir` draws previews; 0: only at its start and end (or
    when its settings cannot be read)."""
    try:
        return max(0, int(Run.open(Path(run_dir)).config.preview_every or 0))
    except (UserError, OSError, ValueError, TypeError):
        return 0


def trained_method(project: Any) -> str | None:
    """The method ("lora" / "full") of the newest run that has trained weights."""
    try:
        run = find_run(project, None)
    except UserError:
        return None
    return run.method if run is not None else None


def trained_runs(project: Any) -> list[Run]:
    """Every run with a complete checkpoint, newest first (the window offers any of them)."""
    return [run for run in reversed(project_runs(project)) if run.latest is not None]


def has_trained_weights(project: Any) -> bool:
    return any(latest_checkpoint_step(run) > 0 for run in project.runs())


def read_metrics(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) from metrics.jsonl; damaged lines are skipped."""
    import numpy as np

    steps: list[int] = []
    losses: list[float] = []
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
        except (ValueError, KeyError, TypeError):
            continue
    return np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)


def read_series(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-phase losses ("loss: generator", "loss: discriminator") and other charted numbers
    ("d_accuracy", "augment_p", …) of metrics.jsonl, by name: {name: (steps, values)}."""
    import numpy as np

    series: dict[str, tuple[list[int], list[float]]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
            step = int(row["step"])
            values = {f"loss: {k}": v for k, v in (row.get("losses") or {}).items()}
            values.update(row.get("signals") or {})
            for name, value in values.items():
                xs, ys = series.setdefault(str(name), ([], []))
                xs.append(step)
                ys.append(float(value))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return {k: (np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)) for k, (xs, ys) in series.items()}


def read_validation(run_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, float] | None]:
    """(steps, validation losses, (best step, best loss) or None) from validation.jsonl."""
    import numpy as np

    rows = validation_rows(Path(run_dir))
    return (np.asarray([r["step"] for r in rows], dtype=np.float64),
            np.asarray([r["val_loss"] for r in rows], dtype=np.float64), best_validation(rows))


def step_series(step: Any) -> dict[str, float]:
    """The same names for one Step event (what the live chart adds)."""
    values = {f"loss: {k}": v for k, v in getattr(step, "losses", ())}
    values.update(dict(getattr(step, "signals", ())))
    return values


def class_pictures(project: Any) -> tuple[list[str], str]:
    """(paths, class prompt) of the project's prior-preservation set for its current settings, or
    ([], "") when it has none (yet)."""
    from transferstudio.training.prior import CLASS_FOLDER, MARKER  # torch-free

    root = Path(project.folder) / CLASS_FOLDER
    if not project.config.class_pictures or not root.is_dir():
        return [], ""
    sets = [f for f in root.iterdir() if (f / MARKER).is_file()]
    if not sets:
        return [], ""
    newest = max(sets, key=lambda f: (f / MARKER).stat().st_mtime)
    try:
        prompt = str(json.loads((newest / MARKER).read_text(encoding="utf-8")).get("prompt", ""))
    except (OSError, ValueError, AttributeError):
        prompt = ""
    return [str(p) for p in sorted(newest.glob("class_*.png"))], prompt


def preview_files(run_dir: Path) -> list[tuple[int, list[Path]]]:
    """[(step, [seed-*.png, …])] oldest first."""
    out = []
    for step in preview_steps(run_dir):
        folder = Path(run_dir) / "previews" / f"step-{step:06d}"
        files = sorted(folder.glob("seed-*.png"), key=lambda p: seed_of(p))
        if files:
            out.append((step, files))
    return out


def preview_captions(files: list[Path]) -> list[str]:
    """What each preview picture is: the label its prompts.txt gives (a prompt, or "held-out
    picture 2" / "from the prior, seed 1" for reconstruction models), else its seed."""
    labels: dict[int, str] = {}
    if files:
        try:
            for line in (files[0].parent / "prompts.txt").read_text(encoding="utf-8").splitlines():
                seed, _, text = line.partition("\t")
                labels[int(seed)] = text
        except (OSError, ValueError):
            pass
    def caption(seed: int) -> str:
        text = labels.get(seed, "")
        if text.startswith(("held-out picture", "from the prior")):
            return text
        return f"seed {seed}" + (f" · {text}" if text else "")

    return [caption(seed_of(f)) for f in files]


def seed_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


# --- the whole table of a run's numbers (charts beside the loss, CSV export) -------------------------

RATE_WINDOW = 10  # steps: images/s from the median step time over this many (a preview's pause is no step)


def images_per_step(run_dir: Path) -> int:
    """Pictures one optimizer step trains on (batch × accumulation); 0 when the settings cannot be read."""
    try:
        config = Run.open(Path(run_dir)).config
        return max(1, int(config.batch_size)) * max(1, int(getattr(config, "gradient_accumulation", 1) or 1))
    except (UserError, OSError, ValueError, TypeError, AttributeError):
        return 0


def read_table(run_dir: Path) -> dict[str, np.ndarray]:
    """metrics.jsonl as columns: "step", "loss", "lr", "time" (NaN where a row lacks it), "images/s"
    (from the step times and `images_per_step`, NaN where unknown) and "loss: <phase>" per phase.
    A step written twice (a resumed run) counts once: the last."""
    import numpy as np

    rows: dict[int, dict[str, Any]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    steps = sorted(rows)
    phases = sorted({str(k) for r in rows.values() if isinstance(r.get("losses"), dict) for k in r["losses"]})

    def column(get: Any) -> np.ndarray:
        out = np.full(len(steps), np.nan)
        for i, s in enumerate(steps):
            try:
                value = get(rows[s])
                out[i] = float(value) if value is not None else np.nan
            except (KeyError, TypeError, ValueError, AttributeError):
                pass
        return out

    table = {"step": np.asarray(steps, dtype=np.float64), "loss": column(lambda r: r["loss"]),
             "lr": column(lambda r: r.get("lr")), "time": column(lambda r: r.get("time"))}
    table["images/s"] = rates_from_times(table["step"], table["time"], images_per_step(run_dir))
    for name in phases:
        table[f"loss: {name}"] = column(lambda r, n=name: (r.get("losses") or {}).get(n))
    return table


def rates_from_times(steps: np.ndarray, times: np.ndarray, per_step: int) -> np.ndarray:
    """images/s at each step: `per_step` over the median time of the last RATE_WINDOW consecutive
    steps (the pause of a preview or a save at one step does not make the speed dip); NaN where the
    step before is missing (the first step, a resumed run's first) or the batch size is unknown."""
    import numpy as np

    out = np.full(len(steps), np.nan)
    if per_step <= 0 or len(steps) < 2:
        return out
    dts: list[float] = []
    for i in range(1, len(steps)):
        dt = times[i] - times[i - 1]
        if steps[i] - steps[i - 1] != 1 or not np.isfinite(dt) or dt <= 0:
            dts = []  # a new stretch (resumed: its clock restarts)
            continue
        dts = (dts + [float(dt)])[-RATE_WINDOW:]
        out[i] = per_step / float(np.median(dts))
    return out


CSV_COLUMNS = ("step", "loss", "smoothed loss", "lr", "time", "images/s", "validation loss")


def metrics_csv(table: dict[str, np.ndarray], smoothed: np.ndarray, validation: tuple[np.ndarray, np.ndarray],
                rates: dict[int, float] | None = None) -> str:
    """The run's numbers as CSV text: one row per step, the CSV_COLUMNS, then one column per phase
    when there are several ("loss: generator", …). `rates` (images/s a live run reported, by step)
    win over the ones worked out from the step times; empty cells where a number is unknown."""
    import numpy as np

    import csv
    import io

    phases = [k for k in table if k.startswith("loss: ")]
    val = {int(s): float(v) for s, v in zip(*validation)}
    rates = rates or {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(CSV_COLUMNS) + phases)

    def cell(value: Any) -> str:
        if value is None:
            return ""
        value = float(value)
        return repr(value) if math.isfinite(value) else ""

    lines: list[tuple[int, list[str]]] = []
    for i, step in enumerate(table["step"]):
        s = int(step)
        rate = rates.get(s, table["images/s"][i])
        lines.append((s, [str(s), cell(table["loss"][i]), cell(smoothed[i] if i < len(smoothed) else None),
                          cell(table["lr"][i]), cell(table["time"][i]), cell(rate), cell(val.pop(s, None))]
                      + [cell(table[p][i]) for p in phases]))
    for s, v in val.items():  # measured with no training step there: the untrained model (step 0)
        lines.append((s, [str(s), "", "", "", "", "", cell(v)] + [""] * len(phases)))
    lines.sort(key=lambda line: line[0])
    writer.writerows(row for _s, row in lines)
    return out.getvalue()


def write_metrics_csv(path: Path, text: str) -> None:
    from transferstudio.core.atomic import write_text_atomic

    write_text_atomic(Path(path), text)
