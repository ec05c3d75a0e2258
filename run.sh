#!/usr/bin/env bash
# One entry point for newcomers and CI:
#   bash run.sh demo     set up, then fine-tune the starter model on the sample images (headless)
#   bash run.sh test     set up, then run the test suite
#   bash run.sh app      set up, then open the desktop app
#   bash run.sh setup    only set up (.venv with the project and its test tools)
#   bash run.sh gpu-check  on a machine with an NVIDIA GPU: the gpu-marked tests and the CUDA benches
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
  gpu-check)
    # Under 8 minutes on one GPU: the `gpu` tests, then the benches on CUDA (figures for the README).
    setup
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
      echo "no CUDA GPU here: nothing to check" >&2; exit 0
    fi
    export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1
    "$VENV/bin/python" -c "import torch; print(torch.cuda.get_device_name(0), torch.version.cuda)"
    "$VENV/bin/python" -m pytest -q -m gpu -p no:cacheprovider || status=$?
    "$VENV/bin/python" -m transferstudio.devtools.bench --device cuda --steps 30
    "$VENV/bin/python" -m transferstudio.devtools.bench --device cuda --steps 30 --precision bf16
    "$VENV/bin/python" -m transferstudio.devtools.bench_vae --device cuda || true
    "$VENV/bin/python" -m transferstudio.devtools.bench_cuda --steps 10 || status=$?
    exit "${status:-0}" ;;
  *) echo "usage: bash run.sh [demo|test|app|setup|gpu-check] [args…]" >&2; exit 2 ;;
esac
