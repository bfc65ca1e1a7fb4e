"""Model files: a versioned format, safe loading, atomic writes.

A model file is a ``torch.save`` dictionary::

    {"format": "napari-clis-model", "format_version": 1,
     "config": {...NetworkConfig...}, "state_dict": {...}, "metadata": {...}}

It is loaded with ``torch.load(weights_only=True)`` so a foreign or malicious pickle is refused, and
a file of another format or version is refused with a message that says which.

Pure torch: no Qt, no napari.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import re
import tempfile
import time
import warnings
import zipfile
from importlib import resources
from pathlib import Path

import torch

from .network import ClisNet, NetworkConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
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
_SHIPPED = {"nuclei": "nuclei.pt", "skin-lesion": "skin-lesion.pt"}
MODELS_DIR_ENV = "NAPARI_CLIS_MODELS"


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, before any worker thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # saved files get the permissions a plain open() would give them


class CheckpointError(ValueError):
    """A model file cannot be used; the message says why."""


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same folder, are flushed to disk, and replace ``path``
    in one rename, which is then flushed too (the folder's entry). On any error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"Cannot save to {path}: the folder {folder} {what}.")
    if path.is_dir():
        raise CheckpointError(f"Cannot save to {path}: it is a folder. Give a file name, e.g. {path / 'model.pt'}.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        advice = (" Choose a folder you can write to." if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                  else "")
        raise CheckpointError(f"Cannot save to {path}: {e.strerror or e}.{advice}") from e
    existed = path.exists()
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
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
            raise CheckpointError(f"Could not save {path}: {e.strerror or e}. {kept}") from e
        raise
    _fsync_folder(folder)
    _remove_stale_temporaries(path)


STALE_TEMPORARY_SECONDS = 3600.0  # a save's temporary file untouched this long was left by a killed process


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files that saves of ``path`` killed mid-write left behind (hidden, ``.NAME.*.tmp``);
    ones touched within the last hour may belong to a save still under way in another process and stay."""
    now = time.time()
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - leftover.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                leftover.unlink()
        except OSError:  # gone already, or not ours to remove: harmless
            pass


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
    """Save ``net`` (weights, all tasks' kernel masks) and ``metadata`` atomically to ``path``."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "metadata": metadata or {},
    }
    if extra:
        payload.update(extra)
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
    """Load a model file; return ``(net, metadata, payload)`` with ``net`` in eval mode on the CPU."""
    path = Path(path)
    payload = _read_payload(path)
    try:
        config = NetworkConfig.from_dict(payload["config"])
        net = ClisNet(config)
        state = payload["state_dict"]
        task_ids = {int(m.group(1)) for k in state if (m := re.search(r"gates\.logits\.(\d+)$", k))}
        for _ in range(max(task_ids, default=0)):
            net.add_task()
        net.load_state_dict(state)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} does not match the CLIS network: {e}") from e
    net.eval()
    return net, dict(payload.get("metadata", {})), payload


def file_stamp(path) -> tuple | None:
    """``(device, inode, modification time in ns, size)`` of a file, or ``None`` where there is none. A save replaces
    a file by a rename (:func:`atomic_write_bytes`), so a file written since a stamp was taken has another one."""
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
    except OSError:
        return {}
    files.sort(key=lambda p: (-p.stat().st_mtime, p.name))
    return {p.stem: p for p in files}
