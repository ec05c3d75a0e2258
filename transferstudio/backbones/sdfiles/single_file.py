"""Load an A1111/ComfyUI-style single `.safetensors` checkpoint with nothing but the file.

Configs and tokenizers come from the bundled `resources/loading/<key>/` folders, so diffusers
never reaches for a hub. Each component is converted with diffusers' own original->diffusers
mapping, then CHECKED: the converted keys must equal the model's keys exactly, with equal
shapes, before anything is loaded. A partial conversion (wrong block layout, a text-encoder
prefix that changed between transformers versions) is refused instead of leaving random
weights in the model.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import transferstudio.core.offline  # noqa: F401,E402  (the one offline switch)

import torch  # noqa: E402

from transferstudio.core.errors import BackboneError  # noqa: E402
from transferstudio.backbones.sdfiles._paths import loading_root  # noqa: E402
from transferstudio.backbones.sdfiles.detect import classify, read_safetensors_header  # noqa: E402
from transferstudio.backbones.sdfiles.pickles import convert_pickle_to_safetensors  # noqa: E402,F401  (re-export)

class _EmptyFp32ListFilter(logging.Filter):
    """diffusers 0.42 warns "should be kept in float32: []" on every dtype cast, even with no such modules."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFp32ListFilter())

# Keys the original file may hold that no diffusers parameter corresponds to.
_IGNORABLE = ("position_ids",)


@dataclass
class SingleFileComponents:
    family: str  # sd1 | sd2 | sdxl
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any | None
    tokenizer_2: Any | None
    scheduler_config: dict
    prediction_type: str  # epsilon | v_prediction
    config_dir: Path


