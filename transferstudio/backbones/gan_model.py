"""The GAN family's networks, in plain torch: a compact StyleGAN2-like generator and a residual
discriminator, both described by a `GANConfig` that is saved as JSON beside (or inside) the
safetensors weights (gan_config.py, standard library only). Nothing here imports the rest of
TransferStudio but that, so an exported generator loads with a few lines (see `load_generator`).

Generator: a mapping network (z → w, with the running mean of w kept for the truncation trick),
a learned 4×4 constant, then per resolution two modulated 3×3 convolutions (style-scaled inputs,
demodulated outputs, as StyleGAN2's non-fused form) and a toRGB whose outputs are summed across
resolutions (skip architecture). No per-pixel noise inputs: a latent alone fixes the picture.
Discriminator: fromRGB, residual blocks that halve the size down to 4×4, a minibatch standard
deviation channel and two linear layers. Layers use equalised learning rates, as StyleGAN does.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transferstudio.backbones.gan_config import GANConfig

_GAIN = math.sqrt(2.0)  # keeps activations' scale through leaky ReLU
__all__ = ["GANConfig", "Generator", "Discriminator", "latents", "load_generator"]


class EqualLinear(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((fan_out,), float(bias_init)))
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(fan_in), lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * _GAIN if self.activate else x


class EqualConv2d(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, kernel: int, *, bias: bool = True, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None
        self.scale, self.padding, self.activate = 1 / math.sqrt(fan_in * kernel * kernel), kernel // 2, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
        return F.leaky_relu(x, 0.2) * _GAIN if self.activate else x


class ModulatedConv(nn.Module):
    """A convolution whose input channels are scaled by a style from w, and whose outputs are
    divided by their expected size (demodulation), computed without grouped convolutions."""

    def __init__(self, fan_in: int, fan_out: int, kernel: int, w_dim: int, *, demodulate: bool = True,
                 upsample: bool = False, activate: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, fan_in, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(fan_out))
        self.scale = 1 / math.sqrt(fan_in * kernel * kernel)
        self.padding, self.demodulate, self.upsample, self.activate = kernel // 2, demodulate, upsample, activate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w)  # (B, fan_in)
        weight = self.weight * self.scale
        if not self.demodulate:  # toRGB: a plain style scale, StyleGAN2 divides it like a 1×1 weight
            style = style * self.scale
            weight = self.weight
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            power = torch.einsum("oikl,bi->bo", weight.square(), style.square())
            x = x * torch.rsqrt(power + 1e-8)[:, :, None, None]
        x = x + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * _GAIN if self.activate else x


class Mapping(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, layers: int) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*[EqualLinear(a, b, lr_mul=0.01, activate=True) for a, b in zip(dims, dims[1:])])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # pixel norm
        return self.net(z)


class Generator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.g_channels
        self.mapping = Mapping(config.z_dim, config.w_dim, config.mapping_layers)
        self.const = nn.Parameter(torch.randn(1, ch[0], 4, 4))
        self.convs = nn.ModuleList([ModulatedConv(ch[0], ch[0], 3, config.w_dim)])
        self.to_rgbs = nn.ModuleList([ModulatedConv(ch[0], 3, 1, config.w_dim, demodulate=False, activate=False)])
        for a, b in zip(ch, ch[1:]):
            self.convs.append(ModulatedConv(a, b, 3, config.w_dim, upsample=True))
            self.convs.append(ModulatedConv(b, b, 3, config.w_dim))
            self.to_rgbs.append(ModulatedConv(b, 3, 1, config.w_dim, demodulate=False, activate=False))
        self.register_buffer("w_avg", torch.zeros(config.w_dim))  # the mean w, for truncation

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        return w if psi == 1.0 else self.w_avg + psi * (w - self.w_avg)

    def synthesis(self, w: torch.Tensor, *, features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Pictures in [-1, 1] (roughly; clamp for display) from w. `features`, when given,
        collects each resolution's activations (the cross-domain consistency term reads them)."""
        x = self.const.expand(w.shape[0], -1, -1, -1)
        x = self.convs[0](x, w)
        rgb = self.to_rgbs[0](x, w)
        for level, to_rgb in enumerate(self.to_rgbs[1:]):
            x = self.convs[1 + 2 * level](x, w)
            x = self.convs[2 + 2 * level](x, w)
            if features is not None:
                features.append(x)
            rgb = F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False) + to_rgb(x, w)
        return rgb

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.truncate(self.mapping(z), psi))

    @torch.no_grad()
    def track_w_avg(self, w: torch.Tensor, beta: float = 0.995) -> None:
        self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, beta))


class DiscriminatorBlock(nn.Module):
    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(fan_in, fan_in, 3, activate=True)
        self.conv2 = EqualConv2d(fan_in, fan_out, 3, activate=True)
        self.skip = EqualConv2d(fan_in, fan_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = F.avg_pool2d(self.conv2(self.conv1(x)), 2)
        return (main + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2.0)


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        ch = config.d_channels
        self.from_rgb = EqualConv2d(3, ch[0], 1, activate=True)
        self.blocks = nn.ModuleList([DiscriminatorBlock(a, b) for a, b in zip(ch, ch[1:])])
        self.final_conv = EqualConv2d(ch[-1] + 1, ch[-1], 3, activate=True)
        self.final_linear = EqualLinear(ch[-1] * 16, ch[-1], activate=True)
        self.out = EqualLinear(ch[-1], 1)

    def frozen_parts(self, count: int) -> list[nn.Module]:
        """fromRGB and the first `count` blocks (the high-resolution ones FreezeD keeps)."""
        return [self.from_rgb, *self.blocks[:count]] if count > 0 else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        x = torch.cat([x, _minibatch_std(x)], dim=1)
        x = self.final_linear(self.final_conv(x).flatten(1))
        return self.out(x).squeeze(1)


def _minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """One channel: how much the batch varies (a discriminator that sees it catches mode collapse)."""
    b, c, h, w = x.shape
    g = group if b % group == 0 else b
    y = x.reshape(g, -1, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b/g,)
    return y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)


def latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """The latent vector of each seed (the same on every machine: drawn on the CPU)."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def load_generator(path: str | Path) -> Generator:
    """An exported generator: `G = load_generator("city.safetensors"); pictures = G(latents([1, 2], G.config.z_dim))`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        config = GANConfig.from_dict(json.loads(fh.metadata()["gan_config"]))
    generator = Generator(config)
    generator.load_state_dict(load_file(str(path)))
    return generator.eval()
