"""Objects from a segmentation: one id per nucleus (touching ones split), and per-object measurements.

Pure numpy, SciPy and scikit-image: no torch, no Qt, no napari.

The network gives each pixel a class; microscopists count and measure objects. :func:`instances_from_probabilities`
splits each foreground class into objects by a watershed of the distance to the background weighted by the
network's probability (a nucleus is far from the background and sure of itself at its centre; two touching
nuclei meet at a neck where both fall), seeded at its h-maxima. Its parameters are fractions of the typical
object radius that :func:`estimate_object_radius` reads off the segmentation itself, so one setting serves
256 px crops and 1 Mpx fields alike; their defaults were chosen on images of the ``dsb2018`` pretraining split
(``docs/benchmarks.md`` gives the held-out figures). :func:`single_object` is the rule of one-object models
(a lesion), :func:`measure_objects` the table of area, perimeter, intensity, uncertainty and centroid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "estimate_object_radius",
    "object_size_mismatch",
    "watershed_instances",
    "instances_from_probabilities",
    "single_object",
    "foreground_probability",
    "segmentation_objects",
    "measure_objects",
    "measurements_csv",
]

# BT.709 luma weights, as skimage.color.rgb2gray uses them.
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def _check_2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array, got shape {arr.shape}.")
    return arr


def _check_ids(a, name: str) -> np.ndarray:
    arr = _check_2d(a, name)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids (0 = background), got dtype {arr.dtype}.")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative ids (smallest {arr.min()}); ids are 0 (background) or positive.")
    return arr


def _same_shape(shape, other, name: str) -> None:
    if tuple(other) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(other)}, but the objects' map has shape {tuple(shape)}; "
                         "they must cover the same pixels.")


def estimate_object_radius(mask) -> float:
    """The typical object radius in pixels: that of a disc of the median area of the mask's connected pieces,
    specks left out.

    The median shrugs off a few merged clumps. Specks are pieces smaller than :data:`SPECK_SHARE` of the piece
    that holds the middle pixel of the foreground (the area-weighted median): a mask broken into many fragments
    (pale nuclei on H&E) would otherwise give a radius of a few pixels, and with it a watershed that keeps every
    fragment as an object. 0.0 for an empty mask.

    Parameters
    ----------
    mask : (H, W) bool array

    Returns
    -------
    float
    """
    mask = _check_2d(mask, "The mask").astype(bool)
    comp, n = ndimage.label(mask)
    if n == 0:
        return 0.0
    return _typical_radius(np.bincount(comp.ravel())[1:])


def _typical_radius(areas) -> float:
    """The radius of a disc of the median of ``areas`` (> 0), specks left out (:func:`estimate_object_radius`)."""
    areas = np.sort(areas)
    cumulative = np.cumsum(areas)
    middle = areas[np.searchsorted(cumulative, cumulative[-1] / 2)]  # the piece holding the middle pixel
    return float(np.sqrt(np.median(areas[areas >= SPECK_SHARE * middle]) / np.pi))


def object_size_mismatch(object_diameter, instances, factor: float = 2.0) -> float | None:
    """The typical diameter (px) of the objects found, where it is more than ``factor`` times larger or smaller
    than the ``object_diameter`` the user gave (None where it is not, where none was given, or nothing was
    found): a sign that the size given is not the objects' (the image was resized for the network by it)."""
    if not object_diameter or object_diameter <= 0:
        return None
    areas = np.bincount(np.asarray(instances).ravel())[1:]  # per object (touching ones apart), no labelling
    areas = areas[areas > 0]
    if not len(areas):
        return None
    found = 2.0 * _typical_radius(areas)
    if 1.0 / factor <= found / float(object_diameter) <= factor:
        return None
    return found


# Pieces of a mask smaller than this share of the area-weighted median piece are specks to estimate_object_radius.
# Chosen on the pretraining images of both nuclei sets (every other one; 169 dsb2018, 25 bbbc039) by the mean of
# their AP@0.5, the watershed's parameters as they are (2026-12-08): no specks left out 0.8488, 0.05 0.8497, 0.1
# 0.8487, 0.2 0.8481, 0.3 0.8470. On the H&E tiles of he_nuclei (never trained on or chosen with) AP@0.5 rises
# 0.256 -> 0.393: the plain median of their fragmented masks gave radii of 2-10 px (their nuclei's: 9-16 px), now 9-27.
SPECK_SHARE = 0.05


