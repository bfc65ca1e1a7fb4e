#!/usr/bin/env bash
# Install napari-clis and everything it needs into the current Python environment.
#   bash scripts/setup.sh          the plugin with napari and PyQt6
#   bash scripts/setup.sh --test   also the test tools and, on Debian/Ubuntu as root, Xvfb with Mesa OpenGL
# PyTorch: an already installed torch 2.6 or newer is kept. Otherwise, without an NVIDIA GPU the CPU build pinned here is
# installed first (a bare "torch" would pull a CUDA build of several GB): pip also looks in PyTorch's CPU-only
# index (TORCH_INDEX; where it cannot be reached, as on our CI machines, a CPU wheel on local disk or PyPI's build
# is used); with a GPU (nvidia-smi works) the default PyTorch build, which includes CUDA.
# Other packages are installed within constraints.txt (the versions last tested); CLIS_LATEST=1 takes the newest
# releases instead (and keeps the installed torch).
# Set TORCH_SPEC to choose the version yourself, e.g. TORCH_SPEC="torch==2.12.0" (without a GPU still looked up in the
# CPU-only index too), and TORCH_INDEX="" to look only in PyPI. Neither does anything when torch is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    TORCH_SPEC="${TORCH_SPEC:-torch>=2.6,<3}"
else
    TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
    TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
fi
PYTHON="${PYTHON:-python3}"
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if [ "$with_tests" = 1 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! command -v xvfb-run >/dev/null 2>&1; then
    echo "== installing Xvfb and Mesa OpenGL (napari needs OpenGL to draw) =="
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 \
        libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
        libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null
fi

# an installed torch older than 2.6 is replaced: model files are not safe to load with it (README, Install)
if ! "$PYTHON" -c "import re, torch; assert tuple(map(int, re.match(r'(\d+)\.(\d+)', torch.__version__).groups())) >= (2, 6)" \
        >/dev/null 2>&1; then
    TORCH_ARGS=()
    # the CPU index's 2.13.0+cpu wins over PyPI's 2.13.0, the CUDA build on Linux; used where it can be reached
    if [ -n "${TORCH_INDEX:-}" ] && "$PYTHON" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)" \
            "$TORCH_INDEX/torch/" >/dev/null 2>&1; then
        TORCH_ARGS=(--extra-index-url "$TORCH_INDEX")
    fi
    echo "== installing PyTorch ($TORCH_SPEC${TORCH_ARGS[1]:+, also from $TORCH_INDEX}) =="
    "$PYTHON" -m pip install -q "$TORCH_SPEC" ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"}
fi

extras="qt,bench,batch"
[ "$with_tests" = 1 ] && extras="testing"
if [ "${CLIS_LATEST:-0}" = 1 ]; then
    # the newest release of every dependency; torch stays the build installed above (an upgrade from PyPI would
    # bring a CUDA build of several GB)
    echo "== installing napari-clis with the newest releases of its dependencies (CLIS_LATEST=1) =="
    torch_pin="$("$PYTHON" -c "import torch; print('torch==' + torch.__version__.split('+')[0])")"
    "$PYTHON" -m pip install -q --upgrade --upgrade-strategy eager -e ".[$extras]" "$torch_pin"
else
    echo "== installing napari-clis (dependencies within constraints.txt) =="
    "$PYTHON" -m pip install -q -c constraints.txt -e ".[$extras]"
fi
"$PYTHON" -c "import torch, napari_clis; print('napari-clis', napari_clis.__version__, '| torch', torch.__version__, '| CUDA', torch.cuda.is_available())"
