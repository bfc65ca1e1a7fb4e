"""The widget's public surface, its heavy steps in workers, GUI and command line alike, and bad input: the dock or
the viewer closed mid-run, two viewers at once, a layer deleted mid-run, a model file deleted while listed, rapid
clicks during a segment (under Xvfb, in real napari viewers)."""

import threading

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_clis import ClisSession, annotate

from .conftest import DATA, NUCLEI_HE


@pytest.fixture
def messages(monkeypatch):
    shown = {"error": [], "warning": [], "info": []}
    import napari.utils.notifications as notifications

    for kind in shown:
        monkeypatch.setattr(notifications, f"show_{kind}", lambda msg, kind=kind: shown[kind].append(str(msg)))
    return shown


def _hold(monkeypatch, method="segment_steps"):
    """ClisSession.<method> waits, once it is called, until the returned event is set; the first event says it was
    called."""
    called, go_on = threading.Event(), threading.Event()
    real = getattr(ClisSession, method)

    def held(self, *args, **kwargs):
        called.set()
        assert go_on.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ClisSession, method, held)
    return called, go_on


def test_annotate_opens_the_plugin_dock_with_the_image_and_the_model(make_napari_viewer, nuclei_fluo, lesion):
    viewer = make_napari_viewer()
    same, widget = annotate(nuclei_fluo[0], viewer=viewer)
    assert same is viewer and widget.image is viewer.layers[0] and widget.model == "nuclei"
    assert viewer.window.dock_widgets["Segment (CLIS) (napari-clis)"] is widget  # napari's own plugin dock
    layer = viewer.add_image(lesion[0], name="skin", rgb=True)
    _, again = annotate(layer, model="skin-lesion", viewer=viewer)
    assert again is widget and widget.image is layer and widget.model == "skin-lesion"
    with pytest.raises(ValueError, match="No model"):
        widget.set_model("no-such-model")


def test_the_model_is_loaded_and_every_heavy_step_runs_in_a_worker(make_napari_viewer, nuclei_he, monkeypatch):
    from napari_clis._widget import Settings

    seen = {}

    def record(name, real):
        def call(*args, **kwargs):
            seen[name] = threading.current_thread()
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(ClisSession, "segment_steps", record("segment", ClisSession.segment_steps))  # the widget's
    monkeypatch.setattr(ClisSession, "learn", record("learn", ClisSession.learn))
    monkeypatch.setattr(ClisSession, "from_pretrained",
                        classmethod(record("load", ClisSession.from_pretrained.__func__)))
    monkeypatch.setattr(Settings, "async_pixels", 16)  # clicks propagate in a worker, as on a large image
    viewer, widget = annotate(nuclei_he[0], viewer=make_napari_viewer())
    widget.run()
    assert widget.busy and widget.session is None  # Segment returned at once: the model loads in the worker
    widget.wait()
    assert widget.session is not None and "Segmented" in widget.status
    viewer.layers["clicks"].add([20, 20])
    assert widget.propagating
    widget.wait()
    while widget.propagating:
        widget.wait(0.5)
    widget.session.learn_settings.steps = 2
    widget.learn()
    widget.wait()
    main = threading.main_thread()
    assert set(seen) == {"load", "segment", "learn"} and all(t is not main for t in seen.values()), seen
    assert set(widget.threads) == {"load", "segment", "propagate", "learn"}
    assert main.name not in widget.threads.values()


