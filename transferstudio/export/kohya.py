"""peft adapter weights -> the kohya/LyCORIS layout ComfyUI, A1111/Forge and diffusers' kohya loader read.

One module per adapted layer, named `lora_unet_<path>` / `lora_te_<path>` (SD 1.x/2.x) or
`lora_te1_` / `lora_te2_` (SDXL), the path's dots written as underscores, with
`<name>.lora_down.weight` (peft's A), `<name>.lora_up.weight` (peft's B) and `<name>.alpha`
(a 0-d tensor: the loaders scale by alpha / rank, so it must be the alpha trained with).

UNet paths: SD 1.x/2.x use the diffusers module path (what kohya's sd-scripts trains on, and
what A1111/ComfyUI convert for those families); SDXL uses the original `input_blocks` /
`middle_block` / `output_blocks` layout (sd-scripts trains SDXL on that UNet, and A1111 does
not map diffusers-style SDXL names). The original-layout names come from the model library's
diffusers -> original mapping, so there is one mapping in the program, not two.

SD3 and FLUX.1 use their transformers' original layout (`lora_unet_joint_blocks_…` /
`lora_unet_double_blocks_…`, `lora_unet_single_blocks_…`, what ComfyUI maps and sd-scripts trains,
names from backbones/mmdit_layout.py). That layout fuses layers diffusers keeps apart (q, k and v
in one `qkv`; FLUX's single blocks also the MLP's input in `linear1`): the family lists those as
`kohya_fused_layers` and each is written as one LoRA of rank (sum of the parts' ranks) with a
block-diagonal up (`_fused`), which is exactly the parts' LoRAs side by side.

Conv LoRA keeps its 4-D tensors (down: r x in x k x k, up: out x r x 1 x 1, as LoCon writes
them). DoRA's magnitude becomes `<name>.dora_scale`, shaped (out, 1[, 1, 1]) — the per-output-
channel norm LyCORIS writes and ComfyUI recognises by `dora_scale.shape[0] == out`.

LoHa and LoKr (peft's LyCORIS ports) keep peft's tensors under LyCORIS' names, which are peft's
own: `<name>.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b` (ΔW = (w1_a @ w1_b) ⊙
(w2_a @ w2_b) · alpha / rank, rank = w1_b.shape[0]) and `<name>.lokr_w1` or `.lokr_w1_a/_b`,
`.lokr_w2` or `.lokr_w2_a/_b` (ΔW = kron(w1, w2), times alpha / rank only when a factor is
split, rank = the split factor's inner size; unsplit, the loaders apply no alpha, so peft's
alpha / r is folded into lokr_w1 and alpha is written as the rank, as LyCORIS writes it). Conv
layers are as LyCORIS stores them without Tucker: the b factors flattened to rank x (in·k·k),
an unsplit lokr_w2 4-D (out2 x in2 x k x k); loaders reshape ΔW to the layer's weight.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from transferstudio.core.errors import ExportError

UNET_PREFIX = "lora_unet_"
_A, _B, _MAG = ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"
# peft key suffix -> (kind, part); LoHa/LoKr parts are written under their own (LyCORIS) names.
_SUFFIXES = {_A: ("lora", "A"), _B: ("lora", "B"), _MAG: ("lora", "M"),
             **{f".{p}": ("loha", p) for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1",
                                                "hada_t2")},
             **{f".{p}": ("lokr", p) for p in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a",
                                                "lokr_w2_b", "lokr_t2")}}
_NEEDED = {"lora": (("A",), ("B",)), "loha": (("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)),
           "lokr": (("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a"))}


@dataclass(frozen=True)
class KohyaModule:
    """One adapted layer as written (for metadata and tests)."""

    name: str  # e.g. lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q
    role: str  # unet | text_encoder | text_encoder_2
    source: str  # the diffusers/transformers module path it came from
    rank: int
    alpha: float
    conv: bool  # a spatial convolution (kohya's conv_dim layers)
    dora: bool
    kind: str = "lora"  # lora | loha | lokr


def _modules(state: Mapping[str, torch.Tensor], role: str) -> dict[str, tuple[str, dict[str, torch.Tensor]]]:
    """peft keys grouped by module path: {path: (kind, {part: tensor})} with parts "A", "B", "M"
    (LoRA) or LyCORIS names (`hada_w1_a`, `lokr_w1`, …); anything else refused."""
    out: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        key = key.removeprefix("base_model.model.")
        for suffix, (kind, part) in _SUFFIXES.items():
            if key.endswith(suffix):
                path = key[: -len(suffix)]
                found, parts = out.setdefault(path, (kind, {}))
                if found != kind:
                    raise ExportError(f"The {role} adapter mixes {found} and {kind} weights at {path}.",
                                      "The checkpoint may be damaged; export an earlier one.")
                parts[part] = value
                break
        else:
            # lora_bias, embedding LoRA, trainable tokens…: no loader reads these in kohya files.
            raise ExportError(f"The {role} adapter has a weight the kohya format cannot hold ({key}).",
                              "Export in the diffusers format instead.")
    for path, (kind, parts) in out.items():
        if any(not any(p in parts for p in choice) for choice in _NEEDED[kind]):
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


def _pattern(patterns: Mapping[str, Any] | None, path: str) -> Any:
    """The value of the first pattern that matches `path` as peft matches rank/alpha patterns (a
    regular expression for the end of the module path), None if none does."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return None


