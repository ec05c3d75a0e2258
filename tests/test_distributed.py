"""Data-parallel runs (issue 19): 2 CPU processes with gloo train exactly what one process
trains at the same global batch, write one set of files, and a killed run continues from its
last complete checkpoint, with another process count too."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tiny_ddpm import make_images
from transferstudio.backbones.batch_draws import Rows, randint, randn, rows_of
from transferstudio.core.commands import Commands
from transferstudio.core.events import Checkpoint, Failed, Finished, Preview, Started, Step
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.project.run import complete_checkpoints
from transferstudio.training.distributed import FollowedCommands, slice_batch
from transferstudio.training.launch import train_processes
from transferstudio.training.trainer import TrainJob, train

FAST = dict(preview_steps=2, preview_seeds=[1], batch_size=4, preview_every=0, checkpoint_every=2,
            rank=4, alpha=4.0, learning_rate=2e-3, steps=4, validation="none", flip=True)


def _project(tmp_path: Path, backbone: Path, images: Path, name: str, **settings: Any) -> Any:
    return create_project(tmp_path / name, backbone=backbone, images=images,
                          config=TrainConfig(**{**FAST, **settings}))


def _weights(events: list[Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    finished = [e for e in events if isinstance(e, Finished)]
    assert finished, [e for e in events if isinstance(e, Failed)]
    return load_file(str(finished[-1].weights))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# --- the pieces, in one process --------------------------------------------------------------

def test_draws_for_rows_are_the_global_draws_cut():
    whole = randn((4, 3), generator=torch.Generator().manual_seed(5))
    steps = randint(0, 1000, (4,), generator=torch.Generator().manual_seed(6))
    parts, times = [], []
    for start, stop in ((0, 2), (2, 4)):
        with rows_of(Rows(start, stop, 4)):
            parts.append(randn((2, 3), generator=torch.Generator().manual_seed(5)))
            times.append(randint(0, 1000, (2,), generator=torch.Generator().manual_seed(6)))
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(torch.cat(times), steps)
    # outside rows_of (or a draw of another size), plain torch
    assert torch.equal(randn((3,), generator=torch.Generator().manual_seed(1)),
                       torch.randn((3,), generator=torch.Generator().manual_seed(1)))


def test_gradients_are_summed_in_buckets(monkeypatch):
    from transferstudio.training import distributed

    monkeypatch.setattr(distributed, "BUCKET_ELEMENTS", 10)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (4, 4, 4, 12, 1)]
    assert [[p.numel() for p in b] for b in distributed._buckets(params)] == [[4, 4], [4], [12], [1]]


def test_slicing_a_batch_keeps_rows_together(image_folder):
    from transferstudio.data.dataset import TrainingImages
    from transferstudio.data.scan import scan_images

    images = TrainingImages(scan_images(image_folder).images, 32, 8, buckets=False, flip=False, crop="center")
    batch = images.load_batch([0, 1, 2], None)
    part = slice_batch(batch, Rows(1, 3, 3))
    assert part.captions == batch.captions[1:3]
    assert torch.equal(part.pixels, batch.pixels[1:3])
    assert part.keys == batch.keys[1:3]


def test_followed_commands_take_what_the_main_process_says():
    class Main:
        main, world = True, 2

        def flags(self, values):
            return values

    user = Commands()
    followed = FollowedCommands(user, Main())
    user.sample_now()
    user.pause()
    followed.sync()
    assert followed.paused and followed.take_sample_request() and not followed.take_sample_request()
    user.stop()
    followed.sync()
    assert followed.stop_requested and not followed.paused


# --- two processes ---------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_two_processes_train_what_one_trains(tmp_path, tiny_ddpm):
    """2 processes × 2 pictures == 1 × 4 at the same seed (same global batch and data order), one
    set of checkpoints, previews and metrics, and an export of the result."""
    images = make_images(tmp_path / "images", n=6)
    one = _project(tmp_path, tiny_ddpm, images, "one")
    two = _project(tmp_path, tiny_ddpm, images, "two")
    alone = list(train(TrainJob(load_project(one.folder))))
    together = list(train_processes(TrainJob(load_project(two.folder)), 2))
    started = next(e for e in together if isinstance(e, Started))
    assert started.processes == 2 and started.batch == 4
    assert [e.step for e in together if isinstance(e, Step)] == [1, 2, 3, 4]  # each step said once
    assert _close(_weights(alone), _weights(together)) < 1e-5
    losses = [e.loss for e in alone if isinstance(e, Step)]
    assert [e.loss for e in together if isinstance(e, Step)] == pytest.approx(losses, rel=1e-4)
    run = started.run_dir
    assert [c.step for c in complete_checkpoints(run)] == [2, 4]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    previews = sorted(p.name for p in (run / "previews").rglob("*.png"))
    assert previews == sorted(p.name for p in (Path(alone[0].run_dir) / "previews").rglob("*.png"))
    assert len([e for e in together if isinstance(e, Preview)]) == 2  # before and after
    assert list(two.folder.glob("runs/*")) == [run]  # one run folder, no strays
    from transferstudio.cli import main

    out = tmp_path / "export.safetensors"
    assert main(["export", str(two.folder), "--out", str(out)]) == 0
    assert out.stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_train_a_text_model_as_one(tmp_path, tiny_sd1_dir):
    """Stable Diffusion: the latent samples, caption dropout and offset noise of each picture are
    the same whichever process trains it; the encoding caches fill in every process."""
    images = make_images(tmp_path / "images", n=5)  # 5 pictures: batches of 4 and 1 (one process idle)
    settings = dict(resolution=64, caption_dropout=0.3, noise_offset=0.05, steps=3, checkpoint_every=3)
    one = _project(tmp_path, tiny_sd1_dir, images, "one", **settings)
    two = _project(tmp_path, tiny_sd1_dir, images, "two", **settings)
    alone = list(train(TrainJob(load_project(one.folder))))
    together = list(train_processes(TrainJob(load_project(two.folder)), 2))
    assert _close(_weights(alone), _weights(together)) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_with_class_pictures_train_as_one(tmp_path, tiny_sd1_dir):
    """Prior preservation: 6 class pictures in batches of 4 make a last class batch of 2; each
    process trains its rows of both sets, each weighted by its own share."""
    images = make_images(tmp_path / "images", n=4)
    settings = dict(resolution=64, steps=3, checkpoint_every=3, class_pictures=6, class_prompt="a picture",
                    preview_steps=1)
    one = _project(tmp_path, tiny_sd1_dir, images, "one", **settings)
    two = _project(tmp_path, tiny_sd1_dir, images, "two", **settings)
    alone = list(train(TrainJob(load_project(one.folder))))
    together = list(train_processes(TrainJob(load_project(two.folder)), 2))
    assert _close(_weights(alone), _weights(together)) < 1e-5


@pytest.mark.timeout(300)
def test_killed_run_continues_from_its_last_checkpoint_with_another_count(tmp_path, tiny_ddpm):
    images = make_images(tmp_path / "images", n=6)
    reference = _project(tmp_path, tiny_ddpm, images, "reference", steps=6)
    killed = _project(tmp_path, tiny_ddpm, images, "killed", steps=6)
    expected = _weights(list(train(TrainJob(load_project(reference.folder)))))

    commands = Commands()
    events: list[Any] = []
    launched = train_processes(TrainJob(load_project(killed.folder)), 2, commands)
    for event in launched:
        events.append(event)
        if isinstance(event, Checkpoint) and event.step == 2:
            break  # the run goes on in its processes; kill one of them as a crash would
    children = [p for p in __import__("multiprocessing").active_children()]
    assert children
    os.kill(children[-1].pid, 9)
    for event in launched:
        events.append(event)
    failed = [e for e in events if isinstance(e, Failed)]
    assert failed and "killed" in failed[-1].message
    run = next(e for e in events if isinstance(e, Started)).run_dir
    assert complete_checkpoints(run)[-1].step >= 2
    time.sleep(0.5)
    # one process continues it (the same global batch): the result equals an uninterrupted run
    resumed = list(train(TrainJob(load_project(killed.folder))))
    assert next(e for e in resumed if isinstance(e, Started)).start_step >= 2
    assert _close(_weights(resumed), expected) < 1e-5


@pytest.mark.timeout(300)
def test_pause_preview_and_stop_reach_every_process(tmp_path, tiny_ddpm):
    """The window's buttons on a 2-process run: pause holds every process, a preview asked for
    while paused is drawn at once, stop saves where the run is."""
    images = make_images(tmp_path / "images", n=6)
    project = _project(tmp_path, tiny_ddpm, images, "p", steps=500, checkpoint_every=1000)
    commands = Commands()
    seen: list[Any] = []
    for event in train_processes(TrainJob(load_project(project.folder)), 2, commands):
        seen.append(event)
        if isinstance(event, Step) and event.step == 2:
            commands.pause()
        elif type(event).__name__ == "Paused":
            from transferstudio.project.lock import LOCK_FILE

            owner = json.loads((project.folder / LOCK_FILE).read_text())
            assert owner["pid"] == os.getpid()  # the app that started the run owns its lock (it may export)
            commands.sample_now()
        elif isinstance(event, Preview) and event.step > 0:
            commands.stop()
    kinds = [type(e).__name__ for e in seen]
    paused_at = next(e.step for e in seen if type(e).__name__ == "Paused")
    assert kinds[-1] == "Stopped" and seen[-1].step == paused_at
    assert "Resumed" in kinds  # stop wakes the paused run, which then saves
    assert [c.step for c in complete_checkpoints(seen[-1].checkpoint.parent.parent)] == [paused_at]
    assert not (project.folder / "training.lock").exists()  # released when the run ended


@pytest.mark.timeout(300)
def test_cli_processes_option(tmp_path, tiny_ddpm, capsys):
    from transferstudio.cli import main

    images = make_images(tmp_path / "images", n=4)
    project = _project(tmp_path, tiny_ddpm, images, "cli", steps=2, batch_size=2)
    assert main(["train", str(project.folder), "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 processes train together" in out and "finished at step 2" in out
