"""Caption dropout, tag shuffling with leading tags kept, and tag dropout (the kohya_ss settings):
what each does to the captions the model is trained with, drawn reproducibly from the run's seed."""
from __future__ import annotations

import json

import torch

from tests.tiny_ddpm import make_images
from transferstudio.data.captions import CaptionVariation

CAPTION = "mystyle, city, night, lit windows, moon, river"


def draws(variation: CaptionVariation, n: int = 400, seed: int = 0) -> list[str]:
    rng = torch.Generator().manual_seed(seed)
    return [variation.apply(CAPTION, rng) for _ in range(n)]


def test_everything_off_leaves_captions_alone_and_draws_nothing():
    rng = torch.Generator().manual_seed(0)
    before = rng.get_state()
    assert CaptionVariation().apply(CAPTION, rng) == CAPTION
    assert torch.equal(rng.get_state(), before)  # runs without the settings stay bit-identical


def test_shuffling_keeps_the_trigger_first_and_every_tag():
    out = draws(CaptionVariation(shuffle=True, keep=1))
    assert all(c.startswith("mystyle, ") for c in out)
    assert all(sorted(c.split(", ")) == sorted(CAPTION.split(", ")) for c in out)
    assert len(set(out)) > 50  # many orders


def test_caption_dropout_empties_about_that_share():
    out = draws(CaptionVariation(dropout=0.25), n=2000)
    assert 0.21 < out.count("") / len(out) < 0.29
    assert set(out) == {"", CAPTION}


def test_tag_dropout_never_drops_the_kept_tags():
    out = draws(CaptionVariation(tag_dropout=0.5, keep=2))
    assert all(c.startswith("mystyle, city") for c in out)
    lengths = [len(c.split(", ")) for c in out]
    assert min(lengths) == 2 and max(lengths) == 6 and 3.5 < sum(lengths) / len(lengths) < 4.5


def test_the_same_seed_varies_the_same_way():
    variation = CaptionVariation(dropout=0.1, shuffle=True, tag_dropout=0.2)
    assert draws(variation, seed=3) == draws(variation, seed=3)
    assert draws(variation, seed=3) != draws(variation, seed=4)


def test_training_batches_carry_varied_captions(tmp_path):
    from transferstudio.data.dataset import TrainingImages
    from transferstudio.data.scan import scan_images

    folder = make_images(tmp_path / "pics", n=2, captions=True)
    for txt in folder.glob("*.txt"):
        txt.write_text(CAPTION)
    records = scan_images(folder).images
    images = TrainingImages(records, 24, 8, buckets=False, captions=CaptionVariation(shuffle=True))
    rng = torch.Generator().manual_seed(0)
    seen = {c for _ in range(20) for c in images.load_batch([0, 1], rng).captions}
    assert len(seen) > 5 and all(c.startswith("mystyle, ") for c in seen)
    assert images.load_batch([0, 1], None).captions == [CAPTION, CAPTION]  # previews: as written


def test_settings_reach_the_run_and_the_cli(tmp_path, tiny_ddpm):
    from transferstudio import cli

    folder = make_images(tmp_path / "pics", n=2, captions=True)
    assert cli.main(["new", str(tmp_path / "p"), "--backbone", str(tiny_ddpm), "--images", str(folder),
                     "--caption-dropout", "0.1", "--shuffle-tags", "--keep-tags", "2", "--tag-dropout", "0.05"]) == 0
    config = json.loads((tmp_path / "p" / "project.json").read_text())["config"]
    assert (config["caption_dropout"], config["shuffle_tags"], config["keep_tags"], config["tag_dropout"]) == \
        (0.1, True, 2, 0.05)
