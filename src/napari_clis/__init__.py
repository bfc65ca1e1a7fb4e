"""napari-clis: continual, uncertainty-aware interactive segmentation (CLIS) for napari.

The public entry point is :class:`ClisSession`; it is imported lazily so that ``import napari_clis``
(e.g. by napari when it reads the plugin manifest) does not load torch. The errors the API raises are here too:
``ImageError``, ``InteractionError`` and ``CheckpointError`` are ``ValueError``; ``LearnRejected`` (a learn step
rolled back because it would make the image worse), ``LearnCancelled``, ``TrainingDiverged`` and ``TrainingCancelled``
are ``RuntimeError``. ``train`` trains or fine-tunes a model on a folder of annotated images.
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
    "TrainingDiverged": "training",
    "TrainingCancelled": "training",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'napari_clis' has no attribute {name!r}")
