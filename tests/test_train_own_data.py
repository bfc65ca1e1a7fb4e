"""Training on a user's own annotated images (issue 19, item 3): `napari_clis.train` and `napari-clis train` on a
folder, `training.train_arrays` on images in memory; on the real dsb2018 images of tests/data."""

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_clis import ClisSession, TrainingCancelled, TrainingDiverged, train
from napari_clis.checkpoint import save_model, saved_models
from napari_clis.cli import main
from napari_clis.data import load_annotated_folder
from napari_clis.metrics import dice
from napari_clis.network import ClisNet, NetworkConfig
from napari_clis.training import TRAIN_STEPS, train_arrays

DATA = Path(__file__).parent / "data" / "dsb2018"
TINY = dict(batch=2, crop=64)  # a few steps on small crops: seconds on a CPU


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Copies of the two annotated dsb2018 images, and a models folder holding a model the user had."""
    root = tmp_path / "dsb2018"  # the images folder is called "images": models are named after the one above
    monkeypatch.setenv("NAPARI_CLIS_MODELS", str(root / "models"))
    shutil.copytree(DATA / "images", root / "images")
    shutil.copytree(DATA / "masks", root / "masks")
    (root / "models").mkdir()
    (root / "models" / "mine.pt").write_bytes(b"a model the user had")
    return root


def _untouched(folder: Path) -> None:
    """Nothing written in the models folder: the user's model as it was, no model file, no checkpoint."""
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["mine.pt"]
    assert (folder / "models" / "mine.pt").read_bytes() == b"a model the user had"


def test_a_tiny_run_from_the_nuclei_model_writes_a_model_that_segments(folders):
    lines = []
    path = train(folders / "images", folders / "masks", init="nuclei", steps=4, log=lines.append, **TINY)
    assert path.parent == folders / "models" and path.name == "nuclei-dsb2018.pt"
    assert path.stem in saved_models()  # the widget's Model list shows it
    assert not list((folders / "models").glob("*.ckpt"))  # finished: no checkpoint left
    assert (folders / "models" / "mine.pt").read_bytes() == b"a model the user had"
    assert sum("validation dice" in line for line in lines) >= 4, lines  # one per evaluation
    session = ClisSession.from_checkpoint(path)
    assert session.class_names == ["background", "nucleus"]
    for sample in load_annotated_folder(folders / "images", folders / "masks"):
        assert dice(session.segment(sample.image).labels, sample.mask) > 0.7, sample.id
    # the same call again writes a new file beside it, never over it
    again = train(folders / "images", folders / "masks", init="nuclei", steps=1, **TINY)
    assert again != path and again.parent == path.parent and path.is_file()


def test_cancel_keeps_the_checkpoint_and_the_same_call_resumes(folders):
    done = []
    with pytest.raises(TrainingCancelled, match="step 2 of 3.*go on from there"):
        train(folders / "images", folders / "masks", init="nuclei", steps=3, **TINY,
              progress=lambda step, total, loss: done.append(step), cancel=lambda: len(done) >= 2)
    models = folders / "models"
    assert sorted(p.name for p in models.iterdir()) == ["mine.pt", "nuclei-dsb2018.pt.ckpt"]  # no model file
    lines = []
    path = train(folders / "images", folders / "masks", init="nuclei", steps=3, **TINY, log=lines.append)
    assert any("resumed" in line and "at step 2" in line for line in lines), lines
    assert path.is_file() and not (models / "nuclei-dsb2018.pt.ckpt").exists()


def test_a_checkpoint_of_another_training_is_not_resumed(folders):
    with pytest.raises(TrainingCancelled):
        train(folders / "images", folders / "masks", init="nuclei", steps=3, **TINY, cancel=lambda: True)
    with pytest.raises(ValueError, match="checkpoint of another training"):
        train(folders / "images", folders / "masks", init="nuclei", steps=3, seed=1, **TINY)
    assert not list((folders / "models").glob("nuclei-dsb2018*.pt"))


