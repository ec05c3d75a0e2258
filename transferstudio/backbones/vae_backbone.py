"""The VAE family's torch half: the loaded model (`VAEBackbone`), loading VAE folders and single
files, previews, exports and the training objective (`Reconstruction`). What a VAE path is, read
from its configs and headers, is vae.py (the family's spec)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferstudio.backbones import batch_draws as draws
from transferstudio.backbones.base import Backbone, ExportSpec, RolePlan
from transferstudio.backbones.objective import Objective, Phase, StepContext
from transferstudio.backbones.vae import (_DIFFUSERS_KEY, PRIOR_FLAG, SINGLE_FILE_CONFIG, VAEFamily, _caps, _resolution,
                                          _scale, _vae_config)
from transferstudio.core.errors import BackboneError


def _load_file(path: Path) -> nn.Module:
    """A VAE-only .safetensors: the original (ldm) layout, with or without `first_stage_model.`,
    or diffusers keys. Every parameter must be filled from the file."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from transferstudio.backbones.sdfiles._paths import loading_root
    from transferstudio.backbones.sdfiles.single_file import _check_complete, _convert

    config = AutoencoderKL.load_config(loading_root() / SINGLE_FILE_CONFIG / "vae")
    try:
        raw = load_file(str(path))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise BackboneError(f"The VAE file {path.name} cannot be read ({exc}).",
                            "It may be incomplete; get the file again.") from None
    raw = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
    vae = AutoencoderKL.from_config(config)
    if _DIFFUSERS_KEY in raw:
        state = raw
    else:
        state = _convert("vae", path.name, convert_ldm_vae_checkpoint, raw, config)
    state = _check_complete("vae", path.name, state, vae.state_dict())
    vae.load_state_dict(state)
    return vae


