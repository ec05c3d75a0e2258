"""The model panel says how close the base model is to the project's pictures (the domain check),
checked in the background when a project opens and shown again at once while it still matches.

Offscreen Qt; every wait is on a signal, never a sleep."""
from __future__ import annotations

import pytest

from test_ui_app import LONG, make_window, settings, user_home  # noqa: F401  (the window fixtures)
from transferstudio.project.project import create_project

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py


def test_the_model_panel_shows_the_verdict_and_then_the_saved_one_at_once(qtbot, make_window, tmp_path,
                                                                            tiny_ddpm, image_folder):
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder, name="Squares")
    window = make_window()
    panel = window.backbone_panel
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        assert window.open_project(project.folder)
    assert panel.domain_box.isVisible() and panel.domain_bar.isVisible()  # the check is on its way
    assert panel.domain_advice.text().startswith("Checking how close")
    with qtbot.waitSignal(window.domain_checked, timeout=LONG) as checked:
        pass
    info = checked.args[0]
    assert info["verdict"] in ("close", "related", "far")
    assert panel.domain() == info
    assert panel.domain_verdict.text().endswith(f"· {info['score']:.2f}")
    assert info["verdict"] in panel.domain_verdict.text().lower()
    assert panel.domain_advice.text() == info["advice"] and panel.domain_detail.text() == info["explanation"]
    assert not panel.domain_bar.isVisible()
    assert (project.folder / "domain-check.json").is_file()
    qtbot.waitUntil(lambda: window.checks.domain_task is None, timeout=LONG)

    again = make_window()  # the same project again: the saved check shows with no measuring
    with qtbot.waitSignal(again.domain_checked, timeout=LONG) as shown:
        assert again.open_project(project.folder)
    assert shown.args[0] == info and again.checks.domain_task is None
    assert again.backbone_panel.domain_verdict.text() == panel.domain_verdict.text()


def test_a_check_that_cannot_run_is_one_line_and_the_window_carries_on(qtbot, make_window, tmp_path, tiny_ddpm):
    empty = tmp_path / "empty"
    empty.mkdir()
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=empty, name="Nothing yet")
    window = make_window()
    with qtbot.waitSignal(window.domain_checked, timeout=LONG) as checked:
        assert window.open_project(project.folder)
    assert checked.args[0] is None
    panel = window.backbone_panel
    text = panel.domain_advice.text()
    assert text.startswith("Could not check how close this model is to your pictures: No images found")
    assert "\n" not in text and panel.domain_advice.level() == "warning"
    assert panel.domain() is None and not panel.domain_bar.isVisible()
    assert window.inspection["usable"] and not window.answers.problems  # no dialog, the model is still ready
    qtbot.waitUntil(lambda: window.checks.domain_task is None, timeout=LONG)
