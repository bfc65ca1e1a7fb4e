"""Batch segmentation of image files and folders: in this process, or spread over a Dask cluster.

Each file (tif, tiff, png, jpg, jpeg) becomes a labels TIFF (int32, class per pixel), an instances TIFF (uint32,
one id per object, 0 = background: :func:`~napari_clis.instances.segmentation_objects`, as
:meth:`ClisSession.segment` makes them), an uncertainty TIFF (float32), a CSV of per-object measurements
(:func:`~napari_clis.instances.measure_objects`) and on request a superpixels TIFF (int32), written next to each
other in one output folder as ``<stem>_labels.tif``, ``<stem>_instances.tif``, ``<stem>_uncertainty.tif``,
``<stem>_measurements.csv``, ``<stem>_superpixels.tif``. A stack (``(Z, H, W)``, ``(T, Z, H, W)`` grey or
``(Z, H, W, 3)`` colour) is segmented slice by slice and written with the same leading axes (the CSV's first
columns say which plane a row's object is in: ``z``, ``t`` ...; ids start at 1 in each plane).

What makes a run safe to repeat:

* every output is written atomically (a temporary file in the output folder, then one rename), and its TIFF
  description records, as JSON, the run that wrote it: input file (path, size, modification time), model
  (name, file, a digest of its weights and tasks), napari-clis version and settings. An output whose record
  matches the present run, and which reads back whole (every plane), is skipped: an interrupted run resumes where
  it stopped, and redoes an output cut short since. The CSV, which has no description, is written last; the
  TIFFs record its SHA-256, and it counts as this run's (and complete) only when its bytes match it;
* an existing output that another run wrote (or any other file in its place) is never replaced unless
  ``overwrite`` is given: the run refuses before segmenting anything, naming the files.

Large images and the cluster: a plane larger than ``tile`` pixels on a side is cut into tiles (cores of at
most ``tile`` px, aligned to 8 px, each seen with ``DEFAULT_MARGIN`` px of context:
:func:`~napari_clis.preprocessing.plan_tiles`, the tiles :meth:`ClisSession.segment` makes too); each tile is
segmented on its own (:func:`~napari_clis.uncertainty.segment_normalized`, what ``segment()`` runs) and the cores
are put back together, so the overlaps are cut in half. Objects are found on the whole stitched plane, never per
tile, so a nucleus on a tile border is one object. Every tile uses the session's seed, as ``segment()``'s
tiles do, so batch and ``segment()`` give identical labels and uncertainty; and with the context wider than the
network's receptive field the tiled result equals one pass over the whole image up to floating-point rounding
(the network's arithmetic depends a little on the size of its input: the uncertainty differs by about 1e-7, and a
label only where a probability is 0.5 to that precision). The same tiles are made whether the work runs here or
on a cluster, so both give identical files.
Superpixels are computed per tile core and renumbered by tile (ids stay unique within a plane).

Pure numpy/torch and, for a cluster, ``distributed`` (the ``batch`` extra): no Qt, no napari.

Examples
--------
>>> from napari_clis import ClisSession
>>> s = ClisSession.from_pretrained("nuclei")
>>> records = s.segment_many(["images/"], "results/")          # doctest: +SKIP
>>> [r.status for r in records]                                  # doctest: +SKIP
['segmented', 'segmented', 'skipped']
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .preprocessing import (
    DEFAULT_MARGIN,
    DEFAULT_TILE,
    MIN_TILE,
    ImageError,
    Tile,
    alpha_is_transparency,
    as_2d_image,
    check_intensity_range,
    check_tiling,
    image_layout,
    intensity_range,
    normalize_image,
    plan_tiles,
    range_hides_image,
)
from .tiffs import read_metadata, write_tiff

__all__ = ["segment_many", "FileResult", "Tile", "plan_tiles", "find_images", "output_paths", "read_image",
           "read_batch_metadata", "OutputExistsError", "SUPPORTED_SUFFIXES", "DEFAULT_TILE"]

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_DTYPES = {"labels": np.int32, "instances": np.uint32, "uncertainty": np.float32, "superpixels": np.int32}
MEASUREMENTS = "measurements"  # the one output that is not a TIFF: <stem>_measurements.csv
_DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}
_IMAGEJ_KEYS = ("spacing", "unit", "finterval", "fps", "xorigin", "yorigin", "zorigin")
_TRIM_CONFIG = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


class OutputExistsError(FileExistsError):
    """Outputs exist that this run did not write; nothing was segmented."""


@dataclass
class FileResult:
    """What :func:`segment_many` did with one input, in the order the inputs were given.

    Attributes
    ----------
    source : Path
        The input file (or a path given that is neither a file nor a folder of images).
    status : str
        ``"segmented"``, ``"skipped"`` (its outputs were complete from an earlier run) or ``"failed"``.
    outputs : dict of str to Path
        ``{"labels": ..., "instances": ..., "uncertainty": ..., "measurements": ...[, "superpixels": ...]}``;
        empty without an output folder.
    error : str or None
        Why it failed, for a person to read.
    shape : tuple of int or None
        The segmented shape: leading axes, then ``(H, W)``.
    tiles : int
        Pieces segmented: tiles summed over slices.
    seconds : float
        Wall time from reading the file to writing its outputs.
    labels, instances, uncertainty, superpixels : ndarray or None
        ``shape`` int32, uint32, float32, int32: the results themselves, kept only when no output folder is given.
    measurements : dict of str to ndarray or None
        The measurements' columns (what the CSV holds), kept only when no output folder is given.
    tasks : tuple of int
        Per plane, the task (kernel mask) that segmented it: the task-aware module's choice, as ``segment()``
        makes it (0, the pretrained task, while nothing is learned). Also in the outputs' metadata.
    """

    source: Path
    status: str
    outputs: dict = field(default_factory=dict)
    error: str | None = None
    shape: tuple | None = None
    tiles: int = 0
    seconds: float = 0.0
    labels: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    superpixels: np.ndarray | None = None
    tasks: tuple = ()
    instances: np.ndarray | None = None
    measurements: dict | None = None


# -- inputs and outputs -------------------------------------------------------------------------------------------
def find_images(paths, *, output: str | Path | None = None) -> list[Path | FileResult]:
    """The image files named by ``paths`` (files, or folders whose images are taken in name order).

    A path that does not exist, a folder without images, or a file of another type comes back as a failed
    :class:`FileResult` in its place, so the others still run. Files that look like this run's own outputs
    (``*_labels.tif`` ...) in the ``output`` folder are left out, so a folder can be its own output folder.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out_dir = Path(output).resolve() if output is not None else None
    found: list[Path | FileResult] = []
    for path in map(Path, paths):
        if path.is_dir():
            images = [p for p in sorted(path.iterdir()) if _is_input_image(p, out_dir)]
            found += images or [FileResult(path, "failed", error=f"The folder {path} holds no images "
                                                                  f"({', '.join(SUPPORTED_SUFFIXES)}).")]
        elif not path.exists():
            found.append(FileResult(path, "failed", error=f"{path} does not exist."))
        elif not path.is_file():  # reading a pipe (FIFO) would wait for a writer for ever
            found.append(FileResult(path, "failed", error=f"{path} is not a regular file (a pipe, socket or device): "
                                                          "napari-clis reads image files; save the image to a file."))
        elif path.suffix.lower() not in SUPPORTED_SUFFIXES:
            found.append(FileResult(path, "failed", error=f"{path} is not a supported image file: napari-clis "
                                                          f"reads {', '.join(SUPPORTED_SUFFIXES)}."))
        else:
            found.append(path)
    return found


