"""Training settings form, built from TrainConfig's field metadata (help, min/max, choices).

Adding a field to TrainConfig adds it here (in Advanced) with its tooltip and range: the
form never keeps its own copy of limits or help texts.
"""
from __future__ import annotations

import math
import re
from dataclasses import Field, fields, replace
from types import SimpleNamespace
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QRegularExpressionValidator, QShowEvent, QStandardItemModel, QValidator
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from transferstudio.core.errors import UserError
from transferstudio.project import presets as preset_store
from transferstudio.project.config import TrainConfig
from transferstudio.qt.plan import PlanSession
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.collapsible import Collapsible
from transferstudio.ui.widgets import HintLine, MessageLabel

ESTIMATE_DELAY_MS = 400  # settle after typing before the memory is estimated again
PRESET_TOOLTIP = ("Named sets of settings. The built-in ones are made for a GPU of each size, for this kind of "
                  "model and method, so that a run fits its memory; yours are the settings you saved. Choosing "
                  "one changes the settings it names and leaves the rest (trigger word, prompts) alone.")
PURPOSE_TOOLTIP = ("What the LoRA is to learn: a style, a character or an object. Each sets how it learns — which "
                   "layers, the adapter's size, caption dropout and tag shuffling, mirroring — and leaves the GPU "
                   "preset's memory settings alone, so the two combine. Starting points, not rules.")
MEMORY_TOOLTIP = ("How much GPU memory a run with these settings will take at its peak: the weights, gradients, "
                  "optimizer state and the activations of one batch, estimated from the model's shapes without "
                  "loading it. Compared with the free memory of the GPU found here.")

BASIC = (
    "method", "steps", "learning_rate", "batch_size", "resolution", "trigger", "rank", "alpha",
    "augment", "freeze_discriminator_blocks",
    "preview_every", "preview_prompts", "preview_seeds", "checkpoint_every", "validation",
)

LABELS = {
    "method": "Method",
    "steps": "Training steps",
    "learning_rate": "Learning rate",
    "batch_size": "Batch size",
    "gradient_accumulation": "Gradient accumulation",
    "resolution": "Resolution",
    "buckets": "Aspect-ratio buckets",
    "crop": "Crop",
    "flip": "Random flip",
    "trigger": "Trigger word",
    "rank": "LoRA rank",
    "alpha": "LoRA alpha",
    "dora": "DoRA",
    "adapter": "Adapter",
    "layers": "Layers",
    "conv_rank": "Conv rank",
    "conv_alpha": "Conv alpha",
    "dropout": "LoRA dropout",
    "train_text_encoder": "Train text encoder",
    "caption_dropout": "Caption dropout",
    "shuffle_tags": "Shuffle tags",
    "keep_tags": "Keep first tags",
    "tag_dropout": "Tag dropout",
    "ema": "EMA weights",
    "ema_decay": "EMA decay",
    "schedule": "LR schedule",
    "optimizer": "Optimizer",
    "warmup_steps": "Warm-up steps",
    "precision": "Precision",
    "gradient_checkpointing": "Gradient checkpointing",
    "fp8_base": "fp8 base weights",
    "masked_loss": "Masked loss",
    "timestep_sampling": "Timestep sampling",
    "timestep_low": "Lowest noise level",
    "timestep_high": "Highest noise level",
    "debiased_estimation": "Debiased estimation",
    "noise_offset": "Noise offset",
    "min_snr_gamma": "Min-SNR gamma",
    "seed": "Seed",
    "preview_every": "Preview every",
    "preview_prompts": "Preview prompts",
    "preview_seeds": "Preview seeds",
    "preview_steps": "Preview steps",
    "checkpoint_every": "Checkpoint every",
    "validation": "Held-out pictures",
    "validation_every": "Validate every",
    "class_pictures": "Class pictures",
    "class_prompt": "Class prompt",
    "prior_loss_weight": "Class picture weight",
    "multires_noise_iterations": "Multi-resolution noise",
    "multires_noise_discount": "Multi-res noise discount",
    "input_perturbation": "Input perturbation",
    "keep_checkpoints": "Keep checkpoints",
    "device": "Device",
    "processes": "GPUs",
    "pyramid_weight": "Structure weight",
    "kl_weight": "KL weight",
    "discriminator_start": "Discriminator from step",
    "adversarial_weight": "Discriminator weight",
    "discriminator_learning_rate": "Discriminator learning rate",
    "freeze_discriminator_blocks": "FreezeD: frozen blocks",
    "augment": "Augmentation",
    "augment_strength": "Augmentation strength",
    "consistency_weight": "Consistency weight",
    "r1_gamma": "R1 strength",
}

