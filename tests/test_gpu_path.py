"""Defects of the GPU path found by reading (issue 16), each shown where a CPU can show it; the
rest run where CUDA is (`gpu` marker: `bash run.sh test -m gpu`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferstudio import cli

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sdxl_previews_decode_in_fp32_when_the_rest_runs_in_fp16(tiny_sdxl_dir):
    """SDXL's VAE overflows in fp16 (force_upcast): with fp16 frozen parts the denoising runs under
    autocast, but the VAE must decode outside it, in fp32 — not black or NaN pictures."""
    from transferstudio.backbones.registry import load_backbone

    backbone = load_backbone(tiny_sdxl_dir)
    assert backbone.vae.config.force_upcast
    backbone.to(torch.device("cpu"), torch.float16)
    seen: list[torch.dtype] = []
    hook = backbone.vae.decoder.conv_out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        pictures = backbone.sample(seeds=[1, 2], prompts=["a"], steps=2)
    finally:
        hook.remove()
    assert seen == [torch.float32]
    assert len(pictures) == 2 and pictures[0].size == (backbone.caps.native_resolution,) * 2


def test_half_precision_asked_for_on_a_cpu_is_recorded_as_fp32(tmp_path, tiny_ddpm, image_folder, capsys):
    project = tmp_path / "p"
    assert cli.main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder),
                     "--steps", "2", "--precision", "bf16", "--device", "cpu"]) == 0
    assert cli.main(["train", str(project)]) == 0
    assert "bf16 was asked for, but the CPU trains in fp32" in capsys.readouterr().err
    state = json.loads(next((project / "runs").glob("*/checkpoints/step-000002/state.json")).read_text())
    assert state["precision"] == "fp32" and state["device"] == "cpu"


def test_running_out_of_memory_on_mps_is_a_clear_failure(tmp_path, tiny_ddpm, image_folder, monkeypatch):
    """MPS reports running out of memory as a plain RuntimeError: one sentence, not a crash."""
    from transferstudio.backbones.diffusion import DiffusionObjective
    from transferstudio.core.events import Failed
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    project = create_project(tmp_path / "p", backbone=tiny_ddpm, images=image_folder, name="p",
                             config=TrainConfig(steps=3, preview_every=0, preview_steps=2, preview_seeds=[1]))

    def out_of_memory(self, phase, batch, ctx):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)")

    monkeypatch.setattr(DiffusionObjective, "loss", out_of_memory)
    events = list(train(TrainJob(project)))
    assert isinstance(events[-1], Failed) and "ran out of memory" in events[-1].message
    assert "batch size" in events[-1].advice


def test_other_runtime_errors_still_surface(tmp_path, tiny_ddpm, image_folder, monkeypatch):
    from transferstudio.backbones.diffusion import DiffusionObjective
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    project = create_project(tmp_path / "p", backbone=tiny_ddpm, images=image_folder, name="p",
                             config=TrainConfig(steps=3, preview_every=0, preview_steps=2, preview_seeds=[1]))
    monkeypatch.setattr(DiffusionObjective, "loss", lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        list(train(TrainJob(project)))


@pytest.mark.gpu
@cuda
def test_resuming_a_full_fine_tune_with_ema_on_cuda(tmp_path, tiny_ddpm, image_folder):
    """The saved EMA is read onto the CPU; it must follow the model to the GPU on resume."""
    project = tmp_path / "p"
    assert cli.main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder),
                     "--method", "full", "--ema", "--steps", "2", "--device", "cuda"]) == 0
    assert cli.main(["train", str(project)]) == 0
    data = json.loads((project / "project.json").read_text())
    data["config"]["steps"] = 4
    (project / "project.json").write_text(json.dumps(data))
    assert cli.main(["train", str(project)]) == 0
    assert next(Path(project / "runs").glob("*/checkpoints/step-000004")).is_dir()


@pytest.mark.parametrize("optimizer, lr", [("adafactor", 1e-3), ("prodigy", 1.0)])
def test_the_optimizer_is_a_setting_kept_by_the_run_and_resumed(tmp_path, tiny_ddpm, image_folder, optimizer, lr):
    """Each optimizer trains, its state is saved and resumed (2 + 2 steps = 4 straight), and the
    run keeps the kind it started with."""
    from safetensors.torch import load_file

    def run(name: str, *steps: int) -> Path:
        project = tmp_path / name
        assert cli.main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder),
                         "--steps", str(steps[0]), "--lr", str(lr), "--checkpoint-every", "2"]) == 0
        data = json.loads((project / "project.json").read_text())
        data["config"].update(optimizer=optimizer, preview_every=0, preview_steps=2, preview_seeds=[1])
        (project / "project.json").write_text(json.dumps(data))
        for total in steps:
            assert cli.main(["train", str(project), "--steps", str(total)]) == 0
        return next(project.glob("runs/*/checkpoints/step-000004"))

    straight, halves = run("straight", 4), run("halves", 2, 4)
    a, b = load_file(straight / "weights.safetensors"), load_file(halves / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((halves.parents[1] / "config.json").read_text())["config"]["optimizer"] == optimizer


def test_8bit_adamw_without_a_gpu_says_what_to_do(tmp_path, tiny_ddpm, image_folder, capsys):
    project = tmp_path / "p"
    assert cli.main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder),
                     "--steps", "2"]) == 0
    data = json.loads((project / "project.json").read_text())
    data["config"]["optimizer"] = "adamw8bit"
    (project / "project.json").write_text(json.dumps(data))
    assert cli.main(["train", str(project)]) != 0
    err = capsys.readouterr().err
    assert "8-bit AdamW optimizer needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cached_and_encoded_latents_give_the_same_losses_on_cuda(tmp_path, tiny_sd1_dir, precision):
    """The cache keeps (mean, std) from the half-precision VAE; each step's draw must equal a fresh
    encoding's, with the same noise, on the GPU too; and fused AdamW, autocast and the scaler run."""
    from tiny_ddpm import make_images

    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    images = make_images(tmp_path / "images", n=3, size=64, captions=True)
    losses = []
    for cache in ("off", "memory"):
        config = TrainConfig(steps=4, batch_size=2, preview_every=0, preview_steps=2, preview_seeds=[1],
                             validation="none", device="cuda", precision=precision, cache=cache, rank=4, alpha=8)
        project = create_project(tmp_path / cache, backbone=tiny_sd1_dir, images=images, config=config)
        events = list(train(TrainJob(project)))
        assert type(events[-1]).__name__ == "Finished", events[-1]
        run = next((project.folder / "runs").iterdir())
        losses.append([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()])
    assert all(map(lambda x: x == x, losses[1])), "finite losses"
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


