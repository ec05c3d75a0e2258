"""The backbone Stable Diffusion 3 (sd3_backbone.py) and FLUX.1 (flux_backbone.py) share: the
transformer, VAE and text encoders loaded, trained by flow matching (flow.py), LoRA on the
transformer (and the CLIP encoders), previews with the family's own pipeline, and diffusers and
kohya LoRA exports named through mmdit_layout. What a path of these families is, from its
configs, is _flow_common.py.

Conventions (as in _sd_common): `encode_conditioning` sizes are (height, width); `sample(size=...)`
takes (width, height); previews use one CPU `torch.Generator().manual_seed(seed)` per picture with
the folder's own FlowMatchEulerDiscreteScheduler, so a plain diffusers script gives the same picture.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones import _sd_backbone as sdb
from transferstudio.backbones import mmdit_layout as layout
from transferstudio.backbones._flow_common import DOMAIN, LAYER_CHOICES, PIPELINE_MULTIPLE, _lcm, vae_scale_factor
from transferstudio.backbones.base import Capabilities, Conditioning, ExportSpec
from transferstudio.backbones.diffusion import DiffusionBackbone
from transferstudio.backbones.flow import FlowObjective, FlowSchedule
from transferstudio.core.errors import BackboneError


_first_dtype, _trainable = sdb._first_dtype, sdb._trainable  # the same rules as SD's


def _has_adapter(module: nn.Module) -> bool:
    return any(m in name for name, _ in module.named_parameters() for m in ("lora_", "hada_", "lokr_"))


class FlowBackbone(DiffusionBackbone):
    """Transformer + VAE (with shift) + text encoders, trained by flow matching. Subclasses give
    the text encoding, the transformer call, the pipeline and the layer tables."""

    family = ""
    pipeline_class_name = ""
    layout_kind = ""  # mmdit_layout table ("sd3" | "flux")
    text_encoder_names: tuple[str, ...] = ("text_encoder",)  # CLIP encoders that may take LoRA (training roles)
    kohya_text_prefixes: tuple[tuple[str, str], ...] = (("text_encoder", "lora_te1_"),)
    t5_name = "text_encoder_2"  # the pipeline's name of the T5 encoder (and tokenizer suffix)
    default_sequence_length = 256  # the pipeline's max_sequence_length default
    default_guidance = 7.0
    weighting = "none"  # flow.loss_weights scheme

    @staticmethod
    def variant_of(transformer_config: dict[str, Any]) -> str:
        """The variant (sd3-medium, flux-dev, …) a transformer config is."""
        raise NotImplementedError

    def __init__(self, *, transformer: nn.Module, vae: nn.Module, encoders: dict[str, nn.Module | None],
                 tokenizers: dict[str, Any], scheduler_config: dict[str, Any], source: Path,
                 pipeline_config: dict[str, Any] | None = None, label: str = "", variant: str = "") -> None:
        self.transformer = transformer.float().eval()
        self.vae = vae.float().eval()
        self.encoders = {k: (v.float().eval() if v is not None else None) for k, v in encoders.items()}
        self.tokenizers = dict(tokenizers)
        # The text encoders as a list attribute too, for code that walks a backbone's attributes for
        # its modules (the memory plan): with the transformer and the VAE, each module once.
        self.encoder_list = self._all_encoders()
        for module in (self.transformer, self.vae, *self._all_encoders()):
            module.requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        self.pipeline_config = dict(pipeline_config or {})
        self.source = Path(source)
        self.device = torch.device("cpu")
        self.variant = variant
        self.caps = Capabilities(
            conditioning="text", native_resolution=self.native_resolution(),
            resolution_multiple=_lcm(self.latent_multiple(), PIPELINE_MULTIPLE), supports_full_finetune=False,
            text_encoders=len(self.text_encoder_names), prediction_type="flow", latent=True, methods=("lora",),
            kohya_lora=True, single_file=False, label=label, domain=DOMAIN)
        self._layers: list[layout.Layer] | None = None

    # --- sizes -------------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        return vae_scale_factor(dict(self.vae.config))

    def native_resolution(self) -> int:
        raise NotImplementedError

    def latent_multiple(self) -> int:
        """Pixel sides must be a multiple of this for the transformer (patches / packing)."""
        raise NotImplementedError

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: the pipeline's default, or fewer if the tokenizer says so."""
        tok = self.tokenizers.get(self.t5_name.replace("text_encoder", "tokenizer"))
        limit = int(getattr(tok, "model_max_length", 0) or 0)
        return min(self.default_sequence_length, limit) if 0 < limit < 100_000 else self.default_sequence_length

    # --- modules -------------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        return self.transformer

    def _all_encoders(self) -> list[nn.Module]:
        return [m for m in self.encoders.values() if m is not None]

    def text_encoders(self) -> list[nn.Module]:
        return [self.encoders[n] for n in self.text_encoder_names]

    def lora_targets(self) -> list[str]:
        return list(self.adapter_targets("attention")[0])

    def layer_extras(self, layers: str) -> list[str]:
        """Targets a preset adds to the attention projections (family tables)."""
        raise NotImplementedError

    def attention_targets(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def adapter_targets(self, layers: str) -> tuple[list[str], list[str]]:
        """Layer presets as transformer module names (peft matches them as name suffixes). There are
        no convolutions to adapt, so "all+conv" adapts what "all-linear" does."""
        if layers not in LAYER_CHOICES:
            raise BackboneError(f"Unknown layer choice '{layers}'.", f"Use one of {', '.join(LAYER_CHOICES)}.")
        targets = self.attention_targets()
        return targets + [t for t in self.layer_extras(layers) if t not in targets], []

    def to(self, device: torch.device, dtype: torch.dtype) -> "FlowBackbone":
        """Trained (adapter) weights stay fp32. In bf16 the transformer's frozen weights take bf16
        too (FLUX's 12 B parameters are 48 GB in fp32, 24 GB in bf16; autocast runs the layers in
        bf16 anyway); in fp16 they stay fp32 (FLUX's activations overflow fp16). The VAE (unless
        `force_upcast` in fp16) and frozen text encoders take `dtype`; text encoders with trainable
        (LoRA) weights stay fp32 — so add adapters before calling this."""
        self.device = torch.device(device)
        self.transformer.to(self.device)
        if dtype == torch.bfloat16:
            sdb.cast_frozen(self.transformer, dtype)
        vae_dtype = torch.float32 if dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False) \
            else dtype
        self.vae.to(self.device, vae_dtype)
        for te in self._all_encoders():
            te.to(self.device, torch.float32 if _trainable(te) else dtype)
        return self

    def plain_modules(self) -> list[nn.Module]:
        return [self.transformer, self.vae, *self._all_encoders()]

    # --- training ------------------------------------------------------------------------------
    # The posterior of the VAE, as SD's: (mean − shift) · scale and std · scale, sampled with noise
    # drawn as diffusers draws it (the VAE's dtype), per picture of the global batch in a
    # data-parallel run; the encoding caches keep (mean, std) and draw the same.
    latent_distribution = sdb.StableDiffusionBase.latent_distribution
    sample_latents = sdb.StableDiffusionBase.sample_latents
    encoder_fingerprint = sdb.StableDiffusionBase.encoder_fingerprint

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, *, sample: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> (latents − shift) · scale (fp32), as the pipelines undo it."""
        mean, std = self.latent_distribution(pixels)
        return self.sample_latents(mean, std, generator=generator) if sample else mean

    # Text features per caption for the text cache (T5-XXL then runs once per caption, not per
    # step): the conditioning's per-caption tensors, put back together by `conditioning_from`.
    def text_features(self, captions: Sequence[str], *, train_text_encoder: bool = False) -> dict[str, torch.Tensor]:
        cond = self.encode_conditioning(captions, train_text_encoder=train_text_encoder)
        return {name: value for name, value in cond.kwargs.items() if name not in self.shared_text_names}

    def conditioning_from(self, features: dict[str, torch.Tensor] | None, *,
                          original_sizes: Sequence[tuple[int, int]] = (),
                          crop_top_left: Sequence[tuple[int, int]] = (),
                          target_size: tuple[int, int] = (0, 0)) -> Conditioning:
        return Conditioning(kwargs={**(features or {}), **self.shared_text_inputs(features or {})})

    shared_text_names: tuple[str, ...] = ()  # conditioning inputs the same for every caption

    def shared_text_inputs(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Conditioning inputs that are the same for every caption (FLUX's text positions)."""
        return {}

    def flow_schedule(self) -> FlowSchedule:
        return FlowSchedule.from_config(self.scheduler_config, tokens_per_latent=self.tokens_per_latent())

    def tokens_per_latent(self) -> float:
        return 0.25

    def objective(self, config: Any) -> FlowObjective:
        return FlowObjective(self, config, weighting=self.weighting)

    def compute_device(self) -> torch.device:
        """Where the transformer's weights are (where conditioning must end up)."""
        for p in self.transformer.parameters():
            return p.device
        return self.device

    def _text_grad(self, train_text_encoder: bool) -> Any:
        return torch.set_grad_enabled(bool(train_text_encoder) and torch.is_grad_enabled())

    def _encoder_pipeline(self) -> Any:
        """The family's pipeline, kept for its `encode_prompt` (the text encoding as it samples)."""
        pipe = getattr(self, "_text_pipe", None)
        if pipe is None:
            pipe = self._text_pipe = self._pipeline(self._scheduler())
        return pipe

    # --- sampling ------------------------------------------------------------------------------
    def _pipeline(self, scheduler: Any) -> Any:
        raise NotImplementedError

    def _scheduler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)

    def _call(self, pipe: Any, texts: list[str], gens: list[torch.Generator], *, steps: int, guidance: float,
              width: int, height: int, negative_prompt: str, output_type: str) -> Any:
        raise NotImplementedError

    def _latents_for_vae(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents

    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float | None = None, size: tuple[int, int] | None = None,
               negative_prompt: str = "") -> list[Any]:
        """PIL pictures, one per seed, made by the family's own pipeline with the modules as they are
        now (adapters applied). Seeds drive only the starting noise (one CPU generator each). With
        fp16/bf16 frozen parts the run happens under autocast and the VAE decodes in its own dtype."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            return []
        texts = sdb.paired_prompts(seeds, prompts)
        width, height = size or (self.caps.native_resolution, self.caps.native_resolution)
        multiple = self.latent_multiple()
        if width % multiple or height % multiple:
            raise ValueError(f"preview size {width}x{height} must be a multiple of {multiple}")
        pipe = self._pipeline(self._scheduler())
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        guidance = self.default_guidance if guidance is None else float(guidance)
        return sdb.run_pipeline(
            self.plain_modules(), self.device,
            lambda output_type: self._call(pipe, texts, gens, steps=steps, guidance=guidance, width=width,
                                           height=height, negative_prompt=negative_prompt, output_type=output_type),
            lambda latents: self._decode(pipe, self._latents_for_vae(latents, width, height)))

    def _decode(self, pipe: Any, latents: torch.Tensor) -> list[Any]:
        config = self.vae.config
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
        image = self.vae.decode(latents.to(self.device, _first_dtype(self.vae))).sample.float()
        return list(pipe.image_processor.postprocess(image, output_type="pil"))

    # --- the original layout, kohya names --------------------------------------------------------
    def original_layers(self) -> list[layout.Layer]:
        if self._layers is None:
            shapes = {k: tuple(v.shape) for k, v in _base_state(self.transformer).items()}
            self._layers = layout.layers_of(self.layout_kind, shapes)
        return self._layers

    def kohya_unet_names(self, paths: list[str]) -> dict[str, str]:
        from transferstudio.core.errors import ExportError

        try:
            return layout.kohya_names(paths, self.original_layers())
        except KeyError as exc:
            raise ExportError(f"The transformer layer {exc.args[0]} has no place in the original layout.",
                              "Export in the diffusers format instead.") from None

    def kohya_fused_layers(self, paths: list[str]) -> dict[str, dict]:
        return layout.fused_layers(paths, self.original_layers())

    def base_row_norms(self, path: str) -> torch.Tensor:
        module = self.transformer.get_submodule(path)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        weight = base.weight.detach().float().cpu()
        return weight.reshape(weight.shape[0], -1).norm(dim=1)

    def export_spec(self) -> ExportSpec:
        raise NotImplementedError

    # --- saving ------------------------------------------------------------------------------------
    def _pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def save_full(self, folder: Path) -> None:
        """The whole model as a diffusers folder (safetensors), with its original scheduler."""
        for module in (self.transformer, *self._all_encoders()):
            if _has_adapter(module):
                raise ValueError("save_full is for plain weights; this model carries an adapter (bake it first)")
        self._pipeline(self._scheduler()).save_pretrained(Path(folder), safe_serialization=True)

    def save_lora(self, file: Path, states: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict],
                  metadata: dict[str, str]) -> None:
        """One `.safetensors` that the pipeline's `load_lora_weights(file)` reads, written atomically:
        `transformer.*` and `text_encoder*.*` peft keys with the adapters' configs as
        `lora_adapter_metadata` (so diffusers scales by alpha / rank as in training)."""
        file = Path(file)
        config = configs.get("unet", {})
        kwargs: dict[str, Any] = {}
        alpha_cfg = config.get("alpha", config.get("lora_alpha"))
        patterns = {k: dict(config[k]) for k in ("rank_pattern", "alpha_pattern") if config.get(k)}
        denoiser = states.get("unet") or {}
        if denoiser:
            targets = config.get("targets") or config.get("target_modules") or self.lora_targets()
            kind = sdb.adapter_kind(denoiser)
            kwargs["transformer_lora_layers"] = sdb._clean_keys(denoiser)
            if kind != "lora":
                kwargs["transformer_lora_adapter_metadata"] = sdb._lycoris_metadata(kind, config, targets,
                                                                                    patterns=True)
            else:
                rank = sdb._checked_rank(denoiser, config.get("rank", config.get("r")), "transformer",
                                         patterned=bool(patterns))
                kwargs["transformer_lora_adapter_metadata"] = sdb._adapter_metadata(
                    rank, float(alpha_cfg if alpha_cfg is not None else rank), targets,
                    dora=sdb._is_dora(denoiser), patterns=patterns)
        for name in self.text_encoder_names:
            state = states.get(name)
            if not state:
                continue
            te_config = configs.get(name, config)
            te_alpha = te_config.get("alpha", te_config.get("lora_alpha"))
            te_targets = te_config.get("targets") or te_config.get("target_modules") or \
                self.text_encoder_lora_targets()
            kwargs[f"{name}_lora_layers"] = sdb._text_encoder_keys(state)
            kind = sdb.adapter_kind(state)
            if kind != "lora":
                kwargs[f"{name}_lora_adapter_metadata"] = sdb._lycoris_metadata(kind, te_config, te_targets,
                                                                                patterns=False)
                continue
            rank = sdb._checked_rank(state, te_config.get("rank", te_config.get("r")), name)
            kwargs[f"{name}_lora_adapter_metadata"] = sdb._adapter_metadata(
                rank, float(te_alpha if te_alpha is not None else rank), te_targets, dora=sdb._is_dora(state))
        if not any(k.endswith("_lora_layers") for k in kwargs):
            raise ValueError("no adapter weights to save")
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = f".{file.name}.{os.getpid()}.tmp"
        try:
            self._pipeline_class().save_lora_weights(file.parent, weight_name=tmp_name, safe_serialization=True,
                                                     **kwargs)
            with open(file.parent / tmp_name, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(file.parent / tmp_name, file)
        finally:
            (file.parent / tmp_name).unlink(missing_ok=True)


def _base_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict without adapter weights, base layers under their plain names."""
    out = {}
    for key, value in module.state_dict().items():
        if any(m in key for m in ("lora_", "hada_", "lokr_")):
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out

