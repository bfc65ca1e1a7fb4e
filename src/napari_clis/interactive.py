"""The interactive learning module: clicks and painted edits become annotations of regions, propagated by an MRF.

Regions are SLIC superpixels split where the network's segmentation crosses them, and where its confidence
crosses ``CONFIDENT`` (0.75): a superpixel that straddles an object boundary the network sees, or is unsure
about on one side, becomes several regions, and a click labels only the part it falls on. The labelling
of the regions minimises (``docs/method.md`` writes it out)

    E(y) = sum_r n_r * -log q_r(y_r)  +  lambda * sum_(r,s) c_rs [y_r != y_s]

where ``n_r`` is the area of region ``r``, ``q_r`` its class probabilities (the network's mean log-probability
over its pixels, shifted by a small click-calibration fitted to the annotated regions, whose effect fades with
the distance from them), and ``c_rs`` the sum over
the pixel pairs on the border of ``r`` and ``s`` of ``exp(-beta |I_p - I_q|^2)``: the contrast-sensitive Potts
energy of the pixel grid, restricted to labellings constant on regions. Annotated regions are fixed.
With an :class:`~napari_clis.objects.ObjectEditor` (models with many objects per class, nuclei), clicks act on
objects instead (``mode == "object"``, :mod:`napari_clis.objects`): each click edits the object it touches and
nothing farther than about one object diameter from it.

Painted strokes (:meth:`Interaction.annotate`) change the painted pixels and nothing else, in both modes, and are
never fed to the propagation (``set_painted(..., propagate=True)`` is the paper's whole-region annotation, which
the MRF propagates, for its simulated user). The interaction keeps, per painted pixel, how many clicks had been
made when it was painted (:attr:`Interaction.paint_epochs`). In object mode the edits compose in that order, the
last edit of a pixel winning: the strokes of each epoch are replayed between the clicks (a click acts on painted
objects and may change pixels painted before it, never those painted after it). In region mode the strokes are
laid over the MRF's result.

Pure numpy/scipy; no Qt, no napari, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize, spatial

from .objects import ACTIONS, InteractionError, ObjectClick, ObjectEditor, PaintStep, rank_objects
from .propagation import minimize_potts

__all__ = ["RegionGraph", "Interaction", "InteractionError", "build_region_graph", "keep_one_object", "ObjectEditor",
           "renumber_epochs"]

DEFAULT_SMOOTHNESS = 2.0
DEFAULT_CALIBRATION = 1.0  # chosen on pretraining / validation images (docs/method.md)
DEFAULT_LOCALITY = 0.2  # the calibration's reach: sd of its Gaussian fall-off, a fraction of the longer side
CONFIDENT = 0.75
SURE = 0.01  # regions whose mean uncertainty is below this share of its largest possible value are not suggested
_LOG_FLOOR = np.log(1e-4)


_EIGHT = np.ones((3, 3), bool)


def renumber_epochs(epochs, removed):
    """Paint epochs (how many clicks had been made when each pixel was painted) once the clicks at the indices
    ``removed`` are gone: an epoch drops by the number of removed clicks before it, so a stroke stays after the
    same clicks it was after. ``epochs``: an int or an int array; returns the same kind (a new array)."""
    removed = np.unique(np.asarray(removed, np.int64).reshape(-1))
    if np.ndim(epochs) == 0:
        return int(epochs) - int(np.searchsorted(removed, int(epochs)))
    epochs = np.asarray(epochs)
    if removed.size == 0:
        return epochs.copy()
    return (epochs - np.searchsorted(removed, epochs)).astype(epochs.dtype, copy=False)


def keep_one_object(labels: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """One object per foreground class: the rule of models that declare ``single_object`` (a dermoscopy image
    shows one lesion).

    For each foreground class, its largest 8-connected component stays and so does every component holding a
    pixel of ``keep`` (what the user annotated: a second object the user marks stays); the other components
    become background (0). Background fully enclosed by the class becomes the class, unless that hole holds a
    pixel of ``keep``. Pixels of ``keep`` never change. Other classes are never overwritten.

    Parameters
    ----------
    labels : (H, W) int array
    keep : (H, W) bool array, optional

    Returns
    -------
    (H, W) array of ``labels``' dtype, a new array.
    """
    out = np.array(labels, copy=True)
    for c in np.unique(out):
        if c <= 0:
            continue
        mask = out == c
        comp, n = ndimage.label(mask, structure=_EIGHT)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            kept = np.zeros(n + 1, bool)
            kept[int(sizes.argmax())] = True
            if keep is not None:
                kept[np.unique(comp[keep & mask])] = True
                kept[0] = False
            out[mask & ~kept[comp]] = 0
        hole = ndimage.binary_fill_holes(out == c) & (out == 0)
        if keep is not None and hole.any():
            holes, _ = ndimage.label(hole)
            hole &= ~np.isin(holes, np.unique(holes[hole & keep]))
        out[hole] = c
    return out


@dataclass
class RegionGraph:
    """The regions of one image and their adjacency.

    Attributes
    ----------
    regions : (H, W) int32
        Region id per pixel, ``0 .. n - 1``.
    superpixel : (n,) int32
        The SLIC superpixel each region belongs to.
    area : (n,) float64
        Pixels per region.
    logp : (n, K) float64
        Mean log-probability of each class over the region's pixels.
    colour : (n, 3) float64
        Mean normalised colour.
    uncertainty : (n,) float64
        Mean of the uncertainty map.
    centroid : (n, 2) float64
        Mean (y, x) of each region's pixels.
    edges : (E, 2) int64 and contrast : (E,) float64
        Adjacent region pairs and the summed contrast weights of their shared border.
    boxes : list of slices
        Bounding box of each region (for interior points).
    image : (3, H, W) float32
        The normalised image (for splitting a region between clicks of different classes).
    """

    regions: np.ndarray
    superpixel: np.ndarray
    area: np.ndarray
    logp: np.ndarray
    colour: np.ndarray
    uncertainty: np.ndarray
    centroid: np.ndarray
    edges: np.ndarray
    contrast: np.ndarray
    boxes: list
    image: np.ndarray

    @property
    def n(self) -> int:
        return len(self.area)

    @property
    def n_classes(self) -> int:
        return self.logp.shape[1]

    @property
    def doubt(self) -> np.ndarray:
        """(n,) how much of each region is in doubt: its mean uncertainty times its area (the uncertainty
        summed over its pixels). Suggestions and the paper's simulated user rank regions by it, so that a
        large unsure region comes before a sliver of a few unsure pixels."""
        return self.uncertainty * self.area


def build_region_graph(superpixels: np.ndarray, probabilities: np.ndarray, uncertainty: np.ndarray,
                       normalized: np.ndarray) -> RegionGraph:
    """Split superpixels by the network's labels and confidence, and build the region adjacency graph.

    Parameters
    ----------
    superpixels : (H, W) int
    probabilities : (K, H, W) float
    uncertainty : (H, W) float
    normalized : (3, H, W) float, the normalised image (colour for the contrast weights)
    """
    k, h, w = probabilities.shape
    if superpixels.shape != (h, w) or uncertainty.shape != (h, w) or normalized.shape[-2:] != (h, w):
        raise ValueError("superpixels, probabilities, uncertainty and image must have the same height and width")
    # regions: superpixel x network label x confident, numbered in the order of that key (as np.unique would);
    # a lookup table over the keys instead of sorting the pixels keeps a 4096 px image's peak memory down
    part = probabilities.argmax(0).astype(np.int64)
    part *= 2
    part += probabilities.max(0) >= CONFIDENT
    key = superpixels.astype(np.int64)
    key *= 2 * k
    key += part
    del part
    key = key.ravel()
    if key.size and key.min() >= 0 and key.max() < 4 * key.size + 1024:
        present = np.bincount(key) > 0
        uniq = np.flatnonzero(present)
        lookup = np.cumsum(present, dtype=np.int64) - 1
        regions = lookup[key].astype(np.int32).reshape(h, w)
        del present, lookup
    else:  # sparse or negative superpixel ids
        uniq, inv = np.unique(key, return_inverse=True)
        regions = inv.reshape(h, w).astype(np.int32)
        del inv
    del key
    n = len(uniq)
    flat = regions.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)

    def mean(values):
        return np.bincount(flat, values.ravel().astype(np.float64), minlength=n) / area

    logp = np.stack([mean(np.maximum(np.log(np.maximum(probabilities[c], 1e-12)), _LOG_FLOOR)) for c in range(k)], 1)
    colour = np.stack([mean(normalized[c]) for c in range(normalized.shape[0])], 1)
    unc = mean(uncertainty)
    rows = np.arange(h, dtype=np.float64)
    cols = np.arange(w, dtype=np.float64)
    centroid = np.stack([mean(np.broadcast_to(rows[:, None], (h, w))), mean(np.broadcast_to(cols[None, :], (h, w)))], 1)

    # contrast-sensitive weights of the 4-neighbour pixel pairs, summed per pair of regions (horizontal pairs,
    # then vertical ones; one colour channel at a time)
    img = normalized.astype(np.float32, copy=False)
    dh = np.zeros((h, max(0, w - 1)), np.float32)
    dv = np.zeros((max(0, h - 1), w), np.float32)
    for c in range(img.shape[0]):
        dh += np.square(img[c, :, 1:] - img[c, :, :-1])
        dv += np.square(img[c, 1:, :] - img[c, :-1, :])
    mean_d = (dh.sum() + dv.sum()) / max(1, dh.size + dv.size)
    beta = 1.0 / (2.0 * mean_d) if mean_d > 0 else 0.0
    a, b, d = [], [], []
    for left, right, diff in ((regions[:, :-1], regions[:, 1:], dh), (regions[:-1, :], regions[1:, :], dv)):
        cut = left != right
        a.append(left[cut])
        b.append(right[cut])
        d.append(diff[cut])
        del cut
    del dh, dv
    a, b, d = (np.concatenate(v) for v in (a, b, d))
    a, b = a.astype(np.int64), b.astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair_key, pair_inv = np.unique(lo * n + hi, return_inverse=True)
    contrast = np.bincount(pair_inv, np.exp(-beta * d), minlength=len(pair_key))
    edges = np.stack([pair_key // n, pair_key % n], 1)
    boxes = ndimage.find_objects(regions + 1)
    return RegionGraph(regions, (uniq // (2 * k)).astype(np.int32), area, logp, colour, unc, centroid, edges, contrast,
                       boxes, normalized.astype(np.float32, copy=False))


class Interaction:
    """Clicks and painted annotations on one image, and the propagated segmentation they give.

    Parameters
    ----------
    graph : RegionGraph
    smoothness : float
        ``lambda``: weight of the pairwise term per unit of border contrast.
    calibration : float or None
        Strength of the prior that keeps the click calibration near zero (larger: clicks move the network's
        probabilities less); ``None`` turns calibration off (clicks act only through the MRF).
    locality : float or None
        How far the calibration reaches: a region at distance ``d`` from the nearest annotated region gets
        ``exp(-d^2 / (2 sigma^2))`` of it, ``sigma = locality x`` the image's longer side; ``None``: the whole
        image gets all of it; 0: only the annotated regions (as if it were off, but the fit still runs).
    objects : ObjectEditor, optional
        Object-level clicks (``mode`` ``"object"``): given for models with many objects per class.

    Clicks are ``(y, x, label)`` in :attr:`clicks` with their actions in :attr:`actions` (``"auto"``, ``"split"``,
    ``"merge"``; the last two only in object mode). Painted strokes are :attr:`painted`, with
    :attr:`paint_epochs`: per painted pixel, the number of clicks made before it was painted. The segmentation is
    a deterministic replay of the edits in the order they were made (object mode), or of the clicks with the
    strokes laid over it (region mode): undo is removing a click (or a stroke) and the state is exactly what it
    was before it was made.
    """

    def __init__(self, graph: RegionGraph, *, smoothness: float = DEFAULT_SMOOTHNESS,
                 calibration: float | None = DEFAULT_CALIBRATION, locality: float | None = DEFAULT_LOCALITY,
                 single_object: bool = False, objects: ObjectEditor | None = None):
        self.graph = graph
        self.single_object = bool(single_object)  # keep_one_object() on the propagated labels
        self.objects = objects
        self._mode = "region" if objects is None else "object"
        self.actions: list[str] = []  # the action of each click, beside ``clicks``
        self.paint_propagates = False  # painted regions fixed in the MRF (the paper's region annotation)
        self._instances: np.ndarray | None = None
        self._labels = None
        self.smoothness = smoothness  # the three are checked by their properties
        self.calibration = calibration
        self.locality = locality
        self.refine = True  # pixel-level refinement of a region whose clicks contradict the network
        self.clicks: list[tuple[int, int, int]] = []
        self.painted: np.ndarray | None = None  # (H, W) int16, -1 where nothing is painted
        self.paint_epochs: np.ndarray | None = None  # (H, W) int32: clicks made before each painted pixel
        self._paint_version = 0  # counts changes of the two maps (the paint steps are cached by it)
        self._paint_steps: tuple | None = None
        self._labels: np.ndarray | None = None
        self._propagated: np.ndarray | None = None
        self._region_labels: np.ndarray | None = None
        self._annotation_cache = None
        self._split_memo: dict = {}
        self.bias = np.zeros((graph.n_classes, 1 + graph.colour.shape[1]))

    @staticmethod
    def check_setting(name: str, value) -> float | None:
        """``value`` checked as ``smoothness``, ``calibration`` or ``locality`` (an :class:`InteractionError`
        naming the setting if it is not one)."""
        meanings = {"smoothness": ("the MRF's weight of the pairwise term", None),
                    "calibration": ("the strength of the prior on the click calibration", "no calibration"),
                    "locality": ("a fraction of the image's longer side", "the whole image")}
        meaning, none_means = meanings[name]
        if value is None and none_means:
            return None
        return _check_number(name, value, meaning, none_means)

    @property
    def mode(self) -> str:
        """``"object"`` (clicks edit whole objects, :mod:`napari_clis.objects`) or ``"region"`` (clicks label
        superpixel regions, propagated by the MRF). Object mode needs an :class:`ObjectEditor`; switching replays
        the same clicks the other way."""
        return self._mode

    @mode.setter
    def mode(self, value) -> None:
        if value not in ("object", "region"):
            raise InteractionError(f"the click mode must be 'object' or 'region', got {value!r}")
        if value == "object" and self.objects is None:
            raise InteractionError("object clicks need a model with many objects per class (nuclei); this model "
                                   "declares one object per class, so its clicks label regions")
        if value == "region" and any(a != "auto" for a in self.actions):
            raise InteractionError("split and merge clicks are object clicks: remove them before switching to "
                                   "region clicks")
        self._mode = value
        self._invalidate()

    @property
    def smoothness(self) -> float:
        return self._smoothness

    @smoothness.setter
    def smoothness(self, value) -> None:
        self._smoothness = self.check_setting("smoothness", value)
        self._invalidate()

    @property
    def calibration(self) -> float | None:
        return self._calibration

    @calibration.setter
    def calibration(self, value) -> None:
        self._calibration = self.check_setting("calibration", value)
        self._invalidate()

    @property
    def locality(self) -> float | None:
        return self._locality

    @locality.setter
    def locality(self, value) -> None:
        self._locality = self.check_setting("locality", value)
        self._invalidate()

    # -- input checks ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.graph.regions.shape

    def _check_label(self, label) -> int:
        k = self.graph.n_classes
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not 0 <= label < k:
            raise InteractionError(f"class {label!r} is not one of this model's classes 0..{k - 1}")
        return int(label)

    def _check_point(self, y, x) -> tuple[int, int]:
        h, w = self.shape
        try:
            fy, fx = float(y), float(x)
        except (TypeError, ValueError):
            raise InteractionError(f"a click needs numeric (y, x) coordinates, got ({y!r}, {x!r})") from None
        if not (np.isfinite(fy) and np.isfinite(fx)):
            raise InteractionError(f"click ({y}, {x}) is not a finite position")
        iy, ix = int(np.floor(fy + 0.5)), int(np.floor(fx + 0.5))
        if not (0 <= iy < h and 0 <= ix < w):
            raise InteractionError(f"click ({fy:g}, {fx:g}) is outside the image (height {h}, width {w})")
        return iy, ix

    # -- editing --------------------------------------------------------------------------------
    def _check_action(self, action) -> str:
        if not isinstance(action, str) or action not in ACTIONS:
            raise InteractionError(f"a click's action must be one of {', '.join(map(repr, ACTIONS))}, got {action!r}")
        if action != "auto" and self._mode != "object":
            raise InteractionError(f"a {action} click needs object clicks (a model with many objects per class, "
                                   "nuclei); this image's clicks label regions")
        return action

    def _object_clicks(self, clicks=None, actions=None) -> list[ObjectClick]:
        clicks = self.clicks if clicks is None else clicks
        actions = self.actions if actions is None else actions
        return [ObjectClick(y, x, lab, a) for (y, x, lab), a in zip(clicks, actions)]

    def _commit(self, clicks, actions, new: set[int], epochs=None) -> None:
        """Make ``clicks`` / ``actions`` the clicks (and ``epochs``, if given, the paint epochs); in object mode
        replay them first, raising (and keeping the clicks as they were) where one of the ``new`` clicks cannot
        apply."""
        if self._mode == "object":
            self.objects.replay(self._object_clicks(clicks, actions), strict=new,
                                paint=self._paint_ops(len(clicks), epochs))
        self.clicks, self.actions = clicks, actions
        if epochs is not None:
            self.paint_epochs = epochs
            self._paint_version += 1
        self._invalidate()

    def _paint_ops(self, n_clicks: int, epochs=None) -> dict[int, PaintStep]:
        """The painted strokes as replay steps: epoch -> :class:`~napari_clis.objects.PaintStep` (epochs past the
        last click: after it)."""
        if self.painted is None:
            return {}
        if epochs is None and self._paint_steps is not None and self._paint_steps[:2] == (self._paint_version,
                                                                                           n_clicks):
            return self._paint_steps[2]
        flat = self.painted.reshape(-1)
        pixels = np.flatnonzero(flat >= 0)
        if not pixels.size:
            return {}
        when = np.minimum((self.paint_epochs if epochs is None else epochs).reshape(-1)[pixels], n_clicks)
        order = np.argsort(when, kind="stable")
        pixels, when = pixels[order], when[order]
        cuts = np.flatnonzero(np.diff(when)) + 1
        steps = {int(w[0]): PaintStep(p, flat[p]) for p, w in zip(np.split(pixels, cuts), np.split(when, cuts))}
        if epochs is None:
            self._paint_steps = (self._paint_version, n_clicks, steps)
        return steps

    def set_clicks(self, points, labels, actions=None) -> None:
        """Replace all clicks at once (one propagation): ``points`` (N, 2) as (y, x), ``labels`` (N,), ``actions``
        (N,) of ``"auto"``, ``"split"``, ``"merge"`` (default all ``"auto"``).

        The result is the ordered clicks replayed: pass the whole list each time (a widget's Points layer), with
        an undone click left out. In object mode a click that was not in the previous list and cannot apply (a
        split on background, a merge that reaches one object) raises :class:`InteractionError` naming it, and
        the clicks stay as they were; a click that was there before and no longer applies after an earlier one
        is removed changes nothing (:attr:`notes` says why)."""
        try:
            pts = np.asarray(points, float)
        except (TypeError, ValueError):
            raise InteractionError(f"click positions must be numbers, (N, 2) as (y, x); got {points!r:.80}") from None
        if pts.size == 0:
            pts = pts.reshape(0, 2)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise InteractionError(f"click positions must have shape (N, 2), (y, x) per click; got shape {pts.shape}")
        try:
            one_dimensional = not isinstance(labels, (str, bytes)) and np.ndim(labels) == 1
        except ValueError:  # a ragged nesting
            one_dimensional = False
        if not one_dimensional:
            raise InteractionError(f"click classes must be a sequence of N class ids, got {labels!r:.80}")
        labs = list(labels)
        if len(labs) != len(pts):
            raise InteractionError(f"{len(pts)} click positions but {len(labs)} classes")
        new = [(*self._check_point(y, x), self._check_label(lab)) for (y, x), lab in zip(pts, labs)]
        if actions is None:
            acts = ["auto"] * len(new)
        else:
            if isinstance(actions, str) or np.ndim(actions) != 1 or len(actions) != len(new):
                raise InteractionError(f"{len(new)} clicks need {len(new)} actions, got {actions!r:.80}")
            acts = [self._check_action(a) for a in actions]
        before: dict = {}
        for c in self._object_clicks():
            before[c] = before.get(c, 0) + 1
        fresh = set()
        for i, c in enumerate(self._object_clicks(new, acts)):
            if before.get(c, 0):
                before[c] -= 1
            else:
                fresh.add(i)
        self._commit(new, acts, fresh)

    def click(self, y, x, label, action: str = "auto") -> int:
        """Add a click at ``(y, x)`` with class ``label``; returns its index.

        Region mode: the region under the click takes class ``label`` and the MRF propagates. Object mode
        (:mod:`napari_clis.objects`): ``action`` ``"auto"`` adds the object at a foreground click on background,
        removes (or trims) the object under a background click, gives an object another class; ``"split"``
        splits the object under the click in two; ``"merge"`` joins the two objects nearest the click. A click
        that cannot apply raises :class:`InteractionError` and is not added."""
        iy, ix = self._check_point(y, x)
        lab, act = self._check_label(label), self._check_action(action)
        self._commit(self.clicks + [(iy, ix, lab)], self.actions + [act], {len(self.clicks)})
        return len(self.clicks) - 1

    @property
    def notes(self) -> dict[int, str]:
        """Object mode: click index -> why that click changes nothing (e.g. a background click on background)."""
        if self._mode != "object":
            return {}
        self._replayed()
        return dict(self.objects.notes)

    def _replayed(self) -> ObjectEditor:
        self.objects.replay(self._object_clicks(), paint=self._paint_ops(len(self.clicks)))
        return self.objects

    def remove_click(self, index: int) -> None:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise InteractionError(f"a click is removed by its index, a whole number; got {index!r}")
        if not -len(self.clicks) <= int(index) < len(self.clicks):
            raise InteractionError(f"there is no click {index}; there are {len(self.clicks)}")
        clicks, actions = list(self.clicks), list(self.actions)
        index = int(index) % len(clicks)
        del clicks[index], actions[index]
        # strokes made after the removed click stay after the same clicks they were after
        epochs = None if self.paint_epochs is None else renumber_epochs(self.paint_epochs, [index])
        self._commit(clicks, actions, set(), epochs)

    def clear_clicks(self) -> None:
        self._commit([], [], set(), None if self.paint_epochs is None else np.zeros_like(self.paint_epochs))

    def annotate(self, mask, label) -> None:
        """Paint class ``label`` on the pixels of ``mask`` (H, W), after the clicks made so far: the painted pixels
        take that class and no other pixel changes. Later clicks act on what it painted (object mode; in region
        mode the strokes stay over the clicks' result)."""
        label = self._check_label(label)
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise InteractionError(f"the annotation mask has shape {mask.shape}, the image {self.shape}")
        if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
            raise InteractionError(f"the annotation mask must be boolean (True where painted), got dtype {mask.dtype}")
        if np.issubdtype(mask.dtype, np.floating) and not np.isin(mask, (0.0, 1.0)).all():  # a probability map
            raise InteractionError("the annotation mask must be boolean (True where painted); a float mask may hold "
                                   "only 0 and 1. For a probability map give e.g. mask > 0.5")
        mask = mask.astype(bool)
        if self.painted is None:
            self.painted = np.full(self.shape, -1, np.int16)
            self.paint_epochs = np.zeros(self.shape, np.int32)
        self.painted[mask] = label
        self.paint_epochs[mask] = len(self.clicks)
        self._paint_version += 1
        self._invalidate()

    def set_painted(self, painted, *, propagate: bool = False, after_clicks=None) -> None:
        """Replace all painted annotations: ``painted`` (H, W) int, a class per pixel or -1 where unpainted.

        They change the painted pixels and nothing else. ``after_clicks``: how many clicks had been made when each
        pixel was painted, an (H, W) int array (read where painted) or one int for all; None: after all the
        current clicks. In object mode the strokes are replayed between the clicks in that order (a stroke
        painted after ``e`` clicks comes after click ``e - 1``; more than there are clicks: after the last). Clicks
        removed later through :meth:`set_clicks` leave the epochs as they are (:func:`renumber_epochs` gives them
        after a removal); :meth:`remove_click` and :meth:`clear_clicks` renumber them. ``propagate``: the paper's
        whole-region annotation instead: a region more than half painted is fixed in the MRF and calibrates the
        clicks (region mode)."""
        painted = np.asarray(painted)
        if painted.shape != self.shape:
            raise InteractionError(f"the painted map has shape {painted.shape}, the image {self.shape}")
        if not (painted.dtype == bool or np.issubdtype(painted.dtype, np.integer)):
            raise InteractionError(f"the painted map must hold whole class numbers (-1 where unpainted), got dtype "
                                   f"{painted.dtype}")
        on = painted >= 0
        if on.any() and int(painted[on].max()) >= self.graph.n_classes:
            raise InteractionError(f"painted class {int(painted[on].max())} is not one of this model's classes "
                                   f"0..{self.graph.n_classes - 1}")
        if after_clicks is None:
            after_clicks = len(self.clicks)
        if np.ndim(after_clicks) == 0:
            if isinstance(after_clicks, (bool, np.bool_)) or not isinstance(after_clicks, (int, np.integer)) \
                    or after_clicks < 0:
                raise InteractionError(f"after_clicks must be a number of clicks (a whole number >= 0) or an (H, W) "
                                       f"map of them, got {after_clicks!r:.80}")
            epochs = np.full(self.shape, int(after_clicks), np.int32)
        else:
            epochs = np.asarray(after_clicks)
            if epochs.shape != self.shape or not np.issubdtype(epochs.dtype, np.integer):
                raise InteractionError(f"after_clicks must be an (H, W) map of whole numbers like the painted map "
                                       f"{self.shape}, got shape {epochs.shape}, dtype {epochs.dtype}")
            if on.any() and int(epochs[on].min()) < 0:
                raise InteractionError("after_clicks must be >= 0 where painted (a number of clicks)")
            epochs = np.where(on, epochs, 0).astype(np.int32)
        self.painted = painted.astype(np.int16) if on.any() else None
        self.paint_epochs = epochs if on.any() else None
        self.paint_propagates = bool(propagate)
        self._paint_version += 1
        self._invalidate()

    def clear_annotations(self) -> None:
        self.painted = None
        self.paint_epochs = None
        self.paint_propagates = False
        self._paint_version += 1
        self._invalidate()

    def _invalidate(self):
        self._instances = None
        self._labels = None
        self._propagated = None
        self._region_labels = None
        self._annotation_cache = None

    # -- propagation -----------------------------------------------------------------------------
    def fixed_regions(self) -> np.ndarray:
        """(n,) class of each annotated region, -1 for free ones. Clicks win over paint; a clicked region takes
        the clicked class (its pixels may be refined, :meth:`split_regions`); a region clicked with several
        classes is split between its clicks and takes its majority class. A clicked pixel always ends up with
        its click's class (the latest click's, if the same pixel was clicked more than once) unless painted."""
        return self._annotations()[0]

    def split_regions(self) -> dict[int, np.ndarray]:
        """Regions clicked with more than one class: region -> (h, w) class per pixel of its bounding box
        (-1 outside the region). Each pixel takes the class of the nearest click of that region, nearness
        measured in position and colour, so two clicks split a region along its colour edge; each clicked
        pixel takes its own click's class."""
        return self._annotations()[1]

    def _annotations(self):
        if getattr(self, "_annotation_cache", None) is not None:
            return self._annotation_cache
        g = self.graph
        fixed = np.full(g.n, -1, np.int64)
        if self.painted is not None and self.paint_propagates:
            flat_r = g.regions.ravel()
            flat_p = self.painted.ravel().astype(np.int64)
            on = flat_p >= 0
            # a region is painted when more than half of its pixels are; it takes the class painted most
            counts = np.zeros((g.n, g.n_classes))
            np.add.at(counts, (flat_r[on], flat_p[on]), 1.0)
            painted = counts.sum(1) > 0.5 * g.area
            fixed[painted] = counts[painted].argmax(1)
        by_region: dict[int, list[tuple[int, int, int]]] = {}
        latest = {(y, x): lab for y, x, lab in self.clicks}  # a later click on the same pixel replaces an earlier
        for (y, x), lab in latest.items():
            r = int(g.regions[y, x])
            by_region.setdefault(r, []).append((y, x, lab))
        split = {}
        for r, cl in by_region.items():
            key = (r, self.refine, tuple(sorted(cl)))
            if key not in self._split_memo:  # the same clicks in a region always split it the same way
                if len({lab for _, _, lab in cl}) == 1:
                    self._split_memo[key] = self._refine_single(r, cl) if self.refine else None
                else:
                    self._split_memo[key] = self._split(r, cl)
            part = self._split_memo[key]
            labs = {lab for _, _, lab in cl}
            if part is not None:
                split[r] = part
            if len(labs) == 1:  # the user's class, for the MRF and the calibration, however little is refined
                fixed[r] = cl[0][2]
            else:
                inside = part[part >= 0]
                fixed[r] = int(np.bincount(inside, minlength=g.n_classes).argmax())
        self._annotation_cache = (fixed, split)
        return self._annotation_cache

    def _refine_single(self, region: int, clicks) -> np.ndarray | None:
        """Pixel-level refinement where clicks of one class contradict the network's label of their region and
        the region's colours fall into two well-separated groups (it straddles an edge): two-means on colour,
        started from the click's colour and the colour farthest from it; the pixels of the click's group that are
        connected to a click take the clicked class, the rest keep the network's. ``None``: the whole region
        takes the clicked class."""
        g = self.graph
        lab = clicks[0][2]
        net = int(g.logp[region].argmax())
        if net == lab:
            return None
        box = g.boxes[region]
        mask = g.regions[box] == region
        pix = g.image[(slice(None), *box)][:, mask].astype(np.float64)  # (3, m)
        if pix.shape[1] < 4:
            return None
        m1 = np.mean([self._click_colour(y, x) for y, x, _ in clicks], 0)
        m2 = pix[:, int(((pix - m1[:, None]) ** 2).sum(0).argmax())]
        for _ in range(5):
            near = ((pix - m1[:, None]) ** 2).sum(0) <= ((pix - m2[:, None]) ** 2).sum(0)
            if near.all() or not near.any():
                return None
            m1, m2 = pix[:, near].mean(1), pix[:, ~near].mean(1)
        spread = (((pix[:, near] - m1[:, None]) ** 2).sum() + ((pix[:, ~near] - m2[:, None]) ** 2).sum()) / pix.shape[1]
        if ((m1 - m2) ** 2).sum() < 4.0 * spread:  # one colour group: no edge inside the region
            return None
        grid = np.zeros(mask.shape, bool)
        grid[mask] = near
        for y, x, _ in clicks:  # the clicked pixel itself always takes the clicked class
            grid[y - box[0].start, x - box[1].start] = True
        mine, _ = ndimage.label(grid)
        keep = np.unique([mine[y - box[0].start, x - box[1].start] for y, x, _ in clicks])
        out = np.where(mask, net, -1)
        out[np.isin(mine, keep[keep > 0])] = lab
        return out

    def _click_colour(self, y: int, x: int) -> np.ndarray:
        """Mean colour of the click's region within 2 px of it (one pixel's colour is too noisy)."""
        g = self.graph
        h, w = g.regions.shape
        win = (slice(max(0, y - 2), min(h, y + 3)), slice(max(0, x - 2), min(w, x + 3)))
        same = g.regions[win] == g.regions[y, x]
        return g.image[(slice(None), *win)][:, same].mean(1)

    def _split(self, region: int, clicks) -> np.ndarray:
        g = self.graph
        box = g.boxes[region]
        mask = g.regions[box] == region
        yy, xx = np.mgrid[box[0], box[1]]
        img = g.image[(slice(None), *box)]
        scale2 = max(1.0, float(mask.sum()))  # positions in units of the region's size
        best = np.full(mask.shape, np.inf)
        out = np.full(mask.shape, -1, np.int64)
        for y, x, lab in clicks:
            d = (((yy - y) ** 2 + (xx - x) ** 2) / scale2
                 + ((img - self._click_colour(y, x)[:, None, None]) ** 2).sum(0) / 0.01)
            closer = mask & (d < best)
            best[closer] = d[closer]
            out[closer] = lab
        for y, x, lab in clicks:  # a clicked pixel is nearest its own click even where its colour is not
            out[y - box[0].start, x - box[1].start] = lab
        return out

    def region_log_probabilities(self, fixed: np.ndarray | None = None) -> np.ndarray:
        """(n, K) log q: the network's, with the click calibration fitted to the annotated regions and faded
        with the distance from them (:meth:`calibration_weight`)."""
        g = self.graph
        fixed = self.fixed_regions() if fixed is None else fixed
        self.bias = np.zeros_like(self.bias)
        ann = np.flatnonzero(fixed >= 0)
        if self.calibration is None or len(ann) == 0:
            return _log_softmax(g.logp)
        feats = np.concatenate([np.ones((g.n, 1)), g.colour], 1)
        self.bias = _fit_calibration(g.logp[ann], feats[ann], fixed[ann], float(self.calibration))
        return _log_softmax(g.logp + self.calibration_weight(ann)[:, None] * (feats @ self.bias.T))

    def calibration_weight(self, annotated: np.ndarray | None = None) -> np.ndarray:
        """(n,) in [0, 1]: how much of the click calibration each region gets, a Gaussian of the distance from
        its centroid to the nearest annotated region's: 1 on annotated regions, all 1 without ``locality``, all 0
        when nothing is annotated."""
        g = self.graph
        if annotated is None:
            annotated = np.flatnonzero(self.fixed_regions() >= 0)
        if self.locality is None:
            return np.ones(g.n)
        if len(annotated) == 0:
            return np.zeros(g.n)
        sigma = max(float(self.locality) * max(g.regions.shape), 1e-9)
        d, _ = spatial.cKDTree(g.centroid[annotated]).query(g.centroid)
        return np.exp(-0.5 * (d / sigma) ** 2)

    def region_labels(self) -> np.ndarray:
        if self._region_labels is None:
            g = self.graph
            fixed = self.fixed_regions()
            unary = -g.area[:, None] * self.region_log_probabilities(fixed)
            self._region_labels = minimize_potts(unary, g.edges, self.smoothness * g.contrast, fixed=fixed)
        return self._region_labels

    @property
    def propagated(self) -> np.ndarray:
        """(H, W) int32: the MRF's labelling of the regions (regions split between clicks pixel by pixel),
        one object per class for ``single_object`` models (:func:`keep_one_object`, annotated pixels kept),
        before painted pixels are laid over it. Object mode: the replay of the clicks and strokes (:attr:`labels`:
        the strokes are part of it)."""
        if self._propagated is None and self._mode == "object":
            self._propagated = self._replayed().labels
        if self._propagated is None:
            out = self.region_labels()[self.graph.regions]
            for r, cls in self.split_regions().items():
                np.copyto(out[self.graph.boxes[r]], cls, where=cls >= 0, casting="unsafe")
            if self.single_object:
                keep = (self.fixed_regions() >= 0)[self.graph.regions]
                if self.painted is not None and self.paint_propagates:
                    keep |= self.painted >= 0
                out = keep_one_object(out, keep)
            self._propagated = out
        return self._propagated

    @property
    def labels(self) -> np.ndarray:
        """(H, W) int32: the propagated segmentation with the painted strokes: in object mode the clicks and
        strokes replayed in the order they were made, in region mode the strokes laid over the MRF's result."""
        if self._labels is None and self._mode == "object" and not self.clicks and self.painted is None:
            # nothing to replay: the network's labels, without making its objects (learn() needs only the labels)
            self._labels = self.objects.base_labels.astype(np.int32, copy=True)
        if self._labels is None and self._mode == "object":
            editor = self._replayed()  # copies the caller may keep
            self._labels, self._instances = editor.labels.copy(), editor.instances.copy()
        if self._labels is None:
            out = self.propagated.copy()
            if self.painted is not None:
                np.copyto(out, self.painted, where=self.painted >= 0, casting="unsafe")
            self._labels = out
        return self._labels

    @property
    def instances(self) -> np.ndarray | None:
        """Object mode: (H, W) uint32, the objects after the clicks and strokes replayed in order (0 =
        background, 1..N); None in region mode (:attr:`ClisSession.instances` makes them from the labels)."""
        if self._mode != "object":
            return None
        _ = self.labels
        if self._instances is None:  # the labels were the network's own: its objects, made now
            self._instances = self._replayed().instances.copy()
        return self._instances

    # -- guidance ---------------------------------------------------------------------------------
    def suggest(self, n: int = 16, *, min_area: float | None = None) -> np.ndarray:
        """(m, 2) int (y, x): interior points of the ``n`` most uncertain regions not annotated yet, at least
        about two superpixels apart (a less uncertain region gives way to a nearby more uncertain one). Regions
        where the model is sure are never suggested, however large (their mean uncertainty below ``SURE`` of the
        map's largest possible value, ``1 - 1/K``): a dark background along the border of a nearly empty image
        would otherwise fill the list. Without Monte-Carlo samples (a zero map) there are none."""
        g = self.graph
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise InteractionError(f"the number of suggestions must be a whole number, got {n!r}")
        if n <= 0:
            return np.zeros((0, 2), np.int64)
        if self._mode == "object":
            return np.array([(y, x) for y, x, _, _ in self.suggest_objects(int(n))], np.int64).reshape(-1, 2)
        if min_area is None:
            min_area = max(8.0, 0.15 * float(np.median(g.area)))
        sure = SURE * (1.0 - 1.0 / g.n_classes)
        free = (self.fixed_regions() < 0) & (g.area >= min_area) & (g.doubt > 0) & (g.uncertainty >= sure)
        cand = np.flatnonzero(free)
        order = cand[np.argsort(-g.doubt[cand], kind="stable")]
        # spread the suggestions: none closer than about two superpixels to a more uncertain one
        spacing = 2.0 * np.sqrt(g.regions.size / max(1, len(np.unique(g.superpixel))))
        chosen: list[tuple[int, int]] = []
        for r in order[: 50 * n]:
            p = self.interior_point(int(r))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= spacing**2 for q in chosen):
                chosen.append(p)
                if len(chosen) == n:
                    break
        return np.array(chosen, np.int64).reshape(-1, 2)

    def suggest_objects(self, n: int | None = 16) -> list[tuple[int, int, float, int]]:
        """Object mode: the whole objects to review, most uncertain first, as ``(y, x, doubt, id)``: ``(y, x)`` the
        object's innermost pixel, ``doubt`` its uncertainty summed over its pixels, ``id`` its id in
        :attr:`instances` (0: a place the network half sees an object but found none, a possible missed one).
        Objects already clicked and those the model is sure of are left out
        (:func:`~napari_clis.objects.rank_objects`). At most ``n``; None: a quarter of the objects, at least 3 and
        at most 16 (a few places to look first on a sparse field, not a ring around every nucleus)."""
        if self._mode != "object":
            raise InteractionError("objects are suggested in object mode; region mode suggests regions (suggest())")
        labels, inst = self.labels, self.instances
        if n is None:
            n = min(16, max(3, -(-int(inst.max(initial=0)) // 4)))
        clicked = {int(inst[y, x]) for y, x, _ in self.clicks}
        sure = SURE * (1.0 - 1.0 / self.graph.n_classes)
        return rank_objects(inst, labels, self.objects.uncertainty, self.objects.fg, sure=sure, exclude=clicked, n=n)

    def interior_point(self, region: int) -> tuple[int, int]:
        """The pixel of ``region`` farthest from its border."""
        box = self.graph.boxes[region]
        mask = self.graph.regions[box] == region
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        iy, ix = np.unravel_index(int(dist.argmax()), mask.shape)
        return int(box[0].start + iy), int(box[1].start + ix)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _check_number(name: str, value, meaning: str, none_means: str | None = None) -> float:
    """``value`` as a finite float >= 0, or an :class:`InteractionError` that says what ``name`` is."""
    allowed = f"a finite number >= 0 ({meaning})" + (f" or None ({none_means})" if none_means else "")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InteractionError(f"{name} must be {allowed}, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not (np.isfinite(number) and number >= 0):
        raise InteractionError(f"{name} must be {allowed}, got {value!r}")
    return number


def _fit_calibration(logp: np.ndarray, feats: np.ndarray, target: np.ndarray, strength: float) -> np.ndarray:
    """Class offsets ``B`` (K, F) minimising the annotated regions' cross-entropy of ``logp + feats @ B.T``
    plus ``strength / 2 * |B|^2``: with no annotation of a class, or a weak one, the network's say stands."""
    k, f = logp.shape[1], feats.shape[1]
    onehot = np.eye(k)[target]

    def loss(theta):
        b = theta.reshape(k, f)
        lq = _log_softmax(logp + feats @ b.T)
        grad = (np.exp(lq) - onehot).T @ feats + strength * b
        return -(onehot * lq).sum() + 0.5 * strength * (b**2).sum(), grad.ravel()

    res = optimize.minimize(loss, np.zeros(k * f), jac=True, method="L-BFGS-B", options={"maxiter": 50})
    return res.x.reshape(k, f)
