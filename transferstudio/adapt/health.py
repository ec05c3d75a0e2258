"""Is a model still a model? Non-finite weights, and outputs that are not numbers.

A run that diverges can leave weights that are finite yet make the denoiser output NaN or inf
(a weight of 3e38 overflows the next sum). Such weights must never be saved as a complete
checkpoint, exported or sampled: the pictures they make are black.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch


def non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None."""
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def all_finite(value: Any) -> bool:
    """Whether every floating tensor in `value` (a tensor, a model output, a tuple of them) is finite."""
    if torch.is_tensor(value):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, Mapping):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    sample = getattr(value, "sample", None)  # diffusers' UNet2DOutput / UNet2DConditionOutput
    return all_finite(sample) if sample is not None else True


class WatchOutputs:
    """`with WatchOutputs(modules) as watch: …` — `watch.finite` is False once any of the
    modules returned NaN or inf during the block."""

    def __init__(self, modules: Iterable[torch.nn.Module]) -> None:
        self.modules = list(modules)
        self.finite = True
        self._hooks: list[Any] = []

    def _hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        if self.finite and not all_finite(output):
            self.finite = False

    def __enter__(self) -> "WatchOutputs":
        self._hooks = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def fresh_advice(project_folder: Path | str | None) -> str:
    """What to do after a run diverged: a continued run keeps its own learning rate, so only a
    fresh run with a lower one gets out."""
    where = f" {project_folder}" if project_folder else " PROJECT"
    return ("Lower the learning rate (or use fp32 precision) in the project's settings, then start a fresh run: "
            f"`transferstudio train{where} --fresh` (in the window: Start, then No to \"Continue it?\"). "
            "Continuing this run would use its old learning rate again.")
