"""``ClisSession``: the one object that holds the model and the current image's state.

Widgets and the command line drive this object; nothing else keeps model state. No Qt, no napari.

Examples
--------
>>> from napari_clis import ClisSession
>>> s = ClisSession.from_pretrained("nuclei", device="cpu")
>>> import numpy as np
>>> r = s.segment(np.zeros((64, 64), np.uint8))
>>> r.labels.shape, r.probabilities.shape
((64, 64), (2, 64, 64))
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    CheckpointError,
    file_stamp,
    load_model,
    save_model,
    shipped_model_path,
    shipped_models,
    unique_model_path,
)
from .continual import (
    TRANSFER_AGREEMENT,
    LearnCancelled,
    LearnSettings,
    TaskRecord,
    choose_task,
    fingerprint,
    kernel_usage,
    learn_task,
    learn_verdict,
)
from .familiarity import Familiarity, familiarity, first_layer_stats, reference_summary
from .instances import foreground_probability, measure_objects, segmentation_objects
from .interactive import (
    DEFAULT_CALIBRATION,
    DEFAULT_LOCALITY,
    DEFAULT_SMOOTHNESS,
    Interaction,
    InteractionError,
    build_region_graph,
)
from .network import ClisNet
from .objects import ObjectEditor
from .preprocessing import ImageError, as_2d_image, check_intensity_range, normalize_image, range_hides_image
from .superpixels import DEFAULT_SUPERPIXEL_SIZE, compute_superpixels
from .uncertainty import (
    DEFAULT_MARGIN,
    DEFAULT_TILE,
    SegmentSettings,
    fit_grid,
    resize_long_side,
    scaled_long_side,
    segment_normalized,
    weigh,
)

__all__ = ["ClisSession", "SegmentationResult", "resolve_device", "ImageError", "InteractionError", "LearnRejected",
           "LearnCancelled", "AutosaveError"]


FINGERPRINT_SIDE = 512  # px: the longest side of the image the task-aware module fingerprints
AGREEMENT_SIDE = 256  # px: the central square its agreement check sees at full size (models without a working side)
# px: the median nucleus diameter (diameter of the circle of the same area) of the dsb2018 pretraining masks, at the
# nuclei model's working resolution (the images' own): 14019 nuclei of 338 images. What object_diameter rescales
# to, for a nuclei model whose file does not say (metadata "object_diameter").
NUCLEI_OBJECT_DIAMETER = 19.9
MAX_OBJECT_ENLARGEMENT = 8.0  # object_diameter may enlarge the image at most this many times for the network
_INSTANCES_LOCK = threading.Lock()


class LearnRejected(RuntimeError):
    """A learn step would have made the model worse on the current image; it was rolled back."""


class AutosaveError(CheckpointError):
    """A task was learned and is kept in the session, but saving it to :attr:`ClisSession.autosave` failed.

    ``record`` is the learned task's :class:`~napari_clis.continual.TaskRecord`; save the session elsewhere with
    :meth:`ClisSession.save` to keep it."""

    def __init__(self, message: str, record):
        super().__init__(message)
        self.record = record


@dataclass
class SegmentationResult:
    """What :meth:`ClisSession.segment` returns for one 2D image of shape (H, W).

    Attributes
    ----------
    labels : (H, W) int32
        Class id per pixel, 0 = background: the argmax of ``probabilities``, or the model's calibrated decision
        (:attr:`ClisSession.class_log_prior`) and one-object rule (:attr:`ClisSession.single_object`) where it
        declares them (the lesion model).
    probabilities : (K, H, W) float32
        Mean predictive class probabilities; they sum to 1 over K.
    uncertainty : (H, W) float32
        Total predictive variance, ``epistemic + aleatoric``, in ``[0, 1 - 1/K]``: the map shown to the user.
    epistemic, aleatoric : (H, W) float32
        Its model (MC) and data (logit-noise) parts.
    entropy : (H, W) float32
        Softmax entropy of one deterministic pass (nats), kept as the plain baseline uncertainty.
    superpixels : (H, W) int32
        SLIC superpixel ids starting at 1.
    instances : (H, W) uint32
        The objects of ``labels``, 0 = background, numbered 1..N: touching nuclei split by a watershed on the
        network's output (:func:`~napari_clis.instances.instances_from_probabilities`); for a model with one
        object per class (:attr:`ClisSession.single_object`, the lesion model) each class is one object.
        Lazy: made the first time it is read (the watershed costs about as much as the rest of segment() at
        512 px), then kept; ``instances_ready`` says whether it was made.
    distance : (H, W) float32 or None
        The instance head's map (each pixel's distance to its object's border, 1 at the centre) for a model
        trained with one; None otherwise.
    familiarity : Familiarity or None
        Whether the image is like what the model knows (:meth:`ClisSession.familiarity`): ``unfamiliar`` True
        says the model may be out of its depth, with what to do in ``message``.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    epistemic: np.ndarray
    aleatoric: np.ndarray
    entropy: np.ndarray
    superpixels: np.ndarray
    instances: np.ndarray | None = dataclasses.field(default=None, repr=False)  # lazy (a property, below)
    familiarity: Familiarity | None = None
    distance: np.ndarray | None = None
    #: how ``instances`` is made when first asked for: ``make(labels, probabilities, distance)``; None: the
    #: watershed of :func:`~napari_clis.instances.segmentation_objects` (many objects per class)
    make_instances: object = dataclasses.field(default=None, repr=False, compare=False)


def _result_instances(self) -> np.ndarray:
    """(H, W) uint32, made the first time it is asked for (a watershed: about 0.2 s at 512 px) and then kept."""
    value = self.__dict__.get("_instances")
    if value is None:
        with _INSTANCES_LOCK:  # a widget's worker and the main thread may ask at once: make them once
            value = self.__dict__.get("_instances")
            if value is None:
                make = self.make_instances
                if make is None:
                    value = segmentation_objects(self.labels, foreground_probability(self.probabilities),
                                                 distance=self.distance)
                else:
                    value = make(self.labels, self.probabilities, self.distance)
                self.__dict__["_instances"] = value
    return value


