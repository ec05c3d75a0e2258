"""`transferstudio demo --family gan`: few-shot GAN adaptation, shown end to end on a CPU.

1. builds the GAN variant of the sample project (the starter GAN, pretrained on landscapes, and
   the 24 sample city pictures) and adapts it (generator and discriminator, adaptive augmentation,
   generator EMA);
2. exports the adapted generator (.safetensors with its config, and ONNX);
3. trains the same architecture from seeded random weights with the same settings and steps;
4. draws 256 samples from each model (and from the starter before adaptation) from the same
   latents, and measures: the distance to 256 held-out procedural cities (sliced Wasserstein
   distance over Laplacian-pyramid patches, colour counted), diversity (mean pairwise distance
   among samples: low means mode collapse) and the distance from each sample to its nearest
   training picture (much lower than a new real city's means copying);
5. writes comparison.png (same latents, row by row) and evolution.png (the fine-tune's previews
   from step 0 to the end: landscapes turning into cities).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from transferstudio.starter.demo import _export, _fresh, _picture_rows, _pictures, _train

SAMPLES = 256
HELD_OUT_SEEDS = range(10_000, 10_256)  # procedural cities no run trains on
GRID_SEEDS = list(range(1, 9))
ROWS = (("base", "starter GAN before adapting (landscapes)"), ("finetuned", "pretrained + adapted"),
        ("scratch", "from scratch, same steps"))


def run_gan_demo(out: Path, *, steps: int | None = None, learning_rate: float | None = None,
                 samples: int = SAMPLES, log=print, **overrides: Any) -> int:
    from transferstudio.backbones.gan import GANFamily
    from transferstudio.project.project import create_project, load_project
    from transferstudio.starter.sample import create_sample_gan_project
    from transferstudio.training.trainer import TrainJob, train

    out = Path(out)
    t_start = time.perf_counter()
    _fresh(out, "project", "scratch", "export")
    if steps:
        overrides["steps"] = steps
    if learning_rate:
        overrides["learning_rate"] = learning_rate
    project = load_project(create_sample_gan_project(out / "project", **overrides))
    log(f"TransferStudio GAN demo: adapt the landscape starter GAN to the {project.images} pictures")
    if _train(project, train, TrainJob, log, "pretrained starter GAN → cities") is None:
        return 2
    exports = {"generator": _export(project, out / "export" / "starter-gan-cities.safetensors", log,
                                    fmt="generator"),
               "onnx": _export(project, out / "export" / "starter-gan-cities-onnx.onnx", log, fmt="onnx")}

    config = project.config
    scratch_backbone = GANFamily().initialize(out / "scratch" / "random-init-gan", seed=config.seed,
                                              like=project.backbone)
    scratch = create_project(out / "scratch" / "project", backbone=scratch_backbone, images=project.images,
                             name="GAN from scratch (baseline)", config=dataclasses.replace(config))
    if _train(scratch, train, TrainJob, log, "random init → cities (baseline)") is None:
        return 2

    log(f"\nsampling {samples} pictures from each model and measuring them against {len(HELD_OUT_SEEDS)} "
        "held-out cities…")
    report = compare_gans(project, scratch, out, samples=samples)
    report["exports"] = {fmt: str(path) for fmt, path in exports.items()}
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log("")
    log("                                            distance   diversity   nearest training picture")
    log("                                            (lower)    (higher)    (lower = closer to a copy)")
    for key, label in ROWS:
        row = report[key]
        log(f"  {label + ':':<41} {row['swd']:8.1f}   {row['diversity']:9.3f}   {row['nearest_training']:9.3f}")
    real = report["held_out_cities"]
    log(f"  {'held-out real cities (for reference):':<41} {'':8}   {real['diversity']:9.3f}   "
        f"{real['nearest_training']:9.3f}")
    log("  (distance: sliced Wasserstein ×1e3 to the held-out cities, colour counted; diversity: mean L1")
    log("   between two samples, 0–1; nearest training picture: mean L1 to the closest of the 24)")
    tuned, baseline = report["finetuned"], report["scratch"]
    if tuned["swd"] < baseline["swd"]:
        verdict = (f"transfer helped: the adapted starter is {100 * (1 - tuned['swd'] / baseline['swd']):.0f}% "
                   "closer to new cities than the same GAN trained from scratch")
        if tuned["nearest_training"] < 0.5 * real["nearest_training"]:
            verdict += ", but its samples sit close to the training pictures (copying: fewer steps help)"
    else:
        verdict = "transfer did NOT help in this run"
    log(f"  → {verdict}")
    log(f"side by side: {out / 'comparison.png'} (rows: training pictures, starter, adapted, from scratch)")
    log(f"the run:      {out / 'evolution.png'} (the same latents from step 0 to the end)")
    log(f"exported:     {exports['generator']} (transferstudio.backbones.gan_model.load_generator)")
    log(f"              {exports['onnx']} (ONNX: input z, output image)")
    log(f"total time:   {report['seconds']:.0f} s")
    return 0


def held_out_cities(size: int) -> np.ndarray:
    from transferstudio.starter.procedural import city_batch

    return city_batch(HELD_OUT_SEEDS, size)


def training_pictures(project: Any, size: int) -> np.ndarray:
    """The project's pictures as the GAN sees them (centre square, resized): (N, size, size, 3) uint8."""
    from transferstudio.data.holdout import reference_picture
    from transferstudio.data.scan import scan_images

    return np.stack([np.asarray(reference_picture(r.path, size)) for r in scan_images(project.images).images])


