"""Inspecting a model reads configs and safetensors headers only: the window's Model panel says
"Ready to train" without waiting for torch (about 1.5 s to import) on the inspection thread."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_single_file import fake_checkpoint_keys, write_fake_safetensors

from transferstudio.core.paths import resource

HEAVY = ("torch", "diffusers", "transformers", "peft")

# Runs in a fresh interpreter: the test process has torch imported long ago.
_INSPECT = """
import json, sys
from pathlib import Path
from transferstudio.backbones.registry import inspect_backbone
out = {}
for path in sys.argv[1:]:
    found = inspect_backbone(Path(path))
    out[path] = {"family": found.family, "usable": found.usable, "caps": found.caps is not None,
                 "label": found.label}
out["heavy"] = [m for m in %r if m in sys.modules]
print(json.dumps(out))
""" % (HEAVY,)


def _inspect_fresh(*paths: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _INSPECT, *map(str, paths)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_inspecting_each_kind_of_model_imports_no_torch(tmp_path, tiny_ddpm, tiny_sd1_dir, tiny_sdxl_dir):
    single = write_fake_safetensors(tmp_path / "sd15.safetensors", fake_checkpoint_keys("sd1"))
    # A FLUX transformer file (its header alone): inspected through the flow families' file search.
    flux = write_fake_safetensors(tmp_path / "flux1-dev.safetensors", {
        "img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
        "single_blocks.0.linear1.weight": ("BF16", (21504, 3072)), "guidance_in.in_layer.weight": ("BF16", (3072, 256)),
        "final_layer.linear.weight": ("BF16", (64, 3072))})
    expected = {tiny_ddpm: "ddpm", resource("starter"): "ddpm", resource("starter_vae"): "vae",
                resource("starter_gan"): "gan", tiny_sd1_dir: "sd", tiny_sdxl_dir: "sdxl", single: "sd"}
    found = _inspect_fresh(*expected, flux)
    assert found.pop("heavy") == []
    for path, family in expected.items():
        info = found[str(path)]
        assert info["family"] == family and info["usable"], (path, info)
        assert info["caps"], f"{path}: no capabilities from its configs"
    # The FLUX family read it (its variant from the header) and found no VAE or text encoders beside it.
    assert found[str(flux)]["label"].startswith("FLUX.1 dev") and not found[str(flux)]["usable"]
