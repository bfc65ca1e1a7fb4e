"""The napari-clis command line: pretraining end to end on a tiny data folder, and the speed benchmark."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_clis import ClisSession
from napari_clis.cli import main

from .conftest import DATA


def _isic_folder(tmp_path, splits=("train", "val", "test"), copies: int = 1):
    """A tiny data folder: the two isic2017 test images of tests/data in each of ``splits`` (``copies`` times each,
    under other names)."""
    root = tmp_path / "data"
    for split in splits:
        for kind, ext in (("images", "jpg"), ("masks", "png")):
            (root / "isic2017" / split / kind).mkdir(parents=True)
            for n in range(2 * copies):
                shutil.copy(DATA / "isic2017" / kind / f"{n % 2 + 1}.{ext}",
                            root / "isic2017" / split / kind / f"{n + 1}.{ext}")
    return root


def test_pretrain_writes_a_loadable_model_and_resumes_from_its_checkpoint(tmp_path):
    root = _isic_folder(tmp_path)
    out = tmp_path / "lesion.pt"
    log = tmp_path / "log.txt"
    assert main(["pretrain", "skin-lesion", "--data", str(root), "--steps", "2", "--output", str(out),
                 "--log", str(log), "--threads", "1", "--bn-batches", "2"]) == 0
    s = ClisSession.from_checkpoint(out, device="cpu")
    assert s.metadata["training"]["step"] == 2 and s.working_long_side == 128
    assert "familiarity" not in s.metadata and "too few training images (2)" in log.read_text()
    r = s.segment(np.zeros((50, 70, 3), np.uint8))
    assert r.labels.shape == (50, 70)
    # a longer run picks up the checkpoint instead of starting again
    assert main(["pretrain", "skin-lesion", "--data", str(root), "--steps", "3", "--output", str(out),
                 "--log", str(log), "--threads", "1", "--bn-batches", "2"]) == 0
    assert "resumed" in log.read_text()
    assert ClisSession.from_checkpoint(out).metadata["training"]["step"] == 3


def test_pretrain_records_which_images_the_model_knows(tmp_path):
    root = _isic_folder(tmp_path, copies=4)
    out = tmp_path / "lesion.pt"
    assert main(["pretrain", "skin-lesion", "--data", str(root), "--steps", "1", "--output", str(out), "--width", "4",
                 "--threads", "1", "--bn-batches", "1"]) == 0
    s = ClisSession.from_checkpoint(out, device="cpu")
    recorded = s.metadata["familiarity"]  # the training images' first-layer statistics, for segment()'s signal
    assert len(recorded["reference"]) == 8 == s.metadata["training"]["n_train_images"]
    assert recorded["source"] == "skin-lesion pretraining images (8)"
    assert s.segment(np.full((50, 70, 3), 255, np.uint8)).familiarity.unfamiliar is not None


def test_a_pretrained_candidate_is_measured_by_the_quality_benchmark_as_the_shipped_models_are(tmp_path):
    root = _isic_folder(tmp_path)
    out = tmp_path / "wide-view.pt"
    assert main(["pretrain", "skin-lesion", "--data", str(root), "--steps", "1", "--output", str(out), "--width", "4",
                 "--bottleneck-dilation", "2", "--dice-per-image", "--threads", "1", "--bn-batches", "1"]) == 0
    candidate = ClisSession.from_checkpoint(out, device="cpu")
    assert (candidate.net.config.width, candidate.net.config.bottleneck_dilation) == (4, 2)
    assert candidate.metadata["training"]["settings"]["dice_per_image"] is True
    assert main(["bench", "quality", "--model", "skin-lesion", "--checkpoint", str(out), "--data", str(root),
                 "--samples", "2", "--json", str(tmp_path / "q.json")]) == 0
    measured = json.loads((tmp_path / "q.json").read_text())["skin-lesion"]
    assert measured["label"] == "skin-lesion (wide-view.pt)"  # the table names the file measured
    assert measured["n"] == 2 and 0 <= measured["dice"] <= 1 and 0 <= measured["otsu_dice"] <= 1
    with pytest.raises(SystemExit, match="--model"):
        main(["bench", "quality", "--checkpoint", str(out), "--data", str(root)])


def test_pretrain_and_bench_without_the_data_folder_name_it_in_one_line(tmp_path, capsys):
    assert main(["pretrain", "skin-lesion", "--data", str(tmp_path), "--steps", "1",
                 "--output", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "isic2017" in err and "--data" in err and "Traceback" not in err and not (tmp_path / "m.pt").exists()
    assert main(["bench", "quality", "--model", "nuclei", "--data", str(tmp_path)]) == 2
    assert "dsb2018" in capsys.readouterr().err


def test_speed_benchmark_prints_a_table_with_the_ratio_to_one_forward_pass():
    out = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "speed", "--sizes", "64",
                          "--repeats", "1", "--samples", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| 64x64 RGB |" in out.stdout and "ratio to forward" in out.stdout
    assert "`segment()` with a learned task (s)" in out.stdout


def test_the_speed_benchmarks_learned_task_makes_segment_run_the_agreement_check(nuclei_fluo):
    from napari_clis.evaluation.benchmarks import _with_a_learned_task

    s = _with_a_learned_task("nuclei", 2)
    r = s.segment(nuclei_fluo[0])
    # task 1 is task 0's mask copied: checked, in full agreement, and used
    assert s.task == 1 and s.task_choice == {"nearest": 1, "known": False, "agreement": 1.0,
                                                "unfamiliar": False}
    np.testing.assert_array_equal(r.labels, s.segment(nuclei_fluo[0], task=0).labels)


def test_interactive_benchmark_compares_clis_with_both_peers_on_a_tiny_data_folder(tmp_path):
    root = _isic_folder(tmp_path, ("test",))
    out = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "interactive", "--model", "skin-lesion",
                          "--data", str(root), "--images", "1", "--max-clicks", "3", "--samples", "2",
                          "--json", str(tmp_path / "i.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for text in ("CLIS (ours)", "random walker", "pixel classifier", "| isic2017 | uncertain |",
                 "| isic2017 | click |", "NoC@85 ours / best peer"):
        assert text in out.stdout
    import json

    rows = json.loads((tmp_path / "i.json").read_text())["rows"]
    assert len(rows) == 6 and all(0 <= r["noc85"] <= 3 for r in rows)


def test_click_latency_benchmark_prints_the_ratio_to_segment():
    out = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "clicks", "--sizes", "96",
                          "--clicks", "3", "--samples", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| 96x96 |" in out.stdout and "median / segment()" in out.stdout


def test_learn_benchmark_times_the_start_up_apart_and_gives_a_row_per_adapt_mode(tmp_path):
    # an empty data folder: the image is the shipped skin sample, with or without ../shared
    out = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "learn", "--sizes", "64", "--steps", "1",
                          "--repeats", "1", "--adapt", "never,always", "--samples", "2", "--data", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "The process's first learn()" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 64x64 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["never", "always"]
    assert "(adapted)" not in rows[0]  # one step may not keep the adapted task: said why, else said adapted
    assert ("(adapted)" in rows[1]) != ("rolled back: " in rows[1]), rows[1]
    bad = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "learn", "--adapt", "sometimes"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "sometimes" in bad.stderr


def test_continual_benchmark_reports_every_method_and_the_mask_usage_figure(tmp_path):
    root = _isic_folder(tmp_path, ("train", "test"))
    figure = tmp_path / "usage.png"
    out = subprocess.run([sys.executable, "-m", "napari_clis.cli", "bench", "continual", "--model", "skin-lesion",
                          "--data", str(root), "--sequences", "1", "--tasks", "2", "--steps", "2", "--samples", "2",
                          "--packnet-retrain", "2", "--packnet-images", "2", "--figure", str(figure)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[2].strip(): line.split("|")[3:-1] for line in out.stdout.splitlines()
            if line.startswith("| isic2017 |") and line.count("|") == 9}  # the main table, not the paired one
    paired = [line for line in out.stdout.splitlines() if line.startswith("| isic2017 |") and line.count("|") == 5]
    assert len(paired) == 5  # CLIS minus each of the other five methods
    assert set(rows) == {"CLIS (ours)", "no update (pretrained)", "plain fine-tuning", "LwF", "EWC", "PackNet"}
    for name, cells in rows.items():
        assert 0.0 <= float(cells[0].split()[0]) <= 1.0, name
    for name in ("CLIS (ours)", "PackNet", "no update (pretrained)"):  # earlier tasks are kept exactly
        assert cells_backward(rows[name]) == (0.0, 0.0), name
    assert figure.stat().st_size > 10_000


def cells_backward(cells) -> tuple[float, float]:
    return float(cells[4].split()[0]), float(cells[5].split()[0])


def test_continual_parts_merge_into_one_table(tmp_path, capsys):
    def part(name, first, values, lr=5e-4, **more):
        r = {k: {"dice": list(values), "iou": list(values)} for k in ("basic", "forward", "backward")}
        args = {"part": "heldout", "tasks": 8, "steps": 20, "samples": 8, "baseline_lr": lr, "first_sequence": first,
                "sequences": len(values), **more}
        path = tmp_path / name
        path.write_text(json.dumps({"rows": [["isic2017", "clis", r]], "args": args}))
        return str(path)

    a, b = part("a.json", 0, [0.7, 0.8]), part("b.json", 2, [0.9])
    assert main(["bench", "continual", "--merge", a, b, "--json", str(tmp_path / "all.json")]) == 0
    out = capsys.readouterr().out
    assert "3 sequence(s) of 8 tasks" in out
    row = next(line for line in out.splitlines() if line.startswith("| isic2017 | CLIS (ours) |"))
    assert row.split("|")[5].strip() == f"{0.8:.3f} ({np.std([0.7, 0.8, 0.9]):.3f})"  # forward Dice over all 3
    assert "CLIS minus each method" not in out  # one method: nothing to pair
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["rows"][0][2]["forward"]["dice"] == [0.7, 0.8, 0.9]
    with pytest.raises(SystemExit, match=r"sequence 2 of CLIS \(ours\) on isic2017 is in both"):
        main(["bench", "continual", "--merge", b, part("c.json", 2, [0.5])])
    with pytest.raises(SystemExit, match="other settings"):
        main(["bench", "continual", "--merge", a, part("d.json", 5, [0.5], lr=2e-3)])
    # a part run before --locality calibrated over the whole image: it merges with -1, not with a reach of 0.2
    with pytest.raises(SystemExit, match="other settings"):
        main(["bench", "continual", "--merge", a, part("f.json", 5, [0.5], locality=0.2)])
    assert main(["bench", "continual", "--merge", a, part("g.json", 5, [0.5], locality=-1.0)]) == 0
    capsys.readouterr()
    two = json.loads(Path(a).read_text())
    none = {k: {"dice": [0.75, 0.7], "iou": [0.75, 0.7]} for k in ("basic", "forward", "backward")}
    two["rows"].append(["isic2017", "none", none])
    (tmp_path / "two.json").write_text(json.dumps(two))
    assert main(["bench", "continual", "--merge", str(tmp_path / "two.json")]) == 0
    pair = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| isic2017 | no update")][-1]
    assert pair.split("|")[3:5] == [" +0.0250 ", " 1 of 2 "]  # 0.7 - 0.75 and 0.8 - 0.7
    # a baseline run on fewer sequences than CLIS is paired with CLIS on the sequences both have
    three = json.loads(Path(part("h.json", 3, [0.6])).read_text())
    (tmp_path / "h.json").write_text(json.dumps(three))
    assert main(["bench", "continual", "--merge", str(tmp_path / "two.json"), str(tmp_path / "h.json")]) == 0
    out = capsys.readouterr().out
    assert "Sequences per method: isic2017 CLIS (ours) 3, isic2017 no update (pretrained) 2" in out
    pair = [line for line in out.splitlines() if line.startswith("| isic2017 | no update")][-1]
    assert pair.split("|")[3:5] == [" +0.0250 ", " 1 of 2 "]
    # CLIS rerun on the same sequences as a part holding only the other methods: they merge and pair
    others = json.loads((tmp_path / "two.json").read_text())
    others["rows"] = [row for row in others["rows"] if row[1] != "clis"]
    (tmp_path / "others.json").write_text(json.dumps(others))
    again = part("again.json", 0, [0.8, 0.6])
    assert main(["bench", "continual", "--merge", again, str(tmp_path / "others.json")]) == 0
    pair = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| isic2017 | no update")][-1]
    assert pair.split("|")[3:5] == [" -0.0250 ", " 1 of 2 "]  # 0.8 - 0.75 and 0.6 - 0.7
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(SystemExit, match="not the --json file"):
        main(["bench", "continual", "--merge", a, str(tmp_path / "e.json")])


def test_calibrate_chooses_the_decision_on_validation_images_and_records_it(tmp_path, capsys):
    import math

    root = _isic_folder(tmp_path)
    raw, out = tmp_path / "raw.pt", tmp_path / "calibrated.pt"
    assert main(["pretrain", "skin-lesion", "--data", str(root), "--steps", "1", "--output", str(raw), "--width", "4",
                 "--threads", "1", "--bn-batches", "1"]) == 0
    assert main(["calibrate", str(raw), "--output", str(out), "--data", str(root), "--single-object",
                 "--thresholds", "0.5,0.3", "--threads", "1"]) == 0
    before, after = ClisSession.from_checkpoint(raw, device="cpu"), ClisSession.from_checkpoint(out, device="cpu")
    decision = after.metadata["decision"]
    assert set(decision["dice_by_threshold"]) == {0.5, 0.3} and decision["n_images"] == 2
    best = max(decision["dice_by_threshold"].values())
    t = decision["threshold"]
    assert decision["dice_by_threshold"][t] == best
    assert np.allclose(after.class_log_prior, [math.log(t), math.log(1 - t)]) and before.class_log_prior is None
    assert after.learn_settings.class_log_prior == tuple(after.class_log_prior)  # learning follows the decision
    for name, value in before.net.state_dict().items():  # the network itself is not changed
        assert (after.net.state_dict()[name] == value).all(), name
    assert after.single_object and not before.single_object
    capsys.readouterr()
    with pytest.raises(SystemExit, match="calibrated already"):  # the shift is never applied twice
        main(["calibrate", str(out), "--output", str(tmp_path / "twice.pt"), "--data", str(root)])
    with pytest.raises(SystemExit, match="held-out"):
        main(["calibrate", str(raw), "--output", str(tmp_path / "x.pt"), "--data", str(root), "--part", "heldout"])
    with pytest.raises(SystemExit, match="between 0 and 1"):
        main(["calibrate", str(raw), "--output", str(tmp_path / "x.pt"), "--data", str(root), "--thresholds", "0,0.5"])
    assert not (tmp_path / "twice.pt").exists() and not (tmp_path / "x.pt").exists()
