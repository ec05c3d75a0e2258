"""Light and dark: follow the system (the default) or keep one, chosen in Preferences.

Qt's own means first: `QStyleHints.setColorScheme` (Qt 6.8+) asks the platform for the scheme, and
native styles that know both follow it. Where the platform or style cannot (X11 without a portal,
the classic Windows style, the offscreen platform), the Fusion style with a palette of our own
makes it so. "System" hands everything back: the system's scheme, style and palette.
Stored in QSettings under `appearance/theme`.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

KEY_THEME = "appearance/theme"
THEMES = (("system", "Same as the system"), ("light", "Light"), ("dark", "Dark"))
_SCHEMES = {"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark}
_SYSTEM = "_transferstudio_system_style"  # the style the app started with, kept on the app


def theme_setting(settings: QSettings) -> str:
    value = str(settings.value(KEY_THEME) or "system").lower()
    return value if value in dict(THEMES) else "system"


def save_theme(settings: QSettings, theme: str) -> None:
    settings.setValue(KEY_THEME, theme if theme in dict(THEMES) else "system")
    settings.sync()


def is_dark(palette: QPalette) -> bool:
    """Light text on a dark background."""
    return palette.color(QPalette.ColorRole.Window).lightness() < palette.color(QPalette.ColorRole.WindowText).lightness()


def dark_palette() -> QPalette:
    """A dark palette for the Fusion style, with the usual roles and the disabled ones greyed."""
    p = QPalette()
    window, base, alt, text = QColor(45, 45, 48), QColor(30, 30, 32), QColor(53, 53, 57), QColor(230, 230, 230)
    accent = QColor(64, 140, 220)
    roles = {QPalette.ColorRole.Window: window, QPalette.ColorRole.WindowText: text,
             QPalette.ColorRole.Base: base, QPalette.ColorRole.AlternateBase: alt,
             QPalette.ColorRole.ToolTipBase: QColor(60, 60, 64), QPalette.ColorRole.ToolTipText: text,
             QPalette.ColorRole.PlaceholderText: QColor(150, 150, 150), QPalette.ColorRole.Text: text,
             QPalette.ColorRole.Button: QColor(58, 58, 62), QPalette.ColorRole.ButtonText: text,
             QPalette.ColorRole.BrightText: QColor(255, 90, 90), QPalette.ColorRole.Light: QColor(80, 80, 85),
             QPalette.ColorRole.Midlight: QColor(66, 66, 70), QPalette.ColorRole.Mid: QColor(40, 40, 42),
             QPalette.ColorRole.Dark: QColor(25, 25, 27), QPalette.ColorRole.Shadow: QColor(10, 10, 10),
             QPalette.ColorRole.Highlight: accent, QPalette.ColorRole.HighlightedText: QColor(255, 255, 255),
             QPalette.ColorRole.Link: QColor(110, 170, 240), QPalette.ColorRole.LinkVisited: QColor(170, 140, 230),
             QPalette.ColorRole.Accent: accent}
    for role, colour in roles.items():
        p.setColor(role, colour)
    grey = QColor(125, 125, 125)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText,
                 QPalette.ColorRole.HighlightedText):
        p.setColor(QPalette.ColorGroup.Disabled, role, grey)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Highlight, QColor(80, 80, 80))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Base, window)
    return p


def light_palette() -> QPalette:
    p = QPalette()
    roles = {QPalette.ColorRole.Window: QColor(239, 239, 239), QPalette.ColorRole.WindowText: QColor(20, 20, 20),
             QPalette.ColorRole.Base: QColor(255, 255, 255), QPalette.ColorRole.AlternateBase: QColor(246, 246, 246),
             QPalette.ColorRole.ToolTipBase: QColor(255, 255, 220), QPalette.ColorRole.ToolTipText: QColor(0, 0, 0),
             QPalette.ColorRole.PlaceholderText: QColor(120, 120, 120), QPalette.ColorRole.Text: QColor(20, 20, 20),
             QPalette.ColorRole.Button: QColor(239, 239, 239), QPalette.ColorRole.ButtonText: QColor(20, 20, 20),
             QPalette.ColorRole.BrightText: QColor(255, 255, 255), QPalette.ColorRole.Light: QColor(255, 255, 255),
             QPalette.ColorRole.Midlight: QColor(202, 202, 202), QPalette.ColorRole.Mid: QColor(184, 184, 184),
             QPalette.ColorRole.Dark: QColor(159, 159, 159), QPalette.ColorRole.Shadow: QColor(118, 118, 118),
             QPalette.ColorRole.Highlight: QColor(48, 140, 198), QPalette.ColorRole.HighlightedText: QColor(255, 255, 255),
             QPalette.ColorRole.Link: QColor(0, 90, 180), QPalette.ColorRole.LinkVisited: QColor(110, 60, 170),
             QPalette.ColorRole.Accent: QColor(48, 140, 198)}
    for role, colour in roles.items():
        p.setColor(role, colour)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(150, 150, 150))
    return p


def apply_theme(theme: str, app: Any = None) -> str:
    """Make the running application light, dark or the system's ("system"); answers the scheme it
    now has ("light" or "dark"). Every widget gets a palette change and repaints."""
    app = app or QApplication.instance()
    if app is None:
        return "light"
    theme = theme if theme in dict(THEMES) else "system"
    style_name = getattr(app, _SYSTEM, None)
    if style_name is None:  # the first call: remember the system's style to go back to
        style_name = app.style().name()
        setattr(app, _SYSTEM, style_name)
    if app.style().name() != style_name:
        app.setStyle(style_name)
    hints = QGuiApplication.styleHints()
    if theme == "system":
        hints.unsetColorScheme()
    else:
        hints.setColorScheme(_SCHEMES[theme])
    # A palette that sets no role: the platform's, which follows its scheme (and later changes of it).
    app.setPalette(QPalette())
    if theme != "system" and ("dark" if is_dark(app.palette()) else "light") != theme:  # the platform could not
        if "Fusion" in QStyleFactory.keys():
            app.setStyle("Fusion")
        app.setPalette(dark_palette() if theme == "dark" else light_palette())
    return "dark" if is_dark(app.palette()) else "light"
