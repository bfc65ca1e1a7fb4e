"""Turn a user's 2D image (any dtype, grey or colour) into the network's input, with clear errors.

numpy (and scikit-image's Otsu threshold, scipy's labelling): no Qt, no napari, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["as_2d_image", "normalize_image", "intensity_range", "check_intensity_range", "range_hides_image",
           "check_tiling", "plan_tiles",
           "Tile", "ImageError", "MIN_TILE", "DEFAULT_TILE", "DEFAULT_MARGIN", "ImageLayout", "image_layout",
           "alpha_is_transparency", "MIN_PLANE_SIDE"]

MIN_TILE = 64  # smallest tile core: smaller tiles are mostly margin and cost more than they save
# images up to this many pixels on a side run in one piece, in segment(), the widget and batch alike (a 1024 px
# tile and its context peak at about 2.3 GB: docs/benchmarks.md)
DEFAULT_TILE = 1024
DEFAULT_MARGIN = 96  # context around each tile; wider than the network's receptive field
MIN_PLANE_SIDE = 8  # px: a stack's planes narrower than this are an image's channels (last), not planes

# Percentiles that set the intensity range; robust to a few hot pixels and to dark backgrounds.
_LOW_PERCENTILE = 1.0
_HIGH_PERCENTILE = 99.8
# Above this many values the percentiles are estimated on a regular subsample (same result for all
# practical purposes, and a 4096x4096 RGB image does not need a 150 MB sort).
_MAX_PERCENTILE_SAMPLES = 1 << 20
# Bright outliers (mitotic cells, debris, a saturated spot) would set the high percentile on their own and push
# ordinary objects to near zero. A 2x2 block brighter than _OUTLIER_FACTOR times the typical object level (above the
# low end), with what joins it above _OUTLIER_CORE times that level, is left out of the high percentile, and so
# saturates instead. Chosen on dsb2018 and bbbc039 (issue 19; 2026-12-07): 3 nuclei made 10x brighter in 202
# held-out fluorescence images then move the range by more than 10% in 18 (never more than 2x; the rule before
# moved it up to 16x and 9x), while no unmodified dsb2018 image (of 564) changes its range; 2 of the 100 bbbc039
# images do (saturated spots had set their 99.8th percentile at the sensor's maximum).
_OUTLIER_FACTOR = 6.0
_OUTLIER_CORE = 3.0  # what joins a bright block above this many times the typical level is the outlier's own rim
_FOREGROUND_PERCENTILE = 75.0
_OUTLIER_BLOCK = 2  # block side in pixels: averages out pixel noise, keeps small nuclei
_MAX_OUTLIER_BLOCKS = 1 << 22  # larger images use larger blocks, so the block grid stays a few tens of MB
_MIN_OUTLIER_BLOCKS = 1024  # below this (an image under about 64x64 pixels) there are too few objects to judge
_MAX_OUTLIER_AREA = 0.2  # objects left out cover at most this fraction of the image, else only their bright blocks
# Outliers are left out only where that at least halves the range: the network copes with a range up to twice too
# wide (held-out grey fluorescence: Dice -0.003 on average), and a varied field's brightest nuclei must not saturate.
_MIN_OUTLIER_EFFECT = 0.5


class ImageError(ValueError):
    """The image cannot be segmented; the message says why and what is expected."""


def check_tiling(tile, margin=None) -> None:
    """Raise ``ValueError`` unless ``tile`` is a whole number >= :data:`MIN_TILE` and ``margin`` one >= 0."""
    for name, value, low in (("tile", tile, MIN_TILE), ("margin", 0 if margin is None else margin, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be a whole number of pixels, at least {low}, got {value!r}")


@dataclass(frozen=True)
class Tile:
    """One piece of a plane: ``core`` (y0, y1, x0, x1) is what it contributes, ``crop`` (ya, yb, xa, xb) what
    the network sees (the core and up to ``margin`` px of context on each side)."""

    core: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]

    @property
    def core_in_crop(self) -> tuple[int, int, int, int]:
        (y0, y1, x0, x1), (ya, _, xa, _) = self.core, self.crop
        return y0 - ya, y1 - ya, x0 - xa, x1 - xa


def plan_tiles(height: int, width: int, tile: int = DEFAULT_TILE, margin: int = DEFAULT_MARGIN) -> list[Tile]:
    """The tiles of an ``(height, width)`` plane, row by row; one tile when neither side exceeds ``tile``.

    A side longer than ``tile`` is split into ``ceil(side / tile)`` equal cores, rounded up to a multiple of 8
    so that every crop starts on the network's 8-pixel grid (the tiled result then matches the untiled one).
    ``segment()`` and batch segmentation both tile with it, so they cut an image the same way.
    """
    if height <= tile and width <= tile:
        return [Tile((0, height, 0, width), (0, height, 0, width))]
    check_tiling(tile, margin)

    def cores(side):
        step = -(-side // math.ceil(side / tile))
        step += -step % 8
        return [(a, min(a + step, side)) for a in range(0, side, step)]

    return [Tile((y0, y1, x0, x1), (max(0, y0 - margin), min(height, y1 + margin),
                                     max(0, x0 - margin), min(width, x1 + margin)))
            for y0, y1 in cores(height) for x0, x1 in cores(width)]


@dataclass(frozen=True)
class ImageLayout:
    """How an image's axes are read (:func:`image_layout`): ``lead``, the shape of the leading axes, one 2D plane
    per index; ``plane``, (H, W); ``channels``, 0 for grey, else the colour channels on the last axis (3 or 4)."""

    shape: tuple[int, ...]
    lead: tuple[int, ...]
    plane: tuple[int, int]
    channels: int

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.lead)) if self.lead else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape without the colour axis: the shape of the labels."""
        return self.lead + self.plane

    @property
    def channels_first_hint(self) -> bool:
        """Whether a three-axis stack of 2 to 4 large planes may hold channels (C, Y, X) rather than slices: worth
        a hint (it is segmented plane by plane all the same)."""
        return len(self.lead) == 1 and 2 <= self.lead[0] <= 4 < min(self.plane)


