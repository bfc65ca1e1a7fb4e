"""The stall meter of ``napari-clis bench gui`` (:mod:`.gui`): a timer on the GUI thread whose late ticks are stalls,
a watcher thread that samples every thread's Python stack during one, and the attribution of each stall to what
blocked the GUI thread (its own code, or a worker holding the GIL), with garbage collections timed apart."""

from __future__ import annotations

import gc
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

REPORTED_STALL_MS = 50.0  # gaps at least this long are kept, with their stack samples, for the blocker table


def _short(path: str) -> str:
    """A frame's file, from its package on (``napari/layers/labels/labels.py``)."""
    p = path.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/", "/src/", "/lib/python"):
        if marker in p:
            p = p.split(marker, 1)[1]
            break
    return p


def _is_harness(path: str) -> bool:
    return _short(path).endswith("napari_clis/evaluation/gui.py")


def _is_product(path: str) -> bool:
    p = _short(path)
    return p.startswith("napari_clis/") and "/evaluation/" not in p and not p.endswith("napari_clis/cli.py")


def _name(frame, line: bool = False) -> str:
    file, n, func = frame
    s = _short(file)
    s = s.split("/", 1)[1] if s.startswith("napari_clis/") else s
    return f"{s}:{n} {func}" if line else f"{s}:{func}"


# what the innermost product frame of a GUI-thread sample does (checked in this order, on the product frames)
_PRODUCT_CATEGORIES = (
    ("layer creation (add_labels / add_image / add_points)", lambda fr: any(
        f in ("add_labels", "add_image", "add_points", "add_layer") for _, _, f in fr)),
    ("geometry copied onto a layer (6 transform setters)", lambda fr: fr[0][2] == "copy_geometry"),
    ("core computation (clicks, propagation, suggestions)", lambda fr: any(m in _short(fr[0][0]) for m in (
        "interactive.py", "propagation.py", "objects.py", "instances.py", "superpixels.py", "uncertainty.py"))),
    ("suggestions layer update", lambda fr: fr[0][2] == "show_suggestions"),
    ("layer data writes", lambda fr: fr[0][2] in ("write_plane", "write", "merge") or "annotation_state" in fr[0][0]),
)
# what the GUI thread does outside the product's code (innermost frame first)
_LIBRARY_CATEGORIES = (
    ("vispy texture upload", lambda s, f: s.startswith(("vispy/", "OpenGL/")) and (
        "texture" in s.lower() or "glTex" in f)),
    ("vispy draw (OpenGL)", lambda s, f: s.startswith(("vispy/gloo", "vispy/app", "OpenGL/")) or "draw" in f),
    ("labels contour", lambda s, f: "contour" in f),
    ("Qt painting / widgets", lambda s, f: s.startswith(("napari/_qt", "magicgui/", "qtpy/", "superqt/"))),
    ("napari events", lambda s, f: s.startswith(("napari/", "psygnal/", "vispy/"))),
)
_IDLE_FILES = ("threading.py", "queue.py", "selectors.py", "concurrent/futures")


def _library_category(frames) -> str:
    for file, _line, func in frames:
        s = _short(file)
        for name, rule in _LIBRARY_CATEGORIES:
            if rule(s, func):
                return name
    return "other"


def _describe(frames) -> tuple[str, str, str]:
    """(category, where, detail) of one thread's stack (innermost frame first)."""
    if any(f.startswith("<frozen importlib") for f, _, _ in frames):
        modules = [_short(f) for f, _, fn in frames if fn == "<module>" and not f.startswith("<frozen")]
        product = [fr for fr in frames if _is_product(fr[0]) and fr[2] != "<module>"]
        what = modules[-1].split("/")[0] if modules else "?"
        return (f"import of {what}", _name(product[0]) if product else "(no product frame)",
                " < ".join(modules[-3:]))
    product = [fr for fr in frames if _is_product(fr[0])]
    inner = [fr for fr in frames if _short(fr[0]).startswith(("napari/", "vispy/"))]
    detail = _name(inner[0], line=True) if inner else (_name(frames[0], line=True) if frames else "")
    if product:
        category = next((name for name, rule in _PRODUCT_CATEGORIES if rule(product)), f"widget: {product[0][2]}")
        where = " > ".join(_name(fr) for fr in reversed(product[:2]))
        return category, where, detail
    category = _library_category(frames)
    return category, (_name(inner[0]) if inner else detail), detail


