"""What an exported file says about itself: kohya `ss_*` keys and their hashes, `modelspec.*`
keys (Stability AI's model metadata spec), and our provenance manifest written beside it.

Hashes as sd-scripts computes them (A1111's additional-networks and model browsers compare them):
- both are taken over the file *as it would be written with only the `ss_*` metadata*, so
  user-editable keys (title, …) never change them;
- `sshs_model_hash`: SHA-256 of everything after the header (the tensor bytes);
- `sshs_legacy_hash`: first 8 hex digits of the SHA-256 of the 64 KiB at offset 1 MiB
  (empty for files under 1 MiB, as in sd-scripts).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from transferstudio import __version__
from transferstudio.core.errors import ProjectError
from transferstudio.core.storage import sha256_file
from transferstudio.project.run import Run, best_validation, validation_rows

if TYPE_CHECKING:
    import torch

MODELSPEC_VERSION = "1.0.0"
IMPL_SGM = "https://github.com/Stability-AI/generative-models"  # original (ldm/sgm) key layout
IMPL_DIFFUSERS = "diffusers"
MANIFEST_IN_FOLDER = "transferstudio.json"

# --- which model is it ------------------------------------------------------------------------

def resolution_of(backbone: Any, config: Any) -> int:
    return int(getattr(config, "resolution", 0) or backbone.caps.native_resolution)


# --- hashes -----------------------------------------------------------------------------------

def _tensor_bytes_hash(buffer: Any) -> str:
    """SHA-256 of the tensor bytes after a safetensors header, from any seekable binary stream."""
    buffer.seek(0)
    n = int.from_bytes(buffer.read(8), "little")
    buffer.seek(8 + n)
    h = hashlib.sha256()
    for chunk in iter(lambda: buffer.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _legacy_hash(buffer: io.BytesIO) -> str:
    buffer.seek(0x100000)
    return hashlib.sha256(buffer.read(0x10000)).hexdigest()[:8]


def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of `tensors` saved with the `ss_*` part of `metadata`."""
    from safetensors.torch import save

    ss = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    buffer = io.BytesIO(save(dict(tensors), metadata=ss))
    return _tensor_bytes_hash(buffer), _legacy_hash(buffer)


def file_model_hash(path: Path) -> str:
    """SHA-256 of a safetensors file's tensor bytes (what `sshs_model_hash` must equal)."""
    with open(path, "rb") as f:
        return _tensor_bytes_hash(f)


def sha256_path(path: Path) -> str:
    """A file's SHA-256; for a folder (a diffusers model) the SHA-256 of its sorted
    `relative/path<TAB>sha256` lines, so the same files give the same hash anywhere."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    lines = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        lines.append(f"{f.relative_to(path).as_posix()}\t{sha256_file(f)}")
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# --- dataset ----------------------------------------------------------------------------------

def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """Comma-separated tags counted over captions (the trigger word is the first tag)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip()
            if tag:
                counts[tag] += 1
    return dict(counts.most_common())


def dataset_summary(images_folder: Path, trigger: str) -> dict[str, Any]:
    """Files (relative path, SHA-256, caption) and the captions' hash; {} if the folder is gone."""
    from transferstudio.core.errors import DatasetError
    from transferstudio.data.scan import scan_images

    try:
        scan = scan_images(images_folder, trigger=trigger)
    except DatasetError as exc:
        return {"folder": str(images_folder), "missing": exc.message}
    files = []
    for record in scan.images:
        files.append({"path": record.path.relative_to(scan.folder).as_posix(), "sha256": sha256_file(record.path),
                      "caption": record.caption, "repeats": record.repeats})
    captions = "\n".join(f"{f['path']}\t{f['caption']}" for f in files)
    return {"folder": str(scan.folder), "images": len(files),
            "samples_per_epoch": scan.samples_per_epoch, "files": files,
            "captions_sha256": hashlib.sha256(captions.encode("utf-8")).hexdigest(),
            "tag_frequency": tag_frequency(f["caption"] for f in files)}


# --- run --------------------------------------------------------------------------------------

