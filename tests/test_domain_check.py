"""The domain check (issue 15, "before training"): is the base model a good starting point for
the user's pictures? Calibrated on data we control: the starters were trained on procedural
landscapes; the sample cities are related; random noise is far."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferstudio import cli
from transferstudio.core.paths import resource
from transferstudio.insight.domain import SAVED_FILE, DomainCheck, check_domain, read_saved, save
from transferstudio.project.project import create_project

HEADLINE = re.compile(r"^(close|related|far) \d+\.\d\d$")


# --- picture sets we control ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def picture_sets(tmp_path_factory) -> dict[str, Path]:
    """8 held-out procedural landscapes (the starters' domain), the 24 sample cities the app ships,
    8 pictures of random noise and 8 flat colours, all 128 px."""
    from transferstudio.starter import procedural

    base = tmp_path_factory.mktemp("domain-sets")
    rng = np.random.default_rng(1)
    makers = {
        "landscapes": lambda i: procedural.landscape(600_000 + i, 128),  # seeds never trained on
        "noise": lambda i: Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)),
        "flat": lambda i: Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(0, 256, 3))),
    }
    sets = {}
    for name, make in makers.items():
        folder = base / name
        folder.mkdir()
        for i in range(8):
            make(i).save(folder / f"{name}_{i}.png")
        sets[name] = folder
    sets["cities"] = resource("sample_images")
    return sets


def _verdicts(tmp_path: Path, model: str, sets: dict[str, Path], names: list[str]) -> dict[str, DomainCheck]:
    from transferstudio.backbones.registry import load_backbone

    backbone = load_backbone(resource(model))  # loaded once for every set
    found = {}
    for name in names:
        project = create_project(tmp_path / f"{model}-{name}", backbone=resource(model), images=sets[name])
        found[name] = check_domain(project, backbone=backbone)
    return found


def test_the_starter_says_close_related_far_for_landscapes_cities_noise(tmp_path, picture_sets):
    found = _verdicts(tmp_path, "starter", picture_sets, ["landscapes", "cities", "noise"])
    assert [found[n].verdict for n in ("landscapes", "cities", "noise")] == ["close", "related", "far"], found
    assert found["landscapes"].score < found["cities"].score < found["noise"].score
    assert all(c.pictures == 8 for c in found.values())


def test_the_starter_vae_says_close_related_far_too(tmp_path, picture_sets):
    found = _verdicts(tmp_path, "starter_vae", picture_sets, ["landscapes", "cities", "noise", "flat"])
    assert [found[n].verdict for n in ("landscapes", "cities", "noise", "flat")] == \
        ["close", "related", "far", "far"], found
    assert "pictures it made itself" in found["cities"].reference  # its prior decodes: its own pictures


def test_the_starter_gan_says_close_related_far_through_its_discriminator(tmp_path, picture_sets):
    found = _verdicts(tmp_path, "starter_gan", picture_sets, ["landscapes", "cities", "noise", "flat"])
    assert [found[n].verdict for n in ("landscapes", "cities", "noise", "flat")] == \
        ["close", "related", "far", "far"], found
    assert "discriminator" in found["cities"].measure


def test_the_same_inputs_give_the_same_number(tmp_path, tiny_ddpm, image_folder):
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder)
    first, second = check_domain(project), check_domain(project)
    assert first == second
    assert first.verdict in ("close", "related", "far") and first.score > 0
    assert first.pictures == 4 and first.measure and first.advice


def test_the_limits_come_from_the_family_spec(tmp_path, tiny_ddpm, image_folder):
    """The check reads the verdict off the model's capabilities, never off its family's name."""
    from transferstudio.backbones.base import DomainScale
    from transferstudio.backbones.registry import load_backbone

    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder)
    backbone = load_backbone(tiny_ddpm)
    score = check_domain(project, backbone=backbone).score
    for limits, verdict in (((score * 2, score * 4), "close"), ((score / 2, score * 2), "related"),
                            ((score / 4, score / 2), "far")):
        backbone.caps = replace(backbone.caps, domain=DomainScale(measure="m", close=limits[0], related=limits[1]))
        found = check_domain(project, backbone=backbone)
        assert found.verdict == verdict and found.thresholds == limits


def test_a_vae_without_a_prior_is_measured_on_an_absolute_scale(tmp_path, image_folder):
    from transferstudio.backbones.registry import load_backbone
    from test_vae import make_tiny_vae

    vae = make_tiny_vae(tmp_path / "vae")  # no prior-samples flag: it makes no pictures of its own
    backbone = load_backbone(vae)
    assert backbone.caps.domain.reference > 0
    project = create_project(tmp_path / "proj", backbone=vae, images=image_folder)
    found = check_domain(project, backbone=backbone)
    assert found.own_error == backbone.caps.domain.reference
    assert found.score == pytest.approx(found.user_error / found.own_error)
    assert "made itself" not in found.reference


def test_the_saved_check_is_reused_until_the_model_or_pictures_change(tmp_path, tiny_ddpm, image_folder):
    import shutil

    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder)
    assert read_saved(project) is None
    check = check_domain(project)
    save(project, check)
    assert json.loads((project.folder / SAVED_FILE).read_text())["check"]["verdict"] == check.verdict
    assert read_saved(project) == check

    picture = sorted(image_folder.glob("*.png"))[0]
    stamp = picture.stat()
    os.utime(picture, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10_000_000_000))  # re-saved: a new mtime
    assert read_saved(project) is None
    save(project, check)
    Image.new("RGB", (24, 24), (200, 30, 30)).save(image_folder / "new.png")  # one picture more
    assert read_saved(project) is None
    save(project, check)
    (image_folder / "new.png").unlink()  # one fewer
    assert read_saved(project) is None

    save(project, check)
    other = shutil.copytree(tiny_ddpm, tmp_path / "other-model")
    project.backbone = other  # another model
    assert read_saved(project) is None

    (project.folder / SAVED_FILE).write_text("{not json")  # a damaged file: no saved check, no error
    assert read_saved(project) is None


def test_a_check_round_trips_through_its_dict():
    check = DomainCheck(verdict="related", score=1.4, user_error=0.07, own_error=0.05, measure="m", advice="a",
                        pictures=8, reference="8 pictures it made itself", thresholds=(1.3, 2.5))
    assert DomainCheck.from_dict(json.loads(json.dumps(check.to_dict()))) == check
    assert check.headline() == "related 1.40"
    with pytest.raises(ValueError):
        DomainCheck.from_dict({**check.to_dict(), "verdict": "maybe"})


def test_cli_check_prints_the_word_and_number_and_saves_it(tmp_path, tiny_ddpm, image_folder, capsys):
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder)
    assert cli.main(["check", str(project.folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert HEADLINE.match(out[0]), out
    assert any(line.startswith("Advice: ") for line in out)
    saved = read_saved(project)
    assert saved is not None and out[0] == saved.headline()

    started = time.perf_counter()
    assert cli.main(["check", str(project.folder)]) == 0  # matches: shown again without measuring
    assert time.perf_counter() - started < 2
    assert capsys.readouterr().out.splitlines()[0] == out[0]


def test_cli_check_explains_a_folder_without_pictures(tmp_path, tiny_ddpm, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=empty)
    assert cli.main(["check", str(project.folder)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after what it was doing
    assert last.startswith("error: No images found")
    assert not (project.folder / SAVED_FILE).exists()