def _is_input_image(path: Path, out_dir: Path | None) -> bool:
    if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return False
    if not any(path.name.endswith(f"_{kind}.tif") for kind in _DTYPES):
        return True
    if out_dir is not None and path.parent.resolve() == out_dir:
        return False
    return not read_metadata(path)  # an earlier run's output (or a layer saved from napari) is not an input


def output_paths(source: str | Path, folder: str | Path, kinds=("labels", "uncertainty")) -> dict[str, Path]:
    """``{kind: folder / "<stem>_<kind>.tif"}`` for the outputs of ``source`` (``.csv`` for the measurements)."""
    return {kind: Path(folder) / f"{Path(source).stem}_{kind}.{'csv' if kind == MEASUREMENTS else 'tif'}"
            for kind in kinds}


@dataclass
class _SourceInfo:
    """How a file was stored: its axes and the metadata worth keeping in the outputs."""

    axes: str | None = None
    resolution: tuple[float, float] | None = None
    resolution_unit: int | None = None
    imagej: dict = field(default_factory=dict)
    description: str | None = None

    def to_dict(self) -> dict:
        d = {"axes": self.axes, "resolution": self.resolution, "resolution_unit": self.resolution_unit,
             "imagej": self.imagej, "description": self.description}
        return {k: v for k, v in d.items() if v}


