"""Corrections: clicks on the 'clicks' layer and paint strokes on 'segmentation' become the session's
annotations (kept in the state's :class:`~napari_clis.annotation_state.Ledger`), propagated into the layer."""

from __future__ import annotations

import weakref

import numpy as np

from .._napari_compat import hook_undo_redo, is_hooked, native_undo_redo
from ._common import (
    CLICKS,
    SEGMENTATION,
    Settings,
    breakable,
    notify_error,
    plane_indices,
    slice_of,
    source_id,
    spatial_shape,
)


class Corrections:
    """The click and paint loop of one dock."""

    def __init__(self, dock):
        self.dock = dock
        self.applied_clicks = None  # the clicks layer's points and classes when they were last applied
        self.shown_notes: list = []  # the click notes last shown as a notification
        self.hooked_clicks = weakref.WeakSet()  # the clicks layers this dock listens to

    # -- shorthands ----------------------------------------------------------------------------------------------
    @property
    def state(self):
        return self.dock.state

    def find(self, role):
        return self.dock.layers.find(role)

    def say(self, text: str) -> None:
        self.dock.controls.set_click_status(text)

    def target_key(self):
        layer, idx = self.state.target
        return source_id(layer), tuple(idx)

    @property
    def painted(self):
        """The painted map of the slice being corrected (``None`` before a segmentation)."""
        state = self.state
        if state.target is None or state.session is None:
            return None
        written = state.ledger.written.get(self.target_key())
        if written is None:
            return None
        return state.ledger.painted_map(self.target_key(), written.shape, state.session.n_classes)

    # -- the click class -----------------------------------------------------------------------------------------
    def on_class_changed(self, label) -> None:
        clicks = self.find(CLICKS)
        if clicks is None:
            return
        label = int(label)
        # napari selects a point right after adding it: relabel selected clicks only in select mode
        selected = sorted(clicks.selected_data) if str(clicks.mode) == "select" else []
        if not selected:
            clicks.selected_data = set()
        clicks.feature_defaults = {"class": label}
        with clicks.events.current_face_color.blocker():
            clicks.current_face_color = self.dock.layers.class_colour(label)
        if selected:  # relabel the selected clicks
            classes = clicks.features["class"].to_numpy().copy()
            classes[selected] = label
            clicks.features = {"class": classes}
            self.dock.layers.recolour_clicks(clicks)
            self.propagate()

    # -- the layers ----------------------------------------------------------------------------------------------
    def prepare_click_layers(self, image_layer) -> None:
        """The 'clicks' layer for the image, listened to; the segmentation's strokes listened to."""
        d = self.dock
        d.controls.set_classes(self.state.session.class_names)
        clicks = d.layers.prepare_clicks(image_layer, int(d.controls.click_class.value))
        if clicks not in self.hooked_clicks:  # a layer made by a dock closed since is adopted
            d.connect(clicks.events.data, self.on_clicks_event)
            d.connect(clicks.events.features, self.on_click_features)
            self.hooked_clicks.add(clicks)
        self.hook_segmentation(self.find(SEGMENTATION))
        d.viewer.layers.selection.active = clicks
        clicks.mode = "add"

    def hook_segmentation(self, seg) -> None:
        """Paint strokes on the segmentation layer become annotations; napari's undo and redo take them back
        and bring them back (``_napari_compat.hook_undo_redo``)."""
        if is_hooked(seg, self.dock):
            return
        self.dock.connect(seg.events.paint, self.on_paint)
        hook_undo_redo(seg, self.on_history, owner=self.dock)
        self.dock.hooked_segmentations.add(seg)

    def click_signature(self):
        clicks = self.find(CLICKS)
        if clicks is None or "class" not in clicks.features:
            return None
        return np.asarray(clicks.data).tobytes(), np.asarray(clicks.features["class"]).tobytes()

    def on_click_features(self, _event=None) -> None:
        # adding a point announces its data and then its features: the clicks applied already are not applied twice
        if self.click_signature() != self.applied_clicks:
            self.propagate()

    def on_clicks_event(self, event) -> None:
        if not self.dock.alive:
            return
        action = str(getattr(event, "action", "")).lower()
        if action.endswith(("adding", "removing", "changing")):
            return  # the matching 'added' / 'removed' / 'changed' event follows
        self.propagate()

    def clear_clicks(self) -> None:
        clicks = self.find(CLICKS)
        if clicks is None or self.state.target is None:
            return
        keep = [i for i, p in enumerate(clicks.data) if not self.on_target_plane(p)]
        classes = clicks.features["class"].to_numpy()[keep] if len(keep) else np.zeros(0, int)
        with clicks.events.data.blocker():
            clicks.data = clicks.data[keep]
            clicks.features = {"class": classes}
        self.dock.layers.recolour_clicks(clicks)
        self.propagate()

    def on_target_plane(self, point) -> bool:
        _, idx = self.state.target
        lead = np.round(np.asarray(point[: len(idx)], float)).astype(int)
        return tuple(lead) == tuple(idx)

    # -- reading the layers --------------------------------------------------------------------------------------
    def gather_inputs(self):
        """Clicks on the target plane (y, x, class) and the painted map, read from the layers; user messages
        for what is ignored. Raises ValueError when the layers cannot be used."""
        state = self.state
        layer, idx = state.target
        clicks, seg = self.find(CLICKS), self.find(SEGMENTATION)
        notes = []
        pts, labs = np.zeros((0, 2)), []
        if clicks is not None and len(clicks.data):
            data = np.asarray(clicks.data, float)
            ndim = len(spatial_shape(layer))
            if data.shape[1] != ndim:
                raise ValueError(f"the 'clicks' layer is {data.shape[1]}D but '{layer.name}' is {ndim}D; delete it "
                                 "and segment again.")
            classes = clicks.features["class"].to_numpy().astype(int)
            on_plane = np.array([self.on_target_plane(p) for p in data], bool)
            if (~on_plane).any():
                notes.append(f"{int((~on_plane).sum())} click(s) on other slices apply once that slice is the "
                             "one segmented (go to it and press Segment, or tick All slices)")
            h, w = state.written_base.shape
            yx = data[on_plane, -2:]
            inside = (yx[:, 0] > -0.5) & (yx[:, 0] < h - 0.5) & (yx[:, 1] > -0.5) & (yx[:, 1] < w - 0.5)
            if (~inside).any():
                notes.append(f"{int((~inside).sum())} click(s) outside the image are ignored")
            cls = classes[on_plane][inside]
            known = (cls >= 0) & (cls < state.session.n_classes)
            if (~known).any():
                notes.append(f"{int((~known).sum())} click(s) with an unknown class are ignored")
            pts, labs = yx[inside][known], cls[known].tolist()
        painted = None
        if seg is not None and self.record_strokes(notes) is not None:
            painted = self.painted
        return pts, labs, painted, notes

    def absorb(self, key, idx, notes: list | None = None):
        """New painted edits on one slice become annotations (``Ledger.absorb``); the stroke, or ``None`` when the
        layer cannot be read as that slice."""
        seg = self.find(SEGMENTATION)
        session = self.state.session
        if seg is None or session is None:
            return None
        stroke, bad = self.state.ledger.absorb(key, slice_of(seg, idx), session.n_classes)
        if bad and notes is not None:
            notes.append(f"{bad} painted pixel(s) with a label that is not a class are ignored")
        return stroke

    def absorb_target(self, notes: list | None = None):
        if self.state.target is None or self.find(SEGMENTATION) is None:
            return None
        return self.absorb(self.target_key(), self.state.target[1], notes)

    def record_strokes(self, notes: list | None = None):
        """Take the new edits of the target slice; when napari announced strokes, they are one undo entry per
        announced stroke (edits taken together go with the last)."""
        taken = self.absorb_target(notes)
        self.state.ledger.record_pending(taken, self.target_key())
        return taken

    def shown_slice(self):
        """(key, index) of the slice of the target image on screen; ``None`` when it cannot be told."""
        layer, idx = self.state.target
        if not idx:
            return self.target_key(), idx
        try:
            shown = plane_indices(layer, self.dock.viewer, False)[0]
        except (ValueError, IndexError):
            return None
        return (source_id(layer), tuple(shown)), tuple(shown)

    # -- strokes, undo and redo ----------------------------------------------------------------------------------
    def ready(self) -> bool:
        return self.dock.alive and self.state.target is not None and self.state.session is not None

    def on_paint(self, _event=None) -> None:
        """A paint stroke or fill on the segmentation layer: an undoable annotation, then the propagation.

        napari announces a mouse stroke after it wrote the pixels, but a single paint or fill before, so what
        the stroke wrote is looked for again once the event is over. A stroke on another slice of a stack is
        kept as that slice's annotation, applied when that slice is segmented."""
        if not self.ready():
            return
        from qtpy.QtCore import QTimer

        ledger = self.state.ledger
        shown = self.shown_slice()
        if shown is not None and shown[0] != self.target_key():
            self.record_strokes()  # any stroke of the target slice still pending comes first
            taken = self.absorb(*shown)
            ledger.push_other_slice(taken, shown[0])
            if taken is not None and len(taken.pixels):
                self.say(f"Painted on slice {shown[1]}: kept, and applied when that slice is segmented (go to it "
                         "and press Segment).")
            QTimer.singleShot(0, lambda: self.late_edits(shown))
            return
        ledger.pending += 1
        self.propagate()  # it records the stroke first
        QTimer.singleShot(0, self.late_edits)
        if shown is None:  # a 3D or transposed view of a stack: the stroke may have touched any slice
            QTimer.singleShot(0, self.absorb_other_slices)

    def absorb_other_slices(self) -> None:
        """Edits on the target image's slices other than the target, by a stroke in a view that shows no single
        slice: kept as those slices' annotations, in the same undo entry as the stroke's part on the target."""
        if not self.ready():
            return
        layer, idx = self.state.target
        seg = self.find(SEGMENTATION)
        if seg is None or not idx or seg.metadata.get("source_id") != source_id(layer):
            return
        ledger, parts, where = self.state.ledger, [], []
        for other in np.ndindex(*seg.data.shape[: len(idx)]):
            key = (source_id(layer), tuple(other))
            if key == self.target_key() or ledger.is_unchanged(key, seg.data[other]):
                continue  # taken already, or nothing new there: no painted map is made for it
            taken = self.absorb(key, tuple(other))
            if taken is not None and len(taken.pixels):
                parts.append(taken)
                where.append(str(other[0] if len(other) == 1 else other))
        if not parts:
            return
        ledger.group_with_last(parts, self.target_key())
        self.say(f"Painted on slice(s) {', '.join(where)}: kept, and applied when segmented (go to the slice and "
                 "press Segment).")

    def late_edits(self, shown=None) -> None:
        """Pixels written after their paint event: part of the last stroke."""
        if not self.ready():
            return
        if shown is None and self.state.ledger.pending:  # not recorded yet (a propagation was running)
            self.record_strokes()
            self.propagate()
            return
        taken = self.absorb(*shown) if shown is not None else self.absorb_target()
        if taken is None or not len(taken.pixels):
            return
        self.state.ledger.extend_last(taken)
        if shown is None:
            self.propagate()

    def on_history(self, seg, name: str) -> None:
        """napari's undo or redo on the segmentation layer, then the matching change of the annotations: an
        undone stroke's pixels follow the propagation again, a redone one is an annotation again."""
        ours = self.ready() and seg is self.find(SEGMENTATION)
        if ours:
            self.record_strokes()  # a stroke announced but not taken yet is taken before napari undoes it
        native_undo_redo(seg, name)  # napari's own: it restores the pixels
        if not ours:
            return
        touched = self.state.ledger.step(name, lambda key: slice_of(seg, key[1]))
        if self.target_key() in touched:
            self.propagate()

    # -- propagation ---------------------------------------------------------------------------------------------
    def propagate(self) -> None:
        """Apply the clicks and painted edits of the target plane and update 'segmentation' (and suggestions)."""
        d, state = self.dock, self.state
        if not d.alive:  # another dock owns the layers now
            return
        session = state.session
        if state.target is None or session is None or session.interaction is None:
            clicks = self.find(CLICKS)
            if clicks is not None and len(clicks.data):
                self.say("Segment the image first (Shift-S); your clicks are kept.")
            return
        if d.runner.side is not None:
            d.runner.side_pending = True
            return
        run = state.run
        if run is not None and run.done < run.n:  # the session is on the worker's image or slice, not on the one
            # clicked: the clicks are applied when the run ends (Segmenter.finish_run)
            self.say("Segmenting: your clicks are kept and applied when it is done.")
            return
        layer = state.target[0]
        seg = self.find(SEGMENTATION)
        if seg is not None and seg.metadata.get("source_id") != source_id(layer):  # its data was replaced
            self.say(f"'{layer.name}' has changed since it was segmented: press Segment (Shift-S) to segment it as "
                     "it is now; your clicks are kept.")
            return
        self.applied_clicks = self.click_signature()
        try:
            pts, labs, painted, notes = self.gather_inputs()
            inter = session.interaction
            inter.set_clicks(pts, labs)
            if painted is not None:
                inter.set_painted(painted)
        except Exception as e:  # the layers keep the user's clicks and edits; nothing is overwritten
            notify_error(f"Cannot apply the corrections: {e}")
            self.say(f"Not applied: {e}")
            return
        msg = f"{len(labs)} click(s) applied" + ("; " + "; ".join(notes) if notes else "") + "."
        if notes and notes != self.shown_notes:  # once, not again at every click: the click status keeps it
            from napari.utils.notifications import show_warning

            text = "; ".join(notes)
            show_warning(text[:1].upper() + text[1:] + ".")
        self.shown_notes = notes
        if state.written_base.size > Settings.async_pixels:
            self.say("Propagating…")
            runner = d.runner

            def work():
                runner.note_thread("propagate")
                return inter.propagated, inter.labels

            runner.start_side(work, lambda out: self.write(*out, msg),
                              lambda e: notify_error(f"Propagation failed: {e}"), self.propagate)
        else:
            self.write(inter.propagated, inter.labels, msg)

    def write(self, base, labels, msg) -> None:
        state = self.state
        if state.target is None:
            return
        layer, idx = state.target
        seg = self.find(SEGMENTATION)
        if seg is None:
            self.say("The 'segmentation' layer was deleted; press Segment to make it again.")
            return
        plane = slice_of(seg, idx)
        out = state.ledger.merge(self.target_key(), plane, np.asarray(labels), state.session.n_classes)
        if idx:
            seg.data[idx] = out
        else:
            seg.data[...] = out
        seg.refresh()
        state.written_base = base.copy()
        self.say(breakable(msg))
        self.update_suggestions()

    def update_suggestions(self) -> None:
        state, c = self.state, self.dock.controls
        session = state.session
        if not c.suggest.value or state.target is None or session is None or session.interaction is None or \
                session.result is None or not session.result.uncertainty.any():  # no map (0 samples): no ranking
            self.dock.layers.show_suggestions(None, None, 0)
            return
        layer, idx = state.target
        yx = session.interaction.suggest(16).astype(float)
        pts = np.concatenate([np.tile(np.asarray(idx, float), (len(yx), 1)), yx], 1) if idx else yx
        self.dock.layers.show_suggestions(pts, layer, max(6.0, 1.2 * session.superpixel_size))
