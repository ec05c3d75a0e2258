"""The starter VAE's pretraining script: reproducible from its seed, its output is an AutoencoderKL folder."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from transferstudio.devtools import pretrain_vae

TINY = ["--steps", "3", "--images", "8", "--batch", "4", "--size", "16", "--eval-images", "8",
        "--log-every", "1", "--threads", "1"]


def _weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_same_seed_same_vae_and_diffusers_loads_it(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    a, b = tmp_path / "a", tmp_path / "b"
    assert pretrain_vae.main(["--out", str(a), "--seed", "0", *TINY]) == 0
    assert pretrain_vae.main(["--out", str(b), "--seed", "0", *TINY]) == 0
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed must give bit-identical weights"
    assert json.loads((a / "config.json").read_text())["scaling_factor"] == \
        json.loads((b / "config.json").read_text())["scaling_factor"]

    vae = AutoencoderKL.from_pretrained(str(a))
    assert vae.config.sample_size == 16 and vae.config.latent_channels == 4
    assert list(vae.config.down_block_types) == ["DownEncoderBlock2D"] * 3
    with torch.no_grad():
        rec = vae(torch.zeros(1, 3, 16, 16)).sample
    assert rec.shape == (1, 3, 16, 16)

    card = (a / "MODEL_CARD.md").read_text()
    assert "python -m transferstudio.devtools.pretrain_vae --out" in card and "--seed 0" in card
    assert "PSNR" in card and "SSIM" in card and "cities" in card
    assert (a / "samples.png").is_file()
    # the save is atomic: nothing but the finished folders is left beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_rerun_replaces_the_folder(tmp_path):
    out = tmp_path / "vae"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert pretrain_vae.main(["--out", str(out), "--seed", "1", *TINY]) == 0
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]
