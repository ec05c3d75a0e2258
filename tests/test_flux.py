"""FLUX.1 (dev and schnell) as a user would notice it: dev vs schnell read from the files, LoRA
trains by flow matching with dev's guidance input and resolution shift and resumes exactly,
previews are a plain diffusers script's pictures, the diffusers export loads into a fresh pipeline,
and the kohya file is read by diffusers' own kohya-FLUX converter and by ComfyUI's naming to the
same picture."""
from __future__ import annotations

import inspect
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

from tiny_mmdit import T5_MAX_LENGTH, apply_kohya, kohya_weight_names, make_tiny_flux  # noqa: E402

PROMPT = "zq, a red cat"
SEED = 3
STEPS = 3


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory) -> Path:
    return make_tiny_flux(tmp_path_factory.mktemp("tiny_flux_dev"), variant="dev")


@pytest.fixture(scope="module")
def schnell_dir(tmp_path_factory) -> Path:
    return make_tiny_flux(tmp_path_factory.mktemp("tiny_flux_schnell"), variant="schnell")


def _pipe(folder: Path):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _script_image(pipe, guidance: float = 3.5) -> np.ndarray:
    """What a user's diffusers script makes (see flux.py's module docstring)."""
    out = pipe([PROMPT], num_inference_steps=STEPS, guidance_scale=guidance, width=32, height=32,
               max_sequence_length=T5_MAX_LENGTH, generator=[torch.Generator().manual_seed(SEED)])
    return np.asarray(out.images[0], np.float32)


def _app_image(backbone) -> np.ndarray:
    return np.asarray(backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=STEPS)[0], np.float32)


def _close(a: np.ndarray, b: np.ndarray, *, mean: float = 0.5, most: float = 3.0) -> None:
    diff = np.abs(a - b)
    assert diff.mean() < mean and diff.max() <= most, f"pictures differ: mean {diff.mean():.2f}, max {diff.max()}"


def _tiny_width_patch(source: str, transformer) -> str:
    """diffusers' FLUX converters hard-code the released model's widths (3072 wide, 12288-wide
    MLP); the tiny model's are put in their place, the rest of diffusers' code is run as it is."""
    inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    patched = source.replace("inner_dim = 3072", f"inner_dim = {inner}")
    patched = patched.replace("dims=[3072, 3072, 3072, 12288]", f"dims=[{inner}, {inner}, {inner}, {mlp}]")
    assert patched != source
    return patched


def _diffusers_function(module, name: str, transformer):
    namespace = dict(vars(module))
    exec(_tiny_width_patch(inspect.getsource(getattr(module, name)), transformer), namespace)  # noqa: S102
    return namespace[name]


# --- the folder --------------------------------------------------------------------------------

def test_dev_and_schnell_are_told_apart_by_their_files(dev_dir, schnell_dir, tmp_path):
    from transferstudio.backbones.registry import inspect_backbone

    dev, schnell = inspect_backbone(dev_dir), inspect_backbone(schnell_dir)
    assert (dev.family, dev.variant, dev.label) == ("flux", "flux-dev", "FLUX.1 dev (32 px)")
    assert (schnell.family, schnell.variant) == ("flux", "flux-schnell")
    assert dev.caps.text_encoders == 1 and dev.caps.methods == ("lora",) and dev.caps.resolution_multiple == 8
    assert ("preview_steps", 4) in schnell.caps.suggested and ("preview_steps", 4) not in dev.caps.suggested
    assert ("guidance", "distilled (trains at 1, previews at 3.5)") in dev.details

    mixed = shutil.copytree(dev_dir, tmp_path / "mixed")  # a dev transformer with schnell's scheduler
    shutil.copy(schnell_dir / "scheduler" / "scheduler_config.json", mixed / "scheduler" / "scheduler_config.json")
    found = inspect_backbone(mixed)
    assert not found.usable and "FLUX.1 dev" in found.problems[0] and "schnell's" in found.problems[0]
    assert "Put back the scheduler folder that came with this transformer" in found.advice


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_previews_are_the_plain_pipeline_pictures(variant, dev_dir, schnell_dir):
    from transferstudio.backbones.registry import load_backbone

    folder = dev_dir if variant == "dev" else schnell_dir
    backbone = load_backbone(folder)
    assert backbone.max_sequence_length == T5_MAX_LENGTH  # min(512 / 256, the tokenizer's limit)
    np.testing.assert_array_equal(_app_image(backbone), _script_image(_pipe(folder), 3.5 if variant == "dev" else 0))


