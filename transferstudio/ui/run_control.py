"""Starting, continuing and stopping runs from the window: the questions a person is asked
("continue the last run or start over?"), the from-scratch baseline queued behind a run, and
closing the window or the project while a run saves. The run itself is the Train tab's
(`TrainView` owns its worker); the answers come from the window's dialogs, which tests replace."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QMessageBox

from transferstudio.core.errors import UserError
from transferstudio.project.config import TrainConfig
from transferstudio.project.run import Run, describe_differences, settings_differences
from transferstudio.qt import history

if TYPE_CHECKING:
    from transferstudio.ui.main_window import MainWindow

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 120  # how long closing waits for a stopping run before offering to quit anyway
Btn = QMessageBox.StandardButton


def changed_settings(state: Any, config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(field, run's value, current value) where the run a Start would continue differs."""
    run = getattr(state, "run", None)
    if run is None:
        try:
            run = Run.open(state.run_dir)
        except UserError:
            return []
    return settings_differences(run.config, config)


class RunControl(QObject):
    def __init__(self, window: "MainWindow") -> None:
        super().__init__(window)
        self.window = window
        self.after_run: Callable[[], None] | None = None  # e.g. close the window once stopped
        self.stop_timer = QTimer(self)
        self.stop_timer.setObjectName("stop_timer")
        self.stop_timer.setSingleShot(True)
        self.stop_timer.timeout.connect(self._stop_took_too_long)
        window.train_view.run_finished.connect(self._run_finished)

    @property
    def view(self) -> Any:
        return self.window.train_view

    def start_training(self) -> None:
        """Start: continue the last run when it is unfinished and the person says so."""
        w = self.window
        if w.project is None or self.view.is_running():
            return
        state = history.latest_run_state(w.project)
        cfg = w.settings_form.config()
        fresh, keep = True, False
        if state is not None and state.resumable(cfg.steps):
            changed = changed_settings(state, cfg)
            if changed:  # never continue silently with settings other than those on screen
                text = (f"The last run stopped at step {state.checkpoint_step} of {max(state.total, cfg.steps)}. "
                        f"Its settings differ from the current ones: {describe_differences(changed)}.\n\n"
                        "Continue it with the run's own settings (its checkpoints depend on them)? "
                        "No starts a new run with the current settings.")
            else:
                text = (f"The last run stopped at step {state.checkpoint_step} of "
                        f"{max(state.total, cfg.steps)}.\n\nContinue it? (No starts a new run "
                        "with the current settings.)")
            answer = w.ask("Continue or start over?", text, Btn.Yes | Btn.No | Btn.Cancel, Btn.Yes)
            if answer == Btn.Cancel:
                return
            fresh = answer != Btn.Yes
            keep = not fresh and bool(changed)
        self.start(fresh=fresh, keep_run_settings=keep)

    def offer_to_continue(self) -> None:
        """A project just opened with an unfinished run: offer to continue it now."""
        w = self.window
        project = w.project
        if project is None:
            return
        state = history.latest_run_state(project)
        if state is None or not state.resumable(project.config.steps):
            return
        changed = changed_settings(state, project.config)
        note = (f"\n\nIts settings differ from the project's: {describe_differences(changed)}. A continued "
                "run keeps its own settings (its checkpoints depend on them).") if changed else ""
        answer = w.ask("Continue training?",
                       f"This project has an unfinished run: {state.checkpoint_step} of "
                       f"{max(state.total, project.config.steps)} steps are saved.{note}\n\n"
                       "Continue training it now" + (" with the run's settings?" if changed else "?"))
        if answer == Btn.Yes:
            w._work_tab(self.view)
            self.start(fresh=False, keep_run_settings=bool(changed))

    def train_baseline(self) -> None:
        """The from-scratch baseline run: now, or queued behind the run that is going."""
        if self.window.project is None:
            return
        if self.view.is_running():
            self.after_run = lambda: self.start(fresh=True, scratch=True)
            self.view.note("The from-scratch baseline starts when this run ends.")
            return
        self.start(fresh=True, scratch=True)

    def start(self, *, fresh: bool, keep_run_settings: bool = False, scratch: bool = False) -> bool:
        """Check the settings and the model, save the project, and start the run."""
        w = self.window
        assert w.project is not None
        cfg = w.settings_form.config()
        problems = cfg.problems()
        if problems:
            w.show_problem("Check the settings", "Some settings are not valid:\n• " + "\n• ".join(problems),
                           "Fix them in the Settings tab and start again.")
            w._show_tab(w.setup_tabs, 2)
            return False
        caps = w.state.capabilities
        if caps is not None and not caps.usable:
            w.show_problem("The model cannot be trained", (caps.problems or ("This model cannot be used.",))[0],
                           "Choose another model in the Model tab.")
            w._show_tab(w.setup_tabs, 0)
            return False
        # The engine reads the project from disk values: save what the person set up first.
        if not w.save_project():
            return False
        w._work_tab(self.view)
        self.view.start_run(w.project, fresh=fresh, keep_run_settings=keep_run_settings, scratch=scratch)
        return True

    def toggle_pause(self) -> None:
        if self.view.state in ("pausing", "paused"):
            self.view.resume()
        else:
            self.view.pause()

    def stop_then(self, after: Callable[[], None]) -> None:
        """Stop the run (it saves a checkpoint), then `after()`."""
        self.after_run = after
        self.view.stop()

    def stop_to_close(self) -> None:
        """Closing the window during a run: stop, save, then close; ask again if it takes long."""
        self.stop_then(self.window.close)
        self.window.statusBar().showMessage("Stopping — saving a checkpoint, then closing…")
        self.stop_timer.start(STOP_TIMEOUT_S * 1000)

    def _stop_took_too_long(self) -> None:
        w = self.window
        if not self.view.is_running():
            return
        answer = w.ask("Still stopping", "Training has not stopped yet (it may be finishing a long step "
                       "or writing a checkpoint). Keep waiting?", Btn.Yes | Btn.No, Btn.Yes)
        if answer == Btn.Yes:
            self.stop_timer.start(STOP_TIMEOUT_S * 1000)
            return
        log.warning("closing while the training thread is still running")
        self.after_run = None
        w.close_now()

    def _run_finished(self, _end: Any) -> None:
        self.stop_timer.stop()
        w = self.window
        if w.project is not None:
            w.state.runs = tuple(w.project.runs())
        after, self.after_run = self.after_run, None
        if after is not None:
            after()
