"""Is this installation whole? A self-check for new workstations and support requests.

    TransferStudio --self-check            (frozen app; the console twin prints to the terminal)
    transferstudio-cli --self-check
    python -m transferstudio.selfcheck [--workdir DIR] [--report FILE]

It imports everything the app uses, builds the main window off screen, loads the bundled
starter model, trains a few steps on the sample images on the CPU (full fine-tune and LoRA),
exports, loads each export back the way another program would, and confirms that nothing
tried to reach a network. One line per check, then a verdict; exit status 0 = pass, 1 = fail.
"""
from __future__ import annotations

import os

import transferstudio.core.offline  # noqa: F401  (first: no code path reaches a hub)

import argparse  # noqa: E402
import importlib  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator, Sequence  # noqa: E402

from transferstudio import __version__  # noqa: E402

# What the app imports, by group. Module-level so a test can add a missing one.
IMPORT_GROUPS: dict[str, tuple[str, ...]] = {
    "Qt": ("PySide6", "PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets", "superqt", "pyqtgraph"),
    "torch": ("torch", "torchvision", "torchvision.ops"),
    "diffusion libraries": ("diffusers", "peft", "transformers", "safetensors", "safetensors.torch",
                            "tokenizers", "accelerate", "huggingface_hub", "PIL", "numpy", "platformdirs"),
}
# Names the libraries resolve lazily, by name, at first use: frozen builds miss these first.
LAZY_NAMES: dict[str, tuple[str, ...]] = {
    "diffusers": ("UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "DDPMPipeline", "DDIMScheduler",
                  "DiffusionPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    "transformers": ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer"),
    "peft": ("LoraConfig", "inject_adapter_in_model", "set_peft_model_state_dict", "get_peft_model_state_dict"),
}
# Run as a script or the package entry: importing them would start something.
SKIP_OWN_MODULES = ("transferstudio.__main__",)

TRAIN_STEPS = 3
LOOPBACK = ("localhost", "127.0.0.1", "::1", "", None)


@dataclass
class Result:
    name: str
    status: str  # "ok" | "warn" | "FAIL" | "skip"
    detail: str
    seconds: float
    trace: str = ""  # the traceback of a FAIL, for the report file

    def line(self) -> str:
        return f"{self.status:<5}{self.name}: {self.detail} ({self.seconds:.1f} s)"


class Warn(Exception):
    """A finding that does not fail the check (e.g. no display on a headless machine)."""


class _Checks:
    def __init__(self, out: Callable[[str], Any]) -> None:
        self.out = out
        self.results: list[Result] = []

    def run(self, name: str, fn: Callable[[], str], needs: Sequence[str] = ()) -> bool:
        missing = [n for n in needs if not self.passed(n)]
        if missing:
            return self._record(Result(name, "skip", f"not run: needs {', '.join(missing)}", 0.0))
        start, trace = time.perf_counter(), ""
        try:
            detail, status = fn(), "ok"
        except Warn as exc:
            detail, status = str(exc), "warn"
        except BaseException as exc:  # noqa: BLE001 - reported as FAIL; a self-check must report, not crash
            if isinstance(exc, KeyboardInterrupt):
                raise
            detail, status, trace = _describe(exc), "FAIL", traceback.format_exc()
        return self._record(Result(name, status, detail, time.perf_counter() - start, trace))

    def _record(self, result: Result) -> bool:
        self.results.append(result)
        self.out(result.line())
        return result.status in ("ok", "warn")

    def passed(self, name: str) -> bool:
        return any(r.name == name and r.status in ("ok", "warn") for r in self.results)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > 400:
        text = text[:400] + "…"
    return f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------- network guard
