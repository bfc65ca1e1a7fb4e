"""Rewrite constraints.txt: the installed version of every package that napari-clis and its extras need.

Run in an environment where `CLIS_LATEST=1 bash scripts/test.sh` has just passed:
    python scripts/freeze_constraints.py          (rewrites constraints.txt)
pip resolves the dependency tree (without installing anything); the versions written are the installed ones.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# The versions napari-clis was last tested with (Python 3.11, Linux): scripts/setup.sh and scripts/test.sh install
# within them, so README's commands give the same environment on any day. CLIS_LATEST=1 ignores this file and takes
# the newest releases instead (a second CI mode: CLIS_LATEST=1 bash .ci/run). Refresh it after such a run passes:
#   python scripts/freeze_constraints.py
# torch is pinned by scripts/setup.sh (the CPU build without a GPU), not here.
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", str(report), f"{ROOT}[testing,qt,bench,batch]", "ruff"], check=True)
        names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    pins = []
    for name in sorted(names - {"napari-clis", "torch"}):  # torch: scripts/setup.sh pins it (the CPU build)
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:  # a dependency of a build this machine does not use (CUDA's)
            continue
    target = ROOT / "constraints.txt"
    tmp = target.with_name(".constraints.txt.tmp")
    tmp.write_text(HEADER + "\n" + "\n".join(pins) + "\n")
    tmp.replace(target)
    print(f"wrote {len(pins)} pins to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
