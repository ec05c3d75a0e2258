"""Widgets of the desktop UI, driven offscreen with pytest-qt (no torch needed)."""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QThreadPool, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QComboBox, QSpinBox  # noqa: E402

from transferstudio.project.config import TrainConfig  # noqa: E402
from transferstudio.qt import pictures as pictures_module  # noqa: E402
from transferstudio.ui.backbone_panel import BackbonePanel  # noqa: E402
from transferstudio.ui.images_panel import ImagesPanel, ThumbReadyRole  # noqa: E402
from transferstudio.ui.new_project_dialog import LocateDialog  # noqa: E402
from transferstudio.ui.settings_form import SettingsForm, format_scientific  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture()
def make_panel(qtbot):
    """ImagesPanel factory whose worker threads are all finished when the test ends."""
    panels: list[ImagesPanel] = []

    def make(**kw) -> ImagesPanel:
        panel = ImagesPanel(**kw)
        qtbot.addWidget(panel)
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.shutdown()
        assert panel.loader.pool.activeThreadCount() == 0
        assert panel.scanner.pool.activeThreadCount() == 0
    assert QThreadPool.globalInstance().waitForDone(5000)


def _png(path: Path, size=(24, 24), color=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture()
def picture_folder(tmp_path) -> Path:
    folder = tmp_path / "pictures"
    _png(folder / "a.png", (64, 64))
    _png(folder / "b.png", (80, 48), (40, 200, 40))
    _png(folder / "c.png", (48, 80), (40, 40, 200))
    (folder / "a.txt").write_text("a red square")
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


def _scan(qtbot, panel: ImagesPanel, folder: Path, trigger: str = ""):
    with qtbot.waitSignal(panel.scanned, timeout=60_000) as blocker:
        panel.set_folder(str(folder), trigger)
    return blocker.args[0]


# --- settings form -----------------------------------------------------------------------------
def test_settings_round_trip(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    cfg = TrainConfig(
        method="full", steps=1234, learning_rate=2.5e-5, batch_size=4, gradient_accumulation=2,
        resolution=768, buckets=False, crop="random", flip=False, trigger="mystyle", rank=8,
        alpha=4.5, dropout=0.1, train_text_encoder=True, ema=True, ema_decay=0.9995,
        schedule="cosine", warmup_steps=50, precision="bf16", gradient_checkpointing=True,
        noise_offset=0.05, min_snr_gamma=5.0, seed=7, preview_every=0,
        preview_prompts=["mystyle, a cat", "mystyle, a house"], preview_seeds=[5, 6, 700],
        preview_steps=20, checkpoint_every=100, keep_checkpoints=2, device="cpu",
    )
    form.set_config(cfg)
    assert form.config() == cfg
    assert form.config().problems() == []
    form.set_config(TrainConfig())
    assert form.config() == TrainConfig()


def test_settings_edits_emit_changed_but_set_config_does_not(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    with qtbot.assertNotEmitted(form.changed):
        form.set_config(TrainConfig(steps=10))
    with qtbot.waitSignal(form.changed, timeout=1000):
        form.editors["steps"].setValue(20)
    assert form.config().steps == 20


def test_settings_refuse_out_of_range_values(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    form.show()
    steps: QSpinBox = form.editors["steps"]
    steps.setValue(0)
    assert form.config().steps == 1  # clamped to the field's min
    rank: QSpinBox = form.editors["rank"]
    rank.setValue(10**6)
    assert form.config().rank == 1024

    lr = form.editors["learning_rate"]
    lr.setFocus()
    lr.lineEdit().selectAll()
    qtbot.keyClicks(lr.lineEdit(), "5")  # above the maximum of 1.0
    qtbot.keyClick(lr.lineEdit(), Qt.Key.Key_Return)
    lr.clearFocus()
    assert form.config().learning_rate == pytest.approx(1e-4)

    lr.lineEdit().selectAll()
    qtbot.keyClicks(lr.lineEdit(), "3e-5")  # scientific notation is accepted
    qtbot.keyClick(lr.lineEdit(), Qt.Key.Key_Return)
    assert form.config().learning_rate == pytest.approx(3e-5)
    assert lr.text() == "3e-5"

    lr.lineEdit().selectAll()
    qtbot.keyClicks(lr.lineEdit(), "abc")  # letters cannot even be typed
    assert "abc" not in lr.text()

    seeds = form.editors["preview_seeds"]
    seeds.selectAll()
    qtbot.keyClicks(seeds, "1, x2, 3")
    assert seeds.text() == "1, 2, 3"
    assert form.config().preview_seeds == [1, 2, 3]
    assert form.config().problems() == []


def test_learning_rate_arrows_step_the_leading_digit(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    lr = form.editors["learning_rate"]
    lr.setValue(1e-4)
    lr.stepBy(1)
    assert lr.value() == pytest.approx(2e-4)
    lr.stepBy(-2)
    assert lr.value() == pytest.approx(9e-5)
    assert format_scientific(1e-4) == "1e-4"
    assert format_scientific(0.3) == "0.3"


def test_every_setting_has_a_tooltip_and_a_human_label(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    for f in fields(TrainConfig):
        editor = form.editors[f.name]
        assert editor.toolTip() == f.metadata["help"] != ""
        assert form.labels[f.name].toolTip() == f.metadata["help"]
        assert "_" not in form.labels[f.name].text()
    assert form.labels["learning_rate"].text() == "Learning rate"
    assert form.labels["rank"].text() == "LoRA rank"


def test_settings_capabilities_and_running(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    form.show()
    form.set_config(TrainConfig(method="full"))
    method: QComboBox = form.editors["method"]
    with qtbot.waitSignal(form.changed, timeout=1000):
        form.set_capabilities(text=False, supports_full_finetune=False)
    assert form.config().method == "lora"  # "full" cannot run on this model
    full_item = method.model().item(method.findData("full"))
    assert not full_item.isEnabled()
    assert not form.editors["preview_prompts"].isVisible()
    assert not form.editors["trigger"].isVisible()
    assert form.editors["preview_seeds"].isVisible()

    form.set_capabilities(text=True, supports_full_finetune=True)
    assert full_item.isEnabled()
    assert form.editors["preview_prompts"].isVisible()

    form.set_running(True)
    assert not any(e.isEnabled() for e in form.editors.values())
    form.set_running(False)
    assert form.editors["steps"].isEnabled()
    assert not form.editors["ema"].isEnabled()  # EMA applies to full fine-tuning only


# --- images panel --------------------------------------------------------------------------------
def test_images_panel_counts_skipped_and_buckets(qtbot, make_panel, picture_folder):
    panel = make_panel()
    panel.set_bucket_params(64, 16, True)
    result = _scan(qtbot, panel, picture_folder, trigger="mystyle")
    assert len(result.images) == 3
    assert panel.counts_label.text() == "3 images, 1 skipped"
    assert panel.skipped_list.topLevelItemCount() == 1
    item = panel.skipped_list.topLevelItem(0)
    assert item.text(0) == "broken.png"
    assert "not an image" in item.text(1)
    assert panel.buckets_label.text().startswith("Buckets: ")
    assert "64×64: 1" in panel.buckets_label.text()
    # The trigger is applied to what training gets, not written into the files.
    assert result.images[0].caption == "mystyle, a red square"
    assert "mystyle" in panel.trigger_label.text()
    panel.set_trigger("other")
    assert panel.scan_result().images[0].caption == "other, a red square"
    assert (picture_folder / "a.txt").read_text() == "a red square"


def test_caption_edits_are_saved_and_survive_reselect(qtbot, make_panel, picture_folder):
    panel = make_panel()
    panel.show()
    _scan(qtbot, panel, picture_folder)
    assert panel.caption_edit.toPlainText() == "a red square"  # row 0 selected after the scan

    panel.select_row(1)  # b.png: no caption file yet
    panel.caption_edit.setPlainText("a green rectangle")
    with qtbot.waitSignal(panel.caption_saved, timeout=2000) as saved:
        panel.select_row(2)  # changing the selection saves
    assert saved.args[0] == str(picture_folder / "b.txt")
    assert (picture_folder / "b.txt").read_text() == "a green rectangle"

    panel.caption_edit.setFocus()
    panel.caption_edit.setPlainText("a blue one")
    with qtbot.waitSignal(panel.caption_saved, timeout=2000):
        qtbot.keyClick(panel.caption_edit, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert (picture_folder / "c.txt").read_text() == "a blue one"

    # Leaving the field saves; so does pausing (autosave), without any other action.
    panel.activateWindow()
    panel.caption_edit.setFocus()
    qtbot.waitUntil(panel.caption_edit.hasFocus, timeout=2000)
    panel.caption_edit.setPlainText("blue, focus out")
    with qtbot.waitSignal(panel.caption_saved, timeout=2000):
        panel.view.setFocus()
    assert (picture_folder / "c.txt").read_text() == "blue, focus out"
    panel.caption_edit.setPlainText("blue, autosaved")
    with qtbot.waitSignal(panel.caption_saved, timeout=5000):
        pass
    assert (picture_folder / "c.txt").read_text() == "blue, autosaved"

    panel.select_row(0)
    panel.select_row(1)
    assert panel.caption_edit.toPlainText() == "a green rectangle"
    assert panel.scan_result().images[1].caption == "a green rectangle"

    # An edit pending when the folder changes is not lost either.
    panel.caption_edit.setPlainText("edited before leaving")
    panel.set_folder(None)
    assert (picture_folder / "b.txt").read_text() == "edited before leaving"
    assert not list(picture_folder.glob(".*.tmp"))  # atomic write left no temp files


def test_thumbnails_appear_and_are_cached_on_disk(qtbot, make_panel, picture_folder, tmp_path):
    cache = tmp_path / "thumbs"
    panel = make_panel(thumb_cache_dir=cache)
    _scan(qtbot, panel, picture_folder)
    index = panel.model.index(0)
    panel.model.data(index, Qt.ItemDataRole.DecorationRole)  # what the view does when painting
    qtbot.waitUntil(lambda: panel.model.data(index, ThumbReadyRole), timeout=10_000)
    pix = panel.model.data(index, Qt.ItemDataRole.DecorationRole)
    assert not pix.isNull() and pix.width() == pix.height()
    panel.loader.wait()
    assert list(cache.glob("*.png"))


def test_drop_a_folder(qtbot, make_panel, picture_folder):
    panel = make_panel()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(picture_folder))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignals([panel.folder_dropped, panel.folder_chosen, panel.scanned], timeout=30_000):
        panel.dropEvent(event)
    assert panel.folder() == str(picture_folder)


def test_empty_folder_reports_why(qtbot, make_panel, tmp_path):
    panel = make_panel()
    (tmp_path / "empty").mkdir()
    with qtbot.waitSignal(panel.scan_failed, timeout=10_000) as blocker:
        panel.set_folder(str(tmp_path / "empty"))
    assert "No images found" in blocker.args[0]
    assert panel.counts_label.level() == "error"
    assert panel.scan_result() is None


def test_thousands_of_images_scan_off_the_gui_thread(qtbot, make_panel, tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (16, 16), (90, 120, 200)).save(tiny)
    data = tiny.read_bytes()
    for i in range(2000):
        (folder / f"img_{i:04d}.png").write_bytes(data)

    scan_threads: list[threading.Thread] = []
    real_scan = pictures_module.scan_images

    def recording_scan(*args, **kwargs):
        scan_threads.append(threading.current_thread())
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(pictures_module, "scan_images", recording_scan)
    panel = make_panel()
    panel.resize(900, 600)
    panel.show()
    with qtbot.waitSignal(panel.scanned, timeout=120_000) as blocker:
        panel.set_folder(str(folder))
        # set_folder returned before the scan finished: the GUI thread is free meanwhile.
        assert panel.is_scanning()
        assert panel.model.rowCount() == 0
    assert len(blocker.args[0].images) == 2000
    assert panel.model.rowCount() == 2000
    assert scan_threads and all(t is not threading.main_thread() for t in scan_threads)
    # The visible rows get thumbnails, decoded on the loader's own threads.
    qtbot.waitUntil(lambda: panel.model.data(panel.model.index(0), ThumbReadyRole), timeout=20_000)
    assert len(panel.cache) < 2000  # only what was painted, not the whole folder


# --- backbone panel -------------------------------------------------------------------------------
def test_backbone_panel_shows_inspection(qtbot, tmp_path):
    panel = BackbonePanel()
    qtbot.addWidget(panel)
    panel.show()
    model = tmp_path / "model"
    model.mkdir()
    with qtbot.waitSignal(panel.path_chosen, timeout=1000) as blocker:
        panel.picker._choose(str(model))
    assert blocker.args == [str(model)]

    panel.show_busy("Inspecting…")
    assert panel.busy_bar.isVisible()
    panel.show_inspection({
        "label": "Tiny DDPM", "usable": True, "native_resolution": 16, "prediction_type": "epsilon",
        "size_bytes": 123_456, "problems": [], "details": [("UNet blocks", "2")], "family": "ddpm",
    })
    assert not panel.busy_bar.isVisible()
    assert panel.status.level() == "ok"
    assert not panel.problems.isVisible()
    texts = [panel.details.itemAt(i).widget().text() for i in range(panel.details.count())]
    assert "16×16 px" in texts and "UNet blocks:" in texts and "123.5 KB" in texts

    panel.show_inspection({"label": "x.ckpt", "usable": False, "problems": ["Not a diffusion model."]})
    assert panel.status.level() == "error"
    assert panel.problems.level() == "error"
    assert "Not a diffusion model." in panel.problems.text()


# --- dialogs -------------------------------------------------------------------------------------
# The New Project dialog's checks: tests/test_ui_new_project.py.


def test_locate_dialog(qtbot, tmp_path):
    dialog = LocateDialog(None, "image folder", str(tmp_path / "gone"), True)
    qtbot.addWidget(dialog)
    assert not dialog.ok_button.isEnabled()
    assert dialog.path() is None
    dialog.picker.edit.setText(str(tmp_path))
    assert dialog.ok_button.isEnabled()
    assert dialog.path() == str(tmp_path)

    file_dialog = LocateDialog(None, "base model", str(tmp_path / "m.safetensors"), False)
    qtbot.addWidget(file_dialog)
    file_dialog.picker.edit.setText(str(tmp_path))  # a folder, but a file is wanted
    assert not file_dialog.ok_button.isEnabled()


# --- layering ------------------------------------------------------------------------------------
def test_ui_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import transferstudio.ui.images_panel, transferstudio.ui.settings_form\n"
        "import transferstudio.ui.backbone_panel, transferstudio.ui.new_project_dialog\n"
        "import transferstudio.ui.widgets\n"
        "heavy = {'torch', 'diffusers', 'peft', 'transformers', 'accelerate'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or m.startswith(('transferstudio.training', 'transferstudio.export',\n"
        "                              'transferstudio.backbones')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_export_names_keep_brackets_and_drop_what_file_systems_refuse():
    from transferstudio.ui.export_dialog import safe_name

    assert safe_name("Landscapes → cities (GAN)") == "Landscapes - cities (GAN)"
    assert safe_name('my/style: v2*?"') == "my-style- v2"
    assert safe_name(" .. ") == "export"
