"""Header-only detection: every family, every kind of non-base-model file, every broken file."""
from __future__ import annotations

import json
import struct
import zipfile

import pytest

from tiny_single_file import U, fake_checkpoint_keys, write_fake_safetensors
from transferstudio.core.errors import BackboneError
from transferstudio.backbones.sdfiles.detect import detect, read_safetensors_header
from transferstudio.library.discovery import describe_file


@pytest.mark.parametrize("family,resolution,config_key", [
    ("sd1", 512, "sd1"), ("sd2", 512, "sd2"), ("sdxl", 1024, "sdxl"), ("sdxl-refiner", 1024, "sdxl-refiner"),
])
def test_each_family_is_recognised_from_the_header(tmp_path, family, resolution, config_key):
    path = write_fake_safetensors(tmp_path / "m.safetensors", fake_checkpoint_keys(family))
    d = detect(path)
    assert (d.kind, d.family, d.native_resolution, d.config_key) == ("checkpoint", family, resolution, config_key)
    assert d.prediction_type == "epsilon"
    assert not d.inpainting
    if family == "sdxl-refiner":
        assert not d.usable and "refiner" in d.problems[0]
    else:
        assert d.usable, d.problems
    assert d.dtype == "F16"


def test_sd2_tells_how_to_say_v_prediction_and_honours_the_override(tmp_path):
    path = write_fake_safetensors(tmp_path / "sd21.safetensors", fake_checkpoint_keys("sd2"))
    d = detect(path)
    assert "--v-prediction" in d.advice
    v = detect(path, prediction_type="v_prediction")
    assert (v.prediction_type, v.native_resolution, v.config_key) == ("v_prediction", 768, "sd2-v")
    assert v.usable and "--v-prediction" not in v.advice


def test_v_pred_marker_key_and_modelspec_metadata(tmp_path):
    a = write_fake_safetensors(tmp_path / "a.safetensors", fake_checkpoint_keys("sdxl", v_pred_key=True))
    assert detect(a).prediction_type == "v_prediction"
    b = write_fake_safetensors(tmp_path / "b.safetensors", fake_checkpoint_keys("sd2"),
                               {"modelspec.prediction_type": "v", "modelspec.resolution": "768x768"})
    d = detect(b)
    assert (d.prediction_type, d.native_resolution, d.config_key) == ("v_prediction", 768, "sd2-v")


def test_inpainting_is_flagged_from_first_conv(tmp_path):
    path = write_fake_safetensors(tmp_path / "inp.safetensors", fake_checkpoint_keys("sd1", in_channels=9))
    d = detect(path)
    assert d.inpainting and d.family == "sd1" and not d.usable
    assert "inpainting" in d.problems[0]


def test_unet_only_file_names_the_missing_parts(tmp_path):
    path = write_fake_safetensors(tmp_path / "u.safetensors", fake_checkpoint_keys("sdxl", unet_only=True))
    d = detect(path)
    assert d.family == "sdxl" and not d.usable
    assert "VAE" in d.problems[0] and "text encoder" in d.problems[0]


def test_wrong_family_is_one_sentence(tmp_path):
    path = write_fake_safetensors(tmp_path / "xl.safetensors", fake_checkpoint_keys("sdxl"))
    d = detect(path, expected_family="sd1")
    assert not d.usable
    assert d.problems[0] == ("This is a Stable Diffusion XL model, but Stable Diffusion 1.x is expected here.")
    with pytest.raises(BackboneError) as e:
        d.raise_if_unusable()
    assert e.value.advice


@pytest.mark.parametrize("keys,fragment", [
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": ("F16", (4, 768)),
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": ("F16", (320, 4)),
      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": ("F16", ())},
     "kohya format) for Stable Diffusion 1.x"),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": ("F16", (4, 768)),
      "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": ("F16", (4, 640))},
     "for Stable Diffusion XL"),
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": ("F16", (4, 1024)),
      "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": ("F16", (640, 4))},
     "diffusers/PEFT format) for Stable Diffusion 2.x"),
])
def test_lora_files_are_explained_not_loaded(tmp_path, keys, fragment):
    d = detect(write_fake_safetensors(tmp_path / "l.safetensors", keys))
    assert d.kind == "lora" and not d.usable
    assert fragment in d.label
    assert d.problems[0].startswith("This is a LoRA, not a base model:")


@pytest.mark.parametrize("keys", [
    {"encoder.conv_in.weight": ("F16", (128, 3, 3, 3)), "decoder.conv_out.weight": ("F16", (3, 128, 3, 3)),
     "encoder.mid.attn_1.q.weight": ("F16", (512, 512, 1, 1))},
    {"encoder.conv_in.weight": ("F16", (128, 3, 3, 3)), "decoder.conv_out.weight": ("F16", (3, 128, 3, 3)),
     "encoder.down_blocks.0.resnets.0.conv1.weight": ("F16", (128, 128, 3, 3))},
    {"first_stage_model.encoder.conv_in.weight": ("F16", (128, 3, 3, 3))},
])
def test_vae_files_are_explained(tmp_path, keys):
    d = detect(write_fake_safetensors(tmp_path / "vae.safetensors", keys))
    assert d.kind == "vae" and not d.usable
    assert d.problems[0].startswith("This is a VAE, not a base model:")


