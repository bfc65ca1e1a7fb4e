"""A click's heavy steps run off the GUI thread: the session's clicks, the propagation and the suggestions are in
the propagation worker; the GUI thread only reads the layers and writes what the worker gives (issue 21)."""

import threading

import numpy as np
import pytest

from napari_clis.interactive import Interaction


@pytest.mark.parametrize("model_image", ["nuclei_fluo", "lesion"])
def test_click_propagation_and_suggestions_run_in_a_worker(make_napari_viewer, qtbot, monkeypatch, request,
                                                          model_image):
    image, _ = request.getfixturevalue(model_image)
    model = "nuclei" if model_image.startswith("nuclei") else "skin-lesion"
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.set_model(model)
    layer = viewer.add_image(image, name="image", rgb=image.ndim == 3)
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy and not widget.propagating, timeout=120_000)
    assert len(viewer.layers["suggestions"].data)  # the rings are there, computed in the worker

    ran: dict[str, set] = {}
    for name in ("set_clicks", "suggest", "suggest_objects", "propagated", "labels"):
        original = getattr(Interaction, name)
        if isinstance(original, property):
            def spy(self, _get=original.fget, _name=name):
                ran.setdefault(_name, set()).add(threading.current_thread() is threading.main_thread())
                return _get(self)
            monkeypatch.setattr(Interaction, name, property(spy))
        else:
            def spy(self, *args, _call=original, _name=name, **kwargs):
                ran.setdefault(_name, set()).add(threading.current_thread() is threading.main_thread())
                return _call(self, *args, **kwargs)
            monkeypatch.setattr(Interaction, name, spy)

    seg = viewer.layers["segmentation"]
    before = np.array(seg.data, copy=True)
    h, w = before.shape
    widget.set_click_class(1)
    viewer.layers["clicks"].add([h // 2, w // 2])  # returns at once: the propagation runs in the worker
    assert widget.propagating
    qtbot.waitUntil(lambda: not widget.propagating, timeout=60_000)
    assert widget.threads["propagate"] != threading.main_thread().name
    assert ran.get("set_clicks") == {False}, ran  # the session got the click in the worker
    assert ran.get("suggest", set()) | ran.get("suggest_objects", set()) == {False}, ran
    assert True not in ran.get("propagated", set()) | ran.get("labels", set()), ran
    np.testing.assert_array_equal(seg.data, widget.session.labels)  # and the GUI thread wrote the result
    assert "1 click(s) applied" in widget.click_status
