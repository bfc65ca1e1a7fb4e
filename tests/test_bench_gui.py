"""`napari-clis bench gui` (evaluation/gui.py): its stall attribution on made-up stacks, and one tiny run in a real
viewer (under Xvfb) whose output fields are checked for presence and sanity, not against the timing targets."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread, imsave

from napari_clis.evaluation.gui import PHASES
from napari_clis.evaluation.stall_meter import Stall, attribute, blockers

DATA = Path(__file__).parent / "data"
NUCLEI_FLUO = DATA / "dsb2018" / "images" / "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21.png"
SITE = "/venv/lib/python3.11/site-packages"
SRC = "/repo/src/napari_clis"


def _dump(gui_frames, worker_frames=()):
    harness = [(f"{SRC}/evaluation/gui.py", 300, "spin"), (f"{SRC}/cli.py", 440, "main")]
    return [{"ident": 1, "frames": list(gui_frames) + harness},
            {"ident": 2, "frames": list(worker_frames) or [("/usr/lib/python3.11/threading.py", 320, "wait")]}]


def test_a_gui_thread_sample_names_the_product_frames_that_blocked_it():
    a = attribute(_dump([(f"{SITE}/napari/layers/base/base.py", 1080, "translate"),
                         (f"{SRC}/_widget/_common.py", 80, "copy_geometry"),
                         (f"{SRC}/_widget/_layers.py", 287, "show_suggestions")]), gui_ident=1)
    assert a["thread"] == "GUI"
    assert a["where"] == "_widget/_layers.py:show_suggestions > _widget/_common.py:copy_geometry"
    assert a["category"].startswith("geometry copied") and a["detail"] == "napari/layers/base/base.py:1080 translate"
    assert not any("evaluation/gui.py" in f for f in a["stack"])  # cut at the harness's event loop


def test_a_gui_thread_running_no_python_is_blamed_on_the_busy_worker():
    a = attribute(_dump([], [(f"{SITE}/skimage/segmentation/slic_superpixels.py", 400, "slic"),
                             (f"{SRC}/superpixels.py", 30, "compute_superpixels")]), gui_ident=1)
    assert a["thread"] == "worker" and a["category"].startswith("GIL held by a worker")
    assert a["where"] == "superpixels.py:compute_superpixels"
    imported = attribute(_dump([("<frozen importlib._bootstrap>", 1176, "_find_and_load"),
                                (f"{SITE}/pandas/__init__.py", 46, "<module>"),
                                (f"{SRC}/_widget/_layers.py", 251, "prepare_clicks")]), gui_ident=1)
    assert imported["category"] == "import of pandas" and imported["where"] == "_widget/_layers.py:prepare_clicks"


def test_blockers_share_each_stalls_time_among_its_samples_and_the_garbage_collector():
    s1 = {"category": "c1", "where": "w1", "detail": "", "stack": []}
    s2 = {"category": "c2", "where": "w2", "detail": "", "stack": []}
    stalls = [Stall("clicks", "img", 300.0, 0.0, 0.3, [s1, s1, s2]),
              Stall("segment", "img", 120.0, 1.0, 1.12, [s2]),
              Stall("learn", "img", 90.0, 2.0, 2.09, []),
              Stall("learn", "img", 20.0, 3.0, 3.02, [s1]),  # under the threshold: left out
              Stall("segment", "img", 200.0, 4.0, 4.2, [s1], gc_ms=150.0)]
    top = blockers(stalls, min_ms=50)
    by = {g["where"]: g for g in top}
    assert by["w1"]["ms"] == 250 and by["w1"]["stalls"] == 2 and by["w1"]["samples"] == 3
    assert by["w2"]["ms"] == 220 and by["w2"]["stalls"] == 2 and by["w2"]["longest_stall_ms"] == 300
    assert top[0]["where"] == "w1" and by["w2"]["phases"] == ["clicks (img)", "segment (img)"]
    assert any(g["category"] == "not sampled" and g["ms"] == 90 for g in top)
    assert any(g["category"] == "garbage collection" and g["ms"] == 150 for g in top)
    assert sum(g["ms"] for g in top) == 300 + 120 + 90 + 200  # every stall's time, once


def _display_command() -> list[str] | None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return []
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"]
    return None


def test_a_tiny_run_in_a_real_viewer_reports_every_field(tmp_path):
    prefix = _display_command()
    if prefix is None:
        pytest.skip("needs a display or xvfb-run")
    image = tmp_path / "nuclei_crop.png"
    imsave(image, np.ascontiguousarray(imread(NUCLEI_FLUO)[:128, :128, 0]), check_contrast=False)
    out = tmp_path / "gui.json"
    cmd = prefix + [sys.executable, "-m", "napari_clis.cli", "bench", "gui", "--image", str(image), "--model",
                    "nuclei", "--repeats", "1", "--clicks", "3", "--strokes", "1", "--learn-steps", "1",
                    "--settle-ms", "100", "--pace-ms", "50", "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| image | px | first Segment (widget)" in done.stdout and "Event-loop gaps" in done.stdout
    report = json.loads(out.read_text())
    assert report["machine"] and report["stall_ms"] == 100
    (r,) = report["images"]
    assert r["shape"][:2] == [128, 128] and r["model"] == "nuclei"
    assert r["first"]["widget_s"] > 0 and r["first"]["load_and_segment_s"] > 0
    seg = r["segment"]
    assert len(seg["widget_s"]) == len(seg["segment_s"]) == 1
    assert seg["widget_median_s"] > 0 and seg["segment_median_s"] > 0
    assert math.isfinite(seg["ratio"]) and seg["ratio"] > 0
    assert math.isfinite(seg["ratio_core"]) and seg["core_median_s"] > 0
    assert len(seg["core_s"]) == len(seg["segment_s"]) == len(seg["shown_s"])
    # two figures per press: the segmentation shown, then everything (objects, suggestions) shown
    assert 0 < seg["shown_median_s"] <= seg["widget_median_s"]
    assert all(0 < a <= b for a, b in zip(seg["shown_s"], seg["widget_s"]))
    # the segmentation was seen before the end (a watch that never fired would give the end itself)
    shown, whole = seg["shown_s"] + [r["first"]["shown_s"]], seg["widget_s"] + [r["first"]["widget_s"]]
    assert any(a < b for a, b in zip(shown, whole))
    assert 0 < r["first"]["shown_s"] <= r["first"]["widget_s"]
    assert r["clicks"]["n"] == 3 and r["clicks"]["add_ms_median"] >= 0
    assert r["learn"]["steps"] == 1 and r["learn"]["widget_s"] > 0
    assert set(r["stalls"]) == set(PHASES)
    for phase, st in r["stalls"].items():
        assert st["ticks"] > 0, phase
        assert 0 < st["median_ms"] <= st["p99_ms"] <= st["longest_ms"], (phase, st)
        assert st["over_100_ms"] >= 0
    # the heavy steps ran in worker threads (the benchmark reads it from the dock's public surface)
    assert {"load", "segment", "learn"} <= set(r["threads"]) and "MainThread" not in r["threads"].values()
    assert isinstance(report["blockers"], list) and isinstance(report["stalls"], list)
    assert {"n", "generation_2", "longest_ms", "total_ms", "in_stalls_ms", "collections"} <= \
        set(report["garbage_collection"])
    for s in report["stalls"]:
        assert s["ms"] >= 50 and s["phase"] in PHASES and 0 <= s["gc_ms"] <= s["ms"] + 1
        for a in s["samples"]:
            assert {"thread", "category", "where", "stack", "watcher_late_ms"} <= set(a)
