"""napari-clis: continual, uncertainty-aware interactive segmentation (CLIS) for napari.

The public entry point is :class:`ClisSession`; it is imported lazily so that ``import napari_clis``
(e.g. by napari when it reads the plugin manifest) does not load torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ClisSession", "SegmentationResult", "__version__"]


def __getattr__(name: str):
    if name in ("ClisSession", "SegmentationResult"):
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module 'napari_clis' has no attribute {name!r}")
