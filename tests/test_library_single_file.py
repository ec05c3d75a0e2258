"""Original-layout writer + offline single-file loader: the round trip keeps every parameter."""
from __future__ import annotations

import gc
import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tiny_single_file import build_tiny_models, tiny_configs, write_tiny_config_root  # noqa: E402
from transferstudio.core.errors import BackboneError  # noqa: E402
from transferstudio.backbones.sdfiles._paths import loading_root  # noqa: E402
from transferstudio.backbones.sdfiles.detect import detect  # noqa: E402
from transferstudio.library.discovery import describe_file  # noqa: E402
from transferstudio.backbones.sdfiles.original_layout import (  # noqa: E402
    save_single_file,
    to_original_layout,
    write_safetensors,
)
from transferstudio.backbones.sdfiles.single_file import SingleFileComponents, load_single_file  # noqa: E402

FAMILIES = ["sd1", "sd2", "sd2-v", "sdxl"]
COMPONENTS = ["unet", "vae", "text_encoder", "text_encoder_2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (source models, single file, config_root), built once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            base = tmp_path_factory.mktemp(family)
            models = build_tiny_models(family)
            root = write_tiny_config_root(base / "loading", family)
            path = save_single_file(base / f"tiny-{family}.safetensors", models["unet"], models["vae"],
                                    models["text_encoder"], models.get("text_encoder_2"), family=family)
            cache[family] = (models, path, root)
        return cache[family]

    return get


def _assert_same_parameters(source, loaded):
    a, b = source.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_keeps_every_parameter_and_output(tiny, family):
    models, path, root = tiny(family)
    pred = "v_prediction" if family == "sd2-v" else None
    c = load_single_file(path, config_root=root, prediction_type=pred)
    assert isinstance(c, SingleFileComponents)
    assert c.family == ("sd2" if family == "sd2-v" else family)
    assert c.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")
    assert c.scheduler_config["prediction_type"] == c.prediction_type
    assert c.config_dir == root / family
    for name in COMPONENTS:
        if name in models:
            _assert_same_parameters(models[name], getattr(c, name))
        else:
            assert getattr(c, name) is None and c.tokenizer_2 is None
    assert c.tokenizer("a cat").input_ids[:1] == [49406]

    torch.manual_seed(1)
    ids = c.tokenizer(["a red cat"], padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt").input_ids
    with torch.no_grad():
        te_src = models["text_encoder"](ids).last_hidden_state
        assert torch.equal(te_src, c.text_encoder(ids).last_hidden_state)
        latents = torch.randn(1, 4, 8, 8)
        cross = tiny_configs(family)["unet"]["cross_attention_dim"]
        context = torch.randn(1, 77, cross)
        extra = {}
        if family == "sdxl":
            extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, 40), "time_ids": torch.randn(1, 6)}}
        out_src = models["unet"](latents, 10, context, **extra).sample
        assert torch.equal(out_src, c.unet(latents, 10, context, **extra).sample)
        image = torch.rand(1, 3, 32, 32) * 2 - 1
        assert torch.equal(models["vae"].encode(image).latent_dist.mean, c.vae.encode(image).latent_dist.mean)
        assert torch.equal(models["vae"].decode(latents).sample, c.vae.decode(latents).sample)
        if family == "sdxl":
            ids2 = c.tokenizer_2(["a red cat"], padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            assert c.tokenizer_2.pad_token_id == 0 and ids2[0, -1] == 0
            src, got = models["text_encoder_2"](ids2), c.text_encoder_2(ids2)
            assert torch.equal(src.text_embeds, got.text_embeds)


def test_written_file_has_the_original_layout(tiny):
    _, path, _ = tiny("sdxl")
    keys = set(load_file(path))
    for key in ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",  # upsampler after attention -> .2.conv
                "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.input_blocks.6.0.op.weight",
                "model.diffusion_model.middle_block.2.in_layers.0.weight",
                "model.diffusion_model.out.2.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.proj_out.weight", "first_stage_model.encoder.norm_out.bias",
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.positional_embedding"]:
        assert key in keys, key
    with safe_open(str(path), "pt") as f:
        assert f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape() == [16, 16, 1, 1]
        assert f.metadata()["transferstudio.family"] == "sdxl"
        assert len(f.get_slice("model.diffusion_model.input_blocks.4.1.proj_in.weight").get_shape()) == 2  # linear
    _, path1, _ = tiny("sd1")
    with safe_open(str(path1), "pt") as f:
        keys1 = set(f.keys())
        assert len(f.get_slice("model.diffusion_model.input_blocks.1.1.proj_in.weight").get_shape()) == 4  # 1x1 conv
    for key in ["model.diffusion_model.output_blocks.2.1.conv.weight",  # UpBlock2D first: upsampler at .1.conv
                "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.input_blocks.11.0.in_layers.2.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"]:
        assert key in keys1, key
    assert not any(".1.1.conv." in k or "input_blocks.12" in k for k in keys1)


def test_sd2_file_is_complete_for_other_tools(tiny):
    models, path, _ = tiny("sd2")
    sd = load_file(path)
    n = tiny_configs("sd2")["text_encoder"]["num_hidden_layers"]
    last = f"cond_stage_model.model.transformer.resblocks.{n}."
    # The layer diffusers drops is written as an identity layer, plus the unused projection.
    assert all(not sd[k].any() for k in sd if k.startswith(last)) and len([k for k in sd if k.startswith(last)]) == 12
    assert torch.equal(sd["cond_stage_model.model.text_projection"], torch.eye(32))
    # Given the original tensors, they are written instead.
    extra = {last + "ln_1.weight": torch.full((32,), 3.0)}
    out = to_original_layout(models["unet"], models["vae"], models["text_encoder"], family="sd2",
                             extra_tensors=extra)
    assert torch.equal(out[last + "ln_1.weight"], extra[last + "ln_1.weight"])


def test_sd2_v_file_records_v_prediction(tiny):
    _, path, root = tiny("sd2-v")
    d = detect(path)
    assert (d.family, d.prediction_type, d.config_key) == ("sd2", "v_prediction", "sd2-v")
    c = load_single_file(path, config_root=root)  # no override needed: the metadata says so
    assert c.prediction_type == "v_prediction" and c.config_dir.name == "sd2-v"


def test_dtype_on_write_and_on_load(tiny, tmp_path):
    models, _, root = tiny("sd1")
    half = save_single_file(tmp_path / "half.safetensors", models["unet"], models["vae"], models["text_encoder"],
                            family="sd1", dtype=torch.float16, metadata={"note": "hi"})
    assert detect(half).dtype == "F16"
    with safe_open(str(half), "pt") as f:
        assert f.metadata()["note"] == "hi"
    c = load_single_file(half, config_root=root, dtype=torch.float16)
    for name in ("unet", "vae", "text_encoder"):
        params = list(getattr(c, name).parameters())
        assert all(p.dtype == torch.float16 for p in params)
        src = {k: v.half() for k, v in models[name].state_dict().items()}
        got = getattr(c, name).state_dict()
        assert all(torch.equal(src[k], got[k]) for k in src)


def _rewrite(src, dst, edit):
    sd = load_file(src)
    edit(sd)
    write_safetensors(dst, sd)
    return dst


def test_missing_weight_is_refused_not_left_random(tiny, tmp_path):
    _, path, root = tiny("sd1")
    bad = _rewrite(path, tmp_path / "missing.safetensors",
                   lambda sd: sd.pop("model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"))
    with pytest.raises(BackboneError) as e:
        load_single_file(bad, config_root=root)
    assert "unet" in e.value.message and "missing" in e.value.message and e.value.advice


def test_wrong_shape_is_refused(tiny, tmp_path):
    _, path, root = tiny("sd1")

    def edit(sd):
        k = "first_stage_model.decoder.conv_in.weight"
        sd[k] = torch.zeros(sd[k].shape[0] * 2, *sd[k].shape[1:])

    bad = _rewrite(path, tmp_path / "shape.safetensors", edit)
    with pytest.raises(BackboneError, match="wrong shape"):
        load_single_file(bad, config_root=root)


def test_text_encoder_under_an_unknown_prefix_is_refused(tiny, tmp_path):
    # The transformers-5 pitfall in reverse: keys a converter does not pick up must not pass silently.
    _, path, root = tiny("sd1")

    def edit(sd):
        for k in [k for k in sd if k.startswith("cond_stage_model.transformer.text_model.encoder.")]:
            sd[k.replace("text_model.encoder.", "text_model.enc.")] = sd.pop(k)

    bad = _rewrite(path, tmp_path / "te.safetensors", edit)
    with pytest.raises(BackboneError) as e:
        load_single_file(bad, config_root=root)
    assert "text encoder" in e.value.message


def test_text_encoder_without_text_model_prefix_loads(tiny, tmp_path):
    # Some old SD 1.x files store `cond_stage_model.transformer.embeddings…` (no `text_model.`).
    models, path, root = tiny("sd1")

    def edit(sd):
        for k in [k for k in sd if k.startswith("cond_stage_model.transformer.text_model.")]:
            sd[k.replace("transformer.text_model.", "transformer.")] = sd.pop(k)

    old = _rewrite(path, tmp_path / "old.safetensors", edit)
    c = load_single_file(old, config_root=root)
    _assert_same_parameters(models["text_encoder"], c.text_encoder)


def test_structure_mismatch_between_file_and_config_is_refused(tiny, tmp_path):
    _, path, _ = tiny("sd1")
    other = write_tiny_config_root(tmp_path / "cfg", "sd1")
    cfg_path = other / "sd1" / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["layers_per_block"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BackboneError, match="does not match the expected architecture"):
        load_single_file(path, config_root=other)


def test_non_base_models_are_explained_by_the_loader(tmp_path):
    lora = write_safetensors(tmp_path / "style.safetensors",
                             {"lora_unet_a.lora_down.weight": torch.zeros(4, 8)})
    with pytest.raises(BackboneError, match="This is a LoRA, not a base model"):
        load_single_file(lora)
    vae = write_safetensors(tmp_path / "vae.safetensors", {"encoder.conv_in.weight": torch.zeros(1),
                                                            "decoder.conv_out.weight": torch.zeros(1)})
    with pytest.raises(BackboneError, match="This is a VAE, not a base model"):
        load_single_file(vae)
    with pytest.raises(BackboneError, match="is empty"):
        (tmp_path / "empty.safetensors").write_bytes(b"")
        load_single_file(tmp_path / "empty.safetensors")


def test_unmapped_diffusers_key_is_an_error(tiny):
    models, _, _ = tiny("sd1")
    sd = dict(models["unet"].state_dict())
    sd["mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mystery.weight"):
        to_original_layout(sd, models["vae"], models["text_encoder"], family="sd1",
                           unet_config=models["unet"].config)


def test_describe_file_on_a_real_tiny_checkpoint(tiny):
    _, path, _ = tiny("sdxl")
    text = describe_file(path)
    assert "Stable Diffusion XL" in text and "unet, vae, text_encoder, text_encoder_2" in text


# ------------------------------------------------------------------------------------------------
# Bundled configs: verified against the real models' parameter counts (built on the meta device).

EXPECTED_MILLIONS = {
    ("sd1", "unet"): 859.52, ("sd2", "unet"): 865.91, ("sd2-v", "unet"): 865.91, ("sdxl", "unet"): 2567.46,
    ("sd1", "vae"): 83.65, ("sd2", "vae"): 83.65, ("sd2-v", "vae"): 83.65, ("sdxl", "vae"): 83.65,
    ("sd1", "text_encoder"): 123.06, ("sd2", "text_encoder"): 340.39, ("sd2-v", "text_encoder"): 340.39,
    ("sdxl", "text_encoder"): 123.06, ("sdxl", "text_encoder_2"): 694.66,
}


def _meta_model(key, name):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = loading_root() / key / name
    with init_empty_weights():
        if name in ("unet", "vae"):
            cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
            return cls.from_config(cls.load_config(folder))
        cfg = CLIPTextConfig.from_pretrained(folder)
        cls = CLIPTextModelWithProjection if cfg.architectures == ["CLIPTextModelWithProjection"] else CLIPTextModel
        return cls(cfg)


@pytest.mark.parametrize("key,name", sorted(EXPECTED_MILLIONS))
def test_bundled_configs_match_real_parameter_counts(key, name):
    model = _meta_model(key, name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == EXPECTED_MILLIONS[(key, name)]


def test_bundled_folders_are_complete_pipelines():
    for key in ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner"):
        folder = loading_root() / key
        index = json.loads((folder / "model_index.json").read_text())
        for comp, spec in index.items():
            if comp.startswith("_") or not isinstance(spec, list) or spec[0] is None:
                continue
            names = {"scheduler": "scheduler_config.json", "tokenizer": "vocab.json",
                     "tokenizer_2": "vocab.json"}
            assert (folder / comp / names.get(comp, "config.json")).is_file(), (key, comp)
    pred = {k: json.loads((loading_root() / k / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
            for k in ("sd1", "sd2", "sd2-v", "sdxl")}
    assert pred == {"sd1": "epsilon", "sd2": "epsilon", "sd2-v": "v_prediction", "sdxl": "epsilon"}


# ------------------------------------------------------------------------------------------------
# Full size: random weights from each bundled config -> single file -> loader, every parameter equal.


def _random_full_size(key, dtype):
    from accelerate.utils import set_module_tensor_to_device

    models = {}
    gen = torch.Generator().manual_seed(0)
    for name in COMPONENTS:
        if not (loading_root() / key / name).is_dir():
            continue
        model = _meta_model(key, name)
        for pname, p in list(model.named_parameters()):
            value = torch.empty(p.shape, dtype=dtype).normal_(0, 0.02, generator=gen)
            set_module_tensor_to_device(model, pname, "cpu", value=value, dtype=dtype)
        for bname, b in list(model.named_buffers()):
            if b.device.type == "meta":
                set_module_tensor_to_device(model, bname, "cpu", value=torch.zeros(b.shape, dtype=b.dtype))
        models[name] = model
    return models


def _fingerprint(model):
    return {k: hashlib.blake2b(v.contiguous().view(-1).view(torch.uint8).numpy().data, digest_size=16).hexdigest()
            for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("key", ["sd1", "sd2", "sd2-v", "sdxl"])
def test_full_size_round_trip(key, tmp_path):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    dtype = torch.float16  # SDXL in fp16 keeps the whole test under ~16 GB
    models = _random_full_size(key, dtype)
    prints = {name: _fingerprint(m) for name, m in models.items()}
    path = save_single_file(tmp_path / f"{key}.safetensors", models["unet"], models["vae"],
                            models["text_encoder"], models.get("text_encoder_2"), family=key)
    del models
    gc.collect()
    # diffusers' own detector must see the family we wrote (real key names and shapes).
    with safe_open(str(path), "pt") as f:
        shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    expected_type = {"sd1": "v1", "sd2": "v2", "sd2-v": "v2", "sdxl": "xl_base"}[key]
    assert infer_diffusers_model_type(shapes) == expected_type
    d = detect(path)
    assert d.usable and d.config_key == key
    c = load_single_file(path, dtype=dtype)
    for name in COMPONENTS:
        if name in prints:
            model = getattr(c, name)
            assert all(p.dtype == dtype for p in model.parameters())
            assert _fingerprint(model) == prints[name], name
    del c
    gc.collect()
