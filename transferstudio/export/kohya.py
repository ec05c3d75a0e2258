"""peft LoRA weights -> the kohya layout ComfyUI, A1111/Forge and diffusers' kohya loader read.

One module per adapted layer, named `lora_unet_<path>` / `lora_te_<path>` (SD 1.x/2.x) or
`lora_te1_` / `lora_te2_` (SDXL), the path's dots written as underscores, with
`<name>.lora_down.weight` (peft's A), `<name>.lora_up.weight` (peft's B) and `<name>.alpha`
(a 0-d tensor: the loaders scale by alpha / rank, so it must be the alpha trained with).

UNet paths: SD 1.x/2.x use the diffusers module path (what kohya's sd-scripts trains on, and
what A1111/ComfyUI convert for those families); SDXL uses the original `input_blocks` /
`middle_block` / `output_blocks` layout (sd-scripts trains SDXL on that UNet, and A1111 does
not map diffusers-style SDXL names). The original-layout names come from the model library's
diffusers -> original mapping, so there is one mapping in the program, not two.

Conv LoRA keeps its 4-D tensors (down: r x in x k x k, up: out x r x 1 x 1, as LoCon writes
them). DoRA's magnitude becomes `<name>.dora_scale`, shaped (out, 1[, 1, 1]) — the per-output-
channel norm LyCORIS writes and ComfyUI recognises by `dora_scale.shape[0] == out`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from transferstudio.core.errors import ExportError

UNET_PREFIX = "lora_unet_"
_A, _B, _MAG = ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"


@dataclass(frozen=True)
class KohyaModule:
    """One adapted layer as written (for metadata and tests)."""

    name: str  # e.g. lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q
    role: str  # unet | text_encoder | text_encoder_2
    source: str  # the diffusers/transformers module path it came from
    rank: int
    alpha: float
    conv: bool
    dora: bool


def _modules(state: Mapping[str, torch.Tensor], role: str) -> dict[str, dict[str, torch.Tensor]]:
    """peft keys grouped by module path: {path: {"A": .., "B": .., "M": ..}}; anything else refused."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.")
        for suffix, part in ((_A, "A"), (_B, "B"), (_MAG, "M")):
            if key.endswith(suffix):
                out.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            # lora_bias, embedding LoRA, trainable tokens…: no loader reads these in kohya files.
            raise ExportError(f"The {role} adapter has a weight the kohya format cannot hold ({key}).",
                              "Export in the diffusers format instead.")
    for path, parts in out.items():
        if "A" not in parts or "B" not in parts:
            raise ExportError(f"The {role} adapter is incomplete at {path}.",
                              "The checkpoint may be damaged; export an earlier one.")
    return out


def unet_module_names(paths: list[str], family: str, unet_config: Mapping[str, Any] | None) -> dict[str, str]:
    """diffusers UNet module path -> kohya module name (without the `.lora_down…` part), as the
    family with key `family` names them."""
    from transferstudio.backbones.registry import family as family_of

    try:
        return family_of(family).kohya_unet_names(paths, unet_config)
    except (KeyError, NotImplementedError):
        raise ExportError(f"The kohya format has no naming for a '{family}' model.",
                          "Export in the diffusers format instead.") from None


def text_module_name(path: str, prefix: str) -> str:
    # transformers 5 flattens CLIPTextModel (no `text_model.`); every loader expects it.
    if not path.startswith(("text_model.", "text_projection")):
        path = "text_model." + path
    return prefix + path.replace(".", "_")


def kohya_alpha(config: Any, path: str, rank: int) -> float:
    """The alpha a kohya loader needs for this module to scale like peft did in training.

    kohya scales by alpha / rank. peft scales by lora_alpha / r (or / sqrt(r) with rsLoRA), with
    per-module overrides in alpha_pattern; the effective scale times the rank is kohya's alpha."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    alpha = float(cfg.get("lora_alpha", cfg.get("alpha", rank)))
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if path == pattern or path.endswith("." + pattern):
            alpha = float(value)
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return scale * rank


def to_kohya(states: Mapping[str, Mapping[str, torch.Tensor]], configs: Mapping[str, Any], *,
             unet_names: Callable[[list[str]], dict[str, str]] | None = None,
             text_prefixes: Mapping[str, str] | None = None, family: str | None = None,
             unet_config: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None,
             ) -> tuple[dict[str, torch.Tensor], list[KohyaModule]]:
    """peft state dicts by role ("unet", "text_encoder", "text_encoder_2") -> kohya tensors.

    Names come from the model's spec: `unet_names` (its `kohya_unet_names`) and `text_prefixes`
    (role -> prefix), or from the registered family with key `family`. `configs[role]` is the
    role's peft LoraConfig (or its dict). Raises ExportError for weights the format cannot hold
    and for two layers that would get the same name."""
    if unet_names is None:
        key = family or ""
        unet_names = lambda paths: unet_module_names(paths, key, unet_config)  # noqa: E731
        if text_prefixes is None and family is not None:
            from transferstudio.backbones.registry import family as family_of

            text_prefixes = family_of(family).kohya_text_prefixes()
    text_prefixes = dict(text_prefixes or {})
    tensors: dict[str, torch.Tensor] = {}
    modules: list[KohyaModule] = []
    for role, state in states.items():
        if not state:
            continue
        groups = _modules(state, role)
        if role == "unet":
            names = unet_names(sorted(groups))
        else:
            prefix = text_prefixes.get(role)
            if prefix is None:
                raise ExportError(f"The kohya format has no place for a '{role}' adapter on this model.",
                                  "Export in the diffusers format instead.")
            names = {p: text_module_name(p, prefix) for p in groups}
        for path in sorted(groups):
            parts, name = groups[path], names[path]
            if name + ".lora_down.weight" in tensors:
                raise ExportError(f"Two adapted layers map to the same kohya name {name}.",
                                  "Export in the diffusers format instead.")
            down, up = parts["A"], parts["B"]
            rank = int(down.shape[0])
            alpha = kohya_alpha(configs.get(role), path, rank)
            cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
            tensors[name + ".lora_down.weight"] = cast(down.detach().cpu().contiguous())
            tensors[name + ".lora_up.weight"] = cast(up.detach().cpu().contiguous())
            tensors[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
            if "M" in parts:
                out_features = int(up.shape[0])
                shape = (out_features,) + (1,) * (up.ndim - 1)
                tensors[name + ".dora_scale"] = cast(parts["M"].detach().cpu().reshape(shape).contiguous())
            modules.append(KohyaModule(name=name, role=role, source=path, rank=rank, alpha=alpha,
                                       conv=down.ndim == 4, dora="M" in parts))
    if not tensors:
        raise ExportError("There are no adapter weights to export.", "Train the LoRA first.")
    return tensors, modules
