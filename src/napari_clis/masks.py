"""Per-task binary kernel masks with an Indian Buffet Process prior.

Every convolution of the CLIS network multiplies its output channels (its kernels) by a binary gate
vector, one vector per task. During training the gates are relaxed with a binary concrete
(Gumbel-sigmoid) distribution and passed straight-through; at inference the gate of kernel ``k`` is on
when its probability exceeds one half.

The prior over gates follows the Indian Buffet Process (Griffiths and Ghahramani, 2011):

* for the first task, the stick-breaking form: ``pi_k = prod_{j<=k} v_j`` with ``v_j ~ Beta(alpha, 1)``,
  whose expectation is ``(alpha / (1 + alpha)) ** k``; earlier kernels are more likely to be used;
* for task ``t + 1`` after ``t`` tasks, the restaurant form: a kernel that ``m_k`` earlier tasks used is
  reused with probability ``m_k / (t + 1)``, and a kernel no task used yet is switched on with the
  probability of a new dish, ``alpha / (t + 1)`` spread over the unused kernels in stick-breaking order.

This module is pure torch: no Qt, no napari.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "KernelGates",
    "ibp_stick_breaking_prior",
    "ibp_restaurant_prior",
    "bernoulli_kl",
]

_PRIOR_FLOOR = 1e-3


def ibp_stick_breaking_prior(n_kernels: int, alpha: float) -> torch.Tensor:
    """Expected IBP stick-breaking gate probabilities for the first task.

    Parameters
    ----------
    n_kernels : int
        Number of kernels (output channels) of the layer.
    alpha : float
        IBP concentration; larger values switch on more kernels.

    Returns
    -------
    (n_kernels,) float32 tensor of prior probabilities in ``(0, 1)``.
    """
    if n_kernels < 1:
        raise ValueError(f"n_kernels must be >= 1, got {n_kernels}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    k = torch.arange(1, n_kernels + 1, dtype=torch.float32)
    prior = (alpha / (1.0 + alpha)) ** k
    return prior.clamp(_PRIOR_FLOOR, 1 - _PRIOR_FLOOR)


def ibp_restaurant_prior(usage_counts: torch.Tensor, n_tasks: int, alpha: float) -> torch.Tensor:
    """IBP prior for a new task given how many earlier tasks used each kernel.

    Parameters
    ----------
    usage_counts : (n_kernels,) tensor
        ``m_k``: the number of earlier tasks whose mask switched kernel ``k`` on.
    n_tasks : int
        Number of earlier tasks ``t`` (>= 1).
    alpha : float
        IBP concentration.

    Returns
    -------
    (n_kernels,) float32 tensor of prior probabilities for task ``t + 1``.
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1 for the restaurant form, got {n_tasks}")
    counts = usage_counts.float()
    prior = counts / (n_tasks + 1)
    unused = counts == 0
    n_unused = int(unused.sum())
    if n_unused:
        # Expected number of new dishes is alpha / (t + 1); hand it out in stick-breaking order.
        stick = ibp_stick_breaking_prior(n_unused, alpha)
        stick = stick / stick.sum() * min(alpha / (n_tasks + 1), float(n_unused))
        prior[unused] = stick.clamp(max=1.0)
    return prior.clamp(_PRIOR_FLOOR, 1 - _PRIOR_FLOOR)


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(q) || Bernoulli(p)), summed over the last dimension."""
    eps = 1e-6
    q = q.clamp(eps, 1 - eps)
    p = p.clamp(eps, 1 - eps)
    return (q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()).sum(-1)


class KernelGates(nn.Module):
    """Binary gates over the kernels of one convolution, one gate vector per task.

    Parameters
    ----------
    n_kernels : int
        Output channels of the convolution.
    init_logit : float
        Initial gate logit of a new task (positive: kernels start on).
    """

    def __init__(self, n_kernels: int, init_logit: float = 3.0):
        super().__init__()
        self.n_kernels = n_kernels
        self.init_logit = init_logit
        self.logits = nn.ParameterList([nn.Parameter(torch.full((n_kernels,), init_logit))])
        self.temperature = 2.0 / 3.0

    @property
    def n_tasks(self) -> int:
        return len(self.logits)

    def add_task(self, init_logits: torch.Tensor | None = None) -> int:
        """Append the gate logits of a new task and return its index."""
        ref = self.logits[0]
        if init_logits is None:
            init = torch.full((self.n_kernels,), self.init_logit, device=ref.device)
        else:
            init = init_logits.detach().to(device=ref.device, dtype=ref.dtype).clone()
        self.logits.append(nn.Parameter(init))
        return self.n_tasks - 1

    def probabilities(self, task: int) -> torch.Tensor:
        """(n_kernels,) gate probabilities of ``task``."""
        return torch.sigmoid(self.logits[task])

    def hard(self, task: int) -> torch.Tensor:
        """(n_kernels,) 0/1 float gates of ``task`` as used at inference."""
        return (self.logits[task] > 0).to(self.logits[task].dtype)

    def relaxed(self, task: int) -> torch.Tensor:
        """Straight-through binary concrete sample of the gates (training)."""
        logit = self.logits[task]
        u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
        noise = u.log() - (1 - u).log()
        soft = torch.sigmoid((logit + noise) / self.temperature)
        hard = (soft > 0.5).to(soft.dtype)
        return hard + soft - soft.detach()

    def sample(self, task: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, n_kernels) Bernoulli samples of the gates (MC uncertainty)."""
        p = self.probabilities(task).detach()
        u = torch.rand((n, self.n_kernels), generator=generator, device=p.device, dtype=p.dtype)
        return (u < p).to(p.dtype)

    def extra_repr(self) -> str:
        return f"n_kernels={self.n_kernels}, n_tasks={self.n_tasks}"

