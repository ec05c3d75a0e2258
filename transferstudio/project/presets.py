"""Presets: named sets of training settings by kind of model and GPU size, and the person's own.

The built-in presets are plain data (this layer imports no torch): for each kind of model (read
from its capabilities, never from a family name) and training method, the settings for each GPU
memory tier. They were chosen with the memory plan (training/memory_plan.py) so that a run of the
reference model of the kind (SD 1.5 at 512 px, SDXL at 1024 px, SD3.5 medium at 1024 px, the
starters) fits the tier, and
tests/test_presets.py checks that they still do. The person's own presets are JSON files, one per
preset, in the app's data folder; a damaged file is reported and left as it is.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from transferstudio.core.atomic import write_json_atomic
from transferstudio.core.errors import ProjectError
from transferstudio.project.config import METHODS, TrainConfig

GIB = 1024 ** 3
TIERS = ("cpu", "6", "8", "12", "16", "24")  # the GPU's memory in GB ("24": 24 GB and more)
TIER_LABELS = {"cpu": "CPU (no GPU)", "6": "6 GB GPU", "8": "8 GB GPU", "12": "12 GB GPU", "16": "16 GB GPU",
               "24": "24 GB+ GPU"}
# A card sold as "12 GB" reports a little less to programs (11.6–12 GiB): it still counts as 12.
_TIER_TOLERANCE_GIB = 0.75

KINDS = ("pixel-diffusion", "latent-diffusion", "large-latent-diffusion", "flow-transformer", "reconstruction",
         "adversarial")
KIND_LABELS = {"pixel-diffusion": "small pixel diffusion models (the starter, DDPMs)",
               "latent-diffusion": "Stable Diffusion 1.x/2.x", "large-latent-diffusion": "Stable Diffusion XL",
               "flow-transformer": "SD3 and FLUX", "reconstruction": "VAEs", "adversarial": "GANs"}

PRESET_FORMAT = "transferstudio-preset"
PRESET_VERSION = 1
# Settings that belong to one project's pictures, not to a way of training: a preset leaves them alone.
PROJECT_SETTINGS = ("trigger", "preview_prompts", "class_prompt")


def model_kind(caps: Any) -> str:
    """The kind of model, from its capabilities: what the presets and new-project defaults are per.
    Latent models that cannot be fully fine-tuned here are the large ones (SDXL)."""
    objective = getattr(caps, "objective", "diffusion") or "diffusion"
    if objective in ("adversarial", "reconstruction"):
        return objective
    if objective != "diffusion":
        return ""
    if getattr(caps, "prediction_type", "") == "flow":  # flow-matching transformers (SD3, FLUX)
        return "flow-transformer"
    if getattr(caps, "latent", False):
        return "latent-diffusion" if getattr(caps, "supports_full_finetune", False) else "large-latent-diffusion"
    return "pixel-diffusion"


def tier_for(total_bytes: int | None) -> str:
    """The tier of a GPU with this much memory (None: no GPU, the CPU tier). Cards smaller than
    the smallest tier get it: the memory estimate then says what does not fit."""
    if total_bytes is None:
        return "cpu"
    size = total_bytes / GIB + _TIER_TOLERANCE_GIB
    fitting = [t for t in TIERS[1:] if int(t) <= size]
    return fitting[-1] if fitting else TIERS[1]


def tier_bytes(tier: str) -> int | None:
    """The memory of the tier's smallest card (None for the CPU)."""
    return None if tier == "cpu" else int(tier) * GIB


# --- what a new project starts from ---------------------------------------------------------------
# Per kind and method: the rate, length and adapter size that suit it. Pixel models: measured on the
# sample project (README: the sample project; the starter's LoRA learns nothing visible at the LoRA
# rate of large models, 1e-4, in the first few hundred steps). Stable Diffusion: the rates the
# diffusers and kohya training scripts use (not measured here: no such model can be downloaded).
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "pixel-diffusion": {
        "full": {"learning_rate": 5e-4, "batch_size": 16, "steps": 450, "preview_every": 75,
                 "checkpoint_every": 150},
        "lora": {"learning_rate": 2e-3, "rank": 32, "alpha": 32.0, "batch_size": 16, "steps": 450,
                 "preview_every": 75, "checkpoint_every": 150},
    },
    "latent-diffusion": {
        "lora": {"learning_rate": 1e-4, "rank": 16, "alpha": 16.0, "steps": 1500, "preview_every": 250,
                 "checkpoint_every": 250},
        "full": {"learning_rate": 1e-5, "steps": 2000, "preview_every": 250, "checkpoint_every": 500},
    },
    "large-latent-diffusion": {
        "lora": {"learning_rate": 1e-4, "rank": 16, "alpha": 16.0, "steps": 1500, "preview_every": 250,
                 "checkpoint_every": 250},
    },
    "flow-transformer": {
        "lora": {"learning_rate": 1e-4, "rank": 16, "alpha": 16.0, "steps": 1500, "preview_every": 250,
                 "checkpoint_every": 250},
    },
    "reconstruction": {
        "decoder": {"learning_rate": 3e-4, "batch_size": 16, "steps": 300, "preview_every": 50},
        "full": {"learning_rate": 1e-4, "batch_size": 16, "steps": 300, "preview_every": 50},
    },
    "adversarial": {},  # the GAN family's own suggestions (Capabilities.suggested) say it all
}


