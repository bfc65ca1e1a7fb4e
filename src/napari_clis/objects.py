"""Object-level clicks: each click edits the one object it touches, in a window around it, and nothing else.

For models with many objects per class (nuclei), a click acts on objects rather than on superpixel regions
(:mod:`~napari_clis.interactive` keeps region clicks for one-object models such as the lesion model):

* ``"auto"`` with a foreground class on background **adds** the object there. Its extent is a seeded watershed
  on the edges of the network's foreground probability (and of the image) inside a window of
  ``2 * WINDOW`` object diameters around the click: seeds are the click and the pixels whose probability is
  close to the click's, background seeds the pixels close to the window's background level, the window's
  border and the other objects. Where the object fills the window (far larger than the objects the network
  found: it found only fragments of such objects), the window grows 2x, then 4x. Where the probability does not
  tell the object from its surroundings (a
  nucleus the network missed entirely) the image's intensity takes its place; where neither does, a disc of
  half an object diameter. A piece smaller than ``JOIN_AREA`` of a typical object that touches an object of
  the same class joins it (the missing part of a partly found nucleus).
* ``"auto"`` with a foreground class on an object of another class gives the whole object that class; on an
  object of its own class it changes nothing.
* ``"auto"`` with background (0) on an object **removes** it, whole, when the click is in its core (within the
  object's largest inscribed radius of its centre, or where the object is at least half as thick as at its
  centre); a click farther out **trims** the part of the object on the click's side of the image edge that
  separates it from the core (an overspill), by a seeded watershed between the click and the core, taking only
  pixels the network is no surer of than of the click's (``TRIM_MARGIN``). A click where the network is unsure
  (below ``SURE_FOREGROUND``: the gap in a clump of true nuclei) keeps what it is sure of away from the click (the
  nuclei) and takes the rest near the click; a click where it is sure says that the object itself is false.
* ``"split"`` on an object splits it in two: a watershed of its (smoothed) distance transform, weighted by the
  foreground probability where the network sees the object, from the distance peak nearest the click and the
  highest other peak.
* ``"merge"`` near two objects joins the object under (or nearest) the click with the other object nearest the
  click, within ``MERGE_REACH`` object diameters, and closes the gap between them.

The state is a deterministic replay, over the network's objects, of the user's edits in the order they were made
(:meth:`ObjectEditor.replay`): the strokes painted before the first click (one :class:`PaintStep`), the first
click, the strokes painted after it, the second click, and so on; the last edit of a pixel wins. A paint step
writes exactly its pixels (painted foreground joins the object of its class it touches, or becomes a new object;
:func:`overlay_paint`'s rules), so later clicks act on painted objects as on the network's (a background click
removes a painted blob, a split splits it), and a click may change pixels painted before it, never those painted
after it. Undo is removing a click or a stroke and replaying; each step records what it overwrote, so adding or
removing the last one costs one step's work.

Numpy / scipy / scikit-image only; no Qt, no napari, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["InteractionError", "ObjectClick", "ObjectEditor", "PaintStep", "overlay_paint", "rank_objects",
           "ACTIONS"]

ACTIONS = ("auto", "split", "merge")
WINDOW = 1.5  # half-side of the window an added object is looked for in, in object diameters
WINDOW_GROWTH = (1.0, 2.0, 4.0)  # where the object fills the window, it is looked for in one this much larger
JOIN_AREA = 0.5  # a missed piece smaller than this share of a typical object that touches one joins it
MERGE_REACH = 0.25  # a merge click reaches objects this many object diameters from it (at least 3 px)
MIN_SPLIT_AREA = 0.5  # an object smaller than this share of a typical object is not split
ROUND = 1.25  # an object with one centre, no longer than this times its width and small, is one nucleus: not split
MIN_CONTRAST = 0.08  # foreground probability (or normalised intensity) the click must stand above its window's
SURE_FOREGROUND = 0.95  # a background click keeps the parts of its object the network is this sure of, away from it
TRIM_MARGIN = 0.02  # a trim takes only pixels whose foreground probability is at most the click's plus this
DEFAULT_DIAMETER = 20.0  # px: the typical object diameter when neither the objects nor the model tell one


class InteractionError(ValueError):
    """A click or annotation the interactive module cannot use; the message says why."""


@dataclass(frozen=True)
class ObjectClick:
    """One click: pixel ``(y, x)``, class ``label`` (0 = background) and ``action`` (:data:`ACTIONS`)."""

    y: int
    x: int
    label: int
    action: str = "auto"


class PaintStep:
    """The strokes painted between two clicks (or before the first, or after the last): the flat indices of the
    painted pixels (ascending) and each one's class. Two steps are equal when they paint the same pixels alike."""

    __slots__ = ("pixels", "classes", "_key")

    def __init__(self, pixels, classes):
        self.pixels = np.asarray(pixels, np.int64)
        self.classes = np.asarray(classes, np.int16)
        self._key = (self.pixels.tobytes(), self.classes.tobytes())

    def __eq__(self, other) -> bool:
        return isinstance(other, PaintStep) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __len__(self) -> int:
        return len(self.pixels)

    def __repr__(self) -> str:
        return f"PaintStep({len(self.pixels)} px)"


