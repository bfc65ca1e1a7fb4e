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
SEGMENT_DOCK_NAME = "napari_clis_segment"  # the Segment (CLIS) dock's Qt object name
SEGMENTATION, UNCERTAINTY, SUPERPIXELS = "segmentation", "uncertainty", "superpixels"
INSTANCES = "instances"  # one id per object (touching nuclei split), drawn as outlines
CLICKS, SUGGESTIONS = "clicks", "suggestions"
MAPS = (SEGMENTATION, UNCERTAINTY, SUPERPIXELS, INSTANCES)
# How clicks and suggestions look: saturated colours with a dark border, seen on dark fluorescence and light skin
BACKGROUND_CLICK_COLOUR = "#00e5ff"  # cyan: unlike the object colours, the yellow rings and skin tones
CLICK_STYLE = {"border_color": "#101010", "border_width": 0.2}
# a thin gold circle just outside the object, clear inside: napari's "ring" symbol is clear only inside half its
# radius, so around an object its band was as wide as the object and, zoomed in, tinted it and hid its neighbours
SUGGESTION_STYLE = {"symbol": "disc", "face_color": "transparent", "border_color": [1.0, 0.84, 0.0, 1.0],
                    "border_width": 0.06, "opacity": 1.0}
AUTO_TASK = -1  # the Task list's "auto": the task-aware module chooses
AUTO_RANGE, DISPLAYED_RANGE = "automatic", "as displayed"  # the Intensity range list: the robust range, contrast limits
FINDING_OBJECTS = "finding the objects…"  # the status between a segmentation shown and its objects
REPLACED = "This panel was closed or replaced by a newer one on this window; use that one."
GEOMETRY = ("scale", "translate", "rotate", "shear", "affine", "units")


class Settings:
    """Tunables of the views (a test may lower them)."""

    async_pixels = 0  # (kept for scripts) clicks always propagate in the worker lane
    busy_text_pixels = 2**21  # planes larger than this say "Propagating…" while their clicks propagate



def object_reach(objects, ident: int, y: float, x: float, box=None) -> float:
    """How far object ``ident`` of the (H, W) map ``objects`` reaches from ``(y, x)``, in px (0: it has no pixel);
    ``box``: its bounding box (``ndimage.find_objects``), to look only there."""
    sub = np.asarray(objects if box is None else objects[box])
    ys, xs = np.nonzero(sub == ident)
    if not ys.size:
        return 0.0
    if box is not None:
        ys, xs = ys + box[0].start, xs + box[1].start
    return float(np.sqrt(((ys - y) ** 2 + (xs - x) ** 2).max()))


def ring_size(reach: float) -> float:
    """The size of a ring drawn just outside an object that reaches ``reach`` px from the ring's centre (the
    suggestions' gold rings, the chosen object's cyan one)."""
    return 2.0 * (reach + 3.0)

def notify_error(message: str) -> None:
    """A failure: napari's error notification (it stays until dismissed)."""
    from napari.utils.notifications import show_error

    logger.warning(message)
    show_error(message)


def notify_warning(message: str) -> None:
    """A step asked for out of order, or of something that is gone (Learn before Segment): a warning, which
    napari dismisses after a while."""
    from napari.utils.notifications import show_warning

    logger.info(message)
    show_warning(message)


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
    so that its pixels lie on ``src``'s and a point put on ``src`` lands on the same pixel of ``dst``.

    Only what differs is set: each setter refreshes the layer and makes the viewer recompute its dims over all
    layers, which costs tens of milliseconds on the GUI thread; an unchanged geometry costs nothing."""
    for name in GEOMETRY:
        if hasattr(src, name) and not same_value(getattr(dst, name, None), getattr(src, name)):
            setattr(dst, name, getattr(src, name))


def same_value(a, b) -> bool:
    """Whether two geometry values (arrays, transforms, tuples of units) are equal."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    for v in (a, b):  # napari's Affine: compare its matrix
        if hasattr(v, "affine_matrix"):
            a, b = getattr(a, "affine_matrix", a), getattr(b, "affine_matrix", b)
            break
    try:
        x, y = np.asarray(a), np.asarray(b)
        if x.dtype.kind in "fiub" and y.dtype.kind in "fiub":
            return x.shape == y.shape and bool(np.array_equal(x, y))
        return bool(tuple(map(str, np.ravel(a))) == tuple(map(str, np.ravel(b)))) and x.shape == y.shape
    except Exception:  # noqa: BLE001 - unknown types: set them
        return False


def outline_width(shape) -> int:
    """The objects' outline width in pixels: 2 on small images, thicker on large ones (about 1/400 of the long
    side), so outlines stay visible when the whole image fits the window."""
    return int(max(2, round(max(shape[-2:]) / 400)))


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
    """Which learned task segmented the current image, in plain words: a second line for the status ("" before
    anything is learned). The numbers behind the choice are in :func:`task_choice_detail` (the status's tooltip)."""
    if session is None or (not session.tasks and not session.remembered):
        return ""
    c, t = session.task_choice, session.task
    if c.get("asked"):
        return f"\nUsed learned task {t}, as chosen." if t else "\nUsed the pretrained model, as chosen."
    if c.get("known"):
        return f"\nUsed learned task {t}: it was learned on this image."
    if t != 0 and c.get("agreement") is not None:
        from ..continual import TRANSFER_AGREEMENT

        if c["agreement"] < TRANSFER_AGREEMENT:  # an image unlike the training images takes it anyway: say so
            return (f"\nUsed learned task {t}: it was learned on a similar image, and it changes much of what the "
                    f"pretrained model finds here (they agree on {c['agreement']:.0%}). If this looks worse, choose "
                    "'none (pretrained)' in Learned task and Segment again.")
        return f"\nUsed learned task {t}: it was learned on a similar image."
    if c.get("nearest") and c.get("agreement") is not None:
        return (f"\nUsed the pretrained model: learned task {c['nearest']} (from the most similar image) did not "
                "fit this image.")
    return "\nUsed the pretrained model."


def task_choice_detail(session) -> str:
    """The technical detail of :func:`task_choice_text`, for the status's tooltip ("" when there is none)."""
    if session is None or (not session.tasks and not session.remembered):
        return ""
    from ..continual import TRANSFER_AGREEMENT

    c = session.task_choice
    if c.get("agreement") is None or c.get("asked") or c.get("known"):
        return ""
    return (f"Task-aware choice: the most similar image taught is task {c.get('nearest')}'s; its segmentation agrees "
            f"with the pretrained task's at {c['agreement']:.2f} (Dice), and a learned task is used from "
            f"{TRANSFER_AGREEMENT} up" + (" (on an image unlike the training images, whatever the agreement)."
                                          if c.get("unfamiliar") else "."))


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
