"""Attention for a compiled model on the CPU: small attentions as plain matrix products.

torch's fused attention on a CPU (its flash kernel) runs the score matrix in blocks through
MKL; with the head sizes of small models (4 to 8 numbers per head) that kernel was 42% of a
tiny SD 1.x LoRA step. Written as products and a softmax instead, and compiled with GEMM
autotuning (`mode="max-autotune-no-cudagraphs"`), inductor generates its own C++ micro-kernels
for those products: the probability × value product of the tiny UNet's self-attention took
0.38 ms that way against 2.0 ms in MKL. Measured on the whole step (compiled, fused AdamW, one
process, steps interleaved): 0.186 s with torch's attention, 0.168 s with this one.

Only a small score matrix takes the plain path: it is kept for the backward pass, so a large
one (SD 1.5's 4096-token self-attention: 512 MB per layer at batch 2) stays with torch's kernel,
which never holds it. Anything unusual (a mask, a spatial norm, q/k norms) goes to diffusers'
own processor unchanged.
"""
from __future__ import annotations

from typing import Any

import torch

# score-matrix elements (batch × heads × queries × keys) up to which the plain products are used:
# 16 MB in fp32, kept per attention layer for the backward pass
SMALL_SCORES = 1 << 22


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, small: int = SMALL_SCORES) -> torch.Tensor:
    """softmax(q kᵀ / √d) v over (batch, heads, tokens, head size) tensors, as torch's
    scaled_dot_product_attention computes it (the same default scale)."""
    batch, heads, queries, size = query.shape
    if batch * heads * queries * key.shape[-2] > small:
        return torch.nn.functional.scaled_dot_product_attention(query, key, value)
    scores = torch.matmul(query * size ** -0.5, key.transpose(-1, -2))
    return torch.matmul(scores.softmax(dim=-1), value)


class SmallAttentionProcessor:
    """A diffusers attention processor doing what `AttnProcessor2_0` does, with `attend` at its
    core; calls it cannot take are passed to `AttnProcessor2_0`."""

    def __init__(self, small: int = SMALL_SCORES) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.small = small
        self.general = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if (args or kwargs or attention_mask is not None or attn.spatial_norm is not None
                or attn.norm_q is not None or attn.norm_k is not None):
            return self.general(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        spatial = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial is not None:  # (batch, channels, height, width) -> (batch, tokens, channels)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        batch, heads = query.shape[0], attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (batch, tokens, heads · size) -> (batch, heads, tokens, size)
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        out = attend(split(query), split(key), split(value), self.small)
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if spatial is not None:
            out = out.transpose(1, 2).reshape(spatial)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_small_attention(denoiser: torch.nn.Module, small: int = SMALL_SCORES) -> int:
    """Give the denoiser's attention layers that run diffusers' standard processor
    `SmallAttentionProcessor` instead (every model kind: UNet2DModel has no processor map); how many."""
    try:
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0
    except ImportError:
        return 0
    layers = [m for m in denoiser.modules() if isinstance(m, Attention) and type(m.processor) is AttnProcessor2_0]
    for layer in layers:
        layer.set_processor(SmallAttentionProcessor(small))
    return len(layers)
