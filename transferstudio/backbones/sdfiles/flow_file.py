"""SD3 and FLUX.1 from single files, offline: the transformer in one file (the original layout of
Stability's / Black Forest Labs' releases and ComfyUI's `models/diffusion_models`), with the VAE and
the text encoders inside it (SD3's all-in-one files) or as their own files beside it or in a
ComfyUI `models/text_encoders` (or `models/clip`) and `models/vae` folder.

Configs, the CLIP tokenizers and the scheduler come from `resources/loading/<variant>/` (written by
`python -m transferstudio.devtools.write_flow_loading` from the published architectures;
`write_loading_files` makes such a folder from a diffusers download). T5's tokenizer is not
shipped: `find_t5_tokenizer` looks for one on the user's disk (a folder the user names, the loading
folder, beside the files, ComfyUI's own copy, a diffusers SD3/FLUX download in the Hugging Face
cache), never downloads, and checks it is T5's before it is used. The variant
(sd3-medium, sd3.5-medium, sd3.5-large, flux-dev, flux-schnell) is read from the transformer's
weights, never from its name. Every component is checked to fill its model exactly before it is
loaded, as for the SD single files.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.backbones.sdfiles._paths import loading_root
from transferstudio.backbones.sdfiles.detect import (FLOW_VARIANTS, SD3_TEXT_PREFIXES, UNET, Detection,
                                                     SafetensorsHeader, classify, read_safetensors_header)
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:  # torch only where a model loads: inspecting a file reads its header alone
    import torch

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
    t5_tokenizer: Path | None = None  # the T5 tokenizer folder found (find_t5_tokenizer)
    t5_problem: BackboneError | None = None  # why none was


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


def inspect_parts(file: Path, family: str | None = None, *, t5_tokenizer: Path | str | None = None
                  ) -> tuple[Detection, Parts | None]:
    """What the file is, and where its components are (None when the file itself is unusable, or
    is not of `family` when one is given), with the T5 tokenizer to use (`t5_tokenizer`: the
    user's choice, else $TRANSFERSTUDIO_T5_TOKENIZER, else found: find_t5_tokenizer)."""
    header = read_safetensors_header(file)
    found = classify(header, name=f"'{Path(file).name}'")
    if not found.usable or found.family not in NEEDED or (family is not None and found.family != family):
        return found, None
    variant = str(found.config_key)
    problem = loading_problem(variant)
    if problem is not None:
        return found, Parts(problems=[problem[0]], advice=[problem[1]])
    parts = find_parts(file, found, header)
    t5 = parts.encoders.get(t5_encoder_name(str(found.family)))
    try:
        parts.t5_tokenizer = find_t5_tokenizer(file, variant, chosen=t5_tokenizer,
                                               near=[t5.file] if t5 is not None else [])
    except BackboneError as exc:
        parts.t5_problem = exc
        message = exc.message.rstrip(".")
        parts.problems.append(message[:1].lower() + message[1:])
        parts.advice.append(exc.advice)
    return found, parts


def tokenizer_folders(found: Detection, parts: Parts | None) -> dict[str, Path]:
    """Where each tokenizer of a single file comes from: the CLIP ones from its loading folder,
    T5's from where it was found. BackboneError (what to put where) when T5's was not."""
    family, variant = str(found.family), str(found.config_key)
    t5 = t5_encoder_name(family).replace("text_encoder", "tokenizer")
    if parts is None or parts.t5_tokenizer is None:
        raise parts.t5_problem if parts is not None and parts.t5_problem is not None else \
            BackboneError(f"{found.label} cannot be loaded from its single file.", found.advice)
    subs = [name.replace("text_encoder", "tokenizer") for name in NEEDED[family]]
    folders = {sub: loading_folder(variant) / sub for sub in subs}
    folders[t5] = parts.t5_tokenizer
    return folders


# --- the T5 tokenizer ----------------------------------------------------------------------------
# TransferStudio ships no T5 tokenizer (none can be built offline): it is found on the user's disk.

T5_TOKENIZER_ENV = "TRANSFERSTUDIO_T5_TOKENIZER"
T5_TOKENS = 32100  # T5's sentencepiece vocabulary (32,000 pieces) and its 100 extra ids
T5_VOCAB = 32128  # T5-XXL's embedding rows: its 32,100 tokens padded to a multiple of 128
_T5_PADDED = 128
BESIDE_T5 = ("t5_tokenizer", "tokenizer_3", "tokenizer_2")  # tokenizer folders beside the user's files
COMFY_T5 = ("comfy/text_encoders/t5_tokenizer", "comfy/t5_tokenizer")  # ComfyUI's own copy (new, old)
_checked: dict[tuple, str | None] = {}


def t5_encoder_name(family: str) -> str:
    """The pipeline's name of the T5 encoder (its tokenizer: the same with `tokenizer`)."""
    return "text_encoder_3" if family == "sd3" else "text_encoder_2"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (read from the environment now,
    not when huggingface_hub was imported)."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_t5_tokenizer(folder: Path) -> bool:
    """A folder holding a sentencepiece model or a T5 (Unigram) tokenizer.json — not a CLIP one."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / "spiece.model").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
        if str(config.get("tokenizer_class") or "").startswith("T5"):
            return (folder / "tokenizer.json").is_file()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        data = json.loads((folder / "tokenizer.json").read_text("utf-8"))
        return isinstance(data, dict) and (data.get("model") or {}).get("type") == "Unigram"
    except (OSError, ValueError, AttributeError):
        return False


def _t5_vocab(variant: str, family: str) -> int:
    return int(_config(variant, t5_encoder_name(family)).get("vocab_size") or T5_VOCAB)


def t5_tokenizer_problem(folder: Path, vocab_size: int = T5_VOCAB) -> str | None:
    """None when `folder` is a T5 tokenizer for an encoder of `vocab_size` embeddings (T5-XXL's
    32,128: its 32,100 tokens), else what is wrong, naming the folder. Kept per folder state."""
    folder = Path(folder)
    try:
        stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in folder.iterdir() if f.is_file()))
    except OSError as exc:
        return f"the T5 tokenizer folder {folder} cannot be read ({exc.strerror or exc})"
    key = (str(folder.resolve()), vocab_size, stamp)
    if key not in _checked:
        _checked[key] = _t5_problem(folder, vocab_size)
    return _checked[key]


def _t5_problem(folder: Path, vocab_size: int) -> str | None:
    if not looks_like_t5_tokenizer(folder):
        return (f"the folder {folder} is not a T5 tokenizer (it holds neither spiece.model nor a T5 "
                "tokenizer.json)")
    try:
        tok = load_t5_tokenizer(folder)
    except BackboneError as exc:
        return exc.message.rstrip(".")
    size = len(tok)
    expected = (f"T5-XXL's has {T5_TOKENS:,} (32,000 pieces and 100 extra ids)" if vocab_size == T5_VOCAB
                else f"the T5 encoder takes {vocab_size - _T5_PADDED + 1:,} to {vocab_size:,}")
    if not vocab_size - _T5_PADDED < size <= vocab_size:
        return f"the tokenizer in {folder} is not T5's: it has {size:,} tokens where {expected}"
    ids = tok("a photo").input_ids
    if (tok.pad_token_id, tok.eos_token_id, ids[-1:]) != (0, 1, [1]):
        return (f"the tokenizer in {folder} is not T5's: its padding and end tokens are ids {tok.pad_token_id} and "
                f"{tok.eos_token_id}, not T5's 0 and 1")
    return None


def load_t5_tokenizer(folder: Path) -> Any:
    from transformers import T5TokenizerFast

    try:
        return T5TokenizerFast.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise many kinds; each is "cannot be read"
        raise BackboneError(f"the T5 tokenizer in {folder} cannot be read offline ({type(exc).__name__}: {exc})",
                            "Copy the whole tokenizer folder again (tokenizer.json, or spiece.model, with its "
                            "tokenizer_config.json and special_tokens_map.json).") from None


def _above(path: Path) -> list[Path]:
    """The folders above `path`, as given and with links resolved (ComfyUI models are often links)."""
    out: list[Path] = []
    for p in (Path(os.path.abspath(path)), Path(path).resolve()):
        out += [a for a in p.parents if a not in out]
    return out


def comfyui_roots(path: Path) -> list[Path]:
    """ComfyUI installs above a model file: folders holding `comfy/` and `models/`."""
    return [a for a in _above(path) if (a / "comfy").is_dir() and (a / "models").is_dir()]


def _hf_cache_candidates(family: str) -> list[Path]:
    """T5 tokenizer folders of the diffusers SD3 and FLUX downloads in the Hugging Face cache
    (SD3's `tokenizer_3`, FLUX's `tokenizer_2`), this family's first, newest snapshot first."""
    hub = hf_hub_cache()
    try:
        repos = sorted(p for p in hub.glob("models--*") if p.is_dir())
    except OSError:
        return []
    found: list[tuple[int, float, str, Path]] = []
    for repo in repos:
        try:
            snapshots = [s for s in (repo / "snapshots").iterdir() if s.is_dir()]
        except OSError:
            continue
        for snap in snapshots:
            index = {}
            try:
                index = json.loads((snap / "model_index.json").read_text("utf-8"))
            except (OSError, ValueError):
                pass
            cls = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
            name = repo.name.lower()
            if "StableDiffusion3" in cls or (not cls and "stable-diffusion-3" in name):
                kind, sub = "sd3", "tokenizer_3"
            elif "Flux" in cls or (not cls and "flux" in name):
                kind, sub = "flux", "tokenizer_2"
            else:
                continue
            if (snap / sub).is_dir():
                try:
                    when = snap.stat().st_mtime
                except OSError:
                    when = 0.0
                found.append((0 if kind == family else 1, -when, str(snap), snap / sub))
    return [path for *_, path in sorted(found)]


def t5_tokenizer_candidates(file: Path, variant: str, family: str, near: list[Path] | tuple[Path, ...] = ()
                            ) -> list[tuple[str, Path]]:
    """(where, folder) of every place a T5 tokenizer is looked for after the user's own choice,
    in order: the loading folder; beside the model's files (`t5_tokenizer/`, `tokenizer_3/`,
    `tokenizer_2/`); ComfyUI's own copy above them; the Hugging Face cache."""
    files = [Path(file), *(Path(f) for f in near)]
    out: list[tuple[str, Path]] = []

    def add(where: str, folder: Path) -> None:
        if folder not in [p for _, p in out]:
            out.append((where, folder))

    sub = t5_encoder_name(family).replace("text_encoder", "tokenizer")
    add("loading files", loading_folder(variant) / sub)
    for f in files:
        for folder in [f.parent, *search_folders(f)]:
            for name in BESIDE_T5:
                add("beside the model", folder / name)
    for f in files:
        for root in comfyui_roots(f):
            for name in COMFY_T5:
                add("ComfyUI", root / name)
    for folder in _hf_cache_candidates(family):
        add("Hugging Face cache", folder)
    return out


def find_t5_tokenizer(file: Path, variant: str, *, chosen: Path | str | None = None,
                      near: list[Path] | tuple[Path, ...] = ()) -> Path:
    """The T5 tokenizer folder to load `file` (an SD3/FLUX transformer of `variant`) with: `chosen`
    (else $TRANSFERSTUDIO_T5_TOKENIZER) when given, else the first T5 tokenizer found in
    `t5_tokenizer_candidates` (`near`: the model's other files, e.g. its T5 encoder file). Checked to
    be T5's; BackboneError naming the folder when it is not, and saying what to put where when
    there is none. Never downloads."""
    family = "sd3" if variant.startswith("sd3") else "flux"
    vocab = _t5_vocab(variant, family)
    what = FLOW_VARIANTS.get(variant, variant)
    refuse = "Use the tokenizer_2 folder of a FLUX.1 diffusers download (or tokenizer_3 of an SD3 one), or ComfyUI's " \
             "comfy/text_encoders/t5_tokenizer."
    chosen = chosen if chosen not in (None, "") else os.environ.get(T5_TOKENIZER_ENV) or None
    if chosen is not None:
        folder = Path(chosen).expanduser()
        if not folder.is_dir():
            raise BackboneError(f"The T5 tokenizer folder {folder} (chosen for {what}) does not exist.",
                                f"Check the path ({T5_TOKENIZER_ENV} or the folder given), or leave it unset to "
                                "look in the usual places.")
        problem = t5_tokenizer_problem(folder, vocab)
        if problem:
            raise BackboneError(f"{problem[0].upper()}{problem[1:]}.", refuse)
        return folder
    for where, folder in t5_tokenizer_candidates(file, variant, family, near):
        if not looks_like_t5_tokenizer(folder):
            continue  # absent, or another tokenizer (SD3's tokenizer_2 is CLIP-G's)
        problem = t5_tokenizer_problem(folder, vocab)
        if problem:
            raise BackboneError(f"{problem[0].upper()}{problem[1:]} (found {where}).",
                                f"Move it away or replace it. {refuse}")
        return folder
    file = Path(file)
    beside = file.parent / "t5_tokenizer"
    roots = comfyui_roots(file)
    comfy = (f"ComfyUI users: this ComfyUI install ({roots[0]}) has no comfy/text_encoders/t5_tokenizer; update "
             "ComfyUI (it ships one) or copy that folder from a fresh ComfyUI download." if roots else
             "ComfyUI users: keep the model in ComfyUI's models folder and TransferStudio uses ComfyUI's own "
             "comfy/text_encoders/t5_tokenizer.")
    raise BackboneError(
        f"No T5 tokenizer was found for {what} (TransferStudio does not ship one and never downloads it).",
        f"{comfy} Otherwise copy the tokenizer_2 folder of the FLUX.1 diffusers download "
        f"(or the tokenizer_3 folder of an SD3 one) to {beside}, or set {T5_TOKENIZER_ENV} to such a folder; a "
        f"diffusers SD3 or FLUX download in the Hugging Face cache ({hf_hub_cache()}) is found by itself.")


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


def load_parts(file: Path, *, dtype: torch.dtype | None = None,
               t5_tokenizer: Path | str | None = None) -> dict[str, Any]:
    """Every component of an SD3/FLUX single file and its companions: the keyword arguments of
    the family backbone (transformer, vae, encoders, tokenizers, scheduler config, variant).
    BackboneError with advice for anything missing, fp8, or not fitting, or when no T5 tokenizer
    is found (`t5_tokenizer`: the folder to take it from; see find_t5_tokenizer). `dtype`: float32
    unless given."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTokenizer

    from transferstudio.backbones import _sd_common as sdc

    dtype = torch.float32 if dtype is None else dtype
    file = Path(file)
    found, parts = inspect_parts(file, t5_tokenizer=t5_tokenizer)
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
    for sub, where in tokenizer_folders(found, parts).items():
        tokenizers[sub] = load_t5_tokenizer(where) if where == parts.t5_tokenizer else \
            sdc.load_component(CLIPTokenizer, where, f"{sub.replace('_', ' ')} (loading files)")
    return {"transformer": transformer, "vae": vae, "encoders": encoders, "tokenizers": tokenizers,
            "scheduler_config": sdc.scheduler_config(folder), "variant": variant, "label": what,
            "pipeline_config": json.loads((folder / "model_index.json").read_text("utf-8")),
            "files": {"transformer": file, **({"vae": parts.vae.file} if parts.vae else {}),
                      **{n: p.file for n, p in parts.encoders.items() if p is not None},
                      "t5_tokenizer": parts.t5_tokenizer}}


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
    if parts.t5_tokenizer is not None:
        lines.append(("T5 tokenizer", str(parts.t5_tokenizer)))
    return lines


def sizes(parts: Parts | None, file: Path) -> int:
    files = {Path(file)}
    if parts is not None:
        files |= {p.file for p in [parts.vae, *parts.encoders.values()] if p is not None}
    return sum(f.stat().st_size for f in files if f.is_file())


__all__ = ["inspect_parts", "load_parts", "write_loading_files", "loading_problem", "search_folders",
           "find_t5_tokenizer", "t5_tokenizer_candidates", "t5_tokenizer_problem", "tokenizer_folders",
           "T5_TOKENIZER_ENV"]

