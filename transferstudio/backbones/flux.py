"""FLUX.1 (dev and schnell): a diffusers `FluxPipeline` folder.

A rectified-flow transformer (`FluxTransformer2DModel`: double blocks with separate image and text
weights, then single blocks over both) on 2x2-packed latents of a 16-channel VAE with a shift;
CLIP-L gives the pooled vector, T5-XXL the tokens. FLUX.1-dev is guidance-distilled: its
transformer takes the guidance as an input (`guidance_embeds` in its config) and its scheduler
shifts the noise levels by resolution (`use_dynamic_shifting`); schnell has neither. Training
feeds dev a fixed guidance (TRAINING_GUIDANCE) and samples noise levels with the same
resolution-dependent shift (flow.py).

Previews: the folder's FlowMatchEulerDiscreteScheduler, dev with its distilled guidance, i.e.

    pipe = FluxPipeline.from_pretrained(folder)                    # + pipe.load_lora_weights(file)
    pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, width=w, height=h,
         max_sequence_length=n, generator=[torch.Generator().manual_seed(s) ...])

with n = min(512 for dev / 256 for schnell, the T5 tokenizer's model_max_length); guidance 3.5
by default (schnell ignores it). There is no negative prompt (no true CFG).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from transferstudio.backbones import _flow_common as common
from transferstudio.backbones import _sd_common as sdc
from transferstudio.backbones.base import Conditioning, ExportSpec
from transferstudio.backbones.diffusers_folder import read_json
from transferstudio.backbones.sdfiles.detect import FLOW_VARIANTS

PIPELINES = ("FluxPipeline",)
COMPONENTS = {"transformer": True, "vae": True, "text_encoder": True, "text_encoder_2": True,
              "tokenizer": False, "tokenizer_2": False, "scheduler": False}
# variant -> (label, modelspec.architecture); the labels are the model library's (single files)
VARIANTS = {v: (FLOW_VARIANTS[v], arch) for v, arch in (("flux-dev", "flux-1-dev"), ("flux-schnell", "flux-1-schnell"))}
IMPLEMENTATION = "https://github.com/black-forest-labs/flux"
TRAINING_GUIDANCE = 1.0  # the guidance input FLUX-dev sees while it trains (the distilled guidance is kept
#   for sampling; LoRAs trained at 1.0 work at the usual 3–4)


def variant_of(transformer_config: dict[str, Any]) -> str:
    return "flux-dev" if transformer_config.get("guidance_embeds") else "flux-schnell"


def schedule_mismatch(variant: str, scheduler_config: dict[str, Any]) -> str | None:
    """A sentence when the scheduler is the other variant's (a dev transformer with schnell's
    unshifted schedule, or the other way round), else None."""
    dynamic = bool(scheduler_config.get("use_dynamic_shifting"))
    if variant == "flux-dev" and not dynamic:
        return ("its transformer is FLUX.1 dev (it takes a guidance input) but its scheduler is schnell's "
                "(no resolution-dependent shift)")
    if variant == "flux-schnell" and dynamic:
        return ("its transformer is FLUX.1 schnell (no guidance input) but its scheduler is dev's "
                "(a resolution-dependent shift)")
    return None


class FluxFamily(common.FlowFamily):
    key = "flux"
    what = "FLUX.1"
    pick_hint = "Pick a FluxPipeline folder (FLUX.1 dev or schnell in the diffusers layout)."
    pipelines = PIPELINES
    transformer_class = "FluxTransformer2DModel"
    components = COMPONENTS
    lora_text_encoders = 1

    def describe(self, path: Path, index: dict[str, Any], configs: dict[str, dict[str, Any]]
                 ) -> tuple[str, str, list[tuple[str, str]], list[str]]:
        variant = variant_of(configs["transformer"])
        resolution = self.native_resolution(configs) if configs["vae"] else None
        label = VARIANTS[variant][0] + (f" ({resolution} px)" if resolution else "")
        details = [("prompts", "yes (CLIP-L, T5)"), ("training", "flow matching, LoRA on the transformer")]
        if variant == "flux-dev":
            details.append(("guidance", f"distilled (trains at {TRAINING_GUIDANCE:g}, previews at 3.5)"))
        mismatch = schedule_mismatch(variant, configs["scheduler"]) if configs["scheduler"] else None
        problems = [mismatch] if mismatch else []
        return label, variant, details, problems

    def folder_advice(self, problems: list[str]) -> str:
        if any("scheduler is" in p for p in problems):
            return ("Put back the scheduler folder that came with this transformer (FLUX.1 dev shifts the noise by "
                    "resolution, schnell does not), or pick the model folder it belongs to.")
        return ""

    def native_resolution(self, configs: dict[str, dict[str, Any]]) -> int | None:
        size = configs["vae"].get("sample_size")
        side = size if isinstance(size, int) else (size[0] if size else None)
        return int(side) if side else 1024

    def resolution_multiple(self, configs: dict[str, dict[str, Any]]) -> int:
        return common._lcm(common.vae_scale_factor(configs["vae"]) * 2, common.PIPELINE_MULTIPLE)

    def suggested(self, variant: str) -> tuple[tuple[str, Any], ...]:
        extra = (("preview_steps", 4),) if variant == "flux-schnell" else ()
        return (("timestep_sampling", "logit-normal"),) + extra

    def backbone_class(self) -> type["FluxBackbone"]:
        return FluxBackbone


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


class FluxBackbone(common.FlowBackbone):
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


__all__ = ["FluxFamily", "FluxBackbone"]
