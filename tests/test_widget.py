"""The dock widget in a real napari viewer (run under Xvfb)."""

import numpy as np
import pytest

from napari_clis._widget import SegmentWidget, source_id


@pytest.fixture
def errors(monkeypatch):
    """Messages the widget shows as napari error notifications."""
    shown = []
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    return shown


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    return viewer, widget


def _run(widget, qtbot, layer=None, timeout=60_000):
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_segment_adds_segmentation_uncertainty_and_superpixels_layers(viewer_and_widget, qtbot, nuclei_fluo, errors):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    layer = viewer.add_image(image, name="nuclei", scale=(0.5, 0.25), translate=(10, 20))
    widget.set_image(layer)
    widget.controls.run_button.native.click()  # as a person would
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert not errors
    seg, unc, sp = viewer.layers["segmentation"], viewer.layers["uncertainty"], viewer.layers["superpixels"]
    assert type(seg).__name__ == "Labels" and type(unc).__name__ == "Image" and type(sp).__name__ == "Labels"
    assert seg.data.shape == unc.data.shape == sp.data.shape == image.shape
    np.testing.assert_array_equal(seg.data, widget.session.labels)  # the propagated segmentation
    assert seg.data is not widget.session.result.labels and seg.data is not widget.session.labels  # painted on
    assert seg.data.max() == 1 and unc.data.max() > 0
    assert not sp.visible
    for lyr in (seg, unc, sp):
        np.testing.assert_allclose(lyr.scale, layer.scale)
        np.testing.assert_allclose(lyr.translate, layer.translate)
    assert "Segmented" in widget.status
    # the objects, as outlines over the segmentation, and their count in the status
    inst = viewer.layers["instances"]
    assert type(inst).__name__ == "Labels" and inst.contour >= 2 and inst.visible
    np.testing.assert_array_equal(inst.data, widget.session.instances)
    np.testing.assert_allclose(inst.scale, layer.scale)
    n = int(inst.data.max())
    assert n > 5 and f"'nuclei': {n} nuclei." in widget.status
    assert viewer.layers.index(inst) > viewer.layers.index(seg)


def test_running_again_updates_the_layers_instead_of_adding_more(viewer_and_widget, qtbot, nuclei_fluo, nuclei_he):
    viewer, widget = viewer_and_widget
    a = viewer.add_image(nuclei_fluo[0], name="fluo")
    _run(widget, qtbot, a)
    b = viewer.add_image(nuclei_he[0], name="he", rgb=True)
    _run(widget, qtbot, b)
    assert len(viewer.layers) == 8  # two images; segmentation, uncertainty, superpixels, instances, clicks, suggestions
    assert viewer.layers["segmentation"].data.shape == nuclei_he[0].shape[:2]
    layers = viewer.layers  # the image opened later went on top; the results must not hide under it
    qtbot.waitUntil(lambda: all(layers.index(layers[name]) > layers.index(b)
                                for name in ("segmentation", "clicks", "suggestions")), timeout=5_000)
    assert [c for c in widget.controls.image.choices] == [a, b]  # the uncertainty map is not offered as an image


def test_a_stack_segments_the_slice_on_screen_only(viewer_and_widget, qtbot, nuclei_fluo):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    stack = np.stack([np.zeros_like(image), image, image[::-1]])
    layer = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    _run(widget, qtbot, layer)
    seg = viewer.layers["segmentation"].data
    assert seg.shape == stack.shape
    assert seg[1].any() and not seg[0].any() and not seg[2].any()


def test_all_slices_of_a_time_series_are_segmented_with_progress(viewer_and_widget, qtbot, nuclei_fluo):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    layer = viewer.add_image(stack, name="movie")
    widget.all_slices = True
    _run(widget, qtbot, layer)
    seg = viewer.layers["segmentation"].data
    assert all(seg[t].any() for t in range(3))
    assert "3/3" in widget.status
    shown = int(round(viewer.dims.point[0]))
    assert widget.target[1] == (shown,)  # the slice on screen went last: it is the one clicks correct
    other = next(t for t in range(3) if t != shown)
    widget.session.segment(stack[other])  # every slice as it is when segmented alone: the propagated labels
    np.testing.assert_array_equal(seg[other], widget.session.labels)
    widget.session.segment(stack[shown])
    np.testing.assert_array_equal(seg[shown], widget.session.labels)
    ledger = widget.ledger  # per slice: what was written, in one byte a pixel; painted maps only where needed
    assert len(ledger.written) == 3 and len(ledger.painted) <= 1
    target = (source_id(layer), widget.target[1])
    assert all(w.dtype == np.uint8 for key, w in ledger.written.items() if key != target)


