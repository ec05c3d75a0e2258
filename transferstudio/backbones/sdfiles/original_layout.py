"""Diffusers layout -> original single-file layout (what A1111, ComfyUI and Forge load).

Every key is mapped explicitly and an unmapped key is an error: a converter that guesses
would write a file that loads "successfully" with parts of the model in the wrong place.
The block indices are computed from the UNet config, so any SD 1.x/2.x/XL-shaped UNet maps.
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd1": {"text_encoder": ("clip", "cond_stage_model.transformer.")},
    "sd2": {"text_encoder": ("openclip", "cond_stage_model.model.")},
    "sdxl": {"text_encoder": ("clip", "conditioner.embedders.0.transformer."),
             "text_encoder_2": ("openclip", "conditioner.embedders.1.model.")},
}
_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
           ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def _state_dict(obj: Any) -> dict[str, torch.Tensor]:
    return dict(obj.state_dict()) if hasattr(obj, "state_dict") else dict(obj)


def _config(obj: Any, config: Mapping | None) -> Mapping:
    if config is not None:
        return config
    cfg = getattr(obj, "config", None)
    if cfg is None:
        raise ValueError("A UNet/VAE given as a state dict needs its config.")
    return cfg


def _sub_rename(rest: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def unet_prefix_map(config: Mapping) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, original prefix, is_resnet) for a UNet2DConditionModel config."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("Only UNets with the same number of layers in every block can be written.")
    n_down = len(config["down_block_types"])
    m: list[tuple[str, str, bool]] = [
        ("time_embedding.linear_1.", "time_embed.0.", False), ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False), ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False), ("conv_norm_out.", "out.0.", False), ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    for b in range(n_down):
        for j in range(layers):
            i = 1 + b * (layers + 1) + j
            m.append((f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{i}.0.", True))
            m.append((f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{i}.1.", False))
        if b < n_down - 1:
            m.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{1 + b * (layers + 1) + layers}.0.op.",
                      False))
    for b, kind in enumerate(config["up_block_types"]):
        has_attention = "CrossAttn" in kind
        for j in range(layers + 1):
            i = b * (layers + 1) + j
            m.append((f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{i}.0.", True))
            m.append((f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{i}.1.", False))
        last = b * (layers + 1) + layers
        m.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{last}.{2 if has_attention else 1}.conv.",
                  False))
    return m


def unet_to_original(unet: Any, config: Mapping | None = None) -> dict[str, torch.Tensor]:
    sd = _state_dict(unet)
    prefix_map = unet_prefix_map(_config(unet, config))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for dprefix, oprefix, is_resnet in prefix_map:
            if key.startswith(dprefix):
                rest = key[len(dprefix):]
                out[UNET_PREFIX + oprefix + (_sub_rename(rest, _RESNET) if is_resnet else rest)] = value
                break
        else:
            raise ValueError(f"UNet key '{key}' has no place in the original layout.")
    return out


def vae_to_original(vae: Any, config: Mapping | None = None) -> dict[str, torch.Tensor]:
    sd = _state_dict(vae)
    n_up = len(_config(vae, config)["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = None
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif re.match(r"(encoder\.|decoder\.)?(conv_in|conv_out|quant_conv|post_quant_conv)\.", key):
            new = key
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}"  # original counts up from the bottom
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            new = f"{m[1]}.mid.attn_1.{_sub_rename(m[2], _VAE_ATTN)}"
            if value.ndim == 2:  # original attention projections are 1x1 convs
                value = value.reshape(*value.shape, 1, 1)
        if new is None:
            raise ValueError(f"VAE key '{key}' has no place in the original layout.")
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[VAE_PREFIX + new] = value
    return out


def _text_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix; accept both."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue  # a buffer, not a weight
        out[k[len("text_model."):] if k.startswith("text_model.") else k] = v
    return out


def clip_to_original(text_encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    sd = _text_keys(_state_dict(text_encoder))
    out = {}
    for k, v in sd.items():
        if k == "text_projection.weight":
            continue  # CLIP-L in SD has no projection in the original file
        if not k.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            raise ValueError(f"Text encoder key '{k}' has no place in the original layout.")
        out[prefix + "text_model." + k] = v
    return out


_OPENCLIP = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
             ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj.")]


def openclip_to_original(text_encoder: Any, prefix: str, *, add_final_layer: bool = False,
                         extra: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel(WithProjection) -> open_clip layout with fused q/k/v `in_proj`.

    SD 2.x uses OpenCLIP-H's penultimate layer, so diffusers keeps 23 of its 24 layers.
    `add_final_layer` writes the dropped last layer (and the unused projection) from `extra` if
    given, else as an identity layer (all zeros: both residual branches add nothing), so tools
    expecting the full OpenCLIP model load a complete file.
    """
    sd = _text_keys(_state_dict(text_encoder))
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out[prefix + "ln_final." + k.split(".")[-1]] = v
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()  # open_clip multiplies x @ proj
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = v
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", k):
            rest = _sub_rename(m[2], _OPENCLIP)
            if rest == m[2]:
                raise ValueError(f"Text encoder key '{k}' has no place in the original layout.")
            out[f"{prefix}transformer.resblocks.{m[1]}.{rest}"] = v
        else:
            raise ValueError(f"Text encoder key '{k}' has no place in the original layout.")
    for (layer, kind), parts in sorted(qkv.items()):
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    if add_final_layer:
        present = {int(k[len(prefix):].split(".")[2]) for k in out if ".resblocks." in k}
        width = out[prefix + "token_embedding.weight"].shape[1]
        like = out[prefix + "token_embedding.weight"]
        ff = out[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        shapes = {"ln_1.weight": (width,), "ln_1.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
                  "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
                  "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
                  "mlp.c_fc.weight": (ff, width), "mlp.c_fc.bias": (ff,),
                  "mlp.c_proj.weight": (width, ff), "mlp.c_proj.bias": (width,)}
        for layer in (max(present) + 1,):
            for name, shape in shapes.items():
                key = f"{prefix}transformer.resblocks.{layer}.{name}"
                out[key] = extra[key] if extra and key in extra else like.new_zeros(shape)
        proj = prefix + "text_projection"
        if proj not in out:
            out[proj] = extra[proj] if extra and proj in extra else torch.eye(width, dtype=like.dtype)
    return out


def to_original_layout(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any = None, *, family: str,
                       unet_config: Mapping | None = None, vae_config: Mapping | None = None,
                       extra_tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """All components as one original-layout state dict (tensors shared, not copied)."""
    family = "sd2" if family == "sd2-v" else family
    if family not in TEXT_PREFIXES:
        raise ValueError(f"family must be one of sd1, sd2, sd2-v, sdxl, not {family!r}")
    out = unet_to_original(unet, unet_config)
    out.update(vae_to_original(vae, vae_config))
    encoders = {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for name, (style, prefix) in TEXT_PREFIXES[family].items():
        if encoders[name] is None:
            raise ValueError(f"{family} needs {name}.")
        if style == "clip":
            out.update(clip_to_original(encoders[name], prefix))
        else:
            out.update(openclip_to_original(encoders[name], prefix, add_final_layer=family == "sd2",
                                            extra=extra_tensors))
    for k, v in (extra_tensors or {}).items():
        out.setdefault(k, v)
    return out


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Stream tensors to a safetensors file one at a time (no whole-file copy in memory), atomically."""
    path = Path(path)
    items = []
    offset = 0
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    for name in sorted(tensors):
        t = tensors[name].detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if t.device.type != "cpu":
            t = t.cpu()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        items.append((name, t))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as safetensors does
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, t in items:
                if t.numel():
                    f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written checkpoint behind (disk full, Ctrl-C)
        raise
    return path


def save_single_file(path: str | Path, unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any = None, *,
                     family: str, dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None,
                     unet_config: Mapping | None = None, vae_config: Mapping | None = None,
                     extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a complete original-layout checkpoint. Components are modules or diffusers state dicts.

    family: sd1 | sd2 | sd2-v | sdxl ("sd2-v" also records v-prediction in the metadata, which
    TransferStudio's detection and other tools read).
    """
    tensors = to_original_layout(unet, vae, text_encoder, text_encoder_2, family=family,
                                 unet_config=unet_config, vae_config=vae_config, extra_tensors=extra_tensors)
    meta = {"format": "pt", "transferstudio.family": family}
    if family == "sd2-v":
        meta.update({"modelspec.prediction_type": "v", "modelspec.resolution": "768x768"})
    meta.update(metadata or {})
    return write_safetensors(path, tensors, dtype=dtype, metadata=meta)
