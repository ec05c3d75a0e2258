"""Compare: the base model and the trained one side by side, same seeds (and prompt).

Sampling runs on a TaskWorker; the loaded model is kept between comparisons, so moving the
strength slider only re-samples the trained side.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QSlider, QSpinBox, QVBoxLayout, QWidget)

from transferstudio.qt import history
from transferstudio.qt.tasks import ComparePair, CompareSession
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.train_view import PreviewGrid


class CompareView(QWidget):
    compared = Signal(object)  # ComparePair
    failed = Signal(str, str)  # message, advice
    crashed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Any = None
        self.session: CompareSession | None = None
        self.task: TaskWorker | None = None
        self._again = False  # settings changed while a comparison was running
        self.last: ComparePair | None = None
        self._text = False
        self._trained = False

        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 9)  # room for the seeds after it
        self.seed.setValue(1)
        self.seed.setToolTip("The same seed gives the same starting noise on both sides.")
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("What to draw (your trigger word calls up what was learned)")
        self.count = QSpinBox()
        self.count.setRange(1, 8)
        self.count.setValue(4)
        self.count.setToolTip("How many pictures on each side, from the seed up (seed, seed+1, …). "
                              "More pictures take longer.")
        self._count_chosen = False  # once the person picks a number, model changes leave it alone
        self.count.valueChanged.connect(lambda _v: setattr(self, "_count_chosen", True))
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setValue(30)
        self.steps.setSuffix(" steps")
        self.steps.setToolTip("Denoising steps per picture: more is slower and a little finer.")
        self.strength = QSlider(Qt.Orientation.Horizontal)
        self.strength.setRange(0, 150)
        self.strength.setValue(100)
        self.strength.setToolTip("How strongly the trained adapter is applied: 0% is the base model, "
                                 "100% as trained.")
        self.strength_label = QLabel("100%")
        self.strength_label.setMinimumWidth(44)
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v}%"))
        self.truncation = QSlider(Qt.Orientation.Horizontal)
        self.truncation.setRange(0, 100)
        self.truncation.setValue(100)
        self.truncation.setToolTip("Truncation (GANs): 100% samples the model's whole variety; lower values pull "
                                   "every picture towards the model's average one — cleaner, but more alike.")
        self.truncation_label = QLabel("100%")
        self.truncation_label.setMinimumWidth(44)
        self.truncation.valueChanged.connect(lambda v: self.truncation_label.setText(f"{v}%"))
        self.run = QComboBox()
        self.run.setToolTip("Which training run the trained side comes from (its last complete checkpoint).")
        self.run.currentIndexChanged.connect(self._run_changed)
        self.run_label = QLabel("Run")
        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(self.generate)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(140)
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.note = QLabel("Train the project first; then compare the base and trained models here.")
        self.note.setWordWrap(True)

        # Re-sample after the slider rests, not on every pixel it moves.
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.generate)
        self.strength.valueChanged.connect(lambda _v: self._debounce.start() if self.last else None)
        self.truncation.valueChanged.connect(lambda _v: self._debounce.start() if self.last else None)

        # One compact row of controls; the pictures get the space.
        controls = QHBoxLayout()
        controls.addWidget(self.run_label)
        controls.addWidget(self.run)
        controls.addSpacing(12)
        self._prompt_row_label = QLabel("Prompt")
        self._steps_label = QLabel("Quality")
        for label, widget, stretch in ((QLabel("Seed"), self.seed, 0), (QLabel("Pictures"), self.count, 0),
                                       (self._prompt_row_label, self.prompt, 3), (self._steps_label, self.steps, 0)):
            controls.addWidget(label)
            controls.addWidget(widget, stretch)
            controls.addSpacing(12)
        self._truncation_row = QWidget()
        truncation_row = QHBoxLayout(self._truncation_row)
        truncation_row.setContentsMargins(0, 0, 0, 0)
        truncation_row.addWidget(QLabel("Truncation"))
        truncation_row.addWidget(self.truncation, 1)
        truncation_row.addWidget(self.truncation_label)
        self.truncation.setMinimumWidth(120)
        controls.addWidget(self._truncation_row, 2)
        self._truncation_row.hide()
        self._strength_row = QWidget()
        strength_row = QHBoxLayout(self._strength_row)
        strength_row.setContentsMargins(0, 0, 0, 0)
        strength_row.addWidget(QLabel("Adapter strength"))
        strength_row.addWidget(self.strength, 1)
        strength_row.addWidget(self.strength_label)
        self.strength.setMinimumWidth(160)
        controls.addWidget(self._strength_row, 2)
        controls.addSpacing(12)
        controls.addWidget(self.generate_button)
        controls.addWidget(self.busy)

        self.base_title = QLabel("Base model")
        self.trained_title = QLabel("Trained")
        self.base_image = PreviewGrid()
        self.trained_image = PreviewGrid()
        self.base_image.clear("The base model's pictures")
        self.trained_image.clear("The trained model's pictures")
        sides = QHBoxLayout()
        for title, image in ((self.base_title, self.base_image), (self.trained_title, self.trained_image)):
            col = QVBoxLayout()
            font = title.font()
            font.setBold(True)
            title.setFont(font)
            title.setAlignment(Qt.AlignmentFlag.AlignCenter)
            col.addWidget(title)
            col.addWidget(image, 1)
            sides.addLayout(col, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.note)
        layout.addLayout(sides, 1)
        self.set_text_backbone(False)
        self._update_enabled()

    # --- public ----------------------------------------------------------------------
    def set_project(self, project: Any, *, trained: bool = False) -> None:
        self.project = project
        self.session = CompareSession(project) if project is not None else None
        self.last = None
        self.base_image.clear("The base model's pictures")
        self.trained_image.clear("The trained model's pictures")
        self.set_trained_available(trained)

    def set_trained_available(self, trained: bool) -> None:
        self._trained = trained
        self.note.setVisible(not trained)
        self._fill_runs()
        self._update_enabled()

    def _fill_runs(self) -> None:
        """Every trained run, newest first; the picker shows only when there is a choice."""
        current = self.run.currentData()
        self.run.blockSignals(True)
        self.run.clear()
        runs = history.trained_runs(self.project) if self.project is not None and self._trained else []
        for run in runs:
            self.run.addItem(f"{run.id} ({run.method}, {run.trained_step} steps)", str(run.folder))
        index = self.run.findData(current)
        self.run.setCurrentIndex(index if index >= 0 else 0)
        self.run.blockSignals(False)
        self.run.setVisible(len(runs) > 1)
        self.run_label.setVisible(len(runs) > 1)
        self._run_changed()

    def _run_changed(self, *_: Any) -> None:
        from pathlib import Path

        if self.session is None:
            return
        data = self.run.currentData()
        chosen = Path(data) if data and self.run.currentIndex() > 0 else None  # the newest: follow new runs
        if chosen != self.session.run_dir:
            self.session.run_dir = chosen
            self.last = None
            self.trained_image.clear("The trained model's pictures")

    def set_text_backbone(self, text: bool) -> None:
        """Prompts only for models that take text."""
        self._text = text
        if not self._count_chosen:  # big text models are slow: one picture; small pixel models: four
            self.count.blockSignals(True)
            self.count.setValue(1 if text else 4)
            self.count.blockSignals(False)
        self.prompt.setVisible(text)
        self._prompt_row_label.setVisible(text)

    def set_sampling_controls(self, *, truncation: bool, denoising: bool) -> None:
        """A GAN takes a truncation and has no denoising steps; a LoRA model has a strength."""
        self._truncation_row.setVisible(truncation)
        self.steps.setVisible(denoising)
        self._steps_label.setVisible(denoising)
        self._strength_row.setVisible(not truncation)

    def is_busy(self) -> bool:
        return self.task is not None

    def generate(self) -> None:
        if self.session is None or not self._trained:
            return
        if self.task is not None:
            self._again = True  # run once more with the newest settings when this one ends
            return
        strength = self.strength.value() / 100.0
        self.task = TaskWorker(self.session.compare, self.seed.value(), self.prompt.text().strip(),
                               strength, self.steps.value(), self.count.value(),
                               self.truncation.value() / 100.0, name="compare")
        self.task.succeeded.connect(self._on_result)
        self.task.failed.connect(self.failed)
        self.task.crashed.connect(self.crashed)
        self.task.done.connect(self._on_done)
        self.busy.show()
        self._update_enabled()
        self.task.start()

    def wait(self, timeout_s: float) -> bool:
        return self.task is None or self.task.wait(timeout_s)

    # --- results ----------------------------------------------------------------------
    def _on_result(self, pair: ComparePair) -> None:
        self.last = pair
        captions = [f"seed {seed}" + (f" · {pair.prompt}" if pair.prompt else "") for seed in pair.seeds]
        self.base_image.set_images(list(pair.base), list(pair.base_notes) or captions)
        self.trained_image.set_images(list(pair.trained), list(pair.trained_notes) or captions)
        lora = self.session is not None and self.session.method == "lora"
        self.trained_title.setText(f"Trained (step {pair.step}, strength {round(pair.strength * 100)}%)" if lora
                                   else f"Trained (step {pair.step})")
        if pair.base_notes:  # reconstructions: original | reconstruction, with how close it is
            self.base_title.setText("Base model — original | reconstruction, PSNR · SSIM")
            self.trained_title.setText(f"Trained (step {pair.step}) — original | reconstruction, PSNR · SSIM")
        else:
            self.base_title.setText("Base model")
        lora = self.session is not None and self.session.method == "lora"
        self._strength_row.setEnabled(lora)
        if not lora:
            self._strength_row.setToolTip("Strength applies to LoRA adapters only.")
        self.compared.emit(pair)

    def _on_done(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.wait(5)
        self.busy.hide()
        self._update_enabled()
        if self._again:
            self._again = False
            self.generate()

    def _update_enabled(self) -> None:
        ok = self.session is not None and self._trained
        self.generate_button.setEnabled(ok and self.task is None)
