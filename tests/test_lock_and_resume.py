"""One trainer per project, continued runs that say what they use, and nothing left behind
(issue 12: findings 5, 7 and parts of 10)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from transferstudio.cli import main
from transferstudio.core.commands import Commands
from transferstudio.core.events import Checkpoint, Failed, Finished, Message, Started, Step, Stopped
from transferstudio.project.config import TrainConfig
from transferstudio.project.lock import LOCK_FILE, ProjectLock, check_not_training, training_owner
from transferstudio.project.project import create_project, load_project
from transferstudio.project.run import Run, complete_checkpoints
from transferstudio.training.trainer import Trainer, TrainJob, train

FAST = dict(preview_steps=2, preview_seeds=[1], batch_size=2, preview_every=0, checkpoint_every=1000,
            rank=4, alpha=4.0, learning_rate=1e-3)


def _project(tmp_path: Path, backbone: Path, images: Path, name: str = "project", **settings: Any):
    return create_project(tmp_path / name, backbone=backbone, images=images,
                          config=TrainConfig(**{**FAST, **settings}))


def _run(project: Any, commands: Commands | None = None, **job: Any) -> list[Any]:
    return list(train(TrainJob(load_project(project.folder), **job), commands))


def _snapshot(root: Path) -> dict[str, Any]:
    """Every file and folder under root with its size and modification time."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        out[path.relative_to(root).as_posix()] = "dir" if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return out


