"""A kill -9 campaign: `python -m transferstudio.devtools.kill_campaign --trials 24`.

Each trial makes a tiny project (a small unconditional DDPM built here, a few pictures; or the
starter with `--model starter`), alternating LoRA and full fine-tuning with a checkpoint every
2 or 3 steps, then runs `python -m transferstudio train` as a child process and kills it with
SIGKILL — one or two times — at a random moment: after a random number of steps plus a random
delay, or (every third trial) while a checkpoint is being written (a `.tmp-step-*` folder
exists; the child then writes each checkpoint file with a short pause, so the kill lands between
files). Then `train` runs again to the end. A trial is good when

  * every `train` after a kill started from the last complete checkpoint the kill left (or from
    step 0 when there was none),
  * the run ended at its last step with a complete, verified checkpoint,
  * `metrics.jsonl` holds steps 1..N exactly once,
  * no `.tmp-*` / `.old-*` folder is left in `checkpoints/`, and no run folder is left without a
    complete checkpoint (an orphan).

It prints one line per trial and the counts; the exit status is 0 when every trial was good.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

CHILD = "child"  # `python -m transferstudio.devtools.kill_campaign child DELAY -- train …`


@dataclass
class Trial:
    index: int
    method: str
    every: int
    steps: int
    in_write: bool
    kills: list[dict] = field(default_factory=list)  # one per kill: step killed at, last complete, tmp seen
    problems: list[str] = field(default_factory=list)
    orphans: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.orphans


# --- the world --------------------------------------------------------------------------------

def make_model(folder: Path) -> Path:
    """A tiny DDPMPipeline folder (16 px, two UNet levels): a step takes milliseconds."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        folder, safe_serialization=True)
    return folder


def make_images(folder: Path, n: int = 6, size: int = 24) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.zeros((size, size, 3), np.uint8)
        arr[...] = rng.integers(0, 60, 3)
        a, b = sorted(rng.integers(2, size - 2, 2))
        arr[a:b + 2, a:b + 2] = rng.integers(150, 255, 3)
        Image.fromarray(arr).save(folder / f"img_{i:02d}.png")
    return folder


def make_project(folder: Path, model: Path, images: Path, *, method: str, steps: int, every: int) -> Path:
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project

    config = TrainConfig(method=method, steps=steps, checkpoint_every=every, keep_checkpoints=2, batch_size=2,
                         preview_every=0, preview_steps=2, preview_seeds=[1], learning_rate=1e-3, seed=7)
    create_project(folder, backbone=model, images=images, config=config)
    return folder


# --- looking at a project ---------------------------------------------------------------------

def run_folders(project: Path) -> list[Path]:
    runs = project / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) if runs.is_dir() else []


def last_good_step(project: Path) -> int:
    """The step `train` should continue from: the newest whole complete checkpoint of the newest
    run that has one (0: none)."""
    from transferstudio.adapt.checkpoints import complete_checkpoints, newest_good

    for run in reversed(run_folders(project)):
        good, _bad = newest_good(complete_checkpoints(run))
        if good is not None:
            return good.step
    return 0


def tmp_folders(project: Path) -> list[Path]:
    return [p for run in run_folders(project) if (run / "checkpoints").is_dir()
            for p in (run / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".old-"))]


def metrics_steps(run: Path) -> list[int]:
    steps = []
    try:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return steps
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            steps.append(-1)
    return steps


# --- the child --------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def start_train(project: Path, log: Path, slow_writes: float = 0.0) -> subprocess.Popen:
    if slow_writes:
        argv = [sys.executable, "-m", "transferstudio.devtools.kill_campaign", CHILD, str(slow_writes), "--",
                "train", str(project)]
    else:
        argv = [sys.executable, "-m", "transferstudio", "train", str(project)]
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(),
                            start_new_session=True)


def child(argv: Sequence[str]) -> int:
    """`train` with a pause after each checkpoint file is written, so that a kill can land
    between the files of one checkpoint."""
    delay = float(argv[0])
    rest = list(argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:])
    import safetensors.torch as st
    import torch

    real_save_file, real_save = st.save_file, torch.save

    def save_file(*args, **kwargs):
        out = real_save_file(*args, **kwargs)
        time.sleep(delay)
        return out

    def save(*args, **kwargs):
        out = real_save(*args, **kwargs)
        time.sleep(delay)
        return out

    st.save_file, torch.save = save_file, save
    from transferstudio.cli import main

    return main(rest)


