"""``napari-clis bench gui``: the Segment (CLIS) dock in a real napari viewer, timed and watched for stalls.

It needs a display; on a server run it under a virtual one: ``xvfb-run -a napari-clis bench gui``. Per image
(default: the dsb2018 fluorescence nuclei image and an isic2017 lesion of tests/data), in one process:

* **Segment time**, two figures per press, the Segment being progressive: *shown*, from the button press to the
  segmentation written (the status turns to "Segmented …; finding the objects…"), against
  ``ClisSession.segment()`` on the same data in the same process, interleaved and repeated (medians, and their
  ratio; the issue's target is at most 1.2); and *all shown*, from the press until the objects and the suggestions
  are shown too (the dock no longer busy), against the same work through the API: ``segment()``, the session's
  objects and clicks made ready (``session.labels``) and the suggestions, which ``segment()`` alone leaves undone
  (the ratio to it is the widget's own cost: drawing). The first Segment (the model loaded in the worker, torch
  imported there for the first image) is reported apart, beside a fresh session's load and first ``segment()``.
  The warm presses are timed with the meter off (no ticks, no stack samples: a Python call every 5 ms on the GUI
  thread takes the GIL from the worker and slowed the widget's ``segment()`` by up to 1.3x); the segmentation's
  redraw (napari's ``set_data`` event) marks *shown*. Their stalls come from as many presses again, metered.
* **Event-loop stalls**: a timer ticks every ``--tick-ms`` on the GUI thread; the gaps between its ticks are how
  long the GUI thread could not handle an event. Longest gap and 99th percentile per phase: idle, the first Segment,
  warm Segments, object clicks added to the ``clicks`` Points layer (``layer.add``), brush strokes painted through
  the ``segmentation`` Labels layer's ``paint``, Learn. The issue's target: never over 100 ms.
* **Where a stall comes from**: a watcher thread looks at the GUI thread every ``--sample-ms``; while the timer
  has not ticked for two intervals it takes every thread's Python stack (``sys._current_frames()``). Each long gap
  is attributed to what the GUI thread was doing (its innermost product, napari and vispy frames), or, when the GUI
  thread sat in Qt's event loop with no Python running, to what a worker thread was doing: a worker holding the GIL
  in a C extension (or an import) stalls the GUI thread as surely as GUI-thread work does. The watcher needs the
  GIL too, so such a stall is seen from its end (the worker still on the line of the long call), and the watcher's
  own lateness is reported beside it. (``faulthandler.dump_traceback_later``, which needs no GIL, reads the
  threads' frames while they run and crashed Python 3.11 here.) Garbage collections are timed through
  ``gc.callbacks`` (a collection holds the GIL, so the watcher cannot sample it) and are a blocker of their own.
  The blocker table shares each stall's time among its samples: a sampling profile of the GUI thread's stalls.

Under Xvfb napari draws with Mesa's software OpenGL, so drawing costs more than on a real GPU; a loaded machine
stretches every number. Only the widget's public surface and napari's public layer API are used.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .stall_meter import REPORTED_STALL_MS, Meter, blockers, format_ms, gc_summary

__all__ = ["add_arguments", "gui"]

NUCLEI_FLUO = "dsb2018/images/0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21.png"
# (path under tests/data, path under the data folder, shipped sample to fall back on, model, what it is)
DEFAULT_IMAGES = (
    (NUCLEI_FLUO, NUCLEI_FLUO, "nuclei.png", "nuclei", "dsb2018 fluorescence nuclei"),
    ("isic2017/images/2.jpg", "isic2017/test/images/2.jpg", "skin_lesion.jpg", "skin-lesion", "isic2017 lesion"),
)
PHASES = ("startup", "idle", "first segment", "segment", "clicks", "strokes", "learn")


def add_arguments(p) -> None:
    """The options of ``napari-clis bench gui`` (added to the subcommand's parser by benchmarks.py)."""
    p.add_argument("--image", action="append", metavar="PATH",
                   help="an image file to measure (repeat for several; default: the dsb2018 fluorescence nuclei "
                        "image with the nuclei model and an isic2017 lesion with the skin-lesion model, from "
                        "tests/data, else the data folder, else the shipped samples)")
    p.add_argument("--model", default="nuclei", help="the model for --image files: a shipped model's name or a file")
    p.add_argument("--data", help="data folder to find the default images in when tests/data is absent "
                   "(default ../shared/data)")
    p.add_argument("--repeats", type=int, default=5, help="warm Segments (and segment() calls) per image, "
                   "interleaved; medians are reported")
    p.add_argument("--clicks", type=int, default=20, help="clicks added to the clicks layer per image")
    p.add_argument("--strokes", type=int, default=6, help="brush strokes painted on the segmentation per image")
    p.add_argument("--learn-steps", type=int, help="learning steps of the one Learn per image (default: the "
                   "model's own, 20); 0: no Learn")
    p.add_argument("--tick-ms", type=float, default=5.0, help="the GUI-thread timer's interval")
    p.add_argument("--stall-ms", type=float, default=100.0, help="a gap longer than this is a stall (the target)")
    p.add_argument("--sample-ms", type=float, default=25.0, help="stack samples every this many ms of a stall")
    p.add_argument("--no-stacks", action="store_true", help="no stack sampling (timings without its overhead)")
    p.add_argument("--settle-ms", type=float, default=500.0, help="the event loop runs this long after each step "
                   "(the layers drawn, deferred updates), inside the step's stall window")
    p.add_argument("--pace-ms", type=float, default=150.0, help="time between two clicks, as a user clicks")
    p.add_argument("--json", help="also write the numbers, the stalls and their stack samples to this JSON file")


# -- stack samples ---------------------------------------------------------------------------------------------

def _default_images(data_root: str | None) -> list[tuple[Path, str, str]]:
    from ..data import default_data_root

    tests_data = Path(__file__).resolve().parents[3] / "tests" / "data"  # a source checkout
    root = Path(data_root) if data_root else default_data_root()
    sample_dir = Path(__file__).resolve().parents[1] / "sample_data"
    out = []
    for in_tests, in_data, sample, model, what in DEFAULT_IMAGES:
        for path in (tests_data / in_tests, root / in_data, sample_dir / sample):
            if path.is_file():
                out.append((path, model, what))
                break
    return out


def _segment_data(layer) -> np.ndarray:
    """What the widget segments of a 2D layer: its pixels, an alpha that is transparency left out."""
    from ..preprocessing import alpha_is_transparency

    data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
    if data.ndim == 3 and data.shape[-1] == 4 and getattr(layer, "rgb", False) and alpha_is_transparency(data):
        data = data[..., :3]
    return data


def _click_points(labels: np.ndarray, n: int, seed: int = 0) -> list[tuple[tuple[float, float], int]]:
    """``n`` clicks a user might make: two in three a foreground click on background (an object the model
    missed), one in three a background click on the foreground (a false object), away from the border."""
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    m = max(2, min(h, w) // 16)
    inner = np.zeros_like(labels, bool)
    inner[m:h - m, m:w - m] = True
    fg = np.argwhere((labels > 0) & inner)
    bg = np.argwhere((labels == 0) & inner)
    out = []
    for i in range(n):
        cls, pool = (0, fg) if i % 3 == 2 and len(fg) else (1, bg if len(bg) else fg)
        y, x = pool[rng.integers(len(pool))]
        out.append(((float(y), float(x)), cls))
    return out


def _stroke_path(shape, k: int, brush: int) -> list[tuple[float, float]]:
    """The mouse positions of brush stroke ``k``: a diagonal line over part of the image, a brush radius apart."""
    h, w = shape
    rng = np.random.default_rng(100 + k)
    y0, x0 = rng.uniform(0.15, 0.5) * h, rng.uniform(0.15, 0.5) * w
    y1, x1 = y0 + rng.uniform(0.2, 0.4) * h, x0 + rng.uniform(0.2, 0.4) * w
    n = max(2, int(np.hypot(y1 - y0, x1 - x0) / max(1, brush / 2)))
    return [(float(y), float(x)) for y, x in zip(np.linspace(y0, y1, n), np.linspace(x0, x1, n))]


# -- one image ------------------------------------------------------------------------------------------------------

def _press_and_wait(meter: Meter, widget, button, settle: float, timeout: float = 600.0) -> tuple[float, float]:
    """Press ``button`` inside the event loop; seconds from the press until the dock is no longer busy, and until
    the first tick at which the status says "Segmented" (the segmentation is written in the callback that says
    so; its objects may follow; the first figure when it never did)."""
    pressed = {}

    def press():
        pressed["t"] = time.perf_counter()
        button.native.click()

    done = meter.spin(until=lambda: not widget.busy, settle=settle, actions=[(0.0, press)], timeout=timeout,
                      watch=lambda: "t" in pressed and widget.status.startswith("Segmented"))
    shown = meter.watched_at if meter.watched_at is not None else done
    return done - pressed["t"], shown - pressed["t"]


def _timed_press(widget, button, layer, settle: float, timeout: float = 600.0) -> tuple[float, float]:
    """As :func:`_press_and_wait`, without the meter: no timer ticking nor stack samples while the press is timed
    (a Python call every few milliseconds on the GUI thread takes the GIL from the worker: the widget's
    ``segment()`` ran up to 1.3x slower under the meter's 5 ms ticks than with the event loop left alone, as in
    napari). *Shown*: the first turn of the event loop after ``layer`` (the segmentation) is drawn again with the
    status saying "Segmented" (napari's ``set_data`` event: the layer refreshed); *done*: a 20 ms poll of
    ``widget.busy``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop, at = QEventLoop(), {}

    def after_write():
        if "shown" not in at and widget.status.startswith("Segmented"):
            at["shown"] = time.perf_counter()

    def written(event=None):
        if "press" in at and "shown" not in at:
            QTimer.singleShot(0, after_write)

    def check():
        now = time.perf_counter()
        if "press" in at and "done" not in at and not widget.busy:
            at["done"] = now
            QTimer.singleShot(int(round(settle * 1000)), loop.quit)
        elif now - at.get("press", now) > timeout:
            loop.quit()

    def press():
        at["press"] = time.perf_counter()
        button.native.click()

    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(check)
    layer.events.set_data.connect(written)
    try:
        QTimer.singleShot(0, press)
        poll.start()
        loop.exec()
    finally:
        poll.stop()
        layer.events.set_data.disconnect(written)
    if "done" not in at:
        raise TimeoutError(f"Segment still not done after {timeout:g} s")
    return at["done"] - at["press"], at.get("shown", at["done"]) - at["press"]


def _bench_image(path: Path, model: str, what: str, args, meter: Meter) -> dict:
    import napari_clis
    from napari_clis import ClisSession

    name = what or path.name
    torch_before = "torch" in sys.modules
    viewer, widget = napari_clis.annotate(None, model=model)
    try:
        layer = viewer.open(str(path), plugin="napari")[0]
        widget.set_image(layer)
        data = _segment_data(layer)
        shape = tuple(int(s) for s in data.shape)
        settle = args.settle_ms / 1000
        with meter.measuring(name, "startup"):  # the window and the image drawn (napari's own, not a target)
            meter.spin(1.0)
        with meter.measuring(name, "idle"):
            meter.spin(1.0)
        out = {"image": name, "path": str(path), "model": model, "shape": list(shape)}

        # (a) the first Segment: the model loaded (and torch imported, for the first image) in the worker
        with meter.measuring(name, "first segment"):
            first, first_shown = _press_and_wait(meter, widget, widget.controls.run_button, settle)
        if "Segmented" not in widget.status:
            raise RuntimeError(f"the widget did not segment {path}: {widget.status}")
        t = time.perf_counter()
        base = ClisSession.from_pretrained(model, device=widget.device) if not Path(model).suffix == ".pt" else \
            ClisSession.from_checkpoint(model, device=widget.device)
        base.n_samples = int(widget.samples)
        result = base.segment(data)
        first_base = time.perf_counter() - t
        out["first"] = {"widget_s": round(first, 3), "shown_s": round(first_shown, 3),
                        "load_and_segment_s": round(first_base, 3),
                        "torch_imported_in_worker": not torch_before}

        # (b) warm Segments against segment(), and against the same work through the API (segment(), then the
        # session's objects and clicks ready and the suggestions, as the widget shows them), interleaved
        t_widget, t_shown, t_base, t_core = [], [], [], []
        for r in range(args.repeats):
            for which in (("base", "core", "widget") if r % 2 == 0 else ("widget", "core", "base")):
                if which == "base":
                    t = time.perf_counter()
                    result = base.segment(data)
                    t_base.append(time.perf_counter() - t)
                elif which == "core":
                    t = time.perf_counter()
                    result = base.segment(data)
                    _ = base.labels  # the objects made, the clicks ready (the widget's layers show them)
                    inter = base.interaction  # the suggestions: whole objects, or regions
                    if widget.controls.suggest.value and base.n_samples:
                        inter.suggest_objects(16) if inter.mode == "object" else inter.suggest(16)
                    t_core.append(time.perf_counter() - t)
                else:
                    everything, seen = _timed_press(widget, widget.controls.run_button, viewer.layers["segmentation"],
                                                    settle)
                    t_widget.append(everything)
                    t_shown.append(seen)
        for _ in range(args.repeats):  # the stalls of warm Segments: pressed again under the meter
            with meter.measuring(name, "segment"):
                _press_and_wait(meter, widget, widget.controls.run_button, settle)
        med_w, med_s, med_b, med_c = (float(np.median(v)) for v in (t_widget, t_shown, t_base, t_core))
        # "ratio": press -> segmentation shown against segment() (the target); "ratio_core": press -> everything
        # shown (objects, suggestions) against segment() + objects + suggestions through the API
        out["segment"] = {"widget_s": [round(v, 3) for v in t_widget], "shown_s": [round(v, 3) for v in t_shown],
                          "segment_s": [round(v, 3) for v in t_base], "core_s": [round(v, 3) for v in t_core],
                          "widget_median_s": round(med_w, 3), "shown_median_s": round(med_s, 3),
                          "segment_median_s": round(med_b, 3), "core_median_s": round(med_c, 3),
                          "ratio": round(med_s / med_b, 3), "ratio_core": round(med_w / med_c, 3),
                          "ratio_pairs_median": round(float(np.median(np.divide(t_shown, t_base))), 3)}

        # (d) clicks, added to the clicks layer as napari adds a user's click, at a user's pace
        clicks = viewer.layers["clicks"]
        latencies = []

        def click(yx, cls):
            def do():
                widget.set_click_class(cls)
                t = time.perf_counter()
                clicks.add(np.asarray([yx]))
                latencies.append(time.perf_counter() - t)
            return do

        plan = _click_points(np.asarray(result.labels), args.clicks)
        if plan:
            with meter.measuring(name, "clicks"):
                meter.spin(until=lambda: not widget.propagating, settle=settle,
                           actions=[(args.pace_ms / 1000, click(yx, c)) for yx, c in plan])
        out["clicks"] = {"n": len(latencies), "add_ms_median": round(float(np.median(latencies)) * 1000, 1)
                         if latencies else None,
                         "add_ms_max": round(float(np.max(latencies)) * 1000, 1) if latencies else None,
                         "applied": widget.click_status}

        # (e) brush strokes through the Labels layer's paint, one mouse move per event, one undo entry per stroke
        seg = viewer.layers["segmentation"]
        brush = max(3, min(shape[:2]) // 24)
        seg.brush_size = brush
        actions = []
        for k in range(args.strokes):
            label = 1 if k % 2 == 0 else 0
            box = {}

            def begin(box=box):
                box["cm"] = seg.block_history()
                box["cm"].__enter__()

            def end(box=box):
                box["cm"].__exit__(None, None, None)

            actions.append((args.pace_ms / 1000, begin))
            actions += [(0.008, lambda yx=yx, label=label: seg.paint(yx, label, refresh=True))
                        for yx in _stroke_path(shape[:2], k, brush)]
            actions.append((0.0, end))
        if actions:
            with meter.measuring(name, "strokes"):
                meter.spin(until=lambda: not widget.propagating, settle=settle, actions=actions)
        out["strokes"] = {"n": args.strokes, "brush": brush}

        # (c) Learn, once (the corrected segmentation is what it learns from)
        if args.learn_steps is None or args.learn_steps > 0:
            if args.learn_steps is not None:
                widget.session.learn_settings.steps = int(args.learn_steps)
            steps = widget.session.learn_settings.steps
            with meter.measuring(name, "learn"):
                t_learn, _ = _press_and_wait(meter, widget, widget.controls.learn_button, settle)
            if "learn" not in widget.threads:  # refused, or failed before its worker started
                raise RuntimeError(f"Learn did not run on {path} (see the error above); status: {widget.status}")
            out["learn"] = {"steps": int(steps), "widget_s": round(t_learn, 3), "status": widget.status}
        out["threads"] = widget.threads
        out["stalls"] = {ph: meter.stats(name, ph) for ph in PHASES if meter.stats(name, ph)}
        return out
    finally:
        viewer.close()


# -- the report ----------------------------------------------------------------------------------------------------

def report(results: list[dict], top: list[dict], stall_ms: float, machine: str, gcs: dict | None = None) -> str:
    lines = [f"Machine: {machine}", "",
             "| image | px | first Segment (widget): shown / all | load + first segment() | "
             "warm Segment: segmentation shown (median) | warm segment() (median) | ratio (target <= 1.2) | "
             "warm Segment: all shown (median) | segment() + objects + suggestions | ratio to it |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f, s = r["first"], r["segment"]
        torch_note = ", torch imported" if f["torch_imported_in_worker"] else ""
        lines.append(f"| {r['image']} ({r['model']}) | {'x'.join(map(str, r['shape'][:2]))} | "
                     f"{f['shown_s']:.2f} / {f['widget_s']:.2f} s (model loaded in the worker{torch_note}) | "
                     f"{f['load_and_segment_s']:.2f} s | {s['shown_median_s']:.2f} s | {s['segment_median_s']:.2f} s"
                     f" | **{s['ratio']:.2f}** | {s['widget_median_s']:.2f} s | {s['core_median_s']:.2f} s | "
                     f"{s['ratio_core']:.2f} |")
    over = f"over_{stall_ms:g}_ms"
    lines += ["", f"Event-loop gaps on the GUI thread (target: none over {stall_ms:g} ms):", "",
              f"| image | phase | s | ticks | median gap ms | p99 ms | longest ms | gaps > {stall_ms:g} ms |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for phase, st in r["stalls"].items():
            flag = " **!**" if st["longest_ms"] > stall_ms else ""
            lines.append(f"| {r['image'].split(' (')[0]} | {phase} | {st['seconds']:.1f} | {st['ticks']} | "
                         f"{st['median_ms']:.1f} | {format_ms(st['p99_ms'])} | {format_ms(st['longest_ms'])}{flag} | "
                         f"{st[over]} |")
    extra = []
    for r in results:
        c = r["clicks"]
        if c["n"]:
            extra.append(f"- {r['image']}: {c['n']} clicks, `layer.add` (with the propagation it triggers on the GUI "
                         f"thread) median {format_ms(c['add_ms_median'])} ms, max {format_ms(c['add_ms_max'])} ms.")
        if "learn" in r:
            extra.append(f"- {r['image']}: Learn ({r['learn']['steps']} steps) {r['learn']['widget_s']:.1f} s.")
        extra.append(f"- {r['image']}: heavy steps ran in threads {r['threads']}.")
    if gcs is not None and gcs["n"]:
        extra.append(f"- Garbage collections of 5 ms or more: {gcs['n']} ({gcs['generation_2']} of generation 2), "
                     f"longest {gcs['longest_ms']:.0f} ms, {gcs['total_ms']:.0f} ms in all, by thread "
                     f"{gcs['threads']}; {gcs['in_stalls_ms']:.0f} ms of the stalls were a collection (it holds the "
                     "GIL: every thread waits).")
    lines += [""] + extra
    if top:
        lines += ["", "Top blockers: the GUI thread's stack sampled during the stalls of at least "
                  f"{REPORTED_STALL_MS:g} ms, each stall's time shared among its samples (where: the innermost "
                  "product frames, caller first; when the GUI thread ran no Python, the worker's):", "",
                  "| what | where | ~ms | samples | stalls | longest stall ms | innermost napari / vispy frame | "
                  "phases |", "|---|---|---|---|---|---|---|---|"]
        for g in top[:15]:
            lines.append(f"| {g['category']} | `{g['where']}` | {g['ms']:.0f} | {g['samples']} | {g['stalls']} | "
                         f"{g['longest_stall_ms']:.0f} | `{g['detail']}` | {'; '.join(g['phases'])} |")
    return "\n".join(lines)


def gui(args) -> int:
    """``napari-clis bench gui``: see the module's docstring."""
    from qtpy.QtWidgets import QApplication

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and \
            os.environ.get("QT_QPA_PLATFORM", "") not in ("offscreen", "minimal") and sys.platform.startswith("linux"):
        print("napari-clis bench gui: needs a display; on a server run it as `xvfb-run -a napari-clis bench gui`.",
              file=sys.stderr)
        return 2
    images = [(Path(p), args.model, "") for p in args.image] if args.image else _default_images(args.data)
    missing = [str(p) for p, _, _ in images if not p.is_file()]
    if missing or not images:
        print(f"napari-clis bench gui: no image file {', '.join(missing) or '(no default image found)'}",
              file=sys.stderr)
        return 2
    from napari.qt import get_qapp

    get_qapp()
    models = tempfile.TemporaryDirectory(prefix="clis-bench-gui-models-")  # Learn autosaves there, not ~/.napari-clis
    old_models = os.environ.get("NAPARI_CLIS_MODELS")
    os.environ["NAPARI_CLIS_MODELS"] = models.name
    meter = Meter(args.tick_ms, args.stall_ms, args.sample_ms, stacks=not args.no_stacks)
    results = []
    try:
        for path, model, what in images:
            results.append(_bench_image(path, model, what, args, meter))
            QApplication.processEvents()
    finally:
        meter.finish()
        if old_models is None:
            os.environ.pop("NAPARI_CLIS_MODELS", None)
        else:
            os.environ["NAPARI_CLIS_MODELS"] = old_models
        models.cleanup()
    from .benchmarks import _machine

    machine = _machine()
    top = blockers(meter.stalls, REPORTED_STALL_MS)
    gcs = gc_summary(meter.collections, meter.stalls)
    print(report(results, top, args.stall_ms, machine, gcs))
    if args.json:
        payload = {"machine": machine, "tick_ms": args.tick_ms, "stall_ms": args.stall_ms,
                   "sample_ms": None if args.no_stacks else args.sample_ms, "images": results, "blockers": top,
                   "garbage_collection": dict(gcs, collections=meter.collections),
                   "stalls": [{"image": s.image, "phase": s.phase, "ms": round(s.ms, 1), "gc_ms": s.gc_ms,
                               "samples": s.samples} for s in meter.stalls]}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0
