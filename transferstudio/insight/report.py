"""The transfer report: `transferstudio report PROJECT --out DIR` (and the window's Report tab).

`write_report` writes DIR/report.html with its PNG figures beside it (relative links, no script,
no style sheet or font from anywhere else: it opens offline) and DIR/report.json with the key
figures. It answers, for one trained run of the user's own project:
  - how close the base model is to the pictures (the domain check's saved verdict),
  - how training and validation loss went, and the best step,
  - what the base model and the adapted one make at the same seeds,
  - how far both are from the held-out pictures (sliced Wasserstein distance, patterns and colour),
  - what starting pretrained bought over a from-scratch run of the same model, when there is one,
  - whether the adapted model copies training pictures (the memorization check).

The heavy parts are plain functions (curves, comparisons, distances, the pictures) so that they
can be tested and reused; `build_report` puts them together and `render_html` writes the page.
"""
from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from transferstudio.core.errors import ProjectError
from transferstudio.project.run import OVERFIT_AFTER

__all__ = ["ReportPictures", "build_report", "curves_figure", "domain_section", "reference_pictures",
           "render_html", "scratch_comparison", "set_distances", "training_pictures", "write_report"]

SEED_BASE = 1000  # samples use seeds 1000, 1001, …: the same for every model in the report
HTML = "report.html"
JSON = "report.json"
FIG_CURVES = "curves.png"
FIG_SAMPLES = "base-vs-adapted.png"
FIG_SCRATCH = "pretrained-vs-scratch.png"
FIG_MEMORIZATION = "memorization.png"

Progress = Callable[[str], None]


# --- entry point ---------------------------------------------------------------------------------

