"""The Learn panel: learn from the corrected image (in a worker), the learned tasks and their plots, saving."""

from __future__ import annotations

import re
from pathlib import Path

from .. import _tooltips as tips
from ._common import AUTO_TASK, SEGMENTATION, breakable, notify_error, notify_warning, source_id
from ._controls import NO_TASKS


def moved_note(session) -> str:
    """What to tell the user when ``learn()`` saved to a new file because another window or program had written
    the old one ('' when it did not)."""
    moved, session.autosave_moved = session.autosave_moved, None
    if moved is None:
        return ""
    old, new = moved
    return (f" {Path(old).name} was written by another window or program (since this model was loaded or saved "
            f"here), so it was not overwritten: the model is saved as {Path(new).name} instead.")


def judged(record) -> str:
    """What the rollback rule saw of a kept task, in words: the corrections it follows and what it keeps of the
    rest (older records: its Dice against the corrected segmentation)."""
    fit = f"it fits your corrected segmentation {record.dice_after:.2f} (was {record.dice_before:.2f}; 1 = the same)."
    if record.agreement_after is None:
        return fit
    rest = f"keeps {record.agreement_after:.0%} of what you left as it was"
    if record.corrected_after is None:
        return f"it {rest} (nothing was corrected)."
    return (f"on its own (without your clicks) it gets {record.corrected_after:.0%} of the pixels you corrected right"
            f"{_before(record, 'the model before')} and {rest}.")


def _before(record, words: str) -> str:
    """The model before's share of the corrected pixels, in brackets ("none" where it got none of them right, the
    usual case: they are the pixels it had wrong; without it the share read like a failure, with nothing to
    compare it with)."""
    was = record.corrected_before
    if was is None:
        return ""
    return f" ({words}: {was:.0%})" if round(100 * was) > 0 else f" ({words}: none of them)"


def task_summary(record) -> str:
    """One line per learned task, in the words of :func:`judged` (the same figures as the Learn message)."""
    if record.corrected_after is not None and record.agreement_after is not None:
        return (f"gets {record.corrected_after:.0%} of the pixels you corrected right on its own"
                f"{_before(record, 'before')}, keeps {record.agreement_after:.0%} of the rest")
    if record.agreement_after is not None:
        return f"keeps {record.agreement_after:.0%} of what you accepted"
    return f"agrees with your corrected segmentation {record.dice_before:.2f} → {record.dice_after:.2f}"


