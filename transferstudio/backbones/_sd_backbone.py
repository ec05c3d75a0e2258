"""The backbone Stable Diffusion 1.x/2.x (sd_backbone.py) and SDXL (sdxl_backbone.py) share:
latent encoding, the denoiser call, device moves, preview sampling and LoRA export (the
conventions are _sd_common.py's). What an SD path is, from its configs, is _sd_common.py."""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones import batch_draws as draws
from transferstudio.backbones._sd_common import (DOMAIN, FULL_FINETUNE_MAX_PARAMS, LAYER_EXTRAS, PIPELINE_MULTIPLE,
                                                 SPATIAL_CONVS, diffusers_kohya_names, export_spec, native_resolution,
                                                 resolution_multiple)
from transferstudio.backbones.base import Capabilities, Conditioning, ExportSpec
from transferstudio.backbones.diffusion import DiffusionBackbone
from transferstudio.core.errors import BackboneError


def paired_prompts(seeds: Sequence[int], prompts: Sequence[str] | None) -> list[str]:
    """One prompt per seed: the prompts as given, one prompt for all, or "" without prompts."""
    texts = list(prompts) if prompts is not None else [""]
    if len(texts) == 1:
        texts = texts * len(seeds)
    if len(texts) != len(seeds):
        raise ValueError(f"{len(texts)} prompts for {len(seeds)} seeds; give one prompt or one per seed")
    return texts


def cast_frozen(module: nn.Module, dtype: torch.dtype, *, once_training: bool = False) -> None:
    """Put the weights of `module` that do not train into `dtype` (trained ones keep fp32).
    `once_training`: only when some of its weights train, i.e. after the run set up what trains
    (before that, e.g. while class pictures are made, every weight looks frozen, and a full
    fine-tune would then train weights rounded to half precision)."""
    if dtype == torch.float32:
        return
    if once_training and not any(p.requires_grad for p in module.parameters()):
        return
    for param in module.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


_STORAGE_ONLY = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


def run_pipeline(modules: Sequence[nn.Module], device: torch.device, call: Any, decode: Any) -> list[Any]:
    """A family's pipeline run for previews: `modules` in eval mode (put back after), no gradients,
    under autocast in their half format when some are in one — then `call("latent")` and the
    latents decoded by `decode` outside autocast, in the VAE's own dtype (a force_upcast VAE, SDXL's,
    stays fp32: no black pictures) — else `call("pil")`. PIL pictures."""
    modes = [m.training for m in modules]
    low = [d for d in (_first_dtype(m) for m in modules) if d != torch.float32]
    autocast = torch.autocast(device.type, dtype=low[0]) if low else nullcontext()
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            with autocast:
                out = call("latent" if low else "pil")
            if low:
                return decode(out.images)
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return list(out.images)


def _first_dtype(module: nn.Module) -> torch.dtype:
    """The number format a module computes in: its first weight's, passing over weights kept in
    fp8 for storage only (fp8 base weights are computed in bf16/fp16, layer by layer)."""
    for p in module.parameters():
        if p.dtype not in _STORAGE_ONLY:
            return p.dtype
    return torch.float32


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _adapter_metadata(rank: int, alpha: float, targets: Sequence[str], *, dora: bool = False,
                      patterns: dict[str, Any] | None = None) -> dict[str, Any]:
    """The LoraConfig kwargs diffusers' `load_lora_weights` rebuilds the adapter from. Kept to
    the fields every peft version knows, so alpha != rank survives and older peft still loads it;
    `use_dora` only when it is one (diffusers takes these kwargs as they are, so without it a DoRA
    file would load as plain LoRA and drop the magnitudes)."""
    meta = {"r": int(rank), "lora_alpha": float(alpha), "target_modules": sorted(set(targets)),
            "lora_dropout": 0.0, "bias": "none"}
    if dora:
        meta["use_dora"] = True
    meta.update(patterns or {})  # rank_pattern / alpha_pattern: the conv layers' own rank and alpha
    return meta


# LyCORIS kinds (peft LoHaConfig / LoKrConfig): the config fields a loader needs to rebuild the
# adapter exactly (diffusers' unet.load_lora_adapter builds a LoKrConfig from them as they are).
_LYCORIS_FIELDS = ("rank_pattern", "alpha_pattern", "use_effective_conv2d", "decompose_both", "decompose_factor")


