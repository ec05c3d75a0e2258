"""One entry point for every export format, the list the export dialog offers, and the
"Export to…" folders of an A1111/Forge or ComfyUI install.

Every export is staged in a hidden folder beside the target and moved into place only when
complete, with its provenance manifest; an existing file is never replaced unless asked, and
a full disk or a permission problem becomes an ExportError with nothing half-written left.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.core.atomic import fsync_dir, write_json_atomic
from transferstudio.core.errors import ExportError
from transferstudio.export import metadata as md

if TYPE_CHECKING:  # importing this module stays light (no torch) for the CLI's and dialog's lists
    from transferstudio.export.diffusers_export import ExportResult


@dataclass(frozen=True)
class FormatInfo:
    key: str
    label: str
    description: str
    methods: tuple[str, ...]  # training methods it applies to
    text_only: bool  # needs a Stable Diffusion (text) model
    folder: bool  # writes a folder, not one file


FORMATS: dict[str, FormatInfo] = {f.key: f for f in (
    FormatInfo("kohya", "LoRA for ComfyUI, A1111 / Forge (kohya .safetensors)",
               "The LoRA file most tools load: drop it into their LoRA folder. Small; the strength is set "
               "in the tool.", ("lora",), True, False),
    FormatInfo("diffusers", "diffusers (LoRA file or model folder)",
               "For Python scripts: a LoRA file that `load_lora_weights` reads, or for a full fine-tune a "
               "model folder that `from_pretrained` loads.", ("lora", "full"), False, False),
    FormatInfo("merged-diffusers", "Merged model, diffusers folder",
               "The whole model with the training baked in at the chosen strength, as a diffusers folder. "
               "Large (a full model).", ("lora", "full"), False, True),
    FormatInfo("merged-single-file", "Merged checkpoint (.safetensors) for ComfyUI, A1111 / Forge",
               "The whole model with the training baked in at the chosen strength, as one checkpoint file "
               "for the tools' checkpoint folder. Large (a full model).", ("lora", "full"), True, False),
)}


def _caps_of(family_or_caps: Any) -> tuple[bool, bool]:
    """(takes text, is a Stable Diffusion model with a single-file layout)."""
    if isinstance(family_or_caps, str):
        text = family_or_caps in ("sd", "sdxl", "sd1", "sd2", "sd2-v")
        return text, text
    caps = getattr(family_or_caps, "caps", family_or_caps)
    text = getattr(caps, "conditioning", "none") == "text" and bool(getattr(caps, "latent", False))
    return text, text


def formats_for(family_or_caps: Any, method: str = "lora") -> list[tuple[str, str, str]]:
    """(key, label, description) of the formats that apply, in the order the dialog shows them.
    `family_or_caps`: a family key ("sd", "sdxl", "ddpm"), a backbone or its Capabilities."""
    text, _ = _caps_of(family_or_caps)
    out = []
    for f in FORMATS.values():
        if method not in f.methods or (f.text_only and not text):
            continue
        if method == "full" and f.key == "merged-diffusers":
            continue  # a full fine-tune's diffusers export is already the whole model
        out.append((f.key, f.label, f.description))
    return out


def lora_folders(a1111: Path | None = None, comfyui: Path | None = None) -> list[Path]:
    """The LoRA folders of the installs the user pointed at: A1111/Forge `models/Lora`,
    ComfyUI `models/loras`. The install folder, its `models` folder or the LoRA folder itself
    may be given; installs that do not exist are left out."""
    found: list[Path] = []
    for root, sub in ((a1111, "Lora"), (comfyui, "loras")):
        if root is None:
            continue
        root = Path(root).expanduser()
        if not root.is_dir():
            continue
        if root.name.lower() in ("lora", "loras"):
            folder = root
        elif root.name.lower() == "models":
            folder = root / sub
        else:
            folder = root / "models" / sub
        if folder not in found:
            found.append(folder)
    return found


def unique_path(path: Path) -> Path:
    """`path`, or `name-2.ext`, `name-3.ext`… — the first that does not exist (with its manifest)."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists() or md.manifest_path(candidate, folder=not candidate.suffix).exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


# --- exporting ---------------------------------------------------------------------------------

def export(project: Any, out: Path, fmt: str, *, strength: float = 1.0, fp16: bool = False,
           overwrite: bool = False, run_dir: Path | None = None) -> ExportResult:
    """Export a project's latest (or `run_dir`'s) trained weights as `fmt`.

    `strength` bakes the LoRA in at that scale for the merged formats; LoRA files keep the
    trained alpha (their strength is set in the tool) and record it as the preferred weight."""
    from transferstudio.adapt.restore import load_trained

    _info(fmt)
    trained = load_trained(project, run_dir)
    return export_trained(trained, out, fmt, project=project, strength=strength, fp16=fp16, overwrite=overwrite)


