"""napari-clis: continual, uncertainty-aware interactive segmentation (CLIS) for napari.

The public entry point is :class:`ClisSession`; it is imported lazily so that ``import napari_clis``
(e.g. by napari when it reads the plugin manifest) does not load torch. The errors the API raises are here too:
``ImageError``, ``InteractionError`` and ``CheckpointError`` are ``ValueError``; ``LearnRejected`` (a learn step
rolled back because it would make the image worse), ``LearnCancelled``, ``TrainingDiverged`` and ``TrainingCancelled``
are ``RuntimeError``. ``train`` trains or fine-tunes a model on a folder of annotated images, ``train_arrays`` on
images and masks in memory. ``annotate`` opens an image in napari with the plugin's dock
(:class:`napari_clis._widget.SegmentWidget`), for a script or a notebook.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "ClisSession": "session",
    "SegmentationResult": "session",
    "LearnRejected": "session",
    "AutosaveError": "session",
    "LearnCancelled": "continual",
    "ImageError": "preprocessing",
    "InteractionError": "interactive",
    "CheckpointError": "checkpoint",
    "train": "training",
    "train_arrays": "training",
    "TrainingDiverged": "training",
    "TrainingCancelled": "training",
}

__all__ = [*_LAZY, "annotate", "__version__"]


def annotate(image=None, model: str = "nuclei", viewer=None):
    """Open napari (or use ``viewer``) with the Segment (CLIS) dock, and return ``(viewer, widget)``.

    ``image``: an array (added as an image layer), a file name (opened by napari), a layer of ``viewer``, or None.
    ``model``: a shipped model's name ("nuclei", "skin-lesion") or a model file. The dock is napari's own plugin
    dock (``viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")``); drive it with its public
    methods (``widget.run()``, ``widget.wait()``, ``widget.learn()``, ``widget.save_model()``...), or by hand.
    """
    from pathlib import Path

    import napari

    viewer = napari.Viewer() if viewer is None else viewer
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.set_model(model)
    if image is not None:
        if isinstance(image, (str, Path)):
            layer = viewer.open(str(image))[0]
        elif isinstance(image, napari.layers.Layer):
            layer = image if image in viewer.layers else viewer.add_layer(image)
        else:
            layer = viewer.add_image(image)
        widget.set_image(layer)
    return viewer, widget


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'napari_clis' has no attribute {name!r}")
