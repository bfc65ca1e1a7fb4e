"""What the napari widget knows about one viewer, without Qt or napari: plain Python and numpy.

:class:`AnnotationState` is the state of one viewer's annotation work: the :class:`~napari_clis.ClisSession` in
use, which model it is (its key in the Model list), how many of its learned tasks are in a file, the slice being
corrected (the target), the segmentation run going on, a generation number that tells a late result from a
current one, and the :class:`Ledger` of the user's painted edits. The dock widget (``napari_clis._widget``) is a
view over it: a dock closed and opened again on the same viewer goes on with the same state.

:class:`Ledger` keeps, per image and slice (a key ``(source id, slice index)``), the *painted* map (the class
the user painted at each pixel, -1 where nothing is painted: the annotations), the *epochs* map (how many of the
slice's clicks had been made when each pixel was painted: object clicks and strokes are replayed in that order),
the *written* map (what the widget last wrote into the segmentation layer there, so that a new edit is told from
the widget's own writing), and the stack of strokes for undo and redo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .interactive import renumber_epochs

__all__ = ["Ledger", "Stroke", "AnnotationState", "RunRecord", "Target", "painted_dtype", "compact_labels",
           "removed_clicks"]

NOTHING = -1  # a painted map's value where nothing is painted


def painted_dtype(n_classes: int):
    """The smallest integer type of a painted map that holds the model's classes and -1."""
    return np.int8 if n_classes <= 127 else np.int32


def compact_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """A copy of written labels in the smallest type that holds the model's classes (a stack keeps one per slice,
    beside the layer's own data)."""
    labels = np.asarray(labels)
    small = n_classes <= 255 and labels.size and labels.min() >= 0 and labels.max() <= 255
    return np.array(labels, dtype=np.uint8 if small else labels.dtype)


def removed_clicks(old, new) -> list[int] | None:
    """The indices of the clicks of ``old`` that ``new`` lacks, where ``new`` is ``old`` with some clicks deleted
    (points deleted from the layer); None where it is not (clicks added, moved or changed: nothing was deleted)."""
    old, new = list(old), list(new)
    if len(new) >= len(old):
        return None
    removed, j = [], 0
    for i, click in enumerate(old):
        if j < len(new) and new[j] == click:
            j += 1
        else:
            removed.append(i)
    return removed if j == len(new) else None


class Stroke(NamedTuple):
    """One undoable edit of one slice: the flat pixel indices it set, their painted values before (-1: none) and
    their epochs before (None: all 0)."""

    key: tuple
    pixels: np.ndarray
    before: np.ndarray
    epochs: np.ndarray | None = None


def _empty(key) -> Stroke:
    return Stroke(key, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))