def peft_scale(config: Any, path: str, rank: int | None = None) -> float:
    """The scale peft applies to this module's adapter: alpha / r (or / sqrt(r) with rsLoRA),
    with per-module overrides from rank_pattern and alpha_pattern. `rank`: the module's rank as
    its weights show it (default: the config's)."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    if rank is None:
        said = _pattern(cfg.get("rank_pattern"), path)
        rank = int(said if said is not None else cfg.get("r", cfg.get("rank", 1)))
    said = _pattern(cfg.get("alpha_pattern"), path)
    alpha = float(said if said is not None else cfg.get("lora_alpha", cfg.get("alpha", rank)))
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def kohya_alpha(config: Any, path: str, rank: int) -> float:
    """The alpha a kohya loader needs for this module to scale like peft did in training.

    kohya scales by alpha / rank. peft scales by lora_alpha / r (or / sqrt(r) with rsLoRA), with
    per-module overrides in alpha_pattern; the effective scale times the rank is kohya's alpha."""
    return peft_scale(config, path, rank) * rank


def _lycoris(kind: str, parts: dict[str, torch.Tensor], config: Any, path: str,
             cast: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, float]:
    """A LoHa/LoKr module's tensors (suffix -> tensor), its rank and the alpha to write, so that
    ComfyUI's and A1111's rules give the delta peft applies."""
    if kind == "loha":
        rank = int(parts["hada_w1_b"].shape[0])  # the loaders divide alpha by this
        out = {f".{k}": cast(v.detach().cpu().contiguous()) for k, v in parts.items()}
        return out, rank, peft_scale(config, path, rank) * rank
    scale = peft_scale(config, path)  # LoKr: the rank is not in every module's weights
    split = "lokr_w2_b" if "lokr_w2_b" in parts else "lokr_w1_b" if "lokr_w1_b" in parts else None
    out = {}
    for k, v in parts.items():
        v = v.detach().cpu().float() if (k == "lokr_w1" and split is None) else v.detach().cpu()
        out[f".{k}"] = v
    if split is None:
        # Both factors whole: loaders apply no alpha, so the scale goes into w1; alpha = rank as LyCORIS writes.
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        said = _pattern(cfg.get("rank_pattern"), path)
        rank = int(said if said is not None else cfg.get("r", cfg.get("rank", 1)))
        out[".lokr_w1"] = (out[".lokr_w1"] * scale).to(parts["lokr_w1"].dtype)
        alpha = float(rank)
    else:
        rank = int(parts[split].shape[0])
        alpha = scale * rank
    return {k: cast(v.contiguous()) for k, v in out.items()}, rank, alpha


