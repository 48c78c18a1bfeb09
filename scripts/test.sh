#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite headless under Xvfb.
# Extra arguments go to pytest, e.g. scripts/test.sh -k star
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1
# Each pytest process gets its own virtual screen with OpenGL from Mesa.
exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
