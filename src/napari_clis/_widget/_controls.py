"""The dock's controls (magicgui widgets) and the Model list; what they show, not what they do."""

from __future__ import annotations

import sys
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from .. import _tooltips as tips
from .._napari_compat import container_layout
from ._common import AUTO_RANGE, AUTO_TASK, CUSTOM_MODEL, DISPLAYED_RANGE, breakable


def model_choices(_widget=None) -> list[tuple[str, str]]:
    """The Model list: the shipped models, the models saved in the models folder, and 'Model file…'."""
    from ..model_files import saved_models, shipped_models

    saved = [(f"{name} (saved)", str(path)) for name, path in saved_models().items()]
    return [(name, name) for name in shipped_models()] + saved + [(CUSTOM_MODEL, CUSTOM_MODEL)]


# A run without steps to count shows its moving busy bar only after this long: each frame of the animation repaints
# the window (under software OpenGL 20-50 ms each, 20-40 per Segment of a small image, on the cores segment() uses)
BUSY_DELAY_MS = 500

NO_TASKS = "Nothing learned yet: correct a segmentation, then press Learn so that similar images start better."


def model_class_names(model, path=None) -> list[str]:
    """The class names of a model in the Model list (a shipped model's name, a saved model's path, or 'Model file…'
    with ``path``), read from its file without loading it; ``background`` and ``object`` where it has none."""
    from ..model_files import class_names

    names = class_names(path if model == CUSTOM_MODEL else model) if model != CUSTOM_MODEL or path else None
    return names or ["background", "object"]


def class_choices(names) -> list[tuple[str, int]]:
    """The Click class list: ``0: background``, ``1: nucleus`` ..."""
    return [(f"{i}: {name}", i) for i, name in enumerate(names)]


def device_choices() -> list[str]:
    """auto, cpu, cuda, and on an Apple-silicon Mac its GPU (mps). Torch is not imported for this (the GUI thread
    never waits for it): where it is loaded already, it says whether mps works; else mps is offered on arm64 Macs and
    a Mac without it is told so when Segment loads the model (in the worker)."""
    import platform

    choices = ["auto", "cpu", "cuda"]
    if sys.platform != "darwin":
        return choices
    torch = sys.modules.get("torch")
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    usable = mps.is_available() if mps is not None else platform.machine() == "arm64"
    return choices + (["mps"] if usable else [])


def fit_height(label) -> None:
    """A wrapped label at least as tall as its text needs at its width: the dock's rows do not ask a label its
    height for its width, so a long status was cut off (while the busy bar showed)."""
    native = label.native
    if native.width() > 0:
        native.setMinimumHeight(native.heightForWidth(native.width()))