@pytest.mark.parametrize("cut_out", [False, True])
def test_the_widget_and_the_command_line_give_the_same_result_for_the_same_file(make_napari_viewer, tmp_path,
                                                                                  cut_out):
    from skimage.io import imread

    from napari_clis.cli import main

    rgba = imread(DATA / "dsb2018" / "images" / f"{NUCLEI_HE}.png")  # RGBA, opaque
    if cut_out:  # a transparent part: both segment the colours, leaving the alpha out
        rgba = rgba.copy()
        rgba[:, : rgba.shape[1] // 3, 3] = 0
    path = tmp_path / "he.png"
    imsave(path, rgba, check_contrast=False)
    viewer, widget = annotate(path, viewer=make_napari_viewer())
    assert widget.image.rgb and widget.image.data.shape[-1] == 4
    widget.run()
    widget.wait()
    out = tmp_path / "out"
    assert main(["segment", str(path), "--model", "nuclei", "--output", str(out), "--samples", "8"]) == 0
    labels = tifffile.imread(out / "he_labels.tif")
    np.testing.assert_array_equal(widget.session.result.labels, labels)
    np.testing.assert_allclose(viewer.layers["uncertainty"].data, tifffile.imread(out / "he_uncertainty.tif"),
                               atol=1e-6)
    # and what the widget shows is that segmentation, through the propagation without clicks
    assert (viewer.layers["segmentation"].data != labels).mean() < 0.001


def test_closing_the_viewer_while_it_segments_raises_nothing_and_writes_nothing(make_napari_viewer, qtbot,
                                                                                nuclei_he, messages, monkeypatch):
    from qtpy.QtWidgets import QApplication

    called, go_on = _hold(monkeypatch)
    viewer, widget = annotate(nuclei_he[0], viewer=make_napari_viewer())
    widget.run()
    qtbot.waitUntil(called.is_set, timeout=60_000)
    viewer.close()
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    for _ in range(5):  # any late callback would touch deleted Qt widgets here
        QApplication.processEvents()
        qtbot.wait(100)
    assert widget.retired and not messages["error"] and not messages["warning"]


def test_closing_the_dock_mid_run_leaves_the_layers_and_says_nothing_wrong(make_napari_viewer, qtbot, nuclei_he,
                                                                           messages, monkeypatch):
    from qtpy.QtWidgets import QApplication

    called, go_on = _hold(monkeypatch)
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.run(viewer.add_image(nuclei_he[0], name="he", rgb=True))
    qtbot.waitUntil(called.is_set, timeout=60_000)
    # mid-segmentation: the loaded model has reached the dock (its item is queued just before segment_steps is
    # called; closing before it is handled leaves the next dock to load the model again, a race, not this case)
    qtbot.waitUntil(lambda: widget.session is not None, timeout=60_000)
    viewer.window.remove_dock_widget(dock)
    QApplication.processEvents()
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    QApplication.processEvents()
    assert [lyr.name for lyr in viewer.layers] == ["he"] and not messages["error"]
    _, again = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    assert not again.busy and again.status.endswith("Press Segment to correct an image again.")  # ready


def test_two_viewers_segment_at_once_each_into_its_own_layers(make_napari_viewer, qtbot, nuclei_fluo, nuclei_he,
                                                              messages):
    first, a = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    second, b = annotate(nuclei_he[0], viewer=make_napari_viewer())
    assert a is not b and a.state is not b.state
    a.run()
    b.run()
    qtbot.waitUntil(lambda: not a.busy and not b.busy, timeout=120_000)
    assert first.layers["segmentation"].data.shape == nuclei_fluo[0].shape
    assert second.layers["segmentation"].data.shape == nuclei_he[0].shape[:2]
    assert first.layers["segmentation"].metadata["source_id"] != second.layers["segmentation"].metadata["source_id"]
    assert a.session is not b.session and not messages["error"]
    second.layers["clicks"].add([10, 10])  # a click in one window corrects that window's image only
    b.wait()  # it propagates in a worker
    assert b.session.clicks == [(10, 10, 1)] and a.session.clicks == []


def test_the_image_deleted_while_it_is_segmented_gets_nothing_written(make_napari_viewer, qtbot, nuclei_fluo,
                                                                     nuclei_he, messages, monkeypatch):
    called, go_on = _hold(monkeypatch)
    viewer, widget = annotate(nuclei_he[0], viewer=make_napari_viewer())
    image = widget.image
    other = viewer.add_image(nuclei_fluo[0], name="other")
    widget.run(image)
    qtbot.waitUntil(called.is_set, timeout=60_000)
    viewer.layers.remove(image)
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "segmentation" not in viewer.layers and [lyr.name for lyr in viewer.layers] == ["other"]
    assert "was deleted while it was segmented" in widget.status and not messages["error"]
    assert widget.controls.run_button.enabled
    monkeypatch.undo()
    widget.run(other)  # and the next image is segmented as usual
    widget.wait()
    assert viewer.layers["segmentation"].data.shape == nuclei_fluo[0].shape and widget.target[0] is other


def test_a_model_file_deleted_after_it_was_chosen_is_said_and_the_model_in_use_stays(make_napari_viewer, tmp_path,
                                                                                     nuclei_fluo, messages):
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    widget.run()
    widget.wait()
    session, before = widget.session, viewer.layers["segmentation"].data.copy()
    path = tmp_path / "mine.pt"
    widget.save_model(path)
    widget.set_model(path)  # a model file chosen, then deleted in a file manager before Segment
    path.unlink()
    widget.run()
    widget.wait()
    assert any("does not exist" in m for m in messages["error"])
    assert widget.status.startswith("Not segmented") and widget.session is session
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, before)


def test_rapid_clicks_during_a_segment_run_it_once_and_the_clicks_land_when_it_is_done(make_napari_viewer, qtbot,
                                                                                       nuclei_fluo, messages,
                                                                                       monkeypatch):
    viewer, widget = annotate(nuclei_fluo[0], viewer=make_napari_viewer())
    widget.run()
    widget.wait()
    calls = []
    real = ClisSession.segment_steps  # what the widget segments with
    monkeypatch.setattr(ClisSession, "segment_steps",
                        lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    button = widget.controls.run_button
    widget.run()
    for _ in range(5):  # Segment, Learn and Shift-S pressed again and again while it runs
        button.native.click()
        widget.learn()
        widget.run()
    assert sum("Segmenting is still running" in m for m in messages["info"]) >= 10
    viewer.layers["clicks"].add([30, 30])  # a click on the image being segmented again: kept, applied after
    assert "applied when it is done" in widget.click_status
    widget.wait()
    assert len(calls) == 1 and not messages["error"]
    assert widget.session.clicks == [(30, 30, 1)]
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, widget.session.labels)
