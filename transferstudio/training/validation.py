"""The objective's error on pictures it does not train on, measured the same way every time:
the validation loss of a run and the domain check's measure."""
from __future__ import annotations

from typing import Any, Callable

import torch

from transferstudio.backbones.objective import Objective, StepContext

BATCH = 4  # pictures per forward pass


def mean_error(objective: Objective, images: Any, ctx: StepContext, *, seed: int,
               measure: Callable[[Any, StepContext], torch.Tensor | None] | None = None
               ) -> tuple[float, list[float]] | None:
    """(mean, per-picture errors) of `measure` (default `objective.evaluate`) over every picture
    of `images` (a data.dataset.TrainingImages without flips or random crops), in a fixed order
    with the noise of `ctx.generator`. The caller puts the model in eval mode. None when the
    family has no measure."""
    measure = measure or objective.evaluate
    errors: list[torch.Tensor] = []
    with torch.no_grad():
        for indexes in images.epoch_batches(0, seed, BATCH):
            result = measure(images.load_batch(indexes, None), ctx)
            if result is None:
                return None
            errors.append(result.detach().float().cpu())
    if not errors:
        return None
    values = torch.cat(errors)
    return float(values.mean()), [float(v) for v in values]
