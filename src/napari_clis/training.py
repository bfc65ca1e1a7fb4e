"""Pretraining the CLIS network from scratch on the hold-out split (task 0).

Used by ``napari-clis pretrain``. The loss is

* the aleatoric cross-entropy of Kendall and Gal (2017): logits are sampled with the predicted variance,
  ``z + sigma * eps``, and the loss is ``-log mean_s softmax(z_s)[y]``;
* a soft Dice loss on the deterministic softmax (foreground classes), for overlap quality (batch-global, or
  per image with ``dice_per_image``);
* ``kl_weight`` times the KL divergence of the kernel gates from their IBP prior;
* with ``instance_head``: ``instance_weight`` times the binary cross-entropy of the distance head against
  :func:`distance_target` (each object's distance to its border over the object's largest; from instance masks,
  on every pixel of the crops whose image has them).

``augment="robust"`` (nuclei) augments the raw image before :func:`~napari_clis.preprocessing.normalize_image`, so
the network learns what the normalisation leaves of real trouble: a few objects 2-20x brighter than the rest,
gamma, stain jitter in HED space (colour images), blur, noise, dim fields, and scale 0.5-2 (:func:`robust_view`).

Pure torch/numpy: no Qt, no napari.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import FORMAT, load_model, save_model
from .data import Sample, image_kind, load_bbbc039, load_dataset
from .masks import bernoulli_kl, ibp_stick_breaking_prior
from .metrics import dice, iou
from .network import ClisNet, NetworkConfig
from .preprocessing import normalize_image
from .uncertainty import decide, predict, resize_long_side

__all__ = ["PretrainSettings", "MODEL_PRESETS", "pretrain", "aleatoric_nll", "soft_dice_loss", "gate_kl",
           "calibrate_decision", "DECISION_THRESHOLDS", "TrainingDiverged", "distance_target", "distance_loss",
           "separate_touching", "contact_loss", "robust_augment", "robust_view", "AUGMENT_PROBABILITIES", "EXTRA_DATA",
           "train", "train_arrays", "TrainingCancelled", "TRAIN_STEPS", "he_from_fluorescence", "record_familiarity"]


class TrainingDiverged(RuntimeError):
    """The training's loss became NaN or infinite: it stopped, and wrote no model (a diverged one is useless)."""

MODEL_PRESETS = {
    # nuclei are small: native resolution, random crops
    "nuclei": dict(crop=128, batch=12, working_long_side=None, steps=4000, width=16),
    # lesions are large, smooth objects: the network sees the image with its long side at 128 px
    # the four flips of the image are part of its predictive distribution (cheap at 128 px)
    "skin-lesion": dict(crop=None, batch=16, working_long_side=128, steps=4500, width=24, test_time_flips=True),
}
CLASS_NAMES = {"nuclei": ["background", "nucleus"], "skin-lesion": ["background", "lesion"]}


@dataclass
class PretrainSettings:
    model: str
    steps: int = 3000
    batch: int = 12
    crop: int | None = 128
    working_long_side: int | None = None
    test_time_flips: bool = False
    lr: float = 3e-3
    gate_lr: float = 1e-2
    kl_weight: float = 1e-4
    ibp_alpha_per_kernel: float = 1.0
    logit_samples: int = 4
    seed: int = 0
    width: int = 16
    dropout: float = 0.2
    bottleneck_dilation: int = 1
    dice_per_image: bool = False
    eval_every: int = 250
    precise_bn_batches: int = 100
    fg_crop_fraction: float = 0.0
    area_weighted: bool = False
    kind_balance: float = 0.0
    init: str | None = None
    monitor_images: int = 24
    #: "none" or "robust" (:func:`robust_view`: intensity outliers, gamma, stain, blur, noise, dim, scale)
    augment: str = "none"
    #: with robust augmentation: probabilities that replace those of :data:`AUGMENT_PROBABILITIES` (name -> p)
    augment_probabilities: dict | None = None
    #: train the distance head (:attr:`NetworkConfig.instance_head`) from instance masks
    instance_head: bool = False
    instance_weight: float = 1.0
    #: with ``instance_head`` and ``init``: train the distance head alone; every other weight, gate and BatchNorm
    #: statistic stays as ``init`` has it, so the model segments exactly as before
    head_only: bool = False
    #: more pretraining data for the nuclei model: ("bbbc039",) adds the pretraining half of bbbc039
    extra_data: tuple = ()
    #: a log line with the step's losses every this many steps (0: none)
    log_every: int = 0
    #: > 0: where two objects of an instance mask touch, their 1 px border is background in the target, and the
    #: cross-entropy of every background pixel between two foreground pixels counts this many times more (U-Net's
    #: separation of touching cells): the mask then has a neck the watershed can cut (:func:`contact_loss`)
    contact_weight: float = 0.0


# more data a nuclei model may be pretrained on: name -> loader of its pretraining part (never a held-out one)
EXTRA_DATA = {"bbbc039": lambda root: load_bbbc039(root, "pretrain")}


def aleatoric_nll(logits: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, n_samples: int = 4) -> torch.Tensor:
    """Kendall-Gal classification loss with logit noise; ``target`` (N, H, W) int64."""
    sigma = (0.5 * logvar).exp()
    logps = []
    for _ in range(n_samples):
        z = logits + sigma * torch.randn_like(logits)
        logps.append(F.log_softmax(z, 1).gather(1, target[:, None])[:, 0])
    return -(torch.logsumexp(torch.stack(logps), 0) - math.log(n_samples)).mean()


def separate_touching(sample: Sample) -> Sample:
    """``sample`` with the 1 px border where two of its objects touch set to background in its mask (the
    instance mask itself unchanged); a sample without instances as it is."""
    from scipy import ndimage

    inst = sample.instances
    if inst is None:
        return sample
    inst = np.asarray(inst).astype(np.int64)
    larger = ndimage.maximum_filter(inst, 3) > inst
    smaller = ndimage.minimum_filter(np.where(inst > 0, inst, inst.max() + 1), 3) < inst  # background: no neighbour
    mask = np.array(sample.mask, copy=True)
    mask[(inst > 0) & (larger | smaller)] = 0
    return replace(sample, mask=mask)


def contact_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of the background pixels of ``target`` (N, H, W) that lie between two foreground pixels
    (across, down or on a diagonal), summed and divided by all the target's pixels; 0 where there is none."""
    fg = F.pad((target > 0).to(logits.dtype)[:, None], (1, 1, 1, 1))
    up, down, left, right = fg[..., :-2, 1:-1], fg[..., 2:, 1:-1], fg[..., 1:-1, :-2], fg[..., 1:-1, 2:]
    ul, dr, ur, dl = fg[..., :-2, :-2], fg[..., 2:, 2:], fg[..., :-2, 2:], fg[..., 2:, :-2]
    between = ((up * down + left * right + ul * dr + ur * dl) > 0)[:, 0] & (target == 0)
    if not bool(between.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce * between).sum() / target.numel()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """1 - soft Dice, averaged over the foreground classes.

    Batch-global by default (large objects weigh more); ``per_image``: the mean over images of each image's soft
    Dice, the measure the held-out Dice averages (a small lesion counts as much as a large one).
    """
    p = torch.softmax(logits, 1)
    k = logits.shape[1]
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).to(p.dtype)
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (p * onehot).sum(dims)
    denom = p.sum(dims) + onehot.sum(dims)
    d = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - d[..., 1:].mean()


def gate_kl(net: ClisNet, task: int, priors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over layers of KL(gate posterior of ``task`` || IBP prior)."""
    total = 0.0
    for name, conv in net.masked_convs().items():
        total = total + bernoulli_kl(conv.gates.probabilities(task), priors[name])
    return total


def distance_target(instances) -> np.ndarray:
    """The distance head's target from an instance mask ``(H, W)`` (0 = background, one id per object): per
    object, the Euclidean distance of each pixel to the nearest pixel outside the object, over the object's
    largest, so 1 at each object's centre, 1 / (its largest distance) on its rim and 0 on the background; float32.
    Touching objects are measured apart (the other object counts as outside)."""
    from scipy import ndimage

    inst = np.asarray(instances)
    if inst.ndim != 2 or inst.dtype.kind not in "iu":
        raise ValueError(f"instances must be a 2D array of whole-number object ids, got {inst.dtype} {inst.shape}")
    out = np.zeros(inst.shape, np.float32)
    for i, box in enumerate(ndimage.find_objects(inst), start=1):
        if box is None:
            continue
        obj = np.pad(inst[box] == i, 1)  # the image's edge counts as the object's border
        d = ndimage.distance_transform_edt(obj)[1:-1, 1:-1]
        inside = obj[1:-1, 1:-1]
        out[box][inside] = (d[inside] / d.max()).astype(np.float32)
    return out


def distance_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the distance head's logit ``(N, H, W)`` against :func:`distance_target` values,
    over the pixels whose target is known (>= 0; crops of images without instance masks carry -1); 0 if none."""
    known = target >= 0
    if not bool(known.any()):
        return logit.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logit[known], target[known])


