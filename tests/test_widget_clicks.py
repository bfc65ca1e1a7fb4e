"""The click loop in a real napari viewer: Points clicks, painted edits, suggestions, saving (under Xvfb)."""

import numpy as np
import pytest

from napari_clis._widget import Settings, source_id


@pytest.fixture
def messages(monkeypatch):
    shown = {"error": [], "warning": []}
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_error", lambda msg: shown["error"].append(str(msg)))
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown["warning"].append(str(msg)))
    return shown


@pytest.fixture
def segmented(make_napari_viewer, qtbot, nuclei_he):
    """A viewer with the widget, the H&E nuclei image (with a scale) segmented."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_he
    layer = viewer.add_image(image, name="he", rgb=True, scale=(0.5, 0.5))
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    return viewer, widget, truth


def _wrong_pixel(seg, truth, want):
    """A pixel deep inside a region where the segmentation says not-``want`` and the truth says ``want``."""
    from scipy import ndimage

    wrong = (truth == want) & (seg != want)
    dist = ndimage.distance_transform_edt(np.pad(wrong, 1))[1:-1, 1:-1]
    return np.unravel_index(int(dist.argmax()), dist.shape)


def test_segmenting_creates_the_clicks_and_suggestions_layers(segmented, qtbot):
    viewer, widget, _ = segmented
    clicks, sugg = viewer.layers["clicks"], viewer.layers["suggestions"]
    qtbot.waitUntil(lambda: viewer.layers.index(clicks) > viewer.layers.index(sugg))  # clicks over the rings
    assert type(clicks).__name__ == "Points" and clicks.mode == "add"
    assert viewer.layers.selection.active is clicks
    n_objects = int(viewer.layers["instances"].data.max())  # a quarter of the objects are ringed, 3 to 16
    assert len(sugg.data) == min(16, max(3, -(-n_objects // 4)))
    np.testing.assert_allclose(clicks.scale, (0.5, 0.5))
    assert widget.click_class == 1


def test_a_click_on_the_points_layer_updates_the_segmentation_layer(segmented, messages):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    y, x = _wrong_pixel(seg.data, truth, 1)
    by, bx = _wrong_pixel(seg.data, truth, 0)
    regions = widget.session.interaction.graph.regions
    assert regions[y, x] != regions[by, bx]
    clicks.add([y, x])  # data coordinates, as a mouse click in add mode gives
    widget.wait()  # the propagation runs in a worker
    assert seg.data[y, x] == 1
    assert clicks.features["class"].tolist() == [1]
    widget.set_click_class(0)
    clicks.add([by, bx])
    widget.wait()
    assert seg.data[by, bx] == 0 and seg.data[y, x] == 1
    assert clicks.features["class"].tolist() == [1, 0]
    inst = viewer.layers["instances"].data  # the objects clicked are not suggested any more
    clicked = {int(inst[y, x]), int(inst[by, bx])} - {0}
    assert not clicked & {int(inst[round(p), round(q)]) for p, q in viewer.layers["suggestions"].data}
    # deleting the first click gives its region back to the network
    clicks.selected_data = {0}
    clicks.remove_selected()
    widget.wait()
    np.testing.assert_array_equal(seg.data, widget.session.labels)
    assert widget.session.clicks == [(by, bx, 0)]
    assert not messages["error"]


def test_relabelling_a_selected_click_changes_its_class(segmented):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    y, x = _wrong_pixel(seg.data, truth, 1)
    clicks.add([y, x])
    clicks.mode = "select"
    clicks.selected_data = {0}
    widget.set_click_class(0)
    assert clicks.features["class"].tolist() == [0]
    assert seg.data[y, x] == 0


def test_keyboard_shortcuts_switch_the_click_class(segmented):
    viewer, widget, _ = segmented
    viewer.layers["clicks"].selected_data = set()
    widget.next_click_class()
    assert widget.click_class == 0
    widget.next_click_class()
    assert widget.click_class == 1
    widget.set_click_class(0)
    assert viewer.layers["clicks"].feature_defaults["class"][0] == 0


def test_painted_edits_are_annotations_that_propagation_keeps_and_undo_still_works(segmented):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    py, px = _wrong_pixel(seg.data, truth, 0)  # paint background where the network put a nucleus
    seg.brush_size = 3
    seg.selected_label = 0
    seg.paint((py, px), 0)
    widget.wait()
    assert seg.data[py, px] == 0
    y, x = _wrong_pixel(seg.data, truth, 1)
    clicks.add([y, x])  # a later click propagates again
    widget.wait()
    assert seg.data[py, px] == 0, "a painted edit was overwritten by propagation"
    assert seg.data[y, x] == 1
    assert widget.session.interaction.painted[py, px] == 0
    before = seg.data.copy()
    seg.undo()  # napari's undo takes the paint stroke back
    widget.wait()
    assert (seg.data != before).any()


def test_an_edit_stays_an_annotation_after_the_propagation_comes_to_agree_with_it(segmented):
    viewer, widget, truth = segmented
    seg = viewer.layers["segmentation"]
    first = np.nonzero(((seg.data > 0) != truth) & truth)  # paint the missed nucleus pixels, as one stroke
    with seg.block_history():
        seg.data_setitem(first, 1)
    then = np.nonzero(((seg.data > 0) != truth) & ~truth)  # a second stroke, of background
    with seg.block_history():
        seg.data_setitem(then, 0)
    widget.wait()  # the strokes are taken in (and propagated) in a worker
    painted = widget.session.interaction.painted
    assert (painted[first] == 1).all() and (painted[then] == 0).all()
    assert (seg.data[first] == 1).all() and (seg.data[then] == 0).all()


def test_clicks_on_another_slice_outside_or_of_an_unknown_class_are_reported_and_kept(
        make_napari_viewer, qtbot, nuclei_fluo, messages):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_fluo
    stack = np.stack([image, image[::-1]])
    layer = viewer.add_image(stack, name="stack")
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    rings = viewer.layers["suggestions"].data  # on the slice segmented
    assert clicks.ndim == 3 and len(rings) >= 3 and (rings[:, 0] == 0).all()
    before = seg.data.copy()
    clicks.add([1, 10, 10])  # the other slice
    widget.wait()  # the warning comes from the worker's propagation
    assert sum("other slices" in w for w in messages["warning"]) == 1  # one click, one warning (it was two)
    clicks.add([0, 10, 5000])  # outside
    widget.wait()
    assert len(clicks.data) == 2
    assert any("outside the image" in w for w in messages["warning"])
    np.testing.assert_array_equal(seg.data, before)
    assert not messages["error"]


def test_clicks_before_any_segmentation_say_what_to_do(make_napari_viewer, nuclei_fluo):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    viewer.add_image(nuclei_fluo[0], name="img")
    widget.apply_corrections()
    assert widget.click_status == ""
    assert widget.session is None


def test_a_segmentation_layer_made_again_goes_under_the_clicks(segmented, qtbot):
    viewer, widget, _ = segmented
    viewer.layers.remove("segmentation")
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    layers = viewer.layers  # napari adds the new layer on top; the rings and the clicks must stay visible over it
    qtbot.waitUntil(lambda: layers.index(layers["segmentation"]) < layers.index(layers["suggestions"])
                    < layers.index(layers["clicks"]), timeout=5_000)


def test_clear_clicks_restores_the_network_segmentation(segmented):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    start = seg.data.copy()
    for want in (1, 0, 1):
        widget.set_click_class(want)
        clicks.add(list(_wrong_pixel(seg.data, truth, want)))
        widget.wait()
    assert (seg.data != start).any()
    widget.controls.clear_button.native.click()
    widget.wait()
    assert len(clicks.data) == 0
    assert (seg.data != start).mean() < 0.001  # the MRF without clicks: the network's answer


def test_a_saved_and_reloaded_segmentation_is_the_same(segmented, tmp_path):
    import napari

    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))
    widget.wait()
    path = napari.save_layers(str(tmp_path / "segmentation.tif"), [seg])[0]
    back = viewer.open(path, plugin="napari", layer_type="labels")[0]
    assert type(back).__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(back.data), seg.data)


def test_the_plugin_tiff_writer_keeps_scale_and_translate(segmented, tmp_path):
    import napari

    from napari_clis._writer import read_labels_metadata

    viewer, widget, truth = segmented
    seg = viewer.layers["segmentation"]
    seg.translate = (3.0, 4.0)
    path = napari.save_layers(str(tmp_path / "seg.tif"), [seg], plugin="napari-clis")[0]
    meta = read_labels_metadata(path)
    assert meta["scale"] == [0.5, 0.5] and meta["translate"] == [3.0, 4.0]
    assert meta["class_names"] == widget.session.class_names
    back = viewer.open(path, plugin="napari", layer_type="labels")[0]  # any TIFF reader gives the same labels
    np.testing.assert_array_equal(np.asarray(back.data), seg.data)
    assert not list(tmp_path.glob(".tmp-*"))


def test_the_uncertainty_map_saves_as_tiff_with_its_scale_and_values(segmented, tmp_path):
    import napari
    import tifffile

    from napari_clis._writer import read_metadata

    viewer, widget, truth = segmented
    unc = viewer.layers["uncertainty"]
    unc.translate = (2.0, -1.0)
    path = napari.save_layers(str(tmp_path / "uncertainty"), [unc], plugin="napari-clis")[0]
    assert path.endswith("uncertainty.tif")
    meta = read_metadata(path)
    assert meta["layer_type"] == "image" and meta["name"] == "uncertainty"
    assert meta["scale"] == [0.5, 0.5] and meta["translate"] == [2.0, -1.0]
    assert meta["contrast_limits"] == [float(v) for v in unc.contrast_limits]
    saved = tifffile.imread(path)
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, unc.data)  # the map's values, not a rendering of them
    np.testing.assert_array_equal(saved, widget.session.result.uncertainty)
    back = viewer.open(path, plugin="napari")[0]  # napari's own reader opens it as an image
    assert type(back).__name__ == "Image"
    np.testing.assert_array_equal(np.asarray(back.data), unc.data)
    tifffile.imwrite(tmp_path / "plain.tif", saved)
    assert read_metadata(str(tmp_path / "plain.tif")) == {}  # a TIFF from elsewhere has none
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_4d_image_and_a_pyramid_save_whole_through_the_plugin_writer(make_napari_viewer, tmp_path):
    import napari

    from napari_clis._writer import read_metadata

    viewer = make_napari_viewer()
    tzyx = (np.arange(2 * 5 * 20 * 20) % 999).astype(np.uint16).reshape(2, 5, 20, 20)
    layer = viewer.add_image(tzyx, name="tzyx", scale=(1.0, 2.0, 0.5, 0.5))
    path = napari.save_layers(str(tmp_path / "tzyx.tif"), [layer])[0]  # as File > Save Selected Layers does
    back = viewer.open(path, plugin="napari")[0]
    assert np.asarray(back.data).shape == (2, 5, 20, 20)  # T and Z stay apart (they were one run of 10 pages)
    np.testing.assert_array_equal(np.asarray(back.data), tzyx)
    full = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    pyramid = viewer.add_image([full, full[::2, ::2]], name="pyramid", multiscale=True, scale=(0.25, 0.25))
    path = napari.save_layers(str(tmp_path / "pyramid.tif"), [pyramid], plugin="napari-clis")[0]
    back = viewer.open(path, plugin="napari")[0]
    np.testing.assert_array_equal(np.asarray(back.data), full)  # the full resolution, which the scale is of
    assert read_metadata(path)["scale"] == [0.25, 0.25]


def test_the_plugin_writer_keeps_an_rgb_image_as_colour(make_napari_viewer, tmp_path):
    import napari
    import tifffile

    from napari_clis._writer import read_metadata

    viewer = make_napari_viewer()
    rgb = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
    layer = viewer.add_image(rgb, name="photo", scale=(2.0, 3.0), rgb=True)
    assert layer.rgb
    path = napari.save_layers(str(tmp_path / "photo.tif"), [layer], plugin="napari-clis")[0]
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        np.testing.assert_array_equal(tif.asarray(), rgb)
    assert read_metadata(path)["scale"] == [2.0, 3.0]


def test_the_layers_follow_the_image_when_it_is_rotated_sheared_or_rescaled_and_a_click_lands_on_its_pixel(
        segmented, tmp_path):
    import napari

    from napari_clis._writer import read_labels_metadata

    viewer, widget, truth = segmented
    image = viewer.layers["he"]
    ours = [viewer.layers[n] for n in ("segmentation", "uncertainty", "superpixels", "clicks", "suggestions")]
    image.rotate, image.shear, image.scale = 30, [0.2], (0.7, 0.4)  # after segmenting: the layers move with it
    for lyr in ours:
        np.testing.assert_allclose(lyr.affine.affine_matrix, image.affine.affine_matrix)
        for name in ("scale", "translate", "rotate", "shear"):
            np.testing.assert_allclose(getattr(lyr, name), getattr(image, name), err_msg=f"{lyr.name}.{name}")
    pixel = np.array(_wrong_pixel(viewer.layers["segmentation"].data, truth, 1))
    clicks = viewer.layers["clicks"]
    clicks.add(clicks.world_to_data(image.data_to_world(pixel)))  # as napari's add mode does with a mouse click
    widget.wait()
    assert widget.session.clicks == [(int(pixel[0]), int(pixel[1]), widget.click_class)]
    image.scale = (-0.5, 0.5)  # flipped: the plugin's TIFF writer still saves it (the tags hold sizes)
    path = napari.save_layers(str(tmp_path / "flipped.tif"), [viewer.layers["segmentation"]], plugin="napari-clis")[0]
    assert read_labels_metadata(path)["scale"] == [-0.5, 0.5]


def test_moving_a_click_moves_its_correction(segmented):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    y, x = _wrong_pixel(seg.data, truth, 1)
    clicks.add([y, x])
    widget.wait()
    assert seg.data[y, x] == 1
    target = np.argwhere((truth == 0) & (seg.data == 0))[0]
    clicks.data = np.array([target], float)  # a drag in select mode ends in the same data event
    widget.wait()
    assert widget.session.clicks == [(int(target[0]), int(target[1]), 1)]
    assert seg.data[target[0], target[1]] == 1
    np.testing.assert_array_equal(seg.data, widget.session.labels)


def test_thousands_of_clicks_at_once_update_once_without_error(segmented, messages):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.integers(0, truth.shape[0], 3000), rng.integers(0, truth.shape[1], 3000)])
    widget.set_click_class(1)
    clicks.add(pts)
    widget.wait()
    assert len(widget.session.clicks) == 3000
    assert seg.data[tuple(pts.T)].all()
    assert not messages["error"]


def test_a_points_layer_of_the_wrong_dimensionality_is_reported_and_nothing_is_lost(segmented, messages):
    viewer, widget, truth = segmented
    seg = viewer.layers["segmentation"]
    before = seg.data.copy()
    viewer.layers.remove(viewer.layers["clicks"])
    wrong = viewer.add_points(np.array([[0, 5, 5]], float), name="clicks", ndim=3,
                              features={"class": np.array([1])})
    wrong.metadata["napari_clis"] = "clicks"
    widget.apply_corrections()
    assert any("3D" in m for m in messages["error"])
    np.testing.assert_array_equal(seg.data, before)
    assert len(wrong.data) == 1


def test_learn_from_this_image_then_save_and_reload_the_model(segmented, qtbot, tmp_path, messages, monkeypatch):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    widget.session.learn_settings.steps = 4
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))
    infos = []
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(str(msg)))
    widget.controls.learn_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    outcome = infos + messages["warning"]
    assert any("Learned task 1" in m for m in outcome) or any("rolled back" in m for m in outcome), outcome
    assert not messages["error"]
    path = tmp_path / "mine.pt"
    widget.save_model(path)
    assert path.exists()
    widget.set_model(path)
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.session.source == str(path)
    assert len(widget.session.tasks) == len([m for m in infos if "Learned task" in m])


def test_the_learn_section_plots_tasks_and_mask_usage_and_lists_saved_models(segmented, qtbot, tmp_path, monkeypatch,
                                                                              messages, make_napari_viewer):
    viewer, widget, truth = segmented
    monkeypatch.setenv("NAPARI_CLIS_MODELS", str(tmp_path / "models"))
    # the pretrained task's mask, no task yet
    assert widget.controls.mask_plot.usage and widget.controls.task_plot.after == []
    assert sum(new for _, _, new, _ in widget.controls.mask_plot.usage) == 0
    session = widget.session
    _correct_by_painting(viewer.layers["segmentation"], truth)  # the user corrects the whole image, so learning
    session.learn_settings.steps = 6  # has something to gain: learning from the ground truth itself is kept
    widget.learn()
    widget.wait()
    assert len(session.tasks) == 1, widget.status  # (a rollback fails the test)
    record = session.tasks[0]
    plots = widget.controls
    assert plots.task_plot.after == [record.dice_after] and plots.task_plot.before == [record.dice_before]
    assert plots.mask_plot.task == record.task
    free, reserve = session.free_kernels  # what later tasks can still learn with is in view, not only in a notice
    assert free < reserve and widget.tasks_text.endswith(f"Room for new tasks: {round(100 * free / reserve)}%")
    assert f"Free kernels for new tasks: {free} of {reserve}." in widget.controls.tasks_label.tooltip
    # the task's line gives the figures its Learn message gave (not a Dice that reads the other way)
    assert f"gets {record.corrected_after:.0%} of the pixels you corrected right" in widget.tasks_text
    assert f"gets {record.corrected_after:.0%} of the pixels you corrected right" in widget.controls.status.tooltip
    image = widget.controls.task_plot.grab().toImage()  # the plot draws its point: some pixels are the "after" blue
    blue = [(x, y) for x in range(0, image.width(), 2) for y in range(0, image.height(), 2)
            if image.pixelColor(x, y).name() == "#42a5f5"]
    assert blue
    widget.save_path = ""
    widget.save_model()  # no path given: a new file in the models folder, listed and chosen in the Model list
    saved = list((tmp_path / "models").glob("nuclei-*.pt"))
    assert len(saved) == 1 and not messages["error"]
    assert widget.model == str(saved[0])
    other_viewer = make_napari_viewer()  # another window: it loads the saved file
    _, other = other_viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    assert str(saved[0]) in other.controls.model.choices
    other.set_model(saved[0])
    assert "Press Segment to use this model" in other.tasks_text  # its tasks show once it is loaded
    other.run(other_viewer.add_image(viewer.layers["he"].data, name="he", rgb=True))
    qtbot.waitUntil(lambda: not other.busy, timeout=60_000)
    assert len(other.session.tasks) == 1 and other.session.source == str(saved[0])
    # the image task 1 learned from
    assert other.status.endswith("\nUsed learned task 1: it was learned on this image.")


def test_long_names_break_inside_the_dock_instead_of_widening_it(make_napari_viewer):
    from napari_clis._widget import breakable

    name = "patient_0042_left_forearm_dermoscopy_2024_visit_03_flipped"
    assert breakable("Saved as " + name + ".pt in the models folder.").replace("\u200b", "") == (
        "Saved as " + name + ".pt in the models folder.")
    assert all(len(part) <= 24 for part in breakable(name + ".pt").split("\u200b"))
    assert breakable("short words stay as they are") == "short words stay as they are"
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    before = widget.controls.image.native.sizeHint().width()
    viewer.add_image(np.zeros((8, 8)), name=name * 3)
    assert widget.image.name == name * 3
    assert widget.controls.image.native.sizeHint().width() <= before  # elided, not widening (else 1148 px)


def test_the_status_line_says_which_task_segmented_the_image_and_why():
    from types import SimpleNamespace

    from napari_clis._widget import task_choice_text
    from napari_clis._widget._common import task_choice_detail

    def session(task, **choice):
        return SimpleNamespace(tasks=[object()], remembered=[], task=task, task_choice=choice)

    assert task_choice_text(None) == ""
    assert task_choice_text(SimpleNamespace(tasks=[], remembered=[], task=0, task_choice={})) == ""
    assert task_choice_text(session(2, nearest=2, known=False, agreement=0.953)) == (
        "\nUsed learned task 2: it was learned on a similar image.")
    assert task_choice_text(session(0, nearest=2, known=False, agreement=0.5)) == (
        "\nUsed the pretrained model: learned task 2 (from the most similar image) did not fit this image.")
    # an image unlike the training images takes the nearest learned task whatever it changes: the status says so
    # and how to go back (a task taught three clicks on an H&E tile broke the next tile's nuclei into pieces)
    unlike = task_choice_text(session(3, nearest=3, known=False, agreement=0.849, unfamiliar=True))
    assert unlike.startswith("\nUsed learned task 3: it was learned on a similar image, and it changes much of what")
    assert "agree on 85%" in unlike and "choose 'none (pretrained)' in Learned task" in unlike
    assert "whatever the agreement" in task_choice_detail(session(3, nearest=3, known=False, agreement=0.849,
                                                                   unfamiliar=True))
    assert task_choice_text(session(1, nearest=None, known=None, agreement=None, asked=True)) == (
        "\nUsed learned task 1, as chosen.")
    assert task_choice_text(session(0, nearest=None, known=None, agreement=None, asked=True)) == (
        "\nUsed the pretrained model, as chosen.")
    assert task_choice_text(session(1, nearest=1, known=True, agreement=None)) == (
        "\nUsed learned task 1: it was learned on this image.")
    # the numbers behind an automatic choice are in the status's tooltip, not in its text

    detail = task_choice_detail(session(0, nearest=2, known=False, agreement=0.5))
    assert "task 2" in detail and "0.50" in detail
    assert task_choice_detail(session(1, nearest=None, known=None, agreement=None, asked=True)) == ""


def test_cancel_while_learning_keeps_the_model(segmented, qtbot, messages):
    viewer, widget, truth = segmented
    widget.session.learn_settings.steps = 200
    net = widget.session.net
    widget.learn()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert any("cancelled" in m for m in messages["warning"])
    assert widget.session.net is net and widget.session.tasks == []


def test_learning_before_segmenting_says_what_to_do(make_napari_viewer, messages):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.learn()
    assert any("segment an image" in m for m in messages["warning"])
    widget.save_model()
    assert any("no model to save" in m for m in messages["warning"])
    assert not messages["error"]  # steps asked for out of order: warnings napari dismisses, not errors


def _correct_by_painting(seg, truth):
    for label in (1, 0):  # one brush stroke per class, as a person paints
        where = np.nonzero(((seg.data > 0) != truth) & (truth == label))
        with seg.block_history():
            seg.data_setitem(where, label)


def test_learning_autosaves_and_neither_another_device_nor_another_model_loses_the_tasks(segmented, qtbot, messages,
                                                                                       monkeypatch):
    import os
    from pathlib import Path

    import napari.utils.notifications as notifications

    viewer, widget, truth = segmented
    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(str(msg)))
    _correct_by_painting(viewer.layers["segmentation"], truth)
    widget.session.learn_settings.steps = 6
    widget.controls.learn_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    session = widget.session
    assert len(session.tasks) == 1, (infos, messages)
    saved = list(Path(os.environ["NAPARI_CLIS_MODELS"]).glob("*.pt"))  # saved after learning, without asking
    assert saved == [Path(session.autosave)]
    assert saved[0].name.startswith("nuclei-he-")  # the model and the image learned: series tell apart in Model
    assert any(f"Saved as {saved[0].name} in the models folder, now chosen in Model (the model you started from "
               "is unchanged)" in m for m in infos), infos
    judged = ("of the pixels you corrected right", "(nothing was corrected)")
    assert any("Learned task 1 from this image" in m and any(j in m for j in judged) for m in infos), infos
    # a long message (here a long unbroken path as well) wraps inside the dock instead of widening it over the canvas
    long = "Saved in /" + "a-very-long-folder-name/" * 20 + "model.pt. " + "More words follow. " * 20
    widget.controls.set_status(long)
    for label in (widget.controls.status, widget.controls.click_status, widget.controls.tasks_label):
        assert label.native.minimumSizeHint().width() < 400  # without wrapping: 5851 px for the status
    assert widget.model == str(saved[0])  # the Model list shows it, chosen

    widget.device = "cpu"  # another device: the same session moves, tasks, image and clicks stay
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.session is session and len(session.tasks) == 1 and not messages["error"]
    assert session.task == 1 and widget.status.endswith("\nUsed learned task 1: it was learned on this image.")

    # the Task list: the learned task is offered, and a chosen task segments the image regardless of the choice
    combo = widget.controls.task
    assert combo.choices == (-1, 0, 1)
    assert [combo.native.itemText(i) for i in range(combo.native.count())] == ["automatic", "none (pretrained)",
                                                                                "task 1"]
    widget.task = 0
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert session.task == 0 and widget.status.endswith("\nUsed the pretrained model, as chosen.")
    assert not messages["error"]
    combo.choices = [("auto", -1), ("0", 0), ("1", 1), ("5", 5)]  # a list offering a task the model lacks
    widget.task = 5
    widget.run(viewer.layers["he"])  # refused, said why
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert any("task 5 does not exist" in m for m in messages["error"]) and session.task == 0
    messages["error"].clear()
    combo.choices = widget.learn_panel.task_choices  # the tasks of the model in use again
    widget.task = 1

    widget.set_model("skin-lesion")  # another model: a new session, and the user is told where
    # until it is loaded, the Task list offers none of the old model's tasks and the panel says so
    assert widget.controls.task.value == -1 and widget.controls.task.choices == (-1, 0)
    assert "Press Segment to use this model" in widget.tasks_text
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.session is not session and any(str(saved[0]) in m for m in infos)
    widget.set_model(saved[0])
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert len(widget.session.tasks) == 1 and not messages["error"]


def test_tasks_that_could_not_be_saved_block_switching_the_model_until_saved(segmented, qtbot, messages, tmp_path,
                                                                          monkeypatch):
    viewer, widget, truth = segmented
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NAPARI_CLIS_MODELS", str(blocker / "models"))  # cannot be made: no autosave
    _correct_by_painting(viewer.layers["segmentation"], truth)
    widget.session.learn_settings.steps = 6
    widget.controls.learn_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    session = widget.session
    assert len(session.tasks) == 1 and session.autosave is None
    assert any("not saved automatically" in m for m in messages["warning"])
    widget.set_model("skin-lesion")
    widget.run(viewer.layers["he"])
    assert widget.session is session and any("not saved" in m for m in messages["error"])
    widget.save_model(tmp_path / "mine.pt")  # once saved, the switch goes ahead
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.session is not session and widget.session.model_name == "skin-lesion"


def test_a_failed_autosave_keeps_the_task_says_it_is_not_saved_and_blocks_switching_until_saved(
        segmented, qtbot, messages, tmp_path, monkeypatch):
    import napari_clis.checkpoint as checkpoint

    viewer, widget, truth = segmented
    real, failing = checkpoint.atomic_write_bytes, [True]

    def full_disk(*args, **kwargs):  # the models folder exists, but nothing can be written there
        if failing[0]:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_disk)
    _correct_by_painting(viewer.layers["segmentation"], truth)
    widget.session.learn_settings.steps = 6
    widget.controls.learn_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    session = widget.session
    assert len(session.tasks) == 1 and session.autosave is None, "the learned task was thrown away"
    assert any("Learned task 1" in m and "NOT saved" in m and "No space left" in m for m in messages["warning"])
    assert "NOT saved" in widget.status and widget.controls.task.choices == (-1, 0, 1)
    widget.set_model("skin-lesion")  # the unsaved task blocks another model, as any unsaved task does
    widget.run(viewer.layers["he"])
    assert widget.session is session and any("not saved" in m for m in messages["error"])
    failing[0] = False
    widget.save_model(tmp_path / "mine.pt")
    assert len(checkpoint.load_model(tmp_path / "mine.pt")[1]["learned_tasks"]) == 1


def test_segmenting_the_next_image_keeps_the_corrected_segmentation_and_clicks_of_the_last(segmented, qtbot,
                                                                                          nuclei_fluo):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))
    widget.wait()
    corrected = seg.data.copy()
    other = viewer.add_image(nuclei_fluo[0], name="fluo")
    widget.run(other)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    kept, kept_clicks = viewer.layers["segmentation [he]"], viewer.layers["clicks [he]"]
    np.testing.assert_array_equal(kept.data, corrected)
    np.testing.assert_allclose(kept.scale, viewer.layers["he"].scale)
    assert len(kept_clicks.data) == 1 and list(kept_clicks.features["class"]) == [1]
    assert viewer.layers["segmentation"] is seg and seg.data.shape == nuclei_fluo[0].shape  # the live one moved on
    assert len(viewer.layers["clicks"].data) == 0
    widget.run(viewer.layers["he"])  # back: its kept clicks are the clicks again, and correct it as before
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "clicks [he]" not in viewer.layers and len(viewer.layers["clicks"].data) == 1
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, corrected)
    assert len(viewer.layers) == 9  # back and forth without new corrections adds nothing more
    widget.set_click_class(0)
    clicks = viewer.layers["clicks"]
    clicks.add(list(_wrong_pixel(viewer.layers["segmentation"].data, truth, 0)))  # corrected once more
    widget.wait()
    corrected_again = viewer.layers["segmentation"].data.copy()
    assert (corrected_again != corrected).any()
    widget.run(other)  # and left again: the kept copy is brought up to date, not joined by a second one
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    kept_layers = [lyr.name for lyr in viewer.layers if lyr.name.startswith("segmentation [")]
    assert kept_layers == ["segmentation [he]"]
    np.testing.assert_array_equal(viewer.layers["segmentation [he]"].data, corrected_again)
    assert len(viewer.layers["clicks [he]"].data) == 2 and len(viewer.layers) == 10


def test_a_kept_copy_someone_edited_is_never_overwritten_and_a_stack_keeps_the_slices_not_segmented_again(
        make_napari_viewer, qtbot, nuclei_fluo, nuclei_he):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_fluo
    stack = viewer.add_image(np.stack([image[::-1], image[:, ::-1], image]), name="zstack")
    other = viewer.add_image(nuclei_he[0], name="he", rgb=True)

    def segment(layer, all_slices=False):
        widget.all_slices = all_slices
        widget.run(layer)
        qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)

    viewer.dims.set_current_step(0, 2)
    segment(stack, all_slices=True)
    viewer.layers["clicks"].add([2, *_wrong_pixel(viewer.layers["segmentation"].data[2], truth, 1)])
    widget.wait()
    first = viewer.layers["segmentation"].data.copy()
    segment(other)  # leave the stack: all three slices are kept
    kept = viewer.layers["segmentation [zstack]"]
    np.testing.assert_array_equal(kept.data, first)
    segment(stack)  # back, the slice on screen only (2), corrected once more, and left again
    widget.set_click_class(0)
    viewer.layers["clicks"].add([2, *_wrong_pixel(viewer.layers["segmentation"].data[2], truth, 0)])
    widget.wait()
    again = viewer.layers["segmentation"].data[2].copy()
    segment(other)
    assert [lyr.name for lyr in viewer.layers if lyr.name.startswith("segmentation [")] == ["segmentation [zstack]"]
    np.testing.assert_array_equal(kept.data[:2], first[:2])  # not segmented in the second visit: as they were
    np.testing.assert_array_equal(kept.data[2], again)

    kept.data[0, :5, :5] = 1  # the user polishes the kept copy
    polished = kept.data.copy()
    segment(stack)
    viewer.layers["clicks"].add([2, 10, 10])
    segment(other)
    np.testing.assert_array_equal(viewer.layers["segmentation [zstack]"].data, polished)  # theirs: untouched
    assert len([lyr for lyr in viewer.layers if lyr.name.startswith("segmentation [zstack]")]) == 2


def test_an_image_given_data_of_another_shape_is_another_image_and_its_corrections_are_kept(segmented, qtbot,
                                                                                            messages):
    viewer, widget, truth = segmented
    seg, clicks, image = viewer.layers["segmentation"], viewer.layers["clicks"], viewer.layers["he"]
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))
    widget.wait()
    corrected, old = seg.data.copy(), image.data
    image.data = old[20:180, 10:230]  # the layer now holds another image
    widget.learn()  # not from the old image's segmentation read as this one's annotations
    assert any("has changed since it was segmented" in m for m in messages["warning"]) and not widget.busy
    clicks.add([5, 5])  # not applied to the old image's segmentation: the status says to segment again
    widget.wait()
    assert "has changed since it was segmented" in widget.click_status
    np.testing.assert_array_equal(seg.data, corrected)
    widget.run(image)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    np.testing.assert_array_equal(viewer.layers["segmentation [he]"].data, corrected)  # kept, not dropped
    assert len(viewer.layers["clicks [he]"].data) == 2 and len(viewer.layers["clicks"].data) == 0
    assert seg.data.shape == (160, 220) and widget.session.clicks == []
    image.data = old  # the first image again: its clicks come back with it
    widget.run(image)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert len(viewer.layers["clicks"].data) == 2 and seg.data.shape == old.shape[:2]


def _disc(shape, centre, radius=3):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_undo_takes_a_painted_stroke_back_and_redo_brings_it_back(segmented, qtbot):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    y, x = _wrong_pixel(seg.data, truth, 1)  # a missed nucleus: paint it, as one mouse stroke
    disc = _disc(seg.data.shape, (y, x)) & (seg.data == 0)
    with seg.block_history():
        seg.data_setitem(np.nonzero(disc), 1)
    widget.wait()
    assert (widget.painted[disc] == 1).all() and (seg.data[disc] == 1).all()
    seg.undo()  # napari's Ctrl-Z
    widget.wait()
    assert (widget.painted[disc] == -1).all(), "an undone stroke stayed an annotation"
    painted = widget.session.interaction.painted  # None: nothing painted
    assert painted is None or (painted[disc] == -1).all()
    np.testing.assert_array_equal(seg.data, widget.session.labels)  # the propagation, fresh
    clicks.add([y, x])  # a click there now fills its region: no locked hole where the stroke was
    widget.wait()
    region = widget.session.interaction.graph.regions == widget.session.interaction.graph.regions[y, x]
    assert seg.data[y, x] == 1 and (widget.painted[region] == -1).all()
    seg.redo()
    widget.wait()
    assert (widget.painted[disc] == 1).all() and (seg.data[disc] == 1).all()
    # a single paint call: napari announces it before writing the pixels; it is an annotation all the same
    by, bx = _wrong_pixel(seg.data, truth, 0)
    seg.selected_label, seg.brush_size = 0, 3
    seg.paint((by, bx), 0)
    qtbot.waitUntil(lambda: widget.painted[by, bx] == 0, timeout=5_000)
    seg.undo()
    widget.wait()
    assert widget.painted[by, bx] == -1 and (widget.painted[disc] == 1).all()


def test_segmenting_the_same_image_again_keeps_its_painted_edits(segmented, qtbot):
    viewer, widget, truth = segmented
    seg = viewer.layers["segmentation"]
    y, x = _wrong_pixel(seg.data, truth, 1)
    disc = _disc(seg.data.shape, (y, x)) & (seg.data == 0)
    with seg.block_history():
        seg.data_setitem(np.nonzero(disc), 1)
    widget.samples = 2  # e.g. fewer samples: the same image segmented again
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert (seg.data[disc] == 1).all() and (widget.session.interaction.painted[disc] == 1).all()
    seg.undo()  # nothing from before the new segmentation comes back
    assert (seg.data[disc] == 1).all()


def test_a_newly_opened_or_selected_image_is_the_one_segmented_next(segmented, qtbot, nuclei_fluo):
    viewer, widget, _ = segmented
    he = viewer.layers["he"]
    assert widget.image is he  # the layers the widget adds (an image among them) are never chosen
    fluo = viewer.add_image(nuclei_fluo[0], name="fluo")  # File > Open: on top, and the one to segment
    assert widget.image is fluo
    for name in ("uncertainty", "segmentation", "superpixels"):  # made again for the next image: still not chosen
        viewer.layers.remove(viewer.layers[name])
    widget.run(fluo)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "segmentation" in viewer.layers and widget.image is fluo
    viewer.layers.selection.active = he
    assert widget.image is he
    viewer.layers.selection.active = viewer.layers["uncertainty"]  # the widget's own output is never the input
    assert widget.image is he


def test_images_are_told_apart_by_layer_not_by_name(segmented, qtbot, nuclei_fluo):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))
    corrected = seg.data.copy()
    viewer.layers.remove(viewer.layers["he"])
    other = viewer.add_image(nuclei_fluo[0], name="he")  # another image, by the same name
    widget.run(other)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    np.testing.assert_array_equal(viewer.layers["segmentation [he]"].data, corrected)  # kept, not overwritten
    assert len(viewer.layers["clicks"].data) == 0 and len(viewer.layers["clicks [he]"].data) == 1
    n_layers = len(viewer.layers)
    viewer.layers["clicks"].add([10, 10])
    other.name = "renamed"  # the same image under a new name keeps its clicks and makes no copies
    widget.run(other)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert len(viewer.layers) == n_layers and len(viewer.layers["clicks"].data) == 1


def test_closing_and_reopening_the_dock_hands_the_layers_to_the_new_widget(make_napari_viewer, qtbot, nuclei_fluo):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    dock, first = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image = nuclei_fluo[0]
    first.run(viewer.add_image(image, name="a"))
    qtbot.waitUntil(lambda: not first.busy, timeout=60_000)
    labels_a, in_use = first.session.labels.copy(), first.session
    first.samples, first.suggest = 3, False  # options changed after the last Segment: the reopened dock keeps them
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    QApplication.processEvents()
    assert first.retired
    _, second = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    assert second.status.startswith("Going on with the nuclei model") and "Press Segment" in second.status
    assert (second.samples, second.suggest, second.object_size) == (3, False, 0.0)
    second.run(viewer.add_image(image[::-1].copy(), name="b"))
    qtbot.waitUntil(lambda: not second.busy, timeout=60_000)
    assert second.session.n_samples == 3 and len(viewer.layers["suggestions"].data) == 0
    seg = viewer.layers["segmentation"]
    y, x = np.argwhere(seg.data == 0)[len(np.argwhere(seg.data == 0)) // 2]
    with seg.block_history():
        seg.data_setitem(np.nonzero(_disc(seg.data.shape, (y, x))), 1)
    second.wait()
    assert (second.painted >= 0).any()  # the new widget took the stroke
    np.testing.assert_array_equal(seg.data, second.session.labels)  # and nothing of the closed one's image came back
    assert not np.array_equal(seg.data, labels_a)
    assert second.session is in_use and first.session is None  # the reopened dock goes on with the model in use


def test_zero_mc_samples_hides_the_empty_map_and_suggests_nothing(segmented, qtbot):
    viewer, widget, _ = segmented
    widget.samples = 0
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert not viewer.layers["uncertainty"].visible and len(viewer.layers["suggestions"].data) == 0
    assert "Uncertainty samples is 0" in widget.status
    widget.samples = 8
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert len(viewer.layers["suggestions"].data) >= 3
    assert not viewer.layers["uncertainty"].visible  # hidden by default: 'Show uncertainty' shows it
    widget.show_uncertainty = True
    assert viewer.layers["uncertainty"].visible


def test_a_model_saved_without_an_extension_gets_pt(segmented, tmp_path):
    _, widget, _ = segmented
    widget.save_model(str(tmp_path / "mine"))
    assert (tmp_path / "mine.pt").is_file()


def test_painted_edits_survive_closing_and_reopening_the_dock(make_napari_viewer, qtbot, nuclei_fluo):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    dock, first = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_fluo
    a = viewer.add_image(image, name="a")
    first.run(a)
    qtbot.waitUntil(lambda: not first.busy, timeout=60_000)
    seg = viewer.layers["segmentation"]
    one = _disc(seg.data.shape, _wrong_pixel(seg.data, truth, 1)) & (seg.data == 0)
    with seg.block_history():
        seg.data_setitem(np.nonzero(one), 1)
    viewer.window.remove_dock_widget(dock)
    QApplication.processEvents()
    dock, second = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    assert second.status.endswith("the clicks and painted edits made so far are kept.")  # it says so
    two = _disc(seg.data.shape, _wrong_pixel(np.where(one, 1, seg.data), truth, 0)) & (seg.data == 1) & ~one
    with seg.block_history():  # painted before the new widget has segmented anything
        seg.data_setitem(np.nonzero(two), 0)
    second.run(a)
    qtbot.waitUntil(lambda: not second.busy, timeout=60_000)
    assert (seg.data[one] == 1).all() and (seg.data[two] == 0).all()
    assert (second.session.interaction.painted[one] == 1).all()
    viewer.window.remove_dock_widget(dock)  # once more, then the next image: the corrected one is kept
    QApplication.processEvents()
    _, third = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    third.run(viewer.add_image(image[::-1].copy(), name="b"))
    qtbot.waitUntil(lambda: not third.busy, timeout=60_000)
    kept = viewer.layers["segmentation [a]"].data
    assert (kept[one] == 1).all() and (kept[two] == 0).all()


def _all_slices_of(make_napari_viewer, qtbot, slices, shown=2):
    """A viewer with the widget and a stack of ``slices``, all segmented, slice ``shown`` on screen (the target)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    layer = viewer.add_image(np.stack(slices), name="stack")
    viewer.dims.set_point(0, shown)
    widget.all_slices = True
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    return viewer, widget, layer


