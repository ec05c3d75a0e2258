"""New-project dialog, and the "where did this folder go?" dialog for moved projects."""
from __future__ import annotations

import os
import re
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from transferstudio.project.config import METHODS
from transferstudio.ui.widgets import MessageLabel, PathPicker

PROJECT_FILE = "project.json"  # same name as transferstudio.project.project.PROJECT_FILE
MODEL_SUFFIXES = (".safetensors",)
# Characters that are illegal in a folder name on Windows (and "/" everywhere).
_BAD_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')

METHOD_LABELS = {"lora": "LoRA — small adapter, fast (recommended)",
                 "full": "Full fine-tuning — every weight (small models only)"}


def default_projects_root() -> Path:
    return Path.home() / "TransferStudio"


def name_problem(name: str) -> str:
    name = name.strip()
    if not name:
        return "Give the project a name."
    if _BAD_NAME.search(name) or name in (".", ".."):
        return 'A name cannot contain < > : " / \\ | ? *'
    if name.endswith("."):
        return "A name cannot end with a dot."
    return ""


def folder_problem(folder: str) -> tuple[str, str]:
    """(error, warning) for the project folder."""
    if not folder:
        return "Choose where to keep the project.", ""
    p = Path(folder).expanduser()
    if p.exists() and not p.is_dir():
        return "That path is a file, not a folder.", ""
    if (p / PROJECT_FILE).exists():
        return "A project already exists in that folder — open it instead.", ""
    if p.is_dir() and any(p.iterdir()):
        return "", "That folder is not empty; the project's files will be added to it."
    return "", ""


def backbone_problem(path: str) -> str:
    if not path:
        return "Choose the base model: a diffusers folder or a .safetensors file."
    p = Path(path).expanduser()
    if not p.exists():
        return "Not found."
    if p.is_file() and p.suffix.lower() not in MODEL_SUFFIXES:
        return "Choose a .safetensors file or a model folder."
    return ""


def images_problem(path: str) -> str:
    if not path:
        return "Choose the folder with your training images."
    p = Path(path).expanduser()
    if not p.exists():
        return "Not found."
    if not p.is_dir():
        return "Choose a folder, not a file."
    return ""


