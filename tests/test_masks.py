import torch

from napari_clis.masks import KernelGates, bernoulli_kl, ibp_restaurant_prior, ibp_stick_breaking_prior


def test_stick_breaking_prior_decreases_with_kernel_index_and_grows_with_alpha():
    small = ibp_stick_breaking_prior(16, alpha=2.0)
    large = ibp_stick_breaking_prior(16, alpha=32.0)
    assert torch.all(small[1:] <= small[:-1])
    assert torch.all(large >= small)
    assert 0 < float(small.min()) and float(large.max()) < 1


def test_restaurant_prior_reuses_popular_kernels_and_offers_few_new_ones():
    counts = torch.tensor([3, 3, 1, 0, 0, 0])
    prior = ibp_restaurant_prior(counts, n_tasks=3, alpha=1.0)
    torch.testing.assert_close(prior[:3], torch.tensor([0.75, 0.75, 0.25]))
    # the expected number of new kernels is alpha / (t + 1)
    assert abs(float(prior[3:].sum()) - 0.25) < 1e-3
    assert prior[3] >= prior[4] >= prior[5]


def test_kl_is_zero_only_at_the_prior():
    p = torch.tensor([0.2, 0.9])
    assert float(bernoulli_kl(p, p)) < 1e-6
    assert float(bernoulli_kl(torch.tensor([0.9, 0.2]), p)) > 0.5


def test_gates_per_task_are_independent_and_hard_at_inference():
    gates = KernelGates(4, init_logit=3.0)
    t = gates.add_task(torch.tensor([-1.0, 2.0, -3.0, 4.0]))
    assert t == 1 and gates.n_tasks == 2
    torch.testing.assert_close(gates.hard(0), torch.ones(4))
    torch.testing.assert_close(gates.hard(1), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    relaxed = gates.relaxed(1)
    assert all(min(v, 1 - v) < 1e-6 for v in relaxed.detach().tolist())
    relaxed.sum().backward()
    assert gates.logits[1].grad is not None and gates.logits[0].grad is None
    samples = gates.sample(0, 1000, torch.Generator().manual_seed(0))
    assert abs(float(samples.mean()) - float(torch.sigmoid(torch.tensor(3.0)))) < 0.03