CHOICE_LABELS = {
    "lora": "LoRA (small adapter)",
    "full": "Full fine-tuning",
    "decoder": "Decoder only (keeps the latent space)",
    "constant": "Constant",
    "cosine": "Cosine",
    "linear": "Linear",
    "auto": "Automatic",
    "fp32": "fp32 (full precision)",
    "bf16": "bf16",
    "fp16": "fp16",
    "center": "Centre",
    "random": "Random",
    "cpu": "CPU",
    "cuda": "CUDA GPU",
    "mps": "Apple MPS",
    "adaptive": "Adaptive (ADA)",
    "uniform": "Uniform",
    "logit-normal": "Logit-normal (middle levels)",
    "adamw": "AdamW",
    "adamw8bit": "AdamW 8-bit (CUDA)",
    "adafactor": "Adafactor (least memory)",
    "prodigy": "Prodigy (learning rate 1.0)",
    "fixed": "Fixed strength",
    "off": "Off",
    "loha": "LoHa (LyCORIS, Hadamard)",
    "lokr": "LoKr (LyCORIS, Kronecker)",
    "attention": "Attention only",
    "attention+ff": "Attention + feed-forward",
    "all-linear": "All linear layers",
    "all+conv": "All layers + convolutions",
}

SUFFIXES = {
    "resolution": " px",
    "preview_every": " steps",
    "checkpoint_every": " steps",
    "validation_every": " steps",
    "warmup_steps": " steps",
    "preview_steps": " steps",
}

# Shown when the spin box is at its minimum and that minimum means something special.
SPECIAL_MIN_TEXT = {
    "resolution": "Model's native",
    "preview_every": "Only at start and end",
    "min_snr_gamma": "Off",
    "noise_offset": "Off",
    "validation_every": "At previews",
    "multires_noise_iterations": "Off",
    "class_pictures": "Off",
    "input_perturbation": "Off",
    "warmup_steps": "None",
    "discriminator_start": "No discriminator",
    "conv_rank": "Same as rank",
    "conv_alpha": "Same as alpha",
}

DECIMALS = {"conv_alpha": 1, "input_perturbation": 3, "multires_noise_discount": 2, "alpha": 1, "dropout": 2, "ema_decay": 5, "noise_offset": 3, "min_snr_gamma": 1, "pyramid_weight": 2,
            "adversarial_weight": 3}
SCIENTIFIC = ("learning_rate", "kl_weight")  # tiny values people write as 1e-6

TEXT_ONLY = ("trigger", "preview_prompts", "train_text_encoder", "caption_dropout", "shuffle_tags", "keep_tags",
             "tag_dropout", "class_prompt")  # hidden for unconditional models
LORA_ONLY = ("rank", "alpha", "dora", "dropout", "train_text_encoder", "adapter", "layers", "conv_rank", "conv_alpha")
FULL_ONLY = ("ema", "ema_decay")

_SEED_MAX = 2**31 - 1


def format_scientific(value: float) -> str:
    """1e-4 -> "1e-4", 2.5e-5 -> "2.5e-5", 0.3 -> "0.3": what people write for learning rates."""
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e3:
        return f"{value:.6g}"
    mantissa, exponent = f"{value:.4e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


class ScientificSpinBox(QDoubleSpinBox):
    """A double spin box that reads and shows "1e-4"; arrows step the leading digit
    (1e-4 → 2e-4 … 9e-4 → 1e-3), so tiny values stay reachable without typing."""

    _PARTIAL = re.compile(r"^[+]?(\d+\.?\d*|\.\d*)?([eE][+-]?\d*)?$")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(15)  # rounding happens in textFromValue, not in the stored value

    def textFromValue(self, value: float) -> str:  # noqa: N802
        return format_scientific(value)

    def valueFromText(self, text: str) -> float:  # noqa: N802
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> object:
        stripped = text.strip()
        if not stripped:
            return QValidator.State.Intermediate, text, pos
        if not self._PARTIAL.match(stripped):
            return QValidator.State.Invalid, text, pos
        try:
            value = float(stripped)
        except ValueError:
            return QValidator.State.Intermediate, text, pos  # "1e-" on the way to "1e-4"
        if self.minimum() <= value <= self.maximum():
            return QValidator.State.Acceptable, text, pos
        return QValidator.State.Intermediate, text, pos  # refused on Enter/focus-out

    def fixup(self, text: str) -> str:
        return self.textFromValue(self.value())

    def stepBy(self, steps: int) -> None:  # noqa: N802
        value = self.value()
        for _ in range(abs(steps)):
            value = self._step_once(value, up=steps > 0)
        self.setValue(min(self.maximum(), max(self.minimum(), value)))

    def _step_once(self, value: float, *, up: bool) -> float:
        if value <= 0:
            return self.minimum() if up else 0.0
        exponent = math.floor(math.log10(value) + 1e-9)
        unit = 10.0 ** exponent
        digit = round(value / unit)
        if not up and digit <= 1:
            unit /= 10  # 1e-4 steps down to 9e-5
        new = (round(value / unit) + (1 if up else -1)) * unit
        return float(f"{new:.6g}")


