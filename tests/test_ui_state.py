"""The window's view-model (transferstudio/qt/project_state.py): signals only on a real change,
`bind` sets the current value and follows, a disconnected binding stops, and opening another
project makes every panel follow with nothing of the previous one left. Offscreen Qt."""
from __future__ import annotations

import pytest
from PySide6.QtWidgets import QCheckBox, QLabel

from test_ui_app import LONG, make_window, settings, user_home  # noqa: F401  (the window fixtures)
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project
from transferstudio.qt.project_state import Bindings, ModelCapabilities, ProjectState, bind, watch


def _recorder(state: ProjectState) -> dict[str, list]:
    seen: dict[str, list] = {name: [] for name in ProjectState.PROPERTIES}
    for name in ProjectState.PROPERTIES:
        state.signal(name).connect(lambda value, n=name: seen[n].append(value))
    return seen


def test_signals_fire_only_on_change(qtbot):
    state = ProjectState()
    seen = _recorder(state)
    state.dirty = True
    state.dirty = True
    state.dirty = False
    assert seen["dirty"] == [True, False]
    state.config = TrainConfig(steps=10)
    state.config = TrainConfig(steps=10)  # equal settings: no change
    assert len(seen["config"]) == 1
    state.run_state = "running"
    state.run_state = "paused"  # still running: `running` says nothing new
    state.run_state = "idle"
    assert seen["run_state"] == ["running", "paused", "idle"] and seen["running"] == [True, False]
    with pytest.raises(ValueError):
        state.run_state = "flying"
    caps = ModelCapabilities.from_inspection({"usable": True, "text": True, "methods": ["lora"], "family": "sd"})
    state.capabilities = caps
    state.capabilities = ModelCapabilities.from_inspection({"usable": True, "text": True, "methods": ["lora"],
                                                             "family": "sd"})
    assert seen["capabilities"] == [caps] and caps.takes_prompts and caps.methods == ("lora",)


def test_open_replaces_everything_before_any_signal(qtbot, tmp_path):
    state = ProjectState()
    state.update(dirty=True, capabilities=ModelCapabilities(usable=True))
    project = type("P", (), {"config": TrainConfig(steps=7)})()
    views = []
    state.project_changed.connect(lambda p: views.append((p, state.config, state.capabilities, state.dirty)))
    state.open(project, runs=[tmp_path / "run-1"])
    assert views == [(project, project.config, None, False)]  # the slot saw the new values only
    assert state.runs == (tmp_path / "run-1",)
    again = type("P", (), {"config": TrainConfig(steps=7)})()  # equal, but another project: it changes
    state.open(again)
    assert len(views) == 2 and state.runs == ()


def test_bind_sets_the_current_value_then_follows_until_disconnected(qtbot):
    state = ProjectState()
    state.dirty = True
    box = QCheckBox()
    qtbot.addWidget(box)
    handle = bind(state, "dirty", box.setChecked)
    assert box.isChecked()  # the current value at once
    state.dirty = False
    assert not box.isChecked()
    handle.disconnect()
    handle.disconnect()  # twice is harmless
    state.dirty = True
    assert not box.isChecked() and not handle.connected

    label = QLabel()
    qtbot.addWidget(label)
    calls = []
    bindings = Bindings()
    bindings.bind(state, "running", label.setEnabled, transform=lambda running: not running)
    bindings.watch(state, ("project", "running"), lambda: calls.append((state.project, state.running)))
    assert label.isEnabled() and calls == [(None, False)]
    state.run_state = "starting"
    assert not label.isEnabled() and calls[-1] == (None, True)
    state.update(run_state="idle", dirty=False)  # one update: one call, however many names changed
    assert label.isEnabled() and len(calls) == 3
    bindings.disconnect()
    state.run_state = "running"
    assert label.isEnabled() and len(calls) == 3


def test_a_binding_ends_with_its_widget(qtbot):
    state = ProjectState()
    label = QLabel()
    handle = bind(state, "dirty", label.setVisible)
    label.deleteLater()
    qtbot.waitUntil(lambda: not handle.connected, timeout=2000)
    state.dirty = True  # no call into the deleted widget
    with pytest.raises(AttributeError):
        watch(state, ("dirt",), lambda: None)


@pytest.mark.usefixtures("no_worker_threads_left")
def test_opening_another_project_makes_every_panel_follow(qtbot, make_window, tmp_path, tiny_ddpm, image_folder):
    first = create_project(tmp_path / "one", backbone=tiny_ddpm, images=image_folder, name="One",
                           config=TrainConfig(steps=33, trigger="zqx"))
    other_images = tmp_path / "other-images"
    other_images.mkdir()
    import shutil

    for png in sorted(image_folder.glob("*.png"))[:2]:
        shutil.copy(png, other_images / png.name)
    second = create_project(tmp_path / "two", backbone=tiny_ddpm, images=other_images, name="Two",
                            config=TrainConfig(steps=44))
    window = make_window()
    state = window.state
    projects = []
    state.project_changed.connect(projects.append)
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        assert window.open_project(first.folder)
    assert state.project is window.project and state.config.steps == 33
    assert state.capabilities is not None and state.capabilities.usable and not state.capabilities.takes_prompts
    window.settings_form.editors["steps"].setValue(35)
    assert state.dirty and state.config.steps == 35 and window.windowTitle().startswith("One*")
    window.answers.replies = [QMessageBoxDiscard()]  # leave the edit unsaved
    with qtbot.waitSignal(window.images_panel.scanned, timeout=LONG):
        with qtbot.waitSignal(window.inspected, timeout=LONG):
            assert window.open_project(second.folder)
    assert [p.name for p in projects] == ["One", "Two"]
    assert not state.dirty and state.config.steps == 44 and window.windowTitle().startswith("Two —")
    assert window.settings_form.config().steps == 44
    assert window.images_panel.folder() == str(other_images) and window.images_panel.model.rowCount() == 2
    assert window.backbone_panel.path() == str(tiny_ddpm)
    assert window.train_view.project is state.project and window.train_view.loss.n == 0
    assert window.compare_view.project is state.project and window.report_view.project is state.project
    assert window.act_start.isEnabled() and window.act_close.isEnabled()
    window.close_project()
    assert state.project is None and state.capabilities is None and not window.act_save.isEnabled()
    assert window.stack.currentWidget() is window.welcome


def QMessageBoxDiscard():  # noqa: N802
    from PySide6.QtWidgets import QMessageBox

    return QMessageBox.StandardButton.Discard
