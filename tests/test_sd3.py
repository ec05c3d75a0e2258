"""Stable Diffusion 3 / 3.5 as a user of the CLI and of the exported files would notice it: the
folder is recognised, LoRA trains by flow matching and resumes exactly, previews are what a plain
diffusers script makes, the diffusers export loads into a fresh pipeline, and every kohya name is a
layer ComfyUI finds in the original (single-file) layout, giving the same picture."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tiny_mmdit import T5_MAX_LENGTH, apply_kohya, kohya_weight_names, make_tiny_sd3  # noqa: E402

PROMPT = "zq, a red cat"
SEED = 3
STEPS = 3


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory) -> Path:
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"), version="3")


@pytest.fixture(scope="module")
def sd35_dir(tmp_path_factory) -> Path:
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny_sd35"), version="3.5")


def _pipe(folder: Path):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _script_image(pipe) -> np.ndarray:
    """What a user's diffusers script makes (see sd3.py's module docstring)."""
    out = pipe([PROMPT], negative_prompt=None, num_inference_steps=STEPS, guidance_scale=7.0, width=32, height=32,
               max_sequence_length=T5_MAX_LENGTH, generator=[torch.Generator().manual_seed(SEED)])
    return np.asarray(out.images[0], np.float32)


def _app_image(backbone) -> np.ndarray:
    return np.asarray(backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=STEPS)[0], np.float32)


def _close(a: np.ndarray, b: np.ndarray, *, mean: float = 0.5, most: float = 3.0) -> None:
    diff = np.abs(a - b)
    assert diff.mean() < mean and diff.max() <= most, f"pictures differ: mean {diff.mean():.2f}, max {diff.max()}"


# --- the folder --------------------------------------------------------------------------------

def test_an_sd3_folder_is_recognised_with_what_it_can_do(sd3_dir, sd35_dir, tmp_path):
    from transferstudio.backbones.registry import inspect_backbone
    from transferstudio.backbones.sd import SDFamily
    from transferstudio.backbones.sdxl import SDXLFamily

    found = inspect_backbone(sd3_dir)
    assert found.usable and found.family == "sd3" and found.variant == "sd3-medium"
    assert found.label == "Stable Diffusion 3 medium (32 px)" and found.prediction_type == "flow"
    caps = found.caps
    assert (caps.conditioning, caps.text_encoders, caps.methods, caps.kohya_lora) == ("text", 2, ("lora",), True)
    assert caps.native_resolution == 32 and caps.resolution_multiple == 8
    assert ("timestep_sampling", "logit-normal") in caps.suggested
    assert SDFamily().inspect(sd3_dir) is None and SDXLFamily().inspect(sd3_dir) is None
    assert inspect_backbone(sd35_dir).variant == "sd3.5-medium"

    broken = shutil.copytree(sd3_dir, tmp_path / "broken")
    shutil.rmtree(broken / "text_encoder_2")
    found = inspect_backbone(broken)
    assert not found.usable and "missing the 'text_encoder_2' folder" in found.problems


def test_a_folder_without_t5_loads_and_samples(sd3_dir, tmp_path):
    """SD3 runs without T5 (the pipeline's zeros in its place), as Stability documents."""
    from transferstudio.backbones.registry import load_backbone

    folder = shutil.copytree(sd3_dir, tmp_path / "no-t5")
    shutil.rmtree(folder / "text_encoder_3")
    shutil.rmtree(folder / "tokenizer_3")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    backbone = load_backbone(folder)
    assert backbone.encoders["text_encoder_3"] is None
    cond = backbone.encode_conditioning([PROMPT])
    assert cond.kwargs["encoder_hidden_states"].shape[1] == 77 + 256  # CLIP's 77, then 256 zero T5 tokens
    assert backbone.sample(seeds=[1], prompts=[PROMPT], steps=2)[0].size == (32, 32)


def test_a_folder_missing_weights_is_refused_not_filled_with_random_ones(sd3_dir, tmp_path):
    from safetensors.torch import save_file

    from transferstudio.backbones.registry import load_backbone
    from transferstudio.core.errors import BackboneError

    folder = shutil.copytree(sd3_dir, tmp_path / "cut")
    file = folder / "text_encoder_3" / "model.safetensors"
    state = load_file(file)
    state.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight")
    save_file(state, str(file))
    with pytest.raises(BackboneError, match="T5.* lacks 1 of its weights"):
        load_backbone(folder)


@pytest.mark.parametrize("version", ["3", "3.5"])
def test_previews_are_the_plain_pipeline_pictures(version, sd3_dir, sd35_dir):
    from transferstudio.backbones.registry import load_backbone

    folder = sd3_dir if version == "3" else sd35_dir
    backbone = load_backbone(folder)
    np.testing.assert_array_equal(_app_image(backbone), _script_image(_pipe(folder)))


@pytest.mark.parametrize("version", ["3", "3.5"])
def test_the_original_layout_is_the_one_diffusers_converts(version, sd3_dir, sd35_dir):
    """The table behind single files and kohya names, checked against diffusers' own SD3 converter."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from transferstudio.backbones import mmdit_layout as layout

    model = SD3Transformer2DModel.from_pretrained(sd3_dir if version == "3" else sd35_dir, subfolder="transformer")
    state = model.state_dict()
    layers = layout.sd3_layers(layout.shapes_of(state))
    original = layout.to_original(state, layers)
    assert "joint_blocks.1.context_block.attn.qkv.weight" in original and "pos_embed" in original
    back = convert_sd3_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v.clone()
                                                            for k, v in original.items()})
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    mine = layout.from_original(original, layers)
    assert all(torch.equal(mine[k], state[k]) for k in state)
    with pytest.raises(layout.LayoutError):
        layout.from_original({**original, "joint_blocks.9.x_block.attn.qkv.weight": torch.zeros(1)}, layers)


# --- the flow-matching objective -----------------------------------------------------------------

def test_noise_levels_follow_the_scheduler_shift_and_validation_is_repeatable(sd3_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from types import SimpleNamespace

    from transferstudio.backbones.flow import FlowSchedule, noised, sample_shares
    from transferstudio.backbones.objective import StepContext
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.core.errors import UserError
    from transferstudio.project.config import TrainConfig

    backbone = load_backbone(sd3_dir)
    schedule = backbone.flow_schedule()
    assert schedule == FlowSchedule(shift=3.0, tokens_per_latent=0.25)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(backbone.scheduler_config)
    # The scheduler's training timesteps are the shifted shares t / 1000, times 1000.
    shares = torch.arange(1000, 0, -1, dtype=torch.float32) / 1000
    torch.testing.assert_close(schedule.sigmas(shares, (1, 4, 16, 16)) * 1000, scheduler.timesteps)
    clean, noise, sigma = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.75])
    torch.testing.assert_close(noised(clean, noise, sigma),
                               torch.stack([scheduler.scale_noise(clean[i:i + 1], sigma[i:i + 1] * 1000,
                                                                  noise[i:i + 1])[0] for i in range(2)]))
    g = torch.Generator().manual_seed(0)
    u = sample_shares(4000, generator=g, device=torch.device("cpu"), sampling="logit-normal", low=0.2, high=0.6)
    assert 0.2 <= float(u.min()) and float(u.max()) <= 0.6 and abs(float(u.mean()) - 0.4) < 0.01

    config = TrainConfig()
    objective = backbone.objective(config)
    batch = SimpleNamespace(pixels=torch.rand(2, 3, 32, 32) * 2 - 1, captions=[PROMPT, "zq"],
                            original_sizes=[(32, 32)] * 2, crop_top_left=[(0, 0)] * 2, target_size=(32, 32))

    def measure():
        ctx = StepContext(step=0, device=torch.device("cpu"), amp=None, generator=torch.Generator().manual_seed(5),
                          config=config)
        return objective.evaluate(batch, ctx)

    first = measure()
    assert first.shape == (2,) and torch.equal(first, measure())
    with pytest.raises(UserError, match="Min-SNR"):
        backbone.objective(TrainConfig(min_snr_gamma=5.0))


# --- a trained project ---------------------------------------------------------------------------

SETTINGS = dict(steps=4, rank=4, alpha=8.0, learning_rate=5e-3, batch_size=2, trigger="zq", train_text_encoder=True,
                preview_every=2, preview_steps=STEPS, preview_seeds=[SEED], preview_prompts=[PROMPT],
                checkpoint_every=2, validation="1", validation_every=2, crop="random", seed=7, device="cpu",
                timestep_sampling="logit-normal")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sd3_dir):
    """One tiny SD3 project trained 4 steps through the CLI, 2 then 2 more (a resume), and another
    trained the 4 steps at once: (split project, straight project, images)."""
    from tiny_ddpm import make_images
    from transferstudio.cli import main
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project

    tmp = tmp_path_factory.mktemp("sd3_trained")
    images = make_images(tmp / "images", n=4, size=64, captions=True)
    projects = []
    for name in ("split", "straight"):
        project = create_project(tmp / name, backbone=sd3_dir, images=images, config=TrainConfig(**SETTINGS))
        projects.append(project)
    split, straight = projects
    assert main(["train", str(split.folder), "--steps", "2"]) == 0
    assert main(["train", str(split.folder), "--steps", "4"]) == 0
    assert main(["train", str(straight.folder)]) == 0
    return split, straight, tmp


def test_lora_trains_and_resumes_to_the_same_weights(trained):
    from transferstudio.adapt import checkpoints as ckpt

    split, straight, _ = trained
    assert len(split.runs()) == 1, "the second `train` continued the run"
    run = split.latest_run()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    a = load_file(ckpt.latest_checkpoint(straight.latest_run()).path / ckpt.WEIGHTS)
    b = load_file(ckpt.latest_checkpoint(run).path / ckpt.WEIGHTS)
    assert a.keys() == b.keys()
    assert any(k.startswith("unet.") and ".add_q_proj." in k for k in a), "LoRA on the joint attention"
    assert any(k.startswith("text_encoder_2.") for k in a), "and on both CLIP encoders"
    assert not any("text_encoder_3" in k for k in a), "never on T5"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # The held-out picture was measured (the flow objective's evaluate) at the start and every 2 steps.
    measured = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in measured] == [0, 2, 4] and all(np.isfinite(r["val_loss"]) for r in measured)


def test_previews_and_the_restored_run_and_exports_make_the_same_picture(trained, sd3_dir):
    from PIL import Image

    from transferstudio.adapt.restore import load_trained
    from transferstudio.export.formats import export

    split, _, tmp = trained
    run = split.latest_run()
    shown = np.asarray(Image.open(run / "previews" / "step-000004" / f"seed-{SEED}.png"), np.float32)
    model = load_trained(split)
    ours = _app_image(model.backbone)
    np.testing.assert_array_equal(ours, shown)
    model.trainee.set_strength(0.0)
    base = _app_image(model.backbone)
    np.testing.assert_array_equal(base, _script_image(_pipe(sd3_dir)))
    assert np.abs(ours - base).mean() > 0.5, "the LoRA changed the picture"

    out = export(split, tmp / "exports" / "style", "diffusers").path
    pipe = _pipe(sd3_dir)
    pipe.load_lora_weights(str(out))
    _close(_script_image(pipe), ours)
    with safe_open(str(out), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.lora_alpha"] == 8.0
    assert {k.split(".")[0] for k in keys} == {"transformer", "text_encoder", "text_encoder_2"}
    assert meta["modelspec.architecture"] == "stable-diffusion-3-medium/lora"

    merged = export(split, tmp / "exports" / "merged", "merged-diffusers").path  # a whole model folder
    _close(_script_image(_pipe(merged)), ours)


def test_the_diffusion_settings_apply_to_flow_matching(tmp_path, sd3_dir):
    """Masked loss, offset / multi-resolution noise, input perturbation, a noise-level window, caption
    dropout, prior preservation and gradient checkpointing all run on the flow objective; Min-SNR,
    which has no meaning there, is refused with advice."""
    from PIL import Image

    from tiny_ddpm import make_images
    from transferstudio.core.events import Failed, Finished, Step
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    first = sorted(images.glob("*.png"))[0]
    picture = Image.open(first).convert("RGBA")
    alpha = np.zeros((32, 32), np.uint8)
    alpha[:, :16] = 255  # only the left half is the subject
    picture.putalpha(Image.fromarray(alpha))
    picture.save(first)
    base = dict(steps=2, rank=4, alpha=8.0, batch_size=2, preview_every=0, preview_steps=2, preview_seeds=[SEED],
                checkpoint_every=2, device="cpu", trigger="zq")
    config = TrainConfig(**base, masked_loss=True, noise_offset=0.05, multires_noise_iterations=2,
                         input_perturbation=0.1, timestep_low=0.2, timestep_high=0.8, caption_dropout=0.5,
                         class_pictures=1, class_prompt="a photo", gradient_checkpointing=True, layers="all-linear")
    events = list(train(TrainJob(create_project(tmp_path / "p", backbone=sd3_dir, images=images, config=config))))
    assert isinstance(events[-1], Finished), events[-1]
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, Step))

    refused = TrainConfig(**base, min_snr_gamma=5.0)
    events = list(train(TrainJob(create_project(tmp_path / "q", backbone=sd3_dir, images=images, config=refused))))
    assert isinstance(events[-1], Failed) and "Min-SNR" in events[-1].message and "0 (off)" in events[-1].advice


def test_kohya_export_names_layers_comfyui_finds_and_gives_the_same_picture(trained, sd3_dir):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from transferstudio.adapt.restore import load_trained
    from transferstudio.backbones import mmdit_layout as layout
    from transferstudio.export.formats import export

    split, _, tmp = trained
    out = export(split, tmp / "exports" / "style-kohya", "kohya").path
    lora = load_file(out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sd3" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "8" and meta["modelspec.architecture"] == "stable-diffusion-3-medium/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/sd3.5"
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight" in lora  # q, k, v as one layer
    assert lora["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"].shape[0] == 12

    # ComfyUI's reading: each name is a weight of the original-layout model (its single file) ...
    pipe = _pipe(sd3_dir)
    state = layout.to_original(pipe.transformer.state_dict(), layout.sd3_layers(
        layout.shapes_of(pipe.transformer.state_dict())))
    applied = apply_kohya(state, lora, kohya_weight_names(state, "lora_unet_"), "lora_unet_")
    for prefix, encoder in (("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)):
        te_state = encoder.state_dict()
        applied |= apply_kohya(te_state, lora, kohya_weight_names(te_state, prefix, text_model=True), prefix)
        encoder.load_state_dict(te_state)
    assert applied == {k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    # ... and with the deltas added there, diffusers' own converter gives the trained model's picture.
    converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(state))
    transformer = SD3Transformer2DModel.from_config(pipe.transformer.config)
    transformer.load_state_dict(converted)
    pipe.transformer = transformer
    _close(_script_image(pipe), _app_image(load_trained(split).backbone))


# --- presets, DoRA ---------------------------------------------------------------------------------

def _adapted(tmp_path: Path, folder: Path, **settings):
    """A backbone with an adapter of random non-zero weights, as a TrainedModel (no training)."""
    from transferstudio.adapt.checkpoints import CheckpointInfo
    from transferstudio.adapt.restore import TrainedModel
    from transferstudio.adapt.trainee import Trainee
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.project.config import TrainConfig

    backbone = load_backbone(folder)
    config = TrainConfig(**{"rank": 4, "alpha": 8.0, "trigger": "zq", **settings})
    torch.manual_seed(0)
    trainee = Trainee(backbone, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in trainee.roles.values():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
                elif "lora_magnitude_vector" in name:
                    p.mul_(1 + 0.3 * torch.rand(p.shape, generator=gen))
    trainee.train_mode(False)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return TrainedModel(backbone=backbone, trainee=trainee, config=config, run_dir=run,
                        checkpoint=CheckpointInfo(path=run / "checkpoints" / "step-000001", step=1, state={}))


@pytest.mark.parametrize("layers,dora", [("all-linear", False), ("attention+ff", True)])
def test_layer_presets_and_dora_export_to_both_layouts(layers, dora, tmp_path, sd35_dir):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from transferstudio.backbones import mmdit_layout as layout
    from transferstudio.export.formats import export_trained

    model = _adapted(tmp_path, sd35_dir, layers=layers, dora=dora)
    adapted = {n for n, m in model.backbone.transformer.named_modules() if hasattr(m, "lora_A")}
    assert "transformer_blocks.0.attn2.to_q" in adapted and "transformer_blocks.1.ff_context.net.2" not in adapted
    assert ("transformer_blocks.1.norm1_context.linear" in adapted) == (layers == "all-linear")
    assert ("transformer_blocks.0.ff.net.2" in adapted)
    image = _app_image(model.backbone)
    model.trainee.set_strength(0.0)
    assert np.abs(image - _app_image(model.backbone)).mean() > 1.0, "the adapter changes the picture"
    model.trainee.set_strength(1.0)

    diffusers_file = export_trained(model, tmp_path / "lora", "diffusers").path
    pipe = _pipe(sd35_dir)
    pipe.load_lora_weights(str(diffusers_file))
    _close(_script_image(pipe), image, mean=1.0, most=6.0)

    lora = load_file(export_trained(model, tmp_path / "kohya", "kohya").path)
    assert any(k.endswith(".dora_scale") for k in lora) == dora
    if layers == "all-linear":  # the last block's context modulation is stored (shift, scale) in the original
        assert "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.lora_up.weight" in lora
    pipe = _pipe(sd35_dir)
    state = layout.to_original(pipe.transformer.state_dict(), layout.sd3_layers(
        layout.shapes_of(pipe.transformer.state_dict())))
    applied = apply_kohya(state, lora, kohya_weight_names(state, "lora_unet_"), "lora_unet_")
    assert applied == {k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    transformer = SD3Transformer2DModel.from_config(pipe.transformer.config)
    transformer.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(state))
    pipe.transformer = transformer
    _close(_script_image(pipe), image, mean=1.0, most=6.0)


# --- single files ------------------------------------------------------------------------------------

@pytest.fixture()
def resources(tmp_path, monkeypatch, sd3_dir):
    """resources/loading/sd3-medium made from the tiny model's folder (configs and tokenizers only)."""
    from tiny_mmdit import loading_files

    root = tmp_path / "resources"
    loading_files(root, sd3_dir, "sd3-medium")
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(root))
    return root


