"""Stable Diffusion 3's torch half: the loaded model (`SD3Backbone`), its text encoding, transformer
call and pipeline. What a Stable Diffusion 3 path is, from its configs, is sd3.py (the family's spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from transferstudio.backbones import _flow_backbone as flowb
from transferstudio.backbones import _flow_common as common
from transferstudio.backbones import _sd_common as sdc
from transferstudio.backbones.base import Conditioning, ExportSpec
from transferstudio.backbones.diffusers_folder import read_json
from transferstudio.backbones.sd3 import IMPLEMENTATION, VARIANTS, variant_of


class SD3Backbone(flowb.FlowBackbone):
    family = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    layout_kind = "sd3"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    kohya_text_prefixes = (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_"))
    t5_name = "text_encoder_3"
    default_sequence_length = 256
    default_guidance = 7.0
    variant_of = staticmethod(variant_of)

    @classmethod
    def from_folder(cls, path: Path) -> "SD3Backbone":
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        path = Path(path)
        index = read_json(path / "model_index.json") or {}
        t5 = not common._left_out(index, "text_encoder_3")
        transformer = common.load_model(SD3Transformer2DModel, path / "transformer", "transformer")
        variant = variant_of(dict(transformer.config))
        return cls(
            transformer=transformer,
            vae=common.load_model(AutoencoderKL, path / "vae", "VAE"),
            encoders={
                "text_encoder": common.load_encoder(CLIPTextModelWithProjection, path / "text_encoder",
                                                      "first text encoder (CLIP-L)"),
                "text_encoder_2": common.load_encoder(CLIPTextModelWithProjection, path / "text_encoder_2",
                                                        "second text encoder (CLIP-G)"),
                "text_encoder_3": common.load_t5(path / "text_encoder_3", "third text encoder (T5)") if t5 else None},
            tokenizers={
                "tokenizer": sdc.load_component(CLIPTokenizer, path / "tokenizer", "first tokenizer"),
                "tokenizer_2": sdc.load_component(CLIPTokenizer, path / "tokenizer_2", "second tokenizer"),
                "tokenizer_3": common.load_t5_tokenizer(path / "tokenizer_3", "T5 tokenizer") if t5 else None},
            scheduler_config=sdc.scheduler_config(path), source=path, pipeline_config=index,
            label=VARIANTS[variant][0], variant=variant)

    # --- sizes ---------------------------------------------------------------------------------
    def native_resolution(self) -> int:
        return int(self.transformer.config.sample_size) * self.vae_scale

    def latent_multiple(self) -> int:
        return self.vae_scale * int(self.transformer.config.patch_size)

    def tokens_per_latent(self) -> float:
        return 1.0 / int(self.transformer.config.patch_size) ** 2

    def layer_extras(self, layers: str) -> list[str]:
        ff = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
        if layers == "attention":
            return []
        if layers == "attention+ff":
            return ff
        return ff + ["norm1.linear", "norm1_context.linear"]  # the blocks' modulations

    # --- training ------------------------------------------------------------------------------
    def encode_conditioning(self, captions: Sequence[str], *, original_sizes: Sequence[tuple[int, int]] = (),
                            crop_top_left: Sequence[tuple[int, int]] = (), target_size: tuple[int, int] = (0, 0),
                            train_text_encoder: bool = False) -> Conditioning:
        """As StableDiffusion3Pipeline.encode_prompt (no clip skip, no guidance): token embeddings
        and the pooled vector. Sizes are not used by SD3."""
        with self._text_grad(train_text_encoder):
            embeds, _, pooled, _ = self._encoder_pipeline().encode_prompt(
                prompt=list(captions), prompt_2=None, prompt_3=None, device=self.compute_device(),
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return Conditioning(kwargs={"encoder_hidden_states": embeds.float(), "pooled_projections": pooled.float()})

    def predict(self, noisy: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity at noise levels `sigmas` (SD3's transformer takes σ · 1000 as its timestep)."""
        timestep = (sigmas * 1000.0).to(noisy.dtype)
        return self.transformer(hidden_states=noisy, timestep=timestep, return_dict=False, **cond.kwargs)[0]

    # --- sampling ------------------------------------------------------------------------------
    def _pipeline(self, scheduler: Any) -> Any:
        from diffusers import StableDiffusion3Pipeline

        e, t = self.encoders, self.tokenizers
        return StableDiffusion3Pipeline(transformer=self.transformer, scheduler=scheduler, vae=self.vae,
                                        text_encoder=e["text_encoder"], tokenizer=t["tokenizer"],
                                        text_encoder_2=e["text_encoder_2"], tokenizer_2=t["tokenizer_2"],
                                        text_encoder_3=e["text_encoder_3"], tokenizer_3=t["tokenizer_3"])

    def _call(self, pipe: Any, texts: list[str], gens: list[torch.Generator], *, steps: int, guidance: float,
              width: int, height: int, negative_prompt: str, output_type: str) -> Any:
        return pipe(texts, negative_prompt=[negative_prompt] * len(texts) if negative_prompt else None, num_inference_steps=steps,
                    guidance_scale=guidance, width=width, height=height, generator=gens,
                    max_sequence_length=self.max_sequence_length, output_type=output_type)

    # --- exports -------------------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        return ExportSpec(variant=self.variant, modelspec_architecture=VARIANTS[self.variant][1],
                          kohya_base_version="sd3", kohya_text_prefixes=self.kohya_text_prefixes,
                          kohya_original_layout=True, version_label="SD3", modelspec_implementation=IMPLEMENTATION)


__all__ = ["SD3Backbone"]