@dataclass(frozen=True)
class Preset:
    """A named set of settings. Built-in ones are for a kind of model, a method and a tier (the
    smallest GPU they are made for); the person's own hold whatever they saved."""

    name: str
    settings: tuple[tuple[str, Any], ...]
    kind: str = ""
    tier: str = ""
    note: str = ""
    purpose: str = ""  # what a LoRA learns ("style", "character", "object"); "" for GPU-size presets
    builtin: bool = True
    path: Path | None = None  # a user preset's file

    @property
    def overrides(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings}

    @property
    def method(self) -> str | None:
        return self.overrides.get("method")

    def matches(self, config: TrainConfig) -> bool:
        """Whether `config` has every setting this preset sets (project-specific ones aside)."""
        values = config.to_dict()
        return all(values.get(k) == v for k, v in self.overrides.items() if k not in PROJECT_SETTINGS)

    def apply(self, config: TrainConfig) -> TrainConfig:
        """`config` with this preset's settings put over it (a new object; project-specific
        settings such as the trigger word stay as they were)."""
        wanted = {k: v for k, v in self.overrides.items() if k not in PROJECT_SETTINGS}
        return TrainConfig.from_dict({**config.to_dict(), **wanted})

    def describe(self) -> str:
        """What it sets, in a few words (for a tooltip): "LoRA, batch 2, gradient checkpointing"."""
        o = self.overrides
        parts = []
        if "method" in o:
            parts.append({"lora": "LoRA", "full": "full fine-tuning", "decoder": "decoder only"}.get(o["method"],
                                                                                                 o["method"]))
        if "batch_size" in o:
            parts.append(f"batch {o['batch_size']}")
        if o.get("resolution"):
            parts.append(f"{o['resolution']} px")
        if o.get("gradient_checkpointing"):
            parts.append("gradient checkpointing")
        if o.get("optimizer") and o["optimizer"] != "adamw":
            parts.append({"adamw8bit": "8-bit AdamW", "adafactor": "Adafactor", "prodigy": "Prodigy"}[o["optimizer"]])
        if "rank" in o and o.get("method", "lora") == "lora":
            parts.append(f"rank {o['rank']}")
        text = ", ".join(parts)
        return f"{text}. {self.note}" if self.note else text


def _p(tier: str, note: str = "", **settings: Any) -> tuple[str, dict[str, Any], str]:
    return tier, settings, note


_SMALL = {"batch_size": 16, "gradient_checkpointing": False, "optimizer": "adamw"}  # small models: any card

