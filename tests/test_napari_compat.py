"""Every private napari or magicgui name the plugin relies on still exists and works (napari_clis._napari_compat),
and no other module of the package reaches one."""

import re
from pathlib import Path

import numpy as np
import pytest

import napari_clis
from napari_clis import _napari_compat as compat

PACKAGE = Path(napari_clis.__file__).parent


def test_every_private_name_listed_is_still_there():
    import importlib

    for owner, name in compat.PRIVATE_NAMES:
        if owner.endswith("._widget"):  # an attribute of a Container instance: checked on one below
            continue
        module, _, cls = owner.rpartition(".")
        assert hasattr(getattr(importlib.import_module(module), cls), name), f"{owner}.{name} is gone"


def test_unwrap_gives_the_viewer_behind_naparis_proxy(make_napari_viewer):
    from napari.utils._proxies import PublicOnlyProxy  # the proxy itself, to check what unwrap undoes

    viewer = make_napari_viewer()
    proxy = PublicOnlyProxy(viewer)
    assert compat.unwrap(proxy) is viewer and compat.unwrap(viewer) is viewer
    with pytest.warns(FutureWarning, match="Private attribute access"):  # what the proxy still says, and pytest
        proxy.window._qt_window  # noqa: B018 (an error in this suite: pyproject's filterwarnings)


def test_undo_history_cleared_and_undo_redo_replaced_and_restored(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((8, 8), np.int32))
    labels.paint((2, 2), 1)
    calls = []
    compat.hook_undo_redo(labels, lambda layer, name: (calls.append(name), compat.native_undo_redo(layer, name)),
                          owner="me")
    assert compat.is_hooked(labels, "me") and not compat.is_hooked(labels, "another")
    labels.undo()
    assert calls == ["undo"] and not labels.data.any()  # napari's own undo ran
    labels.redo()
    assert calls == ["undo", "redo"] and labels.data.any()
    compat.unhook_undo_redo(labels, "another")  # not theirs: stays
    assert compat.is_hooked(labels, "me")
    compat.unhook_undo_redo(labels, "me")
    labels.undo()
    assert calls == ["undo", "redo"] and not labels.data.any()
    labels.paint((3, 3), 1)
    compat.clear_undo_history(labels)
    labels.undo()  # nothing left to undo
    assert labels.data[3, 3] == 1


def test_the_container_layout_is_reached(make_napari_viewer):
    from magicgui.widgets import Container, Label

    box = Container(widgets=[Label(value="a"), Label(value="b")], scrollable=True)
    layout = compat.container_layout(box)
    assert layout.count() == 2 and layout.itemAt(0).widget() is not None


def test_no_other_module_touches_a_private_napari_or_magicgui_name():
    private = re.compile(r"__wrapped__|\._reset_history|_mgui_|\._qt_window|\._qt_viewer|\._undo_history|"
                         r"napari\.utils\._|napari\._|(?<!from )(?<!napari_clis)\._widget\._")  # ours: not private
    # layers' own attributes (an instance's __dict__) are napari's business too, in the Qt layer
    layer_dict = re.compile(r"\.__dict__|vars\((?!self\))")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if p.name != "_napari_compat.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if private.search(line) or (p.parent.name == "_widget" and layer_dict.search(line))]
    assert offenders == []


def test_a_worker_gives_the_generator_it_runs(qtbot):
    import types

    from napari.qt.threading import thread_worker

    def numbers():
        yield 1

    worker = thread_worker(numbers)()
    generator = compat.worker_generator(worker)
    assert isinstance(generator, types.GeneratorType), "napari's GeneratorWorker no longer keeps its generator"
    generator.close()


def test_no_module_of_the_qt_layer_is_above_500_lines():
    """Issue 21's bound on the views: every module of the product that imports Qt, magicgui or napari (the
    evaluation harness aside) stays small enough to read."""
    gui = re.compile(r"^\s*(from|import) (qtpy|magicgui|napari)([. ]|$)", re.M)
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
             if "evaluation" not in p.parts and gui.search(p.read_text())}
    assert "_widget/_dock.py" in sizes and "_measurements.py" in sizes  # the rule finds the Qt layer
    assert {name: n for name, n in sizes.items() if n > 500} == {}



@pytest.mark.parametrize("kind", ["function", "generator"])
def test_naparis_label_colour_warning_made_while_a_worker_runs_never_reaches_the_user(qtbot, kind):
    """A napari worker runs under "always" and relays every warning of the process as a notification; napari's
    warning about its random label colours (made on the GUI thread while Segment's worker ran) reached the user.
    In a worker the package runs (``in_worker``) it stays quiet; other warnings still go through."""
    import threading
    import warnings

    from napari.qt.threading import create_worker
    from skimage.color import lab2rgb

    started, go = threading.Event(), threading.Event()

    def wait():
        started.set()
        go.wait(10)

    def wait_yielding():
        wait()
        yield 1

    worker = create_worker(compat.in_worker(wait if kind == "function" else wait_yielding), _start_thread=False)
    relayed = []
    worker.warned.connect(lambda args: relayed.append(str(args[0])))
    with qtbot.waitSignal(worker.finished, timeout=20000):
        worker.start()
        assert started.wait(10)
        lab2rgb(np.array([[[10.0, 0.0, 100.0]]]))  # outside sRGB (negative Z), as napari's colours may be
        warnings.warn("a warning of ours", UserWarning, stacklevel=1)
        go.set()
    assert not [m for m in relayed if compat.LAB_COLOUR_WARNING in m], relayed
    assert "a warning of ours" in relayed