# component -> file prefix it is read from (text encoders: per family, in load_single_file)
_PREFIXES = {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.",)}


def _read_tensors(path: Path, prefixes: tuple[str, ...], keys: list[str],
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Only this component's tensors, so peak memory is one component, not the whole file.

    safe_open hands out views into the memory-mapped file: cast or copy each one, so the model
    owns aligned memory (unaligned views run different, slower kernels) and does not keep the
    file mapped (on Windows that would lock it against being replaced).
    """
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for k in keys:
            if k.startswith(prefixes):
                t = f.get_tensor(k)
                out[k] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t.clone()
    return out


def _check_complete(name: str, file_name: str, converted: Mapping[str, torch.Tensor],
                    expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Refuse unless the converted weights fill every parameter with the right shape, and nothing else."""
    converted = {k: v for k, v in converted.items() if not k.endswith(_IGNORABLE) or k in expected}
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    wrong = sorted(k for k in set(expected) & set(converted)
                   if tuple(converted[k].shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} with the wrong shape (e.g. {k}: {tuple(converted[k].shape)} "
                          f"instead of {tuple(expected[k].shape)})")
        raise BackboneError(
            f"The {name.replace('_', ' ')} in '{file_name}' does not match the expected architecture: "
            + "; ".join(detail) + ".",
            "The file may be a variant TransferStudio does not know, or damaged; try the original download.")
    return dict(converted)


def _convert(name: str, file_name: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """diffusers' converters index keys they expect; a file without them raises deep inside."""
    try:
        return fn(*args, **kwargs)
    except (KeyError, IndexError, ValueError, RuntimeError, AttributeError) as e:
        raise BackboneError(
            f"The {name.replace('_', ' ')} in '{file_name}' does not match the expected architecture "
            f"({type(e).__name__}: {str(e)[:120]}).",
            "The file may be a variant TransferStudio does not know, or damaged; try the original download.") from e


def _no_meta(name: str, model: torch.nn.Module) -> None:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise BackboneError(f"The {name.replace('_', ' ')} was only partly loaded ({len(left)} tensors left empty, "
                            f"e.g. {left[0]}).", "Report this file; it was not loaded.")


def _load_diffusers_component(cls: Any, name: str, path: Path, keys: list[str], config_dir: Path,
                              dtype: torch.dtype) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    config = cls.load_config(config_dir / name)
    with init_empty_weights():
        expected = cls.from_config(config).state_dict()
    raw = _read_tensors(path, _PREFIXES[name], keys, dtype)
    convert = convert_ldm_unet_checkpoint if name == "unet" else convert_ldm_vae_checkpoint
    converted = _check_complete(name, path.name, _convert(name, path.name, convert, raw, config), expected)
    del raw
    # Keys now match exactly, so from_single_file loads them as they are (no second conversion);
    # `config=` keeps it offline.
    model = cls.from_single_file(converted, config=str(config_dir), subfolder=name, local_files_only=True,
                                 torch_dtype=dtype)
    _no_meta(name, model)
    return model


def _load_text_encoder(name: str, style: str, prefix: str, path: Path, keys: list[str], config_dir: Path,
                       dtype: torch.dtype) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig.from_pretrained(config_dir / name, local_files_only=True)
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in (cfg.architectures or []) else CLIPTextModel
    with init_empty_weights():
        model = cls(cfg)
    expected = model.state_dict()
    raw = _read_tensors(path, (prefix,), keys, dtype)
    if style == "clip":
        converted = _convert(name, path.name, convert_ldm_clip_checkpoint, raw, remove_prefix=prefix)
    else:
        if prefix == "cond_stage_model.":
            # SD 2.x conditions on the penultimate layer: the file's last layer and projection are
            # unused. Drop exactly that one layer, so a file with more layers is still refused.
            unused = f"{prefix}model.transformer.resblocks.{cfg.num_hidden_layers}."
            raw = {k: v for k, v in raw.items()
                   if not k.startswith(unused) and k != f"{prefix}model.text_projection"}
        converted = _convert(name, path.name, convert_open_clip_checkpoint, model, raw, prefix=prefix + "model.")
    del raw
    # transformers 5 flattened CLIPTextModel (no `text_model.`); older files lack it too: match the model.
    wants_prefix = any(k.startswith("text_model.") for k in expected)
    fixed = {}
    for k, v in converted.items():
        bare = k[len("text_model."):] if k.startswith("text_model.") else k
        fixed[("text_model." + bare) if wants_prefix and not bare.startswith("text_projection") else bare] = v
    fixed = _check_complete(name, path.name, fixed, expected)
    model.load_state_dict(fixed, strict=True, assign=True)
    model.to(dtype)
    _no_meta(name, model)
    return model.eval()


def resolve_config_dir(family: str, prediction_type: str, config_root: Path | None = None) -> Path:
    key = "sd2-v" if family == "sd2" and prediction_type == "v_prediction" else family
    root = Path(config_root) if config_root is not None else loading_root()
    folder = root / key
    if not (folder / "model_index.json").is_file():
        raise BackboneError(f"The loading files for {key} are missing from this installation ({folder}).",
                            "Reinstall TransferStudio.")
    return folder


def load_single_file(path: str | Path, *, prediction_type: str | None = None, dtype: torch.dtype = torch.float32,
                     config_root: str | Path | None = None) -> SingleFileComponents:
    """Load every component of a single-file SD 1.x / 2.x / XL checkpoint, offline.

    prediction_type: None (from the file, else epsilon) or "v_prediction" for SD 2.x 768 models,
    whose weights do not say so (CLI: --v-prediction).
    Raises BackboneError with advice for pickles, broken files, LoRAs/VAEs and partial loads.
    """
    from transformers import CLIPTokenizer

    path = Path(path)
    header = read_safetensors_header(path)  # refuses pickles and broken files with one sentence
    detection = classify(header, name=f"'{path.name}'", prediction_type=prediction_type)
    detection.raise_if_unusable()
    family, pred = detection.family, detection.prediction_type
    assert family in ("sd1", "sd2", "sdxl") and pred is not None
    config_dir = resolve_config_dir(family, pred, Path(config_root) if config_root else None)
    keys = list(header.tensors)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = _load_diffusers_component(UNet2DConditionModel, "unet", path, keys, config_dir, dtype)
    vae = _load_diffusers_component(AutoencoderKL, "vae", path, keys, config_dir, dtype)
    if family == "sd1":
        te = _load_text_encoder("text_encoder", "clip", "cond_stage_model.transformer.", path, keys, config_dir, dtype)
        te2 = None
    elif family == "sd2":
        te = _load_text_encoder("text_encoder", "openclip", "cond_stage_model.", path, keys, config_dir, dtype)
        te2 = None
    else:
        te = _load_text_encoder("text_encoder", "clip", "conditioner.embedders.0.transformer.", path, keys,
                                config_dir, dtype)
        te2 = _load_text_encoder("text_encoder_2", "openclip", "conditioner.embedders.1.", path, keys,
                                 config_dir, dtype)
    tokenizer = CLIPTokenizer.from_pretrained(config_dir / "tokenizer", local_files_only=True)
    tokenizer_2 = (CLIPTokenizer.from_pretrained(config_dir / "tokenizer_2", local_files_only=True)
                   if te2 is not None else None)
    scheduler_config = json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    scheduler_config["prediction_type"] = pred
    return SingleFileComponents(family, unet, vae, te, tokenizer, te2, tokenizer_2, scheduler_config, pred,
                                config_dir)
