"""`transferstudio demo`: transfer learning, shown end to end on a CPU.

1. builds the sample project (starter model + sample city images) in OUT/project,
2. fine-tunes the pretrained starter on the cities (previews at step 0 and at the end),
3. exports the adapted weights (.safetensors in a diffusers folder, or a LoRA file),
4. trains the same architecture from random initialisation on the same images for the
   same steps (the from-scratch baseline: `train --scratch`, a run of the same project),
5. samples both, scores them against the target images with the sliced Wasserstein
   distance over Laplacian-pyramid patches, and writes the grids side by side,
6. writes the project's transfer report (OUT/report/report.html: validation curves of both runs,
   base vs adapted, distances to the held-out pictures, the memorization check).

`transferstudio demo --family vae` (`run_vae_demo`) does the same for the starter VAE: decoder-only
fine-tune, the same architecture trained from random weights, and PSNR/SSIM/MS-SSIM of their
reconstructions (and the starter's) of held-out procedural cities, with a grid of them.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from transferstudio.core.events import Failed, Finished, Started, Step

N_SAMPLES = 64
SAMPLE_STEPS = 50


def run_demo(out: Path, *, steps: int | None = None, method: str = "full", samples: int = N_SAMPLES,
             sample_steps: int = SAMPLE_STEPS, learning_rate: float | None = None, log=print,
             report_writer: Any = None) -> int:
    """`report_writer(project, out_dir, run, sample_steps=)`: writes the transfer report (the CLI passes
    insight.report.write_report, a layer above this one); None: no report."""
    from transferstudio.project.project import load_project
    from transferstudio.starter.sample import create_sample_project
    from transferstudio.training.trainer import TrainJob, train

    from transferstudio.project.run import find_run

    out = Path(out)
    t_start = time.perf_counter()
    _fresh(out, "project", "scratch", "report")
    overrides: dict[str, Any] = {"method": method}
    if method == "lora":
        overrides.update(learning_rate=2e-3, rank=32, alpha=32)
    if steps:
        overrides["steps"] = steps
    if learning_rate:
        overrides["learning_rate"] = learning_rate
    project = load_project(create_sample_project(out / "project", **overrides))
    log(f"TransferStudio demo: fine-tune the landscape starter model on {project.images}")

    finetuned = _train(project, train, TrainJob, log, "pretrained starter → cities")
    if finetuned is None:
        return 2
    tuned_run = find_run(project, finetuned.checkpoint.parent.parent.name)
    target = out / "export" / ("starter-cities" if project.config.method == "full" else "starter-cities.safetensors")
    export_path = _export(project, target, log)

    baseline = _train(project, train, TrainJob, log, "random init → cities (baseline)", scratch=True)
    if baseline is None:
        return 2
    scratch_run = find_run(project, baseline.checkpoint.parent.parent.name)

    log("sampling both models and measuring the distance to the target images…")
    report = compare(project, tuned_run, scratch_run, out, samples=samples, sample_steps=sample_steps)
    report["export"] = str(export_path)
    if report_writer is not None:
        log("writing the transfer report…")
        report["report"] = str(report_writer(project, out / "report", tuned_run, sample_steps=sample_steps))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log("")
    log("sliced Wasserstein distance to the target images (×1e3, lower is closer):")
    log("                                  patterns   with colour")
    for label, key in (("starter before fine-tuning:", "base"), ("pretrained + fine-tuned:", "finetuned"),
                       ("from scratch, same steps:", "scratch")):
        log(f"  {label:<30} {report['swd_' + key]:8.1f}  {report['swd_colour_' + key]:10.1f}")
    log("  (patterns: Karras et al.'s SWD, each set normalised by its own colour statistics;")
    log("   with colour: both normalised by the target images' statistics, so colour and brightness count)")
    ratios = [report[f"swd{kind}_finetuned"] / report[f"swd{kind}_scratch"] for kind in ("", "_colour")]
    if max(ratios) < 1:
        verdict = (f"transfer helped: the pretrained run is {100 * (1 - ratios[0]):.0f}% closer than from scratch "
                   f"({100 * (1 - ratios[1]):.0f}% with colour)")
    else:
        verdict = "transfer did NOT help in this run"
    log(f"  → {verdict}")
    log(f"side by side: {out / 'comparison.png'}")
    log(f"previews:     {out / 'preview-step-0.png'} and {out / 'preview-final.png'}")
    log(f"exported:     {export_path}")
    if "report" in report:
        log(f"report:       {report['report']}")
    log(f"total time:   {report['seconds']:.0f} s")
    return 0


def _train(project, train, TrainJob, log, title: str, *, scratch: bool = False) -> Any:
    from transferstudio.core.events import EventHandler, Finished

    class Progress(EventHandler):
        last_print = 0.0

        def on_started(self, event: Any) -> None:
            log(f"   {event.images} images, {event.trainable_parameters:,} trainable parameters on {event.device}")

        def on_step(self, event: Any) -> None:
            now = time.perf_counter()
            if now - self.last_print > 5 or event.step == event.total:
                self.last_print = now
                log(f"   step {event.step}/{event.total}  loss {event.loss:.4f}  "
                    f"{event.images_per_s:.0f} img/s  ETA {event.eta_s:.0f} s")

        def on_failed(self, event: Any) -> None:
            log(f"error: {event.message} {event.advice}")

    log(f"\n== {title}: {project.config.steps} steps, {project.config.method}")
    end = Progress().run(train(TrainJob(project, fresh=True, scratch=scratch)))
    return end if isinstance(end, Finished) else None


def _fresh(out: Path, *names: str) -> None:
    """`out` exists, and none of its `names` (what an earlier demo left there) does."""
    for name in names:
        if (out / name).exists():
            shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)


def _export(project, target: Path, log, fmt: str = "diffusers") -> Path:
    from transferstudio.export.formats import export_project

    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    result = export_project(project, target, fmt=fmt)
    log(f"   exported {result.kind} weights ({fmt}) to {result.path}")
    return result.path


def compare(project, tuned_run, scratch_run, out: Path, *, samples: int, sample_steps: int) -> dict:
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.data.images import open_rgb
    from transferstudio.data.scan import scan_images
    from transferstudio.starter.metric import swd
    from transferstudio.adapt.restore import load_trained

    seeds = list(range(1000, 1000 + samples))
    tuned = load_trained(project, tuned_run.folder).backbone.sample(seeds=seeds, steps=sample_steps)
    base = load_backbone(project.backbone).sample(seeds=seeds, steps=sample_steps)
    baseline = load_trained(project, scratch_run.folder).backbone.sample(seeds=seeds, steps=sample_steps)
    size = tuned[0].width
    targets = [open_rgb(r.path) for r in scan_images(project.images).images]
    targets = [t.resize((size, size)) for t in targets]
    scores, colour = {}, {}
    for name, images in (("finetuned", tuned), ("scratch", baseline), ("base", base)):
        scores[name] = swd(images, targets, seed=0)["average"]
        colour[name] = swd(images, targets, seed=0, normalize="reference")["average"]

    def caption(title: str, key: str) -> str:
        return f"{title}   SWD {scores[key]:.0f} · with colour {colour[key]:.0f}"

    _side_by_side(out / "comparison.png", [("target images", targets),
                                           (caption("starter before fine-tuning", "base"), base),
                                           (caption("pretrained + fine-tuned", "finetuned"), tuned),
                                           (caption("from scratch", "scratch"), baseline)])
    previews = sorted((tuned_run.folder / "previews").iterdir())
    _enlarged_preview(previews[0], out / "preview-step-0.png")
    _enlarged_preview(previews[-1], out / "preview-final.png")
    return {"swd_finetuned": scores["finetuned"], "swd_scratch": scores["scratch"], "swd_base": scores["base"],
            "swd_colour_finetuned": colour["finetuned"], "swd_colour_scratch": colour["scratch"],
            "swd_colour_base": colour["base"],
            "samples": samples, "sample_steps": sample_steps, "train_steps": project.config.steps,
            "method": project.config.method}


def _enlarged_preview(folder: Path, dest: Path) -> None:
    """The run's preview samples as a 4-column grid, small models' pixels enlarged (nearest) to be seen."""
    from PIL import Image

    from transferstudio.training.previews import grid

    files = sorted(folder.glob("seed-*.png"), key=lambda p: int(p.stem.removeprefix("seed-") or 0))
    images = [Image.open(p).convert("RGB") for p in files]
    sheet = grid(images, cols=4)
    scale = max(1, 128 // images[0].width)
    sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST).save(dest)


def _side_by_side(path: Path, panels: list[tuple[str, list]]) -> None:
    from PIL import Image, ImageDraw

    from transferstudio.training.previews import grid

    grids = [(title, grid(images[:16], cols=4)) for title, images in panels]
    scale = max(1, 512 // grids[0][1].width)
    grids = [(t, g.resize((g.width * scale, g.height * scale), Image.NEAREST)) for t, g in grids]
    w, h = grids[0][1].size
    canvas = Image.new("RGB", (len(grids) * (w + 16) + 16, h + 48), (18, 18, 22))
    draw = ImageDraw.Draw(canvas)
    for i, (title, g) in enumerate(grids):
        x = 16 + i * (w + 16)
        draw.text((x, 14), title, fill=(230, 230, 230))
        canvas.paste(g, (x, 36))
    canvas.save(path)


# --- the VAE demo: `transferstudio demo --family vae` ----------------------------------------------

HELD_OUT_CITY_SEEDS = range(10_000, 10_064)  # procedural cities no run trains on (the starter VAE's card uses them)
GRID_PICTURES = 8
VAE_ROWS = (("base", "starter VAE before fine-tuning"), ("finetuned", "pretrained + fine-tuned (decoder only)"),
            ("scratch", "from scratch, same steps (full)"))


def run_vae_demo(out: Path, *, steps: int | None = None, learning_rate: float | None = None,
                 held_out: int = len(HELD_OUT_CITY_SEEDS), log=print, **overrides: Any) -> int:
    """The VAE part of the demo: fine-tune the starter VAE's decoder on the sample cities, train the
    same architecture from random weights with the same settings (encoder too: a random encoder
    must learn), and measure both, and the starter before fine-tuning, on held-out cities.
    `overrides` are sample_vae_config settings (tests make the run tiny with them)."""
    import dataclasses

    from transferstudio.project.project import create_project, load_project
    from transferstudio.starter.sample import create_sample_vae_project
    from transferstudio.training.trainer import TrainJob, train

    out = Path(out)
    t_start = time.perf_counter()
    _fresh(out, "project", "scratch")
    if steps:
        overrides["steps"] = steps
    if learning_rate:
        overrides["learning_rate"] = learning_rate
    project = load_project(create_sample_vae_project(out / "project", **overrides))
    log(f"TransferStudio VAE demo: fine-tune the landscape starter VAE on {project.images}")
    log("   (the decoder only: the encoder and its latent space stay the starter's)")
    if _train(project, train, TrainJob, log, "pretrained starter VAE → cities") is None:
        return 2
    exports = {"diffusers": _export(project, out / "export" / "starter-vae-cities", log),
               "single-file": _export(project, out / "export" / "starter-vae-cities.safetensors", log,
                                      fmt="single-file")}

    scratch_backbone = _random_vae(project.backbone, out / "scratch" / "random-init-vae", project.config.seed)
    scratch = create_project(out / "scratch" / "project", backbone=scratch_backbone, images=project.images,
                             name="VAE from scratch (baseline)",
                             config=dataclasses.replace(project.config, method="full"))
    log("\nThe baseline trains every weight (method full): its encoder is random too, and a decoder-only "
        "run on a random encoder could not learn. Same steps, learning rate, batch and seed.")
    if _train(scratch, train, TrainJob, log, "random init → cities (baseline)") is None:
        return 2

    log(f"\nreconstructing {held_out} held-out procedural cities no run trained on…")
    report = compare_vaes(project, scratch, out, held_out=held_out)
    report["exports"] = {fmt: str(path) for fmt, path in exports.items()}
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    held = report["held_out"]
    log("")
    log(f"reconstruction of {held['count']} held-out cities ({held['size']} px, city_batch seeds "
        f"{held['seeds'][0]}..{held['seeds'][1] - 1}); higher is better:")
    log("                                            PSNR dB    SSIM   MS-SSIM")
    for key, label in VAE_ROWS:
        row = report[key]
        log(f"  {label + ':':<41} {row['psnr']:7.2f}  {row['ssim']:6.3f}  {row['ms_ssim']:8.3f}")
    tuned, base, baseline = report["finetuned"], report["base"], report["scratch"]
    if tuned["ssim"] > baseline["ssim"] and tuned["psnr"] > baseline["psnr"]:
        verdict = (f"transfer helped: the fine-tuned VAE is {tuned['psnr'] - baseline['psnr']:+.1f} dB and "
                   f"{tuned['ssim'] - baseline['ssim']:+.3f} SSIM ahead of from scratch "
                   f"({tuned['psnr'] - base['psnr']:+.1f} dB, {tuned['ssim'] - base['ssim']:+.3f} SSIM "
                   f"over the starter before fine-tuning)")
    else:
        verdict = "transfer did NOT help in this run"
    log(f"  → {verdict}")
    log(f"side by side: {out / 'comparison.png'} (rows: originals, starter, fine-tuned, from scratch)")
    log(f"exported:     {exports['diffusers']} (AutoencoderKL.from_pretrained)")
    log(f"              {exports['single-file']} (models/VAE of A1111/Forge/ComfyUI)")
    log(f"total time:   {report['seconds']:.0f} s")
    return 0


def _random_vae(backbone_dir: Path, dest: Path, seed: int) -> Path:
    """The starter VAE's architecture with freshly initialised weights (seeded)."""
    import torch
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(backbone_dir))
    if dest.exists():
        shutil.rmtree(dest)
    vae.save_pretrained(dest, safe_serialization=True)
    return dest


