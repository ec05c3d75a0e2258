"""Reading a kohya_ss LoRA preset (the GUI's saved JSON) into TransferStudio settings.

Only the settings both trainers share are taken, each converted to our meaning (kohya's warm-up
is a percentage of the steps; its ranks are "network_dim"; its optimizer names differ); every
other key is listed back to the user, so nothing is dropped silently.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from transferstudio.core.errors import ProjectError
from transferstudio.project.config import TrainConfig

_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "pagedadamw8bit": "adamw8bit", "adafactor": "adafactor",
               "prodigy": "prodigy"}
_SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine",
               "cosine_with_restarts": "cosine", "linear": "linear"}
_ADAPTERS = {"standard": ("lora", "attention"), "kohya locon": ("lora", "all+conv"), "lycoris/locon": ("lora", "all+conv"),
             "lycoris/loha": ("loha", "all+conv"), "lycoris/lokr": ("lokr", "all+conv")}


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a yes/no value")
    number = float(value)  # kohya_ss writes some numbers as text ("1", "0.0001")
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _whole(value: Any) -> int:
    number = _number(value)
    if number != int(number):
        raise ValueError("not a whole number")
    return int(number)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("not true or false")


def _resolution(value: Any) -> int:
    sides = [int(x) for x in str(value).replace("x", ",").split(",") if x.strip()]
    if not sides:
        raise ValueError("no size")
    return max(sides)


def _choice(table: dict[str, Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        key = str(value).strip().lower()
        if key not in table:
            raise ValueError(f"{value!r} has no counterpart here")
        return table[key]
    return convert


# kohya key -> (our setting, conversion)
_SIMPLE: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "learning_rate": ("learning_rate", _number),
    "unet_lr": ("learning_rate", _number),  # kohya's UNet rate, when set, is the one that trains the LoRA
    "train_batch_size": ("batch_size", _whole),
    "max_train_steps": ("steps", _whole),
    "gradient_accumulation_steps": ("gradient_accumulation", _whole),
    "network_dim": ("rank", _whole),
    "network_alpha": ("alpha", _number),
    "conv_dim": ("conv_rank", _whole),
    "conv_alpha": ("conv_alpha", _number),
    "network_dropout": ("dropout", _number),
    "seed": ("seed", _whole),
    "max_resolution": ("resolution", _resolution),
    "enable_bucket": ("buckets", _flag),
    "flip_aug": ("flip", _flag),
    "gradient_checkpointing": ("gradient_checkpointing", _flag),
    "noise_offset": ("noise_offset", _number),
    "min_snr_gamma": ("min_snr_gamma", _number),
    "multires_noise_iterations": ("multires_noise_iterations", _whole),
    "multires_noise_discount": ("multires_noise_discount", _number),
    "ip_noise_gamma": ("input_perturbation", _number),
    "debiased_estimation_loss": ("debiased_estimation", _flag),
    "caption_dropout_rate": ("caption_dropout", _number),
    "shuffle_caption": ("shuffle_tags", _flag),
    "keep_tokens": ("keep_tags", _whole),
    "masked_loss": ("masked_loss", _flag),
    "prior_loss_weight": ("prior_loss_weight", _number),
    "optimizer": ("optimizer", _choice(_OPTIMIZERS)),
    "lr_scheduler": ("schedule", _choice(_SCHEDULERS)),
    "mixed_precision": ("precision", _choice({"no": "fp32", "fp16": "fp16", "bf16": "bf16"})),
}
# kohya keys about files, logging and the GUI: nothing to take, nothing worth reporting
_QUIET = {"output_dir", "logging_dir", "output_name", "train_data_dir", "reg_data_dir", "pretrained_model_name_or_path",
          "save_model_as", "save_precision", "caption_extension", "log_tracker_name", "wandb_api_key",
          "additional_parameters", "sample_prompts", "sample_every_n_steps", "sample_every_n_epochs",
          "sample_sampler", "save_every_n_epochs", "save_every_n_steps", "save_state", "resume", "training_comment",
          "lora_network_weights", "dim_from_weights", "model_list", "vae", "save_last_n_steps",
          "save_last_n_steps_state", "save_state_on_train_end", "cache_latents", "cache_latents_to_disk"}


def read_kohya_preset(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(our settings, notes): the shared settings of a kohya_ss LoRA preset, checked, and one note
    per kohya setting not taken (and why). ProjectError if the file is not such a preset."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProjectError(f"{path.name} cannot be read as a kohya_ss preset ({exc}).",
                           "Pick the .json file kohya_ss saved (Configuration ▸ Save).") from None
    if not isinstance(data, dict) or not ({"network_dim", "LoRA_type", "train_batch_size"} & set(data)):
        raise ProjectError(f"{path.name} is not a kohya_ss LoRA preset.",
                           "Pick the .json file kohya_ss saved for a LoRA (it has network_dim and LoRA_type).")
    settings: dict[str, Any] = {}
    notes: list[str] = []
    kind = data.get("LoRA_type")
    if kind not in (None, ""):
        adapter = _ADAPTERS.get(str(kind).strip().lower())
        if adapter is None:
            notes.append(f"LoRA_type {kind!r}: not offered here; LoRA on attention is used")
        else:
            settings["adapter"], settings["layers"] = adapter
    if data.get("unet_lr") in (0, "0", "", None):
        data = {k: v for k, v in data.items() if k != "unet_lr"}  # 0 / empty: kohya falls back to learning_rate
    for key, value in data.items():
        if key in _SIMPLE:
            name, convert = _SIMPLE[key]
            if value in ("", None):
                continue
            try:
                settings[name] = convert(value)
            except (TypeError, ValueError) as exc:
                notes.append(f"{key} = {value!r}: {exc}; not taken")
        elif key == "text_encoder_lr":
            try:
                settings["train_text_encoder"] = _number(value) > 0 if value not in ("", None) else False
            except (TypeError, ValueError):
                notes.append(f"text_encoder_lr = {value!r}: not a number; not taken")
        elif key in ("lr_warmup", "lr_warmup_steps"):
            continue  # after the step count is known
        elif key not in _QUIET and key != "LoRA_type" and value not in ("", None, False, 0, "0", 0.0):
            notes.append(f"{key} = {value!r}: no such setting here")
    steps = settings.get("steps") or TrainConfig().steps
    if data.get("lr_warmup_steps") not in (None, "", 0, "0"):
        settings["warmup_steps"] = _whole(data["lr_warmup_steps"])
    elif data.get("lr_warmup") not in (None, "", 0, "0"):  # a percentage of the steps in kohya_ss
        settings["warmup_steps"] = int(round(steps * _number(data["lr_warmup"]) / 100))
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), **settings})
    for problem in config.field_problems():
        name = problem.split(":", 1)[0]
        notes.append(f"{problem}; the default is kept")
        settings.pop(name, None)
    return settings, notes
