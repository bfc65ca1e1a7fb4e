"""Python's full garbage collections walk every object alive: with napari, Qt and torch loaded, over a million,
0.1-0.2 s with the GIL held, a stall of the whole window wherever one falls (in the first Segment: the layers made,
the model loaded). Once the model is loaded, what is alive is frozen (``gc.freeze``): later collections walk only
what was made since. Frozen objects are not collected while frozen, so as soon as anything alive then may go away
(a layer removed, the model replaced, the dock closed) everything frozen is given back to the collector
(``gc.unfreeze``), which frees it as it would have (a removed layer's data stayed in memory for good before)."""

from __future__ import annotations

import gc


def freeze() -> None:
    """What is alive now (the model just loaded, torch, napari) is left out of later collections."""
    gc.freeze()


def release(*_args) -> None:
    """Everything frozen is the collector's again (no collection now: it runs when it would have)."""
    if gc.get_freeze_count():
        gc.unfreeze()
