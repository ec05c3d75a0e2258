"""The flow-matching (rectified flow) training objective of Stable Diffusion 3 and FLUX.1.

A picture's latents x0 and noise ε meet on a straight line: at noise level σ ∈ [0, 1] the model
sees `x_σ = (1 − σ)·x0 + σ·ε` and predicts the velocity `ε − x0` (what diffusers' flow-matching
pipelines integrate from σ = 1 to 0).

Noise levels are drawn as shares u ∈ [0, 1] of the schedule — uniform, or logit-normal (u =
sigmoid(N(0, 1)), as SD3 trains), within the run's [timestep_low, timestep_high] — and then shifted
the way the family's scheduler config says (`FlowSchedule`): SD3's fixed `shift` (σ = s·u / (1 +
(s − 1)·u)), or FLUX-dev's resolution-dependent shift (σ = e^μ / (e^μ + 1/u − 1), μ growing with
the number of image tokens, as its pipeline samples).

A family's backbone provides `encode_images`, `encode_conditioning`, `flow_schedule()` and
`predict(noisy, sigmas, cond)`, σ in [0, 1] (each family turns σ into its transformer's timestep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from transferstudio.backbones import batch_draws as draws
from transferstudio.backbones.diffusion import ClassPictureLoss, EncodingCaches, multires_noise, per_sample_errors
from transferstudio.backbones.objective import Objective, Phase, StepContext
from transferstudio.core.errors import UserError

WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
# The noise levels the validation measure visits, as shares of the schedule (then shifted as in
# training): the same four for every picture, so two measures differ only by the model.
EVALUATION_LEVELS = (0.125, 0.375, 0.625, 0.875)


@dataclass(frozen=True)
class FlowSchedule:
    """How a family's shares of the schedule become noise levels (from its scheduler config)."""

    shift: float = 1.0  # SD3: 3.0; FLUX schnell: 1.0 (no shift)
    dynamic: bool = False  # FLUX-dev: the shift depends on the image's token count
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096
    tokens_per_latent: float = 0.25  # image tokens per latent position (FLUX packs 2x2; SD3 patches 2x2)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, tokens_per_latent: float) -> "FlowSchedule":
        """From a FlowMatchEulerDiscreteScheduler config (its defaults where a key is missing)."""
        def num(key: str, default: float) -> float:
            value = config.get(key)
            return float(default if value is None else value)

        return cls(shift=num("shift", 1.0), dynamic=bool(config.get("use_dynamic_shifting", False)),
                   base_shift=num("base_shift", 0.5), max_shift=num("max_shift", 1.15),
                   base_seq_len=int(num("base_image_seq_len", 256)), max_seq_len=int(num("max_image_seq_len", 4096)),
                   tokens_per_latent=tokens_per_latent)

    def mu(self, latent_shape: tuple[int, ...]) -> float:
        """The dynamic shift's μ for latents of this shape, as FLUX's pipeline computes it."""
        tokens = latent_shape[-2] * latent_shape[-1] * self.tokens_per_latent
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return tokens * slope + self.base_shift - slope * self.base_seq_len

    def sigmas(self, shares: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Shares u of the schedule -> noise levels σ (both in [0, 1])."""
        u = shares.clamp(0.0, 1.0)
        if self.dynamic:
            e = math.exp(self.mu(latent_shape))
            return torch.where(u > 0, e / (e + (1.0 / u.clamp_min(1e-12) - 1.0)), torch.zeros_like(u))
        s = self.shift
        return s * u / (1.0 + (s - 1.0) * u)


def sample_shares(count: int, *, generator: torch.Generator, device: torch.device, sampling: str = "uniform",
                  low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Training shares of the schedule in [low, high]: uniform, or logit-normal (mostly the middle)."""
    if sampling == "logit-normal":
        u = torch.sigmoid(draws.randn((count,), generator=generator, device=device))
    else:
        u = draws.rand((count,), generator=generator, device=device)
    return low + u * (high - low)


def loss_weights(sigmas: torch.Tensor, weighting: str) -> torch.Tensor:
    """SD3's loss weightings over noise levels: none, sigma_sqrt (σ⁻²) or cosmap."""
    if weighting == "sigma_sqrt":
        return sigmas.clamp_min(1e-3) ** -2.0
    if weighting == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * sigmas + 2.0 * sigmas ** 2))
    if weighting == "none":
        return torch.ones_like(sigmas)
    raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1))).to(like)