# The watershed's three parameters (fractions of the object radius; min_area: of a disc's area), chosen with the
# shipped nuclei model on the pretraining images of both nuclei sets (338 dsb2018, the 50 of bbbc039's pretraining
# half) by the mean of the two sets' AP@0.5 (2026-12-07): every other image for a coarse grid (smoothing 0.05-0.25 x
# h 0.02-0.1, then min_area 0.05-0.35), then all of them for smoothing 0.1-0.15 x h 0.035-0.05 x min_area
# 0.075-0.125. 0.1 / 0.05 / 0.1 gave 0.789 / 0.891 against 0.788 / 0.882 for the 0.15 / 0.05 / 0.15 chosen earlier
# on 30 dsb2018 images; the other eleven of the last grid lie within 0.006 (a plateau). A smaller min_area keeps
# bbbc039's small nuclei, at the cost of dsb2018's specks kept.
SMOOTHING = 0.1
H = 0.05
MIN_AREA = 0.1


def watershed_instances(mask, weight=None, *, radius: float | None = None, smoothing: float = SMOOTHING,
                        h: float = H, min_area: float = MIN_AREA, distance=None) -> np.ndarray:
    """Split a foreground mask into objects: a watershed of its (weighted) distance transform.

    The distance of each mask pixel to the background, times ``weight`` where given, smoothed by a Gaussian of
    ``smoothing * radius`` px, is flooded from its h-maxima (peaks at least ``h * radius`` px above the saddle
    that joins them to a higher peak) within the mask. A connected piece of the mask without such a peak
    becomes one object. Objects smaller than ``min_area`` times the area of a disc of ``radius`` join the
    object they touch, or are dropped when they touch none (specks).

    Parameters
    ----------
    mask : (H, W) bool array
        The foreground.
    weight : (H, W) float array, optional
        Multiplies the distance (the probability of the foreground).
    radius : float, optional
        Typical object radius in px; by default :func:`estimate_object_radius` of ``mask``.
    smoothing, h, min_area : float
        Fractions of ``radius`` (``min_area``: of the disc's area); each >= 0. With ``distance``, ``h`` is in
        its units instead (a fraction of an object's centre height, 1).
    distance : (H, W) float array, optional
        The network's instance head: each pixel's distance to its object's border, 1 at the object's centre.
        Flooded instead of the mask's distance transform: it separates touching objects where the mask has no
        neck between them.

    Returns
    -------
    (H, W) uint32
        0 = background, objects numbered 1..N.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    mask = _check_2d(mask, "The mask").astype(bool)
    for name, value in (("smoothing", smoothing), ("h", h), ("min_area", min_area)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    if not mask.any():
        return np.zeros(mask.shape, np.uint32)
    r = estimate_object_radius(mask) if radius is None else float(radius)
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"radius must be a positive number of pixels, got {radius!r}.")
    if distance is not None:
        distance = _check_2d(distance, "The distance map")
        _same_shape(mask.shape, distance.shape, "The distance map")
        surface = np.where(mask, np.nan_to_num(distance.astype(np.float32)), 0.0)
        hr = h  # heights in the map's own units
    else:
        surface = ndimage.distance_transform_edt(mask)
        hr = h * r
    if weight is not None:
        weight = _check_2d(weight, "The weight")
        _same_shape(mask.shape, weight.shape, "The weight")
        surface = surface * weight
    if smoothing > 0:
        surface = ndimage.gaussian_filter(surface, smoothing * r)
    comp, n = ndimage.label(mask)
    markers = ndimage.label(h_maxima(surface, max(hr, 1e-6)).astype(bool) & mask)[0]
    # Every piece of the mask gets a marker: one with none becomes one object.
    marked = np.zeros(n + 1, bool)
    marked[comp[markers > 0]] = True
    unmarked = mask & ~marked[comp]
    if unmarked.any():
        markers = np.where(unmarked, comp + markers.max(), markers)
    out = watershed(-surface, markers, mask=mask)
    if min_area > 0:
        areas = np.bincount(out.ravel())
        small = areas < min_area * np.pi * r * r
        small[0] = False
        if small.any():
            # Flood again from the objects kept: a small one touching another joins it, a lone speck stays 0.
            out = watershed(-surface, np.where(small[out], 0, out), mask=mask)
    return relabel_sequential(out)[0].astype(np.uint32)


# With the instance head's distance map: seeds where the predicted centre stands this much above the saddle to a
# higher one, after a smoothing of this fraction of the radius. Chosen on 60 dsb2018 and 12 bbbc039 pretraining
# images with the head trained alone over the shipped nuclei model (the best of h 0.05-0.4 x smoothing 0-0.2); no
# shipped model has the head (docs/history/models-2026-11-to-12.md)
DISTANCE_H = 0.05
DISTANCE_SMOOTHING = 0.2


def instances_from_probabilities(foreground_prob, labels, *, radius: float | None = None,
                                 smoothing: float | None = None, h: float | None = None, min_area: float = MIN_AREA,
                                 distance=None) -> np.ndarray:
    """Objects from a segmentation: one id per object, touching objects split.

    Each foreground class of ``labels`` is split on its own (an object never spans two classes) by
    :func:`watershed_instances`, its distance transform weighted by ``foreground_prob``.

    Parameters
    ----------
    foreground_prob : (H, W) float array
        Probability of the foreground per pixel, in [0, 1] (for a two-class model, ``probabilities[1]``).
    labels : (H, W) int array
        Class per pixel, 0 = background.
    radius : float, optional
        Typical object radius in px; by default estimated per class by :func:`estimate_object_radius`.
    distance : (H, W) float array, optional
        The instance head's distance map (a model trained with one): flooded instead of the distance transform,
        with ``h`` and ``smoothing`` defaulting to :data:`DISTANCE_H` and :data:`DISTANCE_SMOOTHING`.
    smoothing, h, min_area : float
        See :func:`watershed_instances`. Without ``distance`` the defaults are :data:`SMOOTHING`, :data:`H` and
        :data:`MIN_AREA`, chosen on the pretraining images of both nuclei sets, on a plateau of AP@0.5: smoothing
        keeps the distance transform's ragged crests from splitting one nucleus.

    Returns
    -------
    (H, W) uint32
        0 = background, objects numbered 1..N (class by class).

    Raises
    ------
    ValueError
        Shapes differ, labels are not non-negative integers, or probabilities are not finite numbers in [0, 1].
    """
    labels = _check_ids(labels, "The labels")
    prob = _check_2d(foreground_prob, "The foreground probability")
    _same_shape(labels.shape, prob.shape, "The foreground probability")
    if not (np.issubdtype(prob.dtype, np.floating) or np.issubdtype(prob.dtype, np.integer) or prob.dtype == bool):
        raise ValueError(f"The foreground probability must hold numbers, got dtype {prob.dtype}.")
    prob = prob.astype(np.float32, copy=False)
    if prob.size:
        bad = int(np.count_nonzero(~np.isfinite(prob)))
        if bad:
            raise ValueError(f"The foreground probability holds {bad} NaN or infinite values.")
        if prob.min() < 0 or prob.max() > 1:
            raise ValueError(f"The foreground probability must lie in [0, 1], got [{prob.min():g}, {prob.max():g}].")
    if distance is None:
        smoothing = SMOOTHING if smoothing is None else smoothing
        h = H if h is None else h
    else:
        smoothing = DISTANCE_SMOOTHING if smoothing is None else smoothing
        h = DISTANCE_H if h is None else h
    out = np.zeros(labels.shape, np.uint32)
    for c in np.unique(labels):
        if c == 0:
            continue
        objects = watershed_instances(labels == c, prob, radius=radius, smoothing=smoothing, h=h, min_area=min_area,
                                      distance=distance)
        offset = out.max()
        out[objects > 0] = objects[objects > 0] + offset
    return out


def single_object(labels) -> np.ndarray:
    """The objects of a one-object model (a lesion): each foreground class is one object.

    Parameters
    ----------
    labels : (H, W) int array
        Class per pixel, 0 = background.

    Returns
    -------
    (H, W) uint32
        0 = background; the classes present numbered 1..N in increasing class order.
    """
    labels = _check_ids(labels, "The labels")
    classes, inverse = np.unique(labels, return_inverse=True)
    ids = np.arange(classes.size, dtype=np.uint32) + (0 if classes.size and classes[0] == 0 else 1)
    return ids[inverse.reshape(labels.shape)]


def foreground_probability(probabilities) -> np.ndarray:
    """(H, W) float32: the network's probability that a pixel is not background, ``1 - probabilities[0]``,
    clipped to [0, 1] (rounding may leave it a hair outside), from (K, H, W) class probabilities."""
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"The probabilities must be (K, H, W) with K >= 2 classes, got shape {p.shape}.")
    return np.clip(1.0 - p[0].astype(np.float32), 0.0, 1.0)


def segmentation_objects(labels, foreground_prob, *, one_object: bool = False, distance=None) -> np.ndarray:
    """The objects of a segmentation as :meth:`ClisSession.segment` and batch give them.

    ``one_object`` (a model that declares one object per class, the lesion model): :func:`single_object`;
    otherwise :func:`instances_from_probabilities` with its defaults (on the instance head's ``distance`` map
    where the model has one).

    Returns
    -------
    (H, W) uint32
        0 = background, objects numbered 1..N.
    """
    if one_object:
        return single_object(labels)
    return instances_from_probabilities(foreground_prob, labels, distance=distance)


def measure_objects(instances, image, uncertainty=None) -> dict[str, np.ndarray]:
    """Per-object measurements, a table of columns (one row per object, by increasing id).

    Columns: ``label`` (the object's id), ``area`` (px), ``perimeter`` (px; scikit-image's estimate along
    4-connected borders), ``mean_intensity``, for a colour image ``mean_red``, ``mean_green``, ``mean_blue``,
    with ``uncertainty`` given ``mean_uncertainty``, and ``centroid_y``, ``centroid_x`` (row and column, px).

    ``mean_intensity`` is the mean grey value in the image's own units; for a colour image it is the mean
    luminance (0.2125 R + 0.7154 G + 0.0721 B, as scikit-image's ``rgb2gray``, but not rescaled), so grey
    and colour images give one comparable column, and each channel's mean is kept beside it (a stain's
    colour). An alpha channel is ignored.

    Parameters
    ----------
    instances : (H, W) int array
        0 = background, one positive id per object.
    image : (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of numbers
    uncertainty : (H, W) float array, optional

    Returns
    -------
    dict of str to 1D numpy.ndarray
        Columns of equal length (0 when there is no object), ready for ``pandas.DataFrame`` or a CSV.

    Raises
    ------
    ValueError
        A shape differs from the objects' map, the image has another channel count, or ids are invalid.
    """
    from skimage.measure import regionprops_table

    inst = _check_ids(instances, "The objects' map")
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise ValueError(f"The image must be (H, W) grey or (H, W, 3|4) colour, got shape {img.shape}.")
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool) or np.iscomplexobj(img):
        raise ValueError(f"The image must hold real numbers, got dtype {img.dtype}.")
    _same_shape(inst.shape, img.shape[:2], "The image")
    if uncertainty is not None:
        uncertainty = _check_2d(uncertainty, "The uncertainty")
        _same_shape(inst.shape, uncertainty.shape, "The uncertainty")

    geometry = regionprops_table(inst, properties=("label", "area", "perimeter", "centroid"))
    ids = geometry["label"].astype(np.int64)
    # Means by one bincount per channel over the objects' pixels (vectorised; regionprops_table would stack
    # the channels into one more (H, W, C) copy of the image).
    flat = inst.ravel()
    fg = flat > 0
    index = np.searchsorted(ids, flat[fg])
    area = np.bincount(index, minlength=ids.size).astype(np.float64)

    def mean(values) -> np.ndarray:
        sums = np.bincount(index, weights=np.asarray(values, np.float64).ravel()[fg], minlength=ids.size)
        return sums / np.maximum(area, 1)

    table = {
        "label": ids,
        "area": geometry["area"].astype(np.int64),
        "perimeter": geometry["perimeter"].astype(np.float64),
    }
    if img.ndim == 2:
        table["mean_intensity"] = mean(img)
    else:
        channels = [mean(img[..., k]) for k in range(3)]
        table["mean_intensity"] = sum(w * c for w, c in zip(_LUMA, channels))  # luminance is linear
        for name, c in zip(("red", "green", "blue"), channels):
            table[f"mean_{name}"] = c
    if uncertainty is not None:
        table["mean_uncertainty"] = mean(uncertainty)
    table["centroid_y"] = geometry["centroid-0"].astype(np.float64)
    table["centroid_x"] = geometry["centroid-1"].astype(np.float64)
    return table


def measurements_csv(rows, columns=None) -> bytes:
    """A CSV file's bytes (UTF-8, a header row, ``\\n`` line ends) from a table of columns.

    ``rows`` is a dict of equal-length 1D columns (:func:`measure_objects`' table, with any columns put in
    front of it, such as the plane of a stack). Whole numbers are written as such; other numbers in Python's
    shortest form that reads back to the same value.
    """
    import csv
    import io

    names = list(rows) if columns is None else list(columns)
    cols = [np.asarray(rows[n]) for n in names]
    lengths = {c.shape[0] for c in cols}
    if len(lengths) > 1 or any(c.ndim != 1 for c in cols):
        raise ValueError(f"The measurement columns must be 1D and of equal length, got lengths {sorted(lengths)}.")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    values = [c.tolist() for c in cols]  # Python ints and floats: repr is exact and short
    for row in zip(*values):
        writer.writerow(row)
    return buf.getvalue().encode("utf-8")