def test_a_run_over_all_slices_keeps_the_clicks_of_every_slice_and_their_note_shows_once(
        make_napari_viewer, qtbot, nuclei_fluo, messages):
    image, truth = nuclei_fluo
    viewer, widget, layer = _all_slices_of(make_napari_viewer, qtbot, [image[::-1], image[:, ::-1], image])
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    y, x = _wrong_pixel(seg.data[2], truth, 1)
    clicks.add([2, y, x])  # a correction of slice 2, the one on screen
    widget.wait()
    corrected = seg.data[2].copy()
    assert corrected[y, x] == 1
    viewer.dims.set_point(0, 0)
    widget.run(layer)  # All slices is still ticked: every slice again, slice 0 (on screen) last
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    np.testing.assert_array_equal(seg.data[2], corrected)  # slice 2 keeps its click (it lost it before)
    assert widget.target[1] == (0,)
    assert sum("other slices" in w for w in messages["warning"]) == 1
    for want in (1, 0):  # clicks on slice 0: the note about slice 2's click is not shown again at each
        widget.set_click_class(want)
        clicks.add([0, *_wrong_pixel(seg.data[0], truth, want)])
        widget.wait()
    assert sum("other slices" in w for w in messages["warning"]) == 1
    note = next(w for w in messages["warning"] if "other slices" in w)
    assert note.startswith("1 click(s) on other slices apply once that slice is the one segmented (go to it and "
                           "press Segment")


