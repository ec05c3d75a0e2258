#!/usr/bin/env bash
# Build the Linux app from this checkout:
#   dist/TransferStudio/                                   one folder: TransferStudio, transferstudio-cli, _internal/
#   dist/TransferStudio-<version>-linux-<arch>.tar.gz      what artists download and unpack
#
#   bash packaging/build.sh              build (.venv is made with the `package` extra if missing)
#   bash packaging/build.sh --check      build, then run the built self-check with the network off
#   PYTHON=/path/to/venv/bin/python bash packaging/build.sh    build with an existing environment
#
# About 7 min and 8 GB of free disk (build/ + dist/ + tarball) on 2 cores; see packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  VENV=${TRANSFERSTUDIO_VENV:-.venv}
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[package]"
  fi
  PY=$VENV/bin/python
fi
# This checkout first on every path PyInstaller's helper processes use, even when the
# environment has another checkout installed in editable mode.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import PyInstaller" 2>/dev/null || "$PY" -m pip install --quiet "pyinstaller>=6.6"

if [ ! -f resources/starter/model_index.json ]; then
  echo "error: resources/starter/ has no starter model; the app ships it (see transferstudio/devtools/pretrain.py)" >&2
  exit 1
fi
[ -f resources/icons/transferstudio.png ] || "$PY" packaging/make_icon.py

VERSION=$("$PY" -c "import transferstudio; print(transferstudio.__version__)")
ARCH=$(uname -m)
TARBALL=dist/TransferStudio-$VERSION-linux-$ARCH.tar.gz
echo "building TransferStudio $VERSION ($ARCH) with $("$PY" -m PyInstaller --version) from $ROOT"

rm -rf build/pyinstaller dist/TransferStudio "$TARBALL"
start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller packaging/transferstudio.spec
built=$(date +%s)

cp packaging/linux/transferstudio.desktop packaging/linux/install-desktop-entry.sh dist/TransferStudio/
dist/TransferStudio/transferstudio-cli --version  # the bundle starts at all

# pigz uses every core; CUDA libraries barely compress, so the default level is enough.
if command -v pigz >/dev/null; then
  tar -C dist -cf - TransferStudio | pigz > "$TARBALL"
else
  tar -C dist -czf "$TARBALL" TransferStudio
fi
done_at=$(date +%s)

echo "PyInstaller: $((built - start)) s; tarball: $((done_at - built)) s; total: $((done_at - start)) s"
echo "app folder:  $(du -sh dist/TransferStudio | cut -f1)  dist/TransferStudio/"
echo "tarball:     $(du -sh "$TARBALL" | cut -f1)  $TARBALL"

if [ "$CHECK" = 1 ]; then
  # The network off, as on an artist's offline workstation (unshare needs root or user namespaces).
  if unshare -n true 2>/dev/null; then
    time unshare -n dist/TransferStudio/transferstudio-cli --self-check
  else
    echo "unshare -n is not allowed here; running the self-check with the network on" >&2
    time dist/TransferStudio/transferstudio-cli --self-check
  fi
fi
