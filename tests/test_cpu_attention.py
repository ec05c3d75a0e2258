"""Small attentions as plain products (the CPU's compiled path): the same outputs and gradients
as torch's fused attention, on the layers the families use."""
from __future__ import annotations

import pytest
import torch

from transferstudio.training.cpu_attention import SmallAttentionProcessor, attend, use_small_attention


def _outputs_and_grads(model: torch.nn.Module, run) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = run(model)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _same_as_torch_attention(model: torch.nn.Module, run, small: int | None = None) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from diffusers.models.attention_processor import Attention

    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.set_processor(AttnProcessor2_0())
    expected, expected_grads = _outputs_and_grads(model, run)
    switched = use_small_attention(model) if small is None else use_small_attention(model, small)
    assert switched == len(layers) > 0
    assert all(isinstance(layer.processor, SmallAttentionProcessor) for layer in layers)
    got, grads = _outputs_and_grads(model, run)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert len(grads) == len(expected_grads)
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


def test_attend_equals_torch_attention_for_small_and_large_scores():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 50, 8), torch.randn(2, 4, 77, 8), torch.randn(2, 4, 77, 8)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(attend(q, k, v), expected, atol=1e-5)
    assert torch.allclose(attend(q, k, v, small=10), expected, atol=1e-6)  # over the limit: torch's kernel


def test_a_text_conditioned_unet_with_lora_learns_the_same(tiny_sd1_dir):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1_dir / "unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size)
    text = torch.randn(2, 7, unet.config.cross_attention_dim)
    _same_as_torch_attention(unet, lambda m: m(x, torch.tensor([10, 500]), text).sample)


@pytest.mark.parametrize("small", [None, 1])
def test_a_pixel_unet_with_spatial_attention_learns_the_same(tmp_path, small):
    """The DDPM starters' attention blocks: group norm, (b, c, h, w) input, residual, rescale;
    and the same with every score matrix over the limit (torch's kernel inside our processor)."""
    from diffusers import UNet2DModel
    from tiny_ddpm import make_tiny_ddpm

    unet = UNet2DModel.from_pretrained(make_tiny_ddpm(tmp_path / "ddpm") / "unet")
    x = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    _same_as_torch_attention(unet, lambda m: m(x, torch.tensor([3, 700])).sample, small)


def test_a_masked_call_goes_to_diffusers_own_processor():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, True, False, False]])
    expected = attn(x, attention_mask=mask)
    attn.set_processor(SmallAttentionProcessor())
    assert torch.allclose(attn(x, attention_mask=mask), expected, atol=1e-6)
