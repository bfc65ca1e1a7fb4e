"""Sampling weights of pretraining: rare kinds of image can be drawn more often."""

import numpy as np
import pytest
import torch

from napari_clis.training import PretrainSettings, _image_weights


def _data(sizes):
    return [(None, torch.zeros(s, s)) for s in sizes]


def test_uniform_by_default_and_by_area_when_asked():
    data = _data([10, 10, 20])
    np.testing.assert_allclose(_image_weights(data, PretrainSettings("nuclei")), [1 / 3] * 3)
    w = _image_weights(data, PretrainSettings("nuclei", area_weighted=True))
    np.testing.assert_allclose(w, np.array([10, 10, 20]) / 40)


def test_kind_balance_moves_from_the_kinds_share_to_equal_kinds():
    data = _data([10] * 9 + [10])
    kinds = ["fluorescence"] * 9 + ["brightfield"]
    w0 = _image_weights(data, PretrainSettings("nuclei", kind_balance=0.0), kinds)
    np.testing.assert_allclose(w0, 0.1)
    w1 = _image_weights(data, PretrainSettings("nuclei", kind_balance=1.0), kinds)
    assert w1[-1] == pytest.approx(0.5) and w1[:9].sum() == pytest.approx(0.5)
    half = _image_weights(data, PretrainSettings("nuclei", kind_balance=0.5), kinds)
    assert half[-1] == pytest.approx(1 / (1 + 3))  # shares 9 ** 0.5 : 1 ** 0.5
    with pytest.raises(ValueError, match="between 0 and 1"):
        _image_weights(data, PretrainSettings("nuclei", kind_balance=1.5), kinds)
