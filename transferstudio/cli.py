"""Command line over the engine: new, train, queue, sample, export, inspect, demo.

User errors end with a one-line reason on stderr and exit status 2; Ctrl-C while training
stops after the current step and saves a checkpoint.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import transferstudio.core.offline  # noqa: F401  (the one offline switch, before anything else)
from transferstudio import __version__
from transferstudio.core.errors import UserError
from transferstudio.project.config import TrainConfig, field_help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferstudio", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"TransferStudio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("new", help="create a project folder")
    p.add_argument("project", type=Path)
    p.add_argument("--backbone", type=Path, required=True, help="model folder or .safetensors file")
    p.add_argument("--images", type=Path, required=True, help="folder of training images")
    p.add_argument("--name")
    p.add_argument("--v-prediction", action="store_true",
                   help="the checkpoint predicts v (SD 2.x 768 models) when its files cannot tell")
    _config_options(p)

    p = sub.add_parser("train", help="train (continues from the last good checkpoint)")
    p.add_argument("project", type=Path)
    p.add_argument("--steps", type=_step_count, help="total steps (raise it to train further)")
    p.add_argument("--fresh", action="store_true", help="start a new run instead of continuing")
    p.add_argument("--keep-run-settings", action="store_true",
                   help="continue the run with the settings it was started with even though the project's "
                        "settings have changed since (without it, `train` refuses and names the changes)")
    p.add_argument("--run", metavar="ID", help="continue this run (see `runs`) instead of the latest")
    p.add_argument("--plan", action="store_true",
                   help="print how much GPU memory the run will take (weights, gradients, optimizer state, "
                        "activations), the free GPU memory and what to change if it does not fit; train nothing")
    p.add_argument("--processes", type=_step_count, metavar="N",
                   help="train with N data-parallel processes on this computer, one per CUDA GPU (or CPU "
                        "processes without GPUs); the batch size is the whole step's batch, split between them, so "
                        "the result equals one process's. Default: the project's GPUs setting. Under `accelerate "
                        "launch -m transferstudio train …` the processes are accelerate's.")
    p.add_argument("--scratch", action="store_true",
                   help="train a from-scratch baseline: the same model with random weights, every weight "
                        "trained, for the same steps, so the report can show what starting pretrained bought "
                        "(small models only: the starters, DDPMs, VAEs, GANs); continue it with --run ID")

    _queue_parser(sub)

    p = sub.add_parser("pretrain", help="make your own pretrained backbone from a large folder of pictures "
                                        "(then adapt it to a small set with `new`/`train`)")
    p.add_argument("--family", choices=("gan", "vae", "ddpm"), default="gan",
                   help="the kind of model to pretrain: gan (generator + discriminator), vae (an AutoencoderKL "
                        "with the starter VAE's architecture) or ddpm (an unconditional diffusion model with the "
                        "starter model's architecture)")
    p.add_argument("--images", type=Path, required=True, help="a large folder of pictures (thousands)")
    p.add_argument("--out", type=Path, required=True, help="the new model's folder (must not exist)")
    p.add_argument("--steps", type=_step_count, default=4000, help="optimizer steps (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="the same seed and pictures give the same weights")
    p.add_argument("--resolution", type=int, default=32, choices=(16, 32, 64, 128), help="picture size in px")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    p.add_argument("--size", choices=("tiny", "starter", "large"), default="starter",
                   help="network width: starter (the shipped starter's; a GAN: about 1.7 M weights at 32 px), "
                        "large (twice as wide), tiny (tests)")

    p = sub.add_parser("runs", help="list a project's runs: steps, loss, exports, whether it can continue")
    p.add_argument("project", type=Path)

    p = sub.add_parser("sample", help="generate an image with the trained (or base) model")
    p.add_argument("project", type=Path)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompt", default=None)
    p.add_argument("--base", action="store_true", help="use the base model without training")
    p.add_argument("--steps", type=int, default=None, help="denoising steps")
    p.add_argument("--strength", type=float, default=1.0, help="adapter strength (LoRA)")
    p.add_argument("--truncation", type=float, default=1.0,
                   help="GANs: 1 samples the whole variety; lower (e.g. 0.7) stays closer to the average picture")
    p.add_argument("--run", metavar="ID", help="sample this run (see `runs`); default: the latest trained")

    p = sub.add_parser("export", help="export the trained weights")
    p.add_argument("project", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", default=None,
                   choices=tuple(_export_formats()),
                   help="kohya: LoRA for ComfyUI/A1111; diffusers: load_lora_weights / from_pretrained; "
                        "merged-*: the whole model with the training baked in; single-file: the model as "
                        "one original-layout file (e.g. a VAE for models/VAE); generator / onnx / gan-folder: "
                        "a GAN's generator. Default: diffusers, or a GAN's generator .safetensors")
    p.add_argument("--strength", type=float, default=1.0, help="strength the merged formats bake in")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (merged formats)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--run", metavar="ID", help="export this run (see `runs`); default: the latest trained")
    p.add_argument("--step", type=_checkpoint_step, metavar="N|best",
                   help="export the checkpoint of this step, or `best`: the one with the lowest validation loss "
                        "(default: the latest)")
    p.add_argument("--pipeline", type=Path, metavar="PATH",
                   help="pipeline-* formats: the Stable Diffusion model (folder or .safetensors) a trained VAE "
                        "is put into")

    p = sub.add_parser("report", help="write a transfer report of a run (report.html with its figures, "
                                      "readable offline): losses, best step, base vs adapted, distances to "
                                      "held-out pictures, pretrained vs scratch, memorization check")
    p.add_argument("project", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for report.html, its pictures and report.json")
    p.add_argument("--run", metavar="ID", help="report this run (see `runs`); default: the latest trained")
    p.add_argument("--samples", type=_step_count, default=16,
                   help="how many seeds each model samples (default 16)")

    p = sub.add_parser("self-check", help="check that this installation is whole (imports, a short "
                                          "training, export)")
    p.add_argument("--workdir", type=Path, help="keep the sample projects and exports in this folder")

    p = sub.add_parser("check", help="is the project's base model a good starting point for its pictures? "
                                     "Prints close, related or far with its number, and advice")
    p.add_argument("project", type=Path)
    p.add_argument("--pictures", type=int, default=None,
                   help="how many of your pictures (and of the model's own) to measure (default 8)")
    p.add_argument("--again", action="store_true",
                   help="measure again even when the saved check still matches the model and pictures")

    p = sub.add_parser("inspect", help="say what a model path is, or why it is not usable")
    p.add_argument("path", type=Path)
    p.add_argument("--v-prediction", action="store_true", help="treat an SD 2.x checkpoint as v-prediction")

    p = sub.add_parser("convert-pickle", help="convert a .ckpt/.pt/.bin checkpoint to .safetensors, "
                                              "refusing anything but plain tensors")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path, nargs="?")

    p = sub.add_parser("demo", help="fine-tune the starter model on the sample images, "
                                    "and compare with training from scratch")
    p.add_argument("--family", choices=("diffusion", "vae", "gan"), default="diffusion",
                   help="diffusion: the starter image generator (default); vae: the starter VAE, "
                        "decoder-only fine-tune, scored on held-out cities (PSNR/SSIM); gan: the starter GAN, "
                        "few-shot adaptation, scored on held-out cities (distance, diversity, copying)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: demo-output, demo-output-vae or demo-output-gan)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--method", choices=("full", "lora"), default=None,
                   help="full fine-tuning (default, best on the tiny starter) or LoRA (diffusion family)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the sample project's)")
    return parser


def _export_formats() -> list[str]:
    from transferstudio.export.registry import all_formats  # light: no torch until a format writes

    return list(all_formats())


_CLI_OPTIONS = {"method": "--method", "steps": "--steps", "resolution": "--resolution",
                "trigger": "--trigger", "rank": "--rank", "alpha": "--alpha",
                "learning_rate": "--lr", "batch_size": "--batch-size", "seed": "--seed",
                "preview_every": "--preview-every", "checkpoint_every": "--checkpoint-every",
                "precision": "--precision", "device": "--device", "schedule": "--schedule",
                "train_text_encoder": "--train-text-encoder", "ema": "--ema", "dora": "--dora",
                "adapter": "--adapter", "layers": "--layers", "conv_rank": "--conv-rank", "conv_alpha": "--conv-alpha",
                "pyramid_weight": "--pyramid-weight", "kl_weight": "--kl-weight",
                "discriminator_start": "--discriminator-start", "adversarial_weight": "--adversarial-weight",
                "optimizer": "--optimizer", "augment": "--augment", "augment_strength": "--augment-strength",
                "freeze_discriminator_blocks": "--freeze-discriminator-blocks",
                "consistency_weight": "--consistency-weight", "r1_gamma": "--r1-gamma",
                "discriminator_learning_rate": "--discriminator-lr", "caption_dropout": "--caption-dropout",
                "shuffle_tags": "--shuffle-tags", "keep_tags": "--keep-tags", "tag_dropout": "--tag-dropout",
                "masked_loss": "--masked-loss", "timestep_sampling": "--timestep-sampling",
                "timestep_low": "--timestep-low", "timestep_high": "--timestep-high",
                "debiased_estimation": "--debiased-estimation", "validation": "--validation",
                "validation_every": "--validation-every", "multires_noise_iterations": "--multires-noise-iterations",
                "multires_noise_discount": "--multires-noise-discount", "input_perturbation": "--input-perturbation",
                "class_pictures": "--class-pictures", "class_prompt": "--class-prompt",
                "prior_loss_weight": "--prior-loss-weight", "cache": "--cache", "compile": "--compile"}


def _arg_help(name: str) -> str:
    return field_help(name).replace("%", "%%")  # argparse formats help text with %


def _step_count(text: str) -> int:
    """`train --steps`: a whole number of at least 1 (0 must not quietly mean "the project's")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a step count; give 1 or more")
    return value