def image_layout(shape, *, colour: bool | None = None) -> ImageLayout:
    """The one decision of what an image's axes are, for the widget and for batch segmentation alike.

    ``shape``: the array's shape. ``colour``: whether its last axis holds colour channels, when the caller knows
    (napari's ``layer.rgb``, a TIFF's ``S`` axis); by default a last axis of 3 or 4 behind at least two others is
    colour (RGB, RGBA). The axes before the last two spatial ones index planes (a z-stack, a time series).
    Raises :class:`ImageError` for fewer than two spatial axes, and for a stack whose planes are narrower than
    :data:`MIN_PLANE_SIDE` pixels (an image with its channels last, read as slices: a stack of slivers).
    Whether an RGBA image's alpha is dropped is :func:`alpha_is_transparency`'s decision."""
    shape = tuple(int(n) for n in shape)
    if colour is None:
        colour = len(shape) >= 3 and shape[-1] in (3, 4)
    channels = shape[-1] if colour else 0
    spatial = shape[:-1] if colour else shape
    if len(spatial) < 2 or 0 in shape:
        raise ImageError(f"It is not an image: its shape is {shape}; segmentation needs at least a 2D image.")
    lead, plane = spatial[:-2], (spatial[-2], spatial[-1])
    if lead and min(plane) < MIN_PLANE_SIDE:
        raise ImageError(f"Its shape {shape} would make {int(np.prod(lead))} planes of {plane[0]}x{plane[1]} pixels: "
                         "it looks like an image with its channels last, read as slices. Segment each channel as an "
                         "image of its own (for a file, save it so), or open or save an RGB image as RGB.")
    return ImageLayout(shape, lead, plane, channels)


