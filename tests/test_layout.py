"""The one image-layout policy (preprocessing.image_layout, alpha_is_transparency), shared by the widget and batch."""

import numpy as np
import pytest

from napari_clis.preprocessing import ImageError, alpha_is_transparency, image_layout


@pytest.mark.parametrize("shape, colour, lead, plane, channels", [
    ((64, 80), None, (), (64, 80), 0),
    ((64, 80, 3), None, (), (64, 80), 3),
    ((64, 80, 4), None, (), (64, 80), 4),
    ((5, 64, 80), None, (5,), (64, 80), 0),
    ((2, 5, 64, 80, 3), None, (2, 5), (64, 80), 3),
    ((64, 80, 3), False, (64,), (80, 3), None),  # napari says it is no RGB: a stack of 3-px slivers, refused
    ((3, 64, 80), None, (3,), (64, 80), 0),  # channels first: planes, with a hint
])
def test_axes_are_read_once_for_every_caller(shape, colour, lead, plane, channels):
    if channels is None:
        with pytest.raises(ImageError, match="planes of 80x3 pixels.*channels last"):
            image_layout(shape, colour=colour)
        return
    layout = image_layout(shape, colour=colour)
    assert (layout.lead, layout.plane, layout.channels) == (lead, plane, channels)
    assert layout.spatial_shape == lead + plane and layout.n_planes == int(np.prod(lead))
    assert layout.channels_first_hint is (shape == (3, 64, 80))


def test_too_few_axes_or_an_empty_image_are_refused():
    for shape, colour in (((64,), None), ((0, 5), None), ((64, 3), True)):
        with pytest.raises(ImageError, match="not an image"):
            image_layout(shape, colour=colour)


def test_an_alpha_is_transparency_only_when_it_masks_part_of_an_opaque_image():
    rgba = np.full((50, 50, 4), 200, np.uint8)
    rgba[..., 3] = 255
    assert not alpha_is_transparency(rgba)  # constant: dropped by as_2d_image, not a decision here
    rgba[:10, :10, 3] = 0
    assert alpha_is_transparency(rgba)  # a transparent corner
    rgba[..., 3] = np.arange(50, dtype=np.uint8)[:, None] * 5  # a fourth channel of data
    assert not alpha_is_transparency(rgba)
    floats = np.ones((20, 20, 4), np.float32)
    floats[:5, :, 3] = 0
    assert alpha_is_transparency(floats)
    grey_alpha = np.dstack([np.zeros((20, 20), np.uint8), np.where(floats[..., 3] > 0, 255, 0).astype(np.uint8)])
    assert alpha_is_transparency(grey_alpha)
    assert not alpha_is_transparency(rgba[..., :3])
