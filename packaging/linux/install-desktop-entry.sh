#!/bin/sh
# Put TransferStudio in this user's application menu, pointing at wherever this folder was unpacked.
# (A .desktop file needs an absolute path, which only exists after unpacking.)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
mkdir -p "$data/applications" "$data/icons/hicolor/256x256/apps"
cp "$here/_internal/resources/icons/transferstudio.png" "$data/icons/hicolor/256x256/apps/transferstudio.png"
sed "s|^Exec=.*|Exec=\"$here/TransferStudio\" %f|" "$here/transferstudio.desktop" \
  > "$data/applications/transferstudio.desktop"
echo "TransferStudio added to the application menu: $data/applications/transferstudio.desktop"
