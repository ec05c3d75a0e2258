"""`python -m transferstudio.devtools.bench_cuda`: full-size UNets on a GPU — s/step, peak memory
and model FLOPs utilisation (MFU) — for the README's CUDA figures (`bash run.sh gpu-check`).

Random-weight SD 1.5 (512 px) and SDXL (1024 px) UNets built from the bundled configs, LoRA rank
16 on the attention projections (as the app puts it), bf16 autocast, AdamW; with and without
gradient checkpointing. FLOPs of one step are counted once with torch's FlopCounterMode; MFU =
FLOPs per second / the GPU's dense bf16 peak (`--peak-tflops`, default 989 for an H100/H200 SXM).
With `--tiny` the same code runs a scaled-down UNet on any device (a check of the script).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {"SD 1.5": ("sd1", 512), "SDXL": ("sdxl", 1024)}


def unet_config(key: str, tiny: bool) -> dict[str, Any]:
    from transferstudio.backbones.sdfiles._paths import loading_root

    config = json.loads((loading_root() / key / "unet" / "config.json").read_text(encoding="utf-8"))
    if tiny:  # same block layout, narrow channels: runs anywhere in seconds
        config["block_out_channels"] = [32 * (i + 1) for i in range(len(config["block_out_channels"]))]
        config["cross_attention_dim"] = 64 if key == "sd1" else 128
        config["attention_head_dim"] = 8
        config["transformer_layers_per_block"] = 1
        if key == "sdxl":
            config["projection_class_embeddings_input_dim"] = 6 * config.get("addition_time_embed_dim", 256) + 64
            config["addition_time_embed_dim"] = config.get("addition_time_embed_dim", 256)
    return config


def conditioning(key: str, config: dict[str, Any], batch: int, side: int, device: Any) -> dict[str, Any]:
    import torch

    hidden = torch.randn(batch, 77, config["cross_attention_dim"], device=device)
    if key != "sdxl":
        return {"encoder_hidden_states": hidden}
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    time_ids = torch.tensor([[side, side, 0, 0, side, side]] * batch, device=device, dtype=torch.float32)
    return {"encoder_hidden_states": hidden,
            "added_cond_kwargs": {"text_embeds": torch.randn(batch, pooled, device=device), "time_ids": time_ids}}


def bench_case(name: str, key: str, side: int, *, device: Any, batch: int, steps: int, checkpointing: bool,
               tiny: bool, peak_tflops: float) -> dict[str, Any]:
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    from transferstudio.training.speed import fused_optimizer_options, use_sdpa

    config = unet_config(key, tiny)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    use_sdpa(unet)
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, **fused_optimizer_options(params, device))
    latent = side // 8
    noisy = torch.randn(batch, 4, latent, latent, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    cond = conditioning(key, config, batch, side, device)
    amp = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = unet(noisy, timesteps, **cond).sample.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"case": name + (" + grad ckpt" if checkpointing else ""), "side": side, "batch": batch,
            "s_per_step": per_step, "images_per_s": batch / per_step, "peak_gib": peak,
            "tflop_per_step": flops / 1e12, "mfu": flops / per_step / (peak_tflops * 1e12),
            "parameters": sum(p.numel() for p in unet.parameters())}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m transferstudio.devtools.bench_cuda")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--tiny", action="store_true", help="narrow UNets: check the script on any device")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure (use --device cpu --tiny to check the script)")
        return 0
    if device.type == "cuda":
        print(torch.cuda.get_device_name(0), f"CUDA {torch.version.cuda}, torch {torch.__version__}")
    print(f"{'case':<26} {'px':>5} {'batch':>5} {'s/step':>8} {'img/s':>7} {'peak GiB':>9} {'TFLOP/step':>11} "
          f"{'MFU':>6}")
    for name, (key, side) in CASES.items():
        side = 64 if args.tiny else side
        for checkpointing in (False, True):
            row = bench_case(name, key, side, device=device, batch=args.batch, steps=args.steps,
                             checkpointing=checkpointing, tiny=args.tiny, peak_tflops=args.peak_tflops)
            print(f"{row['case']:<26} {row['side']:>5} {row['batch']:>5} {row['s_per_step']:>8.3f} "
                  f"{row['images_per_s']:>7.2f} {row['peak_gib']:>9.2f} {row['tflop_per_step']:>11.2f} "
                  f"{row['mfu']:>6.1%}")
            del row
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("(random weights, LoRA rank 16 on attention, bf16 autocast on CUDA; MFU against "
          f"{args.peak_tflops:.0f} TFLOPS; FLOPs counted by torch.utils.flop_counter)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
