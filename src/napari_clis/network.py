"""The CLIS segmentation network: encoder blocks A1-A4, decoder blocks B1-B3, per-task kernel masks.

Shapes: the network takes ``(N, 3, H, W)`` float32 with ``H`` and ``W`` multiples of 8 and returns the
class logits ``(N, K, H, W)`` and the aleatoric log-variance of those logits ``(N, K, H, W)``. A network built with
``NetworkConfig(instance_head=True)`` also has a distance head (:class:`DistanceHead`: a decoder of its own over
the encoder's outputs), whose sigmoid is the normalised distance to the object's border (1 at each
object's centre, 0 on its border and on the background), for splitting touching objects
(``forward(..., with_distance=True)``).

Every convolution is a :class:`MaskedConv` whose output channels are multiplied by the current task's
binary kernel gates (:mod:`napari_clis.masks`). Normalisation is BatchNorm; its statistics are frozen
after pretraining. A learned task may carry, per convolution, an adaptation of its own
(:meth:`ClisNet.add_task_adaptation`): a BatchNorm (statistics and scale) and a 1x1 convolution beside the 3x3 one
(a residual adapter, Rebuffi et al. 2017); the weights every task shares stay as they are.

For Monte-Carlo uncertainty the network is split in two: :meth:`ClisNet.trunk` is deterministic and
computed once; :meth:`ClisNet.heads` applies what is stochastic (the Bernoulli gates of the last decoder
convolution and channel dropout on its output, then the 1x1 heads) and is cheap to repeat.

Pure torch: no Qt, no napari.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .masks import KernelGates

__all__ = ["NetworkConfig", "ClisNet", "MaskedConv", "DistanceHead"]


@dataclass(frozen=True)
class NetworkConfig:
    """Hyper-parameters that define the architecture (stored in every checkpoint)."""

    in_channels: int = 3
    n_classes: int = 2
    width: int = 16
    dropout: float = 0.2
    #: dilation of the bottleneck block A4's two convolutions (1 and 1: plain; 2 gives 2 and 4), which widens
    #: the field of view at 1/8 scale at no extra cost; checkpoints without it load as 1
    bottleneck_dilation: int = 1
    #: one more output, the normalised distance to the object's border (:attr:`ClisNet.distance_head`); model
    #: files without it load as False
    instance_head: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class MaskedConv(nn.Module):
    """3x3 convolution, BatchNorm, ReLU, then the task's binary gates over output channels.

    A task with an adaptation of its own (``task_norms[str(task)]``, ``adapters[str(task)]``) is normalised by its
    own BatchNorm, and a 1x1 convolution of the same input is added to the 3x3 one's output; the other tasks use
    the shared ``norm`` and nothing is added."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.gates = KernelGates(c_out)
        self.task_norms = nn.ModuleDict()
        self.adapters = nn.ModuleDict()

    def norm_of(self, task: int) -> nn.BatchNorm2d:
        """The BatchNorm ``task`` uses: its own, else the shared one."""
        return self.task_norms[str(task)] if str(task) in self.task_norms else self.norm

    def features(self, x: torch.Tensor, task: int = 0) -> torch.Tensor:
        """Output before gating."""
        key = str(task)
        y = self.conv(x)
        if key in self.adapters:
            y = y + self.adapters[key](x)
        return F.relu(self.norm_of(task)(y))

    def add_adaptation(self, task: int, parent: int) -> None:
        """Give ``task`` its own BatchNorm and adapter, copies of ``parent``'s (a zero adapter for a parent
        without one: the task starts as its parent)."""
        key = str(task)
        self.task_norms[key] = copy.deepcopy(self.norm_of(parent))
        if str(parent) in self.adapters:
            self.adapters[key] = copy.deepcopy(self.adapters[str(parent)])
        else:
            adapter = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 1, bias=False).to(self.conv.weight)
            nn.init.zeros_(adapter.weight)
            self.adapters[key] = adapter

    def gate_vector(self, task: int, relaxed: bool) -> torch.Tensor:
        return self.gates.relaxed(task) if relaxed else self.gates.hard(task)

    def forward(self, x: torch.Tensor, task: int = 0, relaxed: bool = False) -> torch.Tensor:
        g = self.gate_vector(task, relaxed)
        return self.features(x, task) * g.view(1, -1, 1, 1)


