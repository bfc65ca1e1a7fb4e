"""The whole journey of a new user, in a real napari window, through the widgets and layers only (under Xvfb).

Open an image, segment, inspect the uncertainty, click through the suggestions (and paint the rest) until the
segmentation is right, learn, open the next image (better from the start), save the labels layer, save the model,
quit, restart, load the model, continue. The two images are the two halves of a real H&E slide from tests/data,
saved as files and opened as a user opens theirs.

With ``CLIS_JOURNEY_SHOTS=docs/journey`` set, a screenshot of the window is written at every step
(``docs/journey_01_segmented.png`` ...); the user guide shows them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from skimage.io import imsave

from napari_clis.evaluation.simulated_user import next_click
from napari_clis.metrics import dice, iou

SHOTS = os.environ.get("CLIS_JOURNEY_SHOTS")


class Journey:
    def __init__(self, qtbot):
        self.qtbot = qtbot
        self.n = 0

    def shot(self, viewer, step: str) -> None:
        self.n += 1
        if SHOTS:
            viewer.reset_view()
            self.qtbot.wait(300)
            viewer.screenshot(f"{SHOTS}_{self.n:02d}_{step}.png", canvas_only=False)

    def wait(self, widget, timeout=180_000) -> None:
        self.qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _open_window(make_napari_viewer):
    viewer = make_napari_viewer(show=bool(SHOTS))
    if SHOTS:
        viewer.window.resize(1500, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    return viewer, widget


def _click(widget, clicks, y, x, label) -> None:
    widget.set_click_class(label)  # what Shift-B / Shift-F do
    clicks.selected_data = set()
    clicks.add([y, x])
    widget.wait()  # the click propagates in a worker


@pytest.mark.parametrize("steps", [20])
def test_a_new_user_segments_corrects_learns_saves_and_comes_back(make_napari_viewer, qtbot, nuclei_he, tmp_path,
                                                                   monkeypatch, steps):
    from napari_clis import ClisSession

    monkeypatch.setenv("NAPARI_CLIS_MODELS", str(tmp_path / "models"))
    image, truth = nuclei_he
    w = image.shape[1] // 2
    parts = [(image[:, :w], truth[:, :w]), (image[:, w:], truth[:, w:])]
    files = []
    for k, (img, _) in enumerate(parts, 1):
        files.append(tmp_path / f"slide_part{k}.png")
        imsave(files[-1], img, check_contrast=False)
    pretrained_on_next = dice(ClisSession.from_pretrained("nuclei", device="cpu").segment(parts[1][0]).labels > 0,
                              parts[1][1])
    j = Journey(qtbot)

    # open the first image and segment it
    viewer, widget = _open_window(make_napari_viewer)
    first = viewer.open(str(files[0]))[0]
    widget.set_image(first)
    widget.controls.run_button.native.click()
    j.wait(widget)
    seg, unc = viewer.layers["segmentation"], viewer.layers["uncertainty"]
    t1 = parts[0][1]
    start = iou(seg.data, t1)
    j.shot(viewer, "segmented")

    # inspect the uncertainty: it is brighter where the segmentation is wrong
    seg.visible = False
    wrong = (seg.data > 0) != t1
    assert unc.data[wrong].mean() > 2 * unc.data[~wrong].mean()
    j.shot(viewer, "uncertainty")
    seg.visible, unc.visible = True, False

    # click through the suggestions until the segmentation is right
    clicks, sugg = viewer.layers["clicks"], viewer.layers["suggestions"]
    for _ in range(12):
        if iou(seg.data, t1) >= 0.9:
            break
        pts = np.round(sugg.data).astype(int)
        wrong_sugg = [(y, x) for y, x in pts if (seg.data[y, x] > 0) != t1[y, x]]
        if wrong_sugg:  # the user checks the suggested places and corrects the one that is wrong
            y, x = wrong_sugg[0]
            _click(widget, clicks, y, x, int(t1[y, x]))
        else:  # all suggestions are right: the user corrects the largest error they see
            _click(widget, clicks, *next_click(seg.data, t1.astype(np.int32)))
    clicked = iou(seg.data, t1)
    assert clicked > start + 0.01 and len(clicks.data) >= 1
    j.shot(viewer, "clicked")
    # what clicks could not fix the user paints with the brush (one stroke per class, undoable)
    for _ in range(4):  # each stroke re-propagates the rest, so the user looks again and touches up
        for label in (1, 0):
            where = np.nonzero(((seg.data > 0) != t1) & (t1 == label))
            with seg.block_history():  # as a brush stroke does: one undo step, announced when it is done
                seg.data_setitem(where, label)
    corrected = iou(seg.data, t1)
    print(f"journey: painted to IoU {corrected:.3f}")
    assert corrected > 0.99
    j.shot(viewer, "painted")

    # learn from it
    widget.session.learn_settings.steps = steps
    widget.controls.learn_button.native.click()
    j.wait(widget)
    assert len(widget.session.tasks) == 1, widget.status
    assert widget.session.annotations[1].any()  # the painted edits were learned and are kept with the task
    assert widget.controls.task_plot.after == [widget.session.tasks[0].dice_after]
    j.shot(viewer, "learned")

    # the next image starts better than the pretrained model would
    second = viewer.open(str(files[1]))[0]
    widget.set_image(second)
    widget.controls.run_button.native.click()
    j.wait(widget)
    t2 = parts[1][1]
    start_next = dice(seg.data > 0, t2)
    assert widget.session.task == 1
    assert start_next > pretrained_on_next, (start_next, pretrained_on_next)
    print(f"journey: IoU {start:.3f} -> {clicked:.3f} after {len(clicks.data)} clicks; "
          f"next image Dice {pretrained_on_next:.3f} (pretrained) -> {start_next:.3f}")
    qtbot.waitUntil(lambda: viewer.layers.index(seg) > viewer.layers.index(second), timeout=5_000)
    j.shot(viewer, "next_image")
    _click(widget, clicks, *next_click(seg.data, t2.astype(np.int32)))
    labels_before_quit = seg.data.copy()

    # save the labels layer (File > Save Selected Layers) and the model (default: the models folder)
    labels_file = tmp_path / "part2_labels.tif"
    viewer.layers.selection.active = seg
    viewer.layers.save(str(labels_file), selected=True, plugin="napari-clis")
    widget.save_model()
    saved = list((tmp_path / "models").glob("*.pt"))
    assert len(saved) == 1
    j.shot(viewer, "saved")

    # quit, restart, load the model and continue
    viewer.close()
    viewer, widget = _open_window(make_napari_viewer)
    assert str(saved[0]) in widget.controls.model.choices
    widget.set_model(saved[0])
    labels = viewer.open(str(labels_file), plugin="napari", layer_type="labels")[0]
    np.testing.assert_array_equal(np.asarray(labels.data), labels_before_quit)
    viewer.layers.remove(labels)
    again = viewer.open(str(files[1]))[0]
    widget.set_image(again)
    widget.controls.run_button.native.click()
    j.wait(widget)
    seg = viewer.layers["segmentation"]
    assert len(widget.session.tasks) == 1 and widget.session.task == 1
    assert dice(seg.data > 0, t2) == pytest.approx(start_next, abs=1e-9)
    _click(widget, viewer.layers["clicks"], *next_click(seg.data, t2.astype(np.int32)))
    assert iou(seg.data, t2) >= iou(widget.session.result.labels, t2) - 0.01
    j.shot(viewer, "continued")
