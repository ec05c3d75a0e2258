"""Training settings: one dataclass with beginner-safe defaults, a help text per field
(shown as CLI help and UI tooltips) and validation that names the bad field."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

METHODS = ("lora", "full")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CROPS = ("center", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    method: str = _f("lora", "LoRA trains a small adapter on top of the model (fast, small files); "
                     "full fine-tuning changes every weight (small models only).", choices=METHODS)
    steps: int = _f(500, "How many optimizer steps to train in total.", min=1, max=1_000_000)
    learning_rate: float = _f(1e-4, "How big each update is. 1e-4 suits LoRA; full fine-tuning "
                              "usually wants less.", min=1e-7, max=1.0)
    batch_size: int = _f(1, "Images per step. Larger is smoother but needs more memory.", min=1, max=256)
    gradient_accumulation: int = _f(1, "Add up gradients over this many batches before each update "
                                    "(a larger effective batch without more memory).", min=1, max=256)
    resolution: int = _f(0, "Training size in pixels (the long side of square buckets). "
                         "0 uses the model's native resolution.", min=0, max=4096)
    buckets: bool = _f(True, "Keep each image's aspect ratio by grouping images of similar shape "
                       "(aspect-ratio buckets) instead of cropping everything square.")
    crop: str = _f("center", "How images are cropped to their bucket: centre, or a random window "
                   "each time (more variety).", choices=CROPS)
    flip: bool = _f(True, "Randomly mirror images left-right (doubles the variety; turn off for "
                    "text or asymmetric subjects).")
    trigger: str = _f("", "A word added to the start of every caption, that later calls up what "
                      "was learned (e.g. 'mystyle').")
    rank: int = _f(16, "LoRA rank: the adapter's capacity. 4–32 is typical.", min=1, max=1024)
    alpha: float = _f(16.0, "LoRA alpha: scales the adapter (effective scale = alpha / rank).",
                      min=0.0, max=4096.0)
    dora: bool = _f(False, "DoRA (weight-decomposed LoRA): learns each weight's size and direction "
                    "separately; often closer to full fine-tuning at the same rank. Steps take longer "
                    "(about 20% on the starter). Kohya exports carry it as dora_scale (ComfyUI, Forge "
                    "and recent A1111 load it).")
    dropout: float = _f(0.0, "LoRA dropout: randomly drops adapter inputs to reduce overfitting.",
                        min=0.0, max=0.9)
    train_text_encoder: bool = _f(False, "Also put LoRA on the text encoder(s) (text models only).")
    ema: bool = _f(False, "Keep an exponential moving average of the weights for sampling and export "
                   "(full fine-tuning only).")
    ema_decay: float = _f(0.999, "EMA decay per step.", min=0.0, max=0.99999)
    schedule: str = _f("constant", "How the learning rate changes over the run.", choices=SCHEDULES)
    warmup_steps: int = _f(0, "Steps over which the learning rate ramps up from zero.", min=0, max=1_000_000)
    precision: str = _f("auto", "Number format: auto picks bf16/fp16 on a GPU and fp32 on the CPU.",
                        choices=PRECISIONS)
    gradient_checkpointing: bool = _f(False, "Recompute activations instead of storing them: less "
                                      "memory, about 30% slower.")
    noise_offset: float = _f(0.0, "Adds a little offset noise so the model can learn very dark or "
                             "bright images. 0.05–0.1 if you need it.", min=0.0, max=1.0)
    min_snr_gamma: float = _f(0.0, "Min-SNR loss weighting (5 is common); 0 turns it off.",
                              min=0.0, max=100.0)
    seed: int = _f(42, "Makes runs repeatable: the same seed and settings give the same result.",
                   min=0, max=2**31 - 1)
    preview_every: int = _f(100, "Make preview samples every this many steps (0: only at start and end).",
                            min=0, max=1_000_000)
    preview_prompts: list = _f([], "Prompts for preview samples (text models). Empty uses your "
                               "trigger word and captions.")
    preview_seeds: list = _f([1, 2, 3, 4], "Seeds for preview samples; fixed so previews are comparable.")
    preview_steps: int = _f(30, "Denoising steps per preview sample.", min=1, max=1000)
    checkpoint_every: int = _f(250, "Save a checkpoint every this many steps (and always when "
                               "stopped or finished).", min=1, max=1_000_000)
    keep_checkpoints: int = _f(3, "How many recent checkpoints to keep on disk.", min=1, max=1000)
    device: str = _f("auto", "Where to train: auto picks a CUDA GPU, then Apple MPS, then the CPU.",
                     choices=DEVICES)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        cfg.coerce()
        return cfg

    def coerce(self) -> None:
        """Turn values read from JSON/CLI into the declared types (1 -> 1.0, "3" -> 3)."""
        for f in fields(self):
            value = getattr(self, f.name)
            convert = {"int": int, "float": float, "bool": bool, "list": list}.get(str(f.type))
            if convert is not None:
                try:
                    setattr(self, f.name, convert(value))
                except (TypeError, ValueError):
                    pass  # left as is; problems() reports it

    def problems(self) -> list[str]:
        """Human-readable problems, each naming the field; empty when valid."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                out.append(f"{f.name}: '{value}' is not one of {', '.join(meta['choices'])}")
            if "min" in meta:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    out.append(f"{f.name}: '{value}' is not a number")
                elif value < meta["min"] or value > meta["max"]:
                    out.append(f"{f.name}: {value} is outside {meta['min']}…{meta['max']}")
        if any(not isinstance(s, int) or s < 0 for s in self.preview_seeds):
            out.append("preview_seeds: seeds must be whole numbers ≥ 0")
        if any(not isinstance(p, str) for p in self.preview_prompts):
            out.append("preview_prompts: prompts must be text")
        return out


def field_help(name: str) -> str:
    for f in fields(TrainConfig):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def field_meta(name: str) -> dict[str, Any]:
    for f in fields(TrainConfig):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(name)
