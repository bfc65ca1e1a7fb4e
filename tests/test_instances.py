"""Objects from a segmentation, their measurements and the instance metrics (DSB 2018 AP, panoptic quality)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.io import imread
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table

from napari_clis.instances import (
    estimate_object_radius,
    instances_from_probabilities,
    measure_objects,
    object_size_mismatch,
    single_object,
    watershed_instances,
)
from napari_clis.metrics import DSB_THRESHOLDS, average_precision, panoptic_quality

from .conftest import DATA, NUCLEI_FLUO, NUCLEI_HE


def _true_instances(stem: str) -> np.ndarray:
    return imread(DATA / "dsb2018" / "masks" / f"{stem}.png")


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _reference_scores(pred, truth, thresholds):
    """AP and PQ by a plain loop over every pair of objects: the definition, written the slow way."""
    p_ids = [i for i in np.unique(pred) if i]
    t_ids = [i for i in np.unique(truth) if i]
    iou = np.zeros((len(p_ids), len(t_ids)))
    for a, i in enumerate(p_ids):
        for b, j in enumerate(t_ids):
            inter = np.sum((pred == i) & (truth == j))
            iou[a, b] = inter / np.sum((pred == i) | (truth == j))
    aps = []
    for t in thresholds:
        tp = int(np.sum(iou > t))  # above 0.5 each row and column holds at most one such pair
        aps.append(tp / (len(p_ids) + len(t_ids) - tp))
    tp = int(np.sum(iou > 0.5))
    pq = iou[iou > 0.5].sum() / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(t_ids) - tp))
    return np.array(aps), pq


# --- metrics ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", [NUCLEI_FLUO, NUCLEI_HE])
def test_truth_against_itself_scores_one(stem):
    truth = _true_instances(stem)
    assert np.all(average_precision(truth, truth) == 1.0)
    assert panoptic_quality(truth, truth) == 1.0
    # Ids need not be consecutive nor the same: renumbering changes nothing.
    renumbered = np.where(truth > 0, truth.astype(np.uint32) * 7 + 1000, 0)
    assert np.all(average_precision(renumbered, truth) == 1.0)


def test_merged_pair_and_thresholds_on_hand_made_objects():
    shape = (60, 100)
    big = _disc(shape, (30, 30), 12)  # 441 px
    small = _disc(shape, (30, 48), 5) & ~big  # touches big
    far = _disc(shape, (30, 80), 8)
    truth = (big * 1 + small * 2 + far * 3).astype(np.int32)
    # The prediction merges big and small, and finds far exactly.
    pred = ((big | small) * 5 + far * 9).astype(np.int32)
    merged_iou = big.sum() / (big | small).sum()
    assert 0.8 < merged_iou < 0.9
    ap = average_precision(pred, truth)
    # At t < merged IoU: 2 TP (merged~big, far), 0 FP, 1 FN (small); above it: 1 TP, 1 FP, 2 FN.
    expected = np.where(np.array(DSB_THRESHOLDS) < merged_iou, 2 / 3, 1 / 4)
    np.testing.assert_allclose(ap, expected)
    assert average_precision(pred, truth, 0.5) == pytest.approx(2 / 3)
    assert panoptic_quality(pred, truth) == pytest.approx((merged_iou + 1) / (2 + 0 + 0.5))
    # Two equal halves merged: IoU exactly 0.5 is not a hit (the DSB rule is IoU > t).
    halves = np.zeros((10, 20), np.int32)
    halves[:, :10], halves[:, 10:] = 1, 2
    assert average_precision(np.ones_like(halves), halves, 0.5) == 0.0
    assert panoptic_quality(np.ones_like(halves), halves) == 0.0


def test_metrics_match_the_pairwise_definition_on_a_real_mask():
    truth = _true_instances(NUCLEI_HE).astype(np.int32)
    rng = np.random.default_rng(0)
    # A plausible prediction: shifted objects, touching ones merged, one missed, one false.
    pred = connected_components(ndimage.shift(truth > 0, (1, 2), order=0) > 0)
    ids = np.unique(pred)[1:]
    pred[pred == rng.choice(ids)] = 0
    pred[5:15, 5:15] = pred.max() + 1
    thresholds = (0.5, 0.6, 0.75, 0.9)
    want_ap, want_pq = _reference_scores(pred, truth, thresholds)
    np.testing.assert_allclose(average_precision(pred, truth, thresholds), want_ap)
    assert panoptic_quality(pred, truth) == pytest.approx(want_pq)
    assert 0 < want_ap[0] < 1  # a case where the metric is neither trivially 0 nor 1


def test_metrics_empty_maps_and_bad_input():
    empty = np.zeros((8, 8), np.uint16)
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert average_precision(empty, empty, 0.5) == 1.0 and panoptic_quality(empty, empty) == 1.0
    assert average_precision(empty, one, 0.5) == 0.0 and average_precision(one, empty, 0.5) == 0.0
    assert panoptic_quality(one, empty) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        average_precision(one, np.zeros((8, 9), int))
    with pytest.raises(ValueError, match=r"\[0.5, 1\)"):
        average_precision(one, one, 0.3)
    with pytest.raises(ValueError, match="integer"):
        panoptic_quality(one.astype(float), one)
    with pytest.raises(ValueError, match="negative"):
        average_precision(one.astype(int) - 1, one)


# --- objects ------------------------------------------------------------------------------------------------


def test_watershed_splits_two_touching_discs():
    shape = (64, 96)
    a, b = _disc(shape, (32, 30), 14), _disc(shape, (32, 56), 14)  # overlapping: one blob, a neck between
    truth = (a * 1 + (b & ~a) * 2).astype(np.int32)
    labels = (a | b).astype(np.int32)
    assert connected_components(labels).max() == 1  # connected components merge them
    prob = ndimage.gaussian_filter(labels.astype(float), 2)
    inst = instances_from_probabilities(prob, labels)
    assert inst.dtype == np.uint32 and inst.shape == shape
    assert set(np.unique(inst)) == {0, 1, 2}
    assert np.array_equal(inst > 0, labels > 0)
    assert average_precision(inst, truth, 0.9) == 1.0
    # A single disc stays one object.
    one = instances_from_probabilities(prob * 0 + 1, a.astype(np.int32))
    assert one.max() == 1


def test_objects_on_real_nuclei_beat_connected_components(nuclei_session):
    image = imread(DATA / "dsb2018" / "images" / f"{NUCLEI_FLUO}.png")[..., :3]
    truth = _true_instances(NUCLEI_FLUO)
    result = nuclei_session.segment(image)
    inst = instances_from_probabilities(result.probabilities[1], result.labels)
    assert np.all(inst[result.labels == 0] == 0)
    components = connected_components(result.labels > 0)
    # the shipped model leaves a neck between touching nuclei, so its own mask's components are often the objects
    assert average_precision(inst, truth, 0.5) >= average_precision(components, truth, 0.5)
    # a coarser mask of the same image, whose touching nuclei merge (grown by 2 px), is split again by the watershed
    coarse = ndimage.binary_dilation(result.labels > 0, iterations=2).astype(np.int32)
    inst = instances_from_probabilities(result.probabilities[1], coarse)
    components = connected_components(coarse)
    assert inst.max() > components.max()
    assert average_precision(inst, truth, 0.5) > average_precision(components, truth, 0.5) + 0.1
    assert panoptic_quality(inst, truth) > panoptic_quality(components, truth)


def test_objects_respect_classes_and_drop_specks():
    labels = np.zeros((40, 80), np.int32)
    labels[10:30, 10:40] = 1
    labels[10:30, 40:70] = 2  # touching, another class
    labels[2, 2] = 1  # a one-pixel speck
    inst = instances_from_probabilities(np.ones(labels.shape), labels)
    assert inst.max() == 2 and inst[2, 2] == 0
    assert len(np.unique(inst[10:30, 10:40])) == 1 and len(np.unique(inst[labels == 2])) == 1
    assert inst[20, 20] != inst[20, 60]
    kept = instances_from_probabilities(np.ones(labels.shape), labels, min_area=0)
    assert kept[2, 2] > 0


def test_objects_empty_and_bad_input():
    labels = np.zeros((32, 32), np.int32)
    prob = np.zeros((32, 32), np.float32)
    out = instances_from_probabilities(prob, labels)
    assert out.dtype == np.uint32 and not out.any()
    assert estimate_object_radius(labels > 0) == 0.0
    with pytest.raises(ValueError, match="shape"):
        instances_from_probabilities(np.zeros((32, 31)), labels)
    with pytest.raises(ValueError, match="2D"):
        instances_from_probabilities(np.zeros((2, 32, 32)), labels)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        instances_from_probabilities(prob + 2, labels)
    with pytest.raises(ValueError, match="NaN"):
        instances_from_probabilities(np.full((32, 32), np.nan), labels)
    with pytest.raises(ValueError, match="integer"):
        instances_from_probabilities(prob, labels.astype(float))
    with pytest.raises(ValueError, match="h must"):
        watershed_instances(labels > 0, h=-1)


def test_single_object():
    labels = np.zeros((10, 10), np.int32)
    labels[1:3, 1:3] = 1
    labels[6:9, 6:9] = 1  # two pieces, one object
    labels[0, 9] = 3
    out = single_object(labels)
    assert out.dtype == np.uint32
    assert set(np.unique(out[labels == 1])) == {1} and out[0, 9] == 2 and np.all(out[labels == 0] == 0)
    assert not single_object(np.zeros((4, 4), int)).any()


# --- measurements -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", [NUCLEI_FLUO, NUCLEI_HE])
def test_measurements_match_regionprops(stem):
    rgb = imread(DATA / "dsb2018" / "images" / f"{stem}.png")[..., :3]
    truth = _true_instances(stem)
    uncertainty = np.random.default_rng(1).random(truth.shape).astype(np.float32)
    ref = regionprops_table(truth, intensity_image=np.dstack([rgb, uncertainty]),
                            properties=("label", "area", "perimeter", "centroid", "intensity_mean"))
    table = measure_objects(truth, rgb, uncertainty)
    assert list(table) == ["label", "area", "perimeter", "mean_intensity", "mean_red", "mean_green", "mean_blue",
                           "mean_uncertainty", "centroid_y", "centroid_x"]
    assert len(table["label"]) == len(np.unique(truth)) - 1
    np.testing.assert_array_equal(table["label"], ref["label"])
    np.testing.assert_array_equal(table["area"], ref["area"])
    np.testing.assert_allclose(table["perimeter"], ref["perimeter"])
    np.testing.assert_allclose(table["centroid_y"], ref["centroid-0"])
    np.testing.assert_allclose(table["centroid_x"], ref["centroid-1"])
    for k, name in enumerate(("red", "green", "blue")):
        np.testing.assert_allclose(table[f"mean_{name}"], ref[f"intensity_mean-{k}"])
    np.testing.assert_allclose(table["mean_uncertainty"], ref["intensity_mean-3"], rtol=1e-5)
    luma = rgb @ np.array([0.2125, 0.7154, 0.0721])
    mean_of = lambda image: regionprops_table(truth, image, properties=("intensity_mean",))["intensity_mean"]  # noqa: E731
    np.testing.assert_allclose(table["mean_intensity"], mean_of(luma))
    # Grey: one intensity column in the image's own units (16-bit here), no uncertainty column.
    grey = rgb[..., 1].astype(np.uint16) * 200
    table = measure_objects(truth, grey[..., None])
    assert "mean_red" not in table and "mean_uncertainty" not in table
    np.testing.assert_allclose(table["mean_intensity"], mean_of(grey))


def test_measurements_of_no_object_and_of_ten_thousand():
    table = measure_objects(np.zeros((16, 16), np.uint32), np.ones((16, 16)), np.zeros((16, 16)))
    assert all(len(v) == 0 for v in table.values()) and "mean_uncertainty" in table
    # 10,000 objects of 6x6 px on a 1000x1000 field.
    inst = np.zeros((1000, 1000), np.uint32)
    yy, xx = np.mgrid[:1000, :1000]
    on = (yy % 10 < 6) & (xx % 10 < 6)
    inst[on] = ((yy // 10) * 100 + xx // 10 + 1)[on]
    image = (yy + xx).astype(np.float32)
    table = measure_objects(inst, image)
    assert len(table["label"]) == 10_000
    assert np.all(table["area"] == 36) and np.allclose(table["perimeter"], table["perimeter"][0])
    assert table["mean_intensity"][0] == pytest.approx(5.0) and table["centroid_x"][-1] == pytest.approx(992.5)
    objects = instances_from_probabilities(np.ones(inst.shape, np.float32), (inst > 0).astype(np.uint8))
    assert objects.max() == 10_000


def test_measurements_bad_input():
    inst = np.zeros((16, 16), np.int32)
    with pytest.raises(ValueError, match="shape"):
        measure_objects(inst, np.zeros((16, 17)))
    with pytest.raises(ValueError, match="shape"):
        measure_objects(inst, np.zeros((16, 16)), np.zeros((15, 16)))
    with pytest.raises(ValueError, match="colour"):
        measure_objects(inst, np.zeros((16, 16, 2)))
    with pytest.raises(ValueError, match="negative"):
        measure_objects(inst - 1, np.zeros((16, 16)))
    with pytest.raises(ValueError, match="real numbers"):
        measure_objects(inst, np.zeros((16, 16), complex))


def test_the_instance_heads_distance_map_splits_what_the_mask_alone_cannot():
    # two nuclei pressed into one elliptic blob without a neck: its distance transform has one ridge, the
    # instance head's map (1 at each centre, falling towards each border) has two peaks
    yy, xx = np.mgrid[:64, :96]
    mask = ((xx - 48) / 26) ** 2 + ((yy - 32) / 16) ** 2 < 1
    d1 = np.hypot(yy - 32, xx - 36)
    d2 = np.hypot(yy - 32, xx - 60)
    distance = np.clip(np.maximum(1 - d1 / 16, 1 - d2 / 16), 0, 1).astype(np.float32)
    labels = mask.astype(np.uint8)
    prob = mask.astype(np.float32)
    assert instances_from_probabilities(prob, labels).max() == 1
    split = instances_from_probabilities(prob, labels, distance=distance)
    assert split.max() == 2
    assert split[32, 36] != split[32, 60] and split[32, 36] > 0 and split[32, 60] > 0


def test_specks_do_not_shrink_the_object_size_nor_become_objects():
    """A mask broken into fragments (as the network's is on pale H&E nuclei) keeps the radius of its real objects:
    the specks are left out of the estimate, so the watershed's smallest object stays a fraction of a nucleus and
    the specks do not each become an object."""
    truth = _true_instances(NUCLEI_HE)
    mask = truth > 0
    clean = estimate_object_radius(mask)
    rng = np.random.default_rng(0)
    specked = mask.copy()
    free = np.argwhere(ndimage.binary_dilation(mask, iterations=4) == 0)
    for y, x in free[rng.choice(len(free), 400, replace=False)]:  # 400 specks of 1-4 px in the background
        specked[y:y + rng.integers(1, 3), x:x + rng.integers(1, 3)] = True
    n_pieces = ndimage.label(specked)[1]
    assert n_pieces > 3 * ndimage.label(mask)[1]  # specks outnumber the nuclei: a plain median is a speck's size
    assert float(np.sqrt(np.median(np.bincount(ndimage.label(specked)[0].ravel())[1:]) / np.pi)) < 0.3 * clean
    assert abs(estimate_object_radius(specked) - clean) < 0.15 * clean
    objects = instances_from_probabilities(specked.astype(np.float32), specked.astype(np.int32))
    plain = instances_from_probabilities(mask.astype(np.float32), mask.astype(np.int32))
    assert abs(int(objects.max()) - int(plain.max())) <= 2, (objects.max(), plain.max())


def test_an_object_size_far_from_the_objects_found_is_told():
    truth = _true_instances(NUCLEI_HE)
    areas = np.bincount(truth.ravel())[1:]
    found = 2 * np.sqrt(np.median(areas[areas > 0]) / np.pi)  # the objects' own, touching ones apart
    assert object_size_mismatch(None, truth) is None and object_size_mismatch(0, truth) is None
    assert object_size_mismatch(found * 1.5, truth) is None and object_size_mismatch(found / 1.5, truth) is None
    assert object_size_mismatch(found / 4, truth) == pytest.approx(found)
    assert object_size_mismatch(found * 3, truth) == pytest.approx(found)
    assert object_size_mismatch(found * 3, np.zeros_like(truth)) is None  # nothing found: nothing to compare