class NetworkGuard:
    """Refuse and record every attempt to resolve or connect to a non-loopback address.

    Python-level sockets only (what huggingface_hub, requests and urllib use); with
    `unshare -n` the operating system refuses the rest.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def __enter__(self) -> "NetworkGuard":
        self._saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)
        connect, connect_ex, getaddrinfo = self._saved
        guard = self

        def blocked(address: Any) -> OSError:
            guard.attempts.append(str(address))
            return OSError(101, f"network use refused by the self-check ({address})")

        def is_local(sock: socket.socket, address: Any) -> bool:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return True  # Unix sockets and the like stay on this machine
            host = address[0] if isinstance(address, tuple) else address
            return host in LOOPBACK or str(host).startswith("127.")

        def guarded_connect(sock: socket.socket, address: Any) -> Any:
            if not is_local(sock, address):
                raise blocked(address)
            return connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: Any) -> Any:
            if not is_local(sock, address):
                blocked(address)
                return 101
            return connect_ex(sock, address)

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in LOOPBACK and not str(host).startswith("127."):
                guard.attempts.append(str(host))
                raise socket.gaierror(socket.EAI_NONAME, f"name lookup refused by the self-check ({host})")
            return getaddrinfo(host, *args, **kwargs)

        socket.socket.connect = guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = self._saved  # type: ignore


# ---------------------------------------------------------------- the checks
def check_offline() -> str:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().lower() not in ("1", "true", "yes", "on"):
        raise RuntimeError(f"HF_HUB_OFFLINE is {value!r}, so model loading could try the internet; "
                           "unset it (the app sets it to 1)")
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        raise RuntimeError("huggingface_hub was imported before HF_HUB_OFFLINE was set")
    return "HF_HUB_OFFLINE=1, huggingface_hub offline"


def check_imports(group: str) -> Callable[[], str]:
    def run() -> str:
        versions = []
        for name in IMPORT_GROUPS[group]:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", None)
            if "." not in name and version:
                versions.append(f"{name} {version}")
        for lib, names in LAZY_NAMES.items():
            if lib in IMPORT_GROUPS[group]:
                module = importlib.import_module(lib)
                for attr in names:
                    getattr(module, attr)  # resolves the lazily imported submodule
        if group == "torch":
            import torch

            cuda = (f"CUDA {torch.version.cuda} build, {torch.cuda.device_count()} GPU(s) usable"
                    if torch.version.cuda else "CPU build")
            versions.append(f"{cuda}, {torch.get_num_threads()} CPU threads")
        if group == "Qt":
            from PySide6.QtCore import qVersion

            versions.append(f"Qt {qVersion()}")
        return ", ".join(versions)

    return run


def check_torchvision_ops() -> str:
    # peft's import fails with "operator torchvision::nms does not exist" when torchvision's
    # compiled operators are missing from a build; call one to be sure they are there.
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist()
    if keep != [0, 2]:
        raise RuntimeError(f"torchvision.ops.nms returned {keep}, expected [0, 2]")
    return "torchvision.ops.nms works"


def check_own_modules() -> str:
    import pkgutil

    import transferstudio

    names = [m.name for m in pkgutil.walk_packages(transferstudio.__path__, "transferstudio.")
             if m.name not in SKIP_OWN_MODULES]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - collected and reported together below
            failed.append(f"{name} ({_describe(exc)})")
    if failed:
        raise ImportError("; ".join(failed))
    return f"{len(names)} modules"


def check_resources() -> str:
    from transferstudio.core.paths import resources_dir
    from transferstudio.starter.sample import sample_images, starter_model

    root = resources_dir()
    problems = []
    if not (starter_model() / "model_index.json").is_file():
        problems.append(f"no starter model in {starter_model()}")
    pictures = [p for p in sample_images().glob("**/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")] \
        if sample_images().is_dir() else []
    if not pictures:
        problems.append(f"no sample images in {sample_images()}")
    loading = [p.name for p in (root / "loading").iterdir() if p.is_dir()] if (root / "loading").is_dir() else []
    if not loading:
        problems.append(f"no model loading files in {root / 'loading'}")
    if not (root / "icons" / "transferstudio.png").is_file():
        problems.append(f"no app icon in {root / 'icons'}")
    if problems:
        raise FileNotFoundError("; ".join(problems))
    return f"{root}: starter model, {len(pictures)} sample images, loading files for {', '.join(sorted(loading))}"


def check_window(workdir: Path) -> Callable[[], str]:
    def run() -> str:
        from PySide6.QtCore import QSettings, qInstallMessageHandler
        from PySide6.QtWidgets import QApplication

        # Off screen: no window flashes up, and it works on a machine without a display.
        app = QApplication.instance() or QApplication(["transferstudio-self-check", "-platform", "offscreen"])
        from transferstudio.ui.main_window import MainWindow

        # Qt's off-screen plugin warns about window features it lacks; not the person's concern.
        previous = qInstallMessageHandler(lambda *_: None)
        try:
            with _env(TRANSFERSTUDIO_HOME=str(workdir / "home")):  # the person's settings and caches stay untouched
                window = MainWindow(QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat))
                window.show()
                app.processEvents()
                title = window.windowTitle()
                window.hide()
                window.deleteLater()
                app.processEvents()
        finally:
            qInstallMessageHandler(previous)
        return f"main window built on the '{app.platformName()}' platform ({title!r})"

    return run


def check_display_plugin() -> str:
    """Can Qt's plugin for this desktop load? (A missing system library shows here, not as a crash.)"""
    from PySide6.QtCore import QLibraryInfo

    folder = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if sys.platform == "win32":
        wanted = ["qwindows.dll"]
    elif sys.platform == "darwin":
        wanted = ["libqcocoa.dylib"]
    else:
        wanted = ["libqxcb.so", "libqwayland.so"]
    present = [w for w in wanted if w in found]
    if not present:
        raise FileNotFoundError(f"none of {', '.join(wanted)} in {folder}")
    if not sys.platform.startswith("linux"):
        return f"{', '.join(present)} present"
    import ctypes

    loaded, errors = [], []
    for name in present:
        try:
            ctypes.CDLL(str(folder / name))
            loaded.append(name)
        except OSError as exc:
            # PyInstaller's ctypes wrapper hides the loader's reason (the missing library) in __cause__.
            errors.append(f"{name}: {exc.__cause__ or exc}")
    if loaded:
        return f"{', '.join(loaded)} load"
    message = ("no desktop plugin loads (" + "; ".join(errors) + "); install the missing system "
               "libraries (see packaging/README.md)")
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        raise RuntimeError(message)
    raise Warn(message + " — no display here, so the window is not needed")


