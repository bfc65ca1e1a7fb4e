"""`napari-clis bench outliers`: a few nuclei made 10 times brighter, Dice outside them, beside Otsu."""

from __future__ import annotations

import json
import shutil

import numpy as np
from skimage.io import imread, imsave

from napari_clis.cli import main
from napari_clis.data import bbbc039_split
from napari_clis.evaluation.benchmarks import OUTLIER_FACTOR, brighten_nuclei

from .conftest import DATA, NUCLEI_HE

FLUO = "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21"


def _folder(tmp_path):
    """A data folder: dsb2018 with both test images (held-out pool: one grey fluorescence, one H&E, which the
    benchmark leaves out), and bbbc039 with a 16-bit grey copy of the fluorescence image under the first held-out
    bbbc039 name (the layout and dtype of bbbc039)."""
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / "dsb2018" / sub).mkdir(parents=True)
        (root / "bbbc039" / sub).mkdir(parents=True)
        for stem in (FLUO, NUCLEI_HE):
            shutil.copy(DATA / "dsb2018" / sub / f"{stem}.png", root / "dsb2018" / sub / f"{stem}.png")
    stem = bbbc039_split()["heldout"][0]
    grey = imread(DATA / "dsb2018" / "images" / f"{FLUO}.png")[..., 0].astype(np.uint16) * 257
    imsave(root / "bbbc039" / "images" / f"{stem}.png", grey, check_contrast=False)
    shutil.copy(DATA / "dsb2018" / "masks" / f"{FLUO}.png", root / "bbbc039" / "masks" / f"{stem}.png")
    return root


def test_three_middling_nuclei_are_made_ten_times_brighter_and_left_out_of_the_score_with_a_margin():
    image = imread(DATA / "dsb2018" / "images" / f"{FLUO}.png")[..., 0]
    instances = imread(DATA / "dsb2018" / "masks" / f"{FLUO}.png").astype(np.int32)
    brightened, chosen, left_out = brighten_nuclei(FLUO, image, instances)
    ids, areas = np.unique(instances[instances > 0], return_counts=True)
    q1, q3 = np.percentile(areas, [25, 75])
    assert len(set(chosen)) == 3 and all(q1 <= areas[ids == c][0] <= q3 for c in chosen)
    inside = np.isin(instances, chosen)
    assert brightened.dtype == np.float32
    np.testing.assert_allclose(brightened[inside], image[inside] * OUTLIER_FACTOR)
    np.testing.assert_array_equal(brightened[~inside], image[~inside])
    assert left_out[inside].all() and left_out.sum() > inside.sum()  # the nuclei and a margin around them
    again = brighten_nuclei(FLUO, image, instances)[1]
    np.testing.assert_array_equal(again, chosen)  # the same nuclei every run
    assert brighten_nuclei(FLUO, image, np.where(np.isin(instances, ids[:9]), instances, 0)) is None  # < 10 nuclei


