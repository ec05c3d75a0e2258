"""The starter's pretraining script: reproducible from its seed, and its output is a model the app loads."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from transferstudio.devtools import pretrain

TINY = ["--steps", "12", "--images", "64", "--batch", "4", "--size", "16", "--channels", "16,32",
        "--log-every", "6", "--ckpt-every", "6", "--threads", "1"]


def _weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_same_seed_same_model_and_the_app_loads_it(tmp_path):
    from transferstudio.backbones.registry import inspect_backbone, load_backbone

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert pretrain.main(["--out", str(a), "--seed", "0", *TINY]) == 0
    assert pretrain.main(["--out", str(b), "--seed", "0", *TINY]) == 0
    assert pretrain.main(["--out", str(c), "--seed", "1", *TINY]) == 0
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all((wa[k] == wb[k]).all() for k in wa), "same seed must give the same weights"
    assert any((wa[k] != wc[k]).any() for k in wa), "another seed gives another model"

    scheduler = json.loads((a / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    assert scheduler["beta_schedule"] == "squaredcos_cap_v2"
    assert scheduler["timestep_spacing"] == "trailing"
    card = (a / "MODEL_CARD.md").read_text()
    assert "python -m transferstudio.devtools.pretrain --out" in card and "--seed 0" in card
    assert (a / "samples.png").is_file() and not (a / "_checkpoint").exists()

    found = inspect_backbone(a)
    assert found.usable and found.family == "ddpm" and found.prediction_type == "v_prediction"
    image = load_backbone(a).sample(seeds=[1], steps=3)[0]
    assert image.size == (16, 16)