def _config_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for name, flag in _CLI_OPTIONS.items():
        value = getattr(defaults, name)
        if isinstance(value, bool):
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=_arg_help(name))
        else:
            parser.add_argument(flag, dest=name, type=type(value), default=None,
                                help=f"{_arg_help(name)} (default: {value})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a place it may not write, wherever it happens: one sentence
        from transferstudio.core import storage

        problem = storage.user_error(exc, Path.cwd())
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_new(args: argparse.Namespace) -> int:
    from transferstudio.backbones.registry import inspect_backbone
    from transferstudio.core.errors import BackboneError, ProjectError
    from transferstudio.data.scan import scan_images
    from transferstudio.project.project import create_project

    # Everything is checked before the project folder is made: a refused `new` leaves nothing.
    config = TrainConfig()
    for name in _CLI_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    problems = config.problems()
    found = inspect_backbone(args.backbone)
    if not found.usable:
        raise BackboneError(found.problems[0] if found.problems else f"{args.backbone} is not usable.",
                            "Run `transferstudio inspect PATH` for details.")
    if found.caps is not None:  # e.g. a VAE trains its decoder, a GAN takes batches of 16
        config.suggest_for(found.caps, given={n for n in _CLI_OPTIONS if getattr(args, n, None) is not None})
    if found.caps is not None and not problems:
        problems = config.problems_for(found.caps)
    if problems:
        raise ProjectError("Invalid settings: " + "; ".join(problems) + ".", "Fix the values and try again.")
    scan = scan_images(args.images, trigger=config.trigger)  # no usable picture: one sentence now
    project = _create(create_project, args.project, backbone=args.backbone, images=args.images, name=args.name,
                      config=config, prediction_type="v_prediction" if args.v_prediction else "")
    print(f"created {project.file} ({found.label}, {config.method}, {config.steps} steps; {scan.summary()})")
    for skipped in scan.skipped:
        print(f"warning: {skipped.path} will be skipped: {skipped.reason}", file=sys.stderr)
    return 0


def _create(create: Any, folder: Path, **kwargs: Any) -> Any:
    """create_project, with a full disk or a folder it may not write to as one sentence (the
    project folder is not left behind: create_project removes what it made)."""
    from transferstudio.core import storage
    from transferstudio.core.errors import ProjectError

    try:
        return create(folder, **kwargs)
    except OSError as exc:
        problem = storage.user_error(exc, Path(folder).parent, what=f"the project could not be created in {folder}",
                                     advice="Nothing was created.", cls=ProjectError)
        if problem is None:
            raise
        raise problem from None


class _TrainPrinter:
    """How `train` shows a run on the terminal (an EventHandler, made lazily)."""

    @staticmethod
    def make() -> Any:
        from transferstudio.core.events import EventHandler

        class Printer(EventHandler):
            code = 0

            def on_started(self, event: Any) -> None:
                what = f"resuming at step {event.start_step}" if event.start_step else "training"
                print(f"{what} of {event.total_steps} on {event.device}: {event.images} images "
                      f"({event.samples_per_epoch} with repeats), {event.trainable_parameters:,} "
                      f"trainable parameters\nrun folder: {event.run_dir}")
                if event.processes > 1:
                    print(f"{event.processes} processes train together: each step's batch of {event.batch} "
                          f"pictures is split between them (about {max(1, event.batch // event.processes)} each)"
                          + (f", {event.accumulation} batches per step" if event.accumulation > 1 else ""))

            def on_step(self, event: Any) -> None:
                _progress_line(event)

            def on_progress(self, event: Any) -> None:
                if event.done == event.total:
                    print(f"{event.task}: {event.done} of {event.total}, done")
                elif event.done == 0:
                    print(f"{event.task}: {event.total} to do…")

            def on_preview(self, event: Any) -> None:
                _end_progress_line()
                print(f"preview at step {event.step}: {event.paths[0].parent if event.paths else ''}")

            def on_message(self, event: Any) -> None:
                _end_progress_line()
                print(f"{event.level}: {event.text}", file=sys.stderr)

            def on_validation(self, event: Any) -> None:
                _end_progress_line()
                best = "" if event.best_step == event.step else \
                    f" (best {event.best_loss:.4f} at step {event.best_step})"
                print(f"validation loss at step {event.step}: {event.loss:.4f}{best}")

            def on_finished(self, event: Any) -> None:
                _end_progress_line()
                print(f"finished at step {event.step}, loss {event.final_loss:.4f}; weights: {event.weights}")

            def on_stopped(self, event: Any) -> None:
                _end_progress_line()
                if event.checkpoint is not None:
                    print(f"stopped at step {event.step}; saved {event.checkpoint}. Run `train` again to continue.")
                else:
                    print("stopped before the first step; nothing new to save.")
                self.code = 130

            def on_failed(self, event: Any) -> None:
                _end_progress_line()
                print(f"error: {event.message} {event.advice}".rstrip(), file=sys.stderr)
                self.code = 2

        return Printer()


# Signals that end a training run the way Ctrl-C does: stop after this step, save, exit.
# SIGTERM: logout, shutdown, a job scheduler; SIGHUP: the terminal was closed.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def cmd_train(args: argparse.Namespace) -> int:
    from transferstudio.project.project import load_project
    from transferstudio.training.trainer import TrainJob, train

    project = load_project(args.project)
    if args.plan:
        from transferstudio.training.memory_plan import print_plan

        return print_plan(project)
    job = TrainJob(project, steps=args.steps, fresh=args.fresh, run_id=args.run,
                   keep_run_settings=args.keep_run_settings, scratch=args.scratch)
    from transferstudio.training.distributed import launched_together

    if launched_together():  # one of the processes `accelerate launch` (or torchrun) started
        if args.processes:
            raise UserError("--processes cannot be used under `accelerate launch`, which starts the processes itself.",
                            "Leave out --processes (accelerate's --num_processes decides), or run without it.")
        from transferstudio.training.distributed import Together

        group = Together()
        try:
            return _run_training(lambda commands: train(job, commands, group), quiet=not group.main)
        finally:
            group.close()
    processes = args.processes
    if not processes:  # the project's GPUs setting, as far as this computer has them
        from transferstudio.training.launch import processes_here

        processes, note = processes_here(project.config.processes, project.config.device)
        if note:
            print(f"info: {note}", file=sys.stderr)
    if processes > 1:
        from transferstudio.training.launch import train_processes

        return _run_training(lambda commands: train_processes(job, processes, commands))
    return _run_training(lambda commands: train(job, commands))


def _run_training(events: Any, quiet: bool = False) -> int:
    """Print a training's events; Ctrl-C (and the other stop signals) stop it after the step, saved.
    `quiet`: a process of a data-parallel run other than the main one (which prints for all)."""
    from transferstudio.core.commands import Commands

    commands = Commands()

    def stop(signum: int, _frame: Any) -> None:
        commands.stop()
        try:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving…", file=sys.stderr)
        except (OSError, ValueError):
            pass  # the terminal may be gone (SIGHUP)

    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    printer = _TrainPrinter.make()
    try:
        if quiet:  # the main process says it all; this one says only a failure of its own
            for event in events(commands):
                kind = type(event).__name__
                printer.code = 2 if kind == "Failed" else 130 if kind == "Stopped" else printer.code
                if kind == "Failed":
                    print(f"error (process {os.environ.get('RANK', '?')}): {event.message} {event.advice}".rstrip(),
                          file=sys.stderr)
        else:
            printer.run(events(commands))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return printer.code


def cmd_pretrain(args: argparse.Namespace) -> int:
    from transferstudio.starter.pretrain import PretrainJob, pretrain, work_folder

    job = PretrainJob(family=args.family, images=args.images, out=args.out, steps=args.steps, seed=args.seed,
                      resolution=args.resolution, batch_size=args.batch_size, learning_rate=args.lr,
                      size=args.size)
    code = _run_training(lambda commands: pretrain(job, commands))
    if code == 0:
        print(f"pretrained model: {args.out} (use it as the --backbone of a project)")
    else:
        print(f"run the same command again to continue from the last checkpoint in {work_folder(args.out)}",
              file=sys.stderr)
    return code


def cmd_runs(args: argparse.Namespace) -> int:
    from transferstudio.project.project import load_project
    from transferstudio.project.run import project_runs

    project = load_project(args.project)
    runs = project_runs(project)
    if not runs:
        print(f"{project.name}: no runs yet (`transferstudio train {args.project}` starts one)")
        return 0
    print(f"{project.name}: {len(runs)} run(s), oldest first")
    for run in runs:
        print("  " + run.describe())
    return 0


_TTY = sys.stdout.isatty()


def _progress_line(event: Any) -> None:
    eta = _duration(event.eta_s)
    line = (f"step {event.step}/{event.total}  loss {event.loss:.4f}  lr {event.lr:.2e}  "
            f"{event.images_per_s:.1f} img/s  ETA {eta}")
    if _TTY:
        print("\r" + line.ljust(78), end="", flush=True)
    elif event.step == event.total or event.step % max(1, event.total // 20) == 0:
        print(line, flush=True)


def _end_progress_line() -> None:
    if _TTY:
        print()


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def cmd_sample(args: argparse.Namespace) -> int:
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.project.project import load_project
    from transferstudio.adapt.restore import load_trained
    from transferstudio.project.lock import check_not_training

    project = load_project(args.project)
    if args.base:  # the base model alone: no run is read, so a training elsewhere does not matter
        backbone = load_backbone(project.backbone, prediction_type=project.prediction_type)
        steps = args.steps or project.config.preview_steps
    else:
        check_not_training(project.folder)  # its checkpoints are being written and pruned
        trained = load_trained(project, _run_dir(project, args.run))
        for warning in trained.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        trained.trainee.set_strength(args.strength)
        backbone = trained.backbone
        steps = args.steps or trained.config.preview_steps
    prompts = None
    if backbone.caps.conditioning == "text":
        prompts = [args.prompt or project.config.trigger or "a picture"]
    from transferstudio.adapt.device import free_device_memory, place_for_sampling

    device = place_for_sampling(backbone, project.config if args.base else trained.config)
    extra = {"truncation": args.truncation} if backbone.caps.truncation else {}
    try:
        image = _sample_checked(backbone, None if args.base else trained, project, seeds=[args.seed],
                                prompts=prompts, steps=steps, **extra)[0]
    finally:
        free_device_memory(device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _sample_checked(backbone: Any, trained: Any, project: Any, **kwargs: Any) -> list[Any]:
    """backbone.sample, refused when the denoiser's output was not a number (a diverged run
    gives black pictures that look like a result)."""
    from transferstudio.adapt.health import WatchOutputs, fresh_advice

    with WatchOutputs([backbone.denoiser]) as watch:
        images = backbone.sample(**kwargs)
    if not watch.finite:
        if trained is None:
            raise UserError("The base model's output is not a number, so it makes no picture.",
                            "Check the model with `transferstudio inspect`.")
        raise UserError(f"The trained model (step {trained.checkpoint.step} of run {trained.run_dir.name}) gives "
                        "output that is not a number: that run diverged, and its pictures would be black.",
                        "Sample another run (`--run`, see `transferstudio runs`). " + fresh_advice(project.folder))
    return images


def _checkpoint_step(text: str) -> int | str:
    if text.strip().lower() == "best":
        return "best"
    return _step_count(text)


def _run_dir(project: Any, run_id: str | None) -> Path | None:
    """The folder of the run the user named with --run (None: the latest trained run)."""
    if run_id is None:
        return None
    from transferstudio.project.run import find_run

    return find_run(project, run_id).folder


def cmd_export(args: argparse.Namespace) -> int:
    from transferstudio.export.formats import export
    from transferstudio.project.lock import check_not_training
    from transferstudio.project.project import load_project

    project = load_project(args.project)
    check_not_training(project.folder)  # its checkpoints are being written and pruned
    run_dir = _run_dir(project, args.run)
    result = export(project, args.out, args.format, strength=args.strength, fp16=args.fp16,
                    overwrite=args.overwrite, run_dir=run_dir, pipeline=args.pipeline,
                    step=args.step, insights=_insights(project, run_dir))
    for warning in getattr(result, "warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"exported {result.kind} weights from step {result.step} to {result.path}")
    return 0


def _insights(project: Any, run_dir: Path | None) -> dict[str, Any]:
    """What the domain check and the report found, for the export's manifest."""
    from transferstudio.insight.summary import export_insights

    return export_insights(project, run_dir)


def cmd_check(args: argparse.Namespace) -> int:
    from transferstudio.insight.domain import check_domain, read_saved, save
    from transferstudio.project.project import load_project

    if args.pictures is not None and args.pictures < 1:
        raise UserError(f"--pictures {args.pictures}: the check needs at least one picture.", "Give 1 or more.")
    project = load_project(args.project)
    check = None if args.again or args.pictures is not None else read_saved(project)
    if check is None:
        check = check_domain(project, pictures=args.pictures or 8,
                             progress=lambda text: print(text, file=sys.stderr, flush=True))
        save(project, check)
    print(check.headline())
    print(check.explanation())
    print(f"Advice: {check.advice}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from transferstudio.backbones.registry import inspect_backbone

    found = inspect_backbone(args.path)
    if args.v_prediction and found.prediction_type:
        found = replace(found, prediction_type="v_prediction")
    print(found.describe())
    return 0 if found.usable else 1


def cmd_convert_pickle(args: argparse.Namespace) -> int:
    from transferstudio.backbones.sdfiles.pickles import convert_pickle_to_safetensors

    dst = args.dst or args.src.with_suffix(".safetensors")
    if dst.exists():
        raise UserError(f"{dst} already exists.", "Give another destination name.")
    print(f"wrote {convert_pickle_to_safetensors(args.src, dst)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from transferstudio.insight.report import write_report
    from transferstudio.project.lock import check_not_training
    from transferstudio.project.project import load_project
    from transferstudio.project.run import find_run

    project = load_project(args.project)
    check_not_training(project.folder)  # its checkpoints are being written and pruned
    run = find_run(project, args.run)  # None: write_report says there is nothing trained yet
    path = write_report(project, args.out, run, samples=args.samples,
                        progress=lambda text: print(text, flush=True))
    print(f"wrote {path}")
    return 0


def cmd_self_check(args: argparse.Namespace) -> int:
    from transferstudio.selfcheck import main as self_check

    return self_check(["--workdir", str(args.workdir)] if args.workdir else [])


def cmd_demo(args: argparse.Namespace) -> int:
    from transferstudio.starter.demo import run_demo, run_vae_demo

    if args.family != "diffusion" and args.method is not None:
        raise UserError("--method applies to the diffusion demo only.",
                        "The VAE demo fine-tunes the decoder (its baseline trains every weight), the GAN demo "
                        "both networks; leave --method out.")
    if args.family == "vae":
        return run_vae_demo(args.out or Path("demo-output-vae"), steps=args.steps, learning_rate=args.lr)
    if args.family == "gan":
        from transferstudio.starter.demo_gan import run_gan_demo

        return run_gan_demo(args.out or Path("demo-output-gan"), steps=args.steps, learning_rate=args.lr)
    return run_demo(args.out or Path("demo-output"), steps=args.steps, method=args.method or "full",
                    learning_rate=args.lr, report_writer=_checked_report)


def _checked_report(project: Any, out_dir: Path, run: Any, **kwargs: Any) -> Path:
    """The transfer report, with the project's domain check made first if it has none."""
    from transferstudio.insight.domain import check_domain, read_saved, save
    from transferstudio.insight.report import write_report

    if read_saved(project) is None:
        save(project, check_domain(project))
    return write_report(project, out_dir, run, **kwargs)


# --- queue ----------------------------------------------------------------------------------

def _queue_parser(sub: Any) -> None:
    p = sub.add_parser("queue", help="queue training runs of one or more projects; `queue run` trains them one "
                                     "after another (the window's Training ▸ Queue shows the same queue)")
    qs = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    q = qs.add_parser("add", help="add a project's training (continues its run, like `train`) to the end")
    q.add_argument("project", type=Path)
    q.add_argument("--scratch", action="store_true", help="queue its from-scratch baseline run instead")
    q.add_argument("--steps", type=_step_count, help="total steps (default: the project's)")
    qs.add_parser("list", help="the entries, numbered, with their state")
    q = qs.add_parser("remove", help="remove entry N")
    q.add_argument("n", type=_step_count, metavar="N")
    q = qs.add_parser("move", help="move entry N to position M")
    q.add_argument("n", type=_step_count, metavar="N")
    q.add_argument("m", type=_step_count, metavar="M")
    qs.add_parser("clear", help="remove the entries that are done")
    qs.add_parser("run", help="train every waiting (or stopped) entry in order; Ctrl-C stops the current run "
                              "(saved) and leaves the rest waiting")


def cmd_queue(args: argparse.Namespace) -> int:
    from transferstudio.project.queue import Queue

    queue = Queue.load()
    if queue.problem:
        print(f"warning: {queue.problem}", file=sys.stderr)
    action = args.queue_command
    if action == "run":
        return _queue_run()
    if action == "list":
        return _queue_list(queue)
    if action == "add":
        from transferstudio.project.project import load_project

        project = load_project(args.project)  # not a project: one sentence now, not when the queue runs
        entry = queue.add(project.folder, "scratch" if args.scratch else "train", args.steps)
        queue.save()
        print(f"queued as {len(queue.entries)}: {entry.describe()}")
    elif action == "remove":
        entry = queue.remove(args.n - 1)
        queue.save()
        print(f"removed {args.n}: {entry.describe()}")
    elif action == "move":
        queue.move(args.n - 1, args.m - 1)
        queue.save()
        _queue_list(queue)
    elif action == "clear":
        gone = queue.clear_finished()
        queue.save()
        print(f"removed {gone} finished entr{'y' if gone == 1 else 'ies'}")
    return 0


def _queue_list(queue: Any) -> int:
    if not queue.entries:
        print("the queue is empty (`transferstudio queue add PROJECT` adds one)")
        return 0
    print(f"queue: {len(queue.entries)} entr{'y' if len(queue.entries) == 1 else 'ies'} ({queue.path})")
    for i, entry in enumerate(queue.entries, 1):
        note = f" — {entry.message}" if entry.message else ""
        print(f"{i:>3}. {entry.state:<8} {entry.describe()}  [{entry.project}, added {entry.added_text()}]{note}")
    return 0


def _queue_run() -> int:
    """Train each runnable entry in order, re-reading the queue before each (it may have been
    changed meanwhile, e.g. in the window). A stop ends the queue there; a failure goes on."""
    from transferstudio.core.events import Failed, Finished, Started, Stopped
    from transferstudio.project.queue import Queue

    busy = Queue.load().running_elsewhere()
    if busy is not None:
        from transferstudio.project.queue import QueueError

        raise QueueError(f"The queue is already running in another process (pid {busy.owner['pid']}, "
                         f"training {busy.describe()}).", "Let it finish, or stop it there (Ctrl-C).")
    failed, done = 0, 0
    while True:
        queue = Queue.load()
        entry = queue.next_runnable()
        if entry is None:
            break
        position = queue.entries.index(entry) + 1
        queue.mark(entry.id, "running", "training")
        queue.save()
        print(f"queue {position}/{len(queue.entries)}: {entry.describe()} ({entry.project})", flush=True)
        ended: list[Any] = []

        def events(commands: Any, entry: Any = entry) -> Any:
            for event in _queue_entry_events(entry, commands):
                if isinstance(event, Started):
                    if entry.kind == "scratch" and not entry.run:  # a crash from here on continues this run
                        _queue_note_run(entry.id, Path(event.run_dir).name)
                elif isinstance(event, (Finished, Stopped, Failed)):
                    ended.append(event)
                yield event

        state, message = "failed", "internal error (see the log)"
        try:
            _run_training(events)
            end = ended[-1] if ended else None
            if isinstance(end, Finished):
                state, message = "done", f"finished at step {end.step}"
            elif isinstance(end, Stopped):
                state = "stopped"
                message = f"stopped at step {end.step}; continues from its checkpoint" if end.checkpoint else \
                    "stopped before its first step"
            elif isinstance(end, Failed):
                message = f"{end.message} {end.advice}".strip()
        except UserError as exc:  # e.g. the project folder is gone
            print(f"error: {exc}", file=sys.stderr)
            message = str(exc)
        except KeyboardInterrupt:
            state, message = "stopped", "interrupted"
            raise
        finally:
            queue = Queue.load()
            if queue.get(entry.id) is not None:
                queue.mark(entry.id, state, message)
                queue.save()
        if state == "stopped":
            left = len(Queue.load().waiting())
            print(f"queue stopped; {left} entr{'y' if left == 1 else 'ies'} left "
                  "(`transferstudio queue run` continues)", file=sys.stderr)
            return 130
        failed += state == "failed"
        done += state == "done"
    print(f"queue finished: {done} trained" + (f", {failed} failed (see `queue list`)" if failed else ""))
    return 2 if failed else 0


def _queue_note_run(entry_id: str, run_id: str) -> None:
    """A baseline entry continues its own run (not a new baseline) once that run exists."""
    from transferstudio.project.queue import Queue

    queue = Queue.load()
    entry = queue.get(entry_id)
    if entry is not None:
        entry.run = run_id
        queue.save()


def _queue_entry_events(entry: Any, commands: Any) -> Any:
    """The same engine call as `train`: continue the project's run (or start one), or the
    entry's from-scratch baseline (continuing its own run once it has one)."""
    from transferstudio.project.project import load_project
    from transferstudio.training.trainer import TrainJob, train

    project = load_project(entry.project)
    if entry.kind == "scratch":
        job = TrainJob(project, steps=entry.steps, run_id=entry.run) if entry.run else \
            TrainJob(project, steps=entry.steps, fresh=True, scratch=True)
    else:
        job = TrainJob(project, steps=entry.steps)
    return train(job, commands)


COMMANDS = {"new": cmd_new, "train": cmd_train, "pretrain": cmd_pretrain, "runs": cmd_runs, "sample": cmd_sample,
            "export": cmd_export, "inspect": cmd_inspect, "convert-pickle": cmd_convert_pickle, "demo": cmd_demo,
            "self-check": cmd_self_check, "report": cmd_report, "check": cmd_check, "queue": cmd_queue}

if __name__ == "__main__":
    raise SystemExit(main())