def noised(clean: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε (diffusers' FlowMatchEulerDiscreteScheduler.scale_noise)."""
    s = _expand(sigmas, clean)
    return (1.0 - s) * clean + s * noise


def flow_loss(backbone: Any, clean: torch.Tensor, cond: Any, *, generator: torch.Generator,
              sampling: str = "uniform", low: float = 0.0, high: float = 1.0, noise_offset: float = 0.0,
              multires_iterations: int = 0, multires_discount: float = 0.3, input_perturbation: float = 0.0,
              mask: torch.Tensor | None = None, weighting: str = "none") -> torch.Tensor:
    """The mean (weighted) velocity error of one batch of latents; `mask` (B, 1, H, W) in [0, 1] at
    picture size weights each position as the diffusion loss does."""
    b, device = clean.shape[0], clean.device
    noise = draws.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    if noise_offset:
        noise = noise + noise_offset * draws.randn((b, clean.shape[1], 1, 1), generator=generator, device=device,
                                                   dtype=clean.dtype)
    if multires_iterations > 0:
        noise = multires_noise(noise, multires_iterations, multires_discount, generator)
    shares = sample_shares(b, generator=generator, device=device, sampling=sampling, low=low, high=high)
    sigmas = backbone.flow_schedule().sigmas(shares, tuple(clean.shape))
    seen = noise
    if input_perturbation > 0:  # the input carries a little extra noise; the target stays the drawn noise
        seen = noise + input_perturbation * draws.randn(noise.shape, generator=generator, device=device,
                                                        dtype=noise.dtype)
    target = noise - clean
    pred = backbone.predict(noised(clean, seen, sigmas), sigmas, cond).float()
    per_sample = per_sample_errors(pred, target, mask)
    return (per_sample * loss_weights(sigmas.float(), weighting).to(per_sample)).mean()


def flow_errors(backbone: Any, clean: torch.Tensor, cond: Any, *, generator: torch.Generator) -> torch.Tensor:
    """Each picture's plain velocity error averaged over EVALUATION_LEVELS, noise from `generator`: (B,)."""
    schedule = backbone.flow_schedule()
    errors = []
    for level in EVALUATION_LEVELS:
        sigmas = schedule.sigmas(torch.full((clean.shape[0],), level, device=clean.device), tuple(clean.shape))
        noise = draws.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        pred = backbone.predict(noised(clean, noise, sigmas), sigmas, cond).float()
        errors.append((pred - (noise - clean).float()).pow(2).mean(dim=tuple(range(1, pred.ndim))))
    return torch.stack(errors).mean(dim=0)


class FlowObjective(ClassPictureLoss, EncodingCaches, Objective):
    """Noise the encoded pictures along the straight path at drawn noise levels; score the
    predicted velocity. Prior preservation adds the class pictures' term, as for diffusion."""

    phases = (Phase("denoiser"),)

    def __init__(self, backbone: Any, config: Any, *, weighting: str = "none") -> None:
        if float(getattr(config, "min_snr_gamma", 0.0) or 0.0) > 0:
            raise UserError("Min-SNR weighting is for noise-predicting models; this model learns by flow matching, "
                            "where it does not apply.", "Set Min-SNR gamma to 0 (off) for this model.")
        if getattr(config, "debiased_estimation", False) is True:
            raise UserError("Debiased estimation is for noise-predicting models; this model learns by flow "
                            "matching, where it does not apply.", "Turn debiased estimation off for this model.")
        loss_weights(torch.zeros(1), weighting)  # refuse an unknown weighting now, not at the first step
        self.backbone = backbone
        self.config = config
        self.weighting = weighting

    def _loss_of(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        backbone, config = self.backbone, self.config
        # the latents are drawn from the run's generator too (restored on resume), from the cache
        # where it has the picture (T5 and the VAE then run once per caption and picture, not per step)
        clean = self._latents(batch, ctx, generator=ctx.generator)
        with torch.autocast(ctx.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
            cond = self._conditioning(batch, train_text_encoder=bool(config.train_text_encoder))
            masks = getattr(batch, "masks", None)
            return flow_loss(backbone, clean, cond, generator=ctx.generator, sampling=config.timestep_sampling,
                             low=float(config.timestep_low), high=float(config.timestep_high),
                             noise_offset=float(config.noise_offset),
                             multires_iterations=int(config.multires_noise_iterations),
                             multires_discount=float(config.multires_noise_discount),
                             input_perturbation=float(config.input_perturbation),
                             mask=masks.to(ctx.device) if masks is not None else None, weighting=self.weighting)

    def evaluate(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        with torch.no_grad():
            clean = self._latents(batch, ctx, generator=ctx.generator)
            with torch.autocast(ctx.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
                cond = self._conditioning(batch, train_text_encoder=False)
                return flow_errors(self.backbone, clean, cond, generator=ctx.generator)