def held_out_cities(count: int = len(HELD_OUT_CITY_SEEDS), size: int = 32):
    """(seeds, pictures as a [-1, 1] (N, 3, size, size) tensor): cities the runs never see (the
    sample pictures are other seeds of the same generator)."""
    import torch

    from transferstudio.starter.procedural import city_batch

    seeds = HELD_OUT_CITY_SEEDS[:count]
    return seeds, torch.from_numpy(city_batch(seeds, size)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_quality(backbone, pixels) -> tuple[Any, dict[str, float]]:
    """Posterior-mean reconstructions rounded to 8 bit (what a user sees) and their mean PSNR,
    SSIM, MS-SSIM and mean absolute error (on the [0, 1] scale) against `pixels`."""
    import torch

    from transferstudio.backbones.image_quality import ms_ssim, psnr, ssim

    backbone.vae.eval()
    with torch.no_grad():
        recon = backbone.reconstruct(pixels.to(backbone.device)).cpu()
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1.0
    return recon, {"psnr": float(psnr(recon, pixels).mean()), "ssim": float(ssim(recon, pixels).mean()),
                   "ms_ssim": float(ms_ssim(recon, pixels).mean()),
                   "l1": float((recon - pixels).abs().mean() / 2)}


def compare_vaes(project, scratch, out: Path, *, held_out: int) -> dict:
    from transferstudio.adapt.restore import load_trained
    from transferstudio.backbones.registry import load_backbone

    size = load_backbone(project.backbone).caps.native_resolution
    seeds, pixels = held_out_cities(held_out, size)
    models = {"base": load_backbone(project.backbone), "finetuned": load_trained(project).backbone,
              "scratch": load_trained(scratch).backbone}
    recons, figures = {}, {}
    for key, backbone in models.items():
        recons[key], figures[key] = vae_quality(backbone, pixels)
    rows = [("held-out originals", pixels)] + [
        (f"{label}   PSNR {figures[key]['psnr']:.2f} dB · SSIM {figures[key]['ssim']:.3f}", recons[key])
        for key, label in VAE_ROWS]
    _picture_rows(out / "comparison.png", [(title, _pictures(batch[:GRID_PICTURES])) for title, batch in rows])
    validation = {}
    for key, proj in (("finetuned", project), ("scratch", scratch)):
        lines = (proj.latest_run() / "validation.jsonl").read_text().splitlines()
        validation[key] = [json.loads(line) for line in lines]
    config = project.config
    return {"family": "vae", **figures,
            "held_out": {"generator": "transferstudio.starter.procedural.city_batch",
                         "seeds": [seeds.start, seeds.stop], "count": len(seeds), "size": size},
            "train_steps": config.steps, "learning_rate": config.learning_rate, "batch_size": config.batch_size,
            "method": config.method, "scratch_method": scratch.config.method,
            "validation": validation}


def _pictures(batch) -> list:
    from PIL import Image

    arrays = ((batch.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


def _picture_rows(path: Path, rows: list[tuple[str, list]], cell: int = 128, gap: int = 8) -> None:
    """One labelled row of pictures per entry, each enlarged (nearest) to `cell` pixels."""
    from PIL import Image, ImageDraw

    cols = max(len(images) for _, images in rows)
    label = 22
    canvas = Image.new("RGB", (gap + cols * (cell + gap), gap + len(rows) * (label + cell + gap)), (18, 18, 22))
    draw = ImageDraw.Draw(canvas)
    for r, (title, images) in enumerate(rows):
        y = gap + r * (label + cell + gap)
        draw.text((gap, y + 4), title, fill=(230, 230, 230))
        for c, image in enumerate(images):
            canvas.paste(image.resize((cell, cell), Image.NEAREST), (gap + c * (cell + gap), y + label))
    canvas.save(path)
