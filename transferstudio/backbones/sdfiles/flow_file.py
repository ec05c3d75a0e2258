"""SD3 and FLUX.1 from single files, offline: the transformer in one file (the original layout of
Stability's / Black Forest Labs' releases and ComfyUI's `models/diffusion_models`), with the VAE and
the text encoders inside it (SD3's all-in-one files) or as their own files beside it or in a
ComfyUI `models/text_encoders` (or `models/clip`) and `models/vae` folder.

Configs, tokenizers and the scheduler come from `resources/loading/<variant>/` (`write_loading_files`
makes such a folder from a diffusers download: its configs and tokenizers, no weights). The variant
(sd3-medium, sd3.5-medium, sd3.5-large, flux-dev, flux-schnell) is read from the transformer's
weights, never from its name. Every component is checked to fill its model exactly before it is
loaded, as for the SD single files.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferstudio.backbones.sdfiles._paths import loading_root
from transferstudio.backbones.sdfiles.detect import (FLOW_VARIANTS, SD3_TEXT_PREFIXES, UNET, Detection,
                                                     SafetensorsHeader, classify, read_safetensors_header)
from transferstudio.core.errors import BackboneError

SUFFIXES = (".safetensors", ".sft")
# The text encoders each family needs: pipeline name -> (what it is, words its files are named with)
NEEDED = {
    "sd3": {"text_encoder": ("CLIP-L text encoder", ("clip_l",)),
            "text_encoder_2": ("CLIP-G text encoder", ("clip_g",)),
            "text_encoder_3": ("T5-XXL text encoder", ("t5",))},
    "flux": {"text_encoder": ("CLIP-L text encoder", ("clip_l",)),
             "text_encoder_2": ("T5-XXL text encoder", ("t5",))},
}
FILE_NAMES = {"CLIP-L text encoder": "clip_l.safetensors", "CLIP-G text encoder": "clip_g.safetensors",
              "T5-XXL text encoder": "t5xxl_fp16.safetensors", "VAE": "ae.safetensors"}
_VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass
class Part:
    """Where one component's weights are: a file and the prefix of its keys there."""

    file: Path
    prefix: str = ""


@dataclass
class Parts:
    vae: Part | None = None
    encoders: dict[str, Part | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


def loading_folder(variant: str) -> Path:
    return loading_root() / variant


def loading_problem(variant: str) -> tuple[str, str] | None:
    folder = loading_folder(variant)
    if (folder / "model_index.json").is_file() and (folder / "transformer" / "config.json").is_file():
        return None
    return (f"this installation has no loading files for {FLOW_VARIANTS.get(variant, variant)} single files "
            f"({folder})", "Use the model's diffusers folder instead, or add its configs and tokenizers there "
            "(transferstudio.backbones.sdfiles.flow_file.write_loading_files makes them from a diffusers folder).")


def write_loading_files(diffusers_folder: Path, out: Path) -> Path:
    """Copy what loading a single file needs from a diffusers pipeline folder — model_index.json,
    every config and tokenizer, the scheduler — without any weights, to `out` (resources/loading/<variant>)."""
    src, out = Path(diffusers_folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "model_index.json", out / "model_index.json")
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in sub.iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".index.json")):
                (out / sub.name).mkdir(exist_ok=True)
                shutil.copy(f, out / sub.name / f.name)
    return out


def _config(variant: str, sub: str) -> dict[str, Any]:
    path = loading_folder(variant) / sub / "config.json"
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# --- finding the other files -----------------------------------------------------------------

def search_folders(file: Path) -> list[Path]:
    """Where a transformer file's companions may be: beside it, and ComfyUI's `text_encoders`,
    `clip` and `vae` folders next to it, next to its folder or one further up
    (models/diffusion_models/x.safetensors -> models/text_encoders, models/vae)."""
    here = Path(file).parent
    found = [here]
    for base in (here, here.parent, here.parent.parent):
        for sub in ("text_encoders", "clip", "vae"):
            folder = base / sub
            if folder.is_dir() and folder not in found:
                found.append(folder)
    return found


