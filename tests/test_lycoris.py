"""LoHa and LoKr adapters (LyCORIS kinds, through peft), conv layers and layer presets on tiny
SD 1.x / SDXL: trained, resumed, sampled and exported like LoRA, and their kohya/LyCORIS files
rebuilt by the rules ComfyUI's loader applies give exactly the change peft made to each layer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from test_export_formats import _loader_module  # the loaders' kohya-name convention, written from their docs
from transferstudio.adapt.trainee import Trainee
from transferstudio.export.kohya import to_kohya
from transferstudio.project.config import TrainConfig

PROMPT = "zq, a red cat"
SEED = 5


def _load(folder: Path, family: str):
    from transferstudio.backbones.sd import SDFamily
    from transferstudio.backbones.sdxl import SDXLFamily

    return (SDXLFamily() if family == "sdxl" else SDFamily()).load(folder)


def _folder(family, tiny_sd1_dir, tiny_sdxl_dir) -> Path:
    return tiny_sdxl_dir if family == "sdxl" else tiny_sd1_dir


def _perturbed(trainee: Trainee, seed: int = 1) -> None:
    """Trained-looking adapters: every adapter weight moved (the zero-started factors too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in trainee.roles.values():
            for _, p in module.named_parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    trainee.train_mode(False)


def _adapter_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


# --- layer presets ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_layer_presets_pick_the_layers_they_name_and_conv_layers_take_their_own_rank(family, tiny_sd1_dir,
                                                                                      tiny_sdxl_dir):
    backbone = _load(_folder(family, tiny_sd1_dir, tiny_sdxl_dir), family)
    unet = backbone.unet
    spatial = {n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)}
    adapted = {}
    for layers in ("attention", "attention+ff", "all-linear", "all+conv"):
        trainee = Trainee(backbone, TrainConfig(adapter="loha", layers=layers, rank=4, alpha=8, conv_rank=2,
                                                conv_alpha=1))
        adapted[layers] = set(_adapter_layers(unet))
        if layers == "all+conv":
            conv = trainee.conv_layers()["unet"]
            # every 3x3 convolution of the ResNet blocks and down/upsamplers, nothing else
            assert conv == {n for n in spatial if "resnets" in n or "samplers" in n} and conv
            for name in conv:  # the conv rank and alpha (0.5 = 1 / 2), the others rank 4 at 8 / 4
                layer = unet.get_submodule(name)
                assert layer.hada_w1_b["default"].shape[0] == 2 and layer.scaling["default"] == 0.5
            linear = unet.get_submodule(next(n for n in adapted[layers] if n.endswith("ff.net.2")))
            assert linear.hada_w1_b["default"].shape[0] == 4 and linear.scaling["default"] == 2.0
        else:
            assert not adapted[layers] & spatial, f"{layers} must not adapt convolutions"
        backbone = _load(_folder(family, tiny_sd1_dir, tiny_sdxl_dir), family)  # a clean UNet for the next
        unet = backbone.unet
    assert all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") for n in adapted["attention"])
    assert adapted["attention"] < adapted["attention+ff"] < adapted["all-linear"] < adapted["all+conv"]
    assert any(n.endswith("ff.net.0.proj") for n in adapted["attention+ff"])
    assert any(n.endswith("time_emb_proj") for n in adapted["all-linear"])
    assert any(n.endswith("proj_in") for n in adapted["all-linear"])


def test_settings_refuse_dora_on_lycoris_and_unknown_choices():
    assert TrainConfig(adapter="lokr", dora=True).conflicts()[0].startswith("dora:")
    assert not TrainConfig(adapter="lora", dora=True).conflicts()
    problems = TrainConfig(adapter="lycoris", layers="everything", conv_rank=-1).problems()
    assert [p.split(":")[0] for p in problems] == ["adapter", "layers", "conv_rank"]


# --- the kohya/LyCORIS layout, rebuilt as ComfyUI does ------------------------------------------

