"""Corrections: clicks on the 'clicks' layer and paint strokes on 'segmentation' become the session's
annotations (kept in the state's :class:`~napari_clis.annotation_state.Ledger`), propagated into the layer.

Each point of 'clicks' carries its class and its action (``features["action"]``: add / remove, split, merge;
:mod:`._click_actions`); the session replays them in order (:meth:`~napari_clis.ClisSession.set_clicks`). A new
click that cannot apply (a split of a small object, a merge that reaches one object) is refused by the session: its
point is taken off the layer and the click status says why, everything else staying as it was. An older click
that stops applying (another image, a click before it deleted) keeps its point, drawn with a red border.
"""

from __future__ import annotations

import re
import weakref
from collections import Counter

import numpy as np

from .._napari_compat import hook_undo_redo, is_hooked, native_undo_redo
from ._click_actions import WORDS, Inputs, actions_of, click_keys, plane_clicks, set_available
from ._common import (
    CLICKS,
    FINDING_OBJECTS,
    SEGMENTATION,
    Settings,
    breakable,
    notify_error,
    object_count_text,
    plain,
    plane_indices,
    slice_of,
    source_id,
    spatial_shape,
)
from ._suggestions import SuggestionsMixin, plan_clicks, run_plan


class Corrections(SuggestionsMixin):
    """The click and paint loop of one dock."""

    def __init__(self, dock):
        self.dock = dock
        self.applied_clicks = None  # the clicks layer's points, classes and actions when they were last applied
        self.shown_notes: list = []  # the click notes last shown as a notification
        self.hooked_clicks = weakref.WeakSet()  # the clicks layers this dock listens to
        self.known: Counter = Counter()  # the clicks (click_keys) of the last propagation: a new one is not there
        self.last_count: int | None = None  # the clicks layer's length then (None: a new layer, nothing is new)
        self.marked: set = set()  # rows of the clicks layer drawn as not applying
        self.objects_pending = False  # the target's segmentation is shown, its objects not yet (the next write)

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

    # -- the click class and action --------------------------------------------------------------------------------
    def on_class_changed(self, label) -> None:
        self.change_clicks(**{"class": int(label)})

    def on_action_changed(self, action) -> None:
        self.change_clicks(action=str(action))

    def change_clicks(self, **values) -> None:
        """New clicks get ``values`` (their class or action); in select mode the selected clicks are changed too."""
        clicks = self.find(CLICKS)
        if clicks is None:
            return
        # napari selects a point right after adding it: change selected clicks only in select mode
        selected = sorted(clicks.selected_data) if str(clicks.mode) == "select" else []
        if not selected:
            clicks.selected_data = set()
        layers = self.dock.layers
        layers.set_click_defaults(clicks, **values)
        if selected:
            layers.set_click_features(clicks, selected, **values)
            self.propagate()

    # -- the layers ----------------------------------------------------------------------------------------------
    def prepare_click_layers(self, image_layer) -> None:
        """The 'clicks' layer for the image, listened to; the segmentation's strokes listened to."""
        d = self.dock
        d.controls.set_classes(self.state.session.class_names)
        interaction = self.state.session.interaction
        set_available(d.click_action_control, interaction is not None and interaction.mode == "object")
        clicks = d.layers.prepare_clicks(image_layer, int(d.controls.click_class.value), d.click_action)
        # the points already there (an adopted layer's) are old; any added from now on, also while the objects
        # are still being found, are new: a refused new one is removed, not marked
        self.known, self.last_count, self.marked = Counter(), len(clicks.data), set()
        if clicks not in self.hooked_clicks:  # a layer made by a dock closed since is adopted
            d.connect(clicks.events.data, self.on_clicks_event)
            d.connect(clicks.events.features, self.on_click_features)
            self.hooked_clicks.add(clicks)
        self.hook_segmentation(self.find(SEGMENTATION))
        d.layers.select(clicks)
        if clicks.mode != "add":
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
        return (np.asarray(clicks.data).tobytes(), np.asarray(clicks.features["class"]).tobytes(),
                tuple(actions_of(clicks)))

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
        data = np.asarray(clicks.data, float)
        on = plane_clicks(data, np.zeros(len(data), int), self.state.target[1], (np.inf, np.inf), 1)[0]
        self.dock.layers.keep_clicks(clicks, np.flatnonzero(~on).tolist())
        self.propagate()

    # -- reading the layers --------------------------------------------------------------------------------------
    def gather_inputs(self):
        """``(points, classes, painted, notes)`` of the slice being corrected (:meth:`read_inputs` without the
        clicks' actions). To give the session the corrections as they are, actions included: :meth:`sync_session`."""
        inputs = self.read_inputs()
        return inputs.points, inputs.classes.tolist(), inputs.painted, inputs.notes

    def sync_session(self, inputs: Inputs | None = None) -> str:
        """Give the session the clicks (with their actions) and painted edits the layers hold now (``inputs``,
        else read), as each click does, without writing the layers (before learning); returns the click status
        (:meth:`settle`). Raises ValueError when the layers cannot be used."""
        inputs = self.read_inputs() if inputs is None else inputs
        inter = self.state.session.interaction
        plan = plan_clicks(inter, inputs)
        accepted, refused = run_plan(inter, plan, inputs.painted, inputs.epochs)
        return self.settle(plan, accepted, refused, inter.notes)

    def read_inputs(self) -> Inputs:
        """Clicks on the target plane and the painted map (with its epochs: how many of these clicks were made
        before each pixel was painted), read from the layers; user messages for what is ignored. Raises ValueError
        when the layers cannot be used."""
        state = self.state
        layer, idx = state.target
        clicks, seg = self.find(CLICKS), self.find(SEGMENTATION)
        notes = []
        pts, labs, acts, rows = np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, object), np.zeros(0, int)
        if clicks is not None and len(clicks.data):
            data = np.asarray(clicks.data, float)
            ndim = len(spatial_shape(layer))
            if data.shape[1] != ndim:
                raise ValueError(f"the 'clicks' layer is {data.shape[1]}D but '{layer.name}' is {ndim}D; delete it "
                                 "and segment again.")
            classes = clicks.features["class"].to_numpy().astype(int)
            on_plane, inside, known = plane_clicks(data, classes, idx, state.written_base.shape,
                                                   state.session.n_classes)
            for n, what in ((~on_plane, "on other slices apply once that slice is the one segmented (go to it and "
                                        "press Segment, or tick All slices)"),
                            (~inside & on_plane, "outside the image are ignored"),
                            (~known & inside & on_plane, "with an unknown class are ignored")):
                if n.any():
                    notes.append(f"{int(n.sum())} click(s) {what}")
            rows = np.flatnonzero(on_plane & inside & known)
            pts, labs, acts = data[rows, -2:], classes[rows], actions_of(clicks)[rows]
        # a deleted point: strokes made after it stay after the same clicks (before new strokes are taken in)
        state.ledger.clicks_now(self.target_key(), click_keys(Inputs(pts, labs, acts, rows, None, [])))
        painted = epochs = None
        if seg is not None and self.record_strokes(notes) is not None:
            painted = self.painted
            epochs = state.ledger.epochs_map(self.target_key(), painted.shape)
        return Inputs(pts, labs, acts, rows, painted, notes, epochs)

    def click_count(self, idx, hw) -> int:
        """How many clicks the 'clicks' layer holds on the slice ``idx`` (inside ``hw``, of a known class)."""
        clicks = self.find(CLICKS)
        if clicks is None or not len(clicks.data) or "class" not in clicks.features or \
                np.shape(clicks.data)[1] != len(idx) + 2:
            return 0
        masks = plane_clicks(np.asarray(clicks.data, float), clicks.features["class"].to_numpy().astype(int), idx,
                             hw, self.state.session.n_classes)
        return int(np.logical_and.reduce(masks).sum())

    def absorb(self, key, idx, notes: list | None = None):
        """New painted edits on one slice become annotations (``Ledger.absorb``), after the slice's clicks made so
        far; the stroke, or ``None`` when the layer cannot be read as that slice."""
        seg = self.find(SEGMENTATION)
        session = self.state.session
        if seg is None or session is None:
            return None
        plane = slice_of(seg, idx)
        stroke, bad = self.state.ledger.absorb(key, plane, session.n_classes, self.click_count(idx, plane.shape[-2:]))
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
        note = f"Painted on slice(s) {', '.join(where)}: kept, and applied when segmented (go to the slice and " \
               "press Segment)."
        if self.dock.propagating:  # the stroke's propagation writes its status later: the note goes with it
            self.slice_note = note
        self.say(note)

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
        """Apply the clicks and painted edits of the target plane and update 'segmentation', 'instances', the
        object count and the suggestions."""
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
            # clicked, or its objects are still being found: the clicks are applied when the run ends
            # (Segmenter.finish_run)
            self.say("Finding the objects: your clicks and edits are kept and applied once they are found."
                     if run.shown == run.n else "Segmenting: your clicks are kept and applied when it is done.")
            return
        layer = state.target[0]
        seg = self.find(SEGMENTATION)
        if seg is not None and seg.metadata.get("source_id") != source_id(layer):  # its data was replaced
            self.say(f"'{layer.name}' has changed since it was segmented: press Segment (Shift-S) to segment it as "
                     "it is now; your clicks are kept.")
            return
        self.applied_clicks = signature = self.click_signature()
        inter = session.interaction
        try:
            inputs = self.read_inputs()
            plan = plan_clicks(inter, inputs)
        except Exception as e:  # the layers keep the user's clicks and edits; nothing is overwritten
            self.not_applied(e)
            return
        notes = inputs.notes
        if notes and notes != self.shown_notes:  # once, not again at every click: the click status keeps it
            from napari.utils.notifications import show_warning

            text = "; ".join(notes)
            show_warning(text[:1].upper() + text[1:] + ".")
        self.shown_notes = notes
        suggest = self.wants_suggestions()  # read here: a worker never reads a control
        painted = inputs.painted
        # nothing to apply and nothing applied before (a fresh segmentation): the layers show it already
        unchanged = not len(plan[0]) and not inter.clicks and inter.painted is None and \
            (painted is None or not (painted >= 0).any())
        if state.written_base.size > Settings.busy_text_pixels:
            self.say("Propagating…")
        runner = d.runner

        def work():  # the session's work, off the GUI thread; the layers are written when it returns
            runner.note_thread("propagate")
            if unchanged:
                return [], {}, {}, self.outputs(session, suggest, labels=False)
            accepted, refused = run_plan(inter, plan, painted, inputs.epochs)
            return accepted, refused, inter.notes, self.outputs(session, suggest)

        def done(result):
            if runner.side_pending or self.click_signature() != signature:  # clicks or paint changed meanwhile:
                runner.side_pending = True  # the next propagation, at once, writes the layers
                return
            accepted, refused, inter_notes, out = result
            msg = self.settle(plan, accepted, refused, inter_notes)
            self.write(out, msg + "".join(f"; {n}" for n in notes))

        runner.start_side(work, done, self.not_applied, self.propagate)

    def not_applied(self, error) -> None:
        notify_error(f"Cannot apply the corrections: {error}")
        self.say(f"Not applied: {error}")

    def settle(self, plan, accepted, refused, inter_notes) -> str:
        """On the GUI thread, once the session has the clicks: a refused new click's point leaves the layer, an
        older click that does not apply is marked. Returns the click status (``{count}`` for the object count)."""
        pts, labs, acts, rows, said = plan
        said, refused = list(said), dict(refused)
        keys = click_keys(Inputs(pts, labs, acts, rows, None, []))
        clicks = self.find(CLICKS)
        n = len(clicks.data) if clicks is not None else 0
        first_new = n if self.last_count is None or n < self.last_count else self.last_count  # points since
        removed = [i for i in refused if rows[i] >= first_new and self.known[keys[i]] == 0]
        for i in removed:  # a point just added: it goes, and the status says why
            y, x = pts[i]
            said.insert(0, f"{WORDS[acts[i]].capitalize()} at ({y:.0f}, {x:.0f}) refused: {refused.pop(i)}. Its "
                           "point is removed; your other clicks and edits are as they were")
        if removed:
            gone = {int(rows[i]) for i in removed}
            self.dock.layers.keep_clicks(clicks, [r for r in range(n) if r not in gone])
            self.applied_clicks = self.click_signature()
        for i, reason in refused.items():
            y, x = pts[i]
            said.append(f"the {WORDS[acts[i]]} at ({y:.0f}, {x:.0f}) does not apply (red border): {reason}")
        for j, reason in sorted(inter_notes.items()):
            i = accepted[j]
            y, x = pts[i]
            said.append(f"the {WORDS[acts[i]]} at ({y:.0f}, {x:.0f}) changed nothing: {reason}")
        marked = {int(rows[i]) for i in refused}
        if clicks is not None and marked != self.marked:
            self.dock.layers.recolour_clicks(clicks, marked)
        self.marked = marked
        self.known = Counter(k for i, k in enumerate(keys) if i not in removed)
        self.last_count = len(clicks.data) if clicks is not None else None
        return f"{len(accepted)} click(s) applied: {{count}}" + "".join(f". {t[:1].upper()}{t[1:]}" for t in said)

    @staticmethod
    def outputs(session, suggest: bool, labels: bool = True):
        """What the layers show after the corrections (in the propagation worker): the propagated labels before
        paint, the labels (``None`` for both when ``labels`` is false: the layers show them already), the objects,
        the suggestions (None unless ``suggest``)."""
        from ._suggestions import suggestions

        inter = session.interaction
        instances = inter.instances if inter.mode == "object" else session.instances
        found = suggestions(session) if suggest else None
        if not labels:
            return None, None, instances, found
        return inter.propagated, inter.labels, instances, found

    def write(self, out, msg) -> None:
        state = self.state
        if state.target is None:
            return
        base, labels, instances, found = out
        layer, idx = state.target
        seg = self.find(SEGMENTATION)
        if seg is None:
            self.say("The 'segmentation' layer was deleted; press Segment to make it again.")
            return
        if labels is not None:
            plane = slice_of(seg, idx)
            merged = state.ledger.merge(self.target_key(), plane, np.asarray(labels), state.session.n_classes)
            if idx:
                seg.data[idx] = merged
            else:
                seg.data[...] = merged
            seg.refresh()
            state.written_base = base.copy()
        if labels is not None or self.objects_pending:  # (the objects of a fresh segmentation: Cancel came as
            self.dock.layers.write_instances(layer, idx, instances)  # they were to be found)
        self.objects_pending = False
        note, self.slice_note = getattr(self, "slice_note", ""), ""
        self.say(breakable(msg.replace("{count}", self.show_count(instances)) + ".") + (f" {note}" if note else ""))
        self.show_suggestions(found)

    def show_count(self, instances) -> str:
        """The object count ("42 nuclei"), also put in place of the count the status line shows."""
        session, controls = self.state.session, self.dock.controls
        text = object_count_text(session, instances)
        words = {object_count_text(session, np.array([k], np.uint32)).split(" ", 1)[1] for k in (1, 2)}
        status = plain(controls.status.value)
        new = re.sub(r": \d+ (%s)\." % "|".join(map(re.escape, words)), f": {text}.", status, count=1)
        new = new.replace(f"; {FINDING_OBJECTS}", f": {text}.", 1)
        if new != status:
            controls.set_status(new)
        return text
