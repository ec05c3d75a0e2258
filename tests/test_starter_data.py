"""Procedural starter domains and the SWD metric (fast: small sets, few projections)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferstudio.starter import procedural as P
from transferstudio.starter.metric import laplacian_pyramid, swd

REPO = Path(__file__).resolve().parents[1]
# Small but stable settings; measured margins: same ~100, cross ~215, noise ~310.
FAST = dict(patches=32, directions=128, repeats=2)


@pytest.mark.parametrize("fn", [P.landscape_array, P.city_array])
def test_generators_deterministic_and_seed_dependent(fn):
    a, b, c = fn(7, 32), fn(7, 32), fn(8, 32)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_shapes_dtypes_ranges(size):
    for img in (P.landscape(3, size), P.city(3, size)):
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (size, size)
        arr = np.asarray(img)
        assert arr.dtype == np.uint8
        assert arr.std() > 5  # not a flat colour
    batch = P.landscape_batch([1, 2, 3], size)
    assert batch.shape == (3, size, size, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[1], P.landscape_array(2, size))
    assert P.city_batch([5], size).shape == (1, size, size, 3)


def test_domains_differ_in_expected_ways():
    land = P.landscape_batch(range(40), 32).astype(float)
    town = P.city_batch(range(40), 32).astype(float)
    assert town.mean() < land.mean()  # cities are at dusk/night
    assert len({a.tobytes() for a in P.landscape_batch(range(40), 32)}) == 40


def test_landscape_speed():
    import time

    t = time.perf_counter()
    P.landscape_batch(range(100), 32)
    # 20k images must fit well under a minute on an idle core; allow for a busy machine
    assert (time.perf_counter() - t) / 100 < 0.02


def test_make_grid_and_sample_images(tmp_path):
    grid = P.make_grid([P.city(i, 16) for i in range(5)], cols=3, pad=1)
    assert grid.size == (3 * 16 + 4, 2 * 16 + 3)
    paths = P.write_sample_images(tmp_path, n=2, seed=1, size=32)
    assert [Path(p).name for p in paths] == ["city_000.png", "city_001.png"]
    again = P.write_sample_images(tmp_path / "again", n=2, seed=1, size=32)
    assert np.array_equal(np.asarray(Image.open(paths[1])), np.asarray(Image.open(again[1])))


def test_laplacian_pyramid_reconstructs():
    x = P.landscape_batch([0, 1], 32).astype(np.float32) / 255
    levels = laplacian_pyramid(x, min_res=8)
    assert [l.shape[1] for l in levels] == [32, 16, 8]
    from transferstudio.starter.metric import _up

    rec = levels[-1]
    for lap in reversed(levels[:-1]):
        rec = _up(rec) + lap
    assert np.allclose(rec, x, atol=1e-5)


@pytest.fixture(scope="module")
def sets():
    n = 48
    return {
        "land": P.landscape_batch(range(n), 32),
        "land2": P.landscape_batch(range(5000, 5000 + n), 32),
        "city": P.city_batch(range(n), 32),
        "noise": np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
    }


def test_swd_identical_is_zero_and_deterministic(sets):
    r = swd(sets["land"], sets["land"], **FAST)
    assert r["resolutions"] == [32, 16, 8]
    assert r["average"] == pytest.approx(0.0, abs=1e-6)
    r1 = swd(sets["land"], sets["city"], seed=3, **FAST)
    r2 = swd(list(sets["land"]), [Image.fromarray(a) for a in sets["city"]], seed=3, **FAST)
    assert r1 == r2  # arrays and PIL lists give the same answer
    assert r1["average"] > 0


def test_swd_ordering(sets):
    same = swd(sets["land"], sets["land2"], **FAST)["average"]
    cross = swd(sets["land"], sets["city"], **FAST)["average"]
    noise = swd(sets["land"], sets["noise"], **FAST)["average"]
    assert 0 < same < cross < noise
    assert cross > 1.5 * same


def test_swd_reference_normalisation_counts_colour(sets):
    # The same cities, darkened: the paper's per-set normalisation barely notices,
    # normalising by the reference set's statistics does.
    dark = (sets["city"].astype(np.float32) * 0.4).astype(np.uint8)
    per_set = swd(dark, sets["city"], **FAST)["average"]
    reference = swd(dark, sets["city"], normalize="reference", **FAST)["average"]
    assert reference > 3 * per_set
    assert swd(sets["city"], sets["city"], normalize="reference", **FAST)["average"] == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        swd(dark, sets["city"], normalize="nope", **FAST)


def test_swd_unequal_counts_and_sizes(sets):
    r = swd(sets["land"][:20], P.landscape_batch(range(900, 930), 64), **FAST)
    assert r["n_a"] == 20 and r["n_b"] == 30
    assert all(np.isfinite(r["distances"]))


def test_shipped_starter_backbone_if_present():
    folder = REPO / "resources" / "starter"
    if not (folder / "model_index.json").exists():
        pytest.skip("starter backbone not built yet")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet")
    assert unet.config.sample_size in (32, 48, 64)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    assert size_mb < 20
