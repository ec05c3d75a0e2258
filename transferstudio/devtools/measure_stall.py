"""How long does the window's event loop stall while training runs? A figure, not a test.

    python -m transferstudio.devtools.measure_stall [--steps N] [--project DIR] [--screenshot PNG]

Opens the real window (QT_QPA_PLATFORM=offscreen works), trains a short run (a small project
it builds itself, or --project), and fires a 10 ms QTimer on the GUI thread throughout.
Prints the stall (lateness beyond 10 ms) p50 / p99 / max in milliseconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from transferstudio.devtools.demo_project import make_demo_project  # noqa: E402
from transferstudio.qt import tasks  # noqa: E402
from transferstudio.qt.workers import TaskWorker  # noqa: E402

TICK_MS = 10


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--project", type=Path, help="train this project instead of a built one")
    parser.add_argument("--screenshot", type=Path, help="save the window as PNG after the run")
    args = parser.parse_args(argv)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    work = Path(tempfile.mkdtemp(prefix="ts-stall-"))
    os.environ.setdefault("TRANSFERSTUDIO_HOME", str(work / "home"))
    from transferstudio.ui.main_window import MainWindow

    window = MainWindow(QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat))
    window.ask = lambda *a, **k: QMessageBox.StandardButton.No  # never block on a question
    window.show_problem = lambda title, message, advice="": print(f"{title}: {message} {advice}")
    window.resize(1400, 900)
    window.show()

    intervals: list[float] = []
    phases: list[str] = []
    phase = ["loading the model"]  # the last thing the GUI heard: locates the worst stalls
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        intervals.append((now - last[0]) * 1000)
        phases.append(phase[0])
        last[0] = now

    view = window.train_view
    view.run_started.connect(lambda e: phase.__setitem__(0, "started (first preview)"))
    view.steps_received.connect(lambda step: phase.__setitem__(0, f"after step {step}"))
    view.preview_added.connect(lambda step: phase.__setitem__(0, f"after preview {step}"))

    probe = QTimer()
    probe.setInterval(TICK_MS)
    probe.timeout.connect(tick)

    def open_and_train(folder: Path) -> None:
        window.open_project(folder, offer_continue=False)
        cfg = window.settings_form.config()
        cfg.steps = args.steps
        window.settings_form.set_config(cfg)
        last[0] = time.perf_counter()
        probe.start()
        window._start(fresh=True)

    def finished(end: object) -> None:
        probe.stop()
        stalls = [max(0.0, i - TICK_MS) for i in intervals]
        print(f"run ended: {type(end).__name__} at step {getattr(end, 'step', '?')}")
        print(f"event-loop stall over {len(intervals)} ticks: p50 {percentile(stalls, 50):.1f} ms, "
              f"p99 {percentile(stalls, 99):.1f} ms, max {max(stalls, default=float('nan')):.1f} ms")
        worst = sorted(range(len(stalls)), key=lambda i: -stalls[i])[:5]
        print("worst: " + "; ".join(f"{stalls[i]:.0f} ms ({phases[i]})" for i in worst))
        if args.screenshot:
            window.work_tabs.setCurrentWidget(window.train_view)
            window.setup_tabs.setCurrentIndex(1)
            settle = QEventLoop()  # let thumbnails finish loading before the picture is taken
            QTimer.singleShot(1500, settle.quit)
            settle.exec()
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            window.grab().save(str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
        window._discard_ok = True
        QTimer.singleShot(0, window.close)
        QTimer.singleShot(0, app.quit)

    window.train_view.run_finished.connect(finished)
    if args.project:
        QTimer.singleShot(0, lambda: open_and_train(args.project))
    elif tasks.sample_project_available() and tasks.starter_model_present():
        print("using the sample project…", flush=True)
        sample = TaskWorker(tasks.ensure_sample_project, work / "samples", name="sample")
        sample.succeeded.connect(open_and_train)
        sample.failed.connect(lambda m, a: (print(m, a), app.exit(2)))
        sample.start()
    else:
        print("building a small project…", flush=True)
        builder = TaskWorker(make_demo_project, work / "demo", steps=args.steps, name="build")
        builder.succeeded.connect(open_and_train)
        builder.failed.connect(lambda m, a: (print(m, a), app.exit(2)))
        builder.crashed.connect(lambda t: (print(t), app.exit(2)))
        builder.start()
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
