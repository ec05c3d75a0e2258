"""Tell what a model file is from its safetensors header alone.

Only the 8-byte length and the JSON header are read, never tensor data, so scanning a
folder of 7 GB checkpoints stays fast. Stdlib only: the library scan must not need torch.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from transferstudio.core.errors import BackboneError

FAMILY_LABELS = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
    "sdxl-refiner": "Stable Diffusion XL refiner",
    "ddpm": "Unconditional DDPM",
    "sd3": "Stable Diffusion 3",
    "flux": "FLUX.1",
}
# SD3 / FLUX single files: variant (the folder under resources/loading with their configs) -> label
FLOW_VARIANTS = {
    "sd3-medium": "Stable Diffusion 3 medium",
    "sd3.5-medium": "Stable Diffusion 3.5 medium",
    "sd3.5-large": "Stable Diffusion 3.5 large",
    "flux-dev": "FLUX.1 dev",
    "flux-schnell": "FLUX.1 schnell",
}
# Text encoders an SD3 file may carry inside it (ComfyUI's all-in-one files)
SD3_TEXT_PREFIXES = {"text_encoder": "text_encoders.clip_l.transformer.",
                     "text_encoder_2": "text_encoders.clip_g.transformer.",
                     "text_encoder_3": "text_encoders.t5xxl.transformer."}

# Bytes per element of each safetensors dtype (used to check the header against the file size).
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# Real headers are a few hundred KB; anything huge is a corrupt length field.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
V_PREDICTION_HOW = (
    "Stable Diffusion 2.x 768 models (such as 2.0-v and 2.1 768) predict 'v' and cannot be told "
    "apart from 512 models by their weights: say so with --v-prediction on the command line "
    "(or the 'v-prediction model' checkbox)."
)

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD1 = "cond_stage_model.transformer."
OPENCLIP_SD2 = "cond_stage_model.model."
SDXL_TE1 = "conditioner.embedders.0.transformer."
SDXL_TE2 = "conditioner.embedders.1.model."
REFINER_TE = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    file_bytes: int


@dataclass(frozen=True)
class Detection:
    """What a file is. `problems` empty and kind == "checkpoint" means it can be loaded."""

    kind: str  # checkpoint | vae | lora | unknown
    family: str | None  # sd1 | sd2 | sdxl | sdxl-refiner (None when not a base model)
    label: str
    prediction_type: str | None  # epsilon | v_prediction (checkpoints only)
    native_resolution: int | None
    problems: tuple[str, ...] = ()
    advice: str = ""
    inpainting: bool = False
    config_key: str | None = None  # folder under resources/loading to load it with
    components: tuple[str, ...] = ()  # unet, vae, text_encoder, text_encoder_2
    dtype: str | None = None
    size_bytes: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.kind == "checkpoint" and not self.problems

    def raise_if_unusable(self) -> None:
        if not self.usable:
            message = self.problems[0] if self.problems else f"{self.label} is not a base model."
            raise BackboneError(message, self.advice)


# The one width-to-version rule: the text encoder's width (the UNet's cross-attention width).
TEXT_WIDTH_VARIANTS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def variant_of_text_width(width: Any, *, sdxl: bool = True) -> str | None:
    """sd1 / sd2 / sdxl from the text width, None for widths no released model has."""
    found = TEXT_WIDTH_VARIANTS.get(width)
    return None if found == "sdxl" and not sdxl else found


def _looks_like_pickle(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch pickle archive"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a pickle file"
    return None


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header; raise BackboneError with one clear sentence if broken."""
    path = Path(path)
    name = path.name
    if not path.exists():
        raise BackboneError(f"'{path}' does not exist.", "Check the path, or pick the file again.")
    if path.is_dir():
        raise BackboneError(f"'{name}' is a folder, not a model file.",
                            "Pick the .safetensors file, or add the folder as a diffusers model.")
    size = path.stat().st_size
    if size == 0:
        raise BackboneError(f"'{name}' is empty (0 bytes).",
                            "The download or copy probably failed; get the file again.")
    with path.open("rb") as f:
        head = f.read(9)
        if len(head) < 9:
            raise BackboneError(f"'{name}' is only {size} bytes long, too short to be a model.",
                                "Get the file again.")
        kind = _looks_like_pickle(head)
        # A pickle suffix counts only when the content is not a safetensors header ("{" after the length).
        if kind is not None or (path.suffix.lower() in PICKLE_SUFFIXES and head[8:9] != b"{"):
            raise BackboneError(
                f"'{name}' is {kind or 'a pickle file'}, which can run code when opened, so "
                "TransferStudio does not open it directly.",
                "Convert it once with 'transferstudio convert-pickle FILE' (reads tensors only and "
                "refuses anything else), or download the .safetensors version of the model.")
        if head[:4] == b"GGUF":
            raise BackboneError(f"'{name}' is a quantized GGUF file, which cannot be fine-tuned here.",
                                "Use the .safetensors version of the model.")
        (n,) = struct.unpack("<Q", head[:8])
        if n == 0 or n > _MAX_HEADER_BYTES or 8 + n > size:
            raise BackboneError(
                f"'{name}' is not a valid safetensors file: its header claims {n:,} bytes but the "
                f"file has only {size:,}.",
                "The file is damaged or not a safetensors file; get it again.")
        raw = head[8:] + f.read(n - 1)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BackboneError(f"'{name}' is not a safetensors file (its header is not readable JSON).",
                            "Check that this is a model file; get it again if it should be.") from None
    if not isinstance(header, dict):
        raise BackboneError(f"'{name}' is not a safetensors file (unexpected header).",
                            "Get the file again.")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for key, info in header.items():
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BackboneError(f"'{name}' has a damaged header (entry '{key}' is malformed).",
                                "Get the file again.") from None
        itemsize = _DTYPE_SIZES.get(dtype)
        if itemsize is None or end < begin or (end - begin) != math.prod(shape) * itemsize:
            raise BackboneError(f"'{name}' has a damaged header (tensor '{key}' has the wrong size).",
                                "Get the file again.")
        tensors[key] = TensorInfo(dtype, shape)
        data_end = max(data_end, end)
    expected = 8 + n + data_end
    if size < expected:
        raise BackboneError(
            f"'{name}' is truncated: it should be {expected:,} bytes but is {size:,}.",
            "The download probably stopped early; download it again.")
    if size > expected:
        raise BackboneError(
            f"'{name}' has {size - expected:,} unexpected bytes after its data; it is damaged.",
            "Get the file again.")
    if not isinstance(metadata, dict):
        metadata = {}
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in metadata.items()}, n, size)


