"""Stable Diffusion XL base: a diffusers `StableDiffusionXLPipeline` folder, or a single-file
`.safetensors` checkpoint that the model library detects as sdxl.

Two text encoders (CLIP ViT-L `CLIPTextModel` + OpenCLIP bigG `CLIPTextModelWithProjection`);
the UNet reads both penultimate hidden states side by side, the second encoder's pooled
projection, and six size numbers (original size, crop top-left, target size).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transferstudio.backbones import _sd_common as common
from transferstudio.backbones.diffusers_folder import component_problems, read_json
from transferstudio.backbones.spec import Inspection, folder_size

PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
COMPONENTS = {"unet": True, "vae": True, "text_encoder": True, "text_encoder_2": True,
              "tokenizer": False, "tokenizer_2": False, "scheduler": False}


def _is_refiner(index: dict[str, Any]) -> bool:
    # The refiner has no first text encoder and conditions on an aesthetic score instead.
    te = index.get("text_encoder")
    return bool(index.get("requires_aesthetics_score")) or (isinstance(te, list) and te[0] is None)


def original_kohya_names(paths: list[str], unet_config: Any) -> dict[str, str]:
    """SDXL kohya names use the original `input_blocks` / `middle_block` / `output_blocks` layout:
    sd-scripts trains SDXL on that UNet, and A1111 does not map diffusers-style SDXL names. The
    names come from the model library's diffusers -> original mapping (one mapping, not two)."""
    import torch

    from transferstudio.core.errors import ExportError
    from transferstudio.backbones.sdfiles.original_layout import UNET_PREFIX as ORIGINAL, unet_to_original

    if unet_config is None:
        raise ValueError("SDXL kohya names need the UNet config (block layout)")
    out = {}
    for p in paths:
        try:  # the library maps parameter keys; a one-entry dict maps this module's weight
            (original,) = unet_to_original({p + ".weight": torch.empty(0)}, unet_config)
        except ValueError as exc:
            raise ExportError(f"The UNet layer {p} has no place in the SDXL checkpoint layout.",
                              "Export in the diffusers format instead.") from exc
        out[p] = "lora_unet_" + original.removeprefix(ORIGINAL).removesuffix(".weight").replace(".", "_")
    return out


class SDXLFamily(common.StableDiffusionFamily):
    key = "sdxl"
    torch_module = "transferstudio.backbones.sdxl_backbone"
    backbone_name = "SDXLBackbone"
    what = "Stable Diffusion XL"
    pick_hint = "Pick a StableDiffusionXLPipeline folder or an SDXL .safetensors file."
    text_encoders = 2
    supports_full_finetune = False

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if path.is_file():
            return common.inspect_single_file(path, families=("sdxl", "sdxl-refiner"), key=self.key)
        index = read_json(path / "model_index.json")
        if index is None or index.get("_class_name") not in PIPELINES:
            return None
        sched = read_json(path / "scheduler" / "scheduler_config.json") or {}
        prediction = str(sched.get("prediction_type") or "epsilon")
        if _is_refiner(index):
            return Inspection(path=path, family=None, label="Stable Diffusion XL refiner", usable=False,
                              variant="sdxl-refiner",
                              problems=("this is the SDXL refiner, which TransferStudio does not train; "
                                        "pick the SDXL base model",),
                              prediction_type=prediction, size_bytes=folder_size(path))
        problems = component_problems(path, COMPONENTS)
        unet_cfg = read_json(path / "unet" / "config.json") or {}
        vae_cfg = read_json(path / "vae" / "config.json") or {}
        if unet_cfg and unet_cfg.get("_class_name") not in (None, "UNet2DConditionModel"):
            problems.append(f"its UNet is a {unet_cfg.get('_class_name')}, not a UNet2DConditionModel")
        resolution = common.native_resolution(unet_cfg, vae_cfg) if unet_cfg and vae_cfg else None
        inner = ", ".join(x for x in (f"{resolution} px" if resolution else "",
                                      common.prediction_label(prediction)) if x)
        return Inspection(path=path, family=self.key if not problems else None,
                          label=f"Stable Diffusion XL ({inner})", usable=not problems, problems=tuple(problems),
                          native_resolution=resolution, prediction_type=prediction, size_bytes=folder_size(path),
                          details=(("layout", "diffusers folder"), ("prompts", "yes (2 text encoders)")),
                          variant="sdxl")

    def kohya_unet_names(self, paths: list[str], unet_config: Any) -> dict[str, str]:
        return original_kohya_names(paths, unet_config)


__all__ = ["SDXLFamily"]
