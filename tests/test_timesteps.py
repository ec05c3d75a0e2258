"""Timestep sampling and loss weighting (issue 18): uniform as before, logit-normal in the middle,
a range of the schedule, debiased estimation — each does what its tooltip says."""
from __future__ import annotations

import json

import pytest
import torch

from transferstudio import cli
from transferstudio.backbones.diffusion import sample_timesteps


def draw(**kw) -> torch.Tensor:
    return sample_timesteps(20000, 1000, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), **kw)


def test_uniform_over_the_whole_schedule_draws_as_before():
    """Runs made before these settings continue with the same timesteps."""
    before = torch.randint(0, 1000, (20000,), generator=torch.Generator().manual_seed(0)).long()
    assert torch.equal(draw(), before)


def test_logit_normal_trains_mostly_the_middle_levels():
    uniform, middle = draw(), draw(sampling="logit-normal")
    share = lambda t: float(((t > 250) & (t < 750)).float().mean())  # noqa: E731
    assert share(uniform) == pytest.approx(0.5, abs=0.02)
    assert share(middle) > 0.65 and 0 <= int(middle.min()) and int(middle.max()) <= 999


@pytest.mark.parametrize("sampling", ["uniform", "logit-normal"])
def test_a_range_keeps_every_timestep_inside_it(sampling):
    t = draw(sampling=sampling, low=0.2, high=0.6)
    assert int(t.min()) >= 200 and int(t.max()) <= 600 and int(t.max()) > 550


def test_debiased_estimation_weighs_noisy_levels_up(tiny_ddpm):
    from transferstudio.backbones.base import Conditioning
    from transferstudio.backbones.diffusion import diffusion_loss, noise_scheduler
    from transferstudio.backbones.registry import load_backbone

    scheduler = noise_scheduler(load_backbone(tiny_ddpm).scheduler_config)
    prediction = torch.zeros(4, 3, 8, 8)

    class Stub:
        def predict(self, noisy, timesteps, cond):
            return prediction

    clean = torch.zeros(4, 3, 8, 8)

    def loss(debiased: bool, low: float, high: float) -> float:
        return float(diffusion_loss(Stub(), scheduler, clean, Conditioning(), generator=torch.Generator().manual_seed(1),
                                    timestep_low=low, timestep_high=high, debiased=debiased))

    # epsilon target = the noise, the same at every level: only the weight differs
    assert loss(True, 0.0, 0.01) < 0.2 * loss(False, 0.0, 0.01)  # nearly clean: high SNR, weight ≪ 1
    assert loss(True, 0.99, 1.0) > 5 * loss(False, 0.99, 1.0)  # very noisy: low SNR, weight ≫ 1


def test_the_settings_reach_the_project_and_a_range_must_leave_something(tmp_path, tiny_ddpm, image_folder, capsys):
    project = tmp_path / "p"
    assert cli.main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder), "--steps", "2",
                     "--timestep-sampling", "logit-normal", "--timestep-low", "0.1", "--timestep-high", "0.9",
                     "--debiased-estimation"]) == 0
    config = json.loads((project / "project.json").read_text())["config"]
    assert (config["timestep_sampling"], config["timestep_low"], config["timestep_high"],
            config["debiased_estimation"]) == ("logit-normal", 0.1, 0.9, True)
    assert cli.main(["train", str(project)]) == 0
    assert cli.main(["new", str(tmp_path / "q"), "--backbone", str(tiny_ddpm), "--images", str(image_folder),
                     "--timestep-low", "0.8", "--timestep-high", "0.2"]) == 2
    assert "timestep_low" in capsys.readouterr().err