def final_loss(run_dir: Path, step: int | None = None) -> float | None:
    """The last logged loss at or before `step` (metrics.jsonl), None if there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    loss = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if step is not None and int(row.get("step", 0)) > step:
            break
        value = row.get("loss")
        if isinstance(value, (int, float)) and math.isfinite(value):
            loss = float(value)
    return loss


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- metadata blocks --------------------------------------------------------------------------

# ss_optimizer as sd-scripts writes it: the optimizer's class path
_OPTIMIZERS = {"adamw": "torch.optim.AdamW", "adamw8bit": "bitsandbytes.optim.AdamW8bit",
               "adafactor": "transformers.optimization.Adafactor", "prodigy": "prodigyopt.Prodigy"}


def kohya_metadata(*, spec: Any, output_name: str, rank: int, alpha: float, resolution: int,
                   dataset: Mapping[str, Any], config: Any, base_name: str, base_sha256: str | None,
                   step: int, network_args: Mapping[str, Any] | None = None,
                   precision: str | None = None, network_module: str = "networks.lora") -> dict[str, str]:
    """The `ss_*` keys A1111's and others' LoRA browsers show (hashes added by `with_hashes`).
    `precision`: the number format the run really trained in (its checkpoint says), when known.
    `network_module`: what sd-scripts would have trained it with ("lycoris.kohya" for LoHa/LoKr,
    whose `network_args` then say the `algo`)."""
    base_version = spec.kohya_base_version
    folder_name = Path(str(dataset.get("folder", "images"))).name or "images"
    meta = {
        "ss_base_model_version": base_version,
        "ss_v2": str(bool(spec.is_v2)),
        "ss_v_parameterization": str(bool(spec.v_parameterization)),
        "ss_output_name": output_name,
        "ss_network_module": network_module,
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": _num(alpha),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_num_train_images": str(int(dataset.get("samples_per_epoch", dataset.get("images", 0)))),
        "ss_tag_frequency": json.dumps({folder_name: dict(dataset.get("tag_frequency", {}))}, ensure_ascii=False),
        "ss_sd_model_name": base_name,
        "ss_steps": str(int(step)),
        "ss_max_train_steps": str(int(getattr(config, "steps", step))),
        "ss_learning_rate": str(getattr(config, "learning_rate", "")),
        "ss_lr_scheduler": str(getattr(config, "schedule", "")),
        "ss_lr_warmup_steps": str(getattr(config, "warmup_steps", 0)),
        "ss_batch_size_per_device": str(getattr(config, "batch_size", 1)),
        "ss_gradient_accumulation_steps": str(getattr(config, "gradient_accumulation", 1)),
        "ss_seed": str(getattr(config, "seed", "")),
        "ss_mixed_precision": str(precision or getattr(config, "precision", "")),
        "ss_optimizer": _OPTIMIZERS.get(str(getattr(config, "optimizer", "adamw")), "torch.optim.AdamW"),
        "ss_noise_offset": str(getattr(config, "noise_offset", 0.0)),
        "ss_min_snr_gamma": str(getattr(config, "min_snr_gamma", 0.0)),
        "ss_multires_noise_iterations": str(getattr(config, "multires_noise_iterations", 0)),
        "ss_multires_noise_discount": str(getattr(config, "multires_noise_discount", 0.3)),
        "ss_ip_noise_gamma": str(getattr(config, "input_perturbation", 0.0)),
        "ss_flip_aug": str(bool(getattr(config, "flip", False))),
        "ss_caption_dropout_rate": str(getattr(config, "caption_dropout", 0.0)),
        "ss_shuffle_caption": str(bool(getattr(config, "shuffle_tags", False))),
        "ss_keep_tokens": str(getattr(config, "keep_tags", 0)),
        "ss_caption_tag_dropout_rate": str(getattr(config, "tag_dropout", 0.0)),
        "ss_masked_loss": str(bool(getattr(config, "masked_loss", False))),
        "ss_debiased_estimation": str(bool(getattr(config, "debiased_estimation", False))),
        "ss_timestep_sampling": str(getattr(config, "timestep_sampling", "uniform")),
        "ss_min_timestep": str(int(round(float(getattr(config, "timestep_low", 0.0)) * 1000))),
        "ss_max_timestep": str(int(round(float(getattr(config, "timestep_high", 1.0)) * 1000))),
        "ss_enable_bucket": str(bool(getattr(config, "buckets", False))),
        "ss_training_comment": f"TransferStudio {__version__}",
    }
    if base_sha256:
        meta["ss_new_sd_model_hash"] = base_sha256
    if network_args:
        meta["ss_network_args"] = json.dumps({k: str(v) for k, v in network_args.items()})
    return meta


def modelspec_metadata(*, spec: Any, adapter: bool, title: str, resolution: int,
                       implementation: str, trigger: str = "", date: str | None = None,
                       description: str = "") -> dict[str, str]:
    """`modelspec.*` keys. Architecture like sd-scripts writes it: "<base>/lora" for adapters."""
    arch = spec.modelspec_architecture
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": arch + ("/lora" if adapter else ""),
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.date": date or now_iso(),
        "modelspec.resolution": f"{resolution}x{resolution}",
    }
    if spec.modelspec_prediction:
        meta["modelspec.prediction_type"] = spec.modelspec_prediction
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
        meta["modelspec.usage_hint"] = f"Trigger word: {trigger}"
    if description:
        meta["modelspec.description"] = description
    return meta


def with_hashes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    model_hash, legacy = safetensors_hashes(tensors, metadata)
    metadata = dict(metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy
    metadata["modelspec.hash_sha256"] = "0x" + model_hash
    return metadata


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# --- provenance manifest ----------------------------------------------------------------------

def manifest_path(out: Path, *, folder: bool | None = None) -> Path:
    """`<name>.json` beside a file, `transferstudio.json` inside a folder. (A1111 reads a LoRA's
    `<name>.json` as its user metadata: the `activation text` / `sd version` keys we add show there.)"""
    out = Path(out)
    if folder is None:
        folder = out.is_dir()
    return out / MANIFEST_IN_FOLDER if folder else out.with_suffix(".json")


def manifest(*, fmt: str, out: Path, trained: Any, project: Any | None, strength: float, fp16: bool,
             base_sha256: str | None, dataset: Mapping[str, Any], date: str,
             extra: Mapping[str, Any] | None = None, insights: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to tell later what an exported file was made from, and how it did on
    the pictures it never trained on (validation) with what the report found (`insights`)."""
    backbone, config = trained.backbone, trained.config
    step = trained.checkpoint.step
    source = Path(backbone.source)
    data: dict[str, Any] = {
        "app": "TransferStudio",
        "app_version": __version__,
        "date": date,
        "format": fmt,
        "file": Path(out).name,
        "method": config.method,
        "strength": strength,
        "fp16": fp16,
        "base_model": {"name": source.name, "path": str(source), "family": getattr(backbone, "family", ""),
                       "variant": backbone.export_spec().variant, "sha256": base_sha256,
                       "prediction_type": backbone.caps.prediction_type},
        "project": ({"name": project.name, "folder": str(project.folder)} if project is not None else None),
        "run": {"folder": str(trained.run_dir), "checkpoint": Path(trained.checkpoint.path).name, "steps": step,
                "final_loss": final_loss(trained.run_dir, step)},
        "settings": config.to_dict(),
        "dataset": dict(dataset),
    }
    validation = validation_summary(Path(trained.run_dir), step)
    if validation or insights:
        data["transfer"] = {**({"validation": validation} if validation else {}), **dict(insights or {})}
    if extra:
        data.update(extra)
    return data


def validation_summary(run_dir: Path, step: int) -> dict[str, Any]:
    """The exported step's validation loss and the run's best step, from the run's files."""
    rows = validation_rows(run_dir, step)
    if not rows:
        return {}
    best_step, best_loss = best_validation(rows)
    try:
        held_out = len(Run.open(run_dir).validation_pictures)
    except ProjectError:  # a manifest never fails for want of a figure
        held_out = None
    at_step = next((r["val_loss"] for r in rows if r["step"] == step), None)
    return {"held_out_pictures": held_out, "val_loss": at_step, "best_step": best_step, "best_val_loss": best_loss,
            "measures": len(rows)}
