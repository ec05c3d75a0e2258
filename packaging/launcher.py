"""Entry script of the frozen app; both executables run it.

`TransferStudio` (windowed) opens the desktop app. `transferstudio-cli` (its console twin)
is the command line: `transferstudio-cli train PROJECT`, `transferstudio-cli demo`, …
Both take `--self-check` (see transferstudio/selfcheck.py). Which one runs is told by the
executable's name, so the two share one analysis and one set of bundled files.
"""
import multiprocessing
import os
import sys
from pathlib import Path


def main() -> int:
    multiprocessing.freeze_support()  # a frozen worker process must not start the app again
    if sys.stdout is None or sys.stderr is None:
        # Windowed on Windows/macOS there is no console; libraries that print (tqdm) would crash.
        sink = open(os.devnull, "w", encoding="utf-8")
        sys.stdout = sys.stdout or sink
        sys.stderr = sys.stderr or sink
    args = sys.argv[1:]
    if args[:1] == ["--self-check"]:
        from transferstudio.selfcheck import main as self_check

        return self_check(args[1:])
    if Path(sys.executable).stem.lower().endswith("-cli"):
        from transferstudio.cli import main as cli

        return cli(args)
    from transferstudio.app import main as app

    return app(sys.argv)


if __name__ == "__main__":
    sys.exit(main())
