#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for napari-cryo: the system libraries
# that headless napari needs (Xvfb, Mesa OpenGL, Qt's xcb plugins) and a
# virtual environment .venv with napari-cryo[all,test] installed editable.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# torch first, pinned: an unpinned torch would pull the newest CUDA build (several GB).
# Set TORCH_SPEC to choose another build (e.g. a CUDA one on a GPU machine).
pip_install() {
  # Quiet, but keep real errors: drop pip's notes about unusable local index paths.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install "${TORCH_SPEC:-torch==2.13.0}"
pip_install -e ".[all,test]"
echo "setup: done ($(.venv/bin/python -c 'import napari, torch, napari_cryo; print(f"napari {napari.__version__}, torch {torch.__version__}, napari-cryo {napari_cryo.__version__}")'))"
