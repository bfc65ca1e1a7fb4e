"""Model files: a versioned format, safe loading, atomic writes.

A model file is a ``torch.save`` dictionary::

    {"format": "napari-clis-model", "format_version": 1,
     "config": {...NetworkConfig...}, "state_dict": {...}, "metadata": {...}}

It is loaded with ``torch.load(weights_only=True)`` so a foreign or malicious pickle is refused (PyTorch 2.6 or
newer: before it that mode can be bypassed), and a file of another format or version is refused with a message that
says which. What loads is then checked before any of it is used: the configuration's sizes (before the network is
built), every tensor (names, shapes, finite values), the kernel gates' task numbers and every metadata field (type
and range). The same checks run before a save, so a diverged model (NaN weights) is never written. Every failure is
a :class:`CheckpointError` that names the field.

Pure torch: no Qt, no napari.
"""

from __future__ import annotations

import errno
import glob
import io
import math
import numbers
import os
import re
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch

from .model_files import (  # noqa: F401 - the listing helpers (torch-free), under their old names too
    MODELS_DIR_ENV,
    CheckpointError,
    file_stamp,
    models_dir,
    saved_models,
    shipped_model_path,
    shipped_models,
    unique_model_path,
)
from .network import ClisNet, NetworkConfig

try:
    import fcntl
except ImportError:  # Windows: a killed save's temporary file is known by its age alone
    fcntl = None

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "MIN_TORCH",
    "check_torch_version",
    "atomic_write_bytes",
    "save_model",
    "load_model",
    "shipped_models",
    "shipped_model_path",
    "models_dir",
    "saved_models",
    "MODELS_DIR_ENV",
]

FORMAT = "napari-clis-model"
FORMAT_VERSION = 1


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, before any worker thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # saved files get the permissions a plain open() would give them


#: the oldest PyTorch whose ``torch.load(weights_only=True)`` is trusted: before 2.6 a crafted file can bypass it and
#: run code (CVE-2025-32434, GHSA-53q9-r3pm-6pq6); pyproject.toml asks for the same
MIN_TORCH = (2, 6)


def check_torch_version(version: str | None = None) -> None:
    """Refuse (:class:`CheckpointError`) to read model files with a PyTorch older than :data:`MIN_TORCH`."""
    version = str(torch.__version__ if version is None else version)
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < MIN_TORCH:
        floor = ".".join(map(str, MIN_TORCH))
        raise CheckpointError(
            f"napari-clis needs PyTorch {floor} or newer to open model files safely, and this is PyTorch {version}: "
            f"before {floor}, a model file made to attack its reader can run its own code on this computer "
            f"(published advisory CVE-2025-32434). Update PyTorch, e.g. pip install -U \"torch>={floor}\"."
        )


