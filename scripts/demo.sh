#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every workflow on the built-in sample data, headless:
# screenshots of the whole napari window, plots and summary.md in DIR (default demo-output).
#   bash scripts/demo.sh [DIR] [--quick] [--only squares,picking,segmentation,reconstruction]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="demo-output"
if [[ $# -gt 0 && "$1" != --* ]]; then OUT="$1"; shift; fi
exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/napari-cryo demo --out "$OUT" --overwrite "$@"
