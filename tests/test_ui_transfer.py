"""The window's transfer-learning checks (issue 15): the validation curve after a run and the
from-scratch baseline queued behind the run that is going."""
from __future__ import annotations

import pytest

from test_ui_app import LONG, fast_config, make_window, open_and_inspect, settings, user_home  # noqa: F401
from tiny_ddpm import make_images
from transferstudio.project.project import create_project
from transferstudio.project.run import project_runs

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py


def test_a_baseline_queued_during_a_run_starts_after_it(qtbot, make_window, tmp_path, tiny_ddpm):
    config = fast_config(4)
    config.validation, config.validation_every = "2", 2
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=make_images(tmp_path / "img", n=10),
                             name="Squares", config=config)
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    with qtbot.waitSignal(window.train_view.run_started, timeout=LONG):
        window.start_training()
    window.act_baseline.trigger()  # while the first run goes: queued
    assert "starts when this run ends" in window.train_view.log.toPlainText()
    with qtbot.waitSignal(window.train_view.run_started, timeout=LONG):
        pass  # the baseline, started by the window once the first run ended
    qtbot.waitUntil(lambda: not window.train_view.is_running(), timeout=LONG)
    normal, baseline = project_runs(project)
    assert normal.baseline is None and normal.trained_step == 4
    assert baseline.baseline == "scratch" and baseline.trained_step == 4
    # the chart shows the validation curve of the run on screen, with its best step
    assert list(window.train_view.val_steps) == [0, 2, 4] and window.train_view.best_step is not None
    assert "best at step" in window.train_view.validation_label.text()


def test_the_report_tab_makes_and_shows_the_runs_report(qtbot, make_window, tmp_path, tiny_ddpm):
    from transferstudio.core.events import Finished
    from transferstudio.training.trainer import TrainJob, train

    config = fast_config(3)
    config.validation, config.validation_every = "2", 1
    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=make_images(tmp_path / "img", n=10),
                             name="Squares", config=config)
    assert [e for e in train(TrainJob(project)) if isinstance(e, Finished)]
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    view = window.report_view
    assert view.run.count() == 1 and "No report of this run yet" in view.status.text()
    with qtbot.waitSignal(view.report_ready, timeout=LONG) as made:
        view.make_button.click()
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=LONG)
    html = made.args[0]
    assert html.endswith("report.html") and str(project_runs(project)[0].folder) in html
    text = view.browser.toPlainText()
    assert "Transfer report" in text and "Best step by validation loss" in text
    assert view.open_button.isEnabled()