def read_image(path: str | Path) -> tuple[np.ndarray, _SourceInfo]:
    """The pixels of an image file and what is kept of its metadata (resolution, ImageJ spacing, description).

    TIFF files are read with tifffile (their first series, with its axes); PNG and JPEG with Pillow, through
    imageio (as ``skimage.io.imread`` does).
    Raises :class:`ImageError` naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path)
        import imageio.v3 as iio
        from PIL import Image

        with Image.open(path) as im:
            mode = im.mode
        dpi = iio.immeta(path, plugin="pillow").get("dpi")
        info = _SourceInfo(resolution=(float(dpi[0]), float(dpi[1])) if dpi else None,
                           resolution_unit=2 if dpi else None)  # 2: inch
        # a PNG or JPEG is one 2D image: CMYK (print JPEGs) as RGB, not its inks as colours; grey + alpha as grey
        data = np.asarray(iio.imread(path, plugin="pillow", **({"mode": "RGB"} if mode == "CMYK" else {})))
        if data.ndim == 3 and data.shape[-1] == 2:  # drops an opaque alpha channel, and a transparency mask
            # (preprocessing.alpha_is_transparency); refuses a second channel of data with a message
            data = data[..., 0] if alpha_is_transparency(data) else as_2d_image(data)
        return data, info
    except ImageError:
        raise
    except Exception as e:  # every reader has its own errors; the user needs the file and the reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageError(f"Could not read {path}: it is damaged or not a {path.suffix.lstrip('.').upper()} image "
                         f"({reason}).") from e


def _read_tiff(path: Path) -> tuple[np.ndarray, _SourceInfo]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data, page = series.asarray(), tif.pages[0]
        info = _SourceInfo(axes=series.axes)
        if "XResolution" in page.tags and "YResolution" in page.tags:
            info.resolution = tuple(float(v) for v in page.resolution)
            info.resolution_unit = int(page.resolutionunit)
        if tif.is_imagej:
            info.imagej = {k: v for k, v in (tif.imagej_metadata or {}).items() if k in _IMAGEJ_KEYS}
        elif not (tif.is_shaped or tif.is_ome) and page.description:
            info.description = page.description
    return data, info


def _plane_stack(data: np.ndarray, axes: str | None) -> tuple[np.ndarray, tuple[int, ...], str]:
    """``(N, H, W)`` grey or ``(N, H, W, 3|4)`` colour planes, the leading shape and the output's axes."""
    if axes is not None and len(axes) == data.ndim:
        if "C" in axes:
            raise ImageError(f"It has {data.shape[axes.index('C')]} channels (axes {axes}): napari-clis segments "
                             "grey or RGB images. Save the channel to segment in a file of its own.")
        colour = "S" in axes
        if colour:
            data = np.moveaxis(data, axes.index("S"), -1)
            axes = axes.replace("S", "")
    else:
        if data.ndim >= 3 and data.shape[-1] == 1:
            data = data[..., 0]
        colour, axes = data.ndim >= 3 and data.shape[-1] in (3, 4), None
    # the axes are read as the widget reads a layer's (preprocessing.image_layout: one policy for both)
    layout = image_layout(data.shape, colour=colour)
    lead = layout.lead
    if layout.channels == 4 and alpha_is_transparency(data.reshape((-1,) + data.shape[len(lead):])[0]):
        data = data[..., :3]  # RGBA with transparency: its colours, as the widget segments them
    if axes is None or len(axes) != len(lead) + 2:
        axes = _DEFAULT_AXES.get(len(lead) + 2, "Q" * len(lead) + "YX")
    return data.reshape((-1,) + data.shape[len(lead):]), tuple(lead), axes


# -- what the workers run -----------------------------------------------------------------------------------------
@dataclass
class TileModel:
    """What segmenting a tile needs: the network and the session's :meth:`~ClisSession.segment_settings`. Sent
    to Dask workers.

    ``superpixel_size`` 0 skips the superpixels. ``device`` is the session's kind of device; a worker without
    a GPU uses its CPU. ``value_range``: the intensity range chosen for every plane (None: each plane's automatic
    one); ``object_diameter``: the objects' size the planes are rescaled for (``settings.scale``), or None.
    """

    net: object
    settings: object  # napari_clis.uncertainty.SegmentSettings
    superpixel_size: int
    device: str = "cpu"
    placed: bool = False
    value_range: tuple[float, float] | None = None
    object_diameter: float | None = None

    @classmethod
    def from_session(cls, session, *, superpixels: bool, for_workers: bool, value_range=None,
                     object_diameter: float | None = None) -> TileModel:
        net = copy.deepcopy(session.net).cpu() if for_workers else session.net
        settings = session.segment_settings(scale=session.object_scale(object_diameter))
        return cls(net, settings, session.superpixel_size if superpixels else 0, session.device.type,
                   placed=not for_workers, value_range=value_range, object_diameter=object_diameter)

    def ready_net(self):
        if not self.placed:
            import torch

            device = self.device if self.device != "cuda" or torch.cuda.is_available() else "cpu"
            self.net = self.net.to(device).eval()
            self.placed = True
        return self.net


def segment_tile(model: TileModel, raw: np.ndarray, value_range: tuple[float, float], task: int,
                 core: tuple[int, int, int, int], tile: int | None = None) -> dict[str, np.ndarray]:
    """Segment one crop of a plane as :meth:`ClisSession.segment` does, and return its core.

    Parameters
    ----------
    model : TileModel
    raw : (h, w) or (h, w, 3|4) array
        The crop, as read from the file.
    value_range : (float, float)
        :func:`~napari_clis.preprocessing.intensity_range` of the whole plane, or the range the run was given.
    task : int
        The task chosen for the whole plane.
    core : (y0, y1, x0, x1)
        The part of the crop to return.
    tile : int, optional
        The run's tile size, for a plane that is not cut into tiles here (a model that sees the whole plane tiles
        it, if at all, as ``segment()`` does); None for one tile of a plane cut here.

    Returns
    -------
    dict
        ``labels`` (int32), ``uncertainty`` (float32), for a model with many objects ``foreground`` (float32, the
        probability the objects are found with, on the whole plane once stitched) and, if asked for,
        ``superpixels`` (int32 from 1), each ``(y1 - y0, x1 - x0)``.
    """
    from .instances import foreground_probability
    from .superpixels import compute_superpixels
    from .uncertainty import segment_normalized

    normalized = normalize_image(raw, value_range=value_range)
    # a single_object model sees the whole plane at once (one tile, _plan_plane), so its rule sees the plane
    out, labels = segment_normalized(model.ready_net(), normalized, model.settings, task=task, tile=tile)
    y0, y1, x0, x1 = core
    result = {"labels": labels[y0:y1, x0:x1],
              "uncertainty": out.uncertainty[y0:y1, x0:x1]}
    if not model.settings.single_object:
        result["foreground"] = foreground_probability(out.probabilities[:, y0:y1, x0:x1])
        if out.distance is not None:  # the instance head's map: objects are split on it
            result["distance"] = out.distance[y0:y1, x0:x1]
    if model.superpixel_size:
        result["superpixels"] = compute_superpixels(normalized[:, y0:y1, x0:x1], size=model.superpixel_size)
    return {k: np.ascontiguousarray(v) for k, v in result.items()}


