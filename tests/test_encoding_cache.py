"""The latent and text-embedding caches: the same training, encoded once, kept where asked."""
from __future__ import annotations

import json

import pytest

from transferstudio.core.events import Finished, Message, Progress
from transferstudio.data.encoding_cache import EncodingStore
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.training.trainer import TrainJob, train


def _config(**settings):
    return TrainConfig(**{**dict(steps=4, preview_steps=2, preview_seeds=[1], batch_size=2, preview_every=0,
                                 validation="none", learning_rate=5e-3, rank=4, alpha=8, trigger="zq"), **settings})


def _run(project_dir, backbone, images, **settings):
    project = create_project(project_dir, backbone=backbone, images=images, config=_config(**settings))
    events = list(train(TrainJob(project)))
    assert isinstance(events[-1], Finished), events[-1]
    return project, events


def _losses(project):
    run = sorted(p for p in (project.folder / "runs").iterdir() if p.is_dir())[-1]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]


@pytest.fixture()
def captioned(tmp_path):
    from tiny_ddpm import make_images

    return make_images(tmp_path / "images", n=3, size=64, captions=True)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cached_training_equals_encoding_every_step(tmp_path, request, captioned, family):
    backbone = request.getfixturevalue({"sd1": "tiny_sd1_dir", "sdxl": "tiny_sdxl_dir"}[family])
    # caption variation makes new captions during the run: the text cache encodes them as they come
    settings = dict(shuffle_tags=True, caption_dropout=0.3)
    plain, _ = _run(tmp_path / "plain", backbone, captioned, cache="off", **settings)
    cached, events = _run(tmp_path / "cached", backbone, captioned, cache="memory", **settings)
    assert _losses(cached) == pytest.approx(_losses(plain), rel=1e-4, abs=1e-6)
    progress = [e for e in events if isinstance(e, Progress) and "cache" in e.task]
    assert progress and progress[0].done == 0, "the user sees the encoding start"
    assert progress[-1].done == progress[-1].total == 3 * 2, "every picture, both flips"


def test_disk_cache_is_reused_by_later_runs_and_follows_picture_edits(tmp_path, tiny_sd1_dir, captioned):
    from PIL import Image

    project, _ = _run(tmp_path / "p", tiny_sd1_dir, captioned, cache="disk", steps=2)
    files = sorted((project.folder / ".cache" / "latents").rglob("*.safetensors"))
    assert len(files) == 3 * 2
    stamps = {f: f.stat().st_mtime_ns for f in files}

    events = list(train(TrainJob(load_project(project.folder), fresh=True)))
    assert isinstance(events[-1], Finished)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps, "a later run reads, never re-encodes"

    picture = sorted(p for p in captioned.iterdir() if p.suffix == ".png")[0]
    Image.open(picture).transpose(Image.Transpose.ROTATE_90).save(picture)  # the artist edits a picture
    events = list(train(TrainJob(load_project(project.folder), fresh=True)))
    assert isinstance(events[-1], Finished)
    after = sorted((project.folder / ".cache" / "latents").rglob("*.safetensors"))
    assert len(after) == 3 * 2 + 2, "the edited picture is encoded again (both flips); the rest reused"


def test_random_crop_encodes_every_step_and_says_so(tmp_path, tiny_sd1_dir, captioned):
    _, events = _run(tmp_path / "p", tiny_sd1_dir, captioned, cache="memory", crop="random", steps=2)
    assert not [e for e in events if isinstance(e, Progress) and "cache" in e.task]
    assert any(isinstance(e, Message) and "random crop" in e.text for e in events)


def test_pixel_models_have_nothing_to_cache(tmp_path, tiny_ddpm):
    from tiny_ddpm import make_images

    images = make_images(tmp_path / "images", n=3, size=32)
    _, events = _run(tmp_path / "p", tiny_ddpm, images, cache="disk", steps=2)
    assert not [e for e in events if isinstance(e, Progress) and "cache" in e.task]
    assert not (tmp_path / "p" / ".cache").exists()


