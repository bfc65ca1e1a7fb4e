"""Where the model files are, by name, without torch: what the widget lists when its dock opens.

The shipped models, the models folder (``$NAPARI_CLIS_MODELS`` or ``~/.napari-clis/models``), a new unique file name
in it, a file's stamp, and a model file's class names (read from the file's pickled record with nothing of it run
and no torch imported). :mod:`napari_clis.checkpoint`, which loads and saves the models (and imports torch), gives
the same names. No torch, no Qt, no napari: importing this module is cheap, so the GUI thread can call it.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import time
import zipfile
from importlib import resources
from pathlib import Path

__all__ = [
    "CheckpointError",
    "MODELS_DIR_ENV",
    "shipped_models",
    "shipped_model_path",
    "models_dir",
    "saved_models",
    "unique_model_path",
    "file_stamp",
    "class_names",
]

_SHIPPED = {"nuclei": "nuclei.pt", "skin-lesion": "skin-lesion.pt"}
MODELS_DIR_ENV = "NAPARI_CLIS_MODELS"


class CheckpointError(ValueError):
    """A model file cannot be used; the message says why."""


def shipped_models() -> list[str]:
    """Names of the pretrained models inside the package."""
    return list(_SHIPPED)


def shipped_model_path(name: str) -> Path:
    """Path of a shipped model file by name (``"nuclei"`` or ``"skin-lesion"``)."""
    if name not in _SHIPPED:
        raise ValueError(f"Unknown model {name!r}; shipped models are {', '.join(_SHIPPED)}. "
                         "For your own model file use ClisSession.from_checkpoint(path).")
    return Path(str(resources.files("napari_clis").joinpath("weights").joinpath(_SHIPPED[name])))


def models_dir() -> Path:
    """The folder where the widget saves models and looks for them: ``$NAPARI_CLIS_MODELS`` if set, else
    ``~/.napari-clis/models``. It may not exist yet."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".napari-clis" / "models"


def saved_models(folder: Path | str | None = None) -> dict[str, Path]:
    """The model files (``*.pt``) in ``folder`` (default :func:`models_dir`) by name, newest first.

    Only names and paths: nothing is loaded, so a broken file is reported when it is chosen, not here."""
    folder = Path(folder) if folder is not None else models_dir()
    try:
        files = [p for p in folder.glob("*.pt") if p.is_file()]
        files.sort(key=lambda p: (-p.stat().st_mtime, p.name))
    except OSError:  # the folder, or a file in it, went away while it was listed
        return {}
    return {p.stem: p for p in files}


def file_stamp(path) -> tuple | None:
    """``(device, inode, modification time in ns, size)`` of a file, or ``None`` where there is none. A save replaces
    a file by a rename (``checkpoint.atomic_write_bytes``), so a file written since a stamp was taken has another
    one."""
    try:
        st = Path(path).stat()
    except (OSError, TypeError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


_NAMES_GIVEN: set[str] = set()  # model file names handed out in this process (two windows may save in the same second)


def unique_model_path(folder, stem: str) -> Path:
    """A new model file name in ``folder`` that no file has and this process has not handed out yet:
    ``STEM-DATE-TIME.pt``, else ``STEM-DATE-TIME-2.pt`` and so on."""
    folder = Path(folder)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        path = folder / (f"{base}.pt" if n == 1 else f"{base}-{n}.pt")
        if str(path) not in _NAMES_GIVEN and not path.exists():
            _NAMES_GIVEN.add(str(path))
            return path
    raise CheckpointError(f"No free model file name for {stem} in {folder}.")


class _Inert:
    """What every object of a model file's pickle but its plain containers reads as: nothing is built, nothing runs."""

    def __init__(self, *_args, **_kwargs):
        pass

    def __call__(self, *_args, **_kwargs):
        return _Inert()

    def __setstate__(self, _state):
        pass


class _RecordReader(pickle.Unpickler):
    """Reads a ``torch.save`` file's record with its tensors (and any other class) replaced by :class:`_Inert`:
    only builtin values (dicts, lists, text, numbers) come out as they are."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            from collections import OrderedDict

            return OrderedDict
        return _Inert

    def persistent_load(self, _pid):
        return None


@functools.lru_cache(maxsize=64)
def _class_names(path: str, _stamp) -> tuple[str, ...] | None:
    try:
        with zipfile.ZipFile(path) as z:
            record = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if record is None or z.getinfo(record).file_size > 64 * 2**20:
                return None
            payload = _RecordReader(io.BytesIO(z.read(record))).load()
    except Exception:  # noqa: BLE001 - not a model file, or a damaged one: loading it says why
        return None
    names = payload.get("metadata", {}).get("class_names") if isinstance(payload, dict) else None
    if isinstance(names, (list, tuple)) and len(names) >= 2 and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None


def class_names(model) -> list[str] | None:
    """The class names a model file declares (``["background", "nucleus"]``), for a shipped model's name or a file's
    path; ``None`` where the file has none or cannot be read (loading it then says why). Fast (milliseconds), and
    neither torch nor the network is loaded: the GUI thread shows them before the model is loaded."""
    try:
        path = shipped_model_path(model) if str(model) in _SHIPPED else Path(model)
    except (TypeError, ValueError):
        return None
    stamp = file_stamp(path)
    if stamp is None:
        return None
    names = _class_names(str(path), stamp)
    return list(names) if names is not None else None