def test_a_diverged_run_writes_nothing(folders, capsys):
    with pytest.raises(TrainingDiverged, match="diverged.*lower learning rate"):
        train(folders / "images", folders / "masks", init="nuclei", steps=5, lr=1e30, **TINY)
    _untouched(folders)
    code = main(["train", "--images", str(folders / "images"), "--masks", str(folders / "masks"), "--init", "nuclei",
                 "--steps", "5", "--lr", "1e30"])
    assert code == 1 and "diverged" in capsys.readouterr().err
    _untouched(folders)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    iio.imwrite(path, mask.astype(np.uint16))


def test_missing_and_extra_masks_are_named(folders, capsys):
    stems = sorted(p.stem for p in (folders / "images").iterdir())
    (folders / "masks" / f"{stems[0]}.png").unlink()
    _write_mask(folders / "masks" / "stray.png", np.zeros((8, 8)))
    with pytest.raises(ValueError) as err:
        train(folders / "images", folders / "masks", init="nuclei", steps=1)
    message = str(err.value)
    assert f"no mask in {folders / 'masks'} for {stems[0]}.png" in message and "stray.png" in message, message
    _untouched(folders)
    code = main(["train", "--images", str(folders / "images"), "--masks", str(folders / "masks")])
    assert code == 2 and "stray.png" in capsys.readouterr().err
    _untouched(folders)


def test_a_mask_of_another_size_is_named(folders):
    mask = sorted((folders / "masks").iterdir())[1]
    _write_mask(mask, iio.imread(mask)[:100, :90])
    with pytest.raises(ValueError, match=rf"must be the size of their image: {mask.name} is 90x100 px, its image "):
        train(folders / "images", folders / "masks", init="nuclei", steps=1)
    _untouched(folders)


def test_class_ids_above_the_classes_asked_for_or_the_models_are_refused(folders):
    mask = sorted((folders / "masks").iterdir())[0]
    instances = iio.imread(mask)
    _write_mask(mask, np.minimum(instances, 4))  # ids 0-4: five classes
    with pytest.raises(ValueError, match=rf"{mask.name} holds class id 4, above the model's 3 classes"):
        train(folders / "images", folders / "masks", init="nuclei", classes=3, steps=1)
    # a three-class model file: its classes are the default
    three = folders / "three.pt"
    save_model(three, ClisNet(NetworkConfig(n_classes=3)), {"name": "three", "class_names": ["bg", "a", "b"]})
    with pytest.raises(ValueError, match="above the model's 3 classes"):
        train(folders / "images", folders / "masks", init=three, steps=1)
    _untouched(folders)
    # with the default two classes every id above 0 is foreground (instance masks count as foreground)
    samples = load_annotated_folder(folders / "images", folders / "masks")
    assert all(set(np.unique(s.mask)) <= {0, 1} and s.instances is not None for s in samples)
    assert np.array_equal(samples[0].mask, (instances > 0).astype(np.int32))


