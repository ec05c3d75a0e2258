"""`python -m transferstudio.devtools.bench_sd`: LoRA step rate on a tiny Stable Diffusion 1.x,
TransferStudio's engine beside the training loop of diffusers' example LoRA trainer, in one process.

The model has the shape of diffusers' own tiny test pipeline (UNet 32/64 channels with cross
attention, 2-level VAE, 5-layer CLIP text encoder of width 32) with the real CLIP tokenizer
shipped under resources/loading/sd1; random weights (speed does not depend on them). Settings
for every row: batch 4, 64 px, LoRA rank 4 on the attention projections, AdamW, fp32, the
sample images with their captions.

The reference row is written here to do what `examples/text_to_image/train_text_to_image_lora.py`
does at every step (read for what it does, not copied): the pictures decoded and transformed by
torchvision per batch, captions tokenised up front, under an `accelerate.Accelerator`; per step
the VAE encodes the batch and a latent is sampled, noise and timesteps are drawn, the text encoder
runs, the UNet (LoRA added with `unet.add_adapter`) predicts, MSE loss, backward, gradient
clipping, AdamW step, scheduler step. Timings skip the first steps (warm-up) and report s/step
and the ratio to the reference; "with set-up" adds the one-time encoding of the cache.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WARMUP = 3
RANK = 4
BATCH = 4
RESOLUTION = 64


def make_bench_sd(folder: Path) -> Path:
    """A tiny SD 1.x pipeline folder (random weights) with the shipped CLIP tokenizer."""
    import json
    import shutil

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from transferstudio.backbones.sdfiles._paths import loading_root

    torch.manual_seed(0)
    folder = Path(folder)
    UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                         block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=8, norm_num_groups=32).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=2, norm_num_groups=32, sample_size=64).save_pretrained(folder / "vae")
    tokenizer = loading_root() / "sd1" / "tokenizer"
    shutil.copytree(tokenizer, folder / "tokenizer")
    vocab = json.loads((tokenizer / "vocab.json").read_text(encoding="utf-8"))
    eos = vocab["<|endoftext|>"]
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=5,
                                 num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                 bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos)
                  ).save_pretrained(folder / "text_encoder")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}), encoding="utf-8")
    return folder


def example_steps(model: Path, pictures: list[tuple[Path, str]], steps: int, seed: int = 0) -> Iterator[bool]:
    """The example trainer's set-up, then its per-step work (see the module doc), yielding after
    each step (True: a plain step)."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from PIL import Image
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer

    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    torch.manual_seed(seed)
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    lora = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    shape = transforms.Compose([transforms.Resize(RESOLUTION, interpolation=transforms.InterpolationMode.BILINEAR),
                                transforms.CenterCrop(RESOLUTION), transforms.RandomHorizontalFlip(),
                                transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    ids = tokenizer([c for _, c in pictures], max_length=tokenizer.model_max_length, padding="max_length",
                    truncation=True, return_tensors="pt").input_ids

    class Pictures(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(pictures)

        def __getitem__(self, i: int) -> dict[str, Any]:
            with Image.open(pictures[i][0]) as im:
                return {"pixel_values": shape(im.convert("RGB")), "input_ids": ids[i]}

    loader = torch.utils.data.DataLoader(Pictures(), shuffle=True, batch_size=BATCH, drop_last=True, num_workers=0)
    schedule = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    unet, optimizer, loader, schedule = accelerator.prepare(unet, optimizer, loader, schedule)

    step = 0
    unet.train()
    while step < steps:
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"]).latent_dist.sample() * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                          device=latents.device).long()
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                hidden = text_encoder(batch["input_ids"], return_dict=False)[0]
                prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
                loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
                float(accelerator.gather(loss.detach().repeat(BATCH)).mean())  # the example logs the mean loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            yield True
            step += 1
            if step >= steps:
                return


def engine_steps(model: Path, images: Path, folder: Path, steps: int, **settings: Any) -> Iterator[bool]:
    """TransferStudio's trainer with the same settings, yielding at each optimizer step: True when
    nothing but that step happened since the last yield (no set-up, caching or previews)."""
    from transferstudio.core.events import Failed, Step
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    config = TrainConfig(method="lora", rank=RANK, alpha=RANK, steps=steps, batch_size=BATCH, resolution=RESOLUTION,
                         learning_rate=1e-4, optimizer="adamw", precision="fp32", device="cpu", buckets=False,
                         crop="center", flip=True, preview_every=0, checkpoint_every=10**6, validation="none",
                         trigger="city", seed=0, **settings)
    project = create_project(folder, backbone=model, images=images, config=config)
    plain = False
    for event in train(TrainJob(project)):
        if isinstance(event, Failed):
            print(f"  failed: {event.message} {event.advice}")
        if isinstance(event, Step):
            yield plain
            plain = True
        else:
            plain = False  # set-up, the cache's encoding, a preview or checkpoint: not a step's time


def main(argv: list[str] | None = None) -> int:
    import torch

    from transferstudio.data.scan import scan_images
    from transferstudio.starter.sample import sample_images

    parser = argparse.ArgumentParser(prog="python -m transferstudio.devtools.bench_sd")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--compile", action="store_true", help="add a row with torch.compile (minutes to compile)")
    args = parser.parse_args(argv)

    images = sample_images()
    pictures = [(r.path, r.caption) for r in scan_images(images, trigger="city").images]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; tiny SD 1.x, batch {BATCH}, "
          f"{RESOLUTION} px, LoRA rank {RANK}, {len(pictures)} pictures, {args.steps} steps ({WARMUP} warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        model = make_bench_sd(Path(tmp) / "tiny-sd1")
        runs = {"diffusers example loop": example_steps(model, pictures, args.steps),
                "TransferStudio, cache off": engine_steps(model, images, Path(tmp) / "off", args.steps, cache="off"),
                "TransferStudio (cache on)": engine_steps(model, images, Path(tmp) / "on", args.steps,
                                                          cache="memory")}
        if args.compile:
            runs["TransferStudio, + compile"] = engine_steps(model, images, Path(tmp) / "compiled", args.steps,
                                                             cache="memory", compile=True)
        rows = step_times(runs)
    reference = _median(rows["diffusers example loop"])
    print(f"{'':<28} {'s/step':>8} {'img/s':>8} {'speed × ref':>11}")
    for name, times in rows.items():
        if not times:
            print(f"{name:<28} no steps measured")
            continue
        per_step = _median(times)
        print(f"{name:<28} {per_step:>8.4f} {BATCH / per_step:>8.1f} {reference / per_step:>11.2f}")
    print("(median s/step after warm-up, the rows' steps taken in turn so a slower moment of the machine "
          "hits them all; speed × ref = the reference's s/step over the row's; one-time set-up such as the "
          "cache's encoding or compiling is not in it)")
    return 0


def step_times(runs: dict[str, Iterator[bool]]) -> dict[str, list[float]]:
    """Advance the runs one step each in turn until all end: each one's plain step times, after
    WARMUP steps."""
    rows: dict[str, list[float]] = {name: [] for name in runs}
    counts = dict.fromkeys(runs, 0)
    live = dict(runs)
    while live:
        for name, run in list(live.items()):
            started = time.perf_counter()
            plain = next(run, None)
            if plain is None:
                del live[name]
                continue
            counts[name] += 1
            if plain and counts[name] > WARMUP:
                rows[name].append(time.perf_counter() - started)
    return rows


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


if __name__ == "__main__":
    raise SystemExit(main())
