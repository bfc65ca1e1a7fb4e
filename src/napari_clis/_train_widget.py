"""The "Train a model (CLIS)" dock: train or fine-tune a model on the image and labels layers open in the viewer
(:func:`napari_clis.training.train_arrays` in a worker thread, with a progress bar and Cancel). The model file goes
to the models folder, where the Model list of Segment (CLIS) finds it. A thin view: the training is the core's.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, Select, SpinBox

from ._napari_compat import in_worker, unwrap
from ._widget import _common, _controls, _docking

# the Segment dock's names and helpers (its modules imported whole: the compat test guards magicgui's _widget)
CUSTOM_MODEL, LAYER_TAG, SUPERPIXELS = _common.CUSTOM_MODEL, _common.LAYER_TAG, _common.SUPERPIXELS
breakable, notify_error, notify_warning = _common.breakable, _common.notify_error, _common.notify_warning
pixels, spatial_shape = _common.pixels, _common.spatial_shape
model_choices = _controls.model_choices

__all__ = ["TrainWidget"]

logger = logging.getLogger("napari_clis._train_widget")
READY = "Tick the labels layers to learn from (each with the image it labels), then press Train."
NO_PAIRS = ("No labels layer to learn from: open an image, add a labels layer (the layer list's 'New labels layer' "
            "button) and paint the objects on it, or segment and correct it with Segment (CLIS). A mask opened from "
            "a file is an image layer: right-click it in the layer list and choose Convert to Labels.")
FINE_TUNE_STEPS = 500  # training.TRAIN_STEPS["fine-tune"] (not imported: opening the dock needs no torch)
FORBIDDEN = re.compile(r'[\\/:*?"<>|]')


def layer_pairs(viewer) -> dict[str, tuple]:
    """The labels layers one can learn from, by name: ``(labels, image, made_by_the_user)``. Each is paired with
    the image Segment (CLIS) made it from (its ``source_id``), else the image of its size (the first, or the one
    whose name its name starts with), else an image its name starts with or the only image open (then the sizes
    differ, which the training names). Superpixels and layers without any image are left out."""
    from napari.layers import Image, Labels

    images = [lyr for lyr in viewer.layers if isinstance(lyr, Image) and lyr.metadata.get(LAYER_TAG) is None]
    out = {}
    for labels in viewer.layers:
        if not isinstance(labels, Labels) or labels.metadata.get(LAYER_TAG) == SUPERPIXELS:
            continue
        source = str(labels.metadata.get("source_id", ""))
        sized = [im for im in images if spatial_shape(im) == tuple(pixels(labels).shape)]
        named = [im for im in images if labels.name.startswith(im.name)]
        image = next((im for im in images if source.startswith(f"{im.unique_id}:")), None) or next(
            (im for im in sized if im in named), None) or next(iter(sized + named), None) or (
            images[0] if len(images) == 1 else None)
        if image is not None:
            out[labels.name] = (labels, image, labels.metadata.get(LAYER_TAG) is None)
    return out


class TrainWidget(Container):
    """Train on labelled layers: the pairs ticked in **Labels to learn from**, starting from the model chosen in
    **Start from**, for **Steps** steps, into **Model name** in the models folder (empty: a name of its own).
    Driven from a script: :meth:`train`, :meth:`cancel`, :attr:`busy`, :attr:`last_model`."""

    batch = 8  # images per training step; a test may lower it (and crop, None: the core's choice)
    crop: int | None = None

    def __init__(self, napari_viewer):
        super().__init__(scrollable=True)
        self.viewer = unwrap(napari_viewer)
        self.pairs = Select(label="Labels to learn from", choices=[], allow_multiple=True,
                            tooltip="Each labels layer with the image it labels (labels → image). Every pixel "
                                    "labelled above 0 is an object; stacks are learned from their labelled slices.")
        self.start = ComboBox(label="Start from", choices=model_choices, value="nuclei",
                              tooltip="The model to fine-tune: a shipped one, one you saved, or a model file.")
        self.model_file = FileEdit(label="Model file", mode="r", filter="*.pt", visible=False)
        self.steps = SpinBox(label="Steps", min=1, max=100_000, value=FINE_TUNE_STEPS,
                             tooltip="Training steps: a few hundred fine-tune a model (minutes on a GPU, longer "
                                     "on a CPU).")
        self.name = LineEdit(label="Model name", value="",
                             tooltip="The new model's file name in the models folder; empty: <start>-<image>.")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value=READY)
        self.extend([self.pairs, self.start, self.model_file, self.steps, self.name, self.train_button,
                     self.cancel_button, self.progress, self.status])
        self.status.native.setWordWrap(True)
        self.start.changed.connect(lambda v: setattr(self.model_file, "visible", v == CUSTOM_MODEL))
        self.train_button.changed.connect(lambda: self.train())
        self.cancel_button.changed.connect(lambda: self.cancel())
        self.last_model = None  # the model file the last training wrote
        self._worker, self._cancel, self._step, self._timer = None, False, (0, 0), None
        self._offered: set[str] = set()  # labels layers listed before (a user's untick stays)
        self._alive = [True]
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            emitter.connect(self.reset_choices)
        self.native.destroyed.connect(lambda *_, a=self._alive: a.clear())
        self._watcher = _docking.watch(self, lambda: None)  # as wide as its controls once shown
        self.reset_choices()

    @property
    def native(self):
        """The scroll area around the controls: what napari docks (as the Segment dock's)."""
        return self.root_native_widget

    def fit_width(self) -> None:
        """As wide as the controls need beside the vertical scroll bar: beside other docks, none is cut off."""
        _docking.fit_width(self.native)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def reset_choices(self, *_args) -> None:
        """List the labels layers again (new ones that the user made are ticked) and the models to start from."""
        if not self._alive:
            return
        pairs = layer_pairs(self.viewer)
        chosen = [n for n in self.pairs.value if n in pairs]
        chosen += [n for n, (_, _, mine) in pairs.items() if mine and n not in self._offered]
        self._offered |= set(pairs)
        with self.pairs.changed.blocked():
            self.pairs.choices = [(f"{n} → {im.name}", n) for n, (_, im, _) in pairs.items()]
            self.pairs.value = chosen
        before = self.start.value
        self.start.reset_choices()
        if before in [v for _, v in model_choices()]:
            self.start.value = before
        if not self.busy:
            self.status.value = READY if pairs else NO_PAIRS

    # -- training --------------------------------------------------------------------------------------------------
    def train(self) -> None:
        """Train on the ticked pairs in a worker thread; the result (or the problem) is a notification."""
        from napari.qt.threading import create_worker
        from qtpy.QtCore import QTimer

        if self.busy:
            return notify_warning("A training is running: wait for it, or press Cancel first.")
        try:
            job = self._job()
        except ValueError as e:
            return notify_error(str(e))
        self._cancel, self._step = False, (0, job["steps"])
        worker = create_worker(in_worker(_run), job, self._progressed, lambda: self._cancel, _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(self._trained)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self._worker = worker
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self.progress.max, self.progress.value, self.progress.visible = job["steps"], 0, True
        self._say(f"Training on {len(job['pairs'])} labels layer{'s' * (len(job['pairs']) > 1)}…")
        self._timer = QTimer()
        self._timer.timeout.connect(self._show_progress)
        self._timer.start(200)
        worker.start()
        return None

    def cancel(self) -> None:
        """Stop the training after its current step; no model is written."""
        if self.busy:
            self._cancel = True
            self._say("Stopping after the current step…")

    def _job(self) -> dict:
        """What to train, read from the controls (the labels copied: painting meanwhile changes nothing); a
        ``ValueError`` with the message for the user where something is missing."""
        from .model_files import models_dir

        pairs = layer_pairs(self.viewer)
        chosen = [pairs[n] for n in self.pairs.value if n in pairs]
        if not chosen:
            raise ValueError("Tick at least one labels layer to learn from." if pairs else NO_PAIRS)
        init = self.start.value
        if init == CUSTOM_MODEL:
            init = str(self.model_file.value)
            if not self.model_file.value or not self.model_file.value.is_file():
                raise ValueError("Choose the model file to start from ('Model file'), or another model.")
        job = {"init": init, "steps": int(self.steps.value), "pairs": [], "output": None,
               "batch": self.batch, "crop": self.crop}
        for labels, image, _ in chosen:
            data = np.array(pixels(labels))
            if not data.any():
                raise ValueError(f"'{labels.name}' holds no labelled pixel: paint the objects on it first, or "
                                 "untick it.")
            job["pairs"].append((f"{image.name}/{labels.name}", pixels(image), data, spatial_shape(image)))
        name = self.name.value.strip().removesuffix(".pt")
        if name:
            if FORBIDDEN.search(name) or name.startswith("."):
                raise ValueError(f"A model name cannot start with '.' or hold any of \\ / : * ? \" < > |: {name!r}.")
            folder = models_dir()
            if (folder / f"{name}.pt").exists():
                raise ValueError(f"A model named {name} is in the models folder already: choose another name (or "
                                 "leave it empty for a new one).")
            folder.mkdir(parents=True, exist_ok=True)  # the core writes there; it needs the folder
            job["output"] = folder / f"{name}.pt"
        return job

    def _progressed(self, step: int, total: int, loss: float) -> None:  # in the worker thread: no Qt here
        self._step = (step, total)

    def _show_progress(self) -> None:
        if self._alive and self.busy:
            self.progress.value = self._step[0]

    def _trained(self, path) -> None:
        from napari.utils.notifications import show_info

        self.last_model = path
        refreshed = 0
        for widget in list(self.viewer.window.dock_widgets.values()):
            if callable(getattr(widget, "reset_models", None)):  # an open Segment (CLIS): list the new model
                widget.reset_models()
                refreshed += 1
        where = "Segment (CLIS)'s Model list" + (" shows it" if refreshed else " will show it")
        message = (f"Trained the model '{path.stem}' and saved it as {path.name} in the models folder "
                   f"({path.parent}). {where} as '{path.stem} (saved)'.")
        self._say(message)
        show_info(message)

    def _failed(self, error: Exception) -> None:
        from napari.utils.notifications import show_info

        from .model_files import CheckpointError
        from .preprocessing import ImageError
        from .training import TrainingCancelled, TrainingDiverged

        if isinstance(error, TrainingCancelled):
            self._say(str(error))
            return show_info(str(error))
        if isinstance(error, (ValueError, ImageError, CheckpointError, TrainingDiverged, OSError)):
            message = f"Could not train: {error}"
        else:  # not foreseen: said in plain words, the traceback goes to the log only
            logger.warning("training failed", exc_info=error)
            message = f"The training failed ({type(error).__name__}: {error}). No model was written."
        self._say(message)
        return notify_error(message)

    def _finished(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._worker, self._timer = None, None
        if self._alive:
            self.train_button.enabled, self.cancel_button.enabled, self.progress.visible = True, False, False

    def _say(self, text: str) -> None:
        if self._alive:
            self.status.value = breakable(text)


def _run(job: dict, progress, cancel):
    """The worker: each pair's image (a lazy one is read here) and labels, as 2D planes (a stack's labelled
    slices), trained on with :func:`~napari_clis.training.train_arrays`; nothing is left behind but the model."""
    from .training import train_arrays

    images, masks, names = [], [], []
    for name, image, labels, shape in job["pairs"]:
        if labels.ndim <= 2 or tuple(labels.shape) != tuple(shape):  # a mismatch: the core names it
            planes = [((), name)]
        else:  # a stack: its labelled slices
            planes = [(i, f"{name} slice {','.join(map(str, i))}") for i in np.ndindex(labels.shape[:-2])
                      if labels[i].any()]
        for idx, plane_name in planes:
            images.append(np.asarray(image[idx] if idx else image))
            masks.append(labels[idx] if idx else labels)
            names.append(plane_name)
    return train_arrays(images, masks, names=names, init=job["init"], output=job["output"], steps=job["steps"],
                        batch=job["batch"], crop=job["crop"], resume=False, keep_progress=False, progress=progress,
                        cancel=cancel)
