"""Pickle checkpoints: never opened except by the tensors-only converter, which refuses code."""
from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from tiny_single_file import fake_checkpoint_keys, write_fake_safetensors  # noqa: F401
from transferstudio.core.errors import BackboneError
from transferstudio.backbones.sdfiles.pickles import convert_pickle_to_safetensors
from transferstudio.backbones.sdfiles.single_file import load_single_file


class _Evil:
    """Unpickling this would create a file (a stand-in for any command)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_is_refused_and_its_code_never_runs(tmp_path):
    target = tmp_path / "pwned"
    src = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Evil(str(target))}, src)
    assert zipfile.is_zipfile(src)
    with pytest.raises(BackboneError) as e:
        convert_pickle_to_safetensors(src, tmp_path / "out.safetensors")
    assert "refused" in e.value.message and "code" in e.value.message
    assert not target.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_raw_protocol_pickle_is_refused_too(tmp_path):
    target = tmp_path / "pwned2"
    src = tmp_path / "evil.pt"
    src.write_bytes(pickle.dumps(_Evil(str(target)), protocol=2))
    with pytest.raises(BackboneError):
        convert_pickle_to_safetensors(src, tmp_path / "out.safetensors")
    assert not target.exists()


def test_plain_checkpoint_converts_tensors_only(tmp_path):
    w = torch.randn(3, 4)
    shared = torch.randn(6)
    src = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a.weight": w, "a.bias": shared, "b.bias": shared, "view": shared[:2],
                               "nested": {"x": torch.arange(3)}},
                "global_step": 1234, "epoch": 3}, src)
    out = convert_pickle_to_safetensors(src, tmp_path / "model.safetensors")
    got = load_file(out)
    assert set(got) == {"a.weight", "a.bias", "b.bias", "view", "nested.x"}
    assert torch.equal(got["a.weight"], w) and torch.equal(got["b.bias"], shared)
    assert torch.equal(got["view"], shared[:2]) and torch.equal(got["nested.x"], torch.arange(3))


def test_loader_explains_pickles_instead_of_opening_them(tmp_path, monkeypatch):
    src = tmp_path / "v1-5.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, src)

    def no_load(*a, **k):
        raise AssertionError("torch.load must not be called by the loader")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(BackboneError) as e:
        load_single_file(src)
    assert "can run code" in e.value.message
    assert "convert-pickle" in e.value.advice


def test_refusal_gives_our_advice_not_torchs(tmp_path):
    """torch's message says to re-run with weights_only=False: the opposite of safe advice."""
    src = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Evil(str(tmp_path / "pwned"))}, src)
    with pytest.raises(BackboneError) as e:
        convert_pickle_to_safetensors(src, tmp_path / "out.safetensors")
    text = str(e.value)
    assert "weights_only" not in text and "will likely succeed" not in text and "\n" not in text
    assert "mkdir" in e.value.message  # what it asked to run, so the user knows why
    assert ".safetensors" in e.value.advice
