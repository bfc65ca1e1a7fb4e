"""A progressive Segment (issue 21), in a real napari viewer under Xvfb, through the dock's public surface: the
segmentation is written as soon as the worker has it, the objects (and then the suggestions) follow from the same
run; clicks and strokes made meanwhile wait and are applied once the objects are found; ``wait()`` waits for all of
it; a late result never writes into another image's layers. The object phase is held open by a watershed that waits
for the test, so nothing here depends on timing."""

import threading

import numpy as np
import pytest

import napari_clis.session as session_module
from napari_clis import annotate

from . import test_widget_bad_input
from .test_widget_objects import _innermost, missed_nucleus  # noqa: F401 - a fixture

messages = test_widget_bad_input.messages  # the fixture: the errors, warnings and notices shown to the user


@pytest.fixture
def held_objects(monkeypatch):
    """The objects' watershed (``segmentation_objects``, as the session makes a result's objects) waits, once
    called, until ``go_on`` is set; ``called`` says it was."""
    called, go_on = threading.Event(), threading.Event()
    real = session_module.segmentation_objects

    def held(*args, **kwargs):
        called.set()
        assert go_on.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "segmentation_objects", held)
    yield called, go_on
    go_on.set()  # never leave a worker waiting


def _in_object_phase(widget, qtbot, called):
    qtbot.waitUntil(called.is_set, timeout=60_000)
    qtbot.waitUntil(lambda: widget.finding_objects, timeout=60_000)


def _segmented_until_objects(make_napari_viewer, qtbot, image, called):
    """The image opened and segmented through the public surface, held where its objects are being found."""
    viewer, widget = annotate(image, viewer=make_napari_viewer())
    widget.run()
    _in_object_phase(widget, qtbot, called)
    return viewer, widget


def test_the_segmentation_is_written_before_its_objects_and_a_click_meanwhile_waits_for_them(
        make_napari_viewer, qtbot, missed_nucleus, held_objects, messages):  # noqa: F811 - the fixture
    called, go_on = held_objects
    image, (cy, cx), _ = missed_nucleus
    viewer, widget = _segmented_until_objects(make_napari_viewer, qtbot, image, called)
    seg, inst = viewer.layers["segmentation"], viewer.layers["instances"]
    np.testing.assert_array_equal(seg.data, widget.session.result.labels)  # the segmentation, written now
    assert seg.data.any() and not inst.data.any()  # and no objects yet
    assert "finding the objects" in widget.status and widget.status.startswith("Segmented ")
    assert widget.busy and widget.working  # one busy state: Segment and Learn wait for the objects
    widget.learn()
    assert any("still running" in m for m in messages["info"])
    clicks = viewer.layers["clicks"]  # the click layer is this image's, ready for a click
    assert clicks.metadata["source_id"] == seg.metadata["source_id"] and clicks.mode == "add"
    assert viewer.layers.selection.active is clicks
    widget.set_click_class(1)
    clicks.add([cy, cx])  # the missed nucleus, clicked before the objects are found: kept, not applied yet
    assert "applied once they are found" in widget.click_status
    assert widget.session.clicks == []

    go_on.set()
    widget.wait()
    assert not widget.busy and not widget.finding_objects
    assert widget.session.clicks == [(cy, cx, 1)]  # applied once the objects were there
    np.testing.assert_array_equal(seg.data, widget.session.labels)
    np.testing.assert_array_equal(inst.data, widget.session.instances)
    assert inst.data[cy, cx] > 0  # the nucleus added, as an object of its own
    assert "finding the objects" not in widget.status and "nuclei" in widget.status
    assert len(viewer.layers["suggestions"].data)  # and the suggestions came after the objects
    assert not messages["error"]


def test_a_click_refused_once_the_objects_are_found_is_taken_off_not_marked(
        make_napari_viewer, qtbot, missed_nucleus, held_objects, messages):  # noqa: F811 - the fixture
    called, go_on = held_objects
    image, (cy, cx), _ = missed_nucleus
    viewer, widget = _segmented_until_objects(make_napari_viewer, qtbot, image, called)
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    by, bx = _innermost(seg.data == 0)  # the middle of the widest background
    widget.set_click_class(1)
    clicks.add([cy, cx])  # the missed nucleus: applies once the objects are there
    widget.set_click_action("split")
    clicks.add([by, bx])  # a split on background: refused once the objects are there
    go_on.set()
    widget.wait()
    assert widget.session.clicks == [(cy, cx, 1)]
    assert len(clicks.data) == 1 and clicks.features["action"].tolist() == ["auto"]  # the refused point is gone
    assert "refused" in widget.click_status and "red border" not in widget.click_status
    assert not messages["error"]


