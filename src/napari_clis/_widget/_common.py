"""What the widget's views share: names, the layer helpers (duck-typed: no Qt, no napari import) and texts."""

from __future__ import annotations

import itertools
import logging
import re

import numpy as np

from .. import _tooltips as tips
from ..preprocessing import image_layout

logger = logging.getLogger("napari_clis._widget")

CUSTOM_MODEL = "Model file…"
LAYER_TAG = "napari_clis"  # key in layer.metadata marking the layers this widget owns
SEGMENTATION, UNCERTAINTY, SUPERPIXELS = "segmentation", "uncertainty", "superpixels"
INSTANCES = "instances"  # one id per object (touching nuclei split), drawn as outlines
CLICKS, SUGGESTIONS = "clicks", "suggestions"
MAPS = (SEGMENTATION, UNCERTAINTY, SUPERPIXELS, INSTANCES)
BACKGROUND_CLICK_COLOUR = "#e0e0e0"
AUTO_TASK = -1  # the Task list's "auto": the task-aware module chooses
AUTO_RANGE, DISPLAYED_RANGE = "automatic", "as displayed"  # the Intensity range list: the robust range, contrast limits
REPLACED = "This panel was closed or replaced by a newer one on this window; use that one."
GEOMETRY = ("scale", "translate", "rotate", "shear", "affine", "units")


class Settings:
    """Tunables of the views (a test may lower them)."""

    async_pixels = 2**21  # planes larger than this propagate clicks in a worker thread


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    logger.warning(message)
    show_error(message)


def pixels(layer):
    """A layer's data; of a multiscale layer, its full-resolution level (the one its shape and the segmentation's
    pixels are of; ``numpy.asarray`` of napari's multiscale data gives the coarsest)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer) -> tuple[int, ...]:
    return tuple(layer.data.shape[:-1] if layer.rgb else layer.data.shape)


def layout(layer):
    """The layer's :class:`~napari_clis.preprocessing.ImageLayout`, as batch segmentation reads a file's axes
    (napari's ``rgb`` says whether the last axis holds colours)."""
    return image_layout(pixels(layer).shape, colour=bool(getattr(layer, "rgb", False)))


def source_id(layer) -> str:
    """What identifies an image across renames (a layer's name need not be unique over time): the layer, and the
    shape of its data (an image layer given data of another shape holds another image)."""
    return f"{layer.unique_id}:{'x'.join(map(str, spatial_shape(layer)))}"


def same_source(lyr, image_layer) -> bool:
    """Whether ``lyr`` (an output layer) was made for ``image_layer``."""
    return lyr.metadata.get("source_id") == source_id(image_layer)


def slice_of(layer, idx) -> np.ndarray:
    """The (H, W) slice ``idx`` of a layer's pixels (the whole of them for a 2D layer)."""
    data = pixels(layer)
    return np.asarray(data[idx] if idx else data)


def copy_geometry(dst, src) -> None:
    """Give ``dst`` the whole data-to-world transform of ``src`` (scale, translate, rotate, shear, affine, units),
    so that its pixels lie on ``src``'s and a point put on ``src`` lands on the same pixel of ``dst``."""
    for name in GEOMETRY:
        if hasattr(src, name):
            setattr(dst, name, getattr(src, name))


def digest(data) -> str:
    """A fingerprint of a layer's pixels (to tell whether anyone changed them since)."""
    import hashlib

    arr = np.ascontiguousarray(data)
    return f"{arr.shape}:{arr.dtype}:" + hashlib.blake2b(arr.view(np.uint8), digest_size=16).hexdigest()


def plane_indices(layer, viewer, all_slices: bool) -> list[tuple[int, ...]]:
    """Index tuples over the leading (non-YX) axes of ``layer`` for the planes to segment.

    ``all_slices`` gives every plane; otherwise the plane the viewer shows. Raises ``ValueError`` with a
    message for the user when the image's axes cannot be read as planes (``preprocessing.image_layout``) or the
    view cannot be mapped to a YX plane of the layer.
    """
    shape = spatial_shape(layer)
    if len(shape) < 2:
        raise ValueError(f"'{layer.name}' is {len(shape)}D; segmentation needs at least a 2D image.")
    lead = layout(layer).lead
    if all_slices or not lead:
        return list(itertools.product(*(range(n) for n in lead)))
    if viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed)[-2:] != (viewer.dims.ndim - 2, viewer.dims.ndim - 1):
        raise ValueError(
            "The viewer does not show a YX plane (3D view or swapped axes). Switch to the 2D view with the "
            "default axis order, or tick 'All slices'."
        )
    point = np.asarray(layer.world_to_data(viewer.dims.point), float)
    idx = tuple(int(round(v)) for v in point[: len(lead)])
    for axis, (i, n) in enumerate(zip(idx, lead)):
        if not 0 <= i < n:  # napari draws nothing of the layer there: segmenting its last slice would surprise
            raise ValueError(f"The sliders show slice {i} of axis {axis}, outside '{layer.name}' (slices 0..{n - 1}),"
                             " where napari draws nothing of it. Move the slider onto it, or tick 'All slices'.")
    return [idx]


# -- texts -------------------------------------------------------------------------------------------------------
def breakable(text: str, every: int = 24) -> str:
    """``text`` with a zero-width space after every ``every`` characters of a long word (a file name, a path), so
    that a wrapping label can break it instead of cutting it off at the dock's edge."""
    return re.sub(r"\S{%d}(?=\S)" % every, lambda m: m.group(0) + "\u200b", text)


def plain(text: str) -> str:
    """``text`` without the zero-width spaces :func:`breakable` put in."""
    return text.replace("\u200b", "")


def task_choice_text(session) -> str:
    """Which task segmented the current image and why: a second line for the status ("" before anything is
    learned). The agreement is with the pretrained task's segmentation (``continual.choose_task``)."""
    if session is None or (not session.tasks and not session.remembered):
        return ""
    c, t = session.task_choice, session.task
    from ..continual import TRANSFER_AGREEMENT

    if c.get("asked"):
        return f"\nTask {t}, as asked."
    if c.get("known"):
        return f"\nTask {t}: this image's own."
    if t != 0 and c.get("agreement") is not None:
        return f"\nTask {t}: learned on the most similar image (agreement {c['agreement']:.2f})."
    if c.get("nearest") and c.get("agreement") is not None:
        return (f"\nPretrained task: task {c['nearest']} (most similar image) disagrees "
                f"({c['agreement']:.2f} < {TRANSFER_AGREEMENT}).")
    return "\nPretrained task."


def familiarity_text(familiarity) -> str:
    """A line for the status when the image is unlike what the model knows ("" otherwise); the detail and what
    to do are in the status's tooltip (``familiarity.message``)."""
    if familiarity is None or not familiarity.unfamiliar:
        return ""
    return "\n" + tips.UNFAMILIAR


def object_count_text(session, instances) -> str:
    """How many objects the segmentation holds, in the model's words: "42 nuclei", "1 lesion", "7 objects"."""
    n = int(instances.max()) if instances.size else 0
    names = session.class_names[1:]
    word = names[0] if len(names) == 1 and names[0] else "object"
    if n != 1:
        word = word[:-2] + "i" if word.endswith("us") else word if word.endswith("s") else word + "s"
    return f"{n} {word}"