def _unknown(label: str, problem: str, advice: str = "", **kw: Any) -> Detection:
    return Detection("unknown", None, label, None, None, (problem,), advice, **kw)


def _dominant_dtype(tensors: Mapping[str, TensorInfo]) -> str | None:
    counts: dict[str, int] = {}
    for t in tensors.values():
        counts[t.dtype] = counts.get(t.dtype, 0) + math.prod(t.shape)
    return max(counts, key=counts.get) if counts else None


def _lora_family(keys: list[str], tensors: Mapping[str, TensorInfo]) -> str | None:
    if any("double_blocks" in k or "single_blocks" in k or "single_transformer_blocks" in k for k in keys):
        return "flux"
    if any("joint_blocks" in k for k in keys):
        return "sd3"
    if any(k.startswith("transformer.transformer_blocks.") for k in keys):
        return None  # a diffusers SD3 or FLUX (double blocks only) LoRA: their names do not say which
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl"
    # The cross-attention key projection's input width is the text width: 768 / 1024 / 2048.
    for k in keys:
        if "attn2" in k and "to_k" in k and ("lora_down" in k or "lora_A" in k or "lora.down" in k):
            width = tensors[k].shape[-1]
            return variant_of_text_width(width)
    return None


FP8_ADVICE = ("Fine-tuning needs the full-precision file (bf16 or fp16, e.g. flux1-dev.safetensors or "
              "sd3.5_large.safetensors) or the model's diffusers folder; fp8 files are smaller copies for "
              "making pictures only.")


