"""The main window: a project's model, pictures and settings on the left; Train and Compare
on the right. Heavy work (inspection, training, sampling, export) runs on worker threads;
this module never imports torch (a test checks it).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (QApplication, QFileDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QMainWindow, QMessageBox, QPushButton, QSplitter, QStackedWidget, QTabWidget,
                               QVBoxLayout, QWidget)

from transferstudio import __version__
from transferstudio.core.errors import UserError
from transferstudio.core.paths import user_data_dir, user_log_dir
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import Project, create_project, load_project
from transferstudio.project.run import Run, describe_differences, settings_differences
from transferstudio.qt import history, tasks
from transferstudio.qt.workers import TaskWorker, live_threads
from transferstudio.ui.backbone_panel import BackbonePanel
from transferstudio.ui.compare_view import CompareView
from transferstudio.ui.report_view import ReportView
from transferstudio.ui.export_dialog import ExportDialog
from transferstudio.ui.images_panel import ImagesPanel
from transferstudio.ui.library_dialog import LibraryDialog
from transferstudio.ui.new_project_dialog import NewProjectDialog, ask_for_moved_path
from transferstudio.ui.preferences_dialog import PreferencesDialog
from transferstudio.ui.queue_view import QueueDialog
from transferstudio.ui.settings_form import SettingsForm
from transferstudio.ui.train_view import TrainView

log = logging.getLogger(__name__)

APP_NAME = "TransferStudio"
MAX_RECENT = 10
STOP_TIMEOUT_S = 120  # how long closing waits for a stopping run before offering to quit anyway
DOMAIN_CHECK_DELAY_MS = 1000  # the model and pictures stay chosen this long before the domain check starts
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt")

Btn = QMessageBox.StandardButton


class MainWindow(QMainWindow):
    project_opened = Signal(object)
    project_closed = Signal()
    inspected = Signal(object)  # the backbone inspection dict
    domain_checked = Signal(object)  # the domain check's dict shown in the model panel (None: it failed)

    def __init__(self, settings: QSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or QSettings(APP_NAME, APP_NAME)
        self.project: Project | None = None
        self.dirty = False
        self.inspection: dict[str, Any] | None = None
        self._inspect_task: TaskWorker | None = None
        self._domain_task: TaskWorker | None = None
        self._domain_again = False  # the model or pictures changed during a check: check again after it
        self._domain_timer = QTimer(self)  # a model picked and at once replaced is not worth loading
        self._domain_timer.setSingleShot(True)
        self._domain_timer.setInterval(DOMAIN_CHECK_DELAY_MS)
        self._domain_timer.timeout.connect(self._start_domain_check)
        self._sample_task: TaskWorker | None = None
        self._after_run: Callable[[], None] | None = None  # e.g. close the window once stopped
        self._close_ready = False
        self._discard_ok = False
        self._stop_timer = QTimer(self)
        self._stop_timer.setSingleShot(True)
        self._stop_timer.timeout.connect(self._stop_took_too_long)
        self.export_dialog: ExportDialog | None = None
        self.library_dialog: LibraryDialog | None = None
        self.preferences_dialog: PreferencesDialog | None = None
        self.queue_dialog: QueueDialog | None = None

        self._build_views()
        self._build_menus()
        self._restore_state()
        self._show_project(None)

    # ================================================================== building
    def _build_views(self) -> None:
        self.backbone_panel = BackbonePanel()
        self.images_panel = ImagesPanel(thumb_cache_dir=str(user_data_dir() / "cache" / "thumbnails"))
        self.settings_form = SettingsForm()
        self.setup_tabs = QTabWidget()
        self.setup_tabs.setDocumentMode(True)
        self.setup_tabs.addTab(self.backbone_panel, "1 · Model")
        self.setup_tabs.addTab(self.images_panel, "2 · Pictures")
        self.setup_tabs.addTab(self.settings_form, "3 · Settings")
        self.setup_tabs.setMinimumWidth(340)

        self.train_view = TrainView()
        self.compare_view = CompareView()
        self.work_tabs = QTabWidget()
        self.work_tabs.setDocumentMode(True)
        self.work_tabs.addTab(self.train_view, "Train")
        self.work_tabs.addTab(self.compare_view, "Compare")
        self.report_view = ReportView()
        self.work_tabs.addTab(self.report_view, "Report")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.setup_tabs)
        self.splitter.addWidget(self.work_tabs)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([460, 820])

        self.welcome = self._build_welcome()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.splitter)
        self.setCentralWidget(self.stack)
        self.statusBar()

        self.backbone_panel.path_chosen.connect(self._backbone_chosen)
        self.backbone_panel.library_requested.connect(self.open_library)
        self.images_panel.folder_chosen.connect(self._images_chosen)
        self.settings_form.changed.connect(self._settings_changed)
        self.train_view.start_requested.connect(self.start_training)
        self.train_view.running_changed.connect(self._running_changed)
        self.train_view.run_finished.connect(self._run_finished)
        self.train_view.failed.connect(lambda e: self.show_problem("Training stopped", e.message, e.advice))
        self.train_view.crashed.connect(self._show_crash)
        self.compare_view.failed.connect(lambda m, a: self.show_problem("Cannot compare", m, a))
        self.compare_view.crashed.connect(self._show_crash)
        self.report_view.failed.connect(lambda m, a: self.show_problem("Cannot make the report", m, a))
        self.report_view.crashed.connect(self._show_crash)

    def _build_welcome(self) -> QWidget:
        page = QWidget()
        title = QLabel(f"<h1>{APP_NAME}</h1><p>Teach a pretrained image generator your own pictures — "
                       "offline, on this computer.</p>")
        title.setWordWrap(True)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        new = QPushButton("New project…")
        new.clicked.connect(self.new_project)
        open_ = QPushButton("Open project…")
        open_.clicked.connect(self.open_project_dialog)
        self.welcome_sample = QPushButton("Open the sample project")
        self.welcome_sample.setToolTip("A ready project (“Landscapes → cities”) with a small bundled model.")
        self.welcome_sample.clicked.connect(self.open_sample_project)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (new, open_, self.welcome_sample):
            b.setMinimumHeight(36)
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.welcome_recent = QListWidget()
        self.welcome_recent.setMaximumWidth(640)
        self.welcome_recent.itemActivated.connect(lambda item: self.open_project(item.data(Qt.ItemDataRole.UserRole)))
        self.welcome_recent_label = recent_label = QLabel("Recent projects")
        col = QVBoxLayout(page)
        col.addStretch(1)
        col.addWidget(title)
        col.addLayout(buttons)
        col.addSpacing(24)
        col.addWidget(recent_label, 0, Qt.AlignmentFlag.AlignHCenter)
        col.addWidget(self.welcome_recent, 0, Qt.AlignmentFlag.AlignHCenter)
        col.addStretch(2)
        return page

    def _action(self, menu: Any, text: str, slot: Callable[..., Any], shortcut: Any = None,
                tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        m = bar.addMenu("&File")
        self.act_new = self._action(m, "&New Project…", self.new_project, QKeySequence.StandardKey.New)
        self.act_open = self._action(m, "&Open Project…", self.open_project_dialog, QKeySequence.StandardKey.Open)
        self.recent_menu = m.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self.act_sample = self._action(m, "Open &Sample Project", self.open_sample_project,
                                       tip="A ready project with a small bundled model, to try things out.")
        self.act_library = self._action(m, "Model &Library…", self.open_library, "Ctrl+L",
                                        tip="The models already on this computer; pick one as the base model.")
        m.addSeparator()
        self.act_save = self._action(m, "&Save", self.save_project, QKeySequence.StandardKey.Save)
        self.act_export = self._action(m, "&Export Trained Model…", self.export, "Ctrl+E")
        self.act_close = self._action(m, "&Close Project", self.close_project, QKeySequence.StandardKey.Close)
        m.addSeparator()
        self.act_quit = self._action(m, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_quit.setMenuRole(QAction.MenuRole.QuitRole)

        m = bar.addMenu("&Edit")
        for text, key, name in (("&Undo", QKeySequence.StandardKey.Undo, "undo"),
                                ("&Redo", QKeySequence.StandardKey.Redo, "redo"),
                                ("Cu&t", QKeySequence.StandardKey.Cut, "cut"),
                                ("&Copy", QKeySequence.StandardKey.Copy, "copy"),
                                ("&Paste", QKeySequence.StandardKey.Paste, "paste")):
            if name == "cut":
                m.addSeparator()
            self._action(m, text, lambda n=name: self._edit(n), key)
        m.addSeparator()
        self.act_reset = self._action(m, "Reset Settings to &Defaults", self.reset_settings,
                                      tip="Put every training setting back to its beginner-safe default.")
        m.addSeparator()
        self.act_preferences = self._action(m, "&Preferences…", self.open_preferences, "Ctrl+,",
                                            tip="Where the model library looks for models.")
        self.act_preferences.setMenuRole(QAction.MenuRole.PreferencesRole)

        m = bar.addMenu("&View")
        for i, (text, tabs, index) in enumerate((("&Model", self.setup_tabs, 0), ("&Pictures", self.setup_tabs, 1),
                                                 ("&Settings", self.setup_tabs, 2), ("&Train", self.work_tabs, 0),
                                                 ("&Compare", self.work_tabs, 1), ("&Report", self.work_tabs, 2))):
            self._action(m, text, lambda t=tabs, n=index: self._show_tab(t, n), f"Ctrl+{i + 1}")
        m.addSeparator()
        self.act_toggle_setup = QAction("Show Setup &Panel", self, checkable=True, checked=True)
        self.act_toggle_setup.setShortcut(QKeySequence("Ctrl+\\"))
        self.act_toggle_setup.toggled.connect(self.setup_tabs.setVisible)
        m.addAction(self.act_toggle_setup)

        m = bar.addMenu("&Training")
        self.act_start = self._action(m, "&Start", self.start_training, "Ctrl+Return")
        self.act_pause = self._action(m, "&Pause / Resume", self._toggle_pause, "Ctrl+P")
        self.act_stop = self._action(m, "S&top (saves)", self.train_view.stop, "Ctrl+.")
        self.act_baseline = self._action(
            m, "Train a From-Scratch &Baseline", self.train_baseline,
            tip="Train the same model from random weights, for the same steps on the same pictures (after the "
                "current run, if one is going), so the report shows what starting from the pretrained model "
                "bought. Small models only (the starters, DDPMs, VAEs, GANs).")
        m.addSeparator()
        self.act_sample_now = self._action(m, "Sample &Now", self.train_view.sample_button.click)
        self.act_save_now = self._action(m, "Save Checkpoint N&ow", self.train_view.save_button.click)
        m.addSeparator()
        self.act_queue = self._action(m, "&Queue…", self.open_queue,
                                      tip="Runs of one or more projects, trained one after another.")

        m = bar.addMenu("&Help")
        self._action(m, "Open &Log Folder", self.open_log_folder)
        self.act_about = self._action(m, f"&About {APP_NAME}", self.about)
        self.act_about.setMenuRole(QAction.MenuRole.AboutRole)

        if not tasks.sample_project_available():
            for w in (self.act_sample, self.welcome_sample):
                w.setEnabled(False)
                w.setToolTip("The sample project is not part of this installation.")

    # ================================================================== dialogs (tests replace these)
    def ask(self, title: str, text: str, buttons: Any = Btn.Yes | Btn.No, default: Any = Btn.Yes) -> Any:
        return QMessageBox.question(self, title, text, buttons, default)

    def show_problem(self, title: str, message: str, advice: str = "") -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, Btn.Ok, self)
        if advice:
            box.setInformativeText(advice)
        box.exec()

    def locate(self, what: str, old_path: str, pick_folder: bool) -> str | None:
        return ask_for_moved_path(self, what, old_path, pick_folder)

    def _show_crash(self, text: str) -> None:
        self.show_problem("Internal error", "Something went wrong inside TransferStudio. Your settings "
                          "and pictures are safe.",
                          f"The details are in the log file (Help ▸ Open Log Folder): {user_log_dir()}")

    # ================================================================== projects
    def new_project(self, backbone: str = "") -> NewProjectDialog | None:
        if not self._may_leave_project():
            return None
        dialog = NewProjectDialog(self, projects_root=self.settings.value("projects_root") or None,
                                  backbone=backbone)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self._create_from_dialog(dialog))
        dialog.open()
        return dialog

    def _create_from_dialog(self, dialog: NewProjectDialog) -> None:
        values = dialog.values()
        settings = values.get("settings")  # what suits the model, method and GPU (the dialog worked it out)
        try:
            project = create_project(Path(values["folder"]), backbone=Path(values["backbone"]),
                                     images=Path(values["images"]), name=values["name"],
                                     config=TrainConfig.from_dict(settings) if settings
                                     else TrainConfig(method=values["method"]))
        except UserError as exc:
            self.show_problem("Cannot create the project", exc.message, exc.advice)
            return
        except OSError as exc:
            self.show_problem("Cannot create the project", f"Could not write to {values['folder']}: "
                              f"{exc.strerror or exc}.", "Choose a folder you can write to.")
            return
        self.settings.setValue("projects_root", str(Path(values["folder"]).parent))
        if not settings:
            self._suggest_settings_for = project.folder  # the model's own defaults, once it is inspected
        self._set_project(project)

    def open_project_dialog(self) -> None:
        if not self._may_leave_project():
            return
        start = str(self.settings.value("projects_root") or Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open project folder", start)
        if folder:
            self.open_project(folder)

    def open_project(self, folder: str | Path, *, offer_continue: bool = True) -> bool:
        if self.project is not None and Path(folder).resolve() == self.project.folder.resolve():
            return True
        if not self._may_leave_project():
            return False
        try:
            project = load_project(Path(folder))
        except UserError as exc:
            self.show_problem("Cannot open the project", exc.message, exc.advice)
            self._forget_recent(str(folder))
            return False
        self._relocate_moved_paths(project)
        self._set_project(project)
        if offer_continue:
            self._offer_to_continue()
        return True

    def _relocate_moved_paths(self, project: Project) -> None:
        """A project whose pictures or model moved: ask where they are now, and remember."""
        changed = False
        if not project.images.exists():
            found = self.locate("image folder", str(project.images), True)
            if found:
                project.images, changed = Path(found), True
        if not project.backbone.exists():
            pick_folder = project.backbone.suffix.lower() not in MODEL_FILE_SUFFIXES
            found = self.locate("base model", str(project.backbone), pick_folder)
            if found:
                project.backbone, changed = Path(found), True
        if changed:
            try:
                project.save()
            except OSError as exc:
                log.warning("could not save relocated paths: %s", exc)
                self.dirty = True

    def _offer_to_continue(self) -> None:
        project = self.project
        if project is None:
            return
        state = history.latest_run_state(project)
        if state is None or not state.resumable(project.config.steps):
            return
        changed = self._changed_settings(state, project.config)
        note = (f"\n\nIts settings differ from the project's: {describe_differences(changed)}. A continued "
                "run keeps its own settings (its checkpoints depend on them).") if changed else ""
        answer = self.ask("Continue training?",
                          f"This project has an unfinished run: {state.checkpoint_step} of "
                          f"{max(state.total, project.config.steps)} steps are saved.{note}\n\n"
                          "Continue training it now" + (" with the run's settings?" if changed else "?"))
        if answer == Btn.Yes:
            self._work_tab(self.train_view)
            self._start(fresh=False, keep_run_settings=bool(changed))

    @staticmethod
    def _changed_settings(state: Any, config: TrainConfig) -> list[tuple[str, Any, Any]]:
        """(field, run's value, current value) where the run a Start would continue differs."""
        run = getattr(state, "run", None)
        if run is None:
            try:
                run = Run.open(state.run_dir)
            except UserError:
                return []
        return settings_differences(run.config, config)

    def open_sample_project(self) -> None:
        if not tasks.sample_project_available() or self._sample_task is not None:
            return
        if not self._may_leave_project():
            return
        self.statusBar().showMessage("Preparing the sample project…")
        task = TaskWorker(tasks.ensure_sample_project, user_data_dir() / "Sample Projects", name="sample")
        task.succeeded.connect(lambda folder: self.open_project(folder))
        task.failed.connect(lambda m, a: self.show_problem("Cannot open the sample project", m, a))
        task.crashed.connect(self._show_crash)
        task.done.connect(self._sample_done)
        self._sample_task = task.start()

    def _sample_done(self) -> None:
        task, self._sample_task = self._sample_task, None
        if task is not None:
            task.wait(5)
        self.statusBar().clearMessage()

    def save_project(self) -> bool:
        if self.project is None:
            return True
        self.images_panel.save_caption()
        self.project.config = self.settings_form.config()
        try:
            self.project.save()
        except OSError as exc:
            self.show_problem("Cannot save", f"Could not write {self.project.file}: {exc.strerror or exc}.",
                              "Your settings are still here; free some space or check permissions, "
                              "then save again.")
            return False
        self._set_dirty(False)
        self.statusBar().showMessage("Saved.", 3000)
        return True

    def close_project(self) -> None:
        if self.project is None:
            return
        if self.train_view.is_running():
            if self.ask("Training is running", "Stop training (a checkpoint is saved) and close the "
                        "project?") != Btn.Yes:
                return
            self._after_run = self.close_project
            self.train_view.stop()
            return
        if not self._may_leave_project():
            return
        self._set_project(None)

    def _may_leave_project(self) -> bool:
        """Unsaved changes: Save / Discard / Cancel. A running run must end first."""
        if self.project is None:
            return True
        if self.train_view.is_running():
            self.show_problem("Training is running", "Stop the training before opening another project.")
            return False
        if not self.dirty or self._discard_ok:
            return True
        answer = self.ask("Unsaved changes", f"Save the changes to “{self.project.name}”?",
                          Btn.Save | Btn.Discard | Btn.Cancel, Btn.Save)
        if answer == Btn.Save:
            return self.save_project()
        return answer == Btn.Discard

    def _set_project(self, project: Project | None) -> None:
        self.project = project
        self.inspection = None
        self.settings_form.set_model(None)  # until the new project's model is inspected
        self._discard_ok = False
        if project is None:
            self.images_panel.set_folder(None)
            self.images_panel.set_class_pictures([], "")
            self.backbone_panel.set_path(None)
            self.backbone_panel.clear()
            self.settings_form.set_config(TrainConfig())
            self.train_view.set_project(None)
            self.compare_view.set_project(None)
            self.report_view.set_project(None)
            self._set_dirty(False)
            self._show_project(None)
            self.project_closed.emit()
            return
        self.settings_form.set_config(project.config)
        self.images_panel.set_captions_enabled(True)  # until the model says it takes no prompts
        self.backbone_panel.set_path(str(project.backbone))
        self.images_panel.set_folder(str(project.images), trigger=project.config.trigger)
        self.images_panel.set_class_pictures(*history.class_pictures(project))
        self.train_view.set_project(project)
        self.compare_view.set_project(project, trained=history.has_trained_weights(project))
        self.report_view.set_project(project)
        self._inspect(str(project.backbone))
        self._add_recent(str(project.folder))
        self._set_dirty(False)
        self._show_project(project)
        self.project_opened.emit(project)

    def _show_project(self, project: Project | None) -> None:
        self.stack.setCurrentWidget(self.splitter if project is not None else self.welcome)
        for action in (self.act_save, self.act_close, self.act_export, self.act_reset, self.act_start):
            action.setEnabled(project is not None)
        self._update_run_actions()
        self._fill_welcome_recent()
        self._update_title()

    # ================================================================== editing
    def _set_dirty(self, dirty: bool) -> None:
        self.dirty = dirty
        self._update_title()

    def _update_title(self) -> None:
        if self.project is None:
            self.setWindowTitle(APP_NAME)
        else:
            self.setWindowTitle(f"{self.project.name}{'*' if self.dirty else ''} — {APP_NAME}")

    def _settings_changed(self) -> None:
        if self.project is None:
            return
        cfg = self.settings_form.config()
        self.images_panel.set_trigger(cfg.trigger)
        self._update_buckets(cfg)
        self._set_dirty(True)

    def _backbone_chosen(self, path: str) -> None:
        if self.project is None or Path(path) == self.project.backbone:
            return
        self.project.backbone = Path(path).expanduser()
        self._set_dirty(True)
        self.compare_view.set_project(self.project, trained=history.has_trained_weights(self.project))
        self._inspect(path)

    # ================================================================== model library and preferences
    def open_library(self) -> LibraryDialog | None:
        if self.train_view.is_running():
            self.show_problem("Training is running", "The base model cannot change during a run.",
                              "Stop the training first.")
            return None
        if self.library_dialog is not None:
            self.library_dialog.raise_()
            return self.library_dialog
        current = str(self.project.backbone) if self.project is not None else ""
        dialog = LibraryDialog(self.settings, self, current=current)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.model_chosen.connect(self._library_chosen)
        self.library_dialog = dialog
        dialog.destroyed.connect(lambda *_: setattr(self, "library_dialog", None))
        dialog.open()
        return dialog

    def _library_chosen(self, path: str) -> None:
        if self.project is None:  # no project yet: start one with this model
            self.new_project(backbone=path)
            return
        self._show_tab(self.setup_tabs, 0)
        self.backbone_panel.choose(path)  # the same flow as Choose folder…/file…: set, then inspect

    def open_preferences(self) -> PreferencesDialog:
        if self.preferences_dialog is not None:
            self.preferences_dialog.raise_()
            return self.preferences_dialog
        dialog = PreferencesDialog(self.settings, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        if self.library_dialog is not None:
            dialog.saved.connect(self.library_dialog.refresh)
        self.preferences_dialog = dialog
        dialog.destroyed.connect(lambda *_: setattr(self, "preferences_dialog", None))
        dialog.open()
        return dialog

    def _images_chosen(self, path: str) -> None:
        if self.project is None or Path(path) == self.project.images:
            return
        self.project.images = Path(path).expanduser()
        self._set_dirty(True)
        self._check_domain()

    def reset_settings(self) -> None:
        if self.project is None or self.train_view.is_running():
            return
        if self.ask("Reset settings", "Put every training setting back to its default?") != Btn.Yes:
            return
        self.settings_form.set_config(TrainConfig())
        self._settings_changed()

    def _edit(self, name: str) -> None:
        widget = QApplication.focusWidget()
        fn = getattr(widget, name, None)
        if callable(fn):
            fn()

    # ================================================================== backbone inspection
    def _inspect(self, path: str) -> None:
        self.backbone_panel.show_busy("Inspecting the model…")
        task = TaskWorker(tasks.inspect_backbone, path, name="inspect")
        task.succeeded.connect(lambda info, p=path: self._inspected(p, info))
        task.failed.connect(lambda m, a: self.backbone_panel.show_error(f"{m} {a}".strip()))
        task.crashed.connect(lambda _t: self.backbone_panel.show_error(
            "Could not inspect this model (details in the log file)."))
        task.done.connect(lambda t=task: t.wait(5))
        self._inspect_task = task.start()

    def _inspected(self, path: str, info: dict[str, Any]) -> None:
        if self.project is None or Path(path) != self.project.backbone:
            return  # an older request; the user has picked another model since
        self.inspection = info
        self.backbone_panel.show_inspection(info)
        self.settings_form.set_model(path if info.get("usable") else None)  # its presets and memory estimate
        if info.get("usable"):
            self.settings_form.set_capabilities(text=bool(info.get("text")),
                                                supports_full_finetune=bool(info.get("supports_full_finetune")),
                                                methods=info.get("methods"), objective=str(info.get("objective")
                                                                                          or "diffusion"))
            self._apply_suggested_settings(info)
            self.compare_view.set_text_backbone(bool(info.get("text")))
            self.images_panel.set_captions_enabled(bool(info.get("text")))  # no prompts: no captions
            self.compare_view.set_sampling_controls(truncation=bool(info.get("truncation")),
                                                    denoising=info.get("objective") == "diffusion")
        self._update_buckets(self.settings_form.config())
        self._check_domain()
        self.inspected.emit(info)

    # ================================================================== domain check
    def _check_domain(self) -> None:
        """Show how close the model is to the project's pictures in the model panel: the saved check
        at once when it still matches, else "checking…" and a check in the background once the
        choice has stayed put for a moment. One check at a time; asked again during one, it checks
        again after it."""
        self._domain_timer.stop()
        project = self.project
        if project is None or not (self.inspection or {}).get("usable"):
            self.backbone_panel.clear_domain()
            return
        saved = tasks.saved_domain_check(project)
        if saved is not None:
            self.backbone_panel.show_domain(saved)
            self.domain_checked.emit(saved)
            return
        self.backbone_panel.show_domain_busy()
        self._domain_timer.start()

    def _start_domain_check(self) -> None:
        project = self.project
        if project is None or not (self.inspection or {}).get("usable"):
            return
        if self.train_view.state == "starting":
            # A run is loading its model: two models loading at once on two threads can break
            # (diffusers' empty-weights loading patches torch for the whole process). Check later.
            self._domain_timer.start()
            return
        if self._domain_task is not None:
            self._domain_again = True
            return
        snapshot = replace(project)  # the worker reads this copy while the window may change the project
        task = TaskWorker(tasks.check_domain, snapshot, name="domain-check")
        task.succeeded.connect(lambda info, s=snapshot: self._domain_checked(s, info))
        task.failed.connect(lambda m, a, s=snapshot: self._domain_checked(s, None, m))
        task.crashed.connect(lambda _t, s=snapshot: self._domain_checked(
            s, None, "an unexpected error (details in the log file)."))
        task.done.connect(lambda t=task: self._domain_done(t))
        self._domain_task = task.start()

    def _domain_checked(self, snapshot: Project, info: dict[str, Any] | None, problem: str = "") -> None:
        project = self.project
        if project is None or (project.folder, project.backbone, project.images) != \
                (snapshot.folder, snapshot.backbone, snapshot.images):
            return  # about a model or pictures no longer chosen
        if info is None:
            self.backbone_panel.show_domain_error(problem)
        else:
            self.backbone_panel.show_domain(info)
        self.domain_checked.emit(info)

    def _domain_done(self, task: TaskWorker) -> None:
        task.wait(5)
        if self._domain_task is task:
            self._domain_task = None
        if self._domain_again:
            self._domain_again = False
            self._check_domain()

    def _apply_suggested_settings(self, info: dict[str, Any]) -> None:
        """A project just made in the New Project dialog starts from the settings its model's family
        suggests (a GAN: batches of 16, its learning rate, EMA); the method the person chose stays."""
        if self.project is None or getattr(self, "_suggest_settings_for", None) != self.project.folder:
            return
        self._suggest_settings_for = None
        from types import SimpleNamespace

        cfg = self.settings_form.config()
        cfg.suggest_for(SimpleNamespace(suggested=tuple((info.get("suggested") or {}).items()),
                                        methods=tuple(info.get("methods") or ("lora", "full"))),
                        given={"method"} if cfg.method in (info.get("methods") or ()) else ())
        self.settings_form.set_config(cfg)
        self.project.config = cfg
        self.project.save()

    def _update_buckets(self, cfg: TrainConfig) -> None:
        info = self.inspection or {}
        native = cfg.resolution or int(info.get("native_resolution") or 0)
        self.images_panel.set_bucket_params(native, int(info.get("resolution_multiple") or 8), cfg.buckets)

    # ================================================================== training
    def start_training(self) -> None:
        if self.project is None or self.train_view.is_running():
            return
        state = history.latest_run_state(self.project)
        cfg = self.settings_form.config()
        fresh, keep = True, False
        if state is not None and state.resumable(cfg.steps):
            changed = self._changed_settings(state, cfg)
            if changed:  # never continue silently with settings other than those on screen
                text = (f"The last run stopped at step {state.checkpoint_step} of {max(state.total, cfg.steps)}. "
                        f"Its settings differ from the current ones: {describe_differences(changed)}.\n\n"
                        "Continue it with the run's own settings (its checkpoints depend on them)? "
                        "No starts a new run with the current settings.")
            else:
                text = (f"The last run stopped at step {state.checkpoint_step} of "
                        f"{max(state.total, cfg.steps)}.\n\nContinue it? (No starts a new run "
                        "with the current settings.)")
            answer = self.ask("Continue or start over?", text, Btn.Yes | Btn.No | Btn.Cancel, Btn.Yes)
            if answer == Btn.Cancel:
                return
            fresh = answer != Btn.Yes
            keep = not fresh and bool(changed)
        self._start(fresh=fresh, keep_run_settings=keep)

    def train_baseline(self) -> None:
        """The from-scratch baseline run: now, or queued behind the run that is going."""
        if self.project is None:
            return
        if self.train_view.is_running():
            self._after_run = lambda: self._start(fresh=True, scratch=True)
            self.train_view.note("The from-scratch baseline starts when this run ends.")
            return
        self._start(fresh=True, scratch=True)

    def open_queue(self) -> QueueDialog:
        """Training ▸ Queue…: one dialog for the window's life (it runs the queue)."""
        if self.queue_dialog is None:
            self.queue_dialog = QueueDialog(self)
        self.queue_dialog.show()
        self.queue_dialog.raise_()
        return self.queue_dialog

    def train_queued(self, *, scratch: bool = False) -> bool:
        """A queued run, without questions: continue the last run as `train` does, or a new baseline."""
        return self.project is not None and self._start(fresh=scratch, scratch=scratch)

    def _start(self, *, fresh: bool, keep_run_settings: bool = False, scratch: bool = False) -> bool:
        assert self.project is not None
        cfg = self.settings_form.config()
        problems = cfg.problems()
        if problems:
            self.show_problem("Check the settings", "Some settings are not valid:\n• " + "\n• ".join(problems),
                              "Fix them in the Settings tab and start again.")
            self._show_tab(self.setup_tabs, 2)
            return False
        if self.inspection is not None and not self.inspection.get("usable", True):
            problems = self.inspection.get("problems") or ["This model cannot be used."]
            self.show_problem("The model cannot be trained", problems[0],
                              "Choose another model in the Model tab.")
            self._show_tab(self.setup_tabs, 0)
            return False
        # The engine reads the project from disk values: save what the person set up first.
        self.images_panel.save_caption()
        self.project.config = cfg
        if not self.save_project():
            return False
        self._work_tab(self.train_view)
        self.train_view.start_run(self.project, fresh=fresh, keep_run_settings=keep_run_settings, scratch=scratch)
        return True

    def _toggle_pause(self) -> None:
        if self.train_view.state in ("pausing", "paused"):
            self.train_view.resume()
        else:
            self.train_view.pause()

    def _running_changed(self, running: bool) -> None:
        self.settings_form.set_running(running)
        self.images_panel.set_running(running)
        self.backbone_panel.set_running(running)
        for action in (self.act_reset,):
            action.setEnabled(not running and self.project is not None)
        self._update_run_actions()

    def _update_run_actions(self) -> None:
        running = self.train_view.is_running()
        has = self.project is not None
        self.act_start.setEnabled(has and not running)
        self.act_baseline.setEnabled(has)
        for action in (self.act_pause, self.act_stop, self.act_sample_now, self.act_save_now):
            action.setEnabled(running)

    def _run_finished(self, end: Any) -> None:
        self._stop_timer.stop()
        if self.project is not None:
            self.images_panel.set_class_pictures(*history.class_pictures(self.project))
            self.report_view.refresh_runs()
            self.compare_view.set_trained_available(history.has_trained_weights(self.project))
        self._update_run_actions()
        after, self._after_run = self._after_run, None
        if after is not None:
            after()

    # ================================================================== export
    def export(self) -> ExportDialog | None:
        if self.project is None:
            return None
        if not history.has_trained_weights(self.project):
            self.show_problem("Nothing to export yet", "This project has no trained weights yet.",
                              "Train it first (a checkpoint is saved when you stop).")
            return None
        dialog = ExportDialog(self.project, self, family=(self.inspection or {}).get("family"),
                              method=history.trained_method(self.project), settings=self.settings)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.export_dialog = dialog
        dialog.destroyed.connect(lambda *_: setattr(self, "export_dialog", None))
        dialog.open()
        return dialog

    # ================================================================== recent projects
    def recent_projects(self) -> list[str]:
        value = self.settings.value("recent_projects", [])
        if isinstance(value, str):  # QSettings returns a bare string for one-item lists
            value = [value]
        return [str(v) for v in (value or [])]

    def _add_recent(self, folder: str) -> None:
        folder = str(Path(folder).resolve())
        items = [folder] + [f for f in self.recent_projects() if f != folder]
        self.settings.setValue("recent_projects", items[:MAX_RECENT])

    def _forget_recent(self, folder: str) -> None:
        folder = str(Path(folder).resolve())
        self.settings.setValue("recent_projects", [f for f in self.recent_projects() if f != folder])
        self._fill_welcome_recent()

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_projects()
        for folder in recent:
            action = self.recent_menu.addAction(f"{Path(folder).name}  —  {folder}")
            action.setEnabled(Path(folder).is_dir())
            action.triggered.connect(lambda _c=False, f=folder: self.open_project(f))
        if not recent:
            self.recent_menu.addAction("No recent projects").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear List", lambda: self.settings.setValue("recent_projects", []))

    def _fill_welcome_recent(self) -> None:
        self.welcome_recent.clear()
        for folder in self.recent_projects():
            if Path(folder).is_dir():
                item = QListWidgetItem(f"{Path(folder).name}   ({folder})")
                item.setData(Qt.ItemDataRole.UserRole, folder)
                self.welcome_recent.addItem(item)
        self.welcome_recent.setVisible(self.welcome_recent.count() > 0)
        self.welcome_recent_label.setVisible(self.welcome_recent.count() > 0)

    # ================================================================== help
    def open_log_folder(self) -> None:
        folder = user_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<h3>{APP_NAME} {__version__}</h3><p>Fine-tune pretrained image generators "
                          "(LoRA or full fine-tuning) on your own pictures, offline.</p>"
                          f"<p>Logs: {user_log_dir()}</p>")

    # ================================================================== view helpers
    def _show_tab(self, tabs: QTabWidget, index: int) -> None:
        if tabs is self.setup_tabs:
            self.act_toggle_setup.setChecked(True)
        tabs.setCurrentIndex(index)

    def _work_tab(self, widget: QWidget) -> None:
        self.work_tabs.setCurrentWidget(widget)

    # ================================================================== window state and closing
    def _restore_state(self) -> None:
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1320, 860)
        split = self.settings.value("splitter")
        if isinstance(split, QByteArray) and not split.isEmpty():
            self.splitter.restoreState(split)

    def _save_state(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("splitter", self.splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self._close_ready:
            event.accept()
            return
        if self.project is not None and self.dirty and not self._discard_ok:
            answer = self.ask("Unsaved changes", f"Save the changes to “{self.project.name}” before closing?",
                              Btn.Save | Btn.Discard | Btn.Cancel, Btn.Save)
            if answer == Btn.Cancel or (answer == Btn.Save and not self.save_project()):
                event.ignore()
                return
            self._discard_ok = answer == Btn.Discard
        if self.train_view.is_running():
            event.ignore()
            if self._after_run is not None:
                return  # already stopping; the window closes when the run has saved
            answer = self.ask("Training is running", "Stop training and close? The run saves a "
                              "checkpoint first, so you can continue it later.", Btn.Yes | Btn.Cancel, Btn.Yes)
            if answer != Btn.Yes:
                self._discard_ok = False
                return
            self._after_run = self.close
            self.train_view.stop()
            self.statusBar().showMessage("Stopping — saving a checkpoint, then closing…")
            self._stop_timer.start(STOP_TIMEOUT_S * 1000)
            return
        self._shutdown()
        event.accept()

    def _stop_took_too_long(self) -> None:
        if not self.train_view.is_running():
            return
        answer = self.ask("Still stopping", "Training has not stopped yet (it may be finishing a long step "
                          "or writing a checkpoint). Keep waiting?", Btn.Yes | Btn.No, Btn.Yes)
        if answer == Btn.Yes:
            self._stop_timer.start(STOP_TIMEOUT_S * 1000)
            return
        log.warning("closing while the training thread is still running")
        self._after_run = None
        self._close_ready = True
        self.close()

    def _shutdown(self) -> None:
        """Last steps before the window goes: remember state, let short jobs finish."""
        self._close_ready = True
        self._domain_timer.stop()  # no domain check starts in a closing window
        self.compare_view.shutdown()  # nor a comparison; a running one stops after its picture
        self.settings_form.shutdown()  # nor a memory estimate
        self._save_state()
        self.images_panel.shutdown(3000)
        for thread in live_threads():  # inspection/compare/export jobs are short; never kill them
            thread.wait(30_000)