def attribute(dump: list[dict], gui_ident: int) -> dict:
    """What one stack sample (per thread ``{"ident", "frames": [(file, line, function), ...]}``, innermost frame
    first) says the GUI thread was blocked by: ``category``, ``where`` (the innermost two product frames, caller
    first, or the innermost napari / vispy frame), ``detail`` and the ``stack`` (innermost 30 frames).

    The GUI thread's frames are cut at the harness's (the event loop it runs). When nothing runs above it (the
    GUI thread waits for the GIL, or Qt works in C++), the worker thread running product code is described
    instead (``thread: "worker"``)."""
    gui = next((t for t in dump if t["ident"] == gui_ident), None)
    frames = []
    for fr in gui["frames"] if gui is not None else []:
        if _is_harness(fr[0]):
            break
        frames.append(fr)
    if frames:
        category, where, detail = _describe(frames)
        return {"thread": "GUI", "category": category, "where": where, "detail": detail,
                "stack": [_name(fr, line=True) for fr in frames[:30]]}
    best = None
    for t in dump:
        if t["ident"] == gui_ident or not t["frames"] or any(m in _short(t["frames"][0][0]) for m in _IDLE_FILES):
            continue  # the GUI thread, or a thread waiting on a lock or a queue
        score = sum(_is_product(f) for f, _, _ in t["frames"])
        if best is None or score > best[0]:
            best = (score, t["frames"])
    if best is None:
        return {"thread": "GUI", "category": "Qt event loop (C++, no Python frame)", "where": "-", "detail": "",
                "stack": []}
    category, where, detail = _describe(best[1])
    return {"thread": "worker", "category": f"GIL held by a worker: {category}", "where": where, "detail": detail,
            "stack": [_name(fr, line=True) for fr in best[1][:30]]}


def _frames(frame) -> list[tuple[str, int, str]]:
    """A thread's stack, innermost frame first (no source lines read: the watcher holds the GIL meanwhile)."""
    out = []
    while frame is not None:
        out.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return out


# -- the event-loop meter ----------------------------------------------------------------------------------------

@dataclass
class Stall:
    phase: str
    image: str
    ms: float
    start: float  # perf_counter() of the tick before the gap
    end: float  # and of the tick after it
    samples: list = field(default_factory=list)  # attribute() of each stack sample taken during it
    gc_ms: float = 0.0  # of it, the time the garbage collector ran (in any thread: it holds the GIL)


