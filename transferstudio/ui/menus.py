"""The main window's menus and their actions. `build_menus(window)` makes the actions (kept on the
window as `act_*`, where tests and the toolbar-less layout reach them) and binds their enabled
state to the window's `ProjectState`: nothing here decides what an action does."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication, QMenu

from transferstudio.qt import tasks
from transferstudio.qt.project_state import Bindings

if TYPE_CHECKING:
    from transferstudio.ui.main_window import MainWindow


def _action(window: "MainWindow", menu: QMenu, text: str, slot: Callable[..., Any], shortcut: Any = None,
            tip: str = "") -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        action.setShortcut(QKeySequence(shortcut))
    if tip:
        action.setStatusTip(tip)
        action.setToolTip(tip)
    action.triggered.connect(lambda _checked=False: slot())
    menu.addAction(action)
    return action


def _edit(name: str) -> None:
    """Undo, copy, paste… go to the widget with the keyboard focus."""
    fn = getattr(QApplication.focusWidget(), name, None)
    if callable(fn):
        fn()


def build_menus(window: "MainWindow") -> Bindings:
    """File, Edit, View, Training and Help. The bindings that keep the actions' enabled state
    in step with the window's state are returned (they end with the window)."""
    w, bar = window, window.menuBar()
    m = bar.addMenu("&File")
    w.act_new = _action(w, m, "&New Project…", w.new_project, QKeySequence.StandardKey.New)
    w.act_open = _action(w, m, "&Open Project…", w.open_project_dialog, QKeySequence.StandardKey.Open)
    w.recent_menu = m.addMenu("Open &Recent")
    w.recent_menu.aboutToShow.connect(lambda: fill_recent_menu(w))
    w.act_sample = _action(w, m, "Open &Sample Project", w.open_sample_project,
                           tip="A ready project with a small bundled model, to try things out.")
    w.act_library = _action(w, m, "Model &Library…", w.open_library, "Ctrl+L",
                            tip="The models already on this computer; pick one as the base model.")
    m.addSeparator()
    w.act_save = _action(w, m, "&Save", w.save_project, QKeySequence.StandardKey.Save)
    w.act_export = _action(w, m, "&Export Trained Model…", w.export, "Ctrl+E")
    w.act_close = _action(w, m, "&Close Project", w.close_project, QKeySequence.StandardKey.Close)
    m.addSeparator()
    w.act_quit = _action(w, m, "&Quit", w.close, QKeySequence.StandardKey.Quit)
    w.act_quit.setMenuRole(QAction.MenuRole.QuitRole)

    m = bar.addMenu("&Edit")
    for text, key, name in (("&Undo", QKeySequence.StandardKey.Undo, "undo"),
                            ("&Redo", QKeySequence.StandardKey.Redo, "redo"),
                            ("Cu&t", QKeySequence.StandardKey.Cut, "cut"),
                            ("&Copy", QKeySequence.StandardKey.Copy, "copy"),
                            ("&Paste", QKeySequence.StandardKey.Paste, "paste")):
        if name == "cut":
            m.addSeparator()
        _action(w, m, text, lambda n=name: _edit(n), key)
    m.addSeparator()
    w.act_reset = _action(w, m, "Reset Settings to &Defaults", w.reset_settings,
                          tip="Put every training setting back to its beginner-safe default.")
    m.addSeparator()
    w.act_preferences = _action(w, m, "&Preferences…", w.open_preferences, "Ctrl+,",
                                tip="Where the model library looks for models.")
    w.act_preferences.setMenuRole(QAction.MenuRole.PreferencesRole)

    m = bar.addMenu("&View")
    for i, (text, tabs, index) in enumerate((("&Model", w.setup_tabs, 0), ("&Pictures", w.setup_tabs, 1),
                                             ("&Settings", w.setup_tabs, 2), ("&Train", w.work_tabs, 0),
                                             ("&Compare", w.work_tabs, 1), ("&Report", w.work_tabs, 2))):
        _action(w, m, text, lambda t=tabs, n=index: w._show_tab(t, n), f"Ctrl+{i + 1}")
    m.addSeparator()
    w.act_toggle_setup = QAction("Show Setup &Panel", w, checkable=True, checked=True)
    w.act_toggle_setup.setShortcut(QKeySequence("Ctrl+\\"))
    w.act_toggle_setup.toggled.connect(w.setup_tabs.setVisible)
    m.addAction(w.act_toggle_setup)

    m = bar.addMenu("&Training")
    runs = w.runs
    w.act_start = _action(w, m, "&Start", w.start_training, "Ctrl+Return")
    w.act_pause = _action(w, m, "&Pause / Resume", runs.toggle_pause, "Ctrl+P")
    w.act_stop = _action(w, m, "S&top (saves)", w.train_view.stop, "Ctrl+.")
    w.act_baseline = _action(
        w, m, "Train a From-Scratch &Baseline", w.train_baseline,
        tip="Train the same model from random weights, for the same steps on the same pictures (after the "
            "current run, if one is going), so the report shows what starting from the pretrained model "
            "bought. Small models only (the starters, DDPMs, VAEs, GANs).")
    m.addSeparator()
    w.act_sample_now = _action(w, m, "Sample &Now", w.train_view.sample_button.click)
    w.act_save_now = _action(w, m, "Save Checkpoint N&ow", w.train_view.save_button.click)
    m.addSeparator()
    w.act_queue = _action(w, m, "&Queue…", w.open_queue, tip="Runs of one or more projects, trained one after another.")

    m = bar.addMenu("&Help")
    _action(w, m, "Open &Log Folder", w.open_log_folder)
    w.act_about = _action(w, m, f"&About {w.APP_NAME}", w.about)
    w.act_about.setMenuRole(QAction.MenuRole.AboutRole)

    if not tasks.sample_project_available():
        for item in (w.act_sample, w.welcome.sample_button):
            item.setEnabled(False)
            item.setToolTip("The sample project is not part of this installation.")

    state = w.state
    bindings = Bindings()

    def update() -> None:
        has, running = state.project is not None, state.running
        for action in (w.act_save, w.act_close, w.act_export):
            action.setEnabled(has)
        w.act_reset.setEnabled(has and not running)
        w.act_start.setEnabled(has and not running)
        w.act_baseline.setEnabled(has)
        for action in (w.act_pause, w.act_stop, w.act_sample_now, w.act_save_now):
            action.setEnabled(running)

    bindings.watch(state, ("project", "running"), update)
    return bindings


def fill_recent_menu(window: "MainWindow") -> None:
    menu, recent = window.recent_menu, window.recent
    menu.clear()
    folders = recent.folders()
    for folder in folders:
        action = menu.addAction(f"{Path(folder).name}  —  {folder}")
        action.setEnabled(Path(folder).is_dir())
        action.triggered.connect(lambda _c=False, f=folder: window.open_project(f))
    if not folders:
        menu.addAction("No recent projects").setEnabled(False)
    else:
        menu.addSeparator()
        menu.addAction("Clear List", recent.clear)
