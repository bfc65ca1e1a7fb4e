"""The "Measurements (CLIS)" dock: one row per object of the ``instances`` layer Segment (CLIS) made, from
:func:`napari_clis.instances.measure_objects` on the plane on screen (in a worker thread), with the image it was made
from and its ``uncertainty`` map; saved as the CSV batch writes (:func:`napari_clis.instances.measurements_csv`).
A thin Qt view; the table is a model over the columns (no item per cell): 10,000 objects show and sort at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ._napari_compat import camera, in_worker
from ._widget._common import (
    INSTANCES,
    LAYER_TAG,
    SEGMENT_DOCK_NAME,
    UNCERTAINTY,
    copy_geometry,
    object_reach,
    pixels,
    ring_size,
    source_id,
    spatial_shape,
)

__all__ = ["MeasurementsWidget"]

NONE_YET = "No objects yet: segment an image with Segment (CLIS), then its objects are listed here."
CHOSEN = "chosen object"  # the Points layer of the ring around the object of the row selected
# a cyan ring 2 px wide (not the suggestions' gold)
CHOSEN_STYLE = {"symbol": "disc", "face_color": "transparent", "border_color": [0.0, 1.0, 1.0, 1.0],
                "border_width": 2.0, "border_width_is_relative": False, "opacity": 1.0}


def _shown(value, integer: bool):
    """A cell's value: a number, rounded for reading."""
    return int(value) if integer else round(value, 2) if abs(value) >= 1 else float(f"{float(value):.3g}")


_COLUMN_TIPS = {  # what each column is (the CSV has the same columns)
    "label": "The object's id in the instances layer.",
    "area": "Pixels in the object.",
    "perimeter": "Length of the object's border, in pixels (scikit-image's estimate).",
    "mean_intensity": "Mean pixel value of the image inside the object, in the image's own units.",
    "mean_red": "Mean of the red channel inside the object.",
    "mean_green": "Mean of the green channel inside the object.",
    "mean_blue": "Mean of the blue channel inside the object.",
    "mean_uncertainty": "Mean of the uncertainty map inside the object (0 = sure; higher = worth a look).",
    "centroid_y": "Row of the object's centre, in pixels.",
    "centroid_x": "Column of the object's centre, in pixels.",
}
_LUMINANCE_TIP = ("Mean luminance inside the object (scikit-image's rgb2gray weights: 0.2125 red + 0.7154 green + "
                  "0.0721 blue), in the image's own units: one column comparable with grey images; each channel's "
                  "mean is beside it.")