def adapter_kind(state: dict[str, torch.Tensor]) -> str:
    """"lora", "loha" or "lokr", from peft's weight names."""
    if any(".hada_" in k for k in state):
        return "loha"
    if any(".lokr_" in k for k in state):
        return "lokr"
    return "lora"


def _lycoris_metadata(kind: str, config: dict[str, Any], targets: Sequence[str], *, patterns: bool) -> dict[str, Any]:
    rank = config.get("rank", config.get("r"))
    if not rank:
        raise ValueError(f"the {kind} adapter's config gives no rank")
    alpha = config.get("alpha", config.get("lora_alpha"))
    meta = {"peft_type": kind.upper(), "r": int(rank), "alpha": float(alpha if alpha is not None else rank),
            "target_modules": sorted(set(targets)), "rank_dropout": 0.0, "module_dropout": 0.0}
    meta.update({k: config[k] for k in _LYCORIS_FIELDS if k in config and (patterns or "pattern" not in k)})
    return meta


def _is_dora(state: dict[str, torch.Tensor]) -> bool:
    return any("lora_magnitude_vector" in k for k in state)


def _rank_of(state: dict[str, torch.Tensor]) -> int:
    ranks = {int(v.shape[0]) for k, v in state.items() if "lora_A" in k and v.ndim >= 2}
    if len(ranks) != 1:
        raise ValueError(f"expected one LoRA rank in the adapter weights, found {sorted(ranks) or 'none'}")
    return ranks.pop()


def _checked_rank(state: dict[str, torch.Tensor], said: Any, what: str, *, patterned: bool = False) -> int:
    if patterned and said:  # per-layer ranks (rank_pattern): the config's rank is the main one
        return int(said)
    rank = _rank_of(state)
    if said and int(said) != rank:
        raise ValueError(f"the config says rank {said} but the {what} adapter weights have rank {rank}")
    return rank


def _clean_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        k = k.removeprefix("base_model.model.")
        out[k] = v.detach().to("cpu").contiguous()
    return out