def _other_architecture(keys: list[str], size: int, tensors: Mapping[str, TensorInfo] | None = None,
                        name: str = "This file", meta: Mapping[str, str] | None = None) -> Detection | None:
    """SD3 and FLUX transformers (their original layout, with or without `model.diffusion_model.`)."""
    tensors = tensors or {}
    prefix = UNET if any(k.startswith((UNET + "joint_blocks.", UNET + "double_blocks.")) for k in keys) else ""
    has = lambda k: prefix + k in tensors  # noqa: E731
    if any(k.startswith(prefix + "joint_blocks.") for k in keys):
        family = "sd3"
        if not (has("x_embedder.proj.weight") and has("final_layer.linear.weight")):
            return _unknown("Stable Diffusion 3", f"{name} holds only part of a Stable Diffusion 3 model.",
                            "Pick the whole model file (its transformer at least).", size_bytes=size)
        variant = "sd3.5-medium" if any(".x_block.attn2." in k for k in keys) else \
            "sd3.5-large" if any(".attn.ln_q." in k for k in keys) else "sd3-medium"
    elif any(k.startswith(prefix + "double_blocks.") for k in keys):
        family = "flux"
        if not (has("img_in.weight") and has("final_layer.linear.weight")):
            return _unknown("FLUX", f"{name} holds only part of a FLUX model.",
                            "Pick the whole transformer file (e.g. flux1-dev.safetensors).", size_bytes=size)
        variant = "flux-dev" if has("guidance_in.in_layer.weight") else "flux-schnell"
    else:
        return None
    own = {k: t for k, t in tensors.items() if k.startswith(prefix) and not k.startswith(
        ("first_stage_model.", "text_encoders.", "vae."))}
    dtype = _dominant_dtype(own)
    problems: list[str] = []
    advice: list[str] = []
    if dtype and dtype.startswith("F8") or "scaled_fp8" in tensors or prefix + "scaled_fp8" in tensors:
        problems.append(f"{name} stores its weights as 8-bit floats (fp8), which cannot be fine-tuned.")
        advice.append(FP8_ADVICE)
    if family == "flux":
        channels = tensors[prefix + "img_in.weight"].shape[-1]
        if channels in (128, 384):
            kind = "Fill (inpainting)" if channels == 384 else "Depth/Canny"
            problems.append(f"{name} is a FLUX.1 {kind} model, which takes a picture besides the prompt; it is not "
                            "a text-to-image model to fine-tune.")
            advice.append("Use FLUX.1 dev or schnell.")
        said = " ".join([name.lower(), *(str(v).lower() for k, v in (meta or {}).items()
                                           if k in ("modelspec.architecture", "modelspec.title"))])
        other = "schnell" if variant == "flux-dev" else "dev"
        if other in said and variant.split("-")[1] not in said:
            advice.append(f"Its name says {other}, but its weights are {FLOW_VARIANTS[variant]} ("
                          + ("they take a guidance input" if variant == "flux-dev" else "no guidance input")
                          + f"): it is loaded as {FLOW_VARIANTS[variant]}.")
    components = ["transformer"]
    if any(k.startswith(("first_stage_model.", "vae.")) for k in keys):
        components.append("vae")
    if family == "sd3":
        components += [c for c, p in SD3_TEXT_PREFIXES.items() if any(k.startswith(p) for k in keys)]
    return Detection("checkpoint", family, FLOW_VARIANTS[variant], "flow", 1024, tuple(problems), " ".join(advice),
                     config_key=variant, components=tuple(components), dtype=dtype, size_bytes=size,
                     metadata=dict(meta or {}))