def test_training_inputs_are_the_pipelines(dev_dir):
    """Packing, positions, timestep and guidance as FluxPipeline gives them to the transformer."""
    from diffusers import FluxPipeline

    from transferstudio.backbones.flux import TRAINING_GUIDANCE
    from transferstudio.backbones.flux_backbone import image_ids, pack, unpack
    from transferstudio.backbones.registry import load_backbone

    x = torch.randn(2, 4, 16, 12)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 4, 16, 12))
    assert torch.equal(unpack(pack(x), 16, 12), x)
    assert torch.equal(image_ids(16, 12, torch.device("cpu"), torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, 8, 6, "cpu", torch.float32))
    backbone = load_backbone(dev_dir)
    cond = backbone.encode_conditioning([PROMPT, "zq"])
    sigmas = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ours = backbone.predict(x, sigmas, cond)
        pipe = _pipe(dev_dir)
        embeds, pooled, text_ids = pipe.encode_prompt([PROMPT, "zq"], max_sequence_length=T5_MAX_LENGTH)
        theirs = pipe.transformer(hidden_states=FluxPipeline._pack_latents(x, 2, 4, 16, 12), timestep=sigmas,
                                  guidance=torch.full((2,), TRAINING_GUIDANCE), pooled_projections=pooled,
                                  encoder_hidden_states=embeds, txt_ids=text_ids,
                                  img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 6, "cpu", torch.float32),
                                  return_dict=False)[0]
    torch.testing.assert_close(ours, unpack(theirs, 16, 12))