def test_damaged_cache_file_is_encoded_again(tmp_path):
    import torch

    store = EncodingStore(tmp_path / "cache")
    store.put("abc-64x64-0.0-as-is", {"mean": torch.ones(4, 8, 8), "std": torch.full((4, 8, 8), 0.5)})
    file, = (tmp_path / "cache").rglob("*.safetensors")
    file.write_bytes(b"not a safetensors file")
    fresh = EncodingStore(tmp_path / "cache")
    assert fresh.get("abc-64x64-0.0-as-is") is None
    again = EncodingStore(tmp_path / "cache")
    again.put("abc-64x64-0.0-as-is", {"mean": torch.zeros(4, 8, 8), "std": torch.ones(4, 8, 8)})
    assert torch.equal(EncodingStore(tmp_path / "cache").get("abc-64x64-0.0-as-is")["mean"], torch.zeros(4, 8, 8))


def test_memory_store_keeps_within_its_budget():
    import torch

    store = EncodingStore(memory_bytes=3 * 64 * 4)
    for i in range(5):
        store.put(f"k{i}", {"x": torch.full((64,), float(i))})
    assert store.get("k0") is None and store.get("k1") is None
    assert float(store.get("k4")["x"][0]) == 4.0


def test_changing_the_cache_setting_does_not_block_continuing_a_run(tmp_path, tiny_sd1_dir, captioned):
    project, _ = _run(tmp_path / "p", tiny_sd1_dir, captioned, cache="off", steps=2)
    project = load_project(project.folder)
    project.config.cache = "memory"
    project.save()
    events = list(train(TrainJob(project, steps=3)))
    assert isinstance(events[-1], Finished) and events[-1].step == 3


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_cache_latents_and_t5_features_with_the_same_training(tmp_path, captioned, family):
    """SD3 / FLUX: the VAE and the text encoders (T5 among them) run once per picture and caption;
    the losses equal encoding at every step."""
    from tiny_mmdit import make_tiny_flux, make_tiny_sd3

    model = make_tiny_sd3(tmp_path / "sd3", version="3") if family == "sd3" else \
        make_tiny_flux(tmp_path / "flux", variant="dev")
    settings = dict(shuffle_tags=True, caption_dropout=0.3, resolution=32)
    plain, _ = _run(tmp_path / "plain", model, captioned, cache="off", **settings)
    cached, events = _run(tmp_path / "cached", model, captioned, cache="memory", **settings)
    assert _losses(cached) == pytest.approx(_losses(plain), rel=1e-4, abs=1e-6)
    progress = [e for e in events if isinstance(e, Progress) and "cache" in e.task]
    assert progress and progress[-1].done == progress[-1].total == 3 * 2


def _encoder_calls_during_steps(tmp_path, name, backbone_dir, images, **settings):
    """(text encoder forwards between the first and the last step, the run's messages)."""
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.core.events import Step

    backbone = load_backbone(backbone_dir)
    calls = []
    for encoder in backbone.text_encoders():
        encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    project = create_project(tmp_path / name, backbone=backbone_dir, images=images,
                             config=_config(cache="memory", **settings))
    during, counted, messages = 0, None, []
    for event in train(TrainJob(project, backbone=backbone)):
        if isinstance(event, Step):
            if counted is not None:
                during += len(calls) - counted
            counted = len(calls)
        elif isinstance(event, Message):
            messages.append(event.text)
    return during, messages


def test_text_encoders_leave_the_gpu_once_every_caption_is_encoded(tmp_path, tiny_sd1_dir, captioned, monkeypatch):
    """On a GPU (simulated: the move is to the CPU here) the frozen text encoders are not needed
    while training once every caption the run can meet is cached; previews still draw."""
    from transferstudio.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "_can_free_text_encoders", lambda self: True)
    during, messages = _encoder_calls_during_steps(tmp_path, "closed", tiny_sd1_dir, captioned, caption_dropout=0.3,
                                                   steps=6)
    assert during == 0 and any("Every caption is encoded" in m for m in messages)
    # shuffled tags make captions no list can hold: the encoders stay and encode new ones as they come
    for n, caption in enumerate(sorted(captioned.glob("*.txt"))):
        caption.write_text(f"tag{n}, red, square, bright, small")
    during, messages = _encoder_calls_during_steps(tmp_path, "open", tiny_sd1_dir, captioned, shuffle_tags=True,
                                                   steps=6)
    assert not any("Every caption is encoded" in m for m in messages) and during > 0