class Controls:
    """The controls of the dock, in the order they are shown, each a public magicgui widget; ``dock`` is the
    :class:`SegmentWidget` (a magicgui ``Container``) they are put in."""

    def __init__(self, dock, image_choices, model_list, task_choices):
        from .._plots import MaskUsagePlot, TaskPlot

        self.image = ComboBox(label="Image", choices=image_choices, tooltip=tips.IMAGE)
        self.model = ComboBox(label="Model", choices=model_list, value="nuclei", tooltip=tips.MODEL)
        self.checkpoint = FileEdit(label="Model file", mode="r", filter="*.pt", visible=False, tooltip=tips.CHECKPOINT)
        self.device = ComboBox(label="Device", choices=device_choices(), value="auto", tooltip=tips.DEVICE)
        self.samples = SpinBox(label="Uncertainty samples", min=0, max=64, value=8, tooltip=tips.SAMPLES)
        self.task = ComboBox(label="Learned task", choices=task_choices, value=AUTO_TASK, tooltip=tips.TASK)
        self.intensity = ComboBox(label="Intensity range", choices=[AUTO_RANGE, DISPLAYED_RANGE], value=AUTO_RANGE,
                                  tooltip=tips.INTENSITY_RANGE)
        self.object_size = FloatSpinBox(label="Object size (px)", min=0.0, max=100000.0, step=1.0, value=0.0,
                                        tooltip=tips.OBJECT_SIZE)
        self.all_slices = CheckBox(text="All slices", value=False, tooltip=tips.ALL_SLICES)
        self.run_button = PushButton(text="Segment", tooltip=tips.RUN)
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip=tips.CANCEL)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.busy_run = None  # the run the busy indicator waits to show for (show_busy)
        self.status = Label(value="Choose an image and press Segment.", tooltip=tips.UNCERTAINTY_LAYER)
        self.show_uncertainty = CheckBox(text="Show uncertainty (Shift-U)", value=False, tooltip=tips.SHOW_UNCERTAINTY)
        self.click_class = ComboBox(label="Click class", choices=class_choices(model_class_names("nuclei")), value=1,
                                    tooltip=tips.CLASS)
        self.suggest = CheckBox(text="Suggest where to click", value=True, tooltip=tips.SUGGEST)
        self.clear_button = PushButton(text="Clear clicks", tooltip=tips.CLEAR)
        self.click_status = Label(value="", tooltip=tips.CLICKS)
        self.learn_button = PushButton(text="Learn from this image", tooltip=tips.LEARN)
        self.save_path = FileEdit(label="Save model to", mode="w", filter="*.pt", tooltip=tips.SAVE_MODEL)
        self.save_button = PushButton(text="Save model", tooltip=tips.SAVE_MODEL)
        self.tasks_label = Label(value=NO_TASKS, tooltip=tips.TASKS)
        self.details = CheckBox(text="Show learning details", value=False, tooltip=tips.DETAILS)
        self.task_plot, self.mask_plot = TaskPlot(), MaskUsagePlot()
        for plot in (self.task_plot, self.mask_plot):  # behind 'Show learning details': the dock stays short
            plot.setVisible(False)
        self.details.changed.connect(self.show_details)
        self._model_list = model_list
        from qtpy.QtWidgets import QComboBox, QSizePolicy

        for label in (self.status, self.click_status, self.tasks_label):  # long messages (a file path) wrap
            label.native.setWordWrap(True)  # and never widen the dock over the canvas (before they are put in
            label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # it: magicgui sizes it then)
        dock.extend([self.image, self.model, self.checkpoint, self.device, self.samples, self.task, self.intensity,
                     self.object_size, self.all_slices, self.run_button, self.cancel_button, self.progress,
                     self.status, self.show_uncertainty, Label(value="<br><b>Correct</b>"), self.click_class,
                     self.suggest, self.clear_button, self.click_status, Label(value="<br><b>Learn</b>"),
                     self.learn_button, self.tasks_label, self.details, self.save_path, self.save_button])
        for combo in (self.image, self.model):  # long layer or file names: elided, not widening
            combo.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.native.setMinimumContentsLength(12)
        # the plots sit under 'Show learning details' (magicgui wraps it in a row)
        layout = container_layout(dock)
        at = 1 + next(i for i in range(layout.count()) if layout.itemAt(i).widget() is not None and
                      (layout.itemAt(i).widget() is self.details.native
                       or layout.itemAt(i).widget().isAncestorOf(self.details.native)))
        layout.insertWidget(at, self.task_plot)
        layout.insertWidget(at + 1, self.mask_plot)

    # -- what they show --------------------------------------------------------------------------------------------
    def show_details(self, shown: bool) -> None:
        for plot in (self.task_plot, self.mask_plot):
            plot.setVisible(bool(shown))

    def set_status(self, text: str) -> None:
        self.status.value = breakable(text)
        fit_height(self.status)

    def set_click_status(self, text: str) -> None:
        self.click_status.value = breakable(text)
        fit_height(self.click_status)

    def chosen_key(self) -> tuple:
        """(Model list value, model file or None): what identifies the model the user chose."""
        model = self.model.value
        return model, (str(self.checkpoint.value) if model == CUSTOM_MODEL else None)

    def show_busy(self, total: int) -> None:
        """A worker runs: Segment off, Cancel on, the bar (``total`` 0: a busy indicator, shown once the run has
        taken :data:`BUSY_DELAY_MS`; the status says what runs meanwhile)."""
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.max = total
        self.progress.value = 0
        self.busy_run = run = object()
        self.progress.visible = bool(total)
        if not total:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(BUSY_DELAY_MS, lambda: self.show_progress(run))

    def show_progress(self, run=None) -> None:
        """The bar shown (``run``: only if that run is still going: a late timer of an earlier one does nothing)."""
        if run is not None and run is not self.busy_run:
            return
        try:
            self.progress.visible = True
        except RuntimeError:  # the dock was closed meanwhile: its Qt widgets are gone
            pass

    def show_idle(self) -> None:
        self.busy_run = None
        self.progress.visible = False
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def disable(self) -> None:
        """A replaced panel: nothing can be pressed."""
        for button in (self.run_button, self.cancel_button, self.learn_button, self.save_button, self.clear_button):
            button.enabled = False

    def reset_models(self, on_gone) -> None:
        """Refresh the Model list, 'Model file…' last (magicgui appends new entries after the old ones), keeping
        the choice where it is still listed (under a new label: magicgui would fall back to the first entry);
        ``on_gone(value)`` when the chosen file is gone."""
        before = self.model.value
        with self.model.changed.blocked():
            self.model.reset_choices()
            if self.model.value != before and before in [v for _, v in self._model_list()]:
                self.model.value = before
        if self.model.value != before:
            on_gone(self.model.value)
        q = self.model.native
        i = q.findText(CUSTOM_MODEL)
        if 0 <= i < q.count() - 1:
            current = q.currentText()
            q.blockSignals(True)
            try:
                data = q.itemData(i)
                q.removeItem(i)
                q.addItem(CUSTOM_MODEL, data)
                q.setCurrentIndex(q.findText(current))
            finally:
                q.blockSignals(False)

    def choose_model(self, key) -> None:
        """Show ``key`` (a model key) as the chosen model, without the change's consequences."""
        model, path = key
        with self.model.changed.blocked():
            self.model.value = model
        if path is not None:
            self.checkpoint.value = path
        self.checkpoint.visible = model == CUSTOM_MODEL

    def set_classes(self, names) -> None:
        """The click classes of the model in use (or chosen), keeping the chosen one where it still exists."""
        current = int(self.click_class.value)
        with self.click_class.changed.blocked():
            self.click_class.choices = class_choices(names)
            self.click_class.value = current if current < len(names) else min(1, len(names) - 1)

    def class_values(self) -> list[int]:
        return [int(c) for c in self.click_class.choices]  # magicgui lists the values of (text, value) choices

    @staticmethod
    def file_gone_label(key) -> str:
        return f"{Path(key).stem} (in use; its file is gone)"
