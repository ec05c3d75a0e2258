"""`python -m transferstudio.devtools.launch_probe [--runs N]`: how long from starting the app to
its window on screen, and to the Model panel saying "Ready to train" (the sample project opens on
a first start; a project folder can be given). Prints each run and the median; nothing asserted."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def launch_once(project: str | None, home: str) -> tuple[float, float]:
    env = {**os.environ, "TRANSFERSTUDIO_LAUNCH_PROBE": "1", "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config",
           "XDG_DATA_HOME": f"{home}/.local/share", "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "transferstudio.app", *([project] if project else [])], env=env,
                          capture_output=True, text=True, timeout=120)
    stamps = {}
    for line in done.stdout.splitlines():
        if ":" in line and line.endswith(" s"):
            what, value = line.rsplit(":", 1)
            stamps[what.strip()] = float(value.strip()[:-2]) - started
    if "window shown" not in stamps:
        raise SystemExit(f"the app did not report its window:\n{done.stdout}\n{done.stderr[-2000:]}")
    return stamps["window shown"], stamps.get("ready to train", float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferstudio.devtools.launch_probe")
    parser.add_argument("project", nargs="?", default=None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        project = args.project
        if project is None:  # the sample project, as a first start opens it
            from pathlib import Path

            from transferstudio.starter.sample import ensure_sample_project

            project = str(ensure_sample_project(Path(home) / "projects"))
        launch_once(project, home)  # the first launch warms the disk caches
        rows = [launch_once(project, home) for _ in range(args.runs)]
    for n, (shown, ready) in enumerate(rows, 1):
        print(f"run {n}: window shown {shown:.2f} s, ready to train {ready:.2f} s")
    shown = sorted(r[0] for r in rows)[len(rows) // 2]
    ready = sorted(r[1] for r in rows)[len(rows) // 2]
    print(f"median: window shown {shown:.2f} s, ready to train {ready:.2f} s ({os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
