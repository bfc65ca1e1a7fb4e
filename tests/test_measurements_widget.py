"""The "Measurements (CLIS)" dock in a real napari viewer (run under Xvfb): one row per object of the instances
layer, sortable by number, a row centres the view on its object, saved as batch's CSV, refreshed after painting."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_clis._napari_compat import camera
from napari_clis.instances import measure_objects, measurements_csv

SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)


@pytest.fixture(scope="module")
def segmented(nuclei_fluo, nuclei_session):
    image, _ = nuclei_fluo
    result = nuclei_session.segment(image)
    return image, result.instances, result.uncertainty


def _tagged(role, image_layer):
    """The metadata Segment (CLIS) gives its layers."""
    shape = "x".join(map(str, image_layer.data.shape))
    return {"napari_clis": role, "source": image_layer.name, "source_id": f"{image_layer.unique_id}:{shape}"}


@pytest.fixture
def dock(make_napari_viewer, qtbot, segmented):
    image, instances, uncertainty = segmented
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="fluo", scale=SCALE, translate=TRANSLATE)
    viewer.add_image(uncertainty, name="uncertainty", metadata=_tagged("uncertainty", layer), scale=SCALE,
                     translate=TRANSLATE)
    viewer.add_labels(instances.copy(), name="instances", metadata=_tagged("instances", layer), scale=SCALE,
                      translate=TRANSLATE)
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Measurements (CLIS)")
    _wait(qtbot, widget)
    return viewer, widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy and not widget._timer.isActive() and widget.measurements is not None,
                    timeout=30_000)


def _headers(model):
    return [model.headerData(j, Qt.Orientation.Horizontal) for j in range(model.columnCount())]


def _column(model, name):
    """What the table shows in a column, top to bottom."""
    j = _headers(model).index(name)
    return [model.data(model.index(i, j)) for i in range(model.rowCount())]


def test_one_row_per_object_with_the_core_measurements(dock, segmented):
    viewer, widget = dock
    image, instances, uncertainty = segmented
    expected = measure_objects(instances, image, uncertainty)
    n = len(np.unique(instances)) - 1
    assert n > 10 and widget.model.rowCount() == n == len(expected["label"])
    assert widget.count.text().startswith(f"{n} objects in 'fluo'")
    assert list(widget.measurements) == list(expected)  # mean uncertainty included: the map was found
    for name, column in expected.items():
        np.testing.assert_array_equal(widget.measurements[name], column, err_msg=name)
    assert _column(widget.model, "label") == expected["label"].tolist()  # by id, smallest first (it opened 37, 36...)


def test_sorting_by_area_is_numeric_and_a_row_centres_the_view_on_its_object(dock):
    viewer, widget = dock
    table, m = widget.table, widget.measurements
    assert len({len(str(a)) for a in m["area"]}) > 1  # areas of several digit counts: text order would differ
    table.horizontalHeader().setSortIndicator(_headers(widget.model).index("area"), Qt.SortOrder.DescendingOrder)
    areas = _column(widget.model, "area")
    assert areas == sorted(m["area"].tolist(), reverse=True)
    widget.show_selected.setChecked(True)
    table.selectRow(0)  # the largest object
    i = int(np.argmax(m["area"]))
    label = int(m["label"][i])
    layer = viewer.layers["instances"]
    assert layer.selected_label == label and layer.show_selected_label
    centre = np.array([m["centroid_y"][i], m["centroid_x"][i]]) * SCALE + TRANSLATE  # in world coordinates
    np.testing.assert_allclose(camera(viewer).center[-2:], centre, atol=1e-6)
    ys, xs = np.nonzero(layer.data == label)  # it is the object: its pixels lie around the centre
    np.testing.assert_allclose(centre, [ys.mean() * SCALE[0] + TRANSLATE[0], xs.mean() * SCALE[1] + TRANSLATE[1]])


def test_the_row_chosen_stays_chosen_when_the_table_refreshes(dock, qtbot):
    viewer, widget = dock
    widget.show_selected.setChecked(True)
    widget.table.selectRow(2)
    label = viewer.layers["instances"].selected_label
    qtbot.wait(600)  # napari announces a redraw when the chosen object is shown: whatever it refreshes keeps the row
    widget.refresh()
    _wait(qtbot, widget)
    rows = widget.table.selectionModel().selectedRows()
    assert len(rows) == 1
    m = widget.measurements
    assert int(m["label"][int(widget.model.order[rows[0].row()])]) == label


def test_the_csv_saved_is_batchs_csv_of_the_core_measurements(dock, segmented, tmp_path, monkeypatch):
    import napari_clis._measurements as module

    viewer, widget = dock
    image, instances, uncertainty = segmented
    expected = measurements_csv(measure_objects(instances, image, uncertainty))
    widget.save_csv(tmp_path / "objects.csv")
    assert (tmp_path / "objects.csv").read_bytes() == expected
    asked = []  # the Save CSV… button: the file dialog answered as a user would

    def answer(parent, caption, start, filters):
        asked.append(start)
        return str(tmp_path / "chosen.csv"), filters

    monkeypatch.setattr(module.QFileDialog, "getSaveFileName", staticmethod(answer))
    widget.save_button.click()
    assert asked[0].endswith("fluo_measurements.csv")  # named as napari-clis segment names it
    assert (tmp_path / "chosen.csv").read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chosen.csv", "objects.csv"]  # no temporary file left


def test_painting_a_new_object_refreshes_the_table(dock, qtbot):
    viewer, widget = dock
    layer = viewer.layers["instances"]
    n = widget.model.rowCount()
    widget.table.horizontalHeader().setSortIndicator(_headers(widget.model).index("area"), Qt.SortOrder.AscendingOrder)
    new = int(layer.data.max()) + 1
    background = np.argwhere(layer.data == 0)
    y, x = background[len(background) // 2]
    layer.brush_size = 3
    layer.paint((int(y), int(x)), new)  # as a brush stroke does (napari's paint event)
    qtbot.waitUntil(lambda: widget.model.rowCount() == n + 1, timeout=30_000)
    _wait(qtbot, widget)
    assert new in widget.measurements["label"].tolist()
    assert widget.count.text().startswith(f"{n + 1} objects")
    assert _column(widget.model, "area") == sorted(widget.measurements["area"].tolist())  # the order chosen stays
    layer.data = np.zeros_like(layer.data)  # new data: no object left
    qtbot.waitUntil(lambda: widget.model.rowCount() == 0, timeout=30_000)
    assert widget.count.text().startswith("0 objects")


def test_without_the_image_it_says_so(dock, qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(str(msg)))  # set right in the viewer
    viewer, widget = dock
    viewer.layers.remove("fluo")
    qtbot.waitUntil(lambda: widget.measurements is None and not widget.busy, timeout=30_000)
    assert shown and "'fluo'" in shown[-1] and "not open" in shown[-1]
    assert widget.model.rowCount() == 0 and "not open" in widget.count.text()
    viewer.layers.remove("instances")
    qtbot.waitUntil(lambda: widget.count.text().startswith("No objects yet"), timeout=30_000)
    assert len(shown) == 1  # said once


def test_a_stack_measures_the_slice_on_screen(make_napari_viewer, qtbot, segmented):
    image, instances, uncertainty = segmented
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.stack([image, image]), name="zyx", scale=(3.0,) + SCALE)
    viewer.add_labels(np.stack([instances, np.zeros_like(instances)]), name="instances",
                      metadata=_tagged("instances", layer), scale=(3.0,) + SCALE)
    viewer.dims.set_current_step(0, 0)
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Measurements (CLIS)")
    _wait(qtbot, widget)
    n = len(np.unique(instances)) - 1
    assert widget.model.rowCount() == n and "(slice 0)" in widget.count.text()
    assert "mean_uncertainty" not in widget.measurements  # no map for this image
    viewer.dims.set_current_step(0, 1)  # the next slice: no objects there
    qtbot.waitUntil(lambda: widget.model.rowCount() == 0 and not widget.busy, timeout=30_000)
    assert widget.count.text().startswith("0 objects") and "(slice 1)" in widget.count.text()


def test_a_dock_deleted_while_it_measures_drops_the_result_quietly(make_napari_viewer, qtbot, segmented):
    from qtpy.QtCore import QCoreApplication, QEvent

    image, instances, _ = segmented
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="fluo")
    viewer.add_labels(instances.copy(), name="instances", metadata=_tagged("instances", layer))
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Measurements (CLIS)")
    assert widget.busy  # measuring in its worker
    worker = widget._worker
    viewer.window.remove_dock_widget(dock)
    widget.deleteLater()  # as Qt deletes a closed dock's widget
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    qtbot.wait(100)  # its result arrives after the widget is gone: dropped, no error
    viewer.layers["instances"].paint((0, 0), 999)  # and the layer's events no longer reach it
    qtbot.wait(400)


def test_opened_beside_the_segment_dock_it_takes_a_tab_of_its_place(make_napari_viewer, qtbot):
    """Stacked under Segment (CLIS), the table left the Segment panel three rows high in a 1280x720 window."""
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Measurements (CLIS)")
    docks = {d.windowTitle(): d for d in widget.window().findChildren(QDockWidget)}
    segment = next(d for title, d in docks.items() if title.startswith("Segment (CLIS)"))
    mine = next(d for title, d in docks.items() if title.startswith("Measurements (CLIS)"))
    qtbot.waitUntil(lambda: mine in widget.window().tabifiedDockWidgets(segment), timeout=5_000)


def test_column_headers_say_what_each_column_is_luminance_for_colour(qtbot):
    from napari_clis._measurements import _Columns

    inst = np.zeros((20, 20), np.int32)
    inst[2:8, 2:8] = 1
    model = _Columns()
    tip = lambda name: model.headerData(_headers(model).index(name.replace("_", " ")),  # noqa: E731
                                        Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    model.set(measure_objects(inst, np.full((20, 20, 3), 100, np.uint8)))
    assert "luminance" in tip("mean_intensity") and tip("mean_red")
    model.set(measure_objects(inst, np.full((20, 20), 100, np.uint16)))
    assert "luminance" not in tip("mean_intensity") and "own units" in tip("mean_intensity")
    assert all(tip(name) for name in model.columns)


def test_a_chosen_row_rings_its_object_without_taking_the_active_layer(dock, qtbot):
    """A row chosen: a cyan ring around its object ('chosen object', a Points layer of its own, where the object is
    on screen), the layer the user works in still the active one; another row moves it; closing the dock takes it."""
    viewer, widget = dock
    image = viewer.layers["fluo"]
    viewer.layers.selection.active = image
    m = widget.measurements
    for row in (0, 3):
        widget.table.selectRow(row)
        i = int(widget.model.order[row])
        ring = viewer.layers["chosen object"]
        np.testing.assert_allclose(ring.data, [[m["centroid_y"][i], m["centroid_x"][i]]])
        assert ring.data_to_world(ring.data[0]) == pytest.approx(
            viewer.layers["instances"].data_to_world(ring.data[0]))  # the instances' geometry
        ys, xs = np.nonzero(viewer.layers["instances"].data == m["label"][i])
        reach = np.sqrt((ys - m["centroid_y"][i]) ** 2 + (xs - m["centroid_x"][i]) ** 2).max()
        assert ring.size[0] > 2 * reach  # around the whole object, not on it
        assert viewer.layers.selection.active is image and not ring.editable
    widget.table.clearSelection()
    assert len(viewer.layers["chosen object"].data) == 0
    widget.table.selectRow(1)
    assert len(viewer.layers["chosen object"].data) == 1
    from qtpy.QtCore import QCoreApplication, QEvent

    viewer.window.remove_dock_widget("all")
    widget.deleteLater()  # as Qt deletes a closed dock's widget
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    qtbot.waitUntil(lambda: "chosen object" not in viewer.layers, timeout=5_000)


def test_object_reach_is_the_farthest_pixel_from_the_point_with_or_without_its_box():
    """One measure of an object's extent for every ring (the suggestions', the chosen object's)."""
    from scipy import ndimage

    from napari_clis._widget._common import object_reach, ring_size

    objects = np.zeros((40, 40), np.uint16)
    for i in range(20):  # a diagonal bar: its box's half-sides (10 px) underrate it
        objects[10 + i, 10 + i] = 3
    box = ndimage.find_objects(objects)[2]
    far = np.hypot(10, 10)
    assert object_reach(objects, 3, 19.5, 19.5) == pytest.approx(np.hypot(9.5, 9.5))
    assert object_reach(objects, 3, 20, 20, box) == pytest.approx(far)
    assert object_reach(objects, 7, 20, 20) == 0.0
    assert ring_size(far) > 2 * far
