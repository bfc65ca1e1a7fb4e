"""Faults around model files: a process killed while saving, damaged files, a full disk, a folder that cannot be
written. The last good model must always stay loadable, and every failure must say what happened.

The kill tests run a small Python script in a child process and SIGKILL it at a known moment of the save: the
child replaces one system call of the save (``os.fdopen``'s write, ``os.fsync`` or ``os.replace``) by a stub that
first lets the real save go as far as that call, then touches a marker file and sleeps; the parent waits for the
marker and kills. One more test kills a real, unmodified save of a large file as soon as its temporary file appears.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import napari_clis
import napari_clis.checkpoint as checkpoint
import napari_clis.session as session_module
from napari_clis import ClisSession
from napari_clis.checkpoint import CheckpointError, load_model, save_model, shipped_model_path

from .conftest import DATA, NUCLEI_HE

SRC = str(Path(napari_clis.__file__).resolve().parents[1])  # the child imports the code under test
HE_IMAGE = DATA / "dsb2018" / "images" / f"{NUCLEI_HE}.png"

_HOOKS = '''
import os, sys, time
from pathlib import Path

def install_hook(stage: str, marker: Path) -> None:
    """Stop the next save at ``stage`` (the real calls before it have run), touch ``marker`` and wait to be killed."""
    def hold(*_args):
        marker.touch()
        time.sleep(600)

    if stage == "write":  # half the bytes are in the temporary file
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.f.close()
            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                hold()

        os.fdopen = lambda fd, mode="r", *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k))
    elif stage == "fsync":  # all bytes written, not yet flushed to disk
        os.fsync = hold
    elif stage == "rename":  # the temporary file is complete and flushed, not yet renamed over the old one
        os.replace = hold
    else:
        raise ValueError(stage)
'''

_SAVE_CHILD = _HOOKS + '''
from napari_clis import ClisSession
path, marker, stage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
s = ClisSession.from_pretrained("nuclei", device="cpu")
s.metadata["name"] = "second"
install_hook(stage, marker)
s.save(path)
'''

_LEARN_CHILD = _HOOKS + '''
import numpy as np
from skimage.io import imread
import napari_clis.session as session_module
from napari_clis import ClisSession

path, marker, stage, image_path = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
real = session_module.learn_task

def accepted(*args, **kwargs):  # these tests are about saving: every learn step counts as an improvement
    new, task, info = real(*args, **kwargs)
    return new, task, {**info, "dice_after": info["dice_before"] + 0.01}

session_module.learn_task = accepted
image = imread(image_path)[:64, :64, :3]
s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=1, autosave=path)
s.learn_settings.steps = 2
s.learn_settings.batch = 1
s.segment(image)
s.annotate(np.pad(np.ones((16, 16), bool), 24), 1)
s.learn()  # the first autosave: the last good file, with one learned task
install_hook(stage, marker)
s.segment(image[::-1])
s.learn()  # the second autosave, killed inside
'''


def _run_child(script: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 180.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it ends or takes too long first."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child ended (code {proc.returncode}) before the moment to kill it:\n{err[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the child never reached the moment to kill it")
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _temporaries(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


@pytest.mark.parametrize("stage", ["write", "fsync", "rename"])
def test_a_process_killed_while_saving_leaves_the_previous_model_loadable(tmp_path, stage):
    path, marker = tmp_path / "model.pt", tmp_path / "marker"
    net, _, _ = load_model(shipped_model_path("nuclei"))
    save_model(path, net, {"name": "first"})
    good = path.read_bytes()

    proc = _run_child(_SAVE_CHILD, path, marker, stage)
    _kill_when(proc, marker.exists)

    assert _temporaries(tmp_path, "model.pt"), "the child was not killed during its save"
    assert path.read_bytes() == good
    s = ClisSession.from_checkpoint(path, device="cpu")
    assert s.metadata["name"] == "first"
    s.save(path)  # the left-over temporary file does not stand in the way of the next save
    assert ClisSession.load(path, device="cpu").metadata["name"] == "first"


@pytest.mark.parametrize("stage", ["write", "rename"])
def test_a_process_killed_during_learns_autosave_leaves_the_last_learned_model_loadable(tmp_path, stage):
    path, marker = tmp_path / "session.pt", tmp_path / "marker"
    proc = _run_child(_LEARN_CHILD, path, marker, stage, HE_IMAGE)
    _kill_when(proc, marker.exists)

    assert _temporaries(tmp_path, "session.pt"), "the child was not killed during its autosave"
    s = ClisSession.load(path, device="cpu")  # the first learned task's autosave, whole
    assert s.net.n_tasks == 2 and len(s.tasks) == 1 and s.tasks[0].task == 1
    assert 1 in s.annotations
    r = s.segment(np.zeros((16, 16), np.uint8), task=1)
    assert np.isfinite(r.probabilities).all()


def test_a_real_save_killed_as_soon_as_its_temporary_file_appears_changes_nothing(tmp_path):
    """No stub: a 256 MB write (long enough to be caught in the act) killed by the parent's polling."""
    path = tmp_path / "big.pt"
    path.write_bytes(b"the previous file " * 1000)
    good = path.read_bytes()
    child = """
        import sys
        from napari_clis.checkpoint import atomic_write_bytes
        atomic_write_bytes(sys.argv[1], bytes(256 * 2**20))
    """
    proc = _run_child(child, path)
    _kill_when(proc, lambda: bool(_temporaries(tmp_path, "big.pt")))
    assert path.read_bytes() == good
    # the killed save's temporary file is removed by the next save at once (no process holds it), while the
    # temporary file of a save under way in another process (a real one, held before its flush) stays
    (leftover,) = _temporaries(tmp_path, "big.pt")
    marker = tmp_path / "marker"
    busy = _run_child(_HOOKS + _BUSY_SAVE_CHILD, path, marker)
    try:
        t0 = time.monotonic()
        while not marker.exists():
            assert busy.poll() is None, busy.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 120, "the second child never began its save"
            time.sleep(0.01)
        (under_way,) = [p for p in _temporaries(tmp_path, "big.pt") if p != leftover]
        checkpoint.atomic_write_bytes(path, b"the next save")
        assert not leftover.exists() and under_way.exists() and path.read_bytes() == b"the next save"
    finally:
        busy.kill()
        busy.communicate()
    checkpoint.atomic_write_bytes(path, b"the save after it")  # the killed second save's file goes too
    assert _temporaries(tmp_path, "big.pt") == [] and path.read_bytes() == b"the save after it"


