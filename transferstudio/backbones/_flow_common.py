"""What Stable Diffusion 3 (sd3.py) and FLUX.1 (flux.py) share as families: a diffusers pipeline
folder (or a single transformer file, sdfiles/flow_file.py) with a transformer, a VAE with a shift,
CLIP and T5 text encoders and a flow-matching scheduler, read from configs (no torch at import);
loading with every weight checked to be in the files. The shared backbone (_flow_backbone.py) has
the flow-matching objective (flow.py), LoRA on the transformer (and the CLIP encoders), previews
with the family's own pipeline, and diffusers and kohya LoRA exports named through mmdit_layout.

Conventions (as in _sd_common): `encode_conditioning` sizes are (height, width); `sample(size=...)`
takes (width, height); previews use one CPU `torch.Generator().manual_seed(seed)` per picture with
the folder's own FlowMatchEulerDiscreteScheduler, so a plain diffusers script gives the same picture.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.backbones import _sd_common as sdc
from transferstudio.backbones.diffusers_folder import component_problems, read_json
from transferstudio.backbones.sdfiles.detect import FLOW_VARIANTS
from transferstudio.backbones.spec import Capabilities, DomainScale, Family, Inspection, folder_size
from transferstudio.core.errors import BackboneError

if TYPE_CHECKING:
    from torch import nn

    from transferstudio.backbones._flow_backbone import FlowBackbone

PIPELINE_MULTIPLE = 8  # bucket sides stay multiples of 8 as for the other latent families
# The domain check reads the velocity error at 4 fixed noise levels; not calibrated on a released
# model (none can be downloaded here): the SD families' limits, as a start.
DOMAIN = DomainScale(measure="how well it takes noise off the pictures (latent flow-matching error at 4 fixed "
                     "noise levels)", close=1.3, related=2.5)
LAYER_CHOICES = ("attention", "attention+ff", "all-linear", "all+conv")


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    return 2 ** max(0, len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)


class FlowFamily(Family):
    """A flow-matching pipeline family (SD3, FLUX): a diffusers folder, or a single transformer
    file with its VAE and text encoders inside or beside it (sdfiles/flow_file.py)."""

    key = ""
    what = ""  # "Stable Diffusion 3"
    pick_hint = ""
    pipelines: tuple[str, ...] = ()
    transformer_class = ""
    components: dict[str, bool] = {}  # folder -> has weights
    optional: tuple[str, ...] = ()  # components model_index.json may leave out ([null, null])
    lora_text_encoders = 1  # CLIP encoders that may take LoRA

    # --- what a folder holds (configs only) -------------------------------------------------
    def describe(self, path: Path, index: dict[str, Any], configs: dict[str, dict[str, Any]]
                 ) -> tuple[str, str, list[tuple[str, str]], list[str]]:
        """(label, variant, details, problems) of a folder of this family from its configs."""
        raise NotImplementedError

    def native_resolution(self, configs: dict[str, dict[str, Any]]) -> int | None:
        raise NotImplementedError

    def resolution_multiple(self, configs: dict[str, dict[str, Any]]) -> int:
        raise NotImplementedError

    def suggested(self, variant: str) -> tuple[tuple[str, Any], ...]:
        return (("timestep_sampling", "logit-normal"),)

    def folder_advice(self, problems: list[str]) -> str:
        """Advice for a folder's problems when there is better than "re-download it"."""
        return ""

    def _configs(self, path: Path) -> dict[str, dict[str, Any]]:
        return {"transformer": read_json(path / "transformer" / "config.json") or {},
                "vae": read_json(path / "vae" / "config.json") or {},
                "scheduler": read_json(path / "scheduler" / "scheduler_config.json") or {}}

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if path.is_file():
            return self.inspect_file(path)
        index = read_json(path / "model_index.json")
        if index is None or index.get("_class_name") not in self.pipelines:
            return None
        wanted = {name: weights for name, weights in self.components.items()
                  if not (name in self.optional and _left_out(index, name))}
        problems = component_problems(path, wanted)
        configs = self._configs(path)
        cls = configs["transformer"].get("_class_name")
        if configs["transformer"] and cls not in (None, self.transformer_class):
            problems.append(f"its transformer is a {cls}, not a {self.transformer_class}")
        label, variant, details, more = self.describe(path, index, configs)
        problems += more
        resolution = self.native_resolution(configs) if configs["transformer"] and configs["vae"] else None
        found = Inspection(path=path, family=self.key if not problems else None, label=label,
                           usable=not problems, problems=tuple(problems), native_resolution=resolution,
                           prediction_type="flow", size_bytes=folder_size(path),
                           details=(("layout", "diffusers folder"), *details), variant=variant,
                           advice="" if not problems else (self.folder_advice(problems)
                                                           or "Complete or re-download the model folder."))
        return found

    def inspect_file(self, path: Path) -> Inspection | None:
        """A single file of this family (its transformer, with the VAE and text encoders inside or
        as files beside it / in ComfyUI's folders); None when it is not one of ours."""
        from transferstudio.backbones.sdfiles import flow_file

        if path.suffix.lower() not in flow_file.SUFFIXES:
            return None
        try:
            found, parts = flow_file.inspect_parts(path, self.key)
        except BackboneError:
            return None  # unreadable files are the SD family's to explain
        if found.family != self.key:
            return None
        problems = [*found.problems, *(parts.problems if parts else [])]
        advice = " ".join(x for x in (found.advice, *(parts.advice if parts else [])) if x)
        details: list[tuple[str, str]] = [("layout", "single file (transformer)"),
                                          *flow_file.describe_parts(parts)]
        if found.dtype:
            details.append(("precision", found.dtype))
        configs = self._configs(flow_file.loading_folder(str(found.config_key)))
        resolution = self.native_resolution(configs) if configs["transformer"] and configs["vae"] else None
        return Inspection(path=path, family=self.key if not problems else None,
                          label=found.label + (f" ({resolution} px)" if resolution else ""), usable=not problems,
                          problems=tuple(problems), native_resolution=resolution or found.native_resolution,
                          prediction_type="flow", size_bytes=flow_file.sizes(parts, path), details=tuple(details),
                          variant=found.config_key, advice=advice)

    def capabilities(self, found: Inspection) -> Capabilities:
        from transferstudio.backbones.sdfiles.flow_file import loading_folder

        path = Path(found.path)
        configs = self._configs(path) if path.is_dir() else self._configs(loading_folder(str(found.variant)))
        multiple = self.resolution_multiple(configs) if configs.get("transformer") and configs.get("vae") else 16
        return self._caps(found.native_resolution or 1024, multiple, found.label, found.variant or "")

    def typical_capabilities(self) -> Capabilities:
        return self._caps(1024, 16, self.what, "")

    def _caps(self, resolution: int, multiple: int, label: str, variant: str) -> Capabilities:
        return Capabilities(conditioning="text", native_resolution=resolution, resolution_multiple=multiple,
                            supports_full_finetune=False, text_encoders=self.lora_text_encoders,
                            prediction_type="flow", latent=True, methods=("lora",), kohya_lora=True,
                            single_file=False, label=label, domain=DOMAIN, suggested=self.suggested(variant))

    def kohya_text_prefixes(self) -> dict[str, str]:
        return dict(self.backbone_class().kohya_text_prefixes)

    def kohya_unet_names(self, paths: list[str], unet_config: Any) -> dict[str, str]:
        raise NotImplementedError(f"{self.key}: kohya names need the loaded model (its layer sizes)")

    # --- loading ---------------------------------------------------------------------------
    def load(self, path: Path, *, prediction_type: str = "") -> "FlowBackbone":
        path = Path(path)
        if prediction_type and prediction_type != "flow":
            raise BackboneError(f"{self.what} models learn by flow matching; they cannot be loaded as "
                                f"{prediction_type} models.", "Leave the prediction type unset for this model.")
        found = self.inspect(path)
        if found is None:
            raise BackboneError(f"{path} is not a {self.what} model.", self.pick_hint)
        if not found.usable:
            raise BackboneError(f"{path} cannot be used: {'; '.join(found.problems)}.",
                                found.advice or "Complete or re-download the model.")
        if path.is_file():
            return self.load_file(path)
        return self.backbone_class().from_folder(path)

    def skeleton(self, path: Path) -> "FlowBackbone":
        """The model built from its configs alone (a folder's own; a single file's loading files),
        weights wherever the caller's `torch.device(...)` puts them (the memory plan: meta);
        tokenizers are read for real (small files), so conditioning runs as in training."""
        import diffusers
        import torch
        import transformers

        path = Path(path)
        folder, variant = path, ""
        where: dict[str, Path] = {}  # tokenizer -> its folder, where not in `folder` (a single file's T5)
        if path.is_file():
            from transferstudio.backbones.sdfiles import flow_file

            found, parts = flow_file.inspect_parts(path, self.key)
            if found.family != self.key or not found.config_key:
                raise BackboneError(f"{path.name} is not a {self.what} file.", self.pick_hint)
            variant = str(found.config_key)
            folder = flow_file.loading_folder(variant)
            where = flow_file.tokenizer_folders(found, parts)
        index = read_json(folder / "model_index.json") or {}

        def build(name: str) -> Any:
            if _left_out(index, name):
                return None
            library, cls_name = index[name][0], index[name][1]
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                return cls.from_config(cls.load_config(folder / name))
            cls = getattr(transformers, cls_name)
            return cls(transformers.AutoConfig.from_pretrained(folder / name, local_files_only=True))

        def tokenizer(name: str) -> Any:
            if _left_out(index, name):
                return None
            cls = getattr(transformers, index[name][1])
            with torch.device("cpu"):
                return sdc.load_component(cls, where.get(name, folder / name), name.replace("_", " "))

        encoders = {n: build(n) for n in index if n.startswith("text_encoder")}
        tokenizers = {n: tokenizer(n) for n in index if n.startswith("tokenizer")}
        transformer = build("transformer")
        cls = self.backbone_class()
        variant = variant or cls.variant_of(dict(transformer.config))
        return cls(transformer=transformer, vae=build("vae"), encoders=encoders, tokenizers=tokenizers,
                   scheduler_config=sdc.scheduler_config(folder), source=path, pipeline_config=index,
                   label=FLOW_VARIANTS.get(variant, self.what), variant=variant)

    def load_file(self, path: Path) -> "FlowBackbone":
        from transferstudio.backbones.sdfiles.flow_file import load_parts

        parts = load_parts(path)
        return self.backbone_class()(
            transformer=parts["transformer"], vae=parts["vae"], encoders=parts["encoders"],
            tokenizers=parts["tokenizers"], scheduler_config=parts["scheduler_config"], source=path,
            pipeline_config=parts["pipeline_config"], label=parts["label"], variant=parts["variant"])


def _left_out(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return entry is None or (isinstance(entry, list) and (not entry or entry[0] is None))


def load_model(cls: Any, sub: Path, what: str) -> nn.Module:
    return sdc.load_diffusers_model(cls, sub, what)  # refuses a folder that lacks weights


def load_encoder(cls: Any, sub: Path, what: str) -> nn.Module:
    return sdc.load_text_encoder(cls, sub, what)  # refuses a folder that lacks weights


def load_t5(sub: Path, what: str) -> nn.Module:
    from transformers import T5EncoderModel

    return load_encoder(T5EncoderModel, sub, what)


def load_t5_tokenizer(sub: Path, what: str) -> Any:
    from transformers import T5TokenizerFast

    return sdc.load_component(T5TokenizerFast, sub, what)