@pytest.mark.parametrize("all_in_one", [False, True])
def test_a_single_file_with_its_text_encoders_loads_as_the_folder_does(all_in_one, resources, sd3_dir, tmp_path):
    from tiny_mmdit import write_single_files
    from transferstudio.backbones.registry import inspect_backbone, load_backbone

    file = write_single_files(sd3_dir, tmp_path / "models", all_in_one=all_in_one)
    found = inspect_backbone(file)
    assert found.usable and found.family == "sd3" and found.variant == "sd3-medium", found.describe()
    lines = dict(found.details)
    assert lines["text encoder 3"] == ("sd3-tiny.safetensors (inside)" if all_in_one else "t5xxl_fp16.safetensors")
    assert lines["text encoder 2"].startswith("sd3-tiny" if all_in_one else "clip_g")
    backbone = load_backbone(file)
    np.testing.assert_array_equal(_app_image(backbone), _app_image(load_backbone(sd3_dir)))
    assert backbone.caps.kohya_lora and backbone.export_spec().kohya_base_version == "sd3"


def test_single_file_problems_are_said_with_what_to_do(resources, sd3_dir, tmp_path, monkeypatch):
    from tiny_mmdit import write_single_files
    from transferstudio.backbones.registry import inspect_backbone, load_backbone
    from transferstudio.core.errors import BackboneError

    file = write_single_files(sd3_dir, tmp_path / "models")
    (tmp_path / "models" / "text_encoders" / "t5xxl_fp16.safetensors").unlink()
    found = inspect_backbone(file)
    assert not found.usable and "no T5-XXL text encoder file was found" in found.problems[0]
    assert "t5xxl_fp16.safetensors" in found.advice
    with pytest.raises(BackboneError, match="T5-XXL"):
        load_backbone(file)

    fp8 = write_single_files(sd3_dir, tmp_path / "fp8", fp8=True)
    found = inspect_backbone(fp8)
    assert not found.usable and "8-bit floats (fp8)" in found.problems[0] and "bf16 or fp16" in found.advice

    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(tmp_path / "empty"))
    found = inspect_backbone(write_single_files(sd3_dir, tmp_path / "again"))
    assert not found.usable and "no loading files for Stable Diffusion 3 medium" in found.problems[0]
    assert "diffusers folder" in found.advice


