"""Stable Diffusion 1.x/2.x's torch half: the loaded model (`SDBackbone`), its text encoding and
pipeline. What an SD path is, from its configs, is sd.py (the family's spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones import _sd_backbone as sdb
from transferstudio.backbones import _sd_common as common
from transferstudio.backbones.base import Conditioning
from transferstudio.backbones.diffusers_folder import read_json
from transferstudio.backbones.sd import sd_version


class SDBackbone(sdb.StableDiffusionBase):
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


__all__ = ["SDBackbone"]