def _comfy_delta(tensors: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """ΔW of one module as ComfyUI's LoHa/LoKr adapters compute it from the file (an independent
    reading of comfy/weight_adapter/loha.py and lokr.py): LoHa (w1a@w1b)⊙(w2a@w2b)·alpha/w1b.rows;
    LoKr kron(w1, w2) with a split factor rebuilt as a@b, times alpha/rank only when a factor is
    split (rank: the split factor's inner size, w2's if both are); reshaped to the layer."""
    t = {k[len(name) + 1:]: v.double() for k, v in tensors.items() if k.startswith(name + ".")}
    alpha = float(t["alpha"]) if "alpha" in t else None
    if "hada_w1_a" in t:
        diff = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        scale = alpha / t["hada_w1_b"].shape[0] if alpha is not None else 1.0
        return diff.reshape(shape) * scale
    rank = None
    w1 = t.get("lokr_w1")
    if w1 is None:
        w1, rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
    w2 = t.get("lokr_w2")
    if w2 is None:
        w2, rank = t["lokr_w2_a"] @ t["lokr_w2_b"], t["lokr_w2_b"].shape[0]
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    scale = alpha / rank if alpha is not None and rank is not None else 1.0
    return torch.kron(w1, w2).reshape(shape) * scale


def _peft_delta(layer: torch.nn.Module) -> torch.Tensor:
    """What peft does to the layer's weight: merged minus base."""
    base = layer.get_base_layer().weight.detach().clone()
    layer.merge(adapter_names=["default"])
    delta = layer.get_base_layer().weight.detach() - base
    layer.unmerge()
    return delta.double()


def _module_of(name: str, family: str, roles: dict[str, torch.nn.Module], unet_config) -> tuple[str, str]:
    """A kohya module name -> (role, module path) as the loaders resolve it."""
    for prefix, role in (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder")):
        if name.startswith(prefix):
            paths = {("text_model." + n if not n.startswith(("text_model.", "text_projection")) else n)
                     .replace(".", "_"): n for n, _ in roles[role].named_modules()}
            return role, paths[name.removeprefix(prefix)]
    underscored = {n.replace(".", "_"): n for n, _ in roles["unet"].named_modules()}
    back = _loader_module(name, family, unet_config.layers_per_block, unet_config.up_block_types)
    return "unet", underscored[back]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_kohya_file_rebuilt_by_comfyui_rules_is_the_change_peft_makes(kind, family, tiny_sd1_dir, tiny_sdxl_dir):
    backbone = _load(_folder(family, tiny_sd1_dir, tiny_sdxl_dir), family)
    config = TrainConfig(adapter=kind, layers="all+conv", rank=4, alpha=8, conv_rank=2, conv_alpha=1,
                         train_text_encoder=True)
    torch.manual_seed(0)
    trainee = Trainee(backbone, config)
    _perturbed(trainee)
    spec = backbone.export_spec()
    tensors, modules = to_kohya(trainee.state(), trainee.lora_configs, unet_names=backbone.kohya_unet_names,
                                text_prefixes=dict(spec.kohya_text_prefixes), conv_paths=trainee.conv_layers())

    layers = {role: _adapter_layers(m) for role, m in trainee.roles.items()}
    assert len(modules) == sum(len(v) for v in layers.values()), "every adapted layer is in the file"
    suffixes = {k.split(".", 1)[1] for k in tensors}
    assert suffixes <= {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b",
                        "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}
    if kind == "lokr":  # both kinds of LoKr module occur: whole factors (scale folded in) and a split w2
        assert {"lokr_w2", "lokr_w2_a"} <= suffixes
    checked = {"conv": 0, "linear": 0}
    for module in modules:
        role, path = _module_of(module.name, family, trainee.roles, backbone.unet.config)
        assert (role, path) == (module.role, module.source), f"{module.name} names another layer"
        layer = layers[role][path]
        expected = _peft_delta(layer)
        assert expected.abs().max() > 1e-4, "the test adapter must change the layer"
        got = _comfy_delta(tensors, module.name, layer.get_base_layer().weight.shape)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{module.name}: {m}")
        is_conv = isinstance(layer.get_base_layer(), torch.nn.Conv2d) and layer.get_base_layer().kernel_size != (1, 1)
        assert module.conv == is_conv
        checked["conv" if is_conv else "linear"] += 1
    assert checked["conv"] >= 10 and checked["linear"] >= 20, checked


# --- a run: train, resume, sample, export ------------------------------------------------------

def _pipe_image(pipe) -> np.ndarray:
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe([PROMPT], negative_prompt=None, num_inference_steps=3, guidance_scale=7.0, width=32, height=32,
               eta=0.0, generator=[torch.Generator().manual_seed(SEED)], output_type="pil")
    return np.asarray(out.images[0], dtype=np.float32)


def _load_with_peft(module: torch.nn.Module, file: Path, role: str) -> None:
    """A peft user's load of one role from the diffusers/peft file (its config in the metadata)."""
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model, set_peft_model_state_dict

    with safe_open(str(file), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    kwargs = {k.removeprefix(role + "."): v for k, v in meta.items() if k.startswith(role + ".")}
    config = {"LOHA": LoHaConfig, "LOKR": LoKrConfig}[kwargs["peft_type"]](**kwargs)
    inject_adapter_in_model(config, module, adapter_name="default")
    state = {k.removeprefix(role + "."): v for k, v in load_file(file).items() if k.startswith(role + ".")}
    if not any(n.startswith("text_model.") for n, _ in module.named_modules()):  # transformers 5's flat CLIP
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    result = set_peft_model_state_dict(module, state, adapter_name="default")
    assert not result.unexpected_keys


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_a_lycoris_run_trains_resumes_samples_the_same_and_exports(kind, tmp_path, tiny_sd1_dir):
    import diffusers

    from tiny_ddpm import make_images
    from transferstudio.adapt.restore import load_trained
    from transferstudio.cli import main
    from transferstudio.core.events import Finished, Preview, Started
    from transferstudio.export.formats import export
    from transferstudio.project.project import load_project
    from transferstudio.training.trainer import TrainJob, train

    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    folder = tmp_path / "project"
    assert main(["new", str(folder), "--backbone", str(tiny_sd1_dir), "--images", str(images), "--steps", "2",
                 "--adapter", kind, "--layers", "all+conv", "--rank", "4", "--alpha", "8", "--conv-rank", "2",
                 "--conv-alpha", "1", "--lr", "5e-3", "--trigger", "zq", "--train-text-encoder",
                 "--preview-every", "0", "--checkpoint-every", "1"]) == 0
    project = load_project(folder)
    assert (project.config.adapter, project.config.layers, project.config.conv_rank) == (kind, "all+conv", 2)
    project.config.preview_steps, project.config.preview_seeds = 3, [SEED]
    project.config.preview_prompts = [PROMPT]
    project.save()

    first = list(train(TrainJob(project)))
    assert isinstance(first[-1], Finished), first[-1]
    resumed = list(train(TrainJob(load_project(folder), steps=3)))
    assert isinstance(resumed[-1], Finished), resumed[-1]
    started = next(e for e in resumed if isinstance(e, Started))
    assert started.start_step == 2 and started.total_steps == 3
    preview = [e for e in resumed if isinstance(e, Preview)][-1]
    assert preview.step == 3

    # The restored run (a fresh backbone + the checkpoint) makes the very picture the run showed.
    trained = load_trained(load_project(folder))
    assert trained.checkpoint.step == 3 and trained.config.adapter == kind
    assert trained.trainee.conv_layers()["unet"], "conv layers trained"
    state = trained.trainee.state()["unet"]
    marker = {"loha": ".hada_w1_a", "lokr": ".lokr_w1"}[kind]
    assert any(".resnets." in k and k.endswith("conv1" + marker) for k in state)
    again = np.asarray(trained.backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=3)[0], np.float32)
    np.testing.assert_array_equal(again, np.asarray(preview.images[0], np.float32))
    trained.trainee.set_strength(0.0)  # Compare's "before": exactly the base model
    before = np.asarray(trained.backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=3)[0], np.float32)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, local_files_only=True,
                                                             safety_checker=None, requires_safety_checker=False)
    np.testing.assert_array_equal(before, _pipe_image(pipe))
    assert np.abs(again - before).mean() > 0.1, "the adapter changed the picture"

    # kohya/LyCORIS file with its metadata
    kohya = export(project, tmp_path / "out" / f"{kind}-style", "kohya").path
    with safe_open(str(kohya), framework="pt") as f:
        meta, keys = dict(f.metadata()), list(f.keys())
    assert meta["ss_network_module"] == "lycoris.kohya"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == kind and args["conv_dim"] == "2" and args["conv_alpha"] == "1"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8"
    assert any(k.startswith("lora_unet_down_blocks_0_resnets_0_conv1.") for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert not any("lora_down" in k or "lora_A" in k for k in keys)
    manifest = json.loads(kohya.with_suffix(".json").read_text())
    assert manifest["settings"]["adapter"] == kind and manifest["settings"]["layers"] == "all+conv"

    # diffusers/peft file: the app's picture in a plain diffusers pipeline
    file = export(project, tmp_path / "out" / f"{kind}-peft", "diffusers").path
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, local_files_only=True,
                                                             safety_checker=None, requires_safety_checker=False)
    with pytest.raises(ValueError):  # diffusers 0.42's pipelines read LoRA only
        pipe.load_lora_weights(str(file))
    if kind == "lokr":  # diffusers' own LoKr loader, from the config in the file
        pipe.unet.load_lora_adapter(str(file.parent), weight_name=file.name, prefix="unet")
    else:
        _load_with_peft(pipe.unet, file, "unet")
    _load_with_peft(pipe.text_encoder, file, "text_encoder")
    theirs = _pipe_image(pipe)
    assert np.abs(theirs - again).mean() < 0.5 and np.abs(theirs - again).max() <= 6
    assert "loading" in json.loads(file.with_suffix(".json").read_text())


def test_lokr_file_loads_in_diffusers_and_loha_does_not(tmp_path, tiny_sd1_dir):
    """What diffusers itself can read: a LoKr UNet through `unet.load_lora_adapter` (conv layers
    included) gives the app's picture; a LoHa file is refused by both of its loaders."""
    import diffusers

    from transferstudio.export.writers import _lora_configs

    pictures = {}
    for kind in ("lokr", "loha"):
        backbone = _load(tiny_sd1_dir, "sd1")
        torch.manual_seed(0)
        trainee = Trainee(backbone, TrainConfig(adapter=kind, layers="all+conv", rank=4, alpha=8, conv_rank=2,
                                                conv_alpha=1))
        _perturbed(trainee, seed=2)
        pictures[kind] = np.asarray(backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=3)[0], np.float32)
        file = tmp_path / f"{kind}.safetensors"
        backbone.save_lora(file, trainee.state(), _lora_configs(type("T", (), {"trainee": trainee})), {})
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, local_files_only=True,
                                                                 safety_checker=None, requires_safety_checker=False)
        if kind == "lokr":
            pipe.unet.load_lora_adapter(str(tmp_path), weight_name=file.name, prefix="unet")
            theirs = _pipe_image(pipe)
            assert np.abs(theirs - pictures[kind]).mean() < 0.5 and np.abs(theirs - pictures[kind]).max() <= 6
        else:
            with pytest.raises((ValueError, TypeError, IndexError)):  # no LoHa loader: it is read as a LoRA
                pipe.unet.load_lora_adapter(str(tmp_path), weight_name=file.name, prefix="unet")