class Ledger:
    """The user's painted edits per image and slice, and their undo history (see the module's docstring).

    A stroke entry is a :class:`Stroke`, or ``("group", [Stroke, ...])`` for one stroke over several slices (in a
    3D view), undone and redone as one.
    """

    def __init__(self) -> None:
        self.painted: dict[tuple, np.ndarray] = {}
        self.epochs: dict[tuple, np.ndarray] = {}  # per painted pixel: the slice's clicks made before it (int32)
        self.clicks: dict[tuple, list] = {}  # the slice's clicks as last read (to tell a deleted one)
        self.written: dict[tuple, np.ndarray] = {}
        self.segmented: set[tuple] = set()  # slices segmented since the segmentation layer showed this image
        self.strokes: list = []
        self.undone: list = []
        self.pending = 0  # strokes napari announced whose pixels are not taken in yet

    # -- maps ----------------------------------------------------------------------------------------------------
    def painted_map(self, key, shape, n_classes: int) -> np.ndarray:
        """The painted map of one slice (-1 where nothing is painted), made when first needed."""
        painted = self.painted.get(key)
        if painted is None or painted.shape != tuple(shape):
            painted = self.painted[key] = np.full(tuple(shape), NOTHING, painted_dtype(n_classes))
        return painted

    def epochs_map(self, key, shape) -> np.ndarray:
        """The epochs map of one slice (how many of its clicks had been made when each pixel was painted; read
        where the painted map is >= 0), made when first needed."""
        epochs = self.epochs.get(key)
        if epochs is None or epochs.shape != tuple(shape):
            epochs = self.epochs[key] = np.zeros(tuple(shape), np.int32)
        return epochs

    def clicks_now(self, key, clicks) -> list[int] | None:
        """The slice's clicks as the layer holds them now (any comparable items, in order). Where clicks were
        deleted since they were last read, strokes made after a deleted click stay after the same clicks (their
        epochs renumbered, :func:`~napari_clis.interactive.renumber_epochs`); returns the deleted indices."""
        clicks = list(clicks)
        removed = removed_clicks(self.clicks.get(key, []), clicks)
        self.clicks[key] = clicks
        if removed and key in self.epochs:
            self.epochs[key] = renumber_epochs(self.epochs[key], removed)

            def renumbered(stroke):
                stroke = _full(stroke)
                return stroke._replace(epochs=renumber_epochs(stroke.epochs, removed)) if stroke.key == key else stroke

            for stack in (self.strokes, self.undone):  # what undo and redo bring back, too
                stack[:] = [("group", [renumbered(p) for p in e[1]]) if _is_group(e) else renumbered(e) for e in stack]
        return removed

    def painted_for_run(self, key, n_classes: int) -> np.ndarray | None:
        """A copy of a slice's painted map for a worker, if it holds any edit of a known class (else None)."""
        painted = self.painted.get(key)
        if painted is not None and (painted >= 0).any() and int(painted.max()) < n_classes:
            return painted.copy()
        return None

    def has_painting(self, source) -> bool:
        """Whether any slice of the image ``source`` holds a painted edit."""
        return any(bool((m >= 0).any()) for (sid, _), m in self.painted.items() if sid == source)

    def segmented_slices(self, source) -> list:
        return [idx for (sid, idx) in self.segmented if sid == source]

    def wrote(self, key, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """The widget wrote ``labels`` into the slice (a new segmentation of it): kept compact, and returned."""
        written = self.written[key] = compact_labels(labels, n_classes)
        self.segmented.add(key)
        return written

    def forget_written(self) -> None:
        """The segmentation layer shows none of what was written (reset, or made again): edits are found against
        zeros from now on (the painted maps stay: they are the user's)."""
        self.written.clear()
        self.segmented.clear()

    def new_segmentation(self) -> None:
        """A new segmentation of the slice being corrected: undo does not bring back strokes made on an earlier
        one (napari's own history of the layer is emptied too)."""
        self.strokes, self.undone, self.pending = [], [], 0

    # -- edits ---------------------------------------------------------------------------------------------------
    def absorb(self, key, plane: np.ndarray, n_classes: int, clicks: int = 0) -> tuple[Stroke, int]:
        """New painted edits on one slice become annotations: what differs from what was last written there
        (earlier edits stay annotations even where the propagation has come to agree with them), painted after
        ``clicks`` of the slice's clicks (their epoch).

        Returns the :class:`Stroke` (the new edits and their painted values and epochs before) and how many changed
        pixels hold a label that is not a class (ignored)."""
        plane = np.asarray(plane)
        written = self.written.get(key)
        if written is None or written.shape != plane.shape:  # a slice never segmented: it showed nothing
            written = self.written[key] = np.zeros(plane.shape, np.uint8)
        painted = self.painted_map(key, plane.shape, n_classes)
        diff = plane != written
        bad = diff & ((plane < 0) | (plane >= n_classes))
        pixels = np.flatnonzero(diff & ~bad)
        flat, when = painted.reshape(-1), self.epochs_map(key, plane.shape).reshape(-1)
        before, epochs = flat[pixels].copy(), when[pixels].copy()
        flat[pixels] = plane.reshape(-1)[pixels]
        when[pixels] = clicks
        written.reshape(-1)[pixels] = flat[pixels]  # taken in: not new the next time
        return Stroke(key, pixels, before, epochs), int(bad.sum())

    def is_unchanged(self, key, plane: np.ndarray) -> bool:
        """Whether a slice shows what was last written there (zeros for a slice never segmented)."""
        written = self.written.get(key)
        if written is not None and written.shape == plane.shape:
            return bool(np.array_equal(plane, written))
        return not np.any(plane)

    def push(self, entry) -> None:
        """A new stroke (or group): redo has nothing to bring back any more."""
        self.strokes.append(entry)
        self.undone.clear()

    def record_pending(self, taken: Stroke | None, target_key) -> None:
        """The strokes napari announced become one undo entry each; edits taken together go with the last."""
        pending, self.pending = self.pending, 0
        if pending:
            last = taken if taken is not None else _empty(target_key)
            self.strokes.extend([_empty(target_key)] * (pending - 1) + [last])
            self.undone.clear()

    def push_other_slice(self, taken: Stroke | None, key) -> None:
        """A stroke on a slice other than the one being corrected (kept for it)."""
        self.push(taken if taken is not None else _empty(key))

    def extend_last(self, taken: Stroke) -> None:
        """Pixels written after their stroke was announced: part of the last stroke, if it is of that slice."""
        if self.strokes and not _is_group(self.strokes[-1]) and self.strokes[-1].key == taken.key:
            key, pixels, before, epochs = _full(self.strokes[-1])
            self.strokes[-1] = Stroke(key, np.concatenate([pixels, taken.pixels]),
                                      np.concatenate([before, taken.before]),
                                      np.concatenate([epochs, _full(taken).epochs]))

    def group_with_last(self, parts: list[Stroke], target_key) -> None:
        """Edits of other slices by the last stroke (a 3D view): one undo entry with its part on the target."""
        last = self.strokes.pop() if self.strokes and not _is_group(self.strokes[-1]) and \
            self.strokes[-1].key == target_key else None
        self.push(("group", ([last] if last is not None else []) + list(parts)))

    def step(self, name: str, plane_of) -> set:
        """Undo (``name="undo"``) or redo the last entry's annotations, after napari restored the pixels.

        ``plane_of(key)`` gives the slice as the layer shows it now (or None). Returns the keys touched."""
        source, target = (self.strokes, self.undone) if name == "undo" else (self.undone, self.strokes)
        if not source:
            return set()
        entry = source.pop()
        group = _is_group(entry)
        done, touched = [], set()
        for key, pixels, values, epochs in map(_full, entry[1] if group else [entry]):
            painted, written = self.painted.get(key), self.written.get(key)
            if painted is None or written is None:
                continue
            flat, when = painted.reshape(-1), self.epochs_map(key, painted.shape).reshape(-1)
            done.append(Stroke(key, pixels, flat[pixels].copy(), when[pixels].copy()))
            flat[pixels], when[pixels] = values, epochs
            plane = plane_of(key)
            if plane is not None and plane.shape == written.shape:  # the restored pixels are not new edits
                written.reshape(-1)[pixels] = np.asarray(plane).reshape(-1)[pixels]
            touched.add(key)
        if done:
            target.append(("group", done) if group else done[0])
        return touched

    def merge(self, key, plane: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """What to write into a slice that shows ``plane`` for the propagated ``labels``: pixels the user changed
        since the last write (a stroke while a large image propagated in the background) stay as painted, and stay
        new edits for the stroke that made them; a label that is not a class is replaced."""
        labels = np.asarray(labels)
        written = self.written.get(key)
        if plane.shape == labels.shape and written is not None and written.shape == labels.shape:
            moved = (plane != written) & (plane >= 0) & (plane < n_classes)
            out = np.where(moved, plane, labels).astype(plane.dtype, copy=False)
            written = np.where(moved, written, labels)
        else:
            out, written = labels, labels.copy()
        self.written[key] = np.ascontiguousarray(written)
        return out


def _full(stroke: Stroke) -> Stroke:
    """The stroke with its epochs (zeros where it was made without them)."""
    if stroke.epochs is not None:
        return stroke
    return stroke._replace(epochs=np.zeros(len(stroke.pixels), np.int32))


def _is_group(entry) -> bool:
    return isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and entry[0] == "group"


class Target(NamedTuple):
    """The slice the clicks correct: the image layer (any object; the state does not look into it) and the index
    of the slice over its leading axes (``()`` for a 2D image)."""

    layer: Any
    idx: tuple


@dataclass
class RunRecord:
    """A segmentation run: its image layer, how many slices, how many shown (their segmentation written), how
    many done (their objects too), the last result shown, its generation."""

    layer: Any
    n: int
    generation: int
    done: int = 0
    last: Any = None
    shown: int = 0

    @property
    def finding_objects(self) -> bool:
        """A slice's segmentation is shown and its objects are still being found."""
        return self.shown > self.done


@dataclass
class AnnotationState:
    """One viewer's annotation work (see the module's docstring)."""

    session: Any = None
    model_key: tuple | None = None  # (Model list value, model file or None) of the session
    saved_tasks: int = 0  # how many of the session's tasks are in a file (autosave, or Save model)
    retry_autosave: Path | None = None  # the autosave file a failed autosave left: the next learn saves there again
    target: Target | None = None
    written_base: np.ndarray | None = None  # the propagated labels last written for the target (no paint)
    run: RunRecord | None = None
    generation: int = 0  # bumped by every new run and by anything that makes running results stale
    busy: str | None = None  # "segment" or "learn" while a worker runs
    ledger: Ledger = field(default_factory=Ledger)
    # the dock's options as the user last set them (control name -> value): a dock opened again shows them, even
    # those changed after the last Segment (which the session does not know yet)
    options: dict = field(default_factory=dict)

    def next_generation(self) -> int:
        """A new generation: results of workers started before it are stale."""
        self.generation += 1
        return self.generation

    def is_current(self, generation: int) -> bool:
        return generation == self.generation

    @staticmethod
    def tasks_file(session):
        """The file that holds a session as it is now: its autosave file, else the file it came from, if this
        session wrote or read it and nobody changed it since (``None`` otherwise, or without a session)."""
        if session is None:
            return None
        for path in (session.autosave, session.source):
            if path is not None and session.file_state(path) == "unchanged":
                return path
        return None

    def check_switch(self) -> None:
        """Raise ValueError, with a message for the user, when another model may not replace the session yet:
        learned tasks that are in no file (never saved, or their file deleted or written over since)."""
        old = self.session
        if old is None or not old.tasks:
            return
        state = old.file_state(old.autosave) if old.autosave is not None else None
        lost = state in ("gone", "changed")
        unsaved = len(old.tasks) if lost else len(old.tasks) - self.saved_tasks
        if (old.autosave is None or lost) and unsaved > 0:
            where = {"gone": f" (its file {old.autosave} is gone)",
                     "changed": f" (another window or program wrote over its file {old.autosave})"}.get(state, "")
            raise ValueError(f"{unsaved} of the {len(old.tasks)} learned task(s) of the model in use are not saved in "
                             f"any file{where}. Press Save model first, or choose that model again to go on.")

    def use_session(self, session, key) -> None:
        """A newly loaded session replaces the one in use."""
        self.session, self.model_key, self.saved_tasks = session, key, len(session.tasks)
        self.retry_autosave = None

    def take_over(self) -> None:
        """A new widget takes this state over (the dock closed and opened again): it goes on with the model and
        the edits, and starts correcting once it has segmented; what a worker of the old one still hands back is
        stale (a learn still running stays ``busy``: the session is not used by two threads)."""
        self.target, self.written_base, self.run = None, None, None
        self.next_generation()