# kind -> method -> presets from the smallest tier up; each applies from its tier to the next one's.
# Estimated totals (memory plan, bf16 on a GPU) are in the notes; the reference model of each kind
# is named in the module docstring. The UNet of SD/SDXL stays fp32 while training here, so SDXL
# needs 16 GB even with a LoRA (12.9 GB at 1024 px, 12.7 GB at 768 px).
_BUILTIN: dict[str, dict[str, tuple[tuple[str, dict[str, Any], str], ...]]] = {
    "pixel-diffusion": {
        "full": (_p("cpu", "Small models train on any computer.", **_SMALL, method="full"),),
        "lora": (_p("cpu", "Small models train on any computer.", **_SMALL, method="lora"),),
    },
    "latent-diffusion": {
        "lora": (
            _p("cpu", "Very slow without a GPU (hours per hundred steps); about 4.3 GB of memory.", method="lora", batch_size=1,
               gradient_checkpointing=True, rank=8, alpha=8.0, optimizer="adamw"),
            _p("6", "About 4.6 GB for SD 1.5 at 512 px.", method="lora", batch_size=1, gradient_checkpointing=True,
               rank=16, alpha=16.0, optimizer="adamw"),
            _p("8", "About 4.8 GB for SD 1.5 at 512 px.", method="lora", batch_size=2, gradient_checkpointing=True,
               rank=16, alpha=16.0, optimizer="adamw"),
            _p("12", "About 8.2 GB for SD 1.5 at 512 px.", method="lora", batch_size=2, gradient_checkpointing=False,
               rank=16, alpha=16.0, optimizer="adamw"),
            _p("16", "About 10.5 GB for SD 1.5 at 512 px.", method="lora", batch_size=4,
               gradient_checkpointing=False, rank=32, alpha=32.0, optimizer="adamw"),
        ),
        "full": (
            _p("12", "About 9.7 GB for SD 1.5 at 512 px; needs the bitsandbytes package.", method="full",
               batch_size=1, gradient_checkpointing=True, optimizer="adamw8bit"),
            _p("16", "About 13.0 GB for SD 1.5 at 512 px.", method="full", batch_size=1, gradient_checkpointing=True,
               optimizer="adafactor"),
            _p("24", "About 15.0 GB for SD 1.5 at 512 px.", method="full", batch_size=4, gradient_checkpointing=True,
               optimizer="adamw"),
        ),
    },
    "large-latent-diffusion": {
        "lora": (
            _p("cpu", "Very slow without a GPU, and takes about 14 GB of memory.", method="lora", batch_size=1,
               gradient_checkpointing=True, rank=8, alpha=8.0, optimizer="adamw"),
            _p("16", "About 12.9 GB for SDXL at 1024 px.", method="lora", batch_size=1, gradient_checkpointing=True,
               rank=16, alpha=16.0, optimizer="adamw"),
            _p("24", "About 14.5 GB for SDXL at 1024 px.", method="lora", batch_size=4, gradient_checkpointing=True,
               rank=16, alpha=16.0, optimizer="adamw"),
        ),
    },
    # SD3 and FLUX (python -m transferstudio.devtools.plan_table --flow; 1024 px, gradient checkpointing):
    # bf16 weights SD3 medium 15.7 GB, SD3.5 medium 16.7, SD3.5 large 27.7, FLUX.1 dev 34.1 GB; with the
    # frozen weights in fp8 (fp8_base) 10.4, 11.3, 18.7 and 22.6 GB. T5-XXL is 8.9 GB of it in bf16.
    "flow-transformer": {
        "lora": (
            _p("12", "About 10.4 GB for SD3 medium and 11.3 GB for SD3.5 medium at 1024 px, with the frozen "
               "weights in fp8; SD3.5 large (18.7 GB) and FLUX.1 dev (22.6 GB) need a 24 GB card.", method="lora",
               batch_size=1, gradient_checkpointing=True, fp8_base=True, rank=16, alpha=16.0, optimizer="adamw"),
            _p("24", "About 22.6 GB for FLUX.1 dev and 18.7 GB for SD3.5 large at 1024 px, with the frozen weights "
               "in fp8; SD3/SD3.5 medium also fit without fp8 (16.7 GB).", method="lora", batch_size=1,
               gradient_checkpointing=True, fp8_base=True, rank=16, alpha=16.0, optimizer="adamw"),
        ),
    },
    "reconstruction": {
        "decoder": (_p("cpu", "Small models train on any computer.", **_SMALL, method="decoder"),),
        "full": (_p("cpu", "Small models train on any computer.", **_SMALL, method="full"),),
    },
    "adversarial": {
        "full": (_p("cpu", "Small models train on any computer.", **_SMALL, method="full"),),
    },
}


def builtin_presets(kind: str, method: str | None = None) -> list[Preset]:
    """The built-in presets of a kind of model (and method), smallest tier first."""
    out = []
    for each_method, rows in _BUILTIN.get(kind, {}).items():
        if method is not None and each_method != method:
            continue
        for index, (tier, settings, note) in enumerate(rows):
            upper = rows[index + 1][0] if index + 1 < len(rows) else None
            out.append(Preset(name=_tier_range_label(tier, upper), settings=tuple(settings.items()), kind=kind,
                              tier=tier, note=note))
    return out


