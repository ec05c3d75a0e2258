"""Export the trained weights: pick a format, a folder and a name; the work runs on a worker."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QComboBox, QDialog, QDoubleSpinBox, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QMessageBox, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from transferstudio.qt import history, tasks
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.preferences_dialog import library_settings
from transferstudio.ui.widgets import MessageLabel


def safe_name(text: str) -> str:
    """A file name every system accepts, from a project name (brackets kept: "Cities (GAN)")."""
    name = re.sub(r"[^\w\- .()\[\]]+", "-", text).strip(" .-")
    return name or "export"


def help_html(text: str) -> str:
    """A format's help text as rich text: `code` spans (Markdown backticks) in a monospace font,
    everything else escaped."""
    parts = text.split("`")
    out = []
    for i, part in enumerate(parts):
        escaped = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        out.append(f"<code>{escaped}</code>" if i % 2 and i < len(parts) - 1 else escaped)
    return "".join(out)


def written_paths(out: Path) -> list[Path]:
    """What an export to `out` may write: the folder formats `out`, the file formats
    `out.safetensors` (the exporter adds the suffix unless it is there)."""
    if out.suffix.lower() == ".safetensors":
        return [out]
    return [out, out.with_name(out.name + ".safetensors")]


class ExportDialog(QDialog):
    exported = Signal(object)  # ExportResult
    export_failed = Signal(str, str)

    def __init__(self, project: Any, parent: QWidget | None = None, *, family: str | None = None,
                 method: str | None = None, settings: QSettings | None = None) -> None:
        """`family`: the backbone's family key, `method`: the trained run's method; they decide
        which formats apply (a kohya LoRA needs a Stable Diffusion model, for example).
        `settings`: where the A1111 / ComfyUI installs are (Preferences), for "Export to"."""
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Export trained model")
        self.setMinimumWidth(560)
        self.task: TaskWorker | None = None
        self.result_path: Path | None = None

        self.format = QComboBox()
        self.format.addItem("Loading formats…")
        self.format.setEnabled(False)
        self.format.currentIndexChanged.connect(self._format_changed)
        self.description = QLabel("")
        self.description.setWordWrap(True)
        self.description.setTextFormat(Qt.TextFormat.RichText)  # `code` in the help reads as code
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # A run that did not train all its steps exports what it learned so far: say so.
        self.unfinished = MessageLabel()
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 2.0)
        self.strength.setSingleStep(0.1)
        self.strength.setValue(1.0)
        self.strength.setToolTip("How strongly the training is baked into a merged model (1 = as trained).")
        self.folder = QLineEdit(str(Path(project.folder) / "exports"))
        self.folder.setToolTip("The folder the export is written to (created if needed).")
        self.folder.textChanged.connect(self._sync_destination)
        browse = QPushButton("Choose…")
        browse.setToolTip("Choose any folder.")
        browse.clicked.connect(self._browse)
        self.export_to = QComboBox()
        self.export_to.setToolTip("Shortcuts: this project's exports folder, or the LoRA folder of an A1111 / "
                                  "Forge or ComfyUI install (set the installs in Edit ▸ Preferences…), so the "
                                  "tool finds the LoRA at once.")
        # Long install paths must not widen the dialog (they squeezed the labels): elide instead.
        self.export_to.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.export_to.setMinimumContentsLength(24)
        self._fill_destinations(settings)
        self.export_to.activated.connect(self._destination_picked)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        self.name = QLineEdit(safe_name(project.name))
        self.name.setToolTip("File or folder name; LoRA files get .safetensors added.")

        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.open_button = QPushButton("Open folder")
        self.open_button.hide()
        self.open_button.clicked.connect(self.open_folder)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.start_export)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("", self.unfinished)
        form.addRow("Format", self.format)
        form.addRow("", self.description)
        form.addRow("Strength", self.strength)
        self._form = form
        form.setRowVisible(self.strength, False)
        form.addRow("Export to", self.export_to)
        form.addRow("Folder", folder_row)
        form.addRow("Name", self.name)
        result_row = QHBoxLayout()
        result_row.addWidget(self.result, 1)
        result_row.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.busy)
        layout.addLayout(result_row)
        layout.addWidget(self.buttons)

        # Which run to export: any run with a complete checkpoint (newest first); the row shows
        # only when there is a choice.
        self.run = QComboBox()
        self.run.setToolTip("The training run to export (its last complete checkpoint). "
                            "`transferstudio runs` lists the same runs.")
        self._runs = history.trained_runs(project)
        for trained in self._runs:
            self.run.addItem(f"{trained.id} — {trained.method}, {trained.trained_step}/{trained.total} steps"
                             + (" (from-scratch baseline)" if trained.baseline else ""),
                             (str(trained.folder), trained.method))
        form.insertRow(0, "Run", self.run)
        form.setRowVisible(self.run, self.run.count() > 1)
        # Which checkpoint of the run: the latest, or the one with the lowest validation loss
        # (shown only when they differ: the run began to overfit after its best step).
        self.checkpoint = QComboBox()
        self.checkpoint.setToolTip("The latest checkpoint, or the one that did best on the pictures kept out of "
                                   "training (lowest validation loss): after that step the model was learning "
                                   "your training pictures by heart.")
        form.insertRow(1, "Checkpoint", self.checkpoint)
        self._family = family
        self.run.currentIndexChanged.connect(lambda *_: self._load_formats(self.run_method()))
        self.run.currentIndexChanged.connect(lambda *_: self._load_checkpoints())
        self.run.currentIndexChanged.connect(lambda *_: self._show_unfinished())
        self._load_checkpoints()
        self._show_unfinished()
        self._formats_tasks: list[TaskWorker] = []
        self._load_formats(method or self.run_method() or project.config.method)

    def _load_formats(self, method: str | None) -> None:
        # Reading the formats imports the export engine (torch): do it off the GUI thread.
        self.format.setEnabled(False)
        self.export_button.setEnabled(False)
        task = TaskWorker(tasks.export_formats, self._family, method or self.project.config.method,
                          self.run_adapter(), name="export-formats")
        # Only the newest list counts (the run may change again while one is loading).
        task.succeeded.connect(lambda formats, t=task: self._set_formats(formats) if t is self._formats_task else None)
        task.failed.connect(lambda m, a: self._show_error(m, a))
        task.crashed.connect(lambda _t: self._show_error("Could not list export formats.", "See the log file."))
        self._formats_tasks.append(task)
        self._formats_task = task
        task.start()

    def run_method(self) -> str | None:
        data = self.run.currentData()
        return data[1] if data else None

    def run_dir(self) -> str | None:
        data = self.run.currentData()
        return data[0] if data else None

    def selected_run(self) -> Any:
        index = self.run.currentIndex()
        return self._runs[index] if 0 <= index < len(self._runs) else None

    def run_adapter(self) -> str:
        run = self.selected_run()
        return str(getattr(run.config, "adapter", "lora")) if run is not None else \
            str(getattr(self.project.config, "adapter", "lora"))

    def _show_unfinished(self) -> None:
        """A warning above the format when the chosen run trained fewer steps than it was asked for."""
        run = self.selected_run()
        if run is None or run.latest is None or run.trained_step >= run.total:
            self.unfinished.show_message("")
            return
        self.unfinished.show_message(
            f"⚠ This run is unfinished: {run.trained_step} of {run.total} steps are trained. The export holds "
            "what it has learned so far; Start training continues the run, then export again for the "
            "finished model.", "warning")

    def _load_checkpoints(self) -> None:
        self.checkpoint.clear()
        index = self.run.currentIndex()
        run = self._runs[index] if 0 <= index < len(self._runs) else None
        if run is not None and run.latest is not None:
            self.checkpoint.addItem(f"latest — step {run.latest.step}", None)
            best = run.best_checkpoint
            if best is not None and best.step != run.latest.step:
                self.checkpoint.addItem(f"best on held-out pictures — step {best.step} "
                                        f"(validation loss {best.state['val_loss']:.4f})", "best")
                self.checkpoint.setCurrentIndex(1)
        self._form.setRowVisible(self.checkpoint, self.checkpoint.count() > 1)

    def checkpoint_step(self) -> str | None:
        """None: the run's latest checkpoint; "best": the lowest validation loss."""
        return self.checkpoint.currentData()

    # --- formats ----------------------------------------------------------------------
    def _set_formats(self, formats: list[tuple[str, str, str]]) -> None:
        self.format.clear()
        for key, label, description in formats:
            self.format.addItem(label, key)
            self.format.setItemData(self.format.count() - 1, f"<p>{help_html(description)}</p>",
                                    Qt.ItemDataRole.ToolTipRole)
        self.format.setEnabled(True)
        self.export_button.setEnabled(bool(formats))
        self._format_changed()

    def _format_changed(self, *_: Any) -> None:
        self.description.setText(str(self.format.currentData(Qt.ItemDataRole.ToolTipRole) or ""))
        merged = str(self.format.currentData() or "").startswith("merged")
        self._form.setRowVisible(self.strength, merged)  # LoRA files keep their strength for the tool
        self.layout().activate()
        self.resize(self.width(), max(self.height(), self.sizeHint().height()))  # room for the text

    def formats_ready(self) -> bool:
        return self.format.isEnabled()

    def selected_format(self) -> str:
        return str(self.format.currentData())

    def set_format(self, fmt: str) -> None:
        index = self.format.findData(fmt)
        if index >= 0:
            self.format.setCurrentIndex(index)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    # --- "Export to" shortcuts ------------------------------------------------------------
    def _fill_destinations(self, settings: QSettings | None) -> None:
        self.export_to.addItem("This project's exports folder", str(Path(self.project.folder) / "exports"))
        if settings is not None:
            values = library_settings(settings)
            # formats.lora_folders is torch-free and only stats a few paths: fine on the GUI thread.
            for label, kwargs in (("A1111 / Forge LoRA folder", {"a1111": values["a1111"]}),
                                  ("ComfyUI LoRA folder", {"comfyui": values["comfyui"]})):
                for folder in tasks.lora_folders(**kwargs) if any(kwargs.values()) else []:
                    note = "" if folder.is_dir() else "  (will be created)"
                    self.export_to.addItem(f"{label} — {folder}{note}", str(folder))
                    self.export_to.setItemData(self.export_to.count() - 1,
                                               f"{folder}\nFor LoRA files: the tool lists them at its next "
                                               "refresh.", Qt.ItemDataRole.ToolTipRole)
        self.export_to.addItem("Other folder…", None)
        self._sync_destination()

    def destinations(self) -> list[str]:
        """The folders offered under "Export to" (the first is the project's exports folder)."""
        return [str(self.export_to.itemData(i)) for i in range(self.export_to.count())
                if self.export_to.itemData(i) is not None]

    def _destination_picked(self, index: int) -> None:
        folder = self.export_to.itemData(index)
        if folder is None:
            self._browse()
            self._sync_destination()  # back to the matching item if the file dialog was cancelled
        else:
            self.folder.setText(str(folder))

    def _sync_destination(self, *_: Any) -> None:
        text = str(Path(self.folder.text().strip() or ".").expanduser())
        index = self.export_to.findData(text)
        self.export_to.setCurrentIndex(index if index >= 0 else self.export_to.count() - 1)

    # --- export -----------------------------------------------------------------------
    def destination(self) -> Path:
        return Path(self.folder.text().strip() or ".").expanduser() / safe_name(self.name.text())

    def free_destination(self, out: Path) -> Path:
        """`out`, or `out-2`, `out-3`… — the first name none of whose files exist yet."""
        candidate, n = out, 1
        while any(tasks.unique_path(p) != p for p in written_paths(candidate)):
            n += 1
            candidate = out.with_name(f"{out.name}-{n}")
        return candidate

    def ask_existing(self, name: str, free: str) -> str:
        """"keep" (save under the free name), "replace" or "cancel". Tests replace this."""
        box = QMessageBox(QMessageBox.Icon.Question, "Already exists",
                          f"“{name}” already exists in that folder.", parent=self)
        box.setInformativeText(f"Save this export as “{free}” instead, or replace the existing one?")
        keep = box.addButton(f"Save as “{free}”", QMessageBox.ButtonRole.AcceptRole)
        replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(keep)
        box.exec()
        clicked = box.clickedButton()
        return "keep" if clicked is keep else "replace" if clicked is replace else "cancel"

    def start_export(self, overwrite: bool = False) -> None:
        if self.task is not None or not self.formats_ready():
            return
        out = self.destination()
        if not overwrite and any(p.exists() for p in written_paths(out)):
            # The exporter refuses to overwrite; ask here instead of failing after the wait.
            free = self.free_destination(out)
            answer = self.ask_existing(out.name, free.name)
            if answer == "cancel":
                return
            if answer == "keep":
                self.name.setText(free.name)
                out = free
            else:
                overwrite = True
        out.parent.mkdir(parents=True, exist_ok=True)
        self.task = TaskWorker(tasks.export_project, self.project, out, self.selected_format(), overwrite,
                               self.strength.value(), self.run_dir(), self.checkpoint_step(), name="export")
        self.task.succeeded.connect(self._on_exported)
        self.task.failed.connect(self._show_error)
        self.task.crashed.connect(lambda _t: self._show_error(
            "The export failed because of an internal error.", "The details are in the log file "
            "(Help ▸ Open Log Folder)."))
        self.task.done.connect(self._on_done)
        self.busy.show()
        self.result.setText("Exporting…")
        self.open_button.hide()
        self.export_button.setEnabled(False)
        self.task.start()

    def _on_exported(self, result: Any) -> None:
        self.result_path = Path(result.path)
        what = {"lora": "LoRA adapter", "full": "fine-tuned model", "merged": "merged model"}.get(result.kind,
                                                                                                  "export")
        self.result.setText(f"Saved the {what} from step {result.step} to\n{result.path}")
        self.open_button.show()
        self.exported.emit(result)

    def _show_error(self, message: str, advice: str) -> None:
        self.result.setText(f"{message}\n{advice}".strip())
        self.export_failed.emit(message, advice)

    def _on_done(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.wait(5)
        self.busy.hide()
        self.export_button.setEnabled(self.formats_ready())

    def open_folder(self) -> None:
        if self.result_path is not None:
            folder = self.result_path if self.result_path.is_dir() else self.result_path.parent
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def is_busy(self) -> bool:
        return self.task is not None or any(t.is_running() for t in self._formats_tasks)

    def wait(self, timeout_s: float) -> bool:
        ok = all(t.wait(timeout_s) for t in self._formats_tasks)
        return ok and (self.task is None or self.task.wait(timeout_s))

    def reject(self) -> None:
        if self.task is not None:
            return  # an export is being written; closing would leave the user guessing
        super().reject()
