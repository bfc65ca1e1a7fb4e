"""npe2 writer: a Labels layer as TIFF that keeps its scale and translate (napari's own TIFF writer drops them).

The file is a plain TIFF that any TIFF reader opens (napari's built-in reader gives the same labels); the
layer's name, scale, translate and class names are in its ImageDescription as JSON, and the YX pixel size also in
the standard resolution tags (as a positive size, when they can hold it). Written atomically: a temporary file in the same folder, then one rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_labels", "read_labels_metadata"]

KEY = "napari_clis"


def write_labels(path: str, data, meta: dict) -> list[str]:
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        path = path.with_suffix(".tif")
    arr = np.asarray(data)
    scale = [float(v) for v in meta.get("scale", [1.0] * arr.ndim)]
    translate = [float(v) for v in meta.get("translate", [0.0] * arr.ndim)]
    info = {KEY: {"name": meta.get("name"), "scale": scale, "translate": translate,
                  "class_names": (meta.get("metadata") or {}).get("class_names")}}
    # TIFF's resolution tags are positive fractions of modest size: a flipped axis (negative scale) keeps its
    # sign in the JSON only, and a pixel size they cannot hold leaves the tags out
    sizes = [abs(scale[-1]), abs(scale[-2])] if arr.ndim >= 2 else []
    resolution = tuple(1.0 / s for s in sizes) if sizes and all(1e-6 <= s <= 1e6 for s in sizes) else None
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tif", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, arr, description=json.dumps(info), resolution=resolution, metadata=None)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return [str(path)]


def read_labels_metadata(path: str) -> dict:
    """The name, scale, translate and class names stored by :func:`write_labels` (empty for other TIFFs)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        desc = tif.pages[0].description
    try:
        return json.loads(desc).get(KEY, {})
    except (ValueError, AttributeError):
        return {}