def _disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _box(y, x, r, shape):
    return (slice(max(0, y - r), min(shape[0], y + r + 1)), slice(max(0, x - r), min(shape[1], x + r + 1)))


def _edges(a: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.sobel(a, 0), ndimage.sobel(a, 1))


class ObjectEditor:
    """The objects of one image under object-level clicks.

    Parameters
    ----------
    probabilities : (K, H, W) float
        The network's class probabilities.
    image : (C, H, W) float
        The normalised image (its channel mean gives the intensity edges).
    labels : (H, W) int
        The network's segmentation (class per pixel).
    instances : (H, W) uint32 array, or a callable returning one
        The network's objects (0 = background); a callable is called the first time the objects are needed.
    diameter : float, optional
        The typical object diameter in px where the objects are too few to measure it (the model's).
    uncertainty : (H, W) float, optional
        The uncertainty map, for ranking objects to review (zeros without it).
    """

    def __init__(self, probabilities, image, labels, instances, *, diameter: float | None = None,
                 uncertainty=None):
        self.probabilities = probabilities
        self.uncertainty = np.zeros(np.shape(labels), np.float32) if uncertainty is None else uncertainty
        self.image = image
        self.base_labels = np.asarray(labels)
        self._base_instances = instances
        self._given_diameter = diameter
        self._diameter: float | None = None
        self._fg: np.ndarray | None = None
        self._grey: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._instances: np.ndarray | None = None
        self._n = 0
        self._ops: list = []  # the steps replayed last: ObjectClick and PaintStep, in order
        self._n_clicks = 0  # the clicks among them
        self._undo: list[list] = []
        self.notes: dict[int, str] = {}  # click index -> why it changed nothing

    # -- what the editor works on -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.base_labels.shape

    @property
    def n_classes(self) -> int:
        return int(self.probabilities.shape[0])

    @property
    def fg(self) -> np.ndarray:
        """(H, W) float32: the foreground probability, ``1 - p(background)``."""
        if self._fg is None:
            self._fg = np.clip(1.0 - np.asarray(self.probabilities[0], np.float32), 0.0, 1.0)
        return self._fg

    @property
    def grey(self) -> np.ndarray:
        if self._grey is None:
            self._grey = np.asarray(self.image, np.float32).mean(0)
        return self._grey

    def base_instances(self) -> np.ndarray:
        if callable(self._base_instances):
            self._base_instances = self._base_instances()
        return self._base_instances

    @property
    def diameter(self) -> float:
        """The typical object diameter (px): of the disc of the median area of the network's objects (at least 3
        of them), else the model's, else :data:`DEFAULT_DIAMETER`; at least 4 px."""
        if self._diameter is None:
            inst = self.base_instances()
            areas = np.bincount(inst.ravel())[1:]
            areas = areas[areas > 0]
            if len(areas) >= 3:
                d = 2.0 * np.sqrt(float(np.median(areas)) / np.pi)
            else:
                d = self._given_diameter or DEFAULT_DIAMETER
            self._diameter = float(max(4.0, d))
        return self._diameter

    @property
    def typical_area(self) -> float:
        return np.pi * (self.diameter / 2) ** 2

    def _start(self) -> None:
        if self._labels is None:
            self._labels = self.base_labels.astype(np.int32, copy=True)
            self._instances = np.array(self.base_instances(), dtype=np.uint32, copy=True)
            self._n = int(self._instances.max()) if self._instances.size else 0
            self._ops, self._undo, self.notes, self._n_clicks = [], [], {}, 0

    @property
    def labels(self) -> np.ndarray:
        """(H, W) int32 after the clicks replayed last (do not modify)."""
        self._start()
        return self._labels

    @property
    def instances(self) -> np.ndarray:
        """(H, W) uint32 after the clicks replayed last, 0 = background, numbered 1..N (do not modify)."""
        self._start()
        return self._instances

    @property
    def applied(self) -> list[ObjectClick]:
        """The clicks replayed last, in order (without the paint steps between them)."""
        return list(self._clicks())

    def _clicks(self):
        return (op for op in self._ops if isinstance(op, ObjectClick))

    # -- the replay --------------------------------------------------------------------------------------
    def replay(self, clicks, strict=(), paint=None) -> None:
        """Make the state that of ``clicks`` (a sequence of :class:`ObjectClick`) applied in order to the network's
        objects, with the strokes of ``paint`` between them: ``paint`` maps an epoch ``e`` (the number of clicks
        made before those strokes) to a :class:`PaintStep`, applied after click ``e - 1`` and before click ``e``
        (epochs from ``len(clicks)`` on: after every click, in their order).

        Only the steps after the longest prefix shared with the steps replayed last are undone and applied.
        A click that cannot apply (a split on background, a merge that reaches one object) changes nothing and
        its reason is kept in :attr:`notes` (by the click's index), unless its index is in ``strict``: then
        :class:`InteractionError` is raised and the state stays that of the previous steps."""
        self._start()
        clicks, paint = list(clicks), dict(paint or {})
        ops: list = []
        for e, click in enumerate(clicks):
            if e in paint:
                ops.append(paint[e])
            ops.append(click)
        ops += [paint[e] for e in sorted(paint) if e >= len(clicks)]
        ops = [op for op in ops if not isinstance(op, PaintStep) or len(op)]
        old = list(self._ops)
        k = 0
        while k < min(len(old), len(ops)) and old[k] == ops[k]:
            k += 1
        self._undo_to(k)
        try:
            for i in range(k, len(ops)):
                self._apply(ops[i], strict=strict)
        except InteractionError:
            self._undo_to(k)
            for i in range(k, len(old)):
                self._apply(old[i], strict=())
            raise

    def _restore(self, log) -> None:
        for box, old_l, old_i, n in reversed(log):
            if box is not None:
                self._labels[box] = old_l
                self._instances[box] = old_i
            self._n = n

    def _undo_to(self, k: int) -> None:
        while len(self._ops) > k:
            self._restore(self._undo.pop())
            if isinstance(self._ops.pop(), ObjectClick):
                self._n_clicks -= 1
                self.notes.pop(self._n_clicks, None)

    def _apply(self, op, *, strict) -> None:
        log: list = []
        if isinstance(op, PaintStep):
            self._paint(op, log)
            self._ops.append(op)
            self._undo.append(log)
            return
        index = self._n_clicks
        try:
            note = self._edit(op, log)
        except InteractionError as e:
            self._restore(log)  # a failure half way leaves nothing behind
            log = []
            if index in strict:
                raise InteractionError(f"click {index} at ({op.y}, {op.x}): {e}") from None
            note = str(e)
        self._ops.append(op)
        self._undo.append(log)
        self._n_clicks += 1
        if note:
            self.notes[index] = note

    def _paint(self, step: PaintStep, log) -> None:
        """One paint step: its pixels take their painted class, objects follow as :func:`overlay_paint` says
        (computed in the box of the paint and of the objects it takes pixels from); ids stay 1..N."""
        h, w = self.shape
        ys, xs = np.divmod(step.pixels, w)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        lab_at, ins_at = self._labels.reshape(-1)[step.pixels], self._instances.reshape(-1)[step.pixels]
        touched = np.unique(ins_at[(step.classes != lab_at) & (ins_at > 0)])
        found = ndimage.find_objects(self._instances, max_label=self._n) if touched.size else []
        for ident in touched:  # objects the paint cuts or takes pixels from: their whole extent
            b = found[ident - 1]
            y0, y1 = min(y0, b[0].start), max(y1, b[0].stop - 1)
            x0, x1 = min(x0, b[1].start), max(x1, b[1].stop - 1)
        box = (slice(max(0, y0 - 1), min(h, y1 + 2)), slice(max(0, x0 - 1), min(w, x1 + 2)))
        painted = np.full((box[0].stop - box[0].start, box[1].stop - box[1].start), -1, np.int16)
        painted[ys - box[0].start, xs - box[1].start] = step.classes
        lab, ins = self._labels[box], self._instances[box]
        out_l, out_i, n, missing = _paint_objects(lab, ins, painted, self._n)
        moves = _hole_moves(missing, n)  # (only an object the paint took pixels from can be emptied)
        inside = set(np.unique(out_i).tolist()) if moves else set()
        self._write(log, box, (out_l != lab) | (out_i != ins), out_l, out_i)
        log.append((None, None, None, self._n))
        self._n = n
        for top, hole in moves:  # ids 1..N again, as overlay_paint's compaction gives them; the object that takes
            # an id lies where it was (and in the box, where the paint joined a piece to it), or in the box (new)
            b = found[top - 1] if top <= len(found) and top not in touched else None
            if b is not None and top in inside:
                b = (slice(min(b[0].start, box[0].start), max(b[0].stop, box[0].stop)),
                     slice(min(b[1].start, box[1].start), max(b[1].stop, box[1].stop)))
            b = box if b is None else b
            self._write(log, b, self._instances[b] == top, self._labels[b], int(hole))
        self._n = n - len(missing)

    # -- writing, with what it overwrote kept -----------------------------------------------------------
    def _write(self, log, box, mask, label, ident) -> None:
        log.append((box, self._labels[box].copy(), self._instances[box].copy(), self._n))
        lab, ins = self._labels[box], self._instances[box]
        lab[mask] = label if np.ndim(label) == 0 else label[mask]
        ins[mask] = ident if np.ndim(ident) == 0 else ident[mask]

    def _new_id(self, log) -> int:
        log.append((None, None, None, self._n))
        self._n += 1
        return self._n

    def _object_box(self, ident: int, margin: int = 1):
        ys, xs = np.nonzero(self._instances == ident)
        if ys.size == 0:
            return None, None
        h, w = self.shape
        box = (slice(max(0, ys.min() - margin), min(h, ys.max() + margin + 1)),
               slice(max(0, xs.min() - margin), min(w, xs.max() + margin + 1)))
        return box, self._instances[box] == ident

    def _drop_id(self, log, ident: int) -> None:
        """Ids stay 1..N: the last object takes the id of one that is gone (only its id changes)."""
        last = self._n
        if ident != last:
            box, mask = self._object_box(last, margin=0)
            if box is not None:
                self._write(log, box, mask, self._labels[box], ident)
        log.append((None, None, None, self._n))
        self._n -= 1

    # -- the edits -----------------------------------------------------------------------------------
    def _edit(self, c: ObjectClick, log) -> str | None:
        ident = int(self._instances[c.y, c.x])
        if c.action == "split":
            return self._split(c, ident, log)
        if c.action == "merge":
            return self._merge(c, log)
        if c.label == 0:
            if ident:
                return self._remove(c, ident, log)
            if self._labels[c.y, c.x] > 0:  # foreground too small to be an object (a speck): remove it
                box = _box(c.y, c.x, int(np.ceil(self.diameter)), self.shape)
                speck, _ = ndimage.label((self._labels[box] > 0) & (self._instances[box] == 0))
                self._write(log, box, speck == speck[c.y - box[0].start, c.x - box[1].start], 0, 0)
                return None
            return "background already: nothing to remove"
        if ident:
            cls = int(self._labels[c.y, c.x])
            if cls == c.label:
                return None  # the object is already there
            box, mask = self._object_box(ident, margin=0)
            self._write(log, box, mask, c.label, ident)
            return None
        return self._add(c, log)

    def _add(self, c: ObjectClick, log) -> None:
        # the object may be far larger than the typical one (the network found only fragments of such objects):
        # where it fills the window, the window grows (2x, then 4x) before the disc of the typical size is taken
        for grow in WINDOW_GROWTH:
            box, region = self._extent(c, self.diameter * grow)
            if region is not None:
                break
        else:  # nothing stands out even in the widest window: a disc of the typical size
            box = _box(c.y, c.x, int(np.ceil(WINDOW * self.diameter)), self.shape)
        inst = self._instances[box]
        shape = inst.shape
        cy, cx = c.y - box[0].start, c.x - box[1].start
        if region is None:
            comp, _ = ndimage.label(_disk(shape, cy, cx, self.diameter / 2) & (inst == 0))
            region = comp == comp[cy, cx]
        for e in self._clicks():  # an earlier click of another class keeps its pixel, however close it lies
            y, x = e.y - box[0].start, e.x - box[1].start
            if e.label != c.label and 0 <= y < shape[0] and 0 <= x < shape[1] and (y, x) != (cy, cx):
                region[y, x] = False
        ident = 0
        if region.sum() < JOIN_AREA * self.typical_area:
            rim = ndimage.binary_dilation(region) & ~region
            touch = inst[rim & (self._labels[box] == c.label)]
            touch = touch[touch > 0]
            if touch.size:  # the object of its class it shares the longest border with
                ids, counts = np.unique(touch, return_counts=True)
                ident = int(ids[counts.argmax()])
        if not ident:
            ident = self._new_id(log)
        self._write(log, box, region, c.label, ident)
        return None

    def _extent(self, c: ObjectClick, d: float):
        """The object at a foreground click on background, in a window of ``WINDOW * d`` px around it: a seeded
        watershed on the edges of the foreground probability (and of the image); ``(box, region)``, region None
        where nothing stands out from the window (too little contrast, or the object fills it)."""
        r = int(np.ceil(WINDOW * d))
        box = _box(c.y, c.x, r, self.shape)
        cy, cx = c.y - box[0].start, c.x - box[1].start
        inst = self._instances[box]
        free = inst == 0
        shape = inst.shape
        core = _disk(shape, cy, cx, max(1.5, d / 8)) & free
        far = ~_disk(shape, cy, cx, 0.75 * d) & free
        if not far.any():
            far = free
        rescaled, edges = [], np.zeros(shape, np.float32)
        for k, f in enumerate((self.fg[box], self.grey[box])):
            f = ndimage.gaussian_filter(f.astype(np.float32), 1.0)
            top, bottom = float(f[core].mean()), float(np.median(f[far]))
            contrast = top - bottom
            # the probability must rise towards the click; the intensity may rise (fluorescence) or fall (stains)
            if abs(contrast) >= MIN_CONTRAST and (k == 1 or contrast > 0):
                g = (f - bottom) / contrast  # 0 at the window's background level, 1 at the click
                rescaled.append(g)
                edges += _edges(np.clip(g, -0.5, 1.5))
        if not rescaled:
            return box, None
        g = rescaled[0]
        markers = np.zeros(shape, np.int32)
        border = np.zeros(shape, bool)
        border[[0, -1], :] = border[:, [0, -1]] = True
        # background seeds: what looks like the window's background, the other objects and the window's border
        markers[(g <= 0.3) | ~free | border | self._earlier(box, shape, background=True)] = 2
        seed, _ = ndimage.label(g >= 0.7)
        markers[(seed == seed[cy, cx]) & (seed > 0) & free] = 1
        markers[core] = 1
        from skimage.segmentation import watershed

        region = watershed(edges, markers) == 1
        region = ndimage.binary_fill_holes(region) & free
        comp, _ = ndimage.label(region)
        region = comp == comp[cy, cx]
        if region.sum() > 0.6 * region.size:  # it fills the window: no object stands out there
            return box, None
        return box, region

    def _earlier(self, box, shape, *, background: bool, label: int | None = None) -> np.ndarray:
        """The earlier clicks inside ``box`` (background ones, or foreground ones of ``label``) as small discs:
        seeds that a later click's edit respects, so that clicks compose instead of undoing each other."""
        out = np.zeros(shape, bool)
        for e in self._clicks():
            if e.action != "auto" or (e.label == 0) != background or (label is not None and e.label != label):
                continue
            y, x = e.y - box[0].start, e.x - box[1].start
            if 0 <= y < shape[0] and 0 <= x < shape[1]:
                out |= _disk(shape, y, x, 1.5)
        return out

    def _remove(self, c: ObjectClick, ident: int, log) -> None:
        box, mask = self._object_box(ident)
        cy, cx = c.y - box[0].start, c.x - box[1].start
        dt = ndimage.distance_transform_edt(mask)
        iy, ix = np.unravel_index(int(dt.argmax()), dt.shape)
        dmax = float(dt[iy, ix])
        kept = self._earlier(box, mask.shape, background=False) & mask  # earlier clicks that put it there
        kept &= ~_disk(mask.shape, cy, cx, 2.0)
        # a click where the network is unsure (the gap in a clump of true nuclei): what it is sure of, away from
        # the click, stays; a click where it is sure says that the object itself is false: it goes
        if not kept.any() and self.fg[c.y, c.x] < SURE_FOREGROUND:
            sure = mask & (self.fg[box] >= SURE_FOREGROUND) & ~_disk(mask.shape, cy, cx, max(3.0, self.diameter / 2))
            sure = ndimage.binary_opening(sure, iterations=2)
            if sure.sum() >= 0.25 * self.typical_area:
                kept = sure
        protect = np.zeros(mask.shape, bool)  # an earlier click of the object's class keeps its pixel, however close
        for e in self._clicks():
            y, x = e.y - box[0].start, e.x - box[1].start
            if e.label != 0 and 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and (y, x) != (cy, cx):
                protect[y, x] = mask[y, x]
        if not kept.any() and (dt[cy, cx] >= 0.5 * dmax or np.hypot(cy - iy, cx - ix) <= max(dmax, 2.0)):
            self._write(log, box, mask & ~protect, 0, 0)
            if not protect.any():
                self._drop_id(log, ident)
            return None
        # an overspill: cut the object along the image's edges between the click and the object's core
        from skimage.segmentation import watershed

        shape = mask.shape
        markers = np.zeros(shape, np.int32)
        markers[_disk(shape, cy, cx, max(1.0, min(float(dt[cy, cx]), 0.25 * self.diameter))) & mask] = 1
        if kept.any():  # the object the earlier clicks put there stays, the click's side of the edge goes
            markers[kept] = 2
            iy, ix = np.argwhere(kept)[0]
        else:
            markers[_disk(shape, iy, ix, 0.5 * dmax) & mask & (markers == 0)] = 2
        markers[self._earlier(box, shape, background=True) & mask] = 1
        edges = _edges(ndimage.gaussian_filter(self.grey[box], 1.0)) + _edges(ndimage.gaussian_filter(
            self.fg[box], 1.0))
        part = watershed(edges, markers, mask=mask)
        cut = (part == 1) | (mask & (part == 0))
        cut &= self.fg[box] <= self.fg[c.y, c.x] + TRIM_MARGIN  # what the network is surer of than the click stays
        rest, _ = ndimage.label(mask & ~cut)  # pieces cut off from what stays go with the overspill
        stays = np.unique(rest[kept & (rest > 0)]) if kept.any() else [rest[iy, ix]]
        cut |= mask & (rest > 0) & ~np.isin(rest, stays)
        self._write(log, box, cut & ~protect, 0, 0)
        return None

    def _split(self, c: ObjectClick, ident: int, log) -> None:
        if not ident:
            raise InteractionError("a split click must be inside the object to split; this pixel is background")
        box, mask = self._object_box(ident)
        area = int(mask.sum())
        least = MIN_SPLIT_AREA * self.typical_area
        if area < least:
            raise InteractionError(f"this object ({area} px) is too small to split: a split needs at least "
                                   f"{least:.0f} px (half a typical object of {self.diameter:.0f} px across)")
        cy, cx = c.y - box[0].start, c.x - box[1].start
        part = self._split_at_centres(mask, box, cy, cx)
        if part is None:  # one centre, or a cut through the nucleus clicked: cut across, the click in one half
            if self._one_round_object(mask):
                raise InteractionError("this object shows one centre only and is round, as one nucleus is: no "
                                       "second nucleus to split it from (paint the dividing line, or click the "
                                       "missing object instead)")
            part = self._split_across(mask, cy, cx)
        second = None if part is None else part == 2
        if second is None or not second.any() or second.sum() == area:
            raise InteractionError("this object could not be split in two at this click")
        new = self._new_id(log)
        self._write(log, box, second, self._labels[box], new)
        return None

    def _split_at_centres(self, mask, box, cy: int, cx: int):
        """The object cut between the centre the click is in and the strongest other centre, along its neck: a
        watershed of its distance transform weighted by the foreground probability, smoothed, as the network's
        objects are split (``instances.watershed_instances``). None where the object shows one centre only, or
        where the cut would pass the click closer than a fifth of a typical object (the click marks a nucleus:
        a cut through it splits the wrong way)."""
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        fg = self.fg[box]
        if float(np.median(fg[mask])) < 0.5:  # an object the network does not see (painted): its shape alone
            fg = np.ones_like(fg)
        dt = ndimage.distance_transform_edt(mask) * fg
        dt = ndimage.gaussian_filter(dt, max(1.0, 0.075 * self.diameter)) * mask
        peaks = peak_local_max(dt, min_distance=max(2, int(0.15 * self.diameter)), labels=mask.astype(np.int32),
                               exclude_border=False)
        if len(peaks) < 2:
            return None
        dist = np.hypot(peaks[:, 0] - cy, peaks[:, 1] - cx)
        a = peaks[int(dist.argmin())] if dist.min() <= max(2.0, dt.max()) else np.array([cy, cx])
        # another nucleus's centre lies at least about the larger of the two radii away (touching discs)
        radii = np.maximum(dt[peaks[:, 0], peaks[:, 1]], dt[a[0], a[1]])
        apart = np.hypot(peaks[:, 0] - a[0], peaks[:, 1] - a[1]) >= np.maximum(3.0, 0.9 * radii)
        if not apart.any():
            return None
        others = peaks[apart]
        b = others[int(np.argmax(dt[others[:, 0], others[:, 1]]))]
        markers = np.zeros(mask.shape, np.int32)
        markers[a[0], a[1]], markers[b[0], b[1]] = 1, 2
        part = watershed(-dt, markers, mask=mask)
        one, two = part == 1, part == 2
        cut = (one & ndimage.binary_dilation(two)) | (two & ndimage.binary_dilation(one))  # not the object's rim
        ys, xs = np.nonzero(cut)
        if len(ys) and np.hypot(ys - cy, xs - cx).min() < max(2.0, 0.2 * self.diameter):
            return None
        return part

    def _one_round_object(self, mask) -> bool:
        """Whether ``mask`` looks like one nucleus: no longer than ROUND times its width (the square root of the
        ratio of its positions' principal variances) and under 1.5 typical objects in area. Two touching nuclei with
        no neck between them are longer (two discs a radius apart: 1.4); a clump of several is larger."""
        ys, xs = np.nonzero(mask)
        if len(ys) >= 1.5 * self.typical_area or len(ys) < 3:
            return False
        ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(np.float64)))
        return bool(ev[0] > 0 and np.sqrt(ev[1] / ev[0]) < ROUND)

    def _split_across(self, mask, cy: int, cx: int, iterations: int = 10):
        """The object cut in two halves across its length, the click in one: two-means of its pixels' positions,
        started at the click and at the pixel farthest from it, then each pixel to the nearer half's centre
        through the object (a flood from both centres: the cut follows a neck where the object has one)."""
        from skimage.segmentation import watershed

        ys, xs = np.nonzero(mask)
        pts = np.stack([ys, xs], 1).astype(np.float64)
        far = pts[int(np.argmax((ys - cy) ** 2 + (xs - cx) ** 2))]
        centres = np.array([[cy, cx], far], np.float64)
        for _ in range(iterations):
            near = np.argmin(((pts[:, None, :] - centres[None]) ** 2).sum(-1), 1)
            if near.min() == near.max():
                return None
            new = np.stack([pts[near == k].mean(0) for k in (0, 1)])
            if np.allclose(new, centres):
                break
            centres = new
        markers = np.zeros(mask.shape, np.int32)
        for k, centre in enumerate(centres, start=1):  # the object's pixel nearest each centre
            j = int(np.argmin(((pts - centre) ** 2).sum(1)))
            markers[ys[j], xs[j]] = k
        if markers[cy, cx] == 0 and mask[cy, cx]:  # the click is in its half, whatever the flood does
            markers[cy, cx] = 1 + int(np.argmin(((centres - [cy, cx]) ** 2).sum(1)))
        part = watershed(np.zeros(mask.shape, np.float32), markers, mask=mask)
        return part if (part == 1).any() and (part == 2).any() else None

    def _merge(self, c: ObjectClick, log) -> None:
        reach = max(3.0, MERGE_REACH * self.diameter)
        r = int(np.ceil(reach))
        box = _box(c.y, c.x, r, self.shape)
        cy, cx = c.y - box[0].start, c.x - box[1].start
        inst = self._instances[box]
        near = _disk(inst.shape, cy, cx, reach) & (inst > 0)
        if not near.any():
            raise InteractionError(f"a merge click must be on or next to the objects to merge; no object within "
                                   f"{reach:.0f} px of this pixel")
        yy, xx = np.nonzero(near)
        dist = np.hypot(yy - cy, xx - cx)
        ids = inst[yy, xx]
        first = int(inst[cy, cx]) or int(ids[dist.argmin()])
        other = ids != first
        if not other.any():
            raise InteractionError("a merge needs two objects, but this click reaches only one object (a merge "
                                   "of an object with itself): click on the border between the two pieces")
        second = int(ids[other][dist[other].argmin()])
        ob, om = self._object_box(second, margin=0)
        self._write(log, ob, om, int(self._labels[c.y, c.x]) or int(self._labels[box][inst == first][0]), first)
        fb, fm = self._object_box(first, margin=3)
        closed = ndimage.binary_closing(fm, np.ones((5, 5), bool), border_value=0)
        bridge = closed & (self._instances[fb] == 0)
        if bridge.any():
            cls = int(self._labels[fb][fm].max())
            self._write(log, fb, bridge, cls, first)
        self._drop_id(log, second)
        return None


