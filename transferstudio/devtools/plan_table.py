"""Memory plans of full-size Stable Diffusion models for the README, from their real configs (the
bundled resources/loading/sd1 and sdxl folders) built on the meta device: nothing is downloaded
and no weight is loaded.

    python -m transferstudio.devtools.plan_table

SDXL is not offered for full fine-tuning here; its row shows why.
"""
from __future__ import annotations

from typing import Any

from transferstudio.project.config import TrainConfig

MODELS = (("SD 1.5", "sd", "sd1", 512), ("SDXL", "sdxl", "sdxl", 1024))
# Full fine-tuning as the presets run it on a large card; LoRA as the defaults have it (rank 16).
METHODS = (("lora", {"rank": 16, "alpha": 16.0}), ("full", {"optimizer": "adamw"}))


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
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    from transferstudio.training.memory_plan import gb

    lines = ["| model | method | gradient checkpointing | weights | gradients | optimizer (AdamW) | activations | "
             "context + slack | total |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        plan = row["plan"]
        method = "LoRA r16" if row["method"] == "lora" else "full"
        lines.append(f"| {row['model']} {row['resolution']} px | {method} | {'on' if row['checkpointing'] else 'off'} | "
                     f"{gb(plan.weights)} | {gb(plan.gradients)} | {gb(plan.optimizer)} | {gb(plan.activations)} | "
                     f"{gb(plan.overhead)} | **{gb(plan.total)}** |")
    return "\n".join(lines)


def main() -> None:
    print("Batch 1, bf16 on a CUDA GPU (GB = GiB):\n")
    print(table(plans()))


if __name__ == "__main__":
    main()