def _classify_non_checkpoint(keys: list[str], tensors: Mapping[str, TensorInfo], size: int,
                             name: str = "This file", meta: Mapping[str, str] | None = None) -> Detection | None:
    lora_marks = ("lora_down", "lora_up", "lora_A", "lora_B", ".lora.", "hada_w1", "lokr_w1", ".alpha")
    if any(k.startswith("lora_") for k in keys) or any(m in k for k in keys for m in lora_marks[:7]):
        fmt = "kohya" if any(k.startswith("lora_") for k in keys) else "diffusers/PEFT"
        if any(m in k for k in keys for m in ("hada_w1", "lokr_w1")):
            fmt = "LyCORIS"
        fam = _lora_family(keys, tensors)
        label = f"LoRA ({fmt} format)" + (f" for {FAMILY_LABELS[fam]}" if fam else "")
        return Detection(
            "lora", None, label, None, None,
            ("This is a LoRA, not a base model: it only holds changes to apply on top of one.",),
            "Pick the base model it was trained on"
            + (f" (a {FAMILY_LABELS[fam]} checkpoint)" if fam else "")
            + "; LoRA files are for loading after training, not for starting one.",
            size_bytes=size)
    vae_orig = {"encoder.conv_in.weight", "decoder.conv_out.weight"}
    vae_diff = {"encoder.conv_in.weight", "decoder.conv_out.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"}
    if vae_orig <= set(keys) or vae_diff <= set(keys) or (
            keys and all(k.startswith(VAE) for k in keys)):
        return Detection(
            "vae", None, "VAE (image autoencoder)", None, None,
            ("This is a VAE, not a base model: it only turns images into latents and back.",),
            "Pick a full checkpoint (UNet + VAE + text encoder) as the base model.",
            size_bytes=size)
    if any(k.startswith("control_model.") or k.startswith("controlnet_") for k in keys):
        return _unknown("ControlNet", "This is a ControlNet, not a base model.",
                        "Pick a full Stable Diffusion checkpoint as the base model.", size_bytes=size)
    if {"emb_params"} <= set(keys) or {"string_to_param.*"} <= set(keys) or (
            keys and set(keys) <= {"clip_l", "clip_g", "emb_params", "string_to_param.*", "string_to_token.*"}):
        return _unknown("Textual-inversion embedding", "This is a textual-inversion embedding, not a base model.",
                        "Pick a full Stable Diffusion checkpoint as the base model.", size_bytes=size)
    other = _other_architecture(keys, size, tensors, name, meta)
    if other is not None:
        return other
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return _unknown("Diffusers UNet weights", "This is one part (a UNet) of a diffusers model folder.",
                        "Add the whole diffusers folder (the one holding model_index.json) instead.",
                        size_bytes=size)
    if any(k.startswith(("text_model.", "embeddings.token_embedding")) for k in keys):
        return _unknown("Text encoder weights", "This is only a text encoder, not a base model.",
                        "Pick a full checkpoint as the base model.", size_bytes=size)
    return None