def test_fewer_than_two_images_and_bad_arguments_are_refused(folders):
    for folder in ("images", "masks"):
        sorted((folders / folder).iterdir())[1].unlink()
    with pytest.raises(ValueError, match="at least 2 annotated images.*has 1"):
        train(folders / "images", folders / "masks", init="nuclei", steps=1)
    with pytest.raises(ValueError, match="masks folder .* does not exist"):
        train(folders / "images", folders / "elsewhere", init="nuclei")
    (folders / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        train(folders / "images", folders / "empty", init="nuclei")
    with pytest.raises(ValueError, match="neither a shipped model .* nor a model file"):
        train(folders / "images", folders / "masks", init="mitochondria")
    with pytest.raises(ValueError, match="exists already"):
        train(folders / "images", folders / "masks", init="nuclei", output=folders / "models" / "mine.pt")
    _untouched(folders)


def test_the_help_says_the_default_steps():
    from napari_clis.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = sub.format_help().replace("\n", " ")
    assert f"default {TRAIN_STEPS['fine-tune']} from a model, {TRAIN_STEPS['new']} for a new one" in " ".join(
        text.split()), text


# -- in memory: train_arrays, the widget's way in (napari's image and labels layers) --------------------------------

def _pairs():
    """The two dsb2018 images (RGBA as stored) and their instance masks (object ids, as napari's labels hold)."""
    stems = sorted(p.stem for p in (DATA / "images").iterdir())
    return ([iio.imread(DATA / "images" / f"{s}.png") for s in stems],
            [iio.imread(DATA / "masks" / f"{s}.png") for s in stems], ["fluo", "he"])


def test_train_arrays_writes_a_model_the_widget_lists(folders):
    images, masks, names = _pairs()
    assert max(int(m.max()) for m in masks) > 2  # instance masks: every id above 0 counts as foreground
    lines, steps = [], []
    path = train_arrays(images, masks, names=names, steps=3, log=lines.append,
                        progress=lambda step, total, loss: steps.append((step, total)), **TINY)
    assert path == folders / "models" / "nuclei-fluo.pt" and path.stem in saved_models()
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert any("1 images to train on, 1 to validate on" in line for line in lines), lines
    assert sorted(p.name for p in (folders / "models").iterdir()) == ["mine.pt", "nuclei-fluo.pt"]  # no checkpoint
    session = ClisSession.from_checkpoint(path)
    assert session.class_names == ["background", "nucleus"]
    assert dice(session.segment(images[0][..., :3]).labels, masks[0] > 0) > 0.7
    # one pair is enough (nothing kept aside), into a file of the caller's choosing; never over an existing one
    lines.clear()
    out = train_arrays([images[1]], [masks[1] > 0], output=folders / "one.pt", steps=1, log=lines.append, **TINY)
    assert out == folders / "one.pt" and out.is_file()
    assert any("none kept aside to validate on" in line for line in lines), lines
    with pytest.raises(ValueError, match="exists already"):
        train_arrays([images[1]], [masks[1]], output=out, steps=1, **TINY)


def test_train_arrays_names_bad_input_and_writes_nothing(folders):
    images, masks, names = _pairs()
    cases = [
        (([], []), "nothing to train on"),
        ((images, masks[:1]), "2 images but 1 masks"),
        ((images[0], masks[0]), r"lists, one array per image.*train_arrays\(\[image\], \[mask\]\)"),
        ((images, [masks[0], masks[1][:100, :90]]), "Masks must be the size of their image: the mask of he is "
                                                    "90x100 px, its image 320x256"),
        ((images, [masks[0], masks[1] - 1.5]), "mask of he holds fractions"),
        ((images, [masks[0].astype(np.int32) - 1, masks[1]]), "mask of fluo holds negative values"),
        ((images, [masks[0], np.zeros((2, 256, 320))]), "mask of he is not a 2D image"),
        ((images, [np.zeros_like(m) for m in masks]), "No mask marks any object"),
        (([im[:30, :30] for im in images], [m[:30, :30] for m in masks]), "is 30x30 px: too small"),
    ]
    for (imgs, msks), message in cases:
        with pytest.raises(ValueError, match=message):
            train_arrays(imgs, msks, names=names[:len(imgs)] if isinstance(imgs, list) else None, steps=1, **TINY)
    # class ids above a three-class model's; with two classes (the nuclei model) the same masks are foreground
    three = folders / "three.pt"
    save_model(three, ClisNet(NetworkConfig(n_classes=3)), {"name": "three", "class_names": ["bg", "a", "b"]})
    with pytest.raises(ValueError, match="mask of fluo holds class id 16, above the model's 3 classes"):
        train_arrays(images, masks, names=names, init=three, steps=1, **TINY)
    with pytest.raises(ValueError, match="neither a shipped model"):
        train_arrays(images, masks, init="mitochondria")
    _untouched(folders)


def test_train_arrays_cancelled_or_diverged_leaves_nothing(folders):
    images, masks, names = _pairs()
    done = []
    with pytest.raises(TrainingCancelled, match="step 1 of 3"):
        train_arrays(images, masks, names=names, steps=3, keep_progress=False, resume=False, **TINY,
                     progress=lambda step, total, loss: done.append(step), cancel=lambda: len(done) >= 1)
    _untouched(folders)  # no model file, no checkpoint
    with pytest.raises(TrainingDiverged, match="diverged"):
        train_arrays(images, masks, names=names, steps=3, lr=1e30, **TINY)
    _untouched(folders)
    # kept progress: the same pixels resume, other pixels are another training
    with pytest.raises(TrainingCancelled):
        train_arrays(images, masks, names=names, steps=2, cancel=lambda: True, **TINY)
    assert (folders / "models" / "nuclei-fluo.pt.ckpt").is_file()
    with pytest.raises(ValueError, match="checkpoint of another training"):
        train_arrays(images, [masks[0], masks[1] > 1], names=names, steps=2, **TINY)
    lines = []
    path = train_arrays(images, masks, names=names, steps=2, log=lines.append, **TINY)
    assert any("resumed" in line for line in lines) and path.is_file()
    assert not (folders / "models" / "nuclei-fluo.pt.ckpt").exists()


def test_fine_tuning_the_nuclei_model_on_instance_masks_keeps_touching_nuclei_apart(folders):
    """The shipped nuclei model was pretrained with touching nuclei kept apart (contact weight 10): a fine-tune on
    instance masks goes on doing so unless told otherwise, and the model file records what it did."""
    images, masks, names = _pairs()
    lines = []
    path = train_arrays(images, masks, names=names, steps=1, log=lines.append, **TINY)
    said = [line for line in lines if "touching objects kept apart (contact weight 10)" in line]
    assert len(said) == 1, lines
    border = int(said[0].split(": ")[1].split(" px")[0])
    assert border > 0  # the H&E pair's nuclei touch
    settings = ClisSession.from_checkpoint(path).metadata["training"]["settings"]
    assert settings["contact_weight"] == 10.0
    lines.clear()
    off = train_arrays(images, masks, names=names, steps=1, log=lines.append, contact_weight=0, **TINY)
    assert not any("contact weight" in line for line in lines), lines
    assert ClisSession.from_checkpoint(off).metadata["training"]["settings"]["contact_weight"] == 0.0
    # binary masks have no objects to keep apart: said so, and nothing of the masks changes
    lines.clear()
    train_arrays(images, [m > 0 for m in masks], names=names, steps=1, log=lines.append, **TINY)
    assert any("no two objects (one id each) of a mask touch" in line for line in lines), lines
    # a new network starts without it
    lines.clear()
    fresh = train_arrays(images, masks, names=names, init=None, steps=1, log=lines.append, **TINY)
    assert ClisSession.from_checkpoint(fresh).metadata["training"]["settings"]["contact_weight"] == 0.0


def test_a_bad_contact_weight_is_refused_before_anything_is_read(folders):
    images, masks, names = _pairs()
    for bad in (-1, float("nan"), float("inf"), "lots"):
        with pytest.raises(ValueError, match="contact weight must be a number of at least 0"):
            train_arrays(images, masks, names=names, steps=1, contact_weight=bad, **TINY)
        with pytest.raises(ValueError, match="contact weight must be a number of at least 0"):
            train(folders / "images", folders / "masks", init="nuclei", steps=1, contact_weight=bad, **TINY)
    assert main(["train", "--images", str(folders / "images"), "--masks", str(folders / "masks"), "--init", "nuclei",
                 "--contact-weight", "-2"]) == 2
    _untouched(folders)
