"""The original (reference-code) layout of the SD3 and FLUX.1 transformers, mapped to diffusers'.

One table per family says which diffusers modules each original layer is made of. The original
code fuses layers diffusers keeps apart — q, k and v in one `attn.qkv` (SD3's joint blocks,
FLUX's double blocks), and q, k, v with the MLP's input in FLUX's single blocks' `linear1` — and
stores some modulations as (shift, scale) where diffusers has (scale, shift). From the table come:

- single-file checkpoints read into diffusers models (`from_original`) and written back (`to_original`),
- kohya / ComfyUI LoRA names (`lora_unet_<original path with _>`), what ComfyUI maps for these
  models and what diffusers' kohya FLUX converter reads, with the fused layers described so a LoRA
  trained on diffusers' split layers is written as one LoRA of the fused layer.

Tables are built from a model's own parameter names and shapes, so they fit any size (the tiny
test models as well as the released ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

KOHYA_PREFIX = "lora_unet_"


@dataclass(frozen=True)
class Layer:
    original: str  # original module path ("" for a top-level parameter such as SD3's pos_embed)
    parts: tuple[str, ...]  # diffusers module paths, in the original layer's row order
    rows: tuple[int, ...]  # output rows of each part
    params: tuple[tuple[str, str], ...] = (("weight", "weight"), ("bias", "bias"))  # (diffusers, original)
    swap: bool = False  # the original keeps the two halves of the rows the other way round

    def original_key(self, param: str) -> str:
        return f"{self.original}.{param}" if self.original else param

    @property
    def kohya_name(self) -> str:
        return KOHYA_PREFIX + self.original.replace(".", "_")


class LayoutError(ValueError):
    """The weights do not fit the layout (a different or damaged model)."""


def _table(entries: Iterable[tuple], shapes: Mapping[str, tuple[int, ...]]) -> list[Layer]:
    """Layers from (original, parts[, params[, swap]]) entries, keeping those whose diffusers
    modules exist in `shapes` (a model's parameter name -> shape)."""
    out = []
    for entry in entries:
        original, parts = entry[0], tuple(entry[1])
        params = tuple(entry[2]) if len(entry) > 2 and entry[2] else (("weight", "weight"), ("bias", "bias"))
        swap = bool(entry[3]) if len(entry) > 3 else False
        present = [p for p in parts if f"{p}.{params[0][0]}" in shapes]
        if not present:
            continue
        if len(present) != len(parts):
            raise LayoutError(f"the model has only some of {', '.join(parts)}")
        params = tuple((d, o) for d, o in params if f"{parts[0]}.{d}" in shapes)
        rows = tuple(int(shapes[f"{p}.{params[0][0]}"][0]) for p in parts)
        out.append(Layer(original, parts, rows, params, swap))
    return out


def _count(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    return max(found) + 1 if found else 0


# --- SD3 / SD3.5 (MMDiT) ----------------------------------------------------------------------

def sd3_layers(shapes: Mapping[str, tuple[int, ...]]) -> list[Layer]:
    """SD3's layers (diffusers SD3Transformer2DModel <-> Stability's MMDiT `joint_blocks`)."""
    norm = (("weight", "weight"),)
    entries: list[tuple] = [
        ("", ["pos_embed"], (("pos_embed", "pos_embed"),)),
        ("x_embedder.proj", ["pos_embed.proj"]),
        ("t_embedder.mlp.0", ["time_text_embed.timestep_embedder.linear_1"]),
        ("t_embedder.mlp.2", ["time_text_embed.timestep_embedder.linear_2"]),
        ("y_embedder.mlp.0", ["time_text_embed.text_embedder.linear_1"]),
        ("y_embedder.mlp.2", ["time_text_embed.text_embedder.linear_2"]),
        ("context_embedder", ["context_embedder"]),
        ("final_layer.linear", ["proj_out"]),
        ("final_layer.adaLN_modulation.1", ["norm_out.linear"], None, True),
    ]
    blocks = _count(shapes, "transformer_blocks.")
    for i in range(blocks):
        d, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = f"{d}attn.to_add_out.weight" not in shapes  # context_pre_only: the context stream ends here
        entries += [
            (o + "x_block.attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]),
            (o + "context_block.attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]),
            (o + "x_block.attn.ln_q", [d + "attn.norm_q"], norm),
            (o + "x_block.attn.ln_k", [d + "attn.norm_k"], norm),
            (o + "context_block.attn.ln_q", [d + "attn.norm_added_q"], norm),
            (o + "context_block.attn.ln_k", [d + "attn.norm_added_k"], norm),
            (o + "x_block.attn.proj", [d + "attn.to_out.0"]),
            (o + "context_block.attn.proj", [d + "attn.to_add_out"]),
            (o + "x_block.attn2.qkv", [d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"]),
            (o + "x_block.attn2.ln_q", [d + "attn2.norm_q"], norm),
            (o + "x_block.attn2.ln_k", [d + "attn2.norm_k"], norm),
            (o + "x_block.attn2.proj", [d + "attn2.to_out.0"]),
            (o + "x_block.adaLN_modulation.1", [d + "norm1.linear"]),
            (o + "context_block.adaLN_modulation.1", [d + "norm1_context.linear"], None, last),
            (o + "x_block.mlp.fc1", [d + "ff.net.0.proj"]),
            (o + "x_block.mlp.fc2", [d + "ff.net.2"]),
            (o + "context_block.mlp.fc1", [d + "ff_context.net.0.proj"]),
            (o + "context_block.mlp.fc2", [d + "ff_context.net.2"]),
        ]
    return _table(entries, shapes)


# --- FLUX.1 -------------------------------------------------------------------------------------

def flux_layers(shapes: Mapping[str, tuple[int, ...]]) -> list[Layer]:
    """FLUX.1's layers (diffusers FluxTransformer2DModel <-> Black Forest Labs' `double_blocks` /
    `single_blocks`)."""
    scale = (("weight", "scale"),)
    entries: list[tuple] = [
        ("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
        ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
        ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"]),
        ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"]),
        ("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
        ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"]),
        ("txt_in", ["context_embedder"]),
        ("img_in", ["x_embedder"]),
        ("final_layer.linear", ["proj_out"]),
        ("final_layer.adaLN_modulation.1", ["norm_out.linear"], None, True),
    ]
    for i in range(_count(shapes, "transformer_blocks.")):
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        entries += [
            (o + "img_mod.lin", [d + "norm1.linear"]),
            (o + "txt_mod.lin", [d + "norm1_context.linear"]),
            (o + "img_attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]),
            (o + "txt_attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]),
            (o + "img_attn.norm.query_norm", [d + "attn.norm_q"], scale),
            (o + "img_attn.norm.key_norm", [d + "attn.norm_k"], scale),
            (o + "txt_attn.norm.query_norm", [d + "attn.norm_added_q"], scale),
            (o + "txt_attn.norm.key_norm", [d + "attn.norm_added_k"], scale),
            (o + "img_attn.proj", [d + "attn.to_out.0"]),
            (o + "txt_attn.proj", [d + "attn.to_add_out"]),
            (o + "img_mlp.0", [d + "ff.net.0.proj"]),
            (o + "img_mlp.2", [d + "ff.net.2"]),
            (o + "txt_mlp.0", [d + "ff_context.net.0.proj"]),
            (o + "txt_mlp.2", [d + "ff_context.net.2"]),
        ]
    for i in range(_count(shapes, "single_transformer_blocks.")):
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        entries += [
            (o + "modulation.lin", [d + "norm.linear"]),
            (o + "linear1", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"]),
            (o + "norm.query_norm", [d + "attn.norm_q"], scale),
            (o + "norm.key_norm", [d + "attn.norm_k"], scale),
            (o + "linear2", [d + "proj_out"]),
        ]
    return _table(entries, shapes)


LAYOUTS = {"sd3": sd3_layers, "flux": flux_layers}


def layers_of(kind: str, shapes: Mapping[str, tuple[int, ...]]) -> list[Layer]:
    return LAYOUTS[kind](shapes)


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


# --- whole state dicts -------------------------------------------------------------------------

def to_original(state: Mapping[str, torch.Tensor], layers: list[Layer]) -> dict[str, torch.Tensor]:
    """A diffusers transformer state dict in the original layout (no `model.diffusion_model.` prefix)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for layer in layers:
        for dparam, oparam in layer.params:
            keys = [f"{p}.{dparam}" for p in layer.parts]
            t = torch.cat([state[k] for k in keys], dim=0) if len(keys) > 1 else state[keys[0]]
            out[layer.original_key(oparam)] = _swap_halves(t) if layer.swap else t
            used.update(keys)
    left = sorted(set(state) - used)
    if left:
        raise LayoutError(f"{len(left)} weights have no place in the original layout, e.g. {left[0]}")
    return out


def from_original(state: Mapping[str, torch.Tensor], layers: list[Layer]) -> dict[str, torch.Tensor]:
    """Original-layout weights (prefix already removed) -> the diffusers state dict `layers` describe.
    LayoutError when a weight is missing, left over, or of the wrong size."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for layer in layers:
        for dparam, oparam in layer.params:
            key = layer.original_key(oparam)
            if key not in state:
                raise LayoutError(f"the file has no {key}")
            t = state[key]
            if layer.swap:
                t = _swap_halves(t)
            if t.shape[0] != sum(layer.rows):
                raise LayoutError(f"{key} has {t.shape[0]} rows where this model has {sum(layer.rows)}")
            pieces = torch.split(t, list(layer.rows), dim=0) if len(layer.parts) > 1 else (t,)
            for part, piece in zip(layer.parts, pieces):
                out[f"{part}.{dparam}"] = piece
            used.add(key)
    left = sorted(set(state) - used)
    if left:
        raise LayoutError(f"{len(left)} weights of the file do not belong to this model, e.g. {left[0]}")
    return out


# --- kohya / ComfyUI LoRA names -----------------------------------------------------------------

def kohya_names(paths: Iterable[str], layers: list[Layer]) -> dict[str, str]:
    """Adapted diffusers module path -> kohya name of the original layer holding it (several paths
    share a name when they are parts of one fused layer). KeyError for a path with no original layer."""
    where = {part: layer for layer in layers for part in layer.parts}
    out = {}
    for path in paths:
        layer = where.get(path)
        if layer is None or not layer.original:
            raise KeyError(path)
        out[path] = layer.kohya_name
    return out


def fused_layers(paths: Iterable[str], layers: list[Layer]) -> dict[str, dict]:
    """For the adapted `paths`, the kohya names whose LoRA must be assembled from several diffusers
    modules or written with swapped halves: name -> {"parts": ((path, rows), ...), "swap": bool}."""
    wanted = set(paths)
    out = {}
    for layer in layers:
        if not wanted & set(layer.parts) or (len(layer.parts) == 1 and not layer.swap):
            continue
        out[layer.kohya_name] = {"parts": tuple(zip(layer.parts, layer.rows)), "swap": layer.swap}
    return out
