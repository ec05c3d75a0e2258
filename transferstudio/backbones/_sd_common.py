"""What Stable Diffusion 1.x/2.x (sd.py) and SDXL (sdxl.py) share as families: folder reading,
sizes, capabilities, export knowledge, loading components and the glue to the model library for
single-file checkpoints. No torch at import (inspection reads configs only): the shared backbone
(latent encoding, the denoiser call, device moves, preview sampling, LoRA export) is _sd_backbone.py.

Conventions:
- `encode_conditioning` sizes are (height, width) and crops (top, left), as in diffusers.
- `sample(size=...)` takes (width, height), the order buckets and PIL use.
- Previews use `DDIMScheduler.from_config(<scheduler as diffusers loads it>.config, clip_sample=False)`,
  eta 0, one CPU `torch.Generator().manual_seed(seed)` per image and `negative_prompt=None` when it
  is empty; a plain diffusers script doing the same gives the same picture (see `sample`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from transferstudio.backbones.diffusers_folder import read_json
from transferstudio.backbones.spec import Capabilities, DomainScale, ExportSpec, Family, Inspection
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:
    from torch import nn

    from transferstudio.backbones._sd_backbone import StableDiffusionBase

# Full fine-tuning (Adam states, fp32 master weights) is offered only below this UNet size:
# SD 1.x/2.x (~0.87 B) fit a 24 GB card with 8-bit Adam, SDXL (~2.6 B) does not.
FULL_FINETUNE_MAX_PARAMS = 1_500_000_000
PIPELINE_MULTIPLE = 8  # diffusers' SD/SDXL pipelines refuse sizes not divisible by 8

PREDICTION_LABELS = {"epsilon": "epsilon", "v_prediction": "v-prediction", "sample": "x0-prediction"}

# Layer presets (TrainConfig.layers) beyond the attention projections (`lora_targets`), as
# diffusers UNet2DConditionModel module names; every one has a kohya name ComfyUI and A1111 map.
_FF = ("ff.net.0.proj", "ff.net.2")
_LINEAR = _FF + ("proj_in", "proj_out", "time_emb_proj")
SPATIAL_CONVS = ("conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv")  # 3x3: the conv rank
LAYER_EXTRAS: dict[str, tuple[str, ...]] = {
    "attention": (),
    "attention+ff": _FF,
    "all-linear": _LINEAR,
    "all+conv": _LINEAR + ("conv_shortcut",) + SPATIAL_CONVS,
}
KOHYA_TEXT_PREFIXES = {1: (("text_encoder", "lora_te_"),),
                       2: (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_"))}

# variant (the original-layout key of a single-file checkpoint) -> what exports write about it:
# (ss_base_model_version, modelspec architecture, A1111 "sd version")
VARIANTS = {
    "sd1": ("sd_v1", "stable-diffusion-v1", "SD1"),
    "sd2": ("sd_v2", "stable-diffusion-v2-512", "SD2"),
    "sd2-v": ("sd_v2_v", "stable-diffusion-v2-768-v", "SD2"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "SDXL"),
}


def export_spec(variant: str, text_encoders: int) -> ExportSpec:
    base_version, architecture, label = VARIANTS[variant]
    return ExportSpec(variant=variant, modelspec_architecture=architecture,
                      modelspec_prediction="v" if variant == "sd2-v" else "epsilon",
                      kohya_base_version=base_version, kohya_text_prefixes=KOHYA_TEXT_PREFIXES[text_encoders],
                      kohya_original_layout=variant == "sdxl", version_label=label,
                      v_parameterization=variant == "sd2-v", is_v2=variant.startswith("sd2"))


# --- reading folders (no weights) ------------------------------------------------------------

def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    return 2 ** max(0, len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)


def unet_downsampling(unet_config: dict[str, Any]) -> int:
    return 2 ** max(0, len(unet_config.get("down_block_types", (0, 0, 0, 0))) - 1)


def resolution_multiple(unet_config: dict[str, Any], vae_config: dict[str, Any]) -> int:
    """Pixel sides must be a multiple of this: the VAE's scale factor times the UNet's own
    downsampling (8 x 8 = 64 for real SD/SDXL), and of 8 for the pipelines. Tiny test models
    (2-level VAE, 2 UNet levels) get lcm(2 x 2, 8) = 8."""
    own = vae_scale_factor(vae_config) * unet_downsampling(unet_config)
    return own * PIPELINE_MULTIPLE // math.gcd(own, PIPELINE_MULTIPLE)


def native_resolution(unet_config: dict[str, Any], vae_config: dict[str, Any]) -> int | None:
    size = unet_config.get("sample_size")
    if not size:
        return None
    side = size if isinstance(size, int) else size[0]
    return int(side) * vae_scale_factor(vae_config)


# The domain check: the latent denoising error at 4 fixed noise levels (prompt "") on the user's
# pictures over that on the model's own unconditional samples. Not calibrated on a real Stable
# Diffusion model (none can be downloaded here): the pixel-space starter's limits, as a start.
DOMAIN = DomainScale(measure="how well it takes noise off the pictures (latent denoising error at 4 fixed noise "
                     "levels)", close=1.3, related=2.5)


def inspected_capabilities(found: Any, *, text_encoders: int, supports_full_finetune: bool) -> Any:
    """Capabilities of an inspected SD/SDXL model from its configs (single files: real sizes)."""
    path = Path(found.path)
    multiple = 64
    if path.is_dir():
        unet_cfg, vae_cfg = read_json(path / "unet" / "config.json"), read_json(path / "vae" / "config.json")
        if unet_cfg and vae_cfg:
            multiple = resolution_multiple(unet_cfg, vae_cfg)
    return Capabilities(conditioning="text", native_resolution=found.native_resolution or 0,
                        resolution_multiple=multiple, supports_full_finetune=supports_full_finetune,
                        text_encoders=text_encoders, prediction_type=found.prediction_type or "epsilon",
                        latent=True, methods=("lora", "full") if supports_full_finetune else ("lora",),
                        kohya_lora=True, single_file=True, label=found.label, domain=DOMAIN)


def scheduler_config(folder: Path) -> dict[str, Any]:
    """The scheduler config with the class defaults filled in, exactly as diffusers'
    `from_pretrained` would see it (so DDIM built from it matches a user's script)."""
    import diffusers

    raw = read_json(Path(folder) / "scheduler" / "scheduler_config.json") or {}
    cls = getattr(diffusers, str(raw.get("_class_name", "")), None)
    if isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin):
        try:
            return dict(cls.from_config(raw).config)
        except (TypeError, ValueError):
            pass  # an odd config: keep what the file says
    return dict(raw)