def test_dev_noise_levels_shift_by_resolution_as_its_scheduler_does(dev_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from transferstudio.backbones.registry import load_backbone

    backbone = load_backbone(dev_dir)
    schedule = backbone.flow_schedule()
    assert schedule.dynamic
    shares = torch.linspace(1.0, 0.05, 20)
    for latent_side in (16, 64, 128):  # 32 px on the tiny model; 1024 px latents of the real one
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(backbone.scheduler_config)
        c = scheduler.config
        mu = calculate_shift((latent_side // 2) ** 2, c.base_image_seq_len, c.max_image_seq_len, c.base_shift,
                             c.max_shift)
        scheduler.set_timesteps(sigmas=shares.numpy(), mu=mu)
        torch.testing.assert_close(schedule.sigmas(shares, (1, 4, latent_side, latent_side)),
                                   scheduler.sigmas[:-1].float())
    assert schedule.mu((1, 4, 128, 128)) > schedule.mu((1, 4, 16, 16)), "larger pictures train noisier"


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_the_original_layout_is_the_one_diffusers_converts(variant, dev_dir, schnell_dir):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import single_file_utils

    from transferstudio.backbones import mmdit_layout as layout

    model = FluxTransformer2DModel.from_pretrained(dev_dir if variant == "dev" else schnell_dir,
                                                   subfolder="transformer")
    state = model.state_dict()
    layers = layout.flux_layers(layout.shapes_of(state))
    original = layout.to_original(state, layers)
    assert ("guidance_in.in_layer.weight" in original) == (variant == "dev")
    assert "single_blocks.1.linear1.weight" in original and "double_blocks.0.img_attn.norm.query_norm.scale" in original
    convert = _diffusers_function(single_file_utils, "convert_flux_transformer_checkpoint_to_diffusers", model)
    back = convert({"model.diffusion_model." + k: v.clone() for k, v in original.items()})
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    mine = layout.from_original(original, layers)
    assert all(torch.equal(mine[k], state[k]) for k in state)


# --- a trained project ---------------------------------------------------------------------------

SETTINGS = dict(steps=4, rank=4, alpha=8.0, learning_rate=5e-3, batch_size=2, trigger="zq", train_text_encoder=True,
                preview_every=2, preview_steps=STEPS, preview_seeds=[SEED], preview_prompts=[PROMPT],
                checkpoint_every=2, crop="random", seed=7, device="cpu", timestep_sampling="logit-normal",
                layers="attention+ff")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dev_dir):
    """A tiny FLUX-dev project trained 4 steps through the CLI, 2 then 2 more (a resume), and another
    trained the 4 steps at once: (split project, straight project, folder)."""
    from tiny_ddpm import make_images
    from transferstudio.cli import main
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project

    tmp = tmp_path_factory.mktemp("flux_trained")
    images = make_images(tmp / "images", n=3, size=64, captions=True)
    split, straight = (create_project(tmp / name, backbone=dev_dir, images=images, config=TrainConfig(**SETTINGS))
                       for name in ("split", "straight"))
    assert main(["train", str(split.folder), "--steps", "2"]) == 0
    assert main(["train", str(split.folder), "--steps", "4"]) == 0
    assert main(["train", str(straight.folder)]) == 0
    return split, straight, tmp


def test_lora_trains_and_resumes_to_the_same_weights(trained):
    from transferstudio.adapt import checkpoints as ckpt

    split, straight, _ = trained
    assert len(split.runs()) == 1
    a = load_file(ckpt.latest_checkpoint(straight.latest_run()).path / ckpt.WEIGHTS)
    b = load_file(ckpt.latest_checkpoint(split.latest_run()).path / ckpt.WEIGHTS)
    assert a.keys() == b.keys()
    assert any(".single_transformer_blocks.1.proj_out." in k for k in a), "attention+ff reaches the single blocks"
    assert any(k.startswith("text_encoder.") for k in a) and not any(k.startswith("text_encoder_2.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_previews_restored_run_and_diffusers_export_make_the_same_picture(trained, dev_dir):
    from PIL import Image

    from transferstudio.adapt.restore import load_trained
    from transferstudio.export.formats import export

    split, _, tmp = trained
    shown = np.asarray(Image.open(split.latest_run() / "previews" / "step-000004" / f"seed-{SEED}.png"), np.float32)
    model = load_trained(split)
    ours = _app_image(model.backbone)
    np.testing.assert_array_equal(ours, shown)
    model.trainee.set_strength(0.0)
    base = _app_image(model.backbone)
    np.testing.assert_array_equal(base, _script_image(_pipe(dev_dir)))
    assert np.abs(ours - base).mean() > 0.5, "the LoRA changed the picture"

    out = export(split, tmp / "exports" / "style", "diffusers").path
    pipe = _pipe(dev_dir)
    pipe.load_lora_weights(str(out))
    _close(_script_image(pipe), ours)
    with safe_open(str(out), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"transformer", "text_encoder"}
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"


def test_kohya_export_is_read_by_diffusers_and_comfyui_naming_to_the_same_picture(trained, dev_dir, monkeypatch):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import lora_conversion_utils, lora_pipeline

    from transferstudio.adapt.restore import load_trained
    from transferstudio.backbones import mmdit_layout as layout
    from transferstudio.export.formats import export

    split, _, tmp = trained
    ours = _app_image(load_trained(split).backbone)
    out = export(split, tmp / "exports" / "style-kohya", "kohya").path
    lora = load_file(out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "flux1" and meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "8")
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in lora
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in lora  # q, k, v and the MLP's input in one
    assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_te1_")) for k in lora)

    # diffusers' kohya-FLUX reader (the one for files from sd-scripts and ComfyUI), widths set to the tiny model's
    pipe = _pipe(dev_dir)
    monkeypatch.setattr(lora_pipeline, "_convert_kohya_flux_lora_to_diffusers", _diffusers_function(
        lora_conversion_utils, "_convert_kohya_flux_lora_to_diffusers", pipe.transformer))
    pipe.load_lora_weights(str(out))
    _close(_script_image(pipe), ours)

    # ComfyUI's reading: each name is a weight of the original-layout (single-file) transformer
    pipe = _pipe(dev_dir)
    layers = layout.flux_layers(layout.shapes_of(pipe.transformer.state_dict()))
    state = layout.to_original(pipe.transformer.state_dict(), layers)
    applied = apply_kohya(state, lora, kohya_weight_names(state, "lora_unet_"), "lora_unet_")
    te_state = pipe.text_encoder.state_dict()
    applied |= apply_kohya(te_state, lora, kohya_weight_names(te_state, "lora_te1_", text_model=True), "lora_te1_")
    pipe.text_encoder.load_state_dict(te_state)
    assert applied == {k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    transformer = FluxTransformer2DModel.from_config(pipe.transformer.config)
    transformer.load_state_dict(layout.from_original(state, layers))
    pipe.transformer = transformer
    _close(_script_image(pipe), ours)


# --- presets, DoRA ---------------------------------------------------------------------------------

def _adapted(tmp_path: Path, folder: Path, **settings):
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


@pytest.mark.parametrize("layers,dora", [("attention", True), ("all-linear", False)])
def test_layer_presets_and_dora_export_to_both_layouts(layers, dora, tmp_path, schnell_dir):
    from diffusers import FluxTransformer2DModel

    from transferstudio.backbones import mmdit_layout as layout
    from transferstudio.export.formats import export_trained

    model = _adapted(tmp_path, schnell_dir, layers=layers, dora=dora)
    adapted = {n for n, m in model.backbone.transformer.named_modules() if hasattr(m, "lora_A")}
    assert "single_transformer_blocks.0.attn.to_q" in adapted and "proj_out" not in adapted
    assert ("single_transformer_blocks.0.proj_mlp" in adapted) == (layers != "attention")
    assert ("single_transformer_blocks.0.norm.linear" in adapted) == (layers == "all-linear")
    image = _app_image(model.backbone)
    model.trainee.set_strength(0.0)
    assert np.abs(image - _app_image(model.backbone)).mean() > 1.0, "the adapter changes the picture"
    model.trainee.set_strength(1.0)

    pipe = _pipe(schnell_dir)
    pipe.load_lora_weights(str(export_trained(model, tmp_path / "lora", "diffusers").path))
    _close(_script_image(pipe, 0.0), image, mean=1.0, most=6.0)

    lora = load_file(export_trained(model, tmp_path / "kohya", "kohya").path)
    assert any(k.endswith(".dora_scale") for k in lora) == dora
    pipe = _pipe(schnell_dir)
    layers_ = layout.flux_layers(layout.shapes_of(pipe.transformer.state_dict()))
    state = layout.to_original(pipe.transformer.state_dict(), layers_)
    applied = apply_kohya(state, lora, kohya_weight_names(state, "lora_unet_"), "lora_unet_")
    assert applied == {k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")}
    transformer = FluxTransformer2DModel.from_config(pipe.transformer.config)
    transformer.load_state_dict(layout.from_original(state, layers_))
    pipe.transformer = transformer
    _close(_script_image(pipe, 0.0), image, mean=1.0, most=6.0)


def test_bf16_keeps_the_trained_weights_fp32_and_trains(schnell_dir):
    """On a GPU in bf16 the frozen transformer takes bf16 (FLUX: 24 GB instead of 48); the
    adapter stays fp32 and still gets its gradients (checked here with the CPU's bf16 autocast)."""
    from types import SimpleNamespace

    from transferstudio.adapt.trainee import Trainee
    from transferstudio.backbones.objective import StepContext
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.project.config import TrainConfig

    backbone = load_backbone(schnell_dir)
    config = TrainConfig(rank=4, alpha=8.0, dora=True, train_text_encoder=True)
    trainee = Trainee(backbone, config)
    backbone.to(torch.device("cpu"), torch.bfloat16)
    frozen = {p.dtype for p in backbone.transformer.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16} and {p.dtype for p in trainee.parameters()} == {torch.float32}
    objective = backbone.objective(config)
    batch = SimpleNamespace(pixels=torch.rand(2, 3, 32, 32) * 2 - 1, captions=[PROMPT, "zq"],
                            original_sizes=[(32, 32)] * 2, crop_top_left=[(0, 0)] * 2, target_size=(32, 32))
    ctx = StepContext(step=1, device=torch.device("cpu"), amp=torch.bfloat16,
                      generator=torch.Generator().manual_seed(0), config=config)
    objective.loss(objective.phases[0], batch, ctx).backward()
    grads = [p.grad for p in trainee.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=2)[0].size == (32, 32)


# --- single files ------------------------------------------------------------------------------------

@pytest.fixture()
def resources(tmp_path, monkeypatch, dev_dir, schnell_dir):
    from tiny_mmdit import loading_files

    root = tmp_path / "resources"
    loading_files(root, dev_dir, "flux-dev")
    loading_files(root, schnell_dir, "flux-schnell")
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(root))
    return root


def test_a_comfyui_models_folder_loads_as_the_diffusers_folder_and_trains(resources, dev_dir, tmp_path):
    from tiny_ddpm import make_images
    from tiny_mmdit import write_single_files
    from transferstudio.backbones.registry import inspect_backbone, load_backbone
    from transferstudio.cli import main
    from transferstudio.export.formats import export
    from transferstudio.project.config import TrainConfig
    from transferstudio.project.project import create_project

    file = write_single_files(dev_dir, tmp_path / "models")  # models/diffusion_models, models/vae, models/text_encoders
    found = inspect_backbone(file)
    assert found.usable and found.variant == "flux-dev", found.describe()
    assert dict(found.details)["vae"] == "ae.safetensors" and dict(found.details)["text encoder 2"] == "t5xxl_fp16.safetensors"
    backbone = load_backbone(file)
    np.testing.assert_array_equal(_app_image(backbone), _app_image(load_backbone(dev_dir)))

    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    project = create_project(tmp_path / "project", backbone=file, images=images, config=TrainConfig(
        steps=2, rank=4, alpha=8.0, batch_size=2, preview_every=0, preview_steps=2, preview_seeds=[SEED],
        checkpoint_every=2, device="cpu", trigger="zq"))
    assert main(["train", str(project.folder)]) == 0
    lora = load_file(export(project, tmp_path / "style", "kohya").path)
    assert "lora_unet_single_blocks_1_linear1.lora_up.weight" in lora


def test_single_file_problems_are_said_with_what_to_do(resources, dev_dir, tmp_path):
    from tiny_mmdit import write_single_files
    from transferstudio.backbones.registry import inspect_backbone

    # a dev file named schnell: the weights decide, and the user is told
    named = write_single_files(dev_dir, tmp_path / "named", name="flux1-schnell-tiny.safetensors")
    found = inspect_backbone(named)
    assert found.usable and found.variant == "flux-dev" and found.label.startswith("FLUX.1 dev")
    assert "Its name says schnell, but its weights are FLUX.1 dev" in found.advice

    file = write_single_files(dev_dir, tmp_path / "models")
    t5 = tmp_path / "models" / "text_encoders" / "t5xxl_fp16.safetensors"
    fp8 = load_file(t5)
    t5.unlink()
    found = inspect_backbone(file)
    assert not found.usable and found.problems[0].startswith("no T5-XXL text encoder file was found beside")
    from safetensors.torch import save_file

    save_file({k: v.to(torch.float8_e4m3fn) for k, v in fp8.items()},
              str(t5.with_name("t5xxl_fp8_e4m3fn.safetensors")))
    found = inspect_backbone(file)
    assert not found.usable and "t5xxl_fp8_e4m3fn.safetensors) stores its weights as 8-bit floats" in found.problems[0]
    assert "fp16 T5-XXL text encoder (t5xxl_fp16.safetensors)" in found.advice

    found = inspect_backbone(write_single_files(dev_dir, tmp_path / "fp8", fp8=True))
    assert not found.usable and "8-bit floats (fp8)" in found.problems[0]
