"""The dock's layers: made, found, kept, moved with their image, stacked, written."""

from __future__ import annotations

import weakref

import numpy as np

from .._napari_compat import clear_undo_history
from .._reader import SEGMENTATION_OPACITY, class_colormap, uncertainty_style
from ._common import (
    CLICKS,
    GEOMETRY,
    INSTANCES,
    LAYER_TAG,
    MAPS,
    SEGMENTATION,
    SUGGESTIONS,
    SUPERPIXELS,
    UNCERTAINTY,
    copy_geometry,
    digest,
    outline_width,
    same_source,
    source_id,
    spatial_shape,
)
from ._points import PointLayers


def class_dtype(n_classes: int):
    """The segmentation layer's type: uint8 for fewer than 256 classes (napari draws uint8 and uint16 labels
    directly; int32 it converts at every write), else int32."""
    return np.uint8 if n_classes < 256 else np.int32


def fitting(values, dtype) -> np.ndarray:
    """``values`` (labels) as ``dtype`` when they fit it (napari draws small unsigned labels without converting
    them), else as they are."""
    values = np.asarray(values)
    if values.dtype == dtype:
        return values
    if np.issubdtype(dtype, np.integer) and values.size and (int(values.min()) < np.iinfo(dtype).min or
                                                            int(values.max()) > np.iinfo(dtype).max):
        return values
    return values.astype(dtype)


def is_input(layer) -> bool:
    """An image layer the user opened (not one of the dock's outputs, such as the uncertainty map)."""
    from napari.layers import Image

    return isinstance(layer, Image) and LAYER_TAG not in layer.metadata


def announce_in_place(layer) -> None:
    """After writing into ``layer.data`` in place: the layer drawn again, and for the objects their listeners told
    (the Measurements dock measures again). Not the other layers' data event: the viewer would measure every
    layer's extent again, though none changed."""
    if layer.metadata.get(LAYER_TAG) == INSTANCES:
        layer.events.data(value=layer.data)
    layer.refresh()


