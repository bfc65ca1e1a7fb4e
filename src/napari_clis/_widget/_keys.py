"""The dock's keyboard shortcuts, as napari actions: listed, and changeable, in napari's Preferences > Shortcuts
("Viewer key bindings"), like napari's own.

Each is registered with napari's action manager under ``napari-clis:<name>`` with the viewer as its key map
provider (so it works wherever the viewer's own keys do: the canvas and the layer list), and its default key is
bound unless the user's settings already hold a binding for it (napari binds those itself when a viewer opens, and
stores what the user changes in the preferences). The action finds the dock of the viewer it is pressed in; on a
viewer without one it says how to open it. npe2 manifests cannot declare keys napari binds (napari registers a
manifest's commands with no key bindings), hence the action manager.
"""

from __future__ import annotations

from typing import Callable

PREFIX = "napari-clis"

# name: (what the preferences list shows, default key, what the dock does)
ACTIONS: dict[str, tuple[str, str, Callable]] = {
    "segment": ("Segment the chosen image (napari-clis)", "Shift-S", lambda dock: dock.run()),
    "learn": ("Learn from the corrected image (napari-clis)", "Shift-L", lambda dock: dock.learn()),
    "toggle_uncertainty": ("Show or hide the uncertainty map (napari-clis)", "Shift-U",
                           lambda dock: dock.toggle_uncertainty()),
    "next_click_class": ("Next click class (napari-clis)", "Shift-C", lambda dock: dock.next_click_class()),
    "background_click_class": ("Click class: background (napari-clis)", "Shift-B",
                               lambda dock: dock.set_click_class(0)),
    "object_click_class": ("Click class: the first object class (napari-clis)", "Shift-F",
                           lambda dock: dock.set_click_class(1)),
}


def action_name(name: str) -> str:
    return f"{PREFIX}:{name}"


def register(dock_of: Callable, actions: dict | None = None) -> None:
    """Register ``actions`` (default :data:`ACTIONS`) with napari's action manager and bind their default keys;
    ``dock_of(viewer)`` gives the viewer's live dock (or None). Called whenever a dock opens: registering again
    replaces the action, and a key already bound (or unbound by the user) is left as it is."""
    from napari.components import ViewerModel
    from napari.settings import get_settings
    from napari.utils.action_manager import action_manager

    saved = get_settings().shortcuts.shortcuts  # what the user set in the preferences, napari binds itself
    for name, (description, key, do) in (ACTIONS if actions is None else actions).items():
        full = action_name(name)
        action_manager.register_action(full, _command(dock_of, do), description, ViewerModel)
        if full not in saved:
            action_manager.bind_shortcut(full, key)


def _command(dock_of: Callable, do: Callable) -> Callable:
    from napari.viewer import Viewer

    def command(viewer: Viewer) -> None:
        dock = dock_of(viewer)
        if dock is None:
            from napari.utils.notifications import show_info

            show_info("Open the napari-clis panel first: Plugins > CLIS interactive segmentation > Segment (CLIS).")
            return
        do(dock)

    return command
