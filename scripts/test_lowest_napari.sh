#!/usr/bin/env bash
# Run the napari-facing tests with the lowest napari that pyproject.toml allows (CI runs this after scripts/test.sh).
# A virtual environment on top of the current one (which scripts/test.sh has set up) gets that napari release and
# the versions of app-model and vispy it was tested with (0.5.1, 0.16.2); everything else comes from the current environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
lowest="$("$PYTHON" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
floor = next(re.fullmatch(r"napari>=([0-9.]+)(,.*)?", d.replace(" ", "")) for d in deps if d.startswith("napari"))
print(floor.group(1) + (".0" if floor.group(1).count(".") == 1 else ""))
PY
)"
venv="$(mktemp -d)/napari-lowest"
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PYTHON" -m venv --system-site-packages "$venv"
echo "== napari $lowest (the lowest pyproject.toml allows) in $venv =="
"$venv/bin/python" -m pip install -q "napari==$lowest" "app-model==0.5.1" "vispy==0.16.2"
"$venv/bin/python" -c "import napari; assert napari.__version__ == '$lowest', napari.__version__; print('napari', napari.__version__)"
tests=(tests/test_widget.py tests/test_widget_clicks.py tests/test_journey.py tests/test_widget_bad_input.py
       tests/test_napari_compat.py tests/test_measurements_widget.py tests/test_reader.py tests/test_familiarity.py
       tests/test_widget_first_minutes.py)
if [ -n "${DISPLAY:-}" ] || ! command -v xvfb-run >/dev/null 2>&1; then
    "$venv/bin/python" -m pytest "${tests[@]}" "$@"
else
    xvfb-run -a -s "-screen 0 1600x1000x24" "$venv/bin/python" -m pytest "${tests[@]}" "$@"
fi
