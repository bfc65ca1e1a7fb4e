"""The dock's Points layers: the user's clicks (their class as a colour, their action as a symbol) and the
suggestion rings. A part of :class:`~._layers.Layers`, which finds, stacks and geometry-follows them with the maps."""

from __future__ import annotations

import numpy as np

from ._common import (
    BACKGROUND_CLICK_COLOUR,
    CLICK_STYLE,
    CLICKS,
    LAYER_TAG,
    SEGMENTATION,
    SUGGESTION_STYLE,
    SUGGESTIONS,
    copy_geometry,
    same_source,
    source_id,
    spatial_shape,
)


class PointLayers:
    """The clicks and suggestions layers of :class:`~._layers.Layers` (it gives ``viewer``, ``dock``, ``find``
    and ``raise_above``)."""

    def kept_clicks(self, image_layer, ndim: int):
        """The clicks kept for ``image_layer`` when the layers moved on to another image (``clicks [name]``)."""
        from napari.layers import Points

        for lyr in reversed(list(self.viewer.layers)):  # the latest kept copy first
            if isinstance(lyr, Points) and lyr.metadata.get(LAYER_TAG) is None and lyr.ndim == ndim and \
                    "class" in lyr.features and same_source(lyr, image_layer) and lyr.name.startswith(CLICKS):
                return lyr
        return None

    def class_colour(self, label: int):
        if label == 0:
            return BACKGROUND_CLICK_COLOUR
        seg = self.find(SEGMENTATION)
        return tuple(seg.get_color(label)) if seg is not None else "cyan"

    def recolour_clicks(self, clicks, refused=()) -> None:
        """Draw each click as it is: its class as its colour, its action as its symbol (a cross splits, a diamond
        merges), and a red border where it does not apply (``refused``: indices of the layer's points)."""
        from ._click_actions import REFUSED_BORDER, SYMBOLS, actions_of, rgba

        n = len(clicks.data)
        if not n:
            return
        clicks.face_color = [self.class_colour(int(c)) for c in clicks.features["class"]]
        clicks.symbol = [SYMBOLS[a] for a in actions_of(clicks)]
        border = np.tile(rgba(CLICK_STYLE["border_color"]), (n, 1))
        if len(refused):
            border[list(refused)] = rgba(REFUSED_BORDER)
        clicks.border_color = border

    def set_click_defaults(self, clicks, **values) -> None:
        """What the next point gets (its ``class``, its ``action``), the other columns as they were; drawn so."""
        from ._click_actions import AUTO, SYMBOLS

        defaults = {name: clicks.feature_defaults[name][0] for name in clicks.features.columns}
        defaults.update(values)
        clicks.feature_defaults = defaults
        with clicks.events.current_face_color.blocker():
            clicks.current_face_color = self.class_colour(int(defaults["class"]))
        with clicks.events.current_symbol.blocker():
            clicks.current_symbol = SYMBOLS.get(defaults.get("action", AUTO), SYMBOLS[AUTO])

    def set_click_features(self, clicks, rows, **columns) -> None:
        """Give the points ``rows`` new values of some feature columns (the others kept), and draw them."""
        features, defaults = clicks.features.copy(), clicks.feature_defaults.copy()
        for name, value in columns.items():
            column = features[name].to_numpy().copy()
            column[list(rows)] = value
            features[name] = column
        clicks.features = features
        clicks.feature_defaults = defaults  # napari resets them with the features: the next click's stay
        self.recolour_clicks(clicks)

    def keep_clicks(self, clicks, keep) -> None:
        """Keep only the points ``keep`` (indices), with all their features; the layer announces no data change
        (the caller applies the clicks once)."""
        keep = np.asarray(list(keep), int)
        features, defaults = clicks.features.iloc[keep].reset_index(drop=True), clicks.feature_defaults.copy()
        with clicks.events.data.blocker(), clicks.events.features.blocker():
            clicks.selected_data = set()
            clicks.data = np.asarray(clicks.data)[keep] if len(keep) else np.zeros((0, clicks.ndim))
            clicks.features = features
            clicks.feature_defaults = defaults  # napari resets them with the features: the next click's stay
        self.recolour_clicks(clicks)

    def prepare_clicks(self, image_layer, click_class: int, action: str = "auto"):
        """Create (or adopt) the 'clicks' Points layer for the image (features ``class`` and ``action`` per
        point); returns it."""
        from ._click_actions import actions_of

        session = self.dock.state.session
        ndim = len(spatial_shape(image_layer))
        clicks = self.find(CLICKS)
        if clicks is not None and (clicks.ndim != ndim or not same_source(clicks, image_layer)):
            self.viewer.layers.remove(clicks)
            clicks = None
        if clicks is None:
            size = max(4.0, 0.6 * session.superpixel_size)
            kept = self.kept_clicks(image_layer, ndim)
            data, classes, actions = (np.zeros((0, ndim)), np.zeros(0, int), np.zeros(0, object)) if kept is None \
                else (np.array(kept.data, copy=True), np.asarray(kept.features["class"], int).copy(), actions_of(kept))
            clicks = self.viewer.add_points(data, name=CLICKS, ndim=ndim, size=size,
                                            features={"class": classes, "action": actions}, **CLICK_STYLE)
            clicks.metadata[LAYER_TAG] = CLICKS
            if kept is not None:  # the image is back: its clicks are the clicks again, as its painted edits are
                from napari.utils.notifications import show_info

                show_info(f"The {len(data)} click(s) kept in '{kept.name}' are back in '{CLICKS}' for "
                          f"'{image_layer.name}'.")
                self.viewer.layers.remove(kept)
        elif "action" not in clicks.features:  # a layer made before clicks had actions: each was add / remove
            features = clicks.features.copy()
            features["action"] = actions_of(clicks)
            with clicks.events.features.blocker():
                clicks.features = features
        clicks.metadata["source"] = image_layer.name
        clicks.metadata["source_id"] = source_id(image_layer)
        copy_geometry(clicks, image_layer)
        clicks.selected_data = set()
        self.set_click_defaults(clicks, **{"class": click_class, "action": action})
        self.recolour_clicks(clicks)
        return clicks

    def show_suggestions(self, points, image_layer, size) -> None:
        """The ``suggestions`` rings at ``points`` (in the image's data coordinates; none: an empty layer), of
        ``size`` (one for all, or one per ring: around a whole object)."""
        sugg = self.find(SUGGESTIONS)
        if points is None:
            if sugg is not None and len(sugg.data):
                sugg.data = np.zeros((0, sugg.ndim))
            return
        if sugg is None or sugg.ndim != points.shape[1]:
            if sugg is not None:
                self.viewer.layers.remove(sugg)
            sugg = self.viewer.add_points(points, name=SUGGESTIONS, ndim=points.shape[1], size=size,
                                          **SUGGESTION_STYLE)
            sugg.metadata[LAYER_TAG] = SUGGESTIONS
            sugg.editable = False
            clicks = self.find(CLICKS)
            if clicks is not None:  # keep the clicks layer on top and selected
                self.viewer.layers.selection.active = clicks
            copy_geometry(sugg, image_layer)
            from qtpy.QtCore import QTimer

            # the rings arrive from the worker after the layers were stacked: under the clicks again, once this
            # callback is over (moving layers inside one crashed Mesa's OpenGL under Xvfb)
            QTimer.singleShot(0, lambda: self.raise_above(image_layer))
        else:  # only what changed: each set redraws the layer on the GUI thread
            if not (np.shape(sugg.data) == np.shape(points) and np.array_equal(sugg.data, points)):
                sugg.data = points
            if not np.array_equal(np.broadcast_to(sugg.size, (len(points),)), np.broadcast_to(size, (len(points),))):
                sugg.size = size
            if not same_source(sugg, image_layer):  # rings of another image before: its geometry (else
                copy_geometry(sugg, image_layer)  # follow_geometry keeps it)
        sugg.metadata["source"] = image_layer.name
        sugg.metadata["source_id"] = source_id(image_layer)