@pytest.mark.parametrize("keys,label", [
    ({U + "joint_blocks.0.context_block.adaLN_modulation.1.bias": ("F16", (8,))}, "Stable Diffusion 3"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": ("F16", (8,))}, "FLUX"),
    ({"control_model.time_embed.0.weight": ("F16", (8, 8))}, "ControlNet"),
    ({"emb_params": ("F32", (2, 768))}, "Textual-inversion embedding"),
    ({"conv_in.weight": ("F16", (8, 4, 3, 3)), "down_blocks.0.resnets.0.conv1.weight": ("F16", (8, 8, 3, 3))},
     "Diffusers UNet weights"),
    ({"some.random.tensor": ("F32", (3,))}, "Unknown model"),
])
def test_other_files_are_unknown_with_a_reason(tmp_path, keys, label):
    d = detect(write_fake_safetensors(tmp_path / "x.safetensors", keys))
    assert d.kind == "unknown" and d.label == label and d.problems and not d.usable


def _broken(tmp_path, name: str, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_broken_files_each_give_one_clear_sentence(tmp_path):
    good = write_fake_safetensors(tmp_path / "good.safetensors", fake_checkpoint_keys("sd1"))
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    cases = {
        "zero": (_broken(tmp_path, "zero.safetensors", b""), "is empty (0 bytes)"),
        "tiny": (_broken(tmp_path, "tiny.safetensors", b"abc"), "too short"),
        "lying": (_broken(tmp_path, "lie.safetensors", struct.pack("<Q", 10**7) + raw[8:100]),
                  "header claims 10,000,000 bytes"),
        "truncated": (_broken(tmp_path, "trunc.safetensors", raw[: 8 + n + 1000]), "is truncated"),
        "extra": (_broken(tmp_path, "extra.safetensors", raw + b"junk"), "unexpected bytes after"),
        "json": (_broken(tmp_path, "json.safetensors", struct.pack("<Q", 4) + b"\xff\xfe{}"), "not readable JSON"),
        "png": (_broken(tmp_path, "pic.safetensors", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "not a valid safetensors"),
        "gguf": (_broken(tmp_path, "q.gguf", b"GGUF\x03\0\0\0" + b"\0" * 64), "GGUF"),
    }
    for label, (path, fragment) in cases.items():
        with pytest.raises(BackboneError) as e:
            read_safetensors_header(path)
        assert fragment in e.value.message, (label, e.value.message)
        assert e.value.message.count(". ") == 0 and e.value.advice, label  # one sentence + advice
        d = detect(path)
        assert d.kind == "unknown" and not d.usable and d.problems == (e.value.message,)


def test_header_size_mismatch_inside_header(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    p = _broken(tmp_path, "bad.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(BackboneError, match="wrong size"):
        read_safetensors_header(p)


def test_pickles_are_refused_with_an_explanation(tmp_path):
    zipped = tmp_path / "model.ckpt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    legacy = _broken(tmp_path, "legacy.pt", b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.")
    for p in (zipped, legacy):
        with pytest.raises(BackboneError) as e:
            read_safetensors_header(p)
        assert "can run code" in e.value.message and "convert-pickle" in e.value.advice


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        read_safetensors_header(tmp_path / "nope.safetensors")
    with pytest.raises(BackboneError, match="is a folder"):
        read_safetensors_header(tmp_path)


def test_detection_reads_only_the_header(tmp_path, monkeypatch):
    # A 2 GB sparse "checkpoint": detection must not read its data area.
    keys = fake_checkpoint_keys("sdxl")
    keys["model.diffusion_model.big"] = ("F16", (1024, 1024, 1024))
    path = write_fake_safetensors(tmp_path / "big.safetensors", keys)
    import builtins

    reads = []
    real_open = builtins.open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            assert n is not None and 0 <= n < 10_000_000, f"read({n}) would pull tensor data"
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr("pathlib.Path.open", lambda self, mode="r", *a, **k: Spy(real_open(self, mode, *a, **k)))
    d = detect(path)
    assert d.usable and sum(reads) < 100_000


def test_describe_file_is_human_text(tmp_path):
    path = write_fake_safetensors(tmp_path / "dreamshaper.safetensors", fake_checkpoint_keys("sd1"))
    text = describe_file(path)
    assert "Stable Diffusion 1.x" in text and "512 px" in text and "Usable:      yes" in text
    lora = write_fake_safetensors(tmp_path / "style.safetensors",
                                  {"lora_unet_x.lora_down.weight": ("F16", (4, 8))})
    text = describe_file(lora)
    assert "Usable:      no" in text and "This is a LoRA, not a base model" in text


def test_safetensors_with_a_pickle_suffix_is_read_as_safetensors(tmp_path):
    path = write_fake_safetensors(tmp_path / "renamed.bin", fake_checkpoint_keys("sd1"))
    assert detect(path).usable
