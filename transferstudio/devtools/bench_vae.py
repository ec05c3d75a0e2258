"""Seconds per step of VAE fine-tuning, decoder-only against full, measured in one process:
the starter VAE at its 32 px, and a full-size Stable Diffusion VAE (random weights from the
bundled SD 1.x config, so nothing is downloaded) at 256 px.

    python -m transferstudio.devtools.bench_vae [--steps 6] [--batch-size 4] [--device cpu|cuda]

Ratios are against the first row (starter VAE, decoder only); absolute times depend on the machine.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import transferstudio.core.offline  # noqa: F401


def _sd_vae(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL

    from transferstudio.backbones.sdfiles._paths import loading_root

    torch.manual_seed(0)
    AutoencoderKL.from_config(AutoencoderKL.load_config(loading_root() / "sd1" / "vae")).save_pretrained(
        folder, safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    import torch

    from transferstudio.devtools.bench import StepTiming
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.starter.sample import sample_images
    from transferstudio.core.paths import resource as bundled
    from transferstudio.training.trainer import TrainJob, train

    parser = argparse.ArgumentParser(prog="python -m transferstudio.devtools.bench_vae")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}")
    print(f"{'model':<28} {'method':<8} {'s/step':>8} {'× ref':>7} {'peak RSS':>10}")
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        models = [("starter VAE, 32 px", bundled("starter_vae"), 32),
                  ("SD 1.x VAE (random), 256 px", _sd_vae(Path(tmp) / "sd-vae"), 256)]
        for i, (name, backbone, size) in enumerate(models):
            for method in ("decoder", "full"):
                config = TrainConfig(method=method, steps=args.steps, batch_size=args.batch_size, resolution=size,
                                     preview_every=0, checkpoint_every=10**6, device=args.device, precision="fp32")
                project = create_project(Path(tmp) / f"p{i}-{method}", backbone=backbone, images=sample_images(),
                                         config=config)

                timing = StepTiming(f"{name} {method}")
                timing.run(train(TrainJob(project)))
                if not timing.times:
                    continue
                per_step = sum(timing.times) / len(timing.times)
                reference = reference or per_step
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{name:<28} {method:<8} {per_step:>8.3f} {per_step / reference:>7.2f} {rss:>8.0f} MB")
    print(f"(batch {args.batch_size}; × ref: time per step relative to the first row, in this process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
