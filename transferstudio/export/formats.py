"""One entry point for every export format, the list the export dialog offers, and the
"Export to…" folders of an A1111/Forge or ComfyUI install.

Every export is staged in a hidden folder beside the target and moved into place only when
complete, with its provenance manifest; an existing file is never replaced unless asked, and
a full disk or a permission problem becomes an ExportError with nothing half-written left.
The formats themselves are registered in export/registry.py (writers in export/writers.py).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferstudio.core import storage
from transferstudio.core.atomic import fsync_dir, write_json_atomic
from transferstudio.core.errors import ExportError
from transferstudio.export import metadata as md
from transferstudio.export import registry


@dataclass(frozen=True)
class ExportResult:
    path: Path
    kind: str  # "lora" | "full" | "merged"
    step: int
    warnings: tuple[str, ...] = ()  # damaged or diverged checkpoints passed over for an earlier one


def __getattr__(name: str) -> Any:
    if name == "FORMATS":
        return registry.all_formats()
    raise AttributeError(name)


def _capabilities(model: Any) -> Any:
    """Capabilities of a backbone, of an inspected model, or typical ones of a family key."""
    if isinstance(model, str):
        from transferstudio.backbones.registry import family

        try:
            return family(model).typical_capabilities()
        except KeyError:
            return None  # an unknown family: the formats every model has
    return getattr(model, "caps", model)


def formats_for(model: Any, method: str = "lora") -> list[tuple[str, str, str]]:
    """(key, label, description) of the formats that apply, in the order the dialog shows them.
    `model`: a backbone, its Capabilities, or a family key ("sd", "ddpm", …)."""
    caps = _capabilities(model)
    return [(f.key, f.label, f.description) for f in registry.all_formats().values() if f.offered(caps, method)]


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

def default_format(model: Any, method: str) -> str:
    """What `export` writes when no format is named: diffusers where it applies, else the
    family's first format (a GAN's generator file)."""
    offered = [key for key, _, _ in formats_for(model, method)]
    return "diffusers" if "diffusers" in offered or not offered else offered[0]


def export(project: Any, out: Path, fmt: str | None, *, strength: float = 1.0, fp16: bool = False,
           overwrite: bool = False, run_dir: Path | None = None, pipeline: Path | None = None,
           step: int | str | None = None, insights: dict[str, Any] | None = None) -> ExportResult:
    """Export a project's latest (or `run_dir`'s) trained weights as `fmt`.

    `strength` bakes the LoRA in at that scale for the merged formats; LoRA files keep the
    trained alpha (their strength is set in the tool) and record it as the preferred weight.
    `step`: that checkpoint of the run, or "best" (lowest validation loss). `insights`: what the
    transfer report knows (domain verdict, memorization check), kept in the manifest."""
    from transferstudio.adapt.restore import load_trained

    if fmt is not None:
        registry.get(fmt)
    trained = load_trained(project, run_dir, step=step)
    fmt = fmt or default_format(trained.backbone, trained.config.method)
    result = export_trained(trained, out, fmt, project=project, strength=strength, fp16=fp16, overwrite=overwrite,
                            pipeline=pipeline, insights=insights)
    return dataclasses.replace(result, warnings=tuple(getattr(trained, "warnings", ())))


def export_project(project: Any, out: Path, *, fmt: str = "diffusers", run_dir: Path | None = None,
                   overwrite: bool = False) -> ExportResult:
    """The trained weights in the libraries' own layout (`diffusers` by default)."""
    return export(project, out, fmt, run_dir=run_dir, overwrite=overwrite)


