"""Training ▸ Queue…: two projects queued in the window and both trained, one after the other,
through the window's own training path (real tiny runs)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from test_ui_app import LONG, fast_config, make_window, open_and_inspect, settings, user_home  # noqa: F401
from transferstudio.core.events import Finished
from transferstudio.project.project import create_project
from transferstudio.project.queue import Queue

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py


def _complete_steps(project: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (project / "runs").glob("*/checkpoints/step-*")
                  if (p / "COMPLETE").is_file())


def test_two_queued_projects_are_both_trained(qtbot, make_window, tmp_path, tiny_ddpm, image_folder):
    a = create_project(tmp_path / "alpha", backbone=tiny_ddpm, images=image_folder, name="Alpha",
                       config=fast_config(3)).folder
    b = create_project(tmp_path / "beta", backbone=tiny_ddpm, images=image_folder, name="Beta",
                       config=fast_config(2)).folder
    window = make_window()
    dialog = window.open_queue()
    assert not dialog.add_button.isEnabled() and not dialog.run_button.isEnabled()

    open_and_inspect(qtbot, window, a)
    assert dialog.add_button.isEnabled()
    dialog.add_button.click()
    open_and_inspect(qtbot, window, b)
    dialog.add_baseline_button.click()
    dialog.add_button.click()
    assert dialog.tree.topLevelItemCount() == 3
    assert dialog.tree.topLevelItem(1).text(1) == "from-scratch baseline of beta"

    # Reorder: Beta's own run first, then Alpha, then Beta's baseline.
    dialog._select(dialog.tree.topLevelItem(2).data(0, Qt.ItemDataRole.UserRole))
    dialog.up_button.click()
    dialog.up_button.click()
    assert [dialog.tree.topLevelItem(i).text(1) for i in range(3)] == [
        "beta", "alpha", "from-scratch baseline of beta"]
    assert not dialog.up_button.isEnabled() and dialog.down_button.isEnabled()
    assert [e.name for e in Queue.load().entries] == ["beta", "alpha", "beta"]  # saved at once

    ended: list[tuple[str, str]] = []
    dialog.runner.entry_ended.connect(lambda entry_id, state: ended.append((entry_id, state)))
    with qtbot.waitSignal(dialog.runner.finished, timeout=3 * LONG):
        dialog.run_button.click()
        assert dialog.run_button.text() == "Stop Queue"
    assert [state for _, state in ended] == ["done", "done", "done"]
    entries = Queue.load().entries
    assert [(e.state, e.message) for e in entries] == [("done", "finished at step 2"), ("done", "finished at step 3"),
                                                      ("done", "finished at step 2")]
    assert [dialog.tree.topLevelItem(i).text(2) for i in range(3)] == ["Done"] * 3
    assert _complete_steps(a) == [3] and _complete_steps(b) == [2, 2]  # Beta: its own run and its baseline
    assert window.project.folder == b and not window.train_view.is_running()
    assert isinstance(window.train_view.worker.end_event, Finished)
    assert dialog.run_button.text() == "Run Queue" and not dialog.run_button.isEnabled()
    assert window.answers.problems == [] and window.answers.questions == []

    dialog._select(entries[0].id)
    dialog.remove_button.click()
    assert [e.id for e in Queue.load().entries] == [entries[1].id, entries[2].id]


def test_stop_queue_stops_the_run_saved_and_leaves_the_rest_waiting(qtbot, make_window, tmp_path, tiny_ddpm,
                                                                    image_folder):
    a = create_project(tmp_path / "alpha", backbone=tiny_ddpm, images=image_folder, name="Alpha",
                       config=fast_config(400)).folder
    queue = Queue.load()
    queue.add(a)
    queue.add(a, "scratch")
    queue.save()
    window = make_window()
    dialog = window.open_queue()
    assert dialog.tree.topLevelItemCount() == 2 and dialog.run_button.isEnabled()

    with qtbot.waitSignal(window.train_view.steps_received, timeout=LONG):
        dialog.run_button.click()
    assert Queue.load().entries[0].state == "running"
    with qtbot.waitSignal(window.train_view.run_finished, timeout=LONG):
        dialog.run_button.click()  # Stop Queue
    entries = Queue.load().entries
    assert entries[0].state == "stopped" and "continues from its checkpoint" in entries[0].message
    assert entries[1].state == "waiting"
    assert not dialog.runner.active and dialog.run_button.text() == "Run Queue"
    assert not window.train_view.is_running()
