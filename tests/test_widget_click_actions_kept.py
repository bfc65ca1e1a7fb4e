"""Split and merge clicks keep their action wherever the dock hands the clicks to the session again: before
learning (the task learns the labels the split and merge made) and in a run over all slices of a stack (each
slice's own clicks replayed as they were made)."""

import numpy as np

from . import test_widget_clicks
from .test_widget_objects import _count, _innermost, _open, _touching_pair

messages = test_widget_clicks.messages  # the fixture: the errors and warnings shown to the user


def _merge_then_split(widget, truth, lead=()):
    """Merge two pieces of one nucleus, then split the merged object at the first piece's centre (clicks on the
    slice ``lead`` of a stack); returns the object count before."""
    inst = widget.viewer.layers["instances"].data[lead]
    a, b, (y, x) = _touching_pair(inst, truth)
    first = inst == a
    n = int(inst.max())
    for point, action in (((y, x), "merge"), (_innermost(first), "split")):
        widget.set_click_action(action)
        widget.viewer.layers["clicks"].add([*lead, *point])  # data coordinates, as a mouse click in add mode gives
        widget.wait()  # the click propagates in a worker
    return n


def test_learning_after_a_split_learns_the_split_labels(make_napari_viewer, qtbot, nuclei_he, messages,
                                                        monkeypatch):
    image, truth = nuclei_he
    viewer, widget = _open(make_napari_viewer, qtbot, image, rgb=True)
    session = widget.session
    n = _merge_then_split(widget, truth)
    assert session.click_actions == ["merge", "split"] and _count(widget) == n, widget.click_status
    shown = viewer.layers["segmentation"].data.copy()
    np.testing.assert_array_equal(shown, session.labels)
    seen = {}
    real = session.learn

    def learn(**kwargs):  # what the task is learned from, as learning starts
        seen["actions"], seen["labels"] = session.click_actions, session.interaction.labels.copy()
        return real(**kwargs)

    monkeypatch.setattr(session, "learn", learn)
    session.learn_settings.steps = 2
    widget.learn()
    widget.wait()
    assert seen, widget.status
    assert seen["actions"] == ["merge", "split"]  # not replayed as add / remove clicks
    np.testing.assert_array_equal(seen["labels"], shown)
    assert not messages["error"]


def test_a_run_over_all_slices_keeps_a_slices_split_and_merge(make_napari_viewer, qtbot, nuclei_he, messages):
    image, truth = nuclei_he
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    layer = viewer.add_image(np.stack([image, image]), name="stack", rgb=True)
    viewer.dims.set_current_step(0, 1)
    widget.run(layer)  # slice 1 alone, then corrected with a merge and a split
    widget.wait()
    n = _merge_then_split(widget, truth, lead=(1,))
    clicks = viewer.layers["clicks"]
    assert clicks.features["action"].tolist() == ["merge", "split"] and widget.session.click_actions == [
        "merge", "split"], widget.click_status
    inst, seg = viewer.layers["instances"].data[1].copy(), viewer.layers["segmentation"].data[1].copy()
    assert int(inst.max()) == n
    viewer.dims.set_current_step(0, 0)  # slice 0 on screen: slice 1 is segmented from its kept clicks, in the worker
    widget.all_slices = True
    widget.run(layer)
    widget.wait()
    assert widget.target[1] == (0,) and not messages["error"]
    np.testing.assert_array_equal(viewer.layers["instances"].data[1], inst)  # the split and the merge, kept
    np.testing.assert_array_equal(viewer.layers["segmentation"].data[1], seg)
    assert clicks.features["action"].tolist() == ["merge", "split"]
