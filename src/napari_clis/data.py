"""Loading the real datasets in ``../shared/data`` and the fixed splits of the CLIS protocol.

The split of ``dsb2018`` is drawn once with a fixed seed and stored in ``splits/dsb2018.json`` inside
the package, so pretraining and the interactive/continual benchmarks never share an image.
``isic2017`` uses its own challenge splits: ``train`` for pretraining, ``val`` for monitoring,
``test`` for the held-out measures and the benchmarks. ``bbbc039`` (16-bit Hoechst fluorescence) is split in
halves by a fixed seed (``splits/bbbc039.json``): ``pretrain`` may be added to the nuclei model's pretraining,
``heldout`` is for evaluation only.

Pure numpy: no Qt, no napari.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "Sample",
    "default_data_root",
    "load_dsb2018",
    "load_isic2017",
    "load_bbbc039",
    "dsb2018_split",
    "bbbc039_split",
    "make_bbbc039_split",
    "make_dsb2018_split",
    "load_dataset",
    "image_kind",
    "load_annotated_folder",
]

DSB_SPLIT_SEED = 2018
DSB_PRETRAIN_FRACTION = 0.6
BBBC039_SPLIT_SEED = 0


@dataclass
class Sample:
    """One image with its ground truth: ``image`` (H, W, 3) uint8 (``bbbc039``: (H, W) uint16 grey, as stored),
    ``mask`` (H, W) int32 class ids, ``instances`` (H, W) int32 object ids (0 = background) where the dataset has
    them (``dsb2018``, ``bbbc039``), else None."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray | None = None


