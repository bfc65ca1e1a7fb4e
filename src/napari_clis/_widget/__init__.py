"""The napari dock widget: pick an image and a model, segment off the GUI thread, correct, learn.

:class:`SegmentWidget` (the manifest's ``napari_clis._widget:SegmentWidget``) is a thin set of Qt views over a
Qt-free :class:`~napari_clis.annotation_state.AnnotationState`; see ``_dock`` for how it is put together.
"""

from ._common import Settings, breakable, plane_indices, source_id, task_choice_text
from ._dock import SegmentWidget

__all__ = ["SegmentWidget", "Settings", "breakable", "plane_indices", "source_id", "task_choice_text"]
