"""Stable Diffusion XL's torch half: the loaded model (`SDXLBackbone`), its text encoding and
pipeline. What an SDXL path is, from its configs, is sdxl.py (the family's spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones import _sd_backbone as sdb
from transferstudio.backbones import _sd_common as common
from transferstudio.backbones.base import Conditioning
from transferstudio.backbones.diffusers_folder import read_json
from transferstudio.backbones.sdxl import original_kohya_names
from transferstudio.core.errors import BackboneError


class SDXLBackbone(sdb.StableDiffusionBase):
    family = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def __init__(self, *, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, text_encoder_2: nn.Module,
                 tokenizer: Any, tokenizer_2: Any, scheduler_config: dict[str, Any], source: Path,
                 prediction_type: str = "", pipeline_config: dict[str, Any] | None = None) -> None:
        super().__init__(unet=unet, vae=vae, text_encoders=[text_encoder, text_encoder_2],
                         tokenizers=[tokenizer, tokenizer_2], scheduler_config=scheduler_config, source=source,
                         prediction_type=prediction_type, pipeline_config=pipeline_config)

    @classmethod
    def from_folder(cls, path: Path, *, prediction_type: str = "") -> "SDXLBackbone":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        path = Path(path)
        return cls(
            unet=common.load_diffusers_model(UNet2DConditionModel, path / "unet", "UNet"),
            vae=common.load_diffusers_model(AutoencoderKL, path / "vae", "VAE"),
            text_encoder=common.load_text_encoder(CLIPTextModel, path / "text_encoder", "first text encoder"),
            text_encoder_2=common.load_text_encoder(CLIPTextModelWithProjection, path / "text_encoder_2",
                                                    "second text encoder"),
            tokenizer=common.load_component(CLIPTokenizer, path / "tokenizer", "first tokenizer"),
            tokenizer_2=common.load_component(CLIPTokenizer, path / "tokenizer_2", "second tokenizer"),
            scheduler_config=common.scheduler_config(path), source=path, prediction_type=prediction_type,
            pipeline_config=read_json(path / "model_index.json"))

    @classmethod
    def from_components(cls, parts: Any, *, source: Path, prediction_type: str = "") -> "SDXLBackbone":
        """From the model library's `SingleFileComponents` (or anything with those attributes)."""
        if getattr(parts, "text_encoder_2", None) is None or getattr(parts, "tokenizer_2", None) is None:
            raise BackboneError(f"{source} has no second text encoder, which SDXL base needs.",
                                "It may be an SDXL refiner; pick the SDXL base model.")
        return cls(unet=parts.unet, vae=parts.vae, text_encoder=parts.text_encoder,
                   text_encoder_2=parts.text_encoder_2, tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2,
                   scheduler_config=dict(parts.scheduler_config), source=source,
                   prediction_type=prediction_type or getattr(parts, "prediction_type", "") or "")

    variant = "sdxl"

    def kohya_unet_names(self, paths: list[str]) -> dict[str, str]:
        return original_kohya_names(paths, dict(self.unet.config))

    def text_features(self, captions: Sequence[str], *, train_text_encoder: bool = False) -> dict[str, torch.Tensor]:
        """As StableDiffusionXLPipeline.encode_prompt (no clip skip): both encoders' penultimate
        hidden states concatenated, and the second's pooled projection."""
        captions = list(captions)
        hidden, pooled = [], None
        with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
            for tokenizer, te in zip(self.tokenizers, self._text_encoders):
                ids = self._token_ids(tokenizer, te, captions).input_ids.to(self.device)
                out = te(ids, output_hidden_states=True)
                if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
        if pooled is None:
            raise BackboneError("The second SDXL text encoder gave no pooled projection.",
                                "The model's text_encoder_2 must be a CLIPTextModelWithProjection.")
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1).float(), "text_embeds": pooled.float()}

    def conditioning_from(self, features: dict[str, torch.Tensor] | None, *, original_sizes: Sequence[tuple[int, int]] = (),
                          crop_top_left: Sequence[tuple[int, int]] = (),
                          target_size: tuple[int, int] = (0, 0)) -> Conditioning:
        """The text features, the pooled projection as `text_embeds`, and `time_ids` = original
        (h, w) + crop (top, left) + target (h, w) per sample."""
        n = features["encoder_hidden_states"].shape[0]
        target = tuple(int(x) for x in target_size) if any(target_size) else \
            (self.caps.native_resolution, self.caps.native_resolution)
        originals = list(original_sizes) or [target] * n
        crops = list(crop_top_left) or [(0, 0)] * n
        if len(originals) != n or len(crops) != n:
            raise ValueError(f"{n} captions but {len(originals)} original sizes and {len(crops)} crops")
        time_ids = torch.tensor([[*map(int, o), *map(int, c), *target] for o, c in zip(originals, crops)],
                                dtype=torch.float32, device=self.device)
        return Conditioning(kwargs={
            "encoder_hidden_states": features["encoder_hidden_states"],
            "added_cond_kwargs": {"text_embeds": features["text_embeds"], "time_ids": time_ids}})

    def _pipeline(self, scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLPipeline

        # No watermark: previews are for the user's eyes, and the library may not be installed.
        return StableDiffusionXLPipeline(
            vae=self.vae, text_encoder=self._text_encoders[0], text_encoder_2=self._text_encoders[1],
            tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1], unet=self.unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=bool(self.pipeline_config.get("force_zeros_for_empty_prompt", True)),
            add_watermarker=False)


__all__ = ["SDXLBackbone"]
