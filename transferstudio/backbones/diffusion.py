"""The denoising training objective, shared by every diffusion family (DDPM, SD, SDXL)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from transferstudio.backbones import batch_draws as draws
from transferstudio.backbones.base import Backbone, Conditioning, RolePlan
from transferstudio.backbones.objective import Objective, Phase, StepContext


def noise_scheduler(config: dict[str, Any]) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)


def sample_timesteps(count: int, total: int, *, generator: torch.Generator, device: torch.device,
                     sampling: str = "uniform", low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Training timesteps: uniform over the schedule (the default, drawn exactly as before these
    settings existed), or logit-normal (most in the middle of the schedule, where a fine-tune
    learns composition and style, as SD3 trains), within [low, high] of the schedule."""
    first = min(total - 1, max(0, int(round(low * (total - 1)))))
    last = min(total - 1, max(first, int(round(high * (total - 1)))))
    if sampling == "logit-normal":
        u = torch.sigmoid(draws.randn((count,), generator=generator, device=device))
        return (first + u * (last - first)).round().long()
    return draws.randint(first, last + 1, (count,), generator=generator, device=device).long()


def diffusion_loss(backbone: Backbone, scheduler: Any, clean: torch.Tensor, cond: Conditioning, *,
                   generator: torch.Generator, noise_offset: float = 0.0,
                   min_snr_gamma: float = 0.0, mask: torch.Tensor | None = None,
                   timestep_sampling: str = "uniform", timestep_low: float = 0.0, timestep_high: float = 1.0,
                   debiased: bool = False, multires_iterations: int = 0, multires_discount: float = 0.3,
                   input_perturbation: float = 0.0) -> torch.Tensor:
    """Noise `clean` at random timesteps and score the denoiser against the right target.
    `mask` (B, 1, H, W) in [0, 1] at picture size weights each position (masked loss): it is
    averaged down to the denoiser's resolution (latents are 8× smaller for SD), and each picture's
    loss is the weighted mean over its masked-in area."""
    b = clean.shape[0]
    device = clean.device
    noise = draws.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    if noise_offset:
        # Offset noise lets the model shift the mean brightness of a whole image.
        noise = noise + noise_offset * draws.randn((b, clean.shape[1], 1, 1), generator=generator,
                                                   device=device, dtype=clean.dtype)
    if multires_iterations > 0:
        noise = multires_noise(noise, multires_iterations, multires_discount, generator)
    timesteps = sample_timesteps(b, scheduler.config.num_train_timesteps, generator=generator, device=device,
                                 sampling=timestep_sampling, low=timestep_low, high=timestep_high)
    seen = noise
    if input_perturbation > 0:  # the input carries a little extra noise; the target stays the drawn noise
        seen = noise + input_perturbation * draws.randn(noise.shape, generator=generator, device=device,
                                                        dtype=noise.dtype)
    noisy = scheduler.add_noise(clean, seen, timesteps)
    prediction_type = scheduler.config.prediction_type
    target = _target(scheduler, clean, noise, timesteps)
    pred = backbone.predict(noisy, timesteps, cond).float()
    per_sample = per_sample_errors(pred, target, mask)
    if min_snr_gamma > 0:
        snr = _snr(scheduler, timesteps).to(per_sample.device)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        weight = clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
        per_sample = per_sample * weight
    if debiased:  # debiased estimation: 1/√SNR evens out how much each noise level counts
        snr = _snr(scheduler, timesteps).to(per_sample.device)
        per_sample = per_sample / torch.sqrt(snr.clamp(min=1e-3, max=1000.0))
    return per_sample.mean()


