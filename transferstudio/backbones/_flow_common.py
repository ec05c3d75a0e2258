"""What Stable Diffusion 3 (sd3.py) and FLUX.1 (flux.py) share: a diffusers pipeline folder (or a
single transformer file, sdfiles/flow_file.py) with a transformer, a VAE with a shift, CLIP and T5
text encoders and a flow-matching scheduler; every weight checked to be in the files; the
flow-matching objective (flow.py); LoRA on the transformer (and the CLIP encoders); previews with
the family's own pipeline; diffusers and kohya LoRA exports named through mmdit_layout.

Conventions (as in _sd_common): `encode_conditioning` sizes are (height, width); `sample(size=...)`
takes (width, height); previews use one CPU `torch.Generator().manual_seed(seed)` per picture with
the folder's own FlowMatchEulerDiscreteScheduler, so a plain diffusers script gives the same picture.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from transferstudio.backbones import batch_draws as draws
from transferstudio.backbones import _sd_common as sdc
from transferstudio.backbones import mmdit_layout as layout
from transferstudio.backbones.base import Capabilities, DomainScale, ExportSpec, Family, Inspection, folder_size
from transferstudio.backbones.diffusers_folder import component_problems, read_json
from transferstudio.backbones.diffusion import DiffusionBackbone
from transferstudio.backbones.flow import FlowObjective, FlowSchedule
from transferstudio.backbones.sdfiles.detect import FLOW_VARIANTS
from transferstudio.core.errors import BackboneError

PIPELINE_MULTIPLE = 8  # bucket sides stay multiples of 8 as for the other latent families
# The domain check reads the velocity error at 4 fixed noise levels; not calibrated on a released
# model (none can be downloaded here): the SD families' limits, as a start.
DOMAIN = DomainScale(measure="how well it takes noise off the pictures (latent flow-matching error at 4 fixed "
                     "noise levels)", close=1.3, related=2.5)
LAYER_CHOICES = ("attention", "attention+ff", "all-linear", "all+conv")


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    return 2 ** max(0, len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)


def _first_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _has_adapter(module: nn.Module) -> bool:
    return any(m in name for name, _ in module.named_parameters() for m in ("lora_", "hada_", "lokr_"))


class FlowFamily(Family):
    """A flow-matching pipeline family (SD3, FLUX): a diffusers folder, or a single transformer
    file with its VAE and text encoders inside or beside it (sdfiles/flow_file.py)."""

    key = ""
    what = ""  # "Stable Diffusion 3"
    pick_hint = ""
    pipelines: tuple[str, ...] = ()
    transformer_class = ""
    components: dict[str, bool] = {}  # folder -> has weights
    optional: tuple[str, ...] = ()  # components model_index.json may leave out ([null, null])
    lora_text_encoders = 1  # CLIP encoders that may take LoRA

    # --- what a folder holds (configs only) -------------------------------------------------
    def describe(self, path: Path, index: dict[str, Any], configs: dict[str, dict[str, Any]]
                 ) -> tuple[str, str, list[tuple[str, str]], list[str]]:
        """(label, variant, details, problems) of a folder of this family from its configs."""
        raise NotImplementedError

    def native_resolution(self, configs: dict[str, dict[str, Any]]) -> int | None:
        raise NotImplementedError

    def resolution_multiple(self, configs: dict[str, dict[str, Any]]) -> int:
        raise NotImplementedError

    def suggested(self, variant: str) -> tuple[tuple[str, Any], ...]:
        return (("timestep_sampling", "logit-normal"),)

    def folder_advice(self, problems: list[str]) -> str:
        """Advice for a folder's problems when there is better than "re-download it"."""
        return ""

    def _configs(self, path: Path) -> dict[str, dict[str, Any]]:
        return {"transformer": read_json(path / "transformer" / "config.json") or {},
                "vae": read_json(path / "vae" / "config.json") or {},
                "scheduler": read_json(path / "scheduler" / "scheduler_config.json") or {}}

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if path.is_file():
            return self.inspect_file(path)
        index = read_json(path / "model_index.json")
        if index is None or index.get("_class_name") not in self.pipelines:
            return None
        wanted = {name: weights for name, weights in self.components.items()
                  if not (name in self.optional and _left_out(index, name))}
        problems = component_problems(path, wanted)
        configs = self._configs(path)
        cls = configs["transformer"].get("_class_name")
        if configs["transformer"] and cls not in (None, self.transformer_class):
            problems.append(f"its transformer is a {cls}, not a {self.transformer_class}")
        label, variant, details, more = self.describe(path, index, configs)
        problems += more
        resolution = self.native_resolution(configs) if configs["transformer"] and configs["vae"] else None
        found = Inspection(path=path, family=self.key if not problems else None, label=label,
                           usable=not problems, problems=tuple(problems), native_resolution=resolution,
                           prediction_type="flow", size_bytes=folder_size(path),
                           details=(("layout", "diffusers folder"), *details), variant=variant,
                           advice="" if not problems else (self.folder_advice(problems)
                                                           or "Complete or re-download the model folder."))
        return found

    def inspect_file(self, path: Path) -> Inspection | None:
        """A single file of this family (its transformer, with the VAE and text encoders inside or
        as files beside it / in ComfyUI's folders); None when it is not one of ours."""
        from transferstudio.backbones.sdfiles import flow_file

        if path.suffix.lower() not in flow_file.SUFFIXES:
            return None
        try:
            found, parts = flow_file.inspect_parts(path, self.key)
        except BackboneError:
            return None  # unreadable files are the SD family's to explain
        if found.family != self.key:
            return None
        problems = [*found.problems, *(parts.problems if parts else [])]
        advice = " ".join(x for x in (found.advice, *(parts.advice if parts else [])) if x)
        details: list[tuple[str, str]] = [("layout", "single file (transformer)"),
                                          *flow_file.describe_parts(parts)]
        if found.dtype:
            details.append(("precision", found.dtype))
        configs = self._configs(flow_file.loading_folder(str(found.config_key)))
        resolution = self.native_resolution(configs) if configs["transformer"] and configs["vae"] else None
        return Inspection(path=path, family=self.key if not problems else None,
                          label=found.label + (f" ({resolution} px)" if resolution else ""), usable=not problems,
                          problems=tuple(problems), native_resolution=resolution or found.native_resolution,
                          prediction_type="flow", size_bytes=flow_file.sizes(parts, path), details=tuple(details),
                          variant=found.config_key, advice=advice)

    def capabilities(self, found: Inspection) -> Capabilities:
        from transferstudio.backbones.sdfiles.flow_file import loading_folder

        path = Path(found.path)
        configs = self._configs(path) if path.is_dir() else self._configs(loading_folder(str(found.variant)))
        multiple = self.resolution_multiple(configs) if configs.get("transformer") and configs.get("vae") else 16
        return self._caps(found.native_resolution or 1024, multiple, found.label, found.variant or "")

    def typical_capabilities(self) -> Capabilities:
        return self._caps(1024, 16, self.what, "")

    def _caps(self, resolution: int, multiple: int, label: str, variant: str) -> Capabilities:
        return Capabilities(conditioning="text", native_resolution=resolution, resolution_multiple=multiple,
                            supports_full_finetune=False, text_encoders=self.lora_text_encoders,
                            prediction_type="flow", latent=True, methods=("lora",), kohya_lora=True,
                            single_file=False, label=label, domain=DOMAIN, suggested=self.suggested(variant))

    def kohya_text_prefixes(self) -> dict[str, str]:
        return dict(self.backbone_class().kohya_text_prefixes)

    def kohya_unet_names(self, paths: list[str], unet_config: Any) -> dict[str, str]:
        raise NotImplementedError(f"{self.key}: kohya names need the loaded model (its layer sizes)")

    # --- loading ---------------------------------------------------------------------------
    def backbone_class(self) -> type["FlowBackbone"]:
        raise NotImplementedError

    def load(self, path: Path, *, prediction_type: str = "") -> "FlowBackbone":
        path = Path(path)
        if prediction_type and prediction_type != "flow":
            raise BackboneError(f"{self.what} models learn by flow matching; they cannot be loaded as "
                                f"{prediction_type} models.", "Leave the prediction type unset for this model.")
        found = self.inspect(path)
        if found is None:
            raise BackboneError(f"{path} is not a {self.what} model.", self.pick_hint)
        if not found.usable:
            raise BackboneError(f"{path} cannot be used: {'; '.join(found.problems)}.",
                                found.advice or "Complete or re-download the model.")
        if path.is_file():
            return self.load_file(path)
        return self.backbone_class().from_folder(path)

    def skeleton(self, path: Path) -> "FlowBackbone":
        """The model built from its configs alone (a folder's own; a single file's loading files),
        weights wherever the caller's `torch.device(...)` puts them (the memory plan: meta);
        tokenizers are read for real (small files), so conditioning runs as in training."""
        import diffusers
        import transformers

        path = Path(path)
        folder, variant = path, ""
        where: dict[str, Path] = {}  # tokenizer -> its folder, where not in `folder` (a single file's T5)
        if path.is_file():
            from transferstudio.backbones.sdfiles import flow_file

            found, parts = flow_file.inspect_parts(path, self.key)
            if found.family != self.key or not found.config_key:
                raise BackboneError(f"{path.name} is not a {self.what} file.", self.pick_hint)
            variant = str(found.config_key)
            folder = flow_file.loading_folder(variant)
            where = flow_file.tokenizer_folders(found, parts)
        index = read_json(folder / "model_index.json") or {}

        def build(name: str) -> Any:
            if _left_out(index, name):
                return None
            library, cls_name = index[name][0], index[name][1]
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                return cls.from_config(cls.load_config(folder / name))
            cls = getattr(transformers, cls_name)
            return cls(transformers.AutoConfig.from_pretrained(folder / name, local_files_only=True))

        def tokenizer(name: str) -> Any:
            if _left_out(index, name):
                return None
            cls = getattr(transformers, index[name][1])
            with torch.device("cpu"):
                return sdc.load_component(cls, where.get(name, folder / name), name.replace("_", " "))

        encoders = {n: build(n) for n in index if n.startswith("text_encoder")}
        tokenizers = {n: tokenizer(n) for n in index if n.startswith("tokenizer")}
        transformer = build("transformer")
        cls = self.backbone_class()
        variant = variant or cls.variant_of(dict(transformer.config))
        return cls(transformer=transformer, vae=build("vae"), encoders=encoders, tokenizers=tokenizers,
                   scheduler_config=sdc.scheduler_config(folder), source=path, pipeline_config=index,
                   label=FLOW_VARIANTS.get(variant, self.what), variant=variant)

    def load_file(self, path: Path) -> "FlowBackbone":
        from transferstudio.backbones.sdfiles.flow_file import load_parts

        parts = load_parts(path)
        return self.backbone_class()(
            transformer=parts["transformer"], vae=parts["vae"], encoders=parts["encoders"],
            tokenizers=parts["tokenizers"], scheduler_config=parts["scheduler_config"], source=path,
            pipeline_config=parts["pipeline_config"], label=parts["label"], variant=parts["variant"])


