"""The "Click does" choice of the dock: what a new click on the 'clicks' layer does to the object it touches.

Object clicks (the nuclei model, :attr:`~napari_clis.ClisSession.click_mode` ``"object"``) add or remove whole
objects by the click's class, and also **split** an object in two (two nuclei found as one) or **merge** two
(one nucleus found in two pieces). The choice is sticky, as the click class is: Shift-D split (divide), Shift-M
merge, the same key again add / remove. Each point keeps its action in the Points layer's ``features["action"]``
(drawn as its symbol), so deleting or moving a point replays the others as they were made. How the points become
the session's clicks: :func:`apply_clicks` (no Qt).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .. import _tooltips as tips
from ..interactive import renumber_epochs
from ..objects import InteractionError

AUTO, SPLIT, MERGE = "auto", "split", "merge"
CHOICES = [("add / remove (by class)", AUTO), ("split an object", SPLIT), ("merge two objects", MERGE)]
KEYS = {SPLIT: "Shift-D", MERGE: "Shift-M"}  # each again: add / remove (napari's Shift-A selects all points)
SYMBOLS = {AUTO: "disc", SPLIT: "cross", MERGE: "diamond"}  # how a point shows its action
WORDS = {AUTO: "click", SPLIT: "split", MERGE: "merge"}
REFUSED_BORDER = "#ff1744"  # the border of a click that does not apply (the status says why)


def rgba(colour: str) -> np.ndarray:
    """``"#rrggbb"`` as RGBA floats."""
    return np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0])


def actions_of(clicks) -> np.ndarray:
    """Each point's action (a string array): the layer's ``features["action"]``, ``"auto"`` where it has none (a
    layer made before actions existed, or kept from an earlier image)."""
    n = len(clicks.data)
    if "action" not in clicks.features:
        return np.full(n, AUTO, dtype=object)
    acts = clicks.features["action"].to_numpy()
    return np.array([a if a in SYMBOLS else AUTO for a in acts], dtype=object)


def toggle(dock, action: str) -> None:
    """A key: ``action`` for the next clicks, or add / remove again when it is the action already."""
    dock.set_click_action(AUTO if dock.click_action == action else action)


# napari actions (``_keys.register``): listed, and changeable, in napari's Preferences > Shortcuts
SHORTCUTS = {
    "split_clicks": ("Clicks split objects, or add / remove again (napari-clis)", KEYS[SPLIT],
                     lambda dock: toggle(dock, SPLIT)),
    "merge_clicks": ("Clicks merge objects, or add / remove again (napari-clis)", KEYS[MERGE],
                     lambda dock: toggle(dock, MERGE)),
}


def add_control(dock, dock_of):
    """Make the "Click does" choice, put it under the click class, register its keys; returns it.
    ``dock_of(viewer)``: the viewer's live dock (for the keys)."""
    from magicgui.widgets import ComboBox

    from ._keys import register

    c = dock.controls
    combo = ComboBox(label="Click does", choices=CHOICES, value=AUTO, tooltip=tips.CLICK_ACTION)
    dock.insert(dock.index(c.click_class) + 1, combo)
    combo.changed.connect(dock.corrections.on_action_changed)
    register(dock_of, SHORTCUTS)
    return combo


def set_available(combo, object_mode: bool) -> None:
    """Split and merge only where clicks act on objects; elsewhere the choice is add / remove, greyed out."""
    if not object_mode and combo.value != AUTO:
        combo.value = AUTO
    combo.enabled = object_mode


class Inputs(NamedTuple):
    """What the layers hold for the slice being corrected: clicks (their rows in the 'clicks' layer) and paint."""

    points: np.ndarray  # (N, 2) y, x
    classes: np.ndarray  # (N,) int
    actions: np.ndarray  # (N,) "auto" / "split" / "merge"
    rows: np.ndarray  # (N,) the points' indices in the layer
    painted: np.ndarray | None
    notes: list
    epochs: np.ndarray | None = None  # per painted pixel: how many of these clicks were made before it


def plane_clicks(data, classes, idx, hw, n_classes):
    """Masks over the points of a 'clicks' layer (``data`` (N, D), ``classes`` (N,)): on the slice ``idx``, inside
    the image's ``hw`` (height, width), of one of the model's classes."""
    lead = np.round(data[:, : len(idx)]).astype(int)
    on_plane = (lead == np.asarray(idx, int)).all(1)
    (h, w), y, x = hw, data[:, -2], data[:, -1]
    inside = (y > -0.5) & (y < h - 0.5) & (x > -0.5) & (x < w - 0.5)
    return on_plane, inside, (classes >= 0) & (classes < n_classes)


def click_keys(inputs: Inputs) -> list[tuple]:
    """Each click as (y, x, class, action), pixels rounded: what tells a new click from one applied before."""
    yx = np.round(inputs.points).astype(int)
    return [(int(y), int(x), int(c), str(a)) for (y, x), c, a in zip(yx, inputs.classes, inputs.actions)]


def apply_clicks(inter, points, classes, actions, painted=None, epochs=None) -> tuple[list[int], dict[int, str]]:
    """Give the session's interaction the clicks (``actions`` None: region clicks) and the painted map (``None``:
    the one it has), each painted pixel after ``epochs`` of these clicks (``None``: after all of them). Returns the
    clicks applied (positions in the lists) and why each other one was refused. All at once when they apply; else
    one by one (each costs one click's work: the session replays from the longest prefix it shares), so that one
    click that cannot apply leaves the others applied; the strokes stay after the same clicks of those applied."""
    n = len(classes)

    def paint(kept):  # before the clicks: a new click may act on a new stroke (split a painted blob)
        if painted is not None:
            after = len(kept) if epochs is None else renumber_epochs(epochs, sorted(set(range(n)) - set(kept)))
            if not same_painted(inter, painted, after):
                inter.set_painted(painted, after_clicks=after)

    try:
        paint(range(n))
        inter.set_clicks(points, list(classes), None if actions is None else list(actions))
        return list(range(n)), {}
    except InteractionError:
        pass
    accepted, refused = [], {}
    for i in range(n):
        trial = accepted + [i]
        try:
            paint(trial)
            inter.set_clicks(points[trial], [classes[j] for j in trial],
                             None if actions is None else [actions[j] for j in trial])
            accepted = trial
        except InteractionError as e:
            refused[i] = re.sub(r"^click \d+ at \([^)]*\): ", "", str(e))
    paint(accepted)
    return accepted, refused


def same_painted(inter, painted, epochs=None) -> bool:
    """Whether the interaction holds ``painted`` already (it keeps None for a map with nothing painted), with the
    epochs ``epochs`` where painted (``None``: any)."""
    current = inter.painted
    if current is None:
        return not (painted >= 0).any()
    if current.shape != painted.shape or not np.array_equal(current, painted):
        return False
    on = painted >= 0
    return epochs is None or np.array_equal(inter.paint_epochs[on], np.broadcast_to(epochs, on.shape)[on])
