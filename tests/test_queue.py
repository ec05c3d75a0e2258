"""The training queue: the engine's file (no Qt) and `transferstudio queue` as a user types it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferstudio.cli import main
from transferstudio.core.events import Failed, Finished, Stopped
from transferstudio.project.queue import Queue, QueueError, queue_file


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(home))
    return home


def _queue(tmp_path: Path, *names: str) -> Queue:
    queue = Queue(tmp_path / "q" / "queue.json")
    for name in names:
        queue.add(tmp_path / name, "scratch" if name.endswith("-scratch") else "train")
    return queue


# --- engine ---------------------------------------------------------------------------------

def test_the_queue_lives_in_the_app_data_folder(user_home):
    assert queue_file() == user_home / "queue.json"
    assert Queue.load().entries == [] and Queue.load().problem == ""


def test_save_and_load_round_trip(tmp_path):
    queue = _queue(tmp_path, "a", "b-scratch")
    queue.entries[1].steps = 7
    queue.mark(queue.entries[0].id, "failed", "out of memory")
    queue.save()
    data = json.loads(queue.path.read_text())
    assert data["schema_version"] == 1 and len(data["entries"]) == 2

    again = Queue.load(queue.path)
    assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in queue.entries]
    a, b = again.entries
    assert a.project == (tmp_path / "a").resolve() and a.kind == "train" and a.state == "failed"
    assert a.message == "out of memory"
    assert b.kind == "scratch" and b.steps == 7 and b.state == "waiting" and b.describe().startswith("from-scratch")
    assert [p.name for p in queue.path.parent.iterdir()] == ["queue.json"]  # no temp file left


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    queue = _queue(tmp_path, "a")
    queue.save()
    before = queue.path.read_bytes()
    queue.add(tmp_path / "b")

    def refuse(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        queue.save()
    monkeypatch.undo()
    assert queue.path.read_bytes() == before
    assert [p.name for p in queue.path.parent.iterdir()] == ["queue.json"]
    assert len(Queue.load(queue.path).entries) == 1


@pytest.mark.parametrize("text, words", [
    ("{ not json", "Expecting"),
    ('{"entries": [{"project": "/x", "state": "exploded"}]}', "unknown state"),
    ('{"schema_version": 99, "entries": []}', "newer TransferStudio"),
    ('[1, 2]', "no list of entries"),
])
def test_a_damaged_file_is_set_aside_and_explained(tmp_path, text, words):
    path = tmp_path / "queue.json"
    path.write_text(text)
    queue = Queue.load(path)
    assert queue.entries == []
    assert "damaged" in queue.problem and words in queue.problem and "queue.json.damaged" in queue.problem
    assert (tmp_path / "queue.json.damaged").read_text() == text and not path.exists()
    queue.add(tmp_path / "p")
    queue.save()  # the queue works again
    assert len(Queue.load(path).entries) == 1

    path.write_text("garbage again")  # a second damaged file does not replace the first one kept aside
    assert "damaged" in Queue.load(path).problem
    assert (tmp_path / "queue.json.damaged").read_text() == text
    assert len(list(tmp_path.glob("queue.json.*.damaged"))) == 1


def test_move_remove_and_the_next_entry(tmp_path):
    queue = _queue(tmp_path, "a", "b", "c", "d")
    ids = [e.id for e in queue.entries]
    queue.move(3, 0)
    assert [e.name for e in queue.entries] == ["d", "a", "b", "c"]
    queue.move(0, 99)  # past the end: last
    assert [e.name for e in queue.entries] == ["a", "b", "c", "d"]
    assert queue.remove(1).name == "b"
    assert [e.id for e in queue.entries] == [ids[0], ids[2], ids[3]]
    with pytest.raises(QueueError, match="no entry 4"):
        queue.remove(3)
    with pytest.raises(QueueError):
        queue.move(-1, 0)

    assert queue.next_runnable().name == "a"
    queue.mark(ids[0], "done")
    queue.mark(ids[2], "failed", "no pictures")
    queue.mark(ids[3], "stopped", "stopped at step 3")
    assert queue.next_runnable().name == "d"  # a stopped entry continues when the queue runs again
    assert queue.clear_finished() == 1 and [e.name for e in queue.entries] == ["c", "d"]


def test_a_running_entry_left_by_a_crash_waits_again(tmp_path):
    queue = _queue(tmp_path, "a", "b", "c")
    a, b, c = (e.id for e in queue.entries)
    queue.mark(a, "running")  # owned by this (live) process: another reader must leave it alone
    queue.mark(b, "running")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    queue.entries[1].owner["pid"] = int(gone.stdout)  # a process that has ended
    queue.entries[1].owner["proc_start"] = ""
    queue.entries[2].state = "running"  # no owner recorded at all
    queue.save()

    again = Queue.load(queue.path)
    assert [e.state for e in again.entries] == ["running", "waiting", "waiting"]
    assert {e.id for e in again.recovered} == {b, c}
    assert "continues from its last checkpoint" in again.entries[1].message
    assert again.next_runnable().id == b
    with pytest.raises(QueueError, match="training now"):
        again.remove(0)


# --- command line -----------------------------------------------------------------------------

def _new_project(folder: Path, backbone: Path, images: Path, steps: int = 3) -> Path:
    assert main(["new", str(folder), "--backbone", str(backbone), "--images", str(images),
                 "--steps", str(steps), "--preview-every", "0", "--rank", "4"]) == 0
    data = json.loads((folder / "project.json").read_text())
    data["config"].update(preview_steps=2, preview_seeds=[1])
    (folder / "project.json").write_text(json.dumps(data))
    return folder


def test_cli_add_list_move_remove(tmp_path, tiny_ddpm, image_folder, capsys):
    a = _new_project(tmp_path / "alpha", tiny_ddpm, image_folder)
    b = _new_project(tmp_path / "beta", tiny_ddpm, image_folder)
    capsys.readouterr()
    assert main(["queue", "list"]) == 0
    assert "empty" in capsys.readouterr().out
    assert main(["queue", "add", str(a)]) == 0
    assert main(["queue", "add", str(b), "--scratch", "--steps", "5"]) == 0
    assert main(["queue", "add", str(a), "--steps", "4"]) == 0
    assert "queued as 3" in capsys.readouterr().out

    assert main(["queue", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 3 and all("waiting" in line for line in lines)
    assert "from-scratch baseline of beta, 5 steps" in lines[1]

    assert main(["queue", "move", "3", "1"]) == 0
    assert [(e.name, e.steps) for e in Queue.load().entries] == [("alpha", 4), ("alpha", None), ("beta", 5)]
    assert main(["queue", "remove", "2"]) == 0
    assert [(e.name, e.kind) for e in Queue.load().entries] == [("alpha", "train"), ("beta", "scratch")]
    capsys.readouterr()

    assert main(["queue", "remove", "9"]) == 2
    assert "no entry 9" in capsys.readouterr().err
    assert main(["queue", "add", str(tmp_path / "nothing")]) == 2
    assert "No project found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["queue", "add", str(a), "--steps", "0"])
    assert len(Queue.load().entries) == 2


def test_cli_queue_run_trains_two_projects_in_order(tmp_path, tiny_ddpm, image_folder, capsys):
    a = _new_project(tmp_path / "alpha", tiny_ddpm, image_folder)
    b = _new_project(tmp_path / "beta", tiny_ddpm, image_folder)
    assert main(["queue", "add", str(b), "--scratch"]) == 0
    assert main(["queue", "add", str(a), "--steps", "2"]) == 0
    capsys.readouterr()

    assert main(["queue", "run"]) == 0
    out = capsys.readouterr().out
    assert out.index("queue 1/2: from-scratch baseline of beta") < out.index("queue 2/2: alpha")
    assert "finished at step 3" in out and "finished at step 2" in out and "queue finished: 2 trained" in out
    entries = Queue.load().entries
    assert [e.state for e in entries] == ["done", "done"]
    assert entries[0].run  # the baseline remembers its run (to continue it, not start another)
    baseline = json.loads((b / "runs" / entries[0].run / "config.json").read_text())
    assert baseline.get("baseline") == "scratch"
    for project, steps in ((a, 2), (b, 3)):
        done = [p for p in (project / "runs").glob("*/checkpoints/step-*") if (p / "COMPLETE").is_file()]
        assert [int(p.name[5:]) for p in done] == [steps]

    assert main(["queue", "run"]) == 0  # nothing waiting: nothing trains
    assert "queue finished: 0 trained" in capsys.readouterr().out


def test_cli_queue_run_stops_on_ctrl_c_and_goes_on_after_a_failure(tmp_path, tiny_ddpm, image_folder,
                                                                    monkeypatch, capsys):
    """The queue's own decisions, with scripted engine ends (the real engine's stop is tested with `train`)."""
    import transferstudio.cli as cli

    a = _new_project(tmp_path / "alpha", tiny_ddpm, image_folder)
    for _ in range(3):
        assert main(["queue", "add", str(a)]) == 0
    ends = [Failed("The pictures folder is empty.", "Add pictures."), Stopped(step=2, checkpoint=tmp_path / "c"),
            Finished(step=3, final_loss=0.1, checkpoint=None, weights=None),
            Finished(step=3, final_loss=0.1, checkpoint=None, weights=None)]
    monkeypatch.setattr(cli, "_queue_entry_events", lambda entry, commands: iter([ends.pop(0)]))
    capsys.readouterr()

    assert main(["queue", "run"]) == 130
    assert "2 entries left" in capsys.readouterr().err
    states = [(e.state, e.message) for e in Queue.load().entries]
    assert states[0] == ("failed", "The pictures folder is empty. Add pictures.")
    assert states[1] == ("stopped", "stopped at step 2; continues from its checkpoint")
    assert states[2][0] == "waiting"

    assert main(["queue", "run"]) == 0  # the stopped entry continues first, then the rest
    assert [e.state for e in Queue.load().entries] == ["failed", "done", "done"]


def test_cli_queue_run_refuses_while_another_process_runs_it(tmp_path, capsys):
    queue = _queue(tmp_path, "a")
    queue.path = queue_file()
    queue.mark(queue.entries[0].id, "running")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        queue.entries[0].owner.update(pid=sleeper.pid, proc_start="")
        queue.save()
        assert main(["queue", "run"]) == 2
        assert f"already running in another process (pid {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert Queue.load().entries[0].state == "waiting"  # its runner is gone: waiting again