def export_trained(trained: Any, out: Path, fmt: str = "diffusers", *, project: Any | None = None,
                   strength: float = 1.0, fp16: bool = False, overwrite: bool = False,
                   title: str | None = None, pipeline: Path | None = None,
                   insights: dict[str, Any] | None = None) -> ExportResult:
    """Export an already loaded TrainedModel. Merged formats change its backbone in place."""
    writer = registry.get(fmt)
    backbone, config = trained.backbone, trained.config
    method = config.method
    if not writer.usable(backbone.caps, method):
        applicable = [k for k, _, _ in formats_for(backbone, method)]
        raise ExportError(f"The {fmt} format does not apply to this {_what(backbone, method)}.",
                          f"Choose one of: {', '.join(applicable)}.")
    if not (0.0 <= strength <= 2.0):
        raise ExportError(f"Strength {strength} is out of range.", "Use a value between 0 and 2 (1 = as trained).")

    out = Path(out).expanduser()
    folder_out = writer.folder(method)
    suffix = writer.suffix
    if not folder_out and out.suffix.lower() != suffix:
        out = out.with_name(out.name + suffix) if out.suffix else out.with_suffix(suffix)
    manifest_file = md.manifest_path(out, folder=folder_out)
    if not overwrite:
        for path in (out, manifest_file) if not folder_out else (out,):
            if path.exists():
                raise ExportError(f"{path} already exists.", "Choose another name, or allow overwriting.")

    date = md.now_iso()
    dataset = md.dataset_summary(project.images, config.trigger) if project is not None else {}
    ctx = registry.ExportContext(title=title or (out.name if folder_out else out.stem), strength=strength,
                                 fp16=fp16, date=date, dataset=dataset, base_sha256=_base_hash(backbone), out=out,
                                 pipeline=Path(pipeline).expanduser() if pipeline else None)

    def write(staged: Path) -> None:
        extra = writer.write(trained, staged, ctx)
        data = md.manifest(fmt=fmt, out=out, trained=trained, project=project, strength=strength, fp16=fp16,
                           base_sha256=ctx.base_sha256, dataset=dataset, date=date, extra=extra, insights=insights)
        write_json_atomic(md.manifest_path(staged, folder=folder_out), data)

    staged_write(out, write, folder=folder_out, companions=() if folder_out else (manifest_file,),
                 needed=_export_bytes(trained, writer.result_kind(method), fp16))
    result = ExportResult(path=out, kind=writer.result_kind(method), step=trained.checkpoint.step)
    _record(trained, fmt, result, date)
    return result


def staged_write(out: Path, write: Any, *, folder: bool, companions: tuple[Path, ...] = (),
                 needed: int | None = None) -> None:
    """Call `write(staged)` in a hidden folder beside `out`, then move the result (and each
    companion file written beside it, e.g. a manifest) into place. Nothing half-written is
    ever left at `out`; OS errors become one ExportError sentence, and so do the full-disk
    errors of writers that do not raise OSError (safetensors' SafetensorError, torch.save's
    RuntimeError). `needed`: about how many bytes the export takes, checked against the free
    space before anything is written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, out, needed) from None
    free = storage.free_bytes(out.parent) if needed else None
    if needed and free is not None and free < needed:
        raise _disk_full(out, needed, free)
    stage = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        stage.mkdir()
        staged = stage / out.name
        write(staged)
        _move_into_place(staged, out, folder)
        for companion in companions:
            os.replace(stage / companion.name, companion)
        fsync_dir(out.parent)
    except OSError as exc:
        raise _os_error(exc, out, needed) from None
    except Exception as exc:  # not an OSError, but a writer's own report of a full disk
        if storage.is_disk_full(exc):
            raise _disk_full(out, needed) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _export_bytes(trained: Any, kind: str, fp16: bool) -> int | None:
    """About how many bytes an export takes: the adapter's weights for a LoRA file, the whole
    model's for a full or merged one."""
    try:
        if kind == "lora":
            tensors = list(trained.trainee.parameters())
        else:
            tensors = [t for module in trained.backbone.plain_modules()
                       for t in (*module.parameters(), *module.buffers())]
        total = sum(t.numel() * (min(2, t.element_size()) if fp16 and t.is_floating_point() else t.element_size())
                    for t in tensors)
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return int(total) or None


def _disk_full(out: Path, needed: int | None, free: int | None = None) -> ExportError:
    return storage.disk_full(out.parent, f"{out.name} could not be written to {out.parent}",
                             "Free some space or export to another drive; nothing was written.",
                             needed=needed, free=free, cls=ExportError)


def _record(trained: Any, fmt: str, result: ExportResult, date: str) -> None:
    """Note the export in its run's exports.jsonl (`transferstudio runs` lists them)."""
    from transferstudio.project.run import record_export

    try:
        record_export(trained.run_dir, {"date": date, "format": fmt, "path": str(result.path),
                                        "kind": result.kind, "step": result.step})
    except OSError:
        pass  # the export itself is complete; the run's list is a convenience


def _what(backbone: Any, method: str) -> str:
    kind = "LoRA" if method == "lora" else "full fine-tune"
    model = "an unconditional model" if backbone.caps.conditioning != "text" else "this model"
    return f"{kind} of {model}"


def _os_error(exc: OSError, out: Path, needed: int | None = None) -> ExportError:
    where = out.parent
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return _disk_full(out, needed)
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
