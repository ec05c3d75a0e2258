"""Export in the libraries' own layouts.

- LoRA on a text family (SD/SDXL): one .safetensors that diffusers' `load_lora_weights` reads,
  with the adapter config in the metadata so alpha survives.
- LoRA on an unconditional UNet (no diffusers LoRA loader exists for UNet2DModel): one
  .safetensors of peft-format keys with the peft LoraConfig in the metadata, loadable with
  peft's `inject_adapter_in_model` + `set_peft_model_state_dict`.
- Full fine-tune: a diffusers pipeline folder with safetensors weights (`from_pretrained`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from transferstudio import __version__
from transferstudio.core.atomic import write_json_atomic, write_with_atomic
from transferstudio.core.errors import ExportError
from transferstudio.project.project import Project
from transferstudio.adapt.restore import TrainedModel, load_trained
from transferstudio.adapt.trainee import DENOISER, TEXT_ROLES

FORMATS = ("diffusers", "kohya", "merged-diffusers", "merged-single-file")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    kind: str  # "lora" | "full"
    step: int


def export_project(project: Project, out: Path, *, fmt: str = "diffusers", run_dir: Path | None = None,
                   overwrite: bool = False) -> ExportResult:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format '{fmt}'.", f"Choose one of: {', '.join(FORMATS)}.")
    if fmt != "diffusers":
        from transferstudio.export.formats import export

        return export(project, out, fmt, run_dir=run_dir, overwrite=overwrite)
    trained = load_trained(project, run_dir)
    return export_trained(trained, Path(out), overwrite=overwrite)


def export_trained(trained: TrainedModel, out: Path, *, overwrite: bool = False) -> ExportResult:
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists.", "Choose another name, or allow overwriting.")
    step = trained.checkpoint.step
    try:
        if trained.config.method == "full":
            _export_full(trained, out)
            kind = "full"
        else:
            if out.suffix != ".safetensors":
                out = out.with_suffix(".safetensors")
            _export_lora(trained, out)
            kind = "lora"
    except OSError as exc:
        raise ExportError(f"Could not write {out}: {exc.strerror or exc}.",
                          "Check that the disk has space and the folder is writable.") from None
    return ExportResult(path=out, kind=kind, step=step)


def _export_lora(trained: TrainedModel, out: Path) -> None:
    state = trained.trainee.state()
    backbone = trained.backbone
    configs = {role: json.loads(text) for role, text in
               ((k.removesuffix("_lora_config"), v) for k, v in trained.trainee.lora_metadata().items())}
    if hasattr(backbone, "save_lora_diffusers"):
        text_loras = [state[r] for r in TEXT_ROLES if r in state]

        def write(tmp: str) -> None:
            backbone.save_lora_diffusers(Path(tmp), state[DENOISER], text_loras, configs[DENOISER])
    else:
        metadata = {"format": "peft", "lora_config": json.dumps(configs[DENOISER]),
                    "base_model": Path(trained.backbone.source).name,
                    "transferstudio_version": __version__, "step": str(trained.checkpoint.step)}

        def write(tmp: str) -> None:
            save_file(state[DENOISER], tmp, metadata=metadata)
    write_with_atomic(out, write)


def _export_full(trained: TrainedModel, out: Path) -> None:
    import shutil
    import uuid

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        trained.backbone.save_full(tmp)
        write_json_atomic(tmp / "transferstudio.json", {
            "app_version": __version__, "step": trained.checkpoint.step,
            "config": trained.config.to_dict(), "base_model": str(trained.backbone.source)})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
