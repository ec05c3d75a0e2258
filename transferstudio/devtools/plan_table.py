"""Memory plans of full-size Stable Diffusion, SD3 and FLUX.1 models for the README, from their
real configs (the bundled resources/loading/<key> folders) built on the meta device: nothing is
downloaded and no weight is loaded.

    python -m transferstudio.devtools.plan_table

SDXL is not offered for full fine-tuning here; its row shows why. SD3 and FLUX are planned with
LoRA only (all they are trained with here); their loading folders ship no T5 tokenizer (it is
found on the user's disk), so the plan runs on a copy with a stand-in one: T5 pads every prompt to
the pipeline's length (256 tokens for SD3, 512 for FLUX-dev), so only that length shapes memory,
never the vocabulary.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from transferstudio.project.config import TrainConfig

MODELS = (("SD 1.5", "sd", "sd1", 512), ("SDXL", "sdxl", "sdxl", 1024))
# SD3 / FLUX.1: (label, family, loading folder, resolution)
FLOW_MODELS = (("SD3 medium", "sd3", "sd3-medium", 1024), ("SD3.5 medium", "sd3", "sd3.5-medium", 1024),
               ("SD3.5 large", "sd3", "sd3.5-large", 1024), ("FLUX.1 dev", "flux", "flux-dev", 1024))
# Full fine-tuning as the presets run it on a large card; LoRA as the defaults have it (rank 16).
METHODS = (("lora", {"rank": 16, "alpha": 16.0}), ("full", {"optimizer": "adamw"}))
T5_MAX_LENGTH = 512  # T5's tokenizer_config model_max_length in the SD3 and FLUX downloads


def flow_planning_folder(variant: str, into: Path) -> Path:
    """A copy of resources/loading/<variant> with a stand-in T5 tokenizer (a few pieces, T5's
    special ids and its 512-token length) where the model's own would be: the folder a memory plan
    builds the model from."""
    import json

    from transformers import T5TokenizerFast

    from transferstudio.backbones.sdfiles._paths import loading_root

    folder = Path(into) / variant
    shutil.copytree(loading_root() / variant, folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    name = next(k for k, v in index.items() if isinstance(v, list) and v[1:] == ["T5TokenizerFast"])
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -5.0) for c in "▁abcdefghijklmnopqrstuvwxyz"]
    T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH).save_pretrained(folder / name)
    return folder


def plans(batch_size: int = 1) -> list[dict[str, Any]]:
    """One row per model, method and gradient checkpointing off/on: its MemoryPlan on a CUDA GPU
    in bf16 (the trainer's "auto" on a current GPU)."""
    from transferstudio.backbones.sdfiles._paths import loading_root
    from transferstudio.training.memory_plan import MemoryPlanner

    rows = []
    for label, family, folder, resolution in MODELS:
        planner = MemoryPlanner(loading_root() / folder, family=family, device="cuda", any_method=True)
        for method, settings in METHODS:
            for checkpointing in (False, True):
                config = TrainConfig(method=method, batch_size=batch_size, resolution=resolution,
                                     gradient_checkpointing=checkpointing, precision="bf16", **settings)
                rows.append({"model": label, "method": method, "checkpointing": checkpointing,
                             "resolution": resolution, "plan": planner.plan(config, advise=False)})
    return rows + flow_plans(batch_size)


def flow_plans(batch_size: int = 1, models: tuple = FLOW_MODELS) -> list[dict[str, Any]]:
    """The SD3 / FLUX rows: LoRA rank 16, bf16, gradient checkpointing off and on, and on with
    the frozen weights in fp8 (`fp8_base`)."""
    from transferstudio.training.memory_plan import MemoryPlanner

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, family, variant, resolution in models:
            planner = MemoryPlanner(flow_planning_folder(variant, Path(tmp)), family=family, device="cuda")
            for checkpointing, fp8 in ((False, False), (True, False), (True, True)):
                config = TrainConfig(method="lora", batch_size=batch_size, resolution=resolution,
                                     gradient_checkpointing=checkpointing, precision="bf16", fp8_base=fp8,
                                     **METHODS[0][1])
                rows.append({"model": label, "method": "lora", "checkpointing": checkpointing, "fp8": fp8,
                             "resolution": resolution, "plan": planner.plan(config, advise=False)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    from transferstudio.training.memory_plan import gb

    lines = ["| model | method | gradient checkpointing | weights | gradients | optimizer (AdamW) | activations | "
             "context + slack | total |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        plan = row["plan"]
        method = ("LoRA r16" if row["method"] == "lora" else "full") + (", fp8 base" if row.get("fp8") else "")
        lines.append(f"| {row['model']} {row['resolution']} px | {method} | {'on' if row['checkpointing'] else 'off'} | "
                     f"{gb(plan.weights)} | {gb(plan.gradients)} | {gb(plan.optimizer)} | {gb(plan.activations)} | "
                     f"{gb(plan.overhead)} | **{gb(plan.total)}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Memory plans of full-size models (README tables).")
    parser.add_argument("--flow", action="store_true", help="only the SD3 / FLUX.1 rows")
    args = parser.parse_args(argv)
    print("Batch 1, bf16 on a CUDA GPU (GB = GiB):\n")
    print(table(flow_plans() if args.flow else plans()))


if __name__ == "__main__":
    main()