def _prepare(samples: list[Sample], working_long_side: int | None, settings: PretrainSettings | None = None):
    """Normalise (and for lesion models resize) every image once, as inference does: ``(x, y, distance, sample)``
    per image. With ``settings.instance_head``, ``distance`` is :func:`distance_target` of the instance mask (None
    for an image without one); with robust augmentation the raw ``sample`` is kept (and ``x`` is None: each crop is
    normalised after it is augmented)."""
    robust = settings is not None and settings.augment == "robust"
    heads = settings is not None and settings.instance_head
    out = []
    for s in samples:
        y = torch.from_numpy(s.mask.astype(np.int64))[None, None].float()
        d = torch.from_numpy(distance_target(s.instances)) if heads and s.instances is not None else None
        if robust:
            out.append((None, y[0, 0].long(), d, s))
            continue
        x = torch.from_numpy(normalize_image(s.image))[None]
        x, y = resize_long_side(x, working_long_side, y)
        out.append((x[0], y[0, 0].long(), d, None))
    return out


# probability of each robust augmentation (:func:`robust_augment`, :func:`robust_view`), applied independently
AUGMENT_PROBABILITIES = {"outliers": 0.2, "stain": 0.5, "pale": 0.3, "he": 0.35, "gamma": 0.2, "blur": 0.2,
                         "dim": 0.1, "noise": 0.2, "scale": 0.4}


def _smooth_noise(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed at ``sigma`` px, standardised (mean 0, sd 1)."""
    from scipy import ndimage

    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    n -= n.mean()
    return n / (float(n.std()) or 1.0)


def he_from_fluorescence(grey: np.ndarray, instances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An H&E-like colour image (float32 RGB, 0-255) drawn from a fluorescence image and its objects: each
    nucleus takes haematoxylin in proportion to its fluorescence (pale, vesicular nuclei to dark ones, with
    chromatin texture), the rest eosin-stained stroma with fibres, white spaces and red blood cells, through
    randomly perturbed stain vectors. Domain randomisation: it teaches the network that a nucleus in tissue is
    the haematoxylin-blue object, however pale, from the many annotated fluorescence images."""
    from scipy import ndimage
    from skimage.color import rgb_from_hed

    a = np.asarray(grey, np.float32)
    shape = a.shape
    lo, hi = np.percentile(a, [1, 99.8])
    f = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0, 1)
    nuc = instances > 0
    amount = np.zeros(int(instances.max()) + 1, np.float32)
    amount[1:] = rng.uniform(0.5, 1.6) * rng.uniform(0.35, 1.15, len(amount) - 1)
    chromatin = 1.0 + rng.uniform(0.1, 0.4) * _smooth_noise(shape, rng.uniform(0.7, 1.5), rng)
    floor = rng.uniform(0.4, 0.8)  # membrane and nucleoplasm, below the fluorescence's texture
    h = amount[instances] * np.where(nuc, floor + (1 - floor) * f, 0.0) * chromatin
    h = ndimage.gaussian_filter(h, rng.uniform(0.4, 1.0))
    h += rng.uniform(0.0, 0.25) * np.clip(0.5 + 0.5 * _smooth_noise(shape, rng.uniform(3, 12), rng), 0, 1.5)
    texture = _smooth_noise(shape, rng.uniform(2, 10), rng) + 0.5 * _smooth_noise(shape, rng.uniform(0.7, 2), rng)
    e = rng.uniform(0.15, 0.9) * np.clip(1 + 0.35 * texture, 0.1, 2.0)
    near = ndimage.binary_dilation(nuc, iterations=2)
    white = _smooth_noise(shape, rng.uniform(8, 25), rng) < rng.uniform(-2.5, -0.3)
    e = np.where(white & ~near, e * 0.1, e)
    e = np.where(nuc, e * rng.uniform(0.2, 0.7), e)
    ridge = (np.abs(_smooth_noise(shape, rng.uniform(3, 8), rng)) < rng.uniform(0.02, 0.12)) & ~near
    e = e + ridge * rng.uniform(0.0, 0.6)
    h = h + ridge * rng.uniform(0.0, 0.3)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    for _ in range(int(rng.integers(0, 6))):  # red blood cells: eosin-dark discs without haematoxylin
        r = rng.uniform(2, 5)
        disc = (yy - rng.integers(0, shape[0])) ** 2 + (xx - rng.integers(0, shape[1])) ** 2 < r * r
        e = np.where(disc & ~nuc, rng.uniform(1.0, 2.0), e)
        h = np.where(disc & ~nuc, 0.05, h)
    stains = rgb_from_hed[:2].astype(np.float32).copy()
    stains[0] += rng.normal(0, 0.06, 3).astype(np.float32)
    stains[1] += np.array([0.0, 0.0, rng.uniform(0.0, 0.6)], np.float32) + rng.normal(0, 0.05, 3).astype(np.float32)
    stains = np.abs(stains)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    od = np.stack([h, e], -1).astype(np.float32) @ stains
    return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.float32)


