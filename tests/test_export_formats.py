"""Exports that other tools load unchanged: kohya and diffusers LoRA files, merged checkpoints,
metadata and the provenance manifest, checked the way a user of those tools would notice."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from transferstudio.core.errors import ExportError  # noqa: E402
from transferstudio.export import formats  # noqa: E402
from transferstudio.export import metadata as md  # noqa: E402
from transferstudio.export.formats import export_trained, formats_for, lora_folders, unique_path  # noqa: E402
from transferstudio.export.kohya import text_module_name, to_kohya, unet_module_names  # noqa: E402
from transferstudio.project.config import TrainConfig  # noqa: E402
from transferstudio.adapt.checkpoints import CheckpointInfo  # noqa: E402
from transferstudio.adapt.restore import TrainedModel  # noqa: E402
from transferstudio.adapt.trainee import Trainee  # noqa: E402

PROMPT = "a red cat"
SEED = 3
STEPS = 3
# Conv LoRA on the resnets and the attention's proj_in as well as the attention projections:
# every kind of name the loaders must map.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in"]


# --- helpers ---------------------------------------------------------------------------------

def _load(folder: Path, family: str):
    from transferstudio.backbones.sd import SDFamily
    from transferstudio.backbones.sdxl import SDXLFamily

    return (SDXLFamily() if family == "sdxl" else SDFamily()).load(folder)


def _adapted(tmp_path: Path, folder: Path, family: str, *, rank=4, alpha=8.0, targets=TARGETS,
             dora=False) -> TrainedModel:
    """A backbone with LoRA (text encoders too) and random non-zero B weights, as a TrainedModel."""
    backbone = _load(folder, family)
    backbone.lora_targets = lambda: list(targets)
    config = TrainConfig(rank=rank, alpha=alpha, train_text_encoder=True, trigger="mystyle", dora=dora)
    torch.manual_seed(0)
    trainee = Trainee(backbone, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in trainee.roles.values():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                elif "lora_magnitude_vector" in name:  # DoRA: a trained magnitude, not the base norm
                    p.mul_(1 + 0.2 * torch.rand(p.shape, generator=gen))
    trainee.train_mode(False)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2)))
    return TrainedModel(backbone=backbone, trainee=trainee, config=config, run_dir=run,
                        checkpoint=CheckpointInfo(path=run / "checkpoints" / "step-000002", step=2, state={}))


def _app_image(backbone) -> np.ndarray:
    return np.asarray(backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=STEPS)[0], dtype=np.float32)


def _pipe_image(pipe) -> np.ndarray:
    """What a user's diffusers script makes (see StableDiffusionBase.sample)."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe([PROMPT], negative_prompt=None, num_inference_steps=STEPS, guidance_scale=7.0, width=32, height=32,
               eta=0.0, generator=[torch.Generator().manual_seed(SEED)], output_type="pil")
    return np.asarray(out.images[0], dtype=np.float32)


def _pipeline(folder: Path, family: str):
    import diffusers

    if family == "sdxl":
        return diffusers.StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    return diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                             requires_safety_checker=False)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(a - b).max() <= 2.0, f"images differ by up to {np.abs(a - b).max()} levels"


def _header(path: Path) -> tuple[list[str], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys()), dict(f.metadata() or {})


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_sd1_dir, tiny_sdxl_dir):
    """family -> (TrainedModel, its image, the base model's image, export folder), built once."""
    cache = {}

    def get(family):
        if family not in cache:
            folder = tiny_sdxl_dir if family == "sdxl" else tiny_sd1_dir
            tmp = tmp_path_factory.mktemp(f"adapted_{family}")
            trained = _adapted(tmp, folder, family)
            image = _app_image(trained.backbone)
            trained.trainee.set_strength(0.0)
            base = _app_image(trained.backbone)
            trained.trainee.set_strength(1.0)
            assert np.abs(image - base).mean() > 3.0, "the test LoRA must visibly change the image"
            cache[family] = (trained, image, base, tmp)
        return cache[family]

    return get


