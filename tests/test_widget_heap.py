"""The heap frozen once the model loads (Python's full collections then skip napari, Qt and torch) is given back
to the collector as soon as something alive then may go: a removed layer is freed, not kept for good."""

import gc
import sys
import weakref

import numpy as np
import pytest


def test_a_layer_removed_after_the_heap_was_frozen_is_freed(make_napari_viewer, qtbot, nuclei_fluo):
    image, _ = nuclei_fluo
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.set_model("nuclei")
    big = viewer.add_image(np.zeros((1500, 1500), np.float32), name="big")  # alive when the model loads
    layer = viewer.add_image(image, name="image")
    gc.unfreeze()  # whatever an earlier test left frozen
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy and not widget.propagating, timeout=120_000)
    try:
        assert gc.get_freeze_count() > 0  # the model loaded: the heap frozen
        gone = weakref.ref(big)
        viewer.layers.remove(big)
        del big
        assert gc.get_freeze_count() == 0  # given back at once
        gc.collect()
        assert gone() is None  # freed (frozen, it stayed alive: napari's layers are in reference cycles)
    finally:
        gc.unfreeze()


def test_closing_the_dock_gives_the_frozen_heap_back(make_napari_viewer, qtbot, nuclei_fluo):
    image, _ = nuclei_fluo
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.set_model("nuclei")
    layer = viewer.add_image(image, name="image")
    gc.unfreeze()
    widget.run(layer)
    qtbot.waitUntil(lambda: not widget.busy and not widget.propagating, timeout=120_000)
    try:
        assert gc.get_freeze_count() > 0
        viewer.window.remove_dock_widget(dock)
        qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=10_000)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("frozen_before", [True, False])
def test_a_large_import_runs_without_collections_and_is_frozen_only_while_the_heap_is(tmp_path, monkeypatch,
                                                                                       frozen_before):
    """``import_quietly`` (torch._dynamo, on the first Learn): no collection in the middle of the import; what it
    made is frozen with the rest, unless the heap was given back to the collector (a layer removed since)."""
    from napari_clis._widget._heap import import_quietly

    (tmp_path / "clis_big_module.py").write_text(
        "import gc\nENABLED = gc.isenabled()\nOBJECTS = [[i] for i in range(20000)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gc.unfreeze()
    try:
        if frozen_before:
            gc.freeze()
        before = gc.get_freeze_count()
        import_quietly("clis_big_module")
        import clis_big_module

        assert clis_big_module.ENABLED is False and gc.isenabled()
        if frozen_before:
            assert gc.get_freeze_count() >= before + 20000
        else:
            assert gc.get_freeze_count() == 0
        import_quietly("clis_big_module")  # imported already: nothing
    finally:
        gc.unfreeze()
        sys.modules.pop("clis_big_module", None)
