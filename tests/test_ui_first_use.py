"""What a new user met in the window (issue 17), each driven through the window where it shows:
state left over from the previous project, silent waits, cut or jumping layout, unreadable chart
ticks, the export dialog's help, caption tools for models without prompts, a default folder shown
as an error, and the Linux start without the X11 libraries.

Offscreen Qt; waits are on signals or conditions, never sleeps. Training runs that only need to
produce events are scripted (the engine's event contract, fed from the test)."""
from __future__ import annotations

import functools
import queue
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QMessageBox

from test_ui_app import (LONG, fast_config, make_window, open_and_inspect, project, settings,  # noqa: F401
                         user_home)
from transferstudio.core.commands import Commands
from transferstudio.core.events import Finished, Message, Paused, Preview, Progress, Resumed, Started, Step, Stopped
from transferstudio.project.project import create_project
from transferstudio.qt import history
from transferstudio.qt.workers import TrainingWorker
from transferstudio.ui.images_panel import ThumbReadyRole

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py


# --- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_ddpm):
    """A finished 12-step LoRA run (trained by the engine directly) and a run stopped at step 1
    of 200 (its checkpoint is saved, the run is unfinished)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_ddpm import make_images

    from transferstudio.training.trainer import TrainJob, train

    root = tmp_path_factory.mktemp("first-use")
    done = create_project(root / "done", backbone=tiny_ddpm, images=make_images(root / "images", n=4),
                          name="Finished squares", config=fast_config(12, learning_rate=5e-3))
    assert isinstance(list(train(TrainJob(done)))[-1], Finished)
    stopped = create_project(root / "stopped", backbone=tiny_ddpm, images=root / "images",
                             name="Stopped squares", config=fast_config(200))
    commands = Commands()
    for event in train(TrainJob(stopped), commands):
        if isinstance(event, Step):
            commands.stop()
        last = event
    assert isinstance(last, Stopped) and last.step >= 1
    return SimpleNamespace(done=done, stopped=stopped)


class Flush:
    """A no-op event: the worker sends the Steps it holds back (throttling) before it."""


class ScriptedEngine:
    """`train(job, commands)` whose events the test puts in, one by one."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.commands: Commands | None = None

    def __call__(self, job: Any, commands: Commands) -> Any:
        self.commands = commands
        while True:
            event = self.events.get(timeout=60)
            yield event
            if isinstance(event, (Finished, Stopped)):
                return

    def put(self, *events: Any) -> None:
        for event in events:
            self.events.put(event)


def step(n: int, total: int = 20, loss: float = 0.1) -> Step:
    return Step(step=n, total=total, loss=loss, lr=1e-3, images_per_s=4.0, eta_s=999_999.0, elapsed_s=float(n))


