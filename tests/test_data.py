"""Data layer: what a user notices — which images train, how they look, what was skipped and why."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import (
    bomb_png,
    exif_rotated_jpeg,
    noisy,
    rgb16_png,
    solid,
    truncate,
    two_halves,
)
from transferstudio.core.errors import DatasetError
from transferstudio.data import (
    MAX_PIXELS,
    ImageProblem,
    ImageRecord,
    bucket_summary,
    make_buckets,
    nearest_bucket,
    open_rgb,
    probe,
    scan_images,
)
from transferstudio.data.dataset import TrainingImages


def px(im: Image.Image, xy=(0, 0)) -> np.ndarray:
    return np.asarray(im)[xy[1], xy[0]].astype(int)


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".PNG"])
def test_common_formats_open_as_rgb(tmp_path, suffix):
    path = solid(tmp_path / f"a{suffix}", size=(32, 24), color=(200, 30, 40))
    im = open_rgb(path)
    assert im.mode == "RGB" and im.size == (32, 24)
    assert np.abs(px(im, (16, 12)) - (200, 30, 40)).max() <= 6
    assert probe(path) == (32, 24)


def test_exif_rotation_is_applied(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "phone.jpg", orientation=6)
    assert probe(path) == (20, 40)
    im = open_rgb(path)
    assert im.size == (20, 40)
    # Orientation 6 = rotate 90° clockwise: the stored left half (red) ends on top.
    top, bottom = px(im, (10, 5)), px(im, (10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_grayscale_and_cmyk_become_rgb(tmp_path):
    gray = open_rgb(solid(tmp_path / "g.png", color=90, mode="L"))
    assert gray.mode == "RGB" and list(px(gray)) == [90, 90, 90]
    cmyk = open_rgb(solid(tmp_path / "c.jpg", color=(0, 255, 255, 0), mode="CMYK", quality=95))
    r, g, b = px(cmyk, (16, 12))
    assert cmyk.mode == "RGB" and r > 230 and g < 30 and b < 30


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((4, 6), np.uint16)
    arr[:, 0:2], arr[:, 2:4], arr[:, 4:6] = 0, 32768, 65535
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    im = open_rgb(path)
    assert [px(im, (x, 1))[0] for x in (0, 2, 4)] == [0, 128, 255]
    rgb16 = open_rgb(rgb16_png(tmp_path / "c16.png", (32768, 0, 65535)))
    assert np.abs(px(rgb16) - (128, 0, 255)).max() <= 1


def test_transparency_becomes_white(tmp_path):
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    rgba.putpixel((2, 0), (10, 200, 30, 255))
    rgba.save(tmp_path / "rgba.png")
    im = open_rgb(tmp_path / "rgba.png")
    assert list(px(im, (0, 0))) == [255, 255, 255]
    assert abs(px(im, (1, 0))[0] - 127) <= 2  # half-transparent black → mid gray
    assert list(px(im, (2, 0))) == [10, 200, 30]

    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    im = open_rgb(tmp_path / "pal.png")
    assert list(px(im, (0, 0))) == [255, 255, 255]
    assert list(px(im, (1, 0))) == [0, 0, 255]

    la = open_rgb(solid(tmp_path / "la.png", size=(2, 2), color=(0, 0), mode="LA"))
    assert list(px(la)) == [255, 255, 255]


@pytest.mark.parametrize(
    "make, reason_part",
    [
        (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
        (lambda p: (p.write_text("hello, not a picture"), p)[1], "not an image"),
        (lambda p: truncate(noisy(p, size=(64, 64))), "truncated"),
        (lambda p: bomb_png(p), "too large"),
    ],
)
def test_bad_files_raise_image_problem(tmp_path, make, reason_part):
    path = make(tmp_path / "bad.png")
    with pytest.raises(ImageProblem) as exc:
        probe(path)
    assert reason_part in exc.value.reason
    with pytest.raises(ImageProblem):
        open_rgb(path)


def test_size_limit_checked_before_decoding(tmp_path):
    # Just over our limit but under PIL's own hard limit: our check must catch it.
    path = bomb_png(tmp_path / "big.png", width=11_000, height=10_000)
    assert 11_000 * 10_000 > MAX_PIXELS
    with pytest.raises(ImageProblem, match="11000×10000"):
        probe(path)


# ---------------------------------------------------------------- scan


def test_scan_keeps_good_images_and_explains_skips(tmp_path):
    good = {
        "a.jpg": solid(tmp_path / "a.jpg"),
        "b.png": solid(tmp_path / "b.png"),
        "c.webp": solid(tmp_path / "c.webp"),
        "d.BMP": solid(tmp_path / "d.BMP", format="BMP"),
        "sub/e.png": solid(tmp_path / "sub" / "e.png"),
    }
    (tmp_path / "zero.png").write_bytes(b"")
    truncate(noisy(tmp_path / "trunc.png", size=(96, 96)))
    truncate(noisy(tmp_path / "trunc.jpg", size=(96, 96), quality=95))
    (tmp_path / "notes.jpg").write_text("this is text")
    bomb_png(tmp_path / "bomb.png")
    solid(tmp_path / "anim.gif", format="GIF")
    # Silently ignored: captions, other files, hidden things, macOS debris.
    (tmp_path / "a.txt").write_text("caption")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.png").write_bytes(b"")

    result = scan_images(tmp_path)
    assert [r.path for r in result.images] == [good[k] for k in sorted(good)]
    assert all((r.width, r.height) == (32, 24) for r in result.images)
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert set(reasons) == {"zero.png", "trunc.png", "trunc.jpg", "notes.jpg", "bomb.png", "anim.gif"}
    assert "empty file" in reasons["zero.png"]
    assert "truncated" in reasons["trunc.png"] and "truncated" in reasons["trunc.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "too large" in reasons["bomb.png"]
    assert "unsupported format (.gif)" in reasons["anim.gif"]
    assert result.summary() == "5 images, 6 skipped"


def test_captions_and_trigger_word(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        solid(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_bytes("\ufeff  a red   fox\n in snow \n".encode("utf-8"))
    (tmp_path / "c.txt").write_text("mystyle, a cat", encoding="utf-8")
    (tmp_path / "d.txt").write_text("mystyledog on a hill", encoding="utf-8")
    (tmp_path / "e.txt").write_bytes("café".encode("cp1252"))

    plain = {r.path.stem: r.caption for r in scan_images(tmp_path).images}
    assert plain == {"a": "a red fox in snow", "b": "", "c": "mystyle, a cat",
                     "d": "mystyledog on a hill", "e": "café"}
    trig = {r.path.stem: r.caption for r in scan_images(tmp_path, trigger="mystyle").images}
    assert trig["a"] == "mystyle, a red fox in snow"
    assert trig["b"] == "mystyle"
    assert trig["c"] == "mystyle, a cat"  # not duplicated
    assert trig["d"] == "mystyle, mystyledog on a hill"  # a longer word is not the trigger


def test_repeat_folders(tmp_path):
    solid(tmp_path / "10_mystyle" / "a.png")
    solid(tmp_path / "10_mystyle" / "sub" / "b.png")
    solid(tmp_path / "10_mystyle" / "3_close" / "c.png")
    solid(tmp_path / "0_zero" / "d.png")
    solid(tmp_path / "2024_sketches" / "e.png")
    solid(tmp_path / "f.png")
    result = scan_images(tmp_path)
    reps = {r.path.stem: r.repeats for r in result.images}
    assert reps == {"a": 10, "b": 10, "c": 3, "d": 1, "e": 1, "f": 1}
    assert result.samples_per_epoch == 26
    assert result.summary() == "6 images (26 with repeats)"
    # Picking the repeat folder itself keeps its count.
    assert {r.repeats for r in scan_images(tmp_path / "10_mystyle" / "3_close").images} == {3}


def test_unusable_folders_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="Image folder not found") as exc:
        scan_images(tmp_path / "nope")
    assert "Pick the folder" in exc.value.advice
    with pytest.raises(DatasetError, match="No images found"):
        scan_images(tmp_path)
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("x")
    with pytest.raises(DatasetError, match="2 file") as exc:
        scan_images(tmp_path)
    assert "empty file" in exc.value.message and ".png" in exc.value.advice


# ---------------------------------------------------------------- buckets


@pytest.mark.parametrize("native", [512, 768, 1024, 1000])
def test_buckets_shape(native):
    buckets = make_buckets(native, 64)
    side = native // 64 * 64
    assert (side, side) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert w * h <= side * side and w * h >= 0.85 * side * side
        assert 0.5 <= w / h <= 2.0
    assert len(set(buckets)) == len(buckets)
    assert {(h, w) for w, h in buckets} == set(buckets)  # portrait mirrors landscape


def test_nearest_bucket_follows_aspect():
    buckets = make_buckets(1024, 64)
    w, h = nearest_bucket(2000, 1000, buckets)
    assert w > h and w / h == pytest.approx(2.0, abs=0.1)
    w, h = nearest_bucket(600, 1200, buckets)
    assert h > w
    assert nearest_bucket(777, 777, buckets) == (1024, 1024)


def _rec(w, h, repeats=1, name="x.png"):
    from pathlib import Path

    return ImageRecord(Path(name), "", repeats, w, h)


def test_bucket_summary_counts_repeats():
    records = [_rec(1000, 1000, 2), _rec(2000, 1000, 3), _rec(1000, 2000)]
    counts = bucket_summary(records, 512, 64)
    assert sum(counts.values()) == 6 and counts[(512, 512)] == 2
    assert bucket_summary(records, 512, 64, enabled=False) == {(512, 512): 6}


# ---------------------------------------------------------------- dataset


@pytest.fixture
def small_set(tmp_path):
    for i in range(5):
        two_halves(tmp_path / "3_sq" / f"sq{i}.png", size=(80, 80))
    for i in range(4):
        two_halves(tmp_path / f"wide{i}.png", size=(160, 80))
    two_halves(tmp_path / "tall.png", size=(60, 120))
    return scan_images(tmp_path, trigger="tok")


def test_epoch_batches_deterministic_and_bucketed(small_set):
    ds = TrainingImages(small_set.images, 256, 64)
    assert len(ds) == 5 * 3 + 4 + 1 == small_set.samples_per_epoch
    a = ds.epoch_batches(epoch=2, seed=7, batch_size=4)
    assert a == ds.epoch_batches(epoch=2, seed=7, batch_size=4)
    assert a == TrainingImages(small_set.images, 256, 64).epoch_batches(2, 7, 4)
    assert a != ds.epoch_batches(epoch=3, seed=7, batch_size=4)
    assert a != ds.epoch_batches(epoch=2, seed=8, batch_size=4)
    assert sorted(i for b in a for i in b) == list(range(len(ds)))
    for batch in a:
        assert 1 <= len(batch) <= 4
        assert len({ds.bucket_of(i) for i in batch}) == 1
    assert sum(ds.bucket_counts.values()) == len(ds) and len(ds.bucket_counts) == 3


def test_load_batch_pixels_and_conditioning(small_set):
    ds = TrainingImages(small_set.images, 256, 64, flip=False)
    wide = [i for i in range(len(ds)) if ds.record(i).path.stem.startswith("wide")]
    batch = ds.load_batch(wide[:2], torch.Generator().manual_seed(0))
    bw, bh = ds.bucket_of(wide[0])
    assert bw > bh
    assert batch.pixels.shape == (2, 3, bh, bw) and batch.pixels.dtype == torch.float32
    assert batch.pixels.min() >= -1.0 and batch.pixels.max() <= 1.0
    assert batch.pixels.min() == -1.0 and batch.pixels.max() == 1.0  # pure red/blue use the full range
    assert batch.target_size == (bh, bw)
    assert batch.original_sizes == [(80, 160), (80, 160)]
    assert batch.captions == ["tok", "tok"]
    # Left half red (channel 0 high), right half blue.
    assert batch.pixels[0, 0, :, 0].mean() > 0.9 and batch.pixels[0, 2, :, -1].mean() > 0.9


def test_flip_and_crop_follow_the_rng(small_set):
    ds = TrainingImages(small_set.images, 256, 64, flip=True, crop="random")
    sq = [i for i in range(len(ds)) if ds.record(i).path.stem.startswith("sq")][:4]
    gen = torch.Generator().manual_seed(123)
    state = gen.get_state()
    first = ds.load_batch(sq, gen)
    gen.set_state(state)
    again = ds.load_batch(sq, gen)
    assert torch.equal(first.pixels, again.pixels) and first.crop_top_left == again.crop_top_left

    # Replay the documented draw order: per sample a flip draw, then top, then left.
    gen.set_state(state)
    seen = set()
    for k in range(len(sq)):
        flipped = bool(torch.rand((), generator=gen) < 0.5)
        torch.randint(0, 1, (), generator=gen), torch.randint(0, 1, (), generator=gen)
        red_side = 0 if not flipped else -1
        assert first.pixels[k, 0, :, red_side].mean() > 0.9
        seen.add(flipped)
    assert seen == {True, False}  # this seed exercises both outcomes

    # Wide 2:1 images are resized to 384×192 for a 320×192 bucket: left offset 0..64.
    wide = [i for i in range(len(ds)) if ds.record(i).path.stem.startswith("wide")]
    gen.manual_seed(5)
    lefts = {left for _ in range(5) for top, left in ds.load_batch(wide, gen).crop_top_left}
    assert all(0 <= x <= 64 for x in lefts) and len(lefts) > 1

    unflipped = ds.load_batch(sq, None)
    assert all(p[0, :, 0].mean() > 0.9 for p in unflipped.pixels)


def test_crop_and_resize_cover_the_bucket(tmp_path):
    path = two_halves(tmp_path / "odd.png", size=(300, 100))  # 3:1, wider than any bucket
    ds = TrainingImages(scan_images(tmp_path).images, 128, 64, flip=False, crop="center", buckets=False)
    batch = ds.load_batch([0], None)
    assert batch.target_size == (128, 128) and batch.pixels.shape[-2:] == (128, 128)
    # Resized to 384×128 to cover 128×128; centre crop starts at 128.
    assert batch.crop_top_left == [(0, 128)]
    assert path.exists()


def test_late_missing_file_is_skipped_and_replaced(small_set):
    ds = TrainingImages(small_set.images, 256, 64, cache_bytes=0)
    wide = [i for i in range(len(ds)) if ds.record(i).path.stem.startswith("wide")]
    ds.record(wide[0]).path.unlink()
    batch = ds.load_batch(wide[:2], None)
    assert batch.pixels.shape[0] == 2
    assert [s.path for s in ds.late_skips] == [ds.record(wide[0]).path]
    assert "not found" in ds.late_skips[0].reason
    for i in wide:
        ds.record(i).path.unlink(missing_ok=True)
    with pytest.raises(DatasetError, match="wide"):
        ds.load_batch(wide[:1], None)


def test_decoded_images_are_cached(small_set):
    ds = TrainingImages(small_set.images, 256, 64)
    tall = [i for i in range(len(ds)) if ds.record(i).path.stem == "tall"]
    first = ds.load_batch(tall, None)
    ds.record(tall[0]).path.unlink()
    assert torch.equal(ds.load_batch(tall, None).pixels, first.pixels)
    assert ds.late_skips == []


def test_pictures_damaged_during_training_are_reported_once(small_set):
    """Each picture that fails after the scan is handed to the engine once, to warn about."""
    ds = TrainingImages(small_set.images, 256, 64, cache_bytes=0)
    wide = [i for i in range(len(ds)) if ds.record(i).path.stem.startswith("wide")]
    damaged = truncate(ds.record(wide[0]).path, keep=0.3)
    assert ds.load_batch(wide[:2], None).pixels.shape[0] == 2
    problems = ds.take_problems()
    assert [p.path for p in problems] == [damaged] and "truncated" in problems[0].reason
    assert ds.take_problems() == []
    ds.load_batch(wide[:2], None)  # the bad picture is not tried, nor reported, again
    assert ds.take_problems() == []
    assert [s.path for s in ds.late_skips] == [damaged]


def _big_gray_png(path, rows_kept=None, cut_stream=0):
    """A 9000×9000 (81 MP) 1-bit PNG with valid chunks; optionally short of rows, or with its
    compressed stream cut (CRCs still right) — what a copy cut short and re-saved can leave."""
    import zlib

    from data_helpers import _chunk
    import struct

    width = height = 9000
    row = b"\x00" + b"\x55" * (width // 8)
    data = zlib.compress(row * (height if rows_kept is None else rows_kept), 1)
    if cut_stream:
        data = data[:-cut_stream]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("damage", [dict(rows_kept=10), dict(rows_kept=8999), dict(cut_stream=8)])
def test_a_huge_png_with_short_pixel_data_is_skipped_at_scan(tmp_path, damage):
    import time

    path = _big_gray_png(tmp_path / "big.png", **damage)
    with pytest.raises(ImageProblem, match="truncated"):
        probe(path)
    whole = _big_gray_png(tmp_path / "whole.png")
    start = time.perf_counter()
    assert probe(whole) == (9000, 9000)
    assert time.perf_counter() - start < 5  # inflated in pieces, never held in memory
    solid(tmp_path / "small.png")
    scan = scan_images(tmp_path)
    assert [r.path.name for r in scan.images] == ["small.png", "whole.png"]
    assert [s.path.name for s in scan.skipped] == ["big.png"]


def test_large_pngs_of_every_kind_still_pass_the_scan(tmp_path):
    import struct
    import zlib

    from data_helpers import _chunk

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (1500, 3000, 4), dtype=np.uint8)  # 4.5 MP: over the verify threshold
    Image.fromarray(arr, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(arr[..., 0], "L").convert("P").save(tmp_path / "palette.png")
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    for name in ("rgba.png", "palette.png", "gray16.png"):
        assert probe(tmp_path / name) == (3000, 1500), name

    # Adam7-interlaced RGB, 3001×1501 (odd sides: partial passes), written by hand.
    width, height = 3001, 1501
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b"".join((b"\x00" + b"\x80" * (3 * -(-(width - x0) // dx))) * (-(-(height - y0) // dy))
                   for x0, y0, dx, dy in passes)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    for name, data in (("adam7.png", raw), ("adam7-short.png", raw[:-100])):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                                      + _chunk(b"IDAT", zlib.compress(data, 1)) + _chunk(b"IEND", b""))
    assert probe(tmp_path / "adam7.png") == (width, height)
    with pytest.raises(ImageProblem, match="truncated"):
        probe(tmp_path / "adam7-short.png")