def _left_out(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return entry is None or (isinstance(entry, list) and (not entry or entry[0] is None))


def load_model(cls: Any, sub: Path, what: str) -> nn.Module:
    return sdc.load_diffusers_model(cls, sub, what)  # refuses a folder that lacks weights


def load_encoder(cls: Any, sub: Path, what: str) -> nn.Module:
    return sdc.load_text_encoder(cls, sub, what)  # refuses a folder that lacks weights


def load_t5(sub: Path, what: str) -> nn.Module:
    from transformers import T5EncoderModel

    return load_encoder(T5EncoderModel, sub, what)


def load_t5_tokenizer(sub: Path, what: str) -> Any:
    from transformers import T5TokenizerFast

    return sdc.load_component(T5TokenizerFast, sub, what)


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
            sdc.cast_frozen(self.transformer, dtype)
        vae_dtype = torch.float32 if dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False) \
            else dtype
        self.vae.to(self.device, vae_dtype)
        for te in self._all_encoders():
            te.to(self.device, torch.float32 if _trainable(te) else dtype)
        return self

    def plain_modules(self) -> list[nn.Module]:
        return [self.transformer, self.vae, *self._all_encoders()]

    # --- training ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, *, sample: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> (latents − shift) · scale (fp32), as the pipelines undo it."""
        dist = self.vae.encode(pixels.to(self.device, _first_dtype(self.vae))).latent_dist
        # the posterior's sample drawn as diffusers draws it (randn of the mean's shape and dtype),
        # per picture of the global batch in a data-parallel run
        latents = dist.mean + dist.std * draws.randn(dist.mean.shape, generator=generator, device=dist.mean.device,
                                                     dtype=dist.mean.dtype) if sample else dist.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return (latents * self.vae.config.scaling_factor).float()

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
        texts = sdc.paired_prompts(seeds, prompts)
        width, height = size or (self.caps.native_resolution, self.caps.native_resolution)
        multiple = self.latent_multiple()
        if width % multiple or height % multiple:
            raise ValueError(f"preview size {width}x{height} must be a multiple of {multiple}")
        pipe = self._pipeline(self._scheduler())
        pipe.set_progress_bar_config(disable=True)
        modules = self.plain_modules()
        modes = [m.training for m in modules]
        low = [d for d in (_first_dtype(m) for m in modules) if d != torch.float32]
        autocast = torch.autocast(self.device.type, dtype=low[0]) if low else nullcontext()
        for m in modules:
            m.eval()
        try:
            with torch.no_grad():
                gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
                with autocast:
                    out = self._call(pipe, texts, gens, steps=steps,
                                     guidance=self.default_guidance if guidance is None else float(guidance),
                                     width=width, height=height, negative_prompt=negative_prompt,
                                     output_type="latent" if low else "pil")
                if low:
                    return self._decode(pipe, self._latents_for_vae(out.images, width, height))
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        return list(out.images)

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
            kind = sdc.adapter_kind(denoiser)
            kwargs["transformer_lora_layers"] = sdc._clean_keys(denoiser)
            if kind != "lora":
                kwargs["transformer_lora_adapter_metadata"] = sdc._lycoris_metadata(kind, config, targets,
                                                                                    patterns=True)
            else:
                rank = sdc._checked_rank(denoiser, config.get("rank", config.get("r")), "transformer",
                                         patterned=bool(patterns))
                kwargs["transformer_lora_adapter_metadata"] = sdc._adapter_metadata(
                    rank, float(alpha_cfg if alpha_cfg is not None else rank), targets,
                    dora=sdc._is_dora(denoiser), patterns=patterns)
        for name in self.text_encoder_names:
            state = states.get(name)
            if not state:
                continue
            te_config = configs.get(name, config)
            te_alpha = te_config.get("alpha", te_config.get("lora_alpha"))
            te_targets = te_config.get("targets") or te_config.get("target_modules") or \
                self.text_encoder_lora_targets()
            kwargs[f"{name}_lora_layers"] = sdc._text_encoder_keys(state)
            kind = sdc.adapter_kind(state)
            if kind != "lora":
                kwargs[f"{name}_lora_adapter_metadata"] = sdc._lycoris_metadata(kind, te_config, te_targets,
                                                                                patterns=False)
                continue
            rank = sdc._checked_rank(state, te_config.get("rank", te_config.get("r")), name)
            kwargs[f"{name}_lora_adapter_metadata"] = sdc._adapter_metadata(
                rank, float(te_alpha if te_alpha is not None else rank), te_targets, dora=sdc._is_dora(state))
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

