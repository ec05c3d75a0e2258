"""New-project dialog, and the "where did this folder go?" dialog for moved projects.

The dialog checks what it can at once (names, folders) and the rest on worker threads through
transferstudio.qt (is the model one TransferStudio can train? does the folder hold pictures?
which GPU is there?), and keeps Create disabled, with the reason, until everything is right. The
new project's settings come from the model's kind, the method and the GPU's preset
(transferstudio.project.presets).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from transferstudio.core.paths import resource
from transferstudio.project import presets
from transferstudio.project.config import METHODS, TrainConfig
from transferstudio.qt import plan as checks
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.widgets import HintLine, MessageLabel, PathPicker

PROJECT_FILE = "project.json"  # same name as transferstudio.project.project.PROJECT_FILE
MODEL_SUFFIXES = (".safetensors",)
# Characters that are illegal in a folder name on Windows (and "/" everywhere).
_BAD_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
CHECK_DELAY_MS = 300  # a path being typed is checked once it stays put this long

METHOD_LABELS = {"lora": "LoRA — small adapter, fast (recommended)",
                 "full": "Full fine-tuning — every weight (small models only)",
                 "decoder": "Decoder only — keeps the latent space (VAEs)"}
# The models that ship with TransferStudio: (label, resources folder, what it is for).
STARTERS = (("Starter diffusion model (32 px)", "starter", "A small unconditional diffusion model that trains on any "
             "computer in minutes: the place to learn how fine-tuning works."),
            ("Starter VAE", "starter_vae", "A small variational autoencoder: fine-tune how it redraws pictures."),
            ("Starter GAN", "starter_gan", "A small GAN: adapt what it generates to a few pictures."))


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
    """What is wrong with the model path at a glance (the model itself is checked on a worker)."""
    if not path:
        return "Choose the base model: a diffusers folder or a .safetensors file."
    p = Path(path).expanduser()
    if not p.exists():
        return "Not found."
    if p.is_file() and p.suffix.lower() not in MODEL_SUFFIXES:
        return "Choose a .safetensors file or a model folder."
    return ""


def images_problem(path: str) -> str:
    """What is wrong with the picture folder at a glance (its pictures are checked on a worker)."""
    if not path:
        return "Choose the folder with your training images."
    p = Path(path).expanduser()
    if not p.exists():
        return "Not found."
    if not p.is_dir():
        return "Choose a folder, not a file."
    return ""


def starter_models() -> list[tuple[str, Path, str]]:
    """(label, folder, description) of the starter models that are installed."""
    return [(label, resource(name), text) for label, name, text in STARTERS if resource(name).is_dir()]


class NewProjectDialog(QDialog):
    """Create is enabled only when every field is valid and the model and pictures have been
    checked. `values()` gives absolute paths, the method and the new project's settings."""

    checked = Signal()  # a worker check (model, pictures or GPU) came back

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        projects_root: str | os.PathLike | None = None,
        backbone: str = "",
        images: str = "",
        name: str = "",
        detect_gpu: bool = True,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.setMinimumWidth(720)
        self._root = Path(projects_root) if projects_root else default_projects_root()
        self._folder_follows_name = True  # until the user picks a folder themselves
        self._tasks: set[TaskWorker] = set()
        self._model: dict[str, Any] | None = None  # model_facts of the model path, once checked
        self._model_checked = ""  # the path those facts are about
        self._pictures: tuple[str, str] | None = None  # (folder, problem) once checked
        self._gpu: dict[str, Any] | None = None
        self._gpu_known = not detect_gpu  # without detection, plan for no GPU

        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. Watercolour cats")
        self.name_edit.setToolTip("A name for this project; also the name of its folder.")
        self.folder_picker = PathPicker(folders=True, dialog_title="Where to keep the project")
        self.folder_picker.setToolTip(
            "The project's own folder: settings, runs, previews, checkpoints and exports go here.")
        self.backbone_picker = PathPicker(
            folders=True, files=True, dialog_title="Choose the base model",
            placeholder="A diffusers model folder or a .safetensors file")
        self.backbone_picker.setToolTip("The pretrained model to fine-tune: a diffusers folder, a Stable Diffusion "
                                        ".safetensors checkpoint, a VAE or a TransferStudio GAN.")
        self.starter_button = QPushButton("Starter models")
        self.starter_button.setToolTip("Use one of the small models that come with TransferStudio: they train on any "
                                       "computer, and show what fine-tuning does within minutes.")
        menu = QMenu(self.starter_button)
        for label, folder, text in starter_models():
            action = QAction(label, menu)
            action.setToolTip(text)
            action.triggered.connect(lambda _=False, f=folder: self.use_model(str(f)))
            menu.addAction(action)
        menu.setToolTipsVisible(True)
        self.starter_button.setMenu(menu)
        self.starter_button.setEnabled(bool(menu.actions()))
        model_row = QWidget()
        row = QHBoxLayout(model_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.backbone_picker, 1)
        row.addWidget(self.starter_button)

        self.images_picker = PathPicker(folders=True, dialog_title="Choose your image folder",
                                        placeholder="The folder with your training images")
        self.images_picker.setToolTip(
            "Your training images (subfolders included). A .txt file next to an image is its caption.")
        self.method_combo = QComboBox()
        self.method_combo.setToolTip(
            "LoRA trains a small adapter (fast, small files); full fine-tuning changes every weight; a VAE can "
            "train its decoder only. The choices are what the chosen model offers. You can change this later in the "
            "settings.")
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip(
            "Settings made for a GPU of this size (batch size, gradient checkpointing, optimizer…), so that the run "
            "fits its memory. Chosen from the GPU found on this computer; you can change them later in Settings.")
        self.settings_line = HintLine()
        self.settings_line.setToolTip("What the new project starts with.")

        self.name_msg = HintLine()
        self.folder_msg = HintLine()
        self.backbone_msg = HintLine()
        self.images_msg = HintLine()
        self.preset_msg = HintLine()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setVerticalSpacing(2)
        self._form = form
        for label, widget, buddy, msg in (
            ("&Name", self.name_edit, self.name_edit, self.name_msg),
            ("Project &folder", self.folder_picker, self.folder_picker.edit, self.folder_msg),
            ("&Base model", model_row, self.backbone_picker.edit, self.backbone_msg),
            ("&Images", self.images_picker, self.images_picker.edit, self.images_msg),
            ("&Method", self.method_combo, self.method_combo, None),
            ("GPU &preset", self.preset_combo, self.preset_combo, self.preset_msg),
        ):
            lab = QLabel(label)
            lab.setBuddy(buddy)
            lab.setToolTip(widget.toolTip())
            form.addRow(lab, widget)
            if msg is not None:
                form.addRow("", msg)
        starts = QLabel("Starts with")
        starts.setToolTip(self.settings_line.toolTip())
        form.addRow(starts, self.settings_line)

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

        self._model_timer = self._delay(self._check_model)
        self._pictures_timer = self._delay(self._check_pictures)
        self.name_edit.textChanged.connect(self._name_changed)
        self.folder_picker.edit.textEdited.connect(self._folder_edited)
        self.folder_picker.path_changed.connect(self._folder_edited)
        self.folder_picker.edit.textChanged.connect(self._validate)
        self.backbone_picker.edit.textChanged.connect(self._model_path_changed)
        self.images_picker.edit.textChanged.connect(self._pictures_path_changed)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.preset_combo.currentIndexChanged.connect(self._show_settings)
        self._fill_methods(None)
        self.backbone_picker.set_path(backbone)
        self.images_picker.set_path(images)
        self.name_edit.setText(name)
        self._name_changed(name)
        if detect_gpu:
            self._run(checks.detect_gpu, self._gpu_detected, name="detect-gpu")
        self._model_path_changed()
        self._pictures_path_changed()

    # --- API --------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        def absolute(p: str) -> str:
            return str(Path(p).expanduser().absolute()) if p else ""

        config = self.train_config()
        return {
            "name": self.name_edit.text().strip(),
            "folder": absolute(self.folder_picker.path()),
            "backbone": absolute(self.backbone_picker.path()),
            "images": absolute(self.images_picker.path()),
            "method": self.method_combo.currentData(),
            "settings": config.to_dict() if config is not None else None,
        }

    def train_config(self) -> TrainConfig | None:
        """The new project's settings (None until the model is known)."""
        caps = self._caps()
        if caps is None:
            return None
        preset = self.preset_combo.currentData()
        return presets.new_project_settings(caps, self.method_combo.currentData() or "lora", self.tier(),
                                            preset if isinstance(preset, presets.Preset) else None)

    def tier(self) -> str:
        return self._gpu["tier"] if self._gpu else "cpu"

    def use_model(self, path: str) -> None:
        """Take this model (a starter from the menu), as if typed."""
        self.backbone_picker.set_path(path)

    def is_valid(self) -> bool:
        return self.ok_button.isEnabled()

    def checking(self) -> bool:
        """Whether a check is still under way (tests wait for it)."""
        return bool(self._tasks) or self._model_timer.isActive() or self._pictures_timer.isActive()

    def done(self, result: int) -> None:  # noqa: D401 (Qt naming)
        """Closing waits for the short checks still running (they never outlive the dialog)."""
        self._model_timer.stop()
        self._pictures_timer.stop()
        for task in list(self._tasks):
            task.wait(30)
        super().done(result)

    # --- checks on workers -----------------------------------------------------------------
    def _delay(self, slot: Any) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(CHECK_DELAY_MS)
        timer.timeout.connect(slot)
        return timer

    def _run(self, fn: Any, on_result: Any, *args: Any, name: str) -> None:
        task = TaskWorker(fn, *args, name=name)
        task.succeeded.connect(on_result)
        task.failed.connect(lambda message, advice: on_result({"error": f"{message} {advice}".strip()}))
        task.crashed.connect(lambda _text: on_result({"error": "it could not be checked (details in the log file)"}))
        task.done.connect(lambda t=task: self._task_done(t))
        self._tasks.add(task)
        task.start()

    def _task_done(self, task: TaskWorker) -> None:
        task.wait(5)
        self._tasks.discard(task)
        self.checked.emit()

    def _model_path_changed(self, *_: object) -> None:
        self._model, self._model_checked = None, ""
        self._fill_methods(None)
        if not backbone_problem(self.backbone_picker.path()):
            self._model_timer.start()
        self._validate()

    def _check_model(self) -> None:
        path = self.backbone_picker.path()
        if path and not backbone_problem(path):
            self._run(checks.model_facts, lambda facts, p=path: self._model_known(p, facts), path, name="check-model")

    def _model_known(self, path: str, facts: dict[str, Any]) -> None:
        if path != self.backbone_picker.path():
            return  # about a path no longer there
        if "error" in facts:
            facts = {"usable": False, "problems": [facts["error"]], "label": "", "caps": None}
        self._model, self._model_checked = facts, path
        self._fill_methods(facts.get("caps"))
        self._validate()

    def _pictures_path_changed(self, *_: object) -> None:
        self._pictures = None
        if not images_problem(self.images_picker.path()):
            self._pictures_timer.start()
        self._validate()

    def _check_pictures(self) -> None:
        folder = self.images_picker.path()
        if folder and not images_problem(folder):
            self._run(checks.pictures_problem, lambda problem, f=folder: self._pictures_known(f, problem), folder,
                      name="check-pictures")

    def _pictures_known(self, folder: str, problem: Any) -> None:
        if folder != self.images_picker.path():
            return
        self._pictures = (folder, problem["error"] if isinstance(problem, dict) else str(problem or ""))
        self._validate()

    def _gpu_detected(self, gpu: Any) -> None:
        self._gpu = gpu if isinstance(gpu, dict) and "tier" in gpu else None
        self._gpu_known = True
        self._fill_presets()
        self._validate()

    # --- method and preset --------------------------------------------------------------
    def _caps(self) -> SimpleNamespace | None:
        caps = (self._model or {}).get("caps")
        return SimpleNamespace(**caps) if caps and self._model and self._model.get("usable") else None

    def _fill_methods(self, caps: dict[str, Any] | None) -> None:
        """The methods the model offers (before it is known: LoRA and full fine-tuning)."""
        offered = [m for m in (caps or {}).get("methods", ("lora", "full")) if m in METHODS]
        current = self.method_combo.currentData()
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        for method in offered:
            self.method_combo.addItem(METHOD_LABELS.get(method, method), method)
        if caps is not None:
            kind = presets.model_kind(SimpleNamespace(**caps))
            wanted = current if current in offered else offered[0]
            current = presets.method_for_tier(kind, wanted, self.tier(), offered)
        index = self.method_combo.findData(current)
        self.method_combo.setCurrentIndex(max(0, index))
        self.method_combo.blockSignals(False)
        self._fill_presets()

    def _method_changed(self, *_: object) -> None:
        self._fill_presets()

    def _fill_presets(self) -> None:
        """The presets of the model's kind and the method, the one for the detected GPU chosen."""
        combo = self.preset_combo
        caps = self._caps()
        combo.blockSignals(True)
        combo.clear()
        if caps is None:
            combo.addItem("Chosen when the model is known", None)
            combo.setEnabled(False)
        else:
            kind, method, tier = presets.model_kind(caps), self.method_combo.currentData(), self.tier()
            chosen = presets.choose_preset(kind, method, tier)
            builtin = presets.builtin_presets(kind, method)
            if not builtin:  # a kind of model without presets: its defaults unless the person picks theirs
                combo.addItem("Default settings", None)
            for preset in builtin:
                combo.addItem(preset.name, preset)
                combo.setItemData(combo.count() - 1, preset.describe(), Qt.ItemDataRole.ToolTipRole)
            own, _problems = presets.load_user_presets()
            for preset in own:
                if not preset.kind or preset.kind == kind:
                    combo.addItem(f"{preset.name} (yours)", preset)
            if chosen is not None:
                combo.setCurrentIndex(max(0, combo.findText(chosen.name)))
            combo.setEnabled(combo.count() > 1)
        combo.blockSignals(False)
        self._show_preset_hint()
        self._show_settings()

    def _show_preset_hint(self) -> None:
        if not self._gpu_known:
            self.preset_msg.show_message("Looking for a GPU…", "muted")
            return
        gpu, caps = self._gpu, self._caps()
        found = f"{gpu['name']}, {gpu['total'] / presets.GIB:.0f} GB" if gpu else "No CUDA GPU found"
        preset = self.preset_combo.currentData()
        if caps is None or not isinstance(preset, presets.Preset) or not preset.builtin:
            self.preset_msg.show_message(found + ".", "muted")
            return
        if presets.TIERS.index(preset.tier) > presets.TIERS.index(self.tier()):
            self.preset_msg.show_message(f"{found}: this model needs at least a {presets.TIER_LABELS[preset.tier]} "
                                         "to train with this method here.", "warning")
        else:
            self.preset_msg.show_message(f"{found}: settings for a {presets.TIER_LABELS[self.tier()]}.", "muted")

    def _show_settings(self, *_: object) -> None:
        config = self.train_config()
        if config is None:
            self.settings_line.show_message("Settings that suit the model, once it is checked.", "muted")
            return
        self._show_preset_hint()
        parts = [f"learning rate {rate_text(config.learning_rate)}", f"batch {config.batch_size}",
                 f"{config.steps:,} steps"]
        if config.method == "lora":
            parts.insert(0, f"LoRA rank {config.rank}")
        if config.gradient_checkpointing:
            parts.append("gradient checkpointing")
        if config.optimizer != "adamw":
            parts.append({"adamw8bit": "8-bit AdamW", "adafactor": "Adafactor", "prodigy": "Prodigy"}[config.optimizer])
        self.settings_line.show_message(", ".join(parts) + ".", "plain")

    # --- fields ---------------------------------------------------------------------------
    def _name_changed(self, text: str) -> None:
        if self._folder_follows_name:
            name = text.strip()
            folder = str(self._root / name) if name and not name_problem(name) else ""
            self.folder_picker.set_path(folder)
        self._validate()

    def _folder_edited(self, *_: object) -> None:
        self._folder_follows_name = False

    def _model_state(self) -> tuple[str, str, bool]:
        """(message, level, ok) of the base model."""
        path = self.backbone_picker.path()
        problem = backbone_problem(path)
        if problem:
            return problem, "error" if path else "muted", False
        if self._model is None or self._model_checked != path:
            return "Checking the model…", "muted", False
        if not self._model.get("usable"):
            reason = (self._model.get("problems") or ["TransferStudio cannot train this model."])[0]
            return f"{reason[0].upper()}{reason[1:]}" if reason else reason, "error", False
        return self._model.get("label") or "A model TransferStudio can train.", "ok", True

    def _pictures_state(self) -> tuple[str, str, bool]:
        folder = self.images_picker.path()
        problem = images_problem(folder)
        if problem:
            return problem, "error" if folder else "muted", False
        if self._pictures is None or self._pictures[0] != folder:
            return "Looking for pictures…", "muted", False
        if self._pictures[1]:
            return self._pictures[1], "error", False
        return "", "plain", True

    def _validate(self, *_: object) -> None:
        name_err = name_problem(self.name_edit.text())
        folder_err, folder_warn = folder_problem(self.folder_picker.path())
        # A field the user has not touched yet shows a muted hint, not a red error.
        self.name_msg.show_message(name_err, "error" if self.name_edit.text() else "muted")
        if folder_err:
            self.folder_msg.show_message(folder_err, "error" if self.folder_picker.path() else "muted")
        else:
            self.folder_msg.show_message(folder_warn, "warning")
        model_text, model_level, model_ok = self._model_state()
        self.backbone_msg.show_message(model_text, model_level)
        pictures_text, pictures_level, pictures_ok = self._pictures_state()
        self.images_msg.show_message(pictures_text, pictures_level)
        reasons = [r for r in (name_err, folder_err) if r]
        reasons += [text for text, good in ((model_text, model_ok), (pictures_text, pictures_ok)) if not good and text]
        ok = not (name_err or folder_err) and model_ok and pictures_ok
        self.ok_button.setEnabled(ok)
        self.ok_button.setToolTip("" if ok else "Not yet: " + " ".join(reasons))


def rate_text(value: float) -> str:
    """A learning rate as people write it: 1e-4, 5e-4, 0.002."""
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}" if value < 1e-3 else f"{value:g}"


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
