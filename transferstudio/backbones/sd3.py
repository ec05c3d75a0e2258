"""Stable Diffusion 3 and 3.5: a diffusers `StableDiffusion3Pipeline` folder.

An MMDiT transformer (`SD3Transformer2DModel`: joint blocks over image patches and text tokens;
3.5 medium adds a second image-only attention in its first blocks, 3.5 adds RMS q/k norms), a
16-channel VAE with a shift, CLIP-L and OpenCLIP bigG (both `CLIPTextModelWithProjection`) and
T5-XXL. The prompt embedding is the two CLIPs' penultimate hidden states side by side, padded to
T5's width, followed by T5's tokens; the pooled vector is both CLIPs' projections. Trained by
flow matching (flow.py) with the scheduler config's fixed shift (3.0 for the released models).

Previews: the folder's FlowMatchEulerDiscreteScheduler with classifier-free guidance, i.e.

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)        # + pipe.load_lora_weights(file)
    pipe(prompts, negative_prompt=None, num_inference_steps=steps, guidance_scale=guidance,
         width=w, height=h, max_sequence_length=n, generator=[torch.Generator().manual_seed(s) ...])

with n = min(256, the T5 tokenizer's model_max_length).
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

PIPELINES = ("StableDiffusion3Pipeline",)
COMPONENTS = {"transformer": True, "vae": True, "text_encoder": True, "text_encoder_2": True,
              "text_encoder_3": True, "tokenizer": False, "tokenizer_2": False, "tokenizer_3": False,
              "scheduler": False}

# variant -> (label, modelspec.architecture); the labels are the model library's (single files)
VARIANTS = {v: (FLOW_VARIANTS[v], arch) for v, arch in (
    ("sd3-medium", "stable-diffusion-3-medium"), ("sd3.5-medium", "stable-diffusion-3.5-medium"),
    ("sd3.5-large", "stable-diffusion-3.5-large"))}
IMPLEMENTATION = "https://github.com/Stability-AI/sd3.5"


def variant_of(transformer_config: dict[str, Any]) -> str:
    """sd3-medium / sd3.5-medium / sd3.5-large from the transformer's structure: 3.5 medium has
    dual-attention layers, 3.5 large q/k norms without them, SD3 medium neither."""
    if transformer_config.get("dual_attention_layers"):
        return "sd3.5-medium"
    if transformer_config.get("qk_norm"):
        return "sd3.5-large"
    return "sd3-medium"


class SD3Family(common.FlowFamily):
    key = "sd3"
    what = "Stable Diffusion 3"
    pick_hint = "Pick a StableDiffusion3Pipeline folder (SD3 / SD3.5 in the diffusers layout)."
    pipelines = PIPELINES
    transformer_class = "SD3Transformer2DModel"
    components = COMPONENTS
    optional = ("text_encoder_3", "tokenizer_3")  # SD3 runs without T5 (its tokens are zeros)
    lora_text_encoders = 2

    def describe(self, path: Path, index: dict[str, Any], configs: dict[str, dict[str, Any]]
                 ) -> tuple[str, str, list[tuple[str, str]], list[str]]:
        variant = variant_of(configs["transformer"])
        resolution = self.native_resolution(configs) if configs["transformer"] and configs["vae"] else None
        label = VARIANTS[variant][0] + (f" ({resolution} px)" if resolution else "")
        t5 = not common._left_out(index, "text_encoder_3")
        details = [("prompts", "yes (CLIP-L, CLIP-G" + (", T5)" if t5 else "; no T5)")),
                   ("training", "flow matching, LoRA on the transformer")]
        return label, variant, details, []

    def native_resolution(self, configs: dict[str, dict[str, Any]]) -> int | None:
        size = configs["transformer"].get("sample_size")
        return int(size) * common.vae_scale_factor(configs["vae"]) if size else None

    def resolution_multiple(self, configs: dict[str, dict[str, Any]]) -> int:
        own = common.vae_scale_factor(configs["vae"]) * int(configs["transformer"].get("patch_size") or 2)
        return common._lcm(own, common.PIPELINE_MULTIPLE)

    def backbone_class(self) -> type["SD3Backbone"]:
        return SD3Backbone


class SD3Backbone(common.FlowBackbone):
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


__all__ = ["SD3Family", "SD3Backbone"]