def overlay_paint(labels: np.ndarray, instances: np.ndarray, painted: np.ndarray | None):
    """Lay painted strokes over objects: ``(labels, instances)`` with the painted pixels (``painted`` >= 0, a class
    per pixel, -1 elsewhere) taking their class, and nothing else changing class.

    Painted background leaves no object there; an object cut in pieces by it keeps its id on its largest piece,
    the others get new ids. Painted foreground on no object of its class joins the object of that class it
    touches most, else becomes a new object. Ids stay 1..N (an emptied id is taken by the last object). An
    :class:`ObjectEditor` applies each :class:`PaintStep` of its replay by these rules.
    """
    if painted is None:
        return labels, instances
    if not (painted >= 0).any():
        return labels, instances
    out_l, inst, _, _ = _paint_objects(labels, instances, painted)
    return out_l, _compact(inst)


def _paint_objects(labels, instances, painted, n: int | None = None):
    """:func:`overlay_paint`'s rules on arrays that hold the painted pixels and every object they take pixels from
    whole (the image, or a box of it): ``(labels, instances, highest id, ids left empty below it)``, the ids not
    compacted. ``n``: the highest id of the whole image (default: of ``instances``)."""
    on = painted >= 0
    out_l = labels.copy()
    np.copyto(out_l, painted, where=on, casting="unsafe")
    inst = instances.copy()
    touched = np.unique(instances[on & (painted != labels)])
    touched = touched[touched > 0]
    inst[on & (painted == 0)] = 0
    inst[on & (painted > 0) & (painted != labels)] = 0  # painted another class: no longer that object's
    gone = set(touched[~np.isin(touched, inst[np.isin(inst, touched)])].tolist()) if touched.size else set()
    if n is None:
        n = int(inst.max()) if inst.size else 0
    else:  # the highest id left: the image's, unless the paint emptied it
        while n in gone:
            n -= 1
    missing = sorted(v for v in gone if v < n)
    ys, xs = np.nonzero(on)
    box = (slice(max(0, ys.min() - 1), ys.max() + 2), slice(max(0, xs.min() - 1), xs.max() + 2))
    # objects the paint cut in pieces: the largest piece keeps the id
    for ident in touched:
        ob = ndimage.find_objects((inst == ident).astype(np.int8))
        if not ob:
            continue
        ob = ob[0]
        comp, k = ndimage.label(inst[ob] == ident, structure=np.ones((3, 3), bool))
        if k > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = int(sizes.argmax()) + 1
            for j in range(1, k + 1):
                if j != keep:
                    n += 1
                    inst[ob][comp == j] = n
    # painted foreground that belongs to no object of its class
    sub_l, sub_i, sub_p = out_l[box], inst[box], painted[box]
    loose = (sub_p > 0) & (sub_i == 0)
    comp, k = ndimage.label(loose, structure=np.ones((3, 3), bool))
    for j in range(1, k + 1):
        piece = comp == j
        cls = int(sub_p[piece][0])
        rim = ndimage.binary_dilation(piece, np.ones((3, 3), bool)) & ~piece
        cand = sub_i[rim & (sub_l == cls) & (sub_i > 0)]
        if cand.size:
            ids, counts = np.unique(cand, return_counts=True)
            sub_i[piece] = ids[counts.argmax()]
        else:
            n += 1
            sub_i[piece] = n
    return out_l, inst, n, missing


