"""The GAN family's torch half: the loaded model (`GANBackbone`), loading and writing GAN folders
and generator files, ONNX export, and the training objective (`Adversarial`). What a GAN path is,
read from its config and headers, is gan.py (the family's spec); the networks are gan_model.py."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transferstudio.backbones.augment import AdaptiveStrength, augment
from transferstudio.backbones.base import Backbone, RolePlan
from transferstudio.backbones.gan import (CLASS_NAME, CONFIG_FILE, DISCRIMINATOR_FILE, GENERATOR_FILE, _caps,
                                          _file_config, read_folder_config)
from transferstudio.backbones.gan_config import GANConfig
from transferstudio.backbones.gan_model import Discriminator, Generator, latents
from transferstudio.backbones.objective import Objective, Phase, StepContext
from transferstudio.core.errors import BackboneError

R1_EVERY = 16  # lazy regularisation: R1 every this many discriminator steps, scaled up to match


def load_weights(module: nn.Module, file: Path, what: str) -> None:
    """Every weight must come from the file and fit (safetensors only: nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise BackboneError(f"The {what} weights in {file.name} cannot be read ({exc}).",
                            "The file may be incomplete; copy it again.") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or wrong:
        what_wrong = f"{len(missing)} weights missing" if missing else f"{len(wrong)} weights of the wrong shape"
        raise BackboneError(f"The {what} in {file.name} does not match its config ({what_wrong}, e.g. "
                            f"{(missing or wrong)[0]}).", "The file belongs to another model; copy the folder again.")
    module.load_state_dict({k: state[k].float() for k in expected})


def save_folder(folder: Path, config: GANConfig, generator: nn.Module, discriminator: nn.Module,
                extra: dict[str, Any] | None = None) -> None:
    """A GAN folder that `GANFamily.load` reads back (a backbone to adapt further)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"gan_config": config.to_json()}
    save_file(_contiguous(generator.state_dict()), str(folder / GENERATOR_FILE), metadata=meta)
    save_file(_contiguous(discriminator.state_dict()), str(folder / DISCRIMINATOR_FILE), metadata=meta)
    (folder / CONFIG_FILE).write_text(json.dumps({"_class_name": CLASS_NAME, "config": config.to_dict(),
                                                  **(extra or {})}, indent=2) + "\n", encoding="utf-8")


def save_generator(file: Path, config: GANConfig, generator: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """The generator alone, its config in the metadata (`gan_model.load_generator` reads it)."""
    from safetensors.torch import save_file

    save_file(_contiguous(generator.state_dict()), str(file),
              metadata={"format": "pt", "gan_config": config.to_json(), **(metadata or {})})


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


class GANBackbone(Backbone):
    family = "gan"

    def __init__(self, config: GANConfig, generator: Generator, discriminator: Discriminator, *, source: Path) -> None:
        self.config = config
        self.generator = generator.float().eval()
        self.discriminator = discriminator.float().eval()
        self.generator.requires_grad_(False)
        self.discriminator.requires_grad_(False)
        self.source = Path(source)
        self.scheduler_config = {}
        self.device = torch.device("cpu")
        self.source_generator: Generator | None = None  # the frozen starting point (consistency term)
        self.frozen_blocks = 0
        self.caps = _caps(config.resolution)

    @property
    def denoiser(self) -> nn.Module:
        return self.generator

    def lora_targets(self) -> list[str]:
        return []

    def text_encoder_lora_targets(self) -> list[str]:
        return []

    def configure(self, config: Any) -> None:
        self.frozen_blocks = min(int(getattr(config, "freeze_discriminator_blocks", 0) or 0),
                                 len(self.discriminator.blocks))
        if float(getattr(config, "consistency_weight", 0.0) or 0.0) > 0 and self.source_generator is None:
            self.source_generator = copy.deepcopy(self.generator).eval().requires_grad_(False)

    def training_roles(self, method: str, *, train_text_encoder: bool = False) -> dict[str, RolePlan]:
        frozen = ("from_rgb", *(f"blocks.{i}" for i in range(self.frozen_blocks))) if self.frozen_blocks else ()
        return {"generator": RolePlan(self.generator, "full"),
                "discriminator": RolePlan(self.discriminator, "full", frozen=frozen)}

    def objective(self, config: Any) -> Objective:
        return Adversarial(self, config)

    def to(self, device: torch.device, dtype: torch.dtype) -> "GANBackbone":
        self.device = torch.device(device)
        for module in (self.generator, self.discriminator, self.source_generator):
            if module is not None:
                module.to(self.device)
        return self

    def enable_gradient_checkpointing(self) -> None:
        pass  # small networks: nothing to gain

    # --- what it does ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, seeds: Sequence[int], *, truncation: float = 1.0) -> torch.Tensor:
        """Pictures in [-1, 1] from the seeds' latents (the same latents on every machine)."""
        was = self.generator.training
        self.generator.eval()
        try:
            z = latents(list(seeds), self.config.z_dim).to(self.device)
            return self.generator(z, psi=float(truncation)).clamp(-1, 1).float().cpu()
        finally:
            self.generator.train(was)

    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None, negative_prompt: str = "",
               truncation: float = 1.0, **_: Any) -> list[Any]:
        return to_pictures(self.generate(seeds, truncation=truncation))

    # --- saving -------------------------------------------------------------------------------
    def save_full(self, folder: Path) -> None:
        save_folder(folder, self.config, self.generator, self.discriminator)

    def save_generator(self, file: Path, metadata: dict[str, str] | None = None) -> None:
        save_generator(file, self.config, self.generator, metadata)

    def save_onnx(self, file: Path, *, truncation: float = 1.0) -> None:
        """The generator as ONNX: input `z` (batch × z_dim), output `image` (batch × 3 × H × W, in [-1, 1])."""
        export_onnx(self.generator, self.config, file, truncation=truncation)

    def plain_modules(self) -> list[nn.Module]:
        return [self.generator]


