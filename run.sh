#!/usr/bin/env bash
# One entry point for newcomers and CI:
#   bash run.sh demo     set up, then fine-tune the starter model on the sample images (headless)
#   bash run.sh test     set up, then run the test suite
#   bash run.sh app      set up, then open the desktop app
#   bash run.sh setup    only set up (.venv with the project and its test tools)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${TRANSFERSTUDIO_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # Ranges in pyproject.toml let pip take a torch build already on this machine.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/transferstudio" demo "$@" ;;
  app) setup; exec "$VENV/bin/python" -m transferstudio.app "$@" ;;
  test)
    setup
    export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1
    exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh [demo|test|app|setup] [args…]" >&2; exit 2 ;;
esac
