"""Pretrain the starter backbone: a small unconditional DDPM UNet on procedural landscapes.

    python -m transferstudio.devtools.pretrain --out resources/starter --steps 4500 --seed 0 --threads 1

v-prediction with a cosine noise schedule is the default: an epsilon model of this size, briefly
trained, cannot choose an image's overall colour at high noise (its DDIM samples all drift to one
grey-pastel palette and stay grainy); predicting v gives it a direct estimate of the clean image there.

Writes a diffusers `DDPMPipeline` folder (model_index.json, unet/, scheduler/), a
MODEL_CARD.md and samples.png. A checkpoint is written to OUT/_checkpoint every
--ckpt-every steps; `--resume` continues from it. It is removed after a clean finish.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from transferstudio.starter import procedural

DEFAULT_CHANNELS = (32, 64, 64, 128)


def build_unet(size: int, channels=DEFAULT_CHANNELS, layers_per_block: int = 1):
    """UNet with attention only at the lowest resolution (cheap on a CPU)."""
    from diffusers import UNet2DModel

    n = len(channels)
    down = ["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)
    return UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3,
        layers_per_block=layers_per_block, block_out_channels=tuple(channels),
        down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=min(32, min(channels)), attention_head_dim=min(32, channels[-1]),
    )


SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def build_scheduler(prediction: str = "v_prediction", schedule: str = "cosine"):
    from diffusers import DDPMScheduler

    # "trailing" spacing makes few-step DDIM start from the last (pure-noise) timestep; with
    # "leading" it starts at t=980 and the v-model's samples score far worse (SWD 126 vs 90
    # after the demo's fine-tune). Training ignores it; samplers made from this config use it.
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHEDULES[schedule],
                         prediction_type=prediction, timestep_spacing="trailing")


@torch.no_grad()
def sample_ddim(unet, scheduler_config, n: int, seed: int = 0, steps: int = 50,
                batch: int = 32) -> np.ndarray:
    """Deterministic DDIM (eta=0) samples as (n, H, W, 3) uint8."""
    from diffusers import DDIMScheduler

    unet.eval()
    size = unet.config.sample_size
    out = []
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 3, size, size), generator=gen)
    for i in range(0, n, batch):
        sched = DDIMScheduler.from_config(scheduler_config)
        sched.set_timesteps(steps)
        x = noise[i:i + batch]
        for t in sched.timesteps:
            pred = unet(x, t).sample  # whatever the scheduler's prediction_type says
            x = sched.step(pred, t, x, eta=0.0).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def make_dataset(n: int, size: int, seed: int, log=print) -> torch.Tensor:
    t0 = time.time()
    base = seed * 10_000_000  # disjoint seed ranges per training seed
    chunks = []
    step = 2000
    for i in range(0, n, step):
        chunks.append(procedural.landscape_batch(range(base + i, base + min(n, i + step)), size))
    data = torch.from_numpy(np.concatenate(chunks)).permute(0, 3, 1, 2).contiguous()
    log(f"generated {n} landscapes at {size}px in {time.time() - t0:.1f}s")
    return data  # uint8 (N, 3, H, W)


def _to_model(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 127.5 - 1.0


def _save_atomic(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument("--steps", type=int, default=4500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="one-cycle peak learning rate")
    p.add_argument("--images", type=int, default=20000, help="landscapes in the training set")
    p.add_argument("--channels", default=",".join(map(str, DEFAULT_CHANNELS)))
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (0 = off)")
    p.add_argument("--offset-noise", type=float, default=0.0,
                   help="per-image, per-channel constant added to the training noise (helps an "
                        "epsilon model change overall brightness; v-prediction does not need it)")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="v_prediction",
                   help="what the UNet predicts; v-prediction gives a small model good colour at high noise")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="cosine",
                   help="noise schedule; cosine keeps more signal at mid noise on small images")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/_checkpoint")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    channels = tuple(int(c) for c in args.channels.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_dir = os.path.join(args.out, "_checkpoint")
    ckpt_path = os.path.join(ckpt_dir, "state.pt")

    def log(msg: str) -> None:
        print(msg, flush=True)

    torch.manual_seed(args.seed)
    unet = build_unet(args.size, channels)
    ema = copy.deepcopy(unet).requires_grad_(False) if args.ema > 0 else None
    sched = build_scheduler(args.prediction, args.schedule)
    n_params = sum(p.numel() for p in unet.parameters())
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                   pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed + 1)
    losses: list[float] = []
    step, elapsed_before = 0, 0.0

    if args.resume and os.path.exists(ckpt_path):
        st = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if st["args"]["steps"] != args.steps or st["args"]["size"] != args.size:
            log("checkpoint was made with different --steps/--size; refusing to resume")
            return 2
        unet.load_state_dict(st["unet"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        lr_sched.load_state_dict(st["lr_sched"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        losses, step, elapsed_before = st["losses"], st["step"], st["elapsed"]
        log(f"resumed at step {step}")
    elif args.resume:
        log("no checkpoint found; starting from scratch")

    log(f"UNet2DModel {args.size}px channels={channels}: {n_params / 1e6:.2f} M params, "
        f"{torch.get_num_threads()} threads")
    t_data = time.time()
    data = make_dataset(args.images, args.size, args.seed, log)
    t_data = time.time() - t_data
    alphas = sched.alphas_cumprod

    def checkpoint() -> None:
        os.makedirs(ckpt_dir, exist_ok=True)
        _save_atomic({
            "unet": unet.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(), "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "losses": losses, "step": step,
            "elapsed": elapsed_before + (time.time() - t_start), "args": vars(args),
        }, ckpt_path)

    t_start = time.time()
    t_log = time.time()
    unet.train()
    while step < args.steps:
        idx = torch.randint(0, data.shape[0], (args.batch,), generator=gen)
        x0 = _to_model(data[idx])
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=gen)
        if args.offset_noise:
            noise = noise + args.offset_noise * torch.randn((args.batch, 3, 1, 1), generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if args.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = F.mse_loss(unet(xt, t).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        step += 1
        losses.append(loss.item())
        if ema is not None:
            # warm-up so early weights do not dominate a short run
            d = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), unet.parameters()):
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            sps = (now - t_log) / args.log_every
            t_log = now
            el = elapsed_before + now - t_start
            log(f"step {step}/{args.steps} loss {np.mean(losses[-args.log_every:]):.4f} "
                f"lr {lr_sched.get_last_lr()[0]:.2e} {sps:.3f}s/step elapsed {el / 60:.1f}min "
                f"eta {(args.steps - step) * sps / 60:.1f}min")
        if step % args.ckpt_every == 0 and step < args.steps:
            checkpoint()

    wall = elapsed_before + time.time() - t_start
    final_loss = float(np.mean(losses[-100:]))
    final = ema if ema is not None else unet
    save_pipeline(final, sched, args.out)
    grid_seeds = 0
    samples = sample_ddim(final, sched.config, 32, seed=grid_seeds)
    grid = procedural.make_grid(list(samples), 8)
    grid = grid.resize((grid.width * 2, grid.height * 2), resample=0)  # nearest: show real pixels
    grid.save(os.path.join(args.out, "samples.png"))
    write_model_card(args, channels, n_params, final_loss, wall, losses, t_data)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log(f"done: {step} steps, final loss (mean last 100) {final_loss:.4f}, wall {wall / 60:.1f} min")
    return 0


def save_pipeline(unet, scheduler, out: str) -> None:
    from diffusers import DDPMPipeline

    unet.eval()
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)


def write_model_card(args, channels, n_params, final_loss, wall, losses, t_data=0.0) -> None:
    cmd = ["python", "-m", "transferstudio.devtools.pretrain", "--out", args.out,
           "--steps", str(args.steps), "--seed", str(args.seed), "--size", str(args.size),
           "--batch", str(args.batch), "--lr", str(args.lr), "--images", str(args.images),
           "--channels", ",".join(map(str, channels)), "--ema", str(args.ema),
           "--offset-noise", str(args.offset_noise), "--prediction", args.prediction,
           "--schedule", args.schedule, "--threads", str(torch.get_num_threads())]
    curve = ", ".join(f"{i}: {np.mean(losses[max(0, i - 100):i]):.4f}"
                      for i in range(100, len(losses) + 1, max(100, len(losses) // 10 // 100 * 100)))
    target = "noise" if args.prediction == "epsilon" else "v"
    card = f"""# TransferStudio starter backbone