_BUSY_SAVE_CHILD = '''
from napari_clis.checkpoint import atomic_write_bytes
install_hook("fsync", Path(sys.argv[2]))
atomic_write_bytes(sys.argv[1], b"a save under way")
'''


def test_where_files_cannot_be_locked_a_temporary_file_is_stale_after_an_hour(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "fcntl", None)  # as on Windows
    path = tmp_path / "model.pt"
    old, fresh = tmp_path / ".model.pt.killed.tmp", tmp_path / ".model.pt.another.tmp"
    old.write_bytes(bytes(1000))
    fresh.write_bytes(b"may be a save under way")
    hour_ago = time.time() - checkpoint.STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (hour_ago, hour_ago))
    checkpoint.atomic_write_bytes(path, b"the next save")
    assert not old.exists() and fresh.exists() and path.read_bytes() == b"the next save"


# -- damaged files -----------------------------------------------------------------------------------------------

def _damage(data: bytes, how: str) -> bytes:
    n = len(data)
    return {
        "empty": b"",
        "first 10 bytes": data[:10],
        "first half": data[: n // 2],
        "all but the last byte": data[:-1],
        "all but the zip directory": data[:-22],
        "zeros of the same size": bytes(n),  # what some file systems leave after a crash
        "a byte of the weights flipped": data[: n // 2] + bytes([data[n // 2] ^ 0x10]) + data[n // 2 + 1:],
        "the end overwritten": data[: n - 4096] + os.urandom(4096),
        "text": b"model weights, see attachment\n",
    }[how]


@pytest.mark.parametrize("how", ["empty", "first 10 bytes", "first half", "all but the last byte",
                                 "all but the zip directory", "zeros of the same size", "a byte of the weights flipped",
                                 "the end overwritten", "text"])
def test_a_damaged_model_file_is_refused_with_a_clear_message(tmp_path, how):
    path = tmp_path / "model.pt"
    path.write_bytes(_damage(shipped_model_path("nuclei").read_bytes(), how))
    for load in (ClisSession.from_checkpoint, ClisSession.load):
        with pytest.raises(CheckpointError) as err:
            load(path, device="cpu")
        message = str(err.value)
        assert str(path) in message
        assert any(w in message for w in ("damaged", "truncated, corrupt", "not a napari-clis model")), message
        assert "\n" not in message and len(message) < 500, message


# -- a full disk ----------------------------------------------------------------------------------------------------

def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _disk_full_at(monkeypatch, stage: str) -> None:
    """Make the next save find the disk full at ``stage``."""
    if stage == "create":  # no room for even an empty file (no free inodes)
        monkeypatch.setattr(checkpoint.tempfile, "mkstemp", _no_space)
    elif stage == "write":  # part of the bytes fit
        real_fdopen = os.fdopen

        class PartWriter:
            def __init__(self, f):
                self.f = f

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[:4096])
                _no_space()

        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: PartWriter(real_fdopen(fd, *a, **k)))
    elif stage == "fsync":  # delayed allocation: the error shows when the bytes go to disk
        monkeypatch.setattr(os, "fsync", _no_space)
    else:
        raise ValueError(stage)


