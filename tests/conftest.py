"""Shared fixtures: the real test images in tests/data and sessions with the shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread

DATA = Path(__file__).parent / "data"
NUCLEI_FLUO = "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21"
NUCLEI_HE = "0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6"


@pytest.fixture(autouse=True)
def _models_folder(tmp_path_factory, monkeypatch):
    """The widget saves learned models in the user's models folder: in tests, a fresh one, never ~/.napari-clis."""
    monkeypatch.setenv("NAPARI_CLIS_MODELS", str(tmp_path_factory.mktemp("models")))


def _nuclei(stem: str):
    image = imread(DATA / "dsb2018" / "images" / f"{stem}.png")[..., :3]
    mask = imread(DATA / "dsb2018" / "masks" / f"{stem}.png") > 0
    return image, mask


@pytest.fixture(scope="session")
def nuclei_fluo():
    """(H, W) uint8 fluorescence nuclei (grey) and its foreground mask."""
    image, mask = _nuclei(NUCLEI_FLUO)
    return np.ascontiguousarray(image[..., 0]), mask


@pytest.fixture(scope="session")
def nuclei_he():
    """(H, W, 3) uint8 H&E nuclei and its foreground mask."""
    return _nuclei(NUCLEI_HE)


@pytest.fixture(scope="session")
def lesion():
    """(H, W, 3) uint8 dermoscopy image and its lesion mask.

    Test image 2, a typical lesion. Test image 1 (also in tests/data) is a faint lesion filling most of the
    field that the shipped model misses; it stays in the benchmark's numbers, not in a unit test.
    """
    image = imread(DATA / "isic2017" / "images" / "2.jpg")
    mask = imread(DATA / "isic2017" / "masks" / "2.png") > 127
    return image, mask


@pytest.fixture(scope="session")
def nuclei_session():
    from napari_clis import ClisSession

    return ClisSession.from_pretrained("nuclei", device="cpu")


@pytest.fixture(scope="session")
def lesion_session():
    from napari_clis import ClisSession

    return ClisSession.from_pretrained("skin-lesion", device="cpu")