class Layers(PointLayers):
    """The layers of one dock: ``segmentation``, ``uncertainty``, ``superpixels``, ``instances``, ``clicks`` and
    ``suggestions`` (tagged in their metadata), and the hidden copies kept of earlier images."""

    def __init__(self, dock):
        self.dock = dock
        self.geometry_hooked = weakref.WeakSet()
        self.visibility_hooked = weakref.WeakSet()
        self.ahead = weakref.WeakSet()  # layers made ahead of a run's first result (make_ahead)
        self.objects_hidden = weakref.WeakSet()  # the objects layer, hidden while its objects are found

    @property
    def viewer(self):
        return self.dock.viewer

    def find(self, role: str):
        for lyr in self.viewer.layers:
            if lyr.metadata.get(LAYER_TAG) == role:
                return lyr
        return None

    def image_choices(self, _widget=None) -> list:
        """The viewer's image layers, without this dock's own outputs (the uncertainty map)."""
        return [(lyr.name, lyr) for lyr in self.viewer.layers if is_input(lyr)]

    # -- kept copies of earlier images ------------------------------------------------------------------------------
    def keep_corrected_result(self, image_layer) -> None:
        """Before the layers move on to another image: a segmentation the user corrected (clicks, painted edits)
        is kept as its own layers, ``segmentation [name]`` and ``clicks [name]`` (hidden), so nothing is lost."""
        from napari.utils.notifications import show_info

        seg, clicks = self.find(SEGMENTATION), self.find(CLICKS)
        if seg is None or seg.metadata.get("source") is None or same_source(seg, image_layer):
            return
        ledger = self.dock.state.ledger
        has_clicks = clicks is not None and len(clicks.data) > 0
        source = seg.metadata.get("source_id")
        if not (has_clicks or ledger.has_painting(source)):
            return
        name = seg.metadata["source"]
        earlier = self.kept_segmentation(source)
        if earlier is not None:  # the image was corrected, left and come back to before: one copy, brought up
            # to date with the slices segmented since (a stack keeps the others), and only when nobody edited it
            data = np.array(earlier.data, copy=True)
            for idx in ledger.segmented_slices(source):
                if idx:
                    data[idx] = seg.data[idx]
                else:
                    data = np.array(seg.data, copy=True)
            earlier.data = data
            earlier.metadata["class_names"] = seg.metadata.get("class_names")
            earlier.metadata["clis_digest"] = digest(data)
            kept = [earlier]
        else:
            data = np.array(seg.data, copy=True)
            kept = [self.viewer.add_labels(data, name=f"{SEGMENTATION} [{name}]", visible=False,
                                           metadata={"source": name, "source_id": source,
                                                     "class_names": seg.metadata.get("class_names"),
                                                     "clis_digest": digest(data)})]
        copy_geometry(kept[0], seg)
        if has_clicks:
            kept.append(self.viewer.add_points(np.array(clicks.data, copy=True), name=f"{CLICKS} [{name}]",
                                               ndim=clicks.ndim, features=clicks.features.copy(),
                                               face_color=np.array(clicks.face_color, copy=True), size=clicks.size,
                                               visible=False, metadata={"source": name, "source_id": source}))
            copy_geometry(kept[1], clicks)
        show_info(f"Your corrected segmentation of '{name}' is kept as layer '{kept[0].name}'"
                  + (f", its clicks as '{kept[1].name}'" if len(kept) > 1 else "") + ".")

    def kept_segmentation(self, source: str):
        """The hidden ``segmentation [name]`` copy kept for an image (by its source id) as the dock last wrote
        it, if there is one: a copy the user edited since (painted on it, to polish and save it) is theirs."""
        from napari.layers import Labels

        for lyr in self.viewer.layers:
            if isinstance(lyr, Labels) and lyr.metadata.get(LAYER_TAG) is None and \
                    lyr.metadata.get("source_id") == source and lyr.name.startswith(f"{SEGMENTATION} [") and \
                    lyr.metadata.get("clis_digest") == digest(lyr.data):
                return lyr
        return None

    # -- the output layers ----------------------------------------------------------------------------------------
    def specs(self, n_classes: int) -> dict:
        """``{role: (dtype, viewer method, keyword arguments)}`` of the output layers (first seen: a light fill)."""
        fill = dict(opacity=SEGMENTATION_OPACITY, colormap=class_colormap(n_classes))  # in the class's colour
        return {SEGMENTATION: (class_dtype(n_classes), "add_labels", fill),
                UNCERTAINTY: (np.float32, "add_image", dict(uncertainty_style(), visible=self.uncertainty_wanted())),
                SUPERPIXELS: (np.int32, "add_labels", dict(visible=False, opacity=0.5)),
                INSTANCES: (np.uint16, "add_labels", {})}

    def add(self, role: str, shape, spec, image_layer):
        """A new, empty output layer (tagged as it is added: the Image list never offers the dock's own layers)."""
        dtype, adder, kwargs = spec
        lyr = getattr(self.viewer, adder)(np.zeros(shape, dtype), name=role, metadata={LAYER_TAG: role}, **kwargs)
        lyr.metadata["source"] = image_layer.name
        lyr.metadata["source_id"] = source_id(image_layer)
        copy_geometry(lyr, image_layer)
        if role == SEGMENTATION:  # a new layer shows zeros: edits are found against zeros
            self.dock.state.ledger.forget_written()
        return lyr

    def make_ahead(self, image_layer, n_classes: int, still_wanted) -> None:
        """While a worker segments: the output layers the image lacks, one per turn of the event loop 10 ms apart
        (a layer blocks the GUI thread 0.1-0.3 s; chained at 0 ms no timer or input ran between them). Stops once
        ``still_wanted()`` is false (the run ended: :meth:`prepare` makes what is left)."""
        from qtpy.QtCore import QTimer

        shape, specs = spatial_shape(image_layer), self.specs(n_classes)
        self.ahead = weakref.WeakSet()

        def step():
            if not (self.dock.alive and still_wanted()) or image_layer not in self.viewer.layers:
                return
            missing = [role for role in specs if self.find(role) is None]
            if missing:
                self.ahead.add(self.add(missing[0], shape, specs[missing[0]], image_layer))
                QTimer.singleShot(10, step)

        QTimer.singleShot(0, step)

    def drop_ahead(self) -> None:
        """A run that wrote nothing: the layers made ahead for it go (the layers are as they were)."""
        ahead, self.ahead = list(self.ahead), weakref.WeakSet()
        for lyr in ahead:
            if lyr in self.viewer.layers and not lyr.data.any():
                self.viewer.layers.remove(lyr)

    def prepare(self, image_layer) -> None:
        """Create the output layers, or reset them when they were made for a differently shaped image."""
        self.keep_corrected_result(image_layer)
        self.ahead = weakref.WeakSet()  # written now: kept
        shape = spatial_shape(image_layer)
        session = self.dock.state.session
        specs = self.specs(session.n_classes)
        for role, (dtype, adder, kwargs) in specs.items():
            lyr = self.find(role)
            if lyr is not None and (lyr.data.shape != shape or not same_source(lyr, image_layer) or
                                    (role == SEGMENTATION and lyr.data.dtype != dtype)):
                lyr.data = np.zeros(shape, dtype)
                if role == SEGMENTATION:  # it shows none of what was written: edits are found against zeros now
                    self.dock.state.ledger.forget_written()
            elif lyr is None:
                lyr = self.add(role, shape, (dtype, adder, kwargs), image_layer)
            lyr.metadata[LAYER_TAG] = role
            lyr.metadata["source"] = image_layer.name
            lyr.metadata["source_id"] = source_id(image_layer)
            copy_geometry(lyr, image_layer)
            # each setter redraws the layer, unchanged or not: only what differs is set
            if role == SUPERPIXELS and lyr.contour != 1:  # outlines: the segmentation shows through
                lyr.contour = 1
            if role == INSTANCES and lyr.contour != outline_width(shape):  # thick enough to see at the zoom
                lyr.contour = outline_width(shape)  # that shows the whole image
            if role == UNCERTAINTY:  # the map's full range: 0 to 1 - 1/K
                limits = (0.0, 1.0 - 1.0 / session.n_classes)
                if tuple(lyr.contrast_limits) != limits:
                    lyr.contrast_limits = limits
                self.follow_uncertainty_visibility(lyr)
        self.find(SEGMENTATION).metadata["class_names"] = session.class_names
        self.follow_geometry(image_layer)

    def select(self, layer) -> None:
        """Make ``layer`` the active one, unless it is already (a change swaps the layer controls: slow)."""
        if layer is not None and self.viewer.layers.selection.active is not layer:
            self.viewer.layers.selection.active = layer

    # -- how the maps look (one definition each) ------------------------------------------------------------------
    def uncertainty_wanted(self) -> bool:
        """Whether the uncertainty map is to be shown: 'Show uncertainty' ticked, and a map computed (samples)."""
        session = self.dock.state.session
        return bool(self.dock.controls.show_uncertainty.value) and (session is None or session.n_samples > 0)

    def set_uncertainty_visible(self, visible: bool) -> None:
        lyr = self.find(UNCERTAINTY)
        if lyr is not None and lyr.visible != visible:
            self._showing = True  # our own change: the checkbox is not to follow it
            try:
                lyr.visible = visible
            finally:
                self._showing = False

    def follow_uncertainty_visibility(self, lyr) -> None:
        """The layer list's eye of the uncertainty map and the dock's 'Show uncertainty' box agree."""
        if lyr in self.visibility_hooked:
            return

        def shown(_event=None, ref=weakref.ref(lyr)):  # noqa: B008 - binds a weak reference, once, on purpose
            layer, box = ref(), self.dock.controls.show_uncertainty
            if layer is not None and not getattr(self, "_showing", False) and box.value != layer.visible:
                with box.changed.blocked():
                    box.value = layer.visible

        self.dock.connect(lyr.events.visible, shown)
        self.visibility_hooked.add(lyr)

    def follow_geometry(self, image_layer) -> None:
        """When the image moves (its scale, translate, rotation, shear, affine or units change), the dock's
        layers of that image move with it."""
        if image_layer in self.geometry_hooked:
            return

        def moved(_event=None, ref=weakref.ref(image_layer)):  # noqa: B008 - binds a weak reference, once, on purpose
            image = ref()
            if image is None:
                return
            for role in MAPS + (CLICKS, SUGGESTIONS):
                lyr = self.find(role)
                if lyr is not None and same_source(lyr, image):
                    copy_geometry(lyr, image)

        for name in GEOMETRY:
            emitter = getattr(image_layer.events, name, None)
            if emitter is not None:
                self.dock.connect(emitter, moved)
        self.geometry_hooked.add(image_layer)

    def raise_above(self, image_layer) -> None:
        """Keep the dock's layers above the image they belong to (an image opened later goes on top)."""
        if not self.dock.alive:
            return
        layers = self.viewer.layers
        ours = [lyr for role in MAPS + (SUGGESTIONS, CLICKS) if (lyr := self.find(role)) is not None]
        lowest = min((layers.index(lyr) for lyr in ours), default=None)
        if image_layer in layers and lowest is not None and lowest < layers.index(image_layer):
            layers.move(layers.index(image_layer), lowest)  # one move: the image goes under them
        clicks, sugg = self.find(CLICKS), self.find(SUGGESTIONS)
        below = [lyr for role in MAPS if (lyr := self.find(role))]
        top = max((layers.index(lyr) for lyr in below), default=-1)  # a layer made again (deleted, then Segment)
        for points in (sugg, clicks):  # the rings, then the clicks over them, over the maps
            if points is not None and (layers.index(points) < top or (points is clicks and sugg is not None and
                                                                        layers.index(clicks) < layers.index(sugg))):
                layers.move(layers.index(points), len(layers))

    def write_plane(self, image_layer, idx, result, painted=None, instances=None, late: bool = False,
                    shown: bool = False) -> np.ndarray:
        """Write one slice's results, the segmentation with its painted edits over it (returned); ``instances`` or no
        objects until they come (:meth:`write_objects`). ``late``: slices of this run were written before;
        ``shown``: its segmentation was written already (:meth:`write_segmentation`)."""
        written = self.write_segmentation(image_layer, idx, result.labels, painted, late, again=not shown)
        for role, values in ((UNCERTAINTY, result.uncertainty), (SUPERPIXELS, result.superpixels),
                             (INSTANCES, instances)):
            lyr = self.output_layer(role, image_layer, idx, late)
            if values is None:  # the objects come later: none shown meanwhile (nothing written if none are);
                # the layer is hidden until they come (napari drew the outlines of nothing: 50-100 ms at 1.4 Mpx)
                if np.asarray(lyr.data[idx]).any():
                    if lyr.visible:
                        lyr.visible = False
                        self.objects_hidden.add(lyr)
                    self.write_values(lyr, idx, np.zeros(np.shape(lyr.data[idx]), lyr.data.dtype))
                continue
            self.write_values(lyr, idx, values)
            if role == UNCERTAINTY:  # shown when asked for ('Show uncertainty'); no samples: an all-zero map
                self.set_uncertainty_visible(self.uncertainty_wanted())
        return written

    def write_segmentation(self, image_layer, idx, labels, painted=None, late: bool = False,
                           again: bool = True) -> np.ndarray:
        """One slice's segmentation with its painted edits over it (returned). ``again`` False: it was written as
        soon as it existed (:meth:`Segmenter.on_labels`) and painted on since, so it is written only if the layer
        shows something else."""
        if painted is not None and (painted >= 0).any():
            labels = np.where(painted >= 0, painted, labels).astype(labels.dtype)
        lyr = self.output_layer(SEGMENTATION, image_layer, idx, late)
        shown = lyr.data[idx] if idx else lyr.data
        if again or not (isinstance(shown, np.ndarray) and shown.shape == labels.shape and
                         np.array_equal(shown, labels)):
            self.write_values(lyr, idx, labels)
        clear_undo_history(lyr)  # undo must not bring back strokes made on an earlier segmentation
        return np.array(labels, copy=True)

    def write_objects(self, image_layer, idx, instances) -> None:
        """The objects of a slice whose segmentation :meth:`write_plane` wrote (found after it, in the worker)."""
        lyr = self.output_layer(INSTANCES, image_layer, idx, late=True)
        self.write_values(lyr, idx, instances)
        self.show_objects()

    def show_objects(self) -> None:
        """The objects layer shown again if :meth:`write_plane` hid it (its objects came, or never will)."""
        hidden, self.objects_hidden = list(self.objects_hidden), weakref.WeakSet()
        for lyr in hidden:
            if lyr in self.viewer.layers and not lyr.visible:
                lyr.visible = True

    def output_layer(self, role, image_layer, idx, late: bool):
        """The output layer ``role`` of ``image_layer``, made again when the user deleted it while we worked."""
        lyr = self.find(role)
        if lyr is None:
            if idx and late:
                from napari.utils.notifications import show_warning

                show_warning(f"'{role}' was deleted during the run: the slices segmented before are empty in "
                             "the new layer. Segment them again (All slices).")
            self.prepare(image_layer)
            lyr = self.find(role)
        return lyr

    @staticmethod
    def write_values(lyr, idx, values) -> None:
        """``values`` into slice ``idx`` of an output layer (into its own array where it can: new layer data would
        make the viewer measure every layer's extent again)."""
        if lyr.metadata.get(LAYER_TAG) in (SEGMENTATION, INSTANCES):
            values = fitting(values, lyr.data.dtype)
        if idx:
            if values.dtype != lyr.data.dtype and np.can_cast(lyr.data.dtype, values.dtype):
                lyr.data = lyr.data.astype(values.dtype)  # more objects than the layer's type holds
            lyr.data[idx] = values
            announce_in_place(lyr)
        elif isinstance(lyr.data, np.ndarray) and lyr.data.shape == values.shape and \
                lyr.data.dtype == values.dtype and lyr.data.flags.writeable:
            lyr.data[...] = values
            announce_in_place(lyr)
        else:  # a copy: the layer is painted on, and must not write into the session's arrays
            lyr.data = np.array(values, copy=True)

    # -- instances -------------------------------------------------------------------------------------------------
    def write_instances(self, image_layer, idx, instances) -> None:
        """The objects of one slice into the ``instances`` layer (after a click or a stroke). The layer announces
        new data, so that the Measurements dock measures again (whether or not the layer is shown)."""
        lyr = self.find(INSTANCES)
        if lyr is not None and same_source(lyr, image_layer):  # else deleted (Segment makes it again), or showing
            self.write_values(lyr, idx, instances)  # another image: nothing to keep up to date
            self.show_objects()
