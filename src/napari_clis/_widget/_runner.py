"""One worker runner for the dock: segment and learn in one lane (one busy state), click propagation in another.

Every worker gets the state's generation when it starts; what it hands back is passed on only while that
generation is still the state's and the dock is alive, so a late result never writes into another image, a
layer deleted meanwhile, or a closed dock. Progress comes by ``yield`` (a generator worker's items) and, within a
step (tiles, learning steps), by a value the worker sets and the bar reads on a timer.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .._napari_compat import in_worker, worker_generator


class WorkerError(Exception):
    """A RuntimeError raised in a generator worker, carried out of it: superqt takes a RuntimeError out of a
    generator for a deleted worker and says nothing (no error, no end: the dock would stay busy). torch raises
    RuntimeError for most of its failures."""

    def __init__(self, error: RuntimeError):
        super().__init__(str(error))
        self.error = error


def carried(function):
    """``function`` with a generator's RuntimeError raised as :class:`WorkerError` (plain functions as they are),
    as a worker runs it (:func:`~napari_clis._napari_compat.in_worker`)."""
    import inspect

    if not inspect.isgeneratorfunction(function):
        return in_worker(function)

    def generator():
        try:
            return (yield from function())
        except RuntimeError as e:
            raise WorkerError(e) from e
    return in_worker(generator)


PACKAGE = str(Path(__file__).resolve().parents[1])


def relay_warning(args: tuple) -> None:
    """A warning the package raised in a worker (``worker.warned``'s ``showwarning`` arguments), shown as a napari
    warning. napari's workers mean to relay every warning, but with PyQt their relay is never connected (the
    mixin that connects it comes after ``QRunnable`` in their classes' order, whose ``__init__`` stops the chain),
    and a worker sees every warning of the process while it runs: only the package's own ones are shown (a chosen
    intensity range that leaves the image black, say), not those of the libraries beneath."""
    message, category, filename = args[0], args[1], str(args[2])
    if issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(PACKAGE):
        from ._common import notify_warning

        notify_warning(str(message))


def unwrapped(on_error):
    """``on_error`` given the error the worker raised (a :class:`WorkerError`'s own)."""
    if on_error is None:
        return None
    return lambda e: on_error(e.error if isinstance(e, WorkerError) else e)


class Runner:
    """Runs the dock's heavy steps in napari's worker threads (``napari.qt.threading``)."""

    def __init__(self, dock):
        self.dock = dock
        self.worker = None  # the segment or learn worker
        self.kind = None  # "segment" or "learn"
        self.side = None  # the propagation worker
        self.side_pending = False  # clicks changed while it ran: propagate again when it ends
        self.cancel_requested = False
        self.step = (0, 0)  # (done, total) within the running step, set from the worker thread
        self.threads: dict[str, str] = {}  # what ran in which thread, by step (read by tests)
        self.session_lock = threading.RLock()  # a segmentation and a propagation never use the session at once
        self._timer = None

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def note_thread(self, what: str) -> None:
        """Record the thread a step runs in (called in the step)."""
        self.threads[what] = threading.current_thread().name

    def start(self, kind: str, function, *, on_item=None, on_return=None, on_error=None, on_done=None,
              poll=None, guarded: bool = True) -> None:
        """Run ``function`` (a generator function for ``on_item``) in a worker; ``poll()`` every 200 ms.

        ``guarded`` (a segmentation): a new generation, and its items and errors reach the dock only while it is
        current. Unguarded (learning): the results always arrive (a learned task is kept, even once the dock is
        closed), and the callbacks see to the rest."""
        from napari.qt.threading import thread_worker

        state = self.dock.state
        generation = state.next_generation() if guarded else None

        def current(callback):
            def call(*args):
                if callback is not None and (generation is None or (self.dock.alive and
                                                                     state.is_current(generation))):
                    callback(*args)
            return call

        worker = thread_worker(carried(self.locked(function) if kind == "segment" else function),
                               ignore_errors=True)()
        gen = worker_generator(worker)  # napari's GeneratorWorker: the generator it runs
        if kind == "segment" and gen is not None:
            # a quit worker leaves its generator suspended at a yield, the session lock held (propagations then
            # wait for ever): close it, in the worker's thread, as it stops
            from qtpy.QtCore import Qt

            worker.aborted.connect(gen.close, Qt.ConnectionType.DirectConnection)
        if on_item is not None:
            worker.yielded.connect(current(on_item))
        if on_return is not None:
            worker.returned.connect(current(on_return))
        worker.errored.connect(current(unwrapped(on_error)))
        worker.warned.connect(current(relay_warning))
        worker.finished.connect(lambda: self._finished(worker, on_done))
        self.worker, self.kind, self.cancel_requested, self.step = worker, kind, False, (0, 0)
        state.busy = kind
        if poll is not None:
            from qtpy.QtCore import QTimer

            self._timer = QTimer()
            self._timer.timeout.connect(poll)
            self._timer.start(200)
        worker.start()

    def locked(self, function):
        """``function`` (a generator function or not) run holding the session lock."""
        import inspect

        lock = self.session_lock
        if inspect.isgeneratorfunction(function):
            def generator():
                with lock:
                    return (yield from function())
            return generator

        def plain():
            with lock:
                return function()
        return plain

    def _finished(self, worker, on_done) -> None:
        if worker is not self.worker:
            return
        self.stop_timer()
        self.worker, kind = None, self.kind
        self.kind = None
        if self.dock.state.busy == kind:
            self.dock.state.busy = None
        if on_done is not None:
            on_done()
        self.cancel_requested = False

    def stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()

    def cancel(self) -> bool:
        """Ask the running worker to stop: a segmentation at its next tile or slice (a single image's result that
        is already done still arrives), learning at its next step. False when nothing runs."""
        if self.worker is None:
            return False
        self.cancel_requested = True
        if self.kind != "learn":  # learning stops at its next step through its progress callback; quitting
            self.worker.quit()  # its worker would also drop the result of a learn that had just finished
        return True

    def abandon(self) -> None:
        """What the running workers hand back from now on is dropped (their image is gone, or the dock is)."""
        self.dock.state.next_generation()
        if self.worker is not None and self.kind == "segment":
            self.cancel_requested = True
            self.worker.quit()

    # -- the propagation lane ------------------------------------------------------------------------------------
    def start_side(self, function, on_return, on_error, again) -> None:
        """Propagate clicks (or compute suggestions) in a worker, holding the session lock; ``on_return`` on the GUI
        thread while the generation is current; ``again()`` when clicks changed meanwhile."""
        from napari.qt.threading import thread_worker

        state, generation = self.dock.state, self.dock.state.generation

        def returned(out):
            if self.dock.alive and state.is_current(generation):
                on_return(out)

        def finished():
            self.side = None
            if self.side_pending and self.dock.alive:
                self.side_pending = False
                again()

        worker = thread_worker(carried(self.locked(function)), ignore_errors=True)()
        worker.returned.connect(returned)
        worker.errored.connect(unwrapped(on_error))
        worker.finished.connect(finished)
        self.side = worker
        worker.start()