def test_frozen_unet_weights_take_the_half_format_and_the_adapter_stays_fp32(tiny_sd1_dir):
    """What a GPU run in bf16 does (shown on the CPU with CPU autocast): the frozen UNet in bf16
    (half its memory), LoRA weights in fp32, and training still reaches them."""
    from transferstudio.adapt.trainee import Trainee
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.project.config import TrainConfig

    backbone = load_backbone(tiny_sd1_dir)
    config = TrainConfig(rank=4, alpha=4)
    trainee = Trainee(backbone, config)
    backbone.to(torch.device("cpu"), torch.bfloat16)
    unet = backbone.unet
    trained = [p for p in unet.parameters() if p.requires_grad]
    frozen = [p for p in unet.parameters() if not p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    objective = backbone.objective(config)
    from transferstudio.backbones.objective import StepContext
    from transferstudio.data.dataset import Batch

    batch = Batch(pixels=torch.zeros(2, 3, 32, 32), captions=["a", "b"], original_sizes=[(32, 32)] * 2,
                  crop_top_left=[(0, 0)] * 2, target_size=(32, 32))
    ctx = StepContext(step=1, device=torch.device("cpu"), amp=torch.bfloat16,
                      generator=torch.Generator().manual_seed(0), config=config)
    trainee.train_mode(True)
    loss = objective.loss(objective.phases[0], batch, ctx)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in trained)
    pictures = backbone.sample(seeds=[1], prompts=["a"], steps=2)
    assert pictures[0].size == (32, 32)


def test_full_fine_tuning_keeps_fp32_weights_even_after_an_early_move(tiny_sd1_dir):
    """Making class pictures moves the model before anything is set to train: a full fine-tune
    set up afterwards must still train fp32 weights."""
    from transferstudio.adapt.trainee import Trainee
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.project.config import TrainConfig

    backbone = load_backbone(tiny_sd1_dir)
    backbone.to(torch.device("cpu"), torch.bfloat16)  # as for class pictures, before the Trainee
    Trainee(backbone, TrainConfig(method="full", ema=False))
    backbone.to(torch.device("cpu"), torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in backbone.unet.parameters())