def _wait_for(proc: subprocess.Popen, condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return bool(condition())
        time.sleep(0.005)
    return False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --- one trial --------------------------------------------------------------------------------

def _started_at(log: Path) -> int | None:
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.search(r"resuming at step (\d+)", text)
    if found:
        return int(found.group(1))
    return 0 if re.search(r"^training of \d+", text, re.M) else None


def run_trial(trial: Trial, workdir: Path, model: Path, images: Path, rng: random.Random, timeout: float) -> Trial:
    project = make_project(workdir / f"trial-{trial.index:02d}", model, images, method=trial.method,
                           steps=trial.steps, every=trial.every)
    logs = workdir / f"trial-{trial.index:02d}-logs"
    logs.mkdir(exist_ok=True)
    expected = 0  # where the next `train` should start
    kills = rng.choice((1, 1, 2))
    finished = False
    for k in range(kills):
        log = logs / f"kill-{k + 1}.txt"
        before = set(tmp_folders(project))  # left by an earlier kill: not this write
        proc = start_train(project, log, slow_writes=0.15 if trial.in_write else 0.0)
        target = rng.randint(0 if trial.in_write else 1, trial.steps - 1)

        def reached() -> bool:
            runs = run_folders(project)
            return bool(runs) and len(metrics_steps(runs[-1])) >= target

        if trial.in_write:
            # kill while a checkpoint is being written: the first checkpoint after a random step,
            # once its temporary folder appears, at a random moment among its files (each written
            # file is followed by a 0.15 s pause)
            hit = _wait_for(proc, lambda: reached() and bool(set(tmp_folders(project)) - before), timeout)
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            # kill after a random number of steps, at a random moment of the next one(s)
            hit = _wait_for(proc, reached, timeout)
            time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:  # it ended by itself before the kill: not a kill point
            if proc.returncode != 0:
                trial.problems.append(f"train {k + 1} failed before the kill (status {proc.returncode})")
            finished = True
            break
        tmp_seen = bool(set(tmp_folders(project)) - before)
        _kill(proc)
        start = _started_at(log)
        if start is not None and start != expected:
            trial.problems.append(f"train {k + 1} started at step {start}, expected {expected}")
        runs = run_folders(project)
        expected = last_good_step(project)
        trial.kills.append({"at_step": len(metrics_steps(runs[-1])) if runs else 0, "tmp": tmp_seen,
                            "hit": hit, "last_good": expected})
    if not finished and expected >= trial.steps:
        # killed after the last checkpoint was complete (while the run was saying it finished):
        # the run is done, and `train` rightly refuses to train it further; check what it left
        finished = True
    if not finished:
        log = logs / "final.txt"
        proc = start_train(project, log)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            trial.problems.append("the final train did not finish in time")
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            trial.problems.append(f"the final train exited with {proc.returncode}: {' '.join(tail)}")
        start = _started_at(log)
        if trial.kills and start != expected:
            trial.problems.append(f"the final train started at step {start}, expected {expected}")
    check_project(project, trial)
    return trial


def check_project(project: Path, trial: Trial) -> None:
    from transferstudio.adapt.checkpoints import complete_checkpoints, problem

    runs = run_folders(project)
    orphans = [r for r in runs if not complete_checkpoints(r)]
    trial.orphans = len(orphans)
    if orphans:
        trial.problems.append(f"orphan run folder(s): {', '.join(r.name for r in orphans)}")
    finished = [r for r in runs if complete_checkpoints(r)]
    if not finished:
        trial.problems.append("no run has a complete checkpoint")
        return
    run = finished[-1]
    latest = complete_checkpoints(run)[-1]
    if latest.step != trial.steps:
        trial.problems.append(f"the last complete checkpoint is step {latest.step}, not {trial.steps}")
    why = problem(latest.path)
    if why:
        trial.problems.append(f"the last checkpoint is damaged: {why}")
    steps = metrics_steps(run)
    if steps != list(range(1, trial.steps + 1)):
        trial.problems.append(f"metrics steps are not 1..{trial.steps} once each: {steps}")
    left = tmp_folders(project)
    if left:
        trial.problems.append(f"left in checkpoints/: {', '.join(p.name for p in left)}")


# --- the campaign -----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == CHILD:
        return child(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m transferstudio.devtools.kill_campaign",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12, help="steps per run")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the projects here (default: a temp folder)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one train may take")
    args = parser.parse_args(argv)

    import tempfile

    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="kill-campaign-")) if own else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"kill campaign: {args.trials} trials, {args.steps} steps each, seed {seed}, in {workdir}", flush=True)
    started = time.monotonic()
    model = make_model(workdir / "model")
    images = make_images(workdir / "images")
    trials = []
    for i in range(args.trials):
        trial = Trial(index=i + 1, method=("lora", "full")[i % 2], every=rng.choice((2, 3)), steps=args.steps,
                      in_write=i % 3 == 2)
        run_trial(trial, workdir, model, images, rng, args.timeout)
        trials.append(trial)
        kills = ", ".join(f"step {k['at_step']}{' (in a checkpoint write)' if k['tmp'] else ''} -> resume from "
                          f"{k['last_good']}" for k in trial.kills)
        print(f"trial {trial.index:2d} {trial.method:4s} every {trial.every}: killed at {kills or 'no kill'}; "
              f"{'ok' if trial.ok else 'FAILED: ' + '; '.join(trial.problems)}", flush=True)
    kill_points = sum(len(t.kills) for t in trials)
    in_write = sum(1 for t in trials for k in t.kills if k["tmp"])
    before_first = sum(1 for t in trials for k in t.kills if k["last_good"] == 0)
    ok = sum(t.ok for t in trials)
    orphans = sum(t.orphans for t in trials)
    methods = {m: sum(len(t.kills) for t in trials if t.method == m) for m in ("lora", "full")}
    print(f"{len(trials)} trials, {kill_points} kill points (lora {methods['lora']}, full {methods['full']}; "
          f"{in_write} inside checkpoint writes, {before_first} before the first checkpoint): "
          f"{ok} resumed ok, {orphans} orphans, {len(trials) - ok} failed; {time.monotonic() - started:.0f} s",
          flush=True)
    if own and ok == len(trials):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok == len(trials) else 1


if __name__ == "__main__":
    raise SystemExit(main())
