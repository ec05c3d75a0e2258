"""Multi-resolution noise and input perturbation (issue 18): each does what its tooltip says, and
both reach the project, the run and the kohya metadata."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from transferstudio import cli
from transferstudio.backbones.base import Conditioning
from transferstudio.backbones.diffusion import diffusion_loss, multires_noise, noise_scheduler


def test_multires_noise_keeps_unit_variance_and_moves_whole_regions():
    generator = torch.Generator().manual_seed(0)
    plain = torch.randn((64, 4, 32, 32), generator=generator)
    pyramid = multires_noise(plain.clone(), 8, 0.5, torch.Generator().manual_seed(1))
    assert pyramid.shape == plain.shape
    assert float(pyramid.flatten(1).std(dim=1).mean()) == pytest.approx(1.0, abs=1e-3)
    # an 8×8 average of plain noise nearly cancels; pyramid noise keeps coarse structure there
    coarse = lambda x: float(F.avg_pool2d(x, 8).var())  # noqa: E731
    assert coarse(pyramid) > 2 * coarse(plain)  # 3× at discount 0.5
    # off draws nothing: the noise stream of runs without it is unchanged
    assert torch.equal(multires_noise(plain, 0, 0.5, generator), plain / plain.flatten(1).std(dim=1).view(-1, 1, 1, 1))


def test_input_perturbation_noises_the_input_but_not_the_target(tiny_ddpm):
    from transferstudio.backbones.registry import load_backbone

    scheduler = noise_scheduler(load_backbone(tiny_ddpm).scheduler_config)
    seen: list[torch.Tensor] = []

    class Stub:  # predicts zeros and records what it was shown
        def predict(self, noisy, timesteps, cond):
            seen.append(noisy)
            return torch.zeros_like(noisy)

    clean = torch.rand((4, 3, 8, 8)) * 2 - 1

    def loss(gamma: float) -> float:
        return float(diffusion_loss(Stub(), scheduler, clean, Conditioning(), generator=torch.Generator().manual_seed(3),
                                    input_perturbation=gamma))

    plain, perturbed = loss(0.0), loss(0.2)
    # the same noise and timesteps are drawn first, so the (zero) prediction is scored against the same target
    assert perturbed == plain
    assert not torch.equal(seen[0], seen[1])  # but the model saw more noise


def test_the_settings_reach_the_project_and_the_kohya_metadata(tmp_path, tiny_ddpm, image_folder):
    project = tmp_path / "p"
    assert cli.main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder), "--steps", "2",
                     "--multires-noise-iterations", "6", "--multires-noise-discount", "0.4",
                     "--input-perturbation", "0.1", "--rank", "2", "--batch-size", "2"]) == 0
    config = json.loads((project / "project.json").read_text())["config"]
    assert (config["multires_noise_iterations"], config["multires_noise_discount"],
            config["input_perturbation"]) == (6, 0.4, 0.1)
    assert cli.main(["train", str(project)]) == 0
    from types import SimpleNamespace

    from transferstudio.export.metadata import kohya_metadata
    from transferstudio.project.config import TrainConfig

    meta = kohya_metadata(spec=SimpleNamespace(kohya_base_version="sd_v1", is_v2=False, v_parameterization=False), output_name="x", rank=2, alpha=2,
                          resolution=32, dataset={}, config=TrainConfig.from_dict(config), base_name="b",
                          base_sha256=None, step=2)
    assert (meta["ss_multires_noise_iterations"], meta["ss_multires_noise_discount"],
            meta["ss_ip_noise_gamma"]) == ("6", "0.4", "0.1")