def _worker_facts() -> tuple[str, str | None]:
    """This napari-clis version, and the malloc trim threshold set for the process (see ``_check_workers``)."""
    return __version__, os.environ.get("MALLOC_TRIM_THRESHOLD_")


# -- one file ------------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One input file and where its outputs go (``outputs`` empty: keep the arrays)."""

    source: Path
    outputs: dict
    record: dict  # what the outputs' descriptions say about the run, with its key "job"


@dataclass
class _Prepared:
    """A file read and planned: its planes, and per plane the intensity range, task and tiles."""

    job: _Job
    planes: np.ndarray
    lead: tuple
    axes: str
    info: _SourceInfo
    plans: list  # [(value_range, task, [Tile, ...]), ...] per plane
    t0: float
    results: dict = field(default_factory=dict)  # (plane, tile) -> segment_tile's dict
    error: str | None = None
    remaining: int = 0  # tiles still out on the cluster
    tile: int = DEFAULT_TILE  # the run's tile size
    one_object: bool = False  # the model's one-object rule (ClisSession.single_object) for the instances

    @property
    def n_pieces(self) -> int:
        return sum(len(tiles) for _, _, tiles in self.plans)

    def pieces(self):
        """``((plane, tile), (raw crop, value range, task, core in crop, tile size))`` for every tile of every
        plane (the tile size :func:`segment_tile` takes: the run's for a plane in one piece, else None)."""
        for p, (value_range, task, tiles) in enumerate(self.plans):
            for t, tile in enumerate(tiles):
                ya, yb, xa, xb = tile.crop
                yield (p, t), (self.planes[p, ya:yb, xa:xb], value_range, task, tile.core_in_crop,
                               self.tile if len(tiles) == 1 else None)


def _prepare(job: _Job, session, tile: int, model: TileModel) -> _Prepared | FileResult:
    """Read ``job``'s file and plan its tiles; a failed :class:`FileResult` if it cannot be segmented."""
    t0 = time.perf_counter()
    try:
        data, info = read_image(job.source)
        planes, lead, axes = _plane_stack(data, info.axes)
        plans = [_plan_plane(session, plane, tile, model) for plane in planes]
    except ImageError as e:
        message = str(e) if str(job.source) in str(e) else f"{job.source}: {e}"
        return FileResult(job.source, "failed", error=message)
    return _Prepared(job, planes, lead, axes, info, plans, t0, tile=tile, one_object=session.single_object)


def _plan_plane(session, plane: np.ndarray, tile: int, model: TileModel):
    plane = as_2d_image(plane)  # refuses what segment() refuses, before any work is sent out
    value_range = intensity_range(plane) if model.value_range is None else model.value_range
    hidden = None if model.value_range is None else range_hides_image(plane, value_range)
    if hidden:  # as segment() warns: the range given hides the objects of this plane
        warnings.warn(hidden, UserWarning, stacklevel=2)
    scale = model.settings.scale
    margin = DEFAULT_MARGIN
    if session.working_long_side is not None or session.single_object:  # the network sees the whole image: no tiles
        tile = max(plane.shape[:2])
    elif scale is not None:  # tiles and context as segment() makes them at the scale the network sees the plane
        session.object_scale(model.object_diameter, plane.shape)  # the objects fit in the plane (ImageError)
        tile, margin = max(MIN_TILE, round(tile / scale)), round(DEFAULT_MARGIN / scale)
    tiles = plan_tiles(*plane.shape[:2], tile, margin)
    return value_range, _plane_task(session, plane, value_range, scale), tiles


def _plane_task(session, plane: np.ndarray, value_range, scale: float | None = None) -> int:
    """The task :meth:`ClisSession.segment` would choose for this plane (0 while nothing is learned)."""
    if not session.tasks and not session.remembered:
        return 0
    import torch

    with torch.no_grad():
        return session._choose_task(normalize_image(plane, value_range=value_range), scale=scale)[1]