def test_bench_outliers_prints_a_table_per_set_beside_otsu(tmp_path, capsys):
    root = _folder(tmp_path)
    out_json = tmp_path / "o.json"
    assert main(["bench", "outliers", "--data", str(root), "--samples", "2", "--limit", "3",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    header = ("| model | images | Dice unmodified | Dice x10 | drop mean / worst | Otsu Dice unmodified | "
              "Otsu Dice x10 |")
    assert out.count(header) == 2
    assert "dsb2018 grey fluorescence (" in out and "\nbbbc039 (" in out and "not in the data folder" in out
    assert out.count("| nuclei | 1 |") == 2
    summary = json.loads(out_json.read_text())
    assert [r["id"] for r in summary["dsb2018 grey fluorescence"]["rows"]] == [FLUO]  # the H&E image left out
    for m in summary.values():
        assert m["n"] == 1 and len(m["rows"][0]["brightened"]) == 3
        for k in ("clis_unmodified", "clis_x10", "otsu_unmodified", "otsu_x10"):
            assert 0 <= m[k] <= 1
        assert np.isclose(m["otsu_drop_mean"], m["otsu_unmodified"] - m["otsu_x10"])
        assert m["otsu_drop_mean"] > 0.05  # a global threshold loses the other nuclei to three bright ones


def test_bench_instances_prints_every_method_per_set(tmp_path, capsys):
    """`napari-clis bench instances` (the instance table of docs/benchmarks.md) on the same tiny folder, and on
    he_nuclei's tiles where the folder holds them (here one, the H&E test image with its instance mask)."""
    root = _folder(tmp_path)
    out_json = tmp_path / "i.json"
    assert main(["bench", "instances", "--data", str(root), "--samples", "2", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert set(res) == {"dsb2018", "bbbc039"}  # no he_nuclei folder: no row for it
    for sub in ("images", "masks"):
        (root / "he_nuclei" / sub).mkdir(parents=True)
        shutil.copy(DATA / "dsb2018" / sub / f"{NUCLEI_HE}.png", root / "he_nuclei" / sub / "tile.png")
    assert main(["bench", "instances", "--data", str(root), "--samples", "2", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| images | method | AP@0.5 | mAP 0.5:0.9 | mAP 0.5:0.95 | PQ |" in out
    assert "`he_nuclei` never trained on (1 images, " in out
    res = json.loads(out_json.read_text())
    assert res["dsb2018"]["images"] == 2 and res["bbbc039"]["images"] == 1  # every held-out image, H&E too
    assert res["he_nuclei"]["images"] == 1 and res["he_nuclei"]["nuclei"] > 10
    for dataset in ("dsb2018", "bbbc039", "he_nuclei"):
        r = res[dataset]
        for m in ("cc", "watershed", "otsu", "ceiling"):
            assert 0 <= r[m]["map50_95"] <= r[m]["map50_90"] <= r[m]["ap50"] <= 1
        assert min(r["ceiling"]["ap50"], r["watershed"]["ap50"]) > 0.5  # a fair split of a good segmentation


def test_bench_quality_measures_every_nuclei_set_the_folder_holds_beside_a_compared_model(tmp_path, capsys):
    """`napari-clis bench quality --model nuclei`: the dsb2018 pool, bbbc039's held-out half and he_nuclei (here one
    tile, the H&E test image) in one run, and a second model file's Dice on the same images (``--compare``)."""
    from napari_clis.checkpoint import shipped_model_path

    root = _folder(tmp_path)
    for sub in ("images", "masks"):
        (root / "he_nuclei" / sub).mkdir(parents=True)
        shutil.copy(DATA / "dsb2018" / sub / f"{NUCLEI_HE}.png", root / "he_nuclei" / sub / "tile.png")
    out_json = tmp_path / "q.json"
    shipped = str(shipped_model_path("nuclei"))
    assert main(["bench", "quality", "--model", "nuclei", "--data", str(root), "--samples", "2",
                 "--compare", shipped, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    assert [res[k]["dataset"] for k in ("nuclei", "nuclei/bbbc039", "nuclei/he_nuclei")] == \
        ["dsb2018", "bbbc039", "he_nuclei"]
    assert [res[k]["n"] for k in ("nuclei", "nuclei/bbbc039", "nuclei/he_nuclei")] == [2, 1, 1]
    for m in res.values():
        assert 0 <= m["otsu_dice"] <= 1 and m["dice"] > 0.5
        assert m["compared"] == {"nuclei (nuclei.pt)": m["dice"]}  # the same model: the same Dice, image by image
    assert out.count("| nuclei (nuclei.pt), same images |") == 3


def test_bench_instances_of_a_model_file_with_an_instance_head_adds_its_row(tmp_path, capsys):
    """``--checkpoint`` measures a model file; one with a distance head gets a row for the head beside the same
    watershed on its probabilities."""
    import torch

    from napari_clis.checkpoint import load_model, save_model, shipped_model_path
    from napari_clis.network import ClisNet, NetworkConfig

    root = _folder(tmp_path)
    shipped, meta, _ = load_model(shipped_model_path("nuclei"))
    net = ClisNet(NetworkConfig(**{**shipped.config.to_dict(), "instance_head": True})).eval()
    net.load_state_dict(shipped.state_dict(), strict=False)
    net.distance_head.copy_decoder(net)
    with torch.no_grad():
        net.distance_head.out.weight.fill_(0.05)
    save_model(tmp_path / "head.pt", net, meta)
    out_json = tmp_path / "i.json"
    assert main(["bench", "instances", "--data", str(root), "--samples", "0", "--checkpoint",
                 str(tmp_path / "head.pt"), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "head.pt" in out and "| the instance head (watershed on its distance map) |" in out
    res = json.loads(out_json.read_text())
    for dataset in ("dsb2018", "bbbc039"):
        assert 0 <= res[dataset]["head"]["ap50"] <= 1 and "watershed" in res[dataset]
