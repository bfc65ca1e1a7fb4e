"""How a split click fares on merged nuclei: in every object of the network that holds two true nuclei (each at
least a quarter of it; up to 3 objects per image), a split click at each true nucleus's centre; counted: both nuclei
then matched by their own piece (IoU >= 0.5), the click refused, a wrong cut, and the clicked pixel within 2 px of
the cut. Each click is undone before the next. Quality only (nothing is timed).

    python scripts/split_clicks.py pool 60        # held-out dsb2018 images (pretrain: the pretraining split)
    python scripts/split_clicks.py pool 60 --data ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_clis.data import load_dsb2018
from napari_clis.session import ClisSession, InteractionError


def centre_pixel(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])


def judge(parts: np.ndarray, truth: np.ndarray, pair) -> bool:
    """Whether each true nucleus of ``pair`` is matched by a piece of its own at IoU >= 0.5."""
    found = []
    for g in pair:
        mask = truth == g
        ids = parts[mask]
        ids = ids[ids > 0]
        if not len(ids):
            return False
        piece = parts == np.bincount(ids).argmax()
        if (mask & piece).sum() / (mask | piece).sum() < 0.5:
            return False
        found.append(int(np.bincount(ids).argmax()))
    return found[0] != found[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["pool", "pretrain"])
    ap.add_argument("images", type=int)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = ClisSession.from_pretrained("nuclei", device="cpu", n_samples=4)
    counts = {"separated": 0, "refused": 0, "wrong": 0, "click on the cut": 0}
    for smp in load_dsb2018(args.data, args.part)[: args.images]:
        s.segment(smp.image)
        inst, truth = s.instances.copy(), smp.instances
        areas = np.bincount(inst.ravel())
        merged = 0
        for p in np.unique(inst)[1:]:
            if merged == 3:
                break
            inside = truth[inst == p]
            ids, n = np.unique(inside[inside > 0], return_counts=True)
            order = np.argsort(-n)
            if len(ids) < 2 or n[order[1]] < 0.25 * areas[p]:
                continue
            merged += 1
            pair = ids[order[:2]]
            for g in pair:
                y, x = centre_pixel((truth == g) & (inst == p))
                try:
                    k = s.click(y, x, 1, "split")
                except InteractionError:
                    counts["refused"] += 1
                    continue
                parts = s.instances
                counts["separated" if judge(parts, truth, pair) else "wrong"] += 1
                window = parts[max(0, y - 2): y + 3, max(0, x - 2): x + 3]
                counts["click on the cut"] += len(set(np.unique(window)) - {0}) > 1
                s.remove_click(k)
    print(args.part, args.images, counts)


if __name__ == "__main__":
    main()
