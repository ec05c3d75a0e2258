"""The New Project dialog (issue 17: defaults that suit the model, models and pictures checked,
the starter offered, hints that keep their place) and the Settings form's presets and memory
estimate (issue 16), driven through the widgets with pytest-qt."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferstudio.core.paths import resource
from transferstudio.project.presets import GIB
from transferstudio.qt import plan as checks
from transferstudio.ui.new_project_dialog import NewProjectDialog
from transferstudio.ui.settings_form import SettingsForm

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py
LONG = 120_000


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(home))  # user presets go here
    return home


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(checks, "detect_gpu", lambda: None)


@pytest.fixture()
def gpu_12gb(monkeypatch):
    monkeypatch.setattr(checks, "detect_gpu", lambda: {"name": "Test GPU", "free": int(11.2 * GIB),
                                                       "total": int(11.7 * GIB), "tier": "12"})


def make_dialog(qtbot, tmp_path, **kw) -> NewProjectDialog:
    dialog = NewProjectDialog(projects_root=tmp_path / "projects", **kw)
    qtbot.addWidget(dialog)
    settle(qtbot, dialog)
    return dialog


def settle(qtbot, dialog: NewProjectDialog) -> None:
    qtbot.waitUntil(lambda: not dialog.checking(), timeout=LONG)


def type_path(qtbot, dialog: NewProjectDialog, picker, path) -> None:
    picker.edit.setText(str(path))
    settle(qtbot, dialog)


def test_create_needs_a_real_model_and_pictures(qtbot, tmp_path, tiny_ddpm, image_folder, no_gpu):
    """Issue 17: a text file renamed .safetensors and a folder without pictures used to leave Create
    enabled; now each is checked (on a worker) and Create says why it is not ready."""
    fake = tmp_path / "model.safetensors"
    fake.write_text("this is not a model")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    dialog = make_dialog(qtbot, tmp_path, name="Cats")
    assert not dialog.ok_button.isEnabled()

    type_path(qtbot, dialog, dialog.backbone_picker, fake)
    type_path(qtbot, dialog, dialog.images_picker, image_folder)
    assert not dialog.ok_button.isEnabled()
    assert dialog.backbone_msg.level() == "error" and dialog.backbone_msg.text()
    assert "Not yet" in dialog.ok_button.toolTip()

    type_path(qtbot, dialog, dialog.backbone_picker, tiny_ddpm)
    assert dialog.backbone_msg.level() == "ok"
    assert dialog.ok_button.isEnabled()

    type_path(qtbot, dialog, dialog.images_picker, empty)
    assert not dialog.ok_button.isEnabled()
    assert dialog.images_msg.level() == "error" and "No pictures" in dialog.images_msg.text()

    type_path(qtbot, dialog, dialog.backbone_picker, image_folder)  # a folder that is no model
    assert dialog.backbone_msg.level() == "error"
    type_path(qtbot, dialog, dialog.backbone_picker, tiny_ddpm)
    type_path(qtbot, dialog, dialog.images_picker, image_folder)
    assert dialog.ok_button.isEnabled()


def test_names_and_folders(qtbot, tmp_path, tiny_ddpm, image_folder, no_gpu):
    dialog = make_dialog(qtbot, tmp_path, backbone=str(tiny_ddpm), images=str(image_folder))
    assert not dialog.ok_button.isEnabled()  # no name yet
    dialog.name_edit.setText("Cats")
    assert dialog.folder_picker.path() == str(tmp_path / "projects" / "Cats")  # follows the name
    assert dialog.ok_button.isEnabled()
    dialog.name_edit.setText("bad/name")
    assert not dialog.ok_button.isEnabled() and dialog.name_msg.level() == "error"
    dialog.name_edit.setText("Cats")

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "project.json").write_text("{}")
    dialog.folder_picker.edit.setText(str(existing))
    dialog.folder_picker.edit.textEdited.emit(str(existing))
    assert not dialog.ok_button.isEnabled()
    dialog.folder_picker.edit.setText(str(tmp_path / "new_place"))
    assert dialog.ok_button.isEnabled()
    dialog.name_edit.setText("Dogs")  # the folder was chosen by hand: it stays
    values = dialog.values()
    assert {k: values[k] for k in ("name", "folder", "backbone", "images", "method")} == {
        "name": "Dogs", "folder": str(tmp_path / "new_place"), "backbone": str(tiny_ddpm),
        "images": str(image_folder), "method": "lora"}


def test_the_starter_is_offered_and_its_lora_starts_where_it_learns(qtbot, tmp_path, image_folder, no_gpu):
    """Issue 17: the starter with LoRA began at lr 1e-4 and batch 1 (a large model's LoRA rate), and
    after 21 steps base and trained looked the same; it now starts at the rate measured for it."""
    dialog = make_dialog(qtbot, tmp_path, name="Starter", images=str(image_folder))
    labels = [a.text() for a in dialog.starter_button.menu().actions()]
    assert labels[0].startswith("Starter diffusion model")
    dialog.starter_button.menu().actions()[0].trigger()
    settle(qtbot, dialog)
    assert dialog.backbone_picker.path() == str(resource("starter"))
    assert dialog.ok_button.isEnabled()
    assert dialog.method_combo.currentData() == "lora"
    settings = dialog.values()["settings"]
    assert (settings["learning_rate"], settings["batch_size"], settings["rank"]) == (2e-3, 16, 32)
    assert "learning rate 0.002" in dialog.settings_line.text()
    dialog.method_combo.setCurrentIndex(dialog.method_combo.findData("full"))
    settings = dialog.values()["settings"]
    assert (settings["method"], settings["learning_rate"]) == ("full", 5e-4)  # the sample project's rate


def test_the_preset_follows_the_gpu(qtbot, tmp_path, tiny_sd1_dir, image_folder, gpu_12gb):
    dialog = make_dialog(qtbot, tmp_path, name="SD", backbone=str(tiny_sd1_dir), images=str(image_folder))
    assert dialog.tier() == "12"
    assert dialog.preset_combo.currentText() == "12 GB GPU"
    assert "Test GPU" in dialog.preset_msg.text()
    settings = dialog.values()["settings"]
    assert (settings["method"], settings["batch_size"], settings["learning_rate"]) == ("lora", 2, 1e-4)
    dialog.preset_combo.setCurrentIndex(dialog.preset_combo.findText("6 GB GPU"))
    assert dialog.values()["settings"]["gradient_checkpointing"] is True
    dialog.method_combo.setCurrentIndex(dialog.method_combo.findData("full"))
    assert dialog.preset_combo.currentText() == "12 GB GPU"  # full fine-tuning's smallest
    assert dialog.values()["settings"]["learning_rate"] == 1e-5


def test_hint_lines_keep_their_place(qtbot, tmp_path, tiny_ddpm, image_folder, no_gpu):
    """Issue 17: hints collapsed and grew while typing, so the fields below moved under the cursor."""
    dialog = make_dialog(qtbot, tmp_path)
    dialog.show()
    qtbot.waitExposed(dialog)
    top = dialog.images_picker.mapTo(dialog, dialog.images_picker.rect().topLeft()).y()
    for text in ("C", "Cats", "bad/name", "Cats and a very long name " * 8, ""):
        dialog.name_edit.setText(text)
        qtbot.wait(1)
        assert dialog.images_picker.mapTo(dialog, dialog.images_picker.rect().topLeft()).y() == top, text
    type_path(qtbot, dialog, dialog.backbone_picker, tiny_ddpm)
    type_path(qtbot, dialog, dialog.images_picker, image_folder)
    assert dialog.images_picker.mapTo(dialog, dialog.images_picker.rect().topLeft()).y() == top


def test_a_project_made_in_the_dialog_starts_from_its_settings(qtbot, tmp_path, image_folder, no_gpu):
    """Through the window: the dialog's settings become the project's, and the Settings tab shows
    the memory estimate of its model."""
    from PySide6.QtCore import QSettings

    from transferstudio.ui.main_window import MainWindow

    window = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    dialog = window.new_project()
    dialog.name_edit.setText("Starter LoRA")
    dialog.folder_picker.edit.setText(str(tmp_path / "project"))
    dialog.folder_picker.edit.textEdited.emit(str(tmp_path / "project"))
    dialog.use_model(str(resource("starter")))
    type_path(qtbot, dialog, dialog.images_picker, image_folder)
    assert dialog.ok_button.isEnabled()
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        dialog.accept()
    config = window.project.config
    assert (config.method, config.learning_rate, config.batch_size, config.rank) == ("lora", 2e-3, 16, 32)
    assert json.loads((tmp_path / "project" / "project.json").read_text())["config"]["learning_rate"] == 2e-3
    with qtbot.waitSignal(window.settings_form.memory_estimated, timeout=LONG) as estimated:
        window.setup_tabs.setCurrentWidget(window.settings_form)
    assert estimated.args[0] is not None and "Estimated GPU memory" in window.settings_form.memory_line.text()
    assert window.settings_form.preset_combo.currentText() == "Any computer"
    qtbot.waitUntil(lambda: not window.settings_form.estimating(), timeout=LONG)
    window.close()


# --- the Settings form ----------------------------------------------------------------------------

def show_form(qtbot, model) -> SettingsForm:
    form = SettingsForm()
    qtbot.addWidget(form)
    form.resize(560, 800)
    form.show()
    qtbot.waitExposed(form)
    with qtbot.waitSignal(form.memory_estimated, timeout=LONG) as estimated:
        form.set_model(str(model))
    assert estimated.args[0] is not None
    return form


def wait_estimate(qtbot, form: SettingsForm) -> dict:
    with qtbot.waitSignal(form.memory_estimated, timeout=LONG) as estimated:
        pass
    return estimated.args[0]


def test_settings_form_estimates_memory_and_follows_changes(qtbot, tiny_sd1_dir, gpu_12gb):
    form = show_form(qtbot, tiny_sd1_dir)
    qtbot.waitUntil(lambda: not form.estimating(), timeout=LONG)
    assert "Estimated GPU memory" in form.memory_line.text() and "of 11.2 GB free — fits" in form.memory_line.text()
    assert form.memory_line.level() == "ok"
    assert "Activations" in form.memory_line.toolTip()
    first = form.memory_line.text()
    form.editors["batch_size"].setValue(8)
    info = wait_estimate(qtbot, form)
    qtbot.waitUntil(lambda: not form.estimating(), timeout=LONG)
    assert info["fits"] and form.memory_line.text() != first
    form.shutdown()


def test_settings_form_presets(qtbot, tiny_sd1_dir, user_home, gpu_12gb):
    form = show_form(qtbot, tiny_sd1_dir)
    names = [form.preset_combo.itemText(i) for i in range(form.preset_combo.count())]
    assert names[:3] == ["Custom", "CPU (no GPU)", "6 GB GPU"] and "12 GB GPU" in names
    form.preset_combo.setCurrentIndex(names.index("8 GB GPU"))
    form.preset_combo.activated.emit(names.index("8 GB GPU"))
    config = form.config()
    assert (config.batch_size, config.gradient_checkpointing) == (2, True)
    assert form.preset_combo.currentText() == "8 GB GPU"
    form.editors["batch_size"].setValue(3)
    assert form.preset_combo.currentText() == "Custom"  # edited: no longer the preset

    saved = form.save_preset("Three at a time")
    assert saved is not None and saved.path.parent == user_home / "presets"
    names = [form.preset_combo.itemText(i) for i in range(form.preset_combo.count())]
    assert "Three at a time (yours)" in names
    form.editors["batch_size"].setValue(1)
    index = names.index("Three at a time (yours)")
    form.preset_combo.setCurrentIndex(index)
    form.preset_combo.activated.emit(index)
    assert form.config().batch_size == 3
    for name in ("rank", "learning_rate", "gradient_checkpointing", "optimizer", "precision"):
        assert form.editors[name].toolTip()  # every setting explains itself
    assert form.preset_combo.toolTip() and form.save_preset_button.toolTip()
    qtbot.waitUntil(lambda: not form.estimating(), timeout=LONG)
    form.shutdown()


def test_what_it_learns_combines_with_the_gpu_preset(qtbot, tiny_sd1_dir, tiny_ddpm, user_home, gpu_12gb):
    """Style / character / object set how a LoRA learns and keep the GPU preset's memory settings;
    a model without prompts has no such row."""
    form = show_form(qtbot, tiny_sd1_dir)
    names = [form.purpose_combo.itemText(i) for i in range(form.purpose_combo.count())]
    assert names == ["Anything (your settings)", "A style", "A character", "An object"]
    assert form._plan_form.isRowVisible(form.purpose_combo) and form.purpose_combo.toolTip()
    gpu = names_of(form.preset_combo).index("8 GB GPU")
    form.preset_combo.activated.emit(gpu)
    form.purpose_combo.activated.emit(names.index("A character"))
    config = form.config()
    assert (config.flip, config.keep_tags, config.layers, config.shuffle_tags) == (False, 1, "attention", True)
    assert (config.batch_size, config.gradient_checkpointing) == (2, True)  # the GPU preset's, kept
    assert form.purpose_combo.currentText() == "A character" and form.preset_combo.currentText() == "8 GB GPU"
    form.purpose_combo.activated.emit(names.index("A style"))
    assert (form.config().layers, form.config().caption_dropout, form.config().flip) == ("attention+ff", 0.1, True)
    assert form.preset_combo.currentText() == "8 GB GPU"
    form.editors["flip"].setChecked(False)
    assert form.purpose_combo.currentText() == "Anything (your settings)"  # edited: no longer the purpose
    qtbot.waitUntil(lambda: not form.estimating(), timeout=LONG)
    form.shutdown()
    unconditional = show_form(qtbot, tiny_ddpm)
    assert not unconditional._plan_form.isRowVisible(unconditional.purpose_combo)
    qtbot.waitUntil(lambda: not unconditional.estimating(), timeout=LONG)
    unconditional.shutdown()


def names_of(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def test_a_damaged_preset_file_is_named_in_the_form(qtbot, tiny_ddpm, user_home, no_gpu):
    folder = user_home / "presets"
    folder.mkdir(parents=True)
    (folder / "broken.json").write_text("{ nope")
    form = show_form(qtbot, tiny_ddpm)
    assert form.note_line.level() == "warning" and "broken.json" in form.note_line.toolTip()
    assert (folder / "broken.json").read_text() == "{ nope"  # left as it was
    assert "no CUDA GPU found here" in form.memory_line.text()
    qtbot.waitUntil(lambda: not form.estimating(), timeout=LONG)
    form.shutdown()


def test_screenshots(qtbot, tmp_path, tiny_sd1_dir, image_folder, gpu_12gb):
    """Pictures of the dialog and the form for the README and for a look at their layout
    (written to $TRANSFERSTUDIO_SHOTS when it is set)."""
    import os

    out = Path(os.environ.get("TRANSFERSTUDIO_SHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    dialog = make_dialog(qtbot, tmp_path, name="Watercolour cats", backbone=str(tiny_sd1_dir),
                         images=str(image_folder))
    dialog.show()
    qtbot.waitExposed(dialog)
    assert dialog.grab().save(str(out / "new_project.png"))
    form = show_form(qtbot, tiny_sd1_dir)
    qtbot.waitUntil(lambda: not form.estimating(), timeout=LONG)
    assert form.grab().save(str(out / "settings_form.png"))
    form.shutdown()
