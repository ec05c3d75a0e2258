"""The training engine: `train(job, commands)` yields events; it never touches a UI.

A run lives in `project/runs/<stamp>/`: config.json (snapshot), metrics.jsonl, log.txt,
previews/, checkpoints/. `train` continues the latest run from its last complete
checkpoint unless asked for a fresh run.
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from transferstudio import __version__
from transferstudio.backbones.base import Backbone
from transferstudio.core.commands import Commands
from transferstudio.core.errors import UserError
from transferstudio.core.events import (Checkpoint, Failed, Finished, Message, Paused, Preview, Resumed,
                                        Started, Step, Stopped)
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import Project
from transferstudio.adapt import checkpoints as ckpt
from transferstudio.training.device import autocast_dtype, choose_device, frozen_dtype
from transferstudio.training.diffusion import diffusion_loss, noise_scheduler
from transferstudio.training.previews import preview_prompts, save_previews
from transferstudio.adapt.trainee import Trainee, run_config


@dataclass
class TrainJob:
    project: Project
    steps: int | None = None  # total steps wanted; None = the project's setting
    fresh: bool = False  # start a new run even when the last one can be continued
    backbone: Backbone | None = None  # an already loaded, untouched backbone (optional)


@dataclass
class _Progress:
    step: int = 0
    checkpoint: Path | None = None


def train(job: TrainJob, commands: Commands | None = None) -> Iterator[Any]:
    """Yield Started, then Step after every optimizer step (plus Preview, Checkpoint, Paused,
    Resumed, Message), and exactly one Finished / Stopped / Failed at the end."""
    commands = commands or Commands()
    progress = _Progress()
    try:
        yield from _train(job, commands, progress)
    except UserError as exc:
        yield Failed(exc.message, exc.advice, step=progress.step, checkpoint=progress.checkpoint)
    except torch.cuda.OutOfMemoryError:
        yield Failed("The GPU ran out of memory.",
                     "Lower the batch size or resolution, or turn on gradient checkpointing. "
                     + (f"Your work up to step {progress.step} is saved." if progress.checkpoint else ""),
                     step=progress.step, checkpoint=progress.checkpoint)
    except MemoryError:
        yield Failed("The computer ran out of memory.",
                     "Lower the batch size or resolution, or close other programs.",
                     step=progress.step, checkpoint=progress.checkpoint)


def _train(job: TrainJob, commands: Commands, progress: _Progress) -> Iterator[Any]:
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.data.dataset import TrainingImages
    from transferstudio.data.scan import scan_images

    project = job.project
    run_dir, resume_from, config = _choose_run(project, job)
    total = config.steps
    problems = config.problems()
    if problems:
        raise UserError("Invalid settings: " + "; ".join(problems), "Fix the values and start again.")

    scan = scan_images(project.images, trigger=config.trigger)
    backbone = job.backbone or load_backbone(project.backbone, prediction_type=project.prediction_type)
    device = choose_device(config.device)
    amp = autocast_dtype(device, config.precision)
    torch.manual_seed(config.seed)
    trainee = Trainee(backbone, config)
    backbone.to(device, frozen_dtype(device, config.precision))
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()

    resolution = config.resolution or backbone.caps.native_resolution
    images = TrainingImages(scan.images, resolution, backbone.caps.resolution_multiple,
                            buckets=config.buckets, flip=config.flip, crop=config.crop)
    params = list(trainee.parameters())
    optimizer = _optimizer(params, config, device)
    from diffusers.optimization import get_scheduler

    schedule = {"constant": "constant_with_warmup"}.get(config.schedule, config.schedule)
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=config.warmup_steps,
                                 num_training_steps=total)
    ema = _ema(trainee, config)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    scheduler = noise_scheduler(backbone.scheduler_config)
    data_rng = torch.Generator("cpu").manual_seed(config.seed)
    noise_rng = torch.Generator(device).manual_seed(config.seed + 1)

    step, epoch, batch_index, last_loss = 0, 0, 0, float("nan")
    if resume_from is not None:
        trainee.load_state(ckpt.split_roles(ckpt.read_weights(resume_from.path)))
        bundle = ckpt.read_torch(resume_from.path, "optimizer.pt")
        optimizer.load_state_dict(bundle["optimizer"])
        lr_scheduler.load_state_dict(bundle["lr_scheduler"])
        if ema is not None and "ema" in bundle:
            ema.load_state_dict(bundle["ema"])
        if scaler is not None and "scaler" in bundle:
            scaler.load_state_dict(bundle["scaler"])
        rng = ckpt.read_torch(resume_from.path, "rng.pt")
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        data_rng.set_state(rng["data"])
        if rng.get("noise_device") == device.type:
            noise_rng.set_state(rng["noise"])
        state = resume_from.state
        step, epoch, batch_index = state["step"], state["epoch"], state["batch_index"]
        last_loss = state.get("loss", float("nan"))
        progress.checkpoint = resume_from.path
        _truncate_metrics(run_dir, step)
    progress.step = step

    log = _RunLog(run_dir)
    for skipped in scan.skipped:
        log.write(f"skipped {skipped.path}: {skipped.reason}")
    log.write(f"{'resumed at step ' + str(step) if step else 'started'}; {scan.summary()}; device {device}")
    yield Started(run_dir=run_dir, total_steps=total, start_step=step, images=len(scan.images),
                  samples_per_epoch=len(images),
                  skipped=tuple((str(s.path), s.reason) for s in scan.skipped), device=str(device),
                  trainable_parameters=trainee.parameter_count())
    for skipped in scan.skipped:
        yield Message(f"Skipped {skipped.path.name}: {skipped.reason}", "warning")

    prompts = preview_prompts(config, [r.caption for r in scan.images], backbone.caps.conditioning)

    def make_preview(at: int) -> Preview:
        with _ema_weights(ema, trainee):
            pics = backbone.sample(seeds=config.preview_seeds, prompts=prompts, steps=config.preview_steps)
        trainee.train_mode(True)
        paths = save_previews(run_dir, at, pics, config.preview_seeds, prompts)
        return Preview(step=at, images=tuple(pics), prompts=tuple(prompts or ()),
                       seeds=tuple(config.preview_seeds), paths=tuple(paths))

    def save(at: int) -> Checkpoint:
        bundle = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}
        if ema is not None:
            bundle["ema"] = ema.state_dict()
        if scaler is not None:
            bundle["scaler"] = scaler.state_dict()
        rng = {"torch": torch.get_rng_state(), "data": data_rng.get_state(),
               "noise": noise_rng.get_state(), "noise_device": device.type}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        ema_weights = None
        if ema is not None:  # EMA of every trained parameter, by name, for sampling and export
            names = [n for n, p in backbone.denoiser.named_parameters() if p.requires_grad]
            ema_weights = {f"unet.{n}": t for n, t in zip(names, ema.shadow_params)}
        path = ckpt.write_checkpoint(
            run_dir, at, weights=ckpt.join_roles(trainee.state()), optimizer=bundle, rng=rng,
            ema=ema_weights,
            state={"epoch": epoch, "batch_index": batch_index, "loss": last_loss, "total": total,
                   "method": config.method},
            keep=config.keep_checkpoints, metadata={"transferstudio_version": __version__,
                                                     **trainee.lora_metadata()})
        progress.checkpoint = path
        log.write(f"checkpoint {path.name}")
        return Checkpoint(step=at, path=path)

    if commands.stop_requested:  # stopped while the model was loading: nothing new to save
        yield Stopped(step=step, checkpoint=progress.checkpoint)
        return
    if step == 0:
        yield make_preview(0)

    trainee.train_mode(True)
    metrics = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
    started = time.perf_counter()
    recent: deque[tuple[float, int]] = deque(maxlen=20)
    batches = images.epoch_batches(epoch, config.seed, config.batch_size)
    try:
        while step < total:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_sum, seen = 0.0, 0
            for _ in range(config.gradient_accumulation):
                if batch_index >= len(batches):
                    epoch, batch_index = epoch + 1, 0
                    batches = images.epoch_batches(epoch, config.seed, config.batch_size)
                batch = images.load_batch(batches[batch_index], data_rng)
                batch_index += 1
                loss = _micro_step(backbone, scheduler, batch, config, device, amp, noise_rng)
                loss = loss / config.gradient_accumulation
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                loss_sum += loss.item()
                seen += len(batch.captions)
            if not math.isfinite(loss_sum):
                raise UserError(f"Training became unstable at step {step + 1} (the loss is not a number).",
                                "Lower the learning rate, or use fp32 precision.")
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr_scheduler.step()
            if ema is not None:
                ema.step(params)
            step += 1
            progress.step = step
            last_loss = loss_sum
            now = time.perf_counter()
            recent.append((now - t0, seen))
            rate = sum(n for _, n in recent) / max(1e-9, sum(t for t, _ in recent))
            per_step = sum(t for t, _ in recent) / len(recent)
            lr = lr_scheduler.get_last_lr()[0]
            metrics.write(json.dumps({"step": step, "loss": loss_sum, "lr": lr,
                                      "time": round(now - started, 4)}) + "\n")
            metrics.flush()
            yield Step(step=step, total=total, loss=loss_sum, lr=lr, images_per_s=rate,
                       eta_s=per_step * (total - step), elapsed_s=now - started)

            if commands.paused and not commands.stop_requested:
                log.write(f"paused at step {step}")
                yield Paused(step)
                commands.wait_while_paused()
                yield Resumed(step)
            if commands.stop_requested:
                checkpoint = save(step)
                yield checkpoint
                log.write(f"stopped at step {step}")
                yield Stopped(step=step, checkpoint=checkpoint.path)
                return
            if step == total:
                break
            if commands.take_sample_request() or (config.preview_every and step % config.preview_every == 0):
                yield make_preview(step)
            if commands.take_save_request() or step % config.checkpoint_every == 0:
                yield save(step)
    finally:
        metrics.close()

    final = save(step)
    yield final
    yield make_preview(step)
    log.write(f"finished at step {step}, loss {last_loss:.4f}")
    yield Finished(step=step, final_loss=last_loss, checkpoint=final.path,
                   weights=final.path / ckpt.WEIGHTS)


def _micro_step(backbone: Backbone, scheduler: Any, batch: Any, config: TrainConfig, device: torch.device,
                amp: torch.dtype | None, noise_rng: torch.Generator) -> torch.Tensor:
    pixels = batch.pixels.to(device)
    with torch.no_grad():
        clean = backbone.encode_images(pixels).float()
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        cond = backbone.encode_conditioning(batch.captions, original_sizes=batch.original_sizes,
                                            crop_top_left=batch.crop_top_left,
                                            target_size=batch.target_size,
                                            train_text_encoder=config.train_text_encoder)
        return diffusion_loss(backbone, scheduler, clean, cond, generator=noise_rng,
                              noise_offset=config.noise_offset, min_snr_gamma=config.min_snr_gamma)


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> Any:
    if not params:
        raise UserError("Nothing to train: the model has no layers the adapter can attach to.",
                        "Pick another backbone or the full fine-tuning method.")
    if device.type == "cuda":
        try:
            import bitsandbytes as bnb  # optional: halves optimizer memory on GPUs

            return bnb.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=1e-2)
        except ImportError:
            pass
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)


def _ema(trainee: Trainee, config: TrainConfig) -> Any:
    if not (config.ema and config.method == "full"):
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(list(trainee.parameters()), decay=config.ema_decay)


class _ema_weights:
    """Use the EMA weights inside the block (previews), then put the trained ones back."""

    def __init__(self, ema: Any, trainee: Trainee) -> None:
        self.ema, self.params = ema, list(trainee.parameters()) if ema is not None else []

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc: Any) -> None:
        if self.ema is not None:
            self.ema.restore(self.params)


def _choose_run(project: Project, job: TrainJob) -> tuple[Path, ckpt.CheckpointInfo | None, TrainConfig]:
    """Continue the latest run from its last complete checkpoint, or start a new run."""
    latest = None if job.fresh else project.latest_run()
    if latest is not None and (latest / "config.json").is_file():
        found = ckpt.latest_checkpoint(latest)
        if found is not None:
            config = run_config(latest)
            config.steps = job.steps or max(project.config.steps, config.steps)
            if found.step >= config.steps:
                raise UserError(f"This project has already trained {found.step} of {config.steps} steps.",
                                "Ask for more steps to train further, or start a fresh run.")
            return latest, found, config
    config = TrainConfig.from_dict(project.config.to_dict())
    if job.steps:
        config.steps = job.steps
    run_dir = project.new_run_dir()
    from transferstudio.core.atomic import write_json_atomic

    write_json_atomic(run_dir / "config.json", {
        "app_version": __version__, "backbone": str(project.backbone), "images": str(project.images),
        "prediction_type": project.prediction_type, "config": config.to_dict()})
    return run_dir, None, config


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Forget metrics written after the checkpoint we resume from (they will be redone)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and _step_of(line) <= step]
    from transferstudio.core.atomic import write_text_atomic

    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


class _RunLog:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "log.txt"

    def write(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {text}\n")