class _Columns(QAbstractTableModel):
    """The measurements (a dict of equal-length columns) as a table; sorting reorders an index, not the data."""

    def __init__(self):
        super().__init__()
        self.columns: dict[str, np.ndarray] = {}
        self.order = np.zeros(0, np.int64)  # order[row] = the object's index in the columns

    def set(self, columns: dict | None) -> None:
        self.beginResetModel()
        self.columns = dict(columns or {})
        self.order = np.arange(len(next(iter(self.columns.values()), ())))
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()):  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.order)

    def columnCount(self, parent=QModelIndex()):  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self.columns):
            return None
        name = list(self.columns)[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return name.replace("_", " ")
        if role == Qt.ItemDataRole.ToolTipRole:  # a colour image's mean intensity is its luminance
            return _LUMINANCE_TIP if name == "mean_intensity" and "mean_red" in self.columns else _COLUMN_TIPS.get(name)
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        col = list(self.columns.values())[index.column()]
        return _shown(col[self.order[index.row()]], np.issubdtype(col.dtype, np.integer))

    def sort(self, column, order=Qt.SortOrder.AscendingOrder):
        if not 0 <= column < len(self.columns):
            return
        self.layoutAboutToBeChanged.emit()
        new = np.argsort(list(self.columns.values())[column], kind="stable")
        new = new[::-1] if order == Qt.SortOrder.DescendingOrder else new
        rows = np.empty_like(new)
        rows[new] = np.arange(len(new))  # the object -> its new row: the selection follows its object
        kept = self.persistentIndexList()
        self.changePersistentIndexList(kept, [self.index(int(rows[self.order[i.row()]]), i.column()) for i in kept])
        self.order = new
        self.layoutChanged.emit()


class MeasurementsWidget(QWidget):
    """The objects' measurements, sortable; a row selected centres the view on its object and selects its label."""

    def __init__(self, napari_viewer):
        super().__init__()
        self._viewer = napari_viewer
        self._layer = None  # the instances layer measured
        self._watched: list = []  # (emitter, callback) pairs to disconnect: the viewer's
        self._layer_watched: list = []  # and the measured layer's
        self._said = ""  # the last error notified (a missing image is said once, not at every slider step)
        self._generation = 0  # a result of an older refresh is dropped
        self._worker = None
        self.measurements: dict[str, np.ndarray] | None = None  # measure_objects' table for what is shown

        self.count = QLabel(NONE_YET, wordWrap=True)
        self.model = _Columns()
        self.table = QTableView(editTriggers=QAbstractItemView.EditTrigger.NoEditTriggers,
                                selectionBehavior=QAbstractItemView.SelectionBehavior.SelectRows,
                                selectionMode=QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setModel(self.model)
        # by id, smallest first, until a header is clicked (Qt's indicator starts descending: 37, 36, 35...)
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        self.table.selectionModel().selectionChanged.connect(self._row_selected)
        self.show_selected = QCheckBox("Show only the selected object", toggled=self._show_selected_toggled,
                                       toolTip="Hides the other objects of the instances layer.")
        self.refresh_button = QPushButton("Refresh", clicked=self.refresh,
                                          toolTip="Measure again (done by itself when the objects change).")
        self.save_button = QPushButton("Save CSV…", clicked=self._save_clicked,
                                       toolTip="The table as a CSV file, the columns napari-clis segment writes.")
        buttons, layout = QHBoxLayout(), QVBoxLayout(self)
        for w in (self.refresh_button, self.save_button):
            buttons.addWidget(w)
        for w in (self.count, self.table, self.show_selected):
            layout.addWidget(w)
        layout.addLayout(buttons)

        self._timer = QTimer(self, singleShot=True, interval=250)  # many events (a stroke ...) make one refresh
        self._timer.timeout.connect(self.refresh)
        for emitter in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            self._connect(emitter, self._schedule)
        self._connect(napari_viewer.dims.events.current_step, self._schedule)
        self._alive = [True]  # emptied when Qt deletes the widget (a late result is then dropped)
        self._rings: list = []  # the "chosen object" layer, once a row was chosen
        self.destroyed.connect(lambda *_, a=self._alive, w=self._watched, m=self._layer_watched, v=napari_viewer,
                               r=self._rings: (_disconnect(w + m, a), _remove_rings(v, r)))
        self._tabbed = False
        self.refresh()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._tabbed:
            self._tabbed = True
            QTimer.singleShot(0, self._tab_beside_segment)

    def _tab_beside_segment(self) -> None:
        """Share the Segment (CLIS) dock's place as a tab of its own (stacked under it, the table left the Segment
        panel three rows high in a 1280x720 window), and come to the front; the tab can be dragged out."""
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):  # napari may wrap it in a scroll area
            dock = dock.parentWidget()
        main = dock.parentWidget() if dock is not None else None
        if not isinstance(main, QMainWindow):
            return
        segment = next((d for d in main.findChildren(QDockWidget) if d is not dock and d.isVisible()
                        and d.findChild(QWidget, SEGMENT_DOCK_NAME) is not None
                        and main.dockWidgetArea(d) == main.dockWidgetArea(dock)), None)
        if segment is not None:
            main.tabifyDockWidget(segment, dock)
            dock.raise_()

    # -- which layers --------------------------------------------------------------------------------------------
    def instances_layer(self):
        """The ``instances`` layer Segment (CLIS) made (the selected one, if several), or None."""
        from napari.layers import Labels

        ours = [lyr for lyr in self._viewer.layers
                if isinstance(lyr, Labels) and lyr.metadata.get(LAYER_TAG) == INSTANCES]
        active = self._viewer.layers.selection.active
        return active if active in ours else (ours[0] if ours else None)

    def _source_layers(self, inst):
        """The image ``inst`` was made from and its uncertainty map (or None): the image whose
        :func:`~napari_clis._widget._common.source_id` is the one Segment (CLIS) wrote in ``metadata["source_id"]``,
        else (a layer saved and opened again: a new layer id) the image of that name (``source``); of the objects'
        shape."""
        from napari.layers import Image

        wanted, name = inst.metadata.get("source_id"), inst.metadata.get("source")
        shape = tuple(inst.data.shape)
        images = [lyr for lyr in self._viewer.layers if isinstance(lyr, Image) and lyr.metadata.get(LAYER_TAG) is None
                  and spatial_shape(lyr) == shape]
        image = next((lyr for lyr in images if wanted and source_id(lyr) == wanted),
                     next((lyr for lyr in images if lyr.name == name), None))
        maps = [lyr for lyr in self._viewer.layers if isinstance(lyr, Image)
                and lyr.metadata.get(LAYER_TAG) == UNCERTAINTY and lyr.metadata.get("source_id") == wanted
                and spatial_shape(lyr) == shape]
        return image, (maps[0] if maps else None)

    def _plane(self, layer) -> tuple[int, ...]:
        """The index over the leading axes of ``layer`` of the plane on screen (() for a 2D layer)."""
        lead = layer.ndim - 2
        if lead <= 0:
            return ()
        where = np.round(np.asarray(layer.world_to_data(self._viewer.dims.point))[:lead]).astype(int)
        return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(where, layer.data.shape[:lead]))

    # -- measuring -----------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _schedule(self, event=None) -> None:
        if getattr(event, "type", None) != "current_step" or (self._layer is not None and self._layer.ndim > 2):
            self._timer.start()  # (another slice matters only for a stack)

    def refresh(self, *_) -> None:
        """Measure the objects of the plane on screen again, in a worker thread."""
        from napari.qt.threading import create_worker

        from .instances import measure_objects

        self._generation += 1
        self._follow(self.instances_layer())
        inst = self._layer
        if inst is None:
            return self._show(None, self._generation, NONE_YET)
        image, unc = self._source_layers(inst)
        if image is None:
            return self._fail(f"The image '{inst.metadata.get('source', '?')}' that '{inst.name}' was made from is "
                              "not open (or has another shape): its objects cannot be measured.", level="warning")
        plane = self._plane(inst)
        # the objects copied here (a paint stroke during the measuring does not change what is measured); the
        # image and map read in the worker (a lazy array's pixels load there)
        args = [np.array(inst.data[plane])] + [None if lyr is None else pixels(lyr)[plane] for lyr in (image, unc)]
        where = f" (slice {', '.join(map(str, plane))})" if plane else ""
        worker = create_worker(in_worker(measure_objects), *args, _start_thread=False)
        generation = self._generation
        worker.returned.connect(lambda table: self._show(table, generation, f"in '{image.name}'{where}"))
        worker.errored.connect(lambda e: self._fail(f"Could not measure the objects: {e}", generation))
        worker.finished.connect(lambda: self._done(worker))
        self._worker = worker
        worker.start()
        return None

    def _done(self, worker) -> None:
        self._worker = None if self._worker is worker else self._worker

    def _follow(self, layer) -> None:
        """Watch ``layer`` (the objects measured) for edits: painting, filling, new data."""
        if layer is self._layer:
            return
        _disconnect(self._layer_watched)
        self._layer_watched.clear()
        self._layer = layer
        if layer is not None:
            for emitter in (getattr(layer.events, name, None) for name in ("data", "paint", "set_data")):
                if emitter is not None:
                    self._connect(emitter, self._schedule, self._layer_watched)

    def _connect(self, emitter, callback, watched: list | None = None) -> None:
        emitter.connect(callback)
        (self._watched if watched is None else watched).append((emitter, callback))

    def _fail(self, message: str, generation: int | None = None, *, level: str = "error") -> None:
        """Empty the table and say ``message`` in it, and once as a notification (``level`` "warning" for
        something the user can set right in the viewer)."""
        from napari.utils import notifications

        if self._alive and (generation is None or generation == self._generation):
            self._show(None, self._generation, message)
            if message != self._said:
                (notifications.show_warning if level == "warning" else notifications.show_error)(message)
            self._said = message

    def _show(self, table: dict | None, generation: int, where: str) -> None:
        """Show ``table`` (measure_objects'), or empty the table and say ``where`` (a message)."""
        if generation != self._generation or not self._alive:  # a newer refresh is under way, or the dock is gone
            return
        chosen = self._chosen_label()
        if table is None:
            self._clear_ring()
        self.measurements = table
        self._said = "" if table is not None else self._said
        self.model.set(table)
        header = self.table.horizontalHeader()  # the order chosen stays (by id until a header is clicked)
        if 0 <= header.sortIndicatorSection() < self.model.columnCount():
            self.model.sort(header.sortIndicatorSection(), header.sortIndicatorOrder())
        if chosen is not None and table is not None:  # the object chosen stays chosen across a refresh
            rows = np.flatnonzero(np.asarray(table["label"])[np.asarray(self.model.order, int)] == chosen)
            if not rows.size:  # it is gone (merged, erased): so is its ring
                self._clear_ring()
            if rows.size:
                selection = self.table.selectionModel()
                selection.blockSignals(True)
                try:
                    self.table.selectRow(int(rows[0]))
                finally:
                    selection.blockSignals(False)
        n = self.model.rowCount()
        self.count.setText(where if table is None else f"{n} object{'' if n == 1 else 's'} {where}")

    # -- a row chosen --------------------------------------------------------------------------------------------
    def _chosen_label(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or self.measurements is None or self.model.order is None:
            return None
        return int(self.measurements["label"][int(self.model.order[rows[0].row()])])

    def _row_selected(self, *_) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or self.measurements is None or self._layer is None:
            self._clear_ring()
            return
        i = int(self.model.order[rows[0].row()])
        inst, m = self._layer, self.measurements
        # napari redraws (and says its data was set) on every assignment, even of the same value: only changes
        if inst.selected_label != int(m["label"][i]):
            inst.selected_label = int(m["label"][i])
        if inst.show_selected_label != self.show_selected.isChecked():
            inst.show_selected_label = self.show_selected.isChecked()
        centre = np.array(self._plane(inst) + (m["centroid_y"][i], m["centroid_x"][i]), float)
        plane = np.asarray(inst.data[self._plane(inst)])
        self._ring_around(centre, ring_size(object_reach(plane, int(m["label"][i]), *centre[-2:])))
        world = inst.data_to_world(centre)
        point = list(self._viewer.dims.point)
        point[len(point) - len(world):] = [float(v) for v in world]
        camera(self._viewer).center = tuple(point[d] for d in self._viewer.dims.displayed)

    def _ring_around(self, centre, size: float) -> None:
        """A cyan ring around the chosen object, in a Points layer of its own ("chosen object", made the first time,
        not editable); the active layer stays the one the user works in."""
        inst, viewer = self._layer, self._viewer
        ring = self._rings[0] if self._rings and self._rings[0] in viewer.layers else None
        if ring is not None and ring.ndim != inst.ndim:
            viewer.layers.remove(ring)
            ring = None
        if ring is None:
            active = viewer.layers.selection.active
            ring = viewer.add_points(centre[None], name=CHOSEN, ndim=inst.ndim, size=size, **CHOSEN_STYLE)
            ring.metadata[LAYER_TAG] = CHOSEN
            self._rings[:] = [ring]
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active
        else:
            ring.data = centre[None]
            ring.size = size
        copy_geometry(ring, inst)
        ring.editable = False  # (napari makes a layer editable again as its geometry is set)

    def _clear_ring(self) -> None:
        ring = self._rings[0] if self._rings else None
        if ring is not None and ring in self._viewer.layers and len(ring.data):
            ring.data = np.zeros((0, ring.ndim))

    def _show_selected_toggled(self, on: bool) -> None:
        if self._layer is not None:
            self._layer.show_selected_label = on

    # -- saving --------------------------------------------------------------------------------------------------
    def save_csv(self, path: str | Path) -> None:
        """Write the table to ``path`` atomically, as ``napari-clis segment`` writes ``<stem>_measurements.csv``."""
        from .checkpoint import atomic_write_bytes
        from .instances import measurements_csv

        if self.measurements is None:
            raise ValueError("There is nothing to save yet: no objects are measured.")
        atomic_write_bytes(path, measurements_csv(self.measurements))

    def _save_clicked(self) -> None:
        from napari.utils.notifications import show_error, show_info

        if self.measurements is None:
            return show_error("There is nothing to save yet: no objects are measured.")
        image, _ = self._source_layers(self._layer)
        source = getattr(getattr(image, "source", None), "path", None)
        stem = Path(source).stem if source else (image.name if image is not None else "objects")
        start = str((Path(source).parent if source else Path.cwd()) / f"{stem}_measurements.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Save the measurements", start, "CSV files (*.csv)")
        if not path:
            return None
        try:
            self.save_csv(path)
        except Exception as e:  # CheckpointError, OSError: they name the file and the reason
            return show_error(f"Could not save the measurements: {e}")
        return show_info(f"Saved the measurements of {len(self.measurements['label'])} objects to {path}.")


def _remove_rings(viewer, rings: list) -> None:
    """The dock closed: its "chosen object" ring goes with it."""
    for ring in rings:
        with contextlib.suppress(Exception):  # the viewer closed first
            if ring in viewer.layers:
                viewer.layers.remove(ring)
    rings.clear()


def _disconnect(watched: list, alive: list | None = None) -> None:
    (alive if alive is not None else []).clear()  # the widget is gone
    for emitter, callback in watched:
        with contextlib.suppress(Exception):  # already gone (the layer was deleted)
            emitter.disconnect(callback)
