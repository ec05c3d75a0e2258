"""`transferstudio pretrain` for the VAE and DDPM families: a tiny model pretrained on a folder
becomes a backbone that a project adapts (the GAN family's pretrain is in test_gan.py)."""
from __future__ import annotations

import json

import pytest

from tests.test_gan import make_pictures
from transferstudio import cli


@pytest.mark.parametrize("family, label", [("vae", "Variational autoencoder"), ("ddpm", "Unconditional diffusion")])
def test_pretrain_then_adapt(tmp_path, capsys, family, label):
    big = make_pictures(tmp_path / "big", n=12, size=32)
    out = tmp_path / f"my-{family}"
    assert cli.main(["pretrain", "--family", family, "--images", str(big), "--out", str(out), "--steps", "3",
                     "--size", "tiny", "--batch-size", "4", "--seed", "1"]) == 0
    assert not (tmp_path / f".my-{family}.pretraining").exists()
    about = json.loads((out / "PRETRAINING.json").read_text())
    assert about["family"] == family and about["steps"] == 3 and about["settings"]["method"] == "full"
    capsys.readouterr()
    assert cli.main(["inspect", str(out)]) == 0
    assert label in capsys.readouterr().out
    small = make_pictures(tmp_path / "small", n=4, size=32)
    assert cli.main(["new", str(tmp_path / "project"), "--backbone", str(out), "--images", str(small),
                     "--steps", "2", "--batch-size", "2"]) == 0
    assert cli.main(["train", str(tmp_path / "project")]) == 0


def test_pretrain_refuses_an_existing_output(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert cli.main(["pretrain", "--images", str(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
