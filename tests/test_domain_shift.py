"""The domain-shift protocol of `napari-clis bench continual --domain`, end to end on a tiny folder of real crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.io import imread, imsave

from napari_clis.cli import main

from .conftest import DATA, NUCLEI_HE


def _folder(tmp_path, name="new_lab"):
    """A data folder holding ``name/images`` and ``name/masks``: three 128 px crops of the H&E test image that do
    not overlap, with their instance masks (uint16), as the he_nuclei folder lays them out."""
    image = imread(DATA / "dsb2018" / "images" / f"{NUCLEI_HE}.png")[..., :3]
    mask = imread(DATA / "dsb2018" / "masks" / f"{NUCLEI_HE}.png")
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / name / sub).mkdir(parents=True)
    for k, (y, x) in enumerate([(0, 0), (0, 128), (128, 64)]):
        imsave(root / name / "images" / f"crop{k}.png", image[y:y + 128, x:x + 128], check_contrast=False)
        imsave(root / name / "masks" / f"crop{k}.png", mask[y:y + 128, x:x + 128].astype(np.uint16),
               check_contrast=False)
    return root


def test_the_domain_protocol_learns_two_images_and_measures_the_third_beside_no_update_and_the_pixel_classifier(
        tmp_path, capsys):
    root = _folder(tmp_path)
    out_json = tmp_path / "d.json"
    assert main(["bench", "continual", "--domain", "new_lab", "--data", str(root), "--sequences", "1", "--tasks", "2",
                 "--steps", "2", "--samples", "2", "--methods", "clis,none,rf,rf-truth", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "Domain shift on new_lab: 1 sequence(s) of 2 images learned" in out
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in out.splitlines()
            if line.startswith("| new_lab |") and line.count("|") == 9}
    assert set(rows) == {"CLIS (ours)", "no update (pretrained)", "pixel classifier (RF) on the corrected images",
                         "pixel classifier (RF) on the true masks"}
    for name, cells in rows.items():
        assert 0.2 < float(cells[2].split()[0]) <= 1.0, name  # Dice on the unseen crop: nuclei found
    for name in ("CLIS (ours)", "no update (pretrained)"):  # each image keeps its own task (or the pretrained one)
        assert float(rows[name][4].split()[0]) == 0.0, name
        assert 0.5 < float(rows[name][0].split()[0]) <= 1.0  # the learned crops after the simulated user
    assert rows["pixel classifier (RF) on the true masks"][0] == "-"  # the peers are measured on unseen images only
    assert "| new_lab | CLIS (ours) | 2, " in out  # the learn table: 2 learns, rolled back or not
    data = json.loads(out_json.read_text())
    learns = [e for e in data["learns"] if e["method"] == "clis" and not e.get("unseen")]
    assert [e["task"] for e in learns] == [1, 2] and all(e["seconds"] > 0 for e in learns)
    (chosen,) = [e for e in data["learns"] if e.get("unseen")]  # the task CLIS chose for the unseen crop
    assert chosen["image"] in data["splits"]["0"]["unseen"] and 0 <= chosen["chosen"] <= 2
    clis_unseen = float(rows["CLIS (ours)"][2].split()[0])  # the one unseen crop's Dice, kept with its task choice
    assert chosen["dice"] == pytest.approx(clis_unseen, abs=6e-4) and isinstance(chosen["unfamiliar"], bool)
    assert "CLIS on the unseen images: a learned task segmented" in out
    for e in learns:  # a rollback says why (the LearnRejected message); a kept task its two Dice
        assert isinstance(e["rolled_back"], bool)
        assert ("rolled back" in e["reason"]) if e["rolled_back"] else (e["dice_after"] > 0 and
                                                                        isinstance(e["adapted"], bool))
    assert not [e for e in data["learns"] if e["method"] == "none"]
    split = data["splits"]["0"]
    assert len(split["learned"]) == 2 and len(split["unseen"]) == 1
    assert set(split["learned"]) | set(split["unseen"]) == {"crop0", "crop1", "crop2"}
    # the run merges with itself as another part would: same numbers, the learns kept
    assert main(["bench", "continual", "--merge", str(out_json)]) == 0
    merged = capsys.readouterr().out
    assert "Domain shift on new_lab" in merged and "| new_lab | CLIS (ours) | 2, " in merged


def test_the_unseen_images_of_a_sequence_are_never_learned_ones():
    from napari_clis.evaluation.benchmarks import _draw_domain

    draws = set()
    for q in range(40):
        learned, unseen = _draw_domain(13, q, 8)
        assert len(learned) == 8 and len(unseen) == 5 and not set(learned) & set(unseen)
        assert sorted(learned + unseen) == list(range(13))
        assert (learned, unseen) == _draw_domain(13, q, 8)  # fixed by the sequence's seed
        draws.add(tuple(learned))
        few = _draw_domain(100, q, 8, unseen=10)[1]
        assert len(few) == 10 and not set(few) & set(_draw_domain(100, q, 8, unseen=10)[0])
    assert len(draws) == 40
    with pytest.raises(SystemExit, match="needs more images than --tasks"):
        _draw_domain(8, 0, 8)


def test_the_domain_protocol_names_what_is_wrong_with_its_folder_or_methods(tmp_path):
    root = _folder(tmp_path)
    run = ["bench", "continual", "--data", str(root), "--sequences", "1", "--tasks", "2"]
    with pytest.raises(SystemExit, match="belong to the domain-shift protocol"):
        main(run + ["--methods", "clis,rf"])
    with pytest.raises(SystemExit, match="run it with clis"):
        main(run + ["--domain", "new_lab", "--methods", "none,rf"])
    with pytest.raises(SystemExit, match="hold nuclei"):
        main(run + ["--domain", "new_lab", "--model", "skin-lesion"])
    (root / "new_lab" / "masks" / "crop2.png").unlink()
    with pytest.raises(ValueError, match="no partner: crop2"):
        main(run + ["--domain", "new_lab", "--methods", "none"])
    imsave(root / "new_lab" / "masks" / "crop2.png", np.zeros((64, 128), np.uint16), check_contrast=False)
    with pytest.raises(ValueError, match="the mask of crop2.png is 128x64 px, the image 128x128"):
        main(run + ["--domain", "new_lab", "--methods", "none"])


@pytest.mark.skipif(not (DATA.parent.parent.parent / "shared" / "data" / "he_nuclei").is_dir(),
                    reason="../shared/data/he_nuclei is not here")
def test_the_he_folder_splits_into_eight_learned_and_five_unseen_colour_tiles():
    from napari_clis.evaluation.benchmarks import _domain_folder

    pool = _domain_folder(DATA.parent.parent.parent / "shared" / "data", "he_nuclei")
    assert len(pool) == 13 and all(s.image.shape == (1000, 1000, 3) and s.mask.any() for s in pool)