def export_trained(trained: Any, out: Path, fmt: str, *, project: Any | None = None, strength: float = 1.0,
                   fp16: bool = False, overwrite: bool = False, title: str | None = None) -> ExportResult:
    """Export an already loaded TrainedModel. Merged formats change its backbone in place."""
    from transferstudio.export.diffusers_export import ExportResult

    info = _info(fmt)
    backbone, config = trained.backbone, trained.config
    method = config.method
    applicable = [k for k, _, _ in formats_for(backbone, method)]
    if fmt not in applicable and not (fmt == "merged-diffusers" and method == "full"):
        raise ExportError(f"The {fmt} format does not apply to this {_what(backbone, method)}.",
                          f"Choose one of: {', '.join(applicable)}.")
    if not (0.0 <= strength <= 2.0):
        raise ExportError(f"Strength {strength} is out of range.", "Use a value between 0 and 2 (1 = as trained).")

    out = Path(out).expanduser()
    folder_out = info.folder or (fmt == "diffusers" and method == "full")
    if not folder_out and out.suffix.lower() != ".safetensors":
        out = out.with_name(out.name + ".safetensors") if out.suffix else out.with_suffix(".safetensors")
    manifest_file = md.manifest_path(out, folder=folder_out)
    if not overwrite:
        for path in (out, manifest_file) if not folder_out else (out,):
            if path.exists():
                raise ExportError(f"{path} already exists.", "Choose another name, or allow overwriting.")

    writer = {"kohya": _write_kohya, "diffusers": _write_diffusers, "merged-diffusers": _write_merged_diffusers,
              "merged-single-file": _write_merged_single_file}[fmt]
    date = md.now_iso()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, out) from None
    stage = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        stage.mkdir()
        staged = stage / out.name
        dataset = md.dataset_summary(project.images, config.trigger) if project is not None else {}
        base_sha256 = _base_hash(backbone)
        extra = writer(trained, staged, title=title or (out.name if folder_out else out.stem), strength=strength,
                       fp16=fp16, date=date, dataset=dataset, base_sha256=base_sha256)
        data = md.manifest(fmt=fmt, out=out, trained=trained, project=project, strength=strength, fp16=fp16,
                           base_sha256=base_sha256, dataset=dataset, date=date, extra=extra)
        staged_manifest = md.manifest_path(staged, folder=folder_out)
        write_json_atomic(staged_manifest, data)
        _move_into_place(staged, out, folder_out)
        if not folder_out:
            os.replace(staged_manifest, manifest_file)
        fsync_dir(out.parent)
    except OSError as exc:
        raise _os_error(exc, out) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    kind = {"kohya": "lora", "diffusers": "lora" if method == "lora" else "full"}.get(fmt, "merged")
    return ExportResult(path=out, kind=kind, step=trained.checkpoint.step)


def _info(fmt: str) -> FormatInfo:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format '{fmt}'.", f"Choose one of: {', '.join(FORMATS)}.")
    return FORMATS[fmt]


def _what(backbone: Any, method: str) -> str:
    kind = "LoRA" if method == "lora" else "full fine-tune"
    model = "an unconditional model" if backbone.caps.conditioning != "text" else "this model"
    return f"{kind} of {model}"


def _os_error(exc: OSError, out: Path) -> ExportError:
    where = out.parent
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return ExportError(f"The disk is full: {out.name} could not be written to {where}.",
                           "Free some space or export to another drive; nothing was written.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"TransferStudio may not write to {where}.",
                           "Choose a folder you can write to; nothing was written.")
    return ExportError(f"Could not write {out}: {exc.strerror or exc}.",
                       "Check that the disk has space and the folder is writable; nothing was written.")


def _move_into_place(staged: Path, out: Path, folder: bool) -> None:
    if not folder or not out.exists():
        os.replace(staged, out)
        return
    # A folder cannot be swapped in one rename: move the old one aside, then delete it.
    aside = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    os.replace(out, aside)
    try:
        os.replace(staged, out)
    except OSError:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _base_hash(backbone: Any) -> str | None:
    source = Path(backbone.source)
    try:
        return md.sha256_path(source) if source.exists() else None
    except OSError:
        return None


# --- the formats -------------------------------------------------------------------------------


def _spec(trained: Any, *, title: str, adapter: bool, implementation: str, date: str) -> dict[str, str]:
    backbone, config = trained.backbone, trained.config
    variant = md.model_variant(backbone)
    return md.modelspec_metadata(variant=variant, adapter=adapter, title=title,
                                 resolution=md.resolution_of(backbone, config), implementation=implementation,
                                 trigger=config.trigger, date=date,
                                 description=f"Trained with TransferStudio {md.__version__} on "
                                             f"{Path(backbone.source).name}, {trained.checkpoint.step} steps.")