def test_a_stroke_on_another_slice_is_kept_for_that_slice_and_undo_takes_it_back(make_napari_viewer, qtbot,
                                                                                 nuclei_fluo):
    image, truth = nuclei_fluo
    viewer, widget, layer = _all_slices_of(make_napari_viewer, qtbot, [image, image[::-1], image[:, ::-1]])
    assert widget.target[1] == (2,)
    viewer.dims.set_point(0, 0)  # the user goes to slice 0 and paints there
    seg = viewer.layers["segmentation"]
    disc = _disc(image.shape, _wrong_pixel(seg.data[0], truth, 1)) & (seg.data[0] == 0)
    where = np.nonzero(disc)
    with seg.block_history():
        seg.data_setitem((np.zeros(len(where[0]), int),) + where, 1)
    assert "Painted on slice (0,)" in widget.click_status
    widget.all_slices = False
    widget.run(layer)  # as the message says: segment that slice
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.target[1] == (0,) and (seg.data[0][disc] == 1).all()
    assert (widget.session.interaction.painted[disc] == 1).all()
    viewer.dims.set_point(0, 1)  # a stroke on slice 1, then undone: not an annotation of slice 1
    with seg.block_history():
        seg.data_setitem((np.ones(len(where[0]), int),) + where, 1)
    key = (source_id(layer), (1,))
    assert (widget.ledger.painted[key][disc] == 1).all()
    seg.undo()
    assert (widget.ledger.painted[key] == -1).all()