def _metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def _messages(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


HOLDER = ("import sys; from transferstudio.project.lock import ProjectLock; lock = ProjectLock(sys.argv[1]); "
          "lock.acquire(); print('held', flush=True); sys.stdin.readline(); lock.release()")


def _hold_lock_elsewhere(folder: Path) -> subprocess.Popen:
    """Another process that holds the project's lock until its stdin is closed (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- finding 7: two trainers on one project ----------------------------------------------------

def test_two_trainers_started_together_one_trains_the_other_is_refused(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=6, checkpoint_every=2)
    barrier = threading.Barrier(2)
    done = [threading.Event(), threading.Event()]
    results: list[list[Any]] = [[], []]

    def trainer(i: int) -> None:
        try:
            barrier.wait(30)
            for event in train(TrainJob(load_project(project.folder))):
                results[i].append(event)
                if isinstance(event, Step) and event.step == 1:
                    done[1 - i].wait(120)  # hold the project until the other trainer has ended
        finally:
            done[i].set()

    threads = [threading.Thread(target=trainer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ends = sorted(results, key=lambda r: type(r[-1]).__name__)
    assert [type(r[-1]).__name__ for r in ends] == ["Failed", "Finished"]
    refused = ends[0]
    assert len(refused) == 1, "the refused trainer yields nothing but its Failed"
    assert refused[0].message == (f"This project is already training in this process "
                                  f"(pid {os.getpid()} on {socket.gethostname()}).")
    assert len(project.runs()) == 1, "one run, not two"
    assert _metric_steps(project.runs()[0]) == list(range(1, 7)), "each step once"
    assert not (project.folder / LOCK_FILE).exists(), "released at the end"


def test_a_project_training_in_another_process_is_refused_everywhere_and_unchanged(
        tmp_path, tiny_ddpm, image_folder, capsys):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=2)
    assert isinstance(_run(project)[-1], Finished)
    holder = _hold_lock_elsewhere(project.folder)
    sentence = f"This project is training in another process (pid {holder.pid} on {socket.gethostname()})."
    try:
        before = _snapshot(project.folder)
        events = _run(project, steps=4)
        assert len(events) == 1 and isinstance(events[0], Failed) and events[0].message == sentence
        assert isinstance(_run(project, fresh=True)[0], Failed)
        with pytest.raises(Exception, match=r"training in another process"):
            check_not_training(project.folder)
        assert training_owner(project.folder).pid == holder.pid
        capsys.readouterr()
        for argv in (["train", str(project.folder)], ["train", str(project.folder), "--fresh"],
                     ["export", str(project.folder), "--out", str(tmp_path / "out.safetensors")],
                     ["sample", str(project.folder), "--out", str(tmp_path / "s.png"), "--steps", "2"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: " + sentence) and "\n" not in err and "Traceback" not in err, err
        assert _snapshot(project.folder) == before, "a refused command changes nothing"
        assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "s.png").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is stale now, and the next train takes it over and says so.
    events = _run(project, steps=4)
    assert isinstance(events[-1], Finished) and events[0].start_step == 2
    assert any("stale training lock" in m and str(holder.pid) in m for m in _messages(events))
    assert not (project.folder / LOCK_FILE).exists()


def test_a_stale_or_unreadable_lock_is_taken_over_with_a_message(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=2)
    lock = project.folder / LOCK_FILE
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": 1.0}))
    assert training_owner(project.folder) is None
    events = _run(project)
    assert isinstance(events[-1], Finished)
    assert any(m.startswith("Took over a stale training lock") for m in _messages(events))
    assert not lock.exists()

    lock.write_bytes(b"\x00\xffgarbage")
    os.utime(lock, (1, 1))  # old: nobody is writing it any more
    events = _run(project, steps=3)
    assert isinstance(events[-1], Finished)
    assert any("unreadable training lock" in m for m in _messages(events))
    assert not lock.exists()


def test_a_lock_from_another_computer_is_respected(tmp_path, tiny_ddpm, image_folder, capsys):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=2)
    lock = project.folder / LOCK_FILE
    lock.write_text(json.dumps({"pid": 4242, "host": "render-box-7", "started": 1.0}))
    events = _run(project)
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].message == "This project is training in another process (pid 4242 on render-box-7)."
    assert LOCK_FILE in events[0].advice
    assert lock.exists() and project.runs() == []


def test_the_lock_is_released_on_every_end(tmp_path, tiny_ddpm, image_folder, monkeypatch):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=3)
    lock = project.folder / LOCK_FILE

    # Stopped (saved), and a consumer that walks away from the generator mid-run.
    commands = Commands()
    for event in train(TrainJob(load_project(project.folder)), commands):
        if isinstance(event, Step):
            assert lock.exists()
            commands.stop()
        last = event
    assert isinstance(last, Stopped) and not lock.exists()
    events = train(TrainJob(load_project(project.folder), steps=5))
    for event in events:
        if isinstance(event, Step):
            break
    assert lock.exists()
    events.close()
    assert not lock.exists()

    # Failed (a user error mid-run) and a programming error.
    original = Trainer.train_step

    def failing(self: Trainer) -> Any:
        if self.step >= 1:
            from transferstudio.core.errors import UserError
            raise UserError("Something the user can fix.", "Fix it.")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", failing)
    assert isinstance(_run(project, fresh=True)[-1], Failed) and not lock.exists()

    def crashing(self: Trainer) -> Any:
        raise RuntimeError("a programming error")

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(RuntimeError):
        _run(project, fresh=True)
    assert not lock.exists()


def test_project_lock_refuses_a_second_holder_and_only_removes_its_own_file(tmp_path):
    first, second = ProjectLock(tmp_path), ProjectLock(tmp_path)
    assert first.acquire() is None and first.held
    with pytest.raises(Exception, match="already training in this process"):
        second.acquire()
    first.release()
    first.release()  # twice is fine
    assert not (tmp_path / LOCK_FILE).exists()
    with second:
        first.owner = second.owner.__class__(pid=1, host="x", started=0.0, token="not-mine")
        first.release()  # a stale handle must not remove someone else's lock
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


# --- finding 5: settings changed between runs ------------------------------------------------

def _stopped_lora_run(tmp_path: Path, backbone: Path, images: Path, **settings: Any) -> Any:
    project = _project(tmp_path, backbone, images, steps=6, **settings)
    commands = Commands()
    events = []
    for event in train(TrainJob(load_project(project.folder)), commands):
        events.append(event)
        if isinstance(event, Step) and event.step == 2:
            commands.stop()
    assert isinstance(events[-1], Stopped) and events[-1].step == 2
    return project


def test_changed_settings_are_never_continued_silently(tmp_path, tiny_ddpm, image_folder):
    project = _stopped_lora_run(tmp_path, tiny_ddpm, image_folder)
    run_dir = project.runs()[0]
    changed = load_project(project.folder)
    changed.config.method = "full"
    changed.config.learning_rate = 5e-4
    changed.save()
    before = _snapshot(project.folder)

    events = _run(project)
    assert len(events) == 1 and isinstance(events[0], Failed)
    failed = events[0]
    assert "method (run: lora, project: full)" in failed.message
    assert "learning_rate (run: 0.001, project: 0.0005)" in failed.message
    assert "--fresh" in failed.advice and "--keep-run-settings" in failed.advice
    assert _snapshot(project.folder) == before, "nothing was trained or written"

    # Continue with the run's own settings, as asked.
    events = _run(project, keep_run_settings=True)
    assert isinstance(events[-1], Finished) and events[0].start_step == 2 and events[0].run_dir == run_dir
    assert any("continues with its own settings" in m for m in _messages(events))
    assert Run.open(run_dir).method == "lora"
    assert [e.lr for e in events if isinstance(e, Step)] == [1e-3] * 4

    # Or start fresh with the project's new settings.
    events = _run(project, fresh=True)
    assert isinstance(events[-1], Finished) and events[0].run_dir != run_dir
    assert Run.open(events[0].run_dir).method == "full"


def test_cli_names_the_differences_and_both_ways_out(tmp_path, tiny_ddpm, image_folder, capsys):
    project = _stopped_lora_run(tmp_path, tiny_ddpm, image_folder)
    data = json.loads((project.folder / "project.json").read_text())
    data["config"]["rank"] = 8
    (project.folder / "project.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["train", str(project.folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rank (run: 4, project: 8)" in err
    assert "train --fresh" in err and "train --keep-run-settings" in err
    assert main(["train", str(project.folder), "--keep-run-settings"]) == 0
    captured = capsys.readouterr()
    assert "resuming at step 2" in captured.out and "rank (run: 4, project: 8)" in captured.err


def test_only_a_longer_run_needs_no_question_and_a_replanned_schedule_is_announced(
        tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=4, schedule="cosine")
    first = _run(project)
    assert isinstance(first[-1], Finished)
    events = _run(project, steps=8)
    assert isinstance(events[-1], Finished) and events[0].start_step == 4
    notes = [m for m in _messages(events) if "re-planned" in m]
    assert len(notes) == 1 and "cosine" in notes[0] and "4 to 8 steps" in notes[0]
    # The rate follows the longer curve from where the run stands: at step 5 of 8, not 0.
    lrs = [e.lr for e in events if isinstance(e, Step)]
    assert lrs[0] > 0 and lrs == sorted(lrs, reverse=True)
    # A constant schedule has nothing to re-plan: no note.
    flat = _project(tmp_path, tiny_ddpm, image_folder, name="flat", steps=2)
    _run(flat)
    assert not [m for m in _messages(_run(flat, steps=3)) if "re-planned" in m]


# --- finding 10: run folders deleted mid-run, orphans, damaged pictures ------------------------

def test_a_run_folder_deleted_mid_run_ends_in_one_sentence_and_is_not_recreated(tmp_path, tiny_ddpm,
                                                                                image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=6, checkpoint_every=2)
    events = []
    for event in train(TrainJob(load_project(project.folder))):
        events.append(event)
        if isinstance(event, Step) and event.step == 3:
            shutil.rmtree(events[0].run_dir)
    assert isinstance(events[-1], Failed)
    assert "deleted" in events[-1].message and str(events[0].run_dir.name) in events[-1].message
    assert not any(isinstance(e, Step) and e.step > 3 for e in events)
    assert not events[0].run_dir.exists(), "nothing recreated"
    assert not (project.folder / LOCK_FILE).exists()


def test_a_run_that_ends_before_its_first_checkpoint_leaves_no_folder(tmp_path, tiny_ddpm, image_folder,
                                                                     monkeypatch):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=4)
    commands = Commands()
    commands.stop()  # stopped while loading: nothing to save
    events = _run(project, commands)
    assert isinstance(events[-1], Stopped) and events[-1].checkpoint is None
    assert project.runs() == []

    original = Trainer.train_step

    def failing(self: Trainer) -> Any:
        if self.step >= 2:
            from transferstudio.core.errors import UserError
            raise UserError("Training became unstable.", "Lower the learning rate.")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", failing)
    events = _run(project)
    assert isinstance(events[-1], Failed) and project.runs() == []
    monkeypatch.setattr(Trainer, "train_step", lambda self: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError):
        _run(project)
    assert project.runs() == []


def test_orphan_runs_are_removed_and_cannot_hide_the_last_good_run(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=2)
    good = _run(project)[0].run_dir
    runs = project.folder / "runs"
    orphans = []
    for i, extra in enumerate(([], [".tmp-step-000003-abcd1234"])):
        orphan = runs / f"29990101-00000{i}"
        (orphan / "previews" / "step-000000").mkdir(parents=True)
        (orphan / "previews" / "step-000000" / "seed-1.png").write_bytes(b"png")
        (orphan / "config.json").write_text((good / "config.json").read_text())
        (orphan / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
        (orphan / "log.txt").write_text("started\n")
        (orphan / "checkpoints").mkdir()
        for name in extra:
            (orphan / "checkpoints" / name).mkdir()
            (orphan / "checkpoints" / name / "weights.safetensors").write_bytes(b"half")
        orphans.append(orphan)
    keep = runs / "29990101-000009"  # holds something else: never touched
    (keep / "checkpoints").mkdir(parents=True)
    (keep / "notes.txt").write_text("mine")
    incomplete = runs / "29990101-000008"  # a checkpoint folder without its marker: kept
    (incomplete / "checkpoints" / "step-000001").mkdir(parents=True)
    (incomplete / "config.json").write_text("{}")

    events = _run(project, steps=4)
    assert isinstance(events[-1], Finished)
    assert events[0].start_step == 2 and events[0].run_dir == good, "continues the last good run"
    assert not any(o.exists() for o in orphans)
    assert keep.exists() and (keep / "notes.txt").read_text() == "mine" and incomplete.exists()
    notes = [m for m in _messages(events) if "unfinished run" in m]
    assert len(notes) == 1 and all(o.name in notes[0] for o in orphans)


def test_pictures_damaged_during_training_are_reported(tmp_path, tiny_ddpm, image_folder):
    project = _project(tmp_path, tiny_ddpm, image_folder, steps=4)
    events = []
    victim = sorted(image_folder.glob("*.png"))[0]
    for event in train(TrainJob(load_project(project.folder))):
        events.append(event)
        if isinstance(event, Started):
            victim.write_bytes(b"not a picture any more")  # after the scan, before it is first read
    assert isinstance(events[-1], Finished)
    warnings = [e for e in events if isinstance(e, Message) and victim.name in e.text]
    assert len(warnings) == 1 and warnings[0].level == "warning"
    assert any(isinstance(e, Step) for e in events[:events.index(warnings[0])])
    assert victim.name in (events[0].run_dir / "log.txt").read_text()
