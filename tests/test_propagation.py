"""The MRF solvers against brute force on small graphs."""

import itertools

import numpy as np
import pytest

from napari_clis.propagation import minimize_binary, minimize_potts, potts_energy


def _random_graph(rng, n, p=0.5):
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p]
    return np.array(pairs, int).reshape(-1, 2)


def _brute_force(unary, edges, weights, fixed=None):
    n, k = unary.shape
    best, best_e = None, np.inf
    for f in itertools.product(range(k), repeat=n):
        f = np.array(f)
        if fixed is not None and np.any((fixed >= 0) & (f != fixed)):
            continue
        e = potts_energy(f, unary, edges, weights)
        if e < best_e:
            best, best_e = f, e
    return best, best_e


@pytest.mark.parametrize("seed", range(40))
def test_two_label_cut_is_the_exact_minimum(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    unary = rng.normal(0, 2, (n, 2))
    edges = _random_graph(rng, n)
    weights = rng.exponential(1.5, len(edges))
    fixed = np.where(rng.random(n) < 0.2, rng.integers(0, 2, n), -1)
    f = minimize_potts(unary, edges, weights, fixed=fixed)
    _, e_best = _brute_force(unary, edges, weights, fixed)
    assert np.all(f[fixed >= 0] == fixed[fixed >= 0])
    assert potts_energy(f, unary, edges, weights) == pytest.approx(e_best, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_general_submodular_binary_energy_is_minimised(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 10))
    unary = rng.normal(0, 2, (n, 2))
    edges = _random_graph(rng, n)
    pw = rng.normal(0, 1, (len(edges), 2, 2))
    pw[:, 0, 1] += np.maximum(0, pw[:, 0, 0] + pw[:, 1, 1] - pw[:, 0, 1] - pw[:, 1, 0]) + rng.exponential(1, len(edges))
    x = minimize_binary(unary, edges, pw)

    def energy(v):
        return unary[np.arange(n), v].sum() + sum(pw[e, v[i], v[j]] for e, (i, j) in enumerate(edges))

    best = min(energy(np.array(v)) for v in itertools.product((0, 1), repeat=n))
    assert energy(x.astype(int)) == pytest.approx(best, rel=1e-6, abs=1e-6)


def test_non_submodular_terms_are_refused():
    with pytest.raises(ValueError, match="submodular"):
        minimize_binary(np.zeros((2, 2)), [[0, 1]], [[[1.0, 0.0], [0.0, 1.0]]])


@pytest.mark.parametrize("seed", range(25))
def test_alpha_expansion_is_within_twice_the_minimum_and_a_local_minimum(seed):
    rng = np.random.default_rng(200 + seed)
    n, k = int(rng.integers(2, 8)), int(rng.integers(3, 5))
    unary = rng.exponential(2, (n, k))
    edges = _random_graph(rng, n, 0.6)
    weights = rng.exponential(1.5, len(edges))
    fixed = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), -1)
    f = minimize_potts(unary, edges, weights, fixed=fixed)
    _, e_best = _brute_force(unary, edges, weights, fixed)
    e = potts_energy(f, unary, edges, weights)
    assert np.all(f[fixed >= 0] == fixed[fixed >= 0])
    assert e_best - 1e-9 <= e <= 2 * e_best + 1e-9
    # no single node can improve by changing its label (expansion moves include every single-node move)
    for i in np.flatnonzero(fixed < 0):
        for lab in range(k):
            g = f.copy()
            g[i] = lab
            assert potts_energy(g, unary, edges, weights) >= e - 1e-6


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="weights"):
        minimize_potts(np.zeros((3, 2)), [[0, 1]], [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        minimize_potts(np.zeros((3, 2)), [[0, 1]], [-1.0])
    with pytest.raises(ValueError, match="fixed"):
        minimize_potts(np.zeros((3, 2)), [[0, 1]], [1.0], fixed=[0, 5, -1])


@pytest.mark.parametrize("size", [1e-310, 1e-300, 1e300])
def test_the_cut_is_exact_for_energies_near_the_limits_of_floats(size):
    """Capacities are scaled to integers; subnormal ones made that scale overflow to inf (and NaN capacities)."""
    rng = np.random.default_rng(7)
    unary = rng.normal(0, 2, (8, 2)) * size
    edges = _random_graph(rng, 8)
    weights = rng.exponential(1.5, len(edges)) * size
    with np.errstate(all="raise"):
        f = minimize_potts(unary, edges, weights)
    _, e_best = _brute_force(unary / size, edges, weights / size)
    assert potts_energy(f, unary / size, edges, weights / size) == pytest.approx(e_best, rel=1e-6, abs=1e-6)
