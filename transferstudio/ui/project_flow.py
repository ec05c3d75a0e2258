"""Opening, creating, saving and closing projects from the window: the dialogs and questions
around them (unsaved changes, moved folders, a run still going). What is open lives in the
window's `ProjectState`; `set_project` replaces it and every panel follows the state."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QFileDialog, QMessageBox

from transferstudio.core.errors import UserError
from transferstudio.core.paths import user_data_dir
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import Project, create_project, load_project
from transferstudio.qt import tasks
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.new_project_dialog import NewProjectDialog

if TYPE_CHECKING:
    from transferstudio.ui.main_window import MainWindow

log = logging.getLogger(__name__)

MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt")
Btn = QMessageBox.StandardButton


class ProjectFlow(QObject):
    def __init__(self, window: "MainWindow") -> None:
        super().__init__(window)
        self.window = window
        self.discard_ok = False  # the person chose Discard for this project's unsaved changes
        self.suggest_settings_for: Path | None = None  # a new project takes its model's suggested settings
        self.sample_task: TaskWorker | None = None

    @property
    def state(self):  # noqa: ANN201
        return self.window.state

    # --- new ---------------------------------------------------------------------------------
    def new_project(self, backbone: str = "") -> NewProjectDialog | None:
        w = self.window
        if not self.may_leave():
            return None
        dialog = NewProjectDialog(w, projects_root=w.settings.value("projects_root") or None, backbone=backbone)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.create_from_dialog(dialog))
        dialog.open()
        return dialog

    def create_from_dialog(self, dialog: NewProjectDialog) -> None:
        w = self.window
        values = dialog.values()
        settings = values.get("settings")  # what suits the model, method and GPU (the dialog worked it out)
        try:
            project = create_project(Path(values["folder"]), backbone=Path(values["backbone"]),
                                     images=Path(values["images"]), name=values["name"],
                                     config=TrainConfig.from_dict(settings) if settings
                                     else TrainConfig(method=values["method"]))
        except UserError as exc:
            w.show_problem("Cannot create the project", exc.message, exc.advice)
            return
        except OSError as exc:
            w.show_problem("Cannot create the project", f"Could not write to {values['folder']}: "
                           f"{exc.strerror or exc}.", "Choose a folder you can write to.")
            return
        w.settings.setValue("projects_root", str(Path(values["folder"]).parent))
        if not settings:
            self.suggest_settings_for = project.folder  # the model's own defaults, once it is inspected
        self.set_project(project)

    def apply_suggested_settings(self) -> None:
        """A project just made in the New Project dialog starts from the settings its model's family
        suggests (a GAN: batches of 16, its learning rate, EMA); the method the person chose stays."""
        w, caps, project = self.window, self.state.capabilities, self.state.project
        if project is None or caps is None or not caps.usable or self.suggest_settings_for != project.folder:
            return
        self.suggest_settings_for = None
        cfg = w.settings_form.config()
        cfg.suggest_for(caps, given={"method"} if cfg.method in caps.methods else ())
        w.settings_form.set_config(cfg)
        project.config = cfg
        project.save()
        self.state.config = cfg

    # --- open --------------------------------------------------------------------------------
    def open_project_dialog(self) -> None:
        w = self.window
        if not self.may_leave():
            return
        start = str(w.settings.value("projects_root") or Path.home())
        folder = QFileDialog.getExistingDirectory(w, "Open project folder", start)
        if folder:
            self.open_project(folder)

    def open_project(self, folder: str | Path, *, offer_continue: bool = True) -> bool:
        w = self.window
        current = self.state.project
        if current is not None and Path(folder).resolve() == current.folder.resolve():
            return True
        if not self.may_leave():
            return False
        try:
            project = load_project(Path(folder))
        except UserError as exc:
            w.show_problem("Cannot open the project", exc.message, exc.advice)
            w.recent.forget(folder)
            return False
        dirty = self._relocate_moved_paths(project)
        self.set_project(project)
        if dirty:
            self.state.dirty = True
        if offer_continue:
            w.runs.offer_to_continue()
        return True

    def _relocate_moved_paths(self, project: Project) -> bool:
        """A project whose pictures or model moved: ask where they are now, and remember. True
        when the new places could not be saved (the project has unsaved changes)."""
        w = self.window
        changed = False
        if not project.images.exists():
            found = w.locate("image folder", str(project.images), True)
            if found:
                project.images, changed = Path(found), True
        if not project.backbone.exists():
            pick_folder = project.backbone.suffix.lower() not in MODEL_FILE_SUFFIXES
            found = w.locate("base model", str(project.backbone), pick_folder)
            if found:
                project.backbone, changed = Path(found), True
        if changed:
            try:
                project.save()
            except OSError as exc:
                log.warning("could not save relocated paths: %s", exc)
                return True
        return False

    def open_sample_project(self) -> None:
        w = self.window
        if not tasks.sample_project_available() or self.sample_task is not None:
            return
        if not self.may_leave():
            return
        w.statusBar().showMessage("Preparing the sample project…")
        task = TaskWorker(tasks.ensure_sample_project, user_data_dir() / "Sample Projects", name="sample")
        task.succeeded.connect(lambda folder: self.open_project(folder))
        task.failed.connect(lambda m, a: w.show_problem("Cannot open the sample project", m, a))
        task.crashed.connect(w.show_crash)
        task.done.connect(self._sample_done)
        self.sample_task = task.start()

    def _sample_done(self) -> None:
        task, self.sample_task = self.sample_task, None
        if task is not None:
            task.wait(5)
        self.window.statusBar().clearMessage()

    # --- save, close, leave ------------------------------------------------------------------
    def save_project(self) -> bool:
        w, project = self.window, self.state.project
        if project is None:
            return True
        w.images_panel.save_caption()
        project.config = w.settings_form.config()
        try:
            project.save()
        except OSError as exc:
            w.show_problem("Cannot save", f"Could not write {project.file}: {exc.strerror or exc}.",
                           "Your settings are still here; free some space or check permissions, then save again.")
            return False
        self.state.update(config=project.config, dirty=False)
        w.statusBar().showMessage("Saved.", 3000)
        return True

    def close_project(self) -> None:
        w = self.window
        if self.state.project is None:
            return
        if w.train_view.is_running():
            if w.ask("Training is running", "Stop training (a checkpoint is saved) and close the project?") != Btn.Yes:
                return
            w.runs.stop_then(self.close_project)
            return
        if not self.may_leave():
            return
        self.set_project(None)

    def may_leave(self) -> bool:
        """Unsaved changes: Save / Discard / Cancel. A running run must end first."""
        w, project = self.window, self.state.project
        if project is None:
            return True
        if w.train_view.is_running():
            w.show_problem("Training is running", "Stop the training before opening another project.")
            return False
        if not self.state.dirty or self.discard_ok:
            return True
        answer = w.ask("Unsaved changes", f"Save the changes to “{project.name}”?",
                       Btn.Save | Btn.Discard | Btn.Cancel, Btn.Save)
        if answer == Btn.Save:
            return self.save_project()
        return answer == Btn.Discard

    def set_project(self, project: Project | None) -> None:
        """Replace what is open; the panels follow the state (MainWindow._project_changed)."""
        self.discard_ok = False
        self.state.open(project, runs=project.runs() if project is not None else ())
        if project is not None:
            self.window.recent.add(project.folder)

    # --- edits -------------------------------------------------------------------------------
    def reset_settings(self) -> None:
        w = self.window
        if self.state.project is None or w.train_view.is_running():
            return
        if w.ask("Reset settings", "Put every training setting back to its default?") != Btn.Yes:
            return
        w.settings_form.set_config(TrainConfig())
        w.settings_edited()

    def backbone_chosen(self, path: str) -> None:
        project = self.state.project
        if project is None or Path(path) == project.backbone:
            return
        project.backbone = Path(path).expanduser()
        self.state.dirty = True
        self.window.compare_view.set_project(project, trained=self._trained(project))
        self.window.checks.inspect(path)

    def images_chosen(self, path: str) -> None:
        project = self.state.project
        if project is None or Path(path) == project.images:
            return
        project.images = Path(path).expanduser()
        self.state.dirty = True
        self.window.checks.check_domain()

    @staticmethod
    def _trained(project: Project) -> bool:
        from transferstudio.qt import history

        return history.has_trained_weights(project)
