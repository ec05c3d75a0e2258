"""Importing a kohya_ss LoRA preset: the shared settings taken, the rest named."""
from __future__ import annotations

import json

import pytest

from transferstudio.core.errors import ProjectError
from transferstudio.project.config import TrainConfig
from transferstudio.project.kohya_preset import read_kohya_preset

# The shape kohya_ss's GUI saves (numbers partly as text, as it writes them)
KOHYA = {
    "LoRA_type": "LyCORIS/LoKr", "learning_rate": 0.0001, "unet_lr": "0.0004", "text_encoder_lr": 0.00005,
    "train_batch_size": 2, "max_train_steps": "1600", "network_dim": 16, "network_alpha": 8, "conv_dim": 8,
    "conv_alpha": 4, "optimizer": "AdamW8bit", "lr_scheduler": "cosine_with_restarts", "lr_warmup": 10,
    "mixed_precision": "bf16", "gradient_checkpointing": True, "max_resolution": "768,768", "seed": "1234",
    "noise_offset": 0.05, "min_snr_gamma": 5, "caption_dropout_rate": 0.1, "shuffle_caption": True,
    "keep_tokens": "1", "flip_aug": False, "multires_noise_iterations": 6, "multires_noise_discount": 0.3,
    "cache_latents": True, "output_dir": "/somewhere", "color_aug": True, "clip_skip": "2",
    "scale_weight_norms": 1.0,
}


def test_the_shared_settings_are_taken_with_their_meaning(tmp_path):
    file = tmp_path / "style.json"
    file.write_text(json.dumps(KOHYA))
    settings, notes = read_kohya_preset(file)
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), **settings})
    assert config.adapter == "lokr" and config.layers == "all+conv"
    assert config.learning_rate == pytest.approx(4e-4), "the UNet rate trains the LoRA"
    assert config.train_text_encoder is True
    assert (config.batch_size, config.steps, config.rank, config.alpha) == (2, 1600, 16, 8)
    assert (config.conv_rank, config.conv_alpha) == (8, 4)
    assert config.optimizer == "adamw8bit" and config.schedule == "cosine" and config.precision == "bf16"
    assert config.warmup_steps == 160, "kohya's warm-up is a percentage of the steps"
    assert config.resolution == 768 and config.seed == 1234 and config.keep_tags == 1
    assert config.flip is False and config.shuffle_tags is True and config.caption_dropout == pytest.approx(0.1)
    assert config.multires_noise_iterations == 6 and config.min_snr_gamma == 5
    assert not config.problems()
    named = " ".join(notes)
    assert "color_aug" in named and "clip_skip" in named and "scale_weight_norms" in named
    assert "output_dir" not in named and "cache_latents" not in named, "file and cache keys need no note"


def test_values_that_do_not_fit_are_named_and_the_default_kept(tmp_path):
    file = tmp_path / "odd.json"
    file.write_text(json.dumps({"LoRA_type": "LyCORIS/iA3", "network_dim": 0, "optimizer": "Lion",
                                "train_batch_size": "many"}))
    settings, notes = read_kohya_preset(file)
    assert "optimizer" not in settings and "batch_size" not in settings and "rank" not in settings
    named = " ".join(notes)
    assert "Lion" in named and "many" in named and "iA3" in named and "rank" in named


@pytest.mark.parametrize("content", ["{ not json", json.dumps({"format": "something else"}), json.dumps([1, 2])])
def test_a_file_that_is_not_a_kohya_preset_is_refused(tmp_path, content):
    file = tmp_path / "x.json"
    file.write_text(content)
    with pytest.raises(ProjectError):
        read_kohya_preset(file)


def test_importing_into_the_settings_form(qtbot, tmp_path):
    from transferstudio.ui.settings_form import SettingsForm

    form = SettingsForm()
    qtbot.addWidget(form)
    file = tmp_path / "style.json"
    file.write_text(json.dumps(KOHYA))
    with qtbot.waitSignal(form.changed, timeout=5000):
        notes = form.import_kohya_preset(file)
    assert form.config().rank == 16 and form.config().adapter == "lokr" and form.config().warmup_steps == 160
    assert notes and "not taken" in form.note_line.text() and "color_aug" in form.note_line.toolTip()
    (tmp_path / "bad.json").write_text("[]")
    form.import_kohya_preset(tmp_path / "bad.json")
    assert form.config().rank == 16, "a bad file changes nothing"
    assert "not a kohya_ss" in form.note_line.text()
    form.shutdown()
