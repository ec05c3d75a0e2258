"""The Train tab's charts beside the loss and the CSV export of a run's numbers (issue 17)."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication

from test_ui_app import LONG, fast_config, make_window, open_and_inspect, settings  # noqa: F401
from transferstudio.core.events import Finished, Step
from transferstudio.project.project import create_project
from transferstudio.qt import history

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py


@pytest.fixture(scope="module")
def validated(tmp_path_factory, tiny_ddpm):
    """A finished 8-step run with a held-out split measured every 2 steps (batch 2)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_ddpm import make_images

    from transferstudio.training.trainer import TrainJob, train

    root = tmp_path_factory.mktemp("charts")
    proj = create_project(root / "proj", backbone=tiny_ddpm, images=make_images(root / "images", n=6),
                          name="Charted squares",
                          config=fast_config(8, learning_rate=5e-3, batch_size=2, validation="2",
                                             validation_every=2, warmup_steps=4))
    assert isinstance(list(train(TrainJob(proj)))[-1], Finished)
    return proj


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_lr_and_speed_charts_of_a_reloaded_run_and_its_csv(qtbot, make_window, validated, tmp_path):
    window = make_window()
    open_and_inspect(qtbot, window, validated.folder)
    view = window.train_view
    run_dir = view.run_dir
    assert run_dir is not None and (run_dir / "metrics.jsonl").is_file()
    rows = _rows(run_dir)

    # The loss chart stays the main one, with its validation curve and best marker.
    assert view.smooth_curve.getData()[0] is not None and len(view.smooth_curve.getData()[0]) == len(rows)
    assert len(view.val_steps) >= 2 and view.best_marker.isVisible()

    # Learning rate under it, by default: every step's lr from metrics.jsonl.
    assert view.extra_key() == "lr" and view.extra_plot.isVisibleTo(window)
    xs, ys = view.extra_curve.getData()
    assert list(xs) == [r["step"] for r in rows]
    assert np.allclose(ys, [r["lr"] for r in rows])
    assert ys[0] < ys[-1]  # the warm-up shows
    # Images per second instead: worked out from the step times, positive where known.
    view.set_extra_chart("images/s")
    xs, ys = view.extra_curve.getData()
    assert len(xs) >= len(rows) - 1 and np.all(ys > 0)
    assert "images/s" in view.extra_plot.getPlotItem().getAxis("left").labelText
    view.set_extra_chart("")
    assert not view.extra_plot.isVisibleTo(window)

    # Export as CSV: one row per step, validation only where it was measured.
    target = view.export_metrics_csv(tmp_path / "out" / "numbers")
    assert target == tmp_path / "out" / "numbers.csv" and target.is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    table = _csv(target)
    assert list(table[0]) == list(history.CSV_COLUMNS)  # one phase: no per-phase columns
    if table[0]["step"] == "0":  # the untrained model's validation loss, before any step
        assert table[0]["loss"] == "" and table[0]["validation loss"]
        table_steps = table[1:]
    else:
        table_steps = table
    assert [int(r["step"]) for r in table_steps] == [r["step"] for r in rows]
    for got, row in zip(table_steps, rows):
        assert float(got["loss"]) == pytest.approx(row["loss"])
        assert float(got["lr"]) == pytest.approx(row["lr"])
        assert float(got["time"]) == pytest.approx(row["time"])
    assert float(table[-1]["smoothed loss"]) == pytest.approx(float(view.loss.smoothed[-1]))
    assert table_steps[0]["images/s"] == "" and float(table[-1]["images/s"]) > 0
    measured = {int(r["step"]): float(r["validation loss"]) for r in table if r["validation loss"]}
    assert sorted(measured) == [int(s) for s in view.val_steps]
    assert np.allclose([measured[int(s)] for s in view.val_steps], view.val_losses)


def test_live_steps_draw_lr_and_speed(qtbot, make_window, validated):
    window = make_window()
    open_and_inspect(qtbot, window, validated.folder)
    view = window.train_view
    n = len(_rows(view.run_dir))
    view._on_steps([Step(step=n + i, total=20, loss=0.1, lr=1e-4 * i, images_per_s=3.0 + i, eta_s=1.0,
                         elapsed_s=float(i)) for i in range(1, 4)])
    QApplication.processEvents()
    xs, ys = view.extra_curve.getData()
    assert list(xs[-3:]) == [n + 1, n + 2, n + 3] and np.allclose(ys[-3:], [1e-4, 2e-4, 3e-4])
    view.set_extra_chart("images/s")
    xs, ys = view.extra_curve.getData()
    assert np.allclose(ys[-3:], [4.0, 5.0, 6.0])
    assert view.loss.n == n + 3 and view.best_marker.isVisible()  # the loss chart carries on


def test_csv_has_a_column_per_phase_and_live_speeds():
    table = {"step": np.array([1.0, 2.0, 3.0]), "loss": np.array([0.5, 0.4, np.nan]),
             "lr": np.array([1e-3, 1e-3, 1e-3]), "time": np.array([0.1, 0.2, 0.3]),
             "images/s": np.array([np.nan, 10.0, 10.0]),
             "loss: generator": np.array([0.7, 0.6, 0.5]), "loss: discriminator": np.array([0.3, 0.2, 0.1])}
    text = history.metrics_csv(table, np.array([0.5, 0.45, 0.45]), (np.array([2.0]), np.array([0.9])),
                               rates={3: 12.5})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(history.CSV_COLUMNS) + ["loss: generator", "loss: discriminator"]
    assert [r["validation loss"] for r in rows] == ["", "0.9", ""]
    assert [r["images/s"] for r in rows] == ["", "10.0", "12.5"]  # the run's own report wins
    assert rows[2]["loss"] == "" and rows[2]["loss: discriminator"] == "0.1"


def test_speed_from_step_times_ignores_a_pause_and_restarts_after_a_resume():
    steps = np.array([1, 2, 3, 4, 5, 10, 11], dtype=float)
    times = np.array([0.0, 1.0, 2.0, 30.0, 31.0, 0.5, 1.5])  # a preview at step 4; resumed at 10
    rates = history.rates_from_times(steps, times, 4)
    assert np.isnan(rates[0]) and np.isnan(rates[5])
    assert rates[1] == rates[2] == 4.0 and rates[4] == 4.0  # the 28 s pause does not count
    assert rates[6] == 4.0