def _complete(state: _Prepared) -> FileResult:
    """Stitch the tiles, write the outputs (or keep the arrays) and say what happened."""
    from .checkpoint import CheckpointError  # torch: not at import (the command line's parser reads this module)

    job = state.job
    if state.error is not None:
        return FileResult(job.source, "failed", error=f"{job.source}: {state.error}")
    from .checkpoint import atomic_write_bytes
    from .instances import measurements_csv

    arrays = _assemble(state)
    try:
        arrays["instances"], table = _objects(state, arrays.pop("foreground", None), arrays,
                                              arrays.pop("distance", None))
    except Exception as e:  # e.g. out of memory: this file fails, the others go on
        return FileResult(job.source, "failed", error=f"{job.source}: {_describe(e)}")
    shape = next(iter(arrays.values())).shape
    done = dict(source=job.source, shape=shape, tiles=state.n_pieces, tasks=tuple(int(t) for _, t, _ in state.plans))
    if not job.outputs:
        return FileResult(status="segmented", seconds=time.perf_counter() - state.t0, measurements=table, **done,
                          **arrays)
    csv = measurements_csv(table)
    digest = hashlib.sha256(csv).hexdigest()
    try:
        for kind, path in job.outputs.items():
            if kind != MEASUREMENTS:
                _write_output(path, arrays[kind], kind, state, measurements_sha256=digest)
        if MEASUREMENTS in job.outputs:  # last: the TIFFs hold its digest, so a resumed run knows it as its own
            atomic_write_bytes(job.outputs[MEASUREMENTS], csv)
    except CheckpointError as e:  # the atomic write's (napari_clis.tiffs.write_tiff): it names the file and why
        return FileResult(job.source, "failed", error=f"{job.source}: {e}")
    except OSError as e:
        return FileResult(job.source, "failed", error=f"Could not write {e.filename or 'the outputs'} for "
                                                      f"{job.source}: {e.strerror or e}.")
    return FileResult(status="segmented", outputs=dict(job.outputs), seconds=time.perf_counter() - state.t0, **done)


