"""Soak: 300 steps on the starter model in 30 pause / resume / stop / continue cycles, driven
through the engine's public interface from another thread, as the window drives it (issue 12).

Each cycle is a new `train(TrainJob(...))` on a worker thread that continues the run from its
last checkpoint; the controlling thread pauses it, resumes it, and stops it (which saves).
After a warm-up, the process's resident memory must not grow by 5 % or more, no thread may be
left behind, and metrics.jsonl must hold every step from 1 to 300 exactly once.
"""
from __future__ import annotations

import gc
import json
import os
import queue
import resource
import threading
import time

import pytest

from transferstudio.core.commands import Commands
from transferstudio.core.events import Failed, Finished, Paused, Resumed, Started, Step, Stopped
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.training.trainer import TrainJob, train

TOTAL, CYCLES, WARM_UP = 300, 30, 5


def _rss_bytes() -> int:
    """Resident memory now (/proc/self/statm), or the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def _cycle(project_folder, stop_at: int, pause_at: int) -> list:
    """One `train` on a worker thread, in lock-step with this thread: after each Step the
    worker waits until this thread has decided what to command (so a command lands after
    exactly that step), while Paused blocks the engine itself until `resume()`."""
    commands = Commands()
    events: queue.Queue = queue.Queue()
    decided = threading.Event()

    def worker() -> None:
        try:
            for event in train(TrainJob(load_project(project_folder), steps=TOTAL), commands):
                events.put(event)
                if isinstance(event, Step):
                    decided.wait(60)
                    decided.clear()
        finally:
            events.put(None)

    thread = threading.Thread(target=worker, name="soak-training")
    thread.start()
    seen = []
    while True:
        event = events.get(timeout=120)
        if event is None:
            break
        seen.append(event)
        if isinstance(event, Step):
            if event.step == pause_at:
                commands.pause()
            if event.step == stop_at:
                commands.stop()
            decided.set()
        elif isinstance(event, Paused):
            assert thread.is_alive()
            commands.resume()  # from this thread, while the engine blocks in wait_while_paused
    thread.join(60)
    assert not thread.is_alive()
    return seen


@pytest.mark.slow
def test_soak_300_steps_in_30_pause_resume_stop_continue_cycles(tmp_path):
    from tiny_ddpm import make_images

    from transferstudio.starter.sample import starter_model

    images = make_images(tmp_path / "images", n=6, size=32)
    config = TrainConfig(method="lora", rank=4, alpha=4.0, steps=TOTAL, learning_rate=1e-3, batch_size=2,
                         preview_every=100, preview_steps=2, preview_seeds=[1], checkpoint_every=25,
                         keep_checkpoints=2)
    project = create_project(tmp_path / "soak", backbone=starter_model(), images=images, config=config)
    rss: list[int] = []
    ends: list[str] = []
    t0 = time.perf_counter()
    per = TOTAL // CYCLES
    for cycle in range(CYCLES):
        start, stop_at = cycle * per, (cycle + 1) * per
        seen = _cycle(project.folder, stop_at=stop_at if stop_at < TOTAL else -1, pause_at=start + per // 2)
        started, end = seen[0], seen[-1]
        assert isinstance(started, Started) and started.start_step == start, (cycle, seen[-1])
        assert not isinstance(end, Failed), end
        kinds = [type(e) for e in seen]
        assert Paused in kinds and Resumed in kinds, f"cycle {cycle} paused and resumed"
        if stop_at < TOTAL:
            assert isinstance(end, Stopped) and end.step == stop_at and end.checkpoint is not None
        else:
            assert isinstance(end, Finished) and end.step == TOTAL
        ends.append(type(end).__name__)
        del seen, started, end
        gc.collect()
        rss.append(_rss_bytes())
        if cycle == WARM_UP - 1:  # libraries start their one helper thread (tqdm's monitor) once
            threads_warm = {t.ident for t in threading.enumerate()}
    elapsed = time.perf_counter() - t0

    assert ends == ["Stopped"] * (CYCLES - 1) + ["Finished"]
    runs = load_project(project.folder).runs()
    assert len(runs) == 1, "every cycle continued the same run"
    steps = [json.loads(line)["step"] for line in (runs[0] / "metrics.jsonl").read_text().splitlines() if line]
    assert steps == list(range(1, TOTAL + 1)), "every step exactly once"
    assert not (project.folder / "training.lock").exists()

    leaked = [t for t in threading.enumerate() if t.ident not in threads_warm and t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
    assert not [t for t in threading.enumerate() if t.name == "soak-training"]
    warm = rss[WARM_UP - 1]
    late = sorted(rss[-3:])[1]  # median of the last three cycles: one allocator hiccup is not a leak
    growth = (late - warm) / warm
    print(f"\nsoak: {CYCLES} cycles, {TOTAL} steps in {elapsed:.1f} s; RSS after warm-up "
          f"{warm / 2**20:.1f} MB, at the end {late / 2**20:.1f} MB ({growth:+.2%}); "
          f"per cycle MB: {[round(r / 2**20) for r in rss]}")
    assert growth < 0.05, f"memory grew {growth:.1%} after warm-up: {[round(r / 2**20) for r in rss]} MB"