class SeedsEdit(QLineEdit):
    """Comma-separated whole numbers ≥ 0; anything else cannot be typed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setValidator(QRegularExpressionValidator(r"^[\d,\s]*$", self))
        self.setPlaceholderText("e.g. 1, 2, 3, 4")

    def seeds(self) -> list[int]:
        return [min(int(t), _SEED_MAX) for t in re.split(r"[,\s]+", self.text()) if t]

    def set_seeds(self, seeds: list[int]) -> None:
        self.setText(", ".join(str(int(s)) for s in seeds))


class PromptsEdit(QPlainTextEdit):
    """One prompt per line (with kohya's --n/--d/--s/--l/--w/--h options); blank lines are
    dropped. Its context menu loads and saves the lines as a prompts file."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText("One prompt per line, e.g. a red barn --n blurry --d 7 --s 20\n"
                                "Empty: your trigger word and captions are used. Right-click: load or save a file.")
        self.setTabChangesFocus(True)
        lines = 4
        self.setFixedHeight(self.fontMetrics().lineSpacing() * lines + 14)

    def prompts(self) -> list[str]:
        return [line.strip() for line in self.toPlainText().splitlines() if line.strip()]

    def set_prompts(self, prompts: list[str]) -> None:
        self.setPlainText("\n".join(prompts))

    def contextMenuEvent(self, event: Any) -> None:  # noqa: N802
        menu = self.createStandardContextMenu()
        menu.addSeparator()
        menu.addAction("Load a prompts file…", self._ask_load)
        menu.addAction("Save the prompts as a file…", self._ask_save)
        menu.exec(event.globalPos())

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load preview prompts", "", "Prompts (*.txt);;All files (*)")
        problem = self.load_file(path) if path else None
        if problem:
            QMessageBox.warning(self, "Preview prompts", problem)

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save preview prompts", "prompts.txt", "Prompts (*.txt)")
        if path:
            self.save_file(path)

    def load_file(self, path: Any) -> str | None:
        """Take the lines of a prompts file (kohya's sample-prompts format; # comments left out);
        what went wrong, or None."""
        from transferstudio.project.prompt_options import read_prompt_file

        try:
            lines = read_prompt_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            return f"Could not read {path} as a text file of prompts ({exc}). The prompts are unchanged."
        self.set_prompts(lines)
        return None

    def save_file(self, path: Any) -> None:
        from transferstudio.core.atomic import write_text_atomic

        write_text_atomic(path, "\n".join(self.prompts()) + "\n")


