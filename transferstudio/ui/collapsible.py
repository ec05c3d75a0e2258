"""A titled section that folds away ("▸ Advanced"), small and ours: the settings form's advanced
settings. (superqt's QCollapsible did this, but importing superqt cost about 0.2 s at start-up.)"""
from __future__ import annotations

from PySide6.QtCore import QEasingCurve, QPropertyAnimation, Signal
from PySide6.QtWidgets import QPushButton, QSizePolicy, QVBoxLayout, QWidget


class Collapsible(QWidget):
    toggled = Signal(bool)  # expanded

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._title = title
        self._icons = ("▸", "▾")  # collapsed, expanded
        self._expanded = False
        self.button = QPushButton()
        self.button.setFlat(True)
        self.button.setStyleSheet("QPushButton { text-align: left; border: none; outline: none; padding: 2px 0; }")
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.button.clicked.connect(lambda: self.collapse() if self._expanded else self.expand())
        self.content = QWidget()
        self.content.setMaximumHeight(0)
        self.content.hide()
        self._content_layout = QVBoxLayout(self.content)
        self._content_layout.setContentsMargins(0, 0, 0, 0)
        self._animation = QPropertyAnimation(self.content, b"maximumHeight", self)
        self._animation.setEasingCurve(QEasingCurve.Type.InOutCubic)
        self._animation.setDuration(150)
        self._animation.finished.connect(self._settled)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.button)
        layout.addWidget(self.content)
        self._update_title()

    def setCollapsedIcon(self, icon: str) -> None:  # noqa: N802 (Qt style, as QCollapsible had it)
        self._icons = (icon, self._icons[1])
        self._update_title()

    def setExpandedIcon(self, icon: str) -> None:  # noqa: N802
        self._icons = (self._icons[0], icon)
        self._update_title()

    def setDuration(self, msecs: int) -> None:  # noqa: N802
        self._animation.setDuration(msecs)

    def addWidget(self, widget: QWidget) -> None:  # noqa: N802
        self._content_layout.addWidget(widget)

    def isExpanded(self) -> bool:  # noqa: N802
        return self._expanded

    def expand(self, animate: bool = True) -> None:
        self._set_expanded(True, animate)

    def collapse(self, animate: bool = True) -> None:
        self._set_expanded(False, animate)

    def _set_expanded(self, expanded: bool, animate: bool) -> None:
        if expanded == self._expanded:
            return
        self._expanded = expanded
        self._update_title()
        if expanded:
            self.content.show()
        end = self.content.sizeHint().height() if expanded else 0
        self._animation.stop()
        if animate and self._animation.duration() > 0 and self.isVisible():
            self._animation.setStartValue(self.content.height() if expanded else self.content.maximumHeight())
            self._animation.setEndValue(end)
            self._animation.start()
        else:
            self.content.setMaximumHeight(end)
            self._settled()
        self.toggled.emit(expanded)

    def _settled(self) -> None:
        # Expanded, the content may grow later (rows shown or hidden): no height cap then.
        if self._expanded:
            self.content.setMaximumHeight(16_777_215)
        else:
            self.content.hide()

    def _update_title(self) -> None:
        self.button.setText(f"{self._icons[1] if self._expanded else self._icons[0]} {self._title}")
