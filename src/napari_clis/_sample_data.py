"""Sample images for napari's File > Open Sample menu (sources and licences in sample_data/README.md)."""

from __future__ import annotations

from importlib import resources

import numpy as np


def _read(name: str) -> np.ndarray:
    from skimage.io import imread

    with resources.as_file(resources.files("napari_clis").joinpath("sample_data").joinpath(name)) as path:
        return imread(path)


def nuclei_sample():
    """A fluorescence nuclei image from the 2018 Data Science Bowl (CC0), shown as grey."""
    image = _read("nuclei.png")[..., 0]
    return [(image, {"name": "nuclei", "colormap": "gray"}, "image")]


def skin_lesion_sample():
    """A dermoscopy image from the ISIC 2017 challenge test set."""
    image = _read("skin_lesion.jpg")[..., :3]
    return [(image, {"name": "skin lesion", "rgb": True}, "image")]
