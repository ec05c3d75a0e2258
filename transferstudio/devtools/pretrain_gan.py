"""Pretrain the starter GAN that ships in resources/starter_gan.

    python -m transferstudio.devtools.pretrain_gan --out resources/starter_gan

Renders the procedural landscapes the starter diffusion model and starter VAE learned (seed 0:
landscapes 0…N-1) as PNG files, then runs exactly what `transferstudio pretrain --family gan`
runs on them (the ordinary Trainer; Ctrl-C stops it, the same command continues it). The same
seed, settings and thread count give bit-identical weights. Afterwards it writes samples.png
(32 samples from fixed latents, a row at truncation 0.7, and real landscapes) and MODEL_CARD.md
with the figures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from transferstudio.starter import procedural

CARD_SEEDS = list(range(1, 33))


def render_landscapes(folder: Path, count: int, size: int, seed: int, log=print) -> Path:
    """PNG files of landscapes seed*10_000_000 + i (the starter diffusion model's ranges); kept for reuse."""
    folder = Path(folder)
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{count} {size} {seed}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base = seed * 10_000_000
    for i in range(count):
        procedural.landscape(base + i, size).save(folder / f"landscape_{i:05d}.png")
    done.write_text(f"{count} {size} {seed}")
    log(f"rendered {count} landscapes at {size} px in {time.time() - t0:.0f} s")
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the same count reruns bit-identically)")
    p.add_argument("--data", type=Path, default=None, help="where the landscapes are rendered (default: a temp folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transferstudio.cli import _run_training
    from transferstudio.starter.pretrain import PretrainJob, pretrain

    import tempfile

    data = args.data or Path(tempfile.gettempdir()) / f"transferstudio-landscapes-{args.resolution}-{args.images}-{args.seed}"
    render_landscapes(data, args.images, args.resolution, args.seed)
    job = PretrainJob(family="gan", images=data, out=args.out, steps=args.steps, seed=args.seed,
                      resolution=args.resolution, batch_size=args.batch_size, learning_rate=args.lr)
    t0 = time.time()
    code = _run_training(lambda commands: pretrain(job, commands))
    if code != 0:
        return code
    write_card(args.out, data, time.time() - t0, args)
    return 0


def write_card(folder: Path, data: Path, wall: float, args: argparse.Namespace) -> None:
    from transferstudio.backbones.gan import GANFamily
    from transferstudio.backbones.gan_backbone import to_pictures
    from transferstudio.starter.metric import swd
    from transferstudio.starter.procedural import make_grid

    backbone = GANFamily().load(folder)
    samples = backbone.generate(CARD_SEEDS)
    truncated = backbone.generate(CARD_SEEDS[:8], truncation=0.7)
    real = [procedural.landscape_array(9_000_000 + i, args.resolution) for i in range(8)]
    big = [im.resize((64, 64), 0) for im in to_pictures(torch.cat([samples, truncated]))]
    big += [procedural.Image.fromarray(a).resize((64, 64), 0) for a in real]
    make_grid(big, 8).save(folder / "samples.png")
    held_out = np.stack([procedural.landscape_array(9_000_000 + i, args.resolution) for i in range(256)])
    generated = ((backbone.generate(list(range(1000, 1256))) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    distance = swd(generated, held_out, normalize="reference")["average"]
    rows = [json.loads(line) for line in (folder / "pretraining-metrics.jsonl").read_text().splitlines() if line]
    last = rows[-200:]
    accuracy = np.mean([r.get("signals", {}).get("d_accuracy", np.nan) for r in last])
    per_step = (rows[-1]["time"] - rows[0]["time"]) / max(1, len(rows) - 1)
    n_g = sum(p.numel() for p in backbone.generator.parameters())
    n_d = sum(p.numel() for p in backbone.discriminator.parameters())
    size_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
    card = f"""# Starter GAN (landscapes, {args.resolution} px)

A compact StyleGAN2-like GAN (mapping network, modulated convolutions, skip toRGB; residual
discriminator with a minibatch-deviation channel), pretrained on {args.images:,} procedural landscapes
(sky, sun or moon, ridges, trees, water) so that few-shot adaptation works on a CPU with no download.

- Generator {n_g / 1e6:.2f} M weights (the EMA average is stored), discriminator {n_d / 1e6:.2f} M; {size_mb:.1f} MB in all.
- Command: `python -m transferstudio.devtools.pretrain_gan --out resources/starter_gan` (seed {args.seed},
  {args.steps} steps, batch {args.batch_size}, Adam lr {args.lr} with β = (0, 0.99), R1 γ 0.05 every 16 steps,
  no augmentation, generator EMA); what it runs is `transferstudio pretrain --family gan`. The same seed,
  settings and thread count ({args.threads}) give bit-identical weights.
- Time: {wall / 60:.1f} min on this machine's 2 CPU cores ({per_step:.2f} s/step).
- Discriminator accuracy over the last 200 steps: {100 * accuracy:.0f}% (50% = it cannot tell).
- Sliced Wasserstein distance (×1e3, `starter.metric.swd`, colour counted) of 256 samples to 256
  held-out landscapes: {distance:.1f}.

`samples.png`: 32 samples from seeds 1–32 (rows 1–4), seeds 1–8 at truncation 0.7 (row 5), real
landscapes (row 6). `pretraining-metrics.jsonl`: the losses and the discriminator's outputs per step.
"""
    (folder / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(card)


if __name__ == "__main__":
    raise SystemExit(main())
