"""The distance head (issue 20) and robust pretraining augmentation (issue 19): config, targets, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.io import imread

from napari_clis.checkpoint import CheckpointError, _check_config, load_model, save_model, shipped_model_path
from napari_clis.data import Sample, bbbc039_split, default_data_root, load_bbbc039
from napari_clis.network import ClisNet, NetworkConfig
from napari_clis.preprocessing import normalize_image
from napari_clis.training import (
    AUGMENT_PROBABILITIES,
    PretrainSettings,
    _batch,
    _prepare,
    distance_loss,
    distance_target,
    he_from_fluorescence,
    robust_augment,
    robust_view,
)
from napari_clis.uncertainty import predict

from .conftest import DATA, NUCLEI_FLUO, NUCLEI_HE

NO_INTENSITY = {"outliers": 0, "stain": 0, "gamma": 0, "blur": 0, "dim": 0, "noise": 0}
EVERY = {"outliers": 1, "stain": 1, "gamma": 1, "blur": 1, "dim": 1, "noise": 1, "scale": 1}


def _sample(stem: str) -> Sample:
    image = imread(DATA / "dsb2018" / "images" / f"{stem}.png")[..., :3]
    instances = imread(DATA / "dsb2018" / "masks" / f"{stem}.png").astype(np.int32)
    return Sample(stem, np.ascontiguousarray(image), (instances > 0).astype(np.int32), instances)


@pytest.mark.parametrize("head", [False, True])
def test_config_and_weights_round_trip_with_and_without_the_head(tmp_path, head):
    torch.manual_seed(0)
    net = ClisNet(NetworkConfig(width=4, instance_head=head)).eval()
    save_model(tmp_path / "m.pt", net, {"name": "nuclei", "class_names": ["background", "nucleus"]})
    loaded, _, _ = load_model(tmp_path / "m.pt")
    assert loaded.config == net.config and loaded.config.instance_head is head
    assert (loaded.distance_head is not None) is head
    x = torch.randn(1, 3, 16, 24)
    for a, b in zip(net(x), loaded(x)):
        torch.testing.assert_close(a, b)
    if head:
        logits, logvar, dist = loaded(x, with_distance=True)
        assert dist.shape == (1, 1, 16, 24) and logits.shape == logvar.shape == (1, 2, 16, 24)
    else:
        with pytest.raises(ValueError, match="no distance head"):
            loaded(x, with_distance=True)


def test_a_model_file_whose_instance_head_is_not_true_or_false_is_refused():
    for bad in (1, "yes", None):
        with pytest.raises(CheckpointError, match="instance_head.*true or false"):
            _check_config("m.pt cannot be used", {"width": 4, "instance_head": bad})


def test_the_shipped_nuclei_model_loads_without_a_head_and_returns_no_distance():
    net, _, _ = load_model(shipped_model_path("nuclei"))
    assert net.config.instance_head is False and net.distance_head is None
    image = _sample(NUCLEI_FLUO).image[:64, :64]
    assert predict(net, normalize_image(image), n_samples=1).distance is None


def test_the_distance_map_is_the_same_tiled_and_in_one_piece():
    torch.manual_seed(1)
    net = ClisNet(NetworkConfig(width=4, instance_head=True)).eval()
    x = normalize_image(_sample(NUCLEI_HE).image)
    whole = predict(net, x, n_samples=2, tile=None)
    tiled = predict(net, x, n_samples=2, tile=64, margin=96)
    assert whole.distance.shape == x.shape[1:] and whole.distance.dtype == np.float32
    assert 0 <= whole.distance.min() and whole.distance.max() <= 1
    np.testing.assert_allclose(tiled.distance, whole.distance, atol=1e-5)
    flipped = predict(net, x, n_samples=2, flips=True, working_long_side=128)
    assert flipped.distance.shape == x.shape[1:]


def test_the_distance_target_is_one_at_each_centre_and_small_on_the_rim():
    inst = _sample(NUCLEI_FLUO).instances
    d = distance_target(inst)
    assert d.dtype == np.float32 and d.shape == inst.shape
    assert (d[inst == 0] == 0).all() and (d[inst > 0] > 0).all()
    ids = np.unique(inst[inst > 0])
    assert len(ids) > 10
    for i in ids:
        assert d[inst == i].max() == pytest.approx(1.0)
    # the rim: object pixels with a 4-neighbour outside the object
    padded = np.pad(inst, 1, constant_values=-1)
    rim = (inst > 0) & ((padded[:-2, 1:-1] != inst) | (padded[2:, 1:-1] != inst) | (padded[1:-1, :-2] != inst)
                        | (padded[1:-1, 2:] != inst))
    big = np.isin(inst, [i for i in ids if (inst == i).sum() >= 80])
    assert np.median(d[rim & big]) < 0.3 and d[rim & big].max() <= 0.5
    with pytest.raises(ValueError, match="whole-number object ids"):
        distance_target(inst.astype(np.float32))


def test_the_distance_loss_counts_only_known_pixels():
    logit = torch.zeros(2, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), -1.0)
    assert float(distance_loss(logit, target)) == 0.0
    target[0] = 1.0
    assert float(distance_loss(logit, target)) == pytest.approx(np.log(2.0), rel=1e-5)


@pytest.mark.parametrize("stem", [NUCLEI_FLUO, NUCLEI_HE])
def test_augmentation_keeps_shape_and_gives_float32(stem):
    s = _sample(stem)
    rng = np.random.default_rng(0)
    for image in (s.image, s.image[..., 0], (s.image[..., 0].astype(np.uint16) * 257)):
        out = robust_augment(image, s.instances, rng, {**EVERY, "pale": 1})
        assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
        assert not np.array_equal(out, image.astype(np.float32))
        same = robust_augment(image, s.instances, rng, {})  # every probability 0: the image itself
        np.testing.assert_array_equal(same, image.astype(np.float32))


def test_bright_outliers_brighten_whole_objects_of_a_fluorescence_image():
    s = _sample(NUCLEI_FLUO)
    grey = s.image[..., 0]
    out = robust_augment(grey, s.instances, np.random.default_rng(3), {"outliers": 1})
    ratio = out[s.instances > 0] / np.maximum(grey[s.instances > 0], 1)
    changed = np.unique(s.instances[(out != grey) & (s.instances > 0)])
    assert 1 <= len(changed) <= 3 and ratio.max() >= 2
    assert (out[s.instances == 0] == grey[s.instances == 0]).all()  # the background is left alone
    he = _sample(NUCLEI_HE)  # dark nuclei on a bright background: no bright outliers made
    np.testing.assert_array_equal(robust_augment(he.image, he.instances, np.random.default_rng(3), {"outliers": 1}),
                                  he.image.astype(np.float32))


def test_rescaled_views_keep_image_labels_and_distance_aligned():
    # the image is the mask itself, so alignment is visible in the output
    s = _sample(NUCLEI_HE)
    s = Sample(s.id, np.stack([(s.mask * 200).astype(np.uint8)] * 3, -1), s.mask, s.instances)
    d_full = torch.from_numpy(distance_target(s.instances))
    settings = PretrainSettings("nuclei", crop=64, fg_crop_fraction=0.5)
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(12):
        x, y, d = robust_view(s, d_full, settings, rng, {**NO_INTENSITY, "scale": 1})
        shapes.add(tuple(y.shape))
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (3,) + tuple(y.shape)
        assert d.shape == y.shape
        agree = ((x[0] > 0) == (y == 1)).float().mean()
        assert agree > 0.97
        assert (d[y == 0] == 0).all() and (not (y == 1).any() or float(d[y == 1].mean()) > 0.2)
    assert len(shapes) >= 2  # the scale changes


def test_training_batches_carry_the_distance_target_with_the_labels():
    samples = [_sample(NUCLEI_FLUO), _sample(NUCLEI_HE)]
    samples.append(Sample("no instances", samples[0].image, samples[0].mask, None))
    for augment in ("none", "robust"):
        settings = PretrainSettings("nuclei", batch=6, crop=64, instance_head=True, augment=augment,
                                    fg_crop_fraction=0.5)
        data = _prepare(samples, None, settings)
        x, y, d = _batch(data, settings, np.random.default_rng(2))
        assert x.shape == (6, 3, 64, 64) and y.shape == d.shape == (6, 64, 64)
        assert ((d > 0) <= (y == 1)).all()  # a distance only inside objects
        assert ((d < 0).flatten(1).all(1) | (d >= 0).flatten(1).all(1)).all()  # unknown: a whole crop
    plain = PretrainSettings("nuclei", batch=2, crop=64)
    assert _batch(_prepare(samples, None, plain), plain, np.random.default_rng(0))[2] is None


def test_continual_learning_leaves_the_distance_head_alone():
    from napari_clis.continual import LearnSettings, learn_task

    shipped, _, _ = load_model(shipped_model_path("nuclei"))
    net = ClisNet(NetworkConfig(**{**shipped.config.to_dict(), "instance_head": True})).eval()
    net.load_state_dict(shipped.state_dict(), strict=False)
    before = [p.clone() for p in net.distance_head.parameters()]
    s = _sample(NUCLEI_FLUO)
    x = torch.from_numpy(normalize_image(s.image))[:, :128, :128]
    new, task, _ = learn_task(net, x, torch.from_numpy(s.mask[:128, :128].astype(np.int64)), 0,
                              LearnSettings(steps=2, batch=2, crop=64))
    assert task == 1
    for a, b in zip(before, new.distance_head.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert predict(new, x.numpy(), task=task, n_samples=1).distance.shape == (128, 128)


def test_the_bbbc039_split_is_fixed_halves_and_loads_16_bit_images():
    split = bbbc039_split()
    assert split["seed"] == 0 and len(split["pretrain"]) == len(split["heldout"]) == 50
    assert not set(split["pretrain"]) & set(split["heldout"])
    if not (default_data_root() / "bbbc039").is_dir():
        pytest.skip("../shared/data/bbbc039 is not here")
    (s,) = load_bbbc039(subset="heldout", limit=1)
    assert s.image.dtype == np.uint16 and s.image.ndim == 2 and s.instances.shape == s.mask.shape
    assert s.instances.max() > 0 and ((s.instances > 0) == (s.mask > 0)).all()
    with pytest.raises(ValueError, match="subset"):
        load_bbbc039(subset="pool")


def _haematoxylin(rgb):
    from skimage.color import rgb2hed

    return rgb2hed(np.clip(rgb, 0, 255).astype(np.uint8))[..., 0]


def test_a_fluorescence_image_made_h_and_e_has_its_nuclei_in_haematoxylin():
    s = _sample(NUCLEI_FLUO)
    grey = s.image[..., 0]
    for seed in range(4):
        out = robust_augment(grey, s.instances, np.random.default_rng(seed), {"he": 1})
        assert out.shape == grey.shape + (3,) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
        h = _haematoxylin(out)
        nuclei, rim = s.mask > 0, ndimage_ring(s.mask > 0)
        assert np.median(h[nuclei]) > np.median(h[rim]) + 0.005  # blue-purple nuclei on pink, whatever the draw
        assert (out[..., 1] < out[..., 0]).mean() > 0.5  # eosin: less green than red (pink), not grey
    a, b = (he_from_fluorescence(grey, s.instances, np.random.default_rng(1)) for _ in range(2))
    np.testing.assert_array_equal(a, b)  # one draw per generator state
    out = robust_augment(s.image, s.instances, np.random.default_rng(0), {"he": 1})  # grey stored as RGB too
    assert out.shape == s.image.shape and not np.array_equal(out[..., 0], out[..., 1])
    he = _sample(NUCLEI_HE)  # a colour image is not made H&E again
    np.testing.assert_array_equal(robust_augment(he.image, he.instances, np.random.default_rng(0), {"he": 1}),
                                  he.image.astype(np.float32))


def ndimage_ring(mask, width=4):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=width) & ~ndimage.binary_dilation(mask, iterations=1)


def test_pale_nuclei_lose_haematoxylin_inside_some_objects_only():
    he = _sample(NUCLEI_HE)
    outside, n = he.instances == 0, len(np.unique(he.instances)) - 1
    paler = []
    for seed in range(6):  # the same stain jitter with and without pale nuclei (the same draws come first)
        hp = _haematoxylin(robust_augment(he.image, he.instances, np.random.default_rng(seed), {"stain": 1}))
        hq = _haematoxylin(robust_augment(he.image, he.instances, np.random.default_rng(seed),
                                          {"stain": 1, "pale": 1}))
        np.testing.assert_allclose(hq[outside], hp[outside], atol=1e-4)  # the background as the jitter left it
        ids = [i for i in range(1, n + 1) if hq[he.instances == i].mean() < hp[he.instances == i].mean() - 0.002]
        assert len(ids) <= n // 2 + 1  # at most about half the nuclei
        paler.append(len(ids))
    assert sum(paler) >= 3  # and some, over the draws


def test_augmentation_probabilities_are_settings_checked_before_any_data_is_read(tmp_path):
    from napari_clis.cli import main
    from napari_clis.training import _check_settings

    with pytest.raises(ValueError, match="unknown augmentation 'glare'"):
        _check_settings(PretrainSettings("nuclei", augment="robust", augment_probabilities={"glare": 0.5}))
    with pytest.raises(ValueError, match="between 0 and 1"):
        _check_settings(PretrainSettings("nuclei", augment="robust", augment_probabilities={"he": 1.5}))
    with pytest.raises(SystemExit):
        main(["pretrain", "nuclei", "--augment", "robust", "--augment-probability", "he=lots", "--data", str(tmp_path)])
    s = _sample(NUCLEI_FLUO)
    off = {k: 0.0 for k in AUGMENT_PROBABILITIES}
    for he, coloured in ((1.0, True), (0.0, False)):
        settings = PretrainSettings("nuclei", crop=64, batch=1, augment="robust",
                                    augment_probabilities={**off, "he": he})
        x, _, _ = _batch(_prepare([s], None, settings), settings, np.random.default_rng(0))
        r = np.corrcoef(x[0, 0].ravel().numpy(), x[0, 1].ravel().numpy())[0, 1]
        assert (r < 0.99) == coloured  # H&E-like colour, or grey (channels alike up to the per-channel gain)


def test_training_the_head_alone_keeps_every_other_weight_and_statistic(tmp_path):
    from napari_clis.training import _fit

    init = shipped_model_path("nuclei")
    shipped, _, _ = load_model(init)
    settings = PretrainSettings("nuclei", steps=3, batch=2, crop=64, lr=1e-2, instance_head=True, head_only=True,
                                init=str(init), eval_every=1000, precise_bn_batches=2)
    config = NetworkConfig(**{**shipped.config.to_dict(), "instance_head": True})
    data = _prepare([_sample(NUCLEI_FLUO)], None, settings)
    describe = {"name": "nuclei", "class_names": ["background", "nucleus"], "tasks": [{"name": "pretraining"}]}
    net, _, _ = load_model(_fit(settings, tmp_path / "m.pt", config, data, None, [], describe, log=lambda m: None))
    trained = net.state_dict()
    for name, value in shipped.state_dict().items():  # weights, gates and BatchNorm statistics, bit for bit
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0, msg=name)
    assert float(net.distance_head.out.bias) != -2.0  # the head alone moved
    x = torch.from_numpy(normalize_image(_sample(NUCLEI_FLUO).image))[:, :64, :64].numpy()
    np.testing.assert_array_equal(predict(net, x, n_samples=0).probabilities,
                                  predict(shipped, x, n_samples=0).probabilities)


def test_training_the_head_alone_needs_a_model_to_start_from(tmp_path):
    from napari_clis.training import _check_settings

    with pytest.raises(ValueError, match="head_only.*init"):
        _check_settings(PretrainSettings("nuclei", instance_head=True, head_only=True))
    with pytest.raises(ValueError, match="head_only"):
        _check_settings(PretrainSettings("nuclei", head_only=True, init="nuclei.pt"))


def test_a_new_distance_head_starts_as_the_decoder_of_task_0():
    shipped, _, _ = load_model(shipped_model_path("nuclei"))
    net = ClisNet(NetworkConfig(**{**shipped.config.to_dict(), "instance_head": True})).eval()
    net.load_state_dict(shipped.state_dict(), strict=False)
    net.distance_head.copy_decoder(net)
    x = torch.from_numpy(normalize_image(_sample(NUCLEI_FLUO).image))[None, :, :64, :64]
    with torch.no_grad():
        encoded = net.encode(x)
        head = net.distance_head
        b1 = head.B1(torch.cat([torch.nn.functional.interpolate(encoded[3], scale_factor=2, mode="bilinear"),
                                encoded[2]], 1))
        b2 = head.B2(torch.cat([torch.nn.functional.interpolate(b1, scale_factor=2, mode="bilinear"), encoded[1]], 1))
        mine = head.B3(torch.cat([torch.nn.functional.interpolate(b2, scale_factor=2, mode="bilinear"), encoded[0]], 1))
        decoder = net.decode(encoded) * net.B3.conv2.gates.hard(0)[None, :, None, None]
    torch.testing.assert_close(mine, decoder, rtol=1e-4, atol=1e-5)


def test_only_instance_masks_train_the_distance_head(tmp_path):
    from skimage.io import imsave

    from napari_clis.data import load_annotated_folder

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.zeros((32, 32), np.uint8)
    image[4:12, 4:20] = 200
    binary = (image > 0).astype(np.uint8)  # two touching nuclei, one blob: where they meet is not said
    objects = binary.copy()
    objects[:, 12:] *= 2
    for name, mask in (("binary", binary), ("objects", objects)):
        imsave(tmp_path / "images" / f"{name}.png", image, check_contrast=False)
        imsave(tmp_path / "masks" / f"{name}.png", mask, check_contrast=False)
    first, second = load_annotated_folder(tmp_path / "images", tmp_path / "masks")
    assert first.id == "binary" and first.instances is None and first.mask.sum() == binary.sum()
    assert second.id == "objects" and sorted(np.unique(second.instances)) == [0, 1, 2]
    settings = PretrainSettings("nuclei", batch=2, crop=32, instance_head=True)
    data = _prepare([first, second], None, settings)
    assert data[0][2] is None and float(data[1][2].max()) == 1.0  # no distance target from the binary mask
