"""Segmentation with Monte-Carlo uncertainty, tiled for large images.

What is sampled (see ``docs/method.md``): the trunk of the network (A1-B3 up to the last convolution)
runs once, deterministically, with the task's hard kernel gates. Each of the ``T`` Monte-Carlo samples
then draws

* the Bernoulli kernel gates of the last decoder convolution (B3.conv2) from their gate probabilities,
* a channel-dropout mask on the same features (rate ``config.dropout``),

and applies the 1x1 heads. For each sample ``t`` the logits are perturbed ``S`` times with the predicted
aleatoric variance, ``z + sigma * eps`` (``eps``: a Latin hypercube of ``S`` standard normal draws per
sample and class, shared by all pixels), and pushed through the softmax: ``p_ts``. With
``m_t = mean_s p_ts`` and ``p_bar = mean_t m_t``:

* epistemic = ``sum_k Var_t(m_t,k)`` = ``mean_t sum_k m_t,k**2 - sum_k p_bar_k**2``
* aleatoric = ``sum_k E_t[Var_s(p_ts,k) + E_s p_ts,k (1 - p_ts,k)]`` = ``1 - mean_t sum_k m_t,k**2``

and their sum is the total predictive variance of the one-hot outcome, ``1 - sum_k p_bar_k**2`` (law of
total variance), in ``[0, 1 - 1/K]``. That sum is the map shown to the user.

Pure torch/numpy: no Qt, no napari.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .network import ClisNet
from .preprocessing import DEFAULT_MARGIN, DEFAULT_TILE, check_tiling, plan_tiles

__all__ = ["NetworkOutput", "SegmentSettings", "predict", "segment_normalized", "decide", "weigh", "resize_long_side",
           "scaled_long_side", "fit_grid", "DEFAULT_TILE", "DEFAULT_MARGIN"]

LOGIT_NOISE_SAMPLES = 4


@dataclass(frozen=True)
class SegmentSettings:
    """How a model segments an image (:func:`segment_normalized`): Monte-Carlo samples and seed, and what the model
    declares in its file (working resolution, test-time flips, decision prior, one object per class)."""

    n_samples: int = 8
    seed: int = 0
    working_long_side: int | None = None
    flips: bool = False
    class_log_prior: tuple[float, ...] | None = None
    single_object: bool = False
    #: object scale: the network sees the image resized by this factor (its longer side rounded to whole pixels),
    #: so that objects reach it at the size it was trained on (``segment(object_diameter=...)``); the outputs come
    #: back at the image's own size. Only for models without a ``working_long_side``.
    scale: float | None = None


@dataclass
class NetworkOutput:
    """Per-pixel outputs, all float32: ``probabilities`` (K, H, W), the rest (H, W)."""

    probabilities: np.ndarray
    epistemic: np.ndarray
    aleatoric: np.ndarray
    entropy: np.ndarray  # softmax entropy of the deterministic pass (the baseline uncertainty)
    #: the distance head's map of the deterministic pass (1 at object centres, 0 on borders and background);
    #: None for a network without the head (``NetworkConfig.instance_head``)
    distance: np.ndarray | None = None

    @property
    def uncertainty(self) -> np.ndarray:
        return self.epistemic + self.aleatoric


def resize_long_side(x: torch.Tensor, side: int | None, labels: torch.Tensor | None = None):
    """``x`` (N, C, H, W) resized (bilinear, antialiased when it shrinks) so that its longer side has ``side``
    pixels, and ``labels`` (N, 1, H, W, float) with it (nearest); as they are when ``side`` is None or the size
    already. The working resolution of a model that declares one, in prediction and in learning alike."""
    hw = x.shape[-2:]
    if side is None or max(hw) == side:
        return x, labels
    f = side / max(hw)
    size = (max(8, round(hw[0] * f)), max(8, round(hw[1] * f)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=f < 1)
    return x, None if labels is None else F.interpolate(labels, size=size, mode="nearest")


def scaled_long_side(hw, scale: float | None) -> int | None:
    """The longer side (px) an image of size ``hw`` has for the network at object ``scale``
    (:attr:`SegmentSettings.scale`); None without a scale. Prediction and learning resize to it alike."""
    return None if scale is None else max(8, round(max(hw) * float(scale)))


def fit_grid(x: torch.Tensor, labels: torch.Tensor | None = None, *, crop: bool = False):
    """``x`` (N, C, H, W) (and ``labels`` (N, 1, H, W)) on the network's 8-pixel grid.

    ``crop=False`` (prediction: every pixel gets an output) pads the bottom and right edges to a multiple of 8,
    mirrored (repeated where the image is too small to mirror); cut the outputs back to ``(H, W)``.
    ``crop=True`` (learning and task fingerprints: only the image's own pixels) cuts them to a multiple of 8,
    after repeating the border of an image under 8 px up to 8. Fingerprints of saved models were taken so.
    """
    h, w = x.shape[-2:]
    ph, pw = (max(0, 8 - h), max(0, 8 - w)) if crop else ((-h) % 8, (-w) % 8)
    if ph or pw:
        mode = "reflect" if (h > ph and w > pw and not crop) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
        labels = None if labels is None else F.pad(labels, (0, pw, 0, ph), mode=mode)
    if crop:
        h, w = x.shape[-2] - x.shape[-2] % 8, x.shape[-1] - x.shape[-1] % 8
        x, labels = x[..., :h, :w], None if labels is None else labels[..., :h, :w]
    return x, labels


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (C, h, w) or (h, w) tensor."""
    batch = t[None] if t.dim() == 3 else t[None, None]
    r = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    return r[0] if t.dim() == 3 else r[0, 0]


_FLIPS = ((), (-1,), (-2,), (-2, -1))


def _latin_hypercube_normal(n_samples: int, n_draws: int, k: int, generator, device, dtype) -> torch.Tensor:
    """Standard normal logit noise ``(T, S, K, 1, 1)``: a Latin hypercube of ``S`` draws per MC sample.

    For each sample and class the ``S`` draws fall one in each of ``S`` equal-probability strata (in a
    random order and at a random place inside the stratum), so few draws cover the Gaussian evenly. The
    draws are shared by all pixels: each pixel's estimate is then a smooth function of its own logits and
    variance, and neighbouring pixels are not ranked apart by sampling noise.
    """
    order = torch.argsort(torch.rand((n_samples, k, n_draws), generator=generator, device=device), dim=-1)
    u = (order.to(dtype) + torch.rand((n_samples, k, n_draws), generator=generator, device=device, dtype=dtype))
    u = (u / n_draws).clamp(1e-6, 1 - 1e-6)
    eps = torch.special.erfinv(2 * u - 1) * (2.0**0.5)
    return eps.permute(0, 2, 1)[..., None, None]


@torch.no_grad()
def _head_rows(net: ClisNet, feats: torch.Tensor, g: torch.Tensor, flip: tuple[int, ...]):
    """Logits and log-variances ``(rows, K, h, w)`` for gate rows ``g`` ``(rows, C)`` on shared features.

    A sample's gates and dropout act on the channels of the last features, so they are folded into the
    weights of the 1x1 heads: all rows come from one matrix product. ``flip`` undoes a flipped input.
    """
    _, c, h, w = feats.shape
    k = net.config.n_classes
    f = feats.reshape(c, h * w)
    rows = len(g)
    out = []
    for head in (net.logit_head, net.logvar_head):
        weight = (g[:, None, :] * head.weight.view(1, k, c)).reshape(-1, c)
        y = torch.addmm(head.bias.repeat(rows)[:, None], weight, f).view(rows, k, h, w)
        out.append(y.flip(flip) if flip else y)
    return out


@torch.no_grad()
def _predict_tile(net: ClisNet, x: torch.Tensor, task: int, n_samples: int, generator: torch.Generator,
                  flips: bool = False):
    """``x``: (1, 3, h, w) already padded. Returns tensors (K,h,w), (h,w), (h,w), (h,w), and the distance map
    (h,w) of the deterministic pass (the mean over flips) or None for a network without the distance head.

    The trunk runs once (once per flip when ``flips``: the four flips of the image are then part of the
    predictive distribution, sample ``t`` using flip ``t % 4``, and the deterministic pass is their mean).
    The logit noise is a Latin hypercube of ``S`` draws per sample, shared by all pixels.
    """
    variants = _FLIPS if flips else ((),)
    k = net.config.n_classes
    h, w = x.shape[-2:]
    last = net.B3.conv2
    g_det = last.gates.hard(task)[None]
    if n_samples > 0:
        keep = 1.0 - net.config.dropout
        gates = last.gates.sample(task, n_samples, generator)
        drop = (torch.rand(gates.shape, generator=generator, device=gates.device) < keep).to(gates.dtype) / keep
        gates = gates * drop
    p_det = torch.zeros((k, h, w), device=x.device)
    head = net.distance_head
    distance = None if head is None else torch.zeros((h, w), device=x.device)
    z = [None] * n_samples
    logvar = [None] * n_samples
    for v, flip in enumerate(variants):
        encoded = net.encode(x.flip(flip) if flip else x, task)
        feats = net.decode(encoded, task)
        if head is not None:  # from what the encoder saw (deterministic: the inference gates, no dropout)
            d = torch.sigmoid(net.distance(encoded))[0]
            distance += (d.flip(flip) if flip else d)[0]
        del encoded  # the encoder's maps go before the samples are drawn, as they did inside trunk()
        mine = list(range(v, n_samples, len(variants)))
        g = torch.cat([g_det, gates[mine]]) if mine else g_det
        zv, sv = _head_rows(net, feats, g, flip)
        p_det += torch.softmax(zv[0], 0)
        for j, t in enumerate(mine):
            z[t], logvar[t] = zv[1 + j], sv[1 + j]
        del feats
    p_det /= len(variants)
    if distance is not None:
        distance /= len(variants)
    entropy = -(p_det * p_det.clamp_min(1e-12).log()).sum(0)
    if n_samples <= 0:
        zeros = torch.zeros_like(entropy)
        return p_det, zeros, zeros, entropy, distance
    eps = _latin_hypercube_normal(n_samples, LOGIT_NOISE_SAMPLES, k, generator, x.device, x.dtype)
    sum_m = torch.zeros((k, h, w), device=x.device, dtype=x.dtype)
    sum_sq = torch.zeros((h, w), device=x.device, dtype=x.dtype)
    for t in range(n_samples):
        m_t = torch.softmax(torch.addcmul(z[t], logvar[t].mul(0.5).exp_(), eps[t]), 1).mean(0)
        sum_m += m_t
        sum_sq += (m_t * m_t).sum(0)
    p_bar = sum_m / n_samples
    mean_sq = sum_sq / n_samples
    epistemic = (mean_sq - (p_bar * p_bar).sum(0)).clamp_min(0)
    aleatoric = (1.0 - mean_sq).clamp_min(0)
    return p_bar, epistemic, aleatoric, entropy, distance


def predict(
    net: ClisNet,
    normalized: np.ndarray,
    *,
    task: int = 0,
    n_samples: int = 8,
    seed: int = 0,
    tile: int | None = DEFAULT_TILE,
    margin: int = DEFAULT_MARGIN,
    working_long_side: int | None = None,
    flips: bool = False,
    progress=None,
) -> NetworkOutput:
    """Probabilities and uncertainty for one normalised image.

    Parameters
    ----------
    net : ClisNet
        The network, in eval mode, on the device where the work should run.
    normalized : (3, H, W) float32
        Output of :func:`napari_clis.preprocessing.normalize_image`.
    task : int
        Which task's kernel masks to use.
    n_samples : int
        Monte-Carlo samples ``T``; 0 gives the deterministic pass only (zero uncertainty).
    seed : int
        Seed of the sampling, so that the same image gives the same map.
    tile, margin : int
        Images larger than ``tile`` pixels on a side (at the working resolution) run in the tiles of
        :func:`~napari_clis.preprocessing.plan_tiles`, each with ``margin`` px of context and the same seed, so the
        result equals one pass over the whole image up to floating-point rounding. ``tile=None``: one piece.
    working_long_side : int, optional
        If given, the image is resized so its longer side has this many pixels for the network, and the
        outputs are resized back (models trained on downscaled images, e.g. dermoscopy).
    flips : bool
        Also run the trunk on the three flips of the image and treat the four as part of the predictive
        distribution (models that declare ``test_time_flips``: cheap at a small working resolution).
    progress : callable, optional
        Called as ``progress(done, total)`` after each tile.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if tile is not None:
        check_tiling(tile, margin)
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(normalized, dtype=np.float32)).to(device)[None]
    full_hw = x.shape[-2:]
    x, _ = resize_long_side(x, working_long_side)
    h, w = x.shape[-2:]
    k = net.config.n_classes
    tiles = plan_tiles(h, w, max(h, w) if tile is None else tile, margin)
    n_maps = 3 if net.distance_head is None else 4  # (H, W) maps: epistemic, aleatoric, entropy (, distance)
    if len(tiles) > 1:
        out = [torch.zeros((k, h, w), device=device)] + [torch.zeros((h, w), device=device) for _ in range(n_maps)]
    generator = torch.Generator(device=device)
    for i, piece in enumerate(tiles):
        generator.manual_seed(seed)  # every tile draws the samples one pass over the whole image would
        ya, yb, xa, xb = piece.crop
        xp, _ = fit_grid(x[..., ya:yb, xa:xb])
        y0, y1, x0, x1 = piece.core_in_crop
        res = [o[..., y0:y1, x0:x1] for o in _predict_tile(net, xp, task, n_samples, generator, flips)[:1 + n_maps]]
        if len(tiles) == 1:
            out = res
        else:
            for dst, src in zip(out, res):
                dst[..., piece.core[0]:piece.core[1], piece.core[2]:piece.core[3]] = src
        del res, xp
        if progress:
            progress(i + 1, len(tiles))
    if (h, w) != tuple(full_hw):
        out = [_resize(o, tuple(full_hw)) for o in out]
        out[0] = out[0] / out[0].sum(0, keepdim=True)
    probs, epi, alea, ent, *distance = (o.float().cpu().numpy() for o in out)
    return NetworkOutput(np.ascontiguousarray(probs), epi, alea, ent, distance[0] if distance else None)


def segment_normalized(net: ClisNet, normalized: np.ndarray, settings: SegmentSettings, *, task: int = 0,
                       tile: int | None = DEFAULT_TILE, margin: int = DEFAULT_MARGIN,
                       progress=None) -> tuple[NetworkOutput, np.ndarray]:
    """The network's maps (:func:`predict`) and the labels (:func:`decide`) of one normalised image under a
    model's ``settings``: what :meth:`ClisSession.segment` and batch segmentation (per tile) both run."""
    side = scaled_long_side(normalized.shape[-2:], settings.scale) or settings.working_long_side
    out = predict(net, normalized, task=task, n_samples=settings.n_samples, seed=settings.seed, tile=tile,
                  margin=margin, working_long_side=side, flips=settings.flips, progress=progress)
    return out, decide(out.probabilities, settings.class_log_prior, settings.single_object)


def weigh(probabilities: np.ndarray, class_log_prior=None) -> np.ndarray:
    """(K, H, W) probabilities re-weighted by a model's decision prior and normalised: ``p_k w_k / sum_j p_j w_j``
    with ``w = exp(class_log_prior)`` (Bayes' rule for a change of class prior). The MRF takes these, so that its
    labelling follows the model's decision. ``None``: the probabilities themselves."""
    if class_log_prior is None:
        return probabilities
    w = np.exp(np.asarray(class_log_prior, np.float64) - np.max(class_log_prior)).astype(np.float32)
    q = probabilities * w[:, None, None]
    return q / np.maximum(q.sum(0, keepdims=True), 1e-30)


def decide(probabilities: np.ndarray, class_log_prior=None, single_object: bool = False) -> np.ndarray:
    """(H, W) int32 labels, as :meth:`ClisSession.segment` and batch segmentation make them:
    ``argmax_k log p_k + class_log_prior_k`` (the plain argmax when ``None``), then, with ``single_object``,
    one object per class (:func:`~napari_clis.interactive.keep_one_object`). For two classes and the prior
    ``(log t, log(1 - t))`` the first step is "foreground probability above ``t``" (``napari-clis calibrate``
    chooses ``t``)."""
    labels = weigh(probabilities, class_log_prior).argmax(0).astype(np.int32)
    if single_object:
        from .interactive import keep_one_object

        labels = keep_one_object(labels)
    return labels