# --- what you are teaching it -------------------------------------------------------------------
# A second axis beside the GPU size: how a LoRA learns, for what it learns. They set only learning
# settings (layers, caption handling, flips), never what a GPU preset sets, so a purpose and a
# GPU preset combine. Starting points from the practice of kohya_ss / OneTrainer users, not
# measured here (no such model can be downloaded to this machine): a style wants more capacity
# (the feed-forward layers too) and captions that drop out now and then so it does not hide in the
# words; a character keeps its trigger word first and is not mirrored (a parting, a scar, a logo);
# an object is a small thing to learn, best kept close to the base model.
PURPOSES = ("style", "character", "object")
PURPOSE_LABELS = {"style": "A style", "character": "A character", "object": "An object"}
_PURPOSE_KINDS = ("latent-diffusion", "large-latent-diffusion", "flow-transformer")  # text models, LoRA
_PURPOSES: dict[str, tuple[dict[str, Any], str]] = {
    "style": ({"layers": "attention+ff", "caption_dropout": 0.1, "shuffle_tags": True, "keep_tags": 1, "flip": True},
              "How pictures look (a painter's hand, a medium, a look): the attention and feed-forward layers learn, "
              "captions are dropped one time in ten and tags shuffled after the first, pictures mirrored."),
    "character": ({"layers": "attention", "caption_dropout": 0.05, "shuffle_tags": True, "keep_tags": 1,
                   "flip": False},
                  "A person or creature: the attention layers learn, the trigger word stays first, no mirroring (it "
                  "would swap a parting, a scar or a logo)."),
    "object": ({"layers": "attention", "caption_dropout": 0.0, "shuffle_tags": False, "flip": True,
                "min_snr_gamma": 5.0},
               "A thing (a product, a toy, a building): the attention layers learn from the captions as written, "
               "noise levels weighted by Min-SNR (γ 5: fewer steps to a sharp likeness; not for SD3/FLUX). "
               "Turn on class pictures with a class prompt (e.g. 'a photo of a mug') to keep what the model knew "
               "about the class."),
}
# (The adapter's size stays the GPU preset's: rank is a memory setting there too.)


def purpose_presets(kind: str, method: str | None = "lora") -> list[Preset]:
    """The presets of what a LoRA learns (style, character, object) for this kind of model; none
    for models without prompts or other methods."""
    if kind not in _PURPOSE_KINDS or method not in (None, "lora"):
        return []
    skip = _NOT_FOR_FLOW if kind == "flow-transformer" else ()
    return [Preset(name=PURPOSE_LABELS[p], settings=tuple((k, v) for k, v in _PURPOSES[p][0].items() if k not in skip),
                   kind=kind, note=_PURPOSES[p][1], purpose=p) for p in PURPOSES]


_NOT_FOR_FLOW = ("min_snr_gamma",)  # a noise-prediction weighting: flow matching refuses it


def matching_purpose(kind: str, config: TrainConfig) -> Preset | None:
    """The purpose preset these settings follow, if any."""
    return next((p for p in purpose_presets(kind, config.method) if p.matches(config)), None)


def _tier_range_label(tier: str, upper: str | None) -> str:
    """"12 GB GPU" for a preset of one tier, "8–12 GB GPU" for several, "16 GB+ GPU" for the top."""
    if tier == "cpu":
        return "Any computer" if upper is None else TIER_LABELS["cpu"]
    if upper is None:
        return f"{tier} GB+ GPU"
    last = TIERS[TIERS.index(upper) - 1]
    return TIER_LABELS[tier] if last == tier else f"{tier}–{last} GB GPU"


def choose_preset(kind: str, method: str, tier: str) -> Preset | None:
    """The built-in preset for a GPU of this tier: the one made for the largest tier not above
    it. None when the kind has none for the method; a GPU smaller than every GPU preset gets the
    smallest (its `tier` says it is made for a larger card)."""
    presets = builtin_presets(kind, method)
    if not presets:
        return None
    rank = TIERS.index(tier)
    fitting = [p for p in presets if TIERS.index(p.tier) <= rank]
    if fitting and not (tier != "cpu" and fitting[-1].tier == "cpu" and len(presets) > 1):
        return fitting[-1]
    gpu = [p for p in presets if p.tier != "cpu"]
    return (gpu or presets)[0]


def method_for_tier(kind: str, wanted: str, tier: str, offered: Iterable[str]) -> str:
    """`wanted` when a preset of it fits the tier, else the first offered method that has one
    (full fine-tuning of SD 1.5 does not fit 8 GB; LoRA does)."""
    offered = [m for m in offered if m in METHODS]
    for method in [wanted] + [m for m in offered if m != wanted]:
        preset = choose_preset(kind, method, tier)
        if preset is not None and TIERS.index(preset.tier) <= TIERS.index(tier):
            return method
    return wanted


