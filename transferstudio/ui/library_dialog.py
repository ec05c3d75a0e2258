"""File ▸ Model Library…: the models already on this computer, ready to pick as the base model.

The search (safetensors headers and small JSON files only) runs on a TaskWorker through
`transferstudio.qt.tasks.discover_models`; this module never imports the library itself.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QStackedWidget, QTableView, QVBoxLayout,
                               QWidget)

from transferstudio.qt import tasks
from transferstudio.qt.workers import TaskWorker
from transferstudio.ui.preferences_dialog import PreferencesDialog, library_settings
from transferstudio.ui.widgets import ERROR_RED, OK_GREEN, MessageLabel, human_bytes

COLUMNS = ("", "Name", "Model", "Resolution", "Size", "Found in")
COL_USABLE, COL_NAME, COL_MODEL, COL_RES, COL_SIZE, COL_SOURCE = range(len(COLUMNS))
EntryRole = Qt.ItemDataRole.UserRole  # the entry dict, on the name column
SortRole = Qt.ItemDataRole.UserRole + 1

SOURCE_LABELS = {"folder": "Your folders", "a1111": "A1111 / Forge", "comfyui": "ComfyUI",
                 "hf-cache": "Hugging Face cache", "starter": "Bundled with TransferStudio"}
NO_MODELS_TEXT = ("<p><b>No models found.</b></p><p>Add the folders where you keep models — and your A1111 / "
                  "Forge, ComfyUI or Hugging Face folders — in <b>Edit&nbsp;▸&nbsp;Preferences…</b></p>")


def reason(entry: dict[str, Any]) -> str:
    """Why an entry cannot be picked (empty when it can)."""
    if entry.get("usable"):
        return ""
    lines = [str(p) for p in entry.get("problems") or []] or ["TransferStudio cannot train this model."]
    if entry.get("advice"):
        lines.append(str(entry["advice"]))
    return "\n".join(lines)


class LibraryDialog(QDialog):
    """`model_chosen(path)` fires when the user picks a usable model (then the dialog closes);
    `scanned(count)` after each search."""

    model_chosen = Signal(str)
    scanned = Signal(int)

    def __init__(self, settings: QSettings, parent: QWidget | None = None, *, current: str = "",
                 include_starter: bool = True) -> None:
        super().__init__(parent)
        self.settings = settings
        self.current = current
        self.include_starter = include_starter
        self.task: TaskWorker | None = None
        self.preferences_dialog: PreferencesDialog | None = None
        self._rescan = False
        self.setWindowTitle("Model library")
        self.resize(880, 520)

        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name, model type or place")
        self.filter.setClearButtonEnabled(True)
        self.filter.setToolTip("Show only the models whose name, type or place contains this text.")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Search the model folders again (after adding or downloading models).")
        self.refresh_button.clicked.connect(self.refresh)
        self.prefs_button = QPushButton("Preferences…")
        self.prefs_button.setToolTip("Choose which folders and tools the library searches.")
        self.prefs_button.clicked.connect(self.open_preferences)
        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.refresh_button)
        top.addWidget(self.prefs_button)

        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(list(COLUMNS))
        self.model.horizontalHeaderItem(COL_USABLE).setToolTip("✓ can be trained · ✗ cannot (hover for why)")
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setSortRole(SortRole)
        self.proxy.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.filter.textChanged.connect(self._filter_changed)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COL_USABLE, Qt.SortOrder.AscendingOrder)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_MODEL, QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(lambda _index: self.choose())
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self.empty = QLabel(NO_MODELS_TEXT)
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # A short centred paragraph; a wrapped label under an alignment gets no height of its own.
        self.empty.setFixedWidth(460)
        self.empty.setMinimumHeight(self.empty.heightForWidth(460))
        self.empty_prefs = QPushButton("Open Preferences…")
        self.empty_prefs.clicked.connect(self.open_preferences)
        empty_page = QWidget()
        empty_col = QVBoxLayout(empty_page)
        empty_col.addStretch(1)
        empty_col.addWidget(self.empty, 0, Qt.AlignmentFlag.AlignHCenter)
        empty_col.addWidget(self.empty_prefs, 0, Qt.AlignmentFlag.AlignHCenter)
        empty_col.addStretch(2)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(empty_page)

        self.busy = QProgressBar()
        self.busy.setRange(0, 0)  # the search reports no progress; it is usually done in a blink
        self.busy.setTextVisible(False)
        self.busy.setMaximumHeight(6)
        self.busy.hide()
        self.summary = MessageLabel()
        self.summary.linkActivated.connect(lambda _link: self.open_preferences())
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.details = MessageLabel()
        self.problem = MessageLabel()

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.use_button = self.buttons.addButton("Use this model", QDialogButtonBox.ButtonRole.AcceptRole)
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.choose)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.busy)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.summary)
        layout.addWidget(self.details)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        self.refresh()

    # --- API ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Search again with the current preferences (queued if a search is running)."""
        if self.task is not None:
            self._rescan = True
            return
        values = library_settings(self.settings)
        values["include_starter"] = self.include_starter
        self.busy.show()
        self.refresh_button.setEnabled(False)
        self.summary.show_message("Searching your model folders…", "muted")
        self.task = TaskWorker(tasks.discover_models, values, name="library")
        self.task.succeeded.connect(self.set_entries)
        self.task.failed.connect(self._search_failed)
        self.task.crashed.connect(self._search_crashed)
        self.task.done.connect(self._search_done)
        self.task.start()

    def is_busy(self) -> bool:
        return self.task is not None

    def wait(self, timeout_s: float) -> bool:
        return self.task is None or self.task.wait(timeout_s)

    def entries(self) -> list[dict[str, Any]]:
        """The listed entries, in the order shown (after filtering and sorting)."""
        return [self.proxy.index(r, COL_NAME).data(EntryRole) for r in range(self.proxy.rowCount())]

    def select_path(self, path: str) -> bool:
        for row in range(self.proxy.rowCount()):
            if self.proxy.index(row, COL_NAME).data(EntryRole)["path"] == str(path):
                self.table.selectRow(row)
                self.table.scrollTo(self.proxy.index(row, COL_NAME))
                return True
        return False

    def selected(self) -> dict[str, Any] | None:
        rows = self.table.selectionModel().selectedRows(COL_NAME)
        return rows[0].data(EntryRole) if rows else None

    def choose(self) -> bool:
        """Pick the selected model. Unusable ones are refused, with their reason shown."""
        entry = self.selected()
        if entry is None:
            return False
        if not entry.get("usable"):
            self.problem.show_message(f"✗ “{entry['name']}” cannot be used: {reason(entry)}", "error")
            return False
        self.model_chosen.emit(str(entry["path"]))
        self.accept()
        return True

    def open_preferences(self) -> PreferencesDialog:
        dialog = PreferencesDialog(self.settings, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.saved.connect(self.refresh)
        dialog.destroyed.connect(lambda *_: setattr(self, "preferences_dialog", None))
        self.preferences_dialog = dialog
        dialog.open()
        return dialog

    # --- results ------------------------------------------------------------------------------
    def set_entries(self, entries: list[dict[str, Any]]) -> None:
        keep = (self.selected() or {}).get("path") or self.current
        self.table.setSortingEnabled(False)  # sorting while inserting reorders rows under us
        self.model.removeRows(0, self.model.rowCount())
        for entry in entries:
            self.model.appendRow(self._row(entry))
        self.table.setSortingEnabled(True)  # re-sorts by the column the user last chose
        self.stack.setCurrentIndex(0 if entries else 1)
        self._update_summary()
        if not (keep and self.select_path(keep)):
            self._selection_changed()
        self.scanned.emit(len(entries))

    def _row(self, entry: dict[str, Any]) -> list[QStandardItem]:
        usable = bool(entry.get("usable"))
        why = reason(entry)
        res = entry.get("native_resolution")
        size = int(entry.get("size_bytes") or 0)
        source = str(entry.get("source") or "folder")
        cells = [
            # usable first, then by name: the default order puts what can be picked on top
            ("✓" if usable else "✗", f"{0 if usable else 1}{str(entry.get('name') or '').lower()}"),
            (str(entry.get("name") or Path(entry["path"]).name), str(entry.get("name") or "").lower()),
            (str(entry.get("label") or "Unknown"), str(entry.get("label") or "").lower()),
            (f"{res} px" if res else "—", int(res or 0)),
            (human_bytes(size) if size else "—", size),
            (SOURCE_LABELS.get(source, source), SOURCE_LABELS.get(source, source).lower()),
        ]
        tip = f"{entry['path']}\n\nCannot be used:\n{why}" if why else str(entry["path"])
        items = []
        for text, key in cells:
            item = QStandardItem(text)
            item.setData(key, SortRole)
            item.setToolTip(tip)
            items.append(item)
        mark = items[COL_USABLE]
        mark.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        mark.setForeground(QColor(OK_GREEN if usable else ERROR_RED))
        mark.setToolTip(f"Cannot be used: {why}" if why else "Ready to train")
        for col in (COL_RES, COL_SIZE):
            items[col].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        items[COL_NAME].setData(dict(entry), EntryRole)
        return items

    def _update_summary(self) -> None:
        total = self.model.rowCount()
        shown = self.proxy.rowCount()
        usable = sum(1 for r in range(total) if self.model.item(r, COL_NAME).data(EntryRole).get("usable"))
        values = library_settings(self.settings)
        configured = any((values["folders"], values["a1111"], values["comfyui"]))
        if total == 0:
            self.summary.show_message("")
            return
        text = f"{total} model{'s' if total != 1 else ''} found, {usable} usable."
        if shown == 0:
            text = f"No model matches “{html.escape(self.filter.text().strip())}” ({total} found in all)."
        elif shown < total:
            text = f"Showing {shown} of {total} models ({usable} usable in all)."
        if not configured:
            text += " Add your own model folders in <a href=\"prefs\">Edit ▸ Preferences…</a>"
        self.summary.show_message(text, "muted")

    def _filter_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text.strip())
        self._update_summary()
        self._selection_changed()

    def _selection_changed(self, *_: Any) -> None:
        entry = self.selected()
        self.problem.show_message("")
        if entry is None:
            self.details.show_message("")
            self.use_button.setEnabled(False)
            self.use_button.setToolTip("Select a model first.")
            return
        self.details.show_message(str(entry["path"]), "muted")
        why = reason(entry)
        self.use_button.setEnabled(not why)
        if why:
            self.use_button.setToolTip(f"This model cannot be used: {why}")
            self.problem.show_message(f"✗ {why}", "error")
        else:
            self.use_button.setToolTip("Make this the project's base model.")

    def _search_failed(self, message: str, advice: str) -> None:
        self.summary.show_message(f"The search failed: {message} {advice}".strip(), "error")

    def _search_crashed(self, _traceback: str) -> None:
        self.summary.show_message("The search failed because of an internal error (details in the log file, "
                                  "Help ▸ Open Log Folder).", "error")

    def _search_done(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.wait(5)
        self.busy.hide()
        self.refresh_button.setEnabled(True)
        if self._rescan:
            self._rescan = False
            self.refresh()
