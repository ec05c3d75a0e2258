"""Speed settings applied to a prepared model: how fast, never what it learns.

- Attention: diffusers' processors call torch's scaled_dot_product_attention (flash / memory-
  efficient kernels on CUDA) when torch has it; a model that came with an older processor is
  switched to it, so a user never trains on the slow path by accident.
- Channels-last memory layout for the denoiser's convolutions on CUDA (tensor cores like it).
- AdamW's fused kernel on CUDA and on the CPU.
- `compile`: torch.compile of the denoiser, in place (its parameter names, and so checkpoints
  and exports, stay the same); on the CPU with GEMM autotuning and small attentions written as
  products (`cpu_attention`). Compiling happens at the first step; if it fails (no C++ compiler,
  an unsupported layer) the run stops with what to do instead of crashing.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Iterator

import torch

from transferstudio.core.events import Message
from transferstudio.training.cpu_attention import use_small_attention


def use_sdpa(denoiser: torch.nn.Module) -> int:
    """Switch attention processors that do not use torch's fused attention to the one that does;
    how many were switched."""
    try:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    except ImportError:
        return 0
    processors = getattr(denoiser, "attn_processors", None)
    if not processors or not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return 0
    slow = {name for name, p in processors.items() if type(p) is AttnProcessor}
    if slow:
        denoiser.set_attn_processor({name: AttnProcessor2_0() if name in slow else p
                                     for name, p in processors.items()})
    return len(slow)


def apply_speed_settings(backbone: Any, config: Any, device: torch.device) -> list[Message]:
    denoiser = backbone.denoiser
    notes: list[Message] = []
    use_sdpa(denoiser)
    if device.type == "cuda":
        denoiser.to(memory_format=torch.channels_last)
    if getattr(config, "compile", False):
        keep_compiled_kernels()
        # static shapes: training meets a few (its buckets, the previews' batch) and each keeps
        # its own specialised kernels, instead of generic ones after the second shape
        if device.type == "cpu":
            # small attentions as products that GEMM autotuning turns into inductor's own C++
            # kernels (cpu_attention.py: 10% of a tiny SD 1.x step); autotuning adds a minute
            # to the first compile, kept in torch's cache for the next run
            use_small_attention(denoiser)
            denoiser.compile(dynamic=False, mode="max-autotune-no-cudagraphs")
        else:
            denoiser.compile(dynamic=False)
        notes.append(Message("The denoiser is compiled at the first step (torch.compile): the first step takes "
                             "a minute or more, later steps are faster.", "info"))
    return notes


@contextlib.contextmanager
def eager(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block a module compiled in place runs its plain forward. For what a run does
    now and then (previews, validation, the checkpoint's output check): in eval mode, without
    gradients and at other batch sizes each would compile the model again, minutes on a CPU
    with GEMM autotuning, to save a fraction of a second."""
    compiled = getattr(module, "_compiled_call_impl", None)  # where Module.compile keeps it
    if compiled is None:
        yield
        return
    module._compiled_call_impl = None
    try:
        yield
    finally:
        module._compiled_call_impl = compiled


def keep_compiled_kernels() -> None:
    """Keep what torch.compile builds (kernels, GEMM autotuning choices) in the app's cache
    folder rather than torch's default under the temp folder, which a restart may empty: the
    first compiled run of a model takes minutes on a CPU, the next ones seconds. A folder the
    user set (TORCHINDUCTOR_CACHE_DIR) is kept."""
    from transferstudio.core.paths import user_cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache_dir() / "torch-compile"))


def compile_failure(exc: BaseException) -> bool:
    """Whether an exception came from torch.compile (Dynamo/Inductor) rather than training."""
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor"))


def fused_optimizer_options(params: list[torch.nn.Parameter], device: torch.device) -> dict[str, Any]:
    """AdamW's fused kernel (one kernel per step instead of one per tensor) when every parameter
    is a float tensor on a CUDA GPU or the CPU, where torch has one (the CPU's since torch 2.4:
    its step was 3% of a tiny SD 1.x LoRA step, foreach 3.4 ms against fused 1.4 ms); torch's
    default (foreach) elsewhere. The state it saves is the same either way, so a checkpoint
    continues across the two."""
    if device.type not in ("cuda", "cpu") or not params:
        return {}
    if not all(p.device.type == device.type and p.is_floating_point() for p in params):
        return {}
    if device.type == "cpu" and not _cpu_fused_adamw():
        return {}
    return {"fused": True}


@functools.cache
def _cpu_fused_adamw() -> bool:
    """Whether this torch has AdamW's fused CPU kernel (2.4 and later)."""
    try:
        probe = torch.nn.Parameter(torch.zeros(1))
        probe.grad = torch.zeros(1)
        torch.optim.AdamW([probe], fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True