# --- LoRA files loaded by diffusers' own loader ------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_lora_file_loaded_by_diffusers_gives_the_apps_image(adapted, family, fmt):
    trained, image, base, tmp = adapted(family)
    folder = Path(trained.backbone.source)
    result = export_trained(trained, tmp / f"{fmt}-lora", fmt)
    assert result.path == tmp / f"{fmt}-lora.safetensors" and result.kind == "lora" and result.step == 2
    assert md.manifest_path(result.path).is_file()

    pipe = _pipeline(folder, family)
    pipe.load_lora_weights(str(result.path))
    _same(_pipe_image(pipe), image)

    keys, meta = _header(result.path)
    if fmt == "kohya":
        assert all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys)
        with safe_open(str(result.path), framework="pt") as f:
            alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
        assert alphas and all(a.ndim == 0 and float(a) == 8.0 for a in alphas.values()), "alpha 8 != rank 4 kept"
        te = ("lora_te1_", "lora_te2_") if family == "sdxl" else ("lora_te_",)
        assert {p for p in te if any(k.startswith(p) for k in keys)} == set(te)
        blocks = ("input_blocks", "output_blocks", "middle_block") if family == "sdxl" else \
            ("down_blocks", "up_blocks", "mid_block")
        unet = [k for k in keys if k.startswith("lora_unet_")]
        assert all(any(f"lora_unet_{b}_" in k for b in blocks) for k in unet)
        assert any(k.endswith("in_layers_2.lora_down.weight" if family == "sdxl" else "conv1.lora_down.weight")
                   for k in unet), "conv LoRA exported"
    else:
        config = json.loads(meta["lora_adapter_metadata"])
        assert config["unet.lora_alpha"] == 8.0 and config["unet.r"] == 4
    assert meta["modelspec.architecture"] == ("stable-diffusion-xl-v1-base/lora" if family == "sdxl"
                                              else "stable-diffusion-v1/lora")


def test_dora_strength_zero_is_the_base_and_its_exports_keep_the_magnitude(tmp_path, tiny_sd1_dir):
    trained = _adapted(tmp_path, tiny_sd1_dir, "sd1", dora=True)
    assert any("lora_magnitude_vector" in n for n, _ in trained.backbone.unet.named_parameters())
    image = _app_image(trained.backbone)
    trained.trainee.set_strength(0.0)
    base = _app_image(trained.backbone)
    trained.trainee.set_strength(1.0)
    _same(base, _app_image(_load(tiny_sd1_dir, "sd1")))  # off means off, trained magnitudes and all
    _same(_app_image(trained.backbone), image)  # and back on
    assert np.abs(image - base).mean() > 3.0

    result = export_trained(trained, tmp_path / "dora-diffusers", "diffusers")
    pipe = _pipeline(tiny_sd1_dir, "sd1")
    pipe.load_lora_weights(str(result.path))
    theirs = _pipe_image(pipe)
    # DoRA renormalises every weight: a different order of float operations than the app's
    # adapter moves a few pixels by a level or two more than plain LoRA does (max 4, mean 0.6,
    # against a 12-level mean effect of the adapter).
    assert np.abs(theirs - image).mean() < 1.0 and np.abs(theirs - image).max() <= 6
    assert json.loads(_header(result.path)[1]["lora_adapter_metadata"])["unet.use_dora"] is True

    merged = export_trained(trained, tmp_path / "dora-merged", "merged-diffusers")
    _same(_pipe_image(_pipeline(merged.path, "sd1")), image)  # peft folds the magnitudes in

    trained = _adapted(tmp_path, tiny_sd1_dir, "sd1", dora=True)  # merging unloaded the adapter
    kohya = export_trained(trained, tmp_path / "dora-kohya", "kohya")
    keys, meta = _header(kohya.path)
    assert sum(k.endswith(".dora_scale") for k in keys) == sum(k.endswith(".lora_down.weight") for k in keys)
    assert "dora_wd" in meta["ss_network_args"]


