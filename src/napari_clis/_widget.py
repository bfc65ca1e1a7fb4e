"""The napari dock widget: pick an image and a model, segment off the GUI thread, write layers.

Thin by design: it reads layers, calls :class:`napari_clis.ClisSession` in a worker thread and writes
the results into the ``segmentation``, ``uncertainty`` and ``superpixels`` layers.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from . import _tooltips as tips

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

CUSTOM_MODEL = "Model file…"
LAYER_TAG = "napari_clis"  # key in layer.metadata marking the layers this widget owns
SEGMENTATION, UNCERTAINTY, SUPERPIXELS = "segmentation", "uncertainty", "superpixels"


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    logger.warning(message)
    show_error(message)


def _spatial_shape(layer) -> tuple[int, ...]:
    return tuple(layer.data.shape[:-1] if layer.rgb else layer.data.shape)


def plane_indices(layer, viewer, all_slices: bool) -> list[tuple[int, ...]]:
    """Index tuples over the leading (non-YX) axes of ``layer`` for the planes to segment.

    ``all_slices`` gives every plane; otherwise the plane the viewer shows. Raises ``ValueError`` with a
    message for the user when the view cannot be mapped to a YX plane of the layer.
    """
    shape = _spatial_shape(layer)
    if len(shape) < 2:
        raise ValueError(f"'{layer.name}' is {len(shape)}D; segmentation needs at least a 2D image.")
    lead = shape[:-2]
    if all_slices or not lead:
        return list(itertools.product(*(range(n) for n in lead)))
    if viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed)[-2:] != (viewer.dims.ndim - 2, viewer.dims.ndim - 1):
        raise ValueError(
            "The viewer does not show a YX plane (3D view or swapped axes). Switch to the 2D view with the "
            "default axis order, or tick 'All slices'."
        )
    point = np.asarray(layer.world_to_data(viewer.dims.point), float)
    idx = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(point[: len(lead)], lead))
    return [idx]


class SegmentWidget(Container):
    """Segment the chosen image with a CLIS model; results go to layers that re-runs update."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from .checkpoint import shipped_models

        self._viewer = viewer
        self._session = None
        self._session_key = None
        self._worker = None

        self._image_combo = create_widget(label="Image", annotation="napari.layers.Image")
        self._image_combo.tooltip = tips.IMAGE
        self._model_combo = ComboBox(label="Model", choices=[*shipped_models(), CUSTOM_MODEL], value="nuclei",
                                     tooltip=tips.MODEL)
        self._checkpoint = FileEdit(label="Model file", mode="r", filter="*.pt", visible=False, tooltip=tips.CHECKPOINT)
        self._device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto", tooltip=tips.DEVICE)
        self._samples = SpinBox(label="MC samples", min=0, max=64, value=8, tooltip=tips.SAMPLES)
        self._all_slices = CheckBox(text="All slices", value=False, tooltip=tips.ALL_SLICES)
        self._run_button = PushButton(text="Segment", tooltip=tips.RUN)
        self._cancel_button = PushButton(text="Cancel", enabled=False, tooltip=tips.CANCEL)
        self._progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self._status = Label(value="Choose an image and press Segment.", tooltip=tips.UNCERTAINTY_LAYER)

        self._model_combo.changed.connect(self._on_model_changed)
        self._run_button.changed.connect(lambda: self.run())  # the button's value is not a layer
        self._cancel_button.changed.connect(self.cancel)
        self.extend([self._image_combo, self._model_combo, self._checkpoint, self._device, self._samples,
                     self._all_slices, self._run_button, self._cancel_button, self._progress, self._status])
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()
        viewer.bind_key("Shift-S", lambda _viewer: self.run(), overwrite=True)

    # -- state --------------------------------------------------------------------------------------
    @property
    def session(self):
        """The :class:`ClisSession` of the last run (``None`` before the first)."""
        return self._session

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _on_model_changed(self, value: str) -> None:
        self._checkpoint.visible = value == CUSTOM_MODEL

    def _set_status(self, text: str) -> None:
        self._status.value = text

    def _get_session(self):
        """Load (or reuse) the session for the chosen model and device; raises with a user message."""
        from .session import ClisSession

        model = self._model_combo.value
        path = str(self._checkpoint.value) if model == CUSTOM_MODEL else None
        key = (model, path, self._device.value)
        if self._session is None or self._session_key != key:
            if model == CUSTOM_MODEL:
                if not path or path in (".", ""):
                    raise ValueError("Choose a model file first (Model file).")
                session = ClisSession.from_checkpoint(path, device=self._device.value)
            else:
                session = ClisSession.from_pretrained(model, device=self._device.value)
            self._session, self._session_key = session, key
        self._session.n_samples = int(self._samples.value)
        return self._session

    # -- running ----------------------------------------------------------------------------------
    def run(self, image_layer=None) -> None:
        """Segment ``image_layer`` (default: the chosen one) off the GUI thread."""
        if self.busy:
            self._set_status("Already segmenting; wait or cancel.")
            return
        layer = image_layer if image_layer is not None else self._image_combo.value
        try:
            layer = self._check_layer(layer)
            planes = plane_indices(layer, self._viewer, bool(self._all_slices.value))
            session = self._get_session()
        except Exception as e:  # every failure here is shown to the user; nothing has been changed yet
            _notify_error(f"Cannot segment: {e}")
            self._set_status(f"Not segmented: {e}")
            return
        self._start_worker(layer, planes, session)

    def _check_layer(self, layer):
        from napari.layers import Image

        if layer is None:
            raise ValueError("there is no image layer. Open an image first (File > Open, or a sample).")
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            raise ValueError(f"'{layer.name}' is a {kind} layer, not an image. Choose an image layer.")
        return layer

    def _start_worker(self, layer, planes, session) -> None:
        from napari.qt.threading import thread_worker

        data = layer.data
        n = len(planes)

        @thread_worker(ignore_errors=True)  # errors are shown to the user by _on_error
        def work():
            for i, idx in enumerate(planes):
                plane = np.asarray(data[idx]) if idx else np.asarray(data)
                result = session.segment(plane)
                yield i, idx, result

        worker = work()
        worker.yielded.connect(lambda item: self._on_plane(layer, n, *item))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._run_button.enabled = False
        self._cancel_button.enabled = n > 1
        self._progress.visible = True
        self._progress.max = n if n > 1 else 0  # 0 = busy indicator for a single plane
        self._progress.value = 0
        self._set_status(f"Segmenting '{layer.name}' with {session.model_name} on {session.device}…")
        worker.start()

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._set_status("Cancelling after the current slice…")

    def _on_plane(self, layer, n, i, idx, result) -> None:
        if i == 0:  # only now: a run that fails before its first result leaves the layers as they were
            self._prepare_layers(layer)
        self._write_plane(layer, idx, result)
        self._progress.max = n if n > 1 else 1
        self._progress.value = i + 1
        self._set_status(f"Segmented {i + 1}/{n} slice(s) of '{layer.name}'." if n > 1 else
                         f"Segmented '{layer.name}'. Bright areas of 'uncertainty' need checking.")

    def _on_error(self, error: Exception) -> None:
        _notify_error(f"Segmentation failed: {error}")
        self._set_status(f"Failed: {error}")

    def _on_finished(self) -> None:
        self._worker = None
        self._run_button.enabled = True
        self._cancel_button.enabled = False
        self._progress.visible = False

    # -- layers -----------------------------------------------------------------------------------
    def _find_layer(self, role: str):
        for lyr in self._viewer.layers:
            if lyr.metadata.get(LAYER_TAG) == role:
                return lyr
        return None

    def _prepare_layers(self, image_layer) -> None:
        """Create the output layers, or reset them when they were made for a differently shaped image."""
        shape = _spatial_shape(image_layer)
        session = self._session
        specs = {
            SEGMENTATION: (np.int32, "add_labels", {}),
            UNCERTAINTY: (np.float32, "add_image", dict(colormap="inferno", blending="additive", opacity=0.7)),
            SUPERPIXELS: (np.int32, "add_labels", dict(visible=False, opacity=0.5)),
        }
        for role, (dtype, adder, kwargs) in specs.items():
            lyr = self._find_layer(role)
            if lyr is not None and (lyr.data.shape != shape or lyr.metadata.get("source") != image_layer.name):
                lyr.data = np.zeros(shape, dtype)
            elif lyr is None:
                lyr = getattr(self._viewer, adder)(np.zeros(shape, dtype), name=role, **kwargs)
            lyr.metadata[LAYER_TAG] = role
            lyr.metadata["source"] = image_layer.name
            lyr.scale = image_layer.scale
            lyr.translate = image_layer.translate
            if role == SUPERPIXELS:
                lyr.contour = 1
            if role == UNCERTAINTY:  # the map's full range: 0 to 1 - 1/K
                lyr.contrast_limits = (0.0, 1.0 - 1.0 / session.n_classes)
        seg = self._find_layer(SEGMENTATION)
        seg.metadata["class_names"] = session.class_names
        self._viewer.layers.selection.active = seg

    def _write_plane(self, image_layer, idx, result) -> None:
        for role, values in ((SEGMENTATION, result.labels), (UNCERTAINTY, result.uncertainty),
                             (SUPERPIXELS, result.superpixels)):
            lyr = self._find_layer(role)
            if lyr is None:  # the user deleted it while we worked: make it again
                self._prepare_layers(image_layer)
                lyr = self._find_layer(role)
            if idx:
                lyr.data[idx] = values
                lyr.refresh()
            else:
                lyr.data = values
