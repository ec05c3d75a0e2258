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
from typing import Any

from transferstudio.backbones import _flow_common as common
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
    torch_module = "transferstudio.backbones.flux_backbone"
    backbone_name = "FluxBackbone"
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


__all__ = ["FluxFamily"]