# --- merged checkpoints ------------------------------------------------------------------------

def _tiny_sdxl_distinct_widths(folder: Path, src: Path) -> Path:
    """The tiny SDXL with a wider second text encoder. Real SDXL encoders are 768 and 1280 wide,
    and diffusers' `from_single_file` tells them apart by width; tests/tiny_sd.py's are both 32."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    shutil.copytree(src, folder)
    cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder_2", local_files_only=True)
    cfg.hidden_size, cfg.intermediate_size = 40, 44
    torch.manual_seed(5)
    CLIPTextModelWithProjection(cfg).save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    unet_cfg = dict(UNet2DConditionModel.load_config(folder / "unet"))
    unet_cfg["cross_attention_dim"] = 32 + 40
    UNet2DConditionModel.from_config(unet_cfg).save_pretrained(folder / "unet", safe_serialization=True)
    return folder


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_merged_single_file_loads_in_library_and_diffusers_like_base_plus_lora(tmp_path, family, tiny_sd1_dir,
                                                                               tiny_sdxl_dir):
    import diffusers

    from transferstudio.backbones.sd_backbone import SDBackbone
    from transferstudio.backbones.sdxl_backbone import SDXLBackbone
    from transferstudio.backbones.sdfiles.single_file import load_single_file

    folder = tiny_sd1_dir if family == "sd1" else _tiny_sdxl_distinct_widths(tmp_path / "sdxl", tiny_sdxl_dir)
    trained = _adapted(tmp_path, folder, family, targets=["to_q", "to_k", "to_v", "to_out.0", "conv1"])
    image = _app_image(trained.backbone)
    result = export_trained(trained, tmp_path / "out" / "merged.safetensors", "merged-single-file")
    assert result.kind == "merged"
    keys, meta = _header(result.path)
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert meta["modelspec.architecture"] == ("stable-diffusion-xl-v1-base" if family == "sdxl"
                                              else "stable-diffusion-v1")
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")], "no temporary files left"

    # The model library, with a bundled-style config folder for the tiny model.
    key = "sdxl" if family == "sdxl" else "sd1"
    root = tmp_path / "loading"
    shutil.copytree(folder, root / key)
    parts = load_single_file(result.path, config_root=root)
    cls = SDXLBackbone if family == "sdxl" else SDBackbone
    _same(_app_image(cls.from_components(parts, source=result.path)), image)

    # diffusers' own single-file loader, offline with the model's config folder.
    pipe_cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = pipe_cls.from_single_file(str(result.path), config=str(folder), local_files_only=True, **extra)
    _same(_pipe_image(pipe), image)


def test_merged_diffusers_folder_at_half_strength_and_fp16(tmp_path, tiny_sd1_dir):
    trained = _adapted(tmp_path, tiny_sd1_dir, "sd1")
    trained.trainee.set_strength(0.5)
    half = _app_image(trained.backbone)
    result = export_trained(trained, tmp_path / "merged", "merged-diffusers", strength=0.5)
    assert result.path.is_dir() and (result.path / "transferstudio.json").is_file()
    assert json.loads((result.path / "transferstudio.json").read_text())["strength"] == 0.5
    _same(_pipe_image(_pipeline(result.path, "sd1")), half)

    trained = _adapted(tmp_path, tiny_sd1_dir, "sd1")
    small = export_trained(trained, tmp_path / "merged16", "merged-diffusers", fp16=True)
    with safe_open(str(small.path / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_unconditional_lora_exports_as_peft_file_and_merged_folder(tmp_path, tiny_ddpm):
    from diffusers import DDIMPipeline, DDIMScheduler

    from transferstudio.backbones.registry import load_backbone

    assert [k for k, _, _ in formats_for("ddpm", "lora")] == ["diffusers", "merged-diffusers"]
    backbone = load_backbone(tiny_ddpm)
    config = TrainConfig(rank=4, alpha=8)
    trainee = Trainee(backbone, config)
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    run = tmp_path / "run"
    run.mkdir()
    trained = TrainedModel(backbone, trainee, config, run, CheckpointInfo(run / "c", 1, {}))
    image = np.asarray(backbone.sample(seeds=[SEED], steps=STEPS)[0], dtype=np.float32)
    with pytest.raises(ExportError, match="kohya"):
        export_trained(trained, tmp_path / "x", "kohya")
    lora = export_trained(trained, tmp_path / "peft", "diffusers")
    assert lora.path.suffix == ".safetensors" and md.manifest_path(lora.path).is_file()
    merged = export_trained(trained, tmp_path / "merged", "merged-diffusers")
    pipe = DDIMPipeline.from_pretrained(merged.path, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(backbone.scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=1, generator=[torch.Generator().manual_seed(SEED)], num_inference_steps=STEPS, eta=0.0)
    _same(np.asarray(out.images[0], dtype=np.float32), image)


def test_full_finetune_of_an_unconditional_model_is_a_diffusers_folder_with_its_manifest(tmp_path, tiny_ddpm):
    from diffusers import UNet2DModel

    from transferstudio.backbones.registry import load_backbone

    backbone = load_backbone(tiny_ddpm)
    config = TrainConfig(method="full")
    trainee = Trainee(backbone, config)
    with torch.no_grad():
        next(backbone.unet.parameters()).add_(1.0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.25}) + "\n")
    trained = TrainedModel(backbone, trainee, config, run, CheckpointInfo(run / "c", 5, {}))
    assert [k for k, _, _ in formats_for(backbone, "full")] == ["diffusers"]
    result = export_trained(trained, tmp_path / "full", "diffusers")
    assert result.kind == "full" and result.path.is_dir()
    manifest = json.loads((result.path / "transferstudio.json").read_text())
    assert manifest["method"] == "full" and manifest["run"] == {
        "folder": str(run), "checkpoint": "c", "steps": 5, "final_loss": 0.25}
    loaded = UNet2DModel.from_pretrained(result.path / "unet", local_files_only=True)
    torch.testing.assert_close(next(loaded.parameters()), next(backbone.unet.parameters()))
    with pytest.raises(ExportError, match="already exists"):
        export_trained(trained, tmp_path / "full", "diffusers")


# --- names as the loaders map them --------------------------------------------------------------

def _real_unet(family: str):
    """The real SD 1.5 / SDXL base UNet layout, on the meta device (no memory, no download)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2)
    if family == "sdxl":
        cfg = dict(common, sample_size=128, block_out_channels=(320, 640, 1280),
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                   cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                   addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    else:
        cfg = dict(common, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    with init_empty_weights():
        return UNet2DConditionModel(**cfg)


# Written from the documented conventions (sd-scripts' LoRA module names; the SDXL names are the
# original `sgm` UNet's, e.g. input_blocks.4.1 = the first attention of the second level).
EXPECTED = {
    "sd1": {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q":
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0":
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "up_blocks.3.attentions.2.proj_out": "lora_unet_up_blocks_3_attentions_2_proj_out",
        "down_blocks.1.resnets.0.conv1": "lora_unet_down_blocks_1_resnets_0_conv1",
    },
    "sdxl": {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q":
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k":
            "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_v":
            "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_v",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0":
            "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0",
        "up_blocks.1.attentions.2.transformer_blocks.1.ff.net.2":
            "lora_unet_output_blocks_5_1_transformer_blocks_1_ff_net_2",
        "down_blocks.0.resnets.1.conv1": "lora_unet_input_blocks_2_0_in_layers_2",
        "up_blocks.2.resnets.0.conv_shortcut": "lora_unet_output_blocks_6_0_skip_connection",
        "down_blocks.1.attentions.0.proj_in": "lora_unet_input_blocks_4_1_proj_in",
        "mid_block.resnets.1.time_emb_proj": "lora_unet_middle_block_2_emb_layers_1",
    },
}


def _loader_module(name: str, family: str, layers: int, up_types) -> str:
    """A kohya UNet name -> the diffusers module a loader resolves it to (A1111/ComfyUI
    convention: SD 1.x names are the diffusers path; SDXL names the sgm path, blocks of
    `layers + 1` entries, resnet parts renamed)."""
    rest = name.removeprefix("lora_unet_")
    if family == "sd1":
        return rest
    fixed = {"input_blocks_0_0": "conv_in", "out_2": "conv_out", "time_embed_0": "time_embedding_linear_1",
             "time_embed_2": "time_embedding_linear_2", "label_emb_0_0": "add_embedding_linear_1",
             "label_emb_0_2": "add_embedding_linear_2"}
    if rest in fixed:
        return fixed[rest]
    renames = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
               "skip_connection": "conv_shortcut", "in_layers_0": "norm1", "out_layers_0": "norm2"}

    def part(kind: str, tail: str) -> str:
        return renames.get(tail, tail) if kind == "resnets" else tail

    if m := re.fullmatch(r"input_blocks_(\d+)_(\d)_(.+)", rest):
        i, j, tail = int(m[1]), int(m[2]), m[3]
        b, k = divmod(i - 1, layers + 1)
        if k == layers:
            return f"down_blocks_{b}_downsamplers_0_conv"
        kind = "resnets" if j == 0 else "attentions"
        return f"down_blocks_{b}_{kind}_{k}_{part(kind, tail)}"
    if m := re.fullmatch(r"middle_block_(\d)_(.+)", rest):
        kind, k = {"0": ("resnets", 0), "1": ("attentions", 0), "2": ("resnets", 1)}[m[1]]
        return f"mid_block_{kind}_{k}_{part(kind, m[2])}"
    if m := re.fullmatch(r"output_blocks_(\d+)_(\d)_(.+)", rest):
        b, k = divmod(int(m[1]), layers + 1)
        j, tail = int(m[2]), m[3]
        has_attn = "CrossAttn" in up_types[b]
        if j == 2 or (j == 1 and not has_attn):
            return f"up_blocks_{b}_upsamplers_0_conv"
        kind = "resnets" if j == 0 else "attentions"
        return f"up_blocks_{b}_{kind}_{k}_{part(kind, tail)}"
    return rest


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_kohya_name_is_one_the_loaders_map(family):
    unet = _real_unet(family)
    names = dict(unet.named_modules())
    kohya = unet_module_names(list(EXPECTED[family]), "sdxl" if family == "sdxl" else "sd", unet.config)
    assert kohya == EXPECTED[family]

    # Every linear/conv layer of the real UNet gets a name that maps back to exactly that layer.
    layers = [n for n, m in names.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    mapped = unet_module_names(layers, "sdxl" if family == "sdxl" else "sd", unet.config)
    underscored = {n.replace(".", "_"): n for n in layers}
    for path, name in mapped.items():
        back = _loader_module(name, family, unet.config.layers_per_block, unet.config.up_block_types)
        assert underscored.get(back) == path, f"{name} maps to {back}, not {path}"
    assert len(set(mapped.values())) == len(mapped)

    assert text_module_name("encoder.layers.11.self_attn.q_proj", "lora_te_") == \
        "lora_te_text_model_encoder_layers_11_self_attn_q_proj"
    assert text_module_name("text_model.encoder.layers.31.mlp.fc1", "lora_te2_") == \
        "lora_te2_text_model_encoder_layers_31_mlp_fc1"


def test_dora_magnitude_becomes_dora_scale_per_output_channel():
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = torch.nn.Sequential()
    model.add_module("to_q", torch.nn.Linear(8, 6))
    model.add_module("conv1", torch.nn.Conv2d(3, 5, 3))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "conv1"], use_dora=True)
    inject_adapter_in_model(config, model, adapter_name="default")
    state = get_peft_model_state_dict(model, adapter_name="default")
    tensors, modules = to_kohya({"unet": state}, {"unet": config}, family="sd")
    assert tensors["lora_unet_to_q.dora_scale"].shape == (6, 1)
    assert tensors["lora_unet_conv1.dora_scale"].shape == (5, 1, 1, 1)
    assert tensors["lora_unet_conv1.lora_down.weight"].shape == (2, 3, 3, 3)
    # DoRA starts with the magnitude = the base weight's norm per output channel.
    torch.testing.assert_close(tensors["lora_unet_to_q.dora_scale"][:, 0], model.to_q.base_layer.weight.norm(dim=1))
    assert all(m.dora for m in modules) and float(tensors["lora_unet_to_q.alpha"]) == 4.0