class LearnPanel:
    """Learning and saving for one dock; its controls are the dock's (``learn_button``, ``tasks_label``, the
    plots, ``save_path``, ``save_button``)."""

    def __init__(self, dock):
        self.dock = dock
        self.learn_step = 0  # set from the worker thread; the bar reads it on a timer

    @property
    def state(self):
        return self.dock.state

    # -- learning ------------------------------------------------------------------------------------------------
    def learn(self) -> None:
        """Learn from the corrected segmentation of the slice being corrected, off the GUI thread."""
        d, state = self.dock, self.state
        session = state.session
        if session is None or session.interaction is None or state.target is None:
            notify_warning("Nothing to learn yet: segment an image and correct it first.")
            return
        seg = d.layers.find(SEGMENTATION)
        if seg is None or seg.metadata.get("source_id") != source_id(state.target[0]):
            notify_warning(f"Cannot learn: '{state.target[0].name}' has changed since it was segmented (or the "
                         "segmentation layer is gone). Press Segment, correct it, then Learn.")
            return
        try:  # the layers are the truth: the latest clicks (with their split / merge actions) and paint
            d.corrections.sync_session()
        except Exception as e:
            notify_error(f"Cannot learn: {e}")
            return
        self.choose_autosave(session, state.target[0].name)
        total = session.learn_settings.steps
        self.learn_step = 0
        runner = d.runner

        def progress(step, _total):  # called in the worker thread: the bar reads it on a timer
            self.learn_step = step
            return not runner.cancel_requested

        def work():
            runner.note_thread("learn")
            from ._heap import import_quietly

            import_quietly("torch._dynamo")  # what torch's optimisers import: here, without the collections
            return session.learn(progress=progress)

        runner.start("learn", work, on_return=self.on_learned, on_error=self.on_error, on_done=self.on_done,
                     poll=self.show_step, guarded=False)
        d.controls.show_busy(total)
        _, idx = state.target
        what = f"slice {tuple(int(i) for i in idx)} of this image (the slice segmented last)" if idx else "this image"
        d.controls.set_status(f"Learning from {what} ({total} steps)… Corrections made meanwhile apply to the "
                              "segmentation but are not part of this task.")

    def show_step(self) -> None:
        if not self.dock.destroyed:
            self.dock.controls.progress.value = self.learn_step

    def on_done(self) -> None:
        d = self.dock
        if d.destroyed:
            return
        d.controls.progress.visible = False
        if d.alive:
            d.controls.show_idle()

    def choose_autosave(self, session, image_name: str = "") -> None:
        """Where learning saves the session after each learned task: the file a failed autosave left, else the file
        it was loaded from when that is one of the user's models (in the models folder), else a new file there,
        named after the model and the first image learned (``nuclei-<image>-<date>-<time>.pt``: two series tell
        apart in the Model list), which the Model list then shows. (A file someone else wrote meanwhile is not
        overwritten: ``learn()`` then saves to a new file beside it, which :func:`moved_note` reports.)"""
        from napari.utils.notifications import show_warning

        from ..model_files import CheckpointError, models_dir, unique_model_path

        state = self.state
        if session.autosave is None and state.retry_autosave is not None:  # a failed autosave: the same file again
            session.autosave, state.retry_autosave = state.retry_autosave, None
        if session.autosave is not None:
            return
        folder = models_dir()
        source = Path(session.source) if session.source else None
        if source is not None and source.is_file() and source.parent.resolve() == folder.resolve():
            session.autosave = source
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            image = re.sub(r"[^\w.-]+", "-", image_name).strip("-.")[:40]
            stem = Path(session.model_name).stem or "model"
            session.autosave = unique_model_path(folder, f"{stem}-{image}" if image else stem)
        except (OSError, CheckpointError) as e:
            show_warning(f"Learned tasks are not saved automatically: the models folder {folder} cannot be used "
                         f"({getattr(e, 'strerror', None) or e}). Save the model yourself (Save model).")

    def on_learned(self, record, unsaved: str | None = None) -> None:
        """A learned task: list it. ``unsaved``: why its autosave failed (the task is kept, not saved). A dock
        closed meanwhile still keeps the state right (a reopened dock takes it over) and says what happened while
        its window is open."""
        from napari.utils.notifications import show_info, show_warning

        d, state = self.dock, self.state
        session = state.session
        moved = moved_note(session)
        new_file = "" if session.autosave is None or state.model_key[0] == str(Path(session.autosave)) else \
            ", now chosen in Model (the model you started from is unchanged)"  # a new file: learned from a shipped one
        if unsaved is not None:
            # so that switching models asks for Save model first, as for any unsaved task; the next learn retries it
            state.retry_autosave, session.autosave = session.autosave, None
        elif session.autosave is not None:  # learn() saved it (always in the models folder): list it, choose it
            self.on_saved(session.autosave)
        saved = f" {unsaved}" if unsaved is not None else \
            f" Saved as {Path(session.autosave).name} in the models folder{new_file}." \
            if session.autosave is not None else " It is not saved in any file yet: press Save model."
        if not d.alive:
            if not d.destroyed:
                (show_warning if unsaved is not None or moved or session.autosave is None else show_info)(
                    f"Learned task {record.task} (after the widget was closed).{saved}{moved}")
            return
        late = "Learning had finished when Cancel was pressed, so the task is kept. " \
            if d.runner.cancel_requested else ""
        adapted = " This image is unlike the model's training images: the task has its own normalisation and " \
            "adapters for images of its kind." if record.task in session.net.adapted_tasks() else ""
        msg = (f"{late}Learned task {record.task} from this image in {record.seconds:.0f} s: {judged(record)} "
               f"Similar images are segmented with it from now on.{adapted}{saved}{moved}")
        (show_warning if unsaved is not None or moved else show_info)(msg)
        # the status short (the whole message, nine lines, pushed Correct and Learn below a 720 px window): what
        # the task does is in the notification and in the learned tasks' list under Learn
        kept = f" {unsaved}" if unsaved is not None else f" Saved as {Path(session.autosave).name}." \
            if session.autosave is not None else " Not saved yet: press Save model."
        own = " (its own normalisation, for images of its kind)" if adapted else ""
        d.controls.set_status(f"{late}Learned task {record.task} from this image in {record.seconds:.0f} s{own}."
                              f"{kept}{moved}")
        d.controls.status.tooltip = msg
        self.show_tasks()
        if d.controls.chosen_key() != state.model_key:  # another model was chosen meanwhile: its hint stays
            d.on_model_changed(d.controls.model.value)

    def on_error(self, error: Exception) -> None:
        from napari.utils.notifications import show_warning

        from ..session import AutosaveError, LearnCancelled, LearnRejected

        d, session = self.dock, self.state.session
        if isinstance(error, AutosaveError):  # learned and kept, but not saved: say so, and keep it listed
            self.on_learned(error.record, unsaved=f"It is NOT saved: {error.__cause__ or error} Press Save model "
                                                  "to save it in a folder you can write.")
            return
        moved = moved_note(session) if session is not None else ""
        if moved:  # the rollback saved the remembered image, to a new file
            self.on_saved(session.autosave)
        if not d.alive:
            if moved and not d.destroyed:
                show_warning(moved.strip())
            return
        if isinstance(error, (LearnCancelled, LearnRejected)):
            show_warning(str(error) + moved)
            d.controls.set_status(str(error) + moved)
        else:
            notify_error(f"Learning failed, the model is unchanged: {error}")
            d.controls.set_status(f"Learning failed: {error}")

    # -- the learned tasks ---------------------------------------------------------------------------------------
    def task_choices(self, _widget=None) -> list[tuple[str, int]]:
        """'auto', then the tasks of the model in use (task 0: the pretrained one)."""
        state, controls = self.state, getattr(self.dock, "controls", None)  # none while the Task list is made
        in_use = state.session is not None and controls is not None and state.model_key == controls.chosen_key()
        n = state.session.net.n_tasks if in_use else 1
        return [("automatic", AUTO_TASK), ("none (pretrained)", 0)] + [(f"task {t}", t) for t in range(1, n)]

    def show_tasks(self) -> None:
        """The task list, its plot, and the mask usage of the task that segmented the current image."""
        from ..continual import mask_usage

        c, session = self.dock.controls, self.state.session
        c.task.reset_choices()  # a new task, or another model
        c.task_plot.set_tasks(session.tasks if session is not None else [])
        c.mask_plot.set_usage(mask_usage(session.net, session.task) if session is not None else [],
                              session.task if session is not None else 0)
        c.tasks_label.tooltip = tips.TASKS
        if session is None or not session.tasks:
            c.tasks_label.value = NO_TASKS
            return
        n = len(session.tasks)
        them = "them" if n > 1 else "it"
        lines = [f"{n} task{'s' if n > 1 else ''} learned. Similar images are segmented with {them} (Learned task: "
                 "automatic); choose one in 'Learned task' to use it on any image."]
        if n > 4:
            lines.append(f"The last 4 of {n}:")
        lines += [f"task {r.task} ({r.created[:16].replace('T', ' ')}): {task_summary(r)}" for r in session.tasks[-4:]]
        free, reserve = session.free_kernels
        lines.append(f"Room for new tasks: {round(100 * free / reserve) if reserve else 0}%"
                     + ("" if free else " (none left)"))
        c.tasks_label.value = "\n".join(lines)
        c.tasks_label.tooltip = f"{tips.TASKS}\n\nFree kernels for new tasks: {free} of {reserve}."

    def model_hint(self) -> None:
        """Another model is chosen than the one in use: its tasks are known once it is loaded (Segment)."""
        c, session = self.dock.controls, self.state.session
        c.task.value = AUTO_TASK
        c.task.reset_choices()
        in_use = f" (In use: {session.model_name}.)" if session is not None else ""
        c.tasks_label.value = breakable(f"Press Segment to use this model; its learned tasks show then.{in_use}")

    # -- saving ----------------------------------------------------------------------------------------------------
    def on_saved(self, path) -> None:
        """The session is in ``path`` now: a file of the models folder is listed and chosen in the Model list,
        keeping this session for it (choosing it does not reload it), and is the one learning keeps up to date.
        A user who chose another model meanwhile (while learning) keeps that choice; a closed dock only keeps
        the state right (for a reopened dock to take over)."""
        from ..model_files import models_dir

        d, state = self.dock, self.state
        session = state.session
        chosen = d.alive and d.controls.chosen_key() == state.model_key
        state.saved_tasks, state.retry_autosave = len(session.tasks), None
        if Path(path).parent.resolve() == models_dir().resolve():
            session.autosave = Path(path)
            state.model_key = (str(Path(path)), None)
        if not d.alive:
            return
        d.reset_models()
        if chosen and state.model_key[0] != d.controls.model.value:
            d.controls.choose_model(state.model_key)

    def save_model(self, path=None) -> None:
        """Save the session's model (with its learned tasks) to ``path`` (default: the 'Save model to' box, or
        when that is empty the file learning keeps up to date, else a new file in the models folder, which the
        Model list shows)."""
        from ..model_files import CheckpointError, models_dir, unique_model_path

        d, state = self.dock, self.state
        session = state.session
        if session is None:
            notify_warning("There is no model to save yet: segment an image first.")
            return
        path = str(path or d.controls.save_path.line_edit.value or "").strip()
        stem = Path(session.model_name).stem or "model"
        auto = session.autosave if session.autosave is not None else state.retry_autosave
        skipped = None
        if (not path or path == ".") and auto is not None and Path(auto).parent.resolve() == models_dir().resolve():
            file_state = session.file_state(auto)
            if file_state == "changed" or (file_state == "unknown" and Path(auto).exists()):
                skipped = Path(auto)  # someone else's file now: not overwritten, a new file instead
            else:
                path = str(auto)  # the file learning keeps up to date (or failed to, the last time)
        try:
            if not path or path == ".":
                models_dir().mkdir(parents=True, exist_ok=True)
                path = str(unique_model_path(models_dir(), stem))
            elif Path(path).is_dir():  # a folder: a new file in it
                path = str(unique_model_path(Path(path), stem))
            elif not Path(path).suffix:  # the Model file chooser lists *.pt
                path += ".pt"
        except (OSError, CheckpointError) as e:
            notify_error(f"Could not use the folder for the model: {getattr(e, 'strerror', None) or e}. Choose a "
                         "file in 'Save model to'.")
            return
        try:
            session.save(path)
        except Exception as e:
            notify_error(f"Could not save the model: {e}")
            d.controls.set_status(f"Not saved: {e}")
            return
        from napari.utils.notifications import show_info

        self.on_saved(path)
        why = f" ({skipped.name} was written by another window or program, so it was not overwritten.)" \
            if skipped is not None else ""
        show_info(f"Saved the model with {len(session.tasks)} learned task(s) to {path}.{why}")
        d.controls.set_status(f"Saved to {path}.")
