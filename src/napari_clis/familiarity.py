"""How familiar an image is to a model: the signal that the model may be out of its depth.

The signal is the statistics of the network's first layer (A1, task 0) on the image, as the network sees it:
each channel's mean and standard deviation over the image (:func:`first_layer_stats`), the inputs that batch
normalisation and every later layer were tuned to. A model file may carry, in its metadata field
``familiarity``, those statistics for the images it was pretrained on (:func:`reference_summary`). An image's
*distance* is the mean Euclidean distance of its statistics, standardised channel by channel by the pretraining
images' mean and spread, to its ``k`` nearest pretraining images. The image is *unfamiliar* when the distance
exceeds ``limit``: the 99th percentile of the pretraining images' own distances (each left out of its
neighbours). Chosen by measurement over the task fingerprint's cosine distance and the share of uncertain
pixels (docs/models.md, *When the model is out of its depth*).

An image the session has learned something like (the task-aware module chose a learned task for it) counts as
familiar whatever its distance: the user taught the model images of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Familiarity", "familiarity", "first_layer_stats", "reference_summary", "knn_distance", "DEFAULT_K",
           "NO_SUMMARY"]

DEFAULT_K = 5  # nearest pretraining images the distance averages over
LIMIT_QUANTILE = 0.99  # of the pretraining images' own (leave-one-out) distances

NO_SUMMARY = ("This model file does not record the images it was trained on, so napari-clis cannot tell whether "
              "this image is like them.")


@dataclass(frozen=True)
class Familiarity:
    """How much an image is like what the model knows.

    Attributes
    ----------
    distance : float or None
        Distance of the image's first-layer statistics to the nearest pretraining images' (standardised units;
        None: the model file holds no record of its training images).
    limit : float or None
        The distance above which the image counts as unfamiliar.
    unfamiliar : bool or None
        Whether the model may be out of its depth here (None when it cannot be told).
    message : str
        In plain words: what the signal says and what to do.
    """

    distance: float | None
    limit: float | None
    unfamiliar: bool | None
    message: str

    @property
    def unlike_training(self) -> bool:
        """Whether the image is farther from the pretraining images than the limit, whatever the session learned
        since (``unfamiliar`` is False for a kind of image the session was taught)."""
        return self.distance is not None and self.limit is not None and self.distance > self.limit


@torch.no_grad()
def first_layer_stats(net, x: torch.Tensor) -> np.ndarray:
    """(2 * width,): each channel's mean, then standard deviation, of the first block A1 (task 0) on ``x``
    (1, 3, H, W), the image at the network's working resolution."""
    a1 = net.A1(x, 0)
    return torch.cat([a1.mean((0, 2, 3)), a1.std((0, 2, 3))]).double().cpu().numpy()


def _standardised(stats, summary: dict) -> np.ndarray:
    return (np.asarray(stats, np.float64) - np.asarray(summary["mean"])) / np.asarray(summary["std"])


def knn_distance(z: np.ndarray, reference: np.ndarray, k: int = DEFAULT_K) -> float:
    """Mean Euclidean distance of ``z`` (C,) to its ``k`` nearest rows of ``reference`` (N, C)."""
    d = np.sqrt(((np.asarray(reference, np.float64) - z) ** 2).sum(1))
    return float(np.sort(d)[:max(1, min(int(k), d.size))].mean())


def reference_summary(stats, k: int = DEFAULT_K, source: str = "") -> dict:
    """The metadata field ``familiarity`` for a model pretrained on images with these first-layer ``stats``
    (N, C): their mean and spread per channel, the standardised statistics (4 decimals), ``k`` and the ``limit``."""
    s = np.asarray(stats, np.float64)
    if s.ndim != 2 or len(s) < k + 1:
        raise ValueError(f"reference_summary needs the statistics of at least {k + 1} images as an (N, C) array, "
                         f"got shape {s.shape}")
    mean, std = s.mean(0), s.std(0) + 1e-6
    z = (s - mean) / std
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)  # leave each image out of its own neighbours
    own = np.sort(d, axis=1)[:, :k].mean(1)
    return {"mean": np.round(mean, 6).tolist(), "std": np.round(std, 6).tolist(),
            "reference": np.round(z, 4).tolist(), "k": int(k),
            "limit": round(float(np.quantile(own, LIMIT_QUANTILE)), 4), "source": source}


def familiarity(stats, summary: dict | None, learned_kind: bool = False, advice: str = "") -> Familiarity:
    """The :class:`Familiarity` of an image with first-layer ``stats``, given the model's ``summary`` (its
    metadata field ``familiarity``, or None for a model file without it). ``learned_kind``: the session learned
    images like this one (familiar whatever the distance). ``advice``: what to do about an unfamiliar image."""
    if not summary:
        return Familiarity(None, None, None, NO_SUMMARY)
    distance = knn_distance(_standardised(stats, summary), summary["reference"], summary.get("k", DEFAULT_K))
    limit = float(summary["limit"])
    if distance <= limit:
        return Familiarity(distance, limit, False, (
            f"This image looks like the images this model learned from (how far from them: {distance:.1f}; they "
            f"lie within {limit:.1f}). "
            "Still check the bright areas of the uncertainty map."))
    if learned_kind:
        return Familiarity(distance, limit, False, (
            f"This image is unlike the model's training images (how far from them: {distance:.1f}; they lie "
            f"within {limit:.1f}), but like "
            "images you taught it: it is segmented with what was learned from them."))
    return Familiarity(distance, limit, True, (
        f"This image looks unlike the images this model learned from (how far from them: {distance:.1f}; they "
        f"lie within {limit:.1f}), so "
        f"its segmentation may be poor. {advice}").rstrip())
