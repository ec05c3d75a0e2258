"""The Trainer: one run of one project, step by step.

`Trainer(job, commands)` chooses the run (continue the chosen or latest run from its last
complete checkpoint, or start a new one), loads the backbone and data, and builds one optimizer
per phase of the family's objective. `events()` drives it: resume, then step / preview / save
at the cadence asked, and exactly one Finished / Stopped / Failed at the end. The Trainer asks
the backbone's spec for everything family-specific (which modules train, the loss, previews).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from transferstudio import __version__
from transferstudio.adapt import checkpoints as ckpt
from transferstudio.adapt import health
from transferstudio.adapt.trainee import Trainee
from transferstudio.backbones.base import Backbone
from transferstudio.backbones.objective import Phase, StepContext
from transferstudio.core import storage
from transferstudio.core.atomic import write_json_atomic, write_text_atomic
from transferstudio.core.commands import Commands
from transferstudio.core.errors import UserError
from transferstudio.core.events import (Checkpoint, Failed, Finished, Message, Paused, Preview, Progress, Resumed,
                                        Validation, Started, Step, Stopped)
from transferstudio.project.config import SPEED_ONLY_SETTINGS, TrainConfig
from transferstudio.project.lock import ProjectLock
from transferstudio.project.project import Project
from transferstudio.project.run import (OVERFIT_AFTER, VALIDATION, Run, best_checkpoint, best_validation,
                                        continuable_run, describe_differences, find_run, remove_orphan_runs,
                                        remove_run_folder, rising_for, settings_differences, validation_rows)
from transferstudio.adapt.device import autocast_dtype, choose_device, free_device_memory, frozen_dtype
from transferstudio.data.captions import CaptionVariation
from transferstudio.data.holdout import reference_picture, split_by_names, split_held_out, validation_wanted
from transferstudio.backbones.batch_draws import rows_of
from transferstudio.training.caching import use_encoding_caches
from transferstudio.training.distributed import Alone, FollowedCommands, slice_batch
from transferstudio.training.previews import draw_previews, preview_prompts, preview_slots, save_previews
from transferstudio.training.speed import apply_speed_settings, compile_failure, eager, fused_optimizer_options
from transferstudio.training.validation import mean_error


@dataclass
class TrainJob:
    project: Project
    steps: int | None = None  # total steps wanted; None = the project's setting
    fresh: bool = False  # start a new run even when the last one can be continued
    backbone: Backbone | None = None  # an already loaded, untouched backbone (optional)
    run_id: str | None = None  # continue this run (folder name) instead of the latest
    keep_run_settings: bool = False  # continue even when the project's settings now differ from the run's
    scratch: bool = False  # a from-scratch baseline run: the same architecture with random weights


# What a from-scratch baseline changes in the project's settings: every weight trains, and the
# methods that lean on pretrained weights (FreezeD, keeping the source's variety) have nothing to keep.
SCRATCH_SETTINGS = {"method": "full", "dora": False, "train_text_encoder": False,
                    "freeze_discriminator_blocks": 0, "consistency_weight": 0.0, "class_pictures": 0}
SCRATCH_MODEL = "scratch-model"  # the random initial model, inside the baseline run's folder


def scratch_config(config: TrainConfig) -> TrainConfig:
    return TrainConfig.from_dict({**config.to_dict(), **SCRATCH_SETTINGS})


def train(job: TrainJob, commands: Commands | None = None, group: Alone | None = None) -> Iterator[Any]:
    """Yield Started, then Step after every optimizer step (plus Preview, Checkpoint, Paused,
    Resumed, Message), and exactly one Finished / Stopped / Failed at the end. `group`: this
    process's place in a data-parallel run (training.distributed); alone when None."""
    trainer = Trainer(job, commands or Commands(), group)
    yield from trainer.events()


class SettingsChanged(UserError):
    """The project's settings differ from those of the run `train` would continue."""

    def __init__(self, run: Run, differences: list[tuple[str, Any, Any]]) -> None:
        super().__init__(f"The project's settings differ from those of the run {run.id} that `train` would "
                         f"continue: {describe_differences(differences)}.",
                         "Run `train --fresh` to start a new run with the project's settings, or "
                         "`train --keep-run-settings` to continue the run with its own.")
        self.run, self.differences = run, differences


def choose_run(project: Project, *, steps: int | None, fresh: bool, run_id: str | None = None,
               keep_run_settings: bool = True, scratch: bool = False) -> tuple[Run | None, TrainConfig]:
    """Which run a `train` continues (None: a new run) and the settings it will use.

    A continued run keeps the settings it was started with (its learning-rate schedule, method
    and adapter shape are part of its checkpoints); only the step total can grow. When the
    project's settings differ in anything else, SettingsChanged unless `keep_run_settings`.
    `scratch`: a new from-scratch baseline run (SCRATCH_SETTINGS over the project's)."""
    run = None
    if not fresh:
        run = find_run(project, run_id) if run_id else continuable_run(project)
    if run is not None and run.latest is not None:
        config = TrainConfig.from_dict(run.config.to_dict())
        config.steps = steps or max(project.config.steps, run.total)
        for name in SPEED_ONLY_SETTINGS:  # how fast, not what: the project's current choice
            setattr(config, name, getattr(project.config, name))
        if run.latest.step >= config.steps:
            raise UserError(f"This project has already trained {run.latest.step} of {config.steps} steps.",
                            "Ask for more steps to train further, or start a fresh run.")
        wanted = scratch_config(project.config) if run.baseline == "scratch" else project.config
        differences = settings_differences(run.config, wanted)
        if differences and not keep_run_settings:
            raise SettingsChanged(run, differences)
        return run, config
    if run_id is not None and run is not None:
        raise UserError(f"The run {run.id} has no complete checkpoint to continue from.",
                        "Start a fresh run instead.")
    config = scratch_config(project.config) if scratch else TrainConfig.from_dict(project.config.to_dict())
    if steps:
        config.steps = steps
    return None, config


class _PhaseState:
    """One phase of the objective with its optimizer and learning-rate schedule."""

    def __init__(self, phase: Phase, params: list[torch.nn.Parameter], optimizer: Any, schedule: Any) -> None:
        self.phase, self.params, self.optimizer, self.schedule = phase, params, optimizer, schedule