def alpha_is_transparency(rgba) -> bool:
    """Whether the last channel of ``rgba`` (one plane, (H, W, 4) or (H, W, 2)) is a real alpha channel that is
    not constant: nearly all of it (90%) fully transparent or fully opaque (the type's largest value; 1.0 for
    floats), with an opaque part of at least a tenth, as a cut-out or a photo with a transparent corner has. Such
    an image is segmented by its colours, its alpha left out (the widget and batch segmentation alike). A varying
    last channel of any other kind holds data (a 4-channel microscopy image), which :func:`as_2d_image` refuses
    with its message; a constant one it drops."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[-1] not in (2, 4):
        return False
    alpha = rgba[..., -1]
    if not alpha.size or alpha.min() == alpha.max():
        return False
    opaque = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
    solid = (alpha == opaque).mean()
    return bool(alpha.min() >= 0 and solid >= 0.1 and solid + (alpha == 0).mean() >= 0.9)


def as_2d_image(image) -> np.ndarray:
    """Validate ``image`` and return it as ``(H, W)`` grey or ``(H, W, 3)`` colour, dtype unchanged.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 2)`` (grey with a constant alpha channel, which is dropped),
    ``(H, W, 3)`` (RGB) and ``(H, W, 4)`` (RGBA with a constant alpha channel, which is dropped; a varying 4th
    channel means a 4-channel image and is refused, as is a varying 2nd).
    Raises :class:`ImageError` naming the problem for anything else.
    """
    if isinstance(image, (list, tuple)) and len(image) > 1 and all(hasattr(a, "shape") for a in image) and \
            len({tuple(a.shape) for a in image}) > 1:
        raise ImageError(f"Got {len(image)} arrays of different shapes, a multiscale image (napari's pyramid): "
                         "give one level, e.g. the full-resolution image[0].")
    try:
        arr = np.asarray(image)
    except ValueError as e:  # a ragged sequence
        raise ImageError(f"The image is not one array of numbers ({e}).") from e
    if arr.dtype.kind == "c":
        raise ImageError("The image holds complex numbers; take its magnitude or real part first.")
    if arr.dtype.kind not in "biuf":  # numpy counts time differences (timedelta64) as numbers; they are not pixels
        raise ImageError(f"The image must hold numbers, got dtype {arr.dtype}.")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey + alpha (a PNG's "LA" mode) or RGBA
        c = arr.shape[-1]
        alpha = arr[..., -1]
        if alpha.size and alpha.min() != alpha.max():
            what, keep = ("grey + alpha", "image[..., 0]") if c == 2 else ("RGBA", "image[..., :3]")
            raise ImageError(
                f"The image has {c} channels and the {c}{'nd' if c == 2 else 'th'} is not a constant (opaque) alpha "
                f"channel, so it looks like a {c}-channel microscopy image rather than {what}. Segment one channel"
                f"{', or an RGB composite' if c == 4 else ''}; if it is {what} with transparency, drop the alpha "
                f"channel first ({keep})."
            )
        arr = arr[..., 0] if c == 2 else arr[..., :3]
    if arr.ndim == 2:
        pass
    elif arr.ndim == 3 and arr.shape[-1] == 3:
        pass
    elif arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] > 4:
        raise ImageError(
            f"The image has shape {arr.shape}: it looks channel-first. Give colour images as (H, W, 3) "
            "or (H, W, 4), e.g. with numpy.moveaxis(image, 0, -1)."
        )
    else:
        raise ImageError(
            f"Expected a 2D image, (H, W) grey or (H, W, 3|4) colour, got shape {arr.shape}. "
            "For a stack or a time series, segment one 2D slice at a time."
        )
    h, w = arr.shape[:2]
    if h < 2 or w < 2:
        raise ImageError(f"The image is too small to segment ({h}x{w} pixels); it needs at least 2x2.")
    return arr


def normalize_image(image, *, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Network input ``(3, H, W)`` float32 in ``[-0.5, 0.5]`` from a 2D grey or colour image.

    The intensity range is set by the 1st and 99.8th percentiles over all channels (colour balance is
    kept), so uint8, uint16 and float images of any range give the same input. Bright outlier objects (a few
    mitotic cells or debris far brighter than the rest) are left out of the 99.8th percentile and saturate, so
    that they do not push the ordinary objects to near zero. Grey images are
    repeated over three channels. A constant image gives zeros. NaN or Inf raise :class:`ImageError`.

    ``value_range``, the ``(low, high)`` of :func:`intensity_range` of a larger image, normalises a tile of
    that image exactly as the whole image would be (batch tiling).
    """
    arr = _as_numeric_2d(image)
    if value_range is None:
        arr, _ = _tame(arr)
        lo, hi = _percentile_range(arr)
    else:  # scaled by the power of two the whole image's range needs, so a tile comes out as the whole image does
        exponent = _tame_exponent(max(abs(value_range[0]), abs(value_range[1])))
        lo, hi = (float(np.ldexp(v, -exponent)) for v in value_range)
        if exponent and arr.dtype.kind == "f":
            arr = np.ldexp(arr, -exponent).astype(arr.dtype, copy=False)
    if hi > lo and arr.dtype.kind in "iu" and arr.dtype.itemsize <= 4:
        # the whole part of the low end is subtracted in integers, exactly: float32 then holds each pixel's
        # distance from it, where 16-bit counts far above a narrow range lost digits (1.5e-6 of the range)
        info = np.iinfo(arr.dtype)  # a low end beyond the image's type (a range given by hand) is clamped into it,
        base = int(min(max(np.floor(lo), info.min), info.max))  # so no pixel's distance from it overflows
        arr = arr.astype({1: np.int16, 2: np.int32}.get(arr.dtype.itemsize, np.int64))  # room for the sign
        arr -= base
        lo, hi = lo - base, hi - base
    out = arr.astype(np.float64 if arr.dtype.itemsize > 4 else np.float32)  # 64-bit values keep their precision
    if hi > lo:
        width = hi - lo
        if out.dtype == np.float32 and width < np.finfo(np.float32).tiny:  # a subnormal range (values like 1e-40):
            out = out.astype(np.float64)  # float32 cannot hold its reciprocal, nor the range itself exactly
        out -= out.dtype.type(lo)
        with np.errstate(over="ignore"):  # values far above so narrow a range divide to inf, clipped to 1 below
            out /= out.dtype.type(width)
        np.clip(out, 0.0, 1.0, out=out)
        out -= 0.5
        out = out.astype(np.float32, copy=False)
    else:
        out = np.zeros(out.shape, np.float32)
    if out.ndim == 2:
        return np.broadcast_to(out, (3,) + out.shape).copy()
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


