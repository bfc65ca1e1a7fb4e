"""Continual learning on real images: forward transfer, untouched earlier tasks, save/load, cancel, rollback."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clis import ClisSession
from napari_clis.checkpoint import CheckpointError
from napari_clis.metrics import dice
from napari_clis.session import AutosaveError, InteractionError, LearnCancelled, LearnRejected


def _halves(image, truth):
    w = image.shape[1] // 2
    return (image[:, :w], truth[:, :w].astype(np.int32)), (image[:, w:], truth[:, w:].astype(np.int32))


@pytest.fixture(scope="module")
def learned(nuclei_he):
    """A session that learned the left half of the H&E image (its ground truth painted in) as task 1."""
    (a, ta), b = _halves(*nuclei_he)
    s = ClisSession.from_pretrained("nuclei", device="cpu")
    before_b = s.segment(b[0]).labels
    s.segment(a)
    s.annotate(ta > 0, 1)
    s.annotate(ta == 0, 0)
    record = s.learn()
    return s, record, (a, ta), b, before_b


def test_learning_one_half_improves_the_other_half_of_the_slide(learned):
    s, record, _, (b, tb), before_b = learned
    assert record.task == 1 and record.parent == 0 and s.tasks == [record]
    assert record.dice_after >= record.dice_before
    r = s.segment(b)
    assert s.task == 1, "the task-aware module should pick the task learned on the same slide"
    assert dice(r.labels > 0, tb > 0) > dice(before_b > 0, tb > 0)


def test_an_unseen_image_keeps_a_learned_task_only_where_it_agrees_with_the_pretrained_one(learned):
    from napari_clis.continual import choose_task
    from napari_clis.preprocessing import normalize_image

    s, _, (a, _), (b, _), _ = learned
    s.segment(b)
    assert s.task_choice["nearest"] == 1 and not s.task_choice["known"]
    agreement = s.task_choice["agreement"]
    assert 0.9 <= agreement <= 1.0  # a refinement of the pretrained segmentation: task 1 is used (first test)
    x, _ = s._working(normalize_image(b), max_side=512)
    fp, _, _ = s._choose_task(normalize_image(b))
    # the session adds whether the image is unlike the pretraining images (it is not: the check applies)
    choice = dict(s.task_choice)
    assert choice.pop("unfamiliar") is False
    assert choose_task(s.net, x, fp, s.tasks, min_agreement=agreement) == (1, choice)
    assert choose_task(s.net, x, fp, s.tasks, min_agreement=agreement + 1e-6)[0] == 0
    # the image task 1 learned from is known: it keeps its own task whatever the agreement
    xa, _ = s._working(normalize_image(a), max_side=512)
    fa, _, _ = s._choose_task(normalize_image(a))
    assert choose_task(s.net, xa, fa, s.tasks, min_agreement=2.0) == (1, {"nearest": 1, "known": True,
                                                                          "agreement": None})


def test_the_agreement_check_sees_a_large_image_at_the_resolution_it_is_segmented_at(learned):
    """Over 512 px the fingerprint sees the image shrunk, the agreement check its central 256 px at full size."""
    from napari_clis.continual import choose_task
    from napari_clis.preprocessing import normalize_image

    s, _, _, (b, _), _ = learned
    big = np.ascontiguousarray(np.tile(b, (3, 4, 1)))  # 768 x 640, the right half of the slide repeated
    x = normalize_image(big)
    fp, task, info = s._choose_task(x)
    y0, x0 = (x.shape[1] - 256) // 2, (x.shape[2] - 256) // 2
    crop, _ = s._working(x[:, y0:y0 + 256, x0:x0 + 256])
    assert crop.shape[-2:] == (256, 256)
    assert info.pop("unfamiliar") is False
    assert (task, info) == choose_task(s.net, crop, fp, s.tasks)
    shrunk, _ = s._working(x, max_side=512)
    assert info["agreement"] != choose_task(s.net, shrunk, fp, s.tasks)[1]["agreement"]


def test_a_task_learned_from_a_mistaken_annotation_does_not_take_over_a_new_image(nuclei_he, tmp_path):
    """The user painted every nucleus of one half 6 px too wide and accepted it; learning (at a high rate, so that
    the mistake is learnt in a few steps) keeps it as that half's task, but the other half of the slide, where
    the task would remake the pretrained segmentation, keeps the pretrained task."""
    from scipy import ndimage

    (a, ta), (b, tb) = _halves(*nuclei_he)
    s = ClisSession.from_pretrained("nuclei", device="cpu")
    pretrained_b = s.segment(b).labels
    s.segment(a)
    wide = ndimage.binary_dilation(ta > 0, iterations=6)
    s.annotate(wide, 1)
    s.annotate(~wide, 0)
    s.learn_settings.lr, s.learn_settings.steps = 0.05, 40
    record = s.learn()
    assert record.task == 1 and record.dice_after > record.dice_before
    assert s.task_choice == {"nearest": 1, "known": True, "agreement": None}  # the image is now task 1's own
    mistaken = s.segment(b, task=1).labels
    assert dice(mistaken > 0, tb > 0) < dice(pretrained_b > 0, tb > 0) - 0.2  # the mistake, forced on the other half
    r = s.segment(b)
    assert s.task == 0 and s.task_choice["nearest"] == 1 and s.task_choice["agreement"] < 0.9
    np.testing.assert_array_equal(r.labels, pretrained_b)
    assert s.segment(a).labels is not None and s.task == 1 and s.task_choice["known"]
    # batch segmentation chooses as segment() does
    import tifffile

    path = tmp_path / "b.tif"
    tifffile.imwrite(path, b)
    (out,) = s.segment_many([path])
    np.testing.assert_array_equal(out.labels, pretrained_b)
    assert out.tasks == (0,)
    tifffile.imwrite(tmp_path / "a.tif", a)
    (written,) = s.segment_many([tmp_path / "a.tif"], tmp_path / "out")  # the learned image: its own task
    from napari_clis.batch import read_batch_metadata

    assert written.tasks == (1,) and read_batch_metadata(written.outputs["labels"])["tasks"] == [1]


def test_the_pretrained_task_is_untouched_by_learning(learned, nuclei_he):
    s, _, (a, _), _, _ = learned
    fresh = ClisSession.from_pretrained("nuclei", device="cpu")
    np.testing.assert_array_equal(s.segment(a, task=0).probabilities, fresh.segment(a).probabilities)


def test_a_second_task_leaves_the_first_exactly_as_it_was(learned, nuclei_fluo):
    s, _, (a, _), _, _ = learned
    first = s.segment(a, task=1).probabilities
    image, truth = nuclei_fluo
    s2 = _copy(s)
    s2.segment(image)
    s2.annotate(truth, 1)
    s2.annotate(~truth, 0)
    rec = s2.learn(steps=5)
    assert rec.task == 2
    np.testing.assert_array_equal(s2.segment(a, task=1).probabilities, first)


def _copy(s):
    import copy

    t = ClisSession(copy.deepcopy(s.net), s.metadata, device="cpu")
    t.tasks = list(s.tasks)
    return t


def test_save_and_load_round_trip_exactly(learned, tmp_path):
    s, record, (a, _), _, _ = learned
    path = tmp_path / "session.pt"
    settings = (s.smoothness, s.calibration, s.locality)
    try:
        s.smoothness, s.calibration, s.locality = 3.0, None, 0.35  # the user's click settings travel too
        s.save(path)
    finally:
        s.smoothness, s.calibration, s.locality = settings
    t = ClisSession.load(path, device="cpu")
    assert (t.smoothness, t.calibration, t.locality) == (3.0, None, 0.35)
    t.smoothness, t.calibration, t.locality = settings
    assert [r.to_dict() for r in t.tasks] == [r.to_dict() for r in s.tasks]
    assert set(t.annotations) == {1} and t.remembered == s.remembered
    np.testing.assert_array_equal(t.annotations[1], s.annotations[1])
    for task in (0, 1):
        np.testing.assert_array_equal(t.segment(a, task=task).probabilities, s.segment(a, task=task).probabilities)


def test_cancel_leaves_the_model_as_it_was(learned):
    s, _, (a, ta), _, _ = learned
    t = _copy(s)
    t.segment(a)
    net, tasks = t.net, list(t.tasks)
    with pytest.raises(LearnCancelled):
        t.learn(steps=10, progress=lambda step, total: step < 3)
    assert t.net is net and t.tasks == tasks and t.net.n_tasks == 2


def test_a_step_that_makes_the_image_worse_is_rolled_back_with_the_reason(learned, monkeypatch, tmp_path):
    import napari_clis.session as session_module

    s, _, (a, _), _, _ = learned
    t = _copy(s)
    t.segment(a)
    real = session_module.learn_task

    def worse(*args, **kwargs):
        new, task, info = real(*args, **kwargs)
        return new, task, {**info, "agreement_after": 0.5}  # it would undo what the user accepted

    monkeypatch.setattr(session_module, "learn_task", worse)
    net = t.net
    t.segment(a, task=0)
    t.autosave = tmp_path / "auto.pt"  # the file that holds the session's task remembers the image too
    with pytest.raises(LearnRejected, match="rolled back: it would change too much of what you accepted "
                       r"\(it agrees with 50% of the pixels you did not correct; at least 90% are needed\)"):
        t.learn(steps=2)
    assert t.net is net and len(t.tasks) == 1
    assert ClisSession.load(t.autosave).remembered == t.remembered != []
    assert t.task_choice == {"nearest": 0, "known": True, "agreement": None}  # remembered from now on
    remembered = list(t.remembered)
    with pytest.raises(LearnRejected, match="rolled back"):  # the same image rolled back again: remembered once
        t.learn(steps=2)
    assert t.remembered == remembered
    # the image keeps the task that segmented it, even though a learned task is near it
    t.segment(a)
    assert t.task == 0 and t.remembered[-1][1] == 0 and t.task_choice["known"]


def test_the_kernels_left_free_for_new_tasks_are_counted_and_a_rollback_says_when_none_are(learned, monkeypatch):
    import torch

    import napari_clis.session as session_module

    s, record, (a, _), _, _ = learned
    fresh = ClisSession.from_pretrained("nuclei", device="cpu")
    free0, reserve = fresh.free_kernels
    assert free0 == reserve == 97  # the pretrained task leaves 97 of its 704 kernels off: all free
    assert s.free_kernels == (reserve - record.kernels_new, reserve)
    t = _copy(s)
    real = session_module.learn_task
    monkeypatch.setattr(session_module, "learn_task", lambda *args, **kwargs: (lambda r: (
        r[0], r[1], {**r[2], "corrected_before": 0.2, "corrected_after": 0.1}))(real(*args, **kwargs)))
    t.segment(a, task=0)
    with pytest.raises(LearnRejected) as first:
        t.learn(steps=2)
    assert "free" not in str(first.value) and "fewer of your corrections than the current model (10% of the " \
        "corrected pixels, against 20%)" in str(first.value)
    with torch.no_grad():  # task 1 takes every kernel still free
        for conv in t.net.masked_convs().values():
            conv.gates.logits[1].fill_(3.0)
    assert t.free_kernels == (0, reserve)
    with pytest.raises(LearnRejected, match="No kernel of the network is free any more"):
        t.learn(steps=2)


def test_a_task_that_finds_none_of_the_objects_is_not_kept_even_if_the_model_did_no_better(learned, monkeypatch):
    import napari_clis.session as session_module

    s, _, (a, _), _, _ = learned
    t = _copy(s)
    t.segment(a)
    real = session_module.learn_task
    monkeypatch.setattr(session_module, "learn_task", lambda *args, **kwargs: (lambda r: (
        r[0], r[1], {**r[2], "dice_before": 0.0, "dice_after": 0.0}))(real(*args, **kwargs)))
    n = len(t.tasks)
    with pytest.raises(LearnRejected, match="it would find none of the objects"):
        t.learn(steps=2)
    assert len(t.tasks) == n


def test_learning_needs_a_segmentation_with_something_in_it(nuclei_fluo):
    s = ClisSession.from_pretrained("nuclei", device="cpu")
    with pytest.raises(InteractionError, match="segment"):
        s.learn()
    s.segment(np.zeros((64, 64), np.uint8))
    s.annotate(np.ones((64, 64), bool), 0)
    with pytest.raises(InteractionError, match="empty"):
        s.learn()


def test_a_step_count_that_is_not_a_whole_number_of_steps_is_refused_and_nothing_is_learned(nuclei_fluo):
    image, truth = nuclei_fluo
    s = ClisSession.from_pretrained("nuclei", device="cpu")
    s.segment(image[:96, :96])
    net = s.net
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a whole number"):
            s.learn(steps=bad)
    assert s.net is net and s.tasks == [] and s.task == 0


def test_a_task_record_prints_without_its_fingerprint(learned):
    text = repr(learned[0].tasks[0])
    assert "dice_after" in text and "fingerprint" not in text and len(text) < 600


def test_a_failed_autosave_keeps_the_last_good_file_and_the_model(learned, tmp_path, monkeypatch):
    import napari_clis.checkpoint as checkpoint
    import napari_clis.session as session_module

    real = session_module.learn_task

    def accepted(*args, **kwargs):  # this test is about saving: let the learn step count as an improvement
        new, task, info = real(*args, **kwargs)
        return new, task, {**info, "dice_after": info["dice_before"] + 0.01}

    monkeypatch.setattr(session_module, "learn_task", accepted)
    s, _, (a, ta), _, _ = learned
    t = _copy(s)
    path = tmp_path / "auto.pt"
    t.save(path)
    good = path.read_bytes()
    t.autosave = path
    t.segment(a)

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_disk)
    with pytest.raises(AutosaveError, match="No space left") as err:  # a CheckpointError
        t.learn(steps=2)
    assert isinstance(err.value, CheckpointError) and "is kept in this session, but it is not saved" in str(err.value)
    assert path.read_bytes() == good  # the file on disk is the last good one
    # and the task just learned is not thrown away: it is in the session, to be saved elsewhere
    assert len(t.tasks) == 2 and t.net.n_tasks == 3 and err.value.record is t.tasks[-1] and t.task == 2
    monkeypatch.undo()
    t.save(tmp_path / "elsewhere.pt")
    assert len(ClisSession.load(tmp_path / "elsewhere.pt", device="cpu").tasks) == 2


def test_saving_where_it_cannot_be_written_says_so(learned, tmp_path):
    s, *_ = learned
    with pytest.raises((CheckpointError, OSError)):
        s.save(tmp_path / "missing-folder" / "s.pt")


def test_a_task_records_the_corrections_it_learned_from_not_those_made_while_it_learned(nuclei_fluo):
    image, truth = nuclei_fluo
    s = ClisSession.from_pretrained("nuclei", device="cpu")
    s.segment(image[:128, :128])
    s.annotate(truth[:128, :128] > 0, 1)  # the true nuclei painted: something to learn
    s.click(10, 10, 0)
    late = []

    def progress(step, total):  # the user clicks again while the task learns (the widget allows it)
        if step == 1:
            late.append(s.click(100, 100, 1))
        return True

    record = s.learn(steps=8, progress=progress)
    assert late and [tuple(c) for c in record.clicks] == [(10, 10, 0)]
    assert len(s.clicks) == 2  # the late click still applies to the segmentation


def test_the_corrections_a_task_is_judged_on_are_the_pixels_the_user_changed(nuclei_fluo):
    """Learning an image nobody corrected reports that nothing was corrected (not the pixels where the network's
    mean over its samples and one plain pass differ); after a click, the corrected pixels are what it changed."""
    image, truth = nuclei_fluo
    s = ClisSession.from_pretrained("nuclei", device="cpu")
    s.segment(image)  # here the mean of the samples and one plain pass differ on a few pixels
    record = s.learn(steps=2)
    assert record.corrected_before is None and record.corrected_after is None
    assert record.agreement_after is not None and record.agreement_after > 0.9
    s.segment(image[:128, :128], task=0)
    segmented = s.labels.copy()
    s.annotate(truth[:128, :128] > 0, 1)
    changed = s.labels != segmented
    assert changed.any()
    record = s.learn(steps=2)
    # the model before gets none of them right: they are exactly where the user changed its segmentation
    assert record.corrected_before is not None and record.corrected_before < 0.05
