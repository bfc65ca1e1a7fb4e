"""Model files are trusted only when sound: PyTorch's floor, every tensor finite, every metadata field typed and in
range, gate numbers and sizes bounded before anything is built, a diverged model never written, saves through a
symbolic link. The forged files are the shipped nuclei model with one thing changed, written with torch.save."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import napari_clis
from napari_clis import ClisSession
from napari_clis.checkpoint import (
    MIN_TORCH,
    CheckpointError,
    check_torch_version,
    load_model,
    save_model,
    shipped_model_path,
)
from napari_clis.cli import main

from .conftest import DATA

ROOT = Path(__file__).resolve().parents[1]


def _payload() -> dict:
    return torch.load(shipped_model_path("nuclei"), map_location="cpu", weights_only=True)


def _forge(tmp_path: Path, change, name: str = "forged.pt") -> Path:
    """The nuclei model with ``change(payload)`` applied, written as a file of its own (no check on the way)."""
    payload = _payload()
    change(payload)
    path = tmp_path / name
    torch.save(payload, path)
    return path


def _refused(path: Path, *words: str) -> str:
    """Loading ``path`` (both ways a user does) raises a one-line CheckpointError naming the file and ``words``."""
    for load in (load_model, lambda p: ClisSession.from_checkpoint(p, device="cpu")):
        with pytest.raises(CheckpointError) as err:
            load(path)
        message = str(err.value)
        assert str(path) in message and "\n" not in message and len(message) < 600, message
        for word in words:
            assert word in message, message
    return message


# -- PyTorch's floor ------------------------------------------------------------------------------------------------

def test_a_pytorch_older_than_2_6_is_refused_naming_its_version_and_why(monkeypatch):
    assert MIN_TORCH == (2, 6)
    for version in ("2.6.0", "2.10.1+cpu", "2.13.0", "3.0.0"):
        check_torch_version(version)  # 2.10 is newer than 2.6, not older (compared as numbers)
    for version in ("2.5.1+cu121", "2.2.0", "1.13.1", "unknown"):
        with pytest.raises(CheckpointError, match=re.escape(version)):
            check_torch_version(version)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(CheckpointError) as err:
        load_model(shipped_model_path("nuclei"))
    message = str(err.value)
    assert "2.5.1" in message and "2.6" in message and "run its own code" in message and "CVE-2025-32434" in message


def test_the_package_setup_and_readme_ask_for_the_same_pytorch_floor():
    floor = ".".join(map(str, MIN_TORCH))
    assert f'"torch>={floor},<3"' in (ROOT / "pyproject.toml").read_text()
    assert f"torch>={floor},<3" in (ROOT / "scripts" / "setup.sh").read_text()
    assert f"PyTorch {floor}" in (ROOT / "README.md").read_text()


# -- tensors --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_model_file_with_one_non_finite_weight_is_refused_naming_the_weight(tmp_path, bad, capsys):
    def one_bad_weight(p):
        p["state_dict"]["B2.conv1.conv.weight"][0, 0, 1, 1] = bad

    path = _forge(tmp_path, one_bad_weight)
    _refused(path, "'B2.conv1.conv.weight'", "NaN or infinite")
    image = DATA / "dsb2018" / "images"
    assert main(["segment", str(image), "--model", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "B2.conv1.conv.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["a list", "a number", "a name that is not text"])
def test_a_weight_that_is_not_a_tensor_is_refused_naming_it(tmp_path, case):
    def change(p):
        if case == "a name that is not text":
            p["state_dict"][7] = torch.zeros(1)
        else:
            p["state_dict"]["A1.conv1.conv.weight"] = [1.0] if case == "a list" else 1.0

    _refused(_forge(tmp_path, change), "not text" if case == "a name that is not text" else "'A1.conv1.conv.weight'")


def test_a_forged_gate_number_is_refused_at_once_without_counting_up_to_it(tmp_path):
    """One key ``...gates.logits.50000000`` made the reader add fifty million tasks before it looked further."""
    path = _forge(tmp_path, lambda p: p["state_dict"].__setitem__("A1.conv1.gates.logits.50000000",
                                                                  torch.zeros(16)))
    child = """
        import sys, time
        from napari_clis.checkpoint import CheckpointError, load_model
        t0 = time.perf_counter()
        try:
            load_model(sys.argv[1])
        except CheckpointError as e:
            print(f"{time.perf_counter() - t0:.3f}", e)
    """
    env = {**os.environ, "PYTHONPATH": str(Path(napari_clis.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(child), str(path)], env=env, capture_output=True,
                             text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a model file with one forged gate number ran for minutes")
    seconds, _, message = out.stdout.partition(" ")
    assert out.returncode == 0 and message, out.stderr[-3000:]
    assert float(seconds) < 5, seconds
    assert "'A1.conv1.gates.logits.50000000'" in message and "tasks 0 to 0" in message, message


def test_gates_numbered_apart_from_the_other_layers_are_refused(tmp_path):
    def change(p):  # a second task in one layer only
        p["state_dict"]["B3.conv2.gates.logits.1"] = torch.zeros(16)

    _refused(_forge(tmp_path, change), "'B3.conv2.gates.logits.1'")
    _refused(_forge(tmp_path, lambda p: p["state_dict"].pop("A1.conv1.conv.weight"), "missing.pt"),
             "'A1.conv1.conv.weight'")


# -- sizes, before anything is allocated -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("width", 10**6), ("width", 0), ("width", "16"), ("width", True),
                                         ("n_classes", 10**7), ("n_classes", 1), ("in_channels", 1),
                                         ("bottleneck_dilation", -2), ("dropout", 1.5), ("dropout", math.nan)])
def test_network_sizes_out_of_range_are_refused_before_the_network_is_built(tmp_path, monkeypatch, name, value):
    def built(*_a, **_k):
        raise AssertionError("the network was built from a configuration out of range")

    path = _forge(tmp_path, lambda p: p["config"].__setitem__(name, value))
    import napari_clis.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "ClisNet", built)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert f"'{name}'" in str(err.value) and repr(value)[:20] in str(err.value), str(err.value)


# -- metadata -------------------------------------------------------------------------------------------------------

def _record(**changes) -> dict:
    record = {"task": 1, "parent": 0, "fingerprint": [0.1] * 128, "image_shape": [64, 64], "clicks": [[3, 4, 1]],
              "kernels_on": {"A1.conv1": 10}, "kernels_new": 2, "dice_before": 0.5, "dice_after": 0.6,
              "seconds": 1.5, "created": "2026-01-01T00:00:00"}
    return {**record, **changes}


def _with_task(p, record):
    """A model with a second task (its gates) and ``record`` as its learned task."""
    for key in [k for k in p["state_dict"] if k.endswith(".gates.logits.0")]:
        p["state_dict"][key[:-1] + "1"] = p["state_dict"][key].clone()
    p["metadata"]["learned_tasks"] = [record]


METADATA_CASES = {
    "a NaN decision prior": (lambda m: m.update(decision={"class_log_prior": [math.nan, 0.0]}), "decision"),
    "a decision prior of one class": (lambda m: m.update(decision={"class_log_prior": [0.0]}), "decision"),
    "a decision prior as text": (lambda m: m.update(decision={"class_log_prior": "0, 0"}), "decision"),
    "a decision threshold of 2": (lambda m: m.update(decision={"threshold": 2.0}), "threshold"),
    "a negative working_long_side": (lambda m: m.update(working_long_side=-5), "working_long_side"),
    "a working_long_side as text": (lambda m: m.update(working_long_side="128"), "working_long_side"),
    "a huge working_long_side": (lambda m: m.update(working_long_side=10**9), "working_long_side"),
    "flips as text": (lambda m: m.update(test_time_flips="yes"), "test_time_flips"),
    "one object as a number": (lambda m: m.update(single_object=2), "single_object"),
    "class names as text": (lambda m: m.update(class_names="nucleus"), "class_names"),
    "a name as a number": (lambda m: m.update(name=7), "name"),
    "a zero IBP alpha": (lambda m: m.update(ibp_alpha_per_kernel=0.0), "ibp_alpha_per_kernel"),
    "learned tasks as text": (lambda m: m.update(learned_tasks="task 1"), "learned_tasks"),
    "a learned task missing its fields": (lambda m: m.update(learned_tasks=[{"task": 1}]), "learned_tasks"),
    "a learned task with an unknown field": (lambda m: m.update(learned_tasks=[_record(colour="red")]), "colour"),
    "remembered images as pairs of numbers": (lambda m: m.update(remembered_images=[[1, 2]]), "remembered_images"),
    "a remembered image of a task the model lacks": (lambda m: m.update(remembered_images=[[[0.1] * 128, 3]]),
                                                     "remembered_images"),
    "a negative smoothness": (lambda m: m.update(interaction_settings={"smoothness": -1.0}), "smoothness"),
    "an unknown click setting": (lambda m: m.update(interaction_settings={"speed": 1.0}), "speed"),
    "click settings as a list": (lambda m: m.update(interaction_settings=[1.0]), "interaction_settings"),
    "a training step as text": (lambda m: m.update(training={"step": "10"}), "step"),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_metadata_out_of_type_or_range_is_refused_naming_the_field(tmp_path, case):
    change, field = METADATA_CASES[case]
    _refused(_forge(tmp_path, lambda p: change(p["metadata"])), f"'{field}'")


@pytest.mark.parametrize("field, value", [("task", 5), ("task", 0), ("parent", -1), ("fingerprint", [math.nan]),
                                          ("fingerprint", "abc"), ("image_shape", "64x64"), ("clicks", [[1.5, 2, 1]]),
                                          ("kernels_on", {"A1.conv1": "ten"}), ("kernels_new", None),
                                          ("dice_after", math.nan), ("seconds", -1.0), ("created", 2026),
                                          ("corrected_after", 1.5), ("agreement_after", "most")])
def test_a_learned_task_record_out_of_type_or_range_is_refused_naming_the_field(tmp_path, field, value):
    good = _forge(tmp_path, lambda p: _with_task(p, _record()), "good.pt")
    s = ClisSession.from_checkpoint(good, device="cpu")  # the record as a session writes it loads
    assert len(s.tasks) == 1 and s.net.n_tasks == 2
    path = _forge(tmp_path, lambda p: _with_task(p, _record(**{field: value})))
    _refused(path, "'learned_tasks'", f"'{field}'")


def test_the_metadata_must_be_a_dictionary_and_annotations_name_tasks_the_model_has(tmp_path):
    _refused(_forge(tmp_path, lambda p: p.__setitem__("metadata", ["nuclei"])), "'metadata'")
    _refused(_forge(tmp_path, lambda p: p.__setitem__("annotations", {"abc": torch.zeros(4, 4, dtype=torch.int8)}),
                    "a.pt"), "'annotations'", "'abc'")
    _refused(_forge(tmp_path, lambda p: p.__setitem__("annotations", {"0": "painted"}), "b.pt"), "'annotations'")


def test_the_shipped_models_and_a_saved_session_pass_every_check(tmp_path, nuclei_he):
    for name in ("nuclei", "skin-lesion"):
        load_model(shipped_model_path(name))
    s = ClisSession.from_pretrained("skin-lesion", device="cpu", n_samples=1)
    s.smoothness = 2.0
    s.save(tmp_path / "session.pt")
    back = ClisSession.from_checkpoint(tmp_path / "session.pt", device="cpu")
    assert back.smoothness == 2.0 and back.class_log_prior == s.class_log_prior


# -- writing: a diverged model is never written ------------------------------------------------------------------------

def test_a_model_with_nan_weights_is_not_saved_and_the_file_there_stays(tmp_path):
    net, metadata, _ = load_model(shipped_model_path("nuclei"))
    path = tmp_path / "model.pt"
    save_model(path, net, metadata)
    before = path.read_bytes()
    with torch.no_grad():
        net.B1.conv2.conv.weight[0, 0, 0, 0] = math.nan
    for save in (lambda: save_model(path, net, metadata),
                 lambda: ClisSession(net, metadata, device="cpu").save(path)):
        with pytest.raises(CheckpointError) as err:
            save()
        message = str(err.value)
        assert "'B1.conv2.conv.weight'" in message and "Not saving" in message and "diverged" in message, message
        assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pt"]
    with torch.no_grad():
        net.B1.conv2.conv.weight[0, 0, 0, 0] = 0.0
    with pytest.raises(CheckpointError, match="'working_long_side'"):
        save_model(path, net, {**metadata, "working_long_side": -1})
    assert path.read_bytes() == before


def _tiny_lesion_data(tmp_path: Path) -> Path:
    """A data folder with the two real dermoscopy images of tests/data as isic2017's train and val parts."""
    root = tmp_path / "data"
    for part in ("train", "val"):
        for kind in ("images", "masks"):
            shutil.copytree(DATA / "isic2017" / kind, root / "isic2017" / part / kind)
    return root


