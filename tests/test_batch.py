"""Batch segmentation (`napari-clis segment`, `ClisSession.segment_many`) on the real images of tests/data."""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imread

from napari_clis import __version__
from napari_clis.batch import plan_tiles, read_batch_metadata
from napari_clis.cli import main
from napari_clis.instances import measure_objects

from .conftest import DATA, NUCLEI_FLUO, NUCLEI_HE

NUCLEI_DIR = DATA / "dsb2018" / "images"


def _outputs(folder, stem):
    return folder / f"{stem}_labels.tif", folder / f"{stem}_uncertainty.tif"


def _all_outputs(folder, stem):
    """Every output of one image, in name order: labels, instances and uncertainty TIFFs and the measurements."""
    return sorted(folder / f"{stem}_{kind}" for kind in ("labels.tif", "instances.tif", "uncertainty.tif",
                                                          "measurements.csv"))


def _nuclei_folder(tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(NUCLEI_DIR, folder)
    return folder


def _stack_tiff(path, nuclei_fluo):
    """A (3, H, W) grey ImageJ stack of real slices (the fluorescence image, flipped two ways), 0.5 um apart."""
    image = nuclei_fluo[0]
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    tifffile.imwrite(path, stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"})
    return stack


def _large_image(nuclei_he):
    """512x640 RGB: the H&E image tiled 2x2 (mirrored, so there are no seams in the image itself)."""
    image = nuclei_he[0]
    top = np.concatenate([image, image[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def test_cli_writes_labels_and_uncertainty_of_a_folder_as_segment_does(tmp_path, nuclei_session):
    out = tmp_path / "out"
    assert main(["segment", str(NUCLEI_DIR), "--model", "nuclei", "--output", str(out), "--device", "cpu"]) == 0
    for stem in (NUCLEI_FLUO, NUCLEI_HE):
        expected = nuclei_session.segment(imread(NUCLEI_DIR / f"{stem}.png"))
        labels_path, uncertainty_path = _outputs(out, stem)
        labels, uncertainty = tifffile.imread(labels_path), tifffile.imread(uncertainty_path)
        assert labels.dtype == np.int32 and uncertainty.dtype == np.float32
        np.testing.assert_array_equal(labels, expected.labels)
        np.testing.assert_array_equal(uncertainty, expected.uncertainty)
        with tifffile.TiffFile(labels_path) as tif:
            record = json.loads(tif.pages[0].description)["napari_clis"]
        assert record["model"] == "nuclei" and record["checkpoint"] == "nuclei"
        assert record["version"] == __version__ and record["kind"] == "labels"
        assert record["source"] == str((NUCLEI_DIR / f"{stem}.png").resolve())
        # the objects, as segment() gives them, and their measurements (the CSV, with a header row)
        instances = tifffile.imread(out / f"{stem}_instances.tif")
        assert instances.dtype == np.uint32
        np.testing.assert_array_equal(instances, expected.instances)
        assert read_batch_metadata(out / f"{stem}_instances.tif")["kind"] == "instances"
        want = measure_objects(expected.instances, imread(NUCLEI_DIR / f"{stem}.png")[..., :3], expected.uncertainty)
        with open(out / f"{stem}_measurements.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == list(want) and len(rows) == 1 + expected.instances.max() > 10
        for k, name in enumerate(rows[0]):
            np.testing.assert_allclose([float(r[k]) for r in rows[1:]], want[name], rtol=1e-12)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for s in (NUCLEI_FLUO, NUCLEI_HE)
                                                           for p in _all_outputs(out, s))


def test_api_without_output_returns_the_arrays_of_segment(lesion, lesion_session):
    path = DATA / "isic2017" / "images" / "2.jpg"
    progress = []
    records = lesion_session.segment_many([path], progress=lambda *a: progress.append(a[:2]))
    expected = lesion_session.segment(lesion[0])
    (r,) = records
    assert r.status == "segmented" and r.outputs == {} and r.shape == lesion[0].shape[:2] and r.tiles == 1
    np.testing.assert_array_equal(r.labels, expected.labels)
    np.testing.assert_array_equal(r.uncertainty, expected.uncertainty)
    np.testing.assert_array_equal(r.instances, expected.instances)  # the lesion model: one object
    assert set(np.unique(r.instances)) == {0, 1} and list(r.measurements["label"]) == [1]
    assert r.measurements["area"][0] == (expected.labels > 0).sum()
    assert progress == [(0, 1), (1, 1)]


def test_stacks_are_segmented_slice_by_slice_keeping_their_spacing(tmp_path, nuclei_fluo, nuclei_he, nuclei_session):
    grey = _stack_tiff(tmp_path / "grey.tif", nuclei_fluo)
    colour = np.stack([nuclei_he[0], nuclei_he[0][::-1]])  # (Z, H, W, 3)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    records = nuclei_session.segment_many([tmp_path / "grey.tif", tmp_path / "colour.tif"], tmp_path / "out",
                                          superpixels=True)
    assert [r.status for r in records] == ["segmented", "segmented"]
    assert records[0].shape == grey.shape and records[1].shape == colour.shape[:3]
    for stack, record in zip((grey, colour), records):
        labels = tifffile.imread(record.outputs["labels"])
        superpixels = tifffile.imread(record.outputs["superpixels"])
        instances = tifffile.imread(record.outputs["instances"])
        with open(record.outputs["measurements"], newline="") as f:
            rows = list(csv.DictReader(f))
        assert labels.shape == stack.shape[:3] and record.tiles == len(stack)
        for z, plane in enumerate(stack):
            expected = nuclei_session.segment(plane)
            np.testing.assert_array_equal(labels[z], expected.labels)
            np.testing.assert_array_equal(superpixels[z], expected.superpixels)
            np.testing.assert_array_equal(instances[z], expected.instances)  # ids start at 1 in each plane
            axis = next(iter(rows[0]))  # the first column: the plane's index along the stack's axis (z for grey)
            assert [int(r["label"]) for r in rows if r[axis] == str(z)] == list(range(1, expected.instances.max() + 1))
        assert len(rows) == sum(int(plane.max()) for plane in instances)
        assert stack is not grey or next(iter(rows[0])) == "z"
    with tifffile.TiffFile(records[0].outputs["uncertainty"]) as tif:
        page = tif.pages[0]
        assert page.resolution == (4.0, 4.0)
        assert tif.shaped_metadata[0]["spacing"] == 0.5 and tif.shaped_metadata[0]["axes"] == "ZYX"
        kept = json.loads(page.description)["napari_clis"]["source_metadata"]
        assert kept["imagej"] == {"spacing": 0.5, "unit": "um"}


def test_an_interrupted_run_resumes_with_the_files_it_had_not_finished(tmp_path, nuclei_session):
    folder = _nuclei_folder(tmp_path)  # the folder is its own output folder: outputs are not taken as inputs

    def stop_after_first(done, total, record):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nuclei_session.segment_many(folder, folder, progress=stop_after_first)
    first, second = _outputs(folder, NUCLEI_FLUO), _outputs(folder, NUCLEI_HE)
    assert all(p.exists() for p in first) and not any(p.exists() for p in second)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    mtimes = [p.stat().st_mtime_ns for p in first]

    records = nuclei_session.segment_many(folder, folder)
    assert [r.status for r in records] == ["skipped", "segmented"]
    assert [p.stat().st_mtime_ns for p in first] == mtimes
    assert all(p.exists() for p in second)
    assert [r.status for r in nuclei_session.segment_many(folder, folder)] == ["skipped", "skipped"]


def test_outputs_of_another_run_are_not_replaced_without_overwrite(tmp_path, capsys):
    image = NUCLEI_DIR / f"{NUCLEI_HE}.png"
    out = tmp_path / "out"
    assert main(["segment", str(image), "--model", "nuclei", "--output", str(out), "--samples", "2"]) == 0
    labels_path, _ = _outputs(out, NUCLEI_HE)
    before = labels_path.read_bytes()
    capsys.readouterr()
    # other settings: the files on disk are not this run's, so it refuses before doing anything
    assert main(["segment", str(image), "--model", "nuclei", "--output", str(out), "--samples", "3"]) == 2
    err = capsys.readouterr().err
    assert str(labels_path) in err and "--overwrite" in err
    assert labels_path.read_bytes() == before
    assert main(["segment", str(image), "--model", "nuclei", "--output", str(out), "--samples", "3",
                 "--overwrite"]) == 0
    assert read_batch_metadata(labels_path)["settings"]["n_samples"] == 3


def test_a_file_that_is_not_ours_is_not_replaced(tmp_path, capsys):
    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"
    out = tmp_path / "out"
    out.mkdir()
    labels_path, _ = _outputs(out, NUCLEI_FLUO)
    tifffile.imwrite(labels_path, np.ones((4, 4), np.uint8))  # e.g. a hand-made ground truth
    assert main(["segment", str(image), "--model", "nuclei", "--output", str(out)]) == 2
    assert str(labels_path) in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(labels_path), np.ones((4, 4), np.uint8))


def test_bad_inputs_are_reported_and_the_others_segmented(tmp_path, capsys):
    from napari_clis.checkpoint import shipped_model_path

    folder = _nuclei_folder(tmp_path)
    (folder / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    model = shipped_model_path("nuclei")  # a model file given by its path
    code = main(["segment", str(folder), str(tmp_path / "notes.txt"), str(tmp_path / "missing.tif"),
                 "--model", str(model), "--output", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    for name in ("broken.png", "notes.txt", "missing.tif"):
        assert name in err.split("These could not be segmented:")[1]
    assert "2 segmented" in err and "3 failed" in err
    for stem in (NUCLEI_FLUO, NUCLEI_HE):
        assert all(p.exists() for p in _outputs(out, stem))
    assert read_batch_metadata(_outputs(out, NUCLEI_HE)[0])["checkpoint"] == str(model)
    assert main(["segment", str(folder), "--model", str(tmp_path / "nuclei"), "--output", str(out)]) == 2
    assert "neither a shipped model" in capsys.readouterr().err


def test_a_failed_write_leaves_no_output_that_looks_complete(tmp_path, monkeypatch, nuclei_session):
    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"
    out = tmp_path / "out"
    real_imwrite = tifffile.imwrite

    def disk_full(file, data, **kwargs):  # the temporary file, open: half of it written, then the disk is full
        file.write(b"II*\x00half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    (r,) = nuclei_session.segment_many(image, out)
    assert r.status == "failed" and "No space left on device" in r.error
    assert os.listdir(out) == []
    monkeypatch.setattr(tifffile, "imwrite", real_imwrite)
    (r,) = nuclei_session.segment_many(image, out)
    assert r.status == "segmented"


def test_plan_tiles_covers_the_plane_once_with_cores_on_the_8_pixel_grid():
    tiles = plan_tiles(1000, 2100, 1024)
    covered = np.zeros((1000, 2100), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        covered[y0:y1, x0:x1] += 1
        assert y0 % 8 == 0 and x0 % 8 == 0 and y1 - y0 <= 1024 and x1 - x0 <= 1024
        ya, yb, xa, xb = t.crop
        assert ya == max(0, y0 - 96) and xb == min(2100, x1 + 96)
    assert (covered == 1).all() and len(tiles) == 3
    assert len(plan_tiles(1000, 1024, 1024)) == 1
    with pytest.raises(ValueError, match="tile"):
        plan_tiles(100, 100, 8)


def test_a_large_image_is_tiled_and_stitched_without_seams(nuclei_he, nuclei_session, tmp_path):
    big = _large_image(nuclei_he)
    tifffile.imwrite(tmp_path / "big.tif", big, photometric="rgb")
    (r,) = nuclei_session.segment_many(tmp_path / "big.tif", tile=256, superpixels=True)
    assert r.tiles == 6  # 2 x 3 cores of at most 256 px
    whole = nuclei_session.segment(big)
    # one pass over the whole image: equal up to floating-point rounding (see napari_clis.batch)
    assert (r.labels == whole.labels).mean() > 0.9999
    np.testing.assert_allclose(r.uncertainty, whole.uncertainty, atol=1e-5)
    # superpixel ids: each lies in one tile, and no tile reuses another's
    owners = {}
    for i, t in enumerate(plan_tiles(*big.shape[:2], 256)):
        y0, y1, x0, x1 = t.core
        for sp in np.unique(r.superpixels[y0:y1, x0:x1]):
            assert owners.setdefault(int(sp), i) == i
    assert r.superpixels.min() == 1 and len(owners) == r.superpixels.max()
    # objects are found on the stitched plane: nuclei on a tile border are one object, not one per tile
    cores = np.zeros(big.shape[:2], int)
    for i, t in enumerate(plan_tiles(*big.shape[:2], 256)):
        y0, y1, x0, x1 = t.core
        cores[y0:y1, x0:x1] = i
    spanning = [i for i in np.unique(r.instances)[1:] if np.unique(cores[r.instances == i]).size > 1]
    assert len(spanning) >= 3
    assert list(r.measurements["label"]) == list(range(1, r.instances.max() + 1))


@pytest.mark.parametrize("model, source, tile, pieces", [
    ("nuclei", NUCLEI_DIR / f"{NUCLEI_HE}.png", 128, 6),  # 256x320: 2 x 3 tiles, in batch and in segment()
    ("nuclei", NUCLEI_DIR / f"{NUCLEI_HE}.png", None, 1),  # both defaults: one piece
    # a model with a working resolution and one object per class: batch hands the plane over whole, and the
    # network's 96x128 input is tiled at 64 px inside as in segment()
    ("skin-lesion", DATA / "isic2017" / "images" / "2.jpg", 64, 1),
])
def test_segment_and_batch_give_identical_labels(model, source, tile, pieces, nuclei_session, lesion_session):
    """The widget (ClisSession.segment) and `napari-clis segment` (batch) tile alike: the same labels, bit for bit."""
    session = {"nuclei": nuclei_session, "skin-lesion": lesion_session}[model]
    size = {} if tile is None else {"tile": tile}
    (r,) = session.segment_many(source, **size)
    whole = session.segment(imread(source), **size)
    assert r.status == "segmented" and r.tiles == pieces
    np.testing.assert_array_equal(r.labels, whole.labels)
    np.testing.assert_array_equal(r.uncertainty, whole.uncertainty)
    np.testing.assert_array_equal(r.instances, whole.instances)  # found on the whole plane, as segment() does
    assert 0 < (whole.labels > 0).mean() < 1  # a real segmentation, not an empty one


def test_the_command_line_and_segment_tile_at_the_same_size():
    import inspect

    from napari_clis import ClisSession
    from napari_clis.cli import build_parser

    args = build_parser().parse_args(["segment", "in.tif", "--model", "nuclei", "--output", "out"])
    assert args.tile == inspect.signature(ClisSession.segment).parameters["tile"].default


@pytest.fixture
def mixed_folder(tmp_path, nuclei_fluo, nuclei_he):
    """A large image that goes in tiles at --tile 256, and a grey stack."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "big.tif", _large_image(nuclei_he), photometric="rgb")
    _stack_tiff(folder / "stack.tif", nuclei_fluo)
    return folder


def _read_all(folder):
    return {p.name: (tifffile.imread(p), read_batch_metadata(p)) for p in sorted(folder.glob("*.tif"))}


def test_a_local_dask_cluster_writes_the_same_files_as_one_process(mixed_folder, tmp_path, recwarn):
    pytest.importorskip("distributed")
    args = [str(mixed_folder), "--model", "nuclei", "--tile", "256", "--superpixels", "--device", "cpu"]
    assert main(["segment", *args, "--output", str(tmp_path / "one")]) == 0
    assert main(["segment", *args, "--output", str(tmp_path / "two"), "--workers", "2"]) == 0
    # the local cluster's workers run without Dask's malloc trim setting, which slows PyTorch down 2.5x
    assert not [w for w in recwarn if "MALLOC_TRIM_THRESHOLD_" in str(w.message)]
    one, two = _read_all(tmp_path / "one"), _read_all(tmp_path / "two")
    assert len(one) == 2 * 4 and one.keys() == two.keys()  # labels, instances, uncertainty, superpixels
    for name, (array, record) in one.items():
        np.testing.assert_array_equal(two[name][0], array, err_msg=name)
        assert two[name][0].dtype == array.dtype and two[name][1] == record
    for stem in ("big", "stack"):  # and the same measurements, byte for byte
        table = f"{stem}_measurements.csv"
        assert (tmp_path / "one" / table).read_bytes() == (tmp_path / "two" / table).read_bytes()


def test_a_running_scheduler_is_used_by_its_address(nuclei_session):
    distributed = pytest.importorskip("distributed")
    image = NUCLEI_DIR / f"{NUCLEI_HE}.png"
    here = nuclei_session.segment_many(image, tile=128)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        there = nuclei_session.segment_many(image, tile=128, scheduler=cluster.scheduler_address)
    assert there[0].status == "segmented" and there[0].tiles == 6
    np.testing.assert_array_equal(there[0].labels, here[0].labels)
    np.testing.assert_array_equal(there[0].uncertainty, here[0].uncertainty)
    with pytest.raises(ValueError, match="not both"):
        nuclei_session.segment_many(image, scheduler=cluster.scheduler_address, workers=2)


def test_grey_alpha_and_cmyk_files_are_read_as_the_image_they_show(tmp_path, nuclei_he, nuclei_session):
    """A grey PNG with an alpha channel is one grey image (it was read as 256 slices 2 px wide, all background),
    a CMYK JPEG is its RGB image (its inks were read as colours), and an (H, W, C) TIFF without axes is refused
    instead of being segmented as a stack of slivers."""
    from PIL import Image

    from napari_clis.batch import read_image

    rgb = nuclei_he[0]
    grey = rgb.mean(-1).astype(np.uint8)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.dstack([grey, grey // 2]), "LA").save(tmp_path / "transparent.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    tifffile.imwrite(tmp_path / "channels.tif", np.dstack([grey, grey]))

    data, _ = read_image(tmp_path / "la.png")
    assert data.shape == grey.shape and np.array_equal(data, grey)
    cmyk, _ = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == rgb.shape and np.abs(cmyk.astype(int) - read_image(tmp_path / "rgb.jpg")[0]).mean() < 3
    records = {r.source.name: r for r in nuclei_session.segment_many(tmp_path, tmp_path / "out")}
    assert records["la.png"].status == "segmented"
    labels = tifffile.imread(records["la.png"].outputs["labels"])
    assert labels.shape == grey.shape
    assert np.array_equal(labels, nuclei_session.segment(grey).labels)
    assert records["transparent.png"].status == "failed" and "alpha" in records["transparent.png"].error
    assert records["channels.tif"].status == "failed" and "planes of" in records["channels.tif"].error


def test_outputs_of_an_earlier_run_are_not_inputs_and_an_unwritable_output_stops_before_any_work(tmp_path, capsys):
    folder = _nuclei_folder(tmp_path)
    assert main(["segment", str(folder), "--model", "nuclei", "--output", str(folder), "--samples", "1"]) == 0
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--model", "nuclei", "--output", str(out), "--samples", "1"]) == 0
    assert "2 segmented" in capsys.readouterr().err  # not the 8 TIFFs of the folder: 6 are the first run's
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for s in (NUCLEI_FLUO, NUCLEI_HE)
                                                            for p in _all_outputs(out, s))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for target in (blocker, blocker / "out"):  # a file, and a folder that cannot be made
        assert main(["segment", str(folder), "--model", "nuclei", "--output", str(target)]) == 2
        err = capsys.readouterr().err
        assert "Nothing was segmented" in err or "is a file, not a folder" in err, err
        assert "segmented," not in err
    with pytest.raises(SystemExit) as stop:  # argparse's own exit: 2, with the option named
        main(["segment", str(folder), "--model", "nuclei", "--output", str(out), "--threads", "0"])
    assert stop.value.code == 2
    assert "--threads: takes a whole number of threads >= 1" in capsys.readouterr().err


def test_overwrite_removes_an_earlier_runs_output_it_does_not_write_and_a_file_named_twice_is_refused(tmp_path,
                                                                                                     nuclei_session):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(NUCLEI_DIR / f"{NUCLEI_FLUO}.png", folder / "a.png")
    out = tmp_path / "out"
    (first,) = nuclei_session.segment_many(folder, out, superpixels=True)
    assert first.outputs["superpixels"].exists()
    shutil.copy(NUCLEI_DIR / f"{NUCLEI_HE}.png", folder / "a.png")  # another image under the same name
    (second,) = nuclei_session.segment_many(folder, out, overwrite=True)
    assert second.status == "segmented" and sorted(p.name for p in out.iterdir()) == [
        "a_instances.tif", "a_labels.tif", "a_measurements.csv", "a_uncertainty.tif"]
    with pytest.raises(ValueError, match="is given twice"):
        nuclei_session.segment_many([folder, folder / "a.png"], out)


# -- resume, a full disk, a pipe: outputs trusted only when whole ---------------------------------------------------

@pytest.mark.parametrize("which", [0, 1])  # the labels (compressed) or the uncertainty (raw) TIFF
def test_resume_redoes_an_output_cut_short_after_its_description_was_written(tmp_path, nuclei_session, which):
    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"
    out = tmp_path / "out"
    (first,) = nuclei_session.segment_many(image, out)
    assert first.status == "segmented"
    outputs = _outputs(out, NUCLEI_FLUO)
    whole = [tifffile.imread(p) for p in outputs]
    cut = outputs[which]
    data = cut.read_bytes()
    with tifffile.TiffFile(cut) as tif:
        start = tif.pages[0].dataoffsets[0]  # the pixels follow the description
    cut.write_bytes(data[: (start + len(data)) // 2])  # e.g. a copy that stopped half way through the pixels
    assert read_batch_metadata(cut)["job"]  # the record still reads as this run's: it alone cannot tell
    (again,) = nuclei_session.segment_many(image, out)
    assert again.status == "segmented"
    for path, array in zip(outputs, whole):
        np.testing.assert_array_equal(tifffile.imread(path), array)
    assert [r.status for r in nuclei_session.segment_many(image, out)] == ["skipped"]


def test_the_measurements_are_part_of_a_complete_output_and_a_changed_one_is_not_replaced(tmp_path, nuclei_session,
                                                                                          capsys):
    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"
    out = tmp_path / "out"
    (first,) = nuclei_session.segment_many(image, out)
    table = first.outputs["measurements"]
    written = table.read_bytes()
    assert written.startswith(b"label,area,perimeter,mean_intensity,")
    stamps = {p: p.stat().st_mtime_ns for p in first.outputs.values()}
    table.unlink()  # e.g. a run stopped after its TIFFs, before the CSV (written last)
    (again,) = nuclei_session.segment_many(image, out)
    assert again.status == "segmented" and table.read_bytes() == written
    assert [r.status for r in nuclei_session.segment_many(image, out)] == ["skipped"]
    assert all(p.stat().st_mtime_ns >= stamps[p] for p in stamps)
    table.write_bytes(written.replace(b"\n", b"\r\n"))  # opened and saved in a spreadsheet: not this run's any more
    assert main(["segment", str(image), "--model", "nuclei", "--output", str(out), "--device", "cpu"]) != 0
    assert "measurements.csv" in capsys.readouterr().err
    assert table.read_bytes() != written  # the user's file is left as it is
    (replaced,) = nuclei_session.segment_many(image, out, overwrite=True)
    assert replaced.status == "segmented" and table.read_bytes() == written


def _unshare_available() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="a real full disk needs a small tmpfs in a user namespace")
def test_a_full_disk_is_named_with_its_folder_not_as_bytes_requested_and_written(tmp_path):
    """A real full disk: the output folder is a 128 KiB tmpfs, mounted in a user namespace of the child."""
    import napari_clis

    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"  # its uncertainty TIFF (256 KiB of float32) cannot fit
    out = tmp_path / "small-disk"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=128k none {shlex.quote(str(out))} && exec {shlex.quote(sys.executable)} -m "
              f"napari_clis.cli segment {shlex.quote(str(image))} --model nuclei --samples 1 --device cpu "
              f"--output {shlex.quote(str(out))}")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(napari_clis.__file__).resolve().parents[1])}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    failure = done.stderr.split("These could not be segmented:")[1]
    assert "No space left on device: the disk that holds the folder" in failure and str(out) in failure, failure
    assert "requested and" not in failure
    assert not any(out.iterdir())  # the tmpfs is gone with the child; nothing was written to the folder below


def test_a_pipe_given_as_an_image_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "image.tif"
    os.mkfifo(fifo)

    def unblock():  # a reader waiting on the pipe (the fault) gets an end of file instead of waiting for ever
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    timer = threading.Timer(60, unblock)
    timer.start()
    try:
        t0 = time.monotonic()
        code = main(["segment", str(fifo), "--model", "nuclei", "--output", str(tmp_path / "out")])
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert code == 1 and f"{fifo} is not a regular file" in err, err


# -- issue 19: intensity range and object size ------------------------------------------------------------------------
def test_batch_takes_the_intensity_range_and_object_size_as_segment_does(tmp_path, nuclei_fluo, nuclei_session):
    small = np.ascontiguousarray(nuclei_fluo[0][::2, ::2])
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, small)
    options = {"intensity_range": (5.0, 120.0), "object_diameter": nuclei_session.object_diameter / 2}
    (r,) = nuclei_session.segment_many(path, **options)
    whole = nuclei_session.segment(small, **options)
    assert r.status == "segmented" and r.labels.shape == small.shape
    np.testing.assert_array_equal(r.labels, whole.labels)
    np.testing.assert_array_equal(r.uncertainty, whole.uncertainty)
    np.testing.assert_array_equal(r.instances, whole.instances)
    assert not np.array_equal(r.labels, nuclei_session.segment(small).labels)  # the options did something
    past = (float(np.percentile(small, 99.6)), float(small.max()) + 1)  # limits past the nuclei: a black image
    with pytest.warns(UserWarning, match=r"lies below the low end .* almost black image"):
        nuclei_session.segment_many(path, intensity_range=past)


def test_a_large_plane_is_tiled_at_the_scale_the_network_sees_it(tmp_path, nuclei_he, nuclei_session):
    big = _large_image(nuclei_he)  # 512x640
    tifffile.imwrite(tmp_path / "big.tif", big, photometric="rgb")
    (r,) = nuclei_session.segment_many(tmp_path / "big.tif", tile=256, object_diameter=2 * 19.9)  # shrunk by 2
    assert r.tiles == 2  # 256x320 for the network: 1 x 2 tiles of at most 256 px there (not 2 x 3 as unscaled)
    whole = nuclei_session.segment(big, tile=256, object_diameter=2 * 19.9)
    assert (r.labels == whole.labels).mean() > 0.995  # per-tile rescaling: a few pixels differ near tile borders


def test_the_command_line_records_the_range_and_size_and_a_change_is_another_run(tmp_path, capsys):
    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"
    out = tmp_path / "out"
    base = ["segment", str(image), "--model", "nuclei", "--output", str(out), "--samples", "2"]
    assert main(base + ["--intensity-range", "5,120", "--object-diameter", "15"]) == 0
    labels_path, _ = _outputs(out, NUCLEI_FLUO)
    settings = read_batch_metadata(labels_path)["settings"]
    assert settings["intensity_range"] == [5.0, 120.0] and settings["object_diameter"] == 15.0
    before = labels_path.read_bytes()
    assert main(base + ["--intensity-range", "5,120", "--object-diameter", "15"]) == 0  # the same run: skipped
    assert "1 skipped" in capsys.readouterr().err and labels_path.read_bytes() == before
    assert main(base + ["--intensity-range", "auto", "--object-diameter", "15"]) == 2  # another run: refused
    assert "--overwrite" in capsys.readouterr().err and labels_path.read_bytes() == before
    assert main(base + ["--overwrite"]) == 0
    settings = read_batch_metadata(labels_path)["settings"]
    assert settings["intensity_range"] == "auto" and settings["object_diameter"] is None


@pytest.mark.parametrize("args, words", [(["--intensity-range", "7,7"], "zero width"),
                                         (["--intensity-range", "9,3"], "negative width"),
                                         (["--intensity-range", "nan,3"], "finite"),
                                         (["--intensity-range", "bright"], "'auto' or LOW,HIGH"),
                                         (["--object-diameter", "0"], "above 0"),
                                         (["--object-diameter", "-4"], "above 0"),
                                         (["--object-diameter", "nan"], "above 0")])
def test_the_command_line_refuses_a_bad_range_or_size_by_name(tmp_path, capsys, args, words):
    image = NUCLEI_DIR / f"{NUCLEI_FLUO}.png"
    with pytest.raises(SystemExit) as e:
        main(["segment", str(image), "--model", "nuclei", "--output", str(tmp_path / "out")] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert args[0] in err and words in err and not (tmp_path / "out").exists()


def test_an_object_size_larger_than_a_plane_fails_that_file_only(tmp_path, nuclei_fluo, nuclei_session):
    tifffile.imwrite(tmp_path / "a_tiny.tif", np.ascontiguousarray(nuclei_fluo[0][:40, :40]))
    tifffile.imwrite(tmp_path / "b_large.tif", nuclei_fluo[0])
    tiny, large = nuclei_session.segment_many(tmp_path, object_diameter=50)
    assert tiny.status == "failed" and "object_diameter 50 px is larger than the image" in tiny.error
    assert large.status == "segmented"
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match="object_diameter"):
            nuclei_session.segment_many(tmp_path, object_diameter=bad)
    with pytest.raises(ValueError, match="intensity_range.*zero width"):
        nuclei_session.segment_many(tmp_path, intensity_range=[3, 3])