def atomic_write_bytes(path: Path | str, data) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    ``data`` is bytes, or a function that writes the file into the binary file object it is given (a TIFF:
    ``lambda f: tifffile.imwrite(f, ...)``, without a copy of the file in memory). Every file napari-clis writes
    goes through here: model files, the napari writer's TIFFs and batch outputs (:mod:`napari_clis.tiffs`).

    The bytes go to a temporary file in the same folder, are flushed to disk, and replace ``path``
    in one rename, which is then flushed too (the folder's entry). On any error the temporary file is
    removed and ``path`` is untouched. A ``path`` that is a symbolic link is followed: its target is
    written (in the target's folder) and the link stays. Temporary files that killed saves of the same
    file left behind are removed first (:func:`_remove_stale_temporaries`).
    """
    given = Path(path)
    path = _follow_link(given)
    shown = str(given) if path == given else f"{given} (a link to {path})"
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"Cannot save to {shown}: the folder {folder} {what}.")
    if path.is_dir():
        raise CheckpointError(f"Cannot save to {shown}: it is a folder. Give a file name, e.g. "
                              f"{given / 'model.pt'}.")
    _remove_stale_temporaries(path)  # before writing: on a full disk their room may be what this save needs
    try:
        fd, tmp, lock = _locked_temporary(path, folder)
    except OSError as e:
        advice = (" Choose a folder you can write to." if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                  else "")
        raise CheckpointError(f"Cannot save to {shown}: {e.strerror or e}.{advice}") from e
    existed = path.exists()
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            kept = "The previous file is unchanged." if existed else "No file was written."
            raise CheckpointError(f"Could not save {shown}: {_write_failure(e, folder)}. {kept}") from e
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _fsync_folder(folder)


def _write_failure(e: OSError, folder: Path) -> str:
    """Why a write failed, in a user's words: a full disk is named as such, with the folder (numpy's writes report
    it as "65536 requested and 54060 written", with no error code)."""
    if e.errno == errno.ENOSPC or (e.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(e))):
        return (f"{os.strerror(errno.ENOSPC)}: the disk that holds the folder {folder} is full; free some space "
                "there, or choose another folder")
    if e.errno == getattr(errno, "EDQUOT", None):
        return (f"{e.strerror}: your quota on the disk that holds the folder {folder} is used up; free some space "
                "there, or choose another folder")
    return str(e.strerror or e)


def _follow_link(path: Path) -> Path:
    """``path``, or where a symbolic link at ``path`` leads (through every link on the way)."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # a loop of links: realpath gives up on one of them
        raise CheckpointError(f"Cannot save to {path}: it is a symbolic link that leads round in a loop, to no file.")
    return target


def _locked_temporary(path: Path, folder: Path) -> tuple[int, str, int | None]:
    """A new temporary file for a save of ``path``: ``(fd, name, lock)``. ``lock``, a second descriptor of the same
    file, holds an exclusive lock on it until the caller closes it after the rename; the system drops the lock when
    the process dies, so a temporary file that nobody holds locked was left by a killed save. ``lock`` is None where
    files cannot be locked (Windows, some network file systems)."""
    for _ in range(5):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        lock = None
        if fcntl is not None:
            lock = os.dup(fd)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(lock)
                lock = None
        if lock is None or os.fstat(fd).st_nlink > 0:
            return fd, tmp, lock
        # another save's clean-up took it for a killed save's in the instant before it was locked: make another
        os.close(lock)
        os.close(fd)
    raise OSError(errno.EAGAIN, "the temporary files of this save kept being removed by another save")


STALE_TEMPORARY_SECONDS = 3600.0  # where files cannot be locked: a temporary file untouched this long is stale


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files (hidden, ``.NAME.*.tmp``) that saves of ``path`` killed mid-write left behind.

    A save holds its temporary file locked (:func:`_locked_temporary`) and the lock dies with its process, so one
    that can be locked now belongs to no running save. Where a file cannot be locked (no locks on this system, or
    another user's file) only one untouched for :data:`STALE_TEMPORARY_SECONDS` is taken for a killed save's."""
    now = time.time()
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            unheld = _unheld(leftover)
            if unheld or (unheld is None and now - leftover.stat().st_mtime > STALE_TEMPORARY_SECONDS):
                leftover.unlink()
        except OSError:  # gone already, or not ours to remove: harmless
            pass


def _unheld(leftover: Path) -> bool | None:
    """Whether no process holds ``leftover`` locked; None where that cannot be known."""
    if fcntl is None:
        return None
    try:
        fd = os.open(leftover, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a save under way
    except OSError:
        return None  # this file system has no locks
    finally:
        os.close(fd)  # also drops the lock just taken
    return True


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so that a rename in it survives a power cut, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot flush a folder; the file itself is complete on disk
    finally:
        os.close(fd)


def save_model(path: Path | str, net: ClisNet, metadata: dict | None = None, extra: dict | None = None) -> None:
    """Save ``net`` (weights, all tasks' kernel masks) and ``metadata`` atomically to ``path``.

    What is saved is checked first, as :func:`load_model` checks it: a model that cannot be loaded back (a diverged
    training's NaN weights, a metadata field out of range) is refused with a :class:`CheckpointError` that names
    the field, and nothing is written (an existing file stays as it was)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "metadata": metadata or {},
    }
    if extra:
        payload.update(extra)
    _check_payload(f"Not saving {path} (nothing was written; an existing file is unchanged)", payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _check_checksums(path: Path) -> None:
    """Refuse a model file whose parts do not match their CRC-32 checksums.

    ``torch.save`` writes a zip archive whose members carry checksums, but ``torch.load`` does not check them:
    without this, a file damaged on disk or in a copy would load as a silently different model.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return  # not a zip archive: torch.load says what it is
    except Exception as e:  # a damaged archive directory: zipfile raises several other types
        raise _damaged(path, e) from e
    with archive:
        if not any(m.CRC for m in archive.infolist()):
            return  # written with torch's checksums switched off: nothing to compare with
        try:
            bad = archive.testzip()
        except Exception as e:
            raise _damaged(path, e) from e
    if bad is not None:
        raise CheckpointError(
            f"{path} is damaged: its part {bad!r} does not match the checksum written with it, so the file was "
            "corrupted or changed after it was saved. Use a backup copy, or save the model again."
        )


def _damaged(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is damaged (its archive structure is corrupt: {type(e).__name__}: {e}). Use a "
                           "backup copy, or save the model again.")


def _load_failure(e: Exception) -> str:
    """torch.load's error in a few words. Its own texts are long and written for developers (they stay chained to
    the CheckpointError), and some advise loading with ``weights_only=False``, which would run the file's code."""
    text = str(e)
    zip_error = re.search(r"failed reading zip archive: ([^.]+)", text)
    if zip_error:
        return f"its archive is damaged or incomplete ({zip_error.group(1)})"
    if isinstance(e, EOFError) or not text:
        return "the file ends too early"
    return f"its contents are not in the model file format ({type(e).__name__}; anything else is refused, never run)"


def _read_payload(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"Model file {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a model file.")
    check_torch_version()
    _check_checksums(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is not news to the user: it is refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same to the user
        raise CheckpointError(
            f"{path} is not a readable napari-clis model file (it may be truncated, corrupt or of another "
            f"program): {_load_failure(e)}."
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-clis model file (no '{FORMAT}' format marker).")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a napari-clis model of format version {version}, but this napari-clis reads "
            f"version {FORMAT_VERSION}. Use the napari-clis version that wrote it, or retrain."
        )
    return payload


def load_model(path: Path | str) -> tuple[ClisNet, dict, dict]:
    """Load a model file; return ``(net, metadata, payload)`` with ``net`` in eval mode on the CPU.

    Everything in the file is checked before it is used (:func:`_check_payload`): a :class:`CheckpointError` names
    the field that is wrong."""
    path = Path(path)
    payload = _read_payload(path)
    where = f"{path} cannot be used"
    config, n_tasks, metadata = _check_payload(where, payload)
    try:
        net = ClisNet(config)
        for _ in range(n_tasks - 1):
            net.add_task()
    except Exception as e:  # within the limits this is memory: say so with the file
        raise CheckpointError(f"{where}: its network ({config}) could not be built: {type(e).__name__}: {e}") from e
    state = payload["state_dict"]
    try:  # the learned tasks' own BatchNorms and adapters (model files from before them have none)
        net.make_room_for(state)
    except ValueError as e:
        raise CheckpointError(f"{where}: the weight {e}.") from e
    expected = net.state_dict()
    for problem, keys in (("has no weight", [k for k in expected if k not in state]),
                          ("has a weight the network does not have:", [k for k in state if k not in expected]),
                          ("has a weight of the wrong shape:",
                           [k for k in expected if k in state and state[k].shape != expected[k].shape])):
        if keys:
            shown = ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise CheckpointError(f"{where}: it {problem} {shown} (it does not match the CLIS network of its "
                                  "configuration).")
    try:
        net.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"{where}: it does not match the CLIS network: {e}") from e
    net.eval()
    return net, metadata, payload


# -- what a model file may hold: checked when it is read and before it is written ----------------------------------
#: the network sizes a model file may ask for, ``(least, most)``; checked before anything is allocated
CONFIG_LIMITS = {"in_channels": (3, 3), "n_classes": (2, 255), "width": (1, 128), "bottleneck_dilation": (1, 8)}
MAX_TASKS = 10_000  # tasks (kernel masks) a model may hold
WORKING_SIDE_LIMITS = (8, 16_384)  # px: the working resolution's longest side
_GATE_KEY = re.compile(r"(.+)\.gates\.logits\.(\d+)")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(where: str, name: str, value, least: int, most: int | None = None, meaning: str = "") -> None:
    if not _is_whole(value) or value < least or (most is not None and value > most):
        span = f"from {least} to {most}" if most is not None else f">= {least}"
        raise CheckpointError(f"{where}: {name} must be a whole number {span}{meaning}, got {_shown(value)}.")


def _number(where: str, name: str, value, meaning: str = "", *, least: float | None = None,
            above: float | None = None, below: float | None = None) -> None:
    """A finite number (not a bool) >= ``least``, > ``above``, < ``below`` where they are given."""
    bounds = [(least, "at least", lambda v, b: v >= b), (above, "above", lambda v, b: v > b),
              (below, "below", lambda v, b: v < b)]
    if not (_is_number(value) and all(b is None or holds(value, b) for b, _, holds in bounds)):
        span = " and ".join(f"{word} {b}" for b, word, _ in bounds if b is not None)
        raise CheckpointError(f"{where}: {name} must be a finite number{' ' + span if span else ''}{meaning}, "
                              f"got {_shown(value)}.")


def _of_type(where: str, name: str, value, kind: type, described: str) -> None:
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: {name} must be {described}, got {_shown(value)}.")


def _numbers(where: str, name: str, value, length: int | None = None) -> None:
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise CheckpointError(f"{where}: {name} must be a list of finite numbers, got {_shown(value)}.")
    if length is not None and len(value) != length:
        raise CheckpointError(f"{where}: {name} must hold {length} numbers (one per class), got {len(value)}.")


def _check_payload(where: str, payload: dict) -> tuple[NetworkConfig, int, dict]:
    """Check a model file's contents before any of them is used: ``(config, number of tasks, metadata)``.

    ``where`` begins every message (the file, and whether it is being read or written); the rest names the field.
    Sizes are checked before anything is allocated, so a forged file cannot make the reader build a huge network
    or loop over a task number it made up."""
    config = _check_config(where, payload.get("config"))
    n_tasks = _check_state(where, payload.get("state_dict"))
    metadata = payload.get("metadata", {})
    _check_metadata(where, metadata, config, n_tasks)
    annotations = payload.get("annotations", {})
    _of_type(where, "'annotations'", annotations, dict, "a dictionary of painted maps by task")
    for task, painted in annotations.items():
        if not (isinstance(task, str) and task.isdigit() and int(task) < n_tasks and str(int(task)) == task):
            raise CheckpointError(f"{where}: 'annotations' holds a painted map of task {_shown(task)}, which the "
                                  f"model does not have (tasks 0 to {n_tasks - 1}).")
        if not (isinstance(painted, torch.Tensor) and painted.ndim == 2 and not painted.is_floating_point()
                and not painted.is_complex() and painted.layout == torch.strided):
            raise CheckpointError(f"{where}: the painted map of task {task} in 'annotations' must be a 2D tensor of "
                                  f"whole numbers, got {_shown(painted)}.")
    return config, n_tasks, dict(metadata)


def _check_config(where: str, config) -> NetworkConfig:
    _of_type(where, "its network configuration ('config')", config, dict, "a dictionary")
    for name, (least, most) in CONFIG_LIMITS.items():
        if name in config:
            _whole(where, f"the network's '{name}' (config)", config[name], least, most)
    if "dropout" in config:
        _number(where, "the network's 'dropout' (config)", config["dropout"], least=0.0, below=1.0)
    if "instance_head" in config:  # model files written before the distance head have none: False
        _of_type(where, "the network's 'instance_head' (config)", config["instance_head"], bool, "true or false")
    return NetworkConfig.from_dict(config)


def _check_state(where: str, state) -> int:
    """Every weight a finite tensor; the kernel gates numbered 0, 1, ... alike in every layer. The number of tasks."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{where}: its weights ('state_dict') must be a dictionary of tensors, got "
                              f"{_shown(state)}.")
    gates: dict[str, list[str]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: its weights ('state_dict') have a name that is not text: {_shown(key)}.")
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided or value.is_complex():
            raise CheckpointError(f"{where}: the weight {key!r} must be a plain tensor of numbers, got "
                                  f"{_shown(type(value).__name__)}.")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: the weight {key!r} holds NaN or infinite values (the training that "
                                  "made it diverged); the model would give empty labels and NaN maps.")
        m = _GATE_KEY.fullmatch(key)
        if m:
            gates.setdefault(m.group(1), []).append(m.group(2))
    if not gates:
        raise CheckpointError(f"{where}: its weights ('state_dict') hold no kernel gates ('...gates.logits.0').")
    n_tasks = min(len(found) for found in gates.values())  # bounded by the number of weights in the file
    if n_tasks > MAX_TASKS:
        raise CheckpointError(f"{where}: it holds {n_tasks} tasks; napari-clis reads at most {MAX_TASKS}.")
    expected = {str(t) for t in range(n_tasks)}
    for layer, found in gates.items():
        extra = [n for n in found if n not in expected]
        if extra:
            raise CheckpointError(f"{where}: the weight '{layer}.gates.logits.{extra[0][:20]}' names a task the "
                                  f"model's other layers do not have (every layer has tasks 0 to {n_tasks - 1}).")
    return n_tasks


def _check_metadata(where: str, meta, config: NetworkConfig, n_tasks: int) -> None:
    """Every metadata field napari-clis reads, by type and range (fields it does not read are kept as they are)."""
    _of_type(where, "its 'metadata'", meta, dict, "a dictionary")
    field = "the metadata field '{}'".format
    if "name" in meta:
        _of_type(where, field("name"), meta["name"], str, "text")
    if "class_names" in meta and not (isinstance(meta["class_names"], list)
                                      and all(isinstance(c, str) for c in meta["class_names"])):
        raise CheckpointError(f"{where}: {field('class_names')} must be a list of names, got "
                              f"{_shown(meta['class_names'])}.")
    if meta.get("working_long_side") is not None:
        _whole(where, field("working_long_side"), meta["working_long_side"], *WORKING_SIDE_LIMITS,
               " (pixels; None: the image's own resolution)")
    for name in ("test_time_flips", "single_object"):
        if name in meta:
            _of_type(where, field(name), meta[name], bool, "True or False")
    if "ibp_alpha_per_kernel" in meta:
        _number(where, field("ibp_alpha_per_kernel"), meta["ibp_alpha_per_kernel"], above=0.0)
    if meta.get("object_diameter") is not None:  # the median object diameter (px) the model was trained at
        _number(where, field("object_diameter"), meta["object_diameter"], " (pixels)", above=0.0)
    if "tasks" in meta:
        _of_type(where, field("tasks"), meta["tasks"], list, "a list")
    if "decision" in meta:
        decision = meta["decision"]
        _of_type(where, field("decision"), decision, dict, "a dictionary")
        if decision.get("class_log_prior") is not None:
            _numbers(where, field("decision") + "'s 'class_log_prior'", decision["class_log_prior"], config.n_classes)
        if "threshold" in decision:
            _number(where, field("decision") + "'s 'threshold'", decision["threshold"], above=0.0, below=1.0)
        if "single_object" in decision:
            _of_type(where, field("decision") + "'s 'single_object'", decision["single_object"], bool,
                     "True or False")
    if "training" in meta:
        training = meta["training"]
        _of_type(where, field("training"), training, dict, "a dictionary")
        if "step" in training:
            _whole(where, field("training") + "'s 'step'", training["step"], 0)
        if "seconds" in training:
            _number(where, field("training") + "'s 'seconds'", training["seconds"], least=0.0)
        for name in ("history", "earlier_phases"):
            if name in training:
                _of_type(where, field("training") + f"'s {name!r}", training[name], list, "a list")
    if "interaction_settings" in meta:
        from .interactive import Interaction, InteractionError

        settings = meta["interaction_settings"]
        _of_type(where, field("interaction_settings"), settings, dict, "a dictionary")
        for name, value in settings.items():
            if name not in ("smoothness", "calibration", "locality"):
                raise CheckpointError(f"{where}: {field('interaction_settings')} holds an unknown setting "
                                      f"{_shown(name)} (known: smoothness, calibration, locality).")
            try:
                Interaction.check_setting(name, value)
            except InteractionError as e:  # "smoothness must be ...": the setting named as the other fields are
                said = str(e).rstrip(".").removeprefix(name)
                raise CheckpointError(f"{where}: in {field('interaction_settings')}, '{name}'{said}.") from None
    lengths = set()  # of the fingerprints: every one is compared with every other
    if "learned_tasks" in meta:
        tasks = meta["learned_tasks"]
        _of_type(where, field("learned_tasks"), tasks, list, "a list")
        for i, record in enumerate(tasks):
            lengths.add(_check_task_record(where, f"{field('learned_tasks')}[{i}]", record, n_tasks))
    if "remembered_images" in meta:
        remembered = meta["remembered_images"]
        _of_type(where, field("remembered_images"), remembered, list, "a list")
        for i, item in enumerate(remembered):
            name = f"{field('remembered_images')}[{i}]"
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise CheckpointError(f"{where}: {name} must be a pair [fingerprint, task], got {_shown(item)}.")
            _numbers(where, name + "'s fingerprint", item[0])
            lengths.add(len(item[0]))
            _whole(where, name + "'s task", item[1], 0, n_tasks - 1, " (a task of the model)")
    if "familiarity" in meta:  # the pretraining images' first-layer statistics (familiarity.reference_summary)
        summary, name, n_stats = meta["familiarity"], field("familiarity"), 2 * config.width
        _of_type(where, name, summary, dict, "a dictionary")
        for part in ("mean", "std"):
            _numbers(where, f"{name}'s {part!r}", summary.get(part))
            if len(summary[part]) != n_stats:
                raise CheckpointError(f"{where}: {name}'s {part!r} must hold {n_stats} numbers (2 per channel of the "
                                      f"first layer), got {len(summary[part])}.")
        if not all(v > 0 for v in summary["std"]):
            raise CheckpointError(f"{where}: {name}'s 'std' must be positive, got {_shown(summary['std'])}.")
        refs = summary.get("reference")
        if not isinstance(refs, list) or not refs:
            raise CheckpointError(f"{where}: {name}'s 'reference' must be a non-empty list, got {_shown(refs)}.")
        for i, row in enumerate(refs):
            _numbers(where, f"{name}'s 'reference'[{i}]", row)
            if len(row) != n_stats:
                raise CheckpointError(f"{where}: {name}'s 'reference'[{i}] must hold {n_stats} numbers, got "
                                      f"{len(row)}.")
        _whole(where, f"{name}'s 'k'", summary.get("k"), 1, len(refs), " (nearest images)")
        _number(where, f"{name}'s 'limit'", summary.get("limit"), " (a distance)", above=0.0)
    if len(lengths) > 1:
        raise CheckpointError(f"{where}: the fingerprints in {field('learned_tasks')} and "
                              f"{field('remembered_images')} differ in length ({sorted(lengths)}).")


def _check_task_record(where: str, name: str, record, n_tasks: int) -> int:
    """One learned task's record (:class:`~napari_clis.continual.TaskRecord`); the length of its fingerprint."""
    import dataclasses

    from .continual import TaskRecord

    _of_type(where, name, record, dict, "a dictionary")
    fields = {f.name: f for f in dataclasses.fields(TaskRecord)}
    unknown = [k for k in record if k not in fields]
    missing = [k for k, f in fields.items() if k not in record and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if unknown or missing:
        what = f"an unknown entry {_shown(unknown[0])}" if unknown else f"no {missing[0]!r}"
        raise CheckpointError(f"{where}: {name} has {what}.")
    _whole(where, f"{name}'s 'task'", record["task"], 1, n_tasks - 1, " (a learned task of the model)")
    _whole(where, f"{name}'s 'parent'", record["parent"], 0, n_tasks - 1, " (a task of the model)")
    _numbers(where, f"{name}'s 'fingerprint'", record["fingerprint"])
    shape = record["image_shape"]
    if not (isinstance(shape, (list, tuple)) and all(_is_whole(v) and v >= 0 for v in shape)):
        raise CheckpointError(f"{where}: {name}'s 'image_shape' must be a list of whole numbers, got {_shown(shape)}.")
    clicks = record["clicks"]
    if not (isinstance(clicks, list) and all(isinstance(c, (list, tuple)) and all(_is_whole(v) for v in c)
                                             for c in clicks)):
        raise CheckpointError(f"{where}: {name}'s 'clicks' must be a list of [row, column, class], got "
                              f"{_shown(clicks)}.")
    kernels = record["kernels_on"]
    if not (isinstance(kernels, dict) and all(isinstance(k, str) and _is_whole(v) and v >= 0
                                              for k, v in kernels.items())):
        raise CheckpointError(f"{where}: {name}'s 'kernels_on' must give a whole number per layer, got "
                              f"{_shown(kernels)}.")
    _whole(where, f"{name}'s 'kernels_new'", record["kernels_new"], 0)
    for key in ("dice_before", "dice_after"):
        _number(where, f"{name}'s {key!r}", record[key])
    for key in ("corrected_before", "corrected_after", "agreement_after"):  # None: not measured (older files)
        value = record.get(key)
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise CheckpointError(f"{where}: {name}'s {key!r} must be a share of pixels from 0 to 1 (or None), got "
                                  f"{_shown(value)}.")
    _number(where, f"{name}'s 'seconds'", record["seconds"], least=0.0)
    if "created" in record:
        _of_type(where, f"{name}'s 'created'", record["created"], str, "text")
    return len(record["fingerprint"])