class _State:
    """What one check hands to the next."""

    def __init__(self) -> None:
        self.backbone: Any = None
        self.projects: dict[str, Any] = {}
        self.exports: dict[str, Path] = {}
        self.starter_weights: dict[str, Any] = {}


def check_load_starter(state: _State) -> str:
    from transferstudio.backbones.registry import load_backbone
    from transferstudio.starter.sample import starter_model

    backbone = load_backbone(starter_model())
    state.backbone = backbone
    state.starter_weights = {k: v.detach().clone() for k, v in backbone.denoiser.state_dict().items()}
    count = sum(p.numel() for p in backbone.denoiser.parameters())
    return (f"{type(backbone.denoiser).__name__}, {count / 1e6:.2f} M parameters, "
            f"{backbone.caps.native_resolution} px")


def check_train(state: _State, workdir: Path, method: str) -> Callable[[], str]:
    def run() -> str:
        from transferstudio.core.events import EventHandler
        from transferstudio.project.project import load_project
        from transferstudio.starter.sample import create_sample_project
        from transferstudio.training.trainer import TrainJob, train

        overrides: dict[str, Any] = dict(method=method, steps=TRAIN_STEPS, batch_size=2, device="cpu",
                                         precision="fp32", preview_every=0, preview_seeds=[1], preview_steps=2,
                                         checkpoint_every=TRAIN_STEPS, keep_checkpoints=1, ema=False)
        if method == "lora":
            overrides.update(rank=4, alpha=4.0, learning_rate=1e-3)
        project = load_project(create_sample_project(workdir / f"project-{method}", **overrides))
        # The full fine-tune may reuse the loaded starter; LoRA loads its own, untouched copy.
        job = TrainJob(project, fresh=True, backbone=state.backbone if method == "full" else None)
        class Watch(EventHandler):
            def __init__(self) -> None:
                self.losses: list[float] = []
                self.device, self.speed = "?", 0.0

            def on_started(self, event: Any) -> None:
                self.device = event.device

            def on_step(self, event: Any) -> None:
                self.losses.append(event.loss)
                self.speed = event.images_per_s

            def on_failed(self, event: Any) -> None:
                raise RuntimeError(f"{event.message} {event.advice}".strip())

            def on_finished(self, event: Any) -> None:
                if not math.isfinite(event.final_loss):
                    raise RuntimeError(f"the loss is {event.final_loss}")

        watch = Watch()
        watch.run(train(job))
        losses, device, speed = watch.losses, watch.device, watch.speed
        if len(losses) != TRAIN_STEPS:
            raise RuntimeError(f"{len(losses)} of {TRAIN_STEPS} steps ran")
        state.projects[method] = project
        return (f"{TRAIN_STEPS} steps on {device}, loss {losses[0]:.4f} → {losses[-1]:.4f}, "
                f"{speed:.1f} images/s")

    return run