class DistanceHead(nn.Module):
    """The distance head: a decoder of its own (B1-B3's shapes, plain convolutions) over the encoder's outputs, then a
    1x1 convolution to one logit.

    It reads what the encoder saw, not the segmentation's last features (which only need to tell nucleus from
    background, so they say little about the neck between two touching nuclei). :meth:`copy_decoder` starts it as
    a copy of the segmentation's decoder, and it can be trained on its own over a fixed network
    (``PretrainSettings.head_only``), so the segmentation stays exactly what it was."""

    def __init__(self, w: int):
        super().__init__()
        self.B1 = _plain_block(8 * w + 4 * w, 4 * w)
        self.B2 = _plain_block(4 * w + 2 * w, 2 * w)
        self.B3 = _plain_block(2 * w + w, w)
        self.out = nn.Conv2d(w, 1, 1)
        nn.init.constant_(self.out.bias, -2.0)  # most pixels are background (target 0)

    def forward(self, encoded) -> torch.Tensor:
        a1, a2, a3, a4 = encoded
        b1 = self.B1(torch.cat([_up(a4), a3], 1))
        b2 = self.B2(torch.cat([_up(b1), a2], 1))
        return self.out(self.B3(torch.cat([_up(b2), a1], 1)))

    @torch.no_grad()
    def copy_decoder(self, net: ClisNet, task: int = 0) -> None:
        """Start as ``net``'s decoder for ``task``: its convolutions and BatchNorms, the kernels its gates switch
        off switched off here too (their BatchNorm's scale and shift 0)."""
        for name in ("B1", "B2", "B3"):
            for k, conv_name in enumerate(("conv1", "conv2")):
                source = getattr(getattr(net, name), conv_name)
                conv, norm = getattr(self, name)[3 * k], getattr(self, name)[3 * k + 1]
                conv.weight.copy_(source.conv.weight)
                norm.load_state_dict(source.norm_of(task).state_dict())
                off = source.gates.hard(task) == 0
                norm.weight[off] = 0.0
                norm.bias[off] = 0.0


