"""The dock widget, :class:`SegmentWidget`: its lifetime on a viewer and its public surface.

The dock is thin: the state of the viewer's annotation work is an :class:`~napari_clis.annotation_state.
AnnotationState` (no Qt), kept per viewer, so a dock closed and opened again goes on with it. The views over it are
the controls (``_controls``), the layers (``_layers``, its Points layers in ``_points``), the worker runner
(``_runner``), Segment (``_segment``, the model it loads in ``_loading``), the corrections (``_corrections``) and the
Learn panel (``_learn``); ``_docking`` fits the dock into napari's window.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import Container

from .._napari_compat import unhook_undo_redo, unwrap
from ..annotation_state import AnnotationState
from ._click_actions import add_control as add_click_action_control
from ._common import CLICKS, CUSTOM_MODEL, REPLACED, SEGMENT_DOCK_NAME, notify_error, plain
from ._controls import Controls, model_choices, model_class_names
from ._corrections import Corrections
from ._docking import fit_width, watch
from ._heap import release
from ._keys import register as register_shortcuts
from ._layers import Layers, is_input
from ._learn import LearnPanel
from ._runner import Runner
from ._segment import Segmenter

if TYPE_CHECKING:
    import napari

_OWNERS: dict[int, weakref.ref] = {}  # id(viewer) -> the dock that owns its layers (the last one opened)
_STATES: dict[int, tuple[weakref.ref, AnnotationState]] = {}  # id(viewer) -> (the viewer, its state)


def dock_of(viewer):
    """The live dock of ``viewer`` (the last one opened on it), or None."""
    ref = _OWNERS.get(id(unwrap(viewer)))
    dock = ref() if ref is not None else None
    return None if dock is None or dock.retired else dock


def state_for(viewer) -> tuple[AnnotationState, bool]:
    """The viewer's state, and whether it existed already (a dock was opened on this viewer before)."""
    viewer = unwrap(viewer)
    entry = _STATES.get(id(viewer))
    if entry is not None and entry[0]() is viewer:
        return entry[1], True
    state = AnnotationState()
    _STATES[id(viewer)] = (weakref.ref(viewer), state)
    weakref.finalize(viewer, _STATES.pop, id(viewer), None)
    return state, False