def _set_result_instances(self, value) -> None:
    # dataclass __init__ passes None (not given: made lazily) or the objects' map
    self.__dict__["_instances"] = None if value is None or isinstance(value, property) else np.asarray(value)


SegmentationResult.instances = property(_result_instances, _set_result_instances,
                                        doc=SegmentationResult.__doc__ and "The objects of ``labels`` (lazy).")
SegmentationResult.instances_ready = property(lambda self: self.__dict__.get("_instances") is not None,
                                              doc="Whether ``instances`` was made already (asking costs nothing).")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks the CUDA GPU when there is one, else the CPU; ``"cuda"`` without a GPU is an error, and
    so is ``"mps"`` (Apple's GPU) where PyTorch cannot use it."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                "CUDA was asked for, but this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False). "
                "Use device='auto' or 'cpu', or install a CUDA build of PyTorch on a machine with an NVIDIA GPU."
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} was asked for, but there are only {torch.cuda.device_count()} CUDA device(s).")
        return dev
    if name == "mps":  # Apple's GPU: offered where this PyTorch has it, never chosen by "auto" (checked less)
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("Apple's GPU (mps) was asked for, but this PyTorch cannot use it here "
                             "(torch.backends.mps.is_available() is False). Use device='auto' or 'cpu'.")
        return torch.device("mps")
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}")


