"""Screenshots of the main window in a theme, with the sample project open after a short run
(developer tool): `python -m transferstudio.devtools.screenshot_theme dark docs/`.

Trains the sample project for a few steps with the engine first (CPU, batch 4), so the Train tab
shows a loss curve, the learning rate under it and previews. Writes window-<theme>-1600.png
(1600×1000) and window-<theme>-1024.png (1024×700)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    which = argv[1] if len(argv) > 1 else "dark"
    out = Path(argv[2] if len(argv) > 2 else "docs")
    steps = int(argv[3]) if len(argv) > 3 else 24
    from PySide6.QtCore import QEventLoop, QSettings
    from PySide6.QtWidgets import QApplication

    from transferstudio.project.project import load_project
    from transferstudio.starter.sample import create_sample_project
    from transferstudio.training.trainer import TrainJob, train

    tmp = Path(tempfile.mkdtemp(prefix="ts-shot-"))
    os.environ["TRANSFERSTUDIO_HOME"] = str(tmp / "home")
    folder = create_sample_project(tmp / "Sample", steps=steps, batch_size=4, preview_every=steps // 2,
                                   preview_steps=10, preview_seeds=[1, 2, 3, 4], checkpoint_every=10_000,
                                   warmup_steps=steps // 3, schedule="cosine")
    for event in train(TrainJob(load_project(folder))):
        print(type(event).__name__, getattr(event, "step", ""), flush=True)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    from transferstudio.ui.main_window import MainWindow
    from transferstudio.ui.theme import apply_theme

    apply_theme(which, app)
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.show()
    loop = QEventLoop()
    window.inspected.connect(lambda *_: loop.quit())
    window.open_project(folder)
    loop.exec()  # until the model is inspected (a busy processEvents loop can crash PySide here)
    window.work_tabs.setCurrentIndex(0)
    for width, height in ((1600, 1000), (1024, 700)):
        window.resize(width, height)
        for _ in range(50):
            app.processEvents()
        path = out / f"window-{which}-{width}.png"
        window.grab().save(str(path))
        print("saved", path, window.size().width(), window.size().height())
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