def _hole_moves(missing, n: int) -> list[tuple[int, int]]:
    """``(top, hole)`` pairs that make ids 1..N of ids 1..``n`` with ``missing`` (ascending) absent: each missing
    id is taken by the highest id (only those objects change id)."""
    absent = set(int(v) for v in missing)
    tops = (i for i in range(n, 0, -1) if i not in absent)
    return [(top, int(hole)) for hole, top in zip(missing, tops) if top > hole]


def _compact(inst: np.ndarray) -> np.ndarray:
    """Ids 1..N: each missing id is taken by the highest id (only those objects change id)."""
    present = np.bincount(inst.ravel()) > 0
    present[0] = True
    missing = np.flatnonzero(~present)
    if missing.size == 0:
        return inst
    lut = np.arange(present.size, dtype=np.uint32)
    for top, hole in _hole_moves(missing, present.size - 1):
        lut[top] = hole
    return lut[inst]


def rank_objects(instances: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray, fg: np.ndarray, *,
                 sure: float, exclude=(), n: int = 16) -> list[tuple[int, int, float, int]]:
    """The objects most worth a look, most uncertain first: ``(y, x, doubt, id)`` at most ``n`` of them.

    Candidates are the objects (``id`` > 0) and the places that may be missed objects: pieces of background
    where the foreground probability is at least 0.25 (``id`` 0). Each is ranked by its doubt, its uncertainty
    summed over its pixels (as regions are, :attr:`~napari_clis.interactive.RegionGraph.doubt`); those whose
    mean uncertainty is below ``sure`` and the objects in ``exclude`` (already clicked) are left out. ``(y, x)``
    is the candidate's pixel farthest from its border."""
    inst = np.asarray(instances)
    cands = []
    flat = inst.ravel()
    m = int(flat.max()) if flat.size else 0
    if m:
        area = np.bincount(flat, minlength=m + 1).astype(np.float64)
        doubt = np.bincount(flat, uncertainty.ravel().astype(np.float64), minlength=m + 1)
        mean = doubt / np.maximum(area, 1)
        ok = (area > 0) & (mean >= sure)
        ok[0] = False
        ok[[int(e) for e in exclude if 0 < int(e) <= m]] = False
        ids = np.flatnonzero(ok)
        cands += [(float(doubt[i]), int(i), inst, int(i)) for i in ids]
    missed, k = ndimage.label((labels == 0) & (fg >= 0.25))
    if k:
        area = np.bincount(missed.ravel(), minlength=k + 1).astype(np.float64)
        doubt = np.bincount(missed.ravel(), uncertainty.ravel().astype(np.float64), minlength=k + 1)
        ok = (area >= 4) & (doubt / np.maximum(area, 1) >= sure)
        ok[0] = False
        cands += [(float(doubt[i]), 0, missed, int(i)) for i in np.flatnonzero(ok)]
    cands.sort(key=lambda t: -t[0])
    out = []
    for doubt, ident, where, key in cands[:n]:
        box = ndimage.find_objects((where == key).astype(np.int8))[0]
        mask = np.pad(where[box] == key, 1)
        dt = ndimage.distance_transform_edt(mask)[1:-1, 1:-1]
        iy, ix = np.unravel_index(int(dt.argmax()), dt.shape)
        out.append((int(box[0].start + iy), int(box[1].start + ix), doubt, ident))
    return out
