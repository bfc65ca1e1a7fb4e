"""The first five minutes, in a real napari window (under Xvfb): what a new user sees after Segment, in plain
words; the shortcuts in napari's preferences and the menus; the dock on a small screen; no torch until Segment."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

BANNED = ("MC samples", "kernel", "Kernel", "task-aware", "disagrees", "(0.", "< 0.9", "epistemic", "Dice")


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    return viewer, widget


def _visible_texts(widget) -> list[str]:
    """Every text the dock shows (labels, buttons, check boxes, list entries), not the tooltips."""
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLabel

    texts = []
    for w in widget.native.findChildren(QLabel) + widget.native.findChildren(QAbstractButton):
        if w.isVisibleTo(widget.native):
            texts.append(w.text())
    for combo in widget.native.findChildren(QComboBox):
        texts += [combo.itemText(i) for i in range(combo.count())]
    return texts


def test_after_segment_the_segmentation_is_what_you_see_and_uncertainty_is_one_click_away(viewer_and_widget, qtbot,
                                                                                           nuclei_fluo):
    from napari_clis._reader import UNCERTAINTY_STYLE

    viewer, widget = viewer_and_widget
    assert widget.controls.click_class.native.itemText(1) == "1: nucleus"  # the chosen model's words, before Segment
    widget.set_model("skin-lesion")
    assert widget.controls.click_class.native.itemText(1) == "1: lesion"
    widget.set_model("nuclei")
    layer = viewer.add_image(nuclei_fluo[0], name="nuclei")
    widget.run(layer)
    widget.wait()
    seg, unc, inst = viewer.layers["segmentation"], viewer.layers["uncertainty"], viewer.layers["instances"]
    assert seg.visible and inst.visible and inst.contour >= 2 and seg.opacity < 0.5  # outlines over a light fill
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_clis._reader import CLASS_COLOURS

    fill = seg.get_color(1)  # a light, saturated green (napari's own first colour is a dark brown, lost on H&E)
    np.testing.assert_allclose(fill, transform_color(CLASS_COLOURS[0])[0], atol=1e-6)
    assert fill[:3].max() - fill[:3].min() > 0.5 and fill[:3].sum() > 1.2
    assert not unc.visible and not widget.show_uncertainty  # hidden until asked for
    assert unc.colormap.name == UNCERTAINTY_STYLE["colormap"]["name"] and unc.blending == UNCERTAINTY_STYLE["blending"]
    assert unc.colormap.colors[0][3] == 0  # where the model is sure, the map is clear: the image shows through
    widget.controls.show_uncertainty.native.click()  # one click
    assert unc.visible
    unc.visible = False  # the layer list's eye: the box follows
    assert not widget.controls.show_uncertainty.value
    widget.toggle_uncertainty()  # what Shift-U does
    assert unc.visible and widget.show_uncertainty
    # clicks: saturated colours with a dark border; suggestions: thin saturated circles, clear inside (a band of
    # yellow over the object and its neighbours hid them when zoomed in)
    sugg, clicks = viewer.layers["suggestions"], viewer.layers["clicks"]
    assert len(sugg.data) and np.all(sugg.face_color[:, 3] == 0) and np.all(0 < sugg.border_width)
    assert np.all(sugg.border_width <= 0.1) and np.all(np.ptp(sugg.border_color[:, :3], axis=1) > 0.8)
    widget.set_click_class(0)
    clicks.add([10, 10])
    assert np.all(clicks.border_color[:, :3] < 0.2)
    background = clicks.face_color[-1][:3]
    assert background.max() - background.min() > 0.5  # saturated, not light grey
    texts = "\n".join(_visible_texts(widget))
    assert not [word for word in BANNED if word in texts], texts
    assert "1: nucleus" in texts and "Uncertainty samples" in texts


def test_the_shortcuts_are_napari_actions_listed_in_the_preferences(viewer_and_widget, qtbot, nuclei_fluo):
    from napari._qt.widgets.qt_keyboard_settings import ShortcutEditor
    from napari.utils.action_manager import action_manager

    from napari_clis._widget._keys import ACTIONS, action_name

    viewer, widget = viewer_and_widget
    editor = ShortcutEditor()
    qtbot.addWidget(editor)
    listed = editor.key_bindings_strs[editor.VIEWER_KEYBINDINGS]
    for name, (_description, key, _do) in ACTIONS.items():
        assert action_name(name) in listed, name
        assert key.split("-")[-1] in action_manager._build_tooltip(action_name(name))  # its key is shown
    layer = viewer.add_image(nuclei_fluo[0], name="nuclei")
    widget.set_image(layer)
    action_manager.trigger(action_name("segment"))  # as the key does, on the current viewer
    widget.wait()
    assert "Segmented" in widget.status
    action_manager.trigger(action_name("toggle_uncertainty"))
    assert viewer.layers["uncertainty"].visible
    action_manager.trigger(action_name("background_click_class"))
    assert widget.click_class == 0
    action_manager.trigger(action_name("next_click_class"))
    assert widget.click_class == 1


def test_the_widgets_are_in_the_layers_menus_too(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    for menu, command in (("napari/layers/segment", "napari-clis.segment_widget"),
                          ("napari/layers/measure", "napari-clis.measurements_widget")):
        ids = [getattr(getattr(item, "command", None), "id", None) for item in app.menus.get_menu(menu)]
        assert command in ids, (menu, ids)


def test_the_dock_fits_a_1280x720_window_with_segment_in_view(make_napari_viewer, qtbot):
    from qtpy.QtCore import QPoint, QRect
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 720)
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    qtbot.wait(300)
    button = widget.controls.run_button.native
    assert button.isVisible() and not button.visibleRegion().isEmpty()
    area = widget.native if isinstance(widget.native, QScrollArea) else widget.native.findChild(QScrollArea)
    viewport = area.viewport()
    top_left = button.mapTo(viewport, QPoint(0, 0))
    assert QRect(QPoint(0, 0), viewport.size()).contains(QRect(top_left, button.size())), (top_left, viewport.size())
    window = button.window()
    assert window.height() <= 720 + 40  # the window did not grow to fit the dock


def test_opening_the_dock_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import napari
        viewer = napari.Viewer(show=False)
        _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
        assert widget.controls.click_class.native.itemText(1) == "1: nucleus"
        print("torch" in sys.modules)
        viewer.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