def export_onnx(generator: Generator, config: GANConfig, file: Path, *, truncation: float = 1.0) -> None:
    import warnings

    class _Clamped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.generator(z, psi=truncation).clamp(-1, 1)

    model = _Clamped().eval().cpu()
    example = latents([0, 1], config.z_dim)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(file), input_names=["z"], output_names=["image"],
                          dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}}, opset_version=17, dynamo=False)


def to_pictures(pixels: torch.Tensor) -> list[Any]:
    from PIL import Image

    arrays = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def initialize(folder: Path, config: GANConfig, *, seed: int) -> Path:
    """A GAN folder of `config` with weights drawn from `seed` (GANFamily.initialize)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator, discriminator = Generator(config), Discriminator(config)
    save_folder(folder, config, generator, discriminator, extra={"initialised_with_seed": seed})
    return Path(folder)


def load(path: Path) -> GANBackbone:
    """A GAN folder or an exported generator, every weight checked (GANFamily.load)."""
    path = Path(path)
    if path.is_file():
        config = _file_config(path)
        if config is None:
            raise BackboneError(f"{path.name} is not a TransferStudio generator (no GAN config in it).",
                                "Pick a GAN folder or a generator exported by TransferStudio.")
        generator = Generator(config)
        load_weights(generator, path, "generator")
        return GANBackbone(config, generator, Discriminator(config), source=path)
    config = read_folder_config(path)
    if config is None:
        raise BackboneError(f"{path} is not a GAN folder (no {CONFIG_FILE} naming {CLASS_NAME}).",
                            "Pick the folder `transferstudio pretrain --family gan` wrote, or the starter GAN.")
    generator, discriminator = Generator(config), Discriminator(config)
    load_weights(generator, path / GENERATOR_FILE, "generator")
    load_weights(discriminator, path / DISCRIMINATOR_FILE, "discriminator")
    return GANBackbone(config, generator, discriminator, source=path)


def skeleton(path: Path) -> GANBackbone:
    """The GAN at `path` from its config alone (GANFamily.skeleton)."""
    path = Path(path)
    config = _file_config(path) if path.is_file() else read_folder_config(path)
    if config is None:
        raise BackboneError(f"{path} is not a TransferStudio GAN.", "Pick a GAN folder or an exported generator.")
    return GANBackbone(config, Generator(config), Discriminator(config), source=path)


class Adversarial(Objective):
    """Discriminator phase, then generator phase, every step (non-saturating logistic loss)."""

    def __init__(self, backbone: GANBackbone, config: Any) -> None:
        self.backbone, self.config = backbone, config
        d_lr = float(getattr(config, "discriminator_learning_rate", 0.0) or 0.0)
        ratio = d_lr / config.learning_rate if d_lr > 0 else 1.0
        adam = dict(betas=(0.0, 0.99), weight_decay=0.0, clip_norm=None)
        self.phases = (Phase("discriminator", roles=("discriminator",), lr_scale=ratio, **adam),
                       Phase("generator", roles=("generator",), **adam))
        mode = getattr(config, "augment", "adaptive")
        strength = float(getattr(config, "augment_strength", 0.0) or 0.0)
        self.adaptive = AdaptiveStrength(strength) if mode == "adaptive" else None
        self.fixed_p = strength if mode == "fixed" else 0.0
        self.signals: dict[str, float] = {}

    @property
    def p(self) -> float:
        return self.adaptive.p if self.adaptive is not None else self.fixed_p

    def _augment(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return augment(x, self.p, ctx.generator)

    def _z(self, n: int, ctx: StepContext) -> torch.Tensor:
        return torch.randn(n, self.backbone.config.z_dim, generator=ctx.generator, device=ctx.device)

    def loss(self, phase: Phase, batch: Any, ctx: StepContext) -> torch.Tensor:
        G, D = self.backbone.generator, self.backbone.discriminator
        real = batch.pixels.to(ctx.device)
        training = torch.is_grad_enabled()  # False for the health probe: it must change no state
        if phase.name == "discriminator":
            with torch.no_grad():
                fake = G(self._z(real.shape[0], ctx))
            real_logits = D(self._augment(real, ctx))
            fake_logits = D(self._augment(fake, ctx))
            loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
            gamma = float(getattr(self.config, "r1_gamma", 0.0) or 0.0)
            if training and gamma > 0 and ctx.step % R1_EVERY == 0:
                loss = loss + self._r1(D, real, ctx) * (gamma / 2) * R1_EVERY
            if training:
                if self.adaptive is not None:
                    self.adaptive.observe(real_logits)
                self.signals = {"d_real": float(real_logits.detach().mean()),
                                "d_fake": float(fake_logits.detach().mean()),
                                "d_accuracy": float(((real_logits > 0).float().mean() + (fake_logits < 0).float()
                                                     .mean()) / 2),
                                "augment_p": self.p}
            return loss
        with _frozen(D):
            w = G.mapping(self._z(real.shape[0], ctx))
            if training:
                G.track_w_avg(w)
            fake = G.synthesis(w)
            loss = F.softplus(-D(self._augment(fake, ctx))).mean()
        weight = float(getattr(self.config, "consistency_weight", 0.0) or 0.0)
        if weight > 0 and self.backbone.source_generator is not None:
            loss = loss + weight * self.consistency(ctx)
        return loss

    def _r1(self, D: nn.Module, real: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        real = real.detach().requires_grad_(True)
        logits = D(self._augment(real, ctx))
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean()

    def consistency(self, ctx: StepContext, count: int = 8) -> torch.Tensor:
        """Cross-domain consistency: for a batch of latents, how each sample relates to the others
        (a softmax over cosine similarities of the features at every resolution) should stay as
        in the source generator — the adapted generator keeps the source's variety."""
        source, adapted = self.backbone.source_generator, self.backbone.generator
        z = self._z(count, ctx)
        with torch.no_grad():
            source_features: list[torch.Tensor] = []
            source.synthesis(source.mapping(z), features=source_features)
        adapted_features: list[torch.Tensor] = []
        adapted.synthesis(adapted.mapping(z), features=adapted_features)
        total = torch.zeros((), device=ctx.device)
        off_diagonal = ~torch.eye(count, dtype=torch.bool, device=ctx.device)
        for s, a in zip(source_features, adapted_features):
            sim_s = F.cosine_similarity(s.flatten(1)[:, None], s.flatten(1)[None], dim=-1)[off_diagonal]
            sim_a = F.cosine_similarity(a.flatten(1)[:, None], a.flatten(1)[None], dim=-1)[off_diagonal]
            p = F.softmax(sim_s.view(count, count - 1), dim=1)
            log_q = F.log_softmax(sim_a.view(count, count - 1), dim=1)
            total = total + F.kl_div(log_q, p, reduction="batchmean")
        return total / max(1, len(source_features))

    def reported(self, losses: dict[str, float]) -> float:
        return losses.get("generator", float("nan"))

    def domain_error(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        """The discriminator's view: how sure it is that each picture is not one of the pictures it
        was trained on (softplus of minus its logit: near 0 for its training domain, large far from
        it). No augmentation, no gradients."""
        with torch.no_grad():
            return F.softplus(-self.backbone.discriminator(batch.pixels.to(ctx.device).float())).flatten()

    def evaluate(self, batch: Any, ctx: StepContext, samples: int = 64) -> torch.Tensor:
        """How well the generator covers each picture: the mean squared distance, at 16 px (the
        composition and colours, not the exact detail), from the picture to the closest of
        `samples` pictures generated from fixed latents. A generator that learns the domain
        comes closer to pictures it never saw; one that copies its training set moves away."""
        G = self.backbone.generator
        real = batch.pixels.to(ctx.device).float()
        with torch.no_grad():
            fake = torch.cat([G(self._z(min(16, samples - i), ctx)).float() for i in range(0, samples, 16)])
            side = min(16, real.shape[-1])
            real_small = F.adaptive_avg_pool2d(real, side).flatten(1)
            fake_small = F.adaptive_avg_pool2d(fake, side).flatten(1)
            distances = torch.cdist(real_small, fake_small).square() / real_small.shape[1]
        return distances.min(dim=1).values

    def ema_roles(self) -> tuple[str, ...] | None:
        return ("generator",)

    def step_signals(self) -> dict[str, float]:
        return dict(self.signals)

    def state_dict(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive.state_dict()} if self.adaptive is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaptive is not None and "adaptive" in state:
            self.adaptive.load_state_dict(state["adaptive"])


class _frozen:
    """The discriminator's weights take no gradient inside the block (the generator phase needs
    gradients through it, not for it); the flags are put back exactly as they were."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.module.parameters()]
        self.module.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in zip(self.module.parameters(), self.flags):
            p.requires_grad_(flag)
