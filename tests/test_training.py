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


def test_touching_objects_get_a_background_border_between_them_and_a_lone_object_stays_whole():
    from napari_clis.data import Sample
    from napari_clis.training import separate_touching

    inst = np.zeros((12, 20), np.int32)
    inst[2:10, 2:8] = 1  # alone
    inst[2:10, 10:14] = 2
    inst[2:10, 14:18] = 3  # touches 2 along column 13 | 14
    mask = (inst > 0).astype(np.int32)
    out = separate_touching(Sample("t", np.zeros((12, 20, 3), np.uint8), mask, inst))
    np.testing.assert_array_equal(out.mask[:, :10], mask[:, :10])  # the lone object keeps every pixel
    assert not out.mask[2:10, 13:15].any()  # the two touching columns are now background ...
    assert out.mask[2:10, 10:13].all() and out.mask[2:10, 15:18].all()  # ... and nothing else of either object
    np.testing.assert_array_equal(out.instances, inst)
    assert mask.sum() == 112  # the input sample is not changed
    plain = Sample("p", np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.int32), None)
    assert separate_touching(plain) is plain


def test_the_contact_loss_counts_only_background_between_two_objects():
    from napari_clis.training import contact_loss

    target = torch.zeros(1, 8, 9, dtype=torch.int64)
    target[0, 2:6, 1:4] = 1
    target[0, 2:6, 5:8] = 1  # a 1 px background gap at column 4, rows 2-5
    logits = torch.zeros(1, 2, 8, 9)
    logits[0, 1] = 5.0  # foreground everywhere: wrong on all the background
    per_pixel = float(torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.zeros(1, dtype=torch.int64)))
    assert float(contact_loss(logits, target)) == pytest.approx(4 * per_pixel / 72, rel=1e-5)
    logits[0, 0, 2:6, 4], logits[0, 1, 2:6, 4] = 5.0, 0.0  # the gap right: no loss, whatever else is wrong
    assert float(contact_loss(logits, target)) == pytest.approx(0.0, abs=1e-3)
    lone = torch.zeros(1, 8, 9, dtype=torch.int64)
    lone[0, 2:6, 1:4] = 1
    assert float(contact_loss(logits, lone)) == 0.0


def test_a_negative_or_nan_contact_weight_is_refused_before_any_data_is_read():
    from napari_clis.cli import main
    from napari_clis.training import _check_settings

    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="contact_weight"):
            _check_settings(PretrainSettings("nuclei", contact_weight=bad))
    with pytest.raises(SystemExit):
        main(["pretrain", "nuclei", "--contact-weight", "lots"])


def test_the_shipped_nuclei_model_records_its_contact_weight():
    from napari_clis.session import ClisSession

    settings = ClisSession.from_pretrained("nuclei", device="cpu").metadata["training"]["settings"]
    assert settings["contact_weight"] == 10.0