def _text_encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write text-encoder keys as `text_model.encoder…`: the classic diffusers layout that older
    loaders and converters expect; diffusers 0.42 strips it again for flattened CLIPTextModels."""
    out = {}
    for k, v in _clean_keys(state).items():
        if not k.startswith(("text_model.", "text_projection")):
            k = "text_model." + k
        out[k] = v
    return out


class StableDiffusionBase(DiffusionBackbone):
    """UNet2DConditionModel + AutoencoderKL + CLIP text encoders. Subclasses add the text encoding
    and the pipeline class."""

    pipeline_class_name = ""
    text_encoder_names: tuple[str, ...] = ("text_encoder",)

    def __init__(self, *, unet: nn.Module, vae: nn.Module, text_encoders: Sequence[nn.Module],
                 tokenizers: Sequence[Any], scheduler_config: dict[str, Any], source: Path,
                 pipeline_config: dict[str, Any] | None = None, prediction_type: str = "") -> None:
        self.unet = unet.float().eval()
        self.vae = vae.float().eval()
        self._text_encoders = [te.float().eval() for te in text_encoders]
        self.tokenizers = list(tokenizers)
        for module in (self.unet, self.vae, *self._text_encoders):
            module.requires_grad_(False)
        self.scheduler_config = dict(scheduler_config)
        if prediction_type:
            self.scheduler_config["prediction_type"] = prediction_type
        self.scheduler_config.setdefault("prediction_type", "epsilon")
        self.pipeline_config = dict(pipeline_config or {})
        self.source = Path(source)
        self.device = torch.device("cpu")
        unet_cfg, vae_cfg = dict(self.unet.config), dict(self.vae.config)
        full = sum(p.numel() for p in self.unet.parameters()) <= FULL_FINETUNE_MAX_PARAMS
        self.caps = Capabilities(
            conditioning="text",
            native_resolution=native_resolution(unet_cfg, vae_cfg) or 512,
            resolution_multiple=resolution_multiple(unet_cfg, vae_cfg),
            supports_full_finetune=full,
            text_encoders=len(self._text_encoders),
            prediction_type=str(self.scheduler_config["prediction_type"]),
            latent=True, methods=("lora", "full") if full else ("lora",), kohya_lora=True, single_file=True,
            domain=DOMAIN)

    # --- modules ---------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        return self.unet

    def text_encoders(self) -> list[nn.Module]:
        return list(self._text_encoders)

    def lora_targets(self) -> list[str]:
        # The attention projections: what diffusers' LoRA scripts train and what every
        # kohya/A1111/ComfyUI loader maps.
        return ["to_q", "to_k", "to_v", "to_out.0"]

    def text_encoder_lora_targets(self) -> list[str]:
        return ["q_proj", "k_proj", "v_proj", "out_proj"]

    def adapter_targets(self, layers: str) -> tuple[list[str], list[str]]:
        """Layer presets as UNet module names (peft matches them as name suffixes). "all+conv" is
        what kohya's LoCon and LyCORIS adapt: the attention blocks' linear layers and 1x1
        projections, and the ResNet blocks (3x3 convolutions, 1x1 shortcuts, time projections)
        with the down/upsamplers; only the 3x3 convolutions take the conv rank/alpha (1x1 ones
        are linear layers in disguise, as kohya treats them)."""
        if layers not in LAYER_EXTRAS:
            raise BackboneError(f"Unknown layer choice '{layers}'.",
                                f"Use one of {', '.join(LAYER_EXTRAS)}.")
        targets = list(self.lora_targets()) + [t for t in LAYER_EXTRAS[layers] if t not in self.lora_targets()]
        return targets, [t for t in targets if t in SPATIAL_CONVS]

    def to(self, device: torch.device, dtype: torch.dtype) -> "StableDiffusionBase":
        """The UNet's trained weights (an adapter, or all of them in full fine-tuning) stay fp32;
        its frozen weights take `dtype`, as kohya's trainers keep them (autocast computes in that
        format anyway: SDXL LoRA then needs ~5 GB less, SD 1.5 ~1.6 GB). The VAE and frozen text
        encoders take `dtype`, except a VAE flagged `force_upcast` (SDXL's overflows in fp16) and
        text encoders with trainable (LoRA) weights, which stay fp32 — so add adapters before
        calling this."""
        self.device = torch.device(device)
        self.unet.to(self.device)
        cast_frozen(self.unet, dtype, once_training=True)
        vae_dtype = dtype
        if dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            vae_dtype = torch.float32
        self.vae.to(self.device, vae_dtype)
        for te in self._text_encoders:
            te.to(self.device, torch.float32 if _trainable(te) else dtype)
        return self

    # --- training --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, *, sample: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents (fp32). `sample=False` takes the distribution's mean."""
        mean, std = self.latent_distribution(pixels)
        return self.sample_latents(mean, std, generator=generator) if sample else mean

    @torch.no_grad()
    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, _first_dtype(self.vae))).latent_dist
        scale = float(self.vae.config.scaling_factor)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (dist.mean.float() - shift) * scale, dist.std.float() * scale

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw from the latent distribution; the noise comes in the VAE's dtype from the
        generator (the global one when None), as the VAE's own sampling draws it, so cached and
        freshly encoded pictures give the same latents."""
        noise = draws.randn(mean.shape, generator=generator, device=mean.device, dtype=_first_dtype(self.vae))
        return mean + std * noise.float()

    def encoder_fingerprint(self) -> str:
        """What decides the encodings: the VAE encoder's config, dtype and weights (hashed)."""
        import hashlib
        import json

        digest = hashlib.blake2b(digest_size=10)
        digest.update(json.dumps(dict(self.vae.config), sort_keys=True, default=str).encode())
        digest.update(str(_first_dtype(self.vae)).encode())
        for module in (self.vae.encoder, getattr(self.vae, "quant_conv", None)):
            for tensor in (module.state_dict().values() if module is not None else ()):
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def encode_conditioning(self, captions: Sequence[str], *, original_sizes: Sequence[tuple[int, int]] = (),
                            crop_top_left: Sequence[tuple[int, int]] = (), target_size: tuple[int, int] = (0, 0),
                            train_text_encoder: bool = False) -> Conditioning:
        return self.conditioning_from(self.text_features(captions, train_text_encoder=train_text_encoder),
                                      original_sizes=original_sizes, crop_top_left=crop_top_left,
                                      target_size=target_size)

    def _token_ids(self, tokenizer: Any, text_encoder: nn.Module, captions: Sequence[str]) -> Any:
        # A tokenizer without a config may report a huge model_max_length; the position table decides.
        max_length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
        return tokenizer(list(captions), padding="max_length", max_length=max_length, truncation=True,
                         return_tensors="pt")

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.unet(noisy, timesteps, **cond.kwargs).sample

    # --- sampling --------------------------------------------------------------------------
    def _pipeline(self, scheduler: Any) -> Any:
        raise NotImplementedError

    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None,
               negative_prompt: str = "") -> list[Any]:
        """PIL images, one per seed. Equivalent user script (all modules fp32):

            pipe = StableDiffusion[XL]Pipeline.from_pretrained(folder)   # + pipe.load_lora_weights(file)
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
            pipe(prompts, negative_prompt=None, num_inference_steps=steps, guidance_scale=guidance,
                 width=w, height=h, eta=0.0, generator=[torch.Generator().manual_seed(s) for s in seeds])

        Seeds drive only the starting noise (one CPU generator per image), so an image does not
        depend on its batch. With fp16/bf16 frozen parts the run happens under autocast.
        """
        from diffusers import DDIMScheduler

        seeds = [int(s) for s in seeds]
        if not seeds:
            return []
        texts = paired_prompts(seeds, prompts)
        width, height = size or (self.caps.native_resolution, self.caps.native_resolution)
        if width % PIPELINE_MULTIPLE or height % PIPELINE_MULTIPLE:
            raise ValueError(f"preview size {width}x{height} must be a multiple of {PIPELINE_MULTIPLE}")

        # clip_sample off: clipping "x0" to [-1, 1] is for pixel models and ruins latents (the SD
        # pipeline forces it off anyway, the SDXL one does not).
        pipe = self._pipeline(DDIMScheduler.from_config(self.scheduler_config, clip_sample=False))
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return run_pipeline(
            [self.unet, self.vae, *self._text_encoders], self.device,
            lambda output_type: pipe(texts, negative_prompt=[negative_prompt] * len(texts) if negative_prompt else None,
                                     num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                                     eta=0.0, generator=gens, output_type=output_type),
            lambda latents: self._decode_to_pictures(pipe, latents))

    def _decode_to_pictures(self, pipe: Any, latents: torch.Tensor) -> list[Any]:
        """Scaled latents -> PIL pictures, as the pipelines' own last step, in the VAE's dtype."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            latents = latents * torch.tensor(std).view(shape).to(latents) / config.scaling_factor \
                + torch.tensor(mean).view(shape).to(latents)
        else:
            latents = latents / config.scaling_factor
        image = self.vae.decode(latents.to(self.device, _first_dtype(self.vae))).sample.float()
        return list(pipe.image_processor.postprocess(image, output_type="pil"))

    # --- saving ----------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """The original-layout key of this model's single-file checkpoints (sd1/sd2/sd2-v/sdxl)."""
        raise NotImplementedError

    def export_spec(self) -> ExportSpec:
        return export_spec(self.variant, len(self._text_encoders))

    def plain_modules(self) -> list[nn.Module]:
        return [self.unet, self.vae, *self._text_encoders]

    def kohya_unet_names(self, paths: list[str]) -> dict[str, str]:
        return diffusers_kohya_names(paths)

    def replace_part(self, other: Any) -> None:
        """Put another model's trained part in place of this one's (a fine-tuned VAE): its weights
        must fit this model's VAE exactly (load_state_dict is strict)."""
        part = getattr(other, "vae", None)
        if part is None:
            raise ValueError("it has no VAE to put in")
        self.vae.load_state_dict(part.state_dict())

    def save_single_file(self, file: Path, *, dtype: torch.dtype | None = None,
                         metadata: dict[str, str] | None = None) -> None:
        """One original-layout checkpoint (A1111/ComfyUI/Forge, diffusers' `from_single_file`),
        written by the model library's writer, the inverse of its loader."""
        from transferstudio.backbones.sdfiles.original_layout import save_single_file

        encoders = self._text_encoders
        save_single_file(file, self.unet, self.vae, encoders[0], encoders[1] if len(encoders) > 1 else None,
                         family=self.variant, dtype=dtype, metadata=metadata)

    def save_lora(self, file: Path, states: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict],
                  metadata: dict[str, str]) -> None:
        """The layout diffusers' `load_lora_weights` reads (metadata is added by the export)."""
        texts = [states[role] for role in self.text_encoder_names if role in states]
        self.save_lora_diffusers(Path(file), states["unet"], texts, configs["unet"])

    def _pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def _scheduler_for_saving(self) -> Any:
        import diffusers

        cls = getattr(diffusers, str(self.scheduler_config.get("_class_name", "")), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            cls = diffusers.DDPMScheduler
        return cls.from_config(self.scheduler_config)

    def save_full(self, folder: Path) -> None:
        """The whole model as a diffusers folder (safetensors), with its original scheduler."""
        for module in (self.unet, *self._text_encoders):
            if any(m in name for name, _ in module.named_parameters() for m in ("lora_", "hada_", "lokr_")):
                # peft layers would be saved under renamed keys and the folder would not load.
                raise ValueError("save_full is for full fine-tuning; this model carries a LoRA adapter "
                                 "(export it with save_lora_diffusers)")
        pipe = self._pipeline(self._scheduler_for_saving())
        pipe.save_pretrained(Path(folder), safe_serialization=True)

    def save_lora_diffusers(self, file: Path, denoiser_lora: dict[str, torch.Tensor],
                            text_encoder_loras: list[dict[str, torch.Tensor]], config: dict[str, Any]) -> None:
        """One `.safetensors` that `pipe.load_lora_weights(file)` reads, written atomically.

        `denoiser_lora` / `text_encoder_loras` are peft-format state dicts (`lora_state_dict`);
        empty ones are left out. `config` keys: `rank` (or `r`), `alpha` (or `lora_alpha`),
        optional `targets`/`target_modules` (default `lora_targets()`), and for the text encoders
        optional `text_encoder_rank`, `text_encoder_alpha`, `text_encoder_targets` (defaults: the
        denoiser's rank and alpha, `text_encoder_lora_targets()`). The adapter configs go into the
        file's `lora_adapter_metadata`, so diffusers scales by alpha/rank as in training.

        LoHa/LoKr weights (peft's `hada_*` / `lokr_*` keys) are written in the same layout with
        their peft config as metadata: diffusers' `unet.load_lora_adapter` reads LoKr from it;
        LoHa loads through peft (`load_lora_weights` refuses both, in diffusers 0.42)."""
        file = Path(file)
        if len(text_encoder_loras) > len(self.text_encoder_names):
            raise ValueError(f"{len(text_encoder_loras)} text-encoder adapters for a model with "
                             f"{len(self.text_encoder_names)} text encoder(s)")
        kwargs: dict[str, Any] = {}
        alpha_cfg = config.get("alpha", config.get("lora_alpha"))
        patterns = {k: dict(config[k]) for k in ("rank_pattern", "alpha_pattern") if config.get(k)}
        if denoiser_lora:
            targets = config.get("targets") or config.get("target_modules") or self.lora_targets()
            kind = adapter_kind(denoiser_lora)
            kwargs["unet_lora_layers"] = _clean_keys(denoiser_lora)
            if kind != "lora":  # LoHa / LoKr: their peft config, for peft (and diffusers' LoKr loader)
                kwargs["unet_lora_adapter_metadata"] = _lycoris_metadata(kind, config, targets, patterns=True)
            else:
                rank = _checked_rank(denoiser_lora, config.get("rank", config.get("r")), "UNet",
                                     patterned=bool(patterns))
                alpha = float(alpha_cfg if alpha_cfg is not None else rank)
                kwargs["unet_lora_adapter_metadata"] = _adapter_metadata(rank, alpha, targets,
                                                                         dora=_is_dora(denoiser_lora),
                                                                         patterns=patterns)
        for name, state in zip(self.text_encoder_names, text_encoder_loras):
            if not state:
                continue
            te_alpha = config.get("text_encoder_alpha", alpha_cfg)
            te_targets = config.get("text_encoder_targets") or self.text_encoder_lora_targets()
            kwargs[f"{name}_lora_layers"] = _text_encoder_keys(state)
            kind = adapter_kind(state)
            if kind != "lora":
                te_config = {"r": config.get("text_encoder_rank") or config.get("rank", config.get("r")),
                             "alpha": te_alpha, **{k: config[k] for k in _LYCORIS_FIELDS if k in config}}
                kwargs[f"{name}_lora_adapter_metadata"] = _lycoris_metadata(kind, te_config, te_targets,
                                                                            patterns=False)
                continue
            rank = _checked_rank(state, config.get("text_encoder_rank"), name)
            kwargs[f"{name}_lora_adapter_metadata"] = _adapter_metadata(
                rank, float(te_alpha if te_alpha is not None else rank), te_targets, dora=_is_dora(state))
        if not any(k.endswith("_lora_layers") for k in kwargs):
            raise ValueError("no adapter weights to save")

        file.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = f".{file.name}.{os.getpid()}.tmp"
        try:
            self._pipeline_class().save_lora_weights(file.parent, weight_name=tmp_name,
                                                     safe_serialization=True, **kwargs)
            with open(file.parent / tmp_name, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(file.parent / tmp_name, file)
        finally:
            (file.parent / tmp_name).unlink(missing_ok=True)
