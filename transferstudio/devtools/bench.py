"""`python -m transferstudio.devtools.bench`: training speed and memory figures, printed, never asserted.

Runs a few optimizer steps of the real engine per setting on the same images and reports each
setting's s/step and images/s, and its ratio to the first (reference) setting in the same
process, plus peak memory (process RSS high-water mark; CUDA peak when on a GPU).
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from transferstudio.core.events import EventHandler

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = {
    "full fp32": dict(method="full"),
    "lora r16": dict(method="lora", rank=16, alpha=16),
    "lora r4": dict(method="lora", rank=4, alpha=4),
    "dora r16": dict(method="lora", rank=16, alpha=16, dora=True),
    "full + grad ckpt": dict(method="full", gradient_checkpointing=True),
}


class StepTiming(EventHandler):
    """Seconds between optimizer steps (after two warm-up steps) and the engine's images/s."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.times: list[float] = []
        self.rates: list[float] = []
        self.last: float | None = None

    def on_step(self, event: Any) -> None:
        now = time.perf_counter()
        if self.last is not None and event.step > 2:  # skip warm-up steps
            self.times.append(now - self.last)
            self.rates.append(event.images_per_s)
        self.last = now

    def on_failed(self, event: Any) -> None:
        print(f"{self.name:<18} failed: {event.message}")


def main(argv: list[str] | None = None) -> int:
    import torch

    from transferstudio.project.project import create_project
    from transferstudio.starter.sample import sample_config, sample_images, starter_model
    from transferstudio.training.trainer import TrainJob, train

    parser = argparse.ArgumentParser(prog="python -m transferstudio.devtools.bench")
    parser.add_argument("--backbone", type=Path, default=None, help="default: the starter model")
    parser.add_argument("--images", type=Path, default=None, help="default: the sample images")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args(argv)

    backbone = args.backbone or starter_model()
    images = args.images or sample_images()
    print(f"backbone {backbone}\nimages   {images}\ntorch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    print(f"{'setting':<18} {'s/step':>8} {'img/s':>8} {'× ref':>7} {'peak RSS':>10} {'CUDA peak':>10}")
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(SETTINGS.items()):
            config = sample_config(steps=args.steps, batch_size=args.batch_size, preview_every=0,
                                   checkpoint_every=10**6, device=args.device, precision=args.precision,
                                   **overrides)
            project = create_project(Path(tmp) / f"p{i}", backbone=backbone, images=images, config=config)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            timing = StepTiming(name)
            timing.run(train(TrainJob(project)))
            times, rates = timing.times, timing.rates
            if not times:
                continue
            per_step = sum(times) / len(times)
            reference = reference or per_step
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cuda = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if torch.cuda.is_available() else "-"
            print(f"{name:<18} {per_step:>8.3f} {sum(rates) / len(rates):>8.1f} "
                  f"{per_step / reference:>7.2f} {rss:>8.0f} MB {cuda:>10}")
    print("(× ref: time per step relative to the first setting, measured in this process; "
          "peak RSS is the process high-water mark so far)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
