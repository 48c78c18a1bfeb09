#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo on the built-in sample data:
# headless, writing screenshots and summary.md to DIR (default demo-output).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${1:-demo-output}"
exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/napari-cryo demo --out "$OUT" --overwrite