def _write_kohya(trained: Any, file: Path, *, title: str, strength: float, fp16: bool, date: str,
                 dataset: dict, base_sha256: str | None) -> dict:
    import torch
    from safetensors.torch import save_file

    from transferstudio.export.kohya import to_kohya

    backbone, config, trainee = trained.backbone, trained.config, trained.trainee
    variant = md.model_variant(backbone)
    family = "sdxl" if variant == "sdxl" else "sd"
    tensors, modules = to_kohya(trainee.state(), trainee.lora_configs, family=family,
                                unet_config=backbone.unet.config, dtype=torch.float16 if fp16 else None)
    ranks = sorted({m.rank for m in modules})
    alphas = sorted({m.alpha for m in modules})
    args: dict[str, Any] = {}
    if any(m.conv for m in modules):
        conv = [m for m in modules if m.conv]
        args.update(conv_dim=conv[0].rank, conv_alpha=md._num(conv[0].alpha))
    if any(m.dora for m in modules):
        args["dora_wd"] = True
    meta = md.kohya_metadata(variant=variant, output_name=file.stem, rank=ranks[-1],
                             alpha=alphas[-1] if len(alphas) == 1 else float(config.alpha),
                             resolution=md.resolution_of(backbone, config), dataset=dataset, config=config,
                             base_name=Path(backbone.source).name, base_sha256=base_sha256,
                             step=trained.checkpoint.step, network_args=args)
    meta.update(_spec(trained, title=title, adapter=True, date=date,
                      implementation=md.IMPL_SGM if family == "sdxl" else md.IMPL_DIFFUSERS))
    meta = md.with_hashes(tensors, meta)
    save_file(tensors, str(file), metadata=meta)
    # A1111 reads `<name>.json` beside a LoRA as its user metadata: these keys show up there.
    return {"kohya": {"modules": len(modules), "rank": ranks[-1], "alpha": alphas[-1] if len(alphas) == 1 else alphas,
                      "sshs_model_hash": meta["sshs_model_hash"], "sshs_legacy_hash": meta["sshs_legacy_hash"]},
            "activation text": config.trigger, "preferred weight": strength,
            "sd version": {"sd1": "SD1", "sd2": "SD2", "sd2-v": "SD2", "sdxl": "SDXL"}[variant],
            "description": meta["modelspec.description"]}


def _write_diffusers(trained: Any, out: Path, *, title: str, strength: float, fp16: bool, date: str,
                     **_: Any) -> dict:
    import torch

    from transferstudio.export import diffusers_export
    from transferstudio.export.merged import plain_modules

    method = trained.config.method
    if method == "full" and fp16:
        for module in plain_modules(trained.backbone):
            module.to(torch.float16)
    written = diffusers_export.export_trained(trained, out, overwrite=True).path
    if method == "lora" and md.model_variant(trained.backbone) is not None:
        _add_metadata(written, _spec(trained, title=title, adapter=True, implementation=md.IMPL_DIFFUSERS,
                                     date=date), fp16=fp16)
    elif method == "lora" and fp16:
        _add_metadata(written, {}, fp16=True)
    if method == "full":
        (out / md.MANIFEST_IN_FOLDER).unlink(missing_ok=True)  # replaced by the full manifest
    return {}


def _add_metadata(file: Path, extra: dict[str, str], *, fp16: bool) -> None:
    """Re-save a (small) LoRA file with more header keys, keeping the ones it has."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(file), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if fp16:
        tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    meta.update(extra)
    save_file(tensors, str(file), metadata=meta)


def _write_merged_diffusers(trained: Any, folder: Path, *, title: str, strength: float, fp16: bool,
                            date: str, **_: Any) -> dict:
    from transferstudio.export.merged import save_merged_diffusers

    save_merged_diffusers(trained, folder, strength=strength, fp16=fp16)
    return {}


def _write_merged_single_file(trained: Any, file: Path, *, title: str, strength: float, fp16: bool,
                              date: str, base_sha256: str | None = None, **_: Any) -> dict:
    from transferstudio.export.merged import save_merged_single_file

    variant = md.model_variant(trained.backbone)
    meta = _spec(trained, title=title, adapter=False, implementation=md.IMPL_SGM, date=date)
    meta.update({"transferstudio.version": md.__version__, "transferstudio.steps": str(trained.checkpoint.step),
                 "transferstudio.base_model": Path(trained.backbone.source).name,
                 "transferstudio.base_model_sha256": base_sha256 or "",
                 "transferstudio.strength": str(strength),
                 "transferstudio.settings": json.dumps(trained.config.to_dict())})
    save_merged_single_file(trained, file, variant=variant, strength=strength, fp16=fp16, metadata=meta)
    return {}