def _objects(state: _Prepared, foreground: np.ndarray | None, arrays: dict,
             distance: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The instances of each whole (stitched) plane and their measurements as one table: for a stack, the
    plane's index along each leading axis (``z``, ``t`` ...) comes first."""
    from .instances import measure_objects, segmentation_objects

    h, w = state.planes.shape[1:3]
    labels = arrays["labels"].reshape(-1, h, w)
    uncertainty = arrays["uncertainty"].reshape(-1, h, w)
    fg = None if foreground is None else foreground.reshape(-1, h, w)
    dist = None if distance is None else distance.reshape(-1, h, w)
    instances = np.zeros(labels.shape, np.uint32)
    names = [a.lower() for a in state.axes[: len(state.lead)]]
    if len(set(names)) < len(names) or {"label", "area"} & set(names):
        names = [f"axis_{i}" for i in range(len(names))]
    tables = []
    for p in range(labels.shape[0]):
        instances[p] = segmentation_objects(labels[p], None if fg is None else fg[p], one_object=state.one_object,
                                            distance=None if dist is None else dist[p])
        table = measure_objects(instances[p], as_2d_image(state.planes[p]), uncertainty[p])
        where = np.unravel_index(p, state.lead) if state.lead else ()
        tables.append({**{n: np.full(table["label"].size, i, np.int64) for n, i in zip(names, where)}, **table})
    table = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    return instances.reshape(state.lead + (h, w)), table


def _assemble(state: _Prepared) -> dict[str, np.ndarray]:
    n, h, w = state.planes.shape[:3]
    kinds = state.results[(0, 0)].keys()
    dtypes = {**_DTYPES, "foreground": np.float32, "distance": np.float32}
    out = {kind: np.zeros((n, h, w), dtypes[kind]) for kind in kinds}
    for p, (_, _, tiles) in enumerate(state.plans):
        offset = 0  # superpixel ids stay unique: each tile's ids follow the previous tile's
        for t, tile in enumerate(tiles):
            res = state.results[(p, t)]
            y0, y1, x0, x1 = tile.core
            for kind in kinds:
                out[kind][p, y0:y1, x0:x1] = res[kind] + (offset if kind == "superpixels" else 0)
            if "superpixels" in res:
                offset += int(res["superpixels"].max())
    return {kind: a.reshape(state.lead + (h, w)) for kind, a in out.items()}


def _write_output(path: Path, array: np.ndarray, kind: str, state: _Prepared, **fields) -> None:
    """One output, atomically (a reader, or a resumed run, sees either no file or the whole file), with the run's
    record (and ``fields``) in the schema every napari-clis TIFF shares (:mod:`napari_clis.tiffs`)."""
    info = state.info
    record = {"name": path.stem, **state.job.record, "axes": state.axes, "source_metadata": info.to_dict(),
              "tasks": [int(t) for _, t, _ in state.plans], **fields}
    shaped = {"axes": state.axes, **{k: v for k, v in info.imagej.items() if k in ("spacing", "unit")}}
    kwargs = {}
    if info.resolution:
        kwargs = {"resolution": info.resolution, "resolutionunit": info.resolution_unit}
    write_tiff(path, array, kind, record, shaped=shaped, photometric="minisblack",
               compression="zlib" if kind != "uncertainty" else None, **kwargs)


def read_batch_metadata(path: str | Path) -> dict:
    """The record :func:`segment_many` wrote into an output's description (:func:`napari_clis.tiffs.read_metadata`
    of a file a run wrote; empty for any other file)."""
    record = read_metadata(path)
    return record if "job" in record else {}


# -- the run ------------------------------------------------------------------------------------------------------
def _model_digest(session) -> str:
    """A digest of what decides the results: weights, kernel gates, learned tasks and task memory."""
    h = hashlib.sha256()
    for name, tensor in sorted(session.net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    known = {"tasks": [r.to_dict() for r in session.tasks], "remembered": session.remembered,
             "working_long_side": session.working_long_side, "flips": session.test_time_flips}
    h.update(json.dumps(known, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _make_job(source: Path, folder: Path | None, kinds, run: dict) -> _Job:
    st = source.stat()
    record = {"source": str(source.resolve()), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns, **run}
    # what decides the pixels; the model's name and file are not part of it (a model file may move)
    decisive = {k: record[k] for k in ("source", "source_size", "source_mtime_ns", "version", "model_digest",
                                       "settings")}
    record["job"] = hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()
    return _Job(source, output_paths(source, folder, kinds) if folder is not None else {}, record)


def _check_collisions(jobs: list[_Job]) -> None:
    seen: dict[Path, Path] = {}
    for job in jobs:
        path = job.outputs["labels"]
        if path in seen and Path(seen[path]).resolve() == Path(job.source).resolve():
            raise ValueError(f"{job.source} is given twice (a file named on its own and in a folder, or twice): "
                             "give each image once.")
        if path in seen:
            raise ValueError(f"{seen[path]} and {job.source} would write the same outputs ({path.name} ...): "
                             "rename one of them, or segment them into different output folders.")
        seen[path] = job.source


def _is_done(job: _Job, overwrite: bool, conflicts: list[Path]) -> bool:
    """Whether ``job``'s outputs are all there from this same run; other files in their place go to
    ``conflicts`` unless ``overwrite``."""
    present = [p for p in job.outputs.values() if os.path.lexists(p)]
    csv = job.outputs.get(MEASUREMENTS)
    records = {p: read_batch_metadata(p) for p in present if p != csv}
    foreign = [p for p in records if records[p].get("job") != job.record["job"]]
    if csv in present:  # no description of its own: this run's when its bytes are those its TIFFs recorded
        digests = {r.get("measurements_sha256") for r in records.values() if r.get("job") == job.record["job"]}
        if _file_digest(csv) not in digests - {None}:
            foreign.append(csv)
    if not overwrite:
        conflicts += foreign
    # this run's own outputs, but one cut short later (a copy, a full disk) is done again, not skipped
    return not foreign and len(present) == len(job.outputs) and all(_is_whole(p, records[p]) for p in records)


def _file_digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes; None for one that cannot be read (a folder, a pipe, no permission)."""
    try:
        if not path.is_file():
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _is_whole(path: Path, record: dict) -> bool:
    """Whether an output holds every plane its record names (``tasks``: one per plane), each readable in full: its
    description is at the start of the file, so a file truncated after it still shows the right record."""
    import logging

    import tifffile

    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # a truncated file's missing pages are expected here, not news
    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if len(pages) != len(record.get("tasks", pages)):
                return False
            for page in pages:  # one plane at a time: an output may be larger than memory allows twice
                if any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts)):
                    return False
                page.asarray()
        return True
    except Exception:  # unreadable in any way: not whole
        return False
    finally:
        tiff_log.setLevel(level)


def _refuse(conflicts: list[Path]) -> None:
    names = ", ".join(map(str, conflicts[:10])) + (f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else "")
    raise OutputExistsError(
        f"{len(conflicts)} output file(s) already exist that this run did not write (another model, other "
        f"settings, a changed input, or another program): {names}. Nothing was segmented. Use --overwrite "
        "(overwrite=True in Python) to replace them, or choose another output folder."
    )


def segment_many(session, paths, output: str | Path | None = None, *, overwrite: bool = False,
                 scheduler: str | None = None, workers: int = 1, tile: int | None = None,
                 superpixels: bool = False, progress=None, intensity_range=None,
                 object_diameter: float | None = None) -> list[FileResult]:
    """Segment image files and folders with ``session``'s model, here or on a Dask cluster.

    Parameters
    ----------
    session : ClisSession
        The model and its settings (``n_samples``, ``seed``, ``superpixel_size``, learned tasks).
    paths : path or list of paths
        Image files (tif, tiff, png, jpg, jpeg) and folders of them. Stacks are segmented slice by slice.
    output : path, optional
        Folder for the TIFFs (created if needed). Without it nothing is written and each
        :class:`FileResult` holds its arrays.
    overwrite : bool
        Replace outputs that another run wrote. Without it such files stop the run before any work
        (:class:`OutputExistsError`); outputs of this same run are complete and skipped either way.
    scheduler : str, optional
        Address of a running Dask scheduler (``"tcp://host:8786"``): the work goes to its workers.
    workers : int
        More than 1 starts a local Dask cluster of that many single-threaded worker processes.
    tile : int
        Planes larger than this on a side are cut into tiles (default :data:`DEFAULT_TILE`, as ``segment()``).
    superpixels : bool
        Also write (or keep) the superpixels.
    progress : callable, optional
        ``progress(done, total, record)``: first ``(0, total, None)``, then after each input with its
        :class:`FileResult`.
    intensity_range : None, "auto" or (low, high)
        As :meth:`ClisSession.segment`: each plane's automatic range, or one range for every plane.
    object_diameter : float, optional
        As :meth:`ClisSession.segment`: the typical width of one object in pixels; planes are rescaled for the
        network so their objects reach it at the size it was trained on (large planes tile at that scale, each
        tile seen with ``DEFAULT_MARGIN`` px of context at that scale). A plane smaller than the objects fails.

    Returns
    -------
    list of FileResult
        One per input file, in order; a failed input does not stop the others.
    """
    tile = DEFAULT_TILE if tile is None else int(tile)
    _check_arguments(tile, int(workers), scheduler)
    value_range = check_intensity_range(intensity_range)
    session.object_scale(object_diameter)  # refuses a bad value before anything is read
    folder = Path(output) if output is not None else None
    found = find_images(paths, output=folder)
    records: list[FileResult | None] = [f if isinstance(f, FileResult) else None for f in found]
    kinds = ("labels", "instances", "uncertainty", MEASUREMENTS) + (("superpixels",) if superpixels else ())
    run = _run_record(session, tile, value_range, object_diameter)
    jobs = []
    for i, source in enumerate(found):
        if records[i] is None:
            try:
                jobs.append((i, _make_job(source, folder, kinds, run)))
            except OSError as e:
                records[i] = FileResult(source, "failed", error=f"{source}: {e.strerror or e}.")
    todo = _select_todo(jobs, folder, overwrite, records)
    report = _Reporter(records, progress)
    for i, record in enumerate(list(records)):
        if record is not None:  # failed or skipped before any work: reported first, in order
            report(i, record)
    _run(todo, session, tile, superpixels, scheduler, int(workers), report, value_range=value_range,
         object_diameter=None if object_diameter is None else float(object_diameter))
    return records


def _check_arguments(tile: int, workers: int, scheduler) -> None:
    check_tiling(tile)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if scheduler and workers > 1:
        raise ValueError("Give either a scheduler (its workers do the work) or a number of local workers, not both.")


def _run_record(session, tile: int, value_range=None, object_diameter=None) -> dict:
    """What every output of this run records about it (the input is added per file): a run with another
    intensity range or object size is another run (resume redoes its outputs, and refuses without overwrite)."""
    return {"version": __version__, "model": session.model_name,
            "checkpoint": _where(session.source),
            "model_digest": _model_digest(session), "class_names": session.class_names,
            "settings": {"n_samples": session.n_samples, "seed": session.seed, "tile": tile,
                         "margin": DEFAULT_MARGIN, "superpixel_size": session.superpixel_size,
                         "intensity_range": "auto" if value_range is None else list(value_range),
                         "object_diameter": None if object_diameter is None else float(object_diameter)}}


def _where(source: str | None) -> str | None:
    """A model file by its absolute path (a relative one says little in an output's record); a name as it is."""
    return str(Path(source).resolve()) if source and Path(source).is_file() else source


class _Reporter:
    """Puts each input's record in its place and calls ``progress(done, total, record)``, first with
    ``(0, total, None)``."""

    def __init__(self, records: list, progress):
        self.records, self.progress, self.done = records, progress, 0
        if progress is not None:
            progress(0, len(records), None)

    def __call__(self, index: int, record: FileResult) -> None:
        self.records[index] = record
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.records), record)


def _select_todo(jobs: list, folder: Path | None, overwrite: bool, records: list) -> list:
    """The jobs still to do; the complete ones become skipped records. Refuses on foreign outputs."""
    if folder is None:
        return jobs
    _check_collisions([job for _, job in jobs])
    conflicts: list[Path] = []
    todo = []
    for i, job in jobs:
        if _is_done(job, overwrite, conflicts):
            records[i] = FileResult(job.source, "skipped", outputs=dict(job.outputs))
        else:
            todo.append((i, job))
    if conflicts:
        _refuse(conflicts)
    if todo:
        _prepare_output(folder)
    for _, job in todo if overwrite else ():  # an output of this input left from another run, not asked for now
        for stale in output_paths(job.source, folder, tuple(set(_DTYPES) - set(job.outputs))).values():
            if read_batch_metadata(stale).get("job") not in (None, job.record["job"]):
                stale.unlink()  # it would sit beside the new outputs as if it belonged to them
    return todo


def _prepare_output(folder: Path) -> None:
    """Make the output folder and check that it can be written, before any image is segmented."""
    if folder.exists() and not folder.is_dir():
        raise OSError(f"The output {folder} is a file, not a folder: name a folder for the outputs.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".napari-clis-check-"):
            pass
    except OSError as e:
        raise OSError(f"Cannot write to the output folder {folder}: {e.strerror or e}. Nothing was segmented; "
                      "choose a folder you can write to.") from e


def _run(todo: list, session, tile: int, superpixels: bool, scheduler, workers: int, finish, *, value_range=None,
         object_diameter: float | None = None) -> None:
    if not todo:
        return
    options = {"superpixels": superpixels, "value_range": value_range, "object_diameter": object_diameter}
    if scheduler is None and workers == 1:
        _run_here(todo, session, tile, TileModel.from_session(session, for_workers=False, **options), finish)
        return
    model = TileModel.from_session(session, for_workers=True, **options)
    with _dask_client(scheduler, workers) as client:
        _run_on_cluster(todo, session, tile, model, client, finish)


def _run_here(todo: list, session, tile: int, model: TileModel, finish) -> None:
    for index, job in todo:
        state = _prepare(job, session, tile, model)
        if isinstance(state, _Prepared):
            for key, args in state.pieces():
                try:
                    state.results[key] = segment_tile(model, *args)
                except Exception as e:  # e.g. out of memory: this file fails, the others go on
                    state.error = _describe(e)
                    break
            state = _complete(state)
        finish(index, state)


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


# -- Dask ---------------------------------------------------------------------------------------------------------
class _dask_client:
    """A ``distributed.Client`` to ``scheduler``, or to a local cluster of ``workers`` processes that it
    starts and closes."""

    def __init__(self, scheduler: str | None, workers: int):
        self.scheduler, self.workers = scheduler, workers
        self.cluster = self.client = None

    def __enter__(self):
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:
            raise ImportError("Running on a Dask cluster needs the 'distributed' package: "
                              "pip install 'napari-clis[batch]'.") from e
        if self.scheduler is None:
            import dask

            with dask.config.set({_TRIM_CONFIG: None}):  # see _check_workers
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.scheduler, timeout="30s")
            except OSError as e:
                raise ConnectionError(f"Could not reach the Dask scheduler at {self.scheduler}: {e}. Is "
                                      "`dask scheduler` running there, and is the address right?") from e
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _check_workers(client) -> int:
    """The number of workers, after checking they run this napari-clis; waits up to a minute for one."""
    try:
        client.wait_for_workers(1, timeout=60)
    except TimeoutError as e:
        raise RuntimeError(f"The Dask scheduler at {client.scheduler.address} has no workers. Start some with "
                           f"`dask worker {client.scheduler.address}`.") from e
    try:
        scheduler_version, _ = client.run_on_scheduler(_worker_facts)  # it unpickles the tasks: it needs us too
    except Exception as e:
        raise RuntimeError(f"The Dask scheduler at {client.scheduler.address} cannot read napari-clis tasks "
                           f"({type(e).__name__}: {e}). Start it where napari-clis {__version__} is installed.") from e
    try:
        facts = client.run(_worker_facts)
    except Exception as e:
        raise RuntimeError("The Dask workers cannot run napari-clis batch segmentation "
                           f"({type(e).__name__}: {e}). Install napari-clis {__version__} where they run.") from e
    wrong = {w: v for w, (v, _) in {"scheduler": (scheduler_version, None), **facts}.items() if v != __version__}
    if wrong:
        raise RuntimeError(f"These parts of the Dask cluster run another napari-clis version than this one "
                           f"({__version__}), so their results could differ: {wrong}. Install napari-clis "
                           f"{__version__} there.")
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers by default; any explicit value also turns off
    # glibc's adaptive mmap threshold, and every large tensor is then mapped and faulted in afresh: PyTorch on
    # the CPU ran 2.5x slower (docs/batch.md). Our local cluster leaves it unset; a lab's cluster may not.
    if any(trim is not None for _, trim in facts.values()):
        warnings.warn("The Dask workers run with MALLOC_TRIM_THRESHOLD_ set (Dask's default), which makes "
                      "segmentation about 2x slower; docs/batch.md says how to start them without it.",
                      RuntimeWarning, stacklevel=2)
    return len(facts)


def _run_on_cluster(todo: list, session, tile: int, model: TileModel, client, finish) -> None:
    """Files are read and planned here, their tiles segmented on the workers, stitched and written here. A few
    files' tiles are in flight at a time, so memory stays bounded whatever the number of files."""
    from distributed import as_completed

    window = 2 * _check_workers(client)
    model_future = client.scatter(model, broadcast=True, hash=False)
    queue, inflight, completed = deque(todo), {}, as_completed()

    def submit_more():
        while queue and len(inflight) < window:
            index, job = queue.popleft()
            state = _prepare(job, session, tile, model)
            if isinstance(state, FileResult):
                finish(index, state)
                continue
            state.remaining = state.n_pieces
            for key, (raw, *args) in state.pieces():
                data = client.scatter(np.ascontiguousarray(raw), hash=False)
                future = client.submit(segment_tile, model_future, data, *args, pure=False)
                inflight[future] = (index, state, key)
                completed.add(future)

    submit_more()
    for future in completed:
        index, state, key = inflight.pop(future)
        if state.error is None:
            try:
                state.results[key] = future.result()
            except Exception as e:  # raised on a worker (or the worker died): this file fails, the others go on
                state.error = _describe(e)
        future.release()
        state.remaining -= 1
        if state.remaining == 0:
            finish(index, _complete(state))
        submit_more()