def solid_pictures(folder: Path, names_and_colours: list[tuple[str, tuple[int, int, int]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in names_and_colours:
        Image.new("RGB", (96, 96), colour).save(folder / name)
    return folder


# --- 3: opening another project resets every panel -------------------------------------------------

def test_opening_another_project_shows_only_that_projects_state(qtbot, make_window, trained, tmp_path,
                                                                 tiny_ddpm, image_folder):
    window = make_window()
    open_and_inspect(qtbot, window, trained.done.folder)
    view, compare = window.train_view, window.compare_view
    assert view.loss.n == 12 and view.preview_steps() == [0, 12]
    view.note("a message about the first project")
    compare.steps.setValue(4)
    compare.count.setValue(1)
    with qtbot.waitSignal(compare.compared, timeout=LONG):
        compare.generate()
    qtbot.waitUntil(lambda: not compare.is_busy(), timeout=10_000)
    assert "step 12" in compare.trained_title.text()

    fresh = create_project(tmp_path / "fresh", backbone=tiny_ddpm, images=image_folder, name="Fresh",
                           config=fast_config(300))
    open_and_inspect(qtbot, window, fresh.folder)
    assert view.loss.n == 0 and view.preview_steps() == [] and view.gallery.image_count() == 0
    assert view.log.toPlainText() == ""  # no messages of the other project
    assert view.raw_curve.getData()[0] is None or len(view.raw_curve.getData()[0]) == 0
    assert view.status.text() == "Not started." and view.eta_label.text() == "" and view.loss_label.text() == ""
    assert view.progress.maximum() == 300 and view.progress.value() == 0
    low, high = view.plot.getPlotItem().getViewBox().viewRange()[0]
    assert low <= 0 and 300 <= high <= 320  # the empty chart spans this project's planned steps
    assert compare.trained_title.text() == "Trained" and compare.base_title.text() == "Base model"
    assert compare.base_image.image_count() == compare.trained_image.image_count() == 0
    assert not compare.generate_button.isEnabled()  # nothing trained here
    assert window.report_view.run.count() == 0

    # And back: the first project's own history, not what was on screen before.
    open_and_inspect(qtbot, window, trained.done.folder)
    assert view.loss.n == 12 and view.preview_steps() == [0, 12] and view.log.toPlainText() == ""
    assert compare.trained_title.text() == "Trained"


# --- 4: silent waits -------------------------------------------------------------------------------

def test_starting_previews_eta_and_requests_while_paused(qtbot, make_window, project, tmp_path, monkeypatch):
    from transferstudio.ui import train_view as train_view_module

    engine = ScriptedEngine()
    monkeypatch.setattr(train_view_module, "TrainingWorker", functools.partial(TrainingWorker, train_fn=engine))
    monkeypatch.setattr(history, "preview_every", lambda run_dir: 4)
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    view = window.train_view
    now = [100.0]
    view._clock = lambda: now[0]

    with qtbot.waitSignal(view.run_started, timeout=LONG):
        window.start_training()
        engine.put(Started(run_dir=tmp_path / "run", total_steps=20, start_step=0, images=4, samples_per_epoch=4,
                           skipped=(), device="cpu", trainable_parameters=1000))
    # The untrained model's previews take a while: the window says what it is doing.
    assert "Drawing the starting previews" in view.status.text()
    assert "drawing" in view.progress.text()
    # Encoding the pictures for the cache: counted on the bar, then the bar counts steps again.
    with qtbot.waitSignal(view.worker.progress, timeout=LONG):
        engine.put(Progress("Encoding your pictures once for the cache", 3, 8))
    assert view.status.text().startswith("Encoding your pictures") and "3 / 8" in view.progress.text()
    with qtbot.waitSignal(view.worker.progress, timeout=LONG):
        engine.put(Progress("Encoding your pictures once for the cache", 8, 8))
    assert view.progress.text() == "step 0 / 20"
    with qtbot.waitSignal(view.worker.progress, timeout=LONG):
        engine.put(Progress("Drawing the previews of the untrained model", 0, 4))
    assert view.status.text().startswith("Drawing the previews")
    with qtbot.waitSignal(view.preview_added, timeout=LONG):
        engine.put(Preview(step=0, images=(), prompts=(), seeds=(), paths=()))
    assert "Drawing" not in view.status.text() and view.progress.text() == "step 0 / 20"

    def steps_at(*pairs: tuple[int, float]) -> None:
        for n, t in pairs:
            now[0] = t
            with qtbot.waitSignal(view.steps_received, timeout=10_000):
                engine.put(step(n), Flush())

    steps_at((1, 101.0), (2, 102.0))
    assert view.eta_label.text() == "estimating time…"
    steps_at((3, 103.0))
    assert view.status.text().startswith("Training")
    steps_at((4, 104.0))  # 3 steps in 3 s since the first: 16 steps left take 16 s
    assert view.eta_label.text() == "16 s left"
    assert view.status.text() == "Drawing previews at step 4…"  # the run draws previews every 4 steps
    with qtbot.waitSignal(view.preview_added, timeout=10_000):
        engine.put(Preview(step=4, images=(), prompts=(), seeds=(), paths=()))
    assert view.status.text() == "Training…"

    # Paused: the time left is not counted on; Sample now and Save now still take requests.
    view.pause()
    with qtbot.waitSignal(view.worker.paused, timeout=10_000):
        engine.put(Paused(4))
    assert view.state == "paused" and view.eta_label.text() == "paused"
    assert view.sample_button.isEnabled() and view.save_button.isEnabled()
    assert window.act_sample_now.isEnabled() and window.act_save_now.isEnabled()
    view.sample_button.click()
    view.save_button.click()
    assert engine.commands._sample.is_set() and engine.commands._save.is_set()
    assert "Drawing previews of the model as it is now (step 4)" in view.log.toPlainText()

    # Ten minutes later, Resume: the pace is measured again, with no jump from the paused time.
    now[0] = 704.0
    view.resume()
    with qtbot.waitSignal(view.worker.resumed, timeout=10_000):
        engine.put(Resumed(4))
    steps_at((5, 706.0))
    assert view.eta_label.text() == "estimating time…"
    steps_at((6, 707.0), (7, 708.0), (8, 709.0))
    assert view.eta_label.text() == "12 s left"

    # Stop: no time left is shown any more (it was the run's, which is ending).
    view.stop()
    assert view.eta_label.text() == ""
    with qtbot.waitSignal(view.run_finished, timeout=10_000):
        engine.put(Message("saving"), Stopped(step=8, checkpoint=None))
    assert view.eta_label.text() == "" and view.progress.text() == "step 8 / 20"


def test_the_time_left_counts_from_the_last_start_only():
    from transferstudio.ui.train_view import EtaEstimator

    eta = EtaEstimator()
    assert eta.update(10, 100, 0.0) is None  # the first step after a start: the anchor
    assert eta.update(12, 100, 2.0) is None  # too few steps yet
    assert eta.update(13, 100, 3.0) == pytest.approx(87.0)  # 3 steps in 3 s
    eta.reset()  # paused for an hour, then resumed
    assert eta.update(14, 100, 3600.0) is None
    assert eta.update(18, 100, 3602.0) == pytest.approx(82 * 0.5)


def test_compare_shows_progress_per_picture_and_cancels(qtbot, make_window, trained):
    window = make_window()
    window.resize(1024, 700)
    open_and_inspect(qtbot, window, trained.done.folder)
    window._work_tab(window.compare_view)
    view = window.compare_view
    view.set_text_backbone(True)  # the prompt row too: the widest layout
    qtbot.wait(50)
    size = window.size()
    view.steps.setValue(8)
    view.count.setValue(2)
    seen: list[tuple[int, int, str]] = []
    with qtbot.waitSignal(view.compared, timeout=LONG):
        view.generate()
        view.task.progress.connect(lambda d, t, text: seen.append((d, t, text)))
        assert view.busy.isVisible() and view.cancel_button.isVisible()
        assert window.size() == size  # the busy bar has its fixed place: nothing widens
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=10_000)
    counted = [s for s in seen if s[1] > 0]
    assert ("Trained model: picture 2 of 2" in [s[2] for s in counted]
            and all(t == counted[0][1] for _, t, _ in counted))
    assert not view.busy.isVisible() and not view.cancel_button.isVisible() and window.size() == size

    # Cancel while the pictures are drawn: the comparison stops, nothing half-done is shown.
    view.count.setValue(8)
    view.steps.setValue(200)
    view.seed.setValue(40)  # not cached: the base side is drawn too
    compared: list[Any] = []
    view.compared.connect(compared.append)
    view.generate()
    task = view.task
    with qtbot.waitSignal(task.cancelled, timeout=LONG):
        qtbot.waitUntil(lambda: view.busy.maximum() > 0, timeout=LONG)  # drawing the first picture
        view.cancel_button.click()
        assert "Cancelling" in view.busy_label.text()
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=30_000)
    assert compared == [] and view.busy_label.text() == "Cancelled."
    assert view.generate_button.isEnabled()


# --- 5: layout at 1024 × 700 ----------------------------------------------------------------------

def test_compare_controls_are_whole_at_1024(qtbot, make_window, trained):
    window = make_window()
    window.resize(1024, 700)
    open_and_inspect(qtbot, window, trained.done.folder)
    window._work_tab(window.compare_view)
    view = window.compare_view
    view.set_text_backbone(True)
    qtbot.waitUntil(lambda: view.isVisible())
    QApplication.processEvents()
    assert window.width() == 1024
    row = view._strength_row
    label = next(w for w in row.findChildren(type(view.run_label)) if w.text() == "Adapter strength")
    assert label.width() >= label.sizeHint().width()  # "Adapter strength" is not cut
    slider = view.strength.geometry()
    percent = view.strength_label.geometry()
    assert not slider.intersects(percent) and percent.width() >= view.strength_label.sizeHint().width()
    right = view.mapFromGlobal(view.generate_button.mapToGlobal(QPoint(view.generate_button.width(), 0))).x()
    assert right <= view.width()  # every control inside the view


def test_pictures_are_a_wrapping_grid_with_a_frame_not_a_tint(qtbot, make_window, tiny_ddpm, tmp_path):
    long_name = "a_very_long_picture_name_that_cannot_fit_under_one_thumbnail_0001.png"
    colours = [(long_name, (200, 40, 40)), ("b.png", (40, 200, 40)), ("c.png", (40, 40, 200)),
               ("d.png", (200, 200, 40)), ("e.png", (40, 200, 200))]
    folder = solid_pictures(tmp_path / "pictures", colours)
    proj = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=folder, name="Grid", config=fast_config(10))
    window = make_window()
    window.resize(1024, 700)
    panel = window.images_panel
    with qtbot.waitSignal(panel.scanned, timeout=LONG):
        open_and_inspect(qtbot, window, proj.folder)
    window._show_tab(window.setup_tabs, 1)
    view = panel.view
    qtbot.waitUntil(lambda: view.isVisible() and view.viewport().width() > 0)
    QApplication.processEvents()
    rects = [view.visualRect(panel.model.index(i)) for i in range(5)]
    columns = len({r.left() for r in rects if r.top() == rects[0].top()})
    assert columns >= 2, f"one narrow column at 1024 × 700: {rects}"
    assert all(r.right() <= view.viewport().width() for r in rects[:columns])
    assert long_name in panel.model.data(panel.model.index(0), Qt.ItemDataRole.ToolTipRole)

    panel.select_row(0)
    qtbot.waitUntil(lambda: all(panel.model.data(panel.model.index(i), ThumbReadyRole) for i in range(2)),
                    timeout=20_000)
    view.viewport().update()
    QApplication.processEvents()
    shot = view.viewport().grab().toImage()
    for row in (0, 1):  # selected or not, the picture keeps its own colours
        box = panel.delegate.thumb_rect(view.visualRect(panel.model.index(row)))
        centre = shot.pixelColor(box.center())
        expected = colours[[n for n, _ in colours].index(panel.model.record(row).path.name)][1]
        assert (centre.red(), centre.green(), centre.blue()) == expected
    box = panel.delegate.thumb_rect(view.visualRect(panel.model.index(0)))
    frame = shot.pixelColor(box.left() - 2, box.center().y())
    pal = view.palette()
    highlights = {pal.color(group, QPalette.ColorRole.Highlight).name()
                  for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive)}
    assert frame.name() in highlights  # the selection: a frame around the picture
    unselected = panel.delegate.thumb_rect(view.visualRect(panel.model.index(1)))
    assert shot.pixelColor(unselected.left() - 2, unselected.center().y()).name() not in highlights


