"""Continual learning across images: a new task per accepted image, with kernel masks under the IBP prior.

``learn_task`` adds task ``t`` to the network and trains, on one image and its propagated labels:

* the new task's gate logits (binary concrete, straight-through), under the IBP restaurant prior built from
  how many earlier tasks use each kernel (``masks.ibp_restaurant_prior``);
* the weights of the kernels that **no earlier task uses** (convolution rows and their BatchNorm affine
  parameters). Kernels an earlier task uses, the shared 1x1 heads and the BatchNorm statistics stay frozen,
  so every earlier task's output, computed with its own mask, is exactly what it was: backward transfer on
  the tasks' own masks is zero by construction, and ``learn_task`` checks it by fingerprinting the protected
  parameters.

``fingerprint`` summarises an image by the pooled bottleneck (A4) features under task 0; the task-aware module
(``choose_task``) picks, for an image, the learned task whose fingerprint is nearest (cosine, ``select_task``),
or task 0 when nothing has been learned. A known image (one that was learned, or rolled back) keeps its task;
an unseen one gets the nearest task only if that task's segmentation of it agrees with the pretrained task's
(foreground Dice >= ``TRANSFER_AGREEMENT``): a task learned on one image refines images like it, and one that
would remake an unseen image's segmentation is out of its depth there. Pure torch/numpy: no Qt, no napari.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .masks import bernoulli_kl, ibp_restaurant_prior
from .metrics import dice
from .network import ClisNet

__all__ = ["LearnSettings", "TaskRecord", "learn_task", "fit", "fingerprint", "select_task", "choose_task",
           "TRANSFER_AGREEMENT", "LearnCancelled", "kernel_usage", "mask_usage", "learn_verdict", "own_statistics"]

# the least foreground Dice between a learned task's and the pretrained task's labels of an unseen image for the
# learned task to segment it (chosen on isic2017/val sequences: docs/benchmarks.md)
TRANSFER_AGREEMENT = 0.9


class LearnCancelled(RuntimeError):
    """Learning was cancelled; the model is as it was before."""


@dataclass
class LearnSettings:
    steps: int = 20
    batch: int = 4
    crop: int = 128
    lr: float = 2e-3
    gate_lr: float = 5e-2
    idle_scale: float = 1e-2
    # L1 weight on the free kernels' BatchNorm scales: a task keeps only the kernels it needs, and leaves the rest
    # free for later tasks (docs/method.md; 0 let the first two or three tasks take every free kernel)
    sparsity: float = 3e-3
    kl_weight: float = 1e-3
    ibp_alpha_per_kernel: float = 1.0
    seed: int = 0
    # the model's decision prior (ClisSession.class_log_prior): the loss and the Dice checks see the logits plus
    # this, as the labels do, so that a learned task's probabilities keep the network's own balance
    class_log_prior: tuple[float, ...] | None = None
    # when a new task gets a BatchNorm (its images' statistics, its own scale) and a 1x1 adapter per convolution of
    # its own, copies of its parent's: "auto" for an image unlike the pretraining images (ClisSession.learn: a new
    # kind of image needs the features to move, which free kernels alone cannot do; on images of the pretraining
    # kind the adaptation fitted the learned image and transferred worse, docs/method.md), "always", or "never"
    # (free kernels and gates only, as the paper)
    adapt: str = "auto"
    # a learned task is kept when it follows as many of the corrections as its parent, and agrees with the accepted
    # segmentation on at least this share of the pixels the user did not correct (learn_verdict)
    keep_agreement: float = 0.9


@dataclass
class TaskRecord:
    """What the session remembers of one learned task."""

    task: int
    parent: int
    fingerprint: list[float] = field(repr=False)  # 128 numbers: unreadable in a printed task list
    image_shape: list[int]
    clicks: list[list[int]]
    kernels_on: dict[str, int]
    kernels_new: int
    dice_before: float
    dice_after: float
    seconds: float
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    # what the rollback rule judged (learn_verdict): the share of the corrected pixels the parent and the new task
    # get right (None: nothing was corrected), and the new task's agreement with the other accepted pixels
    corrected_before: float | None = None
    corrected_after: float | None = None
    agreement_after: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TaskRecord:
        return cls(**d)


def kernel_usage(net: ClisNet, tasks: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Per layer, how many of ``tasks`` (default: all) switch each kernel on."""
    tasks = list(range(net.n_tasks)) if tasks is None else tasks
    return {name: sum((conv.gates.hard(t) for t in tasks), torch.zeros(conv.gates.n_kernels))
            for name, conv in net.masked_convs().items()}