def test_a_run_over_all_slices_uses_each_slices_painted_edits_as_annotations(make_napari_viewer, qtbot,
                                                                              nuclei_fluo):
    image, truth = nuclei_fluo
    viewer, widget, layer = _all_slices_of(make_napari_viewer, qtbot, [image, image[::-1], image[:, ::-1]])
    seg = viewer.layers["segmentation"]
    viewer.dims.set_point(0, 0)
    disc = _disc(image.shape, _wrong_pixel(seg.data[0], truth, 1), radius=5) & (seg.data[0] == 0)
    where = np.nonzero(disc)
    with seg.block_history():  # a stroke on slice 0, which is not the one corrected last
        seg.data_setitem((np.zeros(len(where[0]), int),) + where, 1)
    viewer.dims.set_point(0, 2)
    widget.run(layer)  # All slices again: slice 0 comes out as when it is segmented alone
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    all_run = seg.data[0].copy()
    assert (all_run[disc] == 1).all()
    viewer.dims.set_point(0, 0)
    widget.all_slices = False
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    np.testing.assert_array_equal(all_run, seg.data[0])  # the stroke propagated the same way in both


def test_a_click_made_while_slices_are_segmented_waits_for_the_run_and_lands_on_its_slice(make_napari_viewer, qtbot,
                                                                                         nuclei_fluo):
    import threading

    image, truth = nuclei_fluo
    slices = [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
    viewer, widget, layer = _all_slices_of(make_napari_viewer, qtbot, slices, shown=3)
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    alone = seg.data.copy()
    session = widget.session
    real, held, go_on = session.segment_steps, threading.Event(), threading.Event()

    def segment_and_hold(*args, **kwargs):  # the worker holds after slice 1, the GUI showing slice 0's result
        yield from real(*args, **kwargs)
        if np.array_equal(args[0], slices[1]):
            held.set()
            go_on.wait(30)

    session.segment_steps = segment_and_hold
    widget.run(layer)
    qtbot.waitUntil(held.is_set, timeout=60_000)
    qtbot.wait(200)
    y, x = _wrong_pixel(alone[3], truth[::-1, ::-1], 1)
    clicks.add([3, y, x])  # on the slice on screen, while the worker holds slice 1's image
    assert "applied when it is done" in widget.click_status
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    for k in range(3):
        np.testing.assert_array_equal(seg.data[k], alone[k])  # no slice took another's segmentation
    assert seg.data[3][y, x] == 1 and widget.session.clicks == [(y, x, 1)]


def test_a_stroke_in_the_3d_view_is_kept_on_every_slice_it_touched_and_undone_as_one(make_napari_viewer, qtbot,
                                                                                     nuclei_fluo):
    from scipy import ndimage

    image, truth = nuclei_fluo  # every slice segmented: each has what was written there
    viewer, widget, layer = _all_slices_of(make_napari_viewer, qtbot,
                                           [image, image[::-1], image[:, ::-1], image[::-1, ::-1]])
    seg = viewer.layers["segmentation"]
    viewer.dims.ndisplay = 3  # the view shows no single slice: a stroke may cross several
    free = (seg.data[0] == 0) & (seg.data[1] == 0)  # background on both slices: the stroke changes every pixel
    depth = ndimage.distance_transform_edt(free)
    disc = _disc(image.shape, np.unravel_index(int(depth.argmax()), depth.shape)) & free
    where = np.nonzero(disc)
    with seg.block_history():
        for z in (0, 1):
            seg.data_setitem((np.full(len(where[0]), z),) + where, 1)
    qtbot.waitUntil(lambda: "Painted on slice(s) 0, 1" in widget.click_status, timeout=5_000)
    painted = widget.ledger.painted
    for z in (0, 1):
        assert (painted[(source_id(layer), (z,))][disc] == 1).all(), f"slice {z}'s stroke was not kept"
    assert (source_id(layer), (3,)) not in painted  # a slice the stroke did not touch gets no painted map
    seg.undo()  # napari undoes the stroke on both slices; so do the annotations
    widget.wait()
    for z in (0, 1):
        assert (painted[(source_id(layer), (z,))] == -1).all()
    seg.redo()
    widget.wait()
    assert all((painted[(source_id(layer), (z,))][disc] == 1).all() for z in (0, 1))
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, 1)
    widget.all_slices = False
    widget.run(layer)  # segmenting slice 1 keeps the stroke painted there in 3D
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert (seg.data[1][disc] == 1).all()