def classify(header: SafetensorsHeader, *, name: str = "This file", prediction_type: str | None = None,
             expected_family: str | None = None) -> Detection:
    """Classify a validated header. Pure function: tests feed it synthetic headers."""
    tensors = header.tensors
    keys = list(tensors)
    size = header.file_bytes
    dtype = _dominant_dtype(tensors)
    meta = header.metadata
    if not any(k.startswith(UNET) for k in keys):
        other = _classify_non_checkpoint(keys, tensors, size, name, meta)
        if other is not None:
            return _expected(other, expected_family, name)
        return _unknown("Unknown model", f"{name} is a safetensors file, but not a model TransferStudio knows.",
                        "Pick a Stable Diffusion 1.x, 2.x or XL checkpoint.", size_bytes=size)
    other = _other_architecture(keys, size, tensors, name, meta)
    if other is not None:
        return _expected(other, expected_family, name)

    conv_in = tensors.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in.shape) != 4:
        return _unknown("Unknown checkpoint", f"{name} holds a diffusion model of an unknown kind.",
                        "Pick a Stable Diffusion 1.x, 2.x or XL checkpoint.", size_bytes=size, dtype=dtype)
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    problems: list[str] = []
    advice: list[str] = []
    components = ["unet"]

    # The text-encoder layout names the family; widths decide only for files without one.
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    adm = UNET + "label_emb.0.0.weight" in tensors
    if has(SDXL_TE2) or (adm and has(SDXL_TE1)):
        family = "sdxl"
    elif has(REFINER_TE):
        family = "sdxl-refiner"
    elif adm:
        family = "sdxl-refiner" if model_channels == 384 else "sdxl"
    elif has(CLIP_SD1):
        family = "sd1"
    elif has(OPENCLIP_SD2):
        family = "sd2"
    else:
        to_k = tensors.get(UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
        width = to_k.shape[-1] if to_k is not None else None
        family = variant_of_text_width(width, sdxl=False)
        if family is None:
            if UNET + "input_blocks.10.0.skip_connection.bias" in tensors:
                return _unknown("Stable Diffusion upscaler", "Upscaler models are not supported.",
                                "Pick a Stable Diffusion 1.x, 2.x or XL checkpoint.", size_bytes=size)
            return _unknown("Unknown checkpoint",
                            f"{name} holds a UNet of an unknown layout (cross-attention width {width}).",
                            "Pick a Stable Diffusion 1.x, 2.x or XL checkpoint.", size_bytes=size, dtype=dtype)

    if any(k.startswith(VAE) for k in keys):
        components.append("vae")
    te_prefixes = {
        "sd1": [(CLIP_SD1, "text_encoder")],
        "sd2": [(OPENCLIP_SD2, "text_encoder")],
        "sdxl": [(SDXL_TE1, "text_encoder"), (SDXL_TE2, "text_encoder_2")],
        "sdxl-refiner": [(REFINER_TE, "text_encoder_2")],
    }[family]
    for prefix, comp in te_prefixes:
        if any(k.startswith(prefix) for k in keys):
            components.append(comp)
    missing = [c for c in ("vae", *(c for _, c in te_prefixes)) if c not in components]
    if missing:
        names = {"vae": "the VAE", "text_encoder": "the text encoder", "text_encoder_2": "the second text encoder"}
        problems.append(f"{name} holds only part of the model: {' and '.join(names[m] for m in missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing.")
        advice.append("Use the full checkpoint (most model pages offer a 'full' or 'pruned' file with everything).")

    inpainting = in_channels == 9
    if inpainting:
        problems.append("This is an inpainting model (its UNet takes 9 input channels: latents, mask and "
                        "masked image), which TransferStudio cannot fine-tune as an image generator.")
        advice.append("Use the ordinary (non-inpainting) version of the model.")
    elif in_channels != 4:
        problems.append(f"This model's UNet takes {in_channels} input channels (an edit/instruct model), "
                        "not the 4 of a text-to-image model.")
        advice.append("Use an ordinary text-to-image checkpoint.")

    # Prediction type: user override > markers in the file > epsilon.
    pred = prediction_type
    hint = (meta.get("modelspec.prediction_type") or meta.get("prediction_type") or "").lower()
    if pred is None and ("v_pred" in tensors or hint in {"v", "v_prediction", "v-prediction"}):
        pred = "v_prediction"
    if pred is None:
        pred = "epsilon"
    if pred not in {"epsilon", "v_prediction"}:
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {pred!r}")

    if family == "sd1":
        resolution = 512
    elif family == "sd2":
        resolution = 768 if pred == "v_prediction" else 512
    else:
        resolution = 1024
    res_hint = meta.get("modelspec.resolution", "")
    if "x" in res_hint:
        try:
            resolution = int(res_hint.lower().split("x")[0])
        except ValueError:
            pass

    if family == "sd2" and pred == "epsilon" and prediction_type is None:
        advice.append(V_PREDICTION_HOW)
    if family == "sdxl-refiner":
        problems.append("This is the SDXL refiner, which only polishes finished images; it is not a base "
                        "model to fine-tune.")
        advice.append("Use an SDXL base checkpoint.")

    config_key = "sd2-v" if family == "sd2" and pred == "v_prediction" else family
    label = FAMILY_LABELS[family] + (" inpainting" if inpainting else "")
    if pred == "v_prediction":
        label += " (v-prediction)"
    if expected_family is not None and expected_family != family:
        problems.insert(0, f"This is a {FAMILY_LABELS[family]} model, but "
                           f"{FAMILY_LABELS.get(expected_family, expected_family)} is expected here.")
        advice.insert(0, f"Pick a {FAMILY_LABELS.get(expected_family, expected_family)} model, or start a new "
                         "project for this one.")
    return Detection("checkpoint", family, label, pred, resolution, tuple(problems), " ".join(advice),
                     inpainting=inpainting, config_key=config_key, components=tuple(components),
                     dtype=dtype, size_bytes=size, metadata=dict(meta))


def _expected(found: Detection, expected_family: str | None, name: str) -> Detection:
    """An SD3/FLUX file where another family is expected: said first, as for the SD families."""
    if expected_family is None or found.kind != "checkpoint" or found.family == expected_family:
        return found
    what = FAMILY_LABELS.get(expected_family, expected_family)
    return replace(found, problems=(f"This is a {found.label} model, but {what} is expected here.", *found.problems),
                   advice=f"Pick a {what} model, or start a new project for this one. {found.advice}".strip())


def detect(path: str | Path, *, prediction_type: str | None = None,
           expected_family: str | None = None) -> Detection:
    """Detect what `path` is. Never raises for bad files: they come back with `problems`."""
    path = Path(path)
    try:
        header = read_safetensors_header(path)
    except BackboneError as e:
        size = path.stat().st_size if path.is_file() else 0
        return Detection("unknown", None, "Unreadable file", None, None, (e.message,), e.advice,
                         size_bytes=size)
    return classify(header, name=f"'{path.name}'", prediction_type=prediction_type,
                    expected_family=expected_family)
