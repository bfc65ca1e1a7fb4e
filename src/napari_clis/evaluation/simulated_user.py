"""A simulated user who annotates from ground truth, and the classical interactive peers it is run against.

Two protocols, both on the foreground (any class > 0) for the scores:

* ``"uncertain"`` (the CLIS paper's): per iteration, the 16 most uncertain regions that are wrong in the
  current segmentation are annotated with their true class; the ranking is made at the start of each
  iteration; one annotated region counts as one click.
* ``"click"`` (the standard interactive-segmentation protocol): the next click goes to the interior point
  farthest from the border of the largest error region, with the true class there.
* ``"object"`` (object clicks, :func:`next_object_click`): the next click goes to the centre of the largest error
  object: a missed true object gets a click of its class, a false object (or an overspill) a background click,
  two true objects merged into one predicted object a split click, one true object cut in two a merge click.

:func:`run_clicks` runs the click protocols on an :class:`~napari_clis.interactive.Interaction` in either of
its modes (region clicks, object clicks) and records, for each click, the share of the pixels it changed that
lie more than ``FAR`` px from it.

Every method receives the same information per click: the region under the click (the SLIC superpixel part
that the CLIS region graph holds) with its true class. Peers that nobody here wrote:

* ``RandomWalkerPeer``: scikit-image's ``random_walker`` seeded by the annotated regions;
* ``PixelClassifierPeer``: ilastik-style, ``skimage.feature.multiscale_basic_features`` and a scikit-learn
  random forest trained on the annotated pixels; ``FolderPixelClassifier`` is the same classifier trained on
  several whole labelled images (the domain-shift protocol of ``bench continual --domain``).

Before it has seeds of two classes a peer predicts the one class it knows (or background with no seed).
No Qt, no napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..interactive import Interaction, InteractionError
from ..metrics import average_precision, iou

__all__ = ["next_click", "next_object_click", "wrong_regions", "region_oracle", "noc", "run_protocol", "run_clicks",
           "ClisMethod", "RandomWalkerPeer", "PixelClassifierPeer", "ProtocolResult", "FolderPixelClassifier",
           "pixel_features", "far_share", "FAR"]

PER_ITERATION = 16
FAR = 40  # px: a click's changed pixels farther than this from it count as changed elsewhere
PIXEL_SAMPLES = 4000  # pixels of each class a pixel classifier trains on (per image)


def next_click(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int] | None:
    """The standard protocol's next click: the interior point of the largest error region, farthest from its
    border, with the true class there; ``None`` when there is no error."""
    err = pred != truth
    if not err.any():
        return None
    comp, n = ndimage.label(err)
    largest = int(np.argmax(np.bincount(comp.ravel())[1:])) + 1
    region = np.pad(comp == largest, 1)
    dist = ndimage.distance_transform_edt(region)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(y), int(x), int(truth[y, x])


def _interior(mask: np.ndarray) -> tuple[int, int]:
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(y), int(x)


def next_object_click(pred: np.ndarray, pred_instances: np.ndarray, truth: np.ndarray, truth_instances: np.ndarray,
                      skip=()) -> tuple[int, int, int, str] | None:
    """The object protocol's next click ``(y, x, class, action)``, at the centre of the largest error object; None
    when there is none.

    Error objects and their sizes: each connected piece of pixels of the wrong class (its area; a click of the
    true class at its innermost pixel, ``"auto"``: a missed object is added, a false one removed, an overspill
    trimmed); a predicted object holding most of two or more true objects (the area of the second largest of
    them; a ``"split"`` click at the innermost pixel of the largest); a true object cut between predicted objects
    that each hold at least a quarter of it (the area of the second largest piece; a ``"merge"`` click on the
    border between the two largest pieces, nearest the true object's centre). Clicks in ``skip`` (ones that
    could not apply) are not given again."""
    skip = set(skip)
    cands: list[tuple[float, tuple[int, int, int, str]]] = []
    err = pred != truth
    if err.any():
        comp, n = ndimage.label(err)
        areas = np.bincount(comp.ravel())
        for j in np.argsort(-areas[1:], kind="stable")[:8] + 1:  # the largest few are enough
            y, x = _interior(comp == j)
            c = (y, x, int(truth[y, x]), "auto")
            if c not in skip:
                cands.append((float(areas[j]), c))
                break
    p, t = pred_instances.ravel().astype(np.int64), truth_instances.ravel().astype(np.int64)
    both = (p > 0) & (t > 0)
    if both.any():
        pairs, counts = np.unique(p[both] * (int(t.max()) + 1) + t[both], return_counts=True)
        pi, ti = pairs // (int(t.max()) + 1), pairs % (int(t.max()) + 1)
        t_area = np.bincount(t, minlength=int(t.max()) + 1)
        mostly = counts >= 0.5 * t_area[ti]
        for obj in np.unique(pi[mostly]):  # merged: one predicted object holds most of several true ones
            sel = mostly & (pi == obj)
            if sel.sum() >= 2:
                order = np.argsort(-counts[sel], kind="stable")
                inside = (pred_instances == obj) & (truth_instances == ti[sel][order[0]])
                y, x = _interior(inside)
                c = (y, x, int(truth[y, x]), "split")
                if c not in skip:
                    cands.append((float(counts[sel][order[1]]), c))
        quarter = counts >= 0.25 * t_area[ti]
        for tobj in np.unique(ti[quarter]):  # cut: a true object shared by predicted ones
            sel = quarter & (ti == tobj)
            if sel.sum() >= 2:
                order = np.argsort(-counts[sel], kind="stable")
                a, b = pi[sel][order[0]], pi[sel][order[1]]
                inside = truth_instances == tobj
                border = (pred_instances == a) & ndimage.binary_dilation(pred_instances == b, np.ones((3, 3), bool))
                border &= inside
                if not border.any():
                    continue
                ys, xs = np.nonzero(border)
                cy, cx = ndimage.center_of_mass(inside)
                k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
                c = (int(ys[k]), int(xs[k]), int(truth[ys[k], xs[k]]), "merge")
                if c not in skip:
                    cands.append((float(counts[sel][order[1]]), c))
    if not cands:
        return None
    return max(cands, key=lambda v: v[0])[1]


def far_share(before: np.ndarray, after: np.ndarray, y: int, x: int, far: float = FAR) -> float | None:
    """The share of the pixels that changed class from ``before`` to ``after`` lying more than ``far`` px from
    ``(y, x)``; None when nothing changed."""
    changed = before != after
    total = int(changed.sum())
    if total == 0:
        return None
    ys, xs = np.nonzero(changed)
    return float(np.count_nonzero((ys - y) ** 2 + (xs - x) ** 2 > far * far)) / total


def run_clicks(interaction: Interaction, truth: np.ndarray, protocol: str = "click", *, mode: str | None = None,
               truth_instances: np.ndarray | None = None, max_clicks: int = 20, min_clicks: int = 5,
               stop_at: float = 0.90) -> ProtocolResult:
    """The simulated user clicking on ``interaction`` (its clicks and paint are cleared first), in ``mode``
    (``"region"`` or ``"object"``; default the interaction's), by ``protocol`` ``"click"`` (:func:`next_click`,
    the standard protocol) or ``"object"`` (:func:`next_object_click`, needs ``truth_instances``).

    Returns the foreground IoU after each click (``ious``), the share of each click's changed pixels farther than
    :data:`FAR` px from it (``far``; clicks that changed nothing left out), and with ``truth_instances`` the
    instance AP@0.5 before the first and after the last click (``ap``). A click that cannot apply (raises
    :class:`~napari_clis.interactive.InteractionError`) still counts, and is not given again. Stops as
    :func:`run_protocol` does."""
    if protocol not in ("click", "object"):
        raise ValueError(f"protocol must be 'click' or 'object', got {protocol!r}")
    if protocol == "object" and truth_instances is None:
        raise ValueError("the object protocol needs the true objects (truth_instances)")
    inter = interaction
    if mode is not None:
        inter.clear_clicks()
        inter.mode = mode
    inter.clear_clicks()
    inter.clear_annotations()
    name = f"CLIS {inter.mode} clicks" + (" (object protocol)" if protocol == "object" else "")
    res = ProtocolResult(name)
    pred = inter.labels.copy()
    fg_truth = (truth > 0).astype(np.int32)
    res.ious.append(iou(pred, fg_truth))

    def objects():
        inst = inter.instances if inter.mode == "object" else ndimage.label(pred > 0)[0]
        return inst

    if truth_instances is not None:
        res.ap.append(float(average_precision(objects(), truth_instances, 0.5)))
    failed: set = set()
    while len(res.ious) - 1 < max_clicks:
        if res.ious[-1] >= stop_at and len(res.ious) - 1 >= min_clicks:
            break
        if protocol == "click":
            c = next_click(pred, truth)
            c = None if c is None else (*c, "auto")
        else:
            c = next_object_click(pred, objects(), truth, truth_instances, failed)
        if c is None:
            break
        try:
            inter.click(*c)
        except InteractionError:
            failed.add(c)
        after = inter.labels.copy()
        share = far_share(pred, after, c[0], c[1])
        if share is not None:
            res.far.append(share)
        pred = after
        res.ious.append(iou(pred, fg_truth))
    if truth_instances is not None:
        res.ap.append(float(average_precision(objects(), truth_instances, 0.5)))
    return res


def wrong_regions(interaction: Interaction, pred: np.ndarray, truth: np.ndarray) -> list[tuple[int, int]]:
    """(region, true class) of the regions whose majority class in ``pred`` differs from the truth, most
    uncertain first (the CLIS network's uncertainty summed over the region, ``RegionGraph.doubt``), annotated
    ones left out."""
    g = interaction.graph
    k = max(int(truth.max()), int(pred.max()), g.n_classes - 1) + 1
    flat = g.regions.ravel()
    true_major = _majority(flat, truth.ravel(), g.n, k)
    pred_major = _majority(flat, pred.ravel(), g.n, k)
    fixed = interaction.fixed_regions()
    cand = np.flatnonzero((true_major != pred_major) & (fixed < 0))
    cand = cand[np.argsort(-g.doubt[cand], kind="stable")]
    return [(int(r), int(true_major[r])) for r in cand]


def _majority(regions: np.ndarray, values: np.ndarray, n: int, k: int) -> np.ndarray:
    counts = np.bincount(regions.astype(np.int64) * k + values.astype(np.int64), minlength=n * k).reshape(n, k)
    return counts.argmax(1)


def region_oracle(interaction: Interaction, truth: np.ndarray) -> float:
    """Foreground IoU when every region takes its true majority class: what annotating every region correctly
    reaches, the practical ceiling of whole-region annotation (the majority labelling has the best pixel accuracy
    of all region labellings; its IoU is that best's up to a few border regions). Clicks can pass it only where the
    pixel-level refinement splits a clicked region."""
    g = interaction.graph
    k = max(int(truth.max()), g.n_classes - 1) + 1
    major = _majority(g.regions.ravel(), truth.ravel(), g.n, k)
    return iou(major[g.regions], truth)


def noc(ious: list[float], threshold: float, max_clicks: int = 20) -> int:
    """Clicks needed to reach ``threshold`` (``ious[k]`` after k clicks), ``max_clicks`` if never."""
    for k, v in enumerate(ious[: max_clicks + 1]):
        if v >= threshold:
            return k
    return max_clicks


# -- methods ---------------------------------------------------------------------------------------

class ClisMethod:
    """CLIS: the session's propagated segmentation; annotations are clicks on regions (region mode)."""

    name = "CLIS (ours)"

    def __init__(self, interaction: Interaction):
        self.interaction = interaction
        self.interaction.clear_clicks()
        self.interaction.clear_annotations()
        self.interaction.mode = "region"

    def predict(self, seeds) -> np.ndarray:
        """``seeds``: (region, class, (y, x) or None): a click where the position is given, else the whole
        region annotated (the paper's superpixel annotation)."""
        inter = self.interaction
        clicks = [(pos, lab) for _, lab, pos in seeds if pos is not None]
        inter.set_clicks([p for p, _ in clicks], [lab for _, lab in clicks])
        regions = [(r, lab) for r, lab, pos in seeds if pos is None]
        if regions:
            lut = np.full(inter.graph.n, -1, np.int64)
            for r, lab in regions:
                lut[r] = lab
            inter.set_painted(lut[inter.graph.regions], propagate=True)  # the paper's region annotation
        else:
            inter.clear_annotations()
        return inter.labels


class _SeededPeer:
    def __init__(self, image: np.ndarray, interaction: Interaction):
        self.image = image
        self.regions = interaction.graph.regions

    def seed_map(self, seeds):
        lut = np.zeros(int(self.regions.max()) + 1, np.int32)  # 0 = unlabelled, class + 1 otherwise
        for r, lab, _ in seeds:
            lut[r] = lab + 1
        return lut[self.regions]

    def predict(self, seeds):
        classes = sorted({lab for _, lab, _ in seeds})
        if not classes:
            return np.zeros(self.regions.shape, np.int32)
        if len(classes) == 1:
            return np.full(self.regions.shape, classes[0], np.int32)
        return self._predict(self.seed_map(seeds))


class RandomWalkerPeer(_SeededPeer):
    """scikit-image's random walker (Grady 2006), beta 130 (its default), on the image scaled to [0, 1], with the
    multigrid solver (pyamg) that scikit-image recommends for speed."""

    name = "random walker (scikit-image)"

    def _predict(self, seeds):
        from skimage.segmentation import random_walker

        img = self.image.astype(np.float32)
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
        colour = img.ndim == 3
        out = random_walker(img, seeds, beta=130, mode="cg_mg", channel_axis=-1 if colour else None)
        return (out - 1).astype(np.int32)


class PixelClassifierPeer(_SeededPeer):
    """ilastik-style pixel classification: multiscale intensity, edge and texture features (sigma 1 to 16)
    and a random forest of 50 trees trained on (up to 4000 per class of) the annotated pixels."""

    name = "pixel classifier (skimage features + random forest)"

    def __init__(self, image, interaction, seed: int = 0):
        super().__init__(image, interaction)
        self.features = pixel_features(image)
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def _predict(self, seeds):
        idx, ys = _training_pixels(seeds.ravel(), self.rng)
        feats = self.features.reshape(-1, self.features.shape[-1])
        rf = _forest(self.seed).fit(feats[idx], ys)
        return rf.classes_[rf.predict_proba(feats).argmax(1)].reshape(seeds.shape).astype(np.int32)


def pixel_features(image: np.ndarray) -> np.ndarray:
    """ilastik-style features of every pixel, ``(H, W, F)`` float32: scikit-image's multiscale intensity, edge and
    texture features (sigma 1 to 16) of the image as it is (no normalisation; colour channels each)."""
    from skimage.feature import multiscale_basic_features

    colour = image.ndim == 3
    return multiscale_basic_features(image.astype(np.float32), channel_axis=-1 if colour else None,
                                     sigma_min=1, sigma_max=16).astype(np.float32)


def _training_pixels(seeds: np.ndarray, rng, per_class: int = PIXEL_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, classes) of up to ``per_class`` pixels of each class in ``seeds`` (0: unlabelled, class + 1
    otherwise), drawn by ``rng``."""
    idx, ys = [], []
    for c in np.unique(seeds[seeds > 0]):
        where = np.flatnonzero(seeds == c)
        if len(where) > per_class:
            where = rng.choice(where, per_class, replace=False)
        idx.append(where)
        ys.append(np.full(len(where), c - 1))
    return np.concatenate(idx), np.concatenate(ys)


def _forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=50, n_jobs=1, random_state=seed)


class FolderPixelClassifier:
    """The ilastik-style peer of the domain-shift protocol: one random forest (50 trees) on :func:`pixel_features`,
    trained on whole labelled images (up to 4000 pixels of each class per image, as the interactive peer draws
    its annotated pixels), then segmenting other images of the same kind."""

    name = "pixel classifier (skimage features + random forest)"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.forest = None

    def fit(self, images, labels) -> FolderPixelClassifier:
        """Train on ``images`` with their ``labels`` (class ids per pixel, 0 = background)."""
        rng = np.random.default_rng(self.seed)
        feats, classes = [], []
        for image, lab in zip(images, labels, strict=True):
            f = pixel_features(image)
            if f.shape[:2] != lab.shape:
                raise ValueError(f"labels of shape {lab.shape} for an image of shape {f.shape[:2]}")
            idx, ys = _training_pixels(lab.astype(np.int64).ravel() + 1, rng)
            feats.append(f.reshape(-1, f.shape[-1])[idx])
            classes.append(ys)
        self.forest = _forest(self.seed).fit(np.concatenate(feats), np.concatenate(classes))
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The class of every pixel of ``image``, ``(H, W)`` int32."""
        if self.forest is None:
            raise RuntimeError("the pixel classifier is not trained yet: call fit() first")
        f = pixel_features(image)
        p = self.forest.predict_proba(f.reshape(-1, f.shape[-1]))
        return self.forest.classes_[p.argmax(1)].reshape(f.shape[:2]).astype(np.int32)


# -- the protocols --------------------------------------------------------------------------------

@dataclass
class ProtocolResult:
    """IoU after 0, 1, ... clicks (``ious[k]``) for one method on one image."""

    method: str
    ious: list[float] = field(default_factory=list)
    far: list[float] = field(default_factory=list)  # run_clicks: per click, its changed pixels' share beyond FAR px
    ap: list[float] = field(default_factory=list)  # run_clicks with true objects: AP@0.5 before and after


def run_protocol(method, interaction: Interaction, truth: np.ndarray, protocol: str, *, max_clicks: int = 20,
                 min_clicks: int = 5, stop_at: float = 0.90) -> ProtocolResult:
    """Run one simulated user on one method and image.

    The run stops after ``max_clicks``, once IoU >= ``stop_at`` after at least ``min_clicks`` clicks (the
    NoC measures are then decided; the IoU curve is reported only up to ``min_clicks``), or when the protocol
    has nothing left to annotate (no error, or no wrong region that is not annotated yet).
    """
    if protocol not in ("uncertain", "click"):
        raise ValueError(f"protocol must be 'uncertain' or 'click', got {protocol!r}")
    seeds: list[tuple[int, int, tuple[int, int] | None]] = []
    pred = method.predict(seeds)
    res = ProtocolResult(method.name, [iou(pred, truth)])
    queue: list[tuple[int, int]] = []
    while len(seeds) < max_clicks:
        if res.ious[-1] >= stop_at and len(seeds) >= min_clicks:
            break
        if protocol == "click":
            c = next_click(pred, truth)
            if c is None:
                break
            seed = (int(interaction.graph.regions[c[0], c[1]]), c[2], (c[0], c[1]))
        else:
            if not queue:
                taken = {r for r, _, _ in seeds}
                queue = [(r, lab, None) for r, lab in wrong_regions(_Annotated(interaction, seeds), pred, truth)
                         if r not in taken][:PER_ITERATION]
            if not queue:
                break  # nothing left that the protocol may annotate
            seed = queue.pop(0)
        seeds.append(seed)
        pred = method.predict(seeds)
        res.ious.append(iou(pred, truth))
    return res


class _Annotated:
    """The interaction's graph with the method's own seeds as the annotated regions (for ``wrong_regions``)."""

    def __init__(self, interaction: Interaction, seeds):
        self.graph = interaction.graph
        self._seeds = seeds

    def fixed_regions(self):
        fixed = np.full(self.graph.n, -1, np.int64)
        for r, lab, _ in self._seeds:
            fixed[r] = lab
        return fixed