def test_lora_conv_layers_with_their_own_rank_load_in_diffusers_from_both_files(tmp_path, tiny_sd1_dir):
    """LoCon: LoRA on the ResNet convolutions at the conv rank/alpha, read back by diffusers'
    `load_lora_weights` from the kohya file and from the diffusers file alike."""
    import diffusers
    from safetensors.torch import save_file

    from transferstudio.export.writers import _lora_configs

    backbone = _load(tiny_sd1_dir, "sd1")
    torch.manual_seed(0)
    trainee = Trainee(backbone, TrainConfig(layers="all+conv", rank=4, alpha=8, conv_rank=2, conv_alpha=1))
    _perturbed(trainee, seed=3)
    ours = np.asarray(backbone.sample(seeds=[SEED], prompts=[PROMPT], steps=3)[0], np.float32)
    tensors, modules = to_kohya(trainee.state(), trainee.lora_configs, unet_names=backbone.kohya_unet_names,
                                text_prefixes=dict(backbone.export_spec().kohya_text_prefixes),
                                conv_paths=trainee.conv_layers())
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[conv + ".lora_down.weight"].shape[:2] == (2, 32) and float(tensors[conv + ".alpha"]) == 1.0
    assert {(m.rank, m.alpha) for m in modules if m.conv} == {(2, 1.0)}
    assert {(m.rank, m.alpha) for m in modules if not m.conv} == {(4, 8.0)}
    save_file(tensors, str(tmp_path / "kohya.safetensors"))
    backbone.save_lora(tmp_path / "diffusers.safetensors", trainee.state(),
                       _lora_configs(type("T", (), {"trainee": trainee})), {})
    for name in ("kohya", "diffusers"):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd1_dir, local_files_only=True,
                                                                 safety_checker=None, requires_safety_checker=False)
        base = _pipe_image(pipe)
        pipe.load_lora_weights(str(tmp_path / f"{name}.safetensors"))
        theirs = _pipe_image(pipe)
        assert np.abs(theirs - ours).mean() < 0.5 and np.abs(theirs - ours).max() <= 6, name
        assert np.abs(base - ours).mean() > 1.0, "the test adapter must change the picture"
