import numpy as np
import torch

from napari_clis.network import ClisNet, NetworkConfig
from napari_clis.preprocessing import normalize_image
from napari_clis.uncertainty import predict


def _net(seed=0, k=2):
    torch.manual_seed(seed)
    net = ClisNet(NetworkConfig(n_classes=k, width=8)).eval()
    with torch.no_grad():  # give the gates and the aleatoric head something to sample
        net.B3.conv2.gates.logits[0].copy_(torch.linspace(-1, 3, 8))
        net.logvar_head.bias.fill_(0.5)
    return net


def test_epistemic_plus_aleatoric_is_the_total_predictive_variance():
    net = _net(k=3)
    x = normalize_image(np.random.default_rng(0).random((40, 48)))
    out = predict(net, x, n_samples=6)
    total = 1.0 - (out.probabilities**2).sum(0)
    np.testing.assert_allclose(out.epistemic + out.aleatoric, total, atol=1e-5)
    np.testing.assert_allclose(out.probabilities.sum(0), 1.0, atol=1e-5)
    assert (out.epistemic >= 0).all() and (out.aleatoric >= 0).all() and out.epistemic.max() > 0
    assert out.uncertainty.max() <= 1 - 1 / 3 + 1e-6


def test_zero_samples_gives_the_deterministic_pass_and_no_uncertainty():
    net = _net()
    x = normalize_image(np.random.default_rng(1).random((32, 32)))
    out = predict(net, x, n_samples=0)
    logits, _ = net(torch.from_numpy(x)[None])
    np.testing.assert_allclose(out.probabilities, torch.softmax(logits, 1)[0].detach().numpy(), atol=1e-6)
    assert not out.uncertainty.any()


def test_same_seed_same_maps_other_seed_other_maps():
    net = _net()
    x = normalize_image(np.random.default_rng(2).random((32, 32)))
    a, b, c = (predict(net, x, n_samples=4, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    assert not np.array_equal(a.uncertainty, c.uncertainty)


def test_tiled_prediction_matches_the_whole_image(nuclei_session, nuclei_fluo):
    image, _ = nuclei_fluo
    big = np.tile(image, (2, 2))[:500, :470]
    x = normalize_image(big)
    whole = predict(nuclei_session.net, x, n_samples=4)
    tiled = predict(nuclei_session.net, x, n_samples=4, tile=200, margin=96)  # cores of 256 x 240, on the 8-px grid
    # every tile draws the whole image's samples: equal up to floating-point rounding, uncertainty included
    for name in ("probabilities", "uncertainty", "entropy"):
        np.testing.assert_allclose(getattr(tiled, name), getattr(whole, name), atol=1e-5)
    agree = (tiled.probabilities.argmax(0) == whole.probabilities.argmax(0)).mean()
    assert agree > 0.9999


def test_images_of_odd_size_come_back_at_their_size():
    net = _net()
    out = predict(net, normalize_image(np.random.default_rng(3).random((13, 27))), n_samples=2)
    assert out.probabilities.shape == (2, 13, 27) and out.uncertainty.shape == (13, 27)


def test_working_resolution_resizes_and_returns_full_size():
    net = _net()
    out = predict(net, normalize_image(np.random.default_rng(4).random((96, 160))), n_samples=2, working_long_side=64)
    assert out.probabilities.shape == (2, 96, 160)
    np.testing.assert_allclose(out.probabilities.sum(0), 1.0, atol=1e-5)


def test_flips_average_the_four_flipped_passes():
    net = _net()
    x = normalize_image(np.random.default_rng(5).random((24, 32)))
    out = predict(net, x, n_samples=0, flips=True)
    xt = torch.from_numpy(x)[None]
    probs = [torch.softmax(net(xt.flip(d) if d else xt)[0], 1).flip(d) if d else torch.softmax(net(xt)[0], 1)
             for d in ((), (-1,), (-2,), (-2, -1))]
    np.testing.assert_allclose(out.probabilities, torch.stack(probs).mean(0)[0].detach().numpy(), atol=1e-5)
    sampled = predict(net, x, n_samples=8, flips=True)
    np.testing.assert_allclose(sampled.epistemic + sampled.aleatoric, 1 - (sampled.probabilities**2).sum(0), atol=1e-5)
