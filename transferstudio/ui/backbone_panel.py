"""The chosen base model: its path, what inspecting it found, and how close it is to the
project's pictures (the domain check).

Inspection and the check need torch, so they run in the Qt bridge; this panel only shows the
results (`show_busy` while inspecting, then `show_inspection(info)`; `show_domain_busy`, then
`show_domain(info)` or `show_domain_error(message)`).
"""
from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from transferstudio.ui.widgets import MessageLabel, PathPicker, human_bytes

# verdict -> (how the panel says it, its colour level)
_VERDICTS = {"close": ("Close to your pictures", "ok"), "related": ("Related to your pictures", "warning"),
             "far": ("Far from your pictures", "error")}

_PREDICTION_LABELS = {
    "epsilon": "noise (epsilon)",
    "v_prediction": "velocity (v-prediction)",
    "sample": "image (sample)",
    "flow": "flow matching",
}


class BackbonePanel(QWidget):
    """`path_chosen(str)` fires when the user picks, drops or types a model path;
    `library_requested()` when they ask to pick from the model library."""

    path_chosen = Signal(str)
    library_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._info: dict[str, Any] | None = None

        self.picker = PathPicker(
            folders=True, files=True,
            placeholder="A diffusers model folder or a .safetensors file",
            dialog_title="Choose the base model",
        )
        self.picker.setToolTip(
            "The pretrained model you fine-tune: a diffusers folder (with model_index.json) "
            "or a single .safetensors checkpoint. Drop one here too."
        )
        self.picker.path_changed.connect(self._picked)

        self.library_button = QPushButton("Model library…")
        self.library_button.setToolTip(
            "Pick from the models already on this computer: your model folders, A1111 / Forge, ComfyUI "
            "and the Hugging Face cache (set them in Edit ▸ Preferences…).")
        self.library_button.clicked.connect(self.library_requested)
        library_row = QHBoxLayout()
        library_row.setContentsMargins(0, 0, 0, 0)
        library_row.addWidget(self.library_button)
        library_row.addStretch(1)

        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # indeterminate: inspection has no progress to report
        self.busy_bar.setTextVisible(False)
        self.busy_bar.setMaximumHeight(6)
        self.busy_bar.hide()

        self.title = QLabel()
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.status = MessageLabel()
        self.problems = MessageLabel()

        self.details_box = QWidget()
        self.details = QFormLayout(self.details_box)
        self.details.setContentsMargins(0, 0, 0, 0)
        self.details.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.details.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)

        box = QGroupBox("Base model")
        inner = QVBoxLayout(box)
        inner.addWidget(self.picker)
        inner.addLayout(library_row)
        inner.addWidget(self.busy_bar)
        inner.addWidget(self.title)
        inner.addWidget(self.status)
        inner.addWidget(self.problems)
        inner.addWidget(self.details_box)

        # --- the domain check: is this model a good starting point for the pictures? ---
        self._domain: dict[str, Any] | None = None
        self.domain_bar = QProgressBar()
        self.domain_bar.setRange(0, 0)
        self.domain_bar.setTextVisible(False)
        self.domain_bar.setMaximumHeight(6)
        self.domain_verdict = MessageLabel()
        verdict_font = self.domain_verdict.font()
        verdict_font.setBold(True)
        verdict_font.setPointSizeF(verdict_font.pointSizeF() * 1.1)
        self.domain_verdict.setFont(verdict_font)
        self.domain_advice = MessageLabel()
        self.domain_detail = MessageLabel()
        self.domain_box = QGroupBox("Is it a good start for your pictures?")
        self.domain_box.setToolTip(
            "Transfer learning helps most when the pretrained model already knows pictures like yours. "
            "This check measures how well the model handles a few of your pictures compared with pictures "
            "of its own, and says close, related or far.")
        domain_layout = QVBoxLayout(self.domain_box)
        domain_layout.addWidget(self.domain_bar)
        domain_layout.addWidget(self.domain_verdict)
        domain_layout.addWidget(self.domain_advice)
        domain_layout.addWidget(self.domain_detail)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)
        layout.addWidget(self.domain_box)
        layout.addStretch(1)
        self.clear()

    # --- API ------------------------------------------------------------------------
    def set_path(self, path: str | os.PathLike | None) -> None:
        """Show the project's current model path (does not emit `path_chosen`)."""
        self.picker.set_path(path)

    def path(self) -> str:
        return self.picker.path()

    def choose(self, path: str | os.PathLike) -> None:
        """A model picked elsewhere (the library): show it and emit `path_chosen` like a browse."""
        text = os.path.normpath(str(path))
        self.picker.set_path(text)
        self.path_chosen.emit(text)

    def inspection(self) -> dict[str, Any] | None:
        return self._info

    def set_running(self, running: bool) -> None:
        """The model cannot change under a running job."""
        self.picker.setReadOnly(running)
        self.library_button.setEnabled(not running)

    def clear(self) -> None:
        self._info = None
        self.busy_bar.hide()
        self.title.setText("")
        self.title.hide()
        self.status.show_message(
            "No model chosen yet." if not self.picker.path() else "", "muted")
        self.problems.show_message("")
        self._set_details([])
        self.clear_domain()

    # --- the domain check ------------------------------------------------------------------
    def domain(self) -> dict[str, Any] | None:
        """The domain check shown now (None: none, or still checking)."""
        return self._domain

    def clear_domain(self) -> None:
        self._domain = None
        self.domain_bar.hide()
        for label in (self.domain_verdict, self.domain_advice, self.domain_detail):
            label.show_message("")
        self.domain_box.hide()

    def show_domain_busy(self, text: str = "Checking how close this model is to your pictures…") -> None:
        self.clear_domain()
        self.domain_box.show()
        self.domain_bar.show()
        self.domain_advice.show_message(text, "muted")

    def show_domain(self, info: dict[str, Any]) -> None:
        """info: verdict ("close" | "related" | "far"), score, advice, explanation (a DomainCheck's
        dict from the Qt bridge). Missing keys are fine."""
        self.clear_domain()
        self._domain = dict(info)
        verdict = str(info.get("verdict") or "")
        words, level = _VERDICTS.get(verdict, (verdict.capitalize(), "plain"))
        try:
            number = f" · {float(info['score']):.2f}"
        except (KeyError, TypeError, ValueError):
            number = ""
        self.domain_box.show()
        self.domain_verdict.show_message(f"{words}{number}", level)
        self.domain_verdict.setToolTip(f"Verdict: {verdict}. The number is how many times the model's error on "
                                       "your pictures is its error on its own kind of pictures (1 = the same).")
        self.domain_advice.show_message(str(info.get("advice") or ""))
        self.domain_detail.show_message(str(info.get("explanation") or ""), "muted")

    def show_domain_error(self, message: str) -> None:
        """The check could not run: one line, the rest of the panel stays as it is."""
        self.clear_domain()
        self.domain_box.show()
        self.domain_advice.show_message(f"Could not check how close this model is to your pictures: {message}",
                                        "warning")

    def show_busy(self, text: str = "Inspecting the model…") -> None:
        self._info = None
        self.clear_domain()  # a verdict about the model shown before is no longer the model's
        self.busy_bar.show()
        self.title.hide()
        self.status.show_message(text, "muted")
        self.problems.show_message("")
        self._set_details([])

    def show_error(self, message: str) -> None:
        """Inspection itself failed (file unreadable…): same red message as unusable."""
        self.show_inspection({"label": "", "usable": False, "problems": [message]})

    def show_inspection(self, info: dict[str, Any]) -> None:
        """info: label, usable, native_resolution, prediction_type, size_bytes,
        problems (list[str]), details (list[(key, value)]), family. Missing keys are fine."""
        self._info = dict(info)
        self.busy_bar.hide()
        label = str(info.get("label") or "")
        self.title.setText(label)
        self.title.setVisible(bool(label))
        usable = bool(info.get("usable"))
        problems = [str(p) for p in info.get("problems") or []]
        if usable:
            self.status.show_message("✓ Ready to train", "ok")
            level = "warning"  # problems of a usable model are warnings
        else:
            self.status.show_message("✗ This model cannot be used for training", "error")
            level = "error"
        self.problems.show_message("\n".join(f"• {p}" for p in problems), level)

        rows: list[tuple[str, str]] = []
        if info.get("family"):
            rows.append(("Family", str(info["family"])))
        if info.get("native_resolution"):
            side = int(info["native_resolution"])
            rows.append(("Native resolution", f"{side}×{side} px"))
        if info.get("prediction_type"):
            pred = str(info["prediction_type"])
            rows.append(("Predicts", _PREDICTION_LABELS.get(pred, pred)))
        if info.get("size_bytes"):
            rows.append(("Size on disk", human_bytes(info["size_bytes"])))
        for key, value in info.get("details") or []:
            rows.append((str(key), str(value)))
        self._set_details(rows)

    # --- internals ---------------------------------------------------------------------
    def _set_details(self, rows: list[tuple[str, str]]) -> None:
        while self.details.rowCount():
            self.details.removeRow(0)
        for key, value in rows:
            value_label = QLabel(value)
            value_label.setWordWrap(True)
            value_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.details.addRow(QLabel(f"{key}:"), value_label)
        self.details_box.setVisible(bool(rows))

    def _picked(self, path: str) -> None:
        if path:
            self.path_chosen.emit(path)