def test_a_stroke_during_a_background_propagation_is_kept(segmented, qtbot, monkeypatch):
    viewer, widget, truth = segmented
    monkeypatch.setattr(Settings, "async_pixels", 16)  # this image now propagates in a worker, as a large one would
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))  # the propagation starts in the background
    assert widget.propagating
    disc = _disc(seg.data.shape, _wrong_pixel(seg.data, truth, 0)) & (seg.data == 1)
    with seg.block_history():  # a stroke before the propagation's result is written
        seg.data_setitem(np.nonzero(disc), 0)
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30_000)
    qtbot.wait(100)
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30_000)
    assert (seg.data[disc] == 0).all() and (widget.painted[disc] == 0).all()
    assert (widget.session.interaction.painted[disc] == 0).all()
    seg.undo()  # and the stroke is one undo entry, as without the background work
    qtbot.waitUntil(lambda: not widget.propagating, timeout=30_000)
    assert (widget.painted[disc] == -1).all()


def test_another_image_in_the_layer_leaves_no_stale_copy_to_misread_strokes_against(make_napari_viewer, qtbot,
                                                                                   nuclei_fluo):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image = nuclei_fluo[0][:128, :128]
    a = viewer.add_image(np.stack([image, image[::-1], image[:, ::-1]]), name="a")
    b = viewer.add_image(np.stack([image[::-1, ::-1]] * 3), name="b")
    widget.all_slices = True
    widget.run(a)
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    widget.run(b)  # the layers move on to b (same shape): they are reset
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    widget.all_slices = False
    viewer.dims.set_point(0, 0)
    widget.run(a)  # back to a, slice 0 only: slice 1 of the layer shows nothing
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    viewer.dims.set_point(0, 1)
    seg = viewer.layers["segmentation"]
    with seg.block_history():  # a 4-pixel stroke on slice 1
        seg.data_setitem((np.array([1, 1, 1, 1]), np.array([5, 5, 6, 6]), np.array([5, 6, 5, 6])), 1)
    painted = widget.ledger.painted[(source_id(a), (1,))]
    assert int((painted >= 0).sum()) == 4  # the stroke, not everything the old copy of slice 1 differed in