def _width(header: SafetensorsHeader, *keys: str) -> int | None:
    for key in keys:
        info = header.tensors.get(key)
        if info is not None and len(info.shape) >= 2:
            return int(info.shape[-1])
    return None


def _is_fp8(header: SafetensorsHeader) -> bool:
    counts: dict[str, int] = {}
    for info in header.tensors.values():
        n = 1
        for d in info.shape:
            n *= d
        counts[info.dtype] = counts.get(info.dtype, 0) + n
    return bool(counts) and max(counts, key=counts.get).startswith("F8")


def _roles(header: SafetensorsHeader, family: str, variant: str) -> list[str]:
    """The companions a file could be (text encoders' pipeline names, or "vae"), by its keys and
    widths; several when the widths do not tell them apart (then the file's name decides)."""
    clip = _width(header, "text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
    if clip is not None:
        return [name for name in NEEDED[family]
                if _config(variant, name).get("model_type", "clip_text_model").startswith("clip")
                and _config(variant, name).get("hidden_size") == clip]
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in header.tensors:
        width = _width(header, "shared.weight", "encoder.embed_tokens.weight")
        return [name for name in NEEDED[family]
                if _config(variant, name).get("model_type") == "t5" and _config(variant, name).get("d_model") == width]
    for prefix in ("", *_VAE_PREFIXES):
        conv = header.tensors.get(prefix + "decoder.conv_in.weight")
        if conv is not None and prefix + "encoder.conv_in.weight" in header.tensors:
            if int(conv.shape[1]) == int(_config(variant, "vae").get("latent_channels", 16)):
                return ["vae"]
    return []


def find_parts(file: Path, found: Detection, header: SafetensorsHeader) -> Parts:
    """The file and its companions for every component, or a problem per missing one."""
    file = Path(file)
    family, variant = str(found.family), str(found.config_key)
    parts = Parts()
    if "vae" in found.components:
        prefix = next(p for p in _VAE_PREFIXES if any(k.startswith(p) for k in header.tensors))
        parts.vae = Part(file, prefix)
    for name in NEEDED[family]:
        inside = SD3_TEXT_PREFIXES.get(name) if family == "sd3" else None
        parts.encoders[name] = Part(file, inside) if inside and name in found.components else None
    wanted = [n for n, p in parts.encoders.items() if p is None] + (["vae"] if parts.vae is None else [])
    if not wanted:
        return parts
    candidates: dict[str, list[tuple[bool, bool, str, Path]]] = {n: [] for n in wanted}
    for folder in search_folders(file):
        for other in sorted(folder.iterdir()):
            if other == file or not other.is_file() or other.suffix.lower() not in SUFFIXES:
                continue
            try:
                head = read_safetensors_header(other)
            except BackboneError:
                continue
            for role in _roles(head, family, variant):
                if role in candidates:
                    words = NEEDED[family].get(role, ("", ("ae", "vae")))[1]
                    named = any(w in other.name.lower() for w in words)
                    candidates[role].append((_is_fp8(head), not named, other.name, other))
    for name in wanted:
        what = NEEDED[family][name][0] if name != "vae" else "VAE"
        options = sorted(candidates[name])
        if options and not options[0][0]:
            part = Part(options[0][3])
            if name == "vae":
                parts.vae = part
            else:
                parts.encoders[name] = part
            continue
        where = f"beside {file.name} or in a ComfyUI models/{'vae' if name == 'vae' else 'text_encoders'} folder"
        if options:  # only fp8 copies
            parts.problems.append(f"the {what} found ({options[0][2]}) stores its weights as 8-bit floats (fp8), "
                                  "which TransferStudio does not load")
            parts.advice.append(f"Put the fp16 {what} ({FILE_NAMES[what]}) {where}.")
        else:
            parts.problems.append(f"no {what} file was found {where}")
            parts.advice.append(f"Put {FILE_NAMES[what]} {where} (or pick the model's diffusers folder).")
    return parts


def inspect_parts(file: Path, family: str | None = None) -> tuple[Detection, Parts | None]:
    """What the file is, and where its components are (None when the file itself is unusable, or
    is not of `family` when one is given)."""
    header = read_safetensors_header(file)
    found = classify(header, name=f"'{Path(file).name}'")
    if not found.usable or found.family not in NEEDED or (family is not None and found.family != family):
        return found, None
    problem = loading_problem(str(found.config_key))
    if problem is not None:
        return found, Parts(problems=[problem[0]], advice=[problem[1]])
    return found, find_parts(file, found, header)


# --- loading -----------------------------------------------------------------------------------

def _read(file: Path, keep: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(file), framework="pt", device="cpu") as f:
        for key in f.keys():
            new = keep(key)
            if new is not None:
                t = f.get_tensor(key)
                out[new] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t.clone()
    return out


def _strip(prefix: str) -> Any:
    return lambda key: key[len(prefix):] if key.startswith(prefix) else None


def _transformer(cls: Any, kind: str, file: Path, variant: str, what: str, dtype: torch.dtype) -> Any:
    from accelerate import init_empty_weights

    from transferstudio.backbones import mmdit_layout as layout
    from transferstudio.backbones.sdfiles.single_file import _check_complete

    config = cls.load_config(loading_folder(variant) / "transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    expected = model.state_dict()
    layers = layout.layers_of(kind, layout.shapes_of(expected))
    header = read_safetensors_header(file)
    prefix = UNET if any(k.startswith(UNET) for k in header.tensors) else ""
    skip = ("first_stage_model.", "vae.", "text_encoders.")
    raw = _read(file, lambda k: None if k.startswith(skip) or not k.startswith(prefix) else k[len(prefix):], dtype)
    try:
        state = layout.from_original(raw, layers)
    except layout.LayoutError as exc:
        raise BackboneError(f"The transformer in '{file.name}' does not fit {what}: {exc}.",
                            "The file may be a variant TransferStudio does not know, or damaged; try the original "
                            "download.") from None
    state = _check_complete("transformer", file.name, state, expected)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval()


def _vae(part: Part, variant: str, dtype: torch.dtype) -> Any:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from transferstudio.backbones.sdfiles.single_file import _check_complete, _convert

    config = AutoencoderKL.load_config(loading_folder(variant) / "vae")
    with init_empty_weights():
        model = AutoencoderKL.from_config(config)
    expected = model.state_dict()
    raw = _read(part.file, _strip(part.prefix) if part.prefix else (lambda k: k), dtype)
    converted = _check_complete("vae", part.file.name, _convert("vae", part.file.name, convert_ldm_vae_checkpoint,
                                                                raw, config), expected)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.to(dtype).eval()


def _text_encoder(part: Part, variant: str, name: str, dtype: torch.dtype) -> Any:
    """A CLIP or T5 encoder from a file in the transformers layout (ComfyUI's text encoder files,
    SD3's `text_encoders.*.transformer.` sections)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from transferstudio.backbones.sdfiles.single_file import _check_complete

    cfg = AutoConfig.from_pretrained(loading_folder(variant) / name, local_files_only=True)
    if cfg.model_type == "t5":
        cls = T5EncoderModel
    else:
        cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in (cfg.architectures or []) \
            else CLIPTextModel
    with init_empty_weights():
        model = cls(cfg)
    expected = model.state_dict()
    raw = _read(part.file, _strip(part.prefix) if part.prefix else (lambda k: k), dtype)
    if cls is T5EncoderModel:
        for tied in ("encoder.embed_tokens.weight", "shared.weight"):  # tied: files keep one of the two
            twin = "shared.weight" if tied == "encoder.embed_tokens.weight" else "encoder.embed_tokens.weight"
            if tied in expected and tied not in raw and twin in raw:
                raw[tied] = raw[twin]
    else:  # transformers 5 flattens CLIPTextModel (no `text_model.`); files may have it either way
        nested = any(k.startswith("text_model.") for k in expected)
        fixed = {}
        for k, v in raw.items():
            bare = k.removeprefix("text_model.")
            fixed["text_model." + bare if nested and not bare.startswith("text_projection") else bare] = v
        # A CLIP-L file may carry a projection FLUX does not use (ComfyUI shares one clip_l between SD3 and FLUX).
        unused = ("position_ids", "text_projection.weight", "logit_scale")
        raw = {k: v for k, v in fixed.items() if not k.endswith(unused) or k in expected}
        if cls is CLIPTextModelWithProjection and "text_projection.weight" not in raw:
            raise BackboneError(f"'{part.file.name}' has no text projection, which {FLOW_VARIANTS[variant]} needs "
                                "from its CLIP encoders.", "Use the text encoder files that came with the model.")
    state = _check_complete(name, part.file.name, raw, expected)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval()


def load_parts(file: Path, *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Every component of an SD3/FLUX single file and its companions: the keyword arguments of
    the family backbone (transformer, vae, encoders, tokenizers, scheduler config, variant).
    BackboneError with advice for anything missing, fp8, or not fitting."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTokenizer, T5TokenizerFast

    from transferstudio.backbones import _sd_common as sdc

    file = Path(file)
    found, parts = inspect_parts(file)
    found.raise_if_unusable()
    if parts is None or parts.problems:
        problems = parts.problems if parts else ["it is not an SD3 or FLUX model"]
        raise BackboneError(f"'{file.name}' cannot be loaded: {'; '.join(problems)}.",
                            " ".join(parts.advice) if parts else "")
    family, variant = str(found.family), str(found.config_key)
    what = FLOW_VARIANTS[variant]
    folder = loading_folder(variant)
    cls, kind = (SD3Transformer2DModel, "sd3") if family == "sd3" else (FluxTransformer2DModel, "flux")
    transformer = _transformer(cls, kind, file, variant, what, dtype)
    vae = _vae(parts.vae, variant, dtype) if parts.vae is not None else None
    encoders = {name: _text_encoder(part, variant, name, dtype) for name, part in parts.encoders.items()
                if part is not None}
    tokenizers = {}
    for name in NEEDED[family]:
        sub = name.replace("text_encoder", "tokenizer")
        t5 = _config(variant, name).get("model_type") == "t5"
        tokenizers[sub] = sdc.load_component(T5TokenizerFast if t5 else CLIPTokenizer, folder / sub,
                                             f"{sub.replace('_', ' ')} (loading files)")
    return {"transformer": transformer, "vae": vae, "encoders": encoders, "tokenizers": tokenizers,
            "scheduler_config": sdc.scheduler_config(folder), "variant": variant, "label": what,
            "pipeline_config": json.loads((folder / "model_index.json").read_text("utf-8")),
            "files": {"transformer": file, **({"vae": parts.vae.file} if parts.vae else {}),
                      **{n: p.file for n, p in parts.encoders.items() if p is not None}}}


def describe_parts(parts: Parts | None) -> list[tuple[str, str]]:
    """`inspect` lines saying which file each component comes from."""
    if parts is None:
        return []
    lines = []
    if parts.vae is not None:
        lines.append(("vae", parts.vae.file.name + (" (inside)" if parts.vae.prefix else "")))
    for name, part in parts.encoders.items():
        if part is not None:
            lines.append((name.replace("_", " "), part.file.name + (" (inside)" if part.prefix else "")))
    return lines


def sizes(parts: Parts | None, file: Path) -> int:
    files = {Path(file)}
    if parts is not None:
        files |= {p.file for p in [parts.vae, *parts.encoders.values()] if p is not None}
    return sum(f.stat().st_size for f in files if f.is_file())


__all__ = ["inspect_parts", "load_parts", "write_loading_files", "loading_problem", "search_folders"]