def mask_usage(net: ClisNet, task: int) -> list[tuple[str, int, int, int]]:
    """Per layer ``(name, on, on_not_pretrained, n_kernels)``: how many kernels ``task``'s mask switches on, and
    how many of those the pretrained task 0 does not use (what learning added)."""
    out = []
    for name, conv in net.masked_convs().items():
        on = conv.gates.hard(task) > 0
        new = on & ~(conv.gates.hard(0) > 0)
        out.append((name, int(on.sum()), int(new.sum()), conv.gates.n_kernels))
    return out


@torch.no_grad()
def fingerprint(net: ClisNet, x: torch.Tensor) -> np.ndarray:
    """(C,) unit vector: the bottleneck features of task 0 (:meth:`ClisNet.encode`), averaged over the image."""
    v = net.encode(x, 0)[-1].mean((0, 2, 3)).double().cpu().numpy()
    return v / max(np.linalg.norm(v), 1e-12)


def select_task(fp: np.ndarray, records: list[TaskRecord], remembered: list | None = None) -> int:
    """The task of the nearest known image (cosine of fingerprints), or 0 when nothing is known.

    Known images are the learned tasks' own and ``remembered``: (fingerprint, task) of images whose learn step
    was rolled back, which keep the task that segmented them. Among equally near ones the latest wins."""
    known = [(np.asarray(r.fingerprint), r.task) for r in records]
    known += [(np.asarray(f), int(t)) for f, t in (remembered or [])]
    if not known:
        return 0
    sims = np.array([float(np.dot(fp, f)) for f, _ in known])
    return known[int(np.flatnonzero(sims >= sims.max() - 1e-12)[-1])][1]  # ties: the latest


def _known(fp: np.ndarray, records: list[TaskRecord], remembered: list | None = None) -> bool:
    """Whether ``fp`` is the fingerprint of an image the session learned or rolled back (the same image)."""
    known = [r.fingerprint for r in records] + [f for f, _ in (remembered or [])]
    return any(float(np.dot(fp, np.asarray(f))) >= 1.0 - 1e-6 for f in known)


@torch.no_grad()
def choose_task(net: ClisNet, x: torch.Tensor, fp: np.ndarray, records: list[TaskRecord],
                remembered: list | None = None, *, class_log_prior=None, single_object: bool = False,
                min_agreement: float = TRANSFER_AGREEMENT) -> tuple[int, dict]:
    """The task-aware module: the task that segments an image.

    ``x`` (3, h, w) is the image at the network's working resolution and ``fp`` its :func:`fingerprint`. The
    nearest known image's task (:func:`select_task`); a known image keeps it; for an unseen image, a learned
    task whose labels (one deterministic pass, the model's decision) agree with task 0's by less than
    ``min_agreement`` foreground Dice gives way to task 0.

    Returns ``(task, info)``, ``info``: ``nearest`` (the nearest image's task), ``known`` and ``agreement``
    (``None`` when not checked).
    """
    from .uncertainty import decide

    nearest = select_task(fp, records, remembered)
    info = {"nearest": nearest, "known": _known(fp, records, remembered), "agreement": None}
    if nearest == 0 or info["known"]:
        return nearest, info
    labels = [decide(torch.softmax(net(x[None], t)[0][0], 0).float().cpu().numpy(), class_log_prior,
                     single_object) > 0 for t in (nearest, 0)]
    agreement = dice(labels[0], labels[1])
    info["agreement"] = agreement
    return (nearest if agreement >= min_agreement else 0), info


def _protected_digest(net: ClisNet, masks: dict[str, torch.Tensor], tasks: list[int]) -> str:
    """A digest of everything the tasks so far use: the shared kernels they switch on, every task's own BatchNorm
    and adapter, the heads."""
    h = hashlib.sha256()
    for name, conv in net.masked_convs().items():
        used = masks[name] > 0
        h.update(conv.conv.weight[used].detach().cpu().numpy().tobytes())
        h.update(conv.norm.weight[used].detach().cpu().numpy().tobytes())
        h.update(conv.norm.bias[used].detach().cpu().numpy().tobytes())
        for own in (conv.task_norms, conv.adapters):
            for key in sorted(k for k in own.keys() if int(k) in tasks):
                for t in own[key].state_dict().values():
                    h.update(key.encode())
                    h.update(t.detach().cpu().numpy().tobytes())
    for head in (net.logit_head, net.logvar_head):
        for p in head.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _decided(logits: torch.Tensor, s: LearnSettings) -> torch.Tensor:
    """``logits`` (N, K, H, W) plus the decision prior, the logits whose argmax the labels are."""
    if s.class_log_prior is None:
        return logits
    return logits + torch.as_tensor(s.class_log_prior, dtype=logits.dtype, device=logits.device)[None, :, None, None]