class ClisSession:
    """A CLIS model and the state of the image being worked on.

    Create one with :meth:`from_pretrained` (a model shipped in the package) or :meth:`from_checkpoint`
    (a model file of your own). Widgets and scripts share the same object.

    Parameters
    ----------
    net : ClisNet
        The network.
    metadata : dict
        The model file's metadata (name, class names, working resolution, training, tasks).
    device : str
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"`` or ``"cuda"``.
    n_samples : int
        Monte-Carlo samples ``T`` for the uncertainty (default 8).
    seed : int
        Seed of the Monte-Carlo sampling: the same image gives the same maps.
    superpixel_size : int
        Mean side of a SLIC superpixel in pixels.
    """

    def __init__(self, net: ClisNet, metadata: dict | None = None, *, device: str = "auto", n_samples: int = 8,
                 seed: int = 0, superpixel_size: int = DEFAULT_SUPERPIXEL_SIZE, source: str | None = None,
                 autosave: str | Path | None = None):
        for name, value, least in (("n_samples", n_samples, 0), ("superpixel_size", superpixel_size, 2)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.metadata = dict(metadata or {})
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.superpixel_size = int(superpixel_size)
        self.source = source
        self.task = 0
        # why ``task`` segmented the current image: the nearest image's task, whether the image is known, and the
        # agreement with the pretrained task that an unseen image's task must reach (continual.choose_task)
        self.task_choice: dict = {"nearest": 0, "known": False, "agreement": None}
        self.result: SegmentationResult | None = None
        self.interaction: Interaction | None = None
        self.tasks: list[TaskRecord] = [TaskRecord.from_dict(d) for d in self.metadata.get("learned_tasks", [])]
        self.annotations: dict[int, np.ndarray] = {}  # task -> painted map (int8, -1 = none) at learn time
        # (fingerprint, task) of images whose learn step was rolled back: they keep the task that segmented them
        self.remembered: list[tuple[list[float], int]] = [(list(f), int(t)) for f, t in
                                                          self.metadata.get("remembered_images", [])]
        self.autosave = Path(autosave) if autosave else None
        # (old, new) when an autosave went to a new file because the old one was written by someone else since
        # this session read or wrote it; for the caller to report (learn() sets it, the caller clears it)
        self.autosave_moved: tuple[Path, Path] | None = None
        self._stamps: dict[str, tuple] = {}  # file -> its file_stamp when this session last read or wrote it
        prior = self.class_log_prior
        self.learn_settings = LearnSettings(class_log_prior=None if prior is None else tuple(prior))
        self._fingerprint: np.ndarray | None = None
        self._normalized: np.ndarray | None = None
        self._scale: float | None = None  # the object scale the current image was segmented at (learn() keeps it)
        self._image: np.ndarray | None = None  # the current image as given, (H, W) or (H, W, 3): for measurements
        self._instances: tuple[np.ndarray, np.ndarray] | None = None  # (labels they were made from, instances)
        # the click settings, as the session was saved with them (else the defaults); checked by the properties
        saved = self.metadata.get("interaction_settings", {})
        self._settings = {}
        self.smoothness = saved.get("smoothness", DEFAULT_SMOOTHNESS)
        self.calibration = saved.get("calibration", DEFAULT_CALIBRATION)
        self.locality = saved.get("locality", DEFAULT_LOCALITY)

    def to(self, device: str | torch.device) -> ClisSession:
        """Move the model (with every learned task) to ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``); the
        current image, its clicks and the task history stay. Returns the session."""
        self.device = resolve_device(device)
        self.net = self.net.to(self.device)
        return self

    # -- click settings: checked here, passed to the current image's interaction and to every new one ----------
    def _set_click_setting(self, name: str, value) -> None:
        checked = Interaction.check_setting(name, value)  # raises InteractionError naming the setting
        if self.interaction is not None:
            setattr(self.interaction, name, checked)
        self._settings[name] = checked

    smoothness = property(lambda self: self._settings["smoothness"],
                          lambda self, v: self._set_click_setting("smoothness", v),
                          doc="MRF smoothness lambda (weight of the pairwise term per unit of border contrast).")
    calibration = property(lambda self: self._settings["calibration"],
                           lambda self, v: self._set_click_setting("calibration", v),
                           doc="Strength of the prior on the click calibration; None: no calibration.")
    locality = property(lambda self: self._settings["locality"],
                        lambda self, v: self._set_click_setting("locality", v),
                        doc="The calibration's reach, a fraction of the longer side; None: the whole image.")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str = "nuclei", *, device: str = "auto", **kwargs) -> ClisSession:
        """A session with a model shipped inside the package: ``"nuclei"`` or ``"skin-lesion"``."""
        if name not in shipped_models():
            raise ValueError(f"Unknown model {name!r}; the shipped models are {', '.join(shipped_models())}. "
                             "For a model file of your own use ClisSession.from_checkpoint(path).")
        resolve_device(device)  # fail on a bad device before reading anything
        net, metadata, _ = load_model(shipped_model_path(name))
        return cls(net, metadata, device=device, source=name, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", **kwargs) -> ClisSession:
        """A session with the model in ``path`` (a file written by napari-clis: a pretrained model, or a
        session saved by :meth:`save` with its learned tasks and their annotations)."""
        resolve_device(device)
        path = Path(path).expanduser()
        stamp = file_stamp(path)
        net, metadata, payload = load_model(path)
        s = cls(net, metadata, device=device, source=str(path), **kwargs)
        if stamp is not None and stamp == file_stamp(path):  # not rewritten while it was read
            s._stamps[_file_key(path)] = stamp
        s.annotations = {int(t): a.numpy() for t, a in payload.get("annotations", {}).items()}
        return s

    # -- properties -----------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(self.metadata.get("name", self.source or "model"))

    @property
    def class_names(self) -> list[str]:
        k = self.n_classes
        names = list(self.metadata.get("class_names", []))
        return names if len(names) == k else ["background"] + [f"class {i}" for i in range(1, k)]

    @property
    def n_classes(self) -> int:
        return self.net.config.n_classes

    @property
    def working_long_side(self) -> int | None:
        return self.metadata.get("working_long_side")

    @property
    def test_time_flips(self) -> bool:
        return bool(self.metadata.get("test_time_flips", False))

    @property
    def free_kernels(self) -> tuple[int, int]:
        """``(free, reserve)``: the kernels no task uses yet, which a new task can train, and the kernels the
        pretrained task leaves off (the reserve learning starts with). At 0 free a new task can only choose
        among kernels in use, and trains none of its own."""
        usage = kernel_usage(self.net)
        free = sum(int((used == 0).sum()) for used in usage.values())
        reserve = sum(int((conv.gates.hard(0) == 0).sum()) for conv in self.net.masked_convs().values())
        return free, reserve

    @property
    def single_object(self) -> bool:
        """Whether the model declares one object per class (the lesion model): its segmentations keep, per
        class, the largest object and what the user annotated (:func:`~napari_clis.interactive.keep_one_object`)."""
        return bool(self.metadata.get("single_object", False))

    def segment_settings(self, n_samples: int | None = None, *, scale: float | None = None) -> SegmentSettings:
        """How this session segments (:func:`~napari_clis.uncertainty.segment_normalized`): its samples and seed,
        and its model's working resolution, flips, decision prior and one-object rule; batch runs the same.
        ``scale``: the object scale (:meth:`object_scale`)."""
        prior = self.class_log_prior
        return SegmentSettings(n_samples=self.n_samples if n_samples is None else int(n_samples), seed=self.seed,
                               working_long_side=self.working_long_side, flips=self.test_time_flips,
                               class_log_prior=None if prior is None else tuple(prior),
                               single_object=self.single_object, scale=scale)

    @property
    def object_diameter(self) -> float | None:
        """The median object diameter (px) the model was trained at: its file's ``object_diameter``, else for a
        nuclei model that of the dsb2018 pretraining nuclei (:data:`NUCLEI_OBJECT_DIAMETER`); None where unknown."""
        value = self.metadata.get("object_diameter")
        if value is not None:
            return float(value)
        nuclei = self.metadata.get("name") == "nuclei" or self.class_names == ["background", "nucleus"]
        return NUCLEI_OBJECT_DIAMETER if nuclei else None

    @property
    def instance_method(self) -> str:
        """How :attr:`SegmentationResult.instances` are made: ``"auto"`` (the instance head where the model has
        one, else the watershed), ``"head"`` (the instance head; refused for a model without one) or
        ``"watershed"`` (on the probabilities, ignoring a head)."""
        return getattr(self, "_instance_method", "auto")

    @instance_method.setter
    def instance_method(self, value) -> None:
        if value not in ("auto", "head", "watershed"):
            raise ValueError(f"instance_method must be 'auto', 'head' or 'watershed', got {value!r}")
        if value == "head" and self.net.distance_head is None:
            raise ValueError(f"the model {self.model_name!r} has no instance head (its file was trained without one, "
                             "or written before the head existed); it keeps working, with instances from a "
                             "watershed on its probabilities: use instance_method 'auto' or 'watershed'.")
        self._instance_method = value

    def _instance_maker(self):
        """``make(labels, probabilities, distance)`` for :attr:`SegmentationResult.instances` (lazy)."""
        one, method = self.single_object, self.instance_method

        def make(labels, probabilities, distance):
            return segmentation_objects(labels, foreground_probability(probabilities), one_object=one,
                                        distance=None if method == "watershed" else distance)
        return make

    def object_scale(self, object_diameter, image_shape=None) -> float | None:
        """The factor an image is resized by for the network so that objects ``object_diameter`` px across reach
        it at the size it was trained on (:attr:`object_diameter` / ``object_diameter``); None for None (the
        image as it is). ``image_shape`` (H, W): the objects must fit in the image.

        Raises ValueError naming ``object_diameter`` for a value that is not a positive number, one larger than
        the image (:class:`ImageError`), one that would enlarge the image more than
        :data:`MAX_OBJECT_ENLARGEMENT` times, and for a model that does not say its objects' size or that sees
        whole images at a fixed size (the lesion model)."""
        if object_diameter is None:
            return None
        if isinstance(object_diameter, (bool, np.bool_)) or not isinstance(object_diameter, (int, float, np.integer,
                                                                                              np.floating)):
            raise ValueError(f"object_diameter must be a number of pixels (or None: the image as it is), got "
                             f"{object_diameter!r}.")
        value = float(object_diameter)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"object_diameter must be a positive number of pixels, the typical width of one object "
                             f"(or None: the image as it is), got {object_diameter!r}.")
        if self.working_long_side is not None:
            raise ValueError(f"object_diameter does not apply to the model {self.model_name!r}: it sees every image "
                             f"whole, at {self.working_long_side} px on its longer side, whatever the objects' size.")
        reference = self.object_diameter
        if reference is None:
            raise ValueError(f"object_diameter cannot be used with the model {self.model_name!r}: its file does not "
                             "say at what object size it was trained (metadata 'object_diameter').")
        if image_shape is not None and value > max(image_shape[:2]):
            raise ImageError(f"object_diameter {value:g} px is larger than the image "
                             f"({image_shape[0]}x{image_shape[1]} pixels); give the size of one object in pixels.")
        scale = reference / value
        if scale > MAX_OBJECT_ENLARGEMENT:
            raise ValueError(f"object_diameter {value:g} px is too small: the model learned objects about "
                             f"{reference:g} px across, and would need the image enlarged {scale:.0f} times (at most "
                             f"{MAX_OBJECT_ENLARGEMENT:g}). Objects under {reference / MAX_OBJECT_ENLARGEMENT:.1f} px "
                             "cannot be segmented well.")
        return scale

    @property
    def class_log_prior(self) -> list[float] | None:
        """The model's decision prior (``napari-clis calibrate``): labels are ``argmax_k log p_k + prior_k``, for
        the MRF's unaries and for learning too; the probabilities and the uncertainty stay the network's."""
        return self.metadata.get("decision", {}).get("class_log_prior")

    # -- segmentation -----------------------------------------------------------------------------
    def segment(self, image, *, n_samples: int | None = None, tile: int = DEFAULT_TILE, margin: int = DEFAULT_MARGIN,
                progress=None, task: int | None = None, intensity_range=None,
                object_diameter: float | None = None) -> SegmentationResult:
        """Segment one 2D image and estimate its uncertainty.

        Parameters
        ----------
        image : array-like
            ``(H, W)`` grey or ``(H, W, 3|4)`` colour (alpha is ignored), any integer or float dtype.
        n_samples : int, optional
            Monte-Carlo samples; defaults to the session's ``n_samples``.
        tile, margin : int
            Images larger than ``tile`` pixels on a side are processed in overlapping tiles.
        progress : callable, optional
            ``progress(done, total)`` after each tile.
        task : int, optional
            The task (kernel mask) to segment with; by default the task-aware module picks the learned task
            whose images look most like this one (task 0, the pretrained model, before anything is learned).
        intensity_range : None, "auto" or (low, high)
            The intensities shown black and white to the network. None or ``"auto"``: the automatic robust range
            (:func:`~napari_clis.preprocessing.intensity_range`); ``(low, high)`` in the image's own units, e.g.
            napari's contrast limits (what you see is what is segmented).
        object_diameter : float, optional
            The typical width of one object in pixels: the image is resized for the network so that its objects
            reach it at the size it was trained on (:attr:`object_diameter`; :meth:`object_scale`). All results
            come back at the image's own size; clicks are in its pixels and :meth:`learn` learns at this scale.
            None: the image as it is.

        Returns
        -------
        SegmentationResult
        """
        [(_, result)] = self._segment(image, False, n_samples=n_samples, tile=tile, margin=margin, progress=progress,
                                      task=task, intensity_range=intensity_range, object_diameter=object_diameter)
        return result

    def segment_steps(self, image, *, n_samples: int | None = None, tile: int = DEFAULT_TILE,
                      margin: int = DEFAULT_MARGIN, progress=None, task: int | None = None, intensity_range=None,
                      object_diameter: float | None = None):
        """:meth:`segment` step by step, for a viewer that shows the segmentation as soon as it exists.

        A generator of ``(kind, value)``: first ``("labels", labels)``, the (H, W) labels as :attr:`labels` will
        show them before any click (object clicks: the network's, before the superpixels; region clicks: the MRF's,
        once the superpixels are there), then ``("result", SegmentationResult)``. The session's state (result,
        task, clicks) changes only at that last step: a generator left before it leaves the session as it was.
        Same parameters as :meth:`segment`."""
        return self._segment(image, True, n_samples=n_samples, tile=tile, margin=margin, progress=progress, task=task,
                             intensity_range=intensity_range, object_diameter=object_diameter)

    def _segment(self, image, early: bool, *, n_samples, tile, margin, progress, task, intensity_range,
                 object_diameter):
        """The work of :meth:`segment` and :meth:`segment_steps`; ``early``: the labels yielded once they exist
        (in region mode that makes the MRF's labelling now, which segment() leaves until it is asked for)."""
        _refuse_labels_layer(image)
        if isinstance(image, (str, Path)):
            raise ImageError(f"segment() takes the image as an array, not a file name ({str(image)!r}): read it first "
                             "(skimage.io.imread, tifffile.imread), or segment files with segment_many() or "
                             "`napari-clis segment`.")
        if not isinstance(image, np.ndarray) and hasattr(image, "data"):  # ndarray.data fails for datetimes
            image = image.data
        if task is not None and (isinstance(task, bool) or not isinstance(task, (int, np.integer))):
            raise ValueError(f"task must be a whole number (a task index), got {task!r}")
        if task is not None and not 0 <= int(task) < self.net.n_tasks:
            raise ValueError(f"task {task} does not exist; this model has " + (
                f"tasks 0..{self.net.n_tasks - 1}" if self.net.n_tasks > 1 else "only task 0 (the pretrained one)"))
        value_range = check_intensity_range(intensity_range)
        scale = self.object_scale(object_diameter, None if object_diameter is None else as_2d_image(image).shape)
        normalized = normalize_image(image, value_range=value_range)
        hidden = None if value_range is None else range_hides_image(image, value_range)
        if hidden:
            warnings.warn(hidden, UserWarning, stacklevel=2)
        # the session's state (fingerprint, task, result) changes only once the new image is done: a failure on
        # the way leaves the current image, its task and its clicks as they were
        fp, chosen, choice = self._choose_task(normalized, task, scale=scale)
        out, labels = segment_normalized(self.net, normalized, self.segment_settings(n_samples, scale=scale),
                                         task=chosen, tile=tile, margin=margin, progress=progress)
        if early and self.object_clicks:  # the network's labels are what is shown before a click
            yield "labels", labels
        superpixels = compute_superpixels(normalized, size=self.superpixel_size)
        result = SegmentationResult(
            labels=labels,
            probabilities=out.probabilities,
            uncertainty=out.uncertainty,
            epistemic=out.epistemic,
            aleatoric=out.aleatoric,
            entropy=out.entropy,
            superpixels=superpixels,
            distance=out.distance,
            make_instances=self._instance_maker(),
        )
        graph = build_region_graph(superpixels, weigh(out.probabilities, self.class_log_prior), out.uncertainty,
                                   normalized)
        editor = None
        if self.object_clicks:
            diameter = self.object_diameter
            editor = ObjectEditor(result.probabilities, normalized, labels, lambda: result.instances,
                                  diameter=None if diameter is None else diameter / (scale or 1.0),
                                  uncertainty=result.uncertainty)
        interaction = Interaction(graph, smoothness=self.smoothness, calibration=self.calibration,
                                  locality=self.locality, single_object=self.single_object, objects=editor)
        if early and editor is None:  # region clicks: the MRF's labelling is what is shown (and kept)
            yield "labels", interaction.labels
        result.familiarity = self.familiarity(normalized, scale=scale, task=chosen)
        if fp is None:  # (not needed to choose the task: made now, after the labels)
            fp, _ = self._image_fingerprint(normalized, scale)
        self.result = result
        self._normalized = normalized
        self._scale = scale
        self._image = as_2d_image(image)
        self._instances = None
        self._fingerprint = fp
        self.task = chosen
        self.task_choice = choice
        self.interaction = interaction
        yield "result", result

    def familiarity(self, normalized: np.ndarray, *, scale: float | None = None,
                    task: int | None = None) -> Familiarity:
        """Whether a normalised image (3, H, W) is like what the model knows (:mod:`~napari_clis.familiarity`):
        its first layer's statistics against the pretraining images' (metadata ``familiarity``), seen as
        segment() sees it (object ``scale``). ``task``: the task that segments it; a learned one means the user
        taught the model images like this one."""
        size = "" if self.working_long_side is not None else (
            " If its objects are much larger or smaller than usual, give the object size.")
        advice = ("Correct it and press Learn: images like it will then start better." + size +
                  " For many such images, train a model on your own labelled images.")
        summary = self.metadata.get("familiarity")
        if not summary:
            return familiarity(None, None)
        x, _ = self._working(normalized, max_side=FINGERPRINT_SIDE, scale=scale)
        return familiarity(first_layer_stats(self.net, x[None]), summary, bool(task), advice)

    def record_familiarity(self, images, source: str = "") -> dict:
        """Record the images the model was trained on (an iterable of arrays, e.g. its pretraining split) in its
        metadata field ``familiarity`` (:func:`~napari_clis.familiarity.reference_summary`): segment() then says
        which images are unlike them. Saved with the model (:meth:`save`). Returns the field."""
        stats = []
        for image in images:
            x, _ = self._working(normalize_image(image), max_side=FINGERPRINT_SIDE)
            stats.append(first_layer_stats(self.net, x[None]))
        self.metadata["familiarity"] = reference_summary(stats, source=source)
        return self.metadata["familiarity"]

    def segment_many(self, paths, output=None, *, overwrite: bool = False, scheduler: str | None = None,
                     workers: int = 1, tile: int | None = None, superpixels: bool = False, progress=None,
                     intensity_range=None, object_diameter: float | None = None):
        """Segment image files and folders into labels and uncertainty TIFFs, here or on a Dask cluster.

        A resumable batch run: outputs complete from an earlier run of the same settings are skipped, others are
        never replaced without ``overwrite``. Stacks go slice by slice; planes over ``tile`` px on a side go in
        tiles. Identical results in one process and on a cluster. The session's current image and clicks are
        left as they are. See :func:`napari_clis.batch.segment_many` for the parameters and ``docs/batch.md``
        for the command line.

        Returns
        -------
        list of napari_clis.batch.FileResult
            One per input file, in order: ``status`` ("segmented", "skipped", "failed"), ``outputs``,
            ``error``; with ``output=None`` nothing is written and each holds ``labels`` and ``uncertainty``.
        """
        from .batch import segment_many

        return segment_many(self, paths, output, overwrite=overwrite, scheduler=scheduler, workers=workers,
                            tile=tile, superpixels=superpixels, progress=progress, intensity_range=intensity_range,
                            object_diameter=object_diameter)

    # -- interaction -----------------------------------------------------------------------------------
    def _require_interaction(self) -> Interaction:
        if self.interaction is None:
            raise InteractionError("There is no segmentation to correct yet: call segment(image) first.")
        return self.interaction

    def click(self, y, x, label: int, action: str = "auto") -> int:
        """A click at pixel ``(y, x)`` with class ``label`` (0 = background); returns its index (for
        :meth:`remove_click`).

        With object clicks (:attr:`click_mode` ``"object"``, nuclei models), the click edits the object it touches
        and nothing farther than about one object diameter from it (:mod:`napari_clis.objects`):

        * ``action="auto"``, a foreground class on background: adds the whole object there (its extent from the
          network's probability and the image's edges); on an object of another class: gives it that class.
        * ``action="auto"``, background (0) on an object: removes the object (a click in its core), or trims the
          part of it on the click's side of the image edge (a click on an overspill).
        * ``action="split"``: splits the object under the click in two (two nuclei merged into one).
        * ``action="merge"``: joins the object under (or nearest) the click with the other object nearest it
          (one nucleus cut in two): click on the border between the two pieces.

        With region clicks (``"region"``: one-object models such as the lesion model), the region under the click
        (its SLIC superpixel, or the part the network's segmentation leaves the click on) takes the class and the
        MRF propagates; only ``"auto"`` is allowed.

        A click that cannot apply (a split on background or on a small object, a merge that reaches only one
        object) raises :class:`InteractionError` and is not added: the clicks stay as they were.
        """
        return self._require_interaction().click(y, x, label, action)

    def set_clicks(self, points, labels, actions=None) -> None:
        """Replace all clicks at once: ``points`` (N, 2) as (y, x), ``labels`` (N,), ``actions`` (N,) of
        ``"auto"``, ``"split"``, ``"merge"`` (default all ``"auto"``).

        The segmentation is a deterministic replay of the ordered clicks (and of the strokes painted between them,
        :meth:`set_painted`): a widget passes its whole Points layer each time, and undo is the same list without
        the undone click. A click that is new in the list and cannot apply raises :class:`InteractionError` naming
        it, and the clicks stay as they were; adding or removing the last click costs one click's work."""
        self._require_interaction().set_clicks(points, labels, actions)

    @property
    def object_clicks(self) -> bool:
        """Whether this model's clicks act on whole objects (a model with many objects per class whose objects'
        size is known, such as the nuclei model; metadata ``"click_mode"`` may say ``"object"`` or ``"region"``).
        Models with one object per class (:attr:`single_object`, the lesion model) and semantic models keep
        region clicks."""
        mode = self.metadata.get("click_mode")
        if mode in ("object", "region"):
            return mode == "object"
        return not self.single_object and self.object_diameter is not None

    @property
    def click_mode(self) -> str:
        """How the current image's clicks act: ``"object"`` or ``"region"`` (:attr:`Interaction.mode`); settable
        for the current image (``"object"`` only where :attr:`object_clicks`)."""
        return self._require_interaction().mode

    @click_mode.setter
    def click_mode(self, value) -> None:
        self._require_interaction().mode = value

    @property
    def click_notes(self) -> dict[int, str]:
        """Click index -> why that click changes nothing (object clicks; e.g. a background click on background)."""
        return self._require_interaction().notes

    def remove_click(self, index: int) -> None:
        self._require_interaction().remove_click(index)

    def clear_clicks(self) -> None:
        self._require_interaction().clear_clicks()

    def annotate(self, mask, label: int) -> None:
        """A brush stroke (a boolean (H, W) mask) as an annotation, after the clicks made so far: its pixels take
        class ``label`` and nothing else changes. With object clicks, later clicks act on what it painted (a
        background click removes a painted object; the last edit of a pixel wins)."""
        self._require_interaction().annotate(mask, label)

    def set_painted(self, painted, *, after_clicks=None) -> None:
        """Replace every painted annotation of the current image: ``painted`` (H, W) int, a class per pixel, -1
        where unpainted; ``after_clicks`` how many clicks had been made when each pixel was painted ((H, W) int,
        or one int; default: after all the current clicks). With object clicks the clicks and strokes are replayed
        in that order (:meth:`Interaction.set_painted <napari_clis.interactive.Interaction.set_painted>`)."""
        self._require_interaction().set_painted(painted, after_clicks=after_clicks)

    def clear_annotations(self) -> None:
        """Drop every painted annotation of the current image (the clicks stay); the segmentation follows."""
        self._require_interaction().clear_annotations()

    @property
    def clicks(self) -> list[tuple[int, int, int]]:
        """The clicks as (y, x, label), in the order they were made (their actions in :attr:`click_actions`)."""
        return list(self.interaction.clicks) if self.interaction is not None else []

    @property
    def click_actions(self) -> list[str]:
        """Each click's action (``"auto"``, ``"split"``, ``"merge"``), beside :attr:`clicks`."""
        return list(self.interaction.actions) if self.interaction is not None else []

    @property
    def labels(self) -> np.ndarray:
        """(H, W) int32: the current propagated segmentation."""
        return self._require_interaction().labels

    @property
    def instances(self) -> np.ndarray:
        """(H, W) uint32: the objects of the current :attr:`labels` (clicks and paint included), 0 = background,
        numbered 1..N, as :attr:`SegmentationResult.instances` makes them.

        With object clicks, the objects as the clicks and strokes edited them, in the order they were made (each
        click changes only the object it touches). Otherwise computed when asked for, not at each click, and kept
        until the labels change."""
        inter = self._require_interaction()
        if inter.mode == "object":
            return inter.instances
        labels = self.labels
        cached = self._instances
        if cached is None or cached[0].shape != labels.shape or not np.array_equal(cached[0], labels):
            fg = foreground_probability(self.result.probabilities)
            cached = (labels.copy(), segmentation_objects(labels, fg, one_object=self.single_object,
                                                          distance=self.result.distance))
            self._instances = cached
        return cached[1]

    def measurements(self) -> dict[str, np.ndarray]:
        """Per object of :attr:`instances`: ``label``, ``area``, ``perimeter``, ``mean_intensity`` (of the image as
        given; for colour also each channel's mean), ``mean_uncertainty`` and the centroid, as columns
        (:func:`~napari_clis.instances.measure_objects`)."""
        instances = self.instances
        return measure_objects(instances, self._image, self.result.uncertainty)

    def suggest(self, n: int = 16) -> np.ndarray:
        """(n, 2) int: (y, x) inside the ``n`` most uncertain regions that are not annotated yet; with object
        clicks, inside the ``n`` most uncertain whole objects (and possibly missed ones) not clicked yet
        (:meth:`Interaction.suggest_objects` gives their ids and doubt too)."""
        return self._require_interaction().suggest(n)

    # -- continual learning -------------------------------------------------------------------------
    def _working(self, normalized: np.ndarray, labels: np.ndarray | None = None, max_side: int | None = None,
                 scale: float | None = None):
        """The image (and labels) at the network's working resolution, cut to multiples of 8, as tensors;
        resized by the object ``scale`` first where one is given (as segment() saw it)."""
        x = torch.from_numpy(np.ascontiguousarray(normalized))[None]
        y = None if labels is None else torch.from_numpy(labels.astype(np.int64))[None, None].float()
        # lesion models always work at their long side (as predict() does); others only shrink large images
        long_side = scaled_long_side(x.shape[-2:], scale) or max(x.shape[-2:])
        side = self.working_long_side or (max_side if max_side is not None and long_side > max_side else
                                          None if scale is None else long_side)
        x, y = fit_grid(*resize_long_side(x, side, y), crop=True)
        x = x[0].to(self.device)
        return (x, None) if y is None else (x, y[0, 0].long().to(self.device))

    def _image_fingerprint(self, normalized: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, object]:
        """The image's fingerprint (``continual.fingerprint``) and what it saw: the whole image at most
        ``FINGERPRINT_SIDE`` px on a side, resized by the object ``scale`` as segment() saw it."""
        x, _ = self._working(normalized, max_side=FINGERPRINT_SIDE, scale=scale)
        return fingerprint(self.net, x[None]), x

    def _choose_task(self, normalized: np.ndarray, task: int | None = None, *,
                     scale: float | None = None) -> tuple[np.ndarray, int, dict]:
        """(fingerprint, task, info) for an image: the task-aware module (``continual.choose_task``), or ``task``;
        the fingerprint is None where nothing was chosen (``task`` given, nothing learned: segment() makes it last).

        The fingerprint sees the whole image at most ``FINGERPRINT_SIDE`` px on a side; the agreement check
        sees the image as the network segments it: at a model's working resolution, else at its own resolution,
        cut to the central ``AGREEMENT_SIDE`` px square (two passes of that cost a quarter of one 512 px pass).
        With an object ``scale``, both see the image resized by it, as the network segments it."""
        if task is not None:
            return None, int(task), {"nearest": None, "known": None, "agreement": None, "asked": True}
        if not self.tasks and not self.remembered:
            return None, 0, {"nearest": 0, "known": False, "agreement": None}
        fp, fp_input = self._image_fingerprint(normalized, scale)
        x = fp_input
        h, w = normalized.shape[-2:]
        f = 1.0 if scale is None else scale
        if self.working_long_side is None and max(h, w) * f > AGREEMENT_SIDE:  # at the scale it segments
            side = round(AGREEMENT_SIDE / f)  # image pixels that make AGREEMENT_SIDE px for the network
            y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
            x, _ = self._working(normalized[:, y0:y0 + side, x0:x0 + side], scale=scale)
        # an image unlike the pretraining images (the familiarity signal) is no image the pretrained task is known
        # to segment well: the nearest learned image's task then segments it without having to agree with task 0
        # (the agreement check protects images of the pretraining kind; on a new kind it kept every learned task
        # away from unseen images, docs/method.md)
        summary = self.metadata.get("familiarity")
        unfamiliar = bool(summary) and familiarity(first_layer_stats(self.net, fp_input[None]), summary).unfamiliar
        task, info = choose_task(self.net, x, fp, self.tasks, self.remembered, class_log_prior=self.class_log_prior,
                                 single_object=self.single_object,
                                 min_agreement=0.0 if unfamiliar else TRANSFER_AGREEMENT)
        info["unfamiliar"] = unfamiliar
        return fp, task, info

    def learn(self, *, steps: int | None = None, progress=None) -> TaskRecord:
        """Learn from the current image (its propagated labels) as a new task.

        The model changes only if the new task follows at least as many of the corrections as the task that
        segmented the image and keeps what was accepted elsewhere (:func:`~napari_clis.continual.learn_verdict`);
        otherwise :class:`LearnRejected` says why and the model stays as it was. Earlier tasks never change
        (``napari_clis.continual``). With ``autosave`` set, the session is saved after each learned task, and
        after a rollback once it has learned tasks (the image rolled back is remembered in the file too). A file
        someone else wrote since this session read or wrote it (or one it never read or wrote) is not
        overwritten: the session then goes to a new file beside it (``autosave_moved``).

        Parameters
        ----------
        steps : int, optional
            Optimisation steps (default ``learn_settings.steps``).
        progress : callable, optional
            ``progress(step, total)``; returning ``False`` cancels (:class:`LearnCancelled`, nothing changes).
        """
        inter = self._require_interaction()
        labels = inter.labels
        # what this task learns from, taken now: corrections made while it learns are not part of it
        clicks = [list(c) for c in inter.clicks]
        painted = None if inter.painted is None else inter.painted.astype(np.int8)
        if not (labels > 0).any():
            raise InteractionError("The segmentation is empty (all background): there is nothing to learn. "
                                   "Correct it with clicks first, or skip this image.")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
        settings = dataclasses.replace(self.learn_settings, **({"steps": int(steps)} if steps is not None else {}))
        # at the scale it was segmented at; with the pixels the user changed from what Segment gave (clicks, their
        # propagation and strokes), what the rollback rule calls the corrections (one resize for both)
        n = max(self.n_classes, int(labels.max()) + 1)
        if self.result.labels.shape == labels.shape:
            edited = labels != self.result.labels
            x, both = self._working(self._normalized, labels.astype(np.int64) + n * edited, scale=self._scale)
            y, corrected = both % n, both >= n
        else:  # (not expected) no segmentation to compare with: learn_task's own rule
            (x, y), corrected = self._working(self._normalized, labels, scale=self._scale), None
        t0 = time.perf_counter()
        # an image unlike the pretraining images: the new task gets its own normalisation and adapters
        fam = self.result.familiarity if self.result is not None else None
        adapt = settings.adapt == "always" or (settings.adapt == "auto" and fam is not None and fam.unlike_training)
        new_net, task, info = learn_task(self.net, x, y, self.task, settings, progress, adapt=adapt,
                                         corrected=corrected)
        why = learn_verdict(info, settings)
        if why is not None:
            entry = ([float(v) for v in self._fingerprint], int(self.task))
            if entry not in self.remembered:  # the same image rolled back again is remembered once
                self.remembered.append(entry)
            self.task_choice = {"nearest": int(self.task), "known": True, "agreement": None}  # now remembered
            kept = ""
            if self.autosave is not None and self.tasks:  # the file that holds the tasks remembers it too
                try:
                    self._autosave()
                except CheckpointError as e:
                    kept = f" (only in this session: {e})"
            full = "" if self.free_kernels[0] else (
                " No kernel of the network is free any more (the earlier tasks use them all), so a new task can "
                "only choose among kernels in use; the tasks learned so far keep working.")
            raise LearnRejected(
                f"Learning was rolled back: {why}. The network is unchanged; this image and images like it keep "
                f"the task that segmented it{kept}.{full}"
            )
        record = TaskRecord(task=task, parent=self.task, fingerprint=[float(v) for v in self._fingerprint],
                            image_shape=list(labels.shape), clicks=clicks,
                            kernels_on=info["kernels_on"], kernels_new=info["kernels_new"],
                            dice_before=float(info["dice_before"]), dice_after=float(info["dice_after"]),
                            seconds=time.perf_counter() - t0, corrected_before=info.get("corrected_before"),
                            corrected_after=info.get("corrected_after"), agreement_after=info.get("agreement_after"))
        old_net = self.net
        self.net = new_net.eval()
        self.tasks.append(record)
        if painted is not None:
            self.annotations[task] = painted
        self.task, choice = task, self.task_choice
        self.task_choice = {"nearest": task, "known": True, "agreement": None}  # the image is now this task's own
        if self.autosave is not None:
            try:
                self._autosave()
            except CheckpointError as e:  # the task stays learned here: throwing it away would lose the work
                raise AutosaveError(
                    f"Task {task} was learned and is kept in this session, but it is not saved: {e} Save the "
                    "session elsewhere (save(path); in napari, Save model) before closing.",
                    record) from e
            except Exception:
                self.net = old_net  # not a failed write (a bug): leave the model as it was before
                self.tasks.pop()
                self.annotations.pop(task, None)
                self.task, self.task_choice = record.parent, choice
                raise
        return record

    def save(self, path: str | Path) -> None:
        """Save the model, its kernel masks, the task history and every task's clicks and annotations, atomically
        (a failure leaves an existing file as it was). ``~`` is your home folder."""
        path = Path(path).expanduser()
        metadata = dict(self.metadata)
        metadata["learned_tasks"] = [r.to_dict() for r in self.tasks]
        metadata["remembered_images"] = [[list(f), t] for f, t in self.remembered]
        metadata["interaction_settings"] = dict(self._settings)
        extra = {"annotations": {str(t): torch.from_numpy(a) for t, a in self.annotations.items()}}
        try:
            save_model(path, self.net, metadata, extra=extra)
        except OSError as e:
            raise CheckpointError(f"Could not save the session to {path}: {e.strerror or e}. The file on disk, "
                                  "if any, is unchanged.") from e
        stamp = file_stamp(path)
        if stamp is not None:
            self._stamps[_file_key(path)] = stamp

    def file_state(self, path: str | Path) -> str:
        """What became of a model file since this session last read or wrote it: ``"unchanged"``, ``"changed"``
        (written by someone else since), ``"gone"``, or ``"unknown"`` (this session never read or wrote it)."""
        known = self._stamps.get(_file_key(path))
        if known is None:
            return "unknown"
        now = file_stamp(Path(path).expanduser())
        return "gone" if now is None else "unchanged" if now == known else "changed"

    def _autosave(self) -> None:
        """Save to ``autosave``. A file someone else wrote since this session read or wrote it, or one this session
        never read or wrote, is not overwritten: the session goes to a new file beside it (once that is written,
        ``autosave`` names it and ``autosave_moved`` says from where)."""
        path = Path(self.autosave).expanduser()
        state = self.file_state(path)
        if state == "changed" or (state == "unknown" and path.exists()):
            new = unique_model_path(path.parent, Path(self.model_name).stem or "model")
            self.save(new)
            self.autosave, self.autosave_moved = new, (path, new)
            return
        self.save(path)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", **kwargs) -> ClisSession:
        """A session saved by :meth:`save`: model, masks, task history and annotations (as
        :meth:`from_checkpoint`)."""
        return cls.from_checkpoint(path, device=device, **kwargs)

    def __repr__(self) -> str:
        return f"ClisSession(model={self.model_name!r}, device={str(self.device)!r}, n_samples={self.n_samples})"


def _file_key(path) -> str:
    return str(Path(path).expanduser().resolve())


def _refuse_labels_layer(obj) -> None:
    # The core never imports napari; recognise a Labels layer by its class name to give a useful message.
    if type(obj).__name__ == "Labels" and hasattr(obj, "data"):
        raise ImageError(
            f"'{getattr(obj, 'name', 'this layer')}' is a Labels layer (a segmentation), not an image. "
            "Choose the image layer to segment."
        )