def test_wait_returns_once_the_objects_and_the_suggestions_are_shown(make_napari_viewer, qtbot, nuclei_fluo,
                                                                    held_objects):
    from qtpy.QtCore import QTimer

    called, go_on = held_objects
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    widget.run()
    _in_object_phase(widget, qtbot, called)
    QTimer.singleShot(300, go_on.set)  # the objects are found while wait() runs the event loop
    widget.wait()
    assert not widget.busy and not widget.propagating and not widget.finding_objects
    inst = viewer.layers["instances"].data
    assert inst.any() and int(inst.max()) == int(widget.session.instances.max())
    assert len(viewer.layers["suggestions"].data) and "finding the objects" not in widget.status


def test_a_segment_of_another_image_while_objects_are_found_writes_nothing_into_the_wrong_layers(
        make_napari_viewer, qtbot, nuclei_fluo, nuclei_he, held_objects, messages):
    called, go_on = held_objects
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    first = widget.image
    other = viewer.add_image(nuclei_he[0], name="other")
    widget.run(first)
    _in_object_phase(widget, qtbot, called)
    widget.run(other)  # refused: the run goes on, its objects still to come
    assert any("Segmenting is still running" in m for m in messages["info"])
    go_on.set()
    widget.wait()
    seg, inst = viewer.layers["segmentation"], viewer.layers["instances"]
    assert seg.metadata["source_id"] == inst.metadata["source_id"] and seg.metadata["source"] == first.name
    np.testing.assert_array_equal(inst.data, widget.session.instances)
    first_objects = inst.data.copy()

    # the image deleted while its objects are found: they are dropped, and the next image's layers are its own
    called.clear()
    go_on.clear()
    rings = viewer.layers["suggestions"]
    assert len(rings.data)  # the finished run's rings
    widget.run(first)
    _in_object_phase(widget, qtbot, called)
    assert not len(rings.data)  # they went with their segmentation; the new ones follow the objects
    viewer.layers.remove(first)
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "was deleted while its objects were being found" in widget.status
    assert "the segmentation written before stays" in widget.status
    assert first_objects.any() and not inst.data.any()  # the earlier objects cleared as the segmentation came,
    # and the dropped objects never written
    widget.run(other)
    widget.wait()
    assert inst.data.shape == nuclei_he[0].shape[:2] and inst.metadata["source"] == "other"
    np.testing.assert_array_equal(inst.data, widget.session.instances)
    np.testing.assert_array_equal(seg.data, widget.session.labels)
    assert widget.target[0] is other and not messages["error"]


def test_cancel_while_objects_are_found_keeps_the_segmentation_and_its_objects_come(make_napari_viewer, qtbot,
                                                                                   nuclei_fluo, held_objects):
    called, go_on = held_objects
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    widget.run()
    _in_object_phase(widget, qtbot, called)
    widget.cancel()  # the segmentation is shown: it stays, and its objects still come
    go_on.set()
    widget.wait()
    assert widget.status.startswith("Segmenting had finished when Cancel was pressed. Segmented ")
    assert "nuclei" in widget.status and "finding the objects" not in widget.status
    np.testing.assert_array_equal(viewer.layers["instances"].data, widget.session.instances)
    assert viewer.layers["instances"].data.any() and widget.controls.run_button.enabled


