"""The window with a GAN project: the loss chart shows the generator and the discriminator and
the discriminator's accuracy; Compare draws both sides from the same latents with a truncation
slider instead of denoising steps and an adapter strength."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings

from tests.test_gan import new_project
from transferstudio import cli

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py
LONG = 180_000


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(tmp_path / "home"))


@pytest.fixture()
def window(qtbot, tmp_path):
    from transferstudio.ui.main_window import MainWindow

    win = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    win.ask = lambda *a, **k: None
    win.problems = []
    win.show_problem = lambda *a: win.problems.append(a)
    qtbot.addWidget(win)
    win.show()
    return win


def test_gan_project_charts_both_networks_and_compares_with_truncation(qtbot, window, tmp_path):
    project = new_project(tmp_path, "project", "--preview-every", "5", steps=10)
    assert cli.main(["train", str(project)]) == 0
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        assert window.open_project(project, offer_continue=False)

    view = window.train_view
    assert {"loss: generator", "loss: discriminator", "d_accuracy", "augment_p"} <= set(view.series)
    assert view.series["loss: generator"].n == 10
    assert not view.smooth_curve.isVisible()  # the phases' own curves replace the single loss
    assert not view.signal_plot.isHidden()
    assert view.preview_steps() == [0, 5, 10]

    compare = window.compare_view
    assert not compare._truncation_row.isHidden() and compare.steps.isHidden()
    assert compare._strength_row.isHidden()
    compare.count.setValue(3)
    with qtbot.waitSignal(compare.compared, timeout=LONG) as got:
        compare.generate()
    qtbot.waitUntil(lambda: not compare.is_busy(), timeout=10_000)
    full = got.args[0]
    assert len(full.base) == len(full.trained) == 3 and full.base != full.trained

    compare.truncation.setValue(0)  # ψ = 0: every latent gives the model's average picture
    with qtbot.waitSignal(compare.compared, timeout=LONG) as got:
        pass
    qtbot.waitUntil(lambda: not compare.is_busy(), timeout=10_000)
    average = got.args[0]
    assert average.trained[0] == average.trained[1] == average.trained[2]
    assert not window.problems


def test_a_new_gan_project_from_the_dialog_takes_the_family_settings(qtbot, window, tmp_path):
    """The New Project dialog offers LoRA first; a GAN trains both networks fully, in batches of
    16, at its own learning rate, with EMA: the project the window makes says so once the model
    is inspected."""
    from tests.test_gan import make_pictures, make_tiny_gan
    from transferstudio.project.project import load_project

    backbone = make_tiny_gan(tmp_path / "gan")
    pictures = make_pictures(tmp_path / "pictures")

    class Dialog:
        def values(self):
            return {"name": "cities", "folder": str(tmp_path / "cities"), "backbone": str(backbone),
                    "images": str(pictures), "method": "lora"}

    with qtbot.waitSignal(window.inspected, timeout=LONG):
        window._create_from_dialog(Dialog())
    config = load_project(tmp_path / "cities").config
    assert (config.method, config.batch_size, config.learning_rate, config.ema) == ("full", 16, 2e-3, True)
    assert window.settings_form.config().batch_size == 16


def test_a_gan_trains_from_the_window_and_exports_its_generator(qtbot, window, tmp_path):
    """Start in the window trains both networks to the end (the chart fills live), and the export
    dialog's formats for it are the generator ones."""
    from transferstudio.qt import tasks

    project = new_project(tmp_path, "project", "--preview-every", "3", steps=6)
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        assert window.open_project(project, offer_continue=False)
    view = window.train_view
    with qtbot.waitSignal(view.run_finished, timeout=LONG) as ended:
        window.start_training()
    assert type(ended.args[0]).__name__ == "Finished"
    assert view.series["loss: discriminator"].n == 6 and view.preview_steps() == [0, 3, 6]
    assert [key for key, _, _ in tasks.export_formats("gan", "full")] == ["generator", "onnx", "gan-folder"]
    assert not window.problems
