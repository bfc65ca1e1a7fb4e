"""The continual-learning baselines (fine-tuning, LwF, EWC, PackNet) on real images: each does what its paper says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_clis.continual import LearnSettings, fit
from napari_clis.evaluation.baselines import EWC, LwF, PackNet, fisher_diagonal, make_learner
from napari_clis.preprocessing import normalize_image

SETTINGS = LearnSettings(steps=4, batch=2, crop=64, lr=2e-3)


@pytest.fixture(scope="module")
def images(nuclei_session, nuclei_he, nuclei_fluo):
    """Two real images at the working resolution with their ground truth, cut to 128 px to keep this quick."""
    out = []
    for image, mask in (nuclei_he, nuclei_fluo):
        x, y = nuclei_session._working(normalize_image(image), mask.astype(np.int32))
        out.append((x[:, :128, :128], y[:128, :128]))
    return out


def _distance(a, b, weights=None) -> float:
    """Squared distance of the weights of two networks, weighted per entry (e.g. by the Fisher) if given."""
    pa = dict(a.named_parameters())
    with torch.no_grad():
        return float(sum((((p - pa[n]) ** 2) * (1 if weights is None else weights[n])).sum()
                         for n, p in b.named_parameters() if "gates" not in n))


def _logits(net, x):
    with torch.no_grad():
        return net(x[None], 0)[0]


def test_fit_with_a_mask_changes_only_the_masked_entries(nuclei_session, images):
    x, y = images[0]
    name = "A2.conv1.conv.weight"
    mask = torch.zeros_like(dict(nuclei_session.net.named_parameters())[name], dtype=torch.bool)
    mask[:4] = True
    new = fit(nuclei_session.net, x, y, SETTINGS, only={name: mask})
    before, after = dict(nuclei_session.net.named_parameters()), dict(new.named_parameters())
    assert not torch.equal(after[name][mask], before[name][mask])
    assert torch.equal(after[name][~mask], before[name][~mask])
    for n in after:
        if n != name:
            assert torch.equal(after[n], before[n]), n


def test_lwf_stays_closer_to_the_old_model_than_fine_tuning(nuclei_session, images):
    (x0, y0), (x1, y1) = images
    ft = make_learner("finetune", nuclei_session.net, SETTINGS)
    lwf = LwF(nuclei_session.net, SETTINGS, weight=10.0)
    for learner in (ft, lwf):
        learner.learn(x1, y1)
    old = _logits(nuclei_session.net, x0)
    assert (_logits(lwf.net, x0) - old).abs().mean() < (_logits(ft.net, x0) - old).abs().mean()


def test_ewc_anchors_the_weights_the_fisher_says_matter(nuclei_session, images):
    x, y = images[1]
    settings = LearnSettings(**{**SETTINGS.__dict__, "steps": 12})  # Adam's first step ignores the (zero) penalty
    fisher = fisher_diagonal(nuclei_session.net, x, None, settings)
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in fisher.values())
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    ft = make_learner("finetune", nuclei_session.net, settings)
    weak, strong = EWC(nuclei_session.net, settings, strength=0.0), EWC(nuclei_session.net, settings, strength=1e9)
    for learner in (ft, weak, strong):
        learner.learn(x, y)
    assert _distance(nuclei_session.net, weak.net) == pytest.approx(_distance(nuclei_session.net, ft.net), rel=1e-4)
    # what EWC promises: the weights that matter to the earlier task (large Fisher) move much less
    net = nuclei_session.net
    assert _distance(net, strong.net, fisher) < 0.2 * _distance(net, ft.net, fisher)
    assert len(strong.anchors) == 2  # the pretrained model, then the learned image


def test_packnet_keeps_earlier_tasks_exactly_and_hands_out_free_weights(nuclei_session, images):
    (x0, y0), (x1, y1) = images
    p = PackNet(nuclei_session.net, SETTINGS, pretrain=[(x0, y0)], prune=0.5, retrain_steps=2)
    total = sum(c.conv.weight.numel() for c in nuclei_session.net.masked_convs().values())
    owned0, free = p.weights_per_task()
    assert owned0 + free == total and abs(owned0 / total - 0.5) < 0.01
    task0 = _logits(p.net_for(0), x1)
    p.learn(x0, y0)
    task1 = _logits(p.net_for(1), x1)
    p.learn(x1, y1)
    counts = p.weights_per_task()
    assert len(counts) == 4 and counts[0] == owned0 and sum(counts) == total
    assert counts[1] == pytest.approx(free / 2, abs=len(p.owner))  # half of what was free, rounded per layer
    assert torch.equal(_logits(p.net_for(0), x1), task0)
    assert torch.equal(_logits(p.net_for(1), x1), task1)
    assert not torch.equal(_logits(p.net_for(2), x1), task1)
    assert p.net_for(None) is not p.net  # a view: segmenting never changes what the learner holds


def test_an_unknown_baseline_is_named_in_the_error(nuclei_session):
    with pytest.raises(ValueError, match="'lfw'.*ewc"):
        make_learner("lfw", nuclei_session.net)