def load(path: Path) -> VAEBackbone:
    """A VAE folder or single file, every weight from the files (VAEFamily.load)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_file():
        return VAEBackbone(_load_file(path), source=path)
    if _vae_config(path) is None:
        raise BackboneError(f"{path} is not a VAE folder (no AutoencoderKL config.json).",
                            "Pick an AutoencoderKL folder, e.g. the vae/ folder of a Stable Diffusion model.")
    try:
        vae = AutoencoderKL.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                            torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise BackboneError(f"Could not load the VAE from {path}: {exc}",
                            "The folder may be incomplete or damaged.") from None
    return VAEBackbone(vae, source=path, prior_samples=bool((_vae_config(path) or {}).get(PRIOR_FLAG)))


def skeleton(path: Path) -> VAEBackbone:
    """The VAE at `path` from its config alone (VAEFamily.skeleton)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    config = VAEFamily._file_config() if path.is_file() else _vae_config(path)
    if not config:
        raise BackboneError(f"{path} is not a VAE.", "Pick an AutoencoderKL folder or a VAE .safetensors file.")
    return VAEBackbone(AutoencoderKL.from_config(config), source=path, prior_samples=bool(config.get(PRIOR_FLAG)))


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: real/fake scores per patch (spectral norm keeps it tame on few pictures)."""

    def __init__(self, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        blocks: list[nn.Module] = [sn(nn.Conv2d(3, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(layers - 1):
            blocks += [sn(nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels *= 2
        blocks.append(sn(nn.Conv2d(channels, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VAEBackbone(Backbone):
    family = "vae"

    def __init__(self, vae: nn.Module, *, source: Path, prior_samples: bool = False) -> None:
        self.vae = vae.float().eval()
        self.vae.requires_grad_(False)
        self.source = Path(source)
        self.scheduler_config = {}
        self.device = torch.device("cpu")
        self.discriminator: nn.Module | None = None
        config = dict(vae.config)
        self.caps = _caps(_resolution(config), _scale(config), prior=prior_samples)

    @property
    def denoiser(self) -> nn.Module:
        return self.vae

    def lora_targets(self) -> list[str]:
        return []

    def text_encoder_lora_targets(self) -> list[str]:
        return []

    def configure(self, config: Any) -> None:
        """A patch discriminator when the run asks for one (it trains and is checkpointed with the run)."""
        if int(getattr(config, "discriminator_start", 0) or 0) > 0 and self.discriminator is None:
            with torch.random.fork_rng():  # its own seed; the run's random state is left alone
                torch.manual_seed(int(config.seed) + 7)
                self.discriminator = PatchDiscriminator().to(self.device)

    def training_roles(self, method: str, *, train_text_encoder: bool = False) -> dict[str, RolePlan]:
        if method == "full":
            roles = {"vae": RolePlan(self.vae, "full")}
        else:  # decoder only: the latent space stays SD's
            roles = {"decoder": RolePlan(self.vae.decoder, "full")}
            if getattr(self.vae, "post_quant_conv", None) is not None:
                roles["post_quant_conv"] = RolePlan(self.vae.post_quant_conv, "full")
        if self.discriminator is not None:
            roles["discriminator"] = RolePlan(self.discriminator, "full")
        return roles

    def objective(self, config: Any) -> Objective:
        return Reconstruction(self, config)

    def to(self, device: torch.device, dtype: torch.dtype) -> "VAEBackbone":
        self.device = torch.device(device)
        self.vae.to(self.device)  # trained weights stay fp32
        if self.discriminator is not None:
            self.discriminator.to(self.device)
        return self

    def enable_gradient_checkpointing(self) -> None:
        if hasattr(self.vae, "enable_gradient_checkpointing"):
            self.vae.enable_gradient_checkpointing()

    # --- what it does ---------------------------------------------------------------------------
    def reconstruct(self, pixels: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode and decode. With a generator the latent is sampled from the posterior (training);
        without, its mean (previews and metrics: deterministic)."""
        dist = self.vae.encode(pixels).latent_dist
        if generator is None:
            z = dist.mean
        else:
            z = dist.mean + dist.std * draws.randn(dist.mean.shape, generator=generator, device=dist.mean.device)
        self._last_kl = dist.kl().mean() / dist.mean[0].numel()
        return self.vae.decode(z).sample

    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None, negative_prompt: str = "",
               references: Sequence[Any] | None = None) -> list[Any]:
        """With `references` (PIL pictures): each original beside its reconstruction. Without:
        pictures decoded from the prior (one seeded latent per seed, z ~ N(0, I) / scaling_factor:
        the latent scale the VAE's encoder produces)."""
        was_training = self.vae.training
        self.vae.eval()
        try:
            with torch.no_grad():
                if references:
                    pixels = _to_tensor(references).to(self.device)
                    recon = self.reconstruct(pixels)
                    return [_side_by_side(o, r) for o, r in zip(_to_pil(pixels), _to_pil(recon))]
                width, height = size or (self.caps.native_resolution,) * 2
                scale = self.caps.resolution_multiple
                channels = int(self.vae.config.latent_channels)
                latents = torch.stack([torch.randn((channels, height // scale, width // scale),
                                                   generator=torch.Generator().manual_seed(int(s)))
                                       for s in seeds]).to(self.device)
                scaling = float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)
                return _to_pil(self.vae.decode(latents / scaling).sample)
        finally:
            self.vae.train(was_training)

    def reconstruction_metrics(self, references: Sequence[Any]) -> dict[str, float]:
        """Mean PSNR (dB) and SSIM of held-out pictures against their reconstructions."""
        from transferstudio.backbones.image_quality import psnr, ssim

        was_training = self.vae.training
        self.vae.eval()
        try:
            with torch.no_grad():
                pixels = _to_tensor(references).to(self.device)
                recon = self.reconstruct(pixels).clamp(-1, 1)
                return {"psnr": float(psnr(recon, pixels).mean()), "ssim": float(ssim(recon, pixels).mean())}
        finally:
            self.vae.train(was_training)

    # --- saving -----------------------------------------------------------------------------------
    def export_spec(self) -> ExportSpec:
        return ExportSpec(modelspec_architecture="stable-diffusion-vae")

    def plain_modules(self) -> list[nn.Module]:
        return [self.vae]

    def save_full(self, folder: Path) -> None:
        """A diffusers AutoencoderKL folder (`AutoencoderKL.from_pretrained` loads it)."""
        self.vae.save_pretrained(Path(folder), safe_serialization=True)

    def save_single_file(self, file: Path, *, dtype: torch.dtype | None = None,
                         metadata: dict[str, str] | None = None) -> None:
        """One VAE .safetensors in the original (ldm) layout, without the checkpoint prefix, as
        A1111/Forge/ComfyUI keep them in models/VAE (diffusers' `from_single_file` reads it too)."""
        from transferstudio.backbones.sdfiles.original_layout import VAE_PREFIX, vae_to_original, write_safetensors

        tensors = {k.removeprefix(VAE_PREFIX): v for k, v in vae_to_original(self.vae).items()}
        write_safetensors(file, tensors, dtype=dtype, metadata={"format": "pt", **(metadata or {})})