def new_project_settings(caps: Any, method: str, tier: str, preset: Preset | None = None,
                         purpose: str = "") -> TrainConfig:
    """What a new project starts from: the defaults, the rate and length that suit the kind of
    model and the method, the family's own suggestions over those (they know the model better),
    then `preset` (default: the built-in one of the tier), then the `purpose` preset if any."""
    kind = model_kind(caps)
    chosen = TrainConfig(method=method).default_method_for(caps)  # `method` when the model offers it
    config = TrainConfig.from_dict({**TrainConfig(method=chosen).to_dict(),
                                    **METHOD_DEFAULTS.get(kind, {}).get(chosen, {})})
    config.suggest_for(caps, given={"method"})
    preset = preset if preset is not None else choose_preset(kind, chosen, tier)
    config = preset.apply(config) if preset is not None else config
    learned = next((p for p in purpose_presets(kind, config.method) if p.purpose == purpose), None)
    return learned.apply(config) if learned is not None else config


# --- the person's own presets -----------------------------------------------------------------------

def user_presets_dir() -> Path:
    from transferstudio.core.paths import user_data_dir

    return user_data_dir() / "presets"


def _file_name(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    return (slug or "preset")[:80] + ".json"


def save_user_preset(name: str, config: TrainConfig, *, kind: str = "", folder: Path | None = None) -> Preset:
    """Save the settings under `name` (replacing a preset of that name). The project's own
    settings (trigger word, prompts) are not saved. A damaged file of the same name is kept
    beside it as `<name>.json.damaged`, never overwritten."""
    name = " ".join(name.split())
    if not name:
        raise ProjectError("A preset needs a name.", "Type a name for it.")
    folder = Path(folder) if folder is not None else user_presets_dir()
    path = folder / _file_name(name)
    if path.exists():
        try:
            _read_preset(path)
        except ProjectError:
            path.replace(_free_name(path.with_name(path.name + ".damaged")))
    settings = {k: v for k, v in config.to_dict().items() if k not in PROJECT_SETTINGS}
    write_json_atomic(path, {"format": PRESET_FORMAT, "version": PRESET_VERSION, "name": name, "kind": kind,
                             "settings": settings})
    return Preset(name=name, settings=tuple(settings.items()), kind=kind, builtin=False, path=path)


def _free_name(path: Path) -> Path:
    candidate, n = path, 2
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def load_user_presets(folder: Path | None = None) -> tuple[list[Preset], list[str]]:
    """(presets by name, problems): every readable preset, and one sentence per file that is not
    one (the file is left as it is)."""
    folder = Path(folder) if folder is not None else user_presets_dir()
    presets, problems = [], []
    if not folder.is_dir():
        return [], []
    for path in sorted(folder.glob("*.json")):
        try:
            presets.append(_read_preset(path))
        except ProjectError as exc:
            problems.append(f"{exc.message} {exc.advice}".strip())
    presets.sort(key=lambda p: p.name.lower())
    return presets, problems


def _read_preset(path: Path) -> Preset:
    """A user preset file read and checked; ProjectError naming the file and what is wrong."""
    where = f"The preset file {path}"
    advice = "It is left as it is; fix it in a text editor or delete it."
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ProjectError(f"{where} is not text.", advice) from None
    except json.JSONDecodeError as exc:
        raise ProjectError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg}).", advice) from None
    except OSError as exc:
        raise ProjectError(f"{where} cannot be read ({exc.strerror or exc}).", advice) from None
    if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT:
        raise ProjectError(f"{where} is not a TransferStudio preset.", advice)
    if not isinstance(data.get("version"), int) or data["version"] > PRESET_VERSION:
        raise ProjectError(f"{where} was written by a newer TransferStudio.", "Update TransferStudio to use it.")
    name, settings = data.get("name"), data.get("settings")
    if not isinstance(name, str) or not name.strip() or not isinstance(settings, dict):
        raise ProjectError(f"{where} has no name or no settings.", advice)
    known = set(TrainConfig().to_dict())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ProjectError(f"{where} has settings TransferStudio does not know: {', '.join(unknown[:5])}.", advice)
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), **settings})
    bad = config.field_problems()
    if bad:
        raise ProjectError(f"{where} has a bad setting: {bad[0]}.", advice)
    checked = config.to_dict()
    return Preset(name=name.strip(), settings=tuple((k, checked[k]) for k in settings), kind=str(data.get("kind") or ""),
                  builtin=False, path=path)


__all__ = ["Preset", "TIERS", "TIER_LABELS", "KINDS", "KIND_LABELS", "METHOD_DEFAULTS", "model_kind", "tier_for",
           "tier_bytes", "builtin_presets", "choose_preset", "method_for_tier", "new_project_settings",
           "PURPOSES", "PURPOSE_LABELS", "purpose_presets", "matching_purpose",
           "save_user_preset", "load_user_presets", "user_presets_dir"]