# --- 6: the loss chart ----------------------------------------------------------------------------

def _tick_strings(axis: Any) -> list[str]:
    low, high = axis.range
    size = axis.width() if axis.orientation in ("bottom", "top") else axis.height()
    strings = []
    for spacing, values in axis.tickValues(low, high, size):
        if spacing:
            strings += axis.tickStrings(values, 1, spacing)
    return strings


def test_the_loss_chart_has_whole_steps_and_short_losses(qtbot, make_window, project):
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    view = window.train_view
    item = view.plot.getPlotItem()
    bottom, left = item.getAxis("bottom"), item.getAxis("left")
    # Empty: the planned steps (200), not 0.1 … 0.9.
    assert item.getViewBox().viewRange()[0][1] >= 200
    assert all(s.isdigit() for s in _tick_strings(bottom))

    view._on_steps([step(1, total=200, loss=0.066400000000001)])
    QApplication.processEvents()
    for strings in (_tick_strings(bottom), _tick_strings(left)):
        assert strings and all(len(s) <= 6 for s in strings), strings
    assert all(s.lstrip("-").isdigit() and int(s) >= 0 for s in _tick_strings(bottom))
    low, high = item.getViewBox().viewRange()[1]
    assert 0 <= low < 0.0664 < high < 1  # around the one loss, not ±0.5

    view._on_steps([step(n, total=200, loss=0.05 + 0.01 * (n % 3)) for n in range(2, 60)])
    QApplication.processEvents()
    assert all(s.isdigit() for s in _tick_strings(bottom))
    assert all(len(s) <= 6 for s in _tick_strings(left))