def check_export(state: _State, workdir: Path, method: str) -> Callable[[], str]:
    def run() -> str:
        from transferstudio.export.formats import export_project

        target = workdir / "exports" / ("full-model" if method == "full" else "adapter.safetensors")
        result = export_project(state.projects[method], target)
        state.exports[method] = result.path
        size = sum(p.stat().st_size for p in result.path.rglob("*") if p.is_file()) if result.path.is_dir() \
            else result.path.stat().st_size
        return f"{result.kind} weights of step {result.step}, {size / 1e6:.1f} MB"

    return run


def check_load_full_export(state: _State) -> str:
    # The way another program would load it: diffusers resolves the classes by name.
    import torch
    from diffusers import DiffusionPipeline

    from diffusers.utils import logging as diffusers_logging

    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # one report line per check, no progress bars
    try:
        pipe = DiffusionPipeline.from_pretrained(state.exports["full"], local_files_only=True)
    finally:
        if bars:
            diffusers_logging.enable_progress_bar()
    unet = pipe.unet
    changed = sum(not torch.equal(v, state.starter_weights[k]) for k, v in unet.state_dict().items()
                  if k in state.starter_weights)
    if not changed:
        raise RuntimeError("the exported weights are the starter's: training did not reach the export")
    return f"{type(pipe).__name__}.from_pretrained, {changed} tensors differ from the starter, " + _forward(unet)


