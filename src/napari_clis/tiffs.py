"""The TIFFs napari-clis writes: one metadata schema, one atomic writer, one reader.

The napari writer's files (a ``segmentation`` or ``uncertainty`` layer saved from napari) and batch outputs
(``<stem>_labels.tif`` ...) are plain TIFFs that any TIFF reader opens. Their first ImageDescription is JSON, the
"shaped" description tifffile reads its axes from, with our record under ``"napari_clis"``::

    {"shape": [...], "axes": "ZYX", "napari_clis": {"schema": 2, "kind": "labels", "layer_type": "labels", ...}}

The record (schema 2):

* ``schema``: 2; ``kind``: ``"labels"``, ``"instances"`` (one id per object), ``"uncertainty"``,
  ``"superpixels"`` or ``"image"`` (what the pixels are); ``layer_type``: ``"labels"`` or ``"image"`` (the
  napari layer that shows them);
* where known: ``name`` (the layer's), ``scale`` and ``translate`` (per axis), ``class_names``,
  ``contrast_limits``;
* batch outputs add the run that wrote them (``job``, ``version``, ``model``, ``settings``, ``source`` ...:
  :mod:`napari_clis.batch`).

:func:`read_layer` gives a file's pixels with its record (napari-clis's npe2 reader, :mod:`napari_clis._reader`,
opens the files through it). Files written before schema 2 are read as schema 2 (:func:`read_metadata`): the
napari writer's had no ``kind``, batch's no ``layer_type`` (their record was a description of its own, before the
shaped one).

Files are written through :func:`napari_clis.checkpoint.atomic_write_bytes`: a temporary file in the same folder,
flushed, then one rename; they get the permissions the user's umask gives a new file. Pure numpy/tifffile: no Qt,
no napari.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["KEY", "SCHEMA", "KINDS", "write_tiff", "read_metadata", "read_layer"]

KEY = "napari_clis"
SCHEMA = 2
KINDS = {"labels": "labels", "instances": "labels", "superpixels": "labels", "uncertainty": "image",
         "image": "image"}  # kind -> layer type


def write_tiff(path: str | Path, array: np.ndarray, kind: str, fields: dict | None = None, *,
               shaped: dict | None = None, **tiff_options) -> None:
    """Write ``array`` to ``path`` atomically, with the record ``{"schema": 2, "kind": kind, "layer_type": ...,
    **fields}`` in its description.

    ``shaped``: what tifffile's shaped description also holds (``axes``; ``spacing`` and ``unit``).
    ``tiff_options`` go to ``tifffile.imwrite`` (``photometric``, ``compression``, ``resolution`` ...).
    A failure raises :class:`~napari_clis.checkpoint.CheckpointError` naming the file and the reason, and leaves
    what was at ``path`` as it was.
    """
    import tifffile

    from .checkpoint import atomic_write_bytes

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    record = {"schema": SCHEMA, "kind": kind, "layer_type": KINDS[kind], **(fields or {})}
    metadata = {**(shaped or {}), KEY: record}

    def write(f):  # the temporary file, named for tifffile (it would take the name of an os.fdopen file for a path)
        tifffile.imwrite(tifffile.FileHandle(f, name=Path(path).name), array, metadata=metadata, **tiff_options)

    atomic_write_bytes(path, write)


def read_metadata(path: str | Path) -> dict:
    """The record napari-clis wrote into a TIFF, as schema 2 (:data:`SCHEMA`); empty for any other file, and for
    one that cannot be read."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            record = json.loads(tif.pages[0].description).get(KEY)
    except Exception:  # not a TIFF, not ours, unreadable: no record
        return {}
    if not isinstance(record, dict):
        return {}
    if "schema" not in record:  # before schema 2: the napari writer's had no kind, batch's no layer type
        record = dict(record)
        record.setdefault("kind", "image" if record.get("layer_type") == "image" else "labels")
        record.setdefault("layer_type", KINDS.get(record["kind"], "labels"))
    return record


def read_layer(path: str | Path) -> tuple[np.ndarray, dict]:
    """The pixels of a TIFF napari-clis wrote (every axis of a stack, as written) and its record
    (:func:`read_metadata`).

    Raises ``ValueError`` naming the file and the reason for a file without the record (not napari-clis's) and for
    one whose pixels cannot be read (cut short by a copy or a download that did not finish, or damaged).
    """
    import tifffile

    record = read_metadata(path)
    if not record:
        raise ValueError(f"{path} is not a TIFF written by napari-clis: its description holds no {KEY!r} record.")
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
    except Exception as e:  # tifffile's many errors: the user needs the file and the reason, not tifffile's stack
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"Could not read the pixels of {path}: the file is cut short or damaged ({reason}). "
                         "Save or copy it again.") from None
    return data, record