def _dice_fg(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Foreground Dice of two label tensors (:func:`napari_clis.metrics.dice`)."""
    return dice((pred > 0).cpu().numpy(), (target > 0).cpu().numpy())


def _crops(x: torch.Tensor, y: torch.Tensor, s: LearnSettings, rng: np.random.Generator):
    """A batch of augmented crops: random position, flips, transposition, rotation by multiples of 90 degrees."""
    _, h, w = x.shape
    c = min(s.crop, h - h % 8, w - w % 8)
    xs, ys = [], []
    for _ in range(s.batch):
        y0, x0 = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        xc, yc = x[:, y0:y0 + c, x0:x0 + c], y[y0:y0 + c, x0:x0 + c]
        k = int(rng.integers(4))
        xc, yc = torch.rot90(xc, k, (1, 2)), torch.rot90(yc, k, (0, 1))
        if rng.random() < 0.5:
            xc, yc = xc.flip(-1), yc.flip(-1)
        xs.append(xc)
        ys.append(yc)
    return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


def learn_task(net: ClisNet, x: torch.Tensor, target: torch.Tensor, parent: int, settings: LearnSettings | None = None,
               progress=None, adapt: bool | None = None,
               corrected: torch.Tensor | None = None) -> tuple[ClisNet, int, dict]:
    """Learn one image as a new task on a copy of ``net``.

    Parameters
    ----------
    net : ClisNet
        The current model; it is not modified.
    x : (3, H, W) float tensor
        The normalised image at the network's working resolution (H, W divisible by 8).
    target : (H, W) int64 tensor
        The propagated labels.
    parent : int
        The task whose mask the new task starts from (the one that segmented the image).
    progress : callable, optional
        ``progress(step, total)``; returning ``False`` cancels (``LearnCancelled``; ``net`` is untouched).
    adapt : bool, optional
        Give the task a BatchNorm and adapters of its own (:meth:`ClisNet.add_task_adaptation`, statistics from
        :func:`own_statistics`); default: ``settings.adapt == "always"``.
    corrected : (H, W) bool tensor, optional
        The pixels the user changed (``target`` where it differs from the segmentation the user started from).
        :func:`learn_verdict` then judges the task on those of them the parent's own labels have wrong (the
        corrections) and on the pixels the user left that the parent has right (what must stay); the few pixels
        where the segmentation (the mean over the network's samples) and one pass of the parent decide differently
        count in neither. Default: the corrections are all the pixels where ``target`` differs from the parent's
        own labels, and the rest must stay.

    Returns
    -------
    (new_net, task, info): the copy with the new task, its index, and ``dice_before`` / ``dice_after`` (the
    parent's and the new task's foreground Dice against ``target``), ``kernels_new`` (kernels no earlier task
    used that the new task switches on), ``kernels_on`` per layer.
    """
    s = settings or LearnSettings()
    device = next(net.parameters()).device
    new = copy.deepcopy(net).to(device).eval()  # eval: BatchNorm statistics stay frozen
    earlier = list(range(new.n_tasks))
    usage = kernel_usage(new, earlier)
    digest = _protected_digest(new, usage, earlier)
    x = x.to(device)
    target = target.to(device)
    with torch.no_grad():  # the labels the parent gives (the corrections are where the accepted ones differ)
        parent_labels = _decided(new(x[None], parent)[0], s).argmax(1)[0]
    task = new.add_task(init_from=parent)
    if s.adapt not in ("auto", "always", "never"):
        raise ValueError(f"adapt must be 'auto', 'always' or 'never', got {s.adapt!r}")
    if adapt if adapt is not None else s.adapt == "always":
        new.add_task_adaptation(task, parent)
        own_statistics(new, x, task, parent)
    priors = {name: ibp_restaurant_prior(usage[name], len(earlier), s.ibp_alpha_per_kernel * conv.gates.n_kernels)
              .to(device)
              for name, conv in new.masked_convs().items()}

    # train only what no earlier task uses: the free kernels' weights (and their BatchNorm affine), the new gates;
    # with its own adaptation, the task's own BatchNorm affine and adapters
    for p in new.parameters():
        p.requires_grad_(False)
    weights, gates, hooks = [], [], []
    free_masks = {}
    for name, conv in new.masked_convs().items():
        free = (usage[name] == 0).to(device)
        free_masks[name] = free
        norm = conv.norm_of(task)
        with torch.no_grad():  # switch the free kernels on, with a zero scale: no effect until they learn one
            conv.gates.logits[task][free] = conv.gates.init_logit
            norm.weight[free] = 0.0
            norm.bias[free] = 1e-3
        conv.gates.logits[task].requires_grad_(True)
        gates.append(conv.gates.logits[task])
        own = str(task) in conv.task_norms
        if free.any():
            for p, shape in ((conv.conv.weight, (-1, 1, 1, 1)),) + (() if own else (
                    (norm.weight, (-1,)), (norm.bias, (-1,)))):
                p.requires_grad_(True)
                m = free.to(p.dtype).reshape(shape)
                hooks.append(p.register_hook(lambda g, m=m: g * m))
                weights.append(p)
        if own:  # the task's own: every entry trains
            for p in list(norm.parameters()) + list(conv.adapters[str(task)].parameters()):
                p.requires_grad_(True)
                weights.append(p)
    groups = [{"params": gates, "lr": s.gate_lr}]
    if weights:
        groups.append({"params": weights, "lr": s.lr, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups)

    before = _dice_fg(parent_labels, target)
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    for step in range(s.steps):
        xb, yb = _crops(x, target, s, rng)
        logits, _ = new(xb, task, relaxed=True)
        kl = sum(bernoulli_kl(conv.gates.probabilities(task), priors[name])
                 for name, conv in new.masked_convs().items())
        loss = _seg_loss(_decided(logits, s), yb) + s.kl_weight * kl / max(1, target.numel() / 1e4)
        if s.sparsity > 0:
            loss = loss + s.sparsity * sum(conv.norm_of(task).weight[free_masks[name]].abs().sum()
                                           for name, conv in new.masked_convs().items() if free_masks[name].any())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None and progress(step + 1, s.steps) is False:
            for h in hooks:
                h.remove()
            raise LearnCancelled("Learning was cancelled; the model is as it was before.")
    for h in hooks:
        h.remove()
    for p in new.parameters():
        p.requires_grad_(False)
        p.grad = None  # the last step's gradients would otherwise stay with the session's model (1.7 MB for nuclei)
    with torch.no_grad():  # free kernels that learned nothing stay free for later tasks
        for name, conv in new.masked_convs().items():
            idle = free_masks[name] & (conv.norm_of(task).weight.abs() < s.idle_scale)
            conv.gates.logits[task][idle] = -conv.gates.init_logit
    new.eval()
    if _protected_digest(new, usage, earlier) != digest:  # would be a bug: earlier tasks must not change
        raise RuntimeError("learning changed parameters that earlier tasks use; nothing was kept")
    with torch.no_grad():
        labels = _decided(new(x[None], task)[0], s).argmax(1)[0]
    after = _dice_fg(labels, target)
    differs = target != parent_labels  # where the accepted labels differ from the parent's own decision
    if corrected is None:
        corrected, kept = differs, ~differs
    else:  # of the pixels the user changed, those the parent had wrong; judged on what the user left and it had right
        edited = corrected.to(device=device, dtype=torch.bool)
        if edited.shape != target.shape:
            raise ValueError(f"corrected is {tuple(edited.shape)}, the target {tuple(target.shape)}: they must "
                             "match")
        corrected, kept = edited & differs, ~edited & ~differs

    def share(a, where):
        return float((a[where] == target[where]).float().mean()) if bool(where.any()) else None

    on = {name: int(conv.gates.hard(task).sum()) for name, conv in new.masked_convs().items()}
    fresh = int(sum(int(((conv.gates.hard(task) > 0) & (usage[name] == 0)).sum())
                    for name, conv in new.masked_convs().items()))
    for p in new.parameters():
        p.requires_grad_(True)
    info = {"dice_before": before, "dice_after": after, "kernels_on": on, "kernels_new": fresh,
            "steps": s.steps, "lr": s.lr, "finite": bool(math.isfinite(after)),
            "adapted": str(task) in new.A1.conv1.adapters, "corrected_share": float(corrected.float().mean()),
            "corrected_before": share(parent_labels, corrected),
            "corrected_after": share(labels, corrected), "agreement_after": share(labels, kept)}
    return new, task, info


@torch.no_grad()
def own_statistics(net: ClisNet, x: torch.Tensor, task: int, parent: int) -> None:
    """``task``'s own BatchNorms take the statistics of the image ``x`` (3, H, W), measured layer after layer in
    one pass (AdaBN, Li et al. 2016), averaged with those of the images ``parent`` learned before it (each task's
    ``num_batches_tracked`` counts them): a new kind of image is normalised as its kind, not as the pretraining
    images, nor as this one image alone."""
    convs = list(net.masked_convs().values())
    earlier = []
    for conv in convs:
        own = conv.task_norms[str(parent)] if str(parent) in conv.task_norms else None
        earlier.append(None if own is None else (int(own.num_batches_tracked), own.running_mean.clone(),
                                                 own.running_var.clone()))
        norm = conv.task_norms[str(task)]
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: exactly this pass's statistics
        norm.train()
    try:
        net.trunk(x[None], task)
    finally:
        for conv, before in zip(convs, earlier):
            norm = conv.task_norms[str(task)]
            norm.momentum = 0.1
            norm.eval()
            if before is not None and before[0] > 0:  # the mean and variance over every image of the lineage
                k, mean, var = before
                m = (k * mean + norm.running_mean) / (k + 1)
                second = (k * (var + mean ** 2) + norm.running_var + norm.running_mean ** 2) / (k + 1)
                norm.running_mean.copy_(m)
                norm.running_var.copy_((second - m ** 2).clamp_min(norm.eps))
                norm.num_batches_tracked.fill_(k + 1)


def learn_verdict(info: dict, settings: LearnSettings | None = None) -> str | None:
    """Whether a learned task is to be kept (None) or rolled back (why, in words), from :func:`learn_task`'s
    ``info``: it must find objects, follow at least as many of the user's corrections (the pixels the user changed
    that the parent had wrong, :func:`learn_task`) as the parent does, and agree with the accepted segmentation on
    at least ``settings.keep_agreement`` of the pixels that must stay. Judging it on the whole accepted
    segmentation instead would favour the parent, which made most of it (docs/method.md)."""
    s = settings or LearnSettings()
    if not info["dice_after"] > 0:
        return "it would find none of the objects"
    fixed, was = info.get("corrected_after"), info.get("corrected_before")
    if fixed is not None and was is not None and fixed < was:
        return (f"it would follow fewer of your corrections than the current model ({fixed:.0%} of the corrected "
                f"pixels, against {was:.0%})")
    agreement = info.get("agreement_after")
    if agreement is not None and agreement < s.keep_agreement:
        return (f"it would change too much of what you accepted (it agrees with {agreement:.0%} of the pixels you "
                f"did not correct; at least {s.keep_agreement:.0%} are needed)")
    return None


def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    k = logits.shape[1]
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).to(p.dtype)
    inter, denom = (p * onehot).sum((0, 2, 3)), (p + onehot).sum((0, 2, 3))
    return F.cross_entropy(logits, target) + 1 - ((2 * inter + 1) / (denom + 1))[1:].mean()


def fit(net: ClisNet, x: torch.Tensor | None, target: torch.Tensor | None, settings: LearnSettings | None = None,
        task: int = 0, *, penalty=None, only: dict[str, torch.Tensor] | None = None, batches=None) -> ClisNet:
    """Train a copy of ``net`` with ``task``'s mask: the loop every weight-training method shares.

    The same crops, augmentation, loss and steps as :func:`learn_task`; the gates and the BatchNorm statistics
    stay as they are.

    Parameters
    ----------
    penalty : callable, optional
        ``penalty(net, xb, logits)`` added to the loss (LwF's distillation, EWC's quadratic term).
    only : dict, optional
        Parameter name -> boolean mask of the entries that may change; then only those parameters train
        (PackNet's free weights). Default: every weight.
    batches : callable, optional
        ``batches(rng) -> (xb, yb)`` instead of crops of ``x`` and ``target``.
    """
    s = settings or LearnSettings()
    device = next(net.parameters()).device
    new = copy.deepcopy(net).to(device).eval()
    named = dict(new.named_parameters())
    names = list(only) if only is not None else [n for n in named if "gates" not in n]
    for n, p in named.items():
        p.requires_grad_(n in names)
    # the default binds each mask, moved once, into its own hook
    hooks = [named[n].register_hook(lambda g, m=m.to(device=device, dtype=named[n].dtype): g * m)  # noqa: B008
             for n, m in (only or {}).items()]
    opt = torch.optim.Adam([named[n] for n in names], lr=s.lr)
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    if batches is None:
        x, target = x.to(device), target.to(device)
        batches = lambda r: _crops(x, target, s, r)  # noqa: E731
    for _ in range(s.steps):
        xb, yb = batches(rng)
        logits, _ = new(xb.to(device), task)
        loss = _seg_loss(_decided(logits, s), yb.to(device))
        if penalty is not None:
            loss = loss + penalty(new, xb, logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in hooks:
        h.remove()
    for p in new.parameters():
        p.requires_grad_(True)
    return new.eval()
