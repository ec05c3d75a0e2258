"""Training settings: one dataclass with beginner-safe defaults, a help text per field
(shown as CLI help and UI tooltips) and validation that names the bad field."""
from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from transferstudio.core.errors import ProjectError

METHODS = ("lora", "full", "decoder")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CROPS = ("center", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")
AUGMENTS = ("adaptive", "fixed", "off")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")
ADAPTERS = ("lora", "loha", "lokr")
ADAPTER_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
CACHES = ("auto", "memory", "disk", "off")
# Settings that change how fast a run goes, never what it learns: a continued run takes the
# project's current value for them instead of counting them as changed settings.
SPEED_ONLY_SETTINGS = ("cache", "compile", "processes")
LAYERS = ("attention", "attention+ff", "all-linear", "all+conv")  # presets; the family spec names the layers


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    method: str = _f("lora", "LoRA trains a small adapter on top of the model (fast, small files); "
                     "full fine-tuning changes every weight (small models only); decoder (VAEs) trains "
                     "the decoder only, so the latent space stays the one Stable Diffusion knows.",
                     choices=METHODS)
    steps: int = _f(500, "How many optimizer steps to train in total.", min=1, max=1_000_000)
    learning_rate: float = _f(1e-4, "How big each update is. It depends on the model's size and the method: a LoRA on "
                              "Stable Diffusion takes about 1e-4 and its full fine-tuning about 1e-5, while the small "
                              "starter models take more (the sample project fine-tunes every weight at 5e-4; a LoRA "
                              "on it, 2e-3). New projects start from the rate that suits their model and method.",
                              min=1e-7, max=1.0)
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
    adapter: str = _f("lora", "The kind of adapter. LoRA: the usual one; every tool loads it. LoHa (LyCORIS): "
                      "two small factors multiplied element by element; holds more detail per file size, good for "
                      "styles and textures. LoKr (LyCORIS): a Kronecker product of a tiny and a larger factor; the "
                      "smallest files, good for characters and a strong style. LoHa and LoKr load in ComfyUI, "
                      "Forge and current A1111; in Python, diffusers loads LoKr and peft loads both. Dropout "
                      "becomes module dropout for them; DoRA is for LoRA only.", choices=ADAPTERS)
    layers: str = _f("attention", "Which layers of Stable Diffusion's UNet the adapter changes. Attention: how the "
                     "picture relates to the prompt and itself (the usual LoRA; smallest). + feed-forward: also the "
                     "layers after attention (more style). All linear: every layer of the attention blocks and the "
                     "time projections. All + conv: also the convolutions of the ResNet blocks, which hold texture, "
                     "brush strokes and fine detail (LoCon; larger files). The small pixel models always adapt "
                     "attention and convolutions.", choices=LAYERS)
    conv_rank: int = _f(0, "Rank of the adapter on the convolutions (when the layers include them); 0 uses the "
                        "rank above. Convolutions usually need less: 4–16.", min=0, max=1024)
    conv_alpha: float = _f(0.0, "Alpha of the adapter on the convolutions (effective scale = conv alpha / conv "
                           "rank); 0 uses the alpha above.", min=0.0, max=4096.0)
    dropout: float = _f(0.0, "LoRA dropout: randomly drops adapter inputs to reduce overfitting.",
                        min=0.0, max=0.9)
    caption_dropout: float = _f(0.0, "Train this share of samples with an empty caption (0.05–0.1 is common): "
                                "the model also learns your pictures' look without words, so the style shows "
                                "even in prompts that do not mention it. 0 turns it off.", min=0.0, max=1.0,
                                objective="diffusion")
    shuffle_tags: bool = _f(False, "Shuffle the comma-separated tags of each caption every time it is used, "
                            "so no tag order is learned (for tag-style captions; leave off for sentences).",
                            objective="diffusion")
    keep_tags: int = _f(1, "How many leading tags stay in place and are never dropped when tags are shuffled or "
                        "dropped (1 keeps the trigger word first).", min=0, max=100, objective="diffusion")
    tag_dropout: float = _f(0.0, "Leave out each tag (after the kept ones) with this probability, so the model "
                            "does not tie the look to every tag (0.05–0.1 typical). 0 turns it off.",
                            min=0.0, max=1.0, objective="diffusion")
    train_text_encoder: bool = _f(False, "Also put LoRA on the text encoder(s) (text models only).")
    ema: bool = _f(False, "Keep an exponential moving average of the weights for sampling and export "
                   "(full fine-tuning only).")
    ema_decay: float = _f(0.999, "EMA decay per step.", min=0.0, max=0.99999)
    optimizer: str = _f("adamw", "How the weights are updated. AdamW: the usual choice. AdamW 8-bit: the same "
                        "with its state in 8 bits, about a quarter of AdamW's optimizer memory (needs a CUDA GPU "
                        "and the bitsandbytes package). Adafactor: even less memory, a little less steady. "
                        "Prodigy: finds its own step size — set the learning rate to 1.0.", choices=OPTIMIZERS)
    schedule: str = _f("constant", "How the learning rate changes over the run.", choices=SCHEDULES)
    warmup_steps: int = _f(0, "Steps over which the learning rate ramps up from zero.", min=0, max=1_000_000)
    precision: str = _f("auto", "Number format: auto picks bf16/fp16 on a GPU and fp32 on the CPU.",
                        choices=PRECISIONS)
    fp8_base: bool = _f(False, "Keep the model's frozen weights (the denoiser's and the frozen text encoders') in "
                        "8-bit floats on the GPU and compute in bf16/fp16, as kohya's fp8_base and ComfyUI's fp8 "
                        "files do: about half the memory of the frozen model (FLUX.1 dev LoRA fits a 24 GB card), "
                        "a little less precise. Adapters only (LoRA, LoHa, LoKr); CUDA GPUs (elsewhere the "
                        "weights stay as they are).", objective="diffusion")
    gradient_checkpointing: bool = _f(False, "Recompute activations instead of storing them: less "
                                      "memory, about 30% slower.")
    cache: str = _f("auto", "Encode each picture through the VAE (and each caption through the text encoders, when "
                    "they are not trained) once instead of at every step: the same training, faster. Auto and "
                    "memory keep the encodings in memory for this run; disk also keeps them in the project's "
                    ".cache folder, so later runs on the same pictures skip the encoding (large picture sets). "
                    "Off encodes at every step. With random crop the pictures are encoded at every step (each "
                    "step cuts a new piece). Pixel models (the starter) have nothing to encode.",
                    choices=CACHES, objective="diffusion")
    compile: bool = _f(False, "Compile the denoiser with torch.compile: the first steps take a minute or more while "
                       "it compiles, later steps are faster on a GPU. Needs a C++ compiler on the CPU; off is safe.")
    processes: int = _f(1, "How many GPUs train together (data-parallel: each process trains its share of every "
                        "batch on its own GPU). The batch size stays the whole step's batch, so the result is the "
                        "same as on one GPU, only faster; a run can continue with another count.", min=1, max=64,
                        multi_gpu=True)
    masked_loss: bool = _f(False, "Train only where a mask says: the transparent parts of a PNG (they are "
                           "then not turned white), or a black-and-white `name.mask.png` beside a picture (white "
                           "trains, black is left out). Pictures without either train everywhere. For a subject "
                           "without its background.", objective="diffusion")
    noise_offset: float = _f(0.0, "Adds a little offset noise so the model can learn very dark or "
                             "bright images. 0.05–0.1 if you need it.", min=0.0, max=1.0, objective="diffusion")
    class_pictures: int = _f(0, "Prior preservation (DreamBooth): the base model makes this many pictures of the "
                             "general class once (kept in the project, shown under Pictures) and trains on them beside "
                             "yours, so it keeps what it knew about the class while it learns your subject. 0 turns it "
                             "off; 50–200 is typical.", min=0, max=10_000, objective="diffusion")
    class_prompt: str = _f("", "What the class is, for prior preservation, e.g. 'a photo of a dog' (your captions then "
                           "say 'a photo of sks dog'). Leave empty for models without prompts.", objective="diffusion")
    prior_loss_weight: float = _f(1.0, "How much the class pictures count against yours (1 is the usual DreamBooth "
                                  "weight; lower lets your pictures change more).", min=0.0, max=100.0,
                                  objective="diffusion")
    multires_noise_iterations: int = _f(0, "Multi-resolution (pyramid) noise: adds coarser noise at lower resolutions "
                                        "so the model also learns large areas of colour and light (very dark or "
                                        "bright pictures, big flat shapes). 6–10 is typical; 0 turns it off.",
                                        min=0, max=16, objective="diffusion")
    multires_noise_discount: float = _f(0.3, "How much each coarser level of multi-resolution noise counts (0.1–0.8; "
                                        "lower keeps it subtle).", min=0.0, max=1.0, objective="diffusion")
    input_perturbation: float = _f(0.0, "Input perturbation: the model sees slightly more noise than its target asks "
                                   "for, which evens out training and sampling (a small regulariser; 0.1 is "
                                   "typical). 0 turns it off.", min=0.0, max=1.0, objective="diffusion")
    min_snr_gamma: float = _f(0.0, "Min-SNR loss weighting (5 is common); 0 turns it off.",
                              min=0.0, max=100.0, objective="diffusion")
    timestep_sampling: str = _f("uniform", "Which noise levels training practises. Uniform: all alike (the usual). "
                                "Logit-normal: mostly the middle ones, where composition and style are decided "
                                "(how SD3 trains; often faster for styles).", choices=TIMESTEP_SAMPLINGS,
                                objective="diffusion")
    timestep_low: float = _f(0.0, "Lowest noise level trained, as a share of the schedule (0–1). Raise it to leave "
                             "fine detail alone and teach composition.", min=0.0, max=1.0, objective="diffusion")
    timestep_high: float = _f(1.0, "Highest noise level trained, as a share of the schedule (0–1). Lower it to leave "
                              "composition alone and teach texture and detail.", min=0.0, max=1.0,
                              objective="diffusion")
    debiased_estimation: bool = _f(False, "Debiased estimation: weigh each noise level by 1/√SNR so the nearly clean "
                                   "ones do not dominate (kohya's option; an alternative to Min-SNR).",
                                   objective="diffusion")
    seed: int = _f(42, "Makes runs repeatable: the same seed and settings give the same result.",
                   min=0, max=2**31 - 1)
    preview_every: int = _f(100, "Make preview samples every this many steps (0: only at start and end).",
                            min=0, max=1_000_000)
    preview_prompts: list = _f([], "Prompts for preview samples (text models), one per line. Empty uses your "
                               "trigger word and captions. A line may carry its own settings as in kohya's sample "
                               "prompts: --n negative prompt, --d seed, --s steps, --l guidance, --w/--h size, "
                               "e.g. 'a red barn --n blurry --d 7 --s 20 --l 6'.")
    preview_seeds: list = _f([1, 2, 3, 4], "Seeds for preview samples; fixed so previews are comparable.")
    preview_steps: int = _f(30, "Denoising steps per preview sample.", min=1, max=1000, objective="diffusion")
    validation: str = _f("auto", "Pictures kept out of training to see how the model does on pictures it has not "
                         "seen: the validation loss on the chart, the best step, an overfitting warning and the "
                         "report. auto: one in ten when you have 20 pictures or more (none below that); none; a "
                         "number of pictures (e.g. 3); or a percent (e.g. 10%). At most one in five is held out, "
                         "and the same ones for the whole run.")
    validation_every: int = _f(50, "Measure the validation loss every this many steps (0: only when previews are "
                               "made). Each measure takes about as long as one training step per 4 held-out "
                               "pictures.", min=0, max=1_000_000)
    checkpoint_every: int = _f(250, "Save a checkpoint every this many steps (and always when "
                               "stopped or finished).", min=1, max=1_000_000)
    keep_checkpoints: int = _f(3, "How many recent checkpoints to keep on disk.", min=1, max=1000)
    device: str = _f("auto", "Where to train: auto picks a CUDA GPU, then Apple MPS, then the CPU.",
                     choices=DEVICES)
    # --- reconstruction models (VAEs) ---
    pyramid_weight: float = _f(1.0, "Weight of the structure term: an L1 distance over a Laplacian pyramid, "
                               "which rewards sharp edges and textures at every scale (plain L1 mostly sees "
                               "flat colour). 0 turns it off.", min=0.0, max=100.0, objective="reconstruction")
    kl_weight: float = _f(1e-6, "Weight of the KL term that keeps the latent space smooth; used only when the "
                          "encoder trains (full fine-tuning). Stable Diffusion's VAEs used 1e-6.",
                          min=0.0, max=1.0, objective="reconstruction")
    discriminator_start: int = _f(0, "Start a small patch discriminator at this step (0: no discriminator). "
                                  "It sharpens details once the reconstruction is close; the published VAE "
                                  "recipes start it after the first few thousand steps.",
                                  min=0, max=1_000_000, objective="reconstruction")
    adversarial_weight: float = _f(0.05, "How much the discriminator's opinion counts against the "
                                   "reconstruction terms.", min=0.0, max=10.0, objective="reconstruction")
    # --- GANs ---
    discriminator_learning_rate: float = _f(0.0, "The discriminator's learning rate; 0 uses the learning rate "
                                            "above (the generator's). Lower it if the discriminator wins too "
                                            "fast (its accuracy near 100%).", min=0.0, max=1.0,
                                            objective="adversarial")
    freeze_discriminator_blocks: int = _f(0, "FreezeD: keep the discriminator's first blocks (the ones that "
                                          "see fine detail) as pretrained. 1–2 helps with 10–100 pictures of "
                                          "a domain close to the model's; 0 trains them all.",
                                          min=0, max=16, objective="adversarial")
    augment: str = _f("adaptive", "Differentiable augmentation (shifts, colour, cutout) of real and generated "
                      "pictures, so the discriminator cannot memorise a small set. Adaptive raises the "
                      "strength when the discriminator grows too sure (ADA); fixed uses the strength below; "
                      "off only for large sets.", choices=AUGMENTS, objective="adversarial")
    augment_strength: float = _f(0.0, "How often each picture is augmented (0–1): the fixed strength, or "
                                 "where adaptive starts.", min=0.0, max=1.0, objective="adversarial")
    consistency_weight: float = _f(0.0, "Cross-domain consistency: keeps the variety of the pretrained "
                                   "model (how its samples differ from each other) while they take on your "
                                   "pictures' look. Helps when you have very few pictures (about 10) and "
                                   "samples start to look alike; 1–10 is typical, 0 turns it off.",
                                   min=0.0, max=1000.0, objective="adversarial")
    r1_gamma: float = _f(0.05, "R1 regularisation strength: keeps the discriminator smooth on real pictures, "
                         "which steadies training. Raise it (0.1–1) if training swings; 0 turns it off.",
                         min=0.0, max=100.0, objective="adversarial")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Settings from JSON; unknown keys are ignored. Values are coerced, not validated:
        call `field_problems()` / `problems()`. ProjectError when `data` is not an object."""
        if not isinstance(data, dict):
            raise ProjectError(f"The settings are {_json_kind(data)}, not an object of named settings.",
                               "Restore the file from a backup, or create a new project.")
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        cfg.coerce()
        return cfg

    def coerce(self) -> None:
        """Turn values read from JSON/CLI into the declared types where that loses nothing
        (1 -> 1.0, 300.0 -> 300, "3" -> 3, a tuple -> a list). Anything else is left as it is
        for problems() to name: "false" never becomes True, 2.5 never becomes 2."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            if isinstance(value, bool) or value is None:
                continue
            if kind == "int":
                if isinstance(value, float) and value.is_integer():
                    setattr(self, f.name, int(value))
                elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                    setattr(self, f.name, int(value))
            elif kind == "float":
                if isinstance(value, int):
                    setattr(self, f.name, float(value))
                elif isinstance(value, str):
                    try:
                        setattr(self, f.name, float(value))
                    except ValueError:
                        pass
            elif kind == "list" and isinstance(value, tuple):
                setattr(self, f.name, list(value))

    def field_problems(self) -> list[str]:
        """Each setting checked against its own metadata: type, choices, range, finite numbers,
        lists of the right items. One entry per bad field, starting with its name. Use this
        when reading stored settings (an old run may hold a combination now refused)."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            meta, kind = f.metadata, str(f.type)
            shown = _show(value)
            if kind == "bool":
                if not isinstance(value, bool):
                    out.append(f"{f.name}: {shown} is not true or false")
            elif kind == "str":
                if not isinstance(value, str):
                    out.append(f"{f.name}: {shown} is not text")
                elif "choices" in meta and value not in meta["choices"]:
                    out.append(f"{f.name}: {shown} is not one of {', '.join(meta['choices'])}")
                elif any(unicodedata.category(c) == "Cc" for c in value):
                    out.append(f"{f.name}: {shown} contains a line break or another control character")
            elif kind in ("int", "float"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    out.append(f"{f.name}: {shown} is not a number")
                elif kind == "int" and not isinstance(value, int):
                    out.append(f"{f.name}: {shown} is not a whole number")
                elif not math.isfinite(value):
                    out.append(f"{f.name}: {shown} is not a finite number")
                elif "min" in meta and not meta["min"] <= value <= meta["max"]:
                    out.append(f"{f.name}: {shown} is outside {meta['min']}…{meta['max']}")
            elif kind == "list" and not isinstance(value, list):
                out.append(f"{f.name}: {shown} is not a list")
        seeds = self.preview_seeds
        if isinstance(seeds, list):
            if not seeds:
                out.append("preview_seeds: the list is empty; give at least one seed")
            elif any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 2**32 - 1 for s in seeds):
                out.append("preview_seeds: seeds must be whole numbers from 0 to 4294967295")
        if isinstance(self.validation, str) and validation_request(self.validation) is None:
            out.append(f"validation: {_show(self.validation)} is not auto, none, a number of pictures or a percent "
                       "such as 10%")
        prompts = self.preview_prompts
        if isinstance(prompts, list) and any(not isinstance(p, str) for p in prompts):
            out.append("preview_prompts: prompts must be text")
        elif isinstance(prompts, list):
            from transferstudio.project.prompt_options import prompt_problems

            out.extend(prompt_problems([p for p in prompts if p.strip()]))
        return out

    def conflicts(self) -> list[str]:
        """Settings that contradict each other (one would be silently ignored)."""
        out: list[str] = []
        if self.dora is True and self.method == "full":
            out.append("dora: DoRA is a kind of LoRA and does nothing with full fine-tuning; "
                       "turn DoRA off or choose the LoRA method")
        if self.dora is True and self.method == "decoder":
            out.append("dora: DoRA is a kind of LoRA and does nothing with decoder fine-tuning; "
                       "turn DoRA off or choose the LoRA method")
        if self.dora is True and self.adapter in ("loha", "lokr"):
            out.append(f"dora: DoRA is an option of LoRA adapters, not of {ADAPTER_NAMES[self.adapter]}; "
                       "turn DoRA off or choose the LoRA adapter")
        low, high = self.timestep_low, self.timestep_high
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not isinstance(low, bool) \
                and not isinstance(high, bool) and low >= high:
            out.append(f"timestep_low: {low} is not below timestep_high ({high}); nothing would be left to train")
        if self.fp8_base is True and self.method != "lora":
            out.append("fp8_base: 8-bit base weights are for adapters (the frozen weights under them); full "
                       "fine-tuning trains every weight: turn fp8 base off or choose the LoRA method")
        if self.ema is True and self.method == "lora":
            out.append("ema: the weight average (EMA) is kept for full fine-tuning only; "
                       "turn EMA off or choose full fine-tuning")
        return out

    def problems(self) -> list[str]:
        """Human-readable problems, each starting with the field's name; empty when valid.
        Model-independent; see `problems_for(caps)` for what the chosen model adds."""
        return self.field_problems() + self.conflicts()

    def suggest_for(self, caps: Any, given: Any = ()) -> None:
        """Take the settings the model's family suggests for a new project (a GAN wants larger
        batches and a higher rate than a LoRA), except those in `given` (set by the user)."""
        for name, value in getattr(caps, "suggested", ()) or ():
            if name not in given and hasattr(self, name):
                setattr(self, name, list(value) if isinstance(value, tuple) else value)
        if "method" not in given:
            self.method = self.default_method_for(caps)

    def default_method_for(self, caps: Any) -> str:
        """The method a model trains with when none was chosen: the first its family offers."""
        offered = tuple(getattr(caps, "methods", ()) or ("lora",))
        return self.method if self.method in offered else offered[0]

    def problems_for(self, caps: Any) -> list[str]:
        """What the chosen model (its backbones.base.Capabilities) refuses in these settings:
        a resolution it cannot use, full fine-tuning of a model too large for it."""
        out: list[str] = []
        low, high = resolution_range(caps)
        multiple = max(1, int(caps.resolution_multiple or 1))
        native = int(caps.native_resolution or 0)
        value = self.resolution
        native_text = f"its native {native} px" if native else "its native size"
        field_max = _meta("resolution")["max"]
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= field_max:
            if value % multiple:
                out.append(f"resolution: {value} is not a multiple of {multiple}, which this model needs "
                           f"(0 uses {native_text})")
            elif not low <= value <= high:
                out.append(f"resolution: {value} is outside {low}…{high} px for this model "
                           f"(0 uses {native_text})")
        if getattr(caps, "fixed_resolution", False) and isinstance(value, int) and value not in (0, native):
            out = [f"resolution: this model makes {native} px pictures only (0 uses them)"]
        offered = tuple(getattr(caps, "methods", ("lora", "full")) or ("lora", "full"))
        if self.method in METHODS and self.method not in offered:
            out.append(f"method: this model trains with {' or '.join(offered)} only, not {self.method}")
        elif self.method == "full" and not caps.supports_full_finetune:
            out.append("method: this model is too large for full fine-tuning here; choose LoRA")
        return out


def validation_request(text: str) -> tuple[str, float] | None:
    """The validation setting read: ("auto", 0), ("none", 0), ("count", N) or ("percent", P);
    None when it is none of those."""
    value = text.strip().lower()
    if value in ("auto", "none"):
        return value, 0.0
    try:
        if value.endswith("%"):
            share = float(value[:-1])
            return ("percent", share) if 0 <= share <= 100 and math.isfinite(share) else None
        count = int(value)
        return ("count", float(count)) if 0 <= count <= 100_000 else None
    except ValueError:
        return None


def resolution_range(caps: Any) -> tuple[int, int]:
    """The training resolutions (px) that make sense for a model: from a quarter of its native
    size to four times it, in steps of its resolution multiple (limited to the setting's range)."""
    multiple = max(1, int(caps.resolution_multiple or 1))
    native = int(caps.native_resolution or 0)
    top = _meta("resolution")["max"] // multiple * multiple
    if not native:
        return multiple, top
    low = max(multiple, -(-(native // 4) // multiple) * multiple)
    high = min(top, native * 4 // multiple * multiple)
    return low, max(low, high)


def _show(value: Any) -> str:
    """A value for a one-line message: quoted strings, control characters escaped, short."""
    if isinstance(value, (str, float)):
        text = repr(value)
    else:
        text = json.dumps(value, default=str)  # lists and null as the JSON file shows them
    return text if len(text) <= 60 else text[:57] + "…"


def _json_kind(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true/false"
    return {str: "text", list: "a list", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _meta(name: str) -> dict[str, Any]:
    return next(f.metadata for f in fields(TrainConfig) if f.name == name)


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
