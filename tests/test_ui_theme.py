"""Light and dark themes (issue 17): the system's by default, switchable in Preferences, applied
live (charts included) and at start, and kept in the app's settings."""
from __future__ import annotations

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QDialogButtonBox

from test_ui_app import LONG, fast_config, make_window, open_and_inspect, project, settings  # noqa: F401
from transferstudio.ui import theme
from transferstudio.ui.preferences_dialog import PreferencesDialog

pytestmark = pytest.mark.usefixtures("no_worker_threads_left")  # tests/conftest.py


@pytest.fixture(autouse=True)
def back_to_the_system_theme():
    yield
    theme.apply_theme("system")


def _dark(widget) -> bool:
    return theme.is_dark(widget.palette())


def test_the_theme_follows_the_system_by_default_and_is_kept(settings):
    assert theme.theme_setting(settings) == "system"
    theme.save_theme(settings, "dark")
    assert theme.theme_setting(settings) == "dark"
    settings.setValue(theme.KEY_THEME, "purple")  # hand-edited: the default again
    assert theme.theme_setting(settings) == "system"
    system = theme.apply_theme("system")
    assert theme.apply_theme("dark") == "dark" and theme.is_dark(QApplication.palette())
    assert theme.apply_theme("light") == "light" and not theme.is_dark(QApplication.palette())
    assert theme.apply_theme("system") == system


def test_preferences_switch_the_theme_live_charts_included(qtbot, make_window, project, settings):
    window = make_window()
    open_and_inspect(qtbot, window, project.folder)
    view = window.train_view
    assert not _dark(window)  # the offscreen platform's system scheme is light
    light_background = view.plot.backgroundBrush().color()

    dialog = window.open_preferences()
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))  # shows at once
    QApplication.processEvents()
    assert _dark(window) and _dark(view) and view.is_dark()
    background = view.plot.backgroundBrush().color()
    assert background.lightness() < 80 and background != light_background
    axis = view.plot.getPlotItem().getAxis("left")
    assert axis.textPen().color().lightness() > 150  # light tick labels on the dark chart
    assert view.smooth_curve.opts["pen"].color() == view.palette().color(QPalette.ColorRole.Highlight)
    assert view.val_curve.opts["pen"].color().lightness() > 120
    dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
    assert theme.theme_setting(settings) == "dark"
    qtbot.waitUntil(lambda: window.preferences_dialog is None)  # closed and gone

    # Cancel takes a tried-out theme back.
    dialog = window.open_preferences()
    assert dialog.theme_choice() == "dark"
    dialog.theme.setCurrentIndex(dialog.theme.findData("light"))
    QApplication.processEvents()
    assert not _dark(window)
    dialog.buttons.button(QDialogButtonBox.StandardButton.Cancel).click()
    QApplication.processEvents()
    assert _dark(window) and theme.theme_setting(settings) == "dark"
    assert view.plot.backgroundBrush().color().lightness() < 80


def test_the_app_applies_the_saved_theme_at_start(monkeypatch, settings):
    import transferstudio.app as app_module

    # main() builds its own QApplication; here one exists, so check the step it takes.
    src = open(app_module.__file__, encoding="utf-8").read()
    assert "apply_theme(theme_setting(settings), app)" in src
    theme.save_theme(settings, "dark")
    assert theme.apply_theme(theme.theme_setting(settings), QApplication.instance()) == "dark"


def test_messages_keep_readable_text_when_the_theme_changes(qtbot):
    from PySide6.QtWidgets import QVBoxLayout, QWidget

    from transferstudio.ui.widgets import HintLine, MessageLabel

    box = QWidget()
    qtbot.addWidget(box)
    layout = QVBoxLayout(box)
    plain, hint, error = MessageLabel(), HintLine(), MessageLabel()
    for w in (plain, hint, error):
        layout.addWidget(w)
    box.show()
    plain.show_message("24 images", "plain")
    hint.show_message("optional", "muted")
    error.show_message("missing", "error")
    red = error.palette().color(QPalette.ColorRole.WindowText)

    def contrast(w) -> int:
        return abs(w.palette().color(QPalette.ColorRole.WindowText).lightness()
                   - box.palette().color(QPalette.ColorRole.Window).lightness())

    for scheme in ("dark", "light", "dark"):
        theme.apply_theme(scheme)
        QApplication.processEvents()
        assert contrast(plain) > 120 and contrast(hint) > 50, scheme
        assert error.palette().color(QPalette.ColorRole.WindowText) == red  # the levels keep their colours