def test_a_stroke_while_objects_are_found_is_kept_and_applied_with_them(make_napari_viewer, qtbot, nuclei_fluo,
                                                                        held_objects):
    called, go_on = held_objects
    image, _ = nuclei_fluo
    viewer, widget = annotate(image, viewer=make_napari_viewer())
    widget.run()
    _in_object_phase(widget, qtbot, called)
    seg = viewer.layers["segmentation"]
    background = np.argwhere(seg.data == 0)
    y, x = background[len(background) // 2]
    seg.brush_size = 5
    seg.paint((y, x), 1)  # a stroke on the segmentation shown, before its objects
    go_on.set()
    widget.wait()
    assert seg.data[y, x] == 1 and widget.painted[y, x] == 1  # an annotation, kept by the propagation
    np.testing.assert_array_equal(seg.data, widget.session.labels)
    np.testing.assert_array_equal(viewer.layers["instances"].data, widget.session.instances)


def test_every_slice_of_a_stack_gets_its_segmentation_then_its_objects(make_napari_viewer, qtbot, nuclei_fluo,
                                                                       monkeypatch):
    calls, turns = [], threading.Semaphore(0)
    real = session_module.segmentation_objects

    def held(*args, **kwargs):  # each slice's watershed waits for its turn
        calls.append(1)
        assert turns.acquire(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "segmentation_objects", held)
    image, _ = nuclei_fluo
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    viewer, widget = annotate(stack, viewer=make_napari_viewer())
    widget.all_slices = True
    widget.run()
    try:
        for k in range(3):
            qtbot.waitUntil(lambda k=k: len(calls) == k + 1 and widget.finding_objects, timeout=60_000)
            seg, inst = viewer.layers["segmentation"].data, viewer.layers["instances"].data
            segmented = [t for t in range(3) if seg[t].any()]
            with_objects = [t for t in range(3) if inst[t].any()]
            assert len(segmented) == k + 1 and len(with_objects) == k  # this slice's objects still to come
            assert set(with_objects) < set(segmented) and "finding the objects" in widget.status
            turns.release()
    finally:
        for _ in range(3):
            turns.release()
    widget.wait()
    monkeypatch.undo()
    inst = viewer.layers["instances"].data
    for t in range(3):
        widget.session.segment(stack[t])
        assert inst[t].any()
        np.testing.assert_array_equal(inst[t], widget.session.instances)
    assert widget.status.startswith("Segmented 3/3 slice(s)")


def test_a_failure_while_finding_the_objects_is_said_once_and_the_segmentation_stays(make_napari_viewer, qtbot,
                                                                                    nuclei_fluo, monkeypatch,
                                                                                    messages):
    def broken(*args, **kwargs):  # a RuntimeError, as torch raises: superqt would take it for a deleted worker
        raise RuntimeError("the watershed ran out of memory")

    monkeypatch.setattr(session_module, "segmentation_objects", broken)
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    widget.run()
    widget.wait(timeout=20)
    qtbot.wait(300)  # no propagation left to fail again
    assert len(messages["error"]) == 1 and "Segmentation failed" in messages["error"][0], messages["error"]
    assert widget.status.startswith("Failed: the watershed ran out of memory")
    assert viewer.layers["segmentation"].data.any()  # what was shown stays
    assert not widget.busy


@pytest.mark.parametrize("model_image", ["nuclei_fluo", "lesion"])
def test_the_segmentation_is_shown_before_its_maps_and_a_stroke_meanwhile_is_kept(make_napari_viewer, qtbot, request,
                                                                                  monkeypatch, model_image):
    """``ClisSession.segment_steps`` hands the labels on before the rest of segment() (the network's, or the MRF's
    for region clicks): the widget writes them at once; a stroke painted before the maps come is an annotation."""
    image, _ = request.getfixturevalue(model_image)
    model = "nuclei" if model_image.startswith("nuclei") else "skin-lesion"
    called, go_on = threading.Event(), threading.Event()
    real = session_module.ClisSession.familiarity  # the last step of segment(), after the labels

    def held(self, *args, **kwargs):
        called.set()
        assert go_on.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(session_module.ClisSession, "familiarity", held)
    viewer, widget = annotate(image, model=model, viewer=make_napari_viewer())
    try:
        widget.run()
        qtbot.waitUntil(called.is_set, timeout=120_000)
        qtbot.waitUntil(lambda: widget.status.startswith("Segmented "), timeout=10_000)
        seg, unc = viewer.layers["segmentation"], viewer.layers["uncertainty"]
        early = np.array(seg.data, copy=True)
        assert early.any() and not unc.data.any()  # the segmentation shown, its maps not yet
        assert widget.busy and widget.session.result is None  # the session takes the image only at the end
        ys, xs = np.nonzero(early == 0)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        seg.brush_size = 3
        seg.paint((y, x), 1)  # a stroke on the background, made before the maps come
    finally:
        go_on.set()
    widget.wait()
    np.testing.assert_array_equal(early[early != seg.data], 0)  # only the stroke changed it
    assert seg.data[y, x] == 1 and widget.session.labels[y, x] == 1  # kept, and taken as an annotation
    assert unc.data.any()
    changed = early != seg.data
    assert 0 < changed.sum() <= 9


def test_a_new_segmentation_hides_the_old_objects_until_its_own_come(make_napari_viewer, qtbot, held_objects,
                                                                      nuclei_fluo):
    """Segment again: the earlier objects go at once, the layer hidden meanwhile (napari would draw the outlines of
    nothing), and shown again with the new ones; a layer the user hid stays hidden."""
    called, go_on = held_objects
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    go_on.set()
    widget.run()
    widget.wait()
    inst = viewer.layers["instances"]
    assert inst.visible and inst.data.any()
    for user_hid in (False, True):
        inst.visible = not user_hid
        called.clear()
        go_on.clear()
        widget.run()
        _in_object_phase(widget, qtbot, called)
        assert not inst.visible and not inst.data.any()
        go_on.set()
        widget.wait()
        assert inst.visible is not user_hid and inst.data.any()