def diversity(images: np.ndarray, pairs: int = 2000, seed: int = 0) -> float:
    """Mean L1 distance (0–1) between random pairs of pictures: near 0 when samples collapse to one."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(images), pairs), rng.integers(0, len(images), pairs)
    keep = a != b
    x = images.astype(np.float32) / 255.0
    return float(np.abs(x[a[keep]] - x[b[keep]]).mean())


def nearest_training(images: np.ndarray, training: np.ndarray) -> float:
    """Mean over pictures of the L1 distance (0–1) to the closest training picture."""
    x = images.astype(np.float32).reshape(len(images), -1) / 255.0
    t = training.astype(np.float32).reshape(len(training), -1) / 255.0
    distances = np.abs(x[:, None, :] - t[None, :, :]).mean(axis=2)
    return float(distances.min(axis=1).mean())


def _uint8(pixels: Any) -> np.ndarray:
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def compare_gans(project: Any, scratch: Any, out: Path, *, samples: int) -> dict:
    from transferstudio.adapt.restore import load_trained
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.starter.metric import swd

    models = {"base": load_backbone(project.backbone), "finetuned": load_trained(project).backbone,
              "scratch": load_trained(scratch).backbone}
    size = models["base"].config.resolution
    real = held_out_cities(size)
    training = training_pictures(project, size)
    figures: dict[str, Any] = {}
    for key, backbone in models.items():
        pictures = _uint8(backbone.generate(list(range(1000, 1000 + samples))))
        figures[key] = {"swd": swd(pictures, real, normalize="reference")["average"],
                        "swd_patterns": swd(pictures, real)["average"],
                        "diversity": diversity(pictures), "nearest_training": nearest_training(pictures, training)}
    figures["held_out_cities"] = {"diversity": diversity(real), "nearest_training": nearest_training(real, training),
                                  "count": len(real), "seeds": [HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.stop]}
    from PIL import Image

    rows = [("training pictures (8 of the 24)", [Image.fromarray(a) for a in training[:len(GRID_SEEDS)]])]
    for key, label in ROWS:
        rows.append((f"{label}   distance {figures[key]['swd']:.1f}",
                     _pictures(models[key].generate(GRID_SEEDS))))
    _picture_rows(out / "comparison.png", rows)
    _evolution(project, out / "evolution.png")
    config = project.config
    return {"family": "gan", **figures, "samples": samples, "train_steps": config.steps,
            "learning_rate": config.learning_rate, "batch_size": config.batch_size, "augment": config.augment,
            "freeze_discriminator_blocks": config.freeze_discriminator_blocks,
            "consistency_weight": config.consistency_weight}


def _evolution(project: Any, path: Path, seeds: int = 8, columns: int = 6) -> None:
    """The fine-tune's previews of the first seeds, from step 0 to the end (one row per preview)."""
    from PIL import Image

    from transferstudio.training.previews import preview_steps

    run = project.latest_run()
    steps = preview_steps(run)
    if len(steps) > columns:  # evenly spaced, always with the first and the last
        picks = np.linspace(0, len(steps) - 1, columns).round().astype(int)
        steps = [steps[i] for i in sorted(set(picks))]
    rows = []
    for step in steps:
        folder = run / "previews" / f"step-{step:06d}"
        files = sorted(folder.glob("seed-*.png"), key=lambda p: int(p.stem.split("-")[1]))[:seeds]
        rows.append(("untrained (the starter)" if step == 0 else f"step {step}",
                     [Image.open(f).convert("RGB") for f in files]))
    _picture_rows(path, rows, cell=96)
