"""Sampling weights of pretraining: rare kinds of image can be drawn more often."""

import numpy as np
import pytest
import torch

from napari_clis.training import PretrainSettings, _image_weights, soft_dice_loss


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


def test_per_image_dice_loss_weighs_a_small_object_as_much_as_a_large_one():
    # image 0: a large object found exactly; image 1: a small object missed entirely
    target = torch.zeros(2, 16, 16, dtype=torch.int64)
    target[0, :, :12] = 1
    target[1, 7:9, 7:9] = 1
    logits = torch.zeros(2, 2, 16, 16)
    logits[:, 0] = 20.0  # background everywhere, sure of it ...
    logits[0, 0, :, :12], logits[0, 1, :, :12] = 0.0, 20.0  # ... but image 0's object is found
    per_image = soft_dice_loss(logits, target, per_image=True)
    batch = soft_dice_loss(logits, target)
    # plain floats: pytest >= 9.2 cannot compare a 0-d tensor with approx (it tries to iterate it)
    per_image, batch = float(per_image), float(batch)
    singles = [float(soft_dice_loss(logits[i:i + 1], target[i:i + 1])) for i in range(2)]
    assert singles[0] < 0.01 and singles[1] > 0.75  # (+1 smoothing keeps the missed one just below 1)
    assert per_image == pytest.approx((singles[0] + singles[1]) / 2, abs=1e-6)
    assert batch < 0.05 < 0.35 < per_image  # over the batch, the missed small object hardly counts