def test_cancel_stops_a_long_run_and_keeps_finished_slices(viewer_and_widget, qtbot, nuclei_fluo):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    layer = viewer.add_image(np.stack([image] * 30), name="long")
    widget.all_slices = True
    widget.run(layer)
    qtbot.waitUntil(lambda: widget.controls.progress.value >= 1, timeout=60_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    seg = viewer.layers["segmentation"].data
    done = [t for t in range(30) if seg[t].any()]
    assert 1 <= len(done) < 30 and done == list(range(len(done)))
    assert widget.status.startswith(f"Cancelled: {len(done)} of 30 slice(s)")
    # the slice it stopped on is set up for correcting: its clicks layer, its suggestions
    assert widget.target is not None and widget.target[1] == (done[-1],) and "clicks" in viewer.layers


def test_the_layers_are_made_while_the_first_segment_runs_and_go_if_it_is_cancelled(viewer_and_widget, qtbot,
                                                                                     nuclei_fluo, errors):
    """The output layers are made one per turn of the event loop while the worker loads the model and segments
    (not all at once when the result comes); a run cancelled before its first result takes them away again."""
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    reps = (-(-1100 // image.shape[0]), -(-1100 // image.shape[1]))
    layer = viewer.add_image(np.tile(image, reps)[:1100, :1100], name="big")
    before = [lyr.name for lyr in viewer.layers]
    widget.run(layer)
    qtbot.waitUntil(lambda: "instances" in viewer.layers, timeout=60_000)
    assert widget.busy and not viewer.layers["segmentation"].data.any()  # made ahead, before any result
    assert viewer.layers["segmentation"].metadata["source"] == "big"
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors and widget.status.startswith("Cancelled: 'big' was not segmented")
    assert [lyr.name for lyr in viewer.layers] == before

    _run(widget, qtbot, layer, timeout=120_000)  # and made ahead, they are the layers written
    assert viewer.layers["segmentation"].data.any() and viewer.layers["instances"].data.any()
    assert sum(lyr.name == "segmentation" for lyr in viewer.layers) == 1


def test_a_large_image_counts_its_tiles_and_cancel_stops_it_between_two(viewer_and_widget, qtbot, nuclei_fluo,
                                                                       errors):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    reps = (-(-1100 // image.shape[0]), -(-1100 // image.shape[1]))
    big = np.tile(image, reps)[:1100, :1100]  # four tiles of at most 1024 px
    layer = viewer.add_image(big, name="big")
    shown = []
    widget.controls.progress.changed.connect(lambda v: shown.append((widget.controls.progress.max, v)))
    widget.run(layer)
    assert widget.controls.cancel_button.enabled  # one image, but a large one: it can be stopped
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors
    assert (5, 1) in shown  # 4 tiles and the superpixels: the bar moved on after the first tile
    seg = viewer.layers["segmentation"]
    before = seg.data.copy()
    assert before.any() and "Segmented 'big'" in widget.status
    result = widget.session.result

    widget.run(layer)
    widget.cancel()  # long before the first of the four tiles is done
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors  # a cancel is no failure
    assert widget.status == (
        "Cancelled: 'big' was not segmented; the layers are as they were.")
    np.testing.assert_array_equal(seg.data, before)
    assert widget.session.result is result  # the session still holds the image as it was
    c = widget.controls
    assert c.progress.native.isHidden() and c.run_button.enabled and not c.cancel_button.enabled


def test_the_busy_bar_of_a_single_image_shows_only_once_segmenting_takes_a_while(viewer_and_widget, qtbot,
                                                                                  nuclei_fluo, monkeypatch):
    """Every frame of the moving busy bar repaints the window: a short Segment shows none (the status says it runs);
    one that takes a while shows it; a finished run's late timer shows nothing."""
    import threading

    from napari_clis.session import ClisSession

    viewer, widget = viewer_and_widget
    layer = viewer.add_image(nuclei_fluo[0], name="fluo")
    started, go_on = threading.Event(), threading.Event()
    real = ClisSession.segment_steps  # what the widget segments with

    def held(self, *args, **kwargs):
        started.set()
        assert go_on.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ClisSession, "segment_steps", held)
    c = widget.controls

    def bar_shown():  # shown by the dock (the viewer of the tests is not on screen: isVisible() is always False)
        return not c.progress.native.isHidden()

    try:
        widget.run(layer)
        assert not bar_shown() and not c.run_button.enabled and c.cancel_button.enabled
        assert widget.status.startswith("Segmenting 'fluo'")
        qtbot.waitUntil(started.is_set, timeout=60_000)
        qtbot.waitUntil(bar_shown, timeout=5_000)  # it takes a while: the bar shows
        assert c.progress.max == 0  # a busy indicator (no steps to count)
    finally:
        go_on.set()
    widget.wait()
    assert not bar_shown()
    widget.run(layer)  # a run that ends at once: its timer fires after it ended and shows nothing
    widget.wait()
    qtbot.wait(700)
    assert not bar_shown() and c.run_button.enabled


def test_channels_opened_as_one_stack_are_pointed_out_and_the_status_names_the_slice(viewer_and_widget, qtbot,
                                                                                      nuclei_fluo, monkeypatch):
    import napari.utils.notifications as notifications

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: warnings.append(str(msg)))
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    layer = viewer.add_image(np.stack([image, image // 2]), name="cyx")  # (C, Y, X): two channels
    viewer.dims.set_current_step(0, 1)
    _run(widget, qtbot, layer)
    assert any("2 planes along its first axis" in w and "Split Stack" in w for w in warnings)
    assert widget.status.startswith("Segmented slice 1 of 'cyx': ")
    _run(widget, qtbot, layer)
    assert sum("first axis" in w for w in warnings) == 1  # said once for the layer, not at every Segment
    warnings.clear()
    movie = viewer.add_image(np.stack([image] * 6), name="movie")  # six time points: no channel hint
    _run(widget, qtbot, movie)
    assert not any("first axis" in w for w in warnings)


def test_a_partly_transparent_rgba_image_is_segmented_by_its_colours_with_a_warning(viewer_and_widget, qtbot,
                                                                                    nuclei_he, errors,
                                                                                    monkeypatch):
    import napari.utils.notifications as notifications

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: warnings.append(str(msg)))
    viewer, widget = viewer_and_widget
    image, _ = nuclei_he
    alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
    alpha[:40, :40] = 0  # a transparent corner: segment() alone refuses such an alpha channel
    layer = viewer.add_image(np.concatenate([image, alpha], -1), name="rgba", rgb=True)
    _run(widget, qtbot, layer)
    assert not errors and any("partly transparent" in w for w in warnings)
    seg = viewer.layers["segmentation"].data
    assert seg.shape == image.shape[:2] and seg.any()
    np.testing.assert_array_equal(widget.session.result.labels, widget.session.segment(image).labels)
    alpha[:, : image.shape[1] * 2 // 3] = 0  # a cut-out: most of it transparent, the rest opaque
    cut = viewer.add_image(np.concatenate([image, alpha], -1), name="cut-out", rgb=True)
    _run(widget, qtbot, cut)
    assert not errors and sum("partly transparent" in w for w in warnings) == 2


def test_deleting_the_segmentation_during_a_run_over_slices_says_which_are_lost(viewer_and_widget, qtbot,
                                                                                nuclei_fluo, monkeypatch):
    import napari.utils.notifications as notifications

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: warnings.append(str(msg)))
    import threading

    from napari_clis import ClisSession

    # the second slice waits until the layer is gone: a deletion mid-run, however fast the slices are
    deleted, calls = threading.Event(), []
    real = ClisSession.segment_steps  # what the widget segments with

    def segment_second_after_deletion(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            assert deleted.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ClisSession, "segment_steps", segment_second_after_deletion)
    viewer, widget = viewer_and_widget
    image = nuclei_fluo[0][:96, :96]
    layer = viewer.add_image(np.stack([image] * 12), name="movie")
    widget.all_slices = True
    widget.run(layer)
    qtbot.waitUntil(lambda: widget.controls.progress.value >= 1, timeout=60_000)
    viewer.layers.remove("segmentation")
    deleted.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert any("'segmentation' was deleted during the run" in w for w in warnings), warnings
    assert viewer.layers["segmentation"].data.any()  # made again, for the slices still to come


def test_cancel_pressed_as_an_image_finishes_says_it_had_finished(viewer_and_widget, qtbot, nuclei_fluo):
    import threading

    viewer, widget = viewer_and_widget
    layer = viewer.add_image(nuclei_fluo[0], name="img")
    _run(widget, qtbot, layer)
    session = widget.session
    real, done, go_on = session.segment_steps, threading.Event(), threading.Event()

    def segment_then_wait(*args, **kwargs):  # every tile done: Cancel comes too late to stop it
        yield from real(*args, **kwargs)
        done.set()
        go_on.wait(30)

    session.segment_steps = segment_then_wait
    widget.run(layer)
    qtbot.waitUntil(done.is_set, timeout=60_000)
    widget.cancel()
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.status.startswith(
        "Segmenting had finished when Cancel was pressed. Segmented 'img': ")


def test_a_slider_beyond_a_short_stack_is_said_instead_of_segmenting_its_last_slice(viewer_and_widget, qtbot,
                                                                                     nuclei_fluo, errors):
    viewer, widget = viewer_and_widget
    image = nuclei_fluo[0][:64, :64]
    viewer.add_image(np.stack([image] * 6), name="long")
    short = viewer.add_image(np.stack([image] * 3), name="short")
    viewer.dims.set_point(0, 5)  # napari draws nothing of 'short' here
    _run(widget, qtbot, short)
    assert errors and "outside 'short' (slices 0..2)" in errors[0]
    assert "segmentation" not in viewer.layers


def test_rgb_image_keeps_its_scale(viewer_and_widget, qtbot, lesion):
    viewer, widget = viewer_and_widget
    image, _ = lesion
    layer = viewer.add_image(image, name="lesion", rgb=True, scale=(2.0, 2.0))
    widget.set_model("skin-lesion")
    _run(widget, qtbot, layer)
    seg = viewer.layers["segmentation"]
    assert seg.data.shape == image.shape[:2] and seg.data.any()
    np.testing.assert_allclose(seg.scale, (2.0, 2.0))


def test_a_multiscale_image_is_segmented_at_its_full_resolution(viewer_and_widget, qtbot, nuclei_he, nuclei_session):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_he
    layer = viewer.add_image([image, image[::2, ::2]], multiscale=True, rgb=True, name="pyramid")
    _run(widget, qtbot, layer)
    seg = viewer.layers["segmentation"].data  # numpy.asarray of the layer's data is its coarsest level
    assert seg.shape == image.shape[:2]
    nuclei_session.segment(image)
    np.testing.assert_array_equal(seg, nuclei_session.labels)  # the propagated segmentation of the image itself


def test_a_labels_layer_chosen_as_the_image_is_refused_with_a_message(viewer_and_widget, nuclei_fluo, errors):
    viewer, widget = viewer_and_widget
    labels = viewer.add_labels(np.zeros((32, 32), np.int32), name="my labels")
    widget.run(labels)
    assert not widget.busy
    assert errors and "'my labels' is a Labels layer" in errors[0]
    assert "segmentation" not in [lyr.name for lyr in viewer.layers]


def test_nan_image_is_reported_and_earlier_results_survive(viewer_and_widget, qtbot, nuclei_fluo, errors):
    viewer, widget = viewer_and_widget
    good = viewer.add_image(nuclei_fluo[0], name="good")
    _run(widget, qtbot, good)
    before = viewer.layers["segmentation"].data.copy()
    bad = np.full((64, 64), np.nan, np.float32)
    viewer.add_image(bad, name="bad")
    _run(widget, qtbot, viewer.layers["bad"])
    assert errors and "NaN" in errors[-1]
    # the failed run did not touch the earlier result
    lyr = viewer.layers["segmentation"]
    assert lyr.metadata["source"] == "good"
    np.testing.assert_array_equal(lyr.data, before)


def test_a_foreign_model_file_is_reported(viewer_and_widget, tmp_path, nuclei_fluo, errors):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(nuclei_fluo[0])
    path = tmp_path / "notamodel.pt"
    path.write_text("hello")
    widget.set_model(path)
    assert widget.model == "Model file…" and not widget.controls.checkpoint.native.isHidden()
    widget.run(layer)
    widget.wait()  # the model is loaded in the worker: its failure is reported from there
    assert errors and "not a readable napari-clis model" in errors[0], errors
    assert widget.status.startswith("Not segmented: ") and "segmentation" not in viewer.layers


def test_cuda_asked_for_without_a_gpu_is_reported(viewer_and_widget, nuclei_fluo, errors):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(nuclei_fluo[0])
    widget.device = "cuda"
    widget.run(layer)
    widget.wait()
    assert errors and "no CUDA GPU" in errors[0]


def test_the_manifest_contributes_the_widget_and_the_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    assert isinstance(widget, SegmentWidget)
    viewer.open_sample("napari-clis", "nuclei")
    viewer.open_sample("napari-clis", "skin_lesion")
    assert viewer.layers["nuclei"].data.ndim == 2
    assert viewer.layers["skin lesion"].rgb


def test_the_dock_scrolls_in_a_short_window_and_keeps_its_width(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.showNormal()
    viewer.window.resize(1280, 700)  # a laptop screen: the controls and plots need more height than that
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    for _ in range(10):
        QApplication.processEvents()
    area = dock.widget()
    assert isinstance(area, QScrollArea) and area.widget().isAncestorOf(widget.controls.learn_button.native)
    assert area.verticalScrollBar().maximum() > 0  # what does not fit can be scrolled to
    area.ensureWidgetVisible(widget.controls.save_button.native)
    assert area.verticalScrollBar().value() > 0
    assert dock.width() < 450 < viewer.window._qt_viewer.canvas.native.width()  # the canvas keeps its room


def test_shift_s_in_the_viewer_segments_the_chosen_image(viewer_and_widget, qtbot, nuclei_fluo):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(nuclei_fluo[0], name="fluo")
    widget.set_image(layer)
    from app_model.types import KeyBinding
    from napari.components import ViewerModel

    ViewerModel.class_keymap[KeyBinding.from_str("Shift-S")](viewer)  # a napari action on every viewer
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert viewer.layers["segmentation"].data.any()


def test_a_four_channel_non_rgba_image_is_reported(viewer_and_widget, qtbot, nuclei_he, errors):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_he
    four = np.concatenate([image, image[..., :1]], -1)
    layer = viewer.add_image(four, rgb=True, name="four channels")
    _run(widget, qtbot, layer)
    assert errors and "4 channels of data" in errors[-1] and "Split RGB" in errors[-1]  # the GUI's words, no code
    assert "segmentation" not in [lyr.name for lyr in viewer.layers]
    half = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    half[:, : image.shape[1] // 2, 3] = 60  # half-transparent: no cut-out either
    _run(widget, qtbot, viewer.add_image(half, rgb=True, name="half see-through"))
    assert "half see-through" in errors[-1] and "save it as RGB" in errors[-1] and "image[" not in errors[-1]
    assert "segmentation" not in [lyr.name for lyr in viewer.layers]


def test_a_two_channel_image_read_as_a_stack_of_strips_is_refused_as_batch_refuses_it(viewer_and_widget, qtbot,
                                                                                     nuclei_fluo, errors, tmp_path):
    import tifffile

    from napari_clis.cli import main

    viewer, widget = viewer_and_widget
    image = nuclei_fluo[0][:64, :64]
    layer = viewer.add_image(np.stack([image, image], -1), name="two channels")  # napari: 64 slices of 64x2
    _run(widget, qtbot, layer)
    assert errors and "would make 64 planes of 64x2 pixels" in errors[-1] and "channels last" in errors[-1]
    assert "segmentation" not in viewer.layers and widget.status.startswith("Not segmented")
    # the same decision (preprocessing.image_layout) for the same array in a file, from `napari-clis segment`
    tifffile.imwrite(tmp_path / "two.tif", np.stack([image, image], -1))
    assert main(["segment", str(tmp_path / "two.tif"), "--model", "nuclei", "--output", str(tmp_path / "out")]) != 0


# -- issue 19: intensity range and object size ------------------------------------------------------------------------
def test_as_displayed_segments_what_the_contrast_limits_show(viewer_and_widget, qtbot, nuclei_fluo, nuclei_session,
                                                             errors):
    from napari_clis.preprocessing import normalize_image

    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    layer = viewer.add_image(image, name="nuclei")
    layer.contrast_limits = (5.0, 120.0)
    widget.intensity_range = "as displayed"
    _run(widget, qtbot, layer)
    assert not errors
    expected = nuclei_session.segment(image, intensity_range=(5.0, 120.0))
    assert not np.array_equal(normalize_image(image, value_range=(5.0, 120.0)), normalize_image(image))
    np.testing.assert_array_equal(widget.session.result.labels, expected.labels)
    np.testing.assert_allclose(widget.session.result.uncertainty, expected.uncertainty, atol=1e-6)
    widget.intensity_range = "automatic"  # the robust range again: another input
    _run(widget, qtbot, layer)
    automatic = nuclei_session.segment(image)
    np.testing.assert_allclose(widget.session.result.uncertainty, automatic.uncertainty, atol=1e-6)
    assert not np.allclose(automatic.uncertainty, expected.uncertainty, atol=1e-6)


def test_contrast_limits_set_past_the_nuclei_are_named_as_the_cause_of_an_empty_result(viewer_and_widget, qtbot,
                                                                                     nuclei_fluo, errors, monkeypatch):
    import napari.utils.notifications as notifications

    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    layer = viewer.add_image(image, name="nuclei")
    layer.contrast_limits = (float(np.percentile(image, 99.6)), float(image.max()) + 1)  # nearly all of it black
    widget.intensity_range = "as displayed"
    said = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: said.append(str(msg)))
    _run(widget, qtbot, layer)
    qtbot.waitUntil(lambda: any("almost black image" in m for m in said), timeout=10_000)
    assert not errors and "Segmented" in widget.status  # a warning: the result stands, the cause is named


def test_contrast_limits_of_no_width_are_reported_and_the_segmentation_stays(viewer_and_widget, qtbot, nuclei_fluo,
                                                                              errors):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    layer = viewer.add_image(image, name="nuclei")
    _run(widget, qtbot, layer)
    before = viewer.layers["segmentation"].data.copy()
    result = widget.session.result
    widget.intensity_range = "as displayed"
    layer._contrast_limits = (50.0, 50.0)  # napari's setter refuses this; a layer can still hold it
    widget.run(layer)
    assert not widget.busy
    assert errors and "contrast limits of 'nuclei' have no width" in errors[-1]
    assert "Not segmented" in widget.status
    assert widget.session.result is result
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, before)


def test_the_object_size_rescales_for_the_model_and_results_keep_the_image_size(viewer_and_widget, qtbot,
                                                                                 nuclei_fluo, nuclei_session, errors):
    viewer, widget = viewer_and_widget
    image, _ = nuclei_fluo
    small = image[::2, ::2]
    layer = viewer.add_image(small, name="small")
    widget.object_size = 9.95  # half the nuclei the model learned (19.9 px)
    _run(widget, qtbot, layer)
    assert not errors
    assert widget.session.object_scale(9.95) == pytest.approx(2.0)  # the factor the image was resized by
    np.testing.assert_array_equal(widget.session.result.labels,
                                  nuclei_session.segment(small, object_diameter=9.95).labels)
    for name in ("segmentation", "uncertainty", "superpixels", "instances"):
        assert viewer.layers[name].data.shape == small.shape
    assert int(viewer.layers["instances"].data.max()) > 5
    assert "The objects found are about" not in widget.status  # the size given is the objects'
    widget.object_size = 40  # four times the nuclei's: the status says what size the objects found have
    _run(widget, qtbot, layer)
    assert "px across, not the 40 px of Object size" in widget.status, widget.status
    before = viewer.layers["segmentation"].data.copy()
    widget.object_size = 500  # larger than the image: said, nothing lost
    widget.run(layer)
    assert not widget.busy
    assert errors and "object_diameter 500 px is larger than the image" in errors[-1]
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, before)
    widget.object_size = 0  # the image as it is
    _run(widget, qtbot, layer)
    np.testing.assert_array_equal(widget.session.result.labels, nuclei_session.segment(small).labels)