def write_report(project: Any, out_dir: Path, run: Any = None, *, samples: int = 16,
                 progress: Progress | None = None, sample_steps: int | None = None,
                 pictures: "Callable[[str], list[Any] | None] | None" = None) -> Path:
    """Write the report of `run` (a Run, a run id, or None: the newest trained run) of `project`
    (a Project or its folder) into `out_dir`; returns the path of report.html. `samples`: how
    many seeds each model samples (the memorization check looks at the adapted model's).
    `sample_steps`: denoising steps (default: the run's preview steps). `pictures`: where the
    models' pictures come from (default: sample the models; see `build_report`)."""
    project = _project(project)
    run = _run(project, run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_report(project, run, out, samples=samples, progress=progress, sample_steps=sample_steps,
                           pictures=pictures)
    # plain writes (a report is made again in seconds), readable by anyone the folder is shared with
    (out / JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    (out / HTML).write_text(render_html(summary), encoding="utf-8")
    _remember(run, summary)
    return out / HTML


def _remember(run: Any, summary: dict[str, Any]) -> None:
    """The key figures in the run folder, for the export's manifest (insight.summary reads them)."""
    from transferstudio.core.atomic import write_json_atomic
    from transferstudio.insight.summary import RUN_SUMMARY

    memo = summary.get("memorization") or {}
    kept = {"made": summary["made"], "step": summary["trained_step"], "key_figures": summary["key_figures"]}
    if memo.get("checked"):
        kept["memorization"] = {"any_flagged": memo["any_flagged"], "flagged": memo["flagged"],
                                "samples": memo["samples"], "step": summary["trained_step"],
                                "score_threshold": memo["thresholds"]["score"]}
    try:
        write_json_atomic(Path(run.folder) / RUN_SUMMARY, kept)
    except OSError:
        pass  # a run folder it may not write to (e.g. read-only): the report itself is written


def _project(project: Any) -> Any:
    if isinstance(project, (str, Path)):
        from transferstudio.project.project import load_project

        return load_project(Path(project))
    return project


def _run(project: Any, run: Any) -> Any:
    from transferstudio.project.run import Run, find_run

    if isinstance(run, Run):
        return run
    found = find_run(project, run)
    if found is None:
        raise ProjectError(f"{project.name} has no trained run yet, so there is nothing to report.",
                           f"Train it first: `transferstudio train {project.folder}`.")
    if found.latest is None:
        raise ProjectError(f"The run {found.id} has no complete checkpoint yet, so there is nothing to report.",
                           "Let it train until its first checkpoint, or name another run (`transferstudio runs`).")
    return found


# --- the whole report ---------------------------------------------------------------------------

@dataclass
class ReportPictures:
    """What the models made for the report, at the same seeds."""

    kind: str  # "samples" (generated from seeds) or "reconstructions" (of the reference pictures)
    base: list[Any]
    adapted: list[Any]
    scratch: list[Any] | None = None
    inputs: list[Any] | None = None  # reconstructions: the pictures reconstructed
    memorization: list[Any] | None = None  # what the memorization check looks at (the adapted model's samples)
    quality: dict[str, dict[str, float]] | None = None  # reconstructions: PSNR/SSIM per model


def build_report(project: Any, run: Any, out: Path, *, samples: int = 16, progress: Progress | None = None,
                 sample_steps: int | None = None, pictures: Any = None) -> dict[str, Any]:
    """Every section's numbers (the report.json), writing the figures into `out` on the way.
    `pictures(which)` may stand in for the models ("base", "adapted", "scratch"; None: none)."""
    from transferstudio import __version__

    say = progress or (lambda text: None)
    scratch = None if run.baseline else find_scratch_run(project, exclude=run)
    summary: dict[str, Any] = {
        "project": project.name, "project_folder": str(project.folder), "run": run.id, "method": run.method,
        "baseline": run.baseline, "trained_step": run.trained_step, "total_steps": run.total,
        "made": time.strftime("%Y-%m-%d %H:%M"), "app_version": __version__, "figures": {},
    }
    say("reading the loss curves…")
    summary["curves"] = curves_figure(run, out / FIG_CURVES)
    if summary["curves"]["figure"]:
        summary["figures"]["curves"] = FIG_CURVES
    summary["domain"] = domain_section(project)

    say("sampling the base model and the adapted one at the same seeds…")
    refs, ref_kind = reference_pictures(project, run)
    seeds = list(range(SEED_BASE, SEED_BASE + max(1, int(samples))))
    made = (_given_pictures(pictures) if pictures is not None
            else sample_models(project, run, scratch, seeds, references=refs, steps=sample_steps, progress=say))
    summary["sampling"] = {"seeds": [seeds[0], seeds[-1]], "count": len(made.adapted), "kind": made.kind,
                           "step": run.trained_step, "scratch_step": scratch.trained_step if scratch else None}
    rows = [("held-out pictures" if ref_kind == "held-out" else "your pictures", made.inputs)] if made.inputs else []
    rows += [("base model", made.base), (f"adapted (step {run.trained_step})", made.adapted)]
    if made.scratch:
        rows.append((f"from scratch (step {scratch.trained_step})", made.scratch))
    rows_figure(rows, out / FIG_SAMPLES)
    summary["figures"]["samples"] = FIG_SAMPLES

    say("measuring the distances to your pictures…")
    summary["references"] = {"kind": ref_kind, "count": len(refs), "names": [Path(p).name for p in refs]}
    summary["distances"] = {name: set_distances(images, refs) for name, images in
                            (("base", made.base), ("adapted", made.adapted), ("scratch", made.scratch)) if images}
    if made.quality:
        for name, quality in made.quality.items():
            summary["distances"].setdefault(name, {}).update(quality)

    summary["scratch"] = scratch_section(run, scratch, out, summary["distances"])
    if summary["scratch"].get("figure"):
        summary["figures"]["scratch"] = FIG_SCRATCH

    say("looking for copies of your training pictures…")
    summary["memorization"] = memorization_section(made.memorization, training_pictures(project, run), out)
    if summary["memorization"].get("figure"):
        summary["figures"]["memorization"] = FIG_MEMORIZATION
    summary["key_figures"] = key_figures(summary)
    summary["figure_sizes"] = {name: list(_png_size(out / name)) for name in summary["figures"].values()}
    return summary


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def key_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth carrying elsewhere (the export's manifest, the window)."""
    d = summary.get("distances", {})
    curves, domain, memo, scratch = (summary.get(k) or {} for k in ("curves", "domain", "memorization", "scratch"))
    return {
        "domain_verdict": domain.get("verdict"), "domain_score": domain.get("score"),
        "best_step": curves.get("best_step"), "best_val_loss": curves.get("best_val_loss"),
        "final_val_loss": curves.get("final_val_loss"), "final_loss": curves.get("final_loss"),
        "swd_base": d.get("base", {}).get("swd"), "swd_adapted": d.get("adapted", {}).get("swd"),
        "swd_colour_base": d.get("base", {}).get("swd_colour"),
        "swd_colour_adapted": d.get("adapted", {}).get("swd_colour"),
        "references": summary.get("references", {}).get("kind"),
        "memorization_flagged": memo.get("any_flagged"),
        "memorization_flagged_count": memo.get("flagged"),
        "scratch": {k: scratch.get(k) for k in ("run", "level", "steps_pretrained", "steps_scratch", "speedup",
                                                 "equal_step", "val_pretrained", "val_scratch", "swd_pretrained",
                                                 "swd_scratch")} if scratch.get("run") else None,
    }


# --- which runs and pictures ------------------------------------------------------------------

def find_scratch_run(project: Any, exclude: Any = None) -> Any:
    """The newest from-scratch comparison run of the project with a checkpoint, or None."""
    from transferstudio.project.run import project_runs

    for candidate in reversed(project_runs(project)):
        if candidate.baseline == "scratch" and candidate.latest is not None and \
                (exclude is None or candidate.folder != exclude.folder):
            return candidate
    return None


def _records(project: Any) -> list[Any]:
    from transferstudio.data.scan import scan_images

    return list(scan_images(project.images, trigger=project.config.trigger).images)


def reference_pictures(project: Any, run: Any) -> tuple[list[Path], str]:
    """The pictures the models are measured against: the run's held-out pictures ("held-out"),
    or, when it kept none, the training pictures ("training")."""
    records = _records(project)
    held = set(run.validation_pictures)
    chosen = [r.path for r in records if r.path.name in held]
    if chosen:
        return chosen, "held-out"
    return [r.path for r in records], "training"


def training_pictures(project: Any, run: Any) -> list[Path]:
    """The pictures the run trained on (the project's, less its held-out ones)."""
    held = set(run.validation_pictures)
    return [r.path for r in _records(project) if r.path.name not in held]


def _captions(project: Any) -> list[str]:
    return [r.caption for r in _records(project)]


# --- sampling the models ---------------------------------------------------------------------------

def sample_models(project: Any, run: Any, scratch: Any, seeds: Sequence[int], *, references: Sequence[Path],
                  steps: int | None = None, progress: Progress | None = None) -> ReportPictures:
    """The base model, the run's adapted model and (if any) the scratch run's, at the same seeds
    (or, for a reconstruction model, reconstructing the same reference pictures). One model is
    in memory at a time."""
    from transferstudio.adapt.restore import load_trained
    from transferstudio.backbones.registry import load_backbone

    say = progress or (lambda text: None)
    base = load_backbone(project.backbone, prediction_type=project.prediction_type)
    reconstruction = base.caps.preview == "reconstruction"
    size = base.caps.native_resolution or 64
    inputs = _reference_inputs(references, size, len(seeds)) if reconstruction else None
    out = ReportPictures(kind="reconstructions" if reconstruction else "samples", base=[], adapted=[], inputs=inputs)
    out.quality = {} if reconstruction else None
    out.base = _pictures_of(base, project, project.config, seeds, inputs, steps, out.quality, "base")
    del base
    say("sampling the adapted model…")
    trained = load_trained(project, run.folder)
    out.adapted = _pictures_of(trained.backbone, project, trained.config, seeds, inputs, steps, out.quality,
                               "adapted")
    if reconstruction:
        prior = bool(getattr(trained.backbone.caps, "prior_samples", False))
        out.memorization = _sample(trained.backbone, trained.config, seeds, steps, project) if prior else None
    else:
        out.memorization = out.adapted
    del trained
    if scratch is not None:
        say("sampling the from-scratch run…")
        baseline = load_trained(project, scratch.folder)
        out.scratch = _pictures_of(baseline.backbone, project, baseline.config, seeds, inputs, steps, out.quality,
                                   "scratch")
    return out


def _reference_inputs(references: Sequence[Path], size: int, count: int) -> list[Any]:
    from transferstudio.data.holdout import reference_picture

    chosen = list(references)[:count]
    return [reference_picture(p, size) for p in chosen]


def _pictures_of(backbone: Any, project: Any, config: Any, seeds: Sequence[int], inputs: list[Any] | None,
                 steps: int | None, quality: dict | None, name: str) -> list[Any]:
    from transferstudio.adapt.device import free_device_memory, place_for_sampling

    device = place_for_sampling(backbone, config)
    try:
        if inputs is None:
            return _sample(backbone, config, seeds, steps, project)
        pairs = backbone.sample(seeds=list(seeds)[:len(inputs)], references=inputs)
        if quality is not None and hasattr(backbone, "reconstruction_metrics"):
            quality[name] = {k: float(v) for k, v in backbone.reconstruction_metrics(inputs).items()}
        # each pair is the original beside its reconstruction: keep the reconstruction
        return [pair.crop((pair.width - ref.width, 0, pair.width, ref.height)) for pair, ref in zip(pairs, inputs)]
    finally:
        free_device_memory(device)


def _sample(backbone: Any, config: Any, seeds: Sequence[int], steps: int | None, project: Any) -> list[Any]:
    """Samples at `seeds` the way `transferstudio sample` makes them (prompts for text models:
    the preview prompts, which come from the captions, one per seed in turn)."""
    from transferstudio.project.prompt_options import parse_prompt
    from transferstudio.training.previews import preview_prompts

    prompts = None
    if backbone.caps.conditioning == "text":
        fixed = preview_prompts(config, _captions(project), "text") or [config.trigger or "a picture"]
        fixed = [parse_prompt(line).text for line in fixed]  # the report's own seeds and steps
        prompts = [fixed[i % len(fixed)] for i in range(len(seeds))]
    return list(backbone.sample(seeds=list(seeds), prompts=prompts, steps=steps or config.preview_steps))


def _given_pictures(pictures: Callable[[str], Any]) -> ReportPictures:
    """The pictures a caller gave instead of sampling the models (tests; pictures made elsewhere)."""
    adapted = list(pictures("adapted") or [])
    scratch = pictures("scratch")
    return ReportPictures(kind="samples", base=list(pictures("base") or []), adapted=adapted,
                          scratch=list(scratch) if scratch else None, memorization=adapted)


# --- distances --------------------------------------------------------------------------------

def set_distances(images: Sequence[Any], references: Sequence[Path | Any]) -> dict[str, float]:
    """Sliced Wasserstein distances (×1e3, lower is closer) of a set of pictures to the reference
    pictures, at the pictures' own size: "patterns" (each set normalised by its own colours, as in
    the paper) and "with colour" (both by the references' colours, so colour and brightness count)."""
    from transferstudio.data.holdout import reference_picture
    from transferstudio.starter.metric import swd

    size = min(128, min(min(i.size) for i in images))
    refs = [reference_picture(Path(r), size) if isinstance(r, (str, Path)) else r for r in references]
    images = [i.convert("RGB") for i in images]
    return {"swd": swd(images, refs, seed=0, size=size)["average"],
            "swd_colour": swd(images, refs, seed=0, size=size, normalize="reference")["average"]}


# --- loss and validation curves -----------------------------------------------------------------

def _smooth(values: list[float]) -> list[float]:
    """An exponential moving average over about 1/30 of the run (noisy step losses read better)."""
    if len(values) < 10:
        return values
    alpha = min(1.0, 2.0 / (max(2, len(values) // 30) + 1))
    out, avg = [], values[0]
    for v in values:
        avg = alpha * v + (1 - alpha) * avg
        out.append(avg)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn by Agg into a file: no window, no pyplot, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_figure(run: Any, path: Path) -> dict[str, Any]:
    """The training loss (each phase's, for a model with several) and the validation loss, the
    best step marked; numbers for the page. Writes `path` when there is anything to draw."""
    from transferstudio.project.run import best_validation, rising_for

    metrics = run.metrics()
    validation = run.validation(run.trained_step or None)
    best = best_validation(validation)
    phases: dict[str, list[tuple[int, float]]] = {}
    for row in metrics:
        losses = row.get("losses") if isinstance(row.get("losses"), dict) else None
        if losses and len(losses) > 1:
            for phase, value in losses.items():
                if _finite(value):
                    phases.setdefault(str(phase), []).append((row["step"], float(value)))
        elif _finite(row.get("loss")):
            phases.setdefault("training loss", []).append((row["step"], float(row["loss"])))
    final_loss = next((float(r["loss"]) for r in reversed(metrics) if _finite(r.get("loss"))), None)
    info: dict[str, Any] = {
        "figure": None, "steps_logged": len(metrics), "final_loss": final_loss,
        "validation_measures": len(validation), "best_step": best[0] if best else None,
        "best_val_loss": best[1] if best else None,
        "final_val_loss": float(validation[-1]["val_loss"]) if validation else None,
        "final_val_step": int(validation[-1]["step"]) if validation else None,
        "rising_for": rising_for(validation) if validation else 0,
        "held_out": len(run.validation_pictures),
    }
    for key in ("psnr", "ssim"):  # reconstruction models measure these with the validation loss
        at_best = [r.get(key) for r in validation if best and r["step"] == best[0]]
        if at_best and _finite(at_best[0]):
            info[f"best_{key}"] = float(at_best[0])
    if not phases and not validation:
        return info
    panels = 2 if validation else 1
    fig = _figure(8.5, 3.2 * panels + 0.4)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for (phase, points), colour in zip(phases.items(), colours * 4):
        steps, values = [s for s, _ in points], [v for _, v in points]
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        smooth = _smooth(values)
        ax.plot(steps, smooth, color=colour, linewidth=1.8,
                label=f"{phase} (smoothed)" if smooth is not values else phase)
    positive = [v for points in phases.values() for _, v in points if v > 0]
    if positive and len(positive) == sum(len(p) for p in phases.values()) and max(positive) > 10 * min(positive):
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("training loss")
    ax.set_title("Training loss, step by step")
    if phases:
        ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    if validation:
        vx = axes[1]
        vx.plot([r["step"] for r in validation], [r["val_loss"] for r in validation], "o-", color="#ff7f0e",
                linewidth=1.8, markersize=4, label="validation loss (pictures it never trained on)")
        if best:
            vx.plot([best[0]], [best[1]], marker="*", markersize=16, color="#2ca02c", linestyle="none",
                    label=f"best step {best[0]} ({best[1]:.4g})")
            for a in axes:
                a.axvline(best[0], color="#2ca02c", linestyle="--", linewidth=1)
        vx.set_ylabel("validation loss")
        vx.set_title("Validation loss: lower is better; rising again means overfitting")
        vx.legend(loc="upper right", fontsize=8)
        vx.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.savefig(path)
    info["figure"] = Path(path).name
    return info


# --- pretrained vs scratch ---------------------------------------------------------------------

def _first_at_or_below(rows: list[dict[str, Any]], level: float) -> int | None:
    for row in rows:
        if row["val_loss"] <= level:
            return int(row["step"])
    return None


def scratch_comparison(pretrained: list[dict[str, Any]], scratch: list[dict[str, Any]]) -> dict[str, Any]:
    """What starting pretrained bought, from the two runs' validation rows (step, val_loss):
    the level both reach (the higher of their two best losses: usually the scratch run's best),
    the first step each reached it and the ratio; and the losses at the last step both measured."""
    out: dict[str, Any] = {"level": None, "steps_pretrained": None, "steps_scratch": None, "speedup": None,
                           "equal_step": None, "val_pretrained": None, "val_scratch": None}
    if not pretrained or not scratch:
        return out
    best_p = min(r["val_loss"] for r in pretrained)
    best_s = min(r["val_loss"] for r in scratch)
    level = max(best_p, best_s)
    steps_p, steps_s = _first_at_or_below(pretrained, level), _first_at_or_below(scratch, level)
    out.update(level=float(level), steps_pretrained=steps_p, steps_scratch=steps_s,
               best_pretrained=float(best_p), best_scratch=float(best_s))
    if steps_p is not None and steps_s is not None and steps_p > 0:
        out["speedup"] = steps_s / steps_p  # (at step 0 the pretrained model was there before training)
    p_by_step = {r["step"]: r["val_loss"] for r in pretrained}
    s_by_step = {r["step"]: r["val_loss"] for r in scratch}
    common = sorted(set(p_by_step) & set(s_by_step))
    if common:
        step = common[-1]
        out.update(equal_step=int(step), val_pretrained=float(p_by_step[step]), val_scratch=float(s_by_step[step]))
    return out


def scratch_section(run: Any, scratch: Any, out: Path, distances: dict[str, Any]) -> dict[str, Any]:
    """The comparison with the project's from-scratch run (numbers and a figure), or how to make one."""
    if run.baseline:
        return {"run": None, "note": "This run is itself a from-scratch baseline."}
    if scratch is None:
        return {"run": None}
    pre, base = run.validation(), scratch.validation()
    info = scratch_comparison(pre, base)
    info.update(run=scratch.id, scratch_step=scratch.trained_step, pretrained_step=run.trained_step,
                swd_pretrained=(distances.get("adapted") or {}).get("swd"),
                swd_scratch=(distances.get("scratch") or {}).get("swd"),
                swd_colour_pretrained=(distances.get("adapted") or {}).get("swd_colour"),
                swd_colour_scratch=(distances.get("scratch") or {}).get("swd_colour"), figure=None)
    if pre or base:
        fig = _figure(8.5, 3.6)
        ax = fig.subplots()
        for rows, label, colour in ((pre, "pretrained, adapted", "#1f77b4"), (base, "from scratch", "#d62728")):
            if rows:
                ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], "o-", color=colour,
                        markersize=3, linewidth=1.6, label=label)
        if info["level"] is not None:
            ax.axhline(info["level"], color="#555", linestyle=":", linewidth=1,
                       label=f"level both reach ({info['level']:.4g})")
            for step, colour in ((info["steps_pretrained"], "#1f77b4"), (info["steps_scratch"], "#d62728")):
                if step is not None:
                    ax.plot([step], [info["level"]], marker="v", markersize=10, color=colour, linestyle="none")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.set_title("Pretrained vs from scratch: validation loss (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(out / FIG_SCRATCH)
        info["figure"] = FIG_SCRATCH
    return info


# --- the domain check ---------------------------------------------------------------------------

def domain_section(project: Any) -> dict[str, Any]:
    """The saved domain verdict (`transferstudio check`), or {} when there is none yet."""
    from transferstudio.insight.domain import read_saved

    found = read_saved(project)  # None when there is none, it no longer matches, or it is damaged
    if found is None:
        return {}
    return {**found.to_dict(), "explanation": found.explanation()}


# --- memorization -------------------------------------------------------------------------------

def memorization_section(samples: Sequence[Any] | None, training: Sequence[Path], out: Path) -> dict[str, Any]:
    """The memorization check of the adapted model's samples against the training pictures, with
    its side-by-side figure."""
    from transferstudio.insight.memorization import check_memorization, memorization_grid

    if not samples:
        return {"checked": False,
                "note": "This model reconstructs the pictures it is given rather than making new ones, so it "
                        "cannot copy a training picture on its own; there is nothing to check."}
    if not training:
        return {"checked": False, "note": "The project has no training pictures to compare with."}
    result = check_memorization(samples, training)
    memorization_grid(result, samples, training).save(out / FIG_MEMORIZATION)
    data = result.to_dict()
    data.update(checked=True, figure=FIG_MEMORIZATION)
    return data


# --- pictures -------------------------------------------------------------------------------------

def rows_figure(rows: Sequence[tuple[str, Sequence[Any] | None]], path: Path, *, per_row: int = 8) -> None:
    """Labelled rows of pictures (each row at most `per_row`; small pictures enlarged by a whole
    factor without smoothing, so their pixels can be seen)."""
    from PIL import Image, ImageDraw

    from transferstudio.insight.memorization import _font

    rows = [(label, list(images)[:per_row]) for label, images in rows if images]
    side = min(min(i.size) for _, images in rows for i in images)
    cell = side * max(1, round(88 / side)) if side < 88 else 96
    font = _font(14)
    label_w, pad = 170, 4
    width = label_w + max(len(images) for _, images in rows) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, len(rows) * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        y = pad + r * (cell + pad)
        _label(draw, label, (6, y), label_w - 10, cell, font)
        for c, image in enumerate(images):
            image = image.convert("RGB")
            resample = Image.Resampling.NEAREST if image.width <= cell else Image.Resampling.LANCZOS
            sheet.paste(image.resize((cell, cell), resample), (label_w + c * (cell + pad), y))
    sheet.save(path)


def _label(draw: Any, text: str, at: tuple[int, int], width: int, height: int, font: Any) -> None:
    """Word-wrapped `text` in a box, vertically centred."""
    words, lines = text.split(), [""]
    for word in words:
        candidate = f"{lines[-1]} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    line_h = 17
    y = at[1] + max(0, (height - line_h * len(lines)) // 2)
    for line in lines:
        draw.text((at[0], y), line, fill=(30, 30, 30), font=font)
        y += line_h


# --- the page -----------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 980px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.5; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta, .note { color: #555; font-size: .92em; }
.verdict { padding: .6em 1em; border-left: 6px solid #999; background: #f6f6f6; margin: 1em 0; }
.good { border-color: #2a9d5c; } .fair { border-color: #e0a100; } .bad { border-color: #cc3333; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e2e2e2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.figure { line-height: 100%; }  /* the window's viewer (Qt) would space an image's line by 1.5 too */
code { background: #f2f2f2; padding: 0 .3em; border-radius: 3px; }
ul.glance li { margin: .2em 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: Any, digits: int = 4) -> str:
    if not _finite(value):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def _img(name: str | None, alt: str, sizes: dict[str, Any] | None = None) -> str:
    if not name:
        return ""
    size = (sizes or {}).get(name)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return f'<p class="figure"><img src="{_e(name)}" alt="{_e(alt)}"{dims}></p>\n'


def render_html(summary: dict[str, Any]) -> str:
    """The report page for `summary` (what `build_report` returned)."""
    parts = [f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
             f"<title>Transfer report: {_e(summary['project'])}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n",
             f"<h1>Transfer report: {_e(summary['project'])}</h1>\n",
             f"<p class=\"meta\">Run {_e(summary['run'])} · {_e(summary['method'])} · step "
             f"{_e(summary['trained_step'])} of {_e(summary['total_steps'])} · made {_e(summary['made'])} by "
             f"TransferStudio {_e(summary['app_version'])}. The numbers are also in "
             f"<a href=\"{JSON}\">{JSON}</a>.</p>\n"]
    parts.append(_glance(summary))
    parts.append(_domain_html(summary))
    parts.append(_curves_html(summary))
    parts.append(_samples_html(summary))
    parts.append(_distances_html(summary))
    parts.append(_scratch_html(summary))
    parts.append(_memorization_html(summary))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _glance(s: dict[str, Any]) -> str:
    k = s["key_figures"]
    items = []
    if k["domain_verdict"]:
        words = {"close": "close to", "related": "related to", "far": "far from"}.get(str(k["domain_verdict"]),
                                                                                   str(k["domain_verdict"]))
        items.append(f"The base model is <b>{_e(words)}</b> your pictures.")
    if k["best_step"] is not None:
        items.append(f"Best step by validation loss: <b>{k['best_step']}</b> (validation loss "
                     f"{_n(k['best_val_loss'])}).")
    if _finite(k["swd_base"]) and _finite(k["swd_adapted"]):
        closer = 100 * (1 - k["swd_adapted"] / k["swd_base"]) if k["swd_base"] else 0
        where = "held-out" if k["references"] == "held-out" else "training"
        colour = ""
        if _finite(k["swd_colour_base"]) and _finite(k["swd_colour_adapted"]) and k["swd_colour_base"]:
            colour_closer = 100 * (1 - k["swd_colour_adapted"] / k["swd_colour_base"])
            colour = (f", <b>{abs(colour_closer):.0f}% {'closer' if colour_closer >= 0 else 'further'}</b> "
                      "counting colour and brightness")
        items.append(f"After training, samples are <b>{closer:.0f}% {'closer to' if closer >= 0 else 'further from'}"
                     f"</b> your {where} pictures than the base model's in patterns{colour}.")
    sc = k["scratch"]
    if sc and sc.get("speedup"):
        items.append(f"Starting pretrained reached the same validation loss <b>{sc['speedup']:.1f}× sooner</b> "
                     f"than training from scratch.")
    elif sc and sc.get("steps_pretrained") == 0 and sc.get("steps_scratch"):
        items.append(f"Before any training, the pretrained model was already as good on held-out pictures as the "
                     f"from-scratch run after <b>{sc['steps_scratch']} steps</b>.")
    memo = s.get("memorization", {})
    if memo.get("checked"):
        items.append("<b>Near-copies of training pictures found.</b>" if memo["any_flagged"]
                     else "No near-copies of training pictures.")
    if not items:
        return ""
    return "<h2>At a glance</h2>\n<ul class=\"glance\">" + "".join(f"<li>{i}</li>" for i in items) + "</ul>\n"


def _domain_html(s: dict[str, Any]) -> str:
    d = s.get("domain") or {}
    head = ("<h2>How close is the base model to your pictures?</h2>\n<p class=\"note\">Transfer learning "
            "helps most when the pretrained model already knows pictures like yours. The domain check compares "
            "how well the base model handles your pictures with how well it handles its own.</p>\n")
    if not d.get("verdict"):
        return head + (f"<div class=\"verdict\">Not checked yet — run <code>transferstudio check "
                       f"{_e(s['project_folder'])}</code>, then make this report again.</div>\n")
    css = {"close": "good", "related": "fair", "far": "bad"}.get(str(d["verdict"]), "")
    out = head + (f"<div class=\"verdict {css}\"><b>{_e(d['verdict'])}</b> (score {_n(d.get('score'), 3)})"
                  f"{' — ' + _e(d['advice']) if d.get('advice') else ''}</div>\n")
    if d.get("explanation"):
        out += f"<p class=\"note\">{_e(d['explanation'])}</p>\n"
    return out


def _curves_html(s: dict[str, Any]) -> str:
    c = s["curves"]
    out = ["<h2>Training and validation loss</h2>\n",
           "<p class=\"note\">The training loss is how far off the model is on the pictures it learns from; it "
           "should fall and then flatten. The validation loss is measured the same way on pictures kept out of "
           "training: it tells whether the model learned your style or only your pictures. Where it is lowest "
           "is the best step (green); if it rises again afterwards, the model is overfitting.</p>\n"]
    out.append(_img(s["figures"].get("curves"), "training and validation loss by step", s.get("figure_sizes")))
    rows = [("final training loss", _n(c.get("final_loss")))]
    if c.get("best_step") is not None:
        rows += [("best step", str(c["best_step"])), ("best validation loss", _n(c["best_val_loss"])),
                 (f"validation loss at step {c['final_val_step']} (the last measured)", _n(c["final_val_loss"]))]
        for key in ("psnr", "ssim"):
            if f"best_{key}" in c:
                rows.append((f"{key.upper()} at the best step", _n(c[f"best_{key}"])))
    out.append(_table(rows))
    if c.get("best_step") is None:
        out.append("<p>No validation loss was measured in this run (it kept no pictures out of training). Set "
                   "<i>validation</i> in the settings (e.g. 10% or 3 pictures) for the next run to see it.</p>\n")
    elif c.get("rising_for", 0) >= OVERFIT_AFTER:
        out.append(f"<div class=\"verdict fair\">The validation loss has stayed above its best for the last "
                   f"{c['rising_for']} measures: the model is starting to overfit. Step {c['best_step']} is "
                   f"the one to export.</div>\n")
    return "".join(out)


def _samples_html(s: dict[str, Any]) -> str:
    smp = s["sampling"]
    if smp["kind"] == "reconstructions":
        text = ("Each column is one of your held-out pictures, reconstructed by the base model and by the adapted "
                "one.")
    else:
        shown = min(8, smp["count"])
        first = f", the first {shown} of the {smp['count']}" if shown < smp["count"] else ""
        text = (f"Each column is one seed ({smp['seeds'][0]}–{smp['seeds'][0] + shown - 1}{first}): the same "
                "starting noise for every model, so the difference is what training changed.")
    return ("<h2>Before and after, at the same seeds</h2>\n"
            f"<p class=\"note\">{_e(text)}</p>\n" + _img(s["figures"].get("samples"), "base vs adapted samples", s.get("figure_sizes")))


def _distances_html(s: dict[str, Any]) -> str:
    ref = s["references"]
    d = s["distances"]
    if ref["kind"] == "held-out":
        where = (f"the {ref['count']} held-out picture{'s' if ref['count'] != 1 else ''} (kept out of training, so "
                 "a model can only come close by learning the style)")
        caveat = ""
    else:
        where = f"your {ref['count']} training pictures"
        caveat = ("<p><b>This run kept no pictures out of training</b>, so the distances are to the pictures it "
                  "trained on: a model that copies them also scores well here. Set <i>validation</i> in the "
                  "settings to measure on held-out pictures.</p>\n")
    out = ["<h2>How close to your pictures?</h2>\n",
           f"<p class=\"note\">Sliced Wasserstein distance (SWD, ×1000; lower is closer) of each model's "
           f"{s['sampling']['count']} {_e(s['sampling']['kind'])} to {_e(where)}. <i>Patterns</i> compares "
           "local shapes and textures at several scales, ignoring overall colour; <i>with colour</i> counts "
           "colour and brightness too.</p>\n", caveat]
    names = {"base": "base model", "adapted": f"adapted (step {s['trained_step']})",
             "scratch": f"from scratch (step {s['sampling'].get('scratch_step')})"}
    extra = [k for k in ("psnr", "ssim") if any(k in v for v in d.values())]
    header = "<tr><th>model</th><th>patterns</th><th>with colour</th>" + \
        "".join(f"<th>{k.upper()}</th>" for k in extra) + "</tr>"
    body = "".join(f"<tr><td>{_e(names.get(key, key))}</td><td class=\"num\">{_n(v.get('swd'), 4)}</td>"
                   f"<td class=\"num\">{_n(v.get('swd_colour'), 4)}</td>" +
                   "".join(f"<td class=\"num\">{_n(v.get(k), 4)}</td>" for k in extra) + "</tr>"
                   for key, v in d.items())
    out.append(f"<table>{header}{body}</table>\n")
    if ref["count"] < 8:
        out.append(f"<p class=\"note\">With only {ref['count']} reference picture(s) these distances are rough; "
                   "compare them between runs of this project rather than with other projects.</p>\n")
    return "".join(out)


def _scratch_html(s: dict[str, Any]) -> str:
    sc = s["scratch"]
    out = ["<h2>Pretrained vs from scratch</h2>\n",
           "<p class=\"note\">What starting from the pretrained model bought: the same model trained from random "
           "weights on the same pictures, for comparison.</p>\n"]
    if sc.get("note"):
        return "".join(out) + f"<p>{_e(sc['note'])}</p>\n"
    if not sc.get("run"):
        out.append(f"<p>This project has no from-scratch run to compare with. For a model small enough to train "
                   f"from scratch on this computer, make one with <code>transferstudio train "
                   f"{_e(s['project_folder'])} --scratch</code> (it trains the same model from random weights for "
                   f"the same steps), then make this report again.</p>\n")
        return "".join(out)
    out.append(_img(s["figures"].get("scratch"), "validation loss, pretrained vs from scratch", s.get("figure_sizes")))
    rows = [("from-scratch run", f"{sc['run']} (step {sc['scratch_step']})")]
    if sc.get("level") is not None:
        def reached(step: Any) -> str:
            return "not reached" if step is None else "already at the start" if step == 0 else f"step {step}"
        rows += [(f"steps to reach validation loss {_n(sc['level'])}: pretrained", reached(sc["steps_pretrained"])),
                 ("… from scratch", reached(sc["steps_scratch"]))]
        if sc.get("speedup"):
            rows.append(("pretrained got there", f"{sc['speedup']:.1f}× sooner"))
    if sc.get("equal_step") is not None:
        rows += [(f"validation loss at step {sc['equal_step']}: pretrained", _n(sc["val_pretrained"])),
                 ("… from scratch", _n(sc["val_scratch"]))]
    if _finite(sc.get("swd_pretrained")) and _finite(sc.get("swd_scratch")):
        same = sc["pretrained_step"] == sc["scratch_step"]
        at = f"both at step {sc['pretrained_step']}" if same else \
            f"steps {sc['pretrained_step']} and {sc['scratch_step']}"
        rows += [(f"SWD patterns / with colour ({at}): pretrained",
                  f"{_n(sc['swd_pretrained'])} / {_n(sc.get('swd_colour_pretrained'))}"),
                 ("… from scratch", f"{_n(sc['swd_scratch'])} / {_n(sc.get('swd_colour_scratch'))}")]
    if sc.get("level") is None:
        out.append("<p>One of the two runs has no validation loss, so the steps to the same level cannot be "
                   "compared; the distances below still can.</p>\n")
    out.append(_table(rows))
    return "".join(out)


def _memorization_html(s: dict[str, Any]) -> str:
    m = s["memorization"]
    out = ["<h2>Is it copying your pictures?</h2>\n",
           "<p class=\"note\">Each sample of the adapted model next to the training picture most like it (by pixels "
           "and by the layout of light and dark, allowing small shifts and mirroring). A sample counts as a "
           "near-copy when it is much closer to a training picture than your pictures are to each other; near-copies "
           "have a red frame.</p>\n"]
    if not m.get("checked"):
        return "".join(out) + f"<p>{_e(m.get('note', ''))}</p>\n"
    css = "bad" if m["any_flagged"] else "good"
    out.append(f"<div class=\"verdict {css}\">{_e(m['verdict'])}</div>\n")
    out.append(_img(m.get("figure"), "each sample beside its nearest training picture", s.get("figure_sizes")))
    t = m["thresholds"]
    spacing = ("measured on your training pictures" if t["spacing_from"] == "training" else
               "fixed values (one training picture gives no spacing to measure)")
    out.append(f"<p class=\"note\">Compared at {m['work_size']} px. Typical spacing between different pictures "
               f"({_e(spacing)}): pixels {t['pixel_spacing']:.3f}, features {t['feature_spacing']:.3f}; a sample "
               f"is flagged when its two distances, each divided by that spacing, average under "
               f"{t['score']:.2f}.</p>\n")
    return "".join(out)


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><td>{_e(k)}</td><td class=\"num\">{_e(v)}</td></tr>" for k, v in rows) + \
        "</table>\n"