class Trainer:
    def __init__(self, job: TrainJob, commands: Commands, group: Alone | None = None) -> None:
        self.job = job
        self.group = group or Alone()
        # several processes act on the user's commands together, at the same step
        self.commands = FollowedCommands(commands, self.group) if self.group.world > 1 else commands
        self.project = job.project
        self.step = 0
        self.epoch = 0
        self.batch_index = 0
        self.last_loss = float("nan")
        self.checkpoint: Path | None = None
        self.lock = ProjectLock(self.project.folder)
        self.notes: list[Message] = []  # said after Started: a stale lock taken over, orphans removed…
        self.run_dir: Path | None = None
        self.damaged: list[str] = []  # checkpoints found damaged and set aside (also written to log.txt)
        self.saving_notes: list[str] = []  # what a save did that a user should know (room made on the disk)
        self.probe_batch: Any = None  # the batch whose output must be finite before a save (loaded once)
        self.new_run = False  # this trainer made run_dir (and removes it if it ends without a checkpoint)
        self.validations: list[dict[str, Any]] = []  # validation.jsonl rows of this run up to now
        self.pending: list[Any] = []  # events a save produced (its validation measure), said after it
        self.warned_overfit = False

    # --- the run, start to end ---------------------------------------------------------
    def events(self) -> Iterator[Any]:
        try:
            yield from self._guarded_events()
        finally:
            self.close()

    def close(self) -> None:
        """The end of every run (finished, stopped, failed, an exception, or the consumer walking
        away): a new run folder that never got a complete checkpoint is removed, and the project's
        lock is released."""
        try:
            if self.group.main and self.new_run and self.run_dir is not None \
                    and not ckpt.complete_checkpoints(self.run_dir):
                remove_run_folder(self.run_dir)
        finally:
            self.lock.release()
            device = getattr(self, "device", None)
            if device is not None and device.type != "cpu":  # the run's tensors go, and so does their memory
                self.trainee = self.phases = self.ema = self.objective = self.backbone = None
                free_device_memory(device)

    def _guarded_events(self) -> Iterator[Any]:
        try:
            yield from self._events()
        except UserError as exc:
            yield Failed(exc.message, exc.advice, step=self.step, checkpoint=self.checkpoint)
        except torch.cuda.OutOfMemoryError:
            yield Failed("The GPU ran out of memory.",
                         "Lower the batch size or resolution, or turn on gradient checkpointing. "
                         + (f"Your work up to step {self.step} is saved." if self.checkpoint else ""),
                         step=self.step, checkpoint=self.checkpoint)
        except MemoryError:
            yield Failed("The computer ran out of memory.",
                         "Lower the batch size or resolution, or close other programs.",
                         step=self.step, checkpoint=self.checkpoint)
        except RuntimeError as exc:  # Apple MPS (and some CUDA paths) report running out as a RuntimeError
            if compile_failure(exc):
                yield Failed(f"Compiling the model failed: {str(exc).splitlines()[0][:300]}",
                             "Turn off Compile in Settings ▸ Advanced and start again (compiling needs a C++ "
                             "compiler and does not suit every model).", step=self.step, checkpoint=self.checkpoint)
                return
            if "out of memory" not in str(exc).lower():
                raise
            yield Failed(f"The {self.device.type.upper() if hasattr(self, 'device') else 'GPU'} ran out of memory.",
                         "Lower the batch size or resolution, or turn on gradient checkpointing. "
                         + (f"Your work up to step {self.step} is saved." if self.checkpoint else ""),
                         step=self.step, checkpoint=self.checkpoint)
        except OSError as exc:  # a full disk or a place it may not write: one sentence, not a traceback
            problem = self._write_problem(exc)
            if problem is None:
                raise
            yield Failed(problem.message, problem.advice, step=self.step, checkpoint=self.checkpoint)

    def _write_problem(self, exc: OSError) -> UserError | None:
        latest = ckpt.latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        kept = f" Your work up to step {latest.step} is kept." if latest is not None else ""
        where = self.run_dir or self.project.folder
        if storage.is_disk_full(exc):
            return storage.disk_full(storage.where_of(exc, where), f"training could not write to {where}",
                                     "Free some space on that drive, then run `train` again." + kept)
        if storage.is_not_writable(exc):
            return storage.not_writable(storage.where_of(exc, where),
                                        "Make the project folder writable, or copy the project to a folder you "
                                        "can write to, then run `train` again." + kept)
        return None

    def _events(self) -> Iterator[Any]:
        self.prepare()
        self.resume()
        yield self.started_event()
        yield from self.notes
        for skipped in self.scan.skipped:
            yield Message(f"Skipped {skipped.path.name}: {skipped.reason}", "warning")
        if self.held_out:
            names = ", ".join(r.path.name for r in self.held_out)
            what = "the previews, their PSNR/SSIM and the validation loss" if self.references else \
                "the validation loss"
            yield Message(f"{len(self.held_out)} pictures are kept out of training for {what}: {names}.", "info")
        commands = self.commands
        self.sync_commands()
        if commands.stop_requested:  # stopped while the model was loading: nothing new to save
            yield Stopped(step=self.step, checkpoint=self.checkpoint)
            return
        yield from self.fill_caches()
        yield from self.free_text_encoders()
        if self.step == 0:
            yield from self.on_main(self._first_previews)
        self.trainee.train_mode(True)
        self.started_at = time.perf_counter()
        with self.metrics_file() as self.metrics:
            while self.step < self.total:
                yield self.train_step()
                self.sync_commands()
                yield from self.picture_problems()
                if commands.paused and not commands.stop_requested:
                    self.log(f"paused at step {self.step}")
                    yield Paused(self.step)
                    yield from self.while_paused()
                    yield Resumed(self.step)
                if commands.stop_requested:
                    saved = self.save_together()
                    yield from self.save_notes()
                    yield saved
                    self.log(f"stopped at step {self.step}")
                    yield Stopped(step=self.step, checkpoint=saved.path)
                    return
                if self.step == self.total:
                    break
                every = self.config.preview_every
                previewed = commands.take_sample_request() or bool(every and self.step % every == 0)
                measure_every = self.config.validation_every
                measured = (measure_every and self.step % measure_every == 0) or (not measure_every and previewed)
                if previewed or measured:
                    yield from self.on_main(lambda: self._previews_and_measures(previewed, measured))
                if commands.take_save_request() or self.step % self.config.checkpoint_every == 0:
                    yield self.save_together()
                    yield from self.save_notes()
        final = self.save_together()
        yield from self.save_notes()
        yield final
        yield from self.on_main(self._previews_and_measures)
        self.log(f"finished at step {self.step}, loss {self.last_loss:.4f}")
        yield Finished(step=self.step, final_loss=self.last_loss, checkpoint=final.path,
                       weights=final.path / ckpt.WEIGHTS)

    def while_paused(self) -> Iterator[Any]:
        """Wait for resume or stop; previews and saves asked for meanwhile are made at once."""
        commands = self.commands
        while commands.paused and not commands.stop_requested:
            commands.wait_while_paused_unless_asked()
            if commands.take_sample_request():
                yield from self.on_main(self._previews_and_measures)
            if commands.take_save_request():
                yield self.save_together()
                yield from self.save_notes()

    def _first_previews(self) -> Iterator[Any]:
        yield Progress("Drawing the previews of the untrained model", 0, len(self.config.preview_seeds))
        yield self.preview(0)
        yield from self.validate(0)

    def _previews_and_measures(self, previewed: bool = True, measured: bool = False) -> Iterator[Any]:
        if previewed:
            yield self.preview(self.step)
        if measured:
            yield from self.validate(self.step)

    # --- several processes ----------------------------------------------------------------
    def sync_commands(self) -> None:
        if isinstance(self.commands, FollowedCommands):
            self.commands.sync()

    def on_main(self, make: Any) -> Iterator[Any]:
        """Events only the main process makes (previews, validation measures) from `make()`; the
        others wait, then take its random state, so every process draws the same from there on."""
        if self.group.world == 1:
            yield from make()  # as they come: the first preview's progress before the preview
            return
        failure = None
        if self.group.main:
            try:
                for event in make():
                    yield event
            except UserError as exc:
                failure = (exc.message, exc.advice)
        self._follow_main(failure)

    def save_together(self) -> Checkpoint:
        """The main process saves (and checks the model first); the others learn where, or that
        the check failed (the same UserError everywhere, so every process ends)."""
        if self.group.world == 1:
            return self.save()
        saved, failure = None, None
        if self.group.main:
            try:
                saved = self.save()
            except UserError as exc:
                failure = (exc.message, exc.advice)
        path = self._follow_main(failure, saved.path if saved is not None else None)
        if saved is None:
            self.checkpoint = path
            saved = Checkpoint(step=self.step, path=path)
        return saved

    def _follow_main(self, failure: tuple[str, str] | None, value: Any = None) -> Any:
        failure, value, state = self.group.share((failure, value, self._random_state()))
        if failure is not None:
            raise UserError(*failure)
        if not self.group.main:
            self._set_random_state(state)
        return value

    def metrics_file(self) -> Any:
        """Where each step's row goes: metrics.jsonl, written by the main process only."""
        import contextlib
        import io

        if self.group.main:
            return (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        return contextlib.nullcontext(io.StringIO())

    # --- setting up ---------------------------------------------------------------------
    def fill_caches(self) -> Iterator[Any]:
        """Encode the pictures once before the first step, saying how far it got."""
        task = "Encoding your pictures once for the cache"
        started = time.perf_counter()
        last = None
        sets = [self.images] + ([self.class_images] if self.class_images is not None else [])
        counts = [len(images.encoding_variants()) for images in sets]
        total, offset = sum(counts), 0
        for images, count in zip(sets, counts):
            for done, _ in self.objective.precompute(images, max(1, self.config.batch_size)):
                if last is None:
                    yield Progress(task, 0, total)
                last = offset + done
                yield Progress(task, last, total)
            offset += count
        if last is not None:
            self.log(f"encoded {last} picture variants for the cache in {time.perf_counter() - started:.1f} s")

    def free_text_encoders(self) -> Iterator[Any]:
        """On a GPU, once every caption the run can meet is in the text cache (no shuffled or
        dropped tags), the frozen text encoders leave the GPU: training never needs them again."""
        if not self._can_free_text_encoders():
            return
        captions = self.images.possible_captions()
        for other in (self.class_images, self.validation_images):
            if captions is not None and other is not None:
                more = other.possible_captions()
                captions = None if more is None else captions + more
        captions = sorted(set(captions)) if captions is not None else None
        if captions is None or not self.objective.encode_all_captions(captions):
            return
        from transferstudio.training.low_memory import TextEncodersAway

        away = TextEncodersAway(self.backbone, self.device)
        if not away.modules:
            return
        away.send_away()
        self.encoders_away = away
        self.objective.before_encoding = self._text_encoders_back
        text = (f"Every caption is encoded ({len(captions)}), so the text encoders ({away.size() / 1024 ** 3:.1f} "
                "GB) wait in the computer's memory while training, and come back for previews.")
        self.log(text)
        yield Message(text, "info")

    def _can_free_text_encoders(self) -> bool:
        return self.device.type == "cuda" and getattr(self.objective, "text_store", None) is not None

    def _text_encoders_back(self) -> None:
        """A caption the cache lacks: the text encoders come back to stay."""
        away = getattr(self, "encoders_away", None)
        if away is not None and away.away:
            away.back()
            self.log("a caption that was not encoded turned up: the text encoders are back on the GPU")
        self.objective.before_encoding = None

    def _text_encoders_nearby(self) -> Any:
        import contextlib

        away = getattr(self, "encoders_away", None)
        return away.nearby() if away is not None else contextlib.nullcontext()

    def prepare(self) -> None:
        from transferstudio.backbones.registry import load_backbone
        from transferstudio.data.dataset import TrainingImages
        from transferstudio.data.scan import scan_images

        job, project = self.job, self.project
        config = self._choose_together()
        self.config, self.total = config, config.steps
        self.scan = scan_images(project.images, trigger=config.trigger)
        backbone = self._scratch_backbone() if self._is_baseline() else None
        backbone = backbone or job.backbone or load_backbone(project.backbone, prediction_type=project.prediction_type)
        self.backbone = backbone
        if self.group.world > 1 and not backbone.caps.data_parallel:
            raise UserError(f"{backbone.caps.label or backbone.family} models train in one process only (their "
                            "losses read the whole batch), not on several GPUs.",
                            "Set GPUs to 1 in Settings (or train without --processes).")
        self.device = self.group.device or choose_device(config.device)
        self.amp = autocast_dtype(self.device, config.precision)
        if config.precision in ("bf16", "fp16") and self.amp is None:
            self.notes.append(Message(f"{config.precision} was asked for, but the {self.device.type.upper()} trains "
                                      "in fp32 (faster there); the run and its exports record fp32.", "info"))
        if self.group.main:  # from the untouched base, before any adapter; the others read them
            self.class_images = self._class_images(backbone, config)
        self.group.barrier()
        if not self.group.main:
            self.class_images = self._class_images(backbone, config)
        torch.manual_seed(config.seed)
        self.trainee = Trainee(backbone, config)
        backbone.to(self.device, frozen_dtype(self.device, config.precision))
        if getattr(config, "fp8_base", False):
            self.notes.append(self._fp8_base(backbone))
        if config.gradient_checkpointing:
            backbone.enable_gradient_checkpointing()
        self.notes.extend(apply_speed_settings(backbone, config, self.device))
        resolution = config.resolution or backbone.caps.native_resolution
        records, self.held_out = self._validation_split(config, backbone)
        if backbone.caps.preview == "reconstruction":  # previews show pictures it never trains on
            self.references = [reference_picture(r.path, resolution)
                               for r in self.held_out[:len(config.preview_seeds)]]
        else:
            self.references = []
        self.validation_images = TrainingImages(self.held_out, resolution, backbone.caps.resolution_multiple,
                                                buckets=config.buckets, flip=False, crop="center") \
            if self.held_out else None
        captions = None
        if backbone.caps.conditioning == "text":
            captions = CaptionVariation(dropout=config.caption_dropout, shuffle=config.shuffle_tags,
                                        keep=config.keep_tags, tag_dropout=config.tag_dropout)
        self.images = TrainingImages(records, resolution, backbone.caps.resolution_multiple,
                                     buckets=config.buckets, flip=config.flip, crop=config.crop, captions=captions,
                                     masked=bool(config.masked_loss) and backbone.caps.objective == "diffusion")
        self.objective = backbone.objective(config)
        self.notes.extend(use_encoding_caches(self.objective, backbone, config, project.folder))
        self.phases = [self._phase_state(phase) for phase in self.objective.phases]
        self.ema = self._ema()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        self.data_rng = torch.Generator("cpu").manual_seed(config.seed)
        self.noise_rng = torch.Generator(self.device).manual_seed(config.seed + 1)
        if self.group.main:
            self.run_dir = self.run.folder if self.run is not None else (self.run_dir or self._new_run_dir())
            if self.new_run:  # now with the held-out pictures
                self._write_run_settings()
        self.run_dir = Path(self.group.share(str(self.run_dir)))
        self.prompts = preview_prompts(config, [r.caption for r in self.scan.images], backbone.caps.conditioning)

    def _choose_together(self) -> TrainConfig:
        """The main process takes the project's lock, sets damaged checkpoints aside, chooses the
        run and tidies orphans; every process then continues the same run with the same settings."""
        job, project = self.job, self.project
        chosen: Any = None
        if self.group.main:
            try:
                taken_over = self.lock.acquire()  # first: a refused second trainer changes nothing
                if taken_over:
                    self.notes.append(Message(taken_over, "warning"))
                self._set_aside_damaged()  # before the choice: a damaged newest checkpoint is not "the latest"
                self.run, config = choose_run(project, steps=job.steps, fresh=job.fresh or job.scratch,
                                              run_id=None if job.scratch else job.run_id,
                                              keep_run_settings=job.keep_run_settings, scratch=job.scratch)
                self._note_continuation(config)
                removed = remove_orphan_runs(project, keep=self.run.folder if self.run is not None else None)
                if removed:
                    self.notes.append(Message(f"Removed {len(removed)} unfinished run folder(s) left by a training "
                                              f"that ended before its first checkpoint: {', '.join(removed)}.", "info"))
                problems = config.problems()
                if problems:
                    raise UserError("Invalid settings: " + "; ".join(problems), "Fix the values and start again.")
                if self._is_baseline() and self.run is None:
                    self.config = config
                    self._new_run_dir()  # the baseline's random model is kept in it
                chosen = (None, self.run.folder.name if self.run is not None else None, config.to_dict(),
                          str(self.run_dir) if self.run_dir is not None else None)
            except UserError as exc:
                if self.group.world == 1:
                    raise
                chosen = ((exc.message, exc.advice), None, None, None)
        if self.group.world == 1:
            return config
        failure, run_id, settings, run_dir = self.group.share(chosen)
        if failure is not None:
            raise UserError(*failure)
        if not self.group.main:
            self.run = find_run(project, run_id) if run_id is not None else None
            self.run_dir = Path(run_dir) if run_dir is not None else None
        return TrainConfig.from_dict(settings)

    def _fp8_base(self, backbone: Backbone) -> Message:
        """The frozen weights in 8-bit floats on a CUDA GPU (training.low_memory); elsewhere
        they stay as they are, and a note says so."""
        if self.device.type != "cuda" or self.amp is None:
            return Message(f"fp8 base weights are for CUDA GPUs: on the {self.device.type.upper()} the model keeps "
                           f"its weights in {_precision_name(self.amp)}.", "info")
        from transferstudio.training.low_memory import store_frozen_in_fp8

        count = store_frozen_in_fp8(backbone, self.amp)
        return Message(f"{count / 1e9:.2f} billion frozen weights are kept in 8-bit floats (fp8 base), computed in "
                       f"{_precision_name(self.amp)}.", "info")

    def _is_baseline(self) -> bool:
        return self.job.scratch or (self.run is not None and self.run.baseline == "scratch")

    def _scratch_backbone(self) -> Backbone:
        """A baseline run trains the project's architecture from seeded random weights, kept in
        the run's folder so that continuing it starts from the same ones."""
        from transferstudio.backbones.registry import load_backbone, random_copy

        if self.run is None and self.run_dir is None:
            self._new_run_dir()
        folder = self.run_dir / SCRATCH_MODEL if self.run is None else self.run.folder / SCRATCH_MODEL
        if self.group.main and not folder.exists():
            random_copy(self.project.backbone, folder, seed=self.config.seed)
        self.group.barrier()  # the others load it once it is there
        return load_backbone(folder)

    def _class_images(self, backbone: Backbone, config: TrainConfig) -> Any:
        """Prior preservation: the class pictures the base model made for this project (made now,
        once, if they are not there yet), as training images of their own."""
        from transferstudio.data.dataset import TrainingImages
        from transferstudio.data.scan import scan_images
        from transferstudio.training import prior

        if not config.class_pictures or backbone.caps.objective != "diffusion":
            return None
        resolution = config.resolution or backbone.caps.native_resolution
        key = prior.class_key(self.project.backbone, config, resolution)
        folder = prior.class_folder(self.project.folder, key)
        if not prior.ready(folder) and not self.group.main:  # the main process made them just before
            raise UserError(f"The class pictures in {folder} are not there for training process {self.group.rank}.",
                            "The processes must see the same project folder (on several machines: a shared "
                            "disk at the same path).")
        if not prior.ready(folder):
            backbone.to(self.device, frozen_dtype(self.device, config.precision))
            self.log(f"making {config.class_pictures} class pictures with the base model")
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                prior.make_class_pictures(folder, key, backbone.sample)
            self.notes.append(Message(f"The base model made {config.class_pictures} class pictures for prior "
                                      f"preservation (once; they are kept in {folder} and reused).", "info"))
        records = scan_images(folder).images
        return TrainingImages(records, resolution, backbone.caps.resolution_multiple, buckets=False, flip=False,
                              crop="center")

    def _shares(self, batch: Any) -> list[tuple[Any, Any, float]]:
        """(this process's rows of `batch`, which rows, their loss's weight) for one micro-batch.
        Alone: the batch as it is. Together: each of the objective's parts (your pictures, the
        class pictures of prior preservation) cut by its own count and weighted by this process's
        share of it, in the objective's order, so every picture draws what it draws alone."""
        group = self.group
        if group.world == 1:
            return [(batch, None, 1.0)]
        cut = []
        for part, weight in self.objective.parts(batch):
            rows = group.rows(len(part.captions))
            cut.append((slice_batch(part, rows), rows, weight * rows.count / max(1, rows.size)))
        return cut

    def _random_state(self) -> tuple[Any, ...]:
        """What every process must draw alike from: torch's, the noise generator's and the GPU's."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), self.noise_rng.get_state(), cuda

    def _set_random_state(self, state: tuple[Any, ...]) -> None:
        rng, noise, cuda = state
        torch.set_rng_state(rng)
        self.noise_rng.set_state(noise)
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)

    def _with_prior(self, batch: Any, index: int) -> Any:
        """The `index`-th micro-batch of the run gets its class pictures: a fixed order over epochs
        of the class set, derived from the index alone, so a resumed run draws the same ones."""
        if self.class_images is None:
            return batch
        size = len(batch.captions)
        per_epoch = -(-len(self.class_images) // size)  # one bucket (all the same size): nothing dropped
        epoch, position = divmod(index, per_epoch)
        indexes = self._class_batches(epoch, size)[position]
        return dataclasses.replace(batch, prior=self.class_images.load_batch(indexes, None))

    def _class_batches(self, epoch: int, size: int) -> list[list[int]]:
        cached = getattr(self, "_class_epoch", None)
        if cached is None or cached[0] != (epoch, size):
            cached = self._class_epoch = ((epoch, size), self.class_images.epoch_batches(epoch, self.config.seed + 7,
                                                                                          size))
        return cached[1]

    def _validation_split(self, config: TrainConfig, backbone: Backbone) -> tuple[list[Any], list[Any]]:
        """(training pictures, held-out pictures). A run keeps the pictures it first held out
        (recorded in its config.json), so a continued run never trains on them."""
        images = self.scan.images
        if self.run is not None and "validation_pictures" in self.run.data:
            return split_by_names(images, self.run.validation_pictures)
        reconstruction = backbone.caps.preview == "reconstruction"
        if self.run is not None and not reconstruction:  # a run from before validation existed trains on all
            return list(images), []
        wanted = validation_wanted(config.validation, len(images),
                                   family_default=len(config.preview_seeds) if reconstruction else 0)
        return split_held_out(images, wanted)

    def _set_aside_damaged(self) -> None:
        """Verify the checkpoints of the run `train` would continue, newest first, until one is
        whole (sizes and hashes from its manifest; headers and a weights-only load for older
        ones). Damaged ones are moved aside with a warning, so the run continues from the one
        before; when none is whole, one sentence (nothing is moved)."""
        job, project = self.job, self.project
        if job.fresh:
            return
        run = find_run(project, job.run_id) if job.run_id else continuable_run(project)
        if run is None or not run.checkpoints:
            return
        good, bad = ckpt.newest_good(run.checkpoints)
        if good is None:
            raise UserError(f"{ckpt.damaged_words(*bad[0])}, and no earlier checkpoint of that run can be used.",
                            f"Start a fresh run: `transferstudio train {project.folder} --fresh` (the damaged "
                            "run is left as it is).")
        for info, why in bad:
            moved = ckpt.set_aside(info)
            text = f"{ckpt.damaged_words(info, why)}; continuing from {good.path.name} instead"
            text += f" (the damaged one is kept as {moved.name})." if moved is not None else "."
            self.notes.append(Message(text, "warning"))
            self.damaged.append(text)

    def _note_continuation(self, config: TrainConfig) -> None:
        """What a continued run uses, when that is not what the project says."""
        run = self.run
        if run is None or run.latest is None:
            return
        differences = settings_differences(run.config, self.project.config)
        if differences:  # only when asked to keep the run's settings (choose_run refuses otherwise)
            self.notes.append(Message(f"The run {run.id} continues with its own settings, not the project's: "
                                      f"{describe_differences(differences)}.", "warning"))
        planned = run.latest.state.get("total")
        planned = planned if isinstance(planned, int) and not isinstance(planned, bool) else run.config.steps
        if config.schedule in ("cosine", "linear") and planned != config.steps:
            self.notes.append(Message(
                f"The {config.schedule} learning-rate schedule is re-planned from {planned} to {config.steps} "
                f"steps: from step {run.latest.step} on, the rate follows the {config.steps}-step curve, not "
                f"the {planned}-step one it was on.", "info"))

    def _phase_state(self, phase: Phase) -> _PhaseState:
        from diffusers.optimization import get_scheduler

        params = self.trainee.role_parameters(phase.roles)
        optimizer = _optimizer(params, self.config, self.device, phase)
        schedule = {"constant": "constant_with_warmup"}.get(self.config.schedule, self.config.schedule)
        lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=self.config.warmup_steps,
                                     num_training_steps=self.total)
        return _PhaseState(phase, params, optimizer, lr_scheduler)

    def _ema(self) -> Any:
        config = self.config
        roles = self.objective.ema_roles()
        roles = self.trainee.full_roles() if roles is None else [r for r in roles if r in self.trainee.full_roles()]
        if not (self.objective.wants_ema(config) and roles):
            return None
        from diffusers.training_utils import EMAModel

        self.ema_names = [f"{role}.{n}" for role in roles
                          for n, p in self.trainee.roles[role].named_parameters() if p.requires_grad]
        self.ema_params = self.trainee.role_parameters(roles)
        return EMAModel(self.ema_params, decay=config.ema_decay)

    def _new_run_dir(self) -> Path:
        run_dir = self.project.new_run_dir()
        self.run_dir, self.new_run = run_dir, True  # removed again if the run ends before a checkpoint
        self._write_run_settings()
        return run_dir

    def _write_run_settings(self) -> None:
        data: dict[str, Any] = {
            "app_version": __version__, "backbone": str(self.project.backbone), "images": str(self.project.images),
            "prediction_type": self.project.prediction_type, "config": self.config.to_dict()}
        if self._is_baseline():
            data["baseline"] = "scratch"
        if hasattr(self, "held_out"):
            data["validation_pictures"] = [r.path.name for r in self.held_out]
        write_json_atomic(self.run_dir / "config.json", data)

    def resume(self) -> None:
        """Put the weights, optimizers, RNGs and data position back as the last checkpoint left them."""
        found = self.run.latest if self.run is not None else None
        if found is not None:
            self.trainee.load_state(ckpt.split_roles(ckpt.read_weights(found.path)))
            bundle = ckpt.read_torch(found.path, "optimizer.pt")
            for index, state in enumerate(self.phases):
                saved = bundle if index == 0 else bundle.get("phases", {}).get(state.phase.name, {})
                state.optimizer.load_state_dict(saved["optimizer"])
                state.schedule.load_state_dict(saved["lr_scheduler"])
            if self.ema is not None and "ema" in bundle:
                self.ema.load_state_dict(bundle["ema"])
                self.ema.to(self.device)  # the saved average is read onto the CPU
            if "objective" in bundle:
                self.objective.load_state_dict(bundle["objective"])
            if self.scaler is not None and "scaler" in bundle:
                self.scaler.load_state_dict(bundle["scaler"])
            rng = ckpt.read_torch(found.path, "rng.pt")
            torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"])
            self.data_rng.set_state(rng["data"])
            if rng.get("noise_device") == self.device.type:
                self.noise_rng.set_state(rng["noise"])
            state = found.state
            self.step, self.epoch, self.batch_index = state["step"], state["epoch"], state["batch_index"]
            self.last_loss = state.get("loss", float("nan"))
            self.checkpoint = found.path
            if self.group.main:
                _truncate_metrics(self.run_dir, self.step)
                _truncate_metrics(self.run_dir, self.step, VALIDATION)
            self.validations = validation_rows(self.run_dir, self.step)
            self.warned_overfit = rising_for(self.validations) >= OVERFIT_AFTER
        self.batches = self.images.epoch_batches(self.epoch, self.config.seed, self.config.batch_size)
        for skipped in self.scan.skipped:
            self.log(f"skipped {skipped.path}: {skipped.reason}")
        for text in self.damaged:
            self.log(text)
        self.log(f"{'resumed at step ' + str(self.step) if self.step else 'started'}; {self.scan.summary()}; "
                 f"device {self.device}")
        self.recent: deque[tuple[float, int]] = deque(maxlen=20)

    def started_event(self) -> Started:
        return Started(run_dir=self.run_dir, total_steps=self.total, start_step=self.step,
                       images=len(self.scan.images), samples_per_epoch=len(self.images),
                       skipped=tuple((str(s.path), s.reason) for s in self.scan.skipped), device=str(self.device),
                       trainable_parameters=self.trainee.parameter_count(), processes=self.group.world,
                       batch=self.config.batch_size, accumulation=self.config.gradient_accumulation)

    # --- one optimizer step -----------------------------------------------------------------
    def _next_batch(self) -> Any:
        if self.batch_index >= len(self.batches):
            self.epoch, self.batch_index = self.epoch + 1, 0
            self.batches = self.images.epoch_batches(self.epoch, self.config.seed, self.config.batch_size)
        batch = self.images.load_batch(self.batches[self.batch_index], self.data_rng)
        self.batch_index += 1
        return batch

    def train_step(self) -> Step:
        self.check_run_dir()
        config = self.config
        t0 = time.perf_counter()
        accumulation = config.gradient_accumulation
        micro = [self._with_prior(self._next_batch(), self.step * accumulation + i) for i in range(accumulation)]
        ctx = StepContext(step=self.step + 1, device=self.device, amp=self.amp, generator=self.noise_rng,
                          config=config)
        group = self.group
        # each process trains its rows of every (global) micro-batch, its loss weighted by its share
        shares = [part for batch in micro for part in self._shares(batch)]
        losses: dict[str, float] = {}
        for state in self.phases:
            if not self.objective.active(state.phase, ctx.step):
                continue
            state.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for batch, rows, share in shares:
                if rows is not None and rows.count == 0:
                    continue  # a batch smaller than the process count: this one has no rows of it
                with rows_of(rows):
                    loss = self.objective.loss(state.phase, batch, ctx) / config.gradient_accumulation
                if rows is not None:
                    loss = loss * share
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                total += loss.item()
            group.sum_gradients(state.params)  # before clipping: every process steps the same gradient
            total = group.sum(total)
            if not math.isfinite(total):
                raise UserError(f"Training became unstable at step {self.step + 1} (the loss is not a number).",
                                self._unstable_advice())
            if self.scaler is not None:
                self.scaler.unscale_(state.optimizer)
            if state.phase.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(state.params, state.phase.clip_norm)
            if self.scaler is not None:
                self.scaler.step(state.optimizer)
                self.scaler.update()
            else:
                state.optimizer.step()
            state.schedule.step()
            losses[state.phase.name] = total
        if any(rows is not None and rows.size < group.world for _, rows, _ in shares):
            # a process without rows drew nothing: it takes the random state of the last process
            # (which always has rows), so every process draws the same from here on
            self._set_random_state(group.share_from(group.world - 1, self._random_state()))
        if self.ema is not None:
            self.ema.step(self.ema_params)
        self.step += 1
        self.last_loss = self.objective.reported(losses)
        now = time.perf_counter()
        self.recent.append((now - t0, sum(len(b.captions) for b in micro)))
        rate = sum(n for _, n in self.recent) / max(1e-9, sum(t for t, _ in self.recent))
        per_step = sum(t for t, _ in self.recent) / len(self.recent)
        lr = self.phases[0].schedule.get_last_lr()[0]
        row: dict[str, Any] = {"step": self.step, "loss": self.last_loss, "lr": lr,
                               "time": round(now - self.started_at, 4)}
        terms = self.objective.loss_terms()  # e.g. your pictures vs the class pictures of prior preservation
        if terms:
            losses = terms
        phased = len(self.phases) > 1 or bool(terms)  # each phase's curve from step 1, even before a late one starts
        if phased:
            row["losses"] = losses
        signals = self.objective.step_signals()
        if signals:
            row["signals"] = signals
        self.metrics.write(json.dumps(row) + "\n")  # (the main process's file; the others' go nowhere)
        self.metrics.flush()
        return Step(step=self.step, total=self.total, loss=self.last_loss, lr=lr, images_per_s=rate,
                    eta_s=per_step * (self.total - self.step), elapsed_s=now - self.started_at,
                    losses=tuple(losses.items()) if phased else (), signals=tuple(signals.items()))

    # --- previews and checkpoints ---------------------------------------------------------
    def preview(self, at: int) -> Preview:
        self.check_run_dir()
        config = self.config
        metrics: dict[str, float] = {}
        seeds = list(config.preview_seeds)
        labels = self.prompts
        with _EMAWeights(self.ema, getattr(self, "ema_params", [])), self._text_encoders_nearby(), \
                eager(self.backbone.denoiser):
            if self.references:  # held-out pictures beside their reconstructions, and how close they are
                pics = self.backbone.sample(seeds=seeds, references=self.references)
                metrics = self.backbone.reconstruction_metrics(self.references)
                labels = [f"held-out picture {i}" for i in range(1, len(pics) + 1)]
                if self.backbone.caps.prior_samples:  # and what its prior decodes to
                    pics = pics + self.backbone.sample(seeds=seeds)
                    labels += [f"from the prior, seed {s}" for s in seeds]
                seeds = list(range(1, len(pics) + 1))
            elif self.prompts is not None:  # text models: each prompt line with its own settings
                slots = preview_slots(self.prompts, seeds, config.preview_steps, self._preview_size())
                pics = draw_previews(self.backbone.sample, slots)
                seeds, labels = [s.seed for s in slots], [s.prompt for s in slots]
            else:
                pics = self.backbone.sample(seeds=seeds, prompts=None, steps=config.preview_steps,
                                            size=self._preview_size())
        self.trainee.train_mode(True)
        paths = save_previews(self.run_dir, at, pics, seeds, labels)
        return Preview(step=at, images=tuple(pics), prompts=tuple(labels or ()),
                       seeds=tuple(seeds), paths=tuple(paths), metrics=metrics)

    def _preview_size(self) -> tuple[int, int] | None:
        """On a CPU, previews at the training size when that is smaller than the model's own: a
        full-size SD 1.5 drew four 512 px previews in about 27 minutes there, before the first
        step; at a 256 px training size a quarter of that. GPUs preview at the native size."""
        native = int(self.backbone.caps.native_resolution or 0)
        trained = int(self.config.resolution or native)
        if self.device.type == "cpu" and 0 < trained < native and not self.backbone.caps.fixed_resolution:
            return trained, trained
        return None

    # --- validation -------------------------------------------------------------------------
    def validate(self, at: int) -> Iterator[Any]:
        """Measure the validation loss at step `at` (once per step) and say what it means."""
        measured = self.measure_validation(at)
        if measured is None:
            return
        yield measured
        if measured.rising >= OVERFIT_AFTER and not self.warned_overfit:
            self.warned_overfit = True
            text = (f"The validation loss has not improved for {measured.rising} measures: it was lowest at step "
                    f"{measured.best_step} ({measured.best_loss:.4f}) and is {measured.loss:.4f} now. The model may be "
                    "starting to learn your training pictures by heart (overfitting). The saved checkpoint with the "
                    "lowest validation loss is kept, and Export offers it; stop here, or lower the learning rate or "
                    "steps next time.")
            self.log(text)
            yield Message(text, "warning")
        elif measured.rising == 0:
            self.warned_overfit = False

    def measure_validation(self, at: int) -> Validation | None:
        """The objective's error on the held-out pictures at fixed noise (the same every time), with
        the EMA weights when there are some; written to validation.jsonl. None without held-out
        pictures or a family measure, or when this step was measured already."""
        if self.validation_images is None or (self.validations and self.validations[-1]["step"] == at):
            return None
        self.check_run_dir()
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 3)
        ctx = StepContext(step=max(1, at), device=self.device, amp=self.amp, generator=generator, config=self.config)
        with _EMAWeights(self.ema, getattr(self, "ema_params", [])), torch.no_grad(), eager(self.backbone.denoiser):
            self.trainee.train_mode(False)
            try:
                measured = mean_error(self.objective, self.validation_images, ctx, seed=self.config.seed)
                # a reconstruction family's PSNR/SSIM of the held-out pictures go in the same row
                quality = self.backbone.reconstruction_metrics(self.references) if self.references else {}
            finally:
                self.trainee.train_mode(True)
        if measured is None:
            self.validation_images = None  # this family has no measure: never try again
            return None
        loss = measured[0]
        if not math.isfinite(loss):
            return None
        row = {"step": at, "val_loss": loss, **quality}
        with (self.run_dir / VALIDATION).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.validations.append(row)
        best_step, best_loss = best_validation(self.validations)
        return Validation(step=at, loss=loss, best_step=best_step, best_loss=best_loss,
                          rising=rising_for(self.validations))

    def _validation_loss_at(self, step: int) -> float | None:
        found = [r["val_loss"] for r in self.validations if r["step"] == step]
        return found[-1] if found else None

    def _best_checkpoint_step(self, current: float | None) -> int | None:
        """The saved step with the lowest validation loss (this one included): kept from pruning."""
        best = best_checkpoint(ckpt.complete_checkpoints(self.run_dir))
        if current is not None and (best is None or (current, self.step) < (best.state["val_loss"], best.step)):
            return self.step
        return best.step if best is not None else None

    def save(self) -> Checkpoint:
        self.check_run_dir()
        measured = self.measure_validation(self.step)  # every checkpoint keeps its validation loss
        if measured is not None:
            self.pending.append(measured)
        first, *others = self.phases
        bundle: dict[str, Any] = {"optimizer": first.optimizer.state_dict(),
                                  "lr_scheduler": first.schedule.state_dict()}
        if others:
            bundle["phases"] = {s.phase.name: {"optimizer": s.optimizer.state_dict(),
                                               "lr_scheduler": s.schedule.state_dict()} for s in others}
        if self.ema is not None:
            bundle["ema"] = self.ema.state_dict()
        objective_state = self.objective.state_dict()
        if objective_state:
            bundle["objective"] = objective_state
        if self.scaler is not None:
            bundle["scaler"] = self.scaler.state_dict()
        rng = {"torch": torch.get_rng_state(), "data": self.data_rng.get_state(),
               "noise": self.noise_rng.get_state(), "noise_device": self.device.type}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        ema_weights = None
        if self.ema is not None:  # EMA of every trained parameter, by role and name, for sampling and export
            ema_weights = dict(zip(self.ema_names, self.ema.shadow_params))
        weights = ckpt.join_roles(self.trainee.state())
        self.check_finite(weights, ema_weights)
        val_loss = self._validation_loss_at(self.step)
        extra = {"val_loss": val_loss} if val_loss is not None else {}
        path = ckpt.write_checkpoint(
            self.run_dir, self.step, weights=weights, optimizer=bundle, rng=rng,
            ema=ema_weights,
            state={"epoch": self.epoch, "batch_index": self.batch_index, "loss": self.last_loss,
                   "total": self.total, "method": self.config.method, "device": self.device.type,
                   "precision": _precision_name(self.amp), **extra},
            keep=self.config.keep_checkpoints, protect=self._best_checkpoint_step(val_loss), metadata={"transferstudio_version": __version__,
                                                         **self.trainee.lora_metadata()},
            notes=self.saving_notes)
        self.checkpoint = path
        self.log(f"checkpoint {path.name}")
        return Checkpoint(step=self.step, path=path)

    def save_notes(self) -> Iterator[Any]:
        """What the last save did that a user should know (older checkpoints removed for room),
        and the validation measure it took."""
        pending, self.pending = self.pending, []
        yield from pending
        notes, self.saving_notes = self.saving_notes, []
        for text in notes:
            self.log(text)
            yield Message(text, "warning")

    def check_finite(self, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None) -> None:
        """A checkpoint is written only for a model that is still a model: its weights are numbers
        and so is its output on a fixed batch (finite weights can overflow to NaN). Otherwise the
        run diverged: UserError, and the last complete checkpoint stays the last."""
        bad = health.non_finite(weights) or (health.non_finite(ema) if ema else None)
        reason = f"the weight {bad} is not a number" if bad is not None else None
        if reason is None and not self._output_is_finite():
            reason = "the model's output is not a number"
        if reason is not None:
            raise UserError(f"Training became unstable at step {self.step} ({reason}), so no checkpoint was saved "
                            "for it.", self._unstable_advice())

    def _output_is_finite(self) -> bool:
        """The training objective on the first batch of the epoch, centre-cropped, with its own noise,
        the global RNG put back after it: a check that changes nothing a resumed run would see."""
        phase = next((s.phase for s in self.phases if self.objective.active(s.phase, self.step)), self.phases[0].phase)
        if self.probe_batch is None:
            try:
                self.probe_batch = self.images.load_batch(self.batches[0], None)
            except (UserError, OSError, ValueError):  # the pictures changed: no check, but the save goes on
                return True
        batch = self.probe_batch
        modes = {role: module.training for role, module in self.trainee.roles.items()}
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), eager(self.backbone.denoiser):
                self.trainee.train_mode(False)
                ctx = StepContext(step=max(1, self.step), device=self.device, amp=self.amp,
                                  generator=torch.Generator(self.device).manual_seed(self.config.seed + 2),
                                  config=self.config)
                with health.WatchOutputs([self.backbone.denoiser]) as watch:
                    loss = self.objective.loss(phase, batch, ctx)
                return watch.finite and bool(torch.isfinite(loss).all())
        finally:
            for role, module in self.trainee.roles.items():
                module.train(modes[role])

    def _unstable_advice(self) -> str:
        saved = f"Your work up to step {ckpt.latest_checkpoint(self.run_dir).step} is saved. " \
            if self.run_dir is not None and ckpt.latest_checkpoint(self.run_dir) is not None else ""
        return saved + health.fresh_advice(self.project.folder)

    def check_run_dir(self) -> None:
        """The run folder must still be there: writing into a deleted one would recreate it
        without its settings and early metrics, and the next `train` would start from 0."""
        if self.run_dir is not None and not self.run_dir.is_dir():
            raise UserError(f"The run folder {self.run_dir} was deleted or moved while training, so training "
                            f"stopped at step {self.step}.",
                            "Nothing was written after that; `train` again starts a new run, or continues "
                            "another run of the project that has a checkpoint.")

    def picture_problems(self) -> Iterator[Message]:
        """A warning for each picture that could not be read during training (another picture of
        the same size took its place), also written to the run's log."""
        for problem in self.images.take_problems():
            text = f"Skipped {problem.path.name} during training: {problem.reason}"
            self.log(f"skipped during training {problem.path}: {problem.reason}")
            yield Message(text + "; another picture of the same size takes its place.", "warning")

    def log(self, text: str) -> None:
        if not self.group.main or self.run_dir is None or not self.run_dir.is_dir():
            return  # never recreate a run folder that was deleted (check_run_dir says so)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with (self.run_dir / "log.txt").open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {text}\n")


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device, phase: Phase) -> Any:
    """The optimizer the run's settings name (recorded with the run, so a resumed run gets the
    same kind and its saved state fits); one that cannot run here is refused with what to do."""
    if not params:
        raise UserError("Nothing to train: the model has no layers the adapter can attach to.",
                        "Pick another backbone or the full fine-tuning method.")
    lr = config.learning_rate * phase.lr_scale
    betas = (float(phase.betas[0]), float(phase.betas[1]))
    kind = getattr(config, "optimizer", "adamw")
    if kind == "adamw8bit":
        if device.type != "cuda":
            raise UserError("The 8-bit AdamW optimizer needs a CUDA GPU.",
                            "Choose the AdamW optimizer in Settings ▸ Advanced (or train on a CUDA GPU).")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("The 8-bit AdamW optimizer needs the bitsandbytes package, which is not installed.",
                            "Install it (`pip install bitsandbytes`) or choose the AdamW optimizer.") from None
        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=phase.weight_decay)
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         beta1=betas[0] or None, weight_decay=phase.weight_decay)
    if kind == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise UserError("The Prodigy optimizer is not installed.", "Choose the AdamW optimizer.") from None
        return Prodigy(params, lr=lr, betas=betas, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=phase.weight_decay,
                             **fused_optimizer_options(params, device))



class _EMAWeights:
    """Use the EMA weights inside the block (previews), then put the trained ones back."""

    def __init__(self, ema: Any, params: list[torch.nn.Parameter]) -> None:
        self.ema, self.params = ema, params

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc: Any) -> None:
        if self.ema is not None:
            self.ema.restore(self.params)


def _precision_name(amp: torch.dtype | None) -> str:
    """The number format the run really trained in (bf16/fp16 asked for on a CPU is fp32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32") if amp is not None else "fp32"


def _truncate_metrics(run_dir: Path, step: int, name: str = "metrics.jsonl") -> None:
    """Forget metrics written after the checkpoint we resume from (they will be redone)."""
    path = run_dir / name
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and _step_of(line) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