def robust_augment(image: np.ndarray, instances: np.ndarray | None, rng: np.random.Generator,
                   probabilities: dict | None = None) -> np.ndarray:
    """The raw image ``(H, W)`` or ``(H, W, 3)`` (any dtype) made harder, as float32 of the same shape, for
    :func:`~napari_clis.preprocessing.normalize_image` to take next. Each step with its probability in
    ``probabilities`` (default :data:`AUGMENT_PROBABILITIES`):

    * ``stain`` (colour images): per-channel scale 0.85-1.15 and shift +-0.05 of the optical density in HED space
      (haematoxylin, eosin, DAB; skimage's stain matrix), exactly invertible; ``pale`` (with it, given
      ``instances``): the haematoxylin of up to half the objects x 0.35-1 (pale, vesicular nuclei);
    * ``he`` (fluorescence images with ``instances``): the image becomes H&E-like (:func:`he_from_fluorescence`),
      and the output is ``(H, W, 3)``;
    * ``outliers`` (images with a dark background, i.e. fluorescence): 1 to 3 objects of ``instances`` made
      2-20x brighter (mitoses, debris), which moves the normalisation's upper percentile;
    * ``gamma`` 0.5-2 on the intensity range; ``blur``: Gaussian, sigma 0-1.5 px;
    * ``dim``: intensities x 0.03-0.3 (rounded again for whole-number images: fewer grey levels);
    * ``noise``: Gaussian, 0.5-5% of the 1st-99th percentile range.
    """
    from scipy import ndimage
    from skimage.color import hed_from_rgb, rgb_from_hed

    p = AUGMENT_PROBABILITIES if probabilities is None else probabilities
    whole = np.asarray(image).dtype.kind in "biu"
    a = np.asarray(image, dtype=np.float32)
    shape = a.shape
    colour = a.ndim == 3
    if colour and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        a, colour = np.ascontiguousarray(a[..., 0]), False  # grey stored as RGB: work on one channel
    dark_background = (not colour and instances is not None and a.size
                       and np.median(a) < float(a.min()) + 0.5 * (float(a.max()) - float(a.min())))
    if dark_background and np.any(instances) and rng.random() < p.get("he", 0):
        a, colour, shape = he_from_fluorescence(a, instances, rng), True, a.shape + (3,)
    elif colour and rng.random() < p.get("stain", 0):
        top = max(float(a.max()), 1.0)
        od = -np.log(np.maximum(a, top / 256.0) / (top * 256.0 / 255.0))
        hed = od @ hed_from_rgb
        hed = hed * rng.uniform(0.85, 1.15, 3).astype(np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        if instances is not None and rng.random() < p.get("pale", 0):
            ids = np.unique(instances)
            ids = ids[ids > 0]
            if len(ids):
                factor = np.ones(int(instances.max()) + 1, np.float32)
                some = rng.choice(ids, size=int(rng.integers(1, len(ids) // 2 + 2)), replace=False)
                factor[some] = rng.uniform(0.35, 1.0, len(some))
                hed[..., 0] *= factor[instances]
        a = (np.exp(-(hed @ rgb_from_hed)) * (top * 256.0 / 255.0)).astype(np.float32)
    grey = a if not colour else a.mean(-1)
    if instances is not None and rng.random() < p.get("outliers", 0):
        lo, hi = float(grey.min()), float(grey.max())
        ids = np.unique(instances)
        ids = ids[ids > 0]
        if len(ids) and np.median(grey) < lo + 0.5 * (hi - lo):  # bright objects on a dark background
            for i in rng.choice(ids, size=min(len(ids), int(rng.integers(1, 4))), replace=False):
                a[instances == i] *= float(rng.uniform(2.0, 20.0))
    if rng.random() < p.get("gamma", 0):
        lo, hi = float(a.min()), float(a.max())
        if hi > lo:
            a = (lo + (hi - lo) * ((a - lo) / (hi - lo)) ** float(rng.uniform(0.5, 2.0))).astype(np.float32)
    if rng.random() < p.get("blur", 0):
        sigma = float(rng.uniform(0.0, 1.5))
        a = ndimage.gaussian_filter(a, (sigma, sigma, 0) if colour else sigma).astype(np.float32)
    if rng.random() < p.get("dim", 0):
        a = a * float(rng.uniform(0.03, 0.3))
        if whole:
            a = np.round(a)
    if rng.random() < p.get("noise", 0):
        sub = a[::4, ::4]
        lo, hi = np.percentile(sub, [1, 99]) if sub.size else (0.0, 0.0)
        spread = float(hi - lo) or float(a.max() - a.min()) or 1.0
        a = a + rng.normal(0.0, spread * float(rng.uniform(0.005, 0.05)), a.shape).astype(np.float32)
    if a.shape != shape:  # grey stored as RGB goes back as it came
        a = np.repeat(a[..., None], shape[-1], -1)
    return a.astype(np.float32, copy=False)


def robust_view(sample: Sample, distance: torch.Tensor | None, settings: PretrainSettings,
                rng: np.random.Generator, probabilities: dict | None = None):
    """A window of a raw training image, augmented (:func:`robust_augment`), normalised as inference does, and
    rescaled by a factor 0.5-2 (with probability ``probabilities["scale"]``; image bilinear, labels nearest, the
    distance target bilinear, which keeps it normalised, then 0 where the labels are background): ``(x (3, h, w)
    float32, y (h, w) int64, distance (h, w) float32 or None)``. The window is twice the crop (before rescaling) on
    a side where the image allows, so the normalisation sees the crop's surroundings; with probability
    ``fg_crop_fraction`` it is centred on a random object pixel."""
    p = AUGMENT_PROBABILITIES if probabilities is None else probabilities
    c = settings.crop or 128
    scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if rng.random() < p.get("scale", 0) else 1.0
    h, w = sample.mask.shape
    side = int(math.ceil(2 * c / scale))
    wh, ww = min(h, side), min(w, side)
    fg = np.flatnonzero(sample.mask) if settings.fg_crop_fraction > 0 else np.zeros(0, np.intp)
    if len(fg) and rng.random() < settings.fg_crop_fraction:
        cy, cx = divmod(int(fg[rng.integers(len(fg))]), w)
        y0 = int(np.clip(cy - wh // 2 + rng.integers(-wh // 4, wh // 4 + 1), 0, h - wh))
        x0 = int(np.clip(cx - ww // 2 + rng.integers(-ww // 4, ww // 4 + 1), 0, w - ww))
    else:
        y0, x0 = int(rng.integers(h - wh + 1)), int(rng.integers(w - ww + 1))
    box = (slice(y0, y0 + wh), slice(x0, x0 + ww))
    inst = None if sample.instances is None else sample.instances[box]
    raw = robust_augment(sample.image[box], inst, rng, p)
    x = torch.from_numpy(normalize_image(raw))
    y = torch.from_numpy(sample.mask[box].astype(np.int64))
    d = None if distance is None else distance[box]
    if scale != 1.0:
        size = (max(8, round(wh * scale)), max(8, round(ww * scale)))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if d is not None:
            d = F.interpolate(d[None, None], size=size, mode="bilinear", align_corners=False)[0, 0] * (y > 0)
    return x.contiguous(), y.contiguous(), d


def image_kinds(samples: list[Sample], model: str) -> list[str]:
    """The kind of each image, as ``bench quality`` reports it (nuclei: fluorescence, brightfield or stained)."""
    dataset = "dsb2018" if model == "nuclei" else "isic2017"
    return [image_kind(s.image, dataset) for s in samples]


def _extra_data(settings: PretrainSettings, data_root) -> list[tuple[str, list[Sample]]]:
    """The extra pretraining data asked for: ``[(name, samples)]``; a clear error for unknown names."""
    extra = []
    for name in settings.extra_data:
        if name not in EXTRA_DATA:
            raise ValueError(f"unknown extra data {name!r}; choose from {', '.join(EXTRA_DATA)}")
        if settings.model != "nuclei":
            raise ValueError(f"extra data {name!r} holds nuclei; it cannot be added to the {settings.model} model")
        extra.append((name, EXTRA_DATA[name](data_root)))
    return extra


def _image_weights(data, settings: PretrainSettings, kinds: list[str] | None = None) -> np.ndarray:
    """Probability of drawing each image.

    Within a kind of image: uniform, or by the square root of its area (``area_weighted``). Across kinds
    (``kinds`` given and ``kind_balance`` b > 0): a kind with n images is drawn in proportion to n ** (1 - b),
    so b = 0 keeps the share of each kind (the default), and b = 1 draws every kind equally often, however
    few images it has.
    """
    w = np.sqrt([float(d[1].numel()) for d in data]) if settings.area_weighted else np.ones(len(data))
    if not 0.0 <= settings.kind_balance <= 1.0:
        raise ValueError(f"kind_balance must be between 0 and 1, got {settings.kind_balance}")
    if kinds is not None and settings.kind_balance > 0:
        if len(kinds) != len(data):
            raise ValueError(f"{len(kinds)} kinds for {len(data)} images")
        kinds = np.asarray(kinds)
        for k in np.unique(kinds):
            sel = kinds == k
            w[sel] *= float(sel.sum()) ** (1.0 - settings.kind_balance) / w[sel].sum()
    return w / w.sum()


def _batch(data, settings: PretrainSettings, rng: np.random.Generator, weights: np.ndarray | None = None):
    """A training batch ``(x, y, distance)``; ``distance`` (N, H, W) is None without ``instance_head`` (-1 where
    an image has no instance mask)."""
    xs, ys, ds = [], [], []
    for _ in range(settings.batch):
        item = data[rng.choice(len(data), p=weights) if weights is not None else rng.integers(len(data))]
        if settings.augment == "robust":
            x, y, d = robust_view(item[3], item[2], settings, rng,
                                  {**AUGMENT_PROBABILITIES, **(settings.augment_probabilities or {})})
        else:
            x, y, d = item[0], item[1], item[2]
        if settings.instance_head:  # cropped and flipped with the image, as one more channel
            x = torch.cat([x, (d if d is not None else torch.full(y.shape, -1.0))[None]])
        if settings.crop and settings.fg_crop_fraction > 0 and rng.random() < settings.fg_crop_fraction:
            # centre the crop on a random foreground pixel, so rare image types with few objects are seen
            fg = torch.nonzero(y > 0)
            if len(fg):
                cy, cx = (int(v) for v in fg[rng.integers(len(fg))])
                c = settings.crop
                h, w = y.shape
                y0 = int(np.clip(cy - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, max(0, h - c)))
                x0 = int(np.clip(cx - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, max(0, w - c)))
                x, y = x[:, y0 : y0 + c, x0 : x0 + c], y[y0 : y0 + c, x0 : x0 + c]
        if settings.crop:
            c = settings.crop
            h, w = y.shape
            if h < c or w < c:
                ph, pw = max(0, c - h), max(0, c - w)
                x = F.pad(x[None], (0, pw, 0, ph), mode="reflect")[0]
                y = F.pad(y[None, None].float(), (0, pw, 0, ph), mode="reflect")[0, 0].long()
                h, w = y.shape
            y0, x0 = rng.integers(h - c + 1), rng.integers(w - c + 1)
            x, y = x[:, y0 : y0 + c, x0 : x0 + c], y[y0 : y0 + c, x0 : x0 + c]
            if rng.random() < 0.5:
                x, y = x.transpose(-1, -2), y.transpose(-1, -2)
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        if settings.instance_head:
            x, d = x[:3], x[3]
            ds.append(d)
        # intensity: contrast and brightness jitter per channel, in the normalised space
        gain = torch.from_numpy(rng.uniform(0.8, 1.2, (3, 1, 1)).astype(np.float32))
        shift = float(rng.uniform(-0.1, 0.1))
        x = ((x + 0.5) * gain - 0.5 + shift).clamp(-0.5, 0.5)
        xs.append(x)
        ys.append(y)
    x, y = torch.stack(xs), torch.stack(ys)
    if settings.crop is None:
        x, y = _random_affine(x, y, rng)
    return x.contiguous(), y.contiguous(), (torch.stack(ds).contiguous() if ds else None)


def _random_affine(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
    """Whole-image models: random rotation (any angle), scale 0.8-1.25, shift up to 10%, saturation."""
    n = x.shape[0]
    angle = torch.from_numpy(rng.uniform(-np.pi, np.pi, n)).float()
    scale = torch.from_numpy(np.exp(rng.uniform(np.log(0.8), np.log(1.25), n))).float()
    shift = torch.from_numpy(rng.uniform(-0.2, 0.2, (n, 2))).float()
    h, w = x.shape[-2:]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)
    grey = x.mean(1, keepdim=True)
    sat = torch.from_numpy(rng.uniform(0.7, 1.3, (n, 1, 1, 1))).float()
    x = (grey + sat * (x - grey)).clamp(-0.5, 0.5)
    return x, y[:, 0].long()


@torch.no_grad()
def recalibrate_batchnorm(net: ClisNet, data, settings: PretrainSettings, n_batches: int = 100, seed: int = 1,
                          weights: np.ndarray | None = None, head_only: bool = False) -> None:
    """Recompute BatchNorm statistics as exact averages over ``n_batches`` training batches ("precise BN").

    During training the running statistics trail the weights (and kernel gates that switch off change the
    features abruptly); recomputing them with the final weights and the inference gates removes that lag.
    With ``head_only`` only the distance head's (the rest of the network keeps its own).
    """
    rng = np.random.default_rng(seed)
    if weights is None:
        weights = _image_weights(data, settings)
    owner = net.distance_head if head_only else net
    norms = [m for m in owner.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.eval()
    owner.train()
    for _ in range(n_batches):
        x, _, _ = _batch(data, settings, rng, weights)
        encoded = net.encode(x, 0)
        if not head_only:
            net.decode(encoded, 0)
        if net.distance_head is not None:
            net.distance(encoded)
    for m, mom in zip(norms, saved):
        m.momentum = mom
    net.eval()


def _lr_factor(step: int, total: int, warmup: float = 0.05) -> float:
    """Linear warm-up then cosine decay to 2% of the peak."""
    n_warm = max(1, int(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    t = (step - n_warm) / max(1, total - n_warm)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


def evaluate(net: ClisNet, samples: list[Sample], working_long_side: int | None, n_samples: int = 0,
             flips: bool = False) -> dict:
    """Mean foreground Dice and IoU of ``net`` on ``samples`` (deterministic pass by default); with more than two
    classes, each image's mean over the foreground classes of the class's Dice and IoU."""
    net.eval()
    dices, ious = [], []
    for s in samples:
        out = predict(net, normalize_image(s.image), n_samples=n_samples, working_long_side=working_long_side,
                      flips=flips)
        labels = out.probabilities.argmax(0)
        classes = range(1, net.config.n_classes) if net.config.n_classes > 2 else [None]
        pairs = [(labels > 0, s.mask > 0) if c is None else (labels == c, s.mask == c) for c in classes]
        dices.append(np.mean([dice(a, b) for a, b in pairs]))
        ious.append(np.mean([iou(a, b) for a, b in pairs]))
    return {"dice": float(np.mean(dices)), "iou": float(np.mean(ious)), "n": len(samples)}


def pretrain(
    settings: PretrainSettings,
    output: Path | str,
    data_root: Path | str | None = None,
    resume: bool = True,
    log=print,
    progress=None,
) -> Path:
    """Train a model from scratch and save it to ``output`` (checkpoints to ``output`` + ``.ckpt``)."""
    torch.manual_seed(settings.seed)
    t0 = time.time()
    _check_settings(settings)
    train = load_dataset(settings.model, "pretrain", data_root)
    kinds = image_kinds(train, settings.model) if settings.kind_balance > 0 else None
    extra_counts = []
    for name, extra in _extra_data(settings, data_root):
        log(f"adding {len(extra)} pretraining images of {name}")
        train = train + extra
        extra_counts.append((name, len(extra)))
        if kinds is not None:
            kinds += [image_kind(s.image, name) for s in extra]
    if settings.contact_weight > 0:  # the training images only: the monitor's masks stay as annotated
        train = [separate_touching(s) for s in train]
    monitor = load_dataset(settings.model, "monitor" if settings.model == "skin-lesion" else "heldout", data_root,
                           limit=settings.monitor_images)
    data = _prepare(train, settings.working_long_side, settings)
    weights = _image_weights(data, settings, kinds)
    log(f"loaded {len(train)} training images in {time.time() - t0:.1f}s")
    if kinds is not None:
        shares = {k: float(weights[np.asarray(kinds) == k].sum()) for k in sorted(set(kinds))}
        log("kinds of image drawn: " + ", ".join(f"{k} {kinds.count(k)} images, {p:.0%} of draws"
                                                 for k, p in shares.items()))
    config = NetworkConfig(n_classes=2, width=settings.width, dropout=settings.dropout,
                           bottleneck_dilation=settings.bottleneck_dilation, instance_head=settings.instance_head)
    describe = {"name": settings.model, "class_names": CLASS_NAMES[settings.model],
                "tasks": [{"name": "pretraining", "source": settings.model, "n_images": len(train)}]}
    path = _fit(settings, output, config, data, weights, monitor, describe, resume=resume, log=log,
                progress=progress)
    source = f"{settings.model} pretraining images ({len(train)}" + "".join(
        f", {n} of them {name}" for name, n in extra_counts) + ")"
    from .familiarity import DEFAULT_K

    if len(train) > DEFAULT_K:  # the nearest-neighbour distance needs more images than neighbours
        record_familiarity(path, train, source)
        log(f"recorded the first-layer statistics of the {len(train)} training images (familiarity)")
    else:
        log(f"too few training images ({len(train)}) to record which images the model knows: segment() will not "
            "say whether an image is unlike them")
    return path


def record_familiarity(path: Path | str, samples: list[Sample], source: str) -> None:
    """Write into the model file ``path`` the summary of the images it was trained on
    (:meth:`~napari_clis.session.ClisSession.record_familiarity`), so that ``segment()`` can say which images are
    unlike them. Atomic: a failure leaves the file as it was."""
    from .session import ClisSession

    summary = ClisSession.from_checkpoint(path, device="cpu").record_familiarity((s.image for s in samples),
                                                                                 source=source)
    net, metadata, _ = load_model(path)
    save_model(path, net, {**metadata, "familiarity": summary})


def _check_settings(settings: PretrainSettings) -> None:
    """Settings that cannot train, refused before any data is read."""
    if settings.augment not in ("none", "robust"):
        raise ValueError(f"augment must be 'none' or 'robust', got {settings.augment!r}")
    for name, p in (settings.augment_probabilities or {}).items():
        if name not in AUGMENT_PROBABILITIES:
            raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENT_PROBABILITIES)}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the probability of augmentation {name!r} must be between 0 and 1, got {p}")
    if not (math.isfinite(settings.contact_weight) and settings.contact_weight >= 0):
        raise ValueError(f"contact_weight must be a number >= 0 (0: off), got {settings.contact_weight}")
    if settings.head_only and not (settings.instance_head and settings.init):
        raise ValueError("training the distance head alone (head_only) needs instance_head and a model to start "
                         "from (init): the rest of the network is that model's")
    if (settings.augment == "robust" or settings.instance_head) and (
            settings.crop is None or settings.working_long_side is not None):
        raise ValueError("robust augmentation and the distance head are trained on crops at the image's own "
                         "resolution (the nuclei model's way), not on whole resized images")


def _start_from(net: ClisNet, init, settings: PretrainSettings, log) -> list:
    """Load the weights of the model file ``init`` into ``net`` (a distance head it lacks starts fresh, and so do
    the output layers where ``net`` has another number of classes); the training phases it records."""
    init_net, init_meta, _ = load_model(init)
    if init_net.config.instance_head and not settings.instance_head:
        raise ValueError(f"{init} has a distance head; train on with --instance-head to keep it")
    own = net.state_dict()
    state = init_net.state_dict()
    reshaped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith(("logit_head.", "logvar_head.")) for k in reshaped):
        raise ValueError(f"{init} does not match the network asked for (its {reshaped[0]!r} has another shape)")
    missing, _ = net.load_state_dict({k: v for k, v in state.items() if k not in reshaped}, strict=False)
    if any(not k.startswith("distance_head.") and k not in reshaped for k in missing):
        raise ValueError(f"{init} does not match the network asked for (no {missing[0]!r})")
    if net.distance_head is not None and init_net.distance_head is None:  # a new head starts as the decoder
        net.distance_head.copy_decoder(net)
        log("a new distance head, started as a copy of the decoder")
    if reshaped:
        log(f"new output layers for {net.config.n_classes} classes (the model had {init_net.config.n_classes})")
    earlier = init_meta.get("training", {})
    log(f"starting from {init}")
    return earlier.get("earlier_phases", []) + [
        {k: earlier.get(k) for k in ("settings", "step", "seconds", "history")}]


class TrainingCancelled(RuntimeError):
    """The training was cancelled: no model was written; its checkpoint keeps the progress for a resume (unless
    :func:`train_arrays` was asked not to keep it). ``step`` and ``total``: where it stopped, of how many steps."""

    def __init__(self, message: str = "", step: int | None = None, total: int | None = None):
        super().__init__(message)
        self.step, self.total = step, total


def _fit(settings: PretrainSettings, output: Path | str, config: NetworkConfig, data, weights, monitor: list[Sample],
         describe: dict, *, resume: bool = True, log=print, progress=None, cancel=None, checkpoint=None,
         identity: dict | None = None, keep_better_statistics: bool = False,
         drop_checkpoint_on_divergence: bool = False) -> Path:
    """The one training loop of :func:`pretrain` and :func:`train`: ``data`` from :func:`_prepare` (drawn by
    ``weights``), ``monitor`` the images its evaluations measure (none: no evaluation), ``describe`` the model
    file's ``name``, ``class_names`` and ``tasks`` (and any other metadata). Checkpoints go to ``checkpoint``
    (default ``output`` + ``.ckpt``) at every evaluation, and when ``cancel()`` turns true (between steps), which
    raises :class:`TrainingCancelled`; a checkpoint is resumed only when its ``identity`` (what it was trained
    on, kept in its metadata) is the one given. A non-finite loss raises :class:`TrainingDiverged`. At the end the
    BatchNorm statistics are recomputed over training batches (:func:`recalibrate_batchnorm`); with
    ``keep_better_statistics`` the running ones stay where they give the ``monitor`` images a higher Dice. With
    ``drop_checkpoint_on_divergence`` a diverged training removes its checkpoint too (a state on the way to
    diverging, which a run with a lower learning rate should not resume)."""
    output = Path(output)
    ckpt_path = Path(checkpoint) if checkpoint is not None else output.with_suffix(output.suffix + ".ckpt")
    rng = np.random.default_rng(settings.seed)
    train_count = len(data)
    net = ClisNet(config)
    earlier_phases = []
    if settings.init:  # a second phase that starts from an existing model (fresh optimiser and schedule)
        earlier_phases = _start_from(net, settings.init, settings, log)
    priors = {name: ibp_stick_breaking_prior(conv.gates.n_kernels, settings.ibp_alpha_per_kernel * conv.gates.n_kernels)
              for name, conv in net.masked_convs().items()}
    gate_params = [p for n, p in net.named_parameters() if ".gates." in n and not settings.head_only]
    weight_params = [p for n, p in net.named_parameters()
                     if ".gates." not in n and (n.startswith("distance_head.") or not settings.head_only)]
    if settings.head_only:
        net.requires_grad_(False)
        net.distance_head.requires_grad_(True)
    opt = torch.optim.AdamW([
        {"params": weight_params, "lr": settings.lr, "weight_decay": 1e-4},
        {"params": gate_params, "lr": settings.gate_lr, "weight_decay": 0.0},
    ])
    step = 0
    history = []
    train_seconds = 0.0
    if resume and ckpt_path.exists():
        net_r, meta, payload = load_model(ckpt_path)
        if identity is not None and (meta.get("training", {}).get("source") != identity or net_r.config != config):
            raise ValueError(f"{ckpt_path} is the checkpoint of another training (other images, masks, classes or "
                             "starting model). Delete it, start over (--restart), or write the model elsewhere "
                             "(--output).")
        net.load_state_dict(net_r.state_dict())
        opt.load_state_dict(payload["optimizer"])
        step = meta["training"]["step"]
        history = meta["training"]["history"]
        train_seconds = meta["training"]["seconds"]
        rng = np.random.default_rng(settings.seed + step)
        log(f"resumed from {ckpt_path} at step {step}")

    def metadata(final: bool):
        return {
            **{k: v for k, v in describe.items() if k not in ("tasks", "monitor")},
            "working_long_side": settings.working_long_side,
            "test_time_flips": settings.test_time_flips,
            "ibp_alpha_per_kernel": settings.ibp_alpha_per_kernel,
            "training": {
                "settings": asdict(settings),
                "step": step,
                "seconds": train_seconds,
                "history": history,
                "earlier_phases": earlier_phases,
                "final": final,
                "n_train_images": train_count,
                "torch": str(torch.__version__),
                "threads": torch.get_num_threads(),
                **({"source": identity} if identity is not None else {}),
            },
            "tasks": describe["tasks"],
        }

    def keep_checkpoint():
        if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()):
            if drop_checkpoint_on_divergence:
                ckpt_path.unlink(missing_ok=True)
            raise TrainingDiverged(  # a step so large that the weights overflowed, though the loss was finite
                f"The training diverged at step {step} of {settings.steps}: its weights became infinite. No model "
                f"was written to {output}. Train again with a lower learning rate (--lr, now {settings.lr:g}).")
        save_model(ckpt_path, net, metadata(False), extra={"optimizer": opt.state_dict()})

    def training_mode():
        net.train()
        if settings.head_only:  # the network as it was: its BatchNorm statistics, inference gates, no dropout
            net.eval()
            net.distance_head.train()

    training_mode()
    while step < settings.steps:
        if cancel is not None and cancel():
            keep_checkpoint()
            raise TrainingCancelled(f"The training was stopped at step {step} of {settings.steps}; no model was "
                                    f"written to {output}. {ckpt_path} keeps its progress: run the same training "
                                    "again to go on from there.", step, settings.steps)
        ts = time.time()
        for group, base in zip(opt.param_groups, (settings.lr, settings.gate_lr)):
            group["lr"] = base * _lr_factor(step, settings.steps)
        x, y, d = _batch(data, settings, rng, weights)
        if settings.head_only:
            with torch.no_grad():
                encoded = net.encode(x)
            loss_dist = distance_loss(net.distance(encoded)[:, 0], d)
            loss_nll = loss_dice = kl = torch.zeros(())
        elif settings.instance_head:
            logits, logvar, dlogit = net(x, relaxed=True, with_distance=True)
            loss_dist = distance_loss(dlogit[:, 0], d)
        else:
            logits, logvar = net(x, relaxed=True)
            loss_dist = torch.zeros(())
        if not settings.head_only:
            loss_nll = aleatoric_nll(logits, logvar, y, settings.logit_samples)
            if settings.contact_weight > 0:
                loss_nll = loss_nll + settings.contact_weight * contact_loss(logits, y)
            loss_dice = soft_dice_loss(logits, y, settings.dice_per_image)
            kl = gate_kl(net, 0, priors)
        loss = loss_nll + loss_dice + settings.kl_weight * kl + settings.instance_weight * loss_dist
        if not torch.isfinite(loss):  # the next step would make every weight NaN: stop before it, write nothing
            if drop_checkpoint_on_divergence:
                ckpt_path.unlink(missing_ok=True)
            kept = (f"; {ckpt_path} still holds the last good state" if ckpt_path.exists() else "")
            raise TrainingDiverged(
                f"The training diverged at step {step + 1} of {settings.steps}: its loss became {loss.item()}. "
                f"No model was written to {output}{kept}. Train again with a lower learning rate (--lr, now "
                f"{settings.lr:g}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        train_seconds += time.time() - ts
        if progress:
            progress(step, settings.steps, loss.item())
        if settings.log_every and step % settings.log_every == 0:
            log(f"step {step}/{settings.steps} loss {loss.item():.4f} (nll {loss_nll.item():.4f} dice "
                f"{loss_dice.item():.4f} distance {loss_dist.item():.4f} kl {kl.item():.1f}) "
                f"{train_seconds / step:.2f} s/step")
        if step % settings.eval_every == 0 or step == settings.steps:
            on = sum(int(c.gates.hard(0).sum()) for c in net.masked_convs().values())
            tot = sum(c.gates.n_kernels for c in net.masked_convs().values())
            record = {"step": step, "loss": loss.item(), "nll": loss_nll.item(), "dice_loss": loss_dice.item(),
                      "distance_loss": loss_dist.item(), "kl": kl.item()}
            if monitor:
                scores = evaluate(net, monitor, settings.working_long_side, flips=settings.test_time_flips)
                training_mode()
                record.update(monitor_dice=scores["dice"], monitor_iou=scores["iou"])
                said = f" {describe.get('monitor', 'monitor')} dice {scores['dice']:.4f} iou {scores['iou']:.4f}"
            else:
                said = ""
            history.append({**record, "kernels_on": on, "kernels": tot, "seconds": train_seconds})
            log(f"step {step}/{settings.steps} loss {loss.item():.4f}{said} kernels on {on}/{tot} "
                f"({train_seconds / 60:.1f} min)")
            keep_checkpoint()
    running = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}
    recalibrate_batchnorm(net, data, settings, n_batches=settings.precise_bn_batches, weights=weights,
                          head_only=settings.head_only)
    whose = "the distance head's" if settings.head_only else "the"
    log(f"recomputed {whose} BatchNorm statistics over {settings.precise_bn_batches} training batches")
    # few images: recomputed statistics may fit the validation images worse
    if keep_better_statistics and monitor and not settings.head_only:
        recomputed = evaluate(net, monitor, settings.working_long_side, flips=settings.test_time_flips)["dice"]
        statistics = {k: v.clone() for k, v in net.state_dict().items() if k in running}
        net.load_state_dict(running, strict=False)
        kept = evaluate(net, monitor, settings.working_long_side, flips=settings.test_time_flips)["dice"]
        if recomputed >= kept:
            net.load_state_dict(statistics, strict=False)
        log(f"validation dice {max(recomputed, kept):.4f} with the {'recomputed' if recomputed >= kept else 'running'}"
            f" BatchNorm statistics (the {'running' if recomputed >= kept else 'recomputed'} ones give "
            f"{min(recomputed, kept):.4f})")
    save_model(output, net, metadata(True))
    log(f"saved {output} (format {FORMAT})")
    return output


# steps of `napari-clis train` by default: fine-tuning a model, or a new one from scratch
TRAIN_STEPS = {"fine-tune": 500, "new": 2000}
_GENERIC_FOLDER_NAMES = {"images", "image", "imgs", "img", "raw", "data", "input", "inputs"}


def _folder_label(folder: Path) -> str:
    """A name for a training's images: the folder's, or its parent's where the folder is called "images" etc."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name.lower() in _GENERIC_FOLDER_NAMES and folder.parent.name else folder.name


def train(images: Path | str, masks: Path | str, *, init: str | Path | None = None, output: Path | str | None = None,
          steps: int | None = None, val_fraction: float = 0.2, classes: int | None = None, lr: float | None = None,
          batch: int = 8, crop: int | None = None, seed: int = 0, resume: bool = True, progress=None, cancel=None,
          log=None, contact_weight: float | None = None) -> Path:
    """Train a model on a folder of annotated images, or fine-tune one; the model file written.

    ``images`` and ``masks`` are folders whose files are paired by name (:func:`~napari_clis.data.
    load_annotated_folder`): with ``classes`` 2 (the default, or the starting model's number) every mask value
    above 0 is foreground, so binary and instance masks both work; with more, masks hold class ids 0 to
    ``classes - 1``. ``init`` is ``"nuclei"``, ``"skin-lesion"``, a model file, or None for a new network;
    output layers for another number of classes start fresh. A fixed share ``val_fraction`` of the images
    (drawn with ``seed``; at least one) is kept aside and its Dice logged at each evaluation. Where an instance
    mask's objects touch, ``contact_weight`` > 0 makes their 1 px border background and weighs the errors between
    objects that many times (:class:`PretrainSettings`), so that touching nuclei come out apart; None (the default)
    takes the starting model's (10 for the shipped nuclei model, else 0), 0 turns it off.

    The model goes to ``output``, else a new file in :func:`~napari_clis.checkpoint.models_dir` (the widget's
    Model list), written atomically and only at the end; an existing file is never written over. Progress is
    kept in a checkpoint beside it (``<model>.pt.ckpt``) at each evaluation and on ``cancel()`` (checked between
    steps; raises :class:`TrainingCancelled`); the same call again resumes from it (``resume=False``: start
    over), and a finished training removes it. ``progress(step, total, loss)`` is called after each step and
    ``log(text)`` with the evaluations. A loss that becomes NaN or infinite raises :class:`TrainingDiverged` and
    writes no model. Bad input raises ``ValueError`` (or :class:`~napari_clis.preprocessing.ImageError`,
    :class:`~napari_clis.checkpoint.CheckpointError`) naming the problem. Images in memory (napari's layers):
    :func:`train_arrays`, the same training.
    """
    from .data import load_annotated_folder

    _check_training_arguments(steps, val_fraction, lr, classes, batch, crop, contact_weight)
    images, masks = Path(images), Path(masks)
    start = _starting_model(init)
    classes = start.classes(classes)
    # where the model goes (never over a file there), and its checkpoint: the same for the same call, to resume
    output, ckpt_path = _model_paths(output, f"{start.label}-{_folder_label(images)}")
    samples = load_annotated_folder(images, masks, classes)
    if len(samples) < 2:
        raise ValueError(f"Training needs at least 2 annotated images (to train on and to check it on); {images} "
                         f"has {len(samples)}.")
    identity = {"images": str(images.resolve()), "masks": str(masks.resolve()), "stems": [s.id for s in samples],
                "classes": classes, "init": start.identity, "val_fraction": float(val_fraction), "seed": int(seed)}
    return _train_samples(samples, start, classes, output, ckpt_path, identity, str(images.resolve()),
                          steps=steps, val_fraction=val_fraction, lr=lr, batch=batch, crop=crop, seed=seed,
                          resume=resume, progress=progress, cancel=cancel, log=log, contact_weight=contact_weight)


def train_arrays(images, masks, *, init: str | Path | None = "nuclei", output: Path | str | None = None,
                 names=None, steps: int | None = None, val_fraction: float = 0.2, classes: int | None = None,
                 lr: float | None = None, batch: int = 8, crop: int | None = None, seed: int = 0, resume: bool = True,
                 keep_progress: bool = True, progress=None, cancel=None, log=None,
                 contact_weight: float | None = None) -> Path:
    """:func:`train` on annotated images in memory (the widget's image and labels layers): the same checks, loop,
    checkpoints and model file; the model file written.

    ``images`` is a list of 2D images, ``(H, W)`` grey or ``(H, W, 3)`` colour of any number type, and ``masks``
    a list of as many label images ``(H, W)``, each the size of its image. With ``classes`` 2 (the default, or the
    starting model's number) every value above 0 is foreground: binary masks, instance masks and napari's labels
    (one id per object) all count as foreground; with more, masks hold class ids 0 to ``classes - 1``;
    ``contact_weight`` as for :func:`train`. ``names`` (one per pair, default "pair 1", "pair 2", ...) name the
    pairs in messages; the model file is by default ``<init>-<first name>.pt`` in the models folder (a new name
    where that exists). One pair is enough:
    then none is kept aside to validate on. The checkpoint is resumed by the same call on the same pixels;
    ``keep_progress=False`` removes it however the call ends (finished, cancelled, diverged, failed), so that
    nothing but the finished model file is ever left behind. Raises what :func:`train` raises, and
    ``ValueError`` for an empty list, lists of different lengths and a mask that is not a 2D image of
    whole-number ids.
    """
    _check_training_arguments(steps, val_fraction, lr, classes, batch, crop, contact_weight)
    if isinstance(images, np.ndarray) or isinstance(masks, np.ndarray) or torch.is_tensor(images):
        raise ValueError("images and masks are lists, one array per image: for one image and its mask give "
                         "train_arrays([image], [mask]).")
    images, masks = list(images), list(masks)
    if not images or not masks:
        raise ValueError("There is nothing to train on: give at least one image and its mask.")
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks: each image needs its mask.")
    names = [f"pair {i}" for i in range(1, len(images) + 1)] if names is None else [str(n) for n in names]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images: give one name per image, or none.")
    start = _starting_model(init)
    classes = start.classes(classes)
    samples = _annotated_samples(images, masks, names, classes)
    label = re.sub(r"[^\w.-]+", "-", names[0]).strip("-.") or "annotated"
    output, ckpt_path = _model_paths(output, f"{start.label}-{label}")
    digest = hashlib.sha256()
    for s in samples:
        for a in (s.image, s.mask):
            digest.update(f"{a.shape}{a.dtype}".encode())
            digest.update(np.ascontiguousarray(a).data)
    identity = {"arrays": digest.hexdigest(), "names": names, "classes": classes, "init": start.identity,
                "val_fraction": float(val_fraction), "seed": int(seed)}
    try:
        return _train_samples(samples, start, classes, output, ckpt_path, identity, ", ".join(names), steps=steps,
                              val_fraction=val_fraction, lr=lr, batch=batch, crop=crop, seed=seed, resume=resume,
                              progress=progress, cancel=cancel, log=log, contact_weight=contact_weight)
    except TrainingCancelled as e:
        if keep_progress:
            raise
        raise TrainingCancelled(f"The training was stopped at step {e.step} of {e.total}; no model was written.",
                                e.step, e.total) from None
    finally:
        if not keep_progress:
            ckpt_path.unlink(missing_ok=True)


def _check_training_arguments(steps, val_fraction, lr, classes, batch, crop, contact_weight=None) -> None:
    """:func:`train`'s and :func:`train_arrays`' settings, refused before anything is read."""
    if steps is not None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"the validation fraction must be at least 0 and below 1, got {val_fraction!r}")
    if lr is not None and not (math.isfinite(float(lr)) and lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {lr!r}")
    if classes is not None and (int(classes) != classes or classes < 2):
        raise ValueError(f"classes must be a whole number of at least 2 (background and one class), got {classes!r}")
    for value, name in ((batch, "batch"), (crop, "crop")):
        if value is not None and (int(value) != value or value < 1 or (name == "crop" and value % 8)):
            raise ValueError(f"{name} must be a whole number of at least 1{' and a multiple of 8' * (name == 'crop')}"
                             f", got {value!r}")
    if contact_weight is not None:
        try:
            ok = math.isfinite(float(contact_weight)) and float(contact_weight) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"the contact weight must be a number of at least 0 (0: off), got {contact_weight!r}")


@dataclass
class _Start:
    """The model a training starts from (``net`` None: a new network)."""

    path: Path | None
    label: str
    net: ClisNet | None
    meta: dict
    identity: str  # what a checkpoint records of it

    def classes(self, asked: int | None) -> int:
        return int(asked if asked is not None else (self.net.config.n_classes if self.net else 2))


def _starting_model(init) -> _Start:
    """``init``: a shipped model's name, a model file, or None (a new network); loaded, or a clear error."""
    from .checkpoint import shipped_model_path, shipped_models

    if init is None:
        return _Start(None, "new", None, {}, "new")
    if str(init) in shipped_models():
        path, label = shipped_model_path(str(init)), str(init)
    elif Path(init).is_file():
        path, label = Path(init), Path(init).stem
    else:
        raise ValueError(f"The starting model {str(init)!r} is neither a shipped model "
                         f"({', '.join(shipped_models())}) nor a model file that exists.")
    net, meta, _ = load_model(path)
    return _Start(path, label, net, meta, label if str(init) in shipped_models() else str(path.resolve()))


def _model_paths(output, stem: str) -> tuple[Path, Path]:
    """The model file a training writes (``output``, refused where a file is, else ``<stem>.pt`` in the models
    folder or a new name there) and its checkpoint beside it."""
    from .checkpoint import models_dir, unique_model_path

    if output is not None:
        output = Path(output)
        if output.exists():
            raise ValueError(f"{output} exists already; the new model is not written over it. Choose another file "
                             "(--output), or leave it out to write a new file in the models folder.")
        if not output.parent.is_dir():
            raise ValueError(f"The folder {output.parent} for the model file does not exist.")
        return output, output.with_suffix(output.suffix + ".ckpt")
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"{stem}.pt" if not (folder / f"{stem}.pt").exists() else unique_model_path(folder, stem)
    return output, folder / f"{stem}.pt.ckpt"


def _annotated_samples(images: list, masks: list, names: list[str], classes: int) -> list[Sample]:
    """Image and mask arrays as :class:`~napari_clis.data.Sample` objects, by :func:`~napari_clis.data.
    load_annotated_folder`'s rules (its checks of a mask file, made on an array); each problem named with the
    pair's name."""

    from .data import _listed
    from .preprocessing import ImageError, as_2d_image

    out, wrong = [], []
    for name, image, raw in zip(names, images, masks):
        try:
            image = as_2d_image(image)
        except ImageError as e:
            raise ImageError(f"{name}: {e}") from e
        raw = np.asarray(raw)
        raw = raw.astype(np.uint8) if raw.dtype == bool else raw
        if raw.ndim != 2 or raw.dtype.kind not in "iuf":
            raise ValueError(f"The mask of {name} is not a 2D image of class (or object) ids: its shape is "
                             f"{raw.shape}, its dtype {raw.dtype}.")
        if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and np.array_equal(raw, np.round(raw))):
            raise ValueError(f"The mask of {name} holds fractions; a mask holds whole-number ids per pixel.")
        if raw.size and raw.min() < 0:
            raise ValueError(f"The mask of {name} holds negative values ({raw.min()}); ids start at 0 (background).")
        if raw.shape != image.shape[:2]:
            wrong.append(f"the mask of {name} is {raw.shape[1]}x{raw.shape[0]} px, its image "
                         f"{image.shape[1]}x{image.shape[0]}")
            continue
        top = int(raw.max()) if raw.size else 0
        if classes > 2 and top >= classes:
            raise ValueError(f"The mask of {name} holds class id {top}, above the model's {classes} classes (ids 0 "
                             f"to {classes - 1}, 0 the background). Train with more classes (classes={top + 1}), or "
                             "with 2 classes to count every id above 0 as foreground.")
        if classes > 2:
            out.append(Sample(name, image, raw.astype(np.int32), None))
            continue
        mask = (raw > 0).astype(np.int32)  # object ids of an instance mask (a binary one has none)
        several = len(np.unique(raw[raw > 0])) > 1
        out.append(Sample(name, image, mask, raw.astype(np.int32) if several else None))
    if wrong:
        raise ValueError(f"Masks must be the size of their image: {_listed(wrong)}.")
    return out


def _train_samples(samples: list[Sample], start: _Start, classes: int, output: Path, ckpt_path: Path,
                   identity: dict, source: str, *, steps, val_fraction, lr, batch, crop, seed, resume, progress,
                   cancel, log, contact_weight: float | None = None) -> Path:
    """The training of :func:`train` and :func:`train_arrays` once their images are read: the validation split,
    the settings, :func:`_fit`; a finished training removes its checkpoint. ``contact_weight`` None: the starting
    model's own (:func:`_inherited_contact_weight`)."""
    log = log or (lambda _: None)
    if not any(s.mask.any() for s in samples):
        raise ValueError("No mask marks any object (all of their pixels are 0, the background): there is nothing "
                         "to learn. Label the objects first.")
    n_val = 0 if val_fraction == 0 else min(len(samples) - 1, max(1, round(val_fraction * len(samples))))
    order = np.random.default_rng(seed).permutation(len(samples))
    val = [samples[i] for i in sorted(order[:n_val])]
    train_samples = [samples[i] for i in sorted(order[n_val:])]
    log(f"{len(train_samples)} images to train on, " + (f"{len(val)} to validate on ({', '.join(s.id for s in val)})"
                                                        if val else "none kept aside to validate on"))
    init_net, init_meta = start.net, start.meta
    working_long_side = init_meta.get("working_long_side")
    config = (NetworkConfig(n_classes=classes) if init_net is None
              else NetworkConfig.from_dict({**init_net.config.to_dict(), "n_classes": classes}))
    steps = int(steps or TRAIN_STEPS["new" if init_net is None else "fine-tune"])
    settings = PretrainSettings(
        model=output.stem, steps=steps, batch=int(batch), crop=crop if crop or working_long_side else 128,
        working_long_side=working_long_side, test_time_flips=bool(init_meta.get("test_time_flips", False)),
        lr=float(lr if lr is not None else (3e-3 if init_net is None else 1e-3)), seed=int(seed),
        width=config.width, dropout=config.dropout, bottleneck_dilation=config.bottleneck_dilation,
        eval_every=max(1, steps // 10), precise_bn_batches=min(50, steps),
        fg_crop_fraction=0.5 if not working_long_side else 0.0, init=None if start.path is None else str(start.path),
        instance_head=config.instance_head,
        contact_weight=_inherited_contact_weight(init_meta, classes) if contact_weight is None else contact_weight)
    _check_settings(settings)
    small = [s for s in train_samples if settings.crop and not working_long_side and
             min(s.mask.shape) <= settings.crop // 2]
    if small:
        raise ValueError(f"{small[0].id} is {small[0].mask.shape[1]}x{small[0].mask.shape[0]} px: too small for the "
                         f"training's {settings.crop} px crops (each side must be above {settings.crop // 2} px). "
                         "Train on larger images, or with smaller crops.")
    if settings.contact_weight > 0:  # touching objects of instance masks kept apart, as the starting model learned
        identity = {**identity, "contact_weight": settings.contact_weight}
        apart = [separate_touching(s) for s in train_samples]
        border = sum(int(((a.mask > 0) & (b.mask == 0)).sum()) for a, b in zip(train_samples, apart))
        log(f"touching objects kept apart (contact weight {settings.contact_weight:g}): {border} px where objects of "
            f"{sum(s.instances is not None for s in train_samples)} instance masks touch made background"
            if border else f"contact weight {settings.contact_weight:g}: no two objects (one id each) of a mask touch")
        train_samples = apart
    data = _prepare(train_samples, settings.working_long_side, settings)
    if settings.crop is None and len({tuple(d[1].shape) for d in data}) > 1:
        # whole images of different shapes cannot share a batch: squares of the working side (padded by mirroring)
        settings.crop = working_long_side
    init_names = list(init_meta.get("class_names", []))
    class_names = (init_names if init_net is not None and init_net.config.n_classes == classes and
                   len(init_names) == classes else
                   ["background"] + (["foreground"] if classes == 2 else [f"class {k}" for k in range(1, classes)]))
    describe = {"name": output.stem, "class_names": class_names, "monitor": "validation",
                "tasks": [{"name": "training", "source": source, "n_images": len(train_samples)}]}
    if classes == 2 and init_meta.get("single_object"):
        describe["single_object"] = True  # one lesion per image, as the starting model declared
    weights = _image_weights(data, settings)
    torch.manual_seed(settings.seed)
    written = _fit(settings, output, config, data, weights, val, describe, resume=resume, log=log,
                   progress=progress, cancel=cancel, checkpoint=ckpt_path, identity=identity,
                   keep_better_statistics=True, drop_checkpoint_on_divergence=True)
    ckpt_path.unlink(missing_ok=True)  # finished: the same call again trains anew
    return written


def _inherited_contact_weight(meta: dict, classes: int) -> float:
    """The contact weight of the training that made a starting model (its metadata), for a two-class training:
    fine-tuning the shipped nuclei model on instance masks keeps touching nuclei apart as its pretraining did
    (0 for other models, other numbers of classes, and files that do not record it)."""
    if classes != 2:
        return 0.0
    settings = (meta.get("training") or {}).get("settings") or {}
    try:
        weight = float(settings.get("contact_weight") or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return weight if math.isfinite(weight) and weight > 0 else 0.0


# foreground probabilities at which the decision is tried (0.5: the plain argmax)
DECISION_THRESHOLDS = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)


def calibrate_decision(net: ClisNet, metadata: dict, samples: list[Sample], *, single_object: bool = False,
                       thresholds=DECISION_THRESHOLDS, n_samples: int = 8, log=print) -> dict:
    """Choose a two-class model's decision on validation images, for the mean foreground Dice.

    A trained network's probabilities carry the class balance of its training loss; the Dice-optimal decision
    is often not at 0.5 (a lesion model that under-segments). Each threshold ``t`` is tried as the decision
    prior ``(log t, log(1 - t))``: labels ``argmax_k log p_k + prior_k``, i.e. "foreground probability above
    ``t``" (:func:`~napari_clis.uncertainty.decide`). The network is not changed: its probabilities and
    uncertainty stay its own, the MRF and learning follow the decision. With ``single_object`` each threshold is
    tried with the one-object rule (:func:`~napari_clis.interactive.keep_one_object`). Each image is segmented once
    as :meth:`ClisSession.segment` does (``n_samples`` MC samples, the model's flips and working resolution);
    every threshold then labels the same probabilities. The threshold with the best mean Dice wins; ties go to
    the one nearest 0.5.

    Returns
    -------
    The metadata to save with the network: ``single_object`` and a ``decision`` record (the threshold, its
    prior, the Dice of every threshold tried, the number of images). Raises ``ValueError`` for a model that is
    not two-class, one calibrated already, no images or a threshold outside (0, 1).
    """
    from .session import ClisSession

    if net.config.n_classes != 2:
        raise ValueError(f"the decision is calibrated for two-class models; "
                         f"this one has {net.config.n_classes} classes")
    if "decision" in metadata:
        raise ValueError("this model's decision is calibrated already (metadata 'decision'); calibrate the "
                         "model it came from")
    if not samples:
        raise ValueError("no validation images to calibrate on")
    bad = [t for t in thresholds if not 0.0 < float(t) < 1.0]
    if bad:
        raise ValueError(f"thresholds must lie strictly between 0 and 1, got {bad}")

    def with_threshold(t: float) -> dict:
        return dict(metadata, single_object=bool(single_object),
                    decision={"threshold": float(t), "class_log_prior": [math.log(t), math.log(1.0 - t)]})

    session = ClisSession(net, metadata, device="cpu", n_samples=n_samples)
    probabilities = [session.segment(s.image).probabilities for s in samples]
    scores = {}
    for t in thresholds:
        prior = with_threshold(float(t))["decision"]["class_log_prior"]
        d = [dice(decide(p, prior, single_object) > 0, s.mask > 0) for p, s in zip(probabilities, samples)]
        scores[float(t)] = float(np.mean(d))
        log(f"threshold {t:.2f}: mean Dice {scores[float(t)]:.4f} over {len(d)} images")
    best = max(scores, key=lambda t: (round(scores[t], 6), -abs(t - 0.5)))
    meta = with_threshold(best)
    meta["decision"].update(single_object=bool(single_object), dice_by_threshold=scores, n_images=len(samples),
                            n_samples=n_samples)
    log(f"chosen: threshold {best:.2f}, mean Dice {scores[best]:.4f} against {scores.get(0.5, float('nan')):.4f} "
        "at 0.5")
    return meta
