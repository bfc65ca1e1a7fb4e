"""The TIFFs napari-clis writes (napari_clis.tiffs): the napari writer's and batch's share one metadata schema, are
written atomically with the user's umask, and files written before that schema still read."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_clis._writer import read_metadata, write_image, write_labels
from napari_clis.batch import read_batch_metadata

from .conftest import DATA, NUCLEI_FLUO

_WRITE_WITH_UMASK = """
import os, sys
os.umask(int(sys.argv[1], 8))  # before napari_clis reads it
import numpy as np
from napari_clis._writer import write_labels
write_labels(sys.argv[2], np.zeros((16, 16), np.int32), {"name": "segmentation"})
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_napari_writer_gives_its_tiff_the_permissions_of_the_users_umask(tmp_path, umask, mode):
    """On a shared server colleagues read what the user saves (umask 022: rw-r--r--), as a plain open() gives."""
    path = tmp_path / "seg.tif"
    subprocess.run([sys.executable, "-c", _WRITE_WITH_UMASK, f"{umask:o}", str(path)], check=True, timeout=120)
    assert os.stat(path).st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["seg.tif"]  # no temporary file left


def test_the_napari_writer_and_batch_write_one_schema(tmp_path, nuclei_session):
    labels = np.arange(64, dtype=np.int32).reshape(8, 8) % 3
    (saved,) = write_labels(str(tmp_path / "seg.tif"),
                            labels, {"name": "segmentation", "scale": [0.5, 0.25], "translate": [1.0, 2.0],
                                     "metadata": {"class_names": ["background", "nucleus"]}})
    (uncertainty,) = write_image(str(tmp_path / "unc"), labels.astype(np.float32), {"name": "uncertainty",
                                                                                     "contrast_limits": [0, 0.5]})
    (r,) = nuclei_session.segment_many(DATA / "dsb2018" / "images" / f"{NUCLEI_FLUO}.png", tmp_path / "out")
    layer = read_metadata(saved)
    assert layer["schema"] == 2 and layer["kind"] == "labels" and layer["layer_type"] == "labels"
    assert layer["scale"] == [0.5, 0.25] and layer["translate"] == [1.0, 2.0]
    assert layer["class_names"] == ["background", "nucleus"]
    assert read_metadata(uncertainty)["kind"] == "image" and read_metadata(uncertainty)["contrast_limits"] == [0, 0.5]
    for kind, layer_type in (("labels", "labels"), ("uncertainty", "image")):
        record = read_metadata(r.outputs[kind])
        assert record["schema"] == 2 and record["kind"] == kind and record["layer_type"] == layer_type
        assert record["class_names"] == nuclei_session.class_names
        assert read_batch_metadata(r.outputs[kind]) == record
    assert read_batch_metadata(saved) == {}  # a layer saved from napari is not a batch run's output
    # the widget's instances layer: objects, not classes (it wrote "class_names": null as a segmentation)
    (objects,) = write_labels(str(tmp_path / "objects.tif"), labels, {"name": "instances",
                                                                       "metadata": {"napari_clis": "instances"}})
    record = read_metadata(objects)
    assert record["kind"] == "instances" and record["layer_type"] == "labels" and "class_names" not in record
    np.testing.assert_array_equal(tifffile.imread(saved), labels)
    with tifffile.TiffFile(r.outputs["labels"]) as tif:  # one description, tifffile's shaped one: axes kept
        assert tif.series[0].axes == "YX"
        assert sum(tag.name == "ImageDescription" for tag in tif.pages[0].tags) == 1


def test_tiffs_written_before_the_shared_schema_still_read(tmp_path):
    labels = np.zeros((2, 16, 16), np.int32)
    # the napari writer's files: the shaped description, with the layer's record and no kind
    old_layer = {"name": "segmentation", "layer_type": "labels", "scale": [2.0, 1.0, 1.0],
                 "translate": [0.0, 0.0, 0.0], "class_names": ["background", "nucleus"]}
    tifffile.imwrite(tmp_path / "seg.tif", labels, metadata=None,
                     description=json.dumps({"shape": list(labels.shape), "napari_clis": old_layer}))
    tifffile.imwrite(tmp_path / "unc.tif", labels.astype(np.float32), metadata=None,
                     description=json.dumps({"shape": list(labels.shape),
                                             "napari_clis": {"name": "uncertainty", "layer_type": "image"}}))
    # batch's: the run's record as a description of its own (no layer type), then tifffile's shaped one
    old_run = {"kind": "uncertainty", "job": "0123abcd", "version": "0.1.0", "tasks": [0, 0],
               "settings": {"n_samples": 8, "seed": 0, "tile": 2048, "margin": 96, "superpixel_size": 12}}
    tifffile.imwrite(tmp_path / "a_uncertainty.tif", labels.astype(np.float32), metadata={"axes": "ZYX"},
                     description=json.dumps({"napari_clis": old_run}))

    layer = read_metadata(tmp_path / "seg.tif")
    assert layer == {**old_layer, "kind": "labels"}
    assert read_metadata(tmp_path / "unc.tif")["kind"] == "image"
    run = read_batch_metadata(tmp_path / "a_uncertainty.tif")
    assert run == {**old_run, "layer_type": "image"}  # its job still matches: a resumed run skips it
    assert read_metadata(tmp_path / "a_uncertainty.tif") == run
    tifffile.imwrite(tmp_path / "plain.tif", labels)
    assert read_metadata(tmp_path / "plain.tif") == {} == read_batch_metadata(tmp_path / "plain.tif")


def test_read_layer_gives_the_pixels_with_the_record_and_says_why_it_cannot(tmp_path):
    from napari_clis.tiffs import read_layer

    stack = (np.arange(2 * 16 * 16) % 7).astype(np.int32).reshape(2, 16, 16)
    (path,) = write_labels(str(tmp_path / "seg.tif"), stack, {"name": "segmentation", "scale": [2.0, 0.5, 0.5]})
    data, record = read_layer(path)
    np.testing.assert_array_equal(data, stack)  # every axis, as written
    assert record == read_metadata(path) and record["scale"] == [2.0, 0.5, 0.5]
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    with pytest.raises(ValueError, match="not a TIFF written by napari-clis"):
        read_layer(tmp_path / "plain.tif")
    whole = (tmp_path / "seg.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.tif: the file is cut short or damaged") as info:
        read_layer(tmp_path / "cut.tif")
    assert info.value.__cause__ is None and info.value.__suppress_context__