A small unconditional diffusion model (diffusers `DDPMPipeline`) pretrained from scratch on
procedural landscapes, so that the transfer-learning demo (fine-tuning on a few city skylines)
runs on a CPU in minutes. It is a teaching/demo model, not a general image generator.

## Data
{args.images:,} procedural landscapes from `transferstudio.starter.procedural.landscape`
(seeds {args.seed * 10_000_000}..{args.seed * 10_000_000 + args.images - 1}), {args.size}x{args.size} RGB:
skies at dawn/day/dusk/night, sun or moon, stars, clouds, mountain ridges (some with snow),
hills, lakes with reflections, trees. Random horizontal flip. No external data.

## Architecture
`UNet2DModel`, sample_size {args.size}, block_out_channels {tuple(channels)}, one ResNet layer per
block, self-attention only in the lowest-resolution blocks, {n_params:,} parameters
({n_params * 4 / 1e6:.1f} MB fp32, safetensors).
Scheduler: `DDPMScheduler`, 1000 steps, {args.schedule} betas
(`{SCHEDULES[args.schedule]}`), {args.prediction} prediction, "trailing" timestep spacing
(few-step DDIM starts from pure noise).

## Training
- Steps: {args.steps}, batch {args.batch}, AdamW (weight decay 0), grad-norm clip 1.0
- Learning rate: one-cycle, peak {args.lr:g} at 15% of steps, cosine anneal
- Offset noise {args.offset_noise} (a per-image, per-channel constant added to the noise; 0 = off)
- Saved weights: exponential moving average, decay {args.ema} (0 = raw weights)
- Seed {args.seed}; torch threads {torch.get_num_threads()}
- Final loss (mean MSE of the {target} target over the last 100 steps): **{final_loss:.4f}**
- Loss curve (mean over the previous 100 steps): {curve}
- Wall time: {wall / 60:.1f} min of training (+ {t_data:.0f} s generating the data) on a 2-core CPU
  shared with other processes (busy machines are slower)

`samples.png`: 32 DDIM samples (50 steps, eta 0, noise seed 0), shown at 2x with nearest-neighbour.

## Rebuild
```
{shlex.join(cmd)}
```
"""
    with open(os.path.join(args.out, "MODEL_CARD.md"), "w") as f:
        f.write(card)


if __name__ == "__main__":
    sys.exit(main())