def _plain_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Block(nn.Module):
    """Two masked convolutions (dilated by ``dilation`` and twice that, when ``dilation`` > 1)."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1):
        super().__init__()
        self.conv1 = MaskedConv(c_in, c_out, dilation)
        self.conv2 = MaskedConv(c_out, c_out, 2 * dilation if dilation > 1 else 1)

    def forward(self, x, task=0, relaxed=False):
        return self.conv2(self.conv1(x, task, relaxed), task, relaxed)


class ClisNet(nn.Module):
    """Encoder-decoder with skip connections and per-task kernel masks.

    Blocks: A1 (width), A2 (2 width), A3 (4 width), A4 (8 width, the bottleneck);
    B1 (4 width), B2 (2 width), B3 (width); heads: class logits and logit log-variance, and with
    ``config.instance_head`` the distance head (its logit; sigmoid = distance to the border / the object's largest).
    The distance head is shared by all tasks: continual learning leaves its weights alone.
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        w = config.width
        self.A1 = _Block(config.in_channels, w)
        self.A2 = _Block(w, 2 * w)
        self.A3 = _Block(2 * w, 4 * w)
        self.A4 = _Block(4 * w, 8 * w, config.bottleneck_dilation)
        self.B1 = _Block(8 * w + 4 * w, 4 * w)
        self.B2 = _Block(4 * w + 2 * w, 2 * w)
        self.B3 = _Block(2 * w + w, w)
        self.logit_head = nn.Conv2d(w, config.n_classes, 1)
        self.logvar_head = nn.Conv2d(w, config.n_classes, 1)
        nn.init.constant_(self.logvar_head.bias, -4.0)
        nn.init.normal_(self.logvar_head.weight, std=1e-3)
        self.distance_head = DistanceHead(w) if config.instance_head else None

    # -- structure -------------------------------------------------------------------------------
    @property
    def blocks(self) -> dict[str, _Block]:
        return {n: getattr(self, n) for n in ("A1", "A2", "A3", "A4", "B1", "B2", "B3")}

    def masked_convs(self) -> dict[str, MaskedConv]:
        """All masked convolutions by name (``"A1.conv1"``, ...), in network order."""
        return {f"{b}.{c}": getattr(blk, c) for b, blk in self.blocks.items() for c in ("conv1", "conv2")}

    @property
    def n_tasks(self) -> int:
        return self.A1.conv1.gates.n_tasks

    def add_task(self, init_from: int | None = None) -> int:
        """Add gate logits for a new task (copied from ``init_from`` if given); return its index."""
        for conv in self.masked_convs().values():
            init = None if init_from is None else conv.gates.logits[init_from]
            conv.gates.add_task(init)
        return self.n_tasks - 1

    def add_task_adaptation(self, task: int, parent: int) -> None:
        """Give ``task`` a BatchNorm and a 1x1 adapter of its own in every masked convolution, copies of
        ``parent``'s (:meth:`MaskedConv.add_adaptation`)."""
        for conv in self.masked_convs().values():
            conv.add_adaptation(task, parent)

    def adapted_tasks(self) -> list[int]:
        """The tasks with an adaptation of their own, in order."""
        return sorted(int(k) for k in self.A1.conv1.adapters.keys())

    def make_room_for(self, state_dict) -> None:
        """Before ``load_state_dict``: the per-task BatchNorms and adapters that ``state_dict`` holds, made (empty)
        so that the names match. Raises ``ValueError`` for one of a task the network does not have."""
        for name, conv in self.masked_convs().items():
            for kind in ("task_norms", "adapters"):
                prefix = f"{name}.{kind}."
                keys = {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}
                for key in sorted(keys, key=lambda k: (len(k), k)):
                    if not (key.isdigit() and 0 < int(key) < self.n_tasks):
                        raise ValueError(f"'{prefix}{key}' belongs to no learned task of the model (tasks 1 to "
                                         f"{self.n_tasks - 1})")
                    if key not in getattr(conv, kind):
                        getattr(conv, kind)[key] = nn.BatchNorm2d(conv.conv.out_channels) if kind == "task_norms" \
                            else nn.Conv2d(conv.conv.in_channels, conv.conv.out_channels, 1, bias=False)

    # -- forward ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, task: int = 0, relaxed: bool = False) -> tuple[torch.Tensor, ...]:
        """The encoder: A1-A4's outputs ``(a1, a2, a3, a4)``, ``a4`` the bottleneck (the task fingerprint's)."""
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"ClisNet needs H and W divisible by 8, got {tuple(x.shape[-2:])}")
        a1 = self.A1(x, task, relaxed)
        a2 = self.A2(F.max_pool2d(a1, 2), task, relaxed)
        a3 = self.A3(F.max_pool2d(a2, 2), task, relaxed)
        return a1, a2, a3, self.A4(F.max_pool2d(a3, 2), task, relaxed)

    def trunk(self, x: torch.Tensor, task: int = 0, relaxed: bool = False) -> torch.Tensor:
        """Deterministic part: everything up to the last convolution's ungated output ``(N, w, H, W)``."""
        return self.decode(self.encode(x, task, relaxed), task, relaxed)

    def decode(self, encoded, task: int = 0, relaxed: bool = False) -> torch.Tensor:
        """The decoder B1-B3 over :meth:`encode`'s outputs: the last convolution's ungated output."""
        a1, a2, a3, a4 = encoded
        b1 = self.B1(torch.cat([_up(a4), a3], 1), task, relaxed)
        b2 = self.B2(torch.cat([_up(b1), a2], 1), task, relaxed)
        b3 = self.B3.conv1(torch.cat([_up(b2), a1], 1), task, relaxed)
        return self.B3.conv2.features(b3, task)

    def heads(self, features: torch.Tensor, gates: torch.Tensor, dropout_mask: torch.Tensor | None = None):
        """Stochastic part: gate the last features, drop channels, apply the 1x1 heads.

        ``gates`` is ``(w,)`` or ``(N, w)``; ``dropout_mask`` the same shape, already scaled by ``1/(1-p)``.
        Returns ``(logits, log_variance)``, each ``(N, K, H, W)``.
        """
        g = gates if gates.dim() == 2 else gates.unsqueeze(0)
        if dropout_mask is not None:
            dm = dropout_mask if dropout_mask.dim() == 2 else dropout_mask.unsqueeze(0)
            g = g * dm
        f = features * g[:, :, None, None]
        return self.logit_head(f), self.logvar_head(f)

    def distance(self, encoded) -> torch.Tensor:
        """The distance head's logit ``(N, 1, H, W)`` from :meth:`encode`'s outputs (a ``ValueError`` for a network
        without that head)."""
        self._require_distance_head()
        return self.distance_head(encoded)

    def _require_distance_head(self) -> None:
        if self.distance_head is None:
            raise ValueError("this network has no distance head (NetworkConfig.instance_head is False)")

    def forward(self, x: torch.Tensor, task: int = 0, relaxed: bool = False, with_distance: bool = False):
        """One pass: ``(logits, log_variance)`` (and the distance logit with ``with_distance``). Training uses
        relaxed gates and dropout."""
        if with_distance:  # before the pass, not after it
            self._require_distance_head()
        encoded = self.encode(x, task, relaxed)
        feats = self.decode(encoded, task, relaxed)
        last = self.B3.conv2
        gates = last.gate_vector(task, relaxed)
        drop = None
        if self.training and self.config.dropout > 0:
            keep = 1.0 - self.config.dropout
            drop = (torch.rand(x.shape[0], feats.shape[1], device=x.device) < keep).to(feats.dtype) / keep
            gates = gates.unsqueeze(0).expand(x.shape[0], -1)
        out = self.heads(feats, gates, drop)
        return (*out, self.distance(encoded)) if with_distance else out


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