def _accept_every_learn(monkeypatch) -> None:
    """These tests are about saving: every learn step counts as an improvement (none is rolled back)."""
    real = session_module.learn_task

    def accepted(*args, **kwargs):
        new, task, info = real(*args, **kwargs)
        return new, task, {**info, "dice_after": info["dice_before"] + 0.01}

    monkeypatch.setattr(session_module, "learn_task", accepted)


@pytest.fixture(scope="module")
def learnable():
    from skimage.io import imread

    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=1)
    s.learn_settings.steps = 2
    s.learn_settings.batch = 1
    return s, imread(HE_IMAGE)[:64, :64, :3]


@pytest.mark.parametrize("stage", ["create", "write", "fsync"])
def test_a_full_disk_is_reported_and_leaves_the_previous_file_intact(tmp_path, monkeypatch, learnable, stage):
    s, _ = learnable
    path = tmp_path / "model.pt"
    s.save(path)
    good = path.read_bytes()
    _disk_full_at(monkeypatch, stage)
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        s.save(path)
    assert str(path) in str(err.value)
    if stage != "create":  # the message says what is on disk: the previous file, or none at all for a new name
        assert "previous file is unchanged" in str(err.value)
        with pytest.raises(CheckpointError, match="No file was written"):
            s.save(tmp_path / "new.pt")
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "a temporary file was left behind"


@pytest.mark.parametrize("stage", ["write", "fsync"])
def test_a_full_disk_during_autosave_keeps_the_model_and_the_file_as_they_were(tmp_path, monkeypatch, learnable,
                                                                                stage):
    s, image = learnable
    _accept_every_learn(monkeypatch)
    path = tmp_path / "session.pt"
    s.autosave = path
    s.save(path)
    good, n_tasks, tasks = path.read_bytes(), s.net.n_tasks, list(s.tasks)
    s.segment(image)
    s.annotate(np.pad(np.ones((16, 16), bool), 24), 1)
    _disk_full_at(monkeypatch, stage)
    try:
        with pytest.raises(CheckpointError, match="No space left on device") as err:
            s.learn()
    finally:
        s.autosave = None
    assert path.read_bytes() == good, "the file on disk is no longer the last good one"
    # the learned task is kept in the session (throwing it away would lose the work), and the error says so
    assert s.net.n_tasks == n_tasks + 1 and s.tasks == tasks + [err.value.record]
    assert "is kept in this session, but it is not saved" in str(err.value)


