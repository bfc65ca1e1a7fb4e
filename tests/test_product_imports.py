"""The product stands apart from the evaluation code and imports nothing Unix-only (issue 22).

Every check runs in a fresh Python where the Unix-only ``resource`` module is blocked
(``sys.modules["resource"] = None`` makes ``import resource`` raise ImportError, as on Windows), and checks that
nothing of ``napari_clis.evaluation`` (benchmarks, simulated user, peers, baselines) was imported: only the
``bench`` command may import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import napari_clis

PACKAGE = Path(napari_clis.__file__).parent
DATA = Path(__file__).parent / "data"
NUCLEI_FLUO = DATA / "dsb2018" / "images" / "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21.png"

# prepended to every child's code: no `resource`, and a report of whether evaluation code was imported
PRELUDE = """
import sys
sys.modules["resource"] = None
import contextlib, io, json


def evaluation_loaded():
    return sorted(m for m in sys.modules if m == "napari_clis.evaluation" or m.startswith("napari_clis.evaluation."))


def run_cli(argv):
    from napari_clis.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return {"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()}
"""


def _child(code: str, timeout: float = 300) -> dict:
    """Run PRELUDE + code in a fresh Python; its last stdout line is a JSON report."""
    env = dict(os.environ, OMP_NUM_THREADS="1", QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def product_modules() -> list[str]:
    """Every module of napari_clis but the evaluation package's, found on disk (a new module is covered too)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if len(parts) > 1 and parts[1] == "evaluation":
            continue
        names.append(".".join(parts))
    return names


def test_the_evaluation_code_is_a_package_of_its_own():
    assert {p.name for p in (PACKAGE / "evaluation").glob("*.py")} >= {
        "__init__.py", "benchmarks.py", "simulated_user.py", "baselines.py"}
    assert not {"benchmarks.py", "simulated_user.py", "baselines.py"} & {p.name for p in PACKAGE.glob("*.py")}


def test_every_product_module_imports_without_resource_and_without_the_evaluation_code():
    names = product_modules()
    assert {"napari_clis", "napari_clis.cli", "napari_clis.training", "napari_clis.session", "napari_clis._widget",
            "napari_clis.batch", "napari_clis.data"} <= set(names)
    report = _child(f"""
import importlib
failed, first_to_load_evaluation = {{}}, None
for name in {names!r}:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{{type(e).__name__}}: {{e}}"
    if first_to_load_evaluation is None and evaluation_loaded():
        first_to_load_evaluation = name
print(json.dumps({{"failed": failed, "first_to_load_evaluation": first_to_load_evaluation,
                  "evaluation": evaluation_loaded()}}))
""")
    assert report["failed"] == {}
    assert report["first_to_load_evaluation"] is None, report
    assert report["evaluation"] == []


def test_the_commands_help_lists_bench_without_importing_the_benchmarks_or_resource():
    report = _child("""
runs = [run_cli(argv) for argv in (["--help"], ["segment", "--help"], ["pretrain", "--help"],
                                   ["calibrate", "--help"], ["demo", "--help"])]
print(json.dumps({"runs": runs, "evaluation": evaluation_loaded()}))
""")
    for run in report["runs"]:
        assert run["code"] == 0, run
    top = report["runs"][0]["out"]
    assert "bench" in top and "segment" in top and "pretrain" in top and "calibrate" in top and "demo" in top
    assert "--model" in report["runs"][1]["out"] and "--data" in report["runs"][2]["out"]
    assert report["evaluation"] == []


def test_segment_runs_without_resource_and_without_the_evaluation_code(tmp_path):
    out = tmp_path / "out"
    report = _child(f"""
run = run_cli(["segment", {str(NUCLEI_FLUO)!r}, "--model", "nuclei", "--output", {str(out)!r}, "--threads", "1",
               "--samples", "2"])
print(json.dumps({{"run": run, "evaluation": evaluation_loaded()}}))
""")
    assert report["run"]["code"] == 0, report["run"]
    assert sorted(p.name for p in out.iterdir()) == [f"{NUCLEI_FLUO.stem}_{kind}" for kind in (
        "instances.tif", "labels.tif", "measurements.csv", "uncertainty.tif")]
    assert report["evaluation"] == []


def test_bench_keeps_its_full_help_and_names_what_is_missing_for_the_memory_measures():
    report = _child("""
runs = [run_cli(argv) for argv in (["bench", "--help"], ["bench", "speed", "--help"], ["bench", "memory", "--help"],
                                   ["bench", "memory", "--cycles", "1"], ["bench", "speed", "--sizes", "64"],
                                   ["bench"], ["bench", "speed", "--no-such-option"])]
print(json.dumps({"runs": runs}))
""")
    bench_help, speed_help, memory_help, memory, speed, bare, unknown = report["runs"]
    assert bench_help["code"] == 0 and bench_help["out"].startswith("usage: napari-clis bench")
    for name in ("speed", "quality", "interactive", "clicks", "continual", "learn", "memory"):
        assert name in bench_help["out"]
    assert speed_help["code"] == 0 and "--sizes" in speed_help["out"] and "--repeats" in speed_help["out"]
    assert "(default: 5)" in " ".join(speed_help["out"].split())  # the benchmarks' help still shows the defaults
    assert memory_help["code"] == 0 and "--cycles" in memory_help["out"] and "--margin" in memory_help["out"]
    for run in (memory, speed):  # memory measures need `resource`: a plain message, no traceback
        assert run["code"] == 2, run
        assert "resource" in run["err"] and "Traceback" not in run["err"]
    assert bare["code"] == 2 and "napari-clis bench" in bare["err"] and "required" in bare["err"]
    assert unknown["code"] == 2 and "--no-such-option" in unknown["err"]
