"""The npe2 reader: the TIFFs napari-clis writes reopen in a real napari viewer (run under Xvfb) as the layers they
were: labels or image, name, scale, translate and the uncertainty map's colours; other TIFFs are left to napari."""

import numpy as np
import pytest
import tifffile

from napari_clis._reader import SEGMENTATION_OPACITY, UNCERTAINTY_STYLE, get_reader
from napari_clis._writer import write_image, write_labels

from .conftest import DATA, NUCLEI_FLUO

LABELS = (np.arange(24 * 32) % 5).astype(np.int32).reshape(24, 32)
CLASSES = ["background", "nucleus"]


@pytest.fixture
def saved(tmp_path):
    """A segmentation and an uncertainty map as napari's File > Save Selected Layers writes them with the plugin's
    writer (the meta napari hands a writer)."""
    (seg,) = write_labels(str(tmp_path / "seg.tif"), LABELS, {"name": "segmentation", "scale": [0.5, 0.25],
                                                              "translate": [10.0, -3.0],
                                                              "metadata": {"class_names": CLASSES}})
    (unc,) = write_image(str(tmp_path / "unc.tif"), (LABELS / 10).astype(np.float32),
                         {"name": "uncertainty", "scale": [0.5, 0.25], "translate": [10.0, -3.0],
                          "contrast_limits": [0.0, 0.5]})
    return seg, unc


def _check_uncertainty_look(layer, limits):
    assert type(layer).__name__ == "Image"
    assert layer.colormap.name == UNCERTAINTY_STYLE["colormap"]["name"]
    np.testing.assert_allclose(layer.colormap.colors, UNCERTAINTY_STYLE["colormap"]["colors"])
    assert layer.blending == UNCERTAINTY_STYLE["blending"]
    assert layer.opacity == pytest.approx(UNCERTAINTY_STYLE["opacity"])
    np.testing.assert_allclose(layer.contrast_limits, limits)


def test_a_saved_segmentation_and_uncertainty_map_reopen_where_they_were(make_napari_viewer, saved):
    seg_path, unc_path = saved
    viewer = make_napari_viewer()
    (seg,) = viewer.open(seg_path, plugin="napari-clis")
    assert type(seg).__name__ == "Labels" and seg.name == "segmentation"
    np.testing.assert_allclose(seg.scale, [0.5, 0.25])
    np.testing.assert_allclose(seg.translate, [10.0, -3.0])
    assert seg.metadata["class_names"] == CLASSES
    np.testing.assert_array_equal(np.asarray(seg.data), LABELS)
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_clis._reader import CLASS_COLOURS

    for k in range(1, len(CLASSES)):  # its classes in the colours the widget draws them in
        np.testing.assert_allclose(seg.get_color(k), transform_color(CLASS_COLOURS[k - 1])[0], atol=1e-6)
    assert seg.opacity == pytest.approx(SEGMENTATION_OPACITY) and seg.contour == 0  # the widget's light fill
    (unc,) = viewer.open(unc_path, plugin="napari-clis")
    assert unc.name == "uncertainty" and unc.data.dtype == np.float32
    np.testing.assert_allclose(unc.scale, [0.5, 0.25])
    np.testing.assert_allclose(unc.translate, [10.0, -3.0])
    _check_uncertainty_look(unc, [0.0, 0.5])
    # on the image they were made from: the same world extent
    image = viewer.add_image(LABELS.astype(np.uint8), scale=(0.5, 0.25), translate=(10.0, -3.0))
    np.testing.assert_allclose(seg.extent.world, image.extent.world)


def test_batch_outputs_reopen_as_labels_instances_and_an_uncertainty_map(make_napari_viewer, tmp_path,
                                                                         nuclei_session):
    (r,) = nuclei_session.segment_many(DATA / "dsb2018" / "images" / f"{NUCLEI_FLUO}.png", tmp_path / "out")
    viewer = make_napari_viewer()
    labels = viewer.open(r.outputs["labels"], plugin="napari-clis")[0]
    instances = viewer.open(r.outputs["instances"], plugin="napari-clis")[0]
    unc = viewer.open(r.outputs["uncertainty"], plugin="napari-clis")[0]
    assert type(labels).__name__ == type(instances).__name__ == "Labels"
    assert labels.name == f"{NUCLEI_FLUO}_labels" and instances.data.dtype == np.uint32
    assert instances.data.max() > 1  # one id per nucleus
    assert labels.opacity == pytest.approx(SEGMENTATION_OPACITY) and labels.contour == 0
    assert labels.metadata["class_names"] == nuclei_session.class_names
    np.testing.assert_array_equal(np.asarray(labels.data), tifffile.imread(r.outputs["labels"]))
    _check_uncertainty_look(unc, [0.0, 1.0 - 1.0 / nuclei_session.n_classes])  # the map's range, as the widget's