def test_rslora_and_alpha_pattern_become_the_equivalent_kohya_alpha():
    from peft import LoraConfig

    from transferstudio.export.kohya import kohya_alpha

    assert kohya_alpha(LoraConfig(r=16, lora_alpha=8), "a.to_q", 16) == 8
    assert kohya_alpha(LoraConfig(r=16, lora_alpha=8, use_rslora=True), "a.to_q", 16) == pytest.approx(32)
    assert kohya_alpha(LoraConfig(r=4, lora_alpha=8, alpha_pattern={"to_k": 2}), "a.to_k", 4) == 2


# --- metadata, manifest, a real run -----------------------------------------------------------

def test_kohya_export_of_a_real_run_has_metadata_and_a_manifest_that_match(tmp_path, tiny_sd1_dir):
    from tiny_ddpm import make_images

    from transferstudio.core.events import Finished
    from transferstudio.export.formats import export
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    images = make_images(tmp_path / "images", n=2, size=32)
    for i, p in enumerate(sorted(images.glob("*.png"))):
        p.with_suffix(".txt").write_text(f"red, cat {i}")
    config = TrainConfig(steps=2, rank=4, alpha=8, batch_size=1, preview_every=0, preview_steps=1,
                         preview_seeds=[1], trigger="mystyle", train_text_encoder=True, checkpoint_every=100)
    project = create_project(tmp_path / "project", backbone=tiny_sd1_dir, images=images, config=config)
    events = list(train(TrainJob(project)))
    assert isinstance(events[-1], Finished), events[-1]

    result = export(project, tmp_path / "loras" / "my style", "kohya")
    assert result.path.name == "my style.safetensors" and result.step == 2
    keys, meta = _header(result.path)
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8"
    assert meta["ss_output_name"] == "my style" and meta["ss_num_train_images"] == "2"
    assert meta["ss_resolution"] == "(32, 32)"
    tags = json.loads(meta["ss_tag_frequency"])["images"]
    assert tags["mystyle"] == 2 and tags["red"] == 2
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.trigger_phrase"] == "mystyle" and meta["modelspec.resolution"] == "32x32"
    assert meta["modelspec.title"] == "my style" and meta["modelspec.date"]
    # The hashes as sd-scripts defines them: over the file as saved with only the ss_ keys.
    assert meta["sshs_model_hash"] == md.file_model_hash(result.path)
    from safetensors.torch import load_file, save

    raw = save(load_file(result.path), metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()

    manifest = json.loads(md.manifest_path(result.path).read_text())
    run = project.latest_run()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert manifest["run"]["steps"] == 2 and manifest["run"]["final_loss"] == pytest.approx(last["loss"])
    assert manifest["settings"] == json.loads((run / "config.json").read_text())["config"]
    assert manifest["base_model"]["name"] == tiny_sd1_dir.name
    assert manifest["base_model"]["sha256"] == md.sha256_path(tiny_sd1_dir)
    files = {f["path"]: f["sha256"] for f in manifest["dataset"]["files"]}
    assert files == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images.glob("*.png")}
    assert len(manifest["dataset"]["captions_sha256"]) == 64
    assert manifest["activation text"] == "mystyle" and manifest["sd version"] == "SD1"
    assert manifest["app_version"] and manifest["date"]


