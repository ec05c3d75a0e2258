"""Speed settings: fused attention, fused optimizers, opt-in torch.compile."""
from __future__ import annotations

import json
import os

import pytest
import torch

from transferstudio.core.events import Failed, Finished
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project
from transferstudio.training.speed import fused_optimizer_options, use_sdpa
from transferstudio.training.trainer import TrainJob, train


def _project(tmp_path, backbone, images, **settings):
    config = TrainConfig(**{**dict(steps=2, preview_steps=2, preview_seeds=[1], batch_size=2, preview_every=0,
                                   validation="none", learning_rate=5e-3, rank=4, alpha=8), **settings})
    return create_project(tmp_path / "project", backbone=backbone, images=images, config=config)


def test_a_model_with_the_slow_attention_trains_on_torch_fused_attention(tiny_sd1_dir):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = UNet2DConditionModel.from_pretrained(tiny_sd1_dir / "unet")
    unet.set_attn_processor(AttnProcessor())
    assert use_sdpa(unet) == len(unet.attn_processors) > 0
    assert all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values())
    assert use_sdpa(unet) == 0


def test_adamw_on_the_cpu_takes_the_fused_kernel_and_steps_as_the_default_one():
    """The fused CPU AdamW trains what the default one trains, and a checkpoint of either
    continues with the other (a run started on a torch without the fused kernel, or moved)."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert fused_optimizer_options(params, torch.device("cpu")) == {"fused": True}
    assert fused_optimizer_options(params, torch.device("meta")) == {}

    torch.manual_seed(0)
    start = [torch.randn(5, 4), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(6)]

    def trained(fused_steps: range, plain_steps: range) -> list[torch.Tensor]:
        weights = [torch.nn.Parameter(t.clone()) for t in start]
        state = None
        for steps, options in ((fused_steps, fused_optimizer_options(weights, torch.device("cpu"))),
                               (plain_steps, {})):
            optimizer = torch.optim.AdamW(weights, lr=1e-2, weight_decay=1e-2, **options)
            if state is not None:
                optimizer.load_state_dict(state)
            for i in steps:
                for w, g in zip(weights, grads[i]):
                    w.grad = g.clone()
                optimizer.step()
            state = optimizer.state_dict()
        return [w.detach() for w in weights]

    fused, plain, switched = trained(range(6), range(0)), trained(range(0), range(6)), trained(range(3), range(3, 6))
    for a, b, c, before in zip(fused, plain, switched, start):
        assert not torch.allclose(a, before, atol=1e-3), "it trained"
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)


class _FakeCompileError(RuntimeError):
    pass


_FakeCompileError.__module__ = "torch._dynamo.exc"


def test_a_failed_compile_ends_the_run_with_advice(tmp_path, tiny_sd1_dir, monkeypatch):
    from tiny_ddpm import make_images

    def broken_compile(module, *args, **kwargs):
        def fail(*a, **k):
            raise _FakeCompileError("backend='inductor' raised: no C++ compiler")
        module.forward = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    events = list(train(TrainJob(_project(tmp_path, tiny_sd1_dir, images, compile=True))))
    assert isinstance(events[-1], Failed), events[-1]
    assert "Compiling the model failed" in events[-1].message and "Compile" in events[-1].advice
    # what a compile builds is kept in the app's cache folder, not under the temp folder
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "cache" / "torch-compile")


@pytest.mark.slow
def test_compiled_training_gives_the_same_losses(tmp_path, tiny_sd1_dir):
    from tiny_ddpm import make_images

    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    losses = []
    for compiled in (False, True):
        project = _project(tmp_path / str(compiled), tiny_sd1_dir, images, compile=compiled, steps=3)
        events = list(train(TrainJob(project)))
        assert isinstance(events[-1], Finished), events[-1]
        run = next((project.folder / "runs").iterdir())
        losses.append([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_previews_on_a_cpu_are_drawn_at_the_training_size(tmp_path, tiny_sd1_dir):
    """A full-size model trained small on a CPU must not spend half an hour on native-size previews."""
    from tiny_ddpm import make_images

    from transferstudio.core.events import Preview, Progress

    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    events = list(train(TrainJob(_project(tmp_path, tiny_sd1_dir, images, resolution=16, steps=1))))
    assert isinstance(events[-1], Finished), events[-1]
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and all(im.size == (16, 16) for e in previews for im in e.images)
    drawing = [e for e in events if isinstance(e, Progress) and "previews" in e.task]
    assert drawing and events.index(drawing[0]) < events.index(previews[0]), "the wait is announced first"


def test_a_compiled_model_runs_plain_inside_eager_and_compiled_again_after():
    """Previews, validation and the checkpoint check run the plain forward: in eval mode, without
    gradients and at another batch size each would otherwise compile the model once more."""
    from transferstudio.training.speed import eager

    compiled: list[int] = []

    def counting_backend(graph, example_inputs):
        compiled.append(len(example_inputs))
        return graph.forward

    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    model.compile(backend=counting_backend, dynamic=False)
    model(torch.randn(2, 4))
    assert len(compiled) == 1
    with eager(model), torch.no_grad():
        model.eval()
        out = model(torch.randn(3, 4))
    model.train()
    assert out.shape == (3, 4) and len(compiled) == 1, "no compile inside the block"
    model(torch.randn(2, 4))
    assert len(compiled) == 1, "the compiled forward is back, and its graph reused"
    with eager(torch.nn.Linear(2, 2)):  # a module that was never compiled
        pass
