"""Adding a model family is one module: a tiny throwaway family, written here and registered for
the test, trains, previews, checkpoints, resumes and exports through the CLI with no edit to
the engine, the exports or the library. It is not a diffusion model (its objective is
reconstruction), so it also shows a non-diffusion objective fits the Trainer as it is."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from transferstudio import cli
from transferstudio.backbones import registry
from transferstudio.backbones.base import Backbone, Capabilities, ExportSpec, Family, Inspection, RolePlan
from transferstudio.backbones.objective import Objective, Phase

MARKER = "tiny_autoencoder.json"


class TinyAutoencoder(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.dec = nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dec(F.silu(self.mid(F.silu(self.enc(x))))))


class Reconstruction(Objective):
    phases = (Phase("autoencoder"),)

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def loss(self, phase: Phase, batch: Any, ctx: Any) -> torch.Tensor:
        pixels = batch.pixels.to(ctx.device)
        return F.mse_loss(self.model(pixels), pixels)


class AutoencoderBackbone(Backbone):
    family = "tiny-autoencoder"

    def __init__(self, model: TinyAutoencoder, source: Path) -> None:
        self.model = model.float().eval().requires_grad_(False)
        self.source = Path(source)
        self.scheduler_config = {}
        self.caps = Capabilities(conditioning="none", native_resolution=16, resolution_multiple=4,
                                 supports_full_finetune=True, text_encoders=0, prediction_type="", latent=False,
                                 label="Tiny autoencoder")

    @property
    def denoiser(self) -> nn.Module:
        return self.model

    def lora_targets(self) -> list[str]:
        return ["mid"]

    def training_roles(self, method: str, *, train_text_encoder: bool = False) -> dict[str, RolePlan]:
        how = "full" if method == "full" else "lora"
        return {"autoencoder": RolePlan(self.model, how, () if how == "full" else ("mid",))}

    def objective(self, config: Any) -> Objective:
        return Reconstruction(self.model)

    def to(self, device: torch.device, dtype: torch.dtype) -> "AutoencoderBackbone":
        self.model.to(device)
        return self

    def sample(self, *, seeds: Sequence[int], prompts: Sequence[str] | None = None, steps: int = 30,
               guidance: float = 7.0, size: tuple[int, int] | None = None, negative_prompt: str = "") -> list[Any]:
        images = []
        with torch.no_grad():
            for seed in seeds:  # a preview: the reconstruction of a fixed noise picture
                noise = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(int(seed))) * 2 - 1
                out = self.model(noise)[0].clamp(-1, 1)
                images.append(Image.fromarray(((out.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)))
        return images

    def export_spec(self) -> ExportSpec:
        return ExportSpec(modelspec_architecture="tiny-autoencoder")

    def save_full(self, folder: Path) -> None:
        save_tiny(self.model, folder)


class AutoencoderFamily(Family):
    key = "tiny-autoencoder"

    def inspect(self, path: Path) -> Inspection | None:
        path = Path(path)
        if not (path / MARKER).is_file():
            return None
        ok = (path / "model.safetensors").is_file()
        return Inspection(path=path, family=self.key if ok else None, label="Tiny autoencoder", usable=ok,
                          problems=() if ok else ("it has no model.safetensors",), native_resolution=16,
                          caps=AutoencoderBackbone(TinyAutoencoder(), path).caps if ok else None)

    def load(self, path: Path, *, prediction_type: str = "") -> Backbone:
        model = TinyAutoencoder(**json.loads((Path(path) / MARKER).read_text()))
        model.load_state_dict(load_file(Path(path) / "model.safetensors"))
        return AutoencoderBackbone(model, path)

    def typical_capabilities(self) -> Capabilities:
        return AutoencoderBackbone(TinyAutoencoder(), Path(".")).caps


def save_tiny(model: TinyAutoencoder, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"width": model.mid.in_channels}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return folder


@pytest.fixture
def autoencoder_family(tmp_path):
    torch.manual_seed(0)
    backbone = save_tiny(TinyAutoencoder(), tmp_path / "tiny-ae")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    with registry.registered(AutoencoderFamily()):
        yield backbone, images


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_new_family_trains_resumes_and_exports_through_the_cli(tmp_path, autoencoder_family, capsys, method):
    backbone, images = autoencoder_family
    project = tmp_path / "project"
    assert cli.main(["inspect", str(backbone)]) == 0
    assert "Tiny autoencoder" in capsys.readouterr().out
    assert cli.main(["new", str(project), "--backbone", str(backbone), "--images", str(images),
                     "--method", method, "--steps", "4", "--checkpoint-every", "2", "--preview-every", "2",
                     "--batch-size", "6", "--lr", "0.01" if method == "full" else "0.1", "--device", "cpu",
                     "--rank", "4", "--alpha", "4"]) == 0

    # Train 2 of 4 steps, then continue: the second `train` resumes from the step-2 checkpoint.
    assert cli.main(["train", str(project), "--steps", "2"]) == 0
    (run,) = (project / "runs").iterdir()
    assert (run / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    assert cli.main(["train", str(project), "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "resuming at step 2 of 4" in out
    assert [p.name for p in (project / "runs").iterdir()] == [run.name]  # the same run continued
    assert _steps(run) == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step-000000", "step-000002", "step-000004"]
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]  # it learned to reconstruct

    assert cli.main(["runs", str(project)]) == 0
    assert f"{run.name}  {method}  4/4 steps" in capsys.readouterr().out

    # Exports: what the format registry offers for this family's capabilities, nothing else.
    target = tmp_path / "exported"
    assert cli.main(["export", str(project), "--out", str(target), "--format", "diffusers"]) == 0
    if method == "full":
        reloaded = AutoencoderFamily().load(target)  # the family's own folder, loadable again
        trained = load_file(run / "checkpoints" / "step-000004" / "weights.safetensors")
        torch.testing.assert_close(reloaded.model.mid.weight, trained["autoencoder.mid.weight"])
    else:
        lora = load_file(target.with_suffix(".safetensors"))
        assert any("lora_A" in k for k in lora)
    assert cli.main(["export", str(project), "--out", str(tmp_path / "k"), "--format", "kohya"]) == 2
    assert "does not apply" in capsys.readouterr().err


def test_a_registered_family_is_asked_first_and_gone_after(tmp_path):
    from transferstudio.backbones.registry import families, inspect_backbone

    folder = save_tiny(TinyAutoencoder(), tmp_path / "ae")
    with registry.registered(AutoencoderFamily()):
        assert families()[0].key == "tiny-autoencoder"
        assert inspect_backbone(folder).usable
    assert not inspect_backbone(folder).usable
    assert all(f.key != "tiny-autoencoder" for f in families())
