"""The signal that an image is unlike what the model knows (issue 19, item 5): napari_clis.familiarity and
SegmentationResult.familiarity, on the shipped models with real images."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread

from napari_clis import ClisSession
from napari_clis.checkpoint import CheckpointError, load_model, save_model, shipped_model_path
from napari_clis.familiarity import NO_SUMMARY, familiarity, knn_distance, reference_summary

SHARED = Path("..") / "shared" / "data"


def _sample(name: str) -> np.ndarray:
    return imread(resources.files("napari_clis").joinpath("sample_data").joinpath(name))[..., :3]


def _segment(session, image):
    return session.segment(image, n_samples=0)


def test_shipped_models_carry_a_summary():
    for name in ("nuclei", "skin-lesion"):
        net, meta, _ = load_model(shipped_model_path(name))
        summary = meta["familiarity"]
        assert len(summary["reference"]) > 300 and summary["limit"] > 0 and summary["k"] >= 1
        assert len(summary["mean"]) == len(summary["reference"][0]) == 2 * net.config.width


def test_own_kind_is_familiar_and_foreign_is_not(nuclei_session, lesion_session, nuclei_fluo, nuclei_he, lesion):
    nuclei, skin = _sample("nuclei.png"), _sample("skin_lesion.jpg")
    for image in (nuclei, nuclei_fluo[0], nuclei_he[0]):
        f = _segment(nuclei_session, image).familiarity
        assert f.unfamiliar is False and f.distance < f.limit
    for image in (skin, lesion[0]):  # lesion photographs through the nuclei model
        f = _segment(nuclei_session, image).familiarity
        assert f.unfamiliar is True and f.distance > f.limit
        assert "Learn" in f.message and "object size" in f.message
    for image in (skin, lesion[0]):
        f = _segment(lesion_session, image).familiarity
        assert f.unfamiliar is False
    f = _segment(lesion_session, nuclei_fluo[0]).familiarity  # nuclei through the lesion model
    assert f.unfamiliar is True and "object size" not in f.message  # the lesion model sees whole images


def test_distance_and_learned_kind():
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(40, 6))
    summary = reference_summary(stats, k=3)
    assert familiarity(stats[0], summary).unfamiliar is False  # a pretraining image itself
    far = stats.mean(0) + 10 * stats.std(0)
    f = familiarity(far, summary, advice="Do this.")
    assert f.unfamiliar is True and f.distance > f.limit and f.message.endswith("Do this.")
    assert familiarity(far, summary, learned_kind=True).unfamiliar is False  # images of its kind were taught
    assert familiarity(far, summary, learned_kind=True).unlike_training  # (still unlike the pretraining images)
    assert not familiarity(stats[0], summary).unlike_training
    z = (stats[0] - summary["mean"]) / np.asarray(summary["std"])
    assert f.limit == pytest.approx(summary["limit"]) and knn_distance(z, summary["reference"], 1) < 1e-3
    with pytest.raises(ValueError, match="at least 4 images"):
        reference_summary(stats[:3], k=3)


def test_old_model_file_without_summary_still_works(tmp_path, nuclei_fluo):
    net, meta, _ = load_model(shipped_model_path("nuclei"))
    del meta["familiarity"]
    path = tmp_path / "old.pt"
    save_model(path, net, meta)
    s = ClisSession.from_checkpoint(path, device="cpu")
    r = _segment(s, nuclei_fluo[0])
    assert r.labels.shape == nuclei_fluo[0].shape
    f = r.familiarity
    assert f.distance is None and f.unfamiliar is None and f.message == NO_SUMMARY
    # recording the training images makes the signal, and it is saved with the model
    summary = s.record_familiarity([nuclei_fluo[0], _sample("nuclei.png")] * 3, source="test")
    assert len(summary["reference"]) == 6
    s.save(tmp_path / "new.pt")
    assert ClisSession.from_checkpoint(tmp_path / "new.pt", device="cpu").metadata["familiarity"]["source"] == "test"


def _summary(**changes):
    good = {"mean": [0.1] * 32, "std": [1.0] * 32, "reference": [[0.0] * 32, [1.0] * 32], "k": 1, "limit": 2.0}
    return {**good, **changes}


@pytest.mark.parametrize("bad, said", [
    (_summary(reference=[]), "'reference' must be a non-empty list"),
    (_summary(k=3), "'k'"),
    (_summary(limit=0.0), "'limit'"),
    (_summary(std=[0.0] * 32), "'std' must be positive"),
    (_summary(mean=[0.1] * 7), "must hold 32 numbers"),
    (_summary(reference=[[0.0] * 32, [float("nan")] * 32]), "finite"),
    (_summary(reference=[[0.0] * 31]), "must hold 32 numbers"),
    ("yes", "dictionary"),
])
def test_checkpoint_checks_the_summary(tmp_path, bad, said):
    net, meta, _ = load_model(shipped_model_path("nuclei"))
    assert net.config.width == 16
    save_model(tmp_path / "good.pt", net, {**meta, "familiarity": _summary()})
    meta["familiarity"] = bad
    with pytest.raises(CheckpointError, match="familiarity") as e:
        save_model(tmp_path / "bad.pt", net, meta)
    assert said in str(e.value)
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.skipif(not (SHARED / "dsb2018").is_dir() or not (SHARED / "isic2017").is_dir(),
                    reason="../shared/data not present")
def test_fires_rarely_in_domain_and_often_on_foreign_images(nuclei_session):
    from napari_clis.data import load_dsb2018, load_isic2017

    held_out = [s.image for s in load_dsb2018(SHARED, "pool")[::20][:12]]
    foreign = [s.image for s in load_isic2017(SHARED, "test", limit=12)]
    fired_in = sum(bool(_segment(nuclei_session, im).familiarity.unfamiliar) for im in held_out)
    fired_out = sum(bool(_segment(nuclei_session, im).familiarity.unfamiliar) for im in foreign)
    assert fired_in <= 1 and fired_out >= 11, (fired_in, fired_out)


def test_widget_says_so_in_the_status(make_napari_viewer, qtbot, nuclei_fluo, lesion):
    from napari_clis import _tooltips as tips

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    for image, foreign in ((nuclei_fluo[0], False), (lesion[0], True)):  # both through the nuclei model
        layer = viewer.add_image(image, name="foreign" if foreign else "own", rgb=image.ndim == 3)
        widget.set_image(layer)
        widget.run()
        widget.wait(timeout=60)
        status = widget.status
        assert status.startswith("Segmented") and (tips.UNFAMILIAR in status) is foreign
        # the detail (distances) and what the uncertainty map is: in the status's tooltip, not in the status
        tooltip = widget.controls.status.tooltip
        assert tooltip.startswith(widget.session.result.familiarity.message)
        assert tips.UNCERTAINTY_LAYER in tooltip and "distance" not in status


def test_a_learned_task_segments_unseen_images_of_a_kind_the_pretraining_never_saw():
    # an inverted fluorescence image (dark nuclei on a bright ground) is foreign to the nuclei model: once it
    # learned one half, the other half is segmented by that learned task even where it disagrees with the
    # pretrained task (which is no reference on such images), while a normal image keeps the agreement check
    from skimage.io import imread

    from napari_clis import ClisSession

    from .conftest import DATA, NUCLEI_FLUO

    image = 255 - imread(DATA / "dsb2018" / "images" / f"{NUCLEI_FLUO}.png")[..., 0]
    truth = imread(DATA / "dsb2018" / "masks" / f"{NUCLEI_FLUO}.png") > 0
    half = image.shape[1] // 2
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=0)
    assert s.segment(image[:, :half]).familiarity.unfamiliar
    s.annotate(truth[:, :half], 1)
    s.annotate(~truth[:, :half], 0)
    s.learn()
    s.segment(image[:, half:])
    info = s.task_choice
    assert info["unfamiliar"] is True and info["nearest"] == 1
    assert info["agreement"] < 0.9 and s.task == 1, info  # the check would have given task 0
    s.segment(255 - image)  # the original fluorescence image
    assert s.task_choice["unfamiliar"] is False