def test_tag_frequency_and_legacy_hash_of_a_big_file():
    assert md.tag_frequency(["mystyle, red, cat", "mystyle, blue"]) == {"mystyle": 2, "red": 1, "cat": 1, "blue": 1}
    tensors = {"w": torch.arange(400_000, dtype=torch.float32)}  # 1.6 MB: past the 1 MiB legacy offset
    model, legacy = md.safetensors_hashes(tensors, {"ss_a": "1", "modelspec.title": "not hashed"})
    from safetensors.torch import save

    raw = save(tensors, metadata={"ss_a": "1"})
    assert legacy == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8] and legacy != "e3b0c442"
    assert model == hashlib.sha256(tensors["w"].numpy().tobytes()).hexdigest()
    assert md.safetensors_hashes(tensors, {"ss_a": "1", "modelspec.title": "other"}) == (model, legacy)


# --- safety: no overwrite, atomic, clear errors, dialog lists, folders -----------------------------

def test_never_overwrites_silently_and_a_full_disk_leaves_nothing(tmp_path, tiny_sd1_dir, monkeypatch):
    trained, tmp = _adapted(tmp_path, tiny_sd1_dir, "sd1"), tmp_path
    out = tmp / "safe" / "style.safetensors"
    export_trained(trained, out, "kohya")
    before = out.read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_trained(trained, out, "kohya")
    assert out.read_bytes() == before
    export_trained(trained, out, "kohya", overwrite=True)

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ExportError, match="disk is full") as info:
        export_trained(trained, tmp / "safe" / "other.safetensors", "kohya")
    assert info.value.advice
    assert sorted(p.name for p in out.parent.iterdir()) == ["style.json", "style.safetensors"]

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    with pytest.raises(ExportError, match="may not write"):
        export_trained(trained, tmp / "safe" / "third.safetensors", "kohya")
    assert sorted(p.name for p in out.parent.iterdir()) == ["style.json", "style.safetensors"]


