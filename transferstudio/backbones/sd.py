"""Stable Diffusion 1.x and 2.x: a diffusers `StableDiffusionPipeline` folder, or a single-file
`.safetensors` checkpoint that the model library detects as sd1/sd2.

1.x and 2.x differ in the text encoder (CLIP ViT-L, 768 wide, quick_gelu vs OpenCLIP ViT-H,
1024 wide, gelu) and, for 2.x 768 px, in predicting v instead of noise; the prediction type
is read from the scheduler config (and can be overridden at load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones import _sd_common as common
from transferstudio.backbones.base import Conditioning, Inspection, folder_size
from transferstudio.backbones.diffusers_folder import component_problems, read_json
from transferstudio.core.errors import BackboneError

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

    def backbone_class(self) -> type["SDBackbone"]:
        return SDBackbone


class SDBackbone(common.StableDiffusionBase):
    family = "sd"
    pipeline_class_name = "StableDiffusionPipeline"
    text_encoder_names = ("text_encoder",)

    def __init__(self, *, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                 scheduler_config: dict[str, Any], source: Path, prediction_type: str = "",
                 pipeline_config: dict[str, Any] | None = None) -> None:
        super().__init__(unet=unet, vae=vae, text_encoders=[text_encoder], tokenizers=[tokenizer],
                         scheduler_config=scheduler_config, source=source, prediction_type=prediction_type,
                         pipeline_config=pipeline_config)
        self.version = sd_version(dict(text_encoder.config.to_dict()), dict(unet.config))

    @property
    def variant(self) -> str:
        if self.version.startswith("2"):
            return "sd2-v" if self.caps.prediction_type == "v_prediction" else "sd2"
        return "sd1"

    @property
    def text_encoder(self) -> nn.Module:
        return self._text_encoders[0]

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    @classmethod
    def from_folder(cls, path: Path, *, prediction_type: str = "") -> "SDBackbone":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path = Path(path)
        return cls(unet=common.load_diffusers_model(UNet2DConditionModel, path / "unet", "UNet"),
                   vae=common.load_diffusers_model(AutoencoderKL, path / "vae", "VAE"),
                   text_encoder=common.load_text_encoder(CLIPTextModel, path / "text_encoder", "text encoder"),
                   tokenizer=common.load_component(CLIPTokenizer, path / "tokenizer", "tokenizer"),
                   scheduler_config=common.scheduler_config(path), source=path,
                   prediction_type=prediction_type, pipeline_config=read_json(path / "model_index.json"))

    @classmethod
    def from_components(cls, parts: Any, *, source: Path, prediction_type: str = "") -> "SDBackbone":
        """From the model library's `SingleFileComponents` (or anything with those attributes)."""
        return cls(unet=parts.unet, vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                   scheduler_config=dict(parts.scheduler_config), source=source,
                   prediction_type=prediction_type or getattr(parts, "prediction_type", "") or "")

    def text_features(self, captions: Sequence[str], *, train_text_encoder: bool = False) -> dict[str, torch.Tensor]:
        """Captions -> the text encoder's last hidden state (after its final layer norm), as the
        StableDiffusionPipeline computes it."""
        te = self.text_encoder
        tokens = self._token_ids(self.tokenizer, te, captions)
        mask = tokens.attention_mask.to(self.device) if getattr(te.config, "use_attention_mask", False) else None
        with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
            hidden = te(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return {"encoder_hidden_states": hidden.float()}

    def conditioning_from(self, features: dict[str, torch.Tensor] | None, *, original_sizes: Sequence[tuple[int, int]] = (),
                          crop_top_left: Sequence[tuple[int, int]] = (),
                          target_size: tuple[int, int] = (0, 0)) -> Conditioning:
        """Sizes are not used by SD 1.x/2.x."""
        return Conditioning(kwargs={"encoder_hidden_states": features["encoder_hidden_states"]})

    def _pipeline(self, scheduler: Any) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, image_encoder=None, requires_safety_checker=False)


__all__ = ["SDFamily", "SDBackbone"]