# --- 7: the export dialog -----------------------------------------------------------------------------

def test_export_warns_of_an_unfinished_run_and_describes_the_real_file(qtbot, make_window, trained):
    window = make_window()
    window.answers.replies = [QMessageBox.StandardButton.No]  # "Continue training?" when it opens: not now
    open_and_inspect(qtbot, window, trained.stopped.folder)
    assert window.answers.questions == ["Continue training?"]
    dialog = window.export()
    qtbot.waitUntil(dialog.formats_ready, timeout=LONG)
    assert dialog.unfinished.isVisibleTo(dialog)
    assert "unfinished" in dialog.unfinished.text() and "of 200 steps" in dialog.unfinished.text()
    dialog.set_format("diffusers")
    help_text = dialog.description.text()
    assert "`" not in help_text and "<code>" in help_text  # rendered, not literal Markdown
    # An unconditional model's LoRA file is a peft adapter: not what diffusers' pipeline loader reads.
    assert "peft" in help_text and "load_lora_weights" not in help_text
    dialog.close()

    open_and_inspect(qtbot, window, trained.done.folder)
    dialog = window.export()
    qtbot.waitUntil(dialog.formats_ready, timeout=LONG)
    assert not dialog.unfinished.isVisibleTo(dialog)  # 12 of 12: nothing to warn of
    dialog.close()


