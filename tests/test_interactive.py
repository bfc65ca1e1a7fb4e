"""Clicks, painted annotations and their propagation (the interactive learning module)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clis.evaluation.simulated_user import (
    ClisMethod,
    iou,
    next_click,
    noc,
    region_oracle,
    run_protocol,
    wrong_regions,
)
from napari_clis.interactive import (
    DEFAULT_CALIBRATION,
    DEFAULT_LOCALITY,
    DEFAULT_SMOOTHNESS,
    Interaction,
    InteractionError,
    build_region_graph,
)


def _straddling_scene():
    """A 40x40 image, dark left half (background) and bright right half (object), whose superpixels are
    vertical 10-px stripes shifted so that stripe 2 (x 15..24) straddles the object border at x = 20.
    The network is right about the border but unsure on the object."""
    h, w = 40, 40
    img = np.full((3, h, w), -0.4, np.float32)
    img[:, :, 20:] = 0.4
    sp = (np.arange(w)[None, :].repeat(h, 0) + 5) // 10 + 1
    p1 = np.where(np.arange(w) >= 20, 0.45, 0.05).astype(np.float32)[None, :].repeat(h, 0)
    probs = np.stack([1 - p1, p1])
    unc = 1 - (probs**2).sum(0)
    return img, sp.astype(np.int32), probs, unc


def test_a_click_on_a_straddling_superpixel_labels_only_its_own_side():
    img, sp, probs, unc = _straddling_scene()
    g = build_region_graph(sp, probs, unc, img)
    assert len(np.unique(g.superpixel)) < g.n  # the straddling superpixel was split
    inter = Interaction(g, calibration=None)
    assert inter.labels.sum() == 0  # the network says background everywhere (p = 0.45)
    inter.click(20, 22, 1)  # right part of stripe 2: x 20..24
    lab = inter.labels
    assert lab[:, 20:25].all()
    assert not lab[:, 15:20].any(), "the click spread across the object border"


def test_the_region_graph_is_the_same_for_sparse_superpixel_ids(nuclei_session, nuclei_he):
    """Compact SLIC ids take a lookup table, sparse ones a sort: the same regions, numbered in the same order."""
    r = nuclei_session.segment(nuclei_he[0][:160, :200], n_samples=2)
    from napari_clis.preprocessing import normalize_image

    x = normalize_image(nuclei_he[0][:160, :200])
    compact = build_region_graph(r.superpixels, r.probabilities, r.uncertainty, x)
    sparse = build_region_graph(r.superpixels.astype(np.int64) * 100_003 + 7, r.probabilities, r.uncertainty, x)
    assert compact.n > len(np.unique(r.superpixels))  # split by the network's labels and confidence
    for field in ("regions", "area", "logp", "colour", "uncertainty", "centroid", "edges", "contrast"):
        assert np.array_equal(getattr(compact, field), getattr(sparse, field)), field
    assert np.array_equal(compact.superpixel * 100_003 + 7, sparse.superpixel)
    assert compact.regions.max() == compact.n - 1 and compact.area.min() > 0  # every number is a region


def test_a_click_does_not_cross_the_border_the_network_sees_inside_a_superpixel():
    img, sp, probs, unc = _straddling_scene()
    probs = probs.copy()
    probs[1][:, 20:] = 0.9
    probs[0] = 1 - probs[1]
    inter = Interaction(build_region_graph(sp, probs, unc, img), calibration=None)
    np.testing.assert_array_equal(inter.labels, probs.argmax(0))
    inter.click(10, 17, 0)  # background side of the straddling stripe
    inter.click(10, 23, 1)  # object side
    np.testing.assert_array_equal(inter.labels, probs.argmax(0))
    inter.clear_clicks()
    inter.click(10, 17, 1)  # the user says the dark part belongs to the object: only that part changes
    assert inter.labels[:, 15:25].all() and not inter.labels[:, :15].any()


def test_clicks_of_two_classes_in_one_region_split_it_along_the_colour_edge():
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, np.full_like(img, 0.0) + img), calibration=None)
    probs_flat = probs.copy()
    probs_flat[1] = 0.3  # the network sees no border: stripe 2 (x 15..24) is one region
    probs_flat[0] = 0.7
    inter = Interaction(build_region_graph(sp, probs_flat, unc, img), calibration=None)
    r = inter.graph.regions
    assert r[10, 16] == r[10, 23]
    inter.click(10, 16, 0)
    inter.click(30, 23, 1)
    lab = inter.labels
    assert lab[10, 16] == 0 and lab[30, 23] == 1, "each click keeps its class"
    assert not lab[:, 15:20].any() and lab[:, 20:25].all(), "the split follows the colour edge at x = 20"
    assert sorted(inter.split_regions()) == [int(r[10, 16])]


def test_clicks_fix_their_regions_and_remove_click_restores_the_segmentation():
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img), calibration=None)
    before = inter.labels.copy()
    i = inter.click(5, 3, 1)
    assert inter.labels[5, 3] == 1
    inter.remove_click(i)
    np.testing.assert_array_equal(inter.labels, before)
    inter.click(5, 3, 1)
    inter.click(5, 33, 0)
    inter.clear_clicks()
    np.testing.assert_array_equal(inter.labels, before)


def test_the_pairwise_term_spreads_a_click_over_similar_unsure_neighbours_but_not_across_an_edge():
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img), smoothness=20.0, calibration=None)
    inter.click(20, 37, 1)
    lab = inter.labels
    assert lab[:, 20:].all(), "the unsure object (p = 0.45) should follow the click along its uniform colour"
    assert not lab[:, :20].any(), "the contrast edge at x = 20 should stop the propagation"


def test_calibration_lets_one_click_correct_every_similar_region():
    img, sp, probs, unc = _straddling_scene()
    plain = Interaction(build_region_graph(sp, probs, unc, img), smoothness=0.0, calibration=None)
    calib = Interaction(build_region_graph(sp, probs, unc, img), smoothness=0.0, locality=None)
    for inter in (plain, calib):
        inter.click(20, 37, 1)
    assert plain.labels[:, 20:35].sum() == 0
    assert calib.labels[:, 20:].all() and not calib.labels[:, :20].any()


def test_the_calibration_reaches_similar_regions_near_the_click_and_fades_far_from_it():
    """Two unsure objects (p = 0.45) of the same colour, 200 px apart in a 40x300 image: a click on the left
    one corrects it with the default reach (sigma = 0.2 x 300 = 60 px), and leaves the far one as the network
    had it; without locality the one click flips both."""
    h, w = 40, 300
    img = np.full((3, h, w), -0.4, np.float32)
    obj = np.zeros(w, bool)
    obj[20:60] = obj[240:280] = True
    img[:, :, obj] = 0.4
    sp = ((np.arange(w)[None, :].repeat(h, 0)) // 10 + 1).astype(np.int32)
    p1 = np.where(obj, 0.45, 0.05).astype(np.float32)[None, :].repeat(h, 0)
    probs = np.stack([1 - p1, p1])
    unc = 1 - (probs**2).sum(0)
    local = Interaction(build_region_graph(sp, probs, unc, img), smoothness=0.0)
    whole = Interaction(build_region_graph(sp, probs, unc, img), smoothness=0.0, locality=None)
    for inter in (local, whole):
        inter.click(20, 25, 1)
    assert local.labels[:, 20:60].all(), "the clicked object's other regions follow the click"
    assert not local.labels[:, 240:280].any(), "the far object keeps the network's label"
    assert whole.labels[:, 240:280].all()
    wgt = local.calibration_weight()
    r_near, r_far = local.graph.regions[20, 55], local.graph.regions[20, 275]
    assert wgt[local.graph.regions[20, 25]] == 1.0 and wgt[r_near] > 0.8 and wgt[r_far] < 0.01


@pytest.mark.parametrize("name", ["smoothness", "calibration", "locality"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "far", True])
def test_a_bad_click_setting_is_refused_and_the_labels_stay(name, bad):
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    inter.click(20, 37, 1)
    before, value = inter.labels.copy(), getattr(inter, name)
    with pytest.raises(InteractionError, match=name):
        setattr(inter, name, bad)
    assert getattr(inter, name) == value
    np.testing.assert_array_equal(inter.labels, before)
    with pytest.raises(InteractionError, match=name):
        Interaction(build_region_graph(sp, probs, unc, img), **{name: bad})


def test_smoothness_none_is_refused_and_calibration_none_turns_it_off():
    img, sp, probs, unc = _straddling_scene()
    with pytest.raises(InteractionError, match="smoothness"):
        Interaction(build_region_graph(sp, probs, unc, img), smoothness=None)
    inter = Interaction(build_region_graph(sp, probs, unc, img), smoothness=0.0)
    inter.click(20, 25, 1)
    calibrated = inter.labels.copy()
    inter.calibration = None  # takes effect at once: only the MRF and the clicked region move
    assert inter.labels.sum() < calibrated.sum()


def test_region_annotations_give_the_calibration_its_centre_and_a_new_locality_takes_effect():
    # Issue 20 item 4: a brush stroke (annotate) changes only the pixels painted, so it no longer calibrates; the
    # paper's whole-region annotation (set_painted(..., propagate=True), its simulated user's) still does.
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    np.testing.assert_array_equal(inter.calibration_weight(), 0.0)  # nothing annotated: no calibration anywhere
    mask = np.zeros((40, 40), bool)
    mask[:, 36:] = True
    inter.annotate(mask, 1)
    np.testing.assert_array_equal(inter.calibration_weight(), 0.0)  # a stroke: nothing propagates from it
    inter.set_painted(np.where(mask, 1, -1), propagate=True)
    wgt = inter.calibration_weight()
    g = inter.graph
    assert wgt[g.regions[20, 38]] == 1.0 and wgt[g.regions[20, 38]] > wgt[g.regions[20, 22]] > wgt[g.regions[20, 2]]
    labels_near = inter.labels.copy()
    inter.locality = 0.0  # takes effect at once: only the painted region keeps its class
    assert inter.labels[:, 20:30].sum() < labels_near[:, 20:30].sum()
    inter.locality = None
    np.testing.assert_array_equal(inter.calibration_weight(), 1.0)


def test_the_session_passes_its_interaction_settings_to_each_new_image(nuclei_session, nuclei_he):
    image, _ = nuclei_he
    s = nuclei_session
    try:
        s.locality, s.smoothness, s.calibration = None, 3.0, 2.0
        s.segment(image)
        s.click_mode = "region"  # the MRF's settings are those of region clicks (nuclei default to object clicks)
        assert (s.interaction.locality, s.interaction.smoothness, s.interaction.calibration) == (None, 3.0, 2.0)
        s.click(*np.argwhere(s.labels > 0)[0], 0)
        before = s.labels.copy()
        s.smoothness = 0.0  # the current image follows a new setting at once
        assert s.interaction.smoothness == 0.0
        assert not np.array_equal(s.labels, before)
        with pytest.raises(InteractionError, match="calibration"):
            s.calibration = -1
        assert s.calibration == 2.0 and s.interaction.calibration == 2.0
    finally:
        s.locality, s.smoothness, s.calibration = DEFAULT_LOCALITY, DEFAULT_SMOOTHNESS, DEFAULT_CALIBRATION


def test_painted_pixels_are_never_overwritten_by_propagation():
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    mask = np.zeros((40, 40), bool)
    mask[10:13, 2:4] = True  # a few pixels inside a background region
    inter.annotate(mask, 1)
    inter.click(11, 30, 0)  # a later click elsewhere
    assert inter.labels[mask].all()
    assert inter.labels[~mask][:100].max() == 0


def test_suggestions_are_the_most_uncertain_unannotated_regions_spread_apart():
    img, sp, probs, unc = _straddling_scene()
    probs = probs.copy()
    probs[1][:, 20:] = np.linspace(0.3, 0.45, 20)[None, :]  # most uncertain at the right edge
    probs[0] = 1 - probs[1]
    unc = 1 - (probs**2).sum(0)
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    pts = inter.suggest(3)
    assert 1 <= len(pts) <= 3
    g = inter.graph  # the region with the most uncertainty in it comes first: uncertain and large
    assert g.doubt[g.regions[pts[0][0], pts[0][1]]] == g.doubt.max()
    np.testing.assert_allclose(g.doubt, [unc[g.regions == r].sum(dtype=np.float64) for r in range(g.n)], rtol=1e-6)
    if len(pts) > 1:
        assert np.hypot(*(pts[0] - pts[1]).T) >= 2 * np.sqrt(40 * 40 / 5)
    y, x = pts[0]
    inter.click(y, x, 1)
    assert not any((inter.graph.regions[a, b] == inter.graph.regions[y, x]) for a, b in inter.suggest(16))


def test_a_large_unsure_region_is_suggested_before_a_sliver_that_is_a_little_more_unsure():
    img = np.zeros((3, 40, 40), np.float32)
    sp = np.ones((40, 40), np.int32)
    sp[:, 20:] = 2
    sp[:2, :2] = 3  # a sliver of 4 pixels
    p1 = np.full((40, 40), 0.1, np.float32)
    p1[:, 20:] = 0.35  # a large unsure half
    p1[:2, :2] = 0.45  # a sliver more unsure still
    probs = np.stack([1 - p1, p1])
    unc = 1 - (probs**2).sum(0)
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    first = inter.suggest(1, min_area=1)[0]
    assert first[1] >= 20, "the sliver came first"


def test_a_large_region_the_model_is_sure_of_is_never_suggested():
    img = np.zeros((3, 40, 120), np.float32)
    sp = (np.arange(40)[:, None] // 10) * 12 + np.arange(120)[None, :] // 10  # 10 px superpixels: rings 20 px apart
    p1 = np.full((40, 120), 0.0005, np.float32)  # uncertainty about 0.001: below 1% of the largest (0.5)
    p1[:, 100:] = 0.4  # a strip the model is unsure of, far from most of the sure part
    probs = np.stack([1 - p1, p1])
    unc = 1 - (probs**2).sum(0)
    inter = Interaction(build_region_graph(sp.astype(np.int32), probs, unc, img))
    assert (inter.graph.doubt > 0).all()  # every region has some uncertainty in it
    pts = inter.suggest(16, min_area=1)
    assert len(pts) >= 1 and all(x >= 100 for _, x in pts)  # only the unsure strip (the sure part filled the list)


def test_without_an_uncertainty_map_nothing_is_suggested_and_a_painted_mask_can_be_taken_back(nuclei_session,
                                                                                               nuclei_he):
    image, _ = nuclei_he
    nuclei_session.segment(image, n_samples=0)  # no Monte-Carlo samples: a zero map says nowhere is unsure
    assert nuclei_session.suggest(16).shape == (0, 2)
    r = nuclei_session.segment(image)
    nuclei_session.click(5, 5, 0)
    nuclei_session.annotate(np.ones(image.shape[:2], np.uint8), 0)  # 0/1 integers count as a mask
    assert not nuclei_session.labels.any()
    nuclei_session.clear_annotations()  # the painting goes, the click stays
    assert nuclei_session.clicks == [(5, 5, 0)] and nuclei_session.labels.any()
    assert (nuclei_session.labels != r.labels).mean() < 0.01


def test_suggestions_on_a_real_image_are_apart_and_inside(nuclei_session, nuclei_he):
    image, _ = nuclei_he
    nuclei_session.segment(image)
    nuclei_session.click_mode = "region"  # region suggestions (object clicks suggest objects: test_objects.py)
    pts = nuclei_session.suggest(16)
    assert pts.shape == (16, 2)
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    assert d[~np.eye(16, dtype=bool)].min() >= 2 * nuclei_session.superpixel_size * 0.8


@pytest.mark.parametrize("point, label, message", [
    ((-1, 3), 1, "outside the image"),
    ((3, 40), 1, "outside the image"),
    ((np.nan, 3), 1, "not a finite"),
    ((3, 3), 2, "not one of this model's classes"),
    ((3, 3), -1, "not one of this model's classes"),
    ((3, 3), 1.5, "not one of this model's classes"),
    (("a", 3), 1, "numeric"),
])
def test_bad_clicks_are_refused_and_lose_nothing(point, label, message):
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    inter.click(20, 30, 1)
    before = inter.labels.copy()
    with pytest.raises(InteractionError, match=message):
        inter.click(*point, label)
    assert len(inter.clicks) == 1
    np.testing.assert_array_equal(inter.labels, before)


def test_thousands_of_clicks_at_once_are_one_propagation():
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 39, (5000, 2))
    labs = (pts[:, 1] >= 20).astype(int)
    inter.set_clicks(pts, labs)
    assert len(inter.clicks) == 5000
    assert (inter.labels[:, 21:] == 1).all() and (inter.labels[:, :19] == 0).all()
    with pytest.raises(InteractionError, match="3 click positions but 2 classes"):
        inter.set_clicks(pts[:3], labs[:2])
    assert len(inter.clicks) == 5000


# -- on the real model ----------------------------------------------------------------------------

def test_session_clicks_need_a_segmentation_first():
    from napari_clis import ClisSession

    s = ClisSession.from_pretrained("nuclei", device="cpu")
    with pytest.raises(InteractionError, match="segment"):
        s.click(1, 1, 1)
    with pytest.raises(InteractionError, match="segment"):
        _ = s.labels


def test_session_click_loop_on_a_real_image(nuclei_session, nuclei_he):
    image, truth = nuclei_he
    s = nuclei_session
    r = s.segment(image)
    start = iou(s.labels, truth)
    assert abs(start - iou(r.labels, truth)) < 0.05  # with no clicks the MRF keeps the network's answer
    for _ in range(5):
        y, x, lab = next_click(s.labels, truth.astype(np.int32))
        s.click(y, x, lab)
        assert s.labels[y, x] == lab
    assert iou(s.labels, truth) > start
    pts = s.suggest(16)
    assert pts.shape == (16, 2)
    assert (pts >= 0).all() and (pts[:, 0] < image.shape[0]).all() and (pts[:, 1] < image.shape[1]).all()
    s.segment(image)  # a new segmentation starts with no clicks
    assert s.clicks == []


def test_simulated_user_protocols_improve_the_segmentation(nuclei_session, nuclei_he):
    image, truth = nuclei_he
    s = nuclei_session
    s.segment(image)
    truth = truth.astype(np.int32)
    for protocol in ("uncertain", "click"):
        res = run_protocol(ClisMethod(s.interaction), s.interaction, truth, protocol, max_clicks=6, stop_at=1.1)
        assert len(res.ious) == 7
        assert res.ious[-1] > res.ious[0]
    wrong = wrong_regions(s.interaction, s.interaction.labels, truth)
    doubt = [s.interaction.graph.doubt[r] for r, _ in wrong]  # most uncertainty first
    assert doubt == sorted(doubt, reverse=True)
    assert noc([0.5, 0.86, 0.95], 0.85) == 1 and noc([0.5, 0.6], 0.9, 20) == 20


def test_peers_follow_their_seeds(nuclei_he, nuclei_session):
    from napari_clis.evaluation.simulated_user import PixelClassifierPeer, RandomWalkerPeer

    image, truth = nuclei_he
    nuclei_session.segment(image)
    inter = nuclei_session.interaction
    truth = truth.astype(np.int32)
    for peer in (RandomWalkerPeer(image, inter), PixelClassifierPeer(image, inter)):
        assert peer.predict([]).sum() == 0
        res = run_protocol(peer, inter, truth, "click", max_clicks=4, stop_at=1.1)
        assert len(res.ious) == 5 and res.ious[-1] > 0.05, peer.name
        fy, fx = np.argwhere(truth)[truth.sum() // 2]
        seeds = [(int(inter.graph.regions[30, 30]), int(truth[30, 30]), None),
                 (int(inter.graph.regions[fy, fx]), 1, None)]
        pred = peer.predict(seeds)
        for r, lab, _ in seeds:
            assert (pred[inter.graph.regions == r] == lab).mean() > 0.9, peer.name


def test_region_oracle_is_what_annotating_every_wrong_region_reaches():
    img, sp, probs, unc = _straddling_scene()
    inter = Interaction(build_region_graph(sp, probs, unc, img))
    truth = np.zeros((40, 40), np.int32)
    truth[:, 20:] = 1
    assert region_oracle(inter, truth) == 1.0  # the regions follow the border the network sees
    truth[:, 22:24] = 0  # a thin band of background inside one region: no region labelling can get it
    ceiling = region_oracle(inter, truth)
    assert ceiling < 1.0
    g = inter.graph
    method = ClisMethod(inter)
    inter.refine = False
    seeds = [(r, lab, None) for r, lab in wrong_regions(inter, method.predict([]), truth)]
    assert seeds and iou(method.predict(seeds), truth) == pytest.approx(ceiling)
    assert ceiling == pytest.approx(iou(np.isin(g.regions, np.flatnonzero(
        np.bincount(g.regions.ravel(), truth.ravel(), g.n) > g.area / 2)), truth))


def test_keep_one_object_keeps_the_largest_and_what_the_user_annotated():
    from napari_clis.interactive import keep_one_object

    lab = np.zeros((30, 30), np.int32)
    lab[2:14, 2:14] = 1  # the object, with a hole
    lab[6:9, 6:9] = 0
    lab[20:24, 20:24] = 1  # a second, smaller piece
    lab[25:28, 2:5] = 2  # another class is never touched
    out = keep_one_object(lab)
    assert out.dtype == lab.dtype and out is not lab
    assert (out[2:14, 2:14] == 1).all(), "the hole inside the object was not filled"
    assert not out[20:24, 20:24].any(), "the smaller piece stayed"
    assert (out[25:28, 2:5] == 2).all()
    keep = np.zeros_like(lab, bool)
    keep[21, 21] = True  # the user marked the second piece
    keep[7, 7] = True  # and the hole as background
    out = keep_one_object(lab, keep)
    assert (out[20:24, 20:24] == 1).all() and (out[6:9, 6:9] == 0).all()
    assert (keep_one_object(np.zeros((5, 5), np.int32)) == 0).all()


def test_a_single_object_interaction_drops_stray_pieces_but_keeps_a_clicked_one():
    h, w = 40, 40
    img = np.full((3, h, w), -0.4, np.float32)
    img[:, 5:20, 5:20] = 0.4
    img[:, 30:34, 30:34] = 0.4
    sp = (np.arange(h)[:, None] // 5 * 8 + np.arange(w)[None, :] // 5 + 1).astype(np.int32)
    p1 = np.where(img[0] > 0, 0.9, 0.1).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    unc = 1 - (probs**2).sum(0)
    g = build_region_graph(sp, probs, unc, img)
    plain = Interaction(g, calibration=None)
    one = Interaction(g, calibration=None, single_object=True)
    assert plain.labels[31, 31] == 1 and plain.labels[10, 10] == 1
    assert one.labels[31, 31] == 0 and one.labels[10, 10] == 1, "the stray piece stayed"
    one.click(31, 31, 1)  # the user says the small piece is an object too
    assert one.labels[31, 31] == 1 and one.labels[10, 10] == 1
    one.remove_click(0)
    assert one.labels[31, 31] == 0
