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
from typing import Any

from transferstudio.backbones import _flow_common as common
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
    torch_module = "transferstudio.backbones.sd3_backbone"
    backbone_name = "SD3Backbone"
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


__all__ = ["SD3Family"]
