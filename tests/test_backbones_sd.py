"""Stable Diffusion 1.x/2.x and SDXL backbones on tiny random models built from configs."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_single_file import (build_tiny_models, fake_checkpoint_keys, write_fake_safetensors,  # noqa: E402
                              write_tiny_config_root)
from transferstudio.backbones.registry import inspect_backbone, load_backbone  # noqa: E402
from transferstudio.backbones.sd import SDFamily  # noqa: E402
from transferstudio.backbones.sd_backbone import SDBackbone  # noqa: E402
from transferstudio.backbones.sdxl import SDXLFamily  # noqa: E402
from transferstudio.backbones.sdxl_backbone import SDXLBackbone  # noqa: E402
from transferstudio.core.errors import BackboneError  # noqa: E402
from transferstudio.adapt.adapters import add_lora, lora_state_dict  # noqa: E402



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are op-overhead bound: one intra-op thread is ~10x faster than two on a shared
    2-core machine (OpenMP workers spin-wait for each other under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SIZES = dict(original_sizes=[(40, 32), (32, 32)], crop_top_left=[(4, 0), (0, 0)], target_size=(32, 32))


def _pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    # Smooth colour gradients, not white noise: something a VAE and a UNet can fit quickly.
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, 32)
    base = (ramp[None, :] + ramp[:, None]) / 2
    colours = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    return (base[None, None] * colours).clamp(-1, 1)


def _img(pil) -> np.ndarray:
    return np.asarray(pil).astype(np.float64)


def _set_lora_b(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Pretend training happened: B != 0 makes the adapter do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "model"))


# --- inspect ---------------------------------------------------------------------------------

def test_inspect_sd1_folder(tiny_sd1_dir):
    found = inspect_backbone(tiny_sd1_dir)
    assert found.usable and found.family == "sd"
    assert found.label == "Stable Diffusion 1.x (32 px, epsilon)"
    assert found.native_resolution == 32 and found.prediction_type == "epsilon"
    assert found.size_bytes > 0 and "Usable:      yes" in found.describe()
    assert SDXLFamily().inspect(tiny_sd1_dir) is None


def test_inspect_sd2_reads_v_prediction_from_scheduler(tiny_sd2v_dir):
    found = SDFamily().inspect(tiny_sd2v_dir)
    assert found.usable and found.prediction_type == "v_prediction"
    assert found.label == "Stable Diffusion 2.x (32 px, v-prediction)"
    backbone = SDFamily().load(tiny_sd2v_dir)
    assert backbone.scheduler_config["prediction_type"] == "v_prediction"
    assert backbone.caps.prediction_type == "v_prediction" and backbone.version == "2.x"
    forced = SDFamily().load(tiny_sd2v_dir, prediction_type="epsilon")
    assert forced.scheduler_config["prediction_type"] == "epsilon" == forced.caps.prediction_type


def test_inspect_sdxl_folder(tiny_sdxl_dir):
    found = inspect_backbone(tiny_sdxl_dir)
    assert found.usable and found.family == "sdxl"
    assert found.label == "Stable Diffusion XL (32 px, epsilon)"
    assert SDFamily().inspect(tiny_sdxl_dir) is None


def test_missing_vae_is_reported_and_refused(tiny_sd1_dir, tmp_path):
    model = _copy(tiny_sd1_dir, tmp_path)
    shutil.rmtree(model / "vae")
    found = inspect_backbone(model)
    assert not found.usable and found.family is None
    assert any("missing the 'vae' folder" in p for p in found.problems)
    with pytest.raises(BackboneError, match="vae"):
        load_backbone(model)


def test_pickle_only_weights_are_refused(tiny_sd1_dir, tmp_path):
    model = _copy(tiny_sd1_dir, tmp_path)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    found = SDFamily().inspect(model)
    assert not found.usable
    assert any("pickle" in p and "'unet'" in p for p in found.problems)
    with pytest.raises(BackboneError, match="pickle"):
        SDFamily().load(model)


def test_sdxl_refiner_is_claimed_with_advice(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": True,
         "text_encoder": [None, None]}))
    found = inspect_backbone(tmp_path)
    assert found.family is None and not found.usable
    assert "refiner" in found.problems[0] and "base model" in found.problems[0]


# --- single-file checkpoints through the model library -----------------------------------------

def _tiny_single_file(tmp_path: Path, monkeypatch, family: str) -> Path:
    """An original-layout tiny checkpoint, loadable with the tiny configs (not the real ones)."""
    from transferstudio.backbones.sdfiles.original_layout import save_single_file

    models = build_tiny_models(family)
    write_tiny_config_root(tmp_path / "loading", family)
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(tmp_path))
    return save_single_file(tmp_path / f"tiny-{family}.safetensors", models["unet"], models["vae"],
                            models["text_encoder"], models.get("text_encoder_2"), family=family)


def test_single_file_checkpoint_claimed_via_library(tmp_path, monkeypatch):
    path = _tiny_single_file(tmp_path, monkeypatch, "sd1")
    found = inspect_backbone(path)
    assert found.usable and found.family == "sd" and found.native_resolution == 512  # the library's, for SD 1.x
    assert SDXLFamily().inspect(path) is None
    backbone = load_backbone(path, prediction_type="v_prediction")
    assert isinstance(backbone, SDBackbone) and backbone.source == path
    assert backbone.caps.prediction_type == "v_prediction" == backbone.scheduler_config["prediction_type"]
    cond = backbone.encode_conditioning(["x"], original_sizes=[(32, 32)], crop_top_left=[(0, 0)],
                                        target_size=(32, 32), train_text_encoder=False)
    assert backbone.predict(torch.zeros(1, 4, 16, 16), torch.tensor([5]), cond).shape == (1, 4, 16, 16)


def test_single_file_problems_come_from_the_library(tmp_path):
    pickle = tmp_path / "model.ckpt"
    with zipfile.ZipFile(pickle, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    found = inspect_backbone(pickle)
    assert not found.usable and "pickle" in found.problems[0]
    assert "convert-pickle" in dict(found.details)["advice"]
    lora = write_fake_safetensors(tmp_path / "style.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": ("F16", (4, 768)),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": ("F16", (320, 4))})
    found = inspect_backbone(lora)
    assert not found.usable and "LoRA" in found.problems[0]
    refiner = write_fake_safetensors(tmp_path / "refiner.safetensors", fake_checkpoint_keys("sdxl-refiner"))
    assert SDFamily().inspect(refiner) is None
    found = SDXLFamily().inspect(refiner)
    assert found is not None and not found.usable and "refiner" in found.problems[0]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_real_single_file_checkpoint_loads_and_samples(family, tmp_path, monkeypatch):
    """End to end with the real model library: an original-layout tiny checkpoint."""
    from transferstudio.backbones.sdfiles.original_layout import save_single_file

    models = build_tiny_models(family)
    write_tiny_config_root(tmp_path / "loading", family)
    path = save_single_file(tmp_path / f"tiny-{family}.safetensors", models["unet"], models["vae"],
                            models["text_encoder"], models.get("text_encoder_2"), family=family)
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(tmp_path))  # the tiny configs, not the real ones
    found = inspect_backbone(path)
    assert found.usable and found.family == ("sdxl" if family == "sdxl" else "sd")
    backbone = load_backbone(path)
    assert isinstance(backbone, SDXLBackbone if family == "sdxl" else SDBackbone)
    assert backbone.caps.text_encoders == (2 if family == "sdxl" else 1)
    assert backbone.sample(seeds=[1], prompts=["a cat"], steps=2, size=(64, 64))[0].size == (64, 64)


# --- encoding and the denoiser ---------------------------------------------------------------

def test_sd_encode_and_predict_shapes(tiny_sd1_dir):
    backbone = SDFamily().load(tiny_sd1_dir)
    assert backbone.caps.conditioning == "text" and backbone.caps.text_encoders == 1
    assert backbone.caps.resolution_multiple == 8 and backbone.caps.latent
    latents = backbone.encode_images(_pixels())
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32
    assert torch.equal(backbone.encode_images(_pixels(), sample=False), backbone.encode_images(_pixels(), sample=False))
    cond = backbone.encode_conditioning(["a red cat, oil painting!", ""], **SIZES, train_text_encoder=False)
    assert cond.kwargs["encoder_hidden_states"].shape == (2, 77, 32)
    assert not cond.kwargs["encoder_hidden_states"].requires_grad
    out = backbone.predict(latents, torch.tensor([10, 900]), cond)
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_sdxl_encode_and_predict_shapes(tiny_sdxl_dir):
    backbone = SDXLFamily().load(tiny_sdxl_dir)
    assert backbone.caps.text_encoders == 2 and len(backbone.text_encoders()) == 2
    cond = backbone.encode_conditioning(["a red cat", "ink sketch"], **SIZES, train_text_encoder=False)
    assert cond.kwargs["encoder_hidden_states"].shape == (2, 77, 64)
    added = cond.kwargs["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 32)
    assert added["time_ids"].tolist() == [[40, 32, 4, 0, 32, 32], [32, 32, 0, 0, 32, 32]]
    latents = backbone.encode_images(_pixels())
    out = backbone.predict(latents, torch.tensor([10, 900]), cond)
    assert out.shape == (2, 4, 16, 16)
    # The size conditioning reaches the UNet.
    other = backbone.encode_conditioning(["a red cat", "ink sketch"], original_sizes=[(64, 64)] * 2,
                                         crop_top_left=[(0, 0)] * 2, target_size=(32, 32), train_text_encoder=False)
    assert not torch.allclose(out, backbone.predict(latents, torch.tensor([10, 900]), other))


def test_to_keeps_unet_fp32_and_trainable_text_encoder_fp32(tiny_sdxl_dir):
    backbone = SDXLFamily().load(tiny_sdxl_dir)
    add_lora(backbone.text_encoders()[1], rank=2, alpha=2, dropout=0.0, targets=backbone.text_encoder_lora_targets())
    backbone.to(torch.device("cpu"), torch.float16)
    assert backbone.unet.dtype == torch.float32
    assert backbone.vae.dtype == torch.float32  # force_upcast: SDXL's VAE overflows in fp16
    assert backbone.text_encoders()[0].dtype == torch.float16
    assert backbone.text_encoders()[1].dtype == torch.float32  # has LoRA weights to train
    backbone.to(torch.device("cpu"), torch.bfloat16)
    assert backbone.vae.dtype == torch.bfloat16
    latents = backbone.encode_images(_pixels())
    assert latents.dtype == torch.float32
    images = backbone.sample(seeds=[1], prompts=["cat"], steps=2)
    assert images[0].size == (32, 32)


# --- sampling --------------------------------------------------------------------------------

def test_sample_is_deterministic_per_seed(tiny_sd1_dir):
    backbone = SDFamily().load(tiny_sd1_dir)
    first = backbone.sample(seeds=[7, 8], prompts=["a cat"], steps=3)
    again = backbone.sample(seeds=[8], prompts=["a cat"], steps=3)
    assert [im.size for im in first] == [(32, 32), (32, 32)]
    assert np.abs(_img(first[1]) - _img(again[0])).max() <= 1  # same seed, alone or in a batch
    assert np.abs(_img(first[0]) - _img(first[1])).mean() > 1  # different seeds differ
    wide = backbone.sample(seeds=[7], prompts=None, steps=2, size=(48, 32))
    assert wide[0].size == (48, 32)
    with pytest.raises(ValueError):
        backbone.sample(seeds=[1, 2], prompts=["a", "b", "c"], steps=2)


# --- LoRA ------------------------------------------------------------------------------------

def test_lora_starts_at_base_and_changes_output_once_trained(tiny_sd1_dir):
    backbone = SDFamily().load(tiny_sd1_dir)
    latents = backbone.encode_images(_pixels(), sample=False)
    t = torch.tensor([100, 600])
    with torch.no_grad():
        cond = backbone.encode_conditioning(["a cat", "a dog"], **SIZES, train_text_encoder=False)
        base = backbone.predict(latents, t, cond)
    add_lora(backbone.unet, rank=4, alpha=8, dropout=0.0, targets=backbone.lora_targets())
    add_lora(backbone.text_encoder, rank=4, alpha=8, dropout=0.0, targets=backbone.text_encoder_lora_targets())
    with torch.no_grad():
        cond0 = backbone.encode_conditioning(["a cat", "a dog"], **SIZES, train_text_encoder=True)
        assert torch.equal(cond0.kwargs["encoder_hidden_states"], cond.kwargs["encoder_hidden_states"])
        assert torch.equal(backbone.predict(latents, t, cond0), base)
    _set_lora_b(backbone.text_encoder)
    cond1 = backbone.encode_conditioning(["a cat", "a dog"], **SIZES, train_text_encoder=True)
    assert cond1.kwargs["encoder_hidden_states"].requires_grad  # gradients reach the text encoder LoRA
    frozen = backbone.encode_conditioning(["a cat", "a dog"], **SIZES, train_text_encoder=False)
    assert not frozen.kwargs["encoder_hidden_states"].requires_grad
    _set_lora_b(backbone.unet)
    with torch.no_grad():
        assert not torch.allclose(backbone.predict(latents, t, cond1), base, atol=1e-3)


def _export_roundtrip(backbone, folder: Path, pipeline_cls, tmp_path: Path, config_style: str,
                      **pipe_kwargs) -> None:
    """Adapted backbone's preview == a fresh diffusers pipeline + load_lora_weights(our file)."""
    from diffusers import DDIMScheduler
    from safetensors import safe_open
    from safetensors.torch import load_file

    unet_config = add_lora(backbone.unet, rank=4, alpha=8, dropout=0.0, targets=backbone.lora_targets())
    for i, te in enumerate(backbone.text_encoders()):
        add_lora(te, rank=2, alpha=8, dropout=0.0, targets=backbone.text_encoder_lora_targets())
        _set_lora_b(te, seed=10 + i)
    _set_lora_b(backbone.unet)
    file = tmp_path / "exports" / "style.safetensors"
    if config_style == "peft":  # what the exporter passes: the UNet adapter's peft config as a dict
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in unet_config.to_dict().items()}
    else:
        config = {"rank": 4, "alpha": 8, "text_encoder_rank": 2, "text_encoder_alpha": 8}
    backbone.save_lora_diffusers(file, lora_state_dict(backbone.unet),
                                 [lora_state_dict(te) for te in backbone.text_encoders()], config)
    assert file.is_file() and [p.name for p in file.parent.iterdir()] == ["style.safetensors"]
    with safe_open(str(file), "pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8 and meta["text_encoder.r"] == 2

    ours = _img(backbone.sample(seeds=[3], prompts=["a cat"], steps=3, guidance=5.0)[0])

    def theirs(weights) -> np.ndarray:
        pipe = pipeline_cls.from_pretrained(folder, local_files_only=True, **pipe_kwargs)
        pipe.load_lora_weights(weights)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        pipe.set_progress_bar_config(disable=True)
        out = pipe("a cat", negative_prompt=None, num_inference_steps=3, guidance_scale=5.0, width=32, height=32,
                   eta=0.0, generator=[torch.Generator().manual_seed(3)])
        return _img(out.images[0])

    assert np.abs(ours - theirs(str(file))).max() <= 2
    # Control: without the metadata diffusers assumes alpha == rank, and the picture changes.
    assert np.abs(ours - theirs(load_file(str(file)))).mean() > 1


def test_save_lora_diffusers_loads_in_plain_diffusers_sd(tiny_sd1_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    _export_roundtrip(SDFamily().load(tiny_sd1_dir), tiny_sd1_dir, StableDiffusionPipeline, tmp_path, "peft",
                      safety_checker=None)


def test_save_lora_diffusers_loads_in_plain_diffusers_sdxl(tiny_sdxl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    backbone = SDXLFamily().load(tiny_sdxl_dir)
    assert isinstance(backbone, SDXLBackbone)
    _export_roundtrip(backbone, tiny_sdxl_dir, StableDiffusionXLPipeline, tmp_path, "plain")


def test_save_lora_rejects_mismatched_rank(tiny_sd1_dir, tmp_path):
    backbone = SDFamily().load(tiny_sd1_dir)
    add_lora(backbone.unet, rank=4, alpha=4, dropout=0.0, targets=backbone.lora_targets())
    with pytest.raises(ValueError, match="rank"):
        backbone.save_lora_diffusers(tmp_path / "x.safetensors", lora_state_dict(backbone.unet), [], {"rank": 8})
    with pytest.raises(ValueError):
        backbone.save_lora_diffusers(tmp_path / "x.safetensors", {}, [{}], {"rank": 4})
    assert not any(tmp_path.iterdir())


def test_save_full_loads_back(tiny_sd1_dir, tmp_path):
    backbone = SDFamily().load(tiny_sd1_dir)
    backbone.save_full(tmp_path / "full")
    found = SDFamily().inspect(tmp_path / "full")
    assert found.usable, found.problems
    again = SDFamily().load(tmp_path / "full")
    assert again.scheduler_config["_class_name"] == "PNDMScheduler"
    for a, b in zip(backbone.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)


# --- a short fit ---------------------------------------------------------------------------------

def test_thirty_lora_steps_on_two_images_reduce_the_loss(tiny_sd1_dir):
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    backbone = SDFamily().load(tiny_sd1_dir)
    add_lora(backbone.unet, rank=8, alpha=8, dropout=0.0, targets=backbone.lora_targets())
    noise_sched = DDPMScheduler.from_config(backbone.scheduler_config)
    latents = backbone.encode_images(_pixels(), sample=False)
    cond = backbone.encode_conditioning(["red ink", "blue sky"], **SIZES, train_text_encoder=False)
    g = torch.Generator().manual_seed(1)
    probes = [(torch.randn(latents.shape, generator=g), torch.randint(0, 1000, (2,), generator=g)) for _ in range(4)]

    def loss_for(noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noisy = noise_sched.add_noise(latents, noise, t)
        return torch.nn.functional.mse_loss(backbone.predict(noisy, t, cond), noise)  # epsilon model

    def probe_loss() -> float:
        with torch.no_grad():
            return float(sum(loss_for(n, t) for n, t in probes) / len(probes))

    before = probe_loss()
    backbone.unet.train()
    params = [p for p in backbone.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(30):
        loss = loss_for(torch.randn(latents.shape, generator=g), torch.randint(0, 1000, (2,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    backbone.unet.eval()
    after = probe_loss()
    assert after < before * 0.85, (before, after)  # 1.16 -> 0.76 when written


def test_a_folder_missing_some_weights_is_refused_not_filled_at_random(tmp_path):
    """diffusers would initialise a missing tensor at random and say so only in a log line."""
    from safetensors.torch import load_file, save_file

    from tiny_sd import make_tiny_sd
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.core.errors import BackboneError

    folder = make_tiny_sd(tmp_path / "sd")
    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(file)
    del weights["conv_out.weight"]
    save_file(weights, file)
    with pytest.raises(BackboneError, match="lacks 1 of its weights"):
        load_backbone(folder)