def test_a_label_that_is_not_a_class_is_replaced_by_the_propagation(segmented, messages):
    viewer, widget, truth = segmented
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    box = (slice(4, 8), slice(4, 8))
    with seg.block_history():
        seg.data_setitem(np.nonzero(np.pad(np.ones((4, 4), bool), ((4, seg.data.shape[0] - 8),
                                                                  (4, seg.data.shape[1] - 8)))), 7)
    widget.wait()
    assert any("not a class" in m for m in messages["warning"])
    clicks.add(list(_wrong_pixel(seg.data, truth, 1)))
    widget.wait()
    assert (seg.data[box] < 2).all() and (widget.painted[box] == -1).all()


def test_a_dock_closed_while_it_segments_stays_out_of_the_next_widgets_way(make_napari_viewer, qtbot, nuclei_he):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    dock, first = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_he
    layer = viewer.add_image(image, name="he", rgb=True)
    first.run(layer)
    viewer.window.remove_dock_widget(dock)  # closed while it segments
    QApplication.processEvents()
    assert first.retired
    qtbot.waitUntil(lambda: not first.busy, timeout=60_000)  # its result arrives after it was closed
    # its result went nowhere: no layer was made for it, and nothing of it listens to the viewer's layers
    assert "segmentation" not in viewer.layers and "clicks" not in viewer.layers, "a closed widget wrote its result"
    assert not first.connected, "a closed widget hooked the layers again"
    _, second = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    second.set_model("skin-lesion")  # another model: the two widgets' results would differ
    second.run(layer)
    qtbot.waitUntil(lambda: not second.busy, timeout=60_000)
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    for want in (1, 0):
        clicks.add(list(_wrong_pixel(seg.data, truth, want)))
        second.wait()
    assert not (second.painted >= 0).any(), "the user painted nothing"
    np.testing.assert_array_equal(seg.data, second.session.labels)
    assert first.click_status == ""


