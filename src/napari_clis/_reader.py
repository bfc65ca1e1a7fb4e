"""npe2 reader: the TIFFs napari-clis writes reopen as the layers they were, where they were.

A labels file (the napari writer's ``segmentation``, batch's ``<stem>_labels.tif``, ``_instances.tif``,
``_superpixels.tif``) opens as a Labels layer, an uncertainty map as an Image layer drawn as the widget draws it
(:data:`UNCERTAINTY_STYLE`), each with the name, scale, translate (and class names or contrast limits) its record
holds (the schema of :mod:`napari_clis.tiffs`). Any other TIFF is not claimed (``get_reader`` gives None). No Qt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["get_reader", "read_tiff", "layer_data", "UNCERTAINTY_STYLE", "uncertainty_style", "CLASS_COLOURS",
           "class_colormap", "SEGMENTATION_OPACITY"]

SEGMENTATION_OPACITY = 0.35  # a light fill: the image shows through, the instances' outlines draw the objects


# How the uncertainty map is drawn, in the widget and when its file is reopened (the one place it is written):
# transparent where the model is sure, through red and orange to pale yellow where it is unsure, blended over the
# image and the segmentation (not added to them), so both show through on dark fluorescence and on light skin alike
UNCERTAINTY_STYLE = {
    "colormap": {"name": "uncertainty (napari-clis)",
                 "colors": [[0.0, 0.0, 0.0, 0.0], [0.85, 0.1, 0.35, 0.45], [1.0, 0.55, 0.0, 0.8],
                            [1.0, 1.0, 0.6, 0.95]]},
    "blending": "translucent",
    "opacity": 0.9,
}


# The classes' colours, in the widget and when a segmentation file is reopened: light and saturated, unlike the
# yellow suggestion rings and the cyan background clicks, and visible over dark fluorescence, purple stains and skin
# alike (napari's own first label colour is a dark brown that vanishes on H&E)
CLASS_COLOURS = ("#3cff3c", "#ff9933", "#ff4df0", "#4da6ff", "#b366ff", "#66ffe0", "#ff6666", "#e6e6e6")


def class_colormap(n_classes: int) -> dict:
    """A Labels layer's ``colormap`` for class ids: 0 transparent, class k the k-th of :data:`CLASS_COLOURS`
    (cycled), any other id the first."""
    out: dict = {None: CLASS_COLOURS[0], 0: "transparent"}
    for k in range(1, max(2, int(n_classes))):
        out[k] = CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]
    return out


def uncertainty_style() -> dict:
    """A copy of :data:`UNCERTAINTY_STYLE` to give a layer (napari keeps what it is given)."""
    import copy

    return copy.deepcopy(UNCERTAINTY_STYLE)
_UNCERTAINTY_LAYER = "uncertainty"  # the widget's name for the map: the napari writer saves it as kind "image"


def get_reader(path):
    """The reader for a TIFF napari-clis wrote (its description holds the plugin's record); None for any other
    path, a list of paths (a stack of files) included, which other readers (napari's own) open."""
    from .tiffs import read_metadata

    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    return read_tiff if read_metadata(path) else None


def read_tiff(path) -> list[tuple]:
    """``[(data, layer keyword arguments, layer type)]`` for one TIFF napari-clis wrote.

    Raises ``ValueError`` naming the file for one cut short or damaged (:func:`napari_clis.tiffs.read_layer`).
    """
    from .tiffs import read_layer

    data, record = read_layer(path)
    return [layer_data(data, record, Path(path).stem)]


def layer_data(data: np.ndarray, record: dict, default_name: str) -> tuple:
    """The layer a record describes: its type, name, geometry (where it fits the data) and look."""
    layer_type = "image" if record.get("layer_type") == "image" else "labels"
    rgb = layer_type == "image" and data.ndim >= 3 and data.shape[-1] in (3, 4) and \
        len(record.get("scale") or ()) == data.ndim - 1
    spatial = data.ndim - rgb
    kwargs: dict = {"name": record.get("name") or default_name}
    for key in ("scale", "translate"):
        values = record.get(key)
        if isinstance(values, list) and len(values) == spatial:  # batch outputs have none: napari's default
            kwargs[key] = [float(v) for v in values]
    names = record.get("class_names")
    if names:
        kwargs["metadata"] = {"class_names": list(names)}
    if layer_type == "labels":
        # a segmentation: the light fill of its classes' colours the widget draws (objects and superpixels open
        # filled, one colour each: a reader cannot ask napari for outlines, which Labels take only once made)
        if names and record.get("kind", "labels") == "labels" and kwargs["name"] not in ("instances", "superpixels"):
            kwargs.update(colormap=class_colormap(len(names)), opacity=SEGMENTATION_OPACITY)
        return data, kwargs, layer_type
    if rgb:
        kwargs["rgb"] = True
    limits = record.get("contrast_limits")
    if record.get("kind") == "uncertainty" or kwargs["name"] == _UNCERTAINTY_LAYER:
        kwargs.update(uncertainty_style())
        if limits is None and names and len(names) > 1:  # the map's full range, as the widget shows it
            limits = [0.0, 1.0 - 1.0 / len(names)]
    if limits is not None and len(limits) == 2 and limits[0] < limits[1]:
        kwargs["contrast_limits"] = [float(v) for v in limits]
    return data, kwargs, layer_type
