"""The continual-learning baselines of the transfer protocol: fine-tuning, LwF, EWC and PackNet.

Each learner sees exactly what CLIS sees when the user accepts an image: the image at the network's working
resolution and its propagated labels. All share CLIS's crops, augmentation, loss and step budget
(:class:`~napari_clis.continual.LearnSettings`, :func:`~napari_clis.continual.fit`), so that only the method
differs. BatchNorm statistics stay frozen for all of them (as for CLIS), and the gates stay those of task 0.

* :class:`FineTune` - every weight trained on each new image.
* :class:`LwF` - Learning without Forgetting (Li and Hoiem, ECCV 2016): fine-tuning plus knowledge distillation
  towards the previous model's outputs on the same crops (temperature 2, weight 1, the paper's values). The
  label space is shared, so the "old task head" is the shared head itself.
* :class:`EWC` - Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017): fine-tuning plus, for every
  earlier task, ``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` with the diagonal Fisher information ``F``
  at that task's solution ``theta*``. Task 0 is the pretrained model: its Fisher is estimated on the first
  image with the model's own predictions as labels (the pretraining data is not part of a user's session).
* :class:`PackNet` - PackNet (Mallya and Lazebnik, CVPR 2018): every convolution weight belongs to one task.
  The pretrained model is first pruned (``prune`` of each layer's weights by magnitude) and retrained on its
  own training images; then each new task trains only the free weights, keeps the largest ``1 - prune`` of them
  by magnitude, retrains those (a quarter of the step budget), and freezes them. Task ``t`` is segmented with
  the weights of tasks ``0..t``; PackNet needs the task's identity, so earlier images use their own task and
  unseen images the latest one (which holds all weights).

Pure torch/numpy: no Qt, no napari.
"""

from __future__ import annotations

import abc
import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from ..continual import LearnSettings, _crops, fit
from ..network import ClisNet

__all__ = ["Learner", "FineTune", "LwF", "EWC", "PackNet", "make_learner", "BASELINES"]