class Meter:
    """A timer on the GUI thread: the gaps between its ticks per phase; long gaps with the stack samples a watcher
    thread took while the timer had not ticked."""

    def __init__(self, tick_ms: float, stall_ms: float, sample_ms: float, stacks: bool):
        from qtpy.QtCore import Qt, QTimer

        self.tick_s, self.stall_ms, self.sample_s, self.stacks = tick_ms / 1000, stall_ms, sample_ms / 1000, stacks
        self.gaps: dict[tuple[str, str], list[float]] = {}
        self.stalls: list[Stall] = []
        self.image, self.phase = "", "-"  # "-": between the measured steps (the harness's own work)
        self.gui_ident = threading.get_ident()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(max(1, int(round(tick_ms))))
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.until = None
        self.met_at = None
        self.watch, self.watched_at = None, None
        self.loop = None
        self.samples: list[tuple[float, float, list]] = []  # (time, watcher lateness s, threads) from the watcher
        self._watching = threading.Event()
        self._closed = False
        self._watcher = None
        self.collections: list[dict] = []  # garbage collections of at least 5 ms (their thread, generation, time)
        self._gc_start = threading.local()
        gc.callbacks.append(self._on_gc)
        if stacks:
            self._watcher = threading.Thread(target=self._watch, name="bench-gui-watcher", daemon=True)
            self._watcher.start()

    def _on_gc(self, phase: str, info: dict) -> None:
        """gc's callback, in the thread that collects: a collection holds the GIL, so it stalls every thread."""
        now = time.perf_counter()
        if phase == "start":
            self._gc_start.t = now
            return
        start = getattr(self._gc_start, "t", None)
        if start is not None and now - start >= 0.005:
            self.collections.append({"start": start, "ms": round((now - start) * 1000, 1),
                                     "generation": info.get("generation"), "collected": info.get("collected"),
                                     "thread": "GUI" if threading.get_ident() == self.gui_ident else
                                     threading.current_thread().name, "phase": self.phase, "image": self.image})

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._closed = True
        self._watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _watch(self) -> None:
        """The watcher thread: every ``sample_s``, while the GUI thread's timer is two intervals late, every
        thread's stack (innermost frame first). The watcher needs the GIL: when it wakes late, a thread held the GIL
        (or the machine starved it), and the stacks it takes then are kept, dated to the middle of its wait."""
        me = threading.get_ident()
        while not self._closed:
            self._watching.wait()
            if self._closed:
                return
            expected = time.perf_counter() + self.sample_s
            time.sleep(self.sample_s)
            now = time.perf_counter()
            last, late = self.last, now - expected
            stale = last is not None and now - last >= max(2 * self.tick_s, self.sample_s)
            if not self._watching.is_set() or not (stale or late > self.sample_s):
                continue
            threads = [{"ident": ident, "frames": _frames(frame)}
                       for ident, frame in sys._current_frames().items() if ident != me]
            self.samples.append((now if late <= self.sample_s else (expected + now) / 2, late, threads))

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            gap = now - self.last
            self.gaps.setdefault((self.image, self.phase), []).append(gap)
            if gap * 1000 >= REPORTED_STALL_MS:
                self.stalls.append(Stall(self.phase, self.image, gap * 1000, self.last, now))
        self.last = now
        if self.met_at is None and self.until is not None and self.until():
            self.met_at = now
        if self.watched_at is None and self.watch is not None and self.watch():
            self.watched_at = now
        if self.met_at is not None and now >= self.end_not_before and now - self.met_at >= self.settle_s:
            self.loop.quit()
        elif now > self.deadline:
            self.loop.quit()

    def finish(self) -> None:
        """Stop the watcher; give each stall the stack samples taken during it."""
        self.close()
        samples = sorted(self.samples, key=lambda s: s[0])
        times = np.array([s[0] for s in samples])
        for stall in self.stalls:
            lo, hi = np.searchsorted(times, stall.start), np.searchsorted(times, stall.end, side="right")
            stall.samples = []
            for t, late, threads in samples[lo:hi]:
                a = attribute(threads, self.gui_ident)
                a["watcher_late_ms"] = round(late * 1000, 1)
                collecting = next((c for c in self.collections if c["start"] <= t <= c["start"] + c["ms"] / 1000),
                                  None)
                if collecting is not None:  # the frames are only where the collection happened to start
                    a["detail"] = f"started in {a['where']} ({a['thread']} thread)"
                    a["category"] = f"garbage collection (generation {collecting['generation']})"
                    a["where"] = f"gc in the {collecting['thread']} thread"
                stall.samples.append(a)
            stall.gc_ms = round(sum(max(0.0, min(stall.end, c["start"] + c["ms"] / 1000) - max(stall.start, c["start"]))
                                    for c in self.collections) * 1000, 1)

    def spin(self, seconds: float = 0.0, *, until=None, settle: float = 0.0, actions=(), timeout: float = 600.0,
             watch=None):
        """Run Qt's event loop (the timer ticking) for at least ``seconds``; with ``until``, until it is true and
        ``settle`` seconds more. ``actions``: ``(delay in s, callable)`` run inside the loop, each ``delay`` after
        the one before (as a user's events arrive). Returns the time ``until`` first held (None: it never did);
        the first tick at which ``watch()`` held is left in ``watched_at``."""
        from qtpy.QtCore import QEventLoop, QTimer

        self.loop = QEventLoop()
        self.met_at = None
        self.watch, self.watched_at = watch, None
        start = time.perf_counter()
        self.end_not_before = start + seconds
        self.deadline = start + timeout
        self.settle_s = settle
        pending = list(actions)
        finished = {"actions": not pending}

        def next_action():
            if not pending:
                finished["actions"] = True
                return
            delay, fn = pending.pop(0)
            QTimer.singleShot(int(round(delay * 1000)), lambda: (fn(), next_action()))

        self.until = (lambda: finished["actions"] and (until is None or until())) if pending or until else None
        if self.until is None:  # a plain wait: quits once `seconds` have passed
            self.until = lambda: True
        next_action()
        self.last = time.perf_counter()  # the first gap: from the loop's start
        self.timer.start()
        self._watching.set()
        self.loop.exec()
        self._watching.clear()
        self.timer.stop()
        self.last = None
        if time.perf_counter() > self.deadline:
            raise TimeoutError(f"{self.phase} of {self.image}: still not done after {timeout:g} s")
        return self.met_at

    @contextmanager
    def measuring(self, image: str, phase: str):
        self.image, self.phase = image, phase
        try:
            yield self
        finally:
            self.phase = "-"

    def stats(self, image: str, phase: str) -> dict | None:
        gaps = self.gaps.get((image, phase))
        if not gaps:
            return None
        ms = np.asarray(gaps) * 1000
        return {"ticks": int(ms.size), "seconds": round(float(ms.sum()) / 1000, 3),
                "longest_ms": round(float(ms.max()), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "median_ms": round(float(np.median(ms)), 2),
                f"over_{self.stall_ms:g}_ms": int((ms > self.stall_ms).sum())}


# -- the images ----------------------------------------------------------------------------------------------------

def blockers(stalls: list[Stall], min_ms: float) -> list[dict]:
    """A sampling profile of the GUI thread during stalls of at least ``min_ms``: the time the garbage collector
    ran in a stall is its own row (the watcher cannot sample while it holds the GIL), the rest of the stall's time
    is shared out among its other stack samples, summed by (category, where); most time first. A stall without
    samples is counted as "not sampled"."""
    groups: dict[tuple[str, str], dict] = {}

    def add(key, ms, s, sampled, detail="", stack=()):
        g = groups.setdefault(key, {"category": key[0], "where": key[1], "ms": 0.0, "samples": 0, "stalls": 0,
                                    "longest_stall_ms": 0.0, "phases": [], "detail": detail, "stack": list(stack),
                                    "_seen": set()})
        g["ms"] += ms
        g["samples"] += sampled
        if id(s) not in g["_seen"]:
            g["_seen"].add(id(s))
            g["stalls"] += 1
            if s.ms > g["longest_stall_ms"]:
                g["longest_stall_ms"], g["detail"], g["stack"] = s.ms, detail, list(stack)
        label = f"{s.phase} ({s.image})"
        if label not in g["phases"]:
            g["phases"].append(label)

    for s in stalls:
        if s.ms < min_ms:
            continue
        if s.gc_ms > 0:
            add(("garbage collection", "gc (holds the GIL: every thread waits)"), s.gc_ms, s, 0)
        samples = [a for a in s.samples if not a["category"].startswith("garbage collection")]
        rest = max(0.0, s.ms - s.gc_ms)
        if not samples:
            if rest >= 1.0:
                add(("not sampled", "(--no-stacks, or no sample in the stall)"), rest, s, 0)
            continue
        for a in samples:
            add((a["category"], a["where"]), rest / len(samples), s, 1, a.get("detail", ""), a.get("stack", []))
    out = sorted(groups.values(), key=lambda g: -g["ms"])
    for g in out:
        del g["_seen"]
        g["ms"], g["longest_stall_ms"] = round(g["ms"], 1), round(g["longest_stall_ms"], 1)
    return out


def format_ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def gc_summary(collections: list[dict], stalls: list[Stall]) -> dict:
    """The garbage collections of at least 5 ms: how many, how long, in which threads, and how much of the
    stalls' time they were."""
    ms = [c["ms"] for c in collections]
    threads: dict[str, int] = {}
    for c in collections:
        threads[c["thread"]] = threads.get(c["thread"], 0) + 1
    return {"n": len(ms), "generation_2": sum(c["generation"] == 2 for c in collections),
            "longest_ms": max(ms, default=0.0), "total_ms": round(sum(ms), 1), "threads": threads,
            "in_stalls_ms": round(sum(s.gc_ms for s in stalls), 1)}