def test_lora_help_follows_the_models_capabilities():
    from transferstudio.qt.tasks import _describe

    text = SimpleNamespace(conditioning="text")
    plain = SimpleNamespace(conditioning="none")
    generic = "a LoRA file that `load_lora_weights` reads"
    assert "load_lora_weights" in _describe("diffusers", generic, text, "lora", "lora")
    assert "peft" in _describe("diffusers", generic, plain, "lora", "lora")
    assert "from_pretrained" in _describe("diffusers", generic, plain, "full", "lora")
    assert "LOKR" in _describe("diffusers", generic, text, "lora", "lokr")
    assert _describe("kohya", "kohya text", text, "lora", "lora") == "kohya text"


# --- 8: captions only for models that take prompts ---------------------------------------------------

def test_no_caption_tools_for_a_model_without_prompts(qtbot, make_window, project, tmp_path, tiny_sd1_dir,
                                                      image_folder):
    window = make_window()
    panel = window.images_panel
    with qtbot.waitSignal(panel.scanned, timeout=LONG):
        open_and_inspect(qtbot, window, project.folder)  # the tiny DDPM: no prompts
    window._show_tab(window.setup_tabs, 1)
    panel.select_row(0)
    assert not window.inspection["text"]
    assert not panel.caption_edit.isVisibleTo(panel) and not panel.trained_as.isVisibleTo(panel)
    assert not panel.trigger_label.isVisibleTo(panel) and "Trained as" not in panel.trained_as.text()
    assert "does not take prompts" in panel.no_captions.text()
    assert "aption" not in panel.model.data(panel.model.index(0), Qt.ItemDataRole.ToolTipRole)

    text_project = create_project(tmp_path / "sd", backbone=tiny_sd1_dir, images=image_folder, name="SD",
                                  config=fast_config(10))
    with qtbot.waitSignal(panel.scanned, timeout=LONG):
        open_and_inspect(qtbot, window, text_project.folder)
    panel.select_row(0)
    assert window.inspection["text"]
    assert panel.caption_edit.isVisibleTo(panel) and "Trained" in panel.trained_as.text()
    assert not panel.no_captions.isVisibleTo(panel)