def per_sample_errors(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each picture's mean squared error (B,); with `mask` (B, 1, H, W) in [0, 1] at picture size,
    averaged down to the prediction's resolution, the weighted mean over its masked-in area."""
    errors = F.mse_loss(pred, target.float(), reduction="none")
    dims = tuple(range(1, pred.ndim))
    if mask is None:
        return errors.mean(dim=dims)
    weight = F.adaptive_avg_pool2d(mask.to(errors), errors.shape[-2:])
    return (errors * weight).sum(dim=dims) / (weight.sum(dim=dims) * errors.shape[1]).clamp_min(1e-6)


def multires_noise(noise: torch.Tensor, iterations: int, discount: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Multi-resolution (pyramid) noise: `noise` plus noise drawn at half, quarter… the resolution
    and scaled up smoothly, level i weighted discount**i, then each picture's noise brought back to
    unit variance. The coarse levels shift whole regions, which plain per-pixel noise barely does,
    so the model learns large areas of light and colour."""
    b, c, h, w = noise.shape
    total = noise
    for level in range(1, iterations + 1):
        size = (max(1, h >> level), max(1, w >> level))
        coarse = draws.randn((b, c, *size), generator=generator, device=noise.device, dtype=noise.dtype)
        total = total + F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * discount ** level
        if size == (1, 1):
            break
    return total / total.flatten(1).std(dim=1).clamp_min(1e-6).view(b, 1, 1, 1)


def _target(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unknown prediction type {prediction_type}")


# The noise levels a validation measure visits: four evenly spread shares of the schedule, the
# same for every picture, so two measures differ only by the model.
EVALUATION_LEVELS = (0.125, 0.375, 0.625, 0.875)


def diffusion_errors(backbone: Backbone, scheduler: Any, clean: torch.Tensor, cond: Conditioning, *,
                     generator: torch.Generator) -> torch.Tensor:
    """Each picture's plain (unweighted) denoising error averaged over EVALUATION_LEVELS, with
    noise drawn from `generator`: (B,)."""
    total = scheduler.config.num_train_timesteps
    errors = []
    for level in EVALUATION_LEVELS:
        timesteps = torch.full((clean.shape[0],), int(round(level * (total - 1))), device=clean.device,
                               dtype=torch.long)
        noise = draws.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        pred = backbone.predict(noisy, timesteps, cond).float()
        target = _target(scheduler, clean, noise, timesteps).float()
        errors.append((pred - target).pow(2).mean(dim=tuple(range(1, pred.ndim))))
    return torch.stack(errors).mean(dim=0)


def _snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1 - alphas)


class ClassPictureLoss:
    """The loss of a batch of your pictures plus, with prior preservation, its class pictures'
    (weighted by `prior_loss_weight`), each reported as a term. Needs `_loss_of(batch, ctx)`."""

    config: Any

    def loss(self, phase: Phase, batch: Any, ctx: StepContext) -> torch.Tensor:
        loss = self._loss_of(batch, ctx)
        prior = getattr(batch, "prior", None)
        if prior is None:
            return loss
        prior_loss = self._loss_of(prior, ctx)  # class pictures: what the base model knew about the class
        if torch.is_grad_enabled():
            self.terms = {"your pictures": float(loss.detach()), "class pictures": float(prior_loss.detach())}
        return loss + self._prior_weight() * prior_loss

    def parts(self, batch: Any) -> list[tuple[Any, float]]:
        """Your pictures, then the class pictures with their weight (cut apart in a data-parallel
        run: a class set's last batch may be smaller than yours)."""
        prior = getattr(batch, "prior", None)
        if prior is None:
            return [(batch, 1.0)]
        return [(dataclasses.replace(batch, prior=None), 1.0), (prior, self._prior_weight())]

    def _prior_weight(self) -> float:
        return float(getattr(self.config, "prior_loss_weight", 1.0))

    def loss_terms(self) -> dict[str, float]:
        terms, self.terms = getattr(self, "terms", {}), {}
        return terms


class EncodingCaches:
    """The pictures' latents and the captions' text features, from the encoding stores the trainer
    hands over (training.caching) where they have them: the diffusion and flow objectives share it.
    Needs of the backbone: latent_distribution, sample_latents, encode_images, text_features,
    conditioning_from and encode_conditioning."""

    backbone: Any

    latent_store: Any = None  # data.encoding_cache.EncodingStore of (mean, std) per picture variant
    text_store: Any = None  # ... of text features per caption

    def use_caches(self, latents: Any, texts: Any) -> bool:
        self.latent_store, self.text_store = latents, texts
        return True

    def precompute(self, images: Any, batch_size: int) -> Iterator[tuple[int, int]]:
        """Encode every picture variant training can meet (centre crop, both flips) into the
        latent store, a bucket's worth of `batch_size` at a time: (done, total) after each."""
        if self.latent_store is None:
            return
        variants = images.encoding_variants()
        by_bucket: dict[Any, list] = {}
        for variant in variants:
            by_bucket.setdefault(images.variant_bucket(variant), []).append(variant)
        done = 0
        for members in by_bucket.values():
            for k in range(0, len(members), batch_size):
                chunk = members[k:k + batch_size]
                self._latent_parts(images.load_variants(chunk))
                done += len(chunk)
                yield done, len(variants)

    def _latent_parts(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the batch's latents, from the store where it has them."""
        store, backbone = self.latent_store, self.backbone
        found = [store.get(key) for key in batch.keys]
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            pixels = batch.pixels[missing] if len(missing) < len(found) else batch.pixels
            mean, std = backbone.latent_distribution(pixels.to(backbone.device))
            for row, i in enumerate(missing):
                found[i] = {"mean": mean[row], "std": std[row]}
                store.put(batch.keys[i], found[i])
        device = backbone.device
        return (torch.stack([f["mean"].to(device) for f in found]),
                torch.stack([f["std"].to(device) for f in found]))

    def _latents(self, batch: Any, ctx: StepContext, *, sample: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch's latents: sampled from the posterior with `generator` (the global one when
        None), or its mean; from the store where it has them — the same draw either way."""
        backbone = self.backbone
        with torch.no_grad():
            if self.latent_store is None or getattr(batch, "keys", None) is None:
                pixels = batch.pixels.to(ctx.device)
                return (backbone.encode_images(pixels, generator=generator) if sample else
                        backbone.encode_images(pixels, sample=False)).float()
            mean, std = self._latent_parts(batch)
            return backbone.sample_latents(mean, std, generator=generator) if sample else mean

    # Called before the text encoders run (a caption the store lacks), so that encoders moved off
    # the GPU after `encode_all_captions` can come back first (set by the trainer).
    before_encoding: Any = None

    def encode_all_captions(self, captions: list[str], batch_size: int = 8) -> bool:
        """Put every caption's text features in the text store; whether it now holds them all
        (then training never needs the frozen text encoders)."""
        from transferstudio.data.encoding_cache import caption_key

        store = self.text_store
        if store is None:
            return False
        missing = [c for c in captions if caption_key(c) not in store]
        for k in range(0, len(missing), batch_size):
            chunk = missing[k:k + batch_size]
            with torch.no_grad():
                features = self.backbone.text_features(chunk)
            for row, caption in enumerate(chunk):
                store.put(caption_key(caption), {name: t[row] for name, t in features.items()})
        return all(caption_key(c) in store for c in captions)

    def _conditioning(self, batch: Any, *, train_text_encoder: bool) -> Any:
        backbone = self.backbone
        sizes = dict(original_sizes=batch.original_sizes, crop_top_left=batch.crop_top_left,
                     target_size=batch.target_size)
        if self.text_store is None or train_text_encoder:
            return backbone.encode_conditioning(batch.captions, train_text_encoder=train_text_encoder, **sizes)
        from transferstudio.data.encoding_cache import caption_key

        keys = [caption_key(c) for c in batch.captions]
        missing = sorted({c for c, k in zip(batch.captions, keys) if k not in self.text_store})
        if missing and self.before_encoding is not None:
            self.before_encoding()
        if missing:
            with torch.no_grad():
                features = backbone.text_features(missing)
            for row, caption in enumerate(missing):
                self.text_store.put(caption_key(caption), {name: t[row] for name, t in features.items()})
        rows = [self.text_store.get(k) for k in keys]
        if any(r is None for r in rows):  # more captions than the store holds: encode this batch
            return backbone.encode_conditioning(batch.captions, train_text_encoder=False, **sizes)
        stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
        return backbone.conditioning_from(stacked, **sizes)


class DiffusionObjective(ClassPictureLoss, EncodingCaches, Objective):
    """Noise the encoded pictures at random timesteps; score the denoiser against its target."""

    phases = (Phase("denoiser"),)

    def __init__(self, backbone: Backbone, config: Any) -> None:
        self.backbone = backbone
        self.config = config
        self.scheduler = noise_scheduler(backbone.scheduler_config)

    def _loss_of(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        backbone, config = self.backbone, self.config
        with torch.no_grad():
            clean = self._latents(batch, ctx) if backbone.caps.latent else \
                backbone.encode_images(batch.pixels.to(ctx.device)).float()
        with torch.autocast(ctx.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
            cond = self._conditioning(batch, train_text_encoder=config.train_text_encoder)
            masks = getattr(batch, "masks", None)
            return diffusion_loss(backbone, self.scheduler, clean, cond, generator=ctx.generator,
                                  noise_offset=config.noise_offset, min_snr_gamma=config.min_snr_gamma,
                                  mask=masks.to(ctx.device) if masks is not None else None,
                                  timestep_sampling=config.timestep_sampling, timestep_low=config.timestep_low,
                                  timestep_high=config.timestep_high, debiased=config.debiased_estimation,
                                  multires_iterations=config.multires_noise_iterations,
                                  multires_discount=config.multires_noise_discount,
                                  input_perturbation=config.input_perturbation)


    def evaluate(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        backbone = self.backbone
        with torch.no_grad():
            # the mean latent: a measure must not draw from the run's random numbers
            clean = self._latents(batch, ctx, sample=False) if backbone.caps.latent else \
                backbone.encode_images(batch.pixels.to(ctx.device)).float()
            with torch.autocast(ctx.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
                cond = self._conditioning(batch, train_text_encoder=False)
                return diffusion_errors(backbone, self.scheduler, clean, cond, generator=ctx.generator)


class DiffusionBackbone(Backbone):
    """What every diffusion family shares: a denoiser trained on the diffusion objective, its
    weights under the role "unet" (the checkpoint key prefix), and LoRA on the text encoders
    when asked."""

    layers = "attention"  # the run's layer preset (TrainConfig.layers), set by `configure`

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.layers = str(getattr(config, "layers", "") or "attention")

    def training_roles(self, method: str, *, train_text_encoder: bool = False) -> dict[str, RolePlan]:
        if method == "full":
            return {"unet": RolePlan(self.denoiser, "full")}
        targets, conv = self.adapter_targets(self.layers)
        roles = {"unet": RolePlan(self.denoiser, "lora", tuple(targets), conv=tuple(conv))}
        if train_text_encoder:
            for role, encoder in zip(("text_encoder", "text_encoder_2"), self.text_encoders()):
                roles[role] = RolePlan(encoder, "lora", tuple(self.text_encoder_lora_targets()))
        return roles

    def objective(self, config: Any) -> DiffusionObjective:
        return DiffusionObjective(self, config)
