"""Energy minimisation for the interactive module: exact graph cut for two labels, alpha-expansion for more.

The energy of a labelling ``f`` of ``n`` nodes is a Potts model

    E(f) = sum_i U[i, f_i] + sum_{(i, j) in edges} w_ij [f_i != f_j],        w_ij >= 0

with some nodes fixed to a label (hard constraints). Two labels: the minimum is exact, by a minimum s-t cut
(Kolmogorov & Zabih 2004) computed by SciPy's max-flow (Dinic's algorithm, C code). More labels:
alpha-expansion (Boykov, Veksler & Zabih 2001), each move an exact binary cut; for the Potts model its
result is within a factor 2 of the global minimum. Pure numpy/scipy; no Qt, no napari, no torch.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

__all__ = ["potts_energy", "minimize_binary", "minimize_potts"]

# Capacities are scaled to integers (SciPy's max-flow needs them) so that their total stays below this;
# the rounding changes each capacity by at most total / _INT_BUDGET, i.e. a relative 1e-9.
_INT_BUDGET = 2**30


def potts_energy(labels, unary, edges, weights) -> float:
    """``E(f)`` of the Potts model above for labels ``(n,)``, unary ``(n, K)``, edges ``(E, 2)``, weights ``(E,)``."""
    labels = np.asarray(labels)
    unary = np.asarray(unary, float)
    edges = np.asarray(edges, int).reshape(-1, 2)
    e = unary[np.arange(len(labels)), labels].sum()
    if len(edges):
        e += np.asarray(weights, float)[labels[edges[:, 0]] != labels[edges[:, 1]]].sum()
    return float(e)


def minimize_binary(unary, edges, pairwise) -> np.ndarray:
    """Exact minimum of a submodular energy of binary variables by one s-t minimum cut.

    Parameters
    ----------
    unary : (n, 2) float
        ``U[i, x_i]``.
    edges : (E, 2) int
        Node pairs ``(i, j)``, ``i != j``.
    pairwise : (E, 2, 2) float
        ``P[e, x_i, x_j]``; each must be submodular: ``P00 + P11 <= P01 + P10``.

    Returns
    -------
    (n,) int8 in {0, 1}: a labelling of minimum energy.
    """
    unary = np.asarray(unary, float)
    n = unary.shape[0]
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    pw = np.asarray(pairwise, float).reshape(-1, 2, 2)
    if n == 0:
        return np.zeros(0, np.int8)
    a, b, c, d = pw[:, 0, 0], pw[:, 0, 1], pw[:, 1, 0], pw[:, 1, 1]
    cross = b + c - a - d
    if np.any(cross < -1e-9 * (1 + np.abs(pw).max(axis=(1, 2), initial=0.0))):
        raise ValueError("pairwise terms must be submodular (P00 + P11 <= P01 + P10) for an exact graph cut")
    cross = np.maximum(cross, 0.0)
    # E(xi, xj) = A + (C - A) xi + (D - C) xj + (B + C - A - D) (1 - xi) xj
    du = unary[:, 1] - unary[:, 0]
    du = du + np.bincount(edges[:, 0], c - a, minlength=n) + np.bincount(edges[:, 1], d - c, minlength=n)

    s, t = n, n + 1
    src = np.flatnonzero(du > 0)  # paying du when x_i = 1 (sink side): edge s -> i
    snk = np.flatnonzero(du < 0)  # paying -du when x_i = 0 (source side): edge i -> t
    keep = cross > 0
    rows = np.concatenate([np.full(len(src), s), snk, edges[keep, 0]])
    cols = np.concatenate([src, np.full(len(snk), t), edges[keep, 1]])
    caps = np.concatenate([du[src], -du[snk], cross[keep]])
    if not caps.size or caps.max() <= 0:
        return np.zeros(n, np.int8)
    caps = caps / caps.max()  # so that tiny capacities (1e-310) cannot make the integer scale overflow to inf
    scale = _INT_BUDGET / caps.sum()
    icaps = np.rint(caps * scale).astype(np.int64)
    ok = icaps > 0
    graph = sparse.csr_array((icaps[ok].astype(np.int32), (rows[ok], cols[ok])), shape=(n + 2, n + 2))
    graph.sum_duplicates()
    flow = maximum_flow(graph, s, t, method="dinic").flow
    residual = (graph - flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reach = breadth_first_order(residual, s, directed=True, return_predecessors=False)
    x = np.ones(n + 2, np.int8)
    x[reach] = 0
    return x[:n]


def minimize_potts(unary, edges, weights, *, fixed=None, init=None, max_sweeps: int = 8) -> np.ndarray:
    """Minimise the Potts energy, with some nodes fixed.

    Parameters
    ----------
    unary : (n, K) float
    edges : (E, 2) int
    weights : (E,) float, >= 0
    fixed : (n,) int, optional
        A label per node, or -1 where the node is free. Fixed nodes keep their label.
    init : (n,) int, optional
        Starting labelling for alpha-expansion (K > 2); default the unary minimum.
    max_sweeps : int
        Upper bound on alpha-expansion sweeps over the labels (it stops earlier when a sweep changes nothing).

    Returns
    -------
    (n,) int32 labels: the exact minimum for K = 2, an alpha-expansion local minimum (within a factor 2 of
    the global one) for K > 2.
    """
    unary = _as_finite(unary, "unary")
    if unary.ndim != 2 or unary.shape[1] < 1:
        raise ValueError(f"unary must have shape (n, K) with K >= 1 labels, got shape {unary.shape}")
    n, k = unary.shape
    edges = _as_whole(edges, "edges")
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), a pair of node indices per edge, got shape {edges.shape}")
    if len(edges) and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"edges must index nodes 0..{n - 1}, got indices {edges.min()}..{edges.max()}")
    weights = _as_finite(weights, "weights").reshape(-1)
    if len(weights) != len(edges):
        raise ValueError(f"{len(edges)} edges but {len(weights)} weights")
    if np.any(weights < 0):
        raise ValueError("Potts weights must be >= 0")
    fixed = np.full(n, -1, np.int64) if fixed is None else _as_whole(fixed, "fixed")
    if fixed.shape != (n,) or np.any(fixed >= k) or np.any(fixed < -1):
        raise ValueError(f"fixed must hold, per node, a label in 0..{k - 1} or -1 (free)")
    if init is not None:
        init = _as_whole(init, "init")
        if init.shape != (n,) or np.any(init < 0) or np.any(init >= k):
            raise ValueError(f"init must hold, per node, a label in 0..{k - 1}")
    peak = max(np.abs(unary).max(initial=0.0), weights.max(initial=0.0))
    if peak > 2.0**500:  # sums of such terms would overflow to inf; one common scale changes no minimum
        unary, weights = unary / peak, weights / peak

    # Eliminate fixed nodes: an edge to a fixed node becomes a unary term of its free neighbour.
    free = fixed < 0
    fi, fj = free[edges[:, 0]], free[edges[:, 1]]
    for a_free, b_free, col_free, col_fixed in ((fi, fj, 0, 1), (fj, fi, 1, 0)):
        sel = a_free & ~b_free
        nodes, lab, w = edges[sel, col_free], fixed[edges[sel, col_fixed]], weights[sel]
        add = np.zeros((n, k))
        np.add.at(add, nodes, w[:, None])
        np.add.at(add, (nodes, lab), -w)
        unary += add
    idx = np.flatnonzero(free)
    remap = np.full(n, -1, np.int64)
    remap[idx] = np.arange(len(idx))
    both = fi & fj
    sub_edges, sub_w = remap[edges[both]], weights[both]
    sub_unary = unary[idx]

    out = fixed.copy()
    if len(idx):
        if k == 1:
            sub = np.zeros(len(idx), np.int64)
        elif k == 2:
            pw = np.zeros((len(sub_w), 2, 2))
            pw[:, 0, 1] = pw[:, 1, 0] = sub_w
            sub = minimize_binary(sub_unary, sub_edges, pw).astype(np.int64)
        else:
            start = sub_unary.argmin(1) if init is None else np.asarray(init, np.int64)[idx]
            sub = _alpha_expansion(sub_unary, sub_edges, sub_w, start, max_sweeps)
        out[idx] = sub
    return out.astype(np.int32)


def _as_finite(values, name: str) -> np.ndarray:
    """A float64 copy of ``values``; ``ValueError`` naming ``name`` unless all are finite numbers."""
    try:
        arr = np.array(values, float, copy=True)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {values!r:.80}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; it holds {int((~np.isfinite(arr)).sum())} NaN or infinite value(s)")
    return arr


def _as_whole(values, name: str) -> np.ndarray:
    """``values`` as int64; ``ValueError`` naming ``name`` unless all are whole numbers."""
    arr = np.asarray(values)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be whole numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"{name} must be whole numbers, got non-integer values")
    return arr.astype(np.int64)


def _alpha_expansion(unary, edges, weights, f, max_sweeps):
    f = f.copy()
    n, k = unary.shape
    energy = potts_energy(f, unary, edges, weights)
    rows = np.arange(n)
    for _ in range(max_sweeps):
        changed = False
        for alpha in range(k):
            u = np.stack([unary[rows, f], unary[:, alpha]], 1)
            fi, fj = f[edges[:, 0]], f[edges[:, 1]]
            pw = np.zeros((len(edges), 2, 2))
            pw[:, 0, 0] = weights * (fi != fj)
            pw[:, 0, 1] = weights * (fi != alpha)
            pw[:, 1, 0] = weights * (alpha != fj)
            x = minimize_binary(u, edges, pw)
            g = np.where(x == 1, alpha, f)
            e = potts_energy(g, unary, edges, weights)
            if e < energy - 1e-9 * max(1.0, abs(energy)):
                f, energy, changed = g, e, True
        if not changed:
            break
    return f