def to_kohya(states: Mapping[str, Mapping[str, torch.Tensor]], configs: Mapping[str, Any], *,
             unet_names: Callable[[list[str]], dict[str, str]] | None = None,
             text_prefixes: Mapping[str, str] | None = None, family: str | None = None,
             unet_config: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None,
             conv_paths: Mapping[str, Any] | None = None,
             fused_layers: Callable[[list[str]], Mapping[str, Mapping[str, Any]]] | None = None,
             row_norms: Callable[[str], torch.Tensor] | None = None,
             ) -> tuple[dict[str, torch.Tensor], list[KohyaModule]]:
    """peft state dicts by role ("unet", "text_encoder", "text_encoder_2") -> kohya tensors.

    Names come from the model's spec: `unet_names` (its `kohya_unet_names`) and `text_prefixes`
    (role -> prefix), or from the registered family with key `family`. `configs[role]` is the
    role's peft config (LoraConfig, LoHaConfig, LoKrConfig, or its dict). `conv_paths[role]`:
    the adapted spatial convolutions (for the metadata; default: LoRA layers with 4-D kernels
    larger than 1x1). `fused_layers` (the model's `kohya_fused_layers`): the kohya layers made of
    several denoiser modules (or with swapped row halves), written as one LoRA each (`_fused`);
    `row_norms` gives a base weight's row norms for the DoRA magnitude of a part that was not
    adapted. Raises ExportError for weights the format cannot hold and for two layers that would
    get the same name."""
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
        fused: Mapping[str, Mapping[str, Any]] = {}
        if role == "unet":
            names = unet_names(sorted(groups))
            fused = fused_layers(sorted(groups)) if fused_layers is not None else {}
        else:
            prefix = text_prefixes.get(role)
            if prefix is None:
                raise ExportError(f"The kohya format has no place for a '{role}' adapter on this model.",
                                  "Export in the diffusers format instead.")
            names = {p: text_module_name(p, prefix) for p in groups}
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        for name, layer in fused.items():
            if name + ".alpha" in tensors:
                raise ExportError(f"Two adapted layers map to the same kohya name {name}.",
                                  "Export in the diffusers format instead.")
            written, module = _fused(name, role, layer, groups, configs.get(role), row_norms, cast)
            tensors.update(written)
            modules.append(module)
        for path in sorted(groups):
            (kind, parts), name = groups[path], names[path]
            if name in fused:
                continue
            if name + ".alpha" in tensors:
                raise ExportError(f"Two adapted layers map to the same kohya name {name}.",
                                  "Export in the diffusers format instead.")
            conv = path in conv_paths.get(role, ()) if conv_paths is not None else None
            if kind != "lora":
                written, rank, alpha = _lycoris(kind, parts, configs.get(role), path, cast)
                tensors.update({name + suffix: t for suffix, t in written.items()})
                tensors[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
                modules.append(KohyaModule(name=name, role=role, source=path, rank=rank, alpha=alpha,
                                           conv=bool(conv), dora=False, kind=kind))
                continue
            down, up = parts["A"], parts["B"]
            rank = int(down.shape[0])
            alpha = kohya_alpha(configs.get(role), path, rank)
            if conv is None:
                conv = down.ndim == 4 and tuple(down.shape[-2:]) != (1, 1)
            tensors[name + ".lora_down.weight"] = cast(down.detach().cpu().contiguous())
            tensors[name + ".lora_up.weight"] = cast(up.detach().cpu().contiguous())
            tensors[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
            if "M" in parts:
                out_features = int(up.shape[0])
                shape = (out_features,) + (1,) * (up.ndim - 1)
                tensors[name + ".dora_scale"] = cast(parts["M"].detach().cpu().reshape(shape).contiguous())
            modules.append(KohyaModule(name=name, role=role, source=path, rank=rank, alpha=alpha,
                                       conv=bool(conv), dora="M" in parts))
    if not tensors:
        raise ExportError("There are no adapter weights to export.", "Train the LoRA first.")
    return tensors, modules


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _fused(name: str, role: str, layer: Mapping[str, Any], groups: Mapping[str, tuple[str, dict[str, torch.Tensor]]],
           config: Any, row_norms: Callable[[str], torch.Tensor] | None,
           cast: Callable[[torch.Tensor], torch.Tensor]) -> tuple[dict[str, torch.Tensor], KohyaModule]:
    """One kohya LoRA for an original layer made of several diffusers modules (rows stacked in
    `layer["parts"]` order; `layer["swap"]`: the original keeps the row halves the other way round).

    The parts' LoRAs side by side are exactly one LoRA of the fused layer: down = the parts' downs
    stacked (rank R = the sum of their ranks), up = their ups block-diagonally (zero rows for a part
    that was not adapted), each up scaled by its own peft scale over the first part's, and alpha =
    that first scale × R — so a loader's up @ down · alpha / R is each part's delta in its rows.
    diffusers' kohya FLUX converter recognises this block-diagonal up and splits it back exactly.
    DoRA: the magnitude is the parts' magnitudes stacked (a part without adapter: its base weight's
    row norms, which leave it unchanged). The module's record keeps the trained rank and alpha of
    one part, as the metadata reports them."""
    parts = [(str(p), int(rows)) for p, rows in layer["parts"]]
    adapted = [p for p, _ in parts if p in groups]
    kinds = {groups[p][0] for p in adapted}
    if kinds != {"lora"}:
        raise ExportError(f"The kohya layer {name} joins several layers, which only plain LoRA (or DoRA) can be "
                          f"written for; this adapter is {', '.join(sorted(kinds))}.",
                          "Export in the diffusers format instead.")
    downs = {p: groups[p][1]["A"].detach().cpu().float() for p in adapted}
    ups = {p: groups[p][1]["B"].detach().cpu().float() for p in adapted}
    if any(d.ndim != 2 for d in downs.values()) or len({d.shape[1] for d in downs.values()}) != 1:
        raise ExportError(f"The layers joined in the kohya layer {name} do not fit together.",
                          "Export in the diffusers format instead.")
    ranks = {p: int(downs[p].shape[0]) for p in adapted}
    scales = {p: peft_scale(config, p, ranks[p]) for p in adapted}
    reference = scales[adapted[0]]
    total_rank = sum(ranks.values())
    up = torch.zeros(sum(rows for _, rows in parts), total_rank)
    row = col = 0
    for path, rows in parts:
        if path in ups:
            if ups[path].shape[0] != rows:
                raise ExportError(f"The layer {path} has {ups[path].shape[0]} outputs where the kohya layer {name} "
                                  f"expects {rows}.", "Export in the diffusers format instead.")
            up[row:row + rows, col:col + ranks[path]] = ups[path] * (scales[path] / reference)
            col += ranks[path]
        row += rows
    down = torch.cat([downs[p] for p in adapted], dim=0)
    dora = [p for p in adapted if "M" in groups[p][1]]
    magnitude = None
    if dora:
        if len(dora) != len(adapted):
            raise ExportError(f"The kohya layer {name} joins DoRA and plain LoRA layers.",
                              "Export in the diffusers format instead.")
        pieces = []
        for path, rows in parts:
            if path in groups:
                pieces.append(groups[path][1]["M"].detach().cpu().float().reshape(-1))
            elif row_norms is not None:
                pieces.append(row_norms(path).detach().cpu().float().reshape(-1))
            else:
                raise ExportError(f"The DoRA magnitude of {name} needs the base weights of {path}.",
                                  "Export in the diffusers format instead.")
        magnitude = torch.cat(pieces).reshape(-1, 1)
    if layer.get("swap"):
        up = _swap_halves(up)
        magnitude = _swap_halves(magnitude) if magnitude is not None else None
    dtype = groups[adapted[0]][1]["A"].dtype
    out = {name + ".lora_down.weight": cast(down.to(dtype).contiguous()),
           name + ".lora_up.weight": cast(up.to(dtype).contiguous()),
           name + ".alpha": torch.tensor(reference * total_rank, dtype=torch.float32)}
    if magnitude is not None:
        out[name + ".dora_scale"] = cast(magnitude.to(dtype).contiguous())
    rank = ranks[adapted[0]]
    module = KohyaModule(name=name, role=role, source=",".join(adapted), rank=rank, alpha=reference * rank,
                         conv=False, dora=magnitude is not None)
    return out, module