def check_load_lora_export(state: _State) -> str:
    import json

    from diffusers import UNet2DModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    from transferstudio.starter.sample import starter_model

    path = state.exports["lora"]
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    config = json.loads(meta["lora_config"])
    weights = load_file(str(path))
    unet = UNet2DModel.from_pretrained(starter_model(), subfolder="unet", local_files_only=True)
    keep = ("r", "lora_alpha", "target_modules", "lora_dropout")
    inject_adapter_in_model(LoraConfig(**{k: v for k, v in config.items() if k in keep}), unet)
    result = set_peft_model_state_dict(unet, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise RuntimeError(f"{len(unexpected)} adapter tensors did not fit the model, e.g. {unexpected[0]}")
    return f"peft adapter with {len(weights)} tensors (rank {config.get('r')}) on the starter UNet, " + _forward(unet)


def _forward(unet: Any) -> str:
    import torch

    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    with torch.no_grad():
        x = torch.randn(1, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
        y = unet(x, torch.tensor([10])).sample
    if not torch.isfinite(y).all():
        raise RuntimeError("the loaded model produces NaN/inf")
    return "denoises a test image"


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The checks' models are tiny: one thread is fastest, and on a busy 2-core machine two
    OpenMP threads were measured 60x slower (14 s instead of 0.2 s for three steps)."""
    try:
        import torch
    except Exception:  # noqa: BLE001 - the import check reports it
        torch = None
    before = torch.get_num_threads() if torch else 0
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch:
            torch.set_num_threads(before)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- entry points
def run_self_check(out: Callable[[str], Any] = print, workdir: Path | None = None,
                   results: list[Result] | None = None) -> bool:
    """Run every check, printing one line each and a verdict; True when the installation is whole.

    `workdir` keeps the sample projects and exports for inspection; by default a temporary
    folder is used and removed. `results`, when given, receives each check's Result.
    """
    started = time.perf_counter()
    frozen = bool(getattr(sys, "frozen", False))
    out(f"TransferStudio {__version__} self-check — Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {'frozen build in ' + str(Path(sys.executable).parent) if frozen else 'from source: ' + str(Path(__file__).parent)}")
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="transferstudio-selfcheck-")) if own_dir else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    checks = _Checks(out)
    if results is not None:
        checks.results = results
    state = _State()
    try:
        with NetworkGuard() as guard:
            checks.run("offline", check_offline)
            for group in IMPORT_GROUPS:
                checks.run(f"imports ({group})", check_imports(group))
            checks.run("torchvision operators", check_torchvision_ops, needs=["imports (torch)"])
            checks.run("imports (TransferStudio)", check_own_modules)
            checks.run("resources", check_resources)
            checks.run("main window", check_window(work), needs=["imports (Qt)"])
            checks.run("desktop plugin", check_display_plugin, needs=["imports (Qt)"])
            engine = ["imports (torch)", "imports (diffusion libraries)", "resources"]
            with _one_torch_thread():
                checks.run("load starter model", lambda: check_load_starter(state), needs=engine)
                for method, label in (("full", "full fine-tune"), ("lora", "LoRA")):
                    checks.run(f"train ({label})", check_train(state, work, method), needs=["load starter model"])
                    checks.run(f"export ({label})", check_export(state, work, method), needs=[f"train ({label})"])
                    load = check_load_full_export if method == "full" else check_load_lora_export
                    checks.run(f"load export ({label})", lambda load=load: load(state), needs=[f"export ({label})"])

        def network() -> str:
            if guard.attempts:
                raise RuntimeError(f"something tried to reach {', '.join(sorted(set(guard.attempts)))}")
            return "no check tried to reach a network"

        checks.run("network", network)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r.name for r in checks.results if r.status == "FAIL"]
    skipped = sum(r.status == "skip" for r in checks.results)
    warnings = sum(r.status == "warn" for r in checks.results)
    seconds = time.perf_counter() - started
    if failed or skipped:
        not_run = f", {skipped} not run because of them" if skipped else ""
        out(f"FAIL: {len(failed)} of {len(checks.results)} checks failed ({', '.join(failed)}){not_run} "
            f"in {seconds:.0f} s — this installation is incomplete or damaged")
    else:
        note = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
        out(f"PASS: all {len(checks.results)} checks passed{note} in {seconds:.0f} s — this installation is whole")
    return not failed


def main(argv: Sequence[str] | None = None) -> int:
    from transferstudio.core.paths import user_log_dir

    parser = argparse.ArgumentParser(prog="transferstudio --self-check", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the sample projects and exports in this folder")
    parser.add_argument("--report", type=Path, default=None,
                        help="where to write the report too (default: self-check.txt in the log folder)")
    args = parser.parse_args(argv)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if sys.stdout is not None:  # a windowed app on Windows has no console; the report file still has it
            print(line, flush=True)

    results: list[Result] = []
    ok = run_self_check(out, args.workdir, results)
    report = args.report or user_log_dir() / "self-check.txt"  # for support requests: send this file
    details = [f"\n--- {r.name}\n{r.trace}" for r in results if r.trace]
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("\n".join(lines + (["", "Details of the failures:", *details] if details else []))
                          + "\n", encoding="utf-8")
        out(f"report: {report}")
    except OSError as exc:
        out(f"could not write the report to {report}: {exc}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