class Reconstruction(Objective):
    """L1 + Laplacian-pyramid L1 (+ KL when the encoder trains) (+ a patch discriminator later)."""

    def __init__(self, backbone: VAEBackbone, config: Any) -> None:
        self.backbone = backbone
        self.config = config
        self.train_encoder = config.method == "full"
        self.start = int(getattr(config, "discriminator_start", 0) or 0)
        trained = ("vae",) if self.train_encoder else ("decoder", "post_quant_conv")
        phases = [Phase("autoencoder", roles=trained)]
        if backbone.discriminator is not None:
            phases.append(Phase("discriminator", roles=("discriminator",)))
        self.phases = tuple(phases)
        self._recon: dict[int, torch.Tensor] = {}

    def active(self, phase: Phase, step: int) -> bool:
        return phase.name != "discriminator" or step > self.start

    def loss(self, phase: Phase, batch: Any, ctx: StepContext) -> torch.Tensor:
        from transferstudio.backbones.image_quality import laplacian_pyramid_l1

        config, backbone = self.config, self.backbone
        pixels = batch.pixels.to(ctx.device)
        disc = backbone.discriminator
        if phase.name == "discriminator":  # hinge loss on real pictures and this step's reconstructions
            fake = self._recon.pop(id(batch)).detach()
            return F.relu(1 - disc(pixels)).mean() + F.relu(1 + disc(fake)).mean()
        with torch.autocast(ctx.device.type, dtype=ctx.amp, enabled=ctx.amp is not None):
            if self.train_encoder:
                recon = backbone.reconstruct(pixels, generator=ctx.generator).float()
            else:
                with torch.no_grad():  # the encoder is frozen: its latents are fixed inputs
                    dist = backbone.vae.encode(pixels).latent_dist
                    z = dist.mean + dist.std * draws.randn(dist.mean.shape, generator=ctx.generator,
                                                           device=dist.mean.device)
                recon = backbone.vae.decode(z).sample.float()
        loss = F.l1_loss(recon, pixels) + config.pyramid_weight * laplacian_pyramid_l1(recon, pixels)
        if self.train_encoder and config.kl_weight:
            loss = loss + config.kl_weight * backbone._last_kl
        if disc is not None and ctx.step > self.start:  # the discriminator phase reads it next
            self._recon[id(batch)] = recon
            loss = loss - config.adversarial_weight * disc(recon).mean()
        return loss

    def reported(self, losses: dict[str, float]) -> float:
        return losses.get("autoencoder", float("nan"))

    def evaluate(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        """Each picture's mean absolute reconstruction error (pixels in [-1, 1]) through the
        posterior mean: deterministic, so it needs no noise."""
        pixels = batch.pixels.to(ctx.device)
        with torch.no_grad():
            recon = self.backbone.reconstruct(pixels).float().clamp(-1, 1)
        return (recon - pixels.float()).abs().mean(dim=(1, 2, 3))

    def ema_roles(self) -> tuple[str, ...] | None:
        return ("vae",) if self.train_encoder else ("decoder", "post_quant_conv")


# --- pictures <-> tensors ------------------------------------------------------------------------

def _to_tensor(images: Sequence[Any]) -> torch.Tensor:
    import numpy as np

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_pil(pixels: torch.Tensor) -> list[Any]:
    from PIL import Image

    arrays = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def _side_by_side(original: Any, reconstruction: Any, gap: int = 2) -> Any:
    from PIL import Image

    w, h = original.size
    out = Image.new("RGB", (2 * w + gap, h), (255, 255, 255))
    out.paste(original, (0, 0))
    out.paste(reconstruction, (w + gap, 0))
    return out