class _NoWheelUnlessFocused(QObject):
    """Scrolling the form over a spin box or combo must scroll, not change a setting."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Wheel and isinstance(watched, QWidget) and not watched.hasFocus():
            event.ignore()
            return True
        return False


class SettingsForm(QWidget):
    """Edits a TrainConfig. `changed` fires on every user edit, never on `set_config`."""

    changed = Signal()
    memory_estimated = Signal(object)  # the estimate as a dict (qt.plan.PlanSession.estimate), or None

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._cfg = TrainConfig()
        self._plan_session: PlanSession | None = None  # the project's model, once it is known
        self._facts: dict[str, Any] | None = None  # what the model can do (for its presets)
        self._estimate_task: TaskWorker | None = None
        self._estimate_again = False  # settings changed while an estimate ran
        self._estimate_waiting = False  # asked while hidden: estimate when shown
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(ESTIMATE_DELAY_MS)
        self._estimate_timer.timeout.connect(self._start_estimate)
        self._loading = False
        self._running = False
        self._text = True
        self._full_ok = True
        self.editors: dict[str, QWidget] = {}
        self.labels: dict[str, QLabel] = {}
        self._fields: dict[str, Field] = {f.name: f for f in fields(TrainConfig)}
        self._wheel_guard = _NoWheelUnlessFocused(self)

        content = QWidget()
        outer = QVBoxLayout(content)
        outer.setContentsMargins(4, 4, 4, 4)
        plan_box = QGroupBox("Preset and memory")
        plan_box.setLayout(self._plan_rows())
        outer.addWidget(plan_box)

        basic_box = QGroupBox("Basic")
        self._basic_form = self._new_form(basic_box)
        self.advanced = Collapsible("Advanced")
        self.advanced.setCollapsedIcon("▸")
        self.advanced.setExpandedIcon("▾")
        self.advanced.setDuration(150)
        advanced_widget = QWidget()
        self._advanced_form = self._new_form(advanced_widget)
        self.advanced.addWidget(advanced_widget)
        self.advanced.layout().setContentsMargins(0, 0, 0, 0)

        for name in BASIC:
            self._add_field(self._basic_form, self._fields[name])
        for f in fields(TrainConfig):
            if f.name not in BASIC:
                self._add_field(self._advanced_form, f)

        for f in fields(TrainConfig):  # e.g. GPUs: shown once the estimate finds more than one
            if f.metadata.get("multi_gpu"):
                self._set_row_visible(f.name, False)

        self.method_note = MessageLabel()
        self._basic_form.insertRow(1, "", self.method_note)
        self._basic_form.setRowVisible(self.method_note, False)

        outer.addWidget(basic_box)
        outer.addWidget(self.advanced)
        outer.addStretch(1)

        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

        self.set_config(TrainConfig())

    # --- building ---------------------------------------------------------------------
    def _plan_rows(self) -> QFormLayout:
        """The preset chooser and the memory estimate, above the settings they are about."""
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip(PRESET_TOOLTIP)
        self.preset_combo.setAccessibleName("Preset")
        self.preset_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset_combo.setMinimumContentsLength(16)
        self.preset_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.preset_combo.activated.connect(self._preset_chosen)
        self.save_preset_button = QPushButton("Save as preset…")
        self.save_preset_button.setToolTip("Keep these settings under a name of your own, to use in other projects "
                                           "(the trigger word and prompts are not saved).")
        self.save_preset_button.clicked.connect(self._ask_preset_name)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.save_preset_button)
        self.kohya_button = QPushButton("Import kohya_ss…")
        self.kohya_button.setToolTip("Take the settings a kohya_ss LoRA preset (.json saved by its GUI) shares with "
                                     "TransferStudio: learning rate, batch, steps, rank and alpha, LoRA type, optimizer, "
                                     "scheduler and warm-up, noise and caption options. What has no counterpart here "
                                     "is listed, never dropped silently.")
        self.kohya_button.clicked.connect(self._ask_kohya_preset)
        row.addWidget(self.kohya_button)
        # Two lines that keep their height (the fields below never move when they change): the
        # estimate, and under it what to change when it does not fit, or a word about presets.
        self.memory_line = HintLine()
        self.memory_line.setToolTip(MEMORY_TOOLTIP)
        self.memory_line.setAccessibleName("Estimated GPU memory")
        self.note_line = HintLine()
        self._advice: list[str] = []
        self._preset_message: tuple[str, str] = ("", "plain")
        self._own_presets = preset_store.load_user_presets()  # (presets, problems), read again after a save
        form = self._new_form(None)
        preset_label = QLabel("&Preset")
        preset_label.setBuddy(self.preset_combo)
        preset_label.setToolTip(PRESET_TOOLTIP)
        form.addRow(preset_label, row)
        self.purpose_combo = QComboBox()
        self.purpose_combo.setToolTip(PURPOSE_TOOLTIP)
        self.purpose_combo.setAccessibleName("What it learns")
        self.purpose_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.purpose_combo.activated.connect(self._purpose_chosen)
        purpose_label = QLabel("&Learns")
        purpose_label.setBuddy(self.purpose_combo)
        purpose_label.setToolTip(PURPOSE_TOOLTIP)
        form.addRow(purpose_label, self.purpose_combo)
        memory_label = QLabel("Memory")
        memory_label.setToolTip(MEMORY_TOOLTIP)
        form.addRow(memory_label, self.memory_line)
        form.addRow("", self.note_line)
        self._plan_form = form
        self._fill_presets()
        return form

    @staticmethod
    def _new_form(parent: QWidget | None) -> QFormLayout:
        form = QFormLayout(parent)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return form

    def _add_field(self, form: QFormLayout, f: Field) -> None:
        editor = self._make_editor(f)
        help_text = f.metadata.get("help", "")
        editor.setToolTip(help_text)
        editor.setObjectName(f.name)
        if isinstance(editor, (QAbstractSpinBox, QComboBox)):
            editor.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
            editor.installEventFilter(self._wheel_guard)
        editor.setAccessibleName(LABELS.get(f.name, f.name))
        editor.setAccessibleDescription(help_text)
        label = QLabel(LABELS.get(f.name, f.name.replace("_", " ").capitalize()))
        label.setToolTip(help_text)
        label.setBuddy(editor)
        self.editors[f.name] = editor
        self.labels[f.name] = label
        form.addRow(label, editor)

    def _make_editor(self, f: Field) -> QWidget:
        meta = f.metadata
        kind = str(f.type)
        if "choices" in meta:
            combo = QComboBox()
            for choice in meta["choices"]:
                combo.addItem(CHOICE_LABELS.get(choice, choice), choice)
            combo.currentIndexChanged.connect(self._edited)
            return combo
        if kind == "bool":
            box = QCheckBox()
            box.toggled.connect(self._edited)
            return box
        if kind == "int":
            spin = QSpinBox()
            spin.setRange(int(meta.get("min", 0)), int(min(meta.get("max", _SEED_MAX), _SEED_MAX)))
            spin.setGroupSeparatorShown(True)
            spin.setSuffix(SUFFIXES.get(f.name, ""))
            spin.setSpecialValueText(SPECIAL_MIN_TEXT.get(f.name, ""))
            self._spin_common(spin)
            spin.valueChanged.connect(self._edited)
            return spin
        if kind == "float" and f.name in SCIENTIFIC:
            spin = ScientificSpinBox()
            spin.setRange(float(meta["min"]), float(meta["max"]))
            self._spin_common(spin)
            spin.valueChanged.connect(self._edited)
            return spin
        if kind == "float":
            spin = QDoubleSpinBox()
            decimals = DECIMALS.get(f.name, 3)
            spin.setDecimals(decimals)
            spin.setRange(float(meta.get("min", 0.0)), float(meta.get("max", 1e9)))
            spin.setSingleStep(10.0 ** -min(decimals, 2) if decimals else 1.0)
            spin.setSpecialValueText(SPECIAL_MIN_TEXT.get(f.name, ""))
            self._spin_common(spin)
            spin.valueChanged.connect(self._edited)
            return spin
        if f.name == "preview_seeds":
            seeds = SeedsEdit()
            seeds.textEdited.connect(self._edited)
            seeds.editingFinished.connect(self._normalise_seeds)
            return seeds
        if f.name == "preview_prompts" or kind == "list":
            prompts = PromptsEdit()
            prompts.textChanged.connect(self._edited)
            return prompts
        line = QLineEdit()
        if f.name == "trigger":
            line.setPlaceholderText("e.g. mystyle")
        line.textEdited.connect(self._edited)
        return line

    @staticmethod
    def _spin_common(spin: QAbstractSpinBox) -> None:
        # Out-of-range text is refused: focus-out/Enter goes back to the last good value.
        spin.setCorrectionMode(QAbstractSpinBox.CorrectionMode.CorrectToPreviousValue)
        spin.setKeyboardTracking(False)  # one `changed` per finished number, not per digit
        spin.setAccelerated(True)

    # --- public API ---------------------------------------------------------------------
    def set_config(self, cfg: TrainConfig) -> None:
        self._cfg = replace(cfg)
        self._loading = True
        try:
            for name, editor in self.editors.items():
                self._write(editor, name, getattr(cfg, name))
        finally:
            self._loading = False
        self._update_dependencies()
        self._fill_presets()
        self._schedule_estimate()

    def config(self) -> TrainConfig:
        values = {name: self._read(editor, name) for name, editor in self.editors.items()}
        return replace(self._cfg, **values)

    def set_model(self, path: str | None) -> None:
        """The project's model (None: none): the presets offered and the memory estimate follow it.
        The estimate runs on a worker while the form is on screen, again after each change."""
        if self._plan_session is not None and path is not None and self._plan_session.backbone == str(path):
            return
        self._plan_session = PlanSession(path) if path else None
        self._facts = None
        self._own_presets = preset_store.load_user_presets()
        self._fill_presets()
        self._advice = []
        self._show_note()
        if self._plan_session is None:
            self._estimate_timer.stop()
            self.memory_line.show_message("", "muted", MEMORY_TOOLTIP)
            return
        self.memory_line.show_message("Estimating GPU memory…", "muted", MEMORY_TOOLTIP)
        self._schedule_estimate()

    def kind(self) -> str:
        """The kind of model the presets are for ("" until the model is known)."""
        caps = (self._facts or {}).get("caps")
        return preset_store.model_kind(SimpleNamespace(**caps)) if caps else ""

    def apply_preset(self, preset: preset_store.Preset) -> None:
        """Put a preset's settings into the form, as if the person had typed them."""
        self.set_config(preset.apply(self.config()))
        self._edited()

    def save_preset(self, name: str) -> preset_store.Preset | None:
        """Save the settings as a preset of the person's own; None (and a note why) if it cannot be written."""
        try:
            preset = preset_store.save_user_preset(name, self.config(), kind=self.kind())
        except (UserError, OSError) as exc:
            text = f"{exc.message} {exc.advice}" if isinstance(exc, UserError) else \
                f"The preset could not be saved: {exc.strerror or exc}."
            self._show_preset_note(text.strip(), "error")
            return None
        self._own_presets = preset_store.load_user_presets()
        self._fill_presets()
        return preset

    def estimating(self) -> bool:
        return self._estimate_task is not None or self._estimate_timer.isActive()

    def shutdown(self, timeout_ms: int = 30_000) -> None:
        """No new estimate; wait for a running one (the window calls this when it closes)."""
        self._plan_session = None
        self._estimate_timer.stop()
        if self._estimate_task is not None:
            self._estimate_task.wait(timeout_ms / 1000)

    def set_capabilities(self, *, text: bool, supports_full_finetune: bool, methods: Any = None,
                         objective: str = "diffusion") -> None:
        """Hide prompt/text-encoder fields for unconditional models and the fields of other kinds of
        model (a setting's `objective`); offer only the methods the model's family has; grey out
        "full" for big ones.

        If the current method is not possible for the model, the form switches to one that is and
        emits `changed` (training would fail otherwise); a note says why.
        """
        self._text = text
        self._full_ok = supports_full_finetune
        for name in TEXT_ONLY:
            self._set_row_visible(name, text)
        for f in fields(TrainConfig):
            wanted = f.metadata.get("objective")
            if wanted is not None:
                self._set_row_visible(f.name, wanted == objective and (text or f.name not in TEXT_ONLY))
        offered = tuple(methods or ("lora", "full"))
        if "lora" not in offered:  # e.g. a VAE: no adapter settings at all
            for name in LORA_ONLY:
                self._set_row_visible(name, False)
        else:
            for name in LORA_ONLY:
                self._set_row_visible(name, text or name not in TEXT_ONLY)
        combo_view = self.editors["method"].view()  # type: ignore[attr-defined]
        for row in range(self.editors["method"].count()):  # type: ignore[attr-defined]
            combo_view.setRowHidden(row, self.editors["method"].itemData(row) not in offered)  # type: ignore[attr-defined]
        switched = self.editors["method"].currentData() not in offered  # type: ignore[attr-defined]
        if switched:
            self.editors["method"].setCurrentIndex(self.editors["method"].findData(offered[0]))  # type: ignore[attr-defined]
            self.method_note.show_message(f"Switched to {CHOICE_LABELS.get(offered[0], offered[0])}: "
                                          "the method this kind of model trains with.", "info")
            self._basic_form.setRowVisible(self.method_note, True)
        combo: QComboBox = self.editors["method"]  # type: ignore[assignment]
        model = combo.model()
        full_row = combo.findData("full")
        if isinstance(model, QStandardItemModel) and full_row >= 0:
            item = model.item(full_row)
            item.setEnabled(supports_full_finetune)
            item.setToolTip("" if supports_full_finetune else
                            "This model is too large to fine-tune fully here; use LoRA.")
        if not supports_full_finetune and combo.currentData() == "full":
            combo.setCurrentIndex(combo.findData("lora"))  # emits changed via _edited
            self.method_note.show_message(
                "Switched to LoRA: this model is too large for full fine-tuning.", "warning")
            self._basic_form.setRowVisible(self.method_note, True)
        elif supports_full_finetune and not switched:
            self._basic_form.setRowVisible(self.method_note, False)
        self._update_dependencies()

    def set_running(self, running: bool) -> None:
        """Read-only while training: settings of a running job cannot change under it. No memory
        estimate meanwhile: the run holds the GPU's memory, so its free memory says nothing."""
        self._running = running
        self._update_dependencies()
        self.preset_combo.setEnabled(not running)
        self.purpose_combo.setEnabled(not running)
        self.save_preset_button.setEnabled(not running)
        self.kohya_button.setEnabled(not running)
        if not running and self._estimate_waiting:
            self._schedule_estimate()

    def is_running(self) -> bool:
        return self._running

    # --- internals -----------------------------------------------------------------------
    def _set_row_visible(self, name: str, visible: bool) -> None:
        for form in (self._basic_form, self._advanced_form):
            if form.indexOf(self.editors[name]) >= 0:
                form.setRowVisible(self.editors[name], visible)

    def _write(self, editor: QWidget, name: str, value: Any) -> None:
        with QSignalBlocker(editor):
            if isinstance(editor, QComboBox):
                index = editor.findData(value)
                editor.setCurrentIndex(max(0, index))
            elif isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, QSpinBox):
                editor.setValue(int(value))
            elif isinstance(editor, QDoubleSpinBox):
                editor.setValue(float(value))
            elif isinstance(editor, SeedsEdit):
                editor.set_seeds(list(value))
            elif isinstance(editor, PromptsEdit):
                editor.set_prompts([str(p) for p in value])
            elif isinstance(editor, QLineEdit):
                editor.setText(str(value))

    def _read(self, editor: QWidget, name: str) -> Any:
        if isinstance(editor, QComboBox):
            return editor.currentData()
        if isinstance(editor, QCheckBox):
            return editor.isChecked()
        if isinstance(editor, QSpinBox):
            return editor.value()
        if isinstance(editor, QDoubleSpinBox):
            return float(editor.value())
        if isinstance(editor, SeedsEdit):
            return editor.seeds()
        if isinstance(editor, PromptsEdit):
            return editor.prompts()
        if isinstance(editor, QLineEdit):
            return " ".join(editor.text().split()) if name == "trigger" else editor.text()
        raise TypeError(name)

    def _normalise_seeds(self) -> None:
        seeds: SeedsEdit = self.editors["preview_seeds"]  # type: ignore[assignment]
        with QSignalBlocker(seeds):
            seeds.set_seeds(seeds.seeds())

    def _edited(self, *_: Any) -> None:
        if self._loading:
            return
        self._update_dependencies()
        self._fill_presets()
        self._schedule_estimate()
        self.changed.emit()

    # --- presets ---------------------------------------------------------------------------
    def _fill_presets(self) -> None:
        """The presets for this kind of model and method, the person's own, and which one the
        settings are now (Custom when none)."""
        combo = self.preset_combo
        config = self.config() if hasattr(self, "editors") and self.editors else TrainConfig()
        kind = self.kind()
        with QSignalBlocker(combo):
            combo.clear()
            combo.addItem("Custom", None)
            combo.setItemData(0, "These settings are not one of the presets.", Qt.ItemDataRole.ToolTipRole)
            for preset in preset_store.builtin_presets(kind, config.method) if kind else []:
                combo.addItem(preset.name, preset)
                combo.setItemData(combo.count() - 1, preset.describe(), Qt.ItemDataRole.ToolTipRole)
            own, problems = self._own_presets
            own = [p for p in own if not p.kind or not kind or p.kind == kind]
            if own:
                combo.insertSeparator(combo.count())
            for preset in own:
                combo.addItem(f"{preset.name} (yours)", preset)
                combo.setItemData(combo.count() - 1, f"Your preset, saved in {preset.path}",
                                  Qt.ItemDataRole.ToolTipRole)
            combo.setCurrentIndex(self._matching_preset(config))
        self._fill_purposes(kind, config)
        if problems:
            self._show_preset_note(f"{len(problems)} preset file(s) could not be read: {problems[0]}", "warning")
        elif self._preset_message[1] == "warning":
            self._show_preset_note("", "plain")

    def _fill_purposes(self, kind: str, config: TrainConfig) -> None:
        """What the LoRA learns (style, character, object) for text models: a second kind of preset
        that sets how it learns, beside the GPU size's; the row is hidden where there is none."""
        combo = self.purpose_combo
        offered = preset_store.purpose_presets(kind, config.method) if kind else []
        with QSignalBlocker(combo):
            combo.clear()
            combo.addItem("Anything (your settings)", None)
            for preset in offered:
                combo.addItem(preset.name, preset)
                combo.setItemData(combo.count() - 1, preset.describe(), Qt.ItemDataRole.ToolTipRole)
            found = preset_store.matching_purpose(kind, config) if offered else None
            combo.setCurrentIndex(combo.findText(found.name) if found is not None else 0)
        if hasattr(self, "_plan_form"):
            self._plan_form.setRowVisible(combo, bool(offered))

    def _purpose_chosen(self, index: int) -> None:
        preset = self.purpose_combo.itemData(index)
        if isinstance(preset, preset_store.Preset) and not self._running:
            self.apply_preset(preset)

    def _matching_preset(self, config: TrainConfig) -> int:
        for index in range(1, self.preset_combo.count()):
            preset = self.preset_combo.itemData(index)
            if isinstance(preset, preset_store.Preset) and preset.matches(config):
                return index
        return 0

    def _preset_chosen(self, index: int) -> None:
        preset = self.preset_combo.itemData(index)
        if isinstance(preset, preset_store.Preset) and not self._running:
            self.apply_preset(preset)

    def _ask_preset_name(self) -> None:
        name, ok = QInputDialog.getText(self, "Save as preset", "Name of the preset:")
        if ok and name.strip():
            preset = self.save_preset(name)
            if preset is not None:
                self._show_preset_note(f"Saved as “{preset.name}” ({preset.path}).", "ok")

    def _ask_kohya_preset(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a kohya_ss LoRA preset", "", "kohya_ss preset (*.json)")
        if path:
            self.import_kohya_preset(path)

    def import_kohya_preset(self, path: Any) -> list[str]:
        """Put the shared settings of a kohya_ss preset into the form (the project keeps them when
        saved); the notes about what was not taken are shown and returned."""
        from transferstudio.project.kohya_preset import read_kohya_preset

        try:
            settings, notes = read_kohya_preset(path)
        except UserError as exc:
            self._show_preset_note(f"{exc.message} {exc.advice}", "error")
            return [exc.message]
        self.set_config(TrainConfig.from_dict({**self.config().to_dict(), **settings}))
        self.changed.emit()  # the window saves the project's settings as for any edit
        text = f"Took {len(settings)} settings from the kohya_ss preset"
        text += f"; {len(notes)} not taken (hover to see)." if notes else "."
        self._preset_message = (text, "warning" if notes else "ok")
        self._advice = []
        self.note_line.show_message(text, "warning" if notes else "ok",
                                    "\n".join(["Not taken:"] + [f"• {n}" for n in notes]) if notes else text)
        return notes

    def _show_preset_note(self, text: str, level: str) -> None:
        self._preset_message = (text, level)
        self._show_note()

    def _show_note(self) -> None:
        """The line under the estimate: what to change when it does not fit, else a word about presets."""
        if self._advice:
            self.note_line.show_message("Try: " + self._advice[0], "error",
                                          "To fit, change one of these:\n" + "\n".join(f"• {a}" for a in self._advice))
        else:
            text, level = self._preset_message
            self.note_line.show_message(text, level, text)

    # --- the memory estimate -----------------------------------------------------------------
    def _schedule_estimate(self) -> None:
        if getattr(self, "_plan_session", None) is not None:
            self._estimate_timer.start()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802
        super().showEvent(event)
        if self._estimate_waiting:
            self._schedule_estimate()

    def _start_estimate(self) -> None:
        session = self._plan_session
        if session is None:
            return
        if not self.isVisible() or self._running:  # nobody would see it, or a run holds the GPU: later
            self._estimate_waiting = True
            return
        self._estimate_waiting = False
        if self._estimate_task is not None:
            self._estimate_again = True
            return
        task = TaskWorker(session.estimate, self.config().to_dict(), name="memory-plan")
        task.succeeded.connect(lambda info, s=session: self._estimated(s, info))
        task.failed.connect(lambda message, advice, s=session: self._estimate_failed(s, f"{message} {advice}".strip()))
        task.crashed.connect(lambda _text, s=session: self._estimate_failed(s, "an unexpected error (details in the "
                                                                              "log file)"))
        task.done.connect(lambda t=task: self._estimate_done(t))
        self._estimate_task = task.start()

    def _estimated(self, session: PlanSession, info: dict[str, Any]) -> None:
        if session is not self._plan_session:
            return  # about a model no longer chosen
        if self._facts is None:
            self._facts = info.get("facts")
            self._fill_presets()
        text = info["summary"]
        gpu = info.get("gpu")
        if info["device"] == "cuda" and gpu is None:
            text += " (no CUDA GPU found here)"
        level = {True: "ok", False: "error"}.get(info["fits"], "plain")
        details = info["describe"] + (f"\nGPU: {gpu['name']}" if gpu else "")
        self.memory_line.show_message(text, level, f"{MEMORY_TOOLTIP}\n\n{details}")
        self._advice = list(info["advice"]) if info["fits"] is False else []
        self._show_note()
        self.show_gpu_count(int(gpu.get("count", 1)) if gpu else 0)
        self.memory_estimated.emit(info)

    def show_gpu_count(self, count: int) -> None:
        """Offer "GPUs: 1 … count" when the computer has several CUDA GPUs (or the project already
        asks for several); otherwise the row stays hidden."""
        editor = self.editors.get("processes")
        if editor is None:
            return
        asked = int(editor.value()) if isinstance(editor, QSpinBox) else 1
        several = count > 1 or asked > 1
        if isinstance(editor, QSpinBox) and count > 1:
            editor.setMaximum(max(count, asked))
        self._set_row_visible("processes", several)

    def _estimate_failed(self, session: PlanSession, why: str) -> None:
        if session is not self._plan_session:
            return
        self.memory_line.show_message(f"No memory estimate: {why}", "muted", f"{MEMORY_TOOLTIP}\n\n{why}")
        self._advice = []
        self._show_note()
        self.memory_estimated.emit(None)

    def _estimate_done(self, task: TaskWorker) -> None:
        task.wait(5)
        if self._estimate_task is task:
            self._estimate_task = None
        if self._estimate_again:
            self._estimate_again = False
            self._schedule_estimate()

    def _update_dependencies(self) -> None:
        """Enable only what applies: LoRA knobs for LoRA, EMA for full, decay when EMA is on."""
        method = self.editors["method"].currentData()  # type: ignore[attr-defined]
        ema_on = self.editors["ema"].isChecked()  # type: ignore[attr-defined]
        for name, editor in self.editors.items():
            applies = True
            if name in LORA_ONLY:
                applies = method == "lora"
            elif name in FULL_ONLY:
                applies = method != "lora" and (name != "ema_decay" or ema_on)
            elif name == "kl_weight":  # the KL term only counts while the encoder trains
                applies = method == "full"
            elif name == "adversarial_weight":
                applies = self.editors["discriminator_start"].value() > 0  # type: ignore[attr-defined]
            editor.setEnabled(applies and not self._running)
            self.labels[name].setEnabled(applies)