def default_data_root() -> Path:
    """``$NAPARI_CLIS_DATA`` if set, else ``../shared/data`` from the working directory."""
    env = os.environ.get("NAPARI_CLIS_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"


def _read_rgb(path: Path) -> np.ndarray:
    from skimage.io import imread

    im = imread(path)
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    return np.ascontiguousarray(im[..., :3])


class DataNotFoundError(FileNotFoundError):
    """The real data for pretraining or a benchmark is not where it was looked for; the message says where."""


def _check_root(root: Path, name: str) -> Path:
    folder = Path(root) / name
    if not folder.is_dir():
        raise DataNotFoundError(
            f"Dataset folder {folder.resolve()} not found. Give the data folder, the one holding dsb2018/ and "
            "isic2017/ (--data on the command line, root in Python), or set NAPARI_CLIS_DATA; the default is "
            "../shared/data from the current directory."
        )
    return folder


def make_dsb2018_split(ids: list[str], seed: int = DSB_SPLIT_SEED) -> dict[str, list[str]]:
    """Split ``dsb2018`` ids into ``pretrain`` (60%) and ``pool`` (the rest) with a fixed seed."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_pre = int(round(DSB_PRETRAIN_FRACTION * len(ids)))
    return {
        "seed": seed,
        "pretrain": sorted(ids[i] for i in order[:n_pre]),
        "pool": sorted(ids[i] for i in order[n_pre:]),
    }


def dsb2018_split() -> dict[str, list[str]]:
    """The shipped split of ``dsb2018``: ``{"pretrain": [...], "pool": [...]}``."""
    text = resources.files("napari_clis").joinpath("splits").joinpath("dsb2018.json").read_text()
    return json.loads(text)


def _load_instance_dataset(root, name: str, split: dict, subset: str, limit: int | None, read_image) -> list[Sample]:
    """Images of a dataset stored as ``images/<stem>.png`` with ``masks/<stem>.png`` instance labels: the stems of
    ``split[subset]`` (or every image for ``all``), each with its foreground mask and instance labels."""
    folder = _check_root(Path(root) if root else default_data_root(), name)
    parts = [k for k in split if k != "seed"]
    if subset == "all":
        ids = sorted(p.stem for p in (folder / "images").glob("*.png"))
    elif subset in parts:
        ids = split[subset]
    else:
        raise ValueError(f"subset must be {', '.join(repr(k) for k in parts)} or 'all', got {subset!r}")
    if limit is not None:
        ids = ids[:limit]
    from skimage.io import imread

    out = []
    for i in ids:
        instances = imread(folder / "masks" / f"{i}.png").astype(np.int32)
        out.append(Sample(i, read_image(folder / "images" / f"{i}.png"), (instances > 0).astype(np.int32), instances))
    return out


def load_dsb2018(root: Path | str | None = None, subset: str = "pretrain", limit: int | None = None) -> list[Sample]:
    """Load ``dsb2018`` images with foreground masks (``mask > 0``) and instance labels; ``subset`` is
    ``pretrain``, ``pool`` or ``all``."""
    return _load_instance_dataset(root, "dsb2018", dsb2018_split(), subset, limit, _read_rgb)


def make_bbbc039_split(stems: list[str], seed: int = BBBC039_SPLIT_SEED) -> dict:
    """Split ``bbbc039`` stems in halves with a fixed seed: ``pretrain`` and ``heldout`` (evaluation only)."""
    stems = sorted(stems)
    order = np.random.default_rng(seed).permutation(len(stems))
    half = len(stems) // 2
    return {"seed": seed, "pretrain": sorted(stems[i] for i in order[:half]),
            "heldout": sorted(stems[i] for i in order[half:])}


def bbbc039_split() -> dict[str, list[str]]:
    """The shipped split of ``bbbc039``: ``{"pretrain": [...], "heldout": [...]}`` (50 images each)."""
    text = resources.files("napari_clis").joinpath("splits").joinpath("bbbc039.json").read_text()
    return json.loads(text)


def load_bbbc039(root: Path | str | None = None, subset: str = "heldout", limit: int | None = None) -> list[Sample]:
    """Load ``bbbc039`` images (16-bit grey, as stored) with foreground masks and instance labels; ``subset`` is
    ``pretrain``, ``heldout`` (evaluation only) or ``all``."""
    from skimage.io import imread

    return _load_instance_dataset(root, "bbbc039", bbbc039_split(), subset, limit, imread)


def load_isic2017(root: Path | str | None = None, split: str = "train", limit: int | None = None) -> list[Sample]:
    """Load an ``isic2017`` split (``train``, ``val`` or ``test``) with binary lesion masks."""
    folder = _check_root(Path(root) if root else default_data_root(), "isic2017")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    ids = sorted((p.stem for p in (folder / split / "images").glob("*.jpg")),
                 key=lambda s: int(s) if s.isdigit() else s)
    if limit is not None:
        ids = ids[:limit]
    from skimage.io import imread

    out = []
    for i in ids:
        image = _read_rgb(folder / split / "images" / f"{i}.jpg")
        mask = (imread(folder / split / "masks" / f"{i}.png") > 127).astype(np.int32)
        if mask.ndim == 3:
            mask = mask[..., 0]
        out.append(Sample(i, image, mask))
    return out


def load_dataset(name: str, part: str, root: Path | str | None = None, limit: int | None = None) -> list[Sample]:
    """``load_dataset("nuclei", "pretrain")`` etc.: the datasets by model name.

    nuclei: parts ``pretrain`` and ``heldout`` (= the dsb2018 pool); skin-lesion: ``pretrain`` (train),
    ``monitor`` (val) and ``heldout`` (test).
    """
    if name == "nuclei":
        return load_dsb2018(root, {"pretrain": "pretrain", "heldout": "pool"}[part], limit)
    if name == "skin-lesion":
        return load_isic2017(root, {"pretrain": "train", "monitor": "val", "heldout": "test"}[part], limit)
    raise ValueError(f"Unknown dataset {name!r}; expected 'nuclei' or 'skin-lesion'.")


def image_kind(image: np.ndarray, dataset: str) -> str:
    """A coarse modality label for per-kind results: fluorescence, brightfield or stained (colour)."""
    if dataset == "isic2017":
        return "dermoscopy"
    if dataset == "bbbc039":  # Hoechst fluorescence, 16-bit (its mean says nothing about brightfield)
        return "fluorescence (grey, dark)"
    grey = image.ndim == 2 or (np.array_equal(image[..., 0], image[..., 1])
                               and np.array_equal(image[..., 0], image[..., 2]))
    if not grey:
        return "stained (colour)"
    return "brightfield (grey, bright)" if image.mean() > 128 else "fluorescence (grey, dark)"


def _listed(names: list[str], most: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 3 more``."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    """The image files of ``folder`` by stem (hidden files and other types left out); a clear error for a folder
    that is missing or holds none, or for two files of one stem."""
    from .batch import SUPPORTED_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The {what} folder {folder} does not exist (or is not a folder).")
    files: dict[str, Path] = {}
    twins = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        if path.stem in files:
            twins.append(f"{files[path.stem].name} and {path.name}")
        files[path.stem] = path
    if twins:
        raise ValueError(f"The {what} folder {folder} holds two files of the same name: {_listed(twins)}. Images and "
                         "masks are paired by name; keep one of each.")
    if not files:
        raise ValueError(f"The {what} folder {folder} holds no images ({', '.join(SUPPORTED_SUFFIXES)}).")
    return files


def _read_mask(path: Path) -> np.ndarray:
    """A mask file's class (or object) ids ``(H, W)``, checked: whole numbers, none negative."""
    from .batch import read_image

    m = np.asarray(read_image(path)[0])
    if m.ndim == 3 and m.shape[-1] in (3, 4) and all(np.array_equal(m[..., 0], m[..., c]) for c in (1, 2)):
        m = m[..., 0]  # a grey mask saved as RGB(A)
    if m.ndim != 2:
        raise ValueError(f"The mask {path} is not a 2D label image (its shape is {m.shape}); a mask holds one class "
                         "id (or object id) per pixel.")
    if m.dtype.kind not in "biuf":
        raise ValueError(f"The mask {path} does not hold numbers (dtype {m.dtype}).")
    if m.dtype.kind == "f" and not (np.isfinite(m).all() and np.array_equal(m, np.round(m))):
        raise ValueError(f"The mask {path} holds fractions; a mask holds whole-number class ids per pixel.")
    if m.size and m.min() < 0:
        raise ValueError(f"The mask {path} holds negative values ({m.min()}); class ids start at 0 (background).")
    return m


def load_annotated_folder(images: Path | str, masks: Path | str, classes: int = 2) -> list[Sample]:
    """A user's annotated images: each image file of ``images`` (tif, png, jpg) with the mask of the same stem in
    ``masks``, as :class:`Sample`s in name order. With ``classes`` 2 every mask value above 0 is foreground (binary
    and instance masks alike; an instance mask, one with more than one id, also gives the samples' ``instances``,
    which train a distance head; a binary mask gives none: it does not say where touching objects meet); with more,
    the mask holds class ids 0 to ``classes - 1``.

    Raises ``ValueError`` naming the files for a mask missing or without an image, a mask of another size than its
    image or a class id too high, and :class:`~napari_clis.preprocessing.ImageError` for an image that cannot be
    read or is not 2D."""

    from .batch import read_image
    from .preprocessing import ImageError, as_2d_image

    if int(classes) != classes or classes < 2:
        raise ValueError(f"classes must be a whole number of at least 2 (background and one class), got {classes!r}")
    image_files, mask_files = _image_files(images, "images"), _image_files(masks, "masks")
    missing = sorted(set(image_files) - set(mask_files))
    extra = sorted(set(mask_files) - set(image_files))
    if missing or extra:
        said = []
        if missing:
            said.append(f"no mask in {masks} for {_listed([image_files[s].name for s in missing])}")
        if extra:
            said.append(f"masks without an image in {images}: {_listed([mask_files[s].name for s in extra])}")
        raise ValueError("Images and masks are paired by file name (without the extension): " + "; ".join(said) + ".")
    out, wrong = [], []
    for stem in sorted(image_files):
        try:
            image = as_2d_image(read_image(image_files[stem])[0])
        except ImageError as e:
            raise ImageError(f"{image_files[stem]}: {e}") from e
        raw = _read_mask(mask_files[stem])
        if raw.shape != image.shape[:2]:
            wrong.append(f"{mask_files[stem].name} is {raw.shape[1]}x{raw.shape[0]} px, its image "
                         f"{image.shape[1]}x{image.shape[0]}")
            continue
        top = int(raw.max()) if raw.size else 0
        if classes == 2:  # object ids of an instance mask; a binary one says nothing of where objects touch
            mask = (raw > 0).astype(np.int32)
            instances = raw.astype(np.int32) if len(np.unique(raw[raw > 0])) > 1 else None
        elif top >= classes:
            raise ValueError(f"The mask {mask_files[stem]} holds class id {top}, above the model's {classes} classes "
                             f"(ids 0 to {classes - 1}, 0 the background). Train with more classes (--classes "
                             f"{top + 1}), or with 2 classes to count every id above 0 as foreground.")
        else:
            mask, instances = raw.astype(np.int32), None
        out.append(Sample(stem, image, mask, instances))
    if wrong:
        raise ValueError(f"Masks must be the size of their image: {_listed(wrong)}.")
    return out
