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
from transferstudio.ui.preview_grid import PreviewGrid
from transferstudio.ui.widgets import ElidedLabel


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
        self._run_methods: dict[str, str] = {}  # run folder -> its training method

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
        self.strength_label.setFixedWidth(self.strength_label.fontMetrics().horizontalAdvance("150%") + 8)
        self.strength_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v}%"))
        self.truncation = QSlider(Qt.Orientation.Horizontal)
        self.truncation.setRange(0, 100)
        self.truncation.setValue(100)
        self.truncation.setToolTip("Truncation (GANs): 100% samples the model's whole variety; lower values pull "
                                   "every picture towards the model's average one — cleaner, but more alike.")
        self.truncation_label = QLabel("100%")
        self.truncation_label.setFixedWidth(self.truncation_label.fontMetrics().horizontalAdvance("100%") + 8)
        self.truncation_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.truncation.valueChanged.connect(lambda v: self.truncation_label.setText(f"{v}%"))
        self.run = QComboBox()
        self.run.setToolTip("Which training run the trained side comes from (its last complete checkpoint).")
        # Long run names must not widen the row (nor the window): the list shows them whole.
        self.run.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.run.setMinimumContentsLength(18)
        self.run.currentIndexChanged.connect(self._run_changed)
        self.run_label = QLabel("Run")
        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the picture being drawn (pictures of the base model already "
                                      "drawn are kept for the next time).")
        self.cancel_button.clicked.connect(self.cancel)
        # Progress: "picture 3 / 8" on a bar of fixed width, what is being drawn beside it. Both keep
        # their room when hidden, so starting or ending a comparison never moves or widens anything.
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setFixedWidth(150)
        self.busy.setFormat("%v / %m")
        self.busy.setToolTip("Pictures drawn so far, both sides together.")
        self.busy_label = ElidedLabel("")
        for widget in (self.busy, self.cancel_button):
            policy = widget.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            widget.setSizePolicy(policy)
            widget.hide()
        self.note = QLabel("Train the project first; then compare the base and trained models here.")
        self.note.setWordWrap(True)

        # Re-sample after the slider rests, not on every pixel it moves.
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.generate)
        self.strength.valueChanged.connect(lambda _v: self._debounce.start() if self.last else None)
        self.truncation.valueChanged.connect(lambda _v: self._debounce.start() if self.last else None)

        # Three short rows rather than one long one, so that a 1024-pixel-wide window shows every
        # control whole: what to draw and the buttons; the prompt (and run) where they apply; the
        # strength / truncation sliders and the progress.
        first = QHBoxLayout()
        self._steps_label = QLabel("Quality")
        for label, widget in ((QLabel("Seed"), self.seed), (QLabel("Pictures"), self.count),
                              (self._steps_label, self.steps)):
            first.addWidget(label)
            first.addWidget(widget)
            first.addSpacing(12)
        first.addStretch(1)
        first.addWidget(self.generate_button)
        first.addWidget(self.cancel_button)

        second = QHBoxLayout()
        second.addWidget(self.run_label)
        second.addWidget(self.run, 1)
        self._prompt_row_label = QLabel("Prompt")
        second.addWidget(self._prompt_row_label)
        second.addWidget(self.prompt, 3)

        third = QHBoxLayout()
        self._truncation_row = QWidget()
        truncation_row = QHBoxLayout(self._truncation_row)
        truncation_row.setContentsMargins(0, 0, 0, 0)
        truncation_row.addWidget(QLabel("Truncation"))
        truncation_row.addWidget(self.truncation, 1)
        truncation_row.addWidget(self.truncation_label)
        self.truncation.setMinimumWidth(100)
        third.addWidget(self._truncation_row, 2)
        self._truncation_row.hide()
        self._strength_row = QWidget()
        strength_row = QHBoxLayout(self._strength_row)
        strength_row.setContentsMargins(0, 0, 0, 0)
        strength_label = QLabel("Adapter strength")
        strength_label.setMinimumWidth(strength_label.sizeHint().width())  # never cut
        strength_row.addWidget(strength_label)
        strength_row.addWidget(self.strength, 1)
        strength_row.addWidget(self.strength_label)
        self.strength.setMinimumWidth(100)
        third.addWidget(self._strength_row, 2)
        third.addSpacing(12)
        third.addWidget(self.busy_label, 1)
        third.addWidget(self.busy)
        self.base_title = ElidedLabel("Base model")
        self.trained_title = ElidedLabel("Trained")
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
        layout.addLayout(first)
        layout.addLayout(second)
        layout.addLayout(third)
        layout.addWidget(self.note)
        layout.addLayout(sides, 1)
        self.set_text_backbone(False)
        self._update_enabled()

    # --- public ----------------------------------------------------------------------
    def set_project(self, project: Any, *, trained: bool = False) -> None:
        """Show `project` as if the view were new: nothing of the previous project stays (its
        pictures, titles, prompt, or a comparison still running for it, which is cancelled)."""
        self._debounce.stop()
        if self.task is not None:
            self.task.cancel()  # its result belongs to the other project and is ignored
        self._again = False
        self.project = project
        self.session = CompareSession(project) if project is not None else None
        self.last = None
        self._count_chosen = False
        self.prompt.clear()
        self.base_title.setText("Base model")
        self.trained_title.setText("Trained")
        self.base_image.clear("The base model's pictures")
        self.trained_image.clear("The trained model's pictures")
        self.busy_label.setText("")
        self._strength_row.setEnabled(True)
        self._strength_row.setToolTip("")
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
        self._run_methods = {str(run.folder): run.method for run in runs}
        for run in runs:
            self.run.addItem(f"{run.id} ({run.method}, {run.trained_step} steps)", str(run.folder))
            self.run.setItemData(self.run.count() - 1, str(run.folder), Qt.ItemDataRole.ToolTipRole)
        index = self.run.findData(current)
        self.run.setCurrentIndex(index if index >= 0 else 0)
        self.run.blockSignals(False)
        self.run.setVisible(len(runs) > 1)
        self.run_label.setVisible(len(runs) > 1)
        self._run_changed()

    def _run_changed(self, *_: Any) -> None:
        from pathlib import Path

        self._update_strength_row()
        if self.session is None:
            return
        data = self.run.currentData()
        chosen = Path(data) if data and self.run.currentIndex() > 0 else None  # the newest: follow new runs
        if chosen != self.session.run_dir:
            self.session.run_dir = chosen
            self.last = None
            self.trained_image.clear("The trained model's pictures")
            self.trained_title.setText("Trained")

    def selected_method(self) -> str | None:
        """The training method of the run the trained side comes from (None: no trained run)."""
        return self._run_methods.get(str(self.run.currentData()))

    def _update_strength_row(self) -> None:
        """The adapter strength is for LoRA-type runs; a full fine-tune has no adapter to weaken."""
        method = self.selected_method()
        self._strength_row.setVisible(not self._truncation_row.isVisibleTo(self) and method in (None, "lora"))

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
        self._update_strength_row()

    def is_busy(self) -> bool:
        return self.task is not None

    def generate(self) -> None:
        if self.session is None or not self._trained:
            return
        if self.task is not None:
            self._again = True  # run once more with the newest settings when this one ends
            return
        strength = self.strength.value() / 100.0
        session = self.session
        task = TaskWorker(session.compare, self.seed.value(), self.prompt.text().strip(),
                          strength, self.steps.value(), self.count.value(),
                          self.truncation.value() / 100.0, name="compare", control=True)
        # A comparison that ends after another project was opened is not shown.
        task.succeeded.connect(lambda pair, s=session: self._on_result(pair) if s is self.session else None)
        task.failed.connect(lambda m, a, s=session: self.failed.emit(m, a) if s is self.session else None)
        task.crashed.connect(self.crashed)
        task.progress.connect(lambda d, t, text, s=session: self._on_progress(d, t, text) if s is self.session
                              else None)
        task.cancelled.connect(lambda s=session: self.busy_label.setText("Cancelled.") if s is self.session
                               else None)
        task.done.connect(self._on_done)
        self.task = task
        self.busy.setRange(0, 0)
        self.busy_label.setText("Starting…")
        self.busy.show()
        self.cancel_button.setEnabled(True)
        self.cancel_button.show()
        self._update_enabled()
        task.start()

    def cancel(self) -> None:
        """Stop the running comparison after the picture being drawn."""
        self._again = False
        if self.task is not None and not self.task.is_cancelled():
            self.task.cancel()
            self.cancel_button.setEnabled(False)
            self.busy_label.setText("Cancelling after this picture…")

    def shutdown(self) -> None:
        """The window is closing: no new comparison starts, the running one stops soon."""
        self._debounce.stop()
        self._again = False
        if self.task is not None:
            self.task.cancel()

    def wait(self, timeout_s: float) -> bool:
        return self.task is None or self.task.wait(timeout_s)

    # --- results ----------------------------------------------------------------------
    def _on_progress(self, done: int, total: int, text: str) -> None:
        if self.task is not None and self.task.is_cancelled():
            return  # keep saying that it is cancelling
        if total > 0:
            self.busy.setRange(0, total)
            self.busy.setValue(done)
        else:
            self.busy.setRange(0, 0)  # loading a model: no count to show
        self.busy_label.setText(text or "Done.")

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
        self._strength_row.setEnabled(lora)
        self._strength_row.setToolTip("" if lora else "Strength applies to LoRA adapters only.")
        self.busy_label.setText("")
        self.compared.emit(pair)

    def _on_done(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.wait(5)
        self.busy.hide()
        self.cancel_button.hide()
        self._update_enabled()
        if self._again:
            self._again = False
            self.generate()

    def _update_enabled(self) -> None:
        ok = self.session is not None and self._trained
        self.generate_button.setEnabled(ok and self.task is None)