def weights_variant(sub: Path) -> str | None:
    """`fp16` when a component ships only `*.fp16.safetensors` (diffusers needs variant= for it)."""
    sub = Path(sub)
    plain = any((sub / n).is_file() or (sub / f"{n}.index.json").is_file()
                for n in ("diffusion_pytorch_model.safetensors", "model.safetensors"))
    if not plain and any(sub.glob("*.fp16.safetensors")):
        return "fp16"
    return None


def load_component(loader: Any, sub: Path, what: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained` from local safetensors only, errors turned into advice."""
    try:
        return loader.from_pretrained(sub, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise BackboneError(f"Could not load the {what} from {sub}: {exc}",
                            "The model folder may be incomplete or damaged; download it again.") from None


def check_filled(module: nn.Module, sub: Path, what: str) -> nn.Module:
    """Refuse a model whose weight files do not hold every one of its weights: diffusers and
    transformers would leave the missing ones randomly initialised, without a word. Tied weights
    (T5's shared embedding) count as present when their twin is."""
    from transferstudio.backbones.sdfiles.detect import read_safetensors_header

    variant = weights_variant(sub)
    files = [f for f in Path(sub).glob("*.safetensors") if (variant is None) != f.name.endswith(f".{variant}.safetensors")]
    stored: set[str] = set()
    for file in files:
        stored |= set(read_safetensors_header(file).tensors)
    state = module.state_dict(keep_vars=True)
    present = {id(t) for k, t in state.items() if k in stored}
    missing = sorted(k for k, t in state.items() if k not in stored and id(t) not in present)
    if missing:
        raise BackboneError(f"The {what} in {sub} lacks {len(missing)} of its weights (e.g. {missing[0]}).",
                            "The model folder may be incomplete or damaged; download it again.")
    return module



def load_text_encoder(cls: Any, sub: Path, what: str) -> nn.Module:
    import torch

    return check_filled(load_component(cls, sub, what, use_safetensors=True, dtype=torch.float32,
                                       variant=weights_variant(sub)), sub, what)


def load_diffusers_model(cls: Any, sub: Path, what: str) -> nn.Module:
    import torch

    return check_filled(load_component(cls, sub, what, use_safetensors=True, torch_dtype=torch.float32,
                                       variant=weights_variant(sub)), sub, what)


def prediction_label(prediction_type: str) -> str:
    return PREDICTION_LABELS.get(prediction_type, prediction_type)


# --- single-file checkpoints through the model library ---------------------------------------

SINGLE_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def inspect_single_file(path: Path, *, families: Sequence[str], key: str,
                        claim_unplaced: bool = False) -> Inspection | None:
    """Claim a single file the model library detects as one of `families` (usable when it is a
    complete checkpoint). With `claim_unplaced`, also files the library could not place at all
    (pickles, unreadable or unknown files), so the user reads the library's reason and advice
    instead of a generic "not a model"."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return None
    from transferstudio.backbones.sdfiles.detect import detect

    found = detect(path)
    family = getattr(found, "family", None)
    kind = str(getattr(found, "kind", "checkpoint"))
    problems = tuple(str(p) for p in (getattr(found, "problems", ()) or ()))
    if family not in families and not (claim_unplaced and family is None and (problems or kind != "checkpoint")):
        return None
    if kind != "checkpoint" and not problems:
        what = {"lora": "a LoRA adapter", "vae": "a VAE only"}.get(kind, f"a {kind} file")
        problems = (f"this file is {what}, not a base model; pick the full model (UNet, VAE and text "
                    "encoder) as the backbone",)
    details: list[tuple[str, str]] = [("layout", "single-file checkpoint")]
    if found.components:
        details.append(("contains", ", ".join(found.components)))
    if found.dtype:
        details.append(("precision", found.dtype))
    if found.advice:
        details.append(("advice", str(found.advice)))
    return Inspection(path=path, family=key if not problems else None, label=str(found.label),
                      usable=not problems, problems=problems,
                      native_resolution=found.native_resolution, prediction_type=found.prediction_type,
                      size_bytes=found.size_bytes or path.stat().st_size, details=tuple(details),
                      variant=found.family)


def load_single_file_components(path: Path, prediction_type: str) -> Any:
    import torch

    from transferstudio.backbones.sdfiles.single_file import load_single_file

    return load_single_file(Path(path), prediction_type=prediction_type or None, dtype=torch.float32)


def diffusers_kohya_names(paths: list[str]) -> dict[str, str]:
    """SD 1.x/2.x kohya names: the diffusers module path with dots as underscores (what
    sd-scripts trains on, and what A1111/ComfyUI convert for those families)."""
    return {p: "lora_unet_" + p.replace(".", "_") for p in paths}


class StableDiffusionFamily(Family):
    """What SD 1.x/2.x and SDXL families share: loading from a folder or a single file."""

    what = ""  # "Stable Diffusion XL"
    pick_hint = ""  # advice when the path is of another kind
    text_encoders = 1
    supports_full_finetune = True

    def typical_capabilities(self) -> Capabilities:
        return Capabilities(conditioning="text", native_resolution=0, resolution_multiple=64,
                            supports_full_finetune=self.supports_full_finetune, text_encoders=self.text_encoders,
                            prediction_type="epsilon", latent=True,
                            methods=("lora", "full") if self.supports_full_finetune else ("lora",),
                            kohya_lora=True, single_file=True, label=self.what, domain=DOMAIN)

    def kohya_unet_names(self, paths: list[str], unet_config: Any) -> dict[str, str]:
        return diffusers_kohya_names(paths)

    def kohya_text_prefixes(self) -> dict[str, str]:
        return dict(KOHYA_TEXT_PREFIXES[self.text_encoders])

    def capabilities(self, found: Inspection) -> Any:
        return inspected_capabilities(found, text_encoders=self.text_encoders,
                                      supports_full_finetune=self.supports_full_finetune)

    def load(self, path: Path, *, prediction_type: str = "") -> "StableDiffusionBase":
        path = Path(path)
        found = self.inspect(path)
        if found is None:
            raise BackboneError(f"{path} is not a {self.what} model.", self.pick_hint)
        if not found.usable:
            raise BackboneError(f"{path} cannot be used: {'; '.join(found.problems)}.",
                                "Complete or re-download the model.")
        cls = self.backbone_class()
        if path.is_file():
            return cls.from_components(load_single_file_components(path, prediction_type),
                                       source=path, prediction_type=prediction_type)
        return cls.from_folder(path, prediction_type=prediction_type)

    def skeleton(self, path: Path) -> "StableDiffusionBase":
        """A pipeline folder's components from their configs (a single file: the bundled configs of
        the kind the library detects; a folder without weights, such as the bundled ones, will do);
        tokenizers are read for real (small files), so conditioning runs as in training."""
        from types import SimpleNamespace

        import diffusers
        import torch
        import transformers

        path = Path(path)
        folder = path
        if path.is_file():
            from transferstudio.backbones.sdfiles._paths import loading_root
            from transferstudio.backbones.sdfiles.detect import detect

            key = detect(path).config_key
            if key is None:
                raise BackboneError(f"{path.name} is not a {self.what} checkpoint.", self.pick_hint)
            folder = loading_root() / key
        index = read_json(folder / "model_index.json") or {}

        def component(name: str, library: Any, default: str) -> Any:
            entry = index.get(name) or [None, default]
            cls = getattr(library, str(entry[1] or default))
            if library is diffusers:
                return cls.from_config(cls.load_config(folder / name))
            return cls(cls.config_class.from_pretrained(folder / name))

        parts = SimpleNamespace(unet=component("unet", diffusers, "UNet2DConditionModel"),
                                vae=component("vae", diffusers, "AutoencoderKL"),
                                scheduler_config=read_json(folder / "scheduler" / "scheduler_config.json") or {})
        for index_name in ("", "_2")[:self.text_encoders]:
            setattr(parts, f"text_encoder{index_name}", component(f"text_encoder{index_name}", transformers,
                                                                  "CLIPTextModel"))
            with torch.device("cpu"):  # a tokenizer makes no weights; its files are read as they are
                tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / f"tokenizer{index_name}",
                                                                       local_files_only=True)
            setattr(parts, f"tokenizer{index_name}", tokenizer)
        return self.backbone_class().from_components(parts, source=path)