def test_autosave_never_overwrites_a_file_another_session_wrote_it_saves_beside_it(tmp_path, monkeypatch, learnable):
    _, image = learnable
    _accept_every_learn(monkeypatch)
    path = tmp_path / "lab.pt"
    ClisSession.from_pretrained("nuclei", device="cpu").save(path)
    s = ClisSession.from_checkpoint(path, device="cpu", n_samples=1)
    s.learn_settings.steps, s.learn_settings.batch = 2, 1
    assert s.file_state(path) == "unchanged" and s.file_state(tmp_path / "other.pt") == "unknown"
    other = ClisSession.from_pretrained("nuclei", device="cpu")  # another window saves over the same file
    other.remembered.append(([0.0] * 128, 0))
    other.save(path)
    theirs = path.read_bytes()
    assert s.file_state(path) == "changed"
    s.autosave = path
    s.segment(image)
    s.annotate(np.pad(np.ones((16, 16), bool), 24), 1)
    s.learn()
    assert path.read_bytes() == theirs, "another session's file was overwritten"
    old, new = s.autosave_moved
    assert old == path and new == s.autosave != path and new.parent == tmp_path
    assert len(ClisSession.load(new).tasks) == 1 and s.file_state(new) == "unchanged"
    s.autosave_moved = None
    s.segment(image)
    s.learn()  # its own file now: saved there, nothing moved
    assert s.autosave == new and s.autosave_moved is None and len(ClisSession.load(new).tasks) == 2
    new.unlink()
    assert s.file_state(new) == "gone"
    monkeypatch.setenv("HOME", str(tmp_path))  # a path given with ~ is the same file
    s.save("~/home.pt")
    assert s.file_state("~/home.pt") == s.file_state(tmp_path / "home.pt") == "unchanged"


def test_autosave_to_a_file_it_never_read_or_wrote_saves_beside_it_and_a_failed_move_changes_nothing(
        tmp_path, monkeypatch, learnable):
    _, image = learnable
    _accept_every_learn(monkeypatch)
    path = tmp_path / "someone-elses.pt"
    ClisSession.from_pretrained("nuclei", device="cpu").save(path)
    theirs = path.read_bytes()
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=1, autosave=path)
    s.learn_settings.steps, s.learn_settings.batch = 2, 1
    s.segment(image)
    s.annotate(np.pad(np.ones((16, 16), bool), 24), 1)
    _disk_full_at(monkeypatch, "write")  # the move to a new file fails: nothing may claim it was made
    with pytest.raises(CheckpointError, match="No space left on device"):
        s.learn()
    assert s.autosave == path and s.autosave_moved is None and [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.undo()
    _accept_every_learn(monkeypatch)
    s.segment(image)
    s.learn()
    assert path.read_bytes() == theirs and s.autosave_moved == (path, s.autosave) and s.autosave != path
    assert len(ClisSession.load(s.autosave).tasks) == 2


def test_new_model_files_get_names_no_file_and_no_other_caller_has(tmp_path):
    first = checkpoint.unique_model_path(tmp_path, "nuclei")
    second = checkpoint.unique_model_path(tmp_path, "nuclei")  # another window, the same second: another file
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith("nuclei-") and first.suffix == ".pt"
    third = tmp_path / "nuclei-x.pt"
    third.write_bytes(b"")
    assert checkpoint.unique_model_path(tmp_path, "nuclei") not in (first, second, third)


# -- folders that cannot be written ----------------------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_saving_into_a_read_only_folder_says_so(tmp_path, learnable):
    s, _ = learnable
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="Permission denied. Choose a folder you can write to"):
            s.save(folder / "model.pt")
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EPERM])
def test_a_folder_the_system_will_not_let_us_write_says_so(tmp_path, monkeypatch, learnable, code):
    s, _ = learnable

    def refused(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", refused)
    with pytest.raises(CheckpointError) as err:
        s.save(tmp_path / "model.pt")
    assert os.strerror(code) in str(err.value) and "Choose a folder you can write to" in str(err.value)


def test_saving_to_a_folder_or_into_a_file_or_a_missing_folder_says_which(tmp_path, learnable):
    s, _ = learnable
    (tmp_path / "a file").write_text("x")
    cases = {tmp_path: "it is a folder. Give a file name",
             tmp_path / "a file" / "model.pt": "is a file, not a folder",
             tmp_path / "missing" / "model.pt": "does not exist"}
    for path, words in cases.items():
        with pytest.raises(CheckpointError, match=words):
            s.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]
