"""Edit ▸ Preferences…: where the model library looks for models, and light or dark.

Stored in QSettings under `library/` and `appearance/` (see ui/theme.py). Qt and stdlib only: the library scan itself runs on a
worker (`transferstudio.qt.tasks.discover_models`), which takes `library_settings(...)`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget)

from transferstudio.ui.theme import THEMES, apply_theme, save_theme, theme_setting
from transferstudio.ui.widgets import ERROR_RED, MessageLabel, PathPicker, nearest_existing_dir

KEY_FOLDERS = "library/folders"
KEY_A1111 = "library/a1111"
KEY_COMFYUI = "library/comfyui"
KEY_HF_CACHE = "library/hf_cache"


def default_hf_cache() -> str:
    """Where huggingface_hub keeps its cache unless told otherwise."""
    return os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")


def is_default_hf_cache(path: str) -> bool:
    """Whether `path` is where Hugging Face tools keep their cache unless told otherwise."""
    def norm(p: str) -> str:
        return os.path.normcase(os.path.normpath(os.path.abspath(os.path.expanduser(p))))

    return bool(path) and norm(path) == norm(default_hf_cache())


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):  # QSettings returns a bare string for a one-item list
        return [value]
    return [str(v) for v in value if str(v)]


def library_settings(settings: QSettings) -> dict[str, Any]:
    """The stored library locations. An absent HF cache key means the default; "" means off."""
    hf = settings.value(KEY_HF_CACHE)
    return {
        "folders": _as_list(settings.value(KEY_FOLDERS)),
        "a1111": str(settings.value(KEY_A1111) or ""),
        "comfyui": str(settings.value(KEY_COMFYUI) or ""),
        "hf_cache": default_hf_cache() if hf is None else str(hf),
    }


def save_library_settings(settings: QSettings, values: dict[str, Any]) -> None:
    settings.setValue(KEY_FOLDERS, list(values.get("folders") or []))
    settings.setValue(KEY_A1111, str(values.get("a1111") or ""))
    settings.setValue(KEY_COMFYUI, str(values.get("comfyui") or ""))
    settings.setValue(KEY_HF_CACHE, str(values.get("hf_cache") or ""))
    settings.sync()


def folder_problem(path: str, kind: str = "") -> tuple[str, str]:
    """(message, level) for a configured folder: missing folders are errors, an install folder
    without its usual layout is a warning (it may be the models folder itself, which works too)."""
    if not path:
        return "", "plain"
    p = Path(path).expanduser()
    if not p.is_dir():
        if kind == "hf" and is_default_hf_cache(path):  # a fresh machine: nothing downloaded yet
            return ("Not there yet: it will be created when a Hugging Face tool first downloads a model. "
                    "Nothing to list until then."), "muted"
        return "✗ This folder does not exist.", "error"
    if kind == "a1111" and not ((p / "models").is_dir() or p.name.lower() == "stable-diffusion"):
        return "No models folder here — is this the A1111 / Forge install folder?", "warning"
    if kind == "comfyui" and not ((p / "models").is_dir() or p.name.lower() == "models"):
        return "No models folder here — is this the ComfyUI install folder?", "warning"
    if kind == "hf" and not ((p / "hub").is_dir() or any(p.glob("models--*"))):
        return "No downloaded models here yet.", "muted"
    return "", "plain"


class PreferencesDialog(QDialog):
    """`saved` fires after OK has written the settings (the library dialog rescans then)."""

    saved = Signal()

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Preferences")
        self.setMinimumWidth(640)
        values = library_settings(settings)

        # --- own model folders -------------------------------------------------------------
        self.folders = QListWidget()
        self.folders.setToolTip("Folders where you keep models: diffusers folders and .safetensors files "
                                "in them and their subfolders are listed in the model library.")
        self.folders.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.folders.setMinimumHeight(110)
        self.add_button = QPushButton("Add folder…")
        self.add_button.setToolTip("Add a folder to search for models.")
        self.add_button.clicked.connect(self._browse_folder)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Stop searching the selected folders (nothing is deleted).")
        self.remove_button.clicked.connect(self.remove_selected)
        self.folders.itemSelectionChanged.connect(self._selection_changed)
        side = QVBoxLayout()
        side.addWidget(self.add_button)
        side.addWidget(self.remove_button)
        side.addStretch(1)
        folders_row = QHBoxLayout()
        folders_row.addWidget(self.folders, 1)
        folders_row.addLayout(side)
        folders_box = QGroupBox("Model folders")
        folders_box.setLayout(folders_row)
        for folder in values["folders"]:
            self.add_folder(folder)

        # --- other tools' installs -----------------------------------------------------------
        self.a1111 = PathPicker(folders=True, dialog_title="The A1111 / Forge install folder",
                                placeholder="e.g. ~/stable-diffusion-webui  (optional)")
        self.a1111.setToolTip("The Stable Diffusion web UI (AUTOMATIC1111) or Forge install folder: its "
                              "models/Stable-diffusion checkpoints are listed, and its models/Lora folder is "
                              "offered when exporting.")
        self.comfyui = PathPicker(folders=True, dialog_title="The ComfyUI install folder",
                                  placeholder="e.g. ~/ComfyUI  (optional)")
        self.comfyui.setToolTip("The ComfyUI install folder: its models/checkpoints and models/diffusers are "
                                "listed, and its models/loras folder is offered when exporting.")
        self.hf_cache = PathPicker(folders=True, dialog_title="The Hugging Face cache folder",
                                   placeholder="Empty: not searched")
        self.hf_cache.setToolTip("Where Hugging Face tools keep downloaded models (HF_HOME; usually "
                                 f"{default_hf_cache()}). Diffusers pipelines found there are listed. "
                                 "Clear the field to skip it.")
        self.hf_default = QPushButton("Default")
        self.hf_default.setToolTip(f"Use the usual location: {default_hf_cache()}")
        self.hf_default.clicked.connect(lambda: self.hf_cache.set_path(default_hf_cache()))
        hf_row = QHBoxLayout()
        hf_row.setContentsMargins(0, 0, 0, 0)
        hf_row.addWidget(self.hf_cache, 1)
        hf_row.addWidget(self.hf_default)

        self.a1111_msg = MessageLabel()
        self.comfyui_msg = MessageLabel()
        self.hf_msg = MessageLabel()
        self._checks = ((self.a1111, self.a1111_msg, "a1111"), (self.comfyui, self.comfyui_msg, "comfyui"),
                        (self.hf_cache, self.hf_msg, "hf"))
        for picker, _msg, _kind in self._checks:
            picker.edit.textChanged.connect(self._validate)

        tools = QFormLayout()
        tools.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        tools.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for text, field, msg, tip in (
                ("A1111 / &Forge", self.a1111, self.a1111_msg, self.a1111.toolTip()),
                ("&ComfyUI", self.comfyui, self.comfyui_msg, self.comfyui.toolTip()),
                ("&Hugging Face cache", hf_row, self.hf_msg, self.hf_cache.toolTip())):
            label = QLabel(text)
            label.setToolTip(tip)
            picker = field if isinstance(field, PathPicker) else self.hf_cache
            label.setBuddy(picker.edit)
            tools.addRow(label, field)
            tools.addRow("", msg)
        tools_box = QGroupBox("Other tools on this computer")
        tools_box.setLayout(tools)

        self.a1111.set_path(values["a1111"])
        self.comfyui.set_path(values["comfyui"])
        self.hf_cache.set_path(values["hf_cache"])

        # --- appearance --------------------------------------------------------------------------
        self._saved_theme = theme_setting(settings)
        self.theme = QComboBox()
        for key, text in THEMES:
            self.theme.addItem(text, key)
        self.theme.setCurrentIndex(max(0, self.theme.findData(self._saved_theme)))
        self.theme.setToolTip("Light or dark windows. \"Same as the system\" follows your desktop's setting, "
                              "also when it changes. The choice shows at once; Cancel goes back.")
        self.theme.currentIndexChanged.connect(lambda *_: apply_theme(self.theme_choice()))
        appearance = QFormLayout()
        theme_label = QLabel("&Theme")
        theme_label.setBuddy(self.theme)
        appearance.addRow(theme_label, self.theme)
        appearance_box = QGroupBox("Appearance")
        appearance_box.setLayout(appearance)

        note = MessageLabel()
        note.show_message("The model library lists what it finds in these places; nothing is copied or "
                          "changed.", "muted")

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(folders_box)
        layout.addWidget(tools_box)
        layout.addWidget(appearance_box)
        layout.addWidget(note)
        layout.addStretch(1)
        layout.addWidget(self.buttons)
        self._selection_changed()
        self._validate()

    # --- API ----------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        return {
            "folders": self.folder_list(),
            "a1111": self.a1111.path(),
            "comfyui": self.comfyui.path(),
            "hf_cache": self.hf_cache.path(),
        }

    def folder_list(self) -> list[str]:
        return [str(self.folders.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.folders.count())]

    def add_folder(self, path: str) -> None:
        path = os.path.normpath(str(Path(path).expanduser()))
        if path in self.folder_list():
            return
        item = QListWidgetItem(path)
        item.setData(Qt.ItemDataRole.UserRole, path)
        self._flag(item)
        self.folders.addItem(item)

    def remove_selected(self) -> None:
        for item in self.folders.selectedItems():
            self.folders.takeItem(self.folders.row(item))

    def theme_choice(self) -> str:
        return str(self.theme.currentData() or "system")

    def accept(self) -> None:
        save_library_settings(self.settings, self.values())
        save_theme(self.settings, self.theme_choice())
        self._saved_theme = self.theme_choice()
        super().accept()
        self.saved.emit()

    def reject(self) -> None:
        if self.theme_choice() != self._saved_theme:  # the theme tried out goes back
            apply_theme(self._saved_theme)
        super().reject()

    # --- internals ----------------------------------------------------------------------------
    def _browse_folder(self) -> None:
        current = self.folders.currentItem()
        start = nearest_existing_dir(current.data(Qt.ItemDataRole.UserRole) if current else None)
        chosen = QFileDialog.getExistingDirectory(self, "Add a model folder", start)
        if chosen:
            self.add_folder(chosen)

    def _flag(self, item: QListWidgetItem) -> None:
        path = str(item.data(Qt.ItemDataRole.UserRole))
        if Path(path).is_dir():
            item.setText(path)
            item.setToolTip(path)
        else:  # kept (a drive may be unplugged), but marked so the user knows why nothing is found
            item.setText(f"✗ {path}   (does not exist)")
            item.setForeground(QColor(ERROR_RED))
            item.setToolTip(f"{path}\nThis folder does not exist (an unplugged drive?). It is skipped.")

    def _selection_changed(self) -> None:
        self.remove_button.setEnabled(bool(self.folders.selectedItems()))

    def _validate(self, *_: object) -> None:
        for picker, msg, kind in self._checks:
            text, level = folder_problem(picker.path(), kind)
            msg.show_message(text, level)