def test_cancel_pressed_as_learning_ends_keeps_and_lists_the_task(segmented, qtbot, messages, monkeypatch):
    import threading

    import napari.utils.notifications as notifications

    viewer, widget, truth = segmented
    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(str(msg)))
    _correct_by_painting(viewer.layers["segmentation"], truth)
    session = widget.session
    real, finished, go_on = session.learn, threading.Event(), threading.Event()

    def learn_then_wait(**kwargs):  # every step done: the cancel comes too late to stop it
        record = real(steps=6)
        finished.set()
        go_on.wait(30)
        return record

    monkeypatch.setattr(session, "learn", learn_then_wait)
    widget.learn()
    qtbot.waitUntil(finished.is_set, timeout=120_000)
    widget.cancel()
    go_on.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert len(session.tasks) == 1
    assert widget.tasks_text.startswith("1 task learned.") and "\ntask 1 (" in widget.tasks_text
    assert widget.controls.task_plot.after
    assert any(m.startswith("Learning had finished when Cancel was pressed") for m in infos), infos
    assert widget.status.startswith("Learning had finished")


def test_autosave_does_not_overwrite_a_model_file_another_window_wrote(segmented, qtbot, messages):
    from pathlib import Path

    from napari_clis import ClisSession

    viewer, widget, truth = segmented
    widget.save_path = ""
    widget.save_model()  # a file in the models folder, chosen: the one learning keeps up to date
    path = Path(widget.model)
    assert path.is_file() and Path(widget.session.autosave) == path
    other = ClisSession.from_pretrained("nuclei", device="cpu")  # another window saves its model over it
    other.remembered.append(([0.0] * 128, 0))
    other.save(path)
    theirs = path.read_bytes()
    _correct_by_painting(viewer.layers["segmentation"], truth)
    widget.session.learn_settings.steps = 6
    widget.learn()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert len(widget.session.tasks) == 1 and path.read_bytes() == theirs
    mine = Path(widget.session.autosave)
    assert mine != path and len(ClisSession.load(mine).tasks) == 1
    assert any("written by another window or program" in m and mine.name in m for m in messages["warning"])
    other.save(mine)  # and over that one too: the task is in no file now, so another model is refused
    widget.set_model("skin-lesion")
    widget.run(viewer.layers["he"])
    assert widget.session.model_name == "nuclei" and any("wrote over its file" in m for m in messages["error"])