def test_formats_offered_per_family_and_method():
    from transferstudio.backbones.base import Capabilities

    keys = lambda *a: [k for k, _, _ in formats_for(*a)]  # noqa: E731
    assert keys("sd", "lora") == ["kohya", "diffusers", "merged-diffusers", "merged-single-file"]
    assert keys("sdxl", "full") == ["diffusers", "merged-single-file"]
    assert keys("ddpm", "full") == ["diffusers"]
    caps = Capabilities(conditioning="none", native_resolution=32, resolution_multiple=8, supports_full_finetune=True,
                        text_encoders=0, prediction_type="epsilon", latent=False)
    assert keys(caps, "lora") == ["diffusers", "merged-diffusers"]
    assert all(label and text for _, label, text in formats_for("sdxl", "lora"))
    assert set(formats.FORMATS) == {"kohya", "diffusers", "merged-diffusers", "merged-single-file", "single-file",
                                    "pipeline-diffusers", "pipeline-single-file", "generator", "onnx", "gan-folder"}


def test_lora_folders_of_a1111_and_comfyui_installs(tmp_path):
    a1111 = tmp_path / "stable-diffusion-webui"
    (a1111 / "models" / "Lora").mkdir(parents=True)
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    assert lora_folders(a1111, comfy) == [a1111 / "models" / "Lora", comfy / "models" / "loras"]
    assert lora_folders(None, tmp_path / "missing") == []
    assert lora_folders(a1111 / "models" / "Lora", None) == [a1111 / "models" / "Lora"]
    taken = a1111 / "models" / "Lora" / "style.safetensors"
    taken.write_bytes(b"x")
    assert unique_path(taken).name == "style-2.safetensors"
