"""npe2 writers: a Labels or Image layer as TIFF that keeps its scale and translate (napari's own TIFF writer
drops them). The Image writer is for the ``uncertainty`` map, and any other image.

The file is a plain TIFF that any TIFF reader opens (napari's built-in reader gives the same pixels); the
layer's name, kind, scale and translate (and the class names of a Labels layer, the contrast limits of an Image
layer) are in its ImageDescription as JSON (the schema of :mod:`napari_clis.tiffs`, which batch outputs share),
and the YX pixel size also in the standard resolution tags (as a positive size, when they can hold it). Written
atomically (a temporary file in the same folder, then one rename), with the permissions of the user's umask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiffs import read_metadata

__all__ = ["write_labels", "write_image", "read_metadata", "read_labels_metadata"]


def write_labels(path: str, data, meta: dict) -> list[str]:
    """A Labels layer (the ``segmentation``): the labels as they are, with the class names. The ``instances`` and
    ``superpixels`` layers Segment (CLIS) made (tagged in their metadata) are written as those kinds, without class
    names (their ids are objects and regions, not classes)."""
    tags = meta.get("metadata") or {}
    kind = tags.get("napari_clis") if tags.get("napari_clis") in ("instances", "superpixels") else "labels"
    names = tags.get("class_names") if kind == "labels" else None
    return _write_tiff(path, data, meta, kind, {} if names is None else {"class_names": names}, rgb=False)


def write_image(path: str, data, meta: dict) -> list[str]:
    """An Image layer (the ``uncertainty`` map, float32): the values as they are, with the contrast limits. The map
    Segment (CLIS) made (tagged in its metadata) is written as kind ``"uncertainty"``, so that the reader draws it
    as the map again whatever the layer was renamed to."""
    limits = meta.get("contrast_limits")
    kind = "uncertainty" if (meta.get("metadata") or {}).get("napari_clis") == "uncertainty" else "image"
    return _write_tiff(path, data, meta, kind,
                       {"contrast_limits": [float(v) for v in limits] if limits is not None else None},
                       rgb=bool(meta.get("rgb")))


def _write_tiff(path: str, data, meta: dict, kind: str, extra: dict, *, rgb: bool) -> list[str]:
    from .tiffs import write_tiff

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        path = path.with_suffix(".tif")
    if meta.get("multiscale"):
        data = data[0]  # a pyramid: its full resolution, the level the scale is of (numpy would take the coarsest)
    arr = np.asarray(data)
    spatial = arr.ndim - 1 if rgb else arr.ndim
    scale = [float(v) for v in meta.get("scale", [1.0] * spatial)]
    translate = [float(v) for v in meta.get("translate", [0.0] * spatial)]
    # the shaped description (tifffile writes "shape" first): tifffile, and napari's reader through it, then give
    # back every axis of a stack, (T, Z, Y, X) say, instead of one long run of pages
    fields = {"name": meta.get("name"), "scale": scale, "translate": translate, **extra}
    # TIFF's resolution tags are positive fractions of modest size: a flipped axis (negative scale) keeps its
    # sign in the JSON only, and a pixel size they cannot hold leaves the tags out
    sizes = [abs(scale[-1]), abs(scale[-2])] if spatial >= 2 else []
    resolution = tuple(1.0 / s for s in sizes) if sizes and all(1e-6 <= s <= 1e6 for s in sizes) else None
    write_tiff(path, arr, kind, fields, resolution=resolution, photometric="rgb" if rgb else "minisblack")
    return [str(path)]


# read_metadata (from napari_clis.tiffs): what write_labels or write_image stored (name, layer type, scale,
# translate, and the class names or contrast limits), and batch outputs' records; empty for other TIFFs
read_labels_metadata = read_metadata  # the name the docs gave first