def test_the_model_in_use_stays_chosen_when_its_file_is_deleted_and_its_tasks_are_kept(segmented, qtbot, messages,
                                                                                     nuclei_fluo):
    from pathlib import Path

    viewer, widget, truth = segmented
    widget.save_path = ""
    widget.save_model()
    path = Path(widget.model)
    combo = widget.controls.model.native
    assert [combo.itemText(i) for i in range(combo.count())][-1] == "Model file…"  # saved models listed above it
    _correct_by_painting(viewer.layers["segmentation"], truth)
    widget.session.learn_settings.steps = 6
    widget.learn()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    session = widget.session
    assert len(session.tasks) == 1 and list(path.parent.glob("*.pt")) == [path]  # learning updated the saved file
    path.unlink()  # tidied away in a file manager
    viewer.add_image(nuclei_fluo[0], name="fluo")  # the lists refresh
    assert widget.model == str(path) and "file is gone" in widget.controls.model.native.currentText()
    widget.set_model("skin-lesion")
    widget.run(viewer.layers["he"])
    assert widget.session is session and any("is gone" in m for m in messages["error"])
    widget.save_model(path)  # saved again: the switch goes ahead
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.session.model_name == "skin-lesion"


def test_another_model_chosen_while_learning_stays_chosen_and_a_second_press_says_what_runs(segmented, qtbot,
                                                                                           messages, monkeypatch):
    import napari.utils.notifications as notifications

    viewer, widget, truth = segmented
    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(str(msg)))
    _correct_by_painting(viewer.layers["segmentation"], truth)
    session = widget.session
    session.learn_settings.steps = 6
    widget.learn()
    widget.run()  # Segment pressed while it learns
    assert "Learning is still running; wait, or press Cancel." in infos
    assert widget.status.startswith("Learning from")  # still says what runs
    widget.set_model("skin-lesion")
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert len(session.tasks) == 1 and widget.model == "skin-lesion"  # the user's choice stays
    widget.run(viewer.layers["he"])
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.session.model_name == "skin-lesion" and any(str(session.autosave) in m for m in infos)


def test_closing_the_viewer_while_it_learns_raises_nothing_and_the_task_is_saved(make_napari_viewer, qtbot,
                                                                               nuclei_he, messages):
    import os
    from pathlib import Path

    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_he
    widget.run(viewer.add_image(image, name="he", rgb=True))
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    _correct_by_painting(viewer.layers["segmentation"], truth)
    widget.session.learn_settings.steps = 6
    widget.learn()
    qtbot.wait(400)  # a few progress ticks
    viewer.close()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    for _ in range(5):  # any late timer tick or callback would touch deleted Qt widgets here
        QApplication.processEvents()
        qtbot.wait(250)
    assert widget.retired and not messages["error"] and not messages["warning"]
    assert len(list(Path(os.environ["NAPARI_CLIS_MODELS"]).glob("*.pt"))) == 1


@pytest.mark.parametrize("save_fails", [False, True])
def test_a_learn_that_ends_after_the_dock_closed_is_taken_over_by_the_reopened_dock(make_napari_viewer, qtbot,
                                                                                   nuclei_he, messages,
                                                                                   monkeypatch, save_fails):
    import os
    from pathlib import Path

    import napari.utils.notifications as notifications
    from qtpy.QtWidgets import QApplication

    import napari_clis.checkpoint as checkpoint
    from napari_clis import ClisSession

    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(str(msg)))
    viewer = make_napari_viewer()
    dock, first = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    image, truth = nuclei_he
    layer = viewer.add_image(image, name="he", rgb=True)
    first.run(layer)
    qtbot.waitUntil(lambda: not first.busy, timeout=60_000)
    first.save_path = ""
    first.save_model()  # the model's file in the models folder: learning keeps it up to date
    path = Path(first.model)
    if save_fails:  # the disk fills up while it learns
        real = checkpoint.atomic_write_bytes
        monkeypatch.setattr(checkpoint, "atomic_write_bytes",
                            lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    _correct_by_painting(viewer.layers["segmentation"], truth)
    first.session.learn_settings.steps = 6
    first.learn()
    viewer.window.remove_dock_widget(dock)  # closed while it learns
    QApplication.processEvents()
    qtbot.waitUntil(lambda: not first.busy, timeout=120_000)
    if save_fails:
        assert any("Learned task 1 (after the widget was closed). It is NOT saved" in m for m in messages["warning"])
        monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    else:
        assert any(f"Learned task 1 (after the widget was closed). Saved as {path.name}" in m for m in infos), infos
    _, second = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    assert len(second.session.tasks) == 1 and second.model == str(path)
    assert second.tasks_text.startswith("1 task learned.") and "\ntask 1 (" in second.tasks_text
    if save_fails:  # not saved anywhere: another model is refused until it is
        second.set_model("skin-lesion")
        second.run(layer)
        assert any("not saved in any file" in m for m in messages["error"])
        second.set_model(path)
    second.run(layer)
    qtbot.waitUntil(lambda: not second.busy, timeout=60_000)
    second.learn()
    qtbot.waitUntil(lambda: not second.busy, timeout=120_000)
    assert not any("written by another window" in m for m in messages["warning"] + infos)
    assert list(Path(os.environ["NAPARI_CLIS_MODELS"]).glob("*.pt")) == [path]  # one file, kept up to date
    assert len(ClisSession.load(path).tasks) == len(second.session.tasks) >= 1  # every task learned is in it


def test_a_panel_replaced_by_a_newer_one_on_the_same_window_does_nothing_and_says_so(make_napari_viewer, qtbot,
                                                                                   nuclei_he, messages):
    from napari_clis._widget import SegmentWidget  # made from a script, not through napari's plugin menu

    viewer = make_napari_viewer()
    first = SegmentWidget(viewer)
    viewer.window.add_dock_widget(first)
    layer = viewer.add_image(nuclei_he[0], name="he", rgb=True)
    first.run(layer)
    qtbot.waitUntil(lambda: not first.busy, timeout=60_000)
    session = first.session
    second = SegmentWidget(viewer)  # made from a script: the first stays on screen
    viewer.window.add_dock_widget(second)
    assert second.session is session and first.session is None
    assert not first.controls.run_button.enabled and "replaced" in first.status
    for action in (first.run, first.learn, first.save_model, first.clear_clicks):
        action()
    assert len(messages["error"]) == 4 and all("replaced by a newer one" in m for m in messages["error"])
    assert not first.busy and second.session is session


def test_a_listed_model_deleted_before_it_is_chosen_leaves_the_list_and_the_model_in_use_stays(segmented, qtbot,
                                                                                              messages, nuclei_fluo):
    import shutil
    from pathlib import Path

    viewer, widget, _ = segmented
    widget.save_path = ""
    widget.save_model()
    in_use, session = widget.model, widget.session
    copy = Path(in_use).with_name("copy.pt")
    shutil.copy(in_use, copy)
    viewer.add_image(nuclei_fluo[0], name="fluo")  # the list refreshes: the copy is listed
    widget.set_model(copy)
    copy.unlink()  # deleted in a file manager before Segment
    widget.run(viewer.layers["he"])
    assert any("does not exist" in m for m in messages["error"]) and widget.session is session
    assert str(copy) not in widget.controls.model.choices and widget.model == in_use
    assert widget.controls.model.native.itemText(widget.controls.model.native.count() - 1) == "Model file…"