def test_lycoris_adapters_export_for_python_but_not_into_fused_kohya_layers(tmp_path, sd3_dir):
    from transferstudio.core.errors import ExportError
    from transferstudio.export.formats import export_trained

    model = _adapted(tmp_path, sd3_dir, adapter="loha")
    out = export_trained(model, tmp_path / "loha", "diffusers").path
    with safe_open(str(out), framework="pt") as f:
        config, keys = json.loads(f.metadata()["lora_adapter_metadata"]), list(f.keys())
    assert config["transformer.peft_type"] == "LOHA" and any(".hada_w1_a" in k for k in keys)
    with pytest.raises(ExportError, match="only plain LoRA"):
        export_trained(model, tmp_path / "loha-kohya", "kohya")


def test_the_model_can_be_built_from_its_configs_alone(sd3_dir, resources, tmp_path):
    """`skeleton`: every weight on the meta device (what the memory plan measures), a folder's own
    configs or, for a single file, its loading files; the same model as the loaded one."""
    from tiny_mmdit import write_single_files
    from transferstudio.backbones.registry import family, load_backbone

    loaded = load_backbone(sd3_dir)
    for path in (sd3_dir, write_single_files(sd3_dir, tmp_path / "models")):
        with torch.device("meta"):
            skeleton = family("sd3").skeleton(path)
        assert {p.device.type for m in skeleton.plain_modules() for p in m.parameters()} == {"meta"}
        assert skeleton.caps == loaded.caps and skeleton.variant == "sd3-medium"
        assert {k: v.shape for k, v in skeleton.transformer.state_dict().items()} == \
            {k: v.shape for k, v in loaded.transformer.state_dict().items()}
