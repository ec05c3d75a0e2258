"""FLUX.1's torch half: the loaded model (`FluxBackbone`), its text encoding, transformer call and
pipeline, and FLUX's 2x2 latent packing. What a FLUX.1 path is, from its configs, is flux.py (the
family's spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from transferstudio.backbones import _flow_backbone as flowb
from transferstudio.backbones import _flow_common as common
from transferstudio.backbones import _sd_common as sdc
from transferstudio.backbones.base import Conditioning, ExportSpec
from transferstudio.backbones.diffusers_folder import read_json
from transferstudio.backbones.flux import IMPLEMENTATION, TRAINING_GUIDANCE, VARIANTS, variant_of


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 · W/2, 4C): 2x2 patches as tokens, as FluxPipeline packs them."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` for latents of height h and width w."""
    b, _, channels = tokens.shape
    c = channels // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (row, column) position of each packed token, as FluxPipeline gives the transformer."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxBackbone(flowb.FlowBackbone):
    family = "flux"
    pipeline_class_name = "FluxPipeline"
    layout_kind = "flux"
    text_encoder_names = ("text_encoder",)
    kohya_text_prefixes = (("text_encoder", "lora_te1_"),)
    t5_name = "text_encoder_2"
    variant_of = staticmethod(variant_of)

    @classmethod
    def from_folder(cls, path: Path) -> "FluxBackbone":
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path = Path(path)
        transformer = common.load_model(FluxTransformer2DModel, path / "transformer", "transformer")
        variant = variant_of(dict(transformer.config))
        return cls(
            transformer=transformer,
            vae=common.load_model(AutoencoderKL, path / "vae", "VAE"),
            encoders={"text_encoder": common.load_encoder(CLIPTextModel, path / "text_encoder",
                                                            "first text encoder (CLIP-L)"),
                      "text_encoder_2": common.load_t5(path / "text_encoder_2", "second text encoder (T5)")},
            tokenizers={"tokenizer": sdc.load_component(CLIPTokenizer, path / "tokenizer", "first tokenizer"),
                        "tokenizer_2": common.load_t5_tokenizer(path / "tokenizer_2", "T5 tokenizer")},
            scheduler_config=sdc.scheduler_config(path), source=path,
            pipeline_config=read_json(path / "model_index.json"), label=VARIANTS[variant][0], variant=variant)

    @property
    def guided(self) -> bool:
        """FLUX-dev: the transformer takes a (distilled) guidance input."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def default_sequence_length(self) -> int:  # type: ignore[override]
        return 512 if self.guided else 256

    @property
    def default_guidance(self) -> float:  # type: ignore[override]
        return 3.5 if self.guided else 0.0

    # --- sizes ---------------------------------------------------------------------------------
    def native_resolution(self) -> int:
        size = getattr(self.vae.config, "sample_size", None)
        side = size if isinstance(size, int) else (size[0] if size else None)
        return int(side) if side else 1024

    def latent_multiple(self) -> int:
        return self.vae_scale * 2

    def layer_extras(self, layers: str) -> list[str]:
        singles = [f"single_transformer_blocks.{i}.proj_out" for i in range(len(self.transformer.single_transformer_blocks))]
        ff = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", *singles]
        if layers == "attention":
            return []
        if layers == "attention+ff":
            return ff
        return ff + ["norm1.linear", "norm1_context.linear", "norm.linear"]  # the blocks' modulations

    # --- training ------------------------------------------------------------------------------
    def encode_conditioning(self, captions: Sequence[str], *, original_sizes: Sequence[tuple[int, int]] = (),
                            crop_top_left: Sequence[tuple[int, int]] = (), target_size: tuple[int, int] = (0, 0),
                            train_text_encoder: bool = False) -> Conditioning:
        """As FluxPipeline.encode_prompt: T5's tokens, CLIP's pooled output and the text positions."""
        with self._text_grad(train_text_encoder):
            embeds, pooled, text_ids = self._encoder_pipeline().encode_prompt(
                prompt=list(captions), prompt_2=None, device=self.compute_device(),
                max_sequence_length=self.max_sequence_length)
        return Conditioning(kwargs={"encoder_hidden_states": embeds.float(), "pooled_projections": pooled.float(),
                                    "txt_ids": text_ids.float()})

    shared_text_names = ("txt_ids",)

    def shared_text_inputs(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """FLUX's text positions: zeros, one row per token (as FluxPipeline.encode_prompt makes them)."""
        embeds = features["encoder_hidden_states"]
        return {"txt_ids": torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=torch.float32)}

    def predict(self, noisy: torch.Tensor, sigmas: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The velocity at noise levels `sigmas` on (B, C, H, W) latents: packed into tokens, the
        transformer given σ as its timestep (it scales by 1000 itself) and, for dev, the training
        guidance; unpacked again."""
        b, _, h, w = noisy.shape
        guidance = torch.full((b,), TRAINING_GUIDANCE, device=noisy.device, dtype=torch.float32) \
            if self.guided else None
        out = self.transformer(hidden_states=pack(noisy), timestep=sigmas.to(noisy.dtype), guidance=guidance,
                               img_ids=image_ids(h, w, noisy.device, noisy.dtype), return_dict=False,
                               **cond.kwargs)[0]
        return unpack(out, h, w)

    # --- sampling ------------------------------------------------------------------------------
    def _pipeline(self, scheduler: Any) -> Any:
        from diffusers import FluxPipeline

        e, t = self.encoders, self.tokenizers
        return FluxPipeline(scheduler=scheduler, vae=self.vae, text_encoder=e["text_encoder"],
                            tokenizer=t["tokenizer"], text_encoder_2=e["text_encoder_2"],
                            tokenizer_2=t["tokenizer_2"], transformer=self.transformer)

    def _call(self, pipe: Any, texts: list[str], gens: list[torch.Generator], *, steps: int, guidance: float,
              width: int, height: int, negative_prompt: str, output_type: str) -> Any:
        return pipe(texts, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                    generator=gens, max_sequence_length=self.max_sequence_length, output_type=output_type)

    def _latents_for_vae(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return unpack(latents, height // self.vae_scale, width // self.vae_scale)

    # --- exports -------------------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        return ExportSpec(variant=self.variant, modelspec_architecture=VARIANTS[self.variant][1],
                          kohya_base_version="flux1", kohya_text_prefixes=self.kohya_text_prefixes,
                          kohya_original_layout=True, version_label="Flux", modelspec_implementation=IMPLEMENTATION)


__all__ = ["FluxBackbone", "pack", "unpack", "image_ids"]
