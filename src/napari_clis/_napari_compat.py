"""Every use of napari's and magicgui's private API in napari-clis, in one place.

Each function here names what it relies on; ``tests/test_napari_compat.py`` checks each still exists and works, so
a napari or magicgui release that changes one fails there, loudly, rather than somewhere in the widget. Nothing
else in the package may touch a private name of napari or magicgui (the test greps for it).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["unwrap", "LAB_COLOUR_WARNING", "quiet_lab_colour_warning", "in_worker", "clear_undo_history",
           "hook_undo_redo", "unhook_undo_redo", "native_undo_redo", "container_layout", "is_hooked", "camera",
           "worker_generator", "PRIVATE_NAMES"]

# (owner, name) of every private attribute used below: the test checks each is still there
PRIVATE_NAMES = (
    ("napari.utils._proxies.PublicOnlyProxy", "__wrapped__"),  # wrapt's proxy attribute
    ("napari.layers.Labels", "_reset_history"),
    ("napari.layers.Labels", "undo"),  # replaced on an instance (its __dict__): napari emits no event for it
    ("napari.layers.Labels", "redo"),
    ("magicgui.widgets.Container._widget", "_mgui_get_native_widget"),
)


# napari draws a Labels layer's random colours in CIE-LAB and silences scikit-image's warning about those outside sRGB
# inside a ``warnings.catch_warnings()`` on the GUI thread. Python's warning filters are one list for every thread,
# and a napari (superqt) worker runs under a ``catch_warnings`` of its own that puts "always" first and relays every
# warning as a notification: a layer made while a worker ran (Segment makes its layers while the model loads and
# the network runs) brought "Conversion from CIE-LAB, via XYZ to sRGB color space resulted in 20 negative Z values
# that have been clipped to zero" to the user. The filter goes in at import and again at the start of each worker
# (:func:`in_worker`), ahead of the worker's "always".
LAB_COLOUR_WARNING = "Conversion from CIE-LAB, via XYZ to sRGB color space resulted in"


def quiet_lab_colour_warning() -> None:
    """Put the filter that ignores napari's label-colour warning first (again)."""
    warnings.filterwarnings("ignore", message=LAB_COLOUR_WARNING, category=UserWarning)


quiet_lab_colour_warning()


def in_worker(function):
    """``function`` (plain or generator) as a napari worker should run it: napari's label-colour warning kept
    quiet while it runs (:data:`LAB_COLOUR_WARNING`)."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(*args, **kwargs):
            quiet_lab_colour_warning()
            return (yield from function(*args, **kwargs))
        return generator

    @functools.wraps(function)
    def plain(*args, **kwargs):
        quiet_lab_colour_warning()
        return function(*args, **kwargs)
    return plain


def unwrap(obj: Any) -> Any:
    """The object itself, not napari's ``PublicOnlyProxy`` of it: napari hands a plugin widget a new proxy of the
    viewer at each call, so identity (one widget per viewer), weak references and the layers' own methods need
    the object behind it. Anything else is returned as it is."""
    return getattr(obj, "__wrapped__", obj)


def clear_undo_history(labels_layer) -> None:
    """Empty a Labels layer's undo and redo history (napari keeps it when the data is replaced, so that undo
    would bring back strokes made on an earlier segmentation)."""
    unwrap(labels_layer)._reset_history()


def hook_undo_redo(labels_layer, callback, owner) -> None:
    """Call ``callback(layer, name)`` instead of the layer's ``undo`` and ``redo`` (``name`` is ``"undo"`` or
    ``"redo"``; the callback calls :func:`native_undo_redo` to restore the pixels). napari's undo and redo change
    the pixels and emit no event, so they are replaced on this one layer instance (napari's keybinding calls the
    instance's method). ``owner`` marks the replacement, for :func:`unhook_undo_redo`."""
    layer = unwrap(labels_layer)
    for name in ("undo", "redo"):
        def wrapper(name=name, layer=layer):
            callback(layer, name)

        wrapper.clis_owner = owner
        setattr(layer, name, wrapper)


def unhook_undo_redo(labels_layer, owner) -> None:
    """Give the layer its own ``undo`` and ``redo`` back, if ``owner`` replaced them."""
    layer = unwrap(labels_layer)
    for name in ("undo", "redo"):
        if getattr(layer.__dict__.get(name), "clis_owner", None) is owner:
            del layer.__dict__[name]


def is_hooked(labels_layer, owner) -> bool:
    return getattr(unwrap(labels_layer).__dict__.get("undo"), "clis_owner", None) is owner


def native_undo_redo(labels_layer, name: str) -> None:
    """napari's own undo or redo of the layer (the class's method, not a replacement on the instance)."""
    layer = unwrap(labels_layer)
    getattr(type(layer), name)(layer)


def container_layout(container):
    """The Qt layout of a magicgui ``Container`` (to put Qt widgets of our own, the plots, between its
    controls). The container's ``native`` is overridden by the dock (it returns the scroll area), so the inner
    widget is asked for through magicgui's backend."""
    return container._widget._mgui_get_native_widget().layout()


def camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` where napari has it (0.9 deprecates ``viewer.camera``), else
    ``viewer.camera`` (napari 0.8, the lowest release supported)."""
    viewer = unwrap(viewer)
    scene = getattr(viewer, "scene", None)
    found = getattr(scene, "camera", None) if scene is not None else None
    return found if found is not None else viewer.camera


def worker_generator(worker):
    """The generator a napari ``GeneratorWorker`` runs (its private ``_gen``, set per instance: a test checks it),
    to close it when the worker is quit; None if napari no longer keeps it there."""
    return getattr(worker, "_gen", None)
