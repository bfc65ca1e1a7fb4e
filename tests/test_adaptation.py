"""A task learned on a kind of image unlike the pretraining images gets its own BatchNorms and adapters: it learns
the new kind far better than free kernels alone, earlier tasks stay bit for bit as they were, model files keep
it, and the rollback rule judges a task by the user's corrections."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_clis import ClisSession
from napari_clis.checkpoint import CheckpointError, load_model, save_model
from napari_clis.continual import LearnSettings, learn_verdict
from napari_clis.metrics import dice

from .conftest import DATA, NUCLEI_FLUO


@pytest.fixture(scope="module")
def inverted():
    """Dark nuclei on a bright ground (an inverted fluorescence image): unlike the nuclei model's pretraining
    images. Its left and right halves, with their truth."""
    from skimage.io import imread

    image = 255 - imread(DATA / "dsb2018" / "images" / f"{NUCLEI_FLUO}.png")[..., 0]
    truth = imread(DATA / "dsb2018" / "masks" / f"{NUCLEI_FLUO}.png") > 0
    half = image.shape[1] // 2
    return (image[:, :half], truth[:, :half]), (image[:, half:], truth[:, half:])


def _learn_half(adapt: str, left):
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=0)
    s.learn_settings = dataclasses.replace(s.learn_settings, adapt=adapt)
    s.segment(left[0])
    s.annotate(left[1], 1)
    s.annotate(~left[1], 0)
    s.learn()
    return s


@pytest.fixture(scope="module")
def adapted(inverted):
    return _learn_half("auto", inverted[0])


def test_a_new_kind_of_image_is_learned_with_an_adaptation_that_reaches_the_rest_of_it(adapted, inverted):
    (left, _), (right, truth) = inverted
    s = adapted
    assert s.result is not None and s.net.adapted_tasks() == [1]  # the image was unlike the pretraining images
    before = dice(s.segment(right, task=0).labels > 0, truth)
    after = dice(s.segment(right, task=1).labels > 0, truth)
    plain = _learn_half("never", inverted[0])  # the paper's learning: free kernels and gates only
    assert plain.net.adapted_tasks() == []
    without = dice(plain.segment(right, task=1).labels > 0, truth)
    # measured: 0.78, 0.87, 0.90 (the model of 2026-12-07; the one before it, which knew fewer kinds of image, 0.70,
    # 0.79, 0.90)
    assert after > before + 0.1 and after > without + 0.015, (before, without, after)


def test_an_image_of_the_pretraining_kind_is_learned_without_one(nuclei_fluo):
    image, truth = nuclei_fluo
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=0)
    assert not s.segment(image).familiarity.unfamiliar
    s.annotate(truth > 0, 1)
    s.learn(steps=2)
    assert s.net.adapted_tasks() == [] and len(s.tasks) == 1
    s.learn_settings = dataclasses.replace(s.learn_settings, adapt="always")
    s.segment(image)
    s.learn(steps=2)
    assert s.net.adapted_tasks() == [2]
    s.learn_settings = dataclasses.replace(s.learn_settings, adapt="sometimes")
    with pytest.raises(ValueError, match="adapt must be 'auto', 'always' or 'never'"):
        s.learn(steps=1)


def test_earlier_tasks_stay_bit_for_bit_and_the_statistics_follow_the_lineage(adapted, inverted, tmp_path):
    (left, truth), _ = inverted
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=0)
    s.net = adapted.net  # (a copy is learned from: the fixture's network is not changed)
    probe = torch.from_numpy(np.random.default_rng(0).random((1, 3, 64, 64), np.float32))
    with torch.no_grad():
        outputs = [s.net(probe, t)[0].clone() for t in range(s.net.n_tasks)]
    s.tasks = list(adapted.tasks)
    s.segment(left)  # the learned image: task 1 segments it, and a task learned from it descends from task 1
    assert s.task == 1
    s.annotate(truth, 1)
    s.learn(steps=3)
    assert s.net.adapted_tasks() == [1, 2] and s.tasks[-1].parent == 1
    assert 0.9 <= s.tasks[-1].agreement_after <= 1.0  # what the rule judged is in the task's record
    with torch.no_grad():
        for t, before in enumerate(outputs):
            assert torch.equal(s.net(probe, t)[0], before), f"task {t} changed"
    first = s.net.A1.conv1.task_norms["1"]
    assert int(first.num_batches_tracked) == 1 and int(s.net.A1.conv1.task_norms["2"].num_batches_tracked) == 2
    # the model file keeps every task's own parts; read back, every task gives the same output
    path = tmp_path / "adapted.pt"
    s.save(path)
    net, _, _ = load_model(path)
    assert net.adapted_tasks() == [1, 2]
    with torch.no_grad():
        for t in range(net.n_tasks):
            assert torch.equal(net(probe, t)[0], s.net(probe, t)[0])
    assert ClisSession.load(path).tasks == s.tasks  # the records too, with what the rule judged


def test_a_model_file_with_the_parts_of_a_task_it_does_not_have_is_refused(adapted, tmp_path):
    net, meta = adapted.net, dict(adapted.metadata)
    path = tmp_path / "ok.pt"
    save_model(path, net, meta)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["A1.conv1.adapters.7.weight"] = payload["state_dict"]["A1.conv1.adapters.1.weight"]
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match=r"adapters\.7' belongs to no learned task of the model"):
        load_model(bad)


def test_the_rollback_rule_names_why():
    s = LearnSettings()
    ok = {"dice_before": 0.5, "dice_after": 0.4, "corrected_before": 0.0, "corrected_after": 0.6,
          "agreement_after": 0.95}
    assert learn_verdict(ok, s) is None  # a lower Dice against the accepted labels is no reason by itself
    assert "none of the objects" in learn_verdict({**ok, "dice_after": 0.0}, s)
    assert "fewer of your corrections" in learn_verdict({**ok, "corrected_after": 0.0, "corrected_before": 0.1}, s)
    assert "agrees with 80% of the pixels you did not correct" in learn_verdict({**ok, "agreement_after": 0.8}, s)
    # nothing corrected: judged by what was accepted only
    assert learn_verdict({**ok, "corrected_before": None, "corrected_after": None}, s) is None


def test_the_widget_says_when_a_learned_task_has_its_own_normalisation(make_napari_viewer, inverted, monkeypatch,
                                                                      tmp_path):
    import napari_clis

    monkeypatch.setenv("NAPARI_CLIS_MODELS", str(tmp_path / "models"))
    (left, truth), _ = inverted
    viewer, widget = napari_clis.annotate(left, model="nuclei", viewer=make_napari_viewer())
    widget.run()
    widget.wait()
    seg = viewer.layers["segmentation"]
    for label in (1, 0):  # the user paints the truth where the segmentation is wrong, as a person paints
        where = np.nonzero(((seg.data > 0) != truth) & (truth == label))
        with seg.block_history():
            seg.data_setitem(where, label)
    widget.session.learn_settings.steps = 3
    widget.learn()
    widget.wait()
    assert widget.session.net.adapted_tasks() == [1], widget.status
    assert "Learned task 1" in widget.status and "its own normalisation" in widget.status
    assert len(widget.status) < 200  # short: the whole message pushed the panels below a 720 px window
    said = widget.controls.status.tooltip  # (and the notification) say the adaptation and what the rule judged
    assert "the task has its own normalisation and adapters" in said
    record = widget.session.tasks[0]
    before = f" (the model before: {record.corrected_before:.0%})" if round(100 * record.corrected_before) else \
        " (the model before: none of them)"
    assert f"it gets {record.corrected_after:.0%} of the pixels you corrected right{before} and keeps " \
        f"{record.agreement_after:.0%} of what you left" in said
