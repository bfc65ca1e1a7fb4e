#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite under a virtual display.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
PYTHON="${PYTHON:-python3}"
if [ -n "${DISPLAY:-}" ] || ! command -v xvfb-run >/dev/null 2>&1; then
    exec "$PYTHON" -m pytest "$@"
fi
exec xvfb-run -a -s "-screen 0 1600x1000x24" "$PYTHON" -m pytest "$@"
