"""Segment: what the Segment button does, from the chosen image and model to the layers, the model loaded and the
image segmented in a worker (the GUI thread never imports torch nor loads a model for it).

Progressive: the worker hands the segmentation on as soon as it exists (``ClisSession.segment_steps``: the
network's labels, or the MRF's for region clicks), then the maps (uncertainty, superpixels) once ``segment()`` is
done, and the GUI writes each at once ("Segmented …; finding the objects…"); the objects (a watershed, seconds on a
large image) follow from the same worker, under the same busy state and generation, and the suggestions from the
propagation that applies the clicks once the objects are there. Clicks and strokes made meanwhile land in the
image's own clicks and segmentation layers and wait there (the propagation is deferred while a run goes on): they
are applied once the objects are found, as object clicks need them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import _tooltips as tips
from ..annotation_state import RunRecord, Target
from ..instances import object_size_mismatch
from ..preprocessing import alpha_is_transparency
from ._click_actions import AUTO, actions_of, apply_clicks
from ._common import (
    AUTO_TASK,
    CLICKS,
    CUSTOM_MODEL,
    DISPLAYED_RANGE,
    FINDING_OBJECTS,
    SEGMENTATION,
    familiarity_text,
    layout,
    notify_error,
    object_count_text,
    pixels,
    plane_indices,
    same_source,
    source_id,
    spatial_shape,
    task_choice_detail,
    task_choice_text,
)
from ._heap import release
from ._loading import NotStarted, Plan, load_session, warm_up


def objects_made_in_the_worker(*_args):
    """The ``make_instances`` of a result handed to the GUI before its objects: they are the worker's to make (a
    watershed on the GUI thread would freeze the window), and come in their own item."""
    raise RuntimeError("the objects of this segmentation are made in the segmentation worker")


class Cancelled(Exception):
    """Raised in a segmentation worker at the next tile once Cancel was pressed."""


def check_layer(layer):
    from napari.layers import Image

    if layer is None:
        raise ValueError("there is no image layer. Open an image first (File > Open, or a sample).")
    if not isinstance(layer, Image):
        raise ValueError(f"'{layer.name}' is a {type(layer).__name__} layer, not an image. Choose an image layer.")
    return layer


class Segmenter:
    """The Segment button's work, over the dock's state."""

    def __init__(self, dock):
        self.dock = dock
        self.hinted: set = set()  # layers told that their first axis may hold channels
        self.make_layers_ahead = lambda session: None  # the current run's layers, made before its results (start)
        self.clicks_for = None  # the run whose clicks layer was made as its segmentation came (before its objects)
        self.labels_shown = None  # (run, slice number) whose labels on_labels wrote

    # -- on the GUI thread: checks, then the worker ------------------------------------------------------------
    def run(self, image_layer=None) -> None:
        d = self.dock
        c = d.controls
        layer = image_layer if image_layer is not None else c.image.value
        try:
            layer = check_layer(layer)
            planes = plane_indices(layer, d.viewer, bool(c.all_slices.value))
            if len(planes) > 1:  # the slice on screen last: it is the one the clicks then correct
                try:
                    shown = plane_indices(layer, d.viewer, False)[0]
                except ValueError:  # a 3D view: no slice on screen
                    shown = None
                planes = [p for p in planes if p != shown] + ([shown] if shown in planes else [])
            plan = self.plan_session()
            ranged = self.intensity_range(layer)
            diameter = float(c.object_size.value) or None  # 0: the image as it is
            if plan.session is not None:  # refused here, by name, before any work (else in the worker)
                plan.session.object_scale(diameter, spatial_shape(layer)[-2:])
        except Exception as e:  # every failure here is shown to the user; nothing has been changed yet
            self.not_segmented(e)
            return
        from napari.utils.notifications import show_warning

        if layout(layer).channels_first_hint and layer.unique_id not in self.hinted:
            self.hinted.add(layer.unique_id)  # (C, Y, X) opened as one layer, say: said once per layer
            shape = spatial_shape(layer)
            show_warning(f"'{layer.name}' has {shape[0]} planes along its first axis; each is segmented as a slice. "
                         "If they are channels, right-click the layer and choose Split Stack, then segment the "
                         "channel that shows the objects.")
        four = layout(layer).channels == 4
        plane = np.asarray(pixels(layer)[planes[0]] if planes[0] else pixels(layer)) if four else None
        colours_only = four and alpha_is_transparency(plane)
        if four and not colours_only and plane[..., 3].min() != plane[..., 3].max():  # said here in the GUI's words
            self.not_segmented(f"'{layer.name}' has 4 channels and the 4th varies without marking see-through "
                               "parts (pixels fully transparent or fully opaque), so it is taken for 4 channels of "
                               "data, not a picture. If it holds channels, right-click the layer, choose Split RGB "
                               "and segment the channel that shows the objects; if it is a picture with half-"
                               "transparent parts, save it as RGB (without its alpha) and open that.")
            return
        if colours_only:
            show_warning(f"'{layer.name}' is partly transparent: its colours are segmented and its alpha "
                         "channel is left out, so transparent pixels are segmented by the colour they hold.")
        task = c.task.value  # one the model lacks (another model chosen since) is refused by segment()
        self.start(layer, planes, plan, None if task == AUTO_TASK else task, colours_only=colours_only,
                   intensity_range=ranged, object_diameter=diameter)

    def not_segmented(self, error) -> None:
        notify_error(f"Cannot segment: {error}")
        self.dock.controls.set_status(f"Not segmented: {error}")
        self.forget_missing_model()

    def plan_session(self) -> Plan:
        """The session for the chosen model and device: the one in use, or one to load in the worker. Raises with
        a user message when another model may not replace the one in use (learned tasks in no file)."""
        from ..model_files import shipped_models

        state, c = self.dock.state, self.dock.controls
        key = c.chosen_key()
        model, path = key
        device = c.device.value
        if state.session is not None and state.model_key == key:
            return Plan(key, device, session=state.session)
        state.check_switch()
        if model == CUSTOM_MODEL:
            if not path or path in (".", ""):
                raise ValueError("Choose a model file first (Model file).")
            load = ("checkpoint", path)
        elif model in shipped_models():
            load = ("pretrained", model)
        else:  # a saved model, listed by its path
            if not Path(model).is_file():
                raise ValueError(f"Model file {model} does not exist.")
            load = ("checkpoint", model)
        old = state.session
        return Plan(key, device, load=load, old_tasks=len(old.tasks) if old is not None else 0,
                    held=state.tasks_file(old))

    def intensity_range(self, layer) -> tuple[float, float] | None:
        """The intensity range chosen for ``layer``: None (automatic), or its contrast limits as displayed now."""
        from ..preprocessing import check_intensity_range

        if self.dock.controls.intensity.value != DISPLAYED_RANGE:
            return None
        low, high = (float(v) for v in layer.contrast_limits)
        if not high > low:
            raise ValueError(f"the contrast limits of '{layer.name}' have no width ({low:g} to {high:g}): nothing "
                             "could be told apart. Widen them in the layer controls (contrast limits), or choose "
                             "Intensity range: automatic.")
        return check_intensity_range((low, high))

    def raw_corrections(self, layer, planes) -> dict:
        """``{slice index: (clicks, (painted, epochs))}`` for each of ``planes`` that has any, copied for a worker:
        the clicks of ``layer`` (in 'clicks', or kept for it in 'clicks [name]') inside the image, as ``(points (N,
        2), classes, actions)``, and the slice's painted map with its epochs; ``None`` for what a slice lacks.
        Classes and actions are checked in the worker, once the model is known."""
        d = self.dock
        ndim = len(spatial_shape(layer))
        clicks = d.layers.find(CLICKS)
        if clicks is None or clicks.ndim != ndim or not same_source(clicks, layer):
            clicks = d.layers.kept_clicks(layer, ndim)
        out = {}
        if clicks is not None and len(clicks.data) and "class" in clicks.features:
            data = np.asarray(clicks.data, float)
            classes = clicks.features["class"].to_numpy().astype(int)
            actions = actions_of(clicks)
            h, w = spatial_shape(layer)[-2:]
            lead = np.round(data[:, :-2]).astype(int)
            y, x = data[:, -2], data[:, -1]
            inside = (y > -0.5) & (y < h - 0.5) & (x > -0.5) & (x < w - 0.5)
            for idx in planes:
                on = inside & (lead == np.asarray(idx, int)).all(1)
                if on.any():
                    out[tuple(idx)] = ((data[on, -2:], classes[on], actions[on]), (None, None))
        source, ledger = source_id(layer), d.state.ledger
        for idx in planes:
            painted = ledger.painted.get((source, tuple(idx)))
            if painted is not None and (painted >= 0).any():
                epochs = ledger.epochs_map((source, tuple(idx)), painted.shape).copy()
                out[tuple(idx)] = (out.get(tuple(idx), (None, None))[0], (painted.copy(), epochs))
        return out

    def start(self, layer, planes, plan: Plan, task: int | None = None, colours_only: bool = False,
              intensity_range=None, object_diameter: float | None = None) -> None:
        d = self.dock
        runner, c = d.runner, d.controls
        data = pixels(layer)
        if colours_only:  # RGBA with transparency: the colours (segment() refuses an alpha that is not constant)
            data = data[..., :3]
        n = len(planes)
        # each slice of a run over several gets its own clicks and painted edits, as when it is segmented alone
        raw = self.raw_corrections(layer, planes) if n > 1 else {}
        samples, plane_shape = int(c.samples.value), spatial_shape(layer)[-2:]

        def tiles(done, total):  # in the worker, after each tile of a large image: Cancel stops at the next one
            if runner.cancel_requested:
                raise Cancelled()
            runner.step = (done, total)

        def work():
            try:
                session = plan.session
                if session is None:
                    runner.note_thread("load")
                    session = load_session(plan)
                    warm_up()
                    yield ("session", session)
                from ..session import resolve_device

                if session.device != resolve_device(plan.device):  # the same session, its tasks, image and clicks
                    session.to(plan.device)
                session.n_samples = samples
                session.object_scale(object_diameter, plane_shape)
            except Exception as e:
                raise NotStarted(str(e)) from e
            for i, idx in enumerate(planes):
                runner.note_thread("segment")
                runner.step = (0, 0)
                for kind, result in session.segment_steps(np.asarray(data[idx] if idx else data), task=task,
                                                          progress=tiles, intensity_range=intensity_range,
                                                          object_diameter=object_diameter):
                    if kind == "labels" and n == 1:  # shown at once; the maps and the objects follow
                        yield ("labels", i, idx, result.copy())
                clicks, (painted, epochs) = raw.get(tuple(idx), (None, (None, None)))
                inter = session.interaction
                objects = inter.mode == "object"  # region clicks: add / remove only
                pts, labs, acts = (np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, object)) if clicks is None \
                    else clicks
                keep = (labs >= 0) & (labs < session.n_classes) & (objects | (acts == AUTO))
                if painted is not None and (painted.shape != result.labels.shape or
                                            int(painted.max()) >= session.n_classes):
                    painted = None
                corrected = bool(keep.any()) or painted is not None
                if corrected:  # as the slice's own clicks apply (one that cannot apply leaves the others), with its
                    # strokes between them in the order they were made; a slice of a stack with its own clicks and
                    # edits (object clicks edit the objects, so they are made first): the propagated segmentation
                    # and its objects at once
                    apply_clicks(inter, pts[keep], labs[keep].tolist(), acts[keep].tolist() if objects else None,
                                 painted, epochs)
                    yield ("plane", i, idx, dataclasses.replace(result, labels=session.labels.copy(),
                                                                instances=session.instances.copy()), True)
                    continue
                # the segmentation first, as clicks will show it (in object mode, before any click, the network's
                # labels: asking the session for them would make the objects), then its objects
                labels = result.labels if inter.mode == "object" else session.labels
                yield ("plane", i, idx, dataclasses.replace(result, labels=labels.copy(), instances=None,
                                                            make_instances=objects_made_in_the_worker), False)
                yield ("objects", i, idx, session.instances.copy())

        runner.start("segment", work, on_item=lambda item: self.on_item(layer, n, plan, item),
                     on_error=self.on_error, on_done=self.on_finished, poll=self.show_tiles if n == 1 else None)
        d.state.run = run = RunRecord(layer, n, d.state.generation)
        # the layers are made while the worker segments; a model to load first: once it is loaded (loading imports
        # torch and pandas, which would slow the GUI thread's work or be imported on it)
        self.make_layers_ahead = lambda session: d.layers.make_ahead(layer, session.n_classes,
                                                                     lambda: d.state.run is run and not run.shown)
        if plan.session is not None:
            self.make_layers_ahead(plan.session)
        c.show_busy(n if n > 1 else 0)  # 0 = busy indicator for a single plane, until it has tiles
        model = plan.session.model_name if plan.session is not None else Path(plan.key[0]).stem
        where = plan.session.device if plan.session is not None else plan.device
        on = f" on {where}" if str(where) != "auto" else ""
        c.set_status(f"Segmenting '{layer.name}' with the {model} model{on}…")

    def show_tiles(self) -> None:
        done, total = self.dock.runner.step
        if total > 1 and not self.dock.destroyed:
            self.dock.controls.progress.max = total + 1
            self.dock.controls.progress.value = done
            self.dock.controls.show_progress()

    # -- results, on the GUI thread ------------------------------------------------------------------------------
    def on_item(self, layer, n, plan: Plan, item) -> None:
        if item[0] == "session":
            self.took_session(item[1], plan)
        elif item[0] == "labels":
            self.on_labels(layer, n, *item[1:])
        elif item[0] == "plane":
            self.on_plane(layer, n, *item[1:])
        else:
            self.on_objects(layer, n, *item[1:])

    def took_session(self, session, plan: Plan) -> None:
        from napari.utils.notifications import show_info

        if self.dock.state.session is not None:  # the model replaced may now be freed
            release()
        self.dock.state.use_session(session, plan.key)
        self.make_layers_ahead(session)
        if plan.old_tasks and plan.held is not None:
            show_info(f"Switched to {session.model_name}. The {plan.old_tasks} task(s) learned before are saved "
                      f"in {plan.held}; choose it in Model to go on with them.")

    def on_labels(self, layer, n, i, idx, labels) -> None:
        """A single image's segmentation, written as soon as it exists (``ClisSession.segment_steps``): its maps and
        objects follow in :meth:`on_plane`, which writes the rest (and not the segmentation again)."""
        key, painted = self.take_edits(layer, n, i, idx, labels.shape)
        d = self.dock
        run = d.state.run
        written = d.layers.write_segmentation(layer, idx, labels, painted, late=bool(run is not None and run.shown))
        d.state.ledger.wrote(key, written, d.state.session.n_classes)
        self.labels_shown = (run, i)
        d.controls.set_status(f"{self.segmented_words(layer, n, i, idx)}; {FINDING_OBJECTS}")

    def take_edits(self, layer, n, i, idx, shape, prepare: bool = True) -> tuple:
        """Before a slice's segmentation is written: the edits on it not taken yet become annotations, the layers
        are made (first slice, ``prepare``); returns its key and its painted edits (None: none)."""
        d = self.dock
        ledger = d.state.ledger
        key = (source_id(layer), tuple(idx))
        seg = d.layers.find(SEGMENTATION)
        if seg is not None and seg.metadata.get("source_id") == key[0] and key in ledger.written:
            d.corrections.absorb(key, idx)  # edits not taken yet (made while no dock watched: it was reopened)
        if i == 0 and prepare:  # only now: a run that fails before its first result leaves the layers as they were
            d.layers.prepare(layer)
            if n > 1:  # the segmentation chosen while the other slices come (the last one chooses the clicks)
                d.layers.select(d.layers.find(SEGMENTATION))
        # the slice's painted edits are annotations: a new segmentation of it keeps them, as it keeps the clicks
        painted = ledger.painted.get(key)
        return key, (painted if painted is not None and painted.shape == shape else None)

    def on_plane(self, layer, n, i, idx, result, with_objects: bool) -> None:
        """One slice's segmentation, written as it comes; its objects with it (``with_objects``) or after it."""
        d = self.dock
        state, c = d.state, d.controls
        ledger, session, run = state.ledger, state.session, state.run
        early = self.labels_shown  # its labels written already, the layers made for them
        shown = early is not None and early[0] is run and early[1] == i
        key, painted = self.take_edits(layer, n, i, idx, result.labels.shape, prepare=not shown)
        instances = result.instances if with_objects else None  # else: none shown until they come
        written = d.layers.write_plane(layer, idx, result, painted, instances,
                                       late=bool(run is not None and run.shown), shown=shown)
        ledger.wrote(key, written, session.n_classes)
        state.target = Target(layer, tuple(idx))
        state.written_base = result.labels.copy()
        ledger.new_segmentation()
        if run is not None:
            run.shown, run.last = i + 1, result
        d.corrections.objects_pending = not with_objects
        if with_objects:
            self.objects_shown(layer, n, i, idx, result, instances)
            return
        d.layers.show_suggestions(None, None, 0)  # the earlier segmentation's rings go with it; its own follow
        if i == n - 1:  # the slice to correct: its clicks layer now, so that a click made while the objects are
            # found lands on this image's layer; it waits there (propagate) and is applied once they are found
            d.corrections.prepare_click_layers(layer)
            self.clicks_for = run
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: d.layers.raise_above(layer))
        c.set_status(f"{self.segmented_words(layer, n, i, idx)}; {FINDING_OBJECTS}"
                     + (task_choice_text(session) if n == 1 else "") + familiarity_text(result.familiarity))

    def segmented_words(self, layer, n, i, idx) -> str:
        """How a slice's status begins: "Segmented …" (which slice, and a Cancel that came too late)."""
        if n > 1:
            return f"Segmented {i + 1}/{n} slice(s) of '{layer.name}'"
        where = f"slice {idx[0] if len(idx) == 1 else tuple(int(i) for i in idx)} of " if idx else ""
        late = "Segmenting had finished when Cancel was pressed. " if self.dock.runner.cancel_requested else ""
        return f"{late}Segmented {where}'{layer.name}'"

    def on_objects(self, layer, n, i, idx, instances) -> None:
        """The objects of the slice whose segmentation was written last."""
        d = self.dock
        run = d.state.run
        result = run.last if run is not None else None
        if result is None or run.shown != i + 1:  # (not expected: the items come in order)
            return
        d.layers.write_objects(layer, idx, instances)
        d.corrections.objects_pending = False
        self.objects_shown(layer, n, i, idx, result, instances)

    def objects_shown(self, layer, n, i, idx, result, instances) -> None:
        """A slice is done, objects included: the status, the progress, and after the last the clicks."""
        d = self.dock
        state, c = d.state, d.controls
        session, run = state.session, state.run
        if run is not None:
            run.done = i + 1
        if i == n - 1:
            self.finish_run(layer, run)
        if n > 1:  # a single slice keeps the busy indicator until the run ends (setting a bar repaints the window)
            c.progress.max = n
            c.progress.value = i + 1
        if result.familiarity is not None and result.familiarity.unfamiliar:
            note = ""  # the familiarity line says what to do first: the rings may miss what the model missed
        elif session.n_samples == 0:
            note = " Uncertainty samples is 0: no uncertainty map and no suggestions."
        elif c.suggest.value:
            note = " Check the yellow rings first: the model is least sure there."
        else:
            note = " 'Show uncertainty' shows where the model is unsure."
        size = c.object_size.value
        off = object_size_mismatch(size, instances) if n == 1 else None
        if off is not None:  # an Object size far from the objects': the image was resized by a wrong factor
            note = (f" The objects found are about {off:.0f} px across, not the {size:g} px of Object size: if they "
                    "look wrong, set it to their width (0: the image as it is) and Segment again." + note)
        found = "." if n > 1 else f": {object_count_text(session, instances)}.{note}"
        c.set_status(f"{self.segmented_words(layer, n, i, idx)}{found}"
                     + (task_choice_text(session) if n == 1 else "")  # a stack: tasks per slice
                     + familiarity_text(result.familiarity))
        fam, detail = result.familiarity, task_choice_detail(session) if n == 1 else ""
        c.status.tooltip = (fam.message + "\n\n" if fam is not None else "") + (detail + "\n\n" if detail else "") \
            + tips.UNCERTAINTY_LAYER

    def finish_run(self, layer, run=None) -> None:
        """The slice segmented last is the one to correct: click layers (unless made for this run as its
        segmentation came), the clicks and edits, the task panel."""
        d = self.dock
        if run is None or self.clicks_for is not run or d.layers.find(CLICKS) is None:
            d.corrections.prepare_click_layers(layer)
        self.clicks_for = None
        d.corrections.shown_notes = []  # a new run: its notes are news
        d.corrections.propagate()  # the clicks made meanwhile, the suggestions (and objects not made: Cancel)
        d.learn_panel.show_tasks()
        from qtpy.QtCore import QTimer

        # after this callback returns: moving layers inside it crashed Mesa's OpenGL under Xvfb
        QTimer.singleShot(0, lambda: d.layers.raise_above(layer))

    def on_error(self, error: Exception) -> None:
        if isinstance(error, Cancelled):  # Cancel between two tiles: on_finished says so
            return
        if isinstance(error, NotStarted):
            self.not_segmented(error)
            return
        notify_error(f"Segmentation failed: {error}")
        self.dock.controls.set_status(f"Failed: {error}")

    def on_finished(self) -> None:
        d = self.dock
        state, c = d.state, d.controls
        run, state.run = state.run, None
        if d.destroyed:
            return
        if run is not None and not run.shown:  # nothing written: no empty layers left behind
            d.layers.drop_ahead()
        d.layers.show_objects()  # hidden while its objects were found: back as the user had it
        c.progress.visible = False
        if not d.alive:
            return
        c.show_idle()
        if run is None or not state.is_current(run.generation) or run.done >= run.n:
            return
        cancelled = d.runner.cancel_requested  # cancelled, or failed on a later slice
        session, last = state.session, run.last  # a copy of the session's result: it shares the maps
        if run.finding_objects and not cancelled:  # finding a shown slice's objects failed (on_error said so):
            state.target = None  # no clicks of it, whose propagation would fail again
        elif run.shown and session is not None and session.result is not None and last is not None and \
                session.result.probabilities is last.probabilities:
            # the slice shown last is the one to correct; objects it lacks (Cancel as they were about to be found)
            # are made by its propagation (Corrections.objects_pending)
            self.finish_run(run.layer, run)
        elif run.shown:  # the session went on to a slice that was not shown: segment again to correct
            state.target = None
        if cancelled and not run.shown:
            c.set_status(f"Cancelled: '{run.layer.name}' was not segmented; the layers are as they were.")
        elif cancelled and run.n > 1:
            c.set_status(f"Cancelled: {run.shown} of {run.n} slice(s) of '{run.layer.name}' segmented."
                         + (" Press Segment to correct one." if state.target is None else ""))

    def forget_missing_model(self) -> None:
        """A saved model chosen in the list whose file was deleted since the list was made: it leaves the list, and
        the list shows the model in use again."""
        from ..model_files import shipped_models

        d = self.dock
        value = d.controls.model.value
        if value == CUSTOM_MODEL or value in shipped_models() or Path(value).is_file():
            return
        d.reset_models()
        key = d.state.model_key
        if key is not None and key[0] in [v for _, v in d.model_list()]:
            d.controls.choose_model(key)
            d.learn_panel.show_tasks()
