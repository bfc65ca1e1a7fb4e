"""The widget's Qt-free state: the annotation ledger and the per-viewer state, without napari or a display."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_clis.annotation_state import AnnotationState, Ledger, Stroke, compact_labels, removed_clicks

KEY, OTHER = ("img:8x8", ()), ("img:8x8", (1,))


def _plane(value=0, shape=(8, 8)):
    return np.full(shape, value, np.int32)


def test_the_state_module_imports_neither_qt_nor_napari_nor_torch():
    code = ("import sys; import napari_clis.annotation_state; "
            "print(sorted(m for m in ('napari', 'qtpy', 'PyQt6', 'torch', 'magicgui') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_edits_are_what_differs_from_what_was_written_and_stay_annotations():
    ledger = Ledger()
    written = _plane()
    written[:4] = 1
    ledger.wrote(KEY, written, n_classes=2)
    assert ledger.written[KEY].dtype == np.uint8 and KEY in ledger.segmented
    plane = written.copy()
    plane[0, :3] = 0  # the user paints background on three pixels
    stroke, bad = ledger.absorb(KEY, plane, n_classes=2)
    assert bad == 0 and sorted(stroke.pixels) == [0, 1, 2] and (stroke.before == -1).all()
    painted = ledger.painted[KEY]
    assert painted.dtype == np.int8 and (painted[0, :3] == 0).all() and (painted >= 0).sum() == 3
    again, _ = ledger.absorb(KEY, plane, n_classes=2)  # taken in: nothing new the next time
    assert len(again.pixels) == 0
    # the propagation comes to agree with the edit: it stays an annotation
    merged = ledger.merge(KEY, plane, plane, n_classes=2)
    np.testing.assert_array_equal(merged, plane)
    assert (ledger.painted[KEY][0, :3] == 0).all()


def test_a_label_that_is_not_a_class_is_counted_and_not_taken():
    ledger = Ledger()
    ledger.wrote(KEY, _plane(), n_classes=2)
    plane = _plane()
    plane[2, 2], plane[3, 3] = 7, 1
    stroke, bad = ledger.absorb(KEY, plane, n_classes=2)
    assert bad == 1 and list(stroke.pixels) == [3 * 8 + 3]
    # a later write replaces the stray label with the propagation's (which holds the painted pixel)
    labels = _plane()
    labels[3, 3] = 1
    out = ledger.merge(KEY, plane, labels, n_classes=2)
    assert out[2, 2] == 0 and out[3, 3] == 1


def test_undo_and_redo_take_a_stroke_back_and_bring_it_back():
    ledger = Ledger()
    ledger.wrote(KEY, _plane(), n_classes=3)
    plane = _plane()
    plane[1:3, 1:3] = 2
    ledger.pending = 1  # napari announced a stroke
    stroke, _ = ledger.absorb(KEY, plane, n_classes=3)
    ledger.record_pending(stroke, KEY)
    assert len(ledger.strokes) == 1 and ledger.pending == 0
    shown = {"plane": _plane()}  # napari's undo restored the pixels
    assert ledger.step("undo", lambda key: shown["plane"]) == {KEY}
    assert (ledger.painted[KEY] == -1).all() and ledger.undone and not ledger.strokes
    shown["plane"] = plane  # and redo painted them again
    assert ledger.step("redo", lambda key: shown["plane"]) == {KEY}
    assert (ledger.painted[KEY][1:3, 1:3] == 2).all() and ledger.strokes and not ledger.undone
    assert ledger.step("redo", lambda key: plane) == set()  # nothing more to redo
    ledger.new_segmentation()  # a new segmentation: undo brings nothing back from before it
    assert ledger.step("undo", lambda key: plane) == set()


def test_each_painted_pixel_keeps_how_many_clicks_came_before_it_through_deletions_undo_and_redo():
    """Issue 20 item 4: strokes and object clicks are replayed in the order they were made; the ledger records
    each painted pixel's epoch (the slice's clicks made before it) and keeps it after the same clicks when an
    older click is deleted."""
    ledger = Ledger()
    ledger.wrote(KEY, _plane(), n_classes=2)
    assert ledger.clicks_now(KEY, ["a", "b"]) is None  # two clicks made
    plane = _plane()
    plane[0, :4] = 1
    first, _ = ledger.absorb(KEY, plane, 2, clicks=2)  # a stroke after them
    ledger.push(first)
    assert ledger.clicks_now(KEY, ["a", "b", "c"]) is None  # a third click
    plane[1, :4] = 1
    second, _ = ledger.absorb(KEY, plane, 2, clicks=3)
    ledger.push(second)
    epochs = ledger.epochs[KEY]
    assert (epochs[0, :4] == 2).all() and (epochs[1, :4] == 3).all()
    np.testing.assert_array_equal(first.epochs, 0)  # what they were before (nothing painted)
    assert ledger.clicks_now(KEY, ["b", "c"]) == [0]  # the first click's point deleted: both strokes move down
    assert (ledger.epochs[KEY][0, :4] == 1).all() and (ledger.epochs[KEY][1, :4] == 2).all()
    assert ledger.clicks_now(KEY, ["b", "c", "d"]) is None  # a click added changes no epoch
    assert ledger.clicks_now(KEY, ["b", "x", "d"]) is None  # nor a click moved
    assert (ledger.epochs[KEY][1, :4] == 2).all()
    assert ledger.step("undo", lambda key: _plane()) == {KEY}  # the second stroke taken back, then brought back
    assert (ledger.painted[KEY][1, :4] == -1).all()
    assert ledger.clicks_now(KEY, ["b", "d"]) == [1]  # a click deleted while the stroke is undone
    assert ledger.step("redo", lambda key: plane) == {KEY}
    assert (ledger.epochs[KEY][1, :4] == 1).all() and (ledger.epochs[KEY][0, :4] == 1).all()
    assert (ledger.painted[KEY][:2, :4] == 1).all()


def test_removed_clicks_tells_deleted_points_from_added_or_moved_ones():
    assert removed_clicks([1, 2, 3], [1, 3]) == [1]
    assert removed_clicks([1, 2, 3, 2], [2]) == [0, 2, 3]
    assert removed_clicks([1, 2, 3], []) == [0, 1, 2]
    assert removed_clicks([1, 2], [1, 2, 3]) is None
    assert removed_clicks([1, 2, 3], [1, 4, 3]) is None
    assert removed_clicks([1, 2, 3], [4, 1]) is None


def test_announced_strokes_are_one_undo_entry_each_and_pixels_written_late_join_the_last():
    ledger = Ledger()
    ledger.wrote(KEY, _plane(), n_classes=2)
    ledger.pending = 2
    plane = _plane()
    plane[0, 0] = 1
    taken, _ = ledger.absorb(KEY, plane, n_classes=2)
    ledger.record_pending(taken, KEY)
    assert len(ledger.strokes) == 2 and len(ledger.strokes[0].pixels) == 0 and list(ledger.strokes[1].pixels) == [0]
    plane[0, 1] = 1  # written after the event
    late, _ = ledger.absorb(KEY, plane, n_classes=2)
    ledger.extend_last(late)
    assert sorted(ledger.strokes[-1].pixels) == [0, 1]
    ledger.step("undo", lambda key: _plane())
    assert (ledger.painted[KEY] == -1).all()


def test_a_stroke_over_several_slices_is_undone_as_one():
    ledger = Ledger()
    for key in (KEY, OTHER):
        ledger.wrote(key, _plane(), n_classes=2)
    plane = _plane()
    plane[4, 4] = 1
    ledger.pending = 1
    ledger.record_pending(ledger.absorb(KEY, plane, 2)[0], KEY)
    assert not ledger.is_unchanged(OTHER, plane) and ledger.is_unchanged(("img:8x8", (2,)), _plane())
    ledger.group_with_last([ledger.absorb(OTHER, plane, 2)[0]], KEY)
    assert len(ledger.strokes) == 1 and ledger.strokes[0][0] == "group"
    assert ledger.step("undo", lambda key: _plane()) == {KEY, OTHER}
    assert all((ledger.painted[k] == -1).all() for k in (KEY, OTHER))
    assert ledger.step("redo", lambda key: plane) == {KEY, OTHER}
    assert all(ledger.painted[k][4, 4] == 1 for k in (KEY, OTHER))


def test_a_stroke_on_another_slice_is_kept_for_it_and_handed_to_a_run():
    ledger = Ledger()
    assert ledger.painted_for_run(OTHER, 2) is None
    plane = _plane()
    plane[2, 2] = 1
    stroke, _ = ledger.absorb(OTHER, plane, 2)  # a slice never segmented: it showed zeros
    ledger.push_other_slice(stroke, OTHER)
    copy = ledger.painted_for_run(OTHER, 2)
    assert copy is not None and copy[2, 2] == 1 and copy is not ledger.painted[OTHER]
    assert ledger.painted_for_run(OTHER, 1) is None  # a class the model lacks: not handed over
    assert ledger.has_painting("img:8x8") and not ledger.has_painting("another")
    ledger.forget_written()  # the layer shows nothing of what was written; the user's edits stay
    assert not ledger.written and not ledger.segmented and ledger.painted[OTHER][2, 2] == 1


def test_a_write_during_a_stroke_keeps_the_strokes_pixels():
    ledger = Ledger()
    ledger.wrote(KEY, _plane(), n_classes=2)
    shown = _plane()
    shown[5, 5] = 1  # painted while the propagation ran, not taken in yet
    labels = _plane()
    labels[0, 0] = 1
    out = ledger.merge(KEY, shown, labels, n_classes=2)
    assert out[5, 5] == 1 and out[0, 0] == 1
    stroke, _ = ledger.absorb(KEY, out, n_classes=2)  # still a new edit for the stroke that made it
    assert list(stroke.pixels) == [5 * 8 + 5]


def test_compact_labels_and_painted_maps_fit_the_classes():
    assert compact_labels(np.array([[0, 3]]), 4).dtype == np.uint8
    assert compact_labels(np.array([[0, 300]], np.int32), 400).dtype == np.int32
    ledger = Ledger()
    assert ledger.painted_map(KEY, (4, 4), 300).dtype == np.int32
    assert ledger.painted_map(KEY, (5, 5), 2).shape == (5, 5)  # another shape: a new map


class _Session:
    def __init__(self, tasks, autosave=None, state="unchanged"):
        self.tasks, self.autosave, self.source, self._state = tasks, autosave, None, state

    def file_state(self, path):
        return self._state


def test_the_state_refuses_to_drop_learned_tasks_that_are_in_no_file():
    state = AnnotationState()
    state.check_switch()  # nothing in use: nothing to lose
    state.use_session(_Session([1, 2]), ("nuclei", None))
    assert state.saved_tasks == 2 and state.model_key == ("nuclei", None)
    state.check_switch()  # the tasks it came with are in its file
    state.session.tasks.append(3)
    with pytest.raises(ValueError, match="1 of the 3 learned task"):
        state.check_switch()
    state.session = _Session([1], autosave="/models/m.pt", state="gone")
    with pytest.raises(ValueError, match="is gone"):
        state.check_switch()
    state.session = _Session([1], autosave="/models/m.pt", state="unchanged")
    state.check_switch()
    assert state.tasks_file(state.session) == "/models/m.pt" and state.tasks_file(None) is None


def test_generations_tell_a_late_result_from_a_current_one():
    state = AnnotationState(target=SimpleNamespace())
    first = state.next_generation()
    assert state.is_current(first)
    state.take_over()  # a new dock: what the old one's workers hand back is stale, its target forgotten
    assert not state.is_current(first) and state.target is None
    ledger = state.ledger
    state.take_over()
    assert state.ledger is ledger  # the user's edits go on
    assert isinstance(Stroke(KEY, np.zeros(0), np.zeros(0)).key, tuple)
