"""fp8 base weights (issue 20's low-memory options): the frozen layers of the denoiser and the
frozen text encoders are kept in 8-bit floats and computed in bf16; the adapters, norms and the
VAE are left alone; training still learns; the memory plan counts one byte per such weight."""
from __future__ import annotations

import pytest
import torch

from tiny_ddpm import make_images
from transferstudio.adapt.trainee import Trainee
from transferstudio.backbones.objective import StepContext
from transferstudio.backbones.registry import load_backbone
from transferstudio.core.events import Finished, Message
from transferstudio.data.dataset import TrainingImages
from transferstudio.data.scan import scan_images
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project
from transferstudio.training.low_memory import FP8, fp8_layers, store_frozen_in_fp8
from transferstudio.training.memory_plan import MemoryPlanner
from transferstudio.training.trainer import TrainJob, train


def _lora_backbone(path, **settings):
    """A backbone with its LoRA, in bf16 as a GPU run sets it up (the trained weights stay fp32)."""
    config = TrainConfig(method="lora", rank=4, alpha=4.0, resolution=64, **settings)
    backbone = load_backbone(path)
    trainee = Trainee(backbone, config)
    backbone.to(torch.device("cpu"), torch.bfloat16)
    return backbone, trainee, config


def _loss(backbone, config, batch):
    ctx = StepContext(step=1, device=torch.device("cpu"), amp=torch.bfloat16,
                      generator=torch.Generator().manual_seed(3), config=config)
    torch.manual_seed(0)
    return backbone.objective(config).loss(backbone.objective(config).phases[0], batch, ctx)


def test_frozen_layers_are_stored_in_fp8_and_the_adapters_still_learn(tmp_path, tiny_sd1_dir):
    images = make_images(tmp_path / "images", n=2)
    batch = TrainingImages(scan_images(images).images, 64, 64, buckets=False, flip=False,
                           crop="center").load_batch([0, 1], None)
    plain, plain_trainee, config = _lora_backbone(tiny_sd1_dir)
    reference = _loss(plain, config, batch)
    backbone, trainee, config = _lora_backbone(tiny_sd1_dir)
    count = store_frozen_in_fp8(backbone, torch.bfloat16)
    unet = backbone.denoiser
    assert count > 0.5 * sum(p.numel() for p in unet.parameters() if not p.requires_grad)
    stored = {n: p.dtype for n, p in unet.named_parameters()}
    assert all(d == torch.float32 for n, d in stored.items() if "lora_" in n)  # the adapters train in fp32
    assert any(d == FP8 for n, d in stored.items() if n.endswith("to_q.base_layer.weight"))
    assert all(d != FP8 for n, d in stored.items() if "norm" in n)  # norms keep their format
    assert all(p.dtype != FP8 for p in backbone.vae.parameters())  # the VAE is left as it is
    encoder = dict(backbone.text_encoders()[0].named_parameters())
    assert any(d == FP8 for n, d in ((n, p.dtype) for n, p in encoder.items()) if n.endswith("fc1.weight"))
    loss = _loss(backbone, config, batch)
    assert float(loss) == pytest.approx(float(reference), rel=0.15)  # fp8 storage against bf16
    loss.backward()
    grads = [p.grad for p in trainee.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # after the forward the frozen weights are back in fp8 (the bf16 copy lived for one layer only)
    assert any(p.dtype == FP8 for p in unet.parameters())
    # previews draw in the compute format (bf16), not in the storage one
    picture, = backbone.sample(seeds=[1], prompts=["a picture"], steps=2, size=(64, 64))
    assert picture.size == (64, 64) and max(picture.convert("L").getextrema()) > 0


def test_a_text_encoder_that_trains_is_not_stored_in_fp8(tiny_sd1_dir):
    backbone, _, _ = _lora_backbone(tiny_sd1_dir, train_text_encoder=True)
    encoder = backbone.text_encoders()[0]
    assert not any(layer in fp8_layers(backbone) for layer in encoder.modules())


def test_the_memory_plan_counts_fp8_weights_at_one_byte(tiny_sd1_dir):
    planner = MemoryPlanner(tiny_sd1_dir, device="cuda")
    bf16 = planner.plan(TrainConfig(method="lora", precision="bf16", resolution=64))
    fp8 = planner.plan(TrainConfig(method="lora", precision="bf16", resolution=64, fp8_base=True))
    backbone, _, _ = _lora_backbone(tiny_sd1_dir)
    in_fp8 = sum(p.numel() for layer in fp8_layers(backbone) for p in layer.parameters(recurse=False))
    assert bf16.weights - fp8.weights == in_fp8  # 2 bytes → 1 byte each
    assert fp8.activations == pytest.approx(bf16.activations, rel=0.05)
    cpu = MemoryPlanner(tiny_sd1_dir, device="cpu").plan(TrainConfig(method="lora", resolution=64, fp8_base=True))
    assert cpu.weights > bf16.weights  # a CPU run keeps fp32 weights: nothing in fp8 there


def test_fp8_base_is_refused_for_full_fine_tuning_and_noted_on_a_cpu(tmp_path, tiny_sd1_dir):
    assert any(p.startswith("fp8_base") for p in TrainConfig(method="full", fp8_base=True).problems())
    images = make_images(tmp_path / "images", n=2)
    project = create_project(tmp_path / "p", backbone=tiny_sd1_dir, images=images,
                             config=TrainConfig(steps=1, resolution=64, fp8_base=True, preview_seeds=[1],
                                                preview_steps=1, validation="none"))
    events = list(train(TrainJob(project)))
    assert isinstance(events[-1], Finished)
    assert any("fp8 base weights are for CUDA GPUs" in e.text for e in events if isinstance(e, Message))
