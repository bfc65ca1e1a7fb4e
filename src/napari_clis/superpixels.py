"""SLIC superpixels, the units a click annotates. Pure numpy/scikit-image."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

__all__ = ["compute_superpixels", "DEFAULT_SUPERPIXEL_SIZE"]

DEFAULT_SUPERPIXEL_SIZE = 12  # mean side of a superpixel in pixels (about 144 px each)


def compute_superpixels(normalized: np.ndarray, *, size: int = DEFAULT_SUPERPIXEL_SIZE,
                        compactness: float = 0.1) -> np.ndarray:
    """SLIC superpixels of a normalised image.

    Parameters
    ----------
    normalized : (3, H, W) float32
        Output of :func:`napari_clis.preprocessing.normalize_image` (values in ``[-0.5, 0.5]``).
    size : int
        Mean side length of a superpixel in pixels; ``H * W / size**2`` superpixels are asked for.
    compactness : float
        SLIC compactness (on intensities in ``[0, 1]``): lower follows edges more closely.

    Returns
    -------
    (H, W) int32 superpixel ids, starting at 1, each id one connected region.
    """
    if size < 2:
        raise ValueError(f"superpixel size must be >= 2 pixels, got {size}")
    img = np.moveaxis(normalized, 0, -1) + 0.5
    h, w = img.shape[:2]
    grey = np.allclose(img[..., 0], img[..., 1]) and np.allclose(img[..., 0], img[..., 2])
    n_segments = max(1, int(round(h * w / size**2)))
    labels = slic(
        img[..., 0] if grey else img,
        n_segments=n_segments,
        compactness=compactness,
        channel_axis=None if grey else -1,
        convert2lab=False,
        start_label=1,
        enforce_connectivity=True,
        max_num_iter=5,
    )
    return labels.astype(np.int32, copy=False)
