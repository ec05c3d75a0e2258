"""Discovery over folders shaped like A1111/Forge, ComfyUI, the HF cache, and the user's own."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tiny_single_file import fake_checkpoint_keys, write_fake_safetensors
from transferstudio.library.discovery import LibraryEntry, describe_file, discover


def _pipeline(folder: Path, cls: str, *, cross: int | None = 768, sample: int = 64,
              prediction: str = "epsilon", weights: str = "diffusion_pytorch_model.safetensors") -> Path:
    comps = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    if cls in ("DDPMPipeline", "DDIMPipeline"):
        comps = {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, **comps}))
    cfg = {"_class_name": comps["unet"][1], "sample_size": sample}
    if cross:
        cfg["cross_attention_dim"] = cross
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    (folder / "unet" / weights).write_bytes(b"x" * 10)
    if "vae" in comps:
        (folder / "vae").mkdir()
        (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 10)
        (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [1, 2, 3, 4]}))
        # A complete pipeline has its text encoders and tokenizers too (SDXL: two of each).
        for n in ("", "_2") if cls.startswith("StableDiffusionXL") else ("",):
            (folder / f"text_encoder{n}").mkdir()
            (folder / f"text_encoder{n}" / "config.json").write_text(json.dumps({"hidden_size": cross}))
            (folder / f"text_encoder{n}" / "model.safetensors").write_bytes(b"x" * 10)
            (folder / f"tokenizer{n}").mkdir()
            (folder / f"tokenizer{n}" / "vocab.json").write_text("{}")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    return folder


def _tree(tmp_path: Path) -> dict[str, Path]:
    a1111 = tmp_path / "stable-diffusion-webui"
    sd = a1111 / "models" / "Stable-diffusion"
    write_fake_safetensors(sd / "v1-5-pruned-emaonly.safetensors", fake_checkpoint_keys("sd1"))
    write_fake_safetensors(sd / "XL" / "juggernautXL.safetensors", fake_checkpoint_keys("sdxl"))
    (sd / "old.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    write_fake_safetensors(sd / "misplaced_lora.safetensors", {"lora_unet_a.lora_down.weight": ("F16", (4, 8))})
    write_fake_safetensors(a1111 / "models" / "Lora" / "style.safetensors",
                           {"lora_unet_a.lora_down.weight": ("F16", (4, 8))})
    comfy = tmp_path / "ComfyUI"
    write_fake_safetensors(comfy / "models" / "checkpoints" / "sd21-768.safetensors", fake_checkpoint_keys("sd2"))
    _pipeline(comfy / "models" / "diffusers" / "my-sd2", "StableDiffusionPipeline", cross=1024, sample=96,
              prediction="v_prediction")
    hf = tmp_path / "huggingface"
    snap = hf / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / "462165984030"
    _pipeline(snap, "StableDiffusionXLPipeline", cross=2048, sample=128)
    (hf / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc").mkdir(parents=True)
    blobs = hf / "hub" / "models--google--ddpm-cat-256" / "blobs"
    blobs.mkdir(parents=True)
    ddpm = _pipeline(hf / "hub" / "models--google--ddpm-cat-256" / "snapshots" / "82ed", "DDPMPipeline",
                     cross=None, sample=256)
    # HF cache snapshots hold symlinks into blobs/.
    blob = blobs / "deadbeef"
    blob.write_bytes(b"y" * 1000)
    (ddpm / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    os.symlink(blob, ddpm / "unet" / "diffusion_pytorch_model.safetensors")
    user = tmp_path / "my models"
    _pipeline(user / "artist-sd1", "StableDiffusionPipeline", weights="diffusion_pytorch_model.bin")
    bare = user / "pixel-ddpm"
    bare.mkdir(parents=True)
    (bare / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))
    (bare / "diffusion_pytorch_model.safetensors").write_bytes(b"z" * 10)
    (user / "notes.txt").write_text("hello")
    starter = tmp_path / "starter"
    starter.mkdir()
    (starter / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 32}))
    (starter / "diffusion_pytorch_model.safetensors").write_bytes(b"s" * 10)
    return {"a1111": a1111, "comfy": comfy, "hf": hf, "user": user, "starter": starter}


def test_discover_finds_every_source(tmp_path):
    t = _tree(tmp_path)
    entries = discover([t["user"], t["user"]], a1111=t["a1111"], comfyui=t["comfy"], hf_cache=t["hf"],
                       starter=t["starter"], cache_dir=tmp_path / "cache")
    by = {e.name: e for e in entries}
    assert set(by) == {"Starter model", "v1-5-pruned-emaonly", "juggernautXL", "old", "misplaced_lora",
                       "sd21-768", "my-sd2", "stabilityai/stable-diffusion-xl-base-1.0", "google/ddpm-cat-256",
                       "artist-sd1", "pixel-ddpm"}
    assert len(entries) == len(by)  # the user root given twice is listed once
    s = by["Starter model"]
    assert (s.kind, s.family, s.usable, s.source) == ("starter", "ddpm", True, "starter")
    v15 = by["v1-5-pruned-emaonly"]
    assert (v15.kind, v15.family, v15.native_resolution, v15.usable, v15.source) == (
        "single-file", "sd1", 512, True, "a1111")
    assert by["juggernautXL"].family == "sdxl" and by["juggernautXL"].native_resolution == 1024
    assert not by["old"].usable and "can run code" in by["old"].problems[0]
    assert not by["misplaced_lora"].usable and "LoRA" in by["misplaced_lora"].problems[0]
    assert by["sd21-768"].family == "sd2" and by["sd21-768"].source == "comfyui"
    my_sd2 = by["my-sd2"]
    assert (my_sd2.kind, my_sd2.family, my_sd2.native_resolution, my_sd2.prediction_type) == (
        "diffusers-folder", "sd2", 768, "v_prediction")
    xl = by["stabilityai/stable-diffusion-xl-base-1.0"]
    assert (xl.family, xl.native_resolution, xl.usable, xl.source) == ("sdxl", 1024, True, "hf-cache")
    cat = by["google/ddpm-cat-256"]
    assert (cat.family, cat.native_resolution, cat.usable) == ("ddpm", 256, True)
    assert cat.size_bytes >= 1000  # followed the symlink to the blob
    art = by["artist-sd1"]
    assert not art.usable and "pickle" in art.problems[0]
    assert by["pixel-ddpm"].family == "ddpm" and by["pixel-ddpm"].usable


def test_scanning_does_not_read_whole_files(tmp_path, monkeypatch):
    keys = fake_checkpoint_keys("sd1")
    keys["model.diffusion_model.huge"] = ("F16", (1024, 1024, 1024))  # 2 GB sparse
    write_fake_safetensors(tmp_path / "root" / "huge.safetensors", keys)
    entries = discover([tmp_path / "root"])
    assert entries[0].usable and entries[0].size_bytes > 2 * 1024**3


def test_content_hash_is_lazy_cached_and_tracks_changes(tmp_path):
    t = _tree(tmp_path)
    cache = tmp_path / "cache"
    entries = discover([], a1111=t["a1111"], cache_dir=cache)
    e = next(x for x in entries if x.name == "v1-5-pruned-emaonly")
    assert not (cache / "content-hashes.json").exists()  # nothing hashed during the scan
    h1 = e.content_hash()
    assert len(h1) == 64 and (cache / "content-hashes.json").is_file()
    stored = json.loads((cache / "content-hashes.json").read_text())
    assert list(stored.values()) == [h1]
    # A fresh entry for the same unchanged file reads the cache instead of the file.
    again = discover([], a1111=t["a1111"], cache_dir=cache)
    e2 = next(x for x in again if x.name == "v1-5-pruned-emaonly")
    real_open = Path.open

    def guarded(self, mode="r", *a, **k):
        assert not (self == e.path and "b" in mode), "re-hashed an unchanged file"
        return real_open(self, mode, *a, **k)

    import pytest

    mp = pytest.MonkeyPatch()
    mp.setattr(Path, "open", guarded)
    try:
        assert e2.content_hash() == h1
    finally:
        mp.undo()
    # Changing the file (size/mtime) changes the hash.
    with open(e.path, "ab") as f:
        f.write(b"\0" * 8)
    e3 = LibraryEntry(e.path, e.name, e.kind, e.family, e.label, e.native_resolution, 0, True, cache_dir=cache)
    assert e3.content_hash() != h1
    folder = next(x for x in discover([t["user"]]) if x.name == "pixel-ddpm")
    assert len(folder.content_hash(cache)) == 64


def test_describe_file_explains_folders(tmp_path):
    t = _tree(tmp_path)
    text = describe_file(t["comfy"] / "models" / "diffusers" / "my-sd2")
    assert "Stable Diffusion 2.x" in text and "768 px" in text and "v_prediction" in text
    assert "Not a model folder" in describe_file(tmp_path)


def test_vae_and_gan_folders_are_listed_whole(tmp_path):
    """A VAE folder and a GAN folder are one model each: listed as such, not their files."""
    from tests.test_gan import make_tiny_gan
    from tests.test_vae import make_tiny_vae
    from transferstudio.library.discovery import discover

    root = tmp_path / "models"
    make_tiny_vae(root / "my-vae")
    make_tiny_gan(root / "gans" / "my-gan")
    entries = {e.path.name: e for e in discover([root])}
    assert set(entries) == {"my-vae", "my-gan"}
    assert entries["my-vae"].family == "vae" and entries["my-gan"].family == "gan"
    assert all(e.usable for e in entries.values())


def test_every_starter_is_offered(tmp_path):
    from tests.test_gan import make_tiny_gan
    from transferstudio.library.discovery import discover

    gan = make_tiny_gan(tmp_path / "starter-gan")
    entries = discover(starters=[("Starter GAN", gan)])
    assert [(e.name, e.kind, e.family) for e in entries] == [("Starter GAN", "starter", "gan")]
    assert entries[0].label.startswith("Starter GAN (")
