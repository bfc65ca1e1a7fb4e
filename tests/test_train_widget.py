"""The "Train a model (CLIS)" dock in a real napari viewer (run under Xvfb): trains on an image and labels layer
(the real dsb2018 image of tests/data) off the GUI thread, saves the model where Segment (CLIS) lists it, cancels
without leaving anything, and says what is wrong as a notification."""

from pathlib import Path

import numpy as np
import pytest

from napari_clis.checkpoint import models_dir, saved_models
from napari_clis.training import TRAIN_STEPS


@pytest.fixture
def said(monkeypatch):
    """The notifications shown: ("info" | "error", text)."""
    import napari.utils.notifications as notifications

    out = []
    monkeypatch.setattr(notifications, "show_info", lambda text: out.append(("info", text)))
    monkeypatch.setattr(notifications, "show_error", lambda text: out.append(("error", text)))
    return out


@pytest.fixture
def viewer(make_napari_viewer, nuclei_fluo):
    image, mask = nuclei_fluo
    from skimage.measure import label

    viewer = make_napari_viewer()
    viewer.add_image(image, name="fluo")
    viewer.add_labels(label(mask).astype(np.int32), name="nuclei")  # one id per nucleus, as a user paints them
    return viewer


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Train a model (CLIS)")
    widget.batch, widget.crop = 2, 64  # a few steps on small crops: seconds on a CPU
    return widget


def _files() -> list[str]:
    folder = models_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_trains_on_a_labels_layer_and_segment_lists_the_model(viewer, qtbot, said):
    _, segment = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget = _dock(viewer)
    assert widget.steps.value == TRAIN_STEPS["fine-tune"]
    assert widget.pairs.value == ["nuclei"]  # the labels layer the user made, ticked
    listed = widget.pairs.native  # the list shows each labels layer with the image it labels
    assert [listed.item(i).text() for i in range(listed.count())] == ["nuclei → fluo"]
    widget.steps.value = 2
    widget.train()
    assert widget.busy and not widget.train_button.enabled  # off the GUI thread: the call came back at once
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    path = widget.last_model
    assert path is not None, said
    assert Path(path).parent == models_dir() and Path(path).stem in saved_models()
    assert _files() == [Path(path).name]  # the model, and no checkpoint
    assert Path(path).stem == "nuclei-fluo-nuclei"
    info = [text for kind, text in said if kind == "info"]
    assert info and Path(path).name in info[-1] and "Model list" in info[-1], said
    assert str(path) in list(segment.controls.model.choices)  # the open Segment dock lists it now
    assert not [s for s in said if s[0] == "error"], said


def test_cancel_mid_run_leaves_nothing(viewer, qtbot, said):
    widget = _dock(viewer)
    widget.steps.value = 500
    widget.name.value = "cancelled"
    widget.train()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=180_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    assert widget.last_model is None and _files() == []
    assert any(kind == "info" and "stopped at step" in text and "no model was written" in text
               for kind, text in said), said
    assert widget.train_button.enabled and not widget.progress.visible


def test_bad_input_is_a_notification_and_trains_nothing(make_napari_viewer, qtbot, said, nuclei_fluo):
    image, mask = nuclei_fluo
    viewer = make_napari_viewer()
    viewer.add_image(image, name="fluo")
    viewer.add_labels(mask[:200, :150].astype(np.uint8), name="cropped")  # another size than the only image
    widget = _dock(viewer)
    assert widget.pairs.value == ["cropped"]
    widget.steps.value = 2
    widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    errors = [text for kind, text in said if kind == "error"]
    assert errors and "Masks must be the size of their image: the mask of fluo/cropped is 150x200 px, its image " \
                      f"{image.shape[1]}x{image.shape[0]}" in errors[-1], said
    assert "Traceback" not in errors[-1] and widget.last_model is None and _files() == []
    # an empty labels layer, nothing ticked, a name taken: said at once, nothing starts
    said.clear()
    viewer.layers["cropped"].data = np.zeros_like(viewer.layers["cropped"].data)
    widget.train()
    assert not widget.busy and "holds no labelled pixel" in said[-1][1]
    widget.pairs.value = []
    widget.train()
    assert not widget.busy and "Tick at least one labels layer" in said[-1][1]
    models_dir().mkdir(parents=True, exist_ok=True)
    (models_dir() / "mine.pt").write_bytes(b"a model the user had")
    viewer.layers["cropped"].data = mask[:200, :150].astype(np.uint8)
    widget.pairs.value = ["cropped"]
    widget.name.value = "mine"
    widget.train()
    assert not widget.busy and "named mine is in the models folder already" in said[-1][1]
    widget.name.value = "a/b"
    widget.train()
    assert not widget.busy and "cannot start with" in said[-1][1]
    assert _files() == ["mine.pt"] and (models_dir() / "mine.pt").read_bytes() == b"a model the user had"
    # a mask opened from a file is an image layer: nothing to tick, and the status says how to make it labels
    viewer.layers.remove("cropped")
    viewer.add_image(mask.astype(np.uint8), name="mask from a file")
    assert widget.pairs.choices == () and "right-click it in the layer list and choose Convert to Labels" in \
        widget.status.value


def test_beside_the_other_docks_no_control_is_cut_off(make_napari_viewer, qtbot):
    """Opened below Segment and Measurements in a shown window, the dock is as wide as its controls (it was
    narrower, and the hint and the Start from list ran past its edge)."""
    viewer = make_napari_viewer(show=True)
    for name in ("Segment (CLIS)", "Measurements (CLIS)"):
        viewer.window.add_plugin_dock_widget("napari-clis", name)
    widget = _dock(viewer)
    area = widget.native  # what napari docks: the scroll area around the controls
    assert area is widget.root_native_widget
    qtbot.waitUntil(lambda: area.isVisible(), timeout=10_000)
    qtbot.waitUntil(lambda: area.viewport().width() >= area.widget().minimumSizeHint().width(), timeout=10_000)