def test_a_stack_and_a_colour_image_keep_their_axes(make_napari_viewer, tmp_path):
    stack = np.stack([LABELS, LABELS[::-1]])
    (path,) = write_labels(str(tmp_path / "stack.tif"), stack, {"name": "zyx", "scale": [3.0, 0.5, 0.5]})
    rgb = (np.arange(20 * 30 * 3) % 251).astype(np.uint8).reshape(20, 30, 3)
    (photo,) = write_image(str(tmp_path / "photo.tif"), rgb, {"name": "photo", "scale": [2.0, 3.0], "rgb": True})
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari-clis")
    assert layer.data.shape == (2, 24, 32)
    np.testing.assert_allclose(layer.scale, [3.0, 0.5, 0.5])
    (colour,) = viewer.open(photo, plugin="napari-clis")
    assert colour.rgb and colour.colormap.name == "gray"  # another image: not drawn as the uncertainty map
    np.testing.assert_allclose(colour.scale, [2.0, 3.0])


def test_file_open_uses_the_reader_once_chosen_and_asks_before(make_napari_viewer, saved, tmp_path):
    """File > Open and drag-and-drop open with ``plugin=None``: napari's reader preference, else a choice.
    ``viewer.open(path)`` in Python means napari's own reader (its default ``plugin="napari"``): the pixels only."""
    from napari.errors import MultipleReaderError, ReaderPluginError
    from napari.settings import get_settings

    seg_path, _ = saved
    viewer = make_napari_viewer()
    (plain,) = viewer.open(seg_path)  # napari's own reader: the same labels, no scale
    np.testing.assert_array_equal(np.asarray(plain.data), LABELS)
    np.testing.assert_allclose(plain.scale, [1.0, 1.0])
    # two readers take *.tif (napari's and this one): napari asks which (in the GUI, a dialog) ...
    with pytest.raises(MultipleReaderError, match="napari-clis"):
        viewer.open(seg_path, plugin=None)
    # ... and remembers the answer when its "remember" box is ticked
    get_settings().plugins.extension2reader = {"*.tif": "napari-clis"}
    (seg,) = viewer.open(seg_path, plugin=None)
    assert type(seg).__name__ == "Labels" and seg.name == "segmentation"
    np.testing.assert_allclose(seg.scale, [0.5, 0.25])
    np.testing.assert_allclose(seg.translate, [10.0, -3.0])
    # a TIFF from elsewhere is not claimed: napari says so (in the GUI, its dialog offers its own reader)
    tifffile.imwrite(tmp_path / "plain.tif", LABELS)
    with pytest.raises(ReaderPluginError, match="napari-clis"):
        viewer.open(str(tmp_path / "plain.tif"), plugin=None)


def test_a_tiff_from_elsewhere_is_not_claimed(make_napari_viewer, tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, LABELS)
    described = tmp_path / "described.tif"  # a JSON description, but not ours
    tifffile.imwrite(described, LABELS, metadata={"napari_clis_like": {"scale": [2, 2]}})
    (tmp_path / "notes.txt").write_text("not an image")
    for path in (plain, described):
        assert get_reader(str(path)) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(plain), str(described)]) is None  # a stack of files: napari's
    viewer = make_napari_viewer()
    with pytest.raises(ValueError, match="napari-clis"):
        viewer.open(str(plain), plugin="napari-clis")
    (layer,) = viewer.open(str(plain), plugin="napari")  # napari's own reader opens it
    np.testing.assert_allclose(layer.scale, [1.0, 1.0])


def test_a_plugin_tiff_cut_short_gives_a_clear_error(make_napari_viewer, saved, tmp_path):
    seg_path, _ = saved
    whole = open(seg_path, "rb").read()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole[: len(whole) - 1000])  # a copy that did not finish: the description is there, pixels not
    assert get_reader(str(cut)) is not None
    viewer = make_napari_viewer()
    with pytest.raises(ValueError) as info:
        viewer.open(str(cut), plugin="napari-clis")
    error = getattr(info.value, "original_error", None) or info.value
    message = str(error)
    assert str(cut) in message and "cut short or damaged" in message and "Save or copy it again" in message
    assert error.__cause__ is None and error.__suppress_context__  # no tifffile stack below it
    assert not viewer.layers
    (tmp_path / "stub.tif").write_bytes(whole[:20])  # nothing left to tell whose it was: not claimed
    assert get_reader(str(tmp_path / "stub.tif")) is None


def test_the_manifest_contributes_the_reader():
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest("napari-clis")
    (reader,) = manifest.contributions.readers
    assert reader.command == "napari-clis.get_reader"
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff"} and not reader.accepts_directories
