"""The built-in export formats. Each writer gets the trained model and a staged path, writes
there, and returns what the manifest should add; staging, renaming and the manifest are the
caller's (export/formats.py); the table of formats is export/registry.py. What a family's files look like comes from its spec:
`backbone.export_spec()`, `save_lora`, `save_full`, `save_single_file`, `kohya_unet_names`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio import __version__
from transferstudio.export import metadata as md

if TYPE_CHECKING:
    from transferstudio.export.registry import ExportContext


def _modelspec(trained: Any, ctx: ExportContext, *, adapter: bool, implementation: str) -> dict[str, str]:
    backbone, config = trained.backbone, trained.config
    return md.modelspec_metadata(spec=backbone.export_spec(), adapter=adapter, title=ctx.title,
                                 resolution=md.resolution_of(backbone, config), implementation=implementation,
                                 trigger=config.trigger, date=ctx.date,
                                 description=f"Trained with TransferStudio {__version__} on "
                                             f"{Path(backbone.source).name}, {trained.checkpoint.step} steps.")


def _lora_configs(trained: Any) -> dict[str, dict]:
    return {k.removesuffix("_lora_config"): json.loads(v) for k, v in trained.trainee.lora_metadata().items()}


def _to_fp16(modules: list[Any]) -> None:
    import torch

    for module in modules:
        module.to(torch.float16)


# --- kohya LoRA ---------------------------------------------------------------------------------

def write_kohya(trained: Any, file: Path, ctx: ExportContext) -> dict:
    import torch
    from safetensors.torch import save_file

    from transferstudio.export.kohya import to_kohya

    backbone, config, trainee = trained.backbone, trained.config, trained.trainee
    spec = backbone.export_spec()
    tensors, modules = to_kohya(trainee.state(), trainee.lora_configs, unet_names=backbone.kohya_unet_names,
                                text_prefixes=dict(spec.kohya_text_prefixes),
                                dtype=torch.float16 if ctx.fp16 else None, conv_paths=trainee.conv_layers(),
                                fused_layers=backbone.kohya_fused_layers, row_norms=backbone.base_row_norms)
    ranks = sorted({m.rank for m in modules})
    alphas = sorted({m.alpha for m in modules})
    linear = [m for m in modules if not m.conv] or modules
    rank, alpha = max(m.rank for m in linear), sorted({m.alpha for m in linear})
    alpha = alpha[0] if len(alpha) == 1 else float(config.alpha)
    args: dict[str, Any] = {}
    kinds = sorted({m.kind for m in modules} - {"lora"})
    if kinds:  # LoHa / LoKr: as LyCORIS' kohya module records them; its dims are the settings
        args["algo"] = kinds[0]
        rank, alpha = int(config.rank), float(config.alpha)
        if kinds[0] == "lokr":
            args["factor"] = -1
    conv = [m for m in modules if m.conv]
    if conv:
        conv_alpha = float(config.conv_alpha or config.alpha) if kinds else conv[0].alpha
        args.update(conv_dim=conv[0].rank, conv_alpha=md._num(conv_alpha))
    if any(m.dora for m in modules):
        args["dora_wd"] = True
    meta = md.kohya_metadata(spec=spec, output_name=file.stem, rank=rank, alpha=alpha,
                             resolution=md.resolution_of(backbone, config), dataset=ctx.dataset, config=config,
                             base_name=Path(backbone.source).name, base_sha256=ctx.base_sha256,
                             step=trained.checkpoint.step, network_args=args,
                             precision=trained.checkpoint.state.get("precision"),
                             network_module="lycoris.kohya" if kinds else "networks.lora")
    implementation = (spec.modelspec_implementation or md.IMPL_SGM) if spec.kohya_original_layout \
        else md.IMPL_DIFFUSERS
    meta.update(_modelspec(trained, ctx, adapter=True, implementation=implementation))
    meta = md.with_hashes(tensors, meta)
    save_file(tensors, str(file), metadata=meta)
    # A1111 reads `<name>.json` beside a LoRA as its user metadata: these keys show up there.
    return {"kohya": {"modules": len(modules), "rank": ranks[-1], "alpha": alphas[-1] if len(alphas) == 1 else alphas,
                      "sshs_model_hash": meta["sshs_model_hash"], "sshs_legacy_hash": meta["sshs_legacy_hash"]},
            "activation text": config.trigger, "preferred weight": ctx.strength,
            "sd version": spec.version_label, "description": meta["modelspec.description"]}


# --- diffusers / peft ---------------------------------------------------------------------------

def write_diffusers(trained: Any, out: Path, ctx: ExportContext) -> dict:
    """LoRA: one `.safetensors` in the layout the family's Python loader reads (diffusers'
    `load_lora_weights` for SD/SDXL, peft for unconditional UNets). Full fine-tune: a diffusers
    folder that `from_pretrained` loads."""
    backbone = trained.backbone
    if trained.config.method != "lora":  # every weight trained (full, decoder): the whole model
        if ctx.fp16:
            _to_fp16(backbone.plain_modules())
        backbone.save_full(out)
        return {}
    metadata = {"base_model": Path(backbone.source).name, "transferstudio_version": __version__,
                "step": str(trained.checkpoint.step)}
    backbone.save_lora(out, trained.trainee.state(), _lora_configs(trained), metadata)
    _add_metadata(out, _modelspec(trained, ctx, adapter=True, implementation=md.IMPL_DIFFUSERS), fp16=ctx.fp16)
    return {"loading": LYCORIS_LOADING[trained.config.adapter]} if trained.config.adapter in LYCORIS_LOADING else {}


# How Python users load LoHa/LoKr files in this layout (diffusers 0.42's pipelines refuse them in
# `load_lora_weights`; its UNet loader reads LoKr with the adapter config stored in the file).
LYCORIS_LOADING = {
    "lokr": "UNet: pipe.unet.load_lora_adapter(folder, weight_name=file_name, prefix='unet'); text encoders: "
            "peft (LoKrConfig from the file's lora_adapter_metadata, inject_adapter_in_model, "
            "set_peft_model_state_dict). pipe.load_lora_weights does not read LoKr.",
    "loha": "peft: LoHaConfig(**config) from the file's lora_adapter_metadata (keys 'unet.*', 'text_encoder.*'; "
            "lora_config for unconditional models), inject_adapter_in_model(config, pipe.unet), "
            "set_peft_model_state_dict(pipe.unet, weights without 'unet.'). diffusers has no LoHa loader.",
}


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


# --- merged models ------------------------------------------------------------------------------

def write_merged_diffusers(trained: Any, folder: Path, ctx: ExportContext) -> dict:
    """A complete diffusers folder (`from_pretrained` loads it) with the LoRA baked in."""
    from transferstudio.export.merged import bake

    bake(trained, ctx.strength)
    if ctx.fp16:
        _to_fp16(trained.backbone.plain_modules())
    trained.backbone.save_full(Path(folder))
    return {}


def write_single_file(trained: Any, file: Path, ctx: "ExportContext") -> dict:
    """The trained model as one original-layout file (families that declare the format)."""
    import torch

    meta = _modelspec(trained, ctx, adapter=False, implementation=md.IMPL_SGM)
    meta.update({"transferstudio.version": __version__, "transferstudio.steps": str(trained.checkpoint.step),
                 "transferstudio.base_model": Path(trained.backbone.source).name})
    trained.backbone.save_single_file(file, dtype=torch.float16 if ctx.fp16 else None, metadata=meta)
    return {}


def write_merged_single_file(trained: Any, file: Path, ctx: ExportContext) -> dict:
    """One original-layout checkpoint for A1111/ComfyUI/Forge with the LoRA baked in."""
    import torch

    from transferstudio.export.merged import bake

    meta = _modelspec(trained, ctx, adapter=False, implementation=md.IMPL_SGM)
    meta.update({"transferstudio.version": __version__, "transferstudio.steps": str(trained.checkpoint.step),
                 "transferstudio.base_model": Path(trained.backbone.source).name,
                 "transferstudio.base_model_sha256": ctx.base_sha256 or "",
                 "transferstudio.strength": str(ctx.strength),
                 "transferstudio.settings": json.dumps(trained.config.to_dict())})
    bake(trained, ctx.strength)
    trained.backbone.save_single_file(file, dtype=torch.float16 if ctx.fp16 else None, metadata=meta)
    return {}


# --- a trained part put into the model it belongs to (a VAE into its Stable Diffusion model) -----

def _pipeline_with(trained: Any, ctx: "ExportContext") -> Any:
    """The model named by `ctx.pipeline`, loaded, with the trained part in place of its own."""
    from transferstudio.backbones.registry import inspect_backbone, load_backbone
    from transferstudio.core.errors import ExportError

    if ctx.pipeline is None:
        raise ExportError("This format needs the Stable Diffusion model the VAE belongs in.",
                          "Name it with --pipeline PATH (a diffusers folder or a .safetensors checkpoint).")
    found = inspect_backbone(ctx.pipeline)
    if not found.usable or found.caps is None or not found.caps.single_file:
        raise ExportError(f"{ctx.pipeline} is not a Stable Diffusion model ({found.label}).",
                          "Name a Stable Diffusion 1.x/2.x or SDXL model folder or checkpoint, not a VAE or LoRA.")
    pipeline = load_backbone(ctx.pipeline)
    try:
        pipeline.replace_part(trained.backbone)
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise ExportError(f"The trained VAE does not fit {Path(ctx.pipeline).name}: {exc}",
                          "Pick the Stable Diffusion model this VAE came from.") from None
    return pipeline


def write_pipeline_diffusers(trained: Any, folder: Path, ctx: "ExportContext") -> dict:
    pipeline = _pipeline_with(trained, ctx)
    if ctx.fp16:
        _to_fp16(pipeline.plain_modules())
    pipeline.save_full(Path(folder))
    return {"pipeline": str(ctx.pipeline)}


def write_pipeline_single_file(trained: Any, file: Path, ctx: "ExportContext") -> dict:
    import torch

    pipeline = _pipeline_with(trained, ctx)
    meta = {"transferstudio.version": __version__, "transferstudio.steps": str(trained.checkpoint.step),
            "transferstudio.vae": Path(trained.backbone.source).name,
            "transferstudio.pipeline": Path(ctx.pipeline).name}
    pipeline.save_single_file(file, dtype=torch.float16 if ctx.fp16 else None, metadata=meta)
    return {"pipeline": str(ctx.pipeline)}


# --- generators (GANs) ---------------------------------------------------------------------------

def _generator_metadata(trained: Any, ctx: "ExportContext") -> dict[str, str]:
    return {"transferstudio.version": __version__, "transferstudio.steps": str(trained.checkpoint.step),
            "transferstudio.base_model": Path(trained.backbone.source).name, "title": ctx.title,
            "date": ctx.date, "weights": "generator EMA"}


def write_generator(trained: Any, file: Path, ctx: "ExportContext") -> dict:
    """The generator's averaged (EMA) weights as one .safetensors, its config in the metadata."""
    trained.backbone.save_generator(file, metadata=_generator_metadata(trained, ctx))
    return {"weights": "generator EMA"}


def write_onnx(trained: Any, file: Path, ctx: "ExportContext") -> dict:
    """The generator as an ONNX graph (input `z`, output `image` in [-1, 1])."""
    trained.backbone.save_onnx(file)
    return {"weights": "generator EMA", "onnx_input": "z", "onnx_output": "image"}


def write_gan_folder(trained: Any, folder: Path, ctx: "ExportContext") -> dict:
    """Generator (EMA) and discriminator as a GAN folder, a backbone to adapt further."""
    trained.backbone.save_full(folder)
    return {"weights": "generator EMA + discriminator"}