def intensity_range(image) -> tuple[float, float]:
    """``(low, high)``: the intensities :func:`normalize_image` maps to -0.5 and 0.5 (1st and 99.8th
    percentiles over all channels, the latter without bright outlier objects; the minimum and maximum where
    those are equal)."""
    arr, exponent = _tame(_as_numeric_2d(image))
    lo, hi = _percentile_range(arr)
    return float(np.ldexp(lo, exponent)), float(np.ldexp(hi, exponent))  # in the image's own units


RANGE_HIDES = 0.99  # the share of an image a chosen intensity range makes all black (or all white) that is warned of


def range_hides_image(image, value_range) -> str | None:
    """What to tell the user when a chosen intensity range ``(low, high)`` leaves nearly every pixel of ``image``
    at its black (or white) end, hiding the objects from the network (napari's contrast limits set past the
    nuclei); None when it does not."""
    arr = as_2d_image(image)
    low, high = value_range
    for hidden, end, colour in ((arr <= low, f"below the low end ({low:g})", "black"),
                                (arr >= high, f"above the high end ({high:g})", "white")):
        share = float((hidden.all(-1) if hidden.ndim == 3 else hidden).mean())
        if share >= RANGE_HIDES:
            return (f"{share:.1%} of the image lies {end} of the intensity range chosen: the model sees an almost "
                    f"{colour} image and finds little. Widen the range (in napari: the image layer's contrast "
                    "limits), or use the automatic range.")
    return None


def check_intensity_range(value) -> tuple[float, float] | None:
    """A chosen intensity range, checked (``segment(intensity_range=...)``, batch, the widget): None for the
    automatic one (:func:`intensity_range`; given as None, ``"auto"`` or ``"automatic"``), else ``(low, high)``
    as floats in the image's own units, for ``normalize_image(image, value_range=...)``: ``low`` maps to black,
    ``high`` to white (napari's contrast limits). Raises ValueError naming ``intensity_range`` otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "automatic")):
        return None
    wanted = "'auto' or a (low, high) pair of numbers in the image's own units"
    try:
        pair = list(np.asarray(value, dtype=object).reshape(-1)) if not isinstance(value, (str, bytes, dict)) else None
    except (TypeError, ValueError):
        pair = None
    if pair is None or len(pair) != 2 or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in pair):
        raise ValueError(f"intensity_range must be {wanted}, got {value!r}.")
    low, high = float(pair[0]), float(pair[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"intensity_range must be two finite numbers, got ({low}, {high}).")
    if not high > low:
        raise ValueError(f"intensity_range ({low:g}, {high:g}) has {'zero' if high == low else 'negative'} width: "
                         "its high end (white) must be above its low end (black).")
    return low, high


def _tame_exponent(peak: float) -> int:
    """0, or ``e`` such that ``peak * 2**-e`` is near 1 when ``peak`` is near a float type's limits."""
    exponent = int(np.frexp(peak)[1])  # peak = m * 2**exponent, 0.5 <= m < 1
    return exponent if peak > 0 and not -100 < exponent < 100 else 0


