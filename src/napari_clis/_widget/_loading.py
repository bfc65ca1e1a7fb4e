"""The model a Segment needs: what to load (:class:`Plan`), loaded in the worker (:func:`load_session`, which
imports torch), and what is made ready after it so that the GUI thread does not make it (:func:`warm_up`)."""

from __future__ import annotations

import dataclasses


class NotStarted(Exception):
    """The model could not be loaded or set up in the worker: nothing was segmented."""


@dataclasses.dataclass
class Plan:
    """What the worker needs to have a session: the one in use (``session``) or what to load (``load``)."""

    key: tuple
    device: str
    session: object = None
    load: tuple | None = None  # ("pretrained", name) or ("checkpoint", path)
    old_tasks: int = 0
    held: object = None  # the file that holds the tasks of the session replaced


def load_session(plan: Plan):
    """Load the planned model (in the worker: this imports torch)."""
    from ..session import ClisSession

    kind, what = plan.load
    if kind == "pretrained":
        return ClisSession.from_pretrained(what, device=plan.device)
    return ClisSession.from_checkpoint(what, device=plan.device)


def warm_up() -> None:
    """After the model loads (in the worker): import what the layers and learning import later (pandas for the
    clicks' features, torch's optimizers), so the GUI thread does not; make vispy's line dash patterns, which the
    first Labels layer's line overlays would make on the GUI thread (13 patterns in pure Python, kept for the
    process: about 70 ms of the first layer's 210 ms under software OpenGL); then freeze what is alive (the model,
    torch; :mod:`._heap`), so that Python's full garbage collections, on the GUI thread too, no longer walk it.
    No collection first: one walks the whole heap with the GIL held (194 ms here, a stall of the window) and found
    10 objects to free."""
    import importlib

    from ._heap import freeze

    for name in ("pandas", "torch.optim", "torch.optim.lbfgs"):
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - optional here
            pass
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()  # its patterns are cached (functools.lru_cache) for every later line visual
    except Exception:  # pragma: no cover - a vispy without it: the first layer makes them, as before
        pass
    freeze()
