"""What one optimizer step minimises, as a family states it.

An objective has one or more phases. Each phase has its own optimizer over the weights of some
training roles and its own loss; the Trainer runs the active phases in order every step, over
the same micro-batches. Diffusion and reconstruction objectives have one phase; a GAN has a
discriminator phase and a generator phase.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Phase:
    name: str
    roles: tuple[str, ...] | None = None  # training roles whose weights it updates; None = all
    lr_scale: float = 1.0  # relative to the run's learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's (a GAN's phases use β1 = 0)
    weight_decay: float = 1e-2
    clip_norm: float | None = 1.0  # gradient-norm clipping (None: none)


@dataclass
class StepContext:
    """What a loss may use besides the batch."""

    step: int  # the optimizer step being taken (1-based)
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for fp32
    generator: torch.Generator  # the run's noise generator (on `device`), restored on resume
    config: Any  # the run's TrainConfig


class Objective(ABC):
    phases: tuple[Phase, ...] = (Phase("main"),)

    def active(self, phase: Phase, step: int) -> bool:
        """Whether `phase` runs at optimizer step `step` (e.g. a discriminator that starts later)."""
        return True

    @abstractmethod
    def loss(self, phase: Phase, batch: Any, ctx: StepContext) -> torch.Tensor:
        """The scalar loss of `phase` on one micro-batch (pixels in [-1, 1], captions, sizes)."""

    def parts(self, batch: Any) -> list[tuple[Any, float]]:
        """The batch as (part, weight) pairs whose weighted losses add up to `loss` of the batch:
        a data-parallel run cuts each part by its own count (default: the batch, whole)."""
        return [(batch, 1.0)]

    def reported(self, losses: dict[str, float]) -> float:
        """The one number shown as "loss" from the phases' losses (default: their sum)."""
        return float(sum(losses.values()))

    def ema_roles(self) -> tuple[str, ...] | None:
        """Roles whose weights an EMA follows (None: every fully trained role)."""
        return None

    def wants_ema(self, config: Any) -> bool:
        """Whether the run keeps an EMA (by default the setting, for full fine-tuning)."""
        return bool(config.ema) and config.method != "lora"

    def evaluate(self, batch: Any, ctx: StepContext) -> torch.Tensor | None:
        """Each picture's error under fixed conditions (timesteps, noise, latents drawn from
        `ctx.generator`, which the caller seeds the same way every time), without gradients and
        with the model in eval mode: the validation loss on held-out pictures and the domain
        check's measure. Lower is better; comparable between calls. None: no such measure."""
        return None

    def domain_error(self, batch: Any, ctx: StepContext) -> torch.Tensor | None:
        """The domain check's per-picture measure (lower: more like what the model knows); by
        default the validation measure (`evaluate`)."""
        return self.evaluate(batch, ctx)

    def use_caches(self, latents: Any, texts: Any) -> bool:
        """Take encoding stores (data.encoding_cache.EncodingStore, or None) for the pictures'
        latents and the captions' text features; False: this objective encodes nothing worth
        caching."""
        return False

    def precompute(self, images: Any, batch_size: int) -> Any:
        """Fill the caches for a picture set (data.dataset.TrainingImages) before training:
        yields (done, total) as it goes. Nothing by default."""
        return iter(())

    def loss_terms(self) -> dict[str, float]:
        """The parts of the last step's loss worth charting apart (e.g. the prior-preservation term
        beside the loss on the user's pictures); read once per step."""
        return {}

    def step_signals(self) -> dict[str, float]:
        """Numbers of the last step worth charting besides the losses (e.g. a discriminator's outputs)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State the objective keeps between steps (saved with checkpoints for an exact resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