# --- 9: preferences on a fresh machine -------------------------------------------------------------

def test_a_default_cache_folder_not_made_yet_is_not_an_error(qtbot, settings, tmp_path, monkeypatch):
    from transferstudio.ui.preferences_dialog import PreferencesDialog

    monkeypatch.setenv("HF_HOME", str(tmp_path / "not-yet" / "huggingface"))
    dialog = PreferencesDialog(settings)
    qtbot.addWidget(dialog)
    assert dialog.hf_msg.level() == "muted" and "will be created" in dialog.hf_msg.text()
    dialog.hf_cache.set_path(str(tmp_path / "typo"))
    assert dialog.hf_msg.level() == "error"  # another missing folder still is one


# --- 10: Linux without the X11 libraries -----------------------------------------------------------

LDD_OUTPUT = """\tlinux-vdso.so.1 (0x00007ffd)
\tlibxcb-cursor.so.0 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)
"""


def test_missing_xcb_libraries_are_named_with_the_packages_to_install(tmp_path):
    from transferstudio.app import debian_package, missing_libraries, xcb_problem

    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    calls: list[list[str]] = []

    def fake_ldd(args: list[str], **kwargs: Any) -> Any:
        calls.append(args)
        return SimpleNamespace(stdout=LDD_OUTPUT, returncode=0)

    missing = missing_libraries([plugin, plugin], run=fake_ldd)
    assert missing == ["libxcb-cursor.so.0", "libxkbcommon-x11.so.0"] and calls[0] == ["ldd", str(plugin)]
    assert debian_package("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"

    def find() -> list[str]:
        return missing

    ubuntu = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n'
    message = xcb_problem({"DISPLAY": ":0"}, "linux", find, ubuntu)
    assert message is not None
    assert "sudo apt install libxcb-cursor0 libxkbcommon-x11-0" in message and "libxcb-cursor.so.0" in message
    fedora = xcb_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "linux", find, "ID=fedora\n")
    assert fedora is not None and "sudo dnf install libxkbcommon-x11 xcb-util-cursor" in fedora
    # Not asked where Qt would not use xcb, nor when nothing is missing.
    assert xcb_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux", find, ubuntu) is None
    assert xcb_problem({"QT_QPA_PLATFORM": "wayland"}, "linux", find, ubuntu) is None
    assert xcb_problem({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}, "linux", find, ubuntu) is None
    assert xcb_problem({}, "darwin", find) is None and xcb_problem({}, "win32", find) is None
    assert xcb_problem({"DISPLAY": ":0"}, "linux", lambda: []) is None
    # No ldd on the system: say nothing (Qt speaks for itself).
    assert missing_libraries([plugin], run=lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError())) == []


def test_the_launcher_exits_with_the_advice_before_qt_aborts(monkeypatch, capsys, user_home):
    import logging

    from transferstudio import app

    handlers = list(logging.getLogger().handlers)
    monkeypatch.setattr(app, "check_display_libraries", lambda: "install libxcb-cursor0")
    try:
        assert app.main(["transferstudio"]) == 1
    finally:
        for handler in logging.getLogger().handlers:
            if handler not in handlers:  # the log file handler main() added
                logging.getLogger().removeHandler(handler)
                handler.close()
    assert "install libxcb-cursor0" in capsys.readouterr().err
