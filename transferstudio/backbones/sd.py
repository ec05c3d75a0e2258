"""Stable Diffusion 1.x and 2.x: a diffusers `StableDiffusionPipeline` folder, or a single-file
`.safetensors` checkpoint that the model library detects as sd1/sd2.

1.x and 2.x differ in the text encoder (CLIP ViT-L, 768 wide, quick_gelu vs OpenCLIP ViT-H,
1024 wide, gelu) and, for 2.x 768 px, in predicting v instead of noise; the prediction type
is read from the scheduler config (and can be overridden at load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transferstudio.backbones import _sd_common as common
from transferstudio.backbones.diffusers_folder import component_problems, read_json
from transferstudio.backbones.spec import Inspection, folder_size

PIPELINES = ("StableDiffusionPipeline",)
COMPONENTS = {"unet": True, "vae": True, "text_encoder": True, "tokenizer": False, "scheduler": False}


def sd_version(text_encoder_config: dict[str, Any], unet_config: dict[str, Any]) -> str:
    """The version, "1.x" or "2.x", from the text encoder width (768 / 1024); for other widths (custom or
    test models) from its activation: OpenCLIP (2.x) uses gelu, OpenAI CLIP (1.x) quick_gelu."""
    from transferstudio.backbones.sdfiles.detect import variant_of_text_width

    width = text_encoder_config.get("hidden_size") or unet_config.get("cross_attention_dim")
    variant = variant_of_text_width(width, sdxl=False)
    if variant is not None:
        return "2.x" if variant == "sd2" else "1.x"
    return "2.x" if text_encoder_config.get("hidden_act") == "gelu" else "1.x"


def _label(version: str, resolution: int | None, prediction_type: str) -> str:
    inner = ", ".join(x for x in (f"{resolution} px" if resolution else "",
                                  common.prediction_label(prediction_type)) if x)
    return f"Stable Diffusion {version} ({inner})"


class SDFamily(common.StableDiffusionFamily):
    key = "sd"
    torch_module = "transferstudio.backbones.sd_backbone"
    backbone_name = "SDBackbone"
    what = "Stable Diffusion 1.x/2.x"
    pick_hint = "Pick a StableDiffusionPipeline folder or an SD 1.x/2.x .safetensors file."
    text_encoders = 1
    supports_full_finetune = True

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if path.is_file():
            # SD is asked first of the single-file families, so it also reports files the model
            # library could not place (pickles, unknown layouts) with the library's advice.
            return common.inspect_single_file(path, families=("sd1", "sd2"), key=self.key, claim_unplaced=True)
        index = read_json(path / "model_index.json")
        if index is None or index.get("_class_name") not in PIPELINES:
            return None
        problems = component_problems(path, COMPONENTS)
        unet_cfg = read_json(path / "unet" / "config.json") or {}
        vae_cfg = read_json(path / "vae" / "config.json") or {}
        te_cfg = read_json(path / "text_encoder" / "config.json") or {}
        if unet_cfg and unet_cfg.get("_class_name") not in (None, "UNet2DConditionModel"):
            problems.append(f"its UNet is a {unet_cfg.get('_class_name')}, not a UNet2DConditionModel")
        sched = read_json(path / "scheduler" / "scheduler_config.json") or {}
        prediction = str(sched.get("prediction_type") or "epsilon")
        version = sd_version(te_cfg, unet_cfg)
        resolution = common.native_resolution(unet_cfg, vae_cfg) if unet_cfg and vae_cfg else None
        details = [("layout", "diffusers folder"), ("prompts", "yes (1 text encoder)")]
        if version == "2.x" and resolution == 768 and prediction == "epsilon":
            details.append(("note", "2.x at 768 px is usually v-prediction; if previews are noise, load it "
                                    "with prediction type v_prediction"))
        return Inspection(path=path, family=self.key if not problems else None,
                          label=_label(version, resolution, prediction), usable=not problems,
                          problems=tuple(problems), native_resolution=resolution, prediction_type=prediction,
                          size_bytes=folder_size(path), details=tuple(details),
                          variant="sd2" if version == "2.x" else "sd1")


__all__ = ["SDFamily"]