class NewProjectDialog(QDialog):
    """OK is enabled only when every field is valid. `values()` gives absolute paths."""

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        projects_root: str | os.PathLike | None = None,
        backbone: str = "",
        images: str = "",
        name: str = "",
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.setMinimumWidth(620)
        self._root = Path(projects_root) if projects_root else default_projects_root()
        self._folder_follows_name = True  # until the user picks a folder themselves

        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. Watercolour cats")
        self.name_edit.setToolTip("A name for this project; also the name of its folder.")
        self.folder_picker = PathPicker(folders=True, dialog_title="Where to keep the project")
        self.folder_picker.setToolTip(
            "The project's own folder: settings, runs, previews, checkpoints and exports go here.")
        self.backbone_picker = PathPicker(
            folders=True, files=True, dialog_title="Choose the base model",
            placeholder="A diffusers model folder or a .safetensors file")
        self.backbone_picker.setToolTip("The pretrained model to fine-tune.")
        self.images_picker = PathPicker(folders=True, dialog_title="Choose your image folder",
                                        placeholder="The folder with your training images")
        self.images_picker.setToolTip(
            "Your training images (subfolders included). A .txt file next to an image is its caption.")
        self.method_combo = QComboBox()
        for method in METHODS:
            self.method_combo.addItem(METHOD_LABELS.get(method, method), method)
        self.method_combo.setToolTip(
            "LoRA trains a small adapter (fast, small files); full fine-tuning changes every "
            "weight. You can change this later in the settings.")

        self.name_msg = MessageLabel()
        self.folder_msg = MessageLabel()
        self.backbone_msg = MessageLabel()
        self.images_msg = MessageLabel()
        for msg in (self.name_msg, self.folder_msg, self.backbone_msg, self.images_msg):
            msg.setWordWrap(False)  # one short line; wrapping labels inflate form rows

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self._form = form
        for label, widget, msg in (
            ("&Name", self.name_edit, self.name_msg),
            ("Project &folder", self.folder_picker, self.folder_msg),
            ("&Base model", self.backbone_picker, self.backbone_msg),
            ("&Images", self.images_picker, self.images_msg),
        ):
            lab = QLabel(label)
            lab.setBuddy(widget.edit if isinstance(widget, PathPicker) else widget)
            form.addRow(lab, widget)
            form.addRow("", msg)
        method_label = QLabel("&Method")
        method_label.setBuddy(self.method_combo)
        form.addRow(method_label, self.method_combo)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Create project")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addStretch(1)
        layout.addWidget(self.buttons)

        self.name_edit.textChanged.connect(self._name_changed)
        self.folder_picker.edit.textEdited.connect(self._folder_edited)
        self.folder_picker.path_changed.connect(self._folder_edited)
        for picker in (self.folder_picker, self.backbone_picker, self.images_picker):
            picker.edit.textChanged.connect(self._validate)
        self.backbone_picker.set_path(backbone)
        self.images_picker.set_path(images)
        self.name_edit.setText(name)
        self._name_changed(name)
        self._validate()

    # --- API --------------------------------------------------------------------------
    def values(self) -> dict[str, str]:
        def absolute(p: str) -> str:
            return str(Path(p).expanduser().absolute()) if p else ""

        return {
            "name": self.name_edit.text().strip(),
            "folder": absolute(self.folder_picker.path()),
            "backbone": absolute(self.backbone_picker.path()),
            "images": absolute(self.images_picker.path()),
            "method": self.method_combo.currentData(),
        }

    def is_valid(self) -> bool:
        return self.ok_button.isEnabled()

    # --- internals ------------------------------------------------------------------------
    def _name_changed(self, text: str) -> None:
        if self._folder_follows_name:
            name = text.strip()
            folder = str(self._root / name) if name and not name_problem(name) else ""
            self.folder_picker.set_path(folder)
        self._validate()

    def _folder_edited(self, *_: object) -> None:
        self._folder_follows_name = False

    def _validate(self, *_: object) -> None:
        name_err = name_problem(self.name_edit.text())
        folder_err, folder_warn = folder_problem(self.folder_picker.path())
        backbone_err = backbone_problem(self.backbone_picker.path())
        images_err = images_problem(self.images_picker.path())
        # A field the user has not touched yet shows a muted hint, not a red error.
        self._show(self.name_msg, name_err, bool(self.name_edit.text()))
        if folder_err:
            self._show(self.folder_msg, folder_err, bool(self.folder_picker.path()))
        else:
            self.folder_msg.show_message(folder_warn, "warning")
        self._show(self.backbone_msg, backbone_err, bool(self.backbone_picker.path()))
        self._show(self.images_msg, images_err, bool(self.images_picker.path()))
        for msg in (self.name_msg, self.folder_msg, self.backbone_msg, self.images_msg):
            self._form.setRowVisible(msg, bool(msg.text()))
        self.ok_button.setEnabled(not (name_err or folder_err or backbone_err or images_err))

    @staticmethod
    def _show(label: MessageLabel, problem: str, touched: bool) -> None:
        label.show_message(problem, "error" if touched else "muted")


class LocateDialog(QDialog):
    """A project made on another machine points at a folder/file that is not here: find it."""

    def __init__(self, parent: QWidget | None, what: str, old_path: str, pick_folder: bool) -> None:
        super().__init__(parent)
        self._pick_folder = pick_folder
        self.setWindowTitle(f"Locate {what}")
        self.setMinimumWidth(560)
        kind = "folder" if pick_folder else "file"
        intro = QLabel(
            f"The {what} of this project was not found at:<br><code>{_html(old_path)}</code><br><br>"
            f"It may have been moved, renamed, or be on a drive that is not connected. "
            f"Choose where the {kind} is now.")
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        intro.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.picker = PathPicker(folders=pick_folder, files=not pick_folder,
                                 dialog_title=f"Locate {what}")
        self.picker.set_path(old_path)
        self.msg = MessageLabel()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Use this location")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.picker)
        layout.addWidget(self.msg)
        layout.addWidget(self.buttons)
        self.picker.edit.textChanged.connect(self._validate)
        self._validate()

    def path(self) -> str | None:
        p = self.picker.path()
        return str(Path(p).absolute()) if p and self._exists(p) else None

    def _exists(self, p: str) -> bool:
        return os.path.isdir(p) if self._pick_folder else os.path.isfile(p)

    def _validate(self, *_: object) -> None:
        p = self.picker.path()
        ok = bool(p) and self._exists(p)
        self.ok_button.setEnabled(ok)
        self.msg.show_message("" if ok else "Not found here yet.", "muted")


def ask_for_moved_path(parent: QWidget | None, what: str, old_path: str, pick_folder: bool) -> str | None:
    """Ask the user where `what` ("image folder", "base model") is now; None if cancelled."""
    dialog = LocateDialog(parent, what, old_path, pick_folder)
    try:
        if dialog.exec() == QDialog.DialogCode.Accepted:
            return dialog.path()
        return None
    finally:
        dialog.deleteLater()


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
