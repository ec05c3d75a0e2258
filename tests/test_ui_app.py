"""The desktop window, driven like a person would, over real (tiny) training runs.

Offscreen Qt; every wait is on a signal (or a condition qtbot polls), never a sleep.
Dialogs that would block (questions, problems, "where did it move") are replaced per window.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from transferstudio.core.events import Finished, Step, Stopped  # noqa: E402
from transferstudio.project.config import TrainConfig  # noqa: E402
from transferstudio.project.project import create_project, load_project  # noqa: E402
from transferstudio.qt.workers import TrainingWorker  # noqa: E402

Btn = QMessageBox.StandardButton
pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py

LONG = 180_000  # ms: generous for loading a model on a busy 2-core machine


def fast_config(steps: int, **kw: Any) -> TrainConfig:
    """Tiny runs: few preview seeds and denoising steps, checkpoints only when asked/at the end."""
    values = dict(steps=steps, preview_steps=2, preview_seeds=[1, 2], preview_every=0,
                  checkpoint_every=10_000, rank=4, alpha=4.0, learning_rate=1e-3)
    values.update(kw)
    return TrainConfig(**values)


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(home))
    return home


@pytest.fixture()
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


class Answers:
    """Scripted replies to the window's questions; records the problems it shows."""

    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.questions: list[str] = []
        self.problems: list[tuple[str, str, str]] = []
        self.located: dict[str, str] = {}

    def ask(self, title: str, text: str, buttons: Any = None, default: Any = Btn.Yes) -> Any:
        self.questions.append(title)
        return self.replies.pop(0) if self.replies else default

    def show_problem(self, title: str, message: str, advice: str = "") -> None:
        self.problems.append((title, message, advice))

    def locate(self, what: str, old_path: str, pick_folder: bool) -> str | None:
        return self.located.get(what)


@pytest.fixture()
def make_window(qtbot, settings):
    from transferstudio.ui.main_window import MainWindow

    def make() -> Any:
        window = MainWindow(settings)
        answers = Answers()
        window.ask = answers.ask
        window.show_problem = answers.show_problem
        window.locate = answers.locate
        window.answers = answers
        qtbot.addWidget(window)
        window.show()
        return window

    return make


@pytest.fixture()
def project(tmp_path, tiny_ddpm, image_folder):
    return create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder, name="Squares",
                          config=fast_config(200))


def open_and_inspect(qtbot, window, folder) -> None:
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        assert window.open_project(folder)


def start_and_wait_started(qtbot, window) -> Any:
    with qtbot.waitSignal(window.train_view.run_started, timeout=LONG) as started:
        window.start_training()
    return started.args[0]


def wait_run_end(qtbot, window) -> Any:
    with qtbot.waitSignal(window.train_view.run_finished, timeout=LONG) as ended:
        pass
    return ended.args[0]


def complete_checkpoint(run_dir: Path) -> Path:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "COMPLETE").is_file())
    assert done, f"no complete checkpoint in {run_dir}"
    return done[-1]


def checkpoint_loads(checkpoint: Path) -> int:
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "weights.safetensors")
    assert weights and all(k.startswith("unet.") for k in weights)
    return json.loads((checkpoint / "state.json").read_text())["step"]


# --- tests ------------------------------------------------------------------------------------

