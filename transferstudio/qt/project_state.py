"""The window's state as an observable view-model: what project is open, its settings, what its
model can do, whether there are unsaved changes, and the run going (the krita-ai-diffusion style).

`ProjectState` holds `project`, `config`, `capabilities`, `dirty`, `running`, `run_state` and
`runs`; each has a `<name>_changed` signal sent only when the value really changes. Widgets do
not ask the window; they `bind` to the state:

    handle = bind(state, "dirty", save_button.setEnabled)   # called now, then on every change
    handle.disconnect()                                       # no more updates

`open(project)` replaces every value at once (and only then sends the signals), so a panel that
follows `project_changed` never sees the previous project's settings or capabilities.
QtCore only (the ui layer binds widgets to it; nothing here imports a widget)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from PySide6.QtCore import QObject, Signal

RUN_STATES = ("idle", "starting", "running", "pausing", "paused", "stopping")


@dataclass(frozen=True)
class ModelCapabilities:
    """What the project's base model can do, as the window asks it ("does it take prompts?"),
    read from the family's `Capabilities` by the inspection on a worker thread
    (`tasks.inspect_backbone`). None in the state until the model has been inspected."""

    family: str | None = None  # registry key, e.g. "ddpm", "sd", "sdxl", "gan"
    label: str = ""
    usable: bool = False
    problems: tuple[str, ...] = ()
    takes_prompts: bool = False  # conditioning == "text": captions, trigger word, prompts
    supports_full_finetune: bool = False
    methods: tuple[str, ...] = ("lora", "full")
    objective: str = "diffusion"  # "diffusion" | "reconstruction" | "adversarial"
    preview: str = "image"  # "image" | "reconstruction"
    truncation: bool = False  # sampling takes a truncation ψ (a GAN)
    native_resolution: int = 0
    resolution_multiple: int = 8
    suggested: tuple[tuple[str, Any], ...] = ()  # settings a new project of this model starts from

    @property
    def denoising(self) -> bool:
        return self.objective == "diffusion"

    @classmethod
    def from_inspection(cls, info: Mapping[str, Any]) -> "ModelCapabilities":
        """From the dict `tasks.inspect_backbone` returns (which the model panel shows as it is)."""
        methods = info.get("methods")
        return cls(family=info.get("family"), label=str(info.get("label") or ""), usable=bool(info.get("usable")),
                   problems=tuple(info.get("problems") or ()), takes_prompts=bool(info.get("text")),
                   supports_full_finetune=bool(info.get("supports_full_finetune")),
                   methods=tuple(methods) if methods else ("lora", "full"),
                   objective=str(info.get("objective") or "diffusion"), preview=str(info.get("preview") or "image"),
                   truncation=bool(info.get("truncation")), native_resolution=int(info.get("native_resolution") or 0),
                   resolution_multiple=int(info.get("resolution_multiple") or 8),
                   suggested=tuple((info.get("suggested") or {}).items()))


class _Observable:
    """A property of a ProjectState: set it and `<name>_changed` follows, only on a real change.
    `identity`: compared with `is` (a reopened project is a new object with equal fields, and
    panels must still reload it), else with `==`."""

    def __init__(self, default: Any = None, *, identity: bool = False) -> None:
        self.default = default
        self.identity = identity
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._values.get(self.name, self.default)

    def __set__(self, obj: "ProjectState", value: Any) -> None:
        obj.update(**{self.name: value})

    def same(self, a: Any, b: Any) -> bool:
        if self.identity:
            return a is b
        try:
            return bool(a == b)
        except Exception:  # noqa: BLE001 — values that cannot compare (arrays) count as changed
            return False


class ProjectState(QObject):
    project_changed = Signal(object)  # Project | None
    config_changed = Signal(object)  # TrainConfig (the settings on screen)
    capabilities_changed = Signal(object)  # ModelCapabilities | None (not inspected yet)
    dirty_changed = Signal(bool)  # unsaved changes
    running_changed = Signal(bool)  # a run is going (any run_state but "idle")
    run_state_changed = Signal(str)  # one of RUN_STATES
    runs_changed = Signal(object)  # tuple of the project's run folders, oldest first
    changed = Signal(tuple)  # after the signals of one update: the names that changed

    project = _Observable(None, identity=True)
    config = _Observable(None)
    capabilities = _Observable(None)
    dirty = _Observable(False)
    running = _Observable(False)
    run_state = _Observable("idle")
    runs = _Observable(())

    PROPERTIES = ("project", "config", "capabilities", "dirty", "running", "run_state", "runs")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._values: dict[str, Any] = {}

    def update(self, **values: Any) -> list[str]:
        """Set several properties at once: every value is in place before the first signal goes
        out (in the order of PROPERTIES), so a slot reading another property sees the new one.
        The names that changed."""
        unknown = set(values) - set(self.PROPERTIES)
        if unknown:
            raise AttributeError(f"ProjectState has no properties {sorted(unknown)}")
        if "run_state" in values:
            if values["run_state"] not in RUN_STATES:
                raise ValueError(f"unknown run state {values['run_state']!r}")
            values.setdefault("running", values["run_state"] != "idle")
        if "runs" in values:
            values["runs"] = tuple(values["runs"] or ())
        changed = []
        for name in self.PROPERTIES:
            if name in values:
                prop: _Observable = getattr(type(self), name)
                if not prop.same(getattr(self, name), values[name]):
                    self._values[name] = values[name]
                    changed.append(name)
        for name in changed:
            getattr(self, f"{name}_changed").emit(self._values[name])
        if changed:
            self.changed.emit(tuple(changed))
        return changed

    def open(self, project: Any, *, runs: Iterable[Any] = ()) -> None:
        """Another project (None: none): its settings, nothing known of its model yet, no unsaved
        changes. Everything is replaced before any signal is sent."""
        self.update(project=project, config=getattr(project, "config", None), capabilities=None, dirty=False,
                    runs=tuple(runs))

    def mark_dirty(self, dirty: bool = True) -> None:
        self.dirty = dirty

    def signal(self, name: str) -> Any:
        if name not in self.PROPERTIES:
            raise AttributeError(f"ProjectState has no property {name!r}")
        return getattr(self, f"{name}_changed")


class Binding:
    """A connection made by `bind`/`watch`; `disconnect()` ends it (safe to call twice). It ends by
    itself when the QObject whose method was bound is destroyed."""

    def __init__(self, connections: list[tuple[Any, Callable[..., Any]]]) -> None:
        self._connections = connections

    @property
    def connected(self) -> bool:
        return bool(self._connections)

    def disconnect(self) -> None:
        connections, self._connections = self._connections, []
        for signal, slot in connections:
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError):  # the sender is gone already
                pass


def _end_with_receiver(binding: Binding, target: Any) -> None:
    receiver = getattr(target, "__self__", None)
    if isinstance(receiver, QObject):
        receiver.destroyed.connect(lambda *_: binding.disconnect())


def bind(state: ProjectState, name: str, setter: Callable[[Any], Any],
         transform: Callable[[Any], Any] | None = None) -> Binding:
    """Call `setter` with the property's value now and after every change (through `transform`,
    e.g. `operator.not_`, when given). Returns a Binding to disconnect."""
    signal = state.signal(name)

    def slot(value: Any) -> None:
        setter(transform(value) if transform is not None else value)

    slot(getattr(state, name))
    signal.connect(slot)
    binding = Binding([(signal, slot)])
    _end_with_receiver(binding, setter)
    return binding


def watch(state: ProjectState, names: Iterable[str], callback: Callable[[], Any], *, now: bool = True) -> Binding:
    """Call `callback()` (no arguments: it reads the state) once now (unless `now` is False) and
    whenever any of `names` changes — once per `update`, however many of them changed."""
    names = frozenset(names)
    for name in names:
        state.signal(name)  # a misspelt name fails here, not silently later

    def slot(changed: tuple[str, ...]) -> None:
        if names.intersection(changed):
            callback()

    state.changed.connect(slot)
    binding = Binding([(state.changed, slot)])
    _end_with_receiver(binding, callback)
    if now:
        callback()
    return binding


class Bindings:
    """Several bindings that end together (a panel's, when it closes or is rebuilt)."""

    def __init__(self) -> None:
        self._items: list[Binding] = []

    def add(self, binding: Binding) -> Binding:
        self._items.append(binding)
        return binding

    def bind(self, state: ProjectState, name: str, setter: Callable[[Any], Any],
             transform: Callable[[Any], Any] | None = None) -> Binding:
        return self.add(bind(state, name, setter, transform))

    def watch(self, state: ProjectState, names: Iterable[str], callback: Callable[[], Any],
              *, now: bool = True) -> Binding:
        return self.add(watch(state, names, callback, now=now))

    def disconnect(self) -> None:
        items, self._items = self._items, []
        for binding in items:
            binding.disconnect()

    def __len__(self) -> int:
        return len(self._items)
