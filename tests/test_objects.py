"""Issue 20 item 3: object-level clicks (add, remove, split, merge), their locality, object suggestions, bad input,
and lazy instances."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from napari_clis.instances import foreground_probability, segmentation_objects
from napari_clis.interactive import InteractionError
from napari_clis.objects import ObjectEditor, overlay_paint


def _centre(mask):
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(dist.argmax()), mask.shape))


def _reach(session, obj):
    """Pixels within about one object diameter of an object."""
    d = session.interaction.objects.diameter
    return ndimage.distance_transform_edt(~obj) <= 1.2 * d


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_segment_makes_instances_only_when_asked_and_keeps_them(nuclei_session, nuclei_fluo):
    image, _ = nuclei_fluo
    r = nuclei_session.segment(image)
    assert not r.instances_ready  # segment() no longer pays for the watershed
    inst = r.instances
    assert r.instances_ready and r.instances is inst
    fg = foreground_probability(r.probabilities)
    np.testing.assert_array_equal(inst, segmentation_objects(r.labels, fg))
    assert "instances" not in repr(r)


def test_the_labels_without_clicks_or_paint_do_not_make_the_objects(nuclei_session, nuclei_fluo):
    r = nuclei_session.segment(nuclei_fluo[0])
    labels = nuclei_session.labels  # what learn() reads: the network's labels, no watershed needed
    np.testing.assert_array_equal(labels, r.labels)
    assert not r.instances_ready
    np.testing.assert_array_equal(nuclei_session.instances, r.instances)  # made when asked for
    assert r.instances_ready


def test_the_nuclei_model_clicks_objects_and_the_lesion_model_regions(nuclei_session, lesion_session, nuclei_fluo,
                                                                      lesion):
    nuclei_session.segment(nuclei_fluo[0])
    assert nuclei_session.object_clicks and nuclei_session.click_mode == "object"
    lesion_session.segment(lesion[0])
    assert not lesion_session.object_clicks and lesion_session.click_mode == "region"
    with pytest.raises(InteractionError, match="object clicks"):
        lesion_session.click(10, 10, 1, "split")
    with pytest.raises(InteractionError, match="one object per class"):
        lesion_session.click_mode = "object"
    assert lesion_session.clicks == []


def test_a_background_click_removes_the_whole_object_and_a_click_adds_it_back(nuclei_session, nuclei_fluo):
    image, truth = nuclei_fluo
    s = nuclei_session
    s.segment(image)
    base, inst = s.labels.copy(), s.instances.copy()
    areas = np.bincount(inst.ravel())
    areas[0] = 0
    ident = int(np.argsort(areas)[len(areas) // 2])  # a typical object
    obj = inst == ident
    y, x = _centre(obj)
    s.click(y, x, 0)
    changed = s.labels != base
    np.testing.assert_array_equal(changed, obj)  # the whole object, nothing else
    assert not s.instances[obj].any() and s.instances.max() == inst.max() - 1
    # a click of the nucleus class at the same place adds the nucleus back, its extent from the probabilities
    # and the image's edges (the earlier background click is a background seed it respects, so undo it first)
    s.remove_click(0)
    np.testing.assert_array_equal(s.labels, base)
    s.set_clicks([[y, x]], [0])
    s.interaction.objects.replay([])  # the editor's state may be rebuilt from nothing: same result
    removed = s.labels.copy()
    s.set_clicks([], [])
    s.annotate(obj, 0)  # erased by the brush instead
    s.click(y, x, 1)
    s.clear_annotations()
    assert np.array_equal(removed[~obj], base[~obj])
    assert s.labels[y, x] == 1


def test_an_object_click_on_a_missed_nucleus_adds_the_whole_nucleus(nuclei_session, nuclei_he):
    image, _ = nuclei_he
    s = nuclei_session
    s.segment(image)
    inst, base = s.instances.copy(), s.labels.copy()
    fg = foreground_probability(s.result.probabilities)
    found = 0
    for ident in range(1, int(inst.max()) + 1, 3):
        obj = inst == ident
        if obj.sum() < 80:
            continue
        # the network's object taken away (as if missed) with the brush under a click-free editor state
        editor = ObjectEditor(s.result.probabilities, s.interaction.objects.image, np.where(obj, 0, base),
                              np.where(obj, 0, inst).astype(np.uint32), uncertainty=s.result.uncertainty)
        y, x = _centre(obj)
        editor.replay([_click(y, x, 1)])
        added = editor.labels != np.where(obj, 0, base)
        assert not (added & ~_reach(s, obj)).any()  # never farther than about one object diameter
        found += _iou(added, obj) >= 0.6
        assert fg[added].mean() > 0.3
    assert found >= 3


def _click(y, x, label, action="auto"):
    from napari_clis.objects import ObjectClick

    return ObjectClick(y, x, label, action)


def _touching_pair(inst):
    right = (inst[:, :-1] > 0) & (inst[:, 1:] > 0) & (inst[:, :-1] != inst[:, 1:])
    ys, xs = np.nonzero(right)
    for y, x in zip(ys, xs):
        a, b = int(inst[y, x]), int(inst[y, x + 1])
        if (inst == a).sum() > 60 and (inst == b).sum() > 60:
            return a, b, (int(y), int(x))
    return None


def test_merge_then_split_gives_back_two_objects_and_touches_nothing_else(nuclei_session, nuclei_he):
    image, _ = nuclei_he
    s = nuclei_session
    s.segment(image)
    inst, base = s.instances.copy(), s.labels.copy()
    pair = _touching_pair(inst)
    assert pair is not None
    a, b, (y, x) = pair
    both = (inst == a) | (inst == b)
    s.click(y, x, 1, "merge")
    merged = s.instances
    assert len(np.unique(merged[both])) == 1 and merged.max() == inst.max() - 1
    changed = s.labels != base
    assert not (changed & ~ndimage.binary_dilation(both, iterations=3)).any()  # at most the gap closed
    # a split click at one nucleus's centre cuts the merged object in two again, near where it was
    ca = _centre(inst == a)
    s.click(*ca, 1, "split")
    parts = s.instances
    ids = np.unique(parts[both])
    assert len(ids) == 2 and parts.max() == inst.max()
    best = max(_iou(parts == i, inst == a) for i in ids)
    assert best >= 0.6
    np.testing.assert_array_equal(s.labels, np.where(changed, s.labels, base))
    # undo both: exactly the network's objects again
    s.remove_click(1)
    s.remove_click(0)
    np.testing.assert_array_equal(s.instances, inst)
    np.testing.assert_array_equal(s.labels, base)


def test_a_click_changes_nothing_farther_than_an_object_diameter_from_its_object(nuclei_session, nuclei_fluo):
    image, truth = nuclei_fluo
    s = nuclei_session
    s.segment(image)
    rng = np.random.default_rng(0)
    errors = np.argwhere((s.labels > 0) != truth)
    for y, x in errors[rng.choice(len(errors), 12, replace=False)]:
        before_l, before_i = s.labels.copy(), s.instances.copy()
        s.click(int(y), int(x), int(truth[y, x]))
        changed = s.labels != before_l
        if not changed.any():
            continue
        touched = before_i == before_i[y, x] if before_i[y, x] else np.zeros_like(changed)
        touched[y, x] = True
        assert not (changed & ~_reach(s, touched | (s.instances == s.instances[y, x]))).any()


def test_a_background_click_on_an_overspill_trims_it_and_keeps_the_object(nuclei_session, nuclei_fluo):
    image, _ = nuclei_fluo
    s = nuclei_session
    s.segment(image)
    inst = s.instances.copy()
    areas = np.bincount(inst.ravel())
    areas[0] = 0
    ident = int(areas.argmax())
    obj = inst == ident
    # the object's farthest pixel from its centre: a click there is outside its core
    cy, cx = _centre(obj)
    ys, xs = np.nonzero(obj)
    k = int(np.argmax((ys - cy) ** 2 + (xs - cx) ** 2))
    s.click(int(ys[k]), int(xs[k]), 0)
    after = s.instances
    assert after[cy, cx] > 0 and s.labels[ys[k], xs[k]] == 0
    assert 0 < ((s.labels == 0) & obj).sum() < obj.sum()


@pytest.mark.parametrize("action, where, message", [
    ("split", "background", "background"),
    ("split", "small", "too small"),
    ("merge", "lone", "itself"),
    ("merge", "background", "no object within"),
])
def test_bad_object_clicks_are_refused_by_name_and_lose_nothing(nuclei_session, nuclei_fluo, action, where, message):
    image, _ = nuclei_fluo
    s = nuclei_session
    s.segment(image)
    inst = s.instances
    s.click(*_centre(inst == 1), 0)  # a click the user made before
    before_l, before_i, before_c = s.labels.copy(), s.instances.copy(), s.clicks
    inst = s.instances
    areas = np.bincount(inst.ravel())
    areas[0] = 10**9
    if where == "background":
        far = ndimage.distance_transform_edt(inst == 0)
        y, x = np.unravel_index(int(far.argmax()), far.shape)
    elif where == "small":
        ident = int(areas.argmin())
        y, x = _centre(inst == ident)
    else:  # an object far from every other object, clicked at its centre
        dist = ndimage.distance_transform_edt(inst == 0)
        ident = max(range(1, int(inst.max()) + 1), key=lambda i: dist[ndimage.binary_dilation(
            inst == i, iterations=2) & (inst != i)].min())
        y, x = _centre(inst == ident)
    with pytest.raises(InteractionError, match=message):
        s.click(int(y), int(x), 1, action)
    assert s.clicks == before_c
    np.testing.assert_array_equal(s.labels, before_l)
    np.testing.assert_array_equal(s.instances, before_i)
    # the same click passed with the whole list (a widget's Points layer) is refused by its index
    with pytest.raises(InteractionError, match="click 1 "):
        s.set_clicks([c[:2] for c in before_c] + [[y, x]], [c[2] for c in before_c] + [1], ["auto", action])
    assert s.clicks == before_c
    with pytest.raises(InteractionError, match="action"):
        s.click(5, 5, 1, "explode")


def test_undoing_a_click_that_a_later_split_needed_changes_nothing_for_it_and_says_why(nuclei_session, nuclei_he):
    image, _ = nuclei_he
    s = nuclei_session
    s.segment(image)
    inst = s.instances.copy()
    a, b, (y, x) = _touching_pair(inst)
    s.click(y, x, 1, "merge")
    s.click(*_centre(inst == a), 1, "split")
    s.click(*_centre(inst == b), 0)  # remove b's half
    s.set_clicks([c[:2] for c in s.clicks[1:]], [1, 0], ["split", "auto"])  # undo the merge: never refused
    assert len(s.clicks) == 2
    assert isinstance(s.click_notes, dict)


def test_object_suggestions_rank_whole_objects_by_their_uncertainty(nuclei_session, nuclei_he):
    image, _ = nuclei_he
    s = nuclei_session
    s.segment(image)
    ranked = s.interaction.suggest_objects(8)
    assert 1 <= len(ranked) <= 8
    doubts = [d for _, _, d, _ in ranked]
    assert doubts == sorted(doubts, reverse=True)
    inst, unc = s.instances, s.result.uncertainty
    for y, x, doubt, ident in ranked:
        if ident:
            assert inst[y, x] == ident
            assert doubt == pytest.approx(unc[inst == ident].sum(), rel=1e-4)
    pts = s.suggest(8)
    assert pts.shape == (len(ranked), 2)
    n_objects = int(inst.max())  # by default a quarter of the objects, 3 to 16: a few places to look first
    assert len(s.interaction.suggest_objects(None)) <= min(16, max(3, -(-n_objects // 4))) < n_objects
    default = s.interaction.suggest_objects(None)  # the most doubtful ones first, as when asked for that many
    assert default == s.interaction.suggest_objects(len(default))
    # a clicked object is not suggested again
    top = [r for r in ranked if r[3]][0]
    s.click(top[0], top[1], 1)
    assert top[3] not in [i for *_, i in s.interaction.suggest_objects(8)]


def test_an_instance_head_asked_of_a_model_without_one_is_refused_with_a_note(nuclei_session, nuclei_fluo):
    with pytest.raises(ValueError, match="no instance head"):
        nuclei_session.instance_method = "head"
    assert nuclei_session.instance_method == "auto"
    with pytest.raises(ValueError, match="instance_method"):
        nuclei_session.instance_method = "magic"
    nuclei_session.instance_method = "watershed"
    try:
        r = nuclei_session.segment(nuclei_fluo[0])
        assert r.instances.max() > 5
    finally:
        nuclei_session.instance_method = "auto"


def test_ten_thousand_objects_in_one_image():
    """A 1000x1000 field of 10,000 spots: clicks stay fast and local, ids stay 1..N, suggestions and paint work."""
    h = w = 1000
    yy, xx = np.mgrid[:h, :w]
    spots = ((yy % 10 - 4.5) ** 2 + (xx % 10 - 4.5) ** 2) <= 9
    ids = ((yy // 10) * 100 + xx // 10 + 1) * spots
    p1 = np.where(spots, 0.9, 0.05).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    image = np.repeat(np.where(spots, 0.4, -0.4)[None].astype(np.float32), 3, 0)
    editor = ObjectEditor(probs, image, spots.astype(np.int32), ids.astype(np.uint32),
                          uncertainty=(1 - (probs**2).sum(0)))
    assert editor.instances.max() == 10_000
    t = time.perf_counter()
    editor.replay([_click(505, 505, 0)])  # remove one spot
    editor.replay([_click(505, 505, 0), _click(304, 300, 1, "merge")])
    seconds = time.perf_counter() - t
    changed = editor.labels != spots
    assert changed.sum() > 0
    assert not changed[(np.abs(yy - 505) > 12) & (np.abs(yy - 300) > 12)].any()
    assert editor.instances.max() == 10_000 - 2
    np.testing.assert_array_equal(np.unique(editor.instances), np.arange(10_000 - 1))
    assert seconds < 2.0
    painted = np.full((h, w), -1, np.int16)
    painted[100:103, :] = 0  # erase a line through 100 spots: each keeps its largest piece
    labels, inst = overlay_paint(editor.labels, editor.instances, painted)
    assert (labels[100:103] == 0).all() and not (labels != editor.labels)[~(painted >= 0)].any()
    assert inst.max() <= 10_000
    from napari_clis.objects import rank_objects

    ranked = rank_objects(inst, labels, editor.uncertainty, editor.fg, sure=0.0, n=16)
    assert len(ranked) == 16
    with pytest.raises(InteractionError, match="itself"):
        editor.replay([_click(505, 505, 0), _click(304, 300, 1, "merge"), _click(704, 704, 1, "merge")],
                      strict={2})
    assert len(editor.applied) == 2


def test_an_object_click_on_a_missed_object_far_larger_than_the_networks_finds_its_extent():
    """The network found only specks (6 px across) and missed a nucleus 50 px across: the click's window, 1.5
    typical diameters, lies inside the nucleus (no edge in it); it grows until the nucleus stands out."""
    from napari_clis.objects import ObjectClick

    h = w = 200
    yy, xx = np.mgrid[:h, :w]
    nucleus = (yy - 100) ** 2 + (xx - 100) ** 2 <= 25 ** 2
    specks = np.zeros((h, w), np.uint32)
    for k, (y, x) in enumerate([(20, 20), (20, 180), (180, 20), (180, 180), (20, 100)], start=1):
        specks[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = k
    image = np.where(nucleus | (specks > 0), 0.4, -0.4).astype(np.float32)[None].repeat(3, 0)
    fg = (specks > 0).astype(np.float32)
    probabilities = np.stack([1 - fg, fg])
    editor = ObjectEditor(probabilities, image, (specks > 0).astype(np.int32), specks)
    assert editor.diameter < 8
    editor.replay([ObjectClick(100, 100, 1)])
    added = editor.instances == editor.instances[100, 100]
    assert editor.instances[100, 100] > 0
    assert (added & nucleus).sum() > 0.9 * nucleus.sum() and (added & ~nucleus).sum() < 0.1 * nucleus.sum()


def test_a_paint_step_in_the_replay_is_overlay_paint_in_a_box_and_undo_restores_it():
    """Issue 20 item 4: a PaintStep writes what overlay_paint would (labels and object ids alike, computed in the
    box of the paint and the objects it touches), and replaying without it restores the state exactly."""
    from napari_clis.objects import ObjectClick, PaintStep

    h = w = 300
    yy, xx = np.mgrid[:h, :w]
    spots = ((yy % 10 - 4.5) ** 2 + (xx % 10 - 4.5) ** 2) <= 9
    ids = ((yy // 10) * 30 + xx // 10 + 1) * spots
    p1 = np.where(spots, 0.9, 0.05).astype(np.float32)
    probs = np.stack([1 - p1, 0.5 * p1, 0.5 * p1])
    image = np.repeat(np.where(spots, 0.4, -0.4)[None].astype(np.float32), 3, 0)
    editor = ObjectEditor(probs, image, spots.astype(np.int32), ids.astype(np.uint32))
    clicks = [ObjectClick(155, 155, 0)]
    editor.replay(clicks)
    labels, inst = editor.labels.copy(), editor.instances.copy()
    cases = [((yy - 40) ** 2 + (xx - 40) ** 2 <= 400, 0),  # erase 12 objects: the last ones take their ids
             ((yy - 295) ** 2 + (xx - 150) ** 2 <= 900, 0),  # at the border, the highest ids among them
             (((yy - 200) ** 2 + (xx - 100) ** 2 <= 49), 1),  # foreground joining the objects it touches
             ((np.abs(yy - 100) <= 1) & (xx > 20) & (xx < 280), 0),  # cutting objects in pieces
             ((yy - 250) ** 2 + (xx - 250) ** 2 <= 81, 2)]  # another class over objects: a new object
    for mask, cls in cases:
        painted = np.where(mask, cls, -1).astype(np.int16)
        step = PaintStep(np.flatnonzero(mask), np.full(int(mask.sum()), cls))
        editor.replay(clicks, paint={1: step})
        want_l, want_i = overlay_paint(labels, inst, painted)
        np.testing.assert_array_equal(editor.labels, want_l)
        np.testing.assert_array_equal(editor.instances, want_i)
        np.testing.assert_array_equal(np.unique(editor.instances), np.arange(int(editor.instances.max()) + 1))
        editor.replay(clicks)
        np.testing.assert_array_equal(editor.labels, labels)
        np.testing.assert_array_equal(editor.instances, inst)
    # before the click, the paint step is what the click acts on: a background click on a painted spot removes it
    blob = (yy - 155) ** 2 + (xx - 155) ** 2 <= 16
    editor.replay(clicks, paint={0: PaintStep(np.flatnonzero(blob), np.ones(int(blob.sum())))})
    assert not editor.labels[blob].any() and len(editor.applied) == 1 and not editor.notes


def _editor_over(fg: np.ndarray, instances: np.ndarray):
    image = np.where(fg > 0.5, 0.4, -0.4).astype(np.float32)[None].repeat(3, 0)
    return ObjectEditor(np.stack([1 - fg, fg]), image, (instances > 0).astype(np.int32), instances)


def _discs(h: int, w: int, centres, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((h, w), np.uint32)
    for k, (y, x) in enumerate(centres, start=1):
        out[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    return out


def test_a_background_click_where_the_network_is_sure_removes_the_whole_false_object():
    """A false object the network is sure of everywhere (a fold, debris): a background click at its centre removes
    it whole, not only the part near the click."""
    from napari_clis.objects import ObjectClick

    inst = _discs(160, 160, [(20, 20), (20, 140), (140, 20), (140, 140)], 6)
    yy, xx = np.mgrid[:160, :160]
    blob = (np.abs(yy - 80) <= 20) & (np.abs(xx - 80) <= 20)  # about 9 typical objects in size
    inst[blob] = 5
    fg = np.where(inst > 0, 0.99, 0.01).astype(np.float32)
    editor = _editor_over(fg, inst)
    editor.replay([ObjectClick(80, 80, 0)])
    assert not (editor.labels[blob] > 0).any() and not (editor.instances == 5).any()
    assert ((editor.instances > 0) == ((inst > 0) & ~blob)).all()  # the other objects as they were


def test_a_background_click_on_an_unsure_bridge_keeps_the_nuclei_it_joins():
    """Two nuclei found as one object through a bridge the network is unsure of: a background click on the bridge
    takes the bridge, and the nuclei (where the network is sure) stay."""
    from napari_clis.objects import ObjectClick

    inst = _discs(120, 200, [(60, 60), (60, 140), (15, 15), (15, 185), (105, 15), (105, 185)], 14)
    yy, xx = np.mgrid[:120, :200]
    bridge = (np.abs(yy - 60) <= 6) & (xx > 70) & (xx < 130) & (inst == 0)
    inst[bridge | (inst == 2)] = 1
    fg = np.where(inst > 0, 0.99, 0.01).astype(np.float32)
    fg[bridge] = 0.6
    editor = _editor_over(fg, inst)
    editor.replay([ObjectClick(60, 100, 0)])
    nuclei = _discs(120, 200, [(60, 60), (60, 140)], 14) > 0
    assert (editor.labels[nuclei] > 0).all()  # both nuclei kept, whole
    assert editor.labels[60, 100] == 0 and (editor.labels[bridge] == 0).mean() > 0.5


@pytest.mark.parametrize("apart", [8, 16])
def test_a_split_click_cuts_a_pair_with_a_faint_neck_across_and_never_through_the_nucleus_clicked(apart):
    """Two touching nuclei whose union shows one centre only (8 px apart: a faint neck) were refused ("one centre
    only"); they are cut across now, the clicked nucleus in one piece and most of the other in the second. With
    a clear neck (16 px) the cut follows it as before."""
    from napari_clis.objects import ObjectClick

    h, w = 80, 100
    yy, xx = np.mgrid[:h, :w]
    a = (yy - 40) ** 2 + (xx - 40) ** 2 <= 100
    b = (yy - 40) ** 2 + (xx - 40 - apart) ** 2 <= 100
    pair = a | b
    others = np.zeros((h, w), np.uint32)
    for k, x in enumerate((12, 50, 88), start=2):  # three lone nuclei of the same size: the typical diameter
        others[(yy - 8) ** 2 + (xx - x) ** 2 <= 49] = k
    inst = np.where(pair, 1, others).astype(np.uint32)
    fg = (inst > 0).astype(np.float32)
    image = np.where(fg > 0, 0.4, -0.4).astype(np.float32)[None].repeat(3, 0)
    editor = ObjectEditor(np.stack([1 - fg, fg]), image, (inst > 0).astype(np.int32), inst)
    editor.replay([ObjectClick(40, 40, 1, "split")])
    assert not editor.notes, editor.notes  # applied, not refused
    parts = editor.instances
    mine, other = parts[40, 40], parts[40, 40 + apart]
    assert mine > 0 and other > 0 and mine != other
    assert set(np.unique(parts[pair])) == {mine, other}
    own_a, own_b = a & ~b, b & ~a
    assert (parts[own_a] == mine).mean() > 0.9 and (parts[own_b] == other).mean() > 0.9
    cut = ndimage.binary_dilation(parts == other) & (parts == mine)
    ys, xs = np.nonzero(cut)
    assert np.hypot(ys - 40, xs - 40).min() >= 4  # the clicked centre stays inside its piece
    np.testing.assert_array_equal(parts[~pair], inst[~pair])  # nothing else changes


def test_a_split_click_on_one_round_nucleus_is_refused_and_changes_nothing():
    from napari_clis.objects import ObjectClick

    h, w = 60, 100
    yy, xx = np.mgrid[:h, :w]
    inst = np.zeros((h, w), np.uint32)
    for k, x in enumerate((15, 50, 85), start=1):  # three round nuclei, one clicked
        inst[(yy - 30) ** 2 + (xx - x) ** 2 <= 100] = k
    fg = (inst > 0).astype(np.float32)
    image = np.where(fg > 0, 0.4, -0.4).astype(np.float32)[None].repeat(3, 0)
    editor = ObjectEditor(np.stack([1 - fg, fg]), image, (inst > 0).astype(np.int32), inst)
    editor.replay([ObjectClick(30, 52, 1, "split")])
    assert "one centre only and is round" in editor.notes[0]
    np.testing.assert_array_equal(editor.instances, inst)