def test_a_diverged_pretraining_writes_no_model_and_says_so(tmp_path, capsys):
    from napari_clis.training import PretrainSettings, TrainingDiverged, pretrain

    root = _tiny_lesion_data(tmp_path)
    output = tmp_path / "lesion.pt"
    output.write_bytes(b"the model there before")
    settings = PretrainSettings(model="skin-lesion", steps=6, batch=2, crop=None, working_long_side=64, width=4,
                                lr=1e12, gate_lr=1e12, eval_every=1000, precise_bn_batches=1, monitor_images=1)
    with pytest.raises(TrainingDiverged) as err:
        pretrain(settings, output, data_root=root, log=lambda _: None)
    message = str(err.value)
    assert "diverged" in message and str(output) in message and "--lr" in message, message
    assert output.read_bytes() == b"the model there before"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # on the command line: a message and exit code 1, and still nothing written
    code = main(["pretrain", "skin-lesion", "--steps", "6", "--lr", "1e12", "--width", "4", "--working-long-side",
                 "64", "--bn-batches", "1", "--data", str(root), "--output", str(output), "--restart"])
    assert code == 1 and "diverged" in capsys.readouterr().err
    assert output.read_bytes() == b"the model there before"


# -- writing through a symbolic link -----------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_saving_over_a_symbolic_link_writes_its_target_and_keeps_the_link(tmp_path):
    net, metadata, _ = load_model(shipped_model_path("nuclei"))
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "nuclei-v2.pt"
    save_model(target, net, {**metadata, "name": "first"})
    link = tmp_path / "current.pt"
    link.symlink_to(Path("store") / "nuclei-v2.pt")  # relative, as `ln -s` makes them
    s = ClisSession.from_checkpoint(link, device="cpu")
    s.metadata["name"] = "second"
    s.save(link)
    assert link.is_symlink() and os.readlink(link) == str(Path("store") / "nuclei-v2.pt")
    assert load_model(target)[1]["name"] == "second"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["nuclei-v2.pt"]  # no temporary file left
    # a link to a file not there yet: the file is made where the link points
    dangling = tmp_path / "next.pt"
    dangling.symlink_to(tmp_path / "store" / "next.pt")
    save_model(dangling, net, metadata)
    assert dangling.is_symlink() and load_model(tmp_path / "store" / "next.pt")[1]["name"] == "nuclei"
    # a loop of links is refused, saying so
    loop_a, loop_b = tmp_path / "a.pt", tmp_path / "b.pt"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    with pytest.raises(CheckpointError, match="loop"):
        save_model(loop_a, net, metadata)
    assert loop_a.is_symlink() and loop_b.is_symlink()
