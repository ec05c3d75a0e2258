"""Stable Diffusion XL base: a diffusers `StableDiffusionXLPipeline` folder, or a single-file
`.safetensors` checkpoint that the model library detects as sdxl.

Two text encoders (CLIP ViT-L `CLIPTextModel` + OpenCLIP bigG `CLIPTextModelWithProjection`);
the UNet reads both penultimate hidden states side by side, the second encoder's pooled
projection, and six size numbers (original size, crop top-left, target size).
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

    def backbone_class(self) -> type["SDXLBackbone"]:
        return SDXLBackbone

    def kohya_unet_names(self, paths: list[str], unet_config: Any) -> dict[str, str]:
        return original_kohya_names(paths, unet_config)


class SDXLBackbone(common.StableDiffusionBase):
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


__all__ = ["SDXLFamily", "SDXLBackbone"]