class SegmentWidget(Container):
    """Segment the chosen image with a CLIS model; results go to layers that re-runs update.

    Open it with ``viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")`` or
    :func:`napari_clis.annotate`, and drive it from a script with its public methods and properties (what its
    buttons and lists do): :meth:`set_image`, :meth:`set_model`, :meth:`run`, :meth:`learn`, :meth:`save_model`,
    :meth:`cancel`, :meth:`set_click_class`, :meth:`wait`, :attr:`status`, :attr:`session`."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)  # on a laptop screen the dock is taller than the window: it scrolls
        self.native.setObjectName(SEGMENT_DOCK_NAME)  # how the Measurements dock finds it to share its place
        self.viewer = unwrap(viewer)
        self.retired = False  # closed, or replaced by a newer dock on the same viewer: it then does nothing
        self.destroyed = False  # the viewer closed: its Qt widgets are deleted
        self._connections: list = []  # (emitter, callback) pairs to disconnect when retired
        self.hooked_segmentations = weakref.WeakSet()
        previous = _OWNERS.get(id(self.viewer))
        previous = previous() if previous is not None else None
        if previous is not None:
            previous._retire()
        _OWNERS[id(self.viewer)] = weakref.ref(self)
        self.state, existed = state_for(self.viewer)
        if existed:
            self.state.take_over()
        self.layers = Layers(self)
        self.runner = Runner(self)
        self.corrections = Corrections(self)
        self.segmenter = Segmenter(self)
        self.learn_panel = LearnPanel(self)
        self.controls = c = Controls(self, self.layers.image_choices, self.model_list, self.learn_panel.task_choices)
        c.model.changed.connect(self.on_model_changed)
        c.checkpoint.changed.connect(lambda _path: self.show_model_classes())
        c.show_uncertainty.changed.connect(self.on_show_uncertainty)
        c.run_button.changed.connect(lambda: self.run())  # the button's value is not a layer
        c.cancel_button.changed.connect(self.cancel)
        c.click_class.changed.connect(self.corrections.on_class_changed)
        c.suggest.changed.connect(lambda _v: self.corrections.update_suggestions())
        c.clear_button.changed.connect(lambda: self.clear_clicks())
        c.learn_button.changed.connect(lambda: self.learn())
        c.save_button.changed.connect(lambda: self.save_model())
        self.connect(self.viewer.layers.events.inserted, self._on_layer_inserted)
        self.connect(self.viewer.layers.events.removed, self._on_layer_removed)
        self.connect(self.viewer.layers.selection.events.active, self._on_active_layer)
        self.reset_choices()
        if self.state.session is not None:  # a dock opened again: the model in use, its tasks, where they are saved
            self._show_session()
        else:  # the click classes of the chosen model, before it is loaded ("1: nucleus")
            self.show_model_classes()
        self._keep_options()
        register_shortcuts(dock_of)  # napari actions: listed in Preferences > Shortcuts
        self.click_action_control = add_click_action_control(self, dock_of)  # add / remove, split, merge
        self._watch_docking()

    # -- public surface ------------------------------------------------------------------------------------------
    @property
    def session(self):
        """The :class:`ClisSession` in use (``None`` before the first Segment, and for a closed or replaced dock)."""
        return None if self.retired else self.state.session

    @property
    def busy(self) -> bool:
        """Whether a segmentation, learning or a click's propagation runs (on this viewer)."""
        return self.working or self.propagating

    @property
    def finding_objects(self) -> bool:
        """Whether a Segment has shown its segmentation and is still finding its objects (then the suggestions
        follow; :meth:`wait` waits for all of it)."""
        run = self.state.run
        return run is not None and run.finding_objects

    @property
    def working(self) -> bool:
        """Whether a segmentation or learning runs (what refuses another Segment or Learn)."""
        return self.runner.busy or self.state.busy is not None

    @property
    def alive(self) -> bool:
        return not self.retired

    @property
    def status(self) -> str:
        """The status line, as the user reads it."""
        return plain(self.controls.status.value)

    @property
    def click_status(self) -> str:
        return plain(self.controls.click_status.value)

    @property
    def tasks_text(self) -> str:
        """The Learn panel's list of learned tasks."""
        return plain(self.controls.tasks_label.value)

    @property
    def image(self):
        """The image layer Segment segments."""
        return self.controls.image.value

    def set_image(self, layer) -> None:
        """Choose the image to segment: a layer of the viewer, or its name."""
        self.controls.image.value = self.viewer.layers[layer] if isinstance(layer, str) else layer

    @property
    def model(self) -> str:
        """The chosen model: a shipped model's name, a saved model's path, or 'Model file…'."""
        return self.controls.model.value

    def set_model(self, model) -> None:
        """Choose the model: a shipped model's name ("nuclei", "skin-lesion"), or a model file's path (a file of
        the models folder is chosen in the list; any other is chosen as 'Model file…')."""
        value = str(model)
        listed = [v for _, v in self.model_list()]
        if value in listed:
            self.controls.model.value = value
            return
        path = Path(value).expanduser()
        if str(path) in listed:
            self.controls.model.value = str(path)
            return
        if not path.suffix == ".pt" and not path.exists():
            raise ValueError(f"No model {value!r}: give a shipped model's name ({', '.join(listed[:2])}) or a "
                             "model file (.pt).")
        self.controls.model.value = CUSTOM_MODEL
        self.controls.checkpoint.value = path

    def run(self, image_layer=None) -> None:
        """Segment ``image_layer`` (default: the chosen one) off the GUI thread (:meth:`wait` waits for it)."""
        if self._replaced():
            return
        if self.working:
            self._say_busy()
            return
        self.segmenter.run(image_layer)

    def learn(self) -> None:
        """Learn from the corrected segmentation of the slice being corrected, off the GUI thread."""
        if self._replaced():
            return
        if self.working:
            self._say_busy()
            return
        with self.runner.session_lock:  # a click's propagation running: learning reads the session's clicks once
            self.learn_panel.learn()  # it is done (one propagation, pressed within it: rare and short)

    def save_model(self, path=None) -> None:
        """Save the model in use with its learned tasks (default: the 'Save model to' box, else the file learning
        keeps up to date, else a new file in the models folder)."""
        if not self._replaced():
            self.learn_panel.save_model(path)

    def cancel(self) -> None:
        """Stop the segmentation at its next tile or slice, or learning at its next step."""
        if self.runner.cancel():
            self.controls.set_status("Cancelling…")

    def clear_clicks(self) -> None:
        """Remove the clicks of the slice being corrected."""
        if not self._replaced():
            self.corrections.clear_clicks()

    @property
    def click_class(self) -> int:
        return int(self.controls.click_class.value)

    def set_click_class(self, label: int) -> None:
        """Choose the class new clicks get (and that selected clicks are changed to)."""
        if label in self.controls.class_values():
            self.controls.click_class.value = label

    @property
    def click_action(self) -> str:
        """What a new click does: "auto" (add / remove by its class), "split" or "merge" (object clicks)."""
        return str(self.click_action_control.value)

    def set_click_action(self, action: str) -> None:
        """Choose what new clicks do (and, in select mode, what the selected clicks do): "auto", "split", "merge"."""
        self.click_action_control.value = action

    def next_click_class(self) -> None:
        values = self.controls.class_values()
        self.set_click_class(values[(values.index(self.click_class) + 1) % len(values)])

    def toggle_uncertainty(self) -> None:
        """Show the uncertainty map if it is hidden, else hide it ('Show uncertainty', Shift-U)."""
        self.show_uncertainty = not self.show_uncertainty

    def on_show_uncertainty(self, shown: bool) -> None:
        session = self.state.session
        if shown and session is not None and session.n_samples == 0:
            from napari.utils.notifications import show_info

            show_info("There is no uncertainty map: 'Uncertainty samples' is 0. Set it above 0 and press Segment.")
        self.layers.set_uncertainty_visible(self.layers.uncertainty_wanted())

    def wait(self, timeout: float = 120.0) -> None:
        """Process Qt events until no segmentation (its objects and suggestions included), learning or
        propagation runs (for scripts and tests); TimeoutError after ``timeout`` seconds."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.busy:
            if time.monotonic() > end:
                raise TimeoutError(f"still {self.state.busy or 'busy'} after {timeout:g} s")
            QApplication.processEvents()
            time.sleep(0.02)
        QApplication.processEvents()

    def apply_corrections(self) -> None:
        """Apply the clicks and painted edits of the slice being corrected now (each click and stroke does)."""
        if not self._replaced():
            self.corrections.propagate()

    @property
    def connected(self) -> bool:
        """Whether the dock listens to the viewer or its layers (a closed or replaced one does not)."""
        return bool(self._connections)

    @property
    def propagating(self) -> bool:
        """Whether clicks are being propagated (or suggestions computed) in a worker."""
        return self.runner.side is not None

    @property
    def target(self):
        """(image layer, slice index) of the slice the clicks correct; ``None`` before a segmentation."""
        return None if self.state.target is None else tuple(self.state.target)

    @property
    def painted(self):
        """A copy of the painted map of the slice being corrected (-1 where nothing is painted), or ``None``."""
        painted = self.corrections.painted
        return None if painted is None else painted.copy()

    @property
    def ledger(self):
        """The viewer's :class:`~napari_clis.annotation_state.Ledger` of painted edits."""
        return self.state.ledger

    @property
    def threads(self) -> dict:
        """The thread each heavy step last ran in (``load``, ``segment``, ``learn``, ``propagate``)."""
        return dict(self.runner.threads)

    # the options, as their controls set them
    def _option(name, doc):  # noqa: N805 - a property factory, used in the class body
        def get(self):
            return getattr(self.controls, name).value

        def set_(self, value):
            getattr(self.controls, name).value = value

        return property(get, set_, doc=doc)

    all_slices = _option("all_slices", "Segment every slice of a stack (else the one on screen).")
    samples = _option("samples", "Monte-Carlo samples of the uncertainty map (0: none).")
    device = _option("device", "'auto', 'cpu', 'cuda' (or 'mps').")
    task = _option("task", "The task to segment with; -1: the task-aware choice.")
    intensity_range = _option("intensity", "'automatic' or 'as displayed' (the contrast limits).")
    object_size = _option("object_size", "The typical object width in pixels; 0: the image as it is.")
    suggest = _option("suggest", "Show where to click next.")
    show_uncertainty = _option("show_uncertainty", "Show the uncertainty map over the image (hidden by default).")
    del _option

    @property
    def save_path(self) -> str:
        return str(self.controls.save_path.line_edit.value or "")

    @save_path.setter
    def save_path(self, value) -> None:
        self.controls.save_path.line_edit.value = str(value)

    @property
    def native(self):
        """The scroll area around the controls: what napari docks (magicgui's ``native`` is the widget inside
        it, which napari would take out of the scroll area)."""
        return self.root_native_widget

    # -- the model list ------------------------------------------------------------------------------------------
    def model_list(self, _widget=None) -> list[tuple[str, str]]:
        """The Model list (:func:`model_choices`); a saved model in use whose file is gone stays listed, so that
        its learned tasks (in memory) are neither dropped nor swapped for another model's without a word."""
        choices = model_choices()
        key = self.state.model_key
        if key is not None and key[1] is None and key[0] not in {value for _, value in choices}:
            choices.insert(-1, (Controls.file_gone_label(key[0]), key[0]))
        return choices

    def reset_models(self) -> None:
        self.controls.reset_models(self.on_model_changed)

    def reset_choices(self, *_args) -> None:
        """Refresh the image list when layers change (the class list belongs to the model, not the layers),
        and the model list (models saved meanwhile)."""
        if "controls" not in vars(self):  # magicgui asks while the controls are being made
            return
        self.controls.image.reset_choices()
        self.reset_models()

    def on_model_changed(self, value: str) -> None:
        self.controls.checkpoint.visible = value == CUSTOM_MODEL
        self.show_model_classes()
        if self.state.model_key != self.controls.chosen_key():
            self.learn_panel.model_hint()

    def show_model_classes(self) -> None:
        """The click classes of the chosen model, read from its file, until Segment loads a model (the classes of
        a model in use stay while another one is only chosen)."""
        if self.state.session is None:
            self.controls.set_classes(model_class_names(*self.controls.chosen_key()))

    def _show_session(self) -> None:
        """A dock opened again goes on with the model in use, its learned tasks and where they are saved, rather
        than starting over on a shipped model."""
        from ..session import resolve_device

        session = self.state.session
        self.reset_models()
        self.controls.choose_model(self.state.model_key)
        self.controls.device.value = "auto" if session.device == resolve_device("auto") else session.device.type
        self.controls.samples.value = int(session.n_samples)
        self.learn_panel.show_tasks()
        n = len(session.tasks)
        tasks = f" and the {n} task(s) it learned" if n else ""
        if self.state.busy == "learn":  # a Learn pressed before the dock closed: its result comes here
            self.controls.set_status(f"Going on with the {session.model_name} model{tasks}. Learning from the "
                                     "last image is still running; its result will be shown here.")
        else:  # the image being corrected is not taken over (its propagation belonged to the closed dock)
            clicks = self.layers.find(CLICKS)
            edits = (clicks is not None and len(clicks.data)) or any(
                (p >= 0).any() for p in self.state.ledger.painted.values())
            kept = ": the clicks and painted edits made so far are kept." if edits else "."
            self.controls.set_status(f"Going on with the {session.model_name} model{tasks}. Press Segment to "
                                     f"correct an image again{kept}")

    # the options a dock opened again shows as the user left them (the session knows only what the last Segment used)
    KEPT_OPTIONS = ("device", "samples", "intensity", "object_size", "all_slices", "suggest")

    def _keep_options(self) -> None:
        """Show the options as they were left in this viewer's last dock, and remember every change from now on."""
        for name in self.KEPT_OPTIONS:
            control = getattr(self.controls, name)
            if name in self.state.options:
                try:
                    control.value = self.state.options[name]
                except (ValueError, TypeError):  # a choice that is gone (a device): the control's own stays
                    pass
            control.changed.connect(lambda value, name=name: self.state.options.__setitem__(name, value))

    # -- lifetime: one dock per viewer owns the layers -------------------------------------------------------------
    def connect(self, emitter, callback) -> None:
        if self.retired:  # a run that ends after the dock closed must not hook the layers again
            return
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _replaced(self) -> bool:
        """Whether this dock was closed or replaced (its state went to the newer dock); says so."""
        if self.retired and not self.destroyed:
            notify_error(REPLACED)
        return self.retired

    def _say_busy(self) -> None:
        """A second Segment or Learn while one runs: a notice, leaving the status that says what runs."""
        from napari.utils.notifications import show_info

        show_info(("Learning" if self.state.busy == "learn" else "Segmenting")
                  + " is still running; wait, or press Cancel.")

    def _on_layer_inserted(self, event=None) -> None:
        """A newly opened image becomes the one to segment (it is what the user looks at: it lies on top)."""
        self.reset_choices()
        layer = getattr(event, "value", None)
        if layer is not None and is_input(layer):
            self.controls.image.value = layer

    def _on_layer_removed(self, event=None) -> None:
        """The image being segmented deleted: what the run still hands back is dropped (no write into another
        image's layers); the image being corrected deleted: nothing to correct until the next Segment."""
        release()  # the layer may have been alive when the heap was frozen (:mod:`._heap`)
        self.reset_choices()
        layer, state = getattr(event, "value", None), self.state
        if layer is None:
            return
        run = state.run
        if run is not None and run.layer is layer and state.is_current(run.generation):
            self.runner.abandon()  # said in the status only: closing the viewer deletes every layer too
            self.controls.set_status(
                f"'{layer.name}' was deleted while its objects were being found: its objects are dropped; the "
                "segmentation written before stays in the layers." if run.shown else
                f"'{layer.name}' was deleted while it was segmented: its results are dropped, and the layers are as "
                "they were.")
        if state.target is not None and state.target.layer is layer:
            state.target = None
            self.controls.set_click_status(f"'{layer.name}' was deleted: open an image and press Segment to go on.")

    def _on_active_layer(self, event=None) -> None:
        """Selecting an image layer in the layer list chooses it for Segment."""
        layer = self.viewer.layers.selection.active
        if layer is not None and is_input(layer) and layer in self.viewer.layers:
            self.controls.image.value = layer

    def fit_width(self) -> None:
        """As wide as the controls need beside the vertical scroll bar (:func:`._docking.fit_width`)."""
        fit_width(self.native)

    def _watch_docking(self) -> None:
        """Retire when napari closes the dock; fit the width once shown (:func:`._docking.watch`)."""
        self._watcher = watch(self, self._retire)
        # the viewer closed: its Qt widgets are deleted under a run still going; its callbacks then do nothing
        self.native.destroyed.connect(lambda *_: self._native_destroyed())

    def _native_destroyed(self) -> None:
        # the garbage collector may clear this object's attributes before Qt deletes its widgets (a reference
        # cycle collected late, e.g. in the next test): then there is nothing left to stop
        if "retired" in vars(self):
            self._retire(destroyed=True)

    def _retire(self, destroyed: bool = False) -> None:
        """Stop listening to the viewer and its layers (the dock was closed, or a new dock took over, or the
        viewer closed: ``destroyed``, the Qt widgets are gone). A run still going finishes in its thread (a
        task being learned is still learned and autosaved) and its results go nowhere but the state."""
        release()  # the viewer and the dock may go now (:mod:`._heap`)
        if destroyed:
            self.destroyed = True
            self.runner.stop_timer()
        if self.retired:
            return
        self.retired = True
        self.runner.stop_timer()
        if not destroyed:  # still on screen when another dock took over (made from a script): it says so
            self.controls.disable()
            self.controls.set_status(REPLACED)
        for emitter, callback in self._connections:
            try:
                emitter.disconnect(callback)
            except Exception:  # noqa: BLE001 (a layer already gone)
                pass
        self._connections.clear()
        for seg in list(self.hooked_segmentations):
            unhook_undo_redo(seg, self)