class Learner(abc.ABC):
    """A continual learner over a sequence of images (the baselines' common interface).

    ``learn(x, target)`` learns one image (``(3, H, W)`` float tensor, ``(H, W)`` int64 labels) as the next task;
    ``net_for(task)`` is the network that segments an image of ``task`` (``None``: an unseen image). Tasks count
    from 1 for the first learned image; 0 is the pretrained model.
    """

    name = "learner"

    def __init__(self, net: ClisNet, settings: LearnSettings | None = None):
        self.net = copy.deepcopy(net).eval()
        self.settings = settings or LearnSettings()
        self.n_learned = 0

    @abc.abstractmethod
    def learn(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """Learn one image as the next task."""

    def net_for(self, task: int | None = None) -> ClisNet:
        return self.net


class FineTune(Learner):
    """Plain fine-tuning: every weight (not the gates, not the BatchNorm statistics)."""

    name = "finetune"

    def learn(self, x, target):
        self.net = fit(self.net, x, target, self.settings)
        self.n_learned += 1


class LwF(Learner):
    """Learning without Forgetting: distil the previous model's outputs while learning the new image."""

    name = "lwf"

    def __init__(self, net, settings=None, temperature: float = 2.0, weight: float = 1.0):
        super().__init__(net, settings)
        self.temperature, self.weight = temperature, weight

    def learn(self, x, target):
        old = self.net
        t = self.temperature

        def distillation(new, xb, logits):
            with torch.no_grad():
                soft = torch.log_softmax(old(xb, 0)[0] / t, 1)
            kl = (soft.exp() * (soft - torch.log_softmax(logits / t, 1))).sum(1).mean()
            return self.weight * t * t * kl

        self.net = fit(old, x, target, self.settings, penalty=distillation)
        self.n_learned += 1


def _weights(net: ClisNet) -> dict[str, torch.Tensor]:
    return {n: p for n, p in net.named_parameters() if "gates" not in n}


def fisher_diagonal(net: ClisNet, x: torch.Tensor, target: torch.Tensor | None, settings: LearnSettings,
                    batches: int = 4) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of the segmentation log-likelihood on crops of one image.

    With ``target=None`` the labels are the model's own predictions (the Fisher of what the model does)."""
    net = copy.deepcopy(net).eval()
    params = _weights(net)
    for n, p in net.named_parameters():
        p.requires_grad_(n in params)
    rng = np.random.default_rng(settings.seed + 7)
    if target is None:
        with torch.no_grad():
            target = net(x[None], 0)[0].argmax(1)[0]
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(batches):
        xb, yb = _crops(x, target, settings, rng)
        net.zero_grad()
        F.cross_entropy(net(xb, 0)[0], yb).backward()
        for n, p in params.items():
            if p.grad is not None:
                out[n] += p.grad.detach() ** 2 / batches
    return out


class EWC(Learner):
    """Elastic Weight Consolidation, one quadratic penalty per earlier task (task 0: the pretrained model)."""

    name = "ewc"

    def __init__(self, net, settings=None, strength: float = 1e6):
        super().__init__(net, settings)
        self.strength = strength
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def learn(self, x, target):
        if not self.anchors:  # task 0, the pretrained model, judged on what it does on the first image
            self.anchors.append(self._anchor(x, None))
        anchors = self.anchors

        def penalty(new, xb, logits):
            w = _weights(new)
            return 0.5 * self.strength * sum((f[n] * (w[n] - a[n]) ** 2).sum() for a, f in anchors for n in f)

        self.net = fit(self.net, x, target, self.settings, penalty=penalty)
        self.anchors.append(self._anchor(x, target))
        self.n_learned += 1

    def _anchor(self, x, target):
        theta = {n: p.detach().clone() for n, p in _weights(self.net).items()}
        return theta, fisher_diagonal(self.net, x, target, self.settings)


_FREE = -1


class PackNet(Learner):
    """PackNet: iterative magnitude pruning; each task owns the convolution weights it kept.

    Parameters
    ----------
    net : ClisNet
        The pretrained model (task 0).
    pretrain : list of (x, target), optional
        Images the pretrained model was trained on, to retrain task 0 after its pruning (PackNet's first step).
    prune : float
        The fraction of the available weights of each layer given back after each task.
    retrain_steps : int
        Steps of retraining task 0 after pruning it.
    """

    name = "packnet"

    def __init__(self, net, settings=None, pretrain=None, prune: float = 0.5, retrain_steps: int = 100):
        super().__init__(net, settings)
        self.prune = prune
        self.owner = {n: torch.zeros(c.conv.weight.shape, dtype=torch.int16)
                      for n, c in self.net.masked_convs().items()}
        self._prune_to(0)
        if pretrain and retrain_steps > 0:
            self._train(0, pretrain, retrain_steps)

    def _convs(self, net=None):
        return (net or self.net).masked_convs()

    def _prune_to(self, task: int) -> None:
        """Keep the largest ``1 - prune`` of ``task``'s candidate weights per layer; free and zero the rest."""
        with torch.no_grad():
            for n, conv in self._convs().items():
                cand = self.owner[n] == (task if task == 0 else _FREE)
                w = conv.conv.weight.abs()[cand]
                if w.numel() == 0:
                    continue
                keep = max(1, int(round((1 - self.prune) * w.numel())))
                threshold = torch.topk(w, keep).values.min()
                drop = cand & (conv.conv.weight.abs() < threshold)
                self.owner[n][cand & ~drop] = task
                self.owner[n][drop] = _FREE
                conv.conv.weight[drop] = 0.0

    def _train(self, task: int, samples, steps: int) -> None:
        """Retrain task 0's kept weights after pruning, on crops of the images it was trained on."""
        s = dataclasses.replace(self.settings, steps=steps)
        only = {f"{n}.conv.weight": self.owner[n] == task for n in self.owner}
        self.net = fit(self.net, None, None, s, only=only,
                       batches=lambda rng: _crops(*samples[int(rng.integers(len(samples)))], s, rng))

    def learn(self, x, target):
        task = self.n_learned + 1
        steps = self.settings.steps
        first = max(1, int(round(0.75 * steps)))
        s = dataclasses.replace(self.settings, steps=first)
        only = {f"{n}.conv.weight": self.owner[n] == _FREE for n in self.owner}
        self.net = fit(self.net, x, target, s, only=only)
        self._prune_to(task)
        if steps - first > 0:
            s = dataclasses.replace(self.settings, steps=steps - first, seed=self.settings.seed + 1)
            only = {f"{n}.conv.weight": self.owner[n] == task for n in self.owner}
            self.net = fit(self.net, x, target, s, only=only)
        self.n_learned = task

    def net_for(self, task=None):
        task = self.n_learned if task is None else task
        view = copy.deepcopy(self.net)
        with torch.no_grad():
            for n, conv in self._convs(view).items():
                o = self.owner[n]
                conv.conv.weight[(o == _FREE) | (o > task)] = 0.0
        return view.eval()

    def weights_per_task(self) -> list[int]:
        """How many convolution weights each task owns (the last entry: free)."""
        o = torch.cat([v.flatten() for v in self.owner.values()])
        return [int((o == t).sum()) for t in range(self.n_learned + 1)] + [int((o == _FREE).sum())]


BASELINES = {"finetune": FineTune, "lwf": LwF, "ewc": EWC, "packnet": PackNet}


def make_learner(name: str, net: ClisNet, settings: LearnSettings | None = None, **kwargs) -> Learner:
    """A baseline learner by name (``finetune``, ``lwf``, ``ewc``, ``packnet``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown continual-learning baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name](net, settings, **kwargs)
