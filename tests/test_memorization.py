"""The memorization check: near-copies of training pictures (shifted, re-compressed, brighter or
darker, noisy, mirrored) are flagged; new pictures of the same procedural family, and the
adapted models' samples, are not."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from transferstudio.insight.memorization import check_memorization, memorization_grid
from transferstudio.starter.procedural import city, landscape

SIZE = 32  # the starter models' size: samples come at it


def small(picture: Image.Image) -> Image.Image:
    return picture.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def shifted(picture: Image.Image, dx: int, dy: int) -> Image.Image:
    return Image.fromarray(np.roll(np.asarray(picture), (dy, dx), axis=(0, 1)))


def jpeg(picture: Image.Image, quality: int = 50) -> Image.Image:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def exposed(picture: Image.Image, factor: float) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(picture, np.float32) * factor, 0, 255).astype(np.uint8))


def noisy(picture: Image.Image, sigma: float = 0.02, seed: int = 0) -> Image.Image:
    a = np.asarray(picture, np.float32) / 255 + np.random.default_rng(seed).normal(0, sigma, (*picture.size[::-1], 3))
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


@pytest.fixture(scope="module")
def cities(tmp_path_factory):
    """Twelve procedural cities saved as files, as a project's training pictures are."""
    folder = tmp_path_factory.mktemp("cities")
    paths = []
    for i in range(12):
        path = folder / f"city_{i:02d}.png"
        city(2024000 + i, 96).save(path)
        paths.append(path)
    return paths


COPIES = {
    "itself": lambda p: small(p),
    "shifted 1 px": lambda p: shifted(small(p), 1, 0),
    "shifted 2 px at full size": lambda p: small(shifted(p, 2, 1)),
    "re-compressed": lambda p: jpeg(small(p)),
    "3% brighter": lambda p: small(exposed(p, 1.03)),
    "3% darker": lambda p: small(exposed(p, 0.97)),
    "noisy": lambda p: noisy(small(p)),
    "blurred": lambda p: small(p).filter(ImageFilter.GaussianBlur(0.8)),
    "mirrored": lambda p: ImageOps.mirror(small(p)),
    "all at once": lambda p: noisy(exposed(jpeg(shifted(small(p), 1, 1)), 1.03)),
}


def test_near_copies_are_flagged_with_their_training_picture(cities):
    originals = [Image.open(p).convert("RGB") for p in cities]
    samples, expected = [], []
    for what, make in COPIES.items():
        for i in (0, 5, 11):
            samples.append(make(originals[i]))
            expected.append((what, cities[i].name))
    result = check_memorization(samples, cities)
    assert result.spacing_from == "training" and result.work_size == SIZE
    missed = [(e, round(m.score, 2)) for e, m in zip(expected, result.matches) if not m.flagged]
    assert missed == []
    assert [m.nearest for m in result.matches] == [name for _, name in expected]
    assert result.any_flagged and len(result.flagged) == len(samples)
    mirrored = [m.mirrored for (what, _), m in zip(expected, result.matches) if what == "mirrored"]
    assert all(mirrored)
    assert max(m.score for m in result.matches) < result.score_threshold


def test_new_pictures_of_the_same_family_are_not_flagged(cities):
    new_cities = [small(city(5000 + i, 96)) for i in range(24)]
    result = check_memorization(new_cities, cities)
    assert not result.any_flagged, [round(m.score, 2) for m in result.matches]
    assert min(m.score for m in result.matches) > 1.3 * result.score_threshold  # a clear margin
    # a picture of the other family (the base model's landscapes) is further still
    lands = check_memorization([small(landscape(7000 + i, 96)) for i in range(8)], cities)
    assert not lands.any_flagged


def test_one_training_picture_uses_the_fixed_spacing(cities):
    one = [cities[3]]
    original = Image.open(cities[3]).convert("RGB")
    result = check_memorization([small(original), noisy(shifted(small(original), 1, 0)),
                                 small(city(5003, 96)), small(city(5004, 96))], one)
    assert result.spacing_from == "fixed"
    assert [m.flagged for m in result.matches] == [True, True, False, False]


def test_the_result_reads_back_as_json_and_says_what_it_found(cities):
    result = check_memorization([small(Image.open(cities[0])), small(city(5000, 96))], cities)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["any_flagged"] is True and data["flagged"] == 1 and data["samples"] == 2
    assert data["matches"][0]["nearest"] == "city_00.png" and data["matches"][0]["flagged"] is True
    assert data["matches"][1]["flagged"] is False
    assert data["thresholds"]["score"] == result.score_threshold
    assert "1 of the 2 samples" in result.verdict()
    clean = check_memorization([small(city(5000, 96))], cities)
    assert clean.verdict().startswith("No near-copies")


def test_the_grid_puts_each_sample_beside_its_match_and_frames_near_copies_in_red(cities):
    samples = [small(Image.open(cities[2]).convert("RGB")), small(city(5001, 96))]
    result = check_memorization(samples, cities)
    grid = memorization_grid(result, samples, cities, cell=64, pairs_per_row=2)
    pixels = np.asarray(grid)
    pair_w = 2 * 64 + 2 * 4 + 2
    # the frame's corner of the first pair (a near-copy) is red; the second pair's is white
    assert tuple(pixels[8 + 1, 8 + 1]) == (220, 30, 30)
    assert tuple(pixels[8 + 1, 8 + pair_w + 8 + 1]) == (255, 255, 255)
    # the sample and its nearest training picture sit side by side: both halves show the same city
    left = pixels[8 + 4:8 + 4 + 64, 8 + 4:8 + 4 + 64].astype(float)
    right = pixels[8 + 4:8 + 4 + 64, 8 + 4 + 64 + 2:8 + 4 + 128 + 2].astype(float)
    assert np.abs(left - right).mean() < 2


def test_a_sample_that_is_not_square_or_larger_is_compared_at_64_px(cities):
    big = Image.open(cities[1]).convert("RGB").resize((160, 128))
    result = check_memorization([big], cities)
    assert result.work_size == 64
