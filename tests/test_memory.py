"""Memory over repeated segment / click / learn cycles: nothing accumulates beyond what each learned task keeps.

A fast version of ``napari-clis bench memory`` (docs/benchmarks.md): 8 cycles on 96 px crops of the real test
images, 2 learning steps each. Every learned task legitimately keeps its gate logits (exactly 2816 bytes with
the nuclei model) and a task record (a few KB), and a task learned on a kind of image unlike the pretraining
images its own BatchNorms and adapters (about 228 KB of tensors, and their modules); everything else of a cycle
(the result's maps, the region graph, the clicks, the previous network) must be freed by the next one. Live
torch tensors are counted exactly (each storage once) and the Python and numpy heap with ``tracemalloc``; RSS
is only checked loosely, since the allocator keeps freed memory for a while.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_clis import ClisSession
from napari_clis.evaluation.benchmarks import memory_cycles

CROP = 96
HEAP_PER_CYCLE = 32 * 2**10  # a task record (~5 KB, mostly its fingerprint) and small caches, with room to spare
HEAP_PER_ADAPTED = 128 * 2**10  # an adapted task's 28 modules (BatchNorms, adapters) as Python objects
TENSOR_SLACK = 8 * 2**10
RSS_BOUND_MB = 64.0  # loose: only a gross leak shows in the resident set of such small images


@pytest.fixture(scope="module")
def samples(nuclei_fluo, nuclei_he):
    """Four 96 px crops of the two real nuclei images, with their ground truth (the simulated user's clicks)."""
    out = []
    for image, mask in (nuclei_fluo, nuclei_he):
        for y, x in ((0, 0), (100, 120)):
            out.append((np.ascontiguousarray(image[y:y + CROP, x:x + CROP]),
                        np.ascontiguousarray(mask[y:y + CROP, x:x + CROP]).astype(np.int32)))
    return out


def _cycle_growth(samples, cycles: int, keep=None) -> tuple[list[str], dict, dict]:
    """Run ``cycles`` cycles on a fresh session; return what grew beyond the per-task state between cycle 2 (after
    the first-use imports) and the last, as messages, with the two records. ``keep`` receives every result, to
    show that the check catches an accumulation."""
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=2)
    s.learn_settings.steps = 2
    s.learn_settings.batch = 1
    if keep is not None:
        segment = s.segment
        s.segment = lambda *a, **k: keep.append(segment(*a, **k)) or keep[-1]
    tracemalloc.start()
    try:
        rows = memory_cycles(s, samples, cycles, at=(2, cycles))
    finally:
        tracemalloc.stop()
    a, b = rows[1], rows[2]
    n, tasks = cycles - 2, b["tasks"] - a["tasks"]
    problems = []
    tensors, kept = b["tensor_bytes"] - a["tensor_bytes"], b["task_bytes"] - a["task_bytes"]
    if tasks and kept < tasks * 2816:  # the nuclei model's gate logits per task, at least
        problems.append(f"{tasks} tasks learned, but the network keeps only {kept} B more for them")
    if tensors > kept + TENSOR_SLACK:
        problems.append(f"live torch tensors grew by {tensors} B in {n} cycles, {tasks} tasks keep {kept} B")
    heap, allowed = b["heap_bytes"] - a["heap_bytes"], n * HEAP_PER_CYCLE + (b["adapted"] - a["adapted"]) * \
        HEAP_PER_ADAPTED
    if heap > allowed:
        problems.append(f"the Python and numpy heap grew by {heap / 2**10:.0f} KB in {n} cycles "
                        f"(allowed {allowed / 2**10:.0f} KB)")
    if b["rss_mb"] - a["rss_mb"] > RSS_BOUND_MB:
        problems.append(f"RSS grew by {b['rss_mb'] - a['rss_mb']:.0f} MB in {n} cycles")
    return problems, a, b


def test_repeated_cycles_keep_only_the_learned_tasks(samples):
    problems, a, b = _cycle_growth(samples, 8)
    assert b["tasks"] > a["tasks"], "no task was learned: the per-task bound was not exercised"
    assert b["learned"] + b["rolled_back"] + b["skipped"] == 8
    assert not problems, problems


def test_the_check_catches_results_kept_in_a_list(samples):
    kept = []
    problems, _, _ = _cycle_growth(samples, 5, keep=kept)
    assert len(kept) == 5
    assert any("live torch tensors" in p for p in problems) and any("heap" in p for p in problems), problems


def test_bench_memory_prints_the_table_and_the_growth_net_of_the_tasks(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "memory", "--cycles", "3", "--steps", "1",
                          "--size", "64", "--images", "2", "--samples", "2", "--data", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| cycle 3 |" in out.stdout and "crops of one image" in out.stdout  # no data there: the fallback image
    assert "Growth net of them" in out.stdout and "within the margin of 50 MB" in out.stdout
