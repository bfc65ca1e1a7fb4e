"""The napari dock widget: pick an image and a model, segment off the GUI thread, write layers.

Thin by design: it reads layers, calls :class:`napari_clis.ClisSession` in a worker thread and writes
the results into the ``segmentation``, ``uncertainty`` and ``superpixels`` layers.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from . import _tooltips as tips

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

CUSTOM_MODEL = "Model file…"
LAYER_TAG = "napari_clis"  # key in layer.metadata marking the layers this widget owns
SEGMENTATION, UNCERTAINTY, SUPERPIXELS = "segmentation", "uncertainty", "superpixels"
INSTANCES = "instances"  # one id per object (touching nuclei split), drawn as outlines
CLICKS, SUGGESTIONS = "clicks", "suggestions"
BACKGROUND_CLICK_COLOUR = "#e0e0e0"
ASYNC_PIXELS = 2**21  # planes larger than this propagate clicks in a worker thread


def _model_choices(_widget=None) -> list[tuple[str, str]]:
    """The Model list: the shipped models, the models saved in the models folder, and 'Model file…'."""
    from .checkpoint import saved_models, shipped_models

    saved = [(f"{name} (saved)", str(path)) for name, path in saved_models().items()]
    return [(name, name) for name in shipped_models()] + saved + [(CUSTOM_MODEL, CUSTOM_MODEL)]


def _device_choices() -> list[str]:
    """auto, cpu, cuda, and on a Mac Apple's mps where this PyTorch can use it (elsewhere torch is not imported
    here: the GUI thread never waits for it)."""
    choices = ["auto", "cpu", "cuda"]
    if sys.platform == "darwin":
        import torch

        mps = getattr(torch.backends, "mps", None)
        choices += ["mps"] if mps is not None and mps.is_available() else []
    return choices


AUTO_TASK = -1  # the Task list's "auto": the task-aware module chooses
AUTO_RANGE, DISPLAYED_RANGE = "automatic", "as displayed"  # the Intensity range list: the robust range, contrast limits
REPLACED = "This panel was closed or replaced by a newer one on this window; use that one."
_OWNERS: dict[int, weakref.ref] = {}  # id(viewer) -> the widget that owns its layers (the last one opened)


def _unwrapped(viewer):
    """The viewer itself: napari hands plugin widgets a new proxy of it each time."""
    return getattr(viewer, "__wrapped__", viewer)


def _source_id(layer) -> str:
    """What identifies an image across renames (a layer's name need not be unique over time): the layer, and the
    shape of its data (an image layer given data of another shape holds another image)."""
    return f"{layer.unique_id}:{'x'.join(map(str, _spatial_shape(layer)))}"


def _same_source(lyr, image_layer) -> bool:
    """Whether ``lyr`` (an output layer) was made for ``image_layer``."""
    return lyr.metadata.get("source_id") == _source_id(image_layer)


def breakable(text: str, every: int = 24) -> str:
    """``text`` with a zero-width space after every ``every`` characters of a long word (a file name, a path), so
    that a wrapping label can break it instead of cutting it off at the dock's edge."""
    import re

    return re.sub(r"\S{%d}(?=\S)" % every, lambda m: m.group(0) + "\u200b", text)


def task_choice_text(session) -> str:
    """Which task segmented the current image and why: a second line for the status ("" before anything is
    learned). The agreement is with the pretrained task's segmentation (``continual.choose_task``)."""
    if session is None or (not session.tasks and not session.remembered):
        return ""
    c, t = session.task_choice, session.task
    from .continual import TRANSFER_AGREEMENT

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


def _pixels(layer):
    """A layer's data; of a multiscale layer, its full-resolution level (the one its shape and the segmentation's
    pixels are of; ``numpy.asarray`` of napari's multiscale data gives the coarsest)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _transparent_rgba(layer, idx=()) -> bool:
    """Whether ``layer`` is an RGBA image with a real alpha channel that is not constant, judged on its slice
    ``idx`` (one slice: a lazy stack is not read whole): nearly all of it (90%) fully transparent or fully opaque
    (the type's largest value; 1.0 for floats), with an opaque part of at least a tenth, as a cut-out or a photo
    with a transparent corner has. A fourth channel of any other kind holds data (four channels napari took for
    RGBA), which ``segment()`` refuses with its message."""
    data = _pixels(layer)
    if not getattr(layer, "rgb", False) or data.shape[-1] != 4:
        return False
    alpha = np.asarray(data[idx][..., 3] if idx else data[..., 3])
    if not alpha.size or alpha.min() == alpha.max():
        return False
    opaque = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
    solid = (alpha == opaque).mean()
    return bool(alpha.min() >= 0 and solid >= 0.1 and solid + (alpha == 0).mean() >= 0.9)


def _slice(layer, idx) -> np.ndarray:
    """The (H, W) slice ``idx`` of a layer's pixels (the whole of them for a 2D layer)."""
    data = _pixels(layer)
    return np.asarray(data[idx] if idx else data)


_GEOMETRY = ("scale", "translate", "rotate", "shear", "affine", "units")


def _copy_geometry(dst, src) -> None:
    """Give ``dst`` the whole data-to-world transform of ``src`` (scale, translate, rotate, shear, affine, units),
    so that its pixels lie on ``src``'s and a point put on ``src`` lands on the same pixel of ``dst``."""
    for name in _GEOMETRY:
        if hasattr(src, name):
            setattr(dst, name, getattr(src, name))


def _clear_history(labels_layer) -> None:
    """Empty a Labels layer's undo history (napari keeps it when the data is replaced)."""
    reset = getattr(labels_layer, "_reset_history", None)
    if callable(reset):
        reset()


def _digest(data) -> str:
    """A fingerprint of a layer's pixels (to tell whether anyone changed them since)."""
    import hashlib

    arr = np.ascontiguousarray(data)
    return f"{arr.shape}:{arr.dtype}:" + hashlib.blake2b(arr.view(np.uint8), digest_size=16).hexdigest()


class _Cancelled(Exception):
    """Raised in a segmentation worker at the next tile once Cancel was pressed."""


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
    idx = tuple(int(round(v)) for v in point[: len(lead)])
    for axis, (i, n) in enumerate(zip(idx, lead)):
        if not 0 <= i < n:  # napari draws nothing of the layer there: segmenting its last slice would surprise
            raise ValueError(f"The sliders show slice {i} of axis {axis}, outside '{layer.name}' (slices 0..{n - 1}),"
                             " where napari draws nothing of it. Move the slider onto it, or tick 'All slices'.")
    return [idx]


class SegmentWidget(Container):
    """Segment the chosen image with a CLIS model; results go to layers that re-runs update."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)  # on a laptop screen the dock is taller than the window: it scrolls
        from ._plots import MaskUsagePlot, TaskPlot

        self._viewer = viewer
        self._retired = False  # closed, or replaced by a newer widget on the same viewer: it then does nothing
        self._destroyed = False  # the viewer closed: its Qt widgets are deleted
        self._learning = False  # the worker learns (else it segments)
        self._connections: list = []  # (emitter, callback) pairs to disconnect when retired
        self._hooked: dict[str, weakref.WeakSet] = {"paint": weakref.WeakSet(), "clicks": weakref.WeakSet(),
                                                    "geometry": weakref.WeakSet()}
        previous = _OWNERS.get(id(_unwrapped(viewer)))
        previous = previous() if previous is not None else None
        if previous is not None:
            previous._retire()
        _OWNERS[id(_unwrapped(viewer))] = weakref.ref(self)
        self._session = None
        self._session_key = None
        self._saved_tasks = 0  # how many of the session's tasks are in a file (autosave, or Save model)
        self._retry_autosave = None  # the autosave file a failed autosave left: the next learn saves there again
        self._worker = None

        self._image_combo = ComboBox(label="Image", choices=self._image_choices, tooltip=tips.IMAGE)
        self._model_combo = ComboBox(label="Model", choices=self._model_list, value="nuclei", tooltip=tips.MODEL)
        self._checkpoint = FileEdit(label="Model file", mode="r", filter="*.pt", visible=False, tooltip=tips.CHECKPOINT)
        self._device = ComboBox(label="Device", choices=_device_choices(), value="auto", tooltip=tips.DEVICE)
        self._samples = SpinBox(label="MC samples", min=0, max=64, value=8, tooltip=tips.SAMPLES)
        self._task_combo = ComboBox(label="Task", choices=self._task_choices, value=AUTO_TASK, tooltip=tips.TASK)
        self._intensity_combo = ComboBox(label="Intensity range", choices=[AUTO_RANGE, DISPLAYED_RANGE],
                                         value=AUTO_RANGE, tooltip=tips.INTENSITY_RANGE)
        self._object_size = FloatSpinBox(label="Object size (px)", min=0.0, max=100000.0, step=1.0, value=0.0,
                                         tooltip=tips.OBJECT_SIZE)
        self._all_slices = CheckBox(text="All slices", value=False, tooltip=tips.ALL_SLICES)
        self._run_button = PushButton(text="Segment", tooltip=tips.RUN)
        self._cancel_button = PushButton(text="Cancel", enabled=False, tooltip=tips.CANCEL)
        self._progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self._status = Label(value="Choose an image and press Segment.", tooltip=tips.UNCERTAINTY_LAYER)
        self._class_combo = ComboBox(label="Click class", choices=[("0: background", 0), ("1: object", 1)], value=1,
                                     tooltip=tips.CLASS)
        self._suggest = CheckBox(text="Suggest where to click", value=True, tooltip=tips.SUGGEST)
        self._clear_button = PushButton(text="Clear clicks", tooltip=tips.CLEAR)
        self._click_status = Label(value="", tooltip=tips.CLICKS)
        self._learn_button = PushButton(text="Learn from this image", tooltip=tips.LEARN)
        self._save_path = FileEdit(label="Save model to", mode="w", filter="*.pt", tooltip=tips.SAVE_MODEL)
        self._save_button = PushButton(text="Save model", tooltip=tips.SAVE_MODEL)
        self._tasks_label = Label(value="No task learned yet.")
        self._task_plot, self._mask_plot = TaskPlot(), MaskUsagePlot()
        # the slice the clicks correct: (image layer, plane index); set when a segmentation arrives
        self._target = None
        self._written_base = None  # the propagated labels last written to the segmentation layer
        self._written_labels = None  # what was last written there (propagation with the painted edits)
        self._own_store = {"painted": {}, "written": {}, "segmented": set()}  # while there is no segmentation layer
        self._applied_clicks = None  # the clicks layer's points and classes when they were last applied
        self._strokes: list = []  # per paint event: (flat pixel indices, their painted values before), for undo
        self._undone: list = []  # strokes undone, for redo
        self._run = None  # the segmentation run: {"layer", "n", "done", "last"}
        self._learn_step = 0
        self._shown_notes: list = []  # the click notes last shown as a notification
        self._hinted: set = set()  # layers told that their first axis may hold channels
        self._tiles = (0, 0)  # (done, total) tiles of the image being segmented, set from the worker thread
        self._progress_timer = None  # polls _learn_step or _tiles while a worker runs
        self._pending_strokes = 0  # paint events whose stroke is not taken in yet
        self._click_worker = None
        self._click_pending = False
        self._cancel_requested = False

        self._model_combo.changed.connect(self._on_model_changed)
        self._run_button.changed.connect(lambda: self.run())  # the button's value is not a layer
        self._cancel_button.changed.connect(self.cancel)
        self._class_combo.changed.connect(self._on_class_changed)
        self._suggest.changed.connect(lambda _v: self._update_suggestions())
        self._clear_button.changed.connect(lambda: self.clear_clicks())
        self._learn_button.changed.connect(lambda: self.learn())
        self._save_button.changed.connect(lambda: self.save_model())
        self.extend([self._image_combo, self._model_combo, self._checkpoint, self._device, self._samples,
                     self._task_combo, self._intensity_combo, self._object_size, self._all_slices, self._run_button,
                     self._cancel_button, self._progress, self._status,
                     Label(value="<b>Correct</b>"), self._class_combo, self._suggest, self._clear_button,
                     self._click_status, Label(value="<b>Learn</b>"), self._learn_button, self._tasks_label,
                     self._save_path, self._save_button])
        from qtpy.QtWidgets import QComboBox, QSizePolicy

        for label in (self._status, self._click_status, self._tasks_label):  # long messages (a file path) wrap
            label.native.setWordWrap(True)  # and never widen the dock over the canvas
            label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        for combo in (self._image_combo, self._model_combo):  # long layer or file names: elided, not widening
            combo.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.native.setMinimumContentsLength(16)
        # the plots sit under the task list (magicgui wraps it in a row)
        layout = self._widget._mgui_get_native_widget().layout()
        at = 1 + next(i for i in range(layout.count()) if layout.itemAt(i).widget() is not None and
                      (layout.itemAt(i).widget() is self._tasks_label.native
                       or layout.itemAt(i).widget().isAncestorOf(self._tasks_label.native)))
        layout.insertWidget(at, self._task_plot)
        layout.insertWidget(at + 1, self._mask_plot)
        self._connect(viewer.layers.events.inserted, self._on_layer_inserted)
        self._connect(viewer.layers.events.removed, self.reset_choices)
        self._connect(viewer.layers.selection.events.active, self._on_active_layer)
        self.reset_choices()
        if previous is not None and _unwrapped(previous._viewer) is _unwrapped(viewer) and \
                previous._worker is None and previous._click_worker is None and previous._session is not None:
            self._adopt(previous)
        for key, action in (("Shift-S", self.run), ("Shift-B", lambda: self.set_click_class(0)),
                            ("Shift-F", lambda: self.set_click_class(1)), ("Shift-C", self.next_click_class),
                            ("Shift-L", self.learn)):  # a closed widget's shortcuts do nothing
            viewer.bind_key(key, lambda _viewer, action=action: None if self._retired else action(), overwrite=True)
        self._watch_docking()

    # -- lifetime: one widget per viewer owns the layers ------------------------------------------------
    def _adopt(self, previous) -> None:
        """A widget opened again on the viewer (the dock closed and reopened) goes on with the model in use, its
        learned tasks and where they are saved, rather than starting over on a shipped model. (Only Python state
        is read: closing the dock may have deleted the old widget's Qt controls.)"""
        from .session import resolve_device

        self._session, self._session_key = previous._session, previous._session_key
        self._saved_tasks, self._retry_autosave = previous._saved_tasks, previous._retry_autosave
        previous._session = None  # one widget drives a session: the retired one has nothing left to run
        model, path = self._session_key
        self._reset_models()
        with self._model_combo.changed.blocked():
            self._model_combo.value = model
        if path is not None:
            self._checkpoint.value = path
        self._checkpoint.visible = model == CUSTOM_MODEL
        device = self._session.device
        self._device.value = "auto" if device == resolve_device("auto") else device.type
        self._samples.value = int(self._session.n_samples)
        self._show_tasks()

    def _connect(self, emitter, callback) -> None:
        if self._retired:  # a run that ends after the dock closed must not hook the layers again
            return
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _watch_docking(self) -> None:
        """Retire when napari closes the dock (it takes the widget out of the window, without deleting it)."""
        from qtpy.QtCore import QEvent, QObject

        widget = self

        class _Watcher(QObject):
            docked = False

            def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
                if event.type() == QEvent.ParentChange:
                    if obj.parent() is not None:
                        self.docked = True
                    elif self.docked:
                        widget._retire()
                return False

        self._watcher = _Watcher()
        self.native.installEventFilter(self._watcher)
        # the viewer closed: its Qt widgets are deleted under a run still going; its callbacks then do nothing
        self.native.destroyed.connect(lambda *_: self._native_destroyed())

    def _native_destroyed(self) -> None:
        # the garbage collector may clear this object's attributes before Qt deletes its widgets (a reference
        # cycle collected late, e.g. in the next test): then there is nothing left to stop
        if "_retired" in self.__dict__:
            self._retire(destroyed=True)

    def _retire(self, destroyed: bool = False) -> None:
        """Stop listening to the viewer and its layers (the dock was closed, or a new widget took over, or the
        viewer closed: ``destroyed``, the Qt widgets are gone). A run still going finishes in its thread (a
        task being learned is still learned and autosaved) and its results go nowhere."""
        if destroyed:
            self._destroyed = True
        timer, self._progress_timer = self._progress_timer, None
        if timer is not None:
            timer.stop()
        if self._retired:
            return
        self._retired = True
        if not destroyed:  # still on screen when another widget took over (made from a script): it says so
            for button in (self._run_button, self._cancel_button, self._learn_button, self._save_button,
                           self._clear_button):
                button.enabled = False
            self._set_status(REPLACED)
        for emitter, callback in self._connections:
            try:
                emitter.disconnect(callback)
            except Exception:  # noqa: BLE001 (a layer already gone)
                pass
        self._connections.clear()
        for seg in list(self._hooked["paint"]):
            for name in ("undo", "redo"):
                if getattr(seg.__dict__.get(name), "clis_owner", None) is self:
                    del seg.__dict__[name]

    def _on_layer_inserted(self, event=None) -> None:
        """A newly opened image becomes the one to segment (it is what the user looks at: it lies on top)."""
        self.reset_choices()
        layer = getattr(event, "value", None)
        if layer is not None and self._is_input(layer):
            self._image_combo.value = layer

    def _on_active_layer(self, event=None) -> None:
        """Selecting an image layer in the layer list chooses it for Segment."""
        layer = self._viewer.layers.selection.active
        if layer is not None and self._is_input(layer) and layer in self._viewer.layers:
            self._image_combo.value = layer

    @staticmethod
    def _is_input(layer) -> bool:
        from napari.layers import Image

        return isinstance(layer, Image) and LAYER_TAG not in layer.metadata

    @property
    def native(self):
        """The scroll area around the controls: what napari docks (magicgui's ``native`` is the widget inside
        it, which napari would take out of the scroll area)."""
        return self.root_native_widget

    def _image_choices(self, _widget=None) -> list:
        """The viewer's image layers, without this widget's own outputs (the uncertainty map)."""
        return [(lyr.name, lyr) for lyr in self._viewer.layers if self._is_input(lyr)]

    def reset_choices(self, *_args) -> None:
        """Refresh the image list when layers change (the class list belongs to the model, not the layers),
        and the model list (models saved meanwhile)."""
        self._image_combo.reset_choices()
        self._reset_models()

    def _model_list(self, _widget=None) -> list[tuple[str, str]]:
        """The Model list (:func:`_model_choices`); a saved model in use whose file is gone stays listed, so that
        its learned tasks (in memory) are neither dropped nor swapped for another model's without a word."""
        choices = _model_choices()
        key = getattr(self, "_session_key", None)
        if key is not None and key[1] is None and key[0] not in {value for _, value in choices}:
            choices.insert(-1, (f"{Path(key[0]).stem} (in use; its file is gone)", key[0]))
        return choices

    def _reset_models(self) -> None:
        """Refresh the Model list, 'Model file…' last (magicgui appends new entries after the old ones), keeping
        the choice where it is still listed (under a new label: magicgui would fall back to the first entry)."""
        before = self._model_combo.value
        with self._model_combo.changed.blocked():
            self._model_combo.reset_choices()
            if self._model_combo.value != before and before in [v for _, v in self._model_list()]:
                self._model_combo.value = before
        if self._model_combo.value != before:  # the chosen file is gone
            self._on_model_changed(self._model_combo.value)
        q = self._model_combo.native
        i = q.findText(CUSTOM_MODEL)
        if 0 <= i < q.count() - 1:
            current = q.currentText()
            q.blockSignals(True)
            try:
                data = q.itemData(i)
                q.removeItem(i)
                q.addItem(CUSTOM_MODEL, data)
                q.setCurrentIndex(q.findText(current))
            finally:
                q.blockSignals(False)

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
        if self._session_key != self._chosen_key():
            # the tasks listed are the model in use's; another model's are known once it is loaded (Segment)
            self._task_combo.value = AUTO_TASK
            self._task_combo.reset_choices()
            in_use = f" (In use: {self._session.model_name}.)" if self._session is not None else ""
            self._tasks_label.value = breakable(
                f"Press Segment to use this model; its learned tasks show then.{in_use}")

    def _set_status(self, text: str) -> None:
        self._status.value = breakable(text)

    def _chosen_key(self) -> tuple:
        """(Model list value, model file or None): what identifies the model the user chose."""
        model = self._model_combo.value
        return model, (str(self._checkpoint.value) if model == CUSTOM_MODEL else None)

    @staticmethod
    def _tasks_file(session):
        """The file that holds a session as it is now: its autosave file, else the file it came from, if this
        session wrote or read it and nobody changed it since (``None`` otherwise, or without a session)."""
        if session is None:
            return None
        for path in (session.autosave, session.source):
            if path is not None and session.file_state(path) == "unchanged":
                return path
        return None

    def _get_session(self):
        """Load (or reuse) the session for the chosen model and device; raises with a user message.

        Another device moves the current session (its learned tasks, image and clicks stay); another model
        loads a new one, and says where the previous one's learned tasks are saved."""
        from napari.utils.notifications import show_info

        from .checkpoint import shipped_models
        from .session import ClisSession, resolve_device

        key = self._chosen_key()
        model, path = key
        device = self._device.value
        if self._session is not None and self._session_key == key:
            if self._session.device != resolve_device(device):
                self._session.to(device)
        else:
            old = self._session
            held = self._tasks_file(old)
            if old is not None and old.tasks:
                # the autosave file, deleted or overwritten by someone else since, holds none of them any more
                state = old.file_state(old.autosave) if old.autosave is not None else None
                lost = state in ("gone", "changed")
                unsaved = len(old.tasks) if lost else len(old.tasks) - self._saved_tasks
                if (old.autosave is None or lost) and unsaved > 0:
                    where = {"gone": f" (its file {old.autosave} is gone)",
                             "changed": f" (another window or program wrote over its file {old.autosave})",
                             }.get(state, "")
                    raise ValueError(f"{unsaved} of the {len(old.tasks)} learned task(s) of the model in use are not "
                                     f"saved in any file{where}. Press Save model first, or choose that model again "
                                     "to go on.")
            if model == CUSTOM_MODEL:
                if not path or path in (".", ""):
                    raise ValueError("Choose a model file first (Model file).")
                session = ClisSession.from_checkpoint(path, device=device)
            elif model in shipped_models():
                session = ClisSession.from_pretrained(model, device=device)
            else:  # a saved model, listed by its path
                session = ClisSession.from_checkpoint(model, device=device)
            self._session, self._session_key, self._saved_tasks = session, key, len(session.tasks)
            self._retry_autosave = None
            if old is not None and old.tasks and held is not None:
                show_info(f"Switched to {session.model_name}. The {len(old.tasks)} task(s) learned before are saved "
                          f"in {held}; choose it in Model to go on with them.")
        self._session.n_samples = int(self._samples.value)
        return self._session

    # -- running ----------------------------------------------------------------------------------
    def run(self, image_layer=None) -> None:
        """Segment ``image_layer`` (default: the chosen one) off the GUI thread."""
        if self._replaced():
            return
        if self.busy:
            self._say_busy()
            return
        layer = image_layer if image_layer is not None else self._image_combo.value
        try:
            layer = self._check_layer(layer)
            planes = plane_indices(layer, self._viewer, bool(self._all_slices.value))
            if len(planes) > 1:  # the slice on screen last: it is the one the clicks then correct
                try:
                    shown = plane_indices(layer, self._viewer, False)[0]
                except ValueError:  # a 3D view: no slice on screen
                    shown = None
                planes = [p for p in planes if p != shown] + ([shown] if shown in planes else [])
            session = self._get_session()
            ranged = self._intensity_range(layer)
            diameter = float(self._object_size.value) or None  # 0: the image as it is
            session.object_scale(diameter, _spatial_shape(layer)[-2:])  # refused here, by name, before any work
        except Exception as e:  # every failure here is shown to the user; nothing has been changed yet
            _notify_error(f"Cannot segment: {e}")
            self._set_status(f"Not segmented: {e}")
            self._forget_missing_model()
            return
        from napari.utils.notifications import show_warning

        shape = _spatial_shape(layer)
        if len(shape) >= 3 and shape[-1] <= 4 < shape[-2]:  # e.g. (H, W, 2): napari shows it as a stack of strips
            show_warning(f"'{layer.name}' has only {shape[-1]} pixels along its last axis, so it is segmented as "
                         f"{shape[-2]}x{shape[-1]} slices. If that axis holds channels, open the image as RGB or "
                         "split its channels first.")
        elif len(shape) == 3 and 2 <= shape[0] <= 4 < min(shape[1:]) and layer.unique_id not in self._hinted:
            self._hinted.add(layer.unique_id)  # (C, Y, X) opened as one layer, say: said once per layer
            show_warning(f"'{layer.name}' has {shape[0]} planes along its first axis; each is segmented as a slice. "
                         "If they are channels, right-click the layer and choose Split Stack, then segment the "
                         "channel that shows the objects.")
        colours_only = _transparent_rgba(layer, planes[0])
        if colours_only:
            show_warning(f"'{layer.name}' is partly transparent: its colours are segmented and its alpha "
                         "channel is left out, so transparent pixels are segmented by the colour they hold.")
        task = self._task_combo.value  # one the model lacks (another model chosen since) is refused by segment()
        self._start_worker(layer, planes, session, None if task == AUTO_TASK else task, colours_only=colours_only,
                           intensity_range=ranged, object_diameter=diameter)

    def _intensity_range(self, layer) -> tuple[float, float] | None:
        """The intensity range chosen for ``layer``: None (automatic), or its contrast limits as displayed now."""
        from .preprocessing import check_intensity_range

        if self._intensity_combo.value != DISPLAYED_RANGE:
            return None
        low, high = (float(v) for v in layer.contrast_limits)
        if not high > low:
            raise ValueError(f"the contrast limits of '{layer.name}' have no width ({low:g} to {high:g}): nothing "
                             "could be told apart. Widen them in the layer controls (contrast limits), or choose "
                             "Intensity range: automatic.")
        return check_intensity_range((low, high))

    def _forget_missing_model(self) -> None:
        """A saved model chosen in the list whose file was deleted since the list was made: it leaves the list, and
        the list shows the model in use again."""
        from .checkpoint import shipped_models

        value = self._model_combo.value
        if value == CUSTOM_MODEL or value in shipped_models() or Path(value).is_file():
            return
        self._reset_models()
        key = self._session_key
        if key is not None and key[0] in [v for _, v in self._model_list()]:
            with self._model_combo.changed.blocked():
                self._model_combo.value = key[0]
            if key[1] is not None:
                self._checkpoint.value = key[1]
            self._checkpoint.visible = key[0] == CUSTOM_MODEL
            self._show_tasks()

    def _check_layer(self, layer):
        from napari.layers import Image

        if layer is None:
            raise ValueError("there is no image layer. Open an image first (File > Open, or a sample).")
        if not isinstance(layer, Image):
            kind = type(layer).__name__
            raise ValueError(f"'{layer.name}' is a {kind} layer, not an image. Choose an image layer.")
        return layer

    def _start_worker(self, layer, planes, session, task: int | None = None, colours_only: bool = False,
                      intensity_range=None, object_diameter: float | None = None) -> None:
        from napari.qt.threading import thread_worker

        data = _pixels(layer)
        if colours_only:  # RGBA with transparency: the colours (segment() refuses an alpha that is not constant)
            data = data[..., :3]
        n = len(planes)
        # each slice of a run over several gets its own clicks and painted edits, as when it is segmented alone
        # (only the slice corrected last had them before: a run over all slices undid the clicks on every other)
        per_slice = self._corrections_per_slice(layer, planes, session.n_classes) if n > 1 else {}

        def tiles(done, total):  # in the worker, after each tile of a large image: Cancel stops at the next one
            if self._cancel_requested:
                raise _Cancelled()
            self._tiles = (done, total)

        @thread_worker(ignore_errors=True)  # errors are shown to the user by _on_error
        def work():
            for i, idx in enumerate(planes):
                self._tiles = (0, 0)
                result = session.segment(np.asarray(data[idx] if idx else data), task=task, progress=tiles,
                                         intensity_range=intensity_range, object_diameter=object_diameter)
                clicks, painted = per_slice.get(tuple(idx), (None, None))
                if clicks is not None:
                    session.interaction.set_clicks(*clicks)
                if painted is not None and painted.shape == result.labels.shape:
                    session.interaction.set_painted(painted)
                # the propagated segmentation, as clicks will show it: every slice of a stack as it is alone
                yield i, idx, dataclasses.replace(result, labels=session.labels.copy(),
                                                  instances=session.instances.copy())

        worker = work()
        self._run = {"layer": layer, "n": n, "done": 0, "last": None}
        self._cancel_requested = False
        worker.yielded.connect(lambda item: self._on_plane(layer, n, *item))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._run_button.enabled = False
        self._cancel_button.enabled = True
        self._progress.visible = True
        self._progress.max = n if n > 1 else 0  # 0 = busy indicator for a single plane, until it has tiles
        self._progress.value = 0
        if n == 1:  # a large image runs in tiles: the bar counts them (and one more step for its superpixels)
            from qtpy.QtCore import QTimer

            self._tiles = (0, 0)
            self._progress_timer = QTimer()
            self._progress_timer.timeout.connect(self._show_tiles)
            self._progress_timer.start(200)
        self._set_status(f"Segmenting '{layer.name}' with {session.model_name} on {session.device}…")
        worker.start()

    def _show_tiles(self) -> None:
        done, total = self._tiles
        if total > 1 and not self._destroyed:
            self._progress.max = total + 1
            self._progress.value = done

    def _replaced(self) -> bool:
        """Whether this widget was closed or replaced (its session went to the newer widget); says so."""
        if self._retired and not self._destroyed:
            _notify_error(REPLACED)
        return self._retired

    def _say_busy(self) -> None:
        """A second Segment or Learn while one runs: a notice, leaving the status that says what runs."""
        from napari.utils.notifications import show_info

        show_info(("Learning" if self._learning else "Segmenting") + " is still running; wait, or press Cancel.")

    def cancel(self) -> None:
        if self._worker is not None:
            self._cancel_requested = True
            if not self._learning:  # learning stops at its next step through its progress callback; quitting
                self._worker.quit()  # its worker would also drop the result of a learn that had just finished
            self._set_status("Cancelling…")

    def _on_plane(self, layer, n, i, idx, result) -> None:
        if self._retired:  # the dock or the viewer closed during the run: the layers are not ours any more
            return
        key = (_source_id(layer), tuple(idx))
        seg = self._find_layer(SEGMENTATION)
        if seg is not None and seg.metadata.get("source_id") == key[0] and key in self._store()["written"]:
            self._absorb(key, idx)  # edits not taken yet (made while no widget watched: the dock was reopened)
        if i == 0:  # only now: a run that fails before its first result leaves the layers as they were
            self._prepare_layers(layer)
        # the slice's painted edits are annotations: a new segmentation of it keeps them, as it keeps the clicks
        painted = self._store()["painted"].get(key)
        painted = painted if painted is not None and painted.shape == result.labels.shape else None
        self._written_labels = self._compact(self._write_plane(layer, idx, result, painted))
        self._store()["written"][key] = self._written_labels
        self._store().setdefault("segmented", set()).add(key)  # segmented in this visit (not only painted on)
        self._target = (layer, idx)
        self._written_base = result.labels.copy()
        self._strokes, self._undone, self._pending_strokes = [], [], 0
        if self._run is not None:
            self._run.update(done=i + 1, last=result)
        if i == n - 1:
            self._finish_run(layer)
        self._progress.max = n if n > 1 else 1
        self._progress.value = i + 1
        if self._session is not None and self._session.n_samples == 0:
            note = " MC samples is 0: no uncertainty map and no suggestions."
        else:
            note = " Bright areas of 'uncertainty' need checking."
        where = f"slice {idx[0] if len(idx) == 1 else tuple(int(i) for i in idx)} of " if idx else ""
        late = "Segmenting had finished when Cancel was pressed. " if n == 1 and self._cancel_requested else ""
        found = f": {object_count_text(self._session, result.instances)}." if self._session is not None else "."
        self._set_status((f"Segmented {i + 1}/{n} slice(s) of '{layer.name}'." if n > 1 else
                          f"{late}Segmented {where}'{layer.name}'{found}{note}")
                         + (task_choice_text(self._session) if n == 1 else "")  # a stack: tasks per slice
                         + familiarity_text(result.familiarity))
        fam = result.familiarity
        self._status.tooltip = (fam.message + "\n\n" if fam is not None else "") + tips.UNCERTAINTY_LAYER

    def _store(self) -> dict:
        """Per slice of each image, keyed ``(source id, slice index)``: ``painted`` (the painted map, -1 where
        nothing is painted) and ``written`` (what the widget last wrote there). It lives on the segmentation
        layer, so a widget opened again (the dock closed and reopened) finds the user's edits."""
        seg = self._find_layer(SEGMENTATION)
        if seg is None:
            return self._own_store
        store = seg.__dict__.get("_clis_store")
        if store is None:
            store = seg.__dict__["_clis_store"] = {"painted": {}, "written": {}, "segmented": set()}
        return store

    def _painted_for(self, layer, idx, shape) -> np.ndarray:
        return self._painted_map((_source_id(layer), tuple(idx)), shape)

    def _painted_map(self, key, shape) -> np.ndarray:
        """The painted map of one slice of an image (-1 where nothing is painted), kept across runs; made when
        first needed, in the smallest integer type that holds the model's classes."""
        painted = self._store()["painted"].get(key)
        if painted is None or painted.shape != tuple(shape):
            dtype = np.int8 if self._session is None or self._session.n_classes <= 127 else np.int32
            painted = self._store()["painted"][key] = np.full(shape, -1, dtype)
        return painted

    @property
    def _painted(self):
        """The painted map of the slice being corrected (``None`` before a segmentation)."""
        if self._target is None or self._written_labels is None:
            return None
        layer, idx = self._target
        return self._painted_for(layer, idx, self._written_labels.shape)

    def _compact(self, labels: np.ndarray) -> np.ndarray:
        """A copy of written labels in the smallest type that holds the model's classes (a stack keeps one per
        slice, beside the layer's own data)."""
        small = self._session is not None and self._session.n_classes <= 255
        return np.array(labels, dtype=np.uint8 if small and labels.min() >= 0 and labels.max() <= 255 else labels.dtype)

    def _target_key(self):
        layer, idx = self._target
        return _source_id(layer), tuple(idx)

    def _finish_run(self, layer) -> None:
        """The slice segmented last is the one to correct: click layers, the clicks and edits, the task panel."""
        self._prepare_click_layers(layer)
        self._shown_notes = []  # a new run: its notes are news
        self._propagate_clicks()
        self._show_tasks()
        from qtpy.QtCore import QTimer

        # after this callback returns: moving layers inside it crashed Mesa's OpenGL under Xvfb
        QTimer.singleShot(0, lambda: self._raise_above(layer))

    def _on_error(self, error: Exception) -> None:
        if self._retired or isinstance(error, _Cancelled):  # Cancel between two tiles: _on_finished says so
            return
        _notify_error(f"Segmentation failed: {error}")
        self._set_status(f"Failed: {error}")

    def _on_finished(self) -> None:
        run, self._run = self._run, None
        self._worker = None
        self._learning = False
        timer, self._progress_timer = self._progress_timer, None
        if timer is not None:
            timer.stop()
        if self._destroyed:
            return
        self._progress.visible = False
        if self._retired:
            self._cancel_requested = False
            return
        self._run_button.enabled = True
        self._cancel_button.enabled = False
        if run is not None and run["done"] < run["n"]:  # cancelled, or failed on a later slice
            session = self._session
            last = run["last"]  # a copy of the session's result with the propagated labels: it shares the maps
            if run["done"] and session is not None and session.result is not None and last is not None and \
                    session.result.probabilities is last.probabilities:
                self._finish_run(run["layer"])
            elif run["done"]:  # the session went on to a slice that was not shown: segment again to correct
                self._target = None
            if self._cancel_requested and run["n"] == 1:
                self._set_status(f"Cancelled: '{run['layer'].name}' was not segmented; the layers are as they were.")
            elif self._cancel_requested:
                self._set_status(f"Cancelled: {run['done']} of {run['n']} slice(s) of '{run['layer'].name}' "
                                 "segmented." + (" Press Segment to correct one." if self._target is None else ""))
        self._cancel_requested = False

    # -- layers -----------------------------------------------------------------------------------
    def _find_layer(self, role: str):
        for lyr in self._viewer.layers:
            if lyr.metadata.get(LAYER_TAG) == role:
                return lyr
        return None

    def _keep_corrected_result(self, image_layer) -> None:
        """Before the layers move on to another image: a segmentation the user corrected (clicks, painted edits)
        is kept as its own layers, ``segmentation [name]`` and ``clicks [name]`` (hidden), so nothing is lost."""
        from napari.utils.notifications import show_info

        seg, clicks = self._find_layer(SEGMENTATION), self._find_layer(CLICKS)
        if seg is None or seg.metadata.get("source") is None or _same_source(seg, image_layer):
            return
        has_clicks = clicks is not None and len(clicks.data) > 0
        source = seg.metadata.get("source_id")
        painted = any(bool((m >= 0).any()) for (sid, _), m in self._store()["painted"].items() if sid == source)
        if not (has_clicks or painted):
            return
        name = seg.metadata["source"]
        earlier = self._kept_segmentation(source)
        if earlier is not None:  # the image was corrected, left and come back to before: one copy, brought up
            # to date with the slices segmented since (a stack keeps the others), and only when nobody edited it
            data = np.array(earlier.data, copy=True)
            segmented = [idx for (sid, idx) in self._store().get("segmented", ()) if sid == source]
            for idx in segmented:
                if idx:
                    data[idx] = seg.data[idx]
                else:
                    data = np.array(seg.data, copy=True)
            earlier.data = data
            earlier.metadata["class_names"] = seg.metadata.get("class_names")
            earlier.metadata["clis_digest"] = _digest(data)
            kept = [earlier]
        else:
            data = np.array(seg.data, copy=True)
            kept = [self._viewer.add_labels(data, name=f"{SEGMENTATION} [{name}]", visible=False,
                                            metadata={"source": name, "source_id": source,
                                                      "class_names": seg.metadata.get("class_names"),
                                                      "clis_digest": _digest(data)})]
        _copy_geometry(kept[0], seg)
        if has_clicks:
            kept.append(self._viewer.add_points(np.array(clicks.data, copy=True), name=f"{CLICKS} [{name}]",
                                                ndim=clicks.ndim, features=clicks.features.copy(),
                                                face_color=np.array(clicks.face_color, copy=True), size=clicks.size,
                                                visible=False, metadata={"source": name, "source_id": source}))
            _copy_geometry(kept[1], clicks)
        show_info(f"Your corrected segmentation of '{name}' is kept as layer '{kept[0].name}'"
                  + (f", its clicks as '{kept[1].name}'" if len(kept) > 1 else "") + ".")

    def _kept_segmentation(self, source_id: str):
        """The hidden ``segmentation [name]`` copy kept for an image (by its source id) as the widget last wrote
        it, if there is one: a copy the user edited since (painted on it, to polish and save it) is theirs."""
        from napari.layers import Labels

        for lyr in self._viewer.layers:
            if isinstance(lyr, Labels) and lyr.metadata.get(LAYER_TAG) is None and \
                    lyr.metadata.get("source_id") == source_id and lyr.name.startswith(f"{SEGMENTATION} [") and \
                    lyr.metadata.get("clis_digest") == _digest(lyr.data):
                return lyr
        return None

    def _prepare_layers(self, image_layer) -> None:
        """Create the output layers, or reset them when they were made for a differently shaped image."""
        self._keep_corrected_result(image_layer)
        shape = _spatial_shape(image_layer)
        session = self._session
        specs = {
            SEGMENTATION: (np.int32, "add_labels", {}),
            UNCERTAINTY: (np.float32, "add_image", dict(colormap="inferno", blending="additive", opacity=0.7)),
            SUPERPIXELS: (np.int32, "add_labels", dict(visible=False, opacity=0.5)),
            INSTANCES: (np.uint32, "add_labels", {}),
        }
        for role, (dtype, adder, kwargs) in specs.items():
            lyr = self._find_layer(role)
            if lyr is not None and (lyr.data.shape != shape or not _same_source(lyr, image_layer)):
                lyr.data = np.zeros(shape, dtype)
                if role == SEGMENTATION:  # it shows none of what was written: edits are found against zeros now
                    self._store()["written"].clear()
                    self._store().setdefault("segmented", set()).clear()
            elif lyr is None:  # tagged as it is added: the Image list never offers the widget's own layers
                lyr = getattr(self._viewer, adder)(np.zeros(shape, dtype), name=role, metadata={LAYER_TAG: role},
                                                   **kwargs)
            lyr.metadata[LAYER_TAG] = role
            lyr.metadata["source"] = image_layer.name
            lyr.metadata["source_id"] = _source_id(image_layer)
            _copy_geometry(lyr, image_layer)
            if role in (SUPERPIXELS, INSTANCES):  # outlines: the segmentation shows through
                lyr.contour = 1
            if role == UNCERTAINTY:  # the map's full range: 0 to 1 - 1/K
                lyr.contrast_limits = (0.0, 1.0 - 1.0 / session.n_classes)
        seg = self._find_layer(SEGMENTATION)
        seg.metadata["class_names"] = session.class_names
        self._viewer.layers.selection.active = seg
        self._follow_geometry(image_layer)

    def _follow_geometry(self, image_layer) -> None:
        """When the image moves (its scale, translate, rotation, shear, affine or units change), the widget's
        layers of that image move with it."""
        if image_layer in self._hooked["geometry"]:
            return

        def moved(_event=None, ref=weakref.ref(image_layer)):  # noqa: B008 - binds a weak reference, once, on purpose
            image = ref()
            if image is None:
                return
            for role in (SEGMENTATION, UNCERTAINTY, SUPERPIXELS, INSTANCES, CLICKS, SUGGESTIONS):
                lyr = self._find_layer(role)
                if lyr is not None and _same_source(lyr, image):
                    _copy_geometry(lyr, image)

        for name in _GEOMETRY:
            emitter = getattr(image_layer.events, name, None)
            if emitter is not None:
                self._connect(emitter, moved)
        self._hooked["geometry"].add(image_layer)

    def _raise_above(self, image_layer) -> None:
        """Keep this widget's layers above the image they belong to (an image opened later goes on top)."""
        layers = self._viewer.layers
        ours = [lyr for role in (SEGMENTATION, UNCERTAINTY, SUPERPIXELS, INSTANCES, SUGGESTIONS, CLICKS)
                if (lyr := self._find_layer(role)) is not None]
        lowest = min((layers.index(lyr) for lyr in ours), default=None)
        if image_layer in layers and lowest is not None and lowest < layers.index(image_layer):
            layers.move(layers.index(image_layer), lowest)  # one move: the image goes under them
        clicks, sugg = self._find_layer(CLICKS), self._find_layer(SUGGESTIONS)
        below = [lyr for role in (SEGMENTATION, UNCERTAINTY, SUPERPIXELS, INSTANCES) if (lyr := self._find_layer(role))]
        top = max((layers.index(lyr) for lyr in below), default=-1)  # a layer made again (deleted, then Segment)
        for points in (sugg, clicks):  # the rings, then the clicks over them, over the maps
            if points is not None and (layers.index(points) < top or (points is clicks and sugg is not None and
                                                                        layers.index(clicks) < layers.index(sugg))):
                layers.move(layers.index(points), len(layers))

    def _write_plane(self, image_layer, idx, result, painted=None) -> np.ndarray:
        """Write one slice's results; the segmentation with the slice's painted edits over it (returned)."""
        labels = result.labels
        if painted is not None and (painted >= 0).any():
            labels = np.where(painted >= 0, painted, labels).astype(labels.dtype)
        for role, values in ((SEGMENTATION, labels), (UNCERTAINTY, result.uncertainty),
                             (SUPERPIXELS, result.superpixels), (INSTANCES, result.instances)):
            lyr = self._find_layer(role)
            if lyr is None:  # the user deleted it while we worked: make it again
                if idx and self._run is not None and self._run["done"]:
                    from napari.utils.notifications import show_warning

                    show_warning(f"'{role}' was deleted during the run: the slices segmented before are empty in "
                                 "the new layer. Segment them again (All slices).")
                self._prepare_layers(image_layer)
                lyr = self._find_layer(role)
            if idx:
                lyr.data[idx] = values
                lyr.refresh()
            else:  # a copy: the layer is painted on, and must not write into the session's arrays
                lyr.data = np.array(values, copy=True)
            if role == SEGMENTATION:  # undo must not bring back strokes made on an earlier segmentation
                _clear_history(lyr)
            if role == UNCERTAINTY:  # no samples: an all-zero map says nothing
                lyr.visible = bool(self._session is None or self._session.n_samples > 0)
        return np.array(labels, copy=True)

    # -- corrections: clicks, painted edits, suggestions ---------------------------------------------
    def _class_colour(self, label: int):
        if label == 0:
            return BACKGROUND_CLICK_COLOUR
        seg = self._find_layer(SEGMENTATION)
        return tuple(seg.get_color(label)) if seg is not None else "cyan"

    @property
    def click_class(self) -> int:
        return int(self._class_combo.value)

    def set_click_class(self, label: int) -> None:
        """Choose the class new clicks get (and that selected clicks are changed to)."""
        if label in self._class_values():
            self._class_combo.value = label

    def _class_values(self) -> list[int]:
        return [int(c) for c in self._class_combo.choices]  # magicgui lists the values of (text, value) choices

    def next_click_class(self) -> None:
        values = self._class_values()
        self.set_click_class(values[(values.index(self.click_class) + 1) % len(values)])

    def _on_class_changed(self, label) -> None:
        clicks = self._find_layer(CLICKS)
        if clicks is None:
            return
        label = int(label)
        # napari selects a point right after adding it: relabel selected clicks only in select mode
        selected = sorted(clicks.selected_data) if str(clicks.mode) == "select" else []
        if not selected:
            clicks.selected_data = set()
        clicks.feature_defaults = {"class": label}
        with clicks.events.current_face_color.blocker():
            clicks.current_face_color = self._class_colour(label)
        if selected:  # relabel the selected clicks
            classes = clicks.features["class"].to_numpy().copy()
            classes[selected] = label
            clicks.features = {"class": classes}
            self._recolour_clicks(clicks)
            self._propagate_clicks()

    def _recolour_clicks(self, clicks) -> None:
        if len(clicks.data):
            clicks.face_color = [self._class_colour(int(c)) for c in clicks.features["class"]]

    def _prepare_click_layers(self, image_layer) -> None:
        """Create (or adopt) the 'clicks' Points layer and the 'suggestions' layer for the image."""
        session = self._session
        names = session.class_names
        current = self.click_class
        with self._class_combo.changed.blocked():
            self._class_combo.choices = [(f"{i}: {name}", i) for i, name in enumerate(names)]
            self._class_combo.value = current if current < len(names) else min(1, len(names) - 1)
        ndim = len(_spatial_shape(image_layer))
        clicks = self._find_layer(CLICKS)
        if clicks is not None and (clicks.ndim != ndim or not _same_source(clicks, image_layer)):
            self._viewer.layers.remove(clicks)
            clicks = None
        if clicks is None:
            size = max(4.0, 0.6 * session.superpixel_size)
            kept = self._kept_clicks(image_layer, ndim)
            data, classes = (np.zeros((0, ndim)), np.zeros(0, int)) if kept is None else \
                (np.array(kept.data, copy=True), np.asarray(kept.features["class"], int).copy())
            clicks = self._viewer.add_points(data, name=CLICKS, ndim=ndim, size=size, features={"class": classes},
                                             border_color="white", border_width=0.15)
            clicks.metadata[LAYER_TAG] = CLICKS
            if kept is not None:  # the image is back: its clicks are the clicks again, as its painted edits are
                from napari.utils.notifications import show_info

                show_info(f"The {len(data)} click(s) kept in '{kept.name}' are back in '{CLICKS}' for "
                          f"'{image_layer.name}'.")
                self._viewer.layers.remove(kept)
        if clicks not in self._hooked["clicks"]:  # a layer made by a widget closed since is adopted
            self._connect(clicks.events.data, self._on_clicks_event)
            self._connect(clicks.events.features, self._on_click_features)
            self._hooked["clicks"].add(clicks)
        clicks.metadata["source"] = image_layer.name
        clicks.metadata["source_id"] = _source_id(image_layer)
        _copy_geometry(clicks, image_layer)
        clicks.feature_defaults = {"class": self.click_class}
        clicks.current_face_color = self._class_colour(self.click_class)
        self._recolour_clicks(clicks)
        self._hook_segmentation(self._find_layer(SEGMENTATION))
        self._viewer.layers.selection.active = clicks
        clicks.mode = "add"

    def _kept_clicks(self, image_layer, ndim: int):
        """The clicks kept for ``image_layer`` when the layers moved on to another image (``clicks [name]``)."""
        from napari.layers import Points

        for lyr in reversed(list(self._viewer.layers)):  # the latest kept copy first
            if isinstance(lyr, Points) and lyr.metadata.get(LAYER_TAG) is None and lyr.ndim == ndim and \
                    "class" in lyr.features and _same_source(lyr, image_layer) and lyr.name.startswith(CLICKS):
                return lyr
        return None

    def _click_signature(self):
        clicks = self._find_layer(CLICKS)
        if clicks is None or "class" not in clicks.features:
            return None
        return np.asarray(clicks.data).tobytes(), np.asarray(clicks.features["class"]).tobytes()

    def _on_click_features(self, _event=None) -> None:
        # adding a point announces its data and then its features: the clicks applied already are not applied twice
        if self._click_signature() != self._applied_clicks:
            self._propagate_clicks()

    def _hook_segmentation(self, seg) -> None:
        """Paint strokes on the segmentation layer become annotations; napari's undo and redo take them back
        and bring them back (napari's own undo and redo do the pixels and emit nothing, so they are wrapped)."""
        if seg in self._hooked["paint"]:
            return
        self._connect(seg.events.paint, self._on_paint)
        for name in ("undo", "redo"):
            def wrapper(name=name, seg=seg):
                self._on_history(seg, name)

            wrapper.clis_owner = self
            setattr(seg, name, wrapper)
        self._hooked["paint"].add(seg)

    def _on_clicks_event(self, event) -> None:
        if self._retired:
            return
        action = str(getattr(event, "action", "")).lower()
        if action.endswith(("adding", "removing", "changing")):
            return  # the matching 'added' / 'removed' / 'changed' event follows
        self._propagate_clicks()

    def clear_clicks(self) -> None:
        if self._replaced():
            return
        clicks = self._find_layer(CLICKS)
        if clicks is None or self._target is None:
            return
        keep = [i for i, p in enumerate(clicks.data) if not self._on_target_plane(p)]
        classes = clicks.features["class"].to_numpy()[keep] if len(keep) else np.zeros(0, int)
        with clicks.events.data.blocker():
            clicks.data = clicks.data[keep]
            clicks.features = {"class": classes}
        self._recolour_clicks(clicks)
        self._propagate_clicks()

    def _corrections_per_slice(self, layer, planes, n_classes: int) -> dict:
        """``{slice index: (clicks, painted)}`` for each of ``planes`` that has any, copied for a worker: the
        clicks of ``layer`` (in 'clicks', or kept for it in 'clicks [name]') inside the image and of a known class,
        as ``(points (N, 2), classes)``, and the slice's painted map; ``None`` for what a slice lacks."""
        ndim = len(_spatial_shape(layer))
        clicks = self._find_layer(CLICKS)
        if clicks is None or clicks.ndim != ndim or not _same_source(clicks, layer):
            clicks = self._kept_clicks(layer, ndim)
        out = {}
        if clicks is not None and len(clicks.data) and "class" in clicks.features:
            data = np.asarray(clicks.data, float)
            classes = clicks.features["class"].to_numpy().astype(int)
            h, w = _spatial_shape(layer)[-2:]
            lead = np.round(data[:, :-2]).astype(int)
            y, x = data[:, -2], data[:, -1]
            usable = (y > -0.5) & (y < h - 0.5) & (x > -0.5) & (x < w - 0.5) & (classes >= 0) & (classes < n_classes)
            for idx in planes:
                on = usable & (lead == np.asarray(idx, int)).all(1)
                if on.any():
                    out[tuple(idx)] = ((data[on, -2:], classes[on].tolist()), None)
        source = _source_id(layer)
        for idx in planes:
            painted = self._store()["painted"].get((source, tuple(idx)))
            if painted is not None and (painted >= 0).any() and int(painted.max()) < n_classes:
                out[tuple(idx)] = (out.get(tuple(idx), (None, None))[0], painted.copy())
        return out

    def _on_target_plane(self, point) -> bool:
        _, idx = self._target
        lead = np.round(np.asarray(point[: len(idx)], float)).astype(int)
        return tuple(lead) == tuple(idx)

    def _gather_inputs(self):
        """Clicks on the target plane (y, x, class) and the painted map, read from the layers; user messages
        for what is ignored. Raises ValueError when the layers cannot be used."""
        layer, idx = self._target
        clicks = self._find_layer(CLICKS)
        seg = self._find_layer(SEGMENTATION)
        notes = []
        pts, labs = np.zeros((0, 2)), []
        if clicks is not None and len(clicks.data):
            data = np.asarray(clicks.data, float)
            if data.shape[1] != len(_spatial_shape(layer)):
                raise ValueError(f"the 'clicks' layer is {data.shape[1]}D but '{layer.name}' is "
                                 f"{len(_spatial_shape(layer))}D; delete it and segment again.")
            classes = clicks.features["class"].to_numpy().astype(int)
            on_plane = np.array([self._on_target_plane(p) for p in data], bool)
            if (~on_plane).any():
                notes.append(f"{int((~on_plane).sum())} click(s) on other slices apply once that slice is the "
                             "one segmented (go to it and press Segment, or tick All slices)")
            h, w = self._written_base.shape
            yx = data[on_plane, -2:]
            inside = (yx[:, 0] > -0.5) & (yx[:, 0] < h - 0.5) & (yx[:, 1] > -0.5) & (yx[:, 1] < w - 0.5)
            if (~inside).any():
                notes.append(f"{int((~inside).sum())} click(s) outside the image are ignored")
            n_classes = self._session.n_classes
            cls = classes[on_plane][inside]
            known = (cls >= 0) & (cls < n_classes)
            if (~known).any():
                notes.append(f"{int((~known).sum())} click(s) with an unknown class are ignored")
            pts, labs = yx[inside][known], cls[known].tolist()
        painted = None
        if seg is not None and self._record_strokes(notes) is not None:
            painted = self._painted
        return pts, labs, painted, notes

    def _absorb_edits(self, notes: list | None = None):
        """New painted edits on the target slice become annotations (:meth:`_absorb`)."""
        if self._target is None or self._find_layer(SEGMENTATION) is None:
            return None
        return self._absorb(self._target_key(), self._target[1], notes)

    def _absorb(self, key, idx, notes: list | None = None):
        """New painted edits on one slice become annotations: what differs from what the widget last wrote
        there (earlier edits stay annotations even where the propagation has come to agree with them).

        Returns ``(key, pixels, before)``: the slice, the flat indices of the new edits and their painted values
        before (-1: none), for undo; ``None`` when the layer cannot be read as that slice."""
        seg = self._find_layer(SEGMENTATION)
        if seg is None or self._session is None:
            return None
        plane = _slice(seg, idx)
        store = self._store()
        written = store["written"].get(key)
        if written is None or written.shape != plane.shape:  # a slice never segmented: it showed nothing
            written = store["written"][key] = np.zeros(plane.shape, np.uint8)
        painted = self._painted_map(key, plane.shape)
        diff = plane != written
        bad = diff & ((plane < 0) | (plane >= self._session.n_classes))
        if bad.any() and notes is not None:
            notes.append(f"{int(bad.sum())} painted pixel(s) with a label that is not a class are ignored")
        pixels = np.flatnonzero(diff & ~bad)
        flat = painted.reshape(-1)
        before = flat[pixels].copy()
        flat[pixels] = plane.reshape(-1)[pixels]
        written.reshape(-1)[pixels] = flat[pixels]  # taken in: not new the next time
        return key, pixels, before

    def _shown_slice(self):
        """(key, index) of the slice of the target image on screen; ``None`` when it cannot be told."""
        layer, idx = self._target
        if not idx:
            return self._target_key(), idx
        try:
            shown = plane_indices(layer, self._viewer, False)[0]
        except (ValueError, IndexError):
            return None
        return (_source_id(layer), tuple(shown)), tuple(shown)

    def _on_paint(self, _event=None) -> None:
        """A paint stroke or fill on the segmentation layer: an undoable annotation, then the propagation.

        napari announces a mouse stroke after it wrote the pixels, but a single paint or fill before, so what
        the stroke wrote is looked for again once the event is over. A stroke on another slice of a stack is
        kept as that slice's annotation, applied when that slice is segmented."""
        if self._retired or self._target is None or self._session is None:
            return
        from qtpy.QtCore import QTimer

        shown = self._shown_slice()
        if shown is not None and shown[0] != self._target_key():
            self._record_strokes()  # any stroke of the target slice still pending comes first
            taken = self._absorb(*shown)
            self._strokes.append(taken if taken is not None else (shown[0], np.zeros(0, np.int64),
                                                                   np.zeros(0, np.int32)))
            self._undone.clear()
            if taken is not None and len(taken[1]):
                self._click_status.value = (f"Painted on slice {shown[1]}: kept, and applied when that slice is "
                                            "segmented (go to it and press Segment).")
            QTimer.singleShot(0, lambda: self._late_edits(shown))
            return
        self._pending_strokes = self._pending_strokes + 1
        self._propagate_clicks()  # it records the stroke first
        QTimer.singleShot(0, self._late_edits)
        if shown is None:  # a 3D or transposed view of a stack: the stroke may have touched any slice
            QTimer.singleShot(0, self._absorb_other_slices)

    def _absorb_other_slices(self) -> None:
        """Edits on the target image's slices other than the target, by a stroke in a view that shows no single
        slice: kept as those slices' annotations, in the same undo entry as the stroke's part on the target."""
        if self._retired or self._target is None or self._session is None:
            return
        layer, idx = self._target
        seg = self._find_layer(SEGMENTATION)
        if seg is None or not idx or seg.metadata.get("source_id") != _source_id(layer):
            return
        parts, where = [], []
        for other in np.ndindex(*seg.data.shape[: len(idx)]):
            key = (_source_id(layer), tuple(other))
            if key == self._target_key():
                continue  # taken already
            written, plane = self._store()["written"].get(key), seg.data[other]
            unchanged = np.array_equal(plane, written) if written is not None and written.shape == plane.shape \
                else not np.any(plane)  # a slice never segmented shows zeros
            if unchanged:
                continue  # nothing new there: no painted map is made for it
            taken = self._absorb(key, tuple(other))
            if taken is not None and len(taken[1]):
                parts.append(taken)
                where.append(str(other[0] if len(other) == 1 else other))
        if not parts:
            return
        last = self._strokes.pop() if self._strokes and self._strokes[-1][0] == self._target_key() else None
        self._strokes.append(("group", ([last] if last is not None else []) + parts))
        self._undone.clear()
        self._click_status.value = (f"Painted on slice(s) {', '.join(where)}: kept, and applied when segmented "
                                    "(go to the slice and press Segment).")

    def _late_edits(self, shown=None) -> None:
        """Pixels written after their paint event: part of the last stroke."""
        if self._retired or self._target is None or self._session is None:
            return
        if shown is None and self._pending_strokes:  # not recorded yet (a propagation was running)
            self._record_strokes()
            self._propagate_clicks()
            return
        taken = self._absorb(*shown) if shown is not None else self._absorb_edits()
        if taken is None or not len(taken[1]):
            return
        if self._strokes and self._strokes[-1][0] == taken[0]:
            key, pixels, before = self._strokes[-1]
            self._strokes[-1] = (key, np.concatenate([pixels, taken[1]]), np.concatenate([before, taken[2]]))
        if shown is None:
            self._propagate_clicks()

    def _record_strokes(self, notes: list | None = None):
        """Take the new edits of the target slice (:meth:`_absorb_edits`); when napari announced strokes, they
        are one undo entry per announced stroke (edits taken together go with the last)."""
        taken = self._absorb_edits(notes)
        pending, self._pending_strokes = self._pending_strokes, 0
        if pending:
            empty = (self._target_key(), np.zeros(0, np.int64), np.zeros(0, np.int32))
            self._strokes.extend([empty] * (pending - 1) + [taken if taken is not None else empty])
            self._undone.clear()
        return taken

    def _on_history(self, seg, name: str) -> None:
        """napari's undo or redo on the segmentation layer, then the matching change of the annotations: an
        undone stroke's pixels follow the propagation again, a redone one is an annotation again."""
        ours = not self._retired and self._target is not None and seg is self._find_layer(SEGMENTATION)
        if ours:
            self._record_strokes()  # a stroke announced but not taken yet is taken before napari undoes it
        getattr(type(seg), name)(seg)  # napari's own: it restores the pixels
        if not ours:
            return
        source, target = (self._strokes, self._undone) if name == "undo" else (self._undone, self._strokes)
        if not source:
            return
        entry = source.pop()
        group = entry[0] == "group"  # one stroke over several slices (a 3D view)
        done, store, target_touched = [], self._store(), False
        for key, pixels, values in (entry[1] if group else [entry]):
            painted, written = store["painted"].get(key), store["written"].get(key)
            if painted is None or written is None:
                continue
            flat = painted.reshape(-1)
            done.append((key, pixels, flat[pixels].copy()))
            flat[pixels] = values
            plane = _slice(seg, key[1])
            if plane.shape == written.shape:  # the restored pixels are not new edits
                written.reshape(-1)[pixels] = plane.reshape(-1)[pixels]
            target_touched |= key == self._target_key()
        if done:
            target.append(("group", done) if group else done[0])
        if target_touched:
            self._propagate_clicks()

    def _propagate_clicks(self) -> None:
        """Apply the clicks and painted edits of the target plane and update 'segmentation' (and suggestions)."""
        if self._retired:  # another widget owns the layers now
            return
        session = self._session
        if self._target is None or session is None or session.interaction is None:
            clicks = self._find_layer(CLICKS)
            if clicks is not None and len(clicks.data):
                self._click_status.value = "Segment the image first (Shift-S); your clicks are kept."
            return
        if self._click_worker is not None:
            self._click_pending = True
            return
        run = self._run
        if run is not None and run["done"] < run["n"]:  # the session is on the worker's image or slice, not on
            # the one clicked: the clicks are applied when the run ends (_finish_run)
            self._click_status.value = "Segmenting: your clicks are kept and applied when it is done."
            return
        layer = self._target[0]
        seg = self._find_layer(SEGMENTATION)
        if seg is not None and seg.metadata.get("source_id") != _source_id(layer):  # its data was replaced
            self._click_status.value = breakable(
                f"'{layer.name}' has changed since it was segmented: press Segment (Shift-S) to segment it as it is "
                "now; your clicks are kept.")
            return
        self._applied_clicks = self._click_signature()
        try:
            pts, labs, painted, notes = self._gather_inputs()
            inter = session.interaction
            inter.set_clicks(pts, labs)
            if painted is not None:
                inter.set_painted(painted)
        except Exception as e:  # the layers keep the user's clicks and edits; nothing is overwritten
            _notify_error(f"Cannot apply the corrections: {e}")
            self._click_status.value = breakable(f"Not applied: {e}")
            return
        msg = f"{len(labs)} click(s) applied" + ("; " + "; ".join(notes) if notes else "") + "."
        if notes and notes != self._shown_notes:  # once, not again at every click: the click status keeps it
            from napari.utils.notifications import show_warning

            text = "; ".join(notes)
            show_warning(text[:1].upper() + text[1:] + ".")
        self._shown_notes = notes
        if self._written_base.size > ASYNC_PIXELS:
            self._propagate_in_worker(inter, msg)
        else:
            self._write_corrections(inter.propagated, inter.labels, msg)

    def _propagate_in_worker(self, inter, msg) -> None:
        from napari.qt.threading import thread_worker

        @thread_worker(ignore_errors=True)
        def work():
            return inter.propagated, inter.labels

        worker = work()
        worker.returned.connect(lambda out: None if self._retired else self._write_corrections(*out, msg))
        worker.errored.connect(lambda e: _notify_error(f"Propagation failed: {e}"))
        worker.finished.connect(self._on_click_worker_finished)
        self._click_worker = worker
        self._click_status.value = "Propagating…"
        worker.start()

    def _on_click_worker_finished(self) -> None:
        self._click_worker = None
        if self._click_pending and not self._retired:
            self._click_pending = False
            self._propagate_clicks()

    def _write_corrections(self, base, labels, msg) -> None:
        layer, idx = self._target
        seg = self._find_layer(SEGMENTATION)
        if seg is None:
            self._click_status.value = "The 'segmentation' layer was deleted; press Segment to make it again."
            return
        labels = np.asarray(labels)
        plane = _slice(seg, idx)
        written = self._written_labels
        if plane.shape == labels.shape and written is not None and written.shape == labels.shape:
            # pixels the user changed since the last write (a stroke while a large image propagated in the
            # background) stay as painted, and stay new edits for the stroke that made them
            moved = (plane != written) & (plane >= 0) & (plane < self._session.n_classes)  # not a class: replaced
            out = np.where(moved, plane, labels).astype(plane.dtype, copy=False)
            written = np.where(moved, written, labels)
        else:
            out, written = labels, labels.copy()
        if idx:
            seg.data[idx] = out
        else:
            seg.data[...] = out
        seg.refresh()
        self._written_base = base.copy()
        self._written_labels = np.ascontiguousarray(written, dtype=written.dtype)
        self._store()["written"][self._target_key()] = self._written_labels
        self._click_status.value = breakable(msg)
        self._update_suggestions()

    def _update_suggestions(self) -> None:
        sugg = self._find_layer(SUGGESTIONS)
        session = self._session
        if not self._suggest.value or self._target is None or session is None or session.interaction is None or \
                session.result is None or not session.result.uncertainty.any():  # no map (0 samples): no ranking
            if sugg is not None:
                sugg.data = np.zeros((0, sugg.ndim))
            return
        layer, idx = self._target
        yx = session.interaction.suggest(16).astype(float)
        pts = np.concatenate([np.tile(np.asarray(idx, float), (len(yx), 1)), yx], 1) if idx else yx
        if sugg is None or sugg.ndim != pts.shape[1]:
            if sugg is not None:
                self._viewer.layers.remove(sugg)
            size = max(6.0, 1.2 * session.superpixel_size)
            sugg = self._viewer.add_points(pts, name=SUGGESTIONS, ndim=pts.shape[1], size=size, symbol="ring",
                                           face_color="yellow", border_width=0, opacity=0.9)
            sugg.metadata[LAYER_TAG] = SUGGESTIONS
            sugg.editable = False
            clicks = self._find_layer(CLICKS)
            if clicks is not None:  # keep the clicks layer on top and selected
                self._viewer.layers.selection.active = clicks
        else:
            sugg.data = pts
        _copy_geometry(sugg, layer)
        sugg.metadata["source"] = layer.name
        sugg.metadata["source_id"] = _source_id(layer)

    # -- learning and saving ------------------------------------------------------------------------------
    def learn(self) -> None:
        """Learn from the corrected segmentation of the slice being corrected, off the GUI thread."""
        from napari.qt.threading import thread_worker

        session = self._session
        if self._replaced():
            return
        if self.busy:
            self._say_busy()
            return
        if session is None or session.interaction is None or self._target is None:
            _notify_error("Nothing to learn yet: segment an image and correct it first.")
            return
        seg = self._find_layer(SEGMENTATION)
        if seg is None or seg.metadata.get("source_id") != _source_id(self._target[0]):
            _notify_error(f"Cannot learn: '{self._target[0].name}' has changed since it was segmented (or the "
                          "segmentation layer is gone). Press Segment, correct it, then Learn.")
            return
        try:  # the layers are the truth: take the latest clicks and paint before learning
            pts, labs, painted, _ = self._gather_inputs()
            session.interaction.set_clicks(pts, labs)
            if painted is not None:
                session.interaction.set_painted(painted)
        except Exception as e:
            _notify_error(f"Cannot learn: {e}")
            return
        self._cancel_requested = False
        self._choose_autosave(session)
        total = session.learn_settings.steps

        self._learn_step = 0

        def progress(step, _total):  # called in the worker thread: the bar reads it on a timer
            self._learn_step = step
            return not self._cancel_requested

        @thread_worker(ignore_errors=True)
        def work():
            return session.learn(progress=progress)

        worker = work()
        worker.returned.connect(self._on_learned)
        worker.errored.connect(self._on_learn_error)
        worker.finished.connect(self._on_finished)
        self._worker, self._learning = worker, True
        self._run_button.enabled = False
        self._cancel_button.enabled = True
        self._progress.visible = True
        self._progress.max = total
        self._progress.value = 0
        from qtpy.QtCore import QTimer

        self._progress_timer = QTimer()
        self._progress_timer.timeout.connect(lambda: setattr(self._progress, "value", self._learn_step))
        self._progress_timer.start(200)
        _, idx = self._target
        what = f"slice {tuple(int(i) for i in idx)} of this image (the slice segmented last)" if idx else "this image"
        self._set_status(f"Learning from {what} ({total} steps)… Corrections made meanwhile apply to the "
                         "segmentation but are not part of this task.")
        worker.start()

    def _choose_autosave(self, session) -> None:
        """Where learning saves the session after each learned task: the file a failed autosave left, else the file
        it was loaded from when that is one of the user's models (in the models folder), else a new file there,
        which the Model list then shows. (A file someone else wrote meanwhile is not overwritten: ``learn()`` then
        saves to a new file beside it, which ``_moved_note`` reports.)"""
        from napari.utils.notifications import show_warning

        from .checkpoint import CheckpointError, models_dir, unique_model_path

        if session.autosave is None and self._retry_autosave is not None:  # a failed autosave: the same file again
            session.autosave, self._retry_autosave = self._retry_autosave, None
        if session.autosave is not None:
            return
        folder = models_dir()
        source = Path(session.source) if session.source else None
        if source is not None and source.is_file() and source.parent.resolve() == folder.resolve():
            session.autosave = source
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            session.autosave = unique_model_path(folder, Path(session.model_name).stem or "model")
        except (OSError, CheckpointError) as e:
            show_warning(f"Learned tasks are not saved automatically: the models folder {folder} cannot be used "
                         f"({getattr(e, 'strerror', None) or e}). Save the model yourself (Save model).")

    @staticmethod
    def _moved_note(session) -> str:
        """What to tell the user when ``learn()`` saved to a new file because another window or program had written
        the old one ('' when it did not)."""
        moved, session.autosave_moved = session.autosave_moved, None
        if moved is None:
            return ""
        old, new = moved
        return (f" {Path(old).name} was written by another window or program (since this model was loaded or saved "
                f"here), so it was not overwritten: the model is saved as {Path(new).name} instead.")

    def _on_learned(self, record, unsaved: str | None = None) -> None:
        """A learned task: list it. ``unsaved``: why its autosave failed (the task is kept, not saved). A widget
        closed meanwhile still keeps its Python state right (a reopened dock takes it over) and says what
        happened while its window is open."""
        from napari.utils.notifications import show_info, show_warning

        session = self._session
        moved = self._moved_note(session)
        if unsaved is not None:
            # so that switching models asks for Save model first, as for any unsaved task; the next learn retries it
            self._retry_autosave, session.autosave = session.autosave, None
        elif session.autosave is not None:  # learn() saved it (always in the models folder): list it, choose it
            self._on_saved(session.autosave)
        saved = f" {unsaved}" if unsaved is not None else \
            f" Saved as {Path(session.autosave).name} in the models folder." if session.autosave is not None else \
            " It is not saved in any file yet: press Save model."
        if self._retired:
            if not self._destroyed:
                (show_warning if unsaved is not None or moved or session.autosave is None else show_info)(
                    f"Learned task {record.task} (after the widget was closed).{saved}{moved}")
            return
        free = session.free_kernels[0]
        late = "Learning had finished when Cancel was pressed, so the task is kept. " if self._cancel_requested else ""
        msg = (f"{late}Learned task {record.task}: Dice on this image "
               f"{record.dice_before:.3f} -> {record.dice_after:.3f} "
               f"({record.seconds:.0f} s, {record.kernels_new} new kernels, {free} left free for later tasks)."
               f"{saved}{moved}")
        (show_warning if unsaved is not None or moved else show_info)(msg)
        self._set_status(msg)
        self._show_tasks()
        if self._chosen_key() != self._session_key:  # another model was chosen meanwhile: its hint stays
            self._on_model_changed(self._model_combo.value)

    def _on_learn_error(self, error: Exception) -> None:
        from napari.utils.notifications import show_warning

        from .session import AutosaveError, LearnCancelled, LearnRejected

        if isinstance(error, AutosaveError):  # learned and kept, but not saved: say so, and keep it listed
            self._on_learned(error.record, unsaved=f"It is NOT saved: {error.__cause__ or error} Press Save model "
                                                   "to save it in a folder you can write.")
            return
        moved = self._moved_note(self._session) if self._session is not None else ""
        if moved:  # the rollback saved the remembered image, to a new file
            self._on_saved(self._session.autosave)
        if self._retired:
            if moved and not self._destroyed:
                show_warning(moved.strip())
            return
        if isinstance(error, (LearnCancelled, LearnRejected)):
            show_warning(str(error) + moved)
            self._set_status(str(error) + moved)
        else:
            _notify_error(f"Learning failed, the model is unchanged: {error}")
            self._set_status(f"Learning failed: {error}")

    def _task_choices(self, _widget=None) -> list[tuple[str, int]]:
        """'auto', then the tasks of the model in use (task 0: the pretrained one)."""
        session = getattr(self, "_session", None)
        in_use = session is not None and self._session_key == self._chosen_key()
        n = session.net.n_tasks if in_use else 1
        return [("auto (task-aware)", AUTO_TASK), ("0 (pretrained)", 0)] + [(str(t), t) for t in range(1, n)]

    def _show_tasks(self) -> None:
        """The task list, its plot, and the mask usage of the task that segmented the current image."""
        from .continual import mask_usage

        session = self._session
        self._task_combo.reset_choices()  # a new task, or another model
        self._task_plot.set_tasks(session.tasks if session is not None else [])
        self._mask_plot.set_usage(mask_usage(session.net, session.task) if session is not None else [],
                                  session.task if session is not None else 0)
        if session is None or not session.tasks:
            self._tasks_label.value = "No task learned yet."
            return
        lines = [f"task {r.task}: Dice {r.dice_before:.2f} -> {r.dice_after:.2f}" for r in session.tasks[-4:]]
        if len(session.tasks) > 4:
            lines.insert(0, f"({len(session.tasks)} tasks; the last 4:)")
        free, reserve = session.free_kernels
        lines.append(f"free kernels for new tasks: {free} of {reserve}" + ("" if free else " (all in use)"))
        self._tasks_label.value = "\n".join(lines)

    def _on_saved(self, path) -> None:
        """The session is in ``path`` now: a file of the models folder is listed and chosen in the Model list,
        keeping this session for it (choosing it does not reload it), and is the one learning keeps up to date.
        A user who chose another model meanwhile (while learning) keeps that choice; a closed widget only keeps
        its state right (for a reopened dock to take over)."""
        from .checkpoint import models_dir

        session = self._session
        chosen = self._chosen_key() == self._session_key
        self._saved_tasks, self._retry_autosave = len(session.tasks), None
        if Path(path).parent.resolve() == models_dir().resolve():
            session.autosave = Path(path)
            self._session_key = (str(Path(path)), None)
        if self._retired:
            return
        self._reset_models()
        if chosen and self._session_key[0] != self._model_combo.value:
            with self._model_combo.changed.blocked():
                self._model_combo.value = self._session_key[0]
            self._checkpoint.visible = False

    def save_model(self, path=None) -> None:
        """Save the session's model (with its learned tasks) to ``path`` (default: the 'Save model to' box, or
        when that is empty the file learning keeps up to date, else a new file in the models folder, which the
        Model list shows)."""
        from .checkpoint import CheckpointError, models_dir, unique_model_path

        session = self._session
        if self._replaced():
            return
        if session is None:
            _notify_error("There is no model to save yet: segment an image first.")
            return
        path = str(path or self._save_path.line_edit.value or "").strip()
        stem = Path(session.model_name).stem or "model"
        auto = session.autosave if session.autosave is not None else self._retry_autosave
        skipped = None
        if (not path or path == ".") and auto is not None and Path(auto).parent.resolve() == models_dir().resolve():
            state = session.file_state(auto)
            if state == "changed" or (state == "unknown" and Path(auto).exists()):
                skipped = Path(auto)  # someone else's file now: not overwritten, a new file instead
            else:
                path = str(auto)  # the file learning keeps up to date (or failed to, the last time)
        try:
            if not path or path == ".":
                models_dir().mkdir(parents=True, exist_ok=True)
                path = str(unique_model_path(models_dir(), stem))
            elif Path(path).is_dir():  # a folder: a new file in it
                path = str(unique_model_path(Path(path), stem))
            elif not Path(path).suffix:  # the Model file chooser lists *.pt
                path += ".pt"
        except (OSError, CheckpointError) as e:
            _notify_error(f"Could not use the folder for the model: {getattr(e, 'strerror', None) or e}. Choose a "
                          "file in 'Save model to'.")
            return
        try:
            session.save(path)
        except Exception as e:
            _notify_error(f"Could not save the model: {e}")
            self._set_status(f"Not saved: {e}")
            return
        from napari.utils.notifications import show_info

        self._on_saved(path)
        why = f" ({skipped.name} was written by another window or program, so it was not overwritten.)" \
            if skipped is not None else ""
        show_info(f"Saved the model with {len(session.tasks)} learned task(s) to {path}.{why}")
        self._set_status(f"Saved to {path}.")
