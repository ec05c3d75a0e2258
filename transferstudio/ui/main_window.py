"""The main window: a project's model, pictures and settings on the left; Train, Compare and
Report on the right. A thin assembly: what is open lives in a `ProjectState` (qt/project_state.py)
that the panels follow; opening and saving projects is `ProjectFlow`'s, starting and stopping
runs `RunControl`'s, the menus `menus.build_menus`', the model's inspection and domain check
`ModelChecks`' (on worker threads). This module never imports torch (a test checks it)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QCloseEvent, QDesktopServices
from PySide6.QtWidgets import QMainWindow, QMessageBox, QSplitter, QStackedWidget, QTabWidget, QWidget

from transferstudio import __version__
from transferstudio.core.paths import user_data_dir, user_log_dir
from transferstudio.project.config import TrainConfig
from transferstudio.qt import history
from transferstudio.qt.model_checks import ModelChecks
from transferstudio.qt.project_state import ProjectState
from transferstudio.qt.recent import RecentProjects
from transferstudio.qt.workers import live_threads
from transferstudio.ui.backbone_panel import BackbonePanel
from transferstudio.ui.compare_view import CompareView
from transferstudio.ui.export_dialog import ExportDialog
from transferstudio.ui.images_panel import ImagesPanel
from transferstudio.ui.library_dialog import LibraryDialog
from transferstudio.ui.menus import build_menus
from transferstudio.ui.new_project_dialog import NewProjectDialog, ask_for_moved_path
from transferstudio.ui.preferences_dialog import PreferencesDialog
from transferstudio.ui.project_flow import ProjectFlow
from transferstudio.ui.queue_view import QueueDialog
from transferstudio.ui.report_view import ReportView
from transferstudio.ui.run_control import RunControl
from transferstudio.ui.settings_form import SettingsForm
from transferstudio.ui.train_view import TrainView
from transferstudio.ui.welcome import WelcomePage

log = logging.getLogger(__name__)

APP_NAME = "TransferStudio"
Btn = QMessageBox.StandardButton


class MainWindow(QMainWindow):
    APP_NAME = APP_NAME
    project_opened = Signal(object)
    project_closed = Signal()
    inspected = Signal(object)  # the backbone inspection dict
    domain_checked = Signal(object)  # the domain check's dict shown in the model panel (None: it failed)

    def __init__(self, settings: QSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or QSettings(APP_NAME, APP_NAME)
        self.state = ProjectState(self)
        self.recent = RecentProjects(self.settings, self)
        self.checks = ModelChecks(self.state, self)
        self._close_ready = False
        self.export_dialog: ExportDialog | None = None
        self.library_dialog: LibraryDialog | None = None
        self.preferences_dialog: PreferencesDialog | None = None
        self.queue_dialog: QueueDialog | None = None

        self._build_views()
        self.projects = ProjectFlow(self)
        self.runs = RunControl(self)
        self.bindings = build_menus(self)
        self._follow_state()
        self._restore_state()

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
        self.report_view = ReportView()
        self.work_tabs = QTabWidget()
        self.work_tabs.setDocumentMode(True)
        self.work_tabs.addTab(self.train_view, "Train")
        self.work_tabs.addTab(self.compare_view, "Compare")
        self.work_tabs.addTab(self.report_view, "Report")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.setup_tabs)
        self.splitter.addWidget(self.work_tabs)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([460, 820])

        self.welcome = WelcomePage(APP_NAME, self.recent)
        self.welcome.new_requested.connect(self.new_project)
        self.welcome.open_requested.connect(self.open_project_dialog)
        self.welcome.sample_requested.connect(self.open_sample_project)
        self.welcome.project_chosen.connect(self.open_project)
        self.welcome_sample, self.welcome_recent = self.welcome.sample_button, self.welcome.recent_list
        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(self.splitter)
        self.setCentralWidget(self.stack)
        self.statusBar()

    def _follow_state(self) -> None:
        """Wire the panels to the state and to each other (the window's one job)."""
        state, b = self.state, self.bindings
        state.project_changed.connect(self._project_changed)
        b.watch(state, ("project", "dirty"), self._update_title)
        b.watch(state, ("config", "capabilities"), self._update_pictures, now=False)
        state.capabilities_changed.connect(self._capabilities_changed)
        for panel in (self.settings_form, self.images_panel, self.backbone_panel):
            b.bind(state, "running", panel.set_running)
        self.train_view.run_state_changed.connect(lambda s: setattr(state, "run_state", s))
        self.train_view.run_finished.connect(self._run_ended)

        self.backbone_panel.path_chosen.connect(self.projects.backbone_chosen)
        self.backbone_panel.library_requested.connect(self.open_library)
        self.images_panel.folder_chosen.connect(self.projects.images_chosen)
        self.settings_form.changed.connect(self.settings_edited)
        self.train_view.start_requested.connect(self.start_training)
        self.train_view.failed.connect(lambda e: self.show_problem("Training stopped", e.message, e.advice))
        for view, what in ((self.train_view, ""), (self.compare_view, "Cannot compare"),
                           (self.report_view, "Cannot make the report")):
            view.crashed.connect(self.show_crash)
            if what:
                view.failed.connect(lambda m, a, t=what: self.show_problem(t, m, a))

        checks, panel = self.checks, self.backbone_panel
        checks.inspecting.connect(lambda _p: panel.show_busy("Inspecting the model…"))
        checks.inspect_failed.connect(panel.show_error)
        checks.inspected.connect(self._inspected)
        checks.domain_cleared.connect(panel.clear_domain)
        checks.domain_busy.connect(panel.show_domain_busy)
        checks.domain_failed.connect(panel.show_domain_error)
        checks.domain_checked.connect(lambda info: (info is not None and panel.show_domain(info),
                                                    self.domain_checked.emit(info)))
        self.stack.setCurrentWidget(self.welcome)

    # ================================================================== following the state
    def _project_changed(self, project: Any) -> None:
        """Another project (or none): every panel shows it, nothing of the previous one stays."""
        self.settings_form.set_model(None)  # until the new project's model is inspected
        self.settings_form.set_config(project.config if project is not None else TrainConfig())
        self.images_panel.set_captions_enabled(True)  # until the model says it takes no prompts
        self.backbone_panel.set_path(str(project.backbone) if project is not None else None)
        if project is None:
            self.backbone_panel.clear()
            self.checks.stop()
        self.images_panel.set_folder(str(project.images) if project is not None else None,
                                     trigger=project.config.trigger if project is not None else "")
        self.images_panel.set_class_pictures(*(history.class_pictures(project) if project is not None else ([], "")))
        self.train_view.set_project(project)
        if project is not None:
            self.compare_view.set_project(project, trained=history.has_trained_weights(project))
        else:
            self.compare_view.set_project(None)
        self.report_view.set_project(project)
        self.stack.setCurrentWidget(self.splitter if project is not None else self.welcome)
        if project is not None:
            self.checks.inspect(project.backbone)
            self.project_opened.emit(project)
        else:
            self.project_closed.emit()

    def _capabilities_changed(self, caps: Any) -> None:
        """The model was inspected: the settings, pictures and compare panels follow what it can do."""
        project = self.state.project
        usable = caps is not None and caps.usable
        self.settings_form.set_model(str(project.backbone) if usable and project is not None else None)
        if not usable:
            return
        self.settings_form.set_capabilities(text=caps.takes_prompts, supports_full_finetune=caps.supports_full_finetune,
                                            methods=list(caps.methods), objective=caps.objective)
        self.projects.apply_suggested_settings()
        self.compare_view.set_text_backbone(caps.takes_prompts)
        self.images_panel.set_captions_enabled(caps.takes_prompts)  # no prompts: no captions
        self.compare_view.set_sampling_controls(truncation=caps.truncation, denoising=caps.denoising)

    def _inspected(self, info: dict[str, Any]) -> None:
        self.backbone_panel.show_inspection(info)
        self.checks.check_domain()
        self.inspected.emit(info)

    def _update_pictures(self) -> None:
        """The pictures panel's trigger word and buckets follow the settings and the model."""
        cfg, caps = self.state.config, self.state.capabilities
        if self.state.project is None or cfg is None:
            return
        self.images_panel.set_trigger(cfg.trigger)
        native = cfg.resolution or (caps.native_resolution if caps is not None else 0)
        self.images_panel.set_bucket_params(native, caps.resolution_multiple if caps is not None else 8, cfg.buckets)

    def _update_title(self) -> None:
        project = self.state.project
        self.setWindowTitle(APP_NAME if project is None else
                            f"{project.name}{'*' if self.state.dirty else ''} — {APP_NAME}")

    def settings_edited(self) -> None:
        """The person changed a setting: the state's config follows the form, unsaved."""
        if self.state.project is not None:
            self.state.update(config=self.settings_form.config(), dirty=True)

    def _run_ended(self, _end: Any) -> None:
        project = self.state.project
        if project is not None:
            self.images_panel.set_class_pictures(*history.class_pictures(project))
            self.report_view.refresh_runs()
            self.compare_view.set_trained_available(history.has_trained_weights(project))

    # ================================================================== the state, for callers and tests
    @property
    def project(self) -> Any:
        return self.state.project

    @property
    def dirty(self) -> bool:
        return self.state.dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self.state.dirty = bool(value)

    @property
    def inspection(self) -> dict[str, Any] | None:
        return self.checks.inspection

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

    def show_crash(self, _text: str = "") -> None:
        self.show_problem("Internal error", "Something went wrong inside TransferStudio. Your settings "
                          "and pictures are safe.",
                          f"The details are in the log file (Help ▸ Open Log Folder): {user_log_dir()}")

    # ================================================================== projects and runs (ProjectFlow, RunControl)
    def new_project(self, backbone: str = "") -> NewProjectDialog | None:
        return self.projects.new_project(backbone)

    def _create_from_dialog(self, dialog: NewProjectDialog) -> None:
        self.projects.create_from_dialog(dialog)

    def open_project_dialog(self) -> None:
        self.projects.open_project_dialog()

    def open_project(self, folder: str | Path, *, offer_continue: bool = True) -> bool:
        return self.projects.open_project(folder, offer_continue=offer_continue)

    def open_sample_project(self) -> None:
        self.projects.open_sample_project()

    def save_project(self) -> bool:
        return self.projects.save_project()

    def close_project(self) -> None:
        self.projects.close_project()

    def reset_settings(self) -> None:
        self.projects.reset_settings()

    def recent_projects(self) -> list[str]:
        return self.recent.folders()

    def start_training(self) -> None:
        self.runs.start_training()

    def train_baseline(self) -> None:
        self.runs.train_baseline()

    def train_queued(self, *, scratch: bool = False) -> bool:
        """A queued run, without questions: continue the last run as `train` does, or a new baseline."""
        return self.project is not None and self.runs.start(fresh=scratch, scratch=scratch)

    # ================================================================== other windows
    def export(self) -> ExportDialog | None:
        if self.project is None:
            return None
        if not history.has_trained_weights(self.project):
            self.show_problem("Nothing to export yet", "This project has no trained weights yet.",
                              "Train it first (a checkpoint is saved when you stop).")
            return None
        caps = self.state.capabilities
        dialog = ExportDialog(self.project, self, family=caps.family if caps is not None else None,
                              method=history.trained_method(self.project), settings=self.settings)
        return self._keep_dialog("export_dialog", dialog)

    def open_library(self) -> LibraryDialog | None:
        if self.train_view.is_running():
            self.show_problem("Training is running", "The base model cannot change during a run.",
                              "Stop the training first.")
            return None
        if self.library_dialog is not None:
            self.library_dialog.raise_()
            return self.library_dialog
        dialog = LibraryDialog(self.settings, self, current=str(self.project.backbone) if self.project else "")
        dialog.model_chosen.connect(self._library_chosen)
        return self._keep_dialog("library_dialog", dialog)

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
        if self.library_dialog is not None:
            dialog.saved.connect(self.library_dialog.refresh)
        return self._keep_dialog("preferences_dialog", dialog)

    def _keep_dialog(self, name: str, dialog: Any) -> Any:
        """Open a dialog that deletes itself on close; `self.<name>` holds it while it is open."""
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        setattr(self, name, dialog)
        dialog.destroyed.connect(lambda *_: setattr(self, name, None))
        dialog.open()
        return dialog

    def open_queue(self) -> QueueDialog:
        """Training ▸ Queue…: one dialog for the window's life (it runs the queue)."""
        if self.queue_dialog is None:
            self.queue_dialog = QueueDialog(self)
        self.queue_dialog.show()
        self.queue_dialog.raise_()
        return self.queue_dialog

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

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self._close_ready:
            event.accept()
            return
        flow = self.projects
        if self.project is not None and self.dirty and not flow.discard_ok:
            answer = self.ask("Unsaved changes", f"Save the changes to “{self.project.name}” before closing?",
                              Btn.Save | Btn.Discard | Btn.Cancel, Btn.Save)
            if answer == Btn.Cancel or (answer == Btn.Save and not self.save_project()):
                event.ignore()
                return
            flow.discard_ok = answer == Btn.Discard
        if self.train_view.is_running():
            event.ignore()
            if self.runs.after_run is not None:
                return  # already stopping; the window closes when the run has saved
            answer = self.ask("Training is running", "Stop training and close? The run saves a "
                              "checkpoint first, so you can continue it later.", Btn.Yes | Btn.Cancel, Btn.Yes)
            if answer != Btn.Yes:
                flow.discard_ok = False
                return
            self.runs.stop_to_close()
            return
        self._shutdown()
        event.accept()

    def close_now(self) -> None:
        """Close without asking again (a run that would not stop in time)."""
        self._close_ready = True
        self.close()

    def _shutdown(self) -> None:
        """Last steps before the window goes: remember state, let short jobs finish."""
        self._close_ready = True
        self.checks.stop()  # no domain check starts in a closing window
        self.compare_view.shutdown()  # nor a comparison; a running one stops after its picture
        self.settings_form.shutdown()  # nor a memory estimate
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("splitter", self.splitter.saveState())
        self.settings.sync()
        self.images_panel.shutdown(3000)
        for thread in live_threads():  # inspection/compare/export jobs are short; never kill them
            thread.wait(30_000)
