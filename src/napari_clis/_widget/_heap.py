"""Python's full garbage collections walk every object alive: with napari, Qt and torch loaded, over a million,
0.1-0.2 s with the GIL held, a stall of the whole window wherever one falls (in the first Segment: the layers made,
the model loaded). Once the model is loaded, what is alive is frozen (``gc.freeze``): later collections walk only
what was made since. Frozen objects are not collected while frozen, so as soon as anything alive then may go away
(a layer removed, the model replaced, the dock closed) everything frozen is given back to the collector
(``gc.unfreeze``), which frees it as it would have (a removed layer's data stayed in memory for good before)."""

from __future__ import annotations

import gc
import importlib
import sys


def freeze() -> None:
    """What is alive now (the model just loaded, torch, napari) is left out of later collections."""
    gc.freeze()


def release(*_args) -> None:
    """Everything frozen is the collector's again (no collection now: it runs when it would have)."""
    if gc.get_freeze_count():
        gc.unfreeze()


def import_quietly(name: str) -> None:
    """Import a large module with the collector paused, and leave what it made out of later collections while the
    heap is frozen. ``torch._dynamo``, which torch's optimisers import when the first Learn makes one: 800 modules,
    110,000 objects, 1 s; three full collections ran in the middle of it (up to 61 ms each, holding the GIL: the
    window stalled) and every later one walked it. The freeze takes whatever else is alive then too, until the next
    :func:`release`; after a release nothing is frozen (what was given back to the collector is left to it)."""
    if name in sys.modules:
        return
    frozen, enabled = gc.get_freeze_count() > 0, gc.isenabled()
    gc.disable()
    try:
        importlib.import_module(name)
    except ImportError:  # pragma: no cover - a torch without it: the optimiser imports nothing
        pass
    finally:
        if enabled:
            gc.enable()
    if frozen:
        gc.freeze()