def _tame(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Values near a float type's limits scaled by a power of two (exact), in the image's own type, so that their
    differences and reciprocals cannot overflow to inf and give NaN or a flat image; and the exponent used."""
    if arr.dtype.kind == "f" and arr.size:
        exponent = _tame_exponent(float(max(-arr.min(), arr.max())))
        if exponent:
            return np.ldexp(arr, -exponent), exponent
    return arr, 0


def _percentile_range(arr: np.ndarray) -> tuple[float, float]:
    """The automatic range: the 1st percentile, and the 99.8th of the pixels outside bright outlier objects."""
    flat = arr.reshape(-1)
    step = max(1, flat.size // _MAX_PERCENTILE_SAMPLES)
    index = np.arange(0, flat.size, step)
    sample = flat[index].astype(np.float64)
    lo, hi = np.percentile(sample, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    if not hi > lo:
        return float(flat.min()), float(flat.max())
    outliers, b = _bright_outliers(arr, float(lo), float(hi))
    if outliers is not None:
        pixel = index // (arr.shape[2] if arr.ndim == 3 else 1)  # the sampled values' pixels, then their blocks
        rows = np.minimum(pixel // arr.shape[1] // b, outliers.shape[0] - 1)
        cols = np.minimum(pixel % arr.shape[1] // b, outliers.shape[1] - 1)
        kept = sample[~outliers[rows, cols]]
        robust = float(np.percentile(kept, _HIGH_PERCENTILE)) if kept.size else hi
        if lo < robust and robust - lo < _MIN_OUTLIER_EFFECT * (hi - lo):
            hi = robust
    return float(lo), float(hi)


def _bright_outliers(arr: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray | None, int]:
    """Blocks of ``b`` x ``b`` pixels that belong to bright outlier objects, and ``b``; ``None`` where none are.

    The foreground is found on block means (pixel noise averaged out) by Otsu's threshold on the log of the
    distance from the low end, where ten times brighter objects are a small step rather than a class of their
    own. The typical object level is the median, over the objects weighted by area, of each one's 75th
    percentile. A block above ``_OUTLIER_FACTOR`` times that level, with the blocks joined to it above
    ``_OUTLIER_CORE`` times the level and one block around them, is an outlier. Every step is unchanged by
    ``a * image + b`` (a > 0), as the percentiles are.
    """
    h, w = arr.shape[:2]
    b = max(_OUTLIER_BLOCK, math.ceil(math.sqrt(h * w / _MAX_OUTLIER_BLOCKS)))
    nh, nw = h // b, w // b
    if nh * nw < _MIN_OUTLIER_BLOCKS:
        return None, b
    blocks = arr[: nh * b, : nw * b].reshape((nh, b, nw, b) + arr.shape[2:])
    means = blocks.mean(axis=(1, 3, 4) if arr.ndim == 3 else (1, 3), dtype=np.float64)
    above = [float(v) - lo for v in np.percentile(means, [50, 75, 90]) if v > lo]
    eps = above[0] if above else (hi - lo) / 256  # the log's offset: the scale of the background's spread
    if not eps > 0:  # a range of subnormal width
        return None, b
    logs = np.log(np.maximum(means - lo, 0.0) + eps)
    if not logs.max() > logs.min():
        return None, b
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    objects, n = ndimage.label(logs > threshold_otsu(logs))
    if n == 0:
        return None, b
    # the typical object level: the median over the objects (by area) of each object's 75th percentile, so that a
    # few very bright objects among a dozen, or dim halos joining objects into clumps, do not set it
    per = _percentile_per_object(means, objects, n, _FOREGROUND_PERCENTILE)
    order = np.argsort(per, kind="stable")
    area = np.cumsum(np.bincount(objects.ravel())[1:][order])
    level = float(per[order][np.searchsorted(area, area[-1] / 2)])
    bright = means > lo + _OUTLIER_FACTOR * (level - lo)
    if not bright.any():
        return None, b
    # an outlier is the bright blocks with what joins them above _OUTLIER_CORE times the level (their rims), one
    # block wider: not a whole clump that merely touches it
    cores, _ = ndimage.label(means > lo + _OUTLIER_CORE * (level - lo))
    ids = np.unique(cores[bright])
    outliers = ndimage.binary_dilation(np.isin(cores, ids[ids > 0]))  # (the bright blocks are in their cores)
    if outliers.mean() > _MAX_OUTLIER_AREA:  # the "objects" run into the background: only the bright blocks
        outliers = ndimage.binary_dilation(bright)
    return outliers, b


def _percentile_per_object(values: np.ndarray, objects: np.ndarray, n: int, q: float) -> np.ndarray:
    """The ``q``-th percentile (numpy's linear one) of ``values`` over each object 1..n of ``objects``, in one sort:
    a noisy field's Otsu foreground may hold a hundred thousand specks."""
    lab = objects.ravel()
    inside = lab > 0
    v, lab = values.ravel()[inside], lab[inside]
    v = v[np.lexsort((v, lab))]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = q / 100.0 * (counts - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, counts - 1)
    return v[starts + i0] + (pos - i0) * (v[starts + i1] - v[starts + i0])


def _as_numeric_2d(image) -> np.ndarray:
    """:func:`as_2d_image`, booleans as uint8, and a refusal of NaN and Inf."""
    arr = as_2d_image(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum() - n_nan)
            raise ImageError(
                f"The image contains {n_nan} NaN and {n_inf} infinite values; replace them "
                "(e.g. numpy.nan_to_num) before segmenting."
            )
    return arr
