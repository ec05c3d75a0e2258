"""The model library UI: preferences, the library dialog, its wiring, and "Export to" folders."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from tiny_single_file import fake_checkpoint_keys, write_fake_safetensors  # noqa: E402
from transferstudio.core.paths import resource  # noqa: E402
from transferstudio.project.project import create_project  # noqa: E402
from transferstudio.ui.export_dialog import ExportDialog  # noqa: E402
from transferstudio.ui.library_dialog import COL_NAME, COL_USABLE, LibraryDialog  # noqa: E402
from transferstudio.ui.preferences_dialog import (PreferencesDialog, library_settings,  # noqa: E402
                                                  save_library_settings)

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py

LONG = 60_000
LORA_KEYS = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
             ("F16", (4, 768)),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
             ("F16", (320, 4))}


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # never the real cache of this machine
    return home


@pytest.fixture()
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture()
def a1111(tmp_path) -> Path:
    """An A1111 install: one SD 1.x checkpoint, a LoRA misfiled among checkpoints, a LoRA folder."""
    root = tmp_path / "stable-diffusion-webui"
    sd = root / "models" / "Stable-diffusion"
    write_fake_safetensors(sd / "x.safetensors", fake_checkpoint_keys("sd1"))
    write_fake_safetensors(sd / "style_lora.safetensors", LORA_KEYS)
    (root / "models" / "Lora").mkdir(parents=True)
    return root


def scanned_dialog(qtbot, settings: QSettings, **kw: Any) -> LibraryDialog:
    dialog = LibraryDialog(settings, **kw)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=LONG)
    return dialog


def row_of(dialog: LibraryDialog, name: str) -> int:
    names = [e["name"] for e in dialog.entries()]
    return names.index(name)


# --- preferences -----------------------------------------------------------------------------
def test_preferences_persist_and_flag_missing_folders(qtbot, settings, tmp_path, a1111):
    assert library_settings(settings)["hf_cache"] == str(tmp_path / "hf")  # HF_HOME is the default
    dialog = PreferencesDialog(settings)
    qtbot.addWidget(dialog)
    mine = tmp_path / "my models"
    mine.mkdir()
    dialog.add_folder(str(mine))
    dialog.add_folder(str(tmp_path / "unplugged"))
    dialog.add_folder(str(mine))  # listed once
    assert dialog.folder_list() == [str(mine), str(tmp_path / "unplugged")]
    missing = dialog.folders.item(1)
    assert "does not exist" in missing.text() and "does not exist" in missing.toolTip()
    assert "does not exist" not in dialog.folders.item(0).text()

    dialog.a1111.set_path(str(tmp_path / "nowhere"))
    dialog.a1111.edit.textChanged.emit(dialog.a1111.edit.text())
    assert dialog.a1111_msg.level() == "error" and "does not exist" in dialog.a1111_msg.text()
    dialog.a1111.set_path(str(a1111))
    assert dialog.a1111_msg.isHidden()
    dialog.comfyui.set_path(str(tmp_path / "ComfyUI"))
    assert dialog.comfyui_msg.level() == "error"
    dialog.hf_cache.set_path("")  # cleared: the cache is not searched
    for field in (dialog.folders, dialog.add_button, dialog.remove_button, dialog.a1111, dialog.comfyui,
                  dialog.hf_cache, dialog.hf_default):
        assert field.toolTip(), field

    dialog.folders.item(1).setSelected(True)
    dialog.remove_button.click()
    dialog.add_folder(str(tmp_path / "unplugged"))
    dialog.accept()

    again = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    assert library_settings(again) == {"folders": [str(mine), str(tmp_path / "unplugged")], "a1111": str(a1111),
                                       "comfyui": str(tmp_path / "ComfyUI"), "hf_cache": ""}
    reopened = PreferencesDialog(again)
    qtbot.addWidget(reopened)
    assert reopened.values() == library_settings(again)


# --- library dialog --------------------------------------------------------------------------
def test_library_lists_models_and_picks_only_usable_ones(qtbot, settings, a1111, tiny_ddpm):
    save_library_settings(settings, {"folders": [str(tiny_ddpm.parent)], "a1111": str(a1111)})
    dialog = scanned_dialog(qtbot, settings, include_starter=False)
    by = {e["name"]: e for e in dialog.entries()}
    assert set(by) == {"x", "style_lora", "tiny-ddpm"}
    assert by["x"]["usable"] and by["x"]["family"] == "sd1" and by["x"]["native_resolution"] == 512
    assert by["tiny-ddpm"]["usable"] and by["tiny-ddpm"]["source"] == "folder"
    assert not by["style_lora"]["usable"]
    assert "3 models found, 2 usable" in dialog.summary.text()

    # The ✗ says why, on hover and below the table; it cannot be picked, not even by double-click.
    lora = row_of(dialog, "style_lora")
    mark = dialog.proxy.index(lora, COL_USABLE)
    assert mark.data() == "✗" and "LoRA" in mark.data(Qt.ItemDataRole.ToolTipRole)
    assert dialog.proxy.index(row_of(dialog, "x"), COL_USABLE).data() == "✓"
    dialog.table.selectRow(lora)
    assert not dialog.use_button.isEnabled() and "LoRA" in dialog.use_button.toolTip()
    assert "LoRA" in dialog.problem.text() and not dialog.problem.isHidden()
    picked: list[str] = []
    dialog.model_chosen.connect(picked.append)
    dialog.table.doubleClicked.emit(dialog.proxy.index(lora, COL_NAME))
    assert picked == []
    assert "cannot be used" in dialog.problem.text()

    dialog.filter.setText("TINY")
    assert [e["name"] for e in dialog.entries()] == ["tiny-ddpm"]
    assert "Showing 1 of 3" in dialog.summary.text()
    dialog.filter.setText("")

    dialog.table.selectRow(row_of(dialog, "x"))
    assert dialog.use_button.isEnabled()
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        dialog.use_button.click()
    assert chosen.args == [str(a1111 / "models" / "Stable-diffusion" / "x.safetensors")]
    assert dialog.result() == LibraryDialog.DialogCode.Accepted


def test_refresh_finds_new_models_and_empty_state_points_to_preferences(qtbot, settings, tmp_path):
    dialog = scanned_dialog(qtbot, settings, include_starter=False)
    assert dialog.stack.currentIndex() == 1 and "Preferences" in dialog.empty.text()
    mine = tmp_path / "my models"
    write_fake_safetensors(mine / "sdxl" / "juggernaut.safetensors", fake_checkpoint_keys("sdxl"))
    prefs = dialog.open_preferences()
    prefs.add_folder(str(mine))
    with qtbot.waitSignal(dialog.scanned, timeout=LONG) as scanned:
        prefs.accept()  # saving the preferences searches again
    assert scanned.args == [1] and dialog.stack.currentIndex() == 0
    assert dialog.entries()[0]["family"] == "sdxl"
    dialog.close()


# --- wiring into the window -----------------------------------------------------------------
def test_library_button_sets_and_inspects_the_backbone(qtbot, settings, tmp_path, tiny_ddpm, image_folder):
    from transferstudio.ui.main_window import MainWindow

    project = create_project(tmp_path / "proj", backbone=tiny_ddpm, images=image_folder, name="Squares")
    window = MainWindow(settings)
    problems: list[tuple] = []
    window.show_problem = lambda *a: problems.append(a)
    window.ask = lambda *a, **k: QMessageBox.StandardButton.No
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.inspected, timeout=LONG):
        window.open_project(project.folder, offer_continue=False)

    window.backbone_panel.library_button.click()
    dialog = window.library_dialog
    assert isinstance(dialog, LibraryDialog)
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=LONG)
    assert dialog.selected() is None  # the project's model is in none of the library's folders
    starter = resource("starter")
    assert dialog.select_path(str(starter))  # the bundled starter is always listed
    with qtbot.waitSignal(window.inspected, timeout=LONG) as inspected:
        dialog.choose()
    assert inspected.args[0]["usable"] and window.project.backbone == starter
    assert window.backbone_panel.path() == str(starter) and window.dirty
    assert window.act_library.shortcut().toString() == "Ctrl+L"

    assert window.act_preferences.shortcut().toString() == "Ctrl+,"
    window.act_preferences.trigger()
    assert isinstance(window.preferences_dialog, PreferencesDialog)
    window.preferences_dialog.reject()
    assert problems == []
    window.dirty = False


# --- export destinations ----------------------------------------------------------------------
def test_export_dialog_offers_the_a1111_lora_folder_and_never_overwrites(qtbot, settings, tmp_path, a1111):
    save_library_settings(settings, {"a1111": str(a1111), "comfyui": str(tmp_path / "not-installed")})
    project = SimpleNamespace(folder=tmp_path / "proj", name="My style", config=SimpleNamespace(method="lora"),
                              runs=lambda: [])  # a project without runs on disk
    dialog = ExportDialog(project, family="sd1", method="lora", settings=settings)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(dialog.formats_ready, timeout=LONG)
    lora_folder = str(a1111 / "models" / "Lora")
    assert dialog.destinations() == [str(tmp_path / "proj" / "exports"), lora_folder]
    index = dialog.export_to.findData(lora_folder)
    dialog.export_to.setCurrentIndex(index)
    dialog.export_to.activated.emit(index)
    assert dialog.folder.text() == lora_folder
    dialog.folder.setText(str(tmp_path / "proj" / "exports"))
    assert dialog.export_to.currentIndex() == 0  # typing a shortcut's folder selects it

    dialog.folder.setText(lora_folder)
    write_fake_safetensors(Path(lora_folder) / "My style.safetensors", LORA_KEYS)
    asked: list[tuple[str, str]] = []
    dialog.ask_existing = lambda name, free: asked.append((name, free)) or "cancel"
    dialog.start_export()
    assert asked == [("My style", "My style-2")] and dialog.task is None  # nothing written, nothing lost
    assert dialog.free_destination(Path(lora_folder) / "My style").name == "My style-2"
    dialog.close()
