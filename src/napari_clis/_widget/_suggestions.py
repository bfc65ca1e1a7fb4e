"""Suggestions, the yellow rings where the model is least sure, and the session's part of a propagation: both run
in the propagation worker; the GUI thread only draws what they give (the rings only when they change)."""

from __future__ import annotations

import numpy as np

from ._click_actions import AUTO, apply_clicks
from ._common import notify_error, object_reach, ring_size


class SuggestionsMixin:
    """The suggestions of :class:`~._corrections.Corrections` (its ``dock``, ``state``)."""

    def wants_suggestions(self) -> bool:
        """Suggestions asked for ('Suggest where to click'), and a map to rank by (MC samples)."""
        session = self.state.session
        return bool(self.dock.controls.suggest.value) and self.state.target is not None and session is not None \
            and session.interaction is not None and session.result is not None and \
            bool(session.result.uncertainty.any())  # no map (0 samples): no ranking

    def update_suggestions(self) -> None:
        """'Suggest where to click' ticked or not: the rings computed in the propagation lane, or taken away."""
        if not self.wants_suggestions():
            self.show_suggestions(None)
            return
        runner, session = self.dock.runner, self.state.session
        if runner.side is not None:  # a propagation runs: it computes them again when it is done
            runner.side_pending = True
            return

        def work():
            runner.note_thread("suggest")
            return suggestions(session)

        runner.start_side(work, self.show_suggestions, lambda e: notify_error(f"No suggestions: {e}"),
                          self.propagate)

    def show_suggestions(self, found) -> None:
        if found is None or self.state.target is None:
            self.dock.layers.show_suggestions(None, None, 0)
            return
        (yx, size), (layer, idx) = found, self.state.target
        pts = np.concatenate([np.tile(np.asarray(idx, float), (len(yx), 1)), yx], 1) if idx else yx
        self.dock.layers.show_suggestions(pts, layer, size)


def suggestions(session):
    """``(points (n, 2), ring sizes)``: the places to review first. With object clicks, whole objects (the most
    uncertain), each ringed at its size; else regions (a ring of about a superpixel). In a worker."""
    inter = session.interaction
    if inter.mode != "object":
        return inter.suggest(16).astype(float), max(6.0, 1.2 * session.superpixel_size)
    from scipy import ndimage

    found = inter.suggest_objects(None)  # a quarter of the objects, 3 to 16
    yx = np.array([(y, x) for y, x, _, _ in found], float).reshape(-1, 2)
    boxes, diameter = ndimage.find_objects(inter.instances), inter.objects.diameter
    sizes = []
    for y, x, _, ident in found:  # a ring around the whole object (a possible missed one: a typical object)
        box = boxes[ident - 1] if 0 < ident <= len(boxes) else None
        reach = diameter / 2 if box is None else object_reach(inter.instances, ident, y, x, box)
        reach = min(reach, diameter)  # a long or large object: a ring of two typical objects, not a target over it
        sizes.append(ring_size(reach))  # a circle just outside the object: the object and its neighbours show
    return yx, np.array(sizes, float)


def plan_clicks(inter, inputs):
    """``(points, classes, actions, rows, said)``: the clicks the session is to get (region clicks: add / remove
    only), and what the status says of the others."""
    pts, labs, acts, rows = inputs.points, inputs.classes, inputs.actions, inputs.rows
    said = []
    if inter.mode != "object" and (acts != AUTO).any():  # region clicks: add / remove only
        said.append(f"{int((acts != AUTO).sum())} split / merge click(s) ignored: this model's clicks label regions")
        keep = np.flatnonzero(acts == AUTO)
        pts, labs, acts, rows = pts[keep], labs[keep], acts[keep], rows[keep]
    return pts, labs, acts, rows, said


def run_plan(inter, plan, painted, epochs=None):
    """The session's part of a propagation (in the worker): the painted map (each pixel after ``epochs`` of the
    clicks) and the clicks; returns the clicks applied and those refused (:func:`~._click_actions.apply_clicks`)."""
    pts, labs, acts, _, _ = plan
    return apply_clicks(inter, pts, labs, acts if inter.mode == "object" else None, painted, epochs)
