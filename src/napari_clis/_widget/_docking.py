"""How napari holds the dock: wide enough for its controls, and retired when napari closes it."""

from __future__ import annotations


def fit_width(area) -> None:
    """Make the scroll ``area`` as wide as its controls need beside the vertical scroll bar (magicgui leaves 20 px
    for it, some styles need more), so that no horizontal scroll bar cuts the Segment button."""
    need = area.widget().minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width() \
        + 2 * area.frameWidth()
    if area.minimumWidth() < need:
        area.setMinimumWidth(need)


def watch(dock, retire):
    """Watch ``dock.native``: fit its width when shown (every control is in by then); call ``retire()`` when napari
    takes it out of the window (closing a dock does not delete the widget). Returns the event filter (keep it)."""
    from qtpy.QtCore import QEvent, QObject

    class _Watcher(QObject):
        docked = False

        def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Show:
                dock.fit_width()
            if event.type() == QEvent.ParentChange:
                if obj.parent() is not None:
                    self.docked = True
                elif self.docked:
                    retire()
            return False

    watcher = _Watcher()
    dock.native.installEventFilter(watcher)
    return watcher