def test_main_window_import_leaves_torch_out():
    code = ("import sys; import transferstudio.ui.main_window; "
            "bad = [m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_create_project_train_pause_resume_to_the_end(qtbot, make_window, tmp_path, tiny_ddpm, image_folder):
    window = make_window()
    dialog = window.new_project()
    dialog.name_edit.setText("Bright squares")
    dialog.folder_picker.set_path(str(tmp_path / "new-project"))
    dialog.backbone_picker.set_path(str(tiny_ddpm))
    dialog.images_picker.set_path(str(image_folder))
    qtbot.waitUntil(dialog.is_valid, timeout=LONG)  # the model and the pictures are checked on workers
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        with qtbot.waitSignal(window.project_opened):
            dialog.accept()
    assert window.windowTitle() == "Bright squares — TransferStudio"
    assert window.inspection["usable"]

    window.settings_form.set_config(fast_config(24))
    view = window.train_view
    started = start_and_wait_started(qtbot, window)
    assert started.start_step == 0 and started.total_steps == 24

    with qtbot.waitSignal(view.worker.paused, timeout=LONG) as paused:
        view.pause()
    assert view.state == "paused" and window.settings_form.is_running()
    with qtbot.waitSignal(view.worker.resumed, timeout=LONG):
        view.resume()
    assert paused.args[0] >= 1

    with qtbot.waitSignal(view.preview_added, timeout=LONG, check_params_cb=lambda step: step == 24):
        pass
    end = wait_run_end(qtbot, window)
    assert isinstance(end, Finished) and end.step == 24
    assert view.loss.n == 24  # every step reached the chart, throttled or not
    assert list(view.loss.steps) == list(range(1, 25))
    assert view.preview_steps()[0] == 0 and view.preview_steps()[-1] == 24
    assert view.gallery.image_count() == 2
    assert view.progress.value() == 24 and view.state == "idle"
    assert not window.settings_form.is_running()
    assert window.compare_view.generate_button.isEnabled()
    assert window.answers.problems == []

    # Going back in the gallery shows the untrained model's samples.
    view.show_preview_index(0)
    assert "untrained" in view.gallery_title.text()


def test_stop_saves_and_reopening_offers_to_continue(qtbot, make_window, project):
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    start_and_wait_started(qtbot, window)
    with qtbot.waitSignal(window.train_view.steps_received, timeout=LONG):
        pass
    window.train_view.stop()
    end = wait_run_end(qtbot, window)
    assert isinstance(end, Stopped) and 1 <= end.step < 200
    run_dir = load_project(project.folder).latest_run()
    assert checkpoint_loads(complete_checkpoint(run_dir)) == end.step
    window.close()

    # A second window on the same project offers to continue from the saved step.
    again = make_window()
    again.answers.replies = [Btn.Yes]
    with qtbot.waitSignal(again.train_view.run_started, timeout=LONG) as started:
        assert again.open_project(project.folder)
    assert "Continue training?" in again.answers.questions
    assert started.args[0].start_step == end.step and started.args[0].run_dir == run_dir
    chart = again.train_view.loss  # the earlier run's loss history is on the chart
    assert chart.n >= end.step and list(chart.steps[:end.step]) == list(range(1, end.step + 1))
    with qtbot.waitSignal(again.train_view.steps_received, timeout=LONG):
        pass  # let the resumed run train at least one new step before stopping it
    again.train_view.stop()
    second = wait_run_end(qtbot, again)
    assert isinstance(second, Stopped) and second.step > end.step


def test_closing_mid_run_stops_and_leaves_a_checkpoint(qtbot, make_window, project):
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    start_and_wait_started(qtbot, window)
    with qtbot.waitSignal(window.train_view.steps_received, timeout=LONG):
        pass
    window.answers.replies = [Btn.Yes]  # "Training is running — stop and close?"
    with qtbot.waitSignal(window.train_view.run_finished, timeout=LONG) as ended:
        window.close()
        assert window.isVisible()  # stays open until the checkpoint is written
    assert isinstance(ended.args[0], Stopped)
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    run_dir = load_project(project.folder).latest_run()
    assert checkpoint_loads(complete_checkpoint(run_dir)) == ended.args[0].step


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory, tiny_ddpm):
    """A project with a finished 12-step LoRA run, trained by the engine directly."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_ddpm import make_images

    from transferstudio.training.trainer import TrainJob, train

    root = tmp_path_factory.mktemp("trained")
    proj = create_project(root / "proj", backbone=tiny_ddpm, images=make_images(root / "images", n=4),
                          name="Trained squares", config=fast_config(12, learning_rate=5e-3))
    events = list(train(TrainJob(proj)))
    assert isinstance(events[-1], Finished), events[-1]
    return proj


def test_export_through_the_dialog_loads_back(qtbot, make_window, trained_project, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    window = make_window()
    open_and_inspect(qtbot, window, trained_project.folder)
    assert window.train_view.loss.n == 12 and window.train_view.preview_steps() == [0, 12]
    dialog = window.export()
    qtbot.waitUntil(dialog.formats_ready, timeout=LONG)
    assert dialog.selected_format() == "diffusers"
    offered = [dialog.format.itemData(i) for i in range(dialog.format.count())]
    assert "kohya" not in offered  # kohya LoRAs are for Stable Diffusion models, not this one
    if "merged-diffusers" in offered:  # merged formats bake the LoRA in at a chosen strength
        dialog.set_format("merged-diffusers")
        assert not dialog.strength.isHidden()
        dialog.set_format("diffusers")
        assert dialog.strength.isHidden()
    dialog.folder.setText(str(tmp_path / "out"))
    dialog.name.setText("squares-lora")
    with qtbot.waitSignal(dialog.exported, timeout=LONG) as exported:
        dialog.start_export()
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=10_000)
    result = exported.args[0]
    assert result.path == tmp_path / "out" / "squares-lora.safetensors" and result.step == 12
    weights = load_file(result.path)
    assert weights and any("lora" in k for k in weights)
    with safe_open(str(result.path), "pt") as fh:
        assert json.loads(fh.metadata()["lora_config"])["r"] == 4
    assert dialog.open_button.isVisible() and "squares-lora" in dialog.result.text()
    dialog.close()


def test_compare_shows_base_and_trained_side_by_side(qtbot, make_window, trained_project):
    window = make_window()
    open_and_inspect(qtbot, window, trained_project.folder)
    view = window.compare_view
    assert view.generate_button.isEnabled() and not view.prompt.isVisible()  # unconditional model
    assert view.count.value() == 4  # small pixel model: several pictures per side
    view.steps.setValue(4)
    view.count.setValue(3)
    with qtbot.waitSignal(view.compared, timeout=LONG) as got:
        view.generate()
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=10_000)
    pair = got.args[0]
    assert pair.step == 12 and pair.seeds == (1, 2, 3) and len(pair.base) == len(pair.trained) == 3
    assert pair.base[0].size() == pair.trained[0].size()
    assert pair.base[0] != pair.base[1]  # one picture per seed
    assert pair.base != pair.trained  # the training changed what the model draws
    assert view.base_image.image_count() == view.trained_image.image_count() == 3

    view.strength.setValue(0)  # the debounced slider re-samples on its own
    with qtbot.waitSignal(view.compared, timeout=LONG) as got:
        pass
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=10_000)
    assert got.args[0].strength == 0.0 and got.args[0].trained == pair.base  # strength 0 = base model


def test_moved_images_and_model_are_asked_for(qtbot, make_window, project, tmp_path):
    moved_images = tmp_path / "moved-images"
    project.images.rename(moved_images)
    moved_model = tmp_path / "moved-model"
    project.backbone.rename(moved_model)
    try:
        window = make_window()
        window.answers.located = {"image folder": str(moved_images), "base model": str(moved_model)}
        open_and_inspect(qtbot, window, project.folder)
        assert window.project.images == moved_images and window.project.backbone == moved_model
        saved = load_project(project.folder)  # remembered for next time
        assert saved.images == moved_images and saved.backbone == moved_model
        assert window.inspection["usable"]
    finally:
        moved_model.rename(project.backbone)  # the tiny model is shared by the session


def test_title_marks_unsaved_changes_and_recent_projects(qtbot, make_window, project):
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    assert window.windowTitle() == "Squares — TransferStudio"
    steps = window.settings_form.editors["steps"]
    steps.setValue(321)  # as if typed: the form reports the edit
    assert window.dirty
    assert window.windowTitle() == "Squares* — TransferStudio"
    window.save_project()
    assert window.windowTitle() == "Squares — TransferStudio"
    assert load_project(project.folder).config.steps == 321
    assert window.recent_projects()[0] == str(project.folder.resolve())
    window.close_project()
    assert window.project is None and window.windowTitle() == "TransferStudio"
    assert window.welcome_recent.count() == 1


def test_a_failed_run_explains_and_keeps_the_settings(qtbot, make_window, project):
    for picture in project.images.iterdir():
        picture.unlink()  # an empty image folder: the engine fails with advice
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    window.start_training()
    end = wait_run_end(qtbot, window)
    assert type(end).__name__ == "Failed"
    assert window.answers.problems and window.answers.problems[0][0] == "Training stopped"
    title, message, advice = window.answers.problems[0]
    assert message and advice
    assert window.settings_form.config().steps == 200 and window.project is not None


def test_step_signals_are_throttled_but_every_step_arrives(qtbot, project):
    total = 3000

    def fast_train(job: Any, commands: Any):
        for i in range(1, total + 1):  # as fast as Python goes: far more than 10 per second
            yield Step(step=i, total=total, loss=1.0 / i, lr=1e-4, images_per_s=1.0, eta_s=0.0, elapsed_s=0.0)
        yield Finished(step=total, final_loss=0.0, checkpoint=None, weights=None)

    worker = TrainingWorker(project, train_fn=fast_train)
    batches: list[int] = []
    got: list[int] = []
    worker.steps.connect(lambda batch: (batches.append(len(batch)), got.extend(s.step for s in batch)))
    t0 = time.monotonic()
    with qtbot.waitSignal(worker.done, timeout=60_000):
        worker.start()
    elapsed = time.monotonic() - t0
    worker.wait(5)
    assert got == list(range(1, total + 1))
    assert len(batches) <= elapsed * 10 + 3  # ≤ ~10 batches a second (+ first and final flush)
    assert isinstance(worker.end_event, Finished)


def test_unexpected_errors_reach_the_log_and_a_dialog(qtbot, user_home, monkeypatch):
    import logging

    from transferstudio import app

    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append(box.detailedText()) or 0)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    path = app.setup_logging()
    try:
        app.install_excepthook()
        try:
            raise ValueError("a programming error")
        except ValueError:
            sys.excepthook(*sys.exc_info())
        for handler in logging.getLogger().handlers:
            handler.flush()
        assert "ValueError: a programming error" in path.read_text(encoding="utf-8")
        assert shown and "Traceback" in shown[0]
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "baseFilename", "") == str(path)]:
            root.removeHandler(handler)
            handler.close()


# --- issue 12: a project training elsewhere, and settings changed since the last run ---------------

def _hold_project_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the project's training lock until it is killed."""
    code = ("import sys; from transferstudio.project.lock import ProjectLock; ProjectLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); sys.stdin.readline()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_start_export_and_compare_refuse_a_project_training_elsewhere(qtbot, make_window, project):
    import socket

    from transferstudio.core.errors import UserError
    from transferstudio.qt import tasks

    holder = _hold_project_lock(project.folder)
    sentence = f"This project is training in another process (pid {holder.pid} on {socket.gethostname()})."
    try:
        window = make_window()
        open_and_inspect(qtbot, window, project.folder)
        window.start_training()
        end = wait_run_end(qtbot, window)
        assert type(end).__name__ == "Failed" and end.message == sentence
        assert window.answers.problems[0][1] == sentence
        assert load_project(project.folder).runs() == [], "nothing was started"
        with pytest.raises(UserError, match=r"training in another process \(pid"):
            tasks.export_project(project, project.folder.parent / "out.safetensors", "diffusers", False)
        with pytest.raises(UserError, match=r"training in another process \(pid"):
            tasks.CompareSession(project).compare(1, "", 1.0, 2)
    finally:
        holder.kill()
        holder.wait()


def test_changed_settings_are_named_and_the_choice_is_kept(qtbot, make_window, project):
    from transferstudio.training.trainer import TrainJob, train

    assert isinstance(list(train(TrainJob(project, steps=2)))[-1], Finished)  # 2 of 200 steps saved
    run_dir = project.runs()[0]
    window = make_window()
    texts: list[str] = []
    ask = window.ask
    window.ask = lambda title, text, *a, **k: (texts.append(text), ask(title, text, *a, **k))[1]
    window.answers.replies = [Btn.No]  # "Continue training?" when it opens: not yet
    open_and_inspect(qtbot, window, project.folder)
    assert texts and "differ" not in texts[-1]
    window.settings_form.set_config(fast_config(200, learning_rate=5e-4))

    window.answers.replies = [Btn.Yes]  # continue, with the run's own settings
    started = start_and_wait_started(qtbot, window)
    assert "learning_rate (run: 0.001, project: 0.0005)" in texts[-1] and "run's own settings" in texts[-1]
    assert started.start_step == 2 and started.run_dir == run_dir
    with qtbot.waitSignal(window.train_view.steps_received, timeout=LONG):
        pass
    window.train_view.stop()
    assert isinstance(wait_run_end(qtbot, window), Stopped)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] > 2 and all(row["lr"] == 1e-3 for row in rows), "the run's learning rate"

    window.answers.replies = [Btn.No]  # start a new run with the settings on screen
    started = start_and_wait_started(qtbot, window)
    assert "learning_rate (run: 0.001, project: 0.0005)" in texts[-1]
    assert started.start_step == 0 and started.run_dir != run_dir
    with qtbot.waitSignal(window.train_view.steps_received, timeout=LONG):
        pass
    window.train_view.stop()
    assert isinstance(wait_run_end(qtbot, window), Stopped)
    assert json.loads((started.run_dir / "config.json").read_text())["config"]["learning_rate"] == 5e-4
    assert window.answers.problems == []
