"""Differentiable augmentation for GAN training on few pictures (DiffAugment / ADA style).

The same random translation, cutout and colour changes are applied to real and generated
pictures before the discriminator sees them, so it cannot simply memorise a small set; every
operation is differentiable, so the generator's gradient flows through them. Each picture is
augmented with probability `p`; `AdaptiveStrength` raises `p` when the discriminator grows too
sure of the real pictures (the mean sign of its real outputs above a target) and lowers it
otherwise, as StyleGAN2-ADA does, at a speed suited to short few-shot runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Translation (up to 1/8 of the side, reflected borders), colour (brightness, saturation,
    contrast) and cutout (a square of half the side), each per picture with probability p."""
    if p <= 0:
        return x
    b, device = x.shape[0], x.device

    def chosen() -> torch.Tensor:
        return (torch.rand(b, device=device, generator=generator) < p).to(x.dtype)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, device=device, generator=generator) * (high - low) + low

    # colour: brightness shift, saturation and contrast scales
    on = chosen()[:, None, None, None]
    brightness = uniform(-0.2, 0.2)[:, None, None, None] * on
    x = x + brightness
    mean = x.mean(dim=1, keepdim=True)
    saturation = 1 + (uniform(0.0, 2.0)[:, None, None, None] - 1) * on
    x = (x - mean) * saturation + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + (uniform(0.5, 1.5)[:, None, None, None] - 1) * on
    x = (x - mean) * contrast + mean

    # translation by whole pixels (a grid that lands on pixel centres, so nothing is blurred)
    h, w = x.shape[2], x.shape[3]
    on = chosen()
    shift_x = torch.round(uniform(-0.125, 0.125) * w) * on
    shift_y = torch.round(uniform(-0.125, 0.125) * h) * on
    theta = torch.zeros(b, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift_x / w
    theta[:, 1, 2] = -2 * shift_y / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)

    # cutout: a square of half the side set to zero (grey)
    on = chosen()
    cx = uniform(0.0, 1.0)[:, None, None] * w
    cy = uniform(0.0, 1.0)[:, None, None] * h
    xs = torch.arange(w, device=device, dtype=x.dtype)[None, None, :] + 0.5
    ys = torch.arange(h, device=device, dtype=x.dtype)[None, :, None] + 0.5
    inside = ((xs - cx).abs() < w / 4) & ((ys - cy).abs() < h / 4)
    keep = 1 - inside.to(x.dtype) * on[:, None, None]
    return x * keep[:, None]


class AdaptiveStrength:
    """ADA's controller: every `interval` discriminator steps, move p by `step_size` towards
    keeping the mean sign of the discriminator's real outputs at `target`."""

    def __init__(self, p: float = 0.0, *, target: float = 0.6, interval: int = 4, images_to_full: int = 4000,
                 maximum: float = 0.8) -> None:
        self.p, self.target, self.interval, self.maximum = float(p), target, interval, maximum
        self.images_to_full = images_to_full
        self.signs, self.count, self.steps = 0.0, 0, 0
        self.last_signal = float("nan")

    def observe(self, real_logits: torch.Tensor) -> None:
        self.signs += float(torch.sign(real_logits.detach()).sum())
        self.count += int(real_logits.numel())
        self.steps += 1
        if self.steps % self.interval == 0 and self.count:
            self.last_signal = self.signs / self.count
            adjust = (1 if self.last_signal > self.target else -1) * self.count / self.images_to_full
            self.p = min(self.maximum, max(0.0, self.p + adjust))
            self.signs, self.count = 0.0, 0

    def state_dict(self) -> dict[str, float]:
        return {"p": self.p, "signs": self.signs, "count": self.count, "steps": self.steps,
                "last_signal": self.last_signal}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.p, self.signs = float(state["p"]), float(state["signs"])
        self.count, self.steps = int(state["count"]), int(state["steps"])
        self.last_signal = float(state.get("last_signal", float("nan")))
