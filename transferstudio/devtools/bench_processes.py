"""`python -m transferstudio.devtools.bench_processes`: one process against N data-parallel
processes on the same project settings (tiny SD 1.x of bench_sd's shape, LoRA rank 4, 64 px,
global batch 4, the sample pictures), s/step after the first steps and the wall time with start-up.

On a CPU with 2 cores this is a correctness run more than a speed-up: the processes share the
cores (each gets half of them), and every process loads the whole global batch. Rows are run
1, N, 1 so a drift of the machine shows as two different one-process rows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WARMUP = 3


def _row(project_folder: Path, processes: int, steps: int) -> dict[str, Any]:
    from transferstudio.core.events import Failed, Step
    from transferstudio.project.project import load_project
    from transferstudio.training.launch import train_processes
    from transferstudio.training.trainer import TrainJob, train

    job = TrainJob(load_project(project_folder), steps=steps, fresh=True)
    started = time.perf_counter()
    events = train_processes(job, processes) if processes > 1 else train(job)
    stamps: list[float] = []
    for event in events:
        if isinstance(event, Step):
            stamps.append(time.perf_counter())
        elif isinstance(event, Failed):
            raise SystemExit(f"{processes} process(es): {event.message} {event.advice}")
    wall = time.perf_counter() - started
    gaps = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]
    return {"processes": processes, "s_per_step": statistics.median(gaps), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)

    from transferstudio.devtools.bench_sd import make_bench_sd
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.starter.sample import sample_images

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = make_bench_sd(tmp_path / "model")
        config = TrainConfig(resolution=64, batch_size=4, rank=4, alpha=4.0, steps=args.steps, preview_every=0,
                             preview_seeds=[1], preview_steps=2, checkpoint_every=10_000, validation="none")
        project = create_project(tmp_path / "project", backbone=model, images=sample_images(), config=config)
        rows = [_row(project.folder, n, args.steps) for n in (1, args.processes, 1)]
    base = statistics.mean(r["s_per_step"] for r in rows if r["processes"] == 1)
    print(f"tiny SD 1.x LoRA r4, 64 px, global batch 4, {args.steps} steps, {os.cpu_count()} CPU cores")
    print(f"{'processes':>9}  {'s/step':>7}  {'× one process':>13}  {'wall s (with start-up)':>22}")
    for r in rows:
        print(f"{r['processes']:>9}  {r['s_per_step']:7.3f}  {base / r['s_per_step']:13.2f}  {r['wall_s']:22.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
