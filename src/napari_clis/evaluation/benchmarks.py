"""Benchmarks: ``napari-clis bench speed | quality | outliers | interactive | clicks | learn | continual | memory``.

Each prints a Markdown table; ``docs/benchmarks.md`` and ``docs/models.md`` record the results with the
machine and the date. Speed is always reported beside a baseline measured in the same run (one plain
forward pass; the naive T-pass Monte-Carlo run), as ratios, because shared machines are noisy.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

__all__ = ["build_parser", "main", "speed", "quality", "interactive", "clicks", "memory", "memory_cycles",
           "otsu_foreground", "outliers", "brighten_nuclei", "MemoryMeasureUnavailable"]

SPEED_SIZES = (256, 512, 1024, 4096)


# -- shared helpers -------------------------------------------------------------------------------

def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}, {date.today().isoformat()}")


class MemoryMeasureUnavailable(RuntimeError):
    """This system lacks what the memory measures read (Linux's ``/proc`` and the Unix ``resource`` module)."""


def _check_memory_measures(command: str) -> None:
    """Raise :class:`MemoryMeasureUnavailable` before a benchmark that reports memory starts, where it cannot."""
    try:
        import resource  # Unix only: absent on Windows
    except ImportError:
        resource = None
    if resource is None or not Path("/proc/self/statm").exists():
        raise MemoryMeasureUnavailable(
            f"`bench {command}` reports the memory the process uses, which it reads from Linux's /proc and the "
            f"Unix resource module; this system ({platform.system()}) has not both. The other benchmarks run here.")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    import resource  # Unix only: imported here so the rest of the benchmarks load anywhere

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _speed_image(size: int, data_root: str | None) -> np.ndarray:
    """A real colour image tiled to ``size`` x ``size``: an H&E nuclei image from dsb2018 if the data is there,
    else the dermoscopy sample shipped with the package."""
    from skimage.io import imread

    from ..data import default_data_root

    root = Path(data_root) if data_root else default_data_root()
    candidate = root / "dsb2018" / "images" / "0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6.png"
    if candidate.exists():
        base = imread(candidate)[..., :3]
    else:
        from .._sample_data import skin_lesion_sample

        base = skin_lesion_sample()[0][0]
    reps = (-(-size // base.shape[0]), -(-size // base.shape[1]), 1)
    return np.ascontiguousarray(np.tile(base, reps)[:size, :size])


def _naive_mc(net, x, n_samples: int, seed: int = 0):
    """The baseline: ``n_samples`` full forward passes, each with its own gates and dropout."""
    import torch

    from ..uncertainty import fit_grid

    g = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    xt, _ = fit_grid(torch.from_numpy(x)[None])
    last = net.B3.conv2
    keep = 1 - net.config.dropout
    probs = []
    with torch.no_grad():
        for _ in range(n_samples):
            feats = net.trunk(xt)  # recomputed every time: that is what makes the naive way slow
            gates = last.gates.sample(0, 1, g)[0]
            drop = (torch.rand(gates.shape, generator=g) < keep).float() / keep
            z, _ = net.heads(feats, gates, drop)
            probs.append(torch.softmax(z, 1)[0, :, :h, :w])
    return torch.stack(probs).var(0).sum(0).numpy()


def _speed_one(size: int, model: str, n_samples: int, repeats: int, data_root: str | None, naive: bool) -> dict:
    """Time one size in this process; the caller runs it in a fresh process so peak memory is its own."""
    from ..preprocessing import normalize_image
    from ..session import ClisSession
    from ..superpixels import compute_superpixels
    from ..uncertainty import predict

    session = ClisSession.from_pretrained(model, device="cpu", n_samples=n_samples)
    image = _speed_image(size, data_root)
    base_rss = _rss_mb()
    x = normalize_image(image)
    wls, flips = session.working_long_side, session.test_time_flips
    predict(session.net, x[:, :64, :64], n_samples=1)  # warm-up
    t_fwd, t_unc, t_naive, t_sp, t_seg, t_base, t_task = [], [], [], [], [], [], []
    for _ in range(repeats):  # interleaved, so a slow spell of the machine hits every column alike
        t = time.perf_counter()
        predict(session.net, x, n_samples=0, working_long_side=wls, flips=flips)
        t_fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        predict(session.net, x, n_samples=n_samples, working_long_side=wls, flips=flips)
        t_unc.append(time.perf_counter() - t)
        if naive:
            t = time.perf_counter()
            _naive_mc(session.net, x, n_samples)
            t_naive.append(time.perf_counter() - t)
        t = time.perf_counter()
        compute_superpixels(x, size=session.superpixel_size)
        t_sp.append(time.perf_counter() - t)
        t = time.perf_counter()
        session.segment(image)
        t_seg.append(time.perf_counter() - t)
    peak = _peak_rss_mb()  # before the second session below: the peak of segmenting one image
    checked = False
    if naive:  # segment() with and without a learned task, interleaved (not for 4096 px: minutes, and ~1.0)
        learned = _with_a_learned_task(model, n_samples)
        for _ in range(repeats):
            t = time.perf_counter()
            session.segment(image)
            t_base.append(time.perf_counter() - t)
            t = time.perf_counter()
            learned.segment(image)
            t_task.append(time.perf_counter() - t)
            checked = learned.task_choice["agreement"] is not None
    med = lambda v: float(np.median(v)) if v else float("nan")  # noqa: E731
    return {
        "size": size, "forward_s": med(t_fwd), "uncertainty_s": med(t_unc), "naive_s": med(t_naive),
        "superpixels_s": med(t_sp), "segment_s": med(t_seg), "segment_again_s": med(t_base),
        "segment_task_s": med(t_task), "agreement_checked": checked, "base_rss_mb": base_rss, "peak_rss_mb": peak,
        "repeats": repeats,
    }


def _learned_cells(r: dict) -> str:
    """The two cells "segment() with a learned task" and its ratio to segment() timed beside it."""
    if not np.isfinite(r.get("segment_task_s", float("nan"))):
        return "not run | -"
    note = "" if r["agreement_checked"] else " (no check ran)"
    return f"{r['segment_task_s']:.3f}{note} | {r['segment_task_s'] / r['segment_again_s']:.2f}"


def _with_a_learned_task(model: str, n_samples: int):
    """A session that knows one learned image (not the one timed), so that ``segment()`` runs the task-aware
    module's agreement check: task 1 is a copy of task 0's mask (what it learned does not change the cost)."""
    import torch

    from ..continual import TaskRecord, fingerprint
    from ..session import ClisSession

    s = ClisSession.from_pretrained(model, device="cpu", n_samples=n_samples)
    s.net.add_task(init_from=0)
    fp = fingerprint(s.net, torch.zeros((1, 3, 64, 64)))  # a blank image's: the timed one is unseen
    s.tasks = [TaskRecord(task=1, parent=0, fingerprint=list(fp), image_shape=[0, 0], clicks=[], kernels_on={},
                          kernels_new=0, dice_before=0.0, dice_after=0.0, seconds=0.0)]
    return s


def speed(args) -> int:
    _check_memory_measures("speed")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for size in sizes:
        repeats = args.repeats if size <= 1024 else 1
        naive = size <= 1024
        one = dict(size=size, model=args.model, n_samples=args.samples, repeats=repeats, data_root=args.data,
                   naive=naive)
        cmd = [sys.executable, "-m", "napari_clis.evaluation.benchmarks", "_speed_one", json.dumps(one)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {size}x{size} done", file=sys.stderr)
    print(f"\nSpeed of `segment` ({args.model} model, T={args.samples} MC samples), {_machine()}\n")
    print("| image | one forward pass (s) | network + uncertainty (s) | ratio to forward | naive T-pass MC (s) | "
          "naive ratio | superpixels (s) | whole `segment()` (s) | `segment()` with a learned task (s) | ratio | "
          "peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        naive = f"{r['naive_s']:.3f}" if np.isfinite(r["naive_s"]) else "not run"
        naive_ratio = f"{r['naive_s'] / r['forward_s']:.2f}" if np.isfinite(r["naive_s"]) else "-"
        print(f"| {r['size']}x{r['size']} RGB | {r['forward_s']:.3f} | {r['uncertainty_s']:.3f} | "
              f"{r['uncertainty_s'] / r['forward_s']:.2f} | {naive} | {naive_ratio} | {r['superpixels_s']:.3f} | "
              f"{r['segment_s']:.3f} | {_learned_cells(r)} | "
              f"{r['peak_rss_mb']:.0f} (before: {r['base_rss_mb']:.0f}) |")
    print(f"\nMedian of {args.repeats} interleaved repeats (1 for 4096x4096); peak memory is the process's "
          "maximum resident set, model and torch included (before the learned-task runs). With a learned task: the "
          "session knows one learned image (not this one), so the task-aware module checks that task against the "
          "pretrained one first; its ratio is to `segment()` timed beside it, interleaved, after the other columns.")
    return 0


# -- quality ----------------------------------------------------------------------------------------

def otsu_foreground(image: np.ndarray, dataset: str) -> np.ndarray:
    """The classical baseline: Otsu's threshold on the grey image.

    dsb2018: nuclei are the minority side of the threshold (bright on dark or dark on bright);
    isic2017: the lesion is the darker side.
    """
    from skimage.filters import threshold_otsu

    grey = image.astype(np.float64).mean(-1) if image.ndim == 3 else image.astype(np.float64)
    if np.ptp(grey) == 0:
        return np.zeros(grey.shape, bool)
    fg = grey > threshold_otsu(grey)
    if dataset == "isic2017":
        return ~fg
    return ~fg if fg.mean() > 0.5 else fg


def _quality_sets(model: str, args) -> list[tuple[str, str, list]]:
    """The images ``bench quality`` measures a model on: ``[(dataset, split, samples)]``. Nuclei: the held-out
    ``dsb2018`` pool (the images of it the data folder holds), then, where the data folder holds them, the held-out
    half of ``bbbc039`` and every ``he_nuclei`` tile (a kind of image no shipped model is pretrained on)."""
    from ..data import Sample, default_data_root, load_annotated_folder, load_dataset

    if model == "skin-lesion":
        return [("isic2017", "isic2017/test", load_dataset(model, "heldout", args.data, limit=args.limit))]
    root = Path(args.data) if args.data else default_data_root()
    sets = []
    for dataset, split in (("dsb2018", "pool of dsb2018.json"), ("bbbc039", "held-out half of bbbc039.json")):
        if dataset == "bbbc039" and not (root / dataset / "images").is_dir():
            continue
        read, missing = _heldout_present(args.data, dataset, grey_only=False)
        samples = [Sample(i, image, (inst > 0).astype(np.int32), inst) for i, image, inst in read]
        samples = samples[: args.limit] if args.limit else samples
        sets.append((dataset, split + (f", {missing} not in the data folder" if missing else ""), samples))
    if (root / "he_nuclei" / "images").is_dir():
        he = load_annotated_folder(root / "he_nuclei" / "images", root / "he_nuclei" / "masks")
        sets.append(("he_nuclei", "every tile, never trained on", he[: args.limit] if args.limit else he))
    return sets


def quality(args) -> int:
    from ..data import image_kind
    from ..metrics import dice, iou, roc_auc
    from ..session import ClisSession

    models = ["nuclei", "skin-lesion"] if args.model == "all" else [args.model]
    if (args.checkpoint or args.compare) and len(models) > 1:
        raise SystemExit("--checkpoint and --compare need --model nuclei or --model skin-lesion: the data to measure "
                         "them on")
    summary = {}
    for model in models:
        if args.checkpoint:  # a candidate model (say, a new pretraining run) on the same images, by the same measures
            session = ClisSession.from_checkpoint(args.checkpoint, device="cpu", n_samples=args.samples)
        else:
            session = ClisSession.from_pretrained(model, device="cpu", n_samples=args.samples)
        label = f"{model} ({Path(args.checkpoint).name})" if args.checkpoint else model
        others = [(f"{model} ({Path(c).name})", ClisSession.from_checkpoint(c, device="cpu", n_samples=args.samples))
                  for c in (args.compare or [])]
        for n_set, (dataset, split, samples) in enumerate(_quality_sets(model, args)):
            rng = np.random.default_rng(0)
            rec = {k: [] for k in ("dice", "iou", "otsu_dice", "otsu_iou", "auc_unc", "auc_ent")}
            compared = {name: [] for name, _ in others}
            pooled_unc, pooled_ent, pooled_wrong = [], [], []
            kinds = {}
            t0 = time.time()
            for i, s in enumerate(samples):
                r = session.segment(s.image)
                truth = s.mask > 0
                pred = r.labels > 0
                rec["dice"].append(dice(pred, truth))
                kinds.setdefault(image_kind(s.image, dataset), []).append(rec["dice"][-1])
                rec["iou"].append(iou(pred, truth))
                base = otsu_foreground(s.image, dataset)
                rec["otsu_dice"].append(dice(base, truth))
                rec["otsu_iou"].append(iou(base, truth))
                wrong = pred != truth
                rec["auc_unc"].append(roc_auc(r.uncertainty, wrong))
                rec["auc_ent"].append(roc_auc(r.entropy, wrong))
                pick = rng.choice(wrong.size, size=min(wrong.size, 20000), replace=False)
                pooled_unc.append(r.uncertainty.ravel()[pick])
                pooled_ent.append(r.entropy.ravel()[pick])
                pooled_wrong.append(wrong.ravel()[pick])
                for name, other in others:
                    compared[name].append(dice(other.segment(s.image).labels > 0, truth))
                if (i + 1) % 50 == 0:
                    print(f"  {model}, {dataset}: {i + 1}/{len(samples)} images ({time.time() - t0:.0f}s)",
                          file=sys.stderr)
            wrong_all = np.concatenate(pooled_wrong)
            # the first set keeps the model's key (as before); the others are "<model>/<dataset>"
            summary[model if n_set == 0 else f"{model}/{dataset}"] = {
                "dataset": dataset, "split": split, "n": len(samples),
                **{k: float(np.nanmean(v)) for k, v in rec.items()},
                "dice_sd": float(np.std(rec["dice"])),
                "auc_unc_pooled": roc_auc(np.concatenate(pooled_unc), wrong_all),
                "auc_ent_pooled": roc_auc(np.concatenate(pooled_ent), wrong_all),
                "seconds": time.time() - t0,
                "dice_by_kind": {k: [float(np.mean(v)), len(v)] for k, v in sorted(kinds.items())},
                "label": label,
                "compared": {name: float(np.mean(v)) for name, v in compared.items()},
            }
    print(f"\nHeld-out quality (T={args.samples} MC samples), {_machine()}\n")
    print("| model | held-out images | Dice (sd) | IoU | Otsu Dice | Otsu IoU | AUROC uncertainty->errors "
          "(pooled / per image) | AUROC softmax entropy (pooled / per image) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in summary.values():
        print(f"| {m['label']} | {m['n']} ({m['dataset']} {m['split']}) | {m['dice']:.3f} ({m['dice_sd']:.3f}) | "
              f"{m['iou']:.3f} | {m['otsu_dice']:.3f} | {m['otsu_iou']:.3f} | {m['auc_unc_pooled']:.3f} / "
              f"{m['auc_unc']:.3f} | {m['auc_ent_pooled']:.3f} / {m['auc_ent']:.3f} |")
        for name, d in m["compared"].items():
            print(f"| {name}, same images | {m['n']} ({m['dataset']}) | {d:.3f} | | | | | |")
    print("\n| model | images | kind of image | images | Dice |\n|---|---|---|---|---|")
    for m in summary.values():
        for kind, (d, n) in m["dice_by_kind"].items():
            print(f"| {m['label']} | {m['dataset']} | {kind} | {n} | {d:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


# -- bright outliers --------------------------------------------------------------------------------

OUTLIER_SEED = 19
OUTLIER_NUCLEI = 3       # nuclei made brighter per image
OUTLIER_FACTOR = 10.0    # ... by this factor
OUTLIER_DILATE = 3       # px around them left out of the score
OUTLIER_MIN_NUCLEI = 10  # images with fewer nuclei are skipped


def brighten_nuclei(image_id: str, image: np.ndarray, instances: np.ndarray):
    """The bright-outlier protocol on one grey image: :data:`OUTLIER_NUCLEI` nuclei of middling size (area between
    the 25th and 75th percentile; drawn with a seed fixed per image id) multiplied by :data:`OUTLIER_FACTOR` in
    float32. Returns ``(brightened image, chosen ids, pixels left out of the score)`` (the chosen nuclei dilated by
    :data:`OUTLIER_DILATE` px), or None for an image with fewer than :data:`OUTLIER_MIN_NUCLEI` nuclei."""
    import zlib

    from scipy import ndimage as ndi

    ids, areas = np.unique(instances[instances > 0], return_counts=True)
    if len(ids) < OUTLIER_MIN_NUCLEI:
        return None
    q1, q3 = np.percentile(areas, [25, 75])
    middling = ids[(areas >= q1) & (areas <= q3)]
    rng = np.random.default_rng([OUTLIER_SEED, zlib.crc32(image_id.encode())])
    chosen = rng.choice(middling, size=min(OUTLIER_NUCLEI, len(middling)), replace=False)
    inside = np.isin(instances, chosen)
    out = image.astype(np.float32)
    out[inside] *= OUTLIER_FACTOR
    return out, chosen, ndi.binary_dilation(inside, iterations=OUTLIER_DILATE)


def _heldout_present(data, dataset: str, grey_only: bool = True):
    """The held-out images of ``dataset`` (dsb2018: the pool; bbbc039: its held-out half) that the data folder
    holds, read one at a time as ``(id, grey image, instance labels)``; dsb2018: grey fluorescence images only
    (``grey_only=False``: every one, as stored). Also the number of held-out images the folder lacks."""
    from skimage.io import imread

    from ..data import (
        _check_root,
        _load_instance_dataset,
        _read_rgb,
        bbbc039_split,
        default_data_root,
        dsb2018_split,
        image_kind,
    )

    root = Path(data) if data else default_data_root()
    ids = dsb2018_split()["pool"] if dataset == "dsb2018" else bbbc039_split()["heldout"]
    present = {p.stem for p in (_check_root(root, dataset) / "images").glob("*.png")}

    def read():
        for i in ids:
            if i not in present:
                continue
            s = _load_instance_dataset(root, dataset, {"one": [i]}, "one", None,
                                       _read_rgb if dataset == "dsb2018" else imread)[0]
            if dataset == "bbbc039" or not grey_only:
                yield s.id, s.image, s.instances
            elif image_kind(s.image, dataset) == "fluorescence (grey, dark)":
                yield s.id, s.image[..., 0], s.instances
    return read(), sum(i not in present for i in ids)


def outliers(args) -> int:
    """Robustness to a few very bright nuclei: Dice outside them, unmodified vs brightened, beside Otsu."""
    from ..metrics import dice
    from ..session import ClisSession

    sets = {"dsb2018 grey fluorescence": ("dsb2018", *_heldout_present(args.data, "dsb2018")),
            "bbbc039": ("bbbc039", *_heldout_present(args.data, "bbbc039"))}
    if args.checkpoint:
        session = ClisSession.from_checkpoint(args.checkpoint, device="cpu", n_samples=args.samples)
    else:
        session = ClisSession.from_pretrained(args.model, device="cpu", n_samples=args.samples)
    label = f"{args.model} ({Path(args.checkpoint).name})" if args.checkpoint else args.model
    summary = {}
    for set_name, (dataset, images, missing) in sets.items():
        rows = []
        t0 = time.time()
        for image_id, image, instances in images:
            if args.limit is not None and len(rows) >= args.limit:
                break
            drawn = brighten_nuclei(image_id, image, instances)
            if drawn is None:
                continue
            brightened, chosen, left_out = drawn
            keep, truth = ~left_out, instances > 0
            row = {"id": image_id, "brightened": [int(c) for c in chosen]}
            for method, run in (("clis", lambda im: session.segment(im).labels > 0),
                                ("otsu", lambda im, dataset=dataset: otsu_foreground(im, dataset))):
                row[f"{method}_unmodified"] = dice(run(image) & keep, truth & keep)
                row[f"{method}_x10"] = dice(run(brightened) & keep, truth & keep)
            rows.append(row)
            if len(rows) % 20 == 0:
                print(f"  {set_name}: {len(rows)} images ({time.time() - t0:.0f}s)", file=sys.stderr)
        summary[set_name] = {"label": label, "n": len(rows), "missing": missing, "rows": rows, **{
            f"{m}_{k}": float(np.mean([r[f"{m}_{k}"] for r in rows])) if rows else float("nan")
            for m in ("clis", "otsu") for k in ("unmodified", "x10")}}
        for m in ("clis", "otsu"):
            drops = [r[f"{m}_unmodified"] - r[f"{m}_x10"] for r in rows]
            summary[set_name][f"{m}_drop_mean"] = float(np.mean(drops)) if rows else float("nan")
            summary[set_name][f"{m}_drop_worst"] = float(np.max(drops)) if rows else float("nan")
    print(f"\nBright outliers: in each held-out image with at least {OUTLIER_MIN_NUCLEI} nuclei, {OUTLIER_NUCLEI} "
          f"nuclei of middling size made {OUTLIER_FACTOR:g} times brighter; Dice against the truth outside them "
          f"(dilated by {OUTLIER_DILATE} px), T={args.samples} MC samples, {_machine()}")
    for set_name, m in summary.items():
        lacking = f" ({m['missing']} held-out images not in the data folder)" if m["missing"] else ""
        print(f"\n{set_name}{lacking}\n\n| model | images | Dice unmodified | Dice x{OUTLIER_FACTOR:g} | "
              f"drop mean / worst | Otsu Dice unmodified | Otsu Dice x{OUTLIER_FACTOR:g} | Otsu drop mean / worst |\n"
              "|---|---|---|---|---|---|---|---|")
        print(f"| {m['label']} | {m['n']} | {m['clis_unmodified']:.3f} | {m['clis_x10']:.3f} | "
              f"{m['clis_drop_mean']:.3f} / {m['clis_drop_worst']:.3f} | {m['otsu_unmodified']:.3f} | "
              f"{m['otsu_x10']:.3f} | {m['otsu_drop_mean']:.3f} / {m['otsu_drop_worst']:.3f} |")
    if args.json:
        from ..checkpoint import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(summary, indent=1).encode())
    return 0


# -- interactive ------------------------------------------------------------------------------------

INSTANCE_METHODS = {"cc": "connected components of the segmentation",
                    "watershed": "watershed on the network's output",
                    "head": "the instance head (watershed on its distance map)",
                    "otsu": "Otsu + the same watershed (classical peer)",
                    "ceiling": "ceiling: the segmentation split by the true objects"}


def _ceiling_split(foreground: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """What splitting alone could reach: the foreground split by the true objects (each foreground pixel joins the
    true object it is connected to and nearest, through the foreground); a piece touching none is one object."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    seeds = np.where(foreground & (truth > 0), truth, 0).astype(np.int64)
    out = watershed(np.zeros(foreground.shape, np.uint8), seeds, mask=foreground) if seeds.any() else seeds
    rest, _ = ndi.label(foreground & (out == 0))
    return np.where(rest > 0, rest + out.max(), out)


def instances_bench(args) -> int:
    """Instance quality of the nuclei model on held-out images: AP@0.5, the DSB 2018 mAP over IoU 0.5:0.9 and
    0.5:0.95, and panoptic quality, beside connected components, a watershed on Otsu's mask and the ceiling; also
    on the H&E tiles of ``he_nuclei`` (never trained on) where the data folder holds them."""
    from scipy import ndimage as ndi

    from ..instances import foreground_probability, instances_from_probabilities, watershed_instances
    from ..metrics import average_precision, panoptic_quality
    from ..session import ClisSession

    session = (ClisSession.from_checkpoint(args.checkpoint, device="cpu", n_samples=args.samples) if args.checkpoint
               else ClisSession.from_pretrained("nuclei", device="cpu", n_samples=args.samples))
    has_head = session.net.distance_head is not None
    methods = {m: label for m, label in INSTANCE_METHODS.items() if m != "head" or has_head}
    thresholds = np.round(np.arange(0.5, 0.951, 0.05), 2)
    summary = {}
    sets = ["dsb2018", "bbbc039"]
    root = Path(args.data) if args.data else None
    if root is None:
        from ..data import default_data_root
        root = default_data_root()
    if (root / "he_nuclei").is_dir():
        sets.append("he_nuclei")
    for dataset in sets:
        if dataset == "he_nuclei":  # a new lab's H&E tiles: every one (none was trained on), by its instance mask
            images = ((smp.id, smp.image, smp.instances) for smp in _domain_folder(root, dataset)
                      if smp.instances is not None)
            missing = 0
        else:
            images, missing = _heldout_present(args.data, dataset, grey_only=False)
        scores = {m: [] for m in methods}
        nuclei, t0 = 0, time.time()
        for _, image, truth in images:
            if args.limit is not None and len(scores["cc"]) >= args.limit:
                break
            r = session.segment(image)
            fg = r.labels > 0
            grey = image if image.ndim == 2 else image[..., :3]
            prob = foreground_probability(r.probabilities)
            made = {"cc": ndi.label(fg)[0], "watershed": instances_from_probabilities(prob, r.labels),
                    "otsu": watershed_instances(otsu_foreground(grey, "dsb2018")),
                    "ceiling": _ceiling_split(fg, truth)}
            if "head" in methods:
                made["head"] = instances_from_probabilities(prob, r.labels, distance=r.distance)
            for m, pred in made.items():
                ap = average_precision(pred, truth, thresholds)
                scores[m].append((float(ap[0]), float(ap[:9].mean()), float(ap.mean()),
                                  panoptic_quality(pred, truth)))
            nuclei += int(len(np.unique(truth)) - 1)
            if len(scores["cc"]) % 50 == 0:
                print(f"  {dataset}: {len(scores['cc'])} images ({time.time() - t0:.0f}s)", file=sys.stderr)
        n = len(scores["cc"])
        summary[dataset] = {"images": n, "nuclei": nuclei, "missing": missing, **{
            m: dict(zip(("ap50", "map50_90", "map50_95", "pq"),
                        (float(v) for v in np.mean(scores[m], 0)) if n else [float("nan")] * 4))
            for m in methods}}
    which = args.checkpoint or "the shipped nuclei model"
    print(f"\nInstance quality of {which} on held-out images (T={args.samples} MC samples), {_machine()}\n")
    print("| images | method | AP@0.5 | mAP 0.5:0.9 | mAP 0.5:0.95 | PQ |")
    print("|---|---|---|---|---|---|")
    for dataset, res in summary.items():
        kind = "never trained on" if dataset == "he_nuclei" else "held-out"
        first = f"`{dataset}` {kind} ({res['images']} images, {res['nuclei']} nuclei)"
        for k, (m, label) in enumerate(methods.items()):
            v = res[m]
            print(f"| {first if k == 0 else ''} | {label} | {v['ap50']:.3f} | {v['map50_90']:.3f} | "
                  f"{v['map50_95']:.3f} | {v['pq']:.3f} |")
        if res["missing"]:
            print(f"\n({res['missing']} held-out {dataset} images are not in the data folder.)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


def _pick(samples, n: int | None, seed: int = 0):
    if n is None or n >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False))
    return [samples[i] for i in idx]


def interactive(args) -> int:
    """NoC@85/90 and IoU after k clicks for CLIS and two classical peers, both simulated-user protocols."""
    from ..data import load_dataset
    from ..session import ClisSession
    from .simulated_user import (
        ClisMethod,
        PixelClassifierPeer,
        RandomWalkerPeer,
        noc,
        region_oracle,
        run_clicks,
        run_protocol,
    )

    models = ["nuclei", "skin-lesion"] if args.model == "all" else [args.model]
    protocols = args.protocols.split(",")
    peers = {"rw": RandomWalkerPeer, "rf": PixelClassifierPeer}
    chosen_peers = [p for p in args.peers.split(",") if p]
    rows, detail, oracles = [], {}, {}
    far: dict[tuple[str, str, str], list[float]] = {}  # (dataset, protocol, method) -> per click share beyond 40 px
    aps: dict[tuple[str, str, str], list[tuple[float, float]]] = {}  # -> (AP@0.5 before, after) per image
    for model in models:
        dataset = "dsb2018" if model == "nuclei" else "isic2017"
        samples = _pick(load_dataset(model, args.part, args.data), args.images, args.seed)
        session = ClisSession.from_pretrained(model, device="cpu", n_samples=args.samples)
        if args.smoothness is not None:
            session.smoothness = args.smoothness
        if args.superpixel_size is not None:
            session.superpixel_size = args.superpixel_size
        if args.calibration is not None:
            session.calibration = _none_if_negative(args.calibration)  # negative: no calibration
        if args.locality is not None:
            session.locality = _none_if_negative(args.locality)  # negative: over the whole image
        curves: dict[tuple[str, str], list[list[float]]] = {}
        t0 = time.time()
        for i, s in enumerate(samples):
            session.segment(s.image)
            inter = session.interaction
            inter.refine = not args.no_refine
            truth = (s.mask > 0).astype(np.int32) if session.n_classes == 2 else s.mask
            oracles.setdefault(dataset, []).append(region_oracle(inter, (truth > 0).astype(np.int32)))
            methods = [ClisMethod(inter)]
            for p in chosen_peers:
                methods.append(peers[p](s.image, inter))
            for protocol in protocols:
                for m in methods:
                    if protocol == "click" and isinstance(m, ClisMethod):
                        continue  # region clicks run below, with their locality
                    res = run_protocol(m, inter, truth, protocol, max_clicks=args.max_clicks)
                    curves.setdefault((protocol, m.name), []).append(res.ious)
            # the click protocol with CLIS's clicks: today's region clicks and, for models with many objects per
            # class, object clicks (the standard protocol, and the object protocol that also splits and merges)
            runs = [("click", "region", "click")] if "click" in protocols else []
            if session.object_clicks and "click" in protocols:
                runs += [("click", "object", "click")] + ([("object", "object", "object")]
                                                          if s.instances is not None else [])
            for label, mode, protocol in runs:
                res = run_clicks(inter, truth, protocol, mode=mode, truth_instances=s.instances,
                                 max_clicks=args.max_clicks)
                name = ClisMethod.name if mode == "region" else "CLIS object clicks"
                curves.setdefault((label, name), []).append(res.ious)
                far.setdefault((dataset, label, name), []).extend(res.far)
                if res.ap:
                    aps.setdefault((dataset, label, name), []).append((res.ap[0], res.ap[-1]))
            inter.mode = "object" if session.object_clicks else "region"
            print(f"  {model}: {i + 1}/{len(samples)} images ({time.time() - t0:.0f}s)", file=sys.stderr)
        for (protocol, name), ious in curves.items():
            row = {
                "dataset": dataset, "part": args.part, "protocol": protocol, "method": name, "images": len(ious),
                "noc85": float(np.mean([noc(v, 0.85, args.max_clicks) for v in ious])),
                "noc90": float(np.mean([noc(v, 0.90, args.max_clicks) for v in ious])),
                "fail90": float(np.mean([max(v) < 0.90 for v in ious])),
            }
            for k in (0, 1, 3, 5):
                row[f"iou@{k}"] = float(np.mean([v[min(k, len(v) - 1)] for v in ious]))
            rows.append(row)
        detail[model] = {f"{p} | {n}": v for (p, n), v in curves.items()}
    print(f"\nInteractive segmentation, simulated user ({args.part} images, at most {args.max_clicks} clicks), "
          f"{_machine()}\n")
    print("| dataset | protocol | method | images | NoC@85 | NoC@90 | not at 90% | IoU @0 | @1 | @3 | @5 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['protocol']} | {r['method']} | {r['images']} | {r['noc85']:.2f} | "
              f"{r['noc90']:.2f} | {100 * r['fail90']:.0f}% | {r['iou@0']:.3f} | {r['iou@1']:.3f} | "
              f"{r['iou@3']:.3f} | {r['iou@5']:.3f} |")
    print("\n| dataset | protocol | NoC@85 ours / best peer | NoC@90 ours / best peer |\n|---|---|---|---|")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for protocol in protocols:
            sel = [r for r in rows if r["dataset"] == dataset and r["protocol"] == protocol]
            ours = [r for r in sel if r["method"].startswith("CLIS")]
            others = [r for r in sel if not r["method"].startswith("CLIS")]
            if ours and others:
                cells = []
                for key in ("noc85", "noc90"):
                    best = min(r[key] for r in others)
                    cells.append(f"{ours[0][key]:.2f} / {best:.2f} = {ours[0][key] / best:.2f}" if best > 0 else "n/a")
                print(f"| {dataset} | {protocol} | {cells[0]} | {cells[1]} |")
    if far:
        print("\nLocality of CLIS's clicks: the share of a click's changed pixels more than 40 px from it (per click, "
              "clicks that changed nothing left out); instance AP@0.5 before the first and after the last click\n")
        print("| dataset | protocol | method | clicks | far share median | mean | AP@0.5 start | end |\n"
              "|---|---|---|---|---|---|---|---|")
        for (dataset, protocol, name), v in far.items():
            ap = np.asarray(aps.get((dataset, protocol, name), [(np.nan, np.nan)]))
            print(f"| {dataset} | {protocol} | {name} | {len(v)} | {np.median(v) if v else float('nan'):.3f} | "
                  f"{np.mean(v) if v else float('nan'):.3f} | {ap[:, 0].mean():.3f} | {ap[:, 1].mean():.3f} |")
    print("\nRegion oracle (every region given its true majority class: the ceiling of whole-region annotation)\n")
    print("| dataset | images | oracle IoU | oracle below 0.85 | oracle below 0.90 |\n|---|---|---|---|---|")
    for dataset, v in oracles.items():
        v = np.asarray(v)
        print(f"| {dataset} | {len(v)} | {v.mean():.3f} | {100 * np.mean(v < 0.85):.0f}% | "
              f"{100 * np.mean(v < 0.90):.0f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "curves": detail,
                                               "far": {" | ".join(k): v for k, v in far.items()},
                                               "ap": {" | ".join(k): v for k, v in aps.items()},
                                               "region_oracle": {d: list(map(float, v)) for d, v in oracles.items()}},
                                              indent=1))
    return 0


def clicks(args) -> int:
    """Latency of one click (click -> updated labels and instances) beside a full re-segmentation of the same image,
    with region clicks and, for models with many objects per class, object clicks; the first object click makes the
    network's objects (segment() leaves them to be made when first needed), so it is shown on its own."""
    from ..interactive import build_region_graph
    from ..preprocessing import normalize_image
    from ..session import ClisSession

    session = ClisSession.from_pretrained(args.model, device="cpu", n_samples=args.samples)
    rng = np.random.default_rng(0)
    print(f"\nClick latency (click -> labels and instances), {_machine()}\n")
    print("| image | clicks | regions | segment() s | region graph ms (part of segment) | objects made ms (once, when "
          "first needed) | click ms, median | p90 | median / segment() |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in [int(v) for v in args.sizes.split(",")]:
        img = _speed_image(size, args.data)
        t = time.perf_counter()
        r = session.segment(img)
        seg = time.perf_counter() - t
        norm = normalize_image(img)
        t = time.perf_counter()
        build_region_graph(r.superpixels, r.probabilities, r.uncertainty, norm)
        build = time.perf_counter() - t
        t = time.perf_counter()
        _ = r.instances  # segment() leaves them to the first use (an object click, the instances layer)
        made = time.perf_counter() - t
        modes = ["region"] + (["object"] if session.object_clicks else [])
        for mode in modes:
            session.interaction.clear_clicks()
            session.click_mode = mode
            times = []
            for _ in range(args.clicks):  # corrections: each click contradicts the network where it falls
                y, x = int(rng.integers(size)), int(rng.integers(size))
                lab = int(1 - min(1, r.labels[y, x]))
                t = time.perf_counter()
                session.click(y, x, lab)
                _ = session.labels, session.instances  # instances included
                times.append(time.perf_counter() - t)
            med = float(np.median(times))
            print(f"| {size}x{size} | {mode} | {session.interaction.graph.n} | {seg:.2f} | {1000 * build:.0f} | "
                  f"{1000 * made:.0f} | {1000 * med:.1f} | {1000 * np.percentile(times, 90):.1f} | {med / seg:.3f} |")
    return 0


def learn_speed(args) -> int:
    """Time of ``learn()`` for one image, beside ``segment()`` of the same image in the same run.

    The process's first ``learn()`` also pays PyTorch's one-off start-up (its first backward pass): it is timed
    apart, on a 128 px image, so that the rows compare like with like; each row is the median of ``--repeats``
    learns, each on a fresh session that segmented the image (the user accepts it as it is)."""
    from ..session import ClisSession, LearnRejected

    modes = [m.strip() for m in args.adapt.split(",")]
    for m in modes:
        if m not in ("auto", "always", "never"):
            raise SystemExit(f"--adapt takes auto, always or never (comma-separated), got {m!r}")

    def one(size, adapt):
        session = ClisSession.from_pretrained(args.model, device="cpu", n_samples=args.samples)
        session.learn_settings.steps = args.steps
        session.learn_settings.adapt = adapt
        img = _speed_image(size, args.data)
        t = time.perf_counter()
        session.segment(img)
        seg = time.perf_counter() - t
        t = time.perf_counter()
        try:
            rec = session.learn()
            adapted = " (adapted)" if rec.task in session.net.adapted_tasks() else ""
            outcome, kernels = f"{rec.dice_before:.3f} -> {rec.dice_after:.3f}{adapted}", str(rec.kernels_new)
        except LearnRejected as e:  # the reason: the message's first sentence
            outcome, kernels = "rolled back: " + str(e).split(". ")[0].removeprefix("Learning was rolled back: "), "-"
        return seg, time.perf_counter() - t, outcome, kernels

    print(f"\nLearning speed ({args.steps} steps, median of {args.repeats}), {_machine()}\n")
    first = one(128, modes[0])[1]
    print(f"The process's first learn() (128x128, PyTorch's start-up included): {first:.1f} s\n")
    print("| image | adapt | segment() s | learn() s | learn / segment | Dice before -> after (its own labels) | "
          "new kernels |")
    print("|---|---|---|---|---|---|---|")
    for size in [int(v) for v in args.sizes.split(",")]:
        for adapt in modes:
            runs = [one(size, adapt) for _ in range(max(1, args.repeats))]
            seg, dt = float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs]))
            print(f"| {size}x{size} | {adapt} | {seg:.2f} | {dt:.1f} | {dt / seg:.1f} | {runs[-1][2]} | "
                  f"{runs[-1][3]} |")
    return 0


CONTINUAL_NAMES = {"clis": "CLIS (ours)", "none": "no update (pretrained)", "finetune": "plain fine-tuning",
                   "lwf": "LwF", "ewc": "EWC", "packnet": "PackNet",
                   "rf": "pixel classifier (RF) on the corrected images",
                   "rf-truth": "pixel classifier (RF) on the true masks"}
# the ilastik-style peers of the domain-shift protocol: trained on the learned images, measured on the unseen ones
DOMAIN_PEERS = ("rf", "rf-truth")
CONTINUAL_METHODS = "clis,none,finetune,lwf,ewc,packnet"


def _baseline(method: str, session, settings, args, model: str, packnet_cache: dict):
    """The learner of a baseline method, built on the session's pretrained network (None: CLIS or no update)."""
    from ..data import load_dataset
    from ..preprocessing import normalize_image
    from .baselines import make_learner

    if method in ("clis", "none"):
        return None
    kwargs = {}
    if method == "ewc":
        kwargs["strength"] = args.ewc_strength
    if method == "packnet":  # pruning and retraining the pretrained model is the same for every sequence: once
        if model not in packnet_cache:
            samples = _pick(load_dataset(model, "pretrain", args.data), args.packnet_images, seed=0)
            pretrain = [session._working(normalize_image(smp.image), (smp.mask > 0).astype(np.int32))
                        for smp in samples]
            packnet_cache[model] = make_learner(method, session.net, settings, pretrain=pretrain,
                                                prune=args.packnet_prune, retrain_steps=args.packnet_retrain)
        return copy.deepcopy(packnet_cache[model])
    return make_learner(method, session.net, settings, **kwargs)


def _mask_usage_figure(histories: dict, path: str) -> None:
    """Per-kernel mask usage across tasks, one panel per dataset: which kernels each CLIS task switches on,
    coloured by the task that first used them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    fig, axes = plt.subplots(len(histories), 1, figsize=(12, 1.2 + 1.3 * len(histories) * 2), squeeze=False)
    for ax, (dataset, (gates, layers)) in zip(axes[:, 0], histories.items()):
        first = np.where(gates.any(0), gates.argmax(0), -1)  # the task that first switched each kernel on
        img = np.where(gates, first[None, :] + 1, 0)
        n = gates.shape[0]
        cmap = ListedColormap(["#f4f4f4"] + [plt.cm.viridis(v) for v in np.linspace(0, 0.95, n)])
        ax.imshow(img, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=n + 0.5)
        edges = np.cumsum([k for _, k in layers])[:-1]
        for e in edges:
            ax.axvline(e - 0.5, color="k", lw=0.5)
        ax.set_xticks([e - k / 2 for e, (_, k) in zip(np.cumsum([k for _, k in layers]), layers)])
        ax.set_xticklabels([name.replace(".conv", "c") for name, _ in layers], fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(["0 (pretrained)"] + [str(t) for t in range(1, n)], fontsize=7)
        ax.set_ylabel("task")
        ax.set_title(f"{dataset}: kernels each task switches on (colour: the task that first used the kernel; "
                     "grey: off)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- memory over repeated cycles --------------------------------------------------------------------

MEMORY_CHECKPOINTS = (1, 10, 25, 50)
# Allowed RSS growth from cycle 10 to the last, net of the per-task state. Once the allocator has reached its
# working set (by cycle 10), RSS still moves by some MB with the images' sizes; a leak of one cycle's result at
# 256 px (maps, superpixels, region graph: about 1.5 MB) would add 60 MB over 40 cycles, and one network per
# cycle (2 MB) 80 MB, so 50 MB separates a leak from the noise.
MEMORY_MARGIN_MB = 50.0


def _live_tensor_bytes() -> int:
    """Bytes of the torch storages that Python objects reach, each storage counted once."""
    import gc
    import warnings

    import torch

    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance() on some of torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor):
                try:
                    storage = obj.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
    return total


def _memory_samples(model: str, data: str | None, size: int, n: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``n`` real images, centre crops of at most ``size`` px, with their ground truth: held-out images of the
    model's dataset; without the data, crops of the speed benchmark's image (no ground truth: clicks then
    contradict the network)."""
    from ..data import load_dataset

    def crop(a):
        y0, x0 = max(0, (a.shape[0] - size) // 2), max(0, (a.shape[1] - size) // 2)
        return np.ascontiguousarray(a[y0:y0 + size, x0:x0 + size])

    try:
        return [(crop(s.image), crop((s.mask > 0).astype(np.int32))) for s in load_dataset(model, "heldout", data,
                                                                                            limit=n)]
    except FileNotFoundError:
        base = _speed_image(2 * size, data)
        return [(base[o:o + size, o:o + size], None) for o in np.linspace(0, size, n).astype(int)]


def _task_bytes(net) -> int:
    """Bytes the network keeps per task: the gate logits of tasks 1, 2, ... and the adapted tasks' own parts."""
    total = 0
    for conv in net.masked_convs().values():
        total += sum(t.numel() * t.element_size() for t in list(conv.gates.logits)[1:])
        for own in (conv.task_norms, conv.adapters):
            total += sum(t.numel() * t.element_size() for m in own.values() for t in m.state_dict().values())
    return total


def memory_cycles(session, samples, cycles: int, *, clicks: int = 3, at=MEMORY_CHECKPOINTS,
                  seed: int = 0) -> list[dict]:
    """Run ``cycles`` cycles of segment, a few clicks and learn on ``samples`` (image, truth or None), in turn.

    Returns one record before the first cycle (``cycle`` 0) and one after each cycle in ``at``: RSS (MB), the
    bytes of live torch tensors, the traced Python and numpy heap (bytes, when ``tracemalloc`` is tracing), the
    counts of learned tasks, rolled-back and skipped learn steps, and what the learned tasks keep in the network
    (``task_bytes``: every task's gate logits and the adapted tasks' own BatchNorms and adapters; ``adapted``:
    how many tasks have those). The garbage collector runs before each.
    """
    import gc
    import tracemalloc

    from ..interactive import InteractionError
    from ..session import LearnRejected
    from .simulated_user import next_click

    rng = np.random.default_rng(seed)
    counts = {"learned": 0, "rolled_back": 0, "skipped": 0}

    def record(cycle):
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        return {"cycle": cycle, "rss_mb": _rss_mb(), "tensor_bytes": _live_tensor_bytes(), "heap_bytes": heap,
                "tasks": len(session.tasks), "task_bytes": _task_bytes(session.net),
                "adapted": len(session.net.adapted_tasks()), **counts}

    out = [record(0)]
    for cycle in range(1, cycles + 1):
        image, truth = samples[(cycle - 1) % len(samples)]
        session.segment(image)
        for _ in range(clicks):
            if truth is not None:  # the simulated user: the largest error, corrected
                click = next_click(session.labels, truth)
                if click is None:
                    break
            else:
                y, x = int(rng.integers(image.shape[0])), int(rng.integers(image.shape[1]))
                click = (y, x, 1 - int(session.labels[y, x]))
            session.click(*click)
        try:
            session.learn()
            counts["learned"] += 1
        except LearnRejected:
            counts["rolled_back"] += 1
        except InteractionError:  # nothing in the segmentation to learn from
            counts["skipped"] += 1
        if cycle in at:
            out.append(record(cycle))
    return out


def _per_task_bytes(session) -> tuple[int, int, int]:
    """What one more learned task keeps: the bytes of its gate logits (torch), of their Python objects (traced
    while adding 100 tasks to a copy of the network), and of a task record (fingerprint, clicks, kernel counts;
    traced on 100 copies) with its painted annotation, if any."""
    import copy
    import tracemalloc

    gates = sum(conv.gates.logits[0].numel() * conv.gates.logits[0].element_size()
                for conv in session.net.masked_convs().values())
    net = copy.deepcopy(session.net)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    for _ in range(100):
        net.add_task()
    objects = (tracemalloc.get_traced_memory()[0] - t0) // 100
    record = 0
    if session.tasks:
        t0 = tracemalloc.get_traced_memory()[0]
        copies = [copy.deepcopy(session.tasks[-1]) for _ in range(100)]
        record = (tracemalloc.get_traced_memory()[0] - t0) // len(copies)
        record += int(np.mean([a.nbytes for a in session.annotations.values()])) if session.annotations else 0
    if started:
        tracemalloc.stop()
    return gates, objects, record


def memory(args) -> int:
    """RSS over repeated segment / click / learn cycles, against a margin net of the per-task state."""
    import tracemalloc

    from ..session import ClisSession

    _check_memory_measures("memory")
    session = ClisSession.from_pretrained(args.model, device="cpu", n_samples=args.samples)
    session.learn_settings.steps = args.steps
    samples = _memory_samples(args.model, args.data, args.size, args.images)
    at = sorted({c for c in MEMORY_CHECKPOINTS if c <= args.cycles} | {args.cycles})
    tracemalloc.start()
    t0 = time.time()
    rows = memory_cycles(session, samples, args.cycles, clicks=args.clicks, at=at)
    tracemalloc.stop()
    seconds = time.time() - t0
    gates, per_objects, per_record = _per_task_bytes(session)
    with_truth = samples[0][1] is not None
    print(f"\nMemory over {args.cycles} cycles ({args.model} model, {len(samples)} "
          f"{'held-out images with their ground truth' if with_truth else 'crops of one image'}, at most "
          f"{args.size} px, T={args.samples}; per cycle: segment(), {args.clicks} clicks "
          f"{'of the simulated user' if with_truth else 'against the network'}, learn() with {args.steps} steps; "
          f"{seconds / 60:.1f} min), {_machine()}\n")
    print("| after | RSS (MB) | live torch tensors (MB) | Python + numpy heap (MB) | tasks learned | rolled back | "
          "skipped |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = "start (model loaded)" if r["cycle"] == 0 else f"cycle {r['cycle']}"
        print(f"| {name} | {r['rss_mb']:.1f} | {r['tensor_bytes'] / 2**20:.2f} | {r['heap_bytes'] / 2**20:.2f} | "
              f"{r['learned']} | {r['rolled_back']} | {r['skipped']} |")
    base = next((r for r in rows if r["cycle"] == 10), rows[1] if len(rows) > 1 else rows[0])
    last = rows[-1]
    new_tasks = last["tasks"] - base["tasks"]
    per_task = gates + per_objects + per_record
    growth = last["rss_mb"] - base["rss_mb"]
    net = growth - new_tasks * per_task / 2**20
    verdict = "within" if net <= args.margin else "OVER"
    print(f"\nFrom cycle {base['cycle']} to {last['cycle']}: RSS {growth:+.1f} MB, live torch tensors "
          f"{(last['tensor_bytes'] - base['tensor_bytes']) / 2**10:+.1f} KB, Python + numpy heap "
          f"{(last['heap_bytes'] - base['heap_bytes']) / 2**10:+.1f} KB, for {new_tasks} new tasks. One task keeps "
          f"{per_task / 2**10:.1f} KB: {gates} B of gate logits, {per_objects / 2**10:.1f} KB of their Python objects, "
          f"{per_record / 2**10:.1f} KB of task record; {new_tasks * per_task / 2**20:.2f} MB for the new tasks. "
          f"Growth net of them: **{net:+.1f} MB**, {verdict} the margin of {args.margin:.0f} MB.")
    return 0 if net <= args.margin else 1


def continual(args) -> int:
    """The paper's transfer protocol: CLIS beside no update, fine-tuning, LwF, EWC and PackNet; with ``--domain``,
    the domain-shift protocol on a folder of images the model was not trained on (``_draw_domain``)."""
    import torch

    from ..data import load_dataset
    from ..interactive import DEFAULT_LOCALITY

    if args.merge:
        return _merge_continual(args)
    if args.locality is None:  # recorded as run, so that parts run with other reaches are not merged
        args.locality = DEFAULT_LOCALITY
    if args.methods is None:
        args.methods = CONTINUAL_METHODS + ("," + ",".join(DOMAIN_PEERS) if args.domain else "")
    methods = args.methods.split(",")
    unknown = set(methods) - set(CONTINUAL_NAMES)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {sorted(CONTINUAL_NAMES)}")
    peers = [m for m in methods if m in DOMAIN_PEERS]
    if peers and not args.domain:
        raise SystemExit(f"{', '.join(peers)}: the pixel-classifier peers belong to the domain-shift protocol "
                         "(--domain FOLDER)")
    if "rf" in peers and "clis" not in methods:
        raise SystemExit("rf learns from the images as CLIS's simulated user corrected them: run it with clis "
                         "(--methods clis,rf,...)")
    methods = [m for m in methods if m not in DOMAIN_PEERS] + peers  # the peers after CLIS, whose corrections rf uses
    if args.domain:
        if args.model == "skin-lesion":
            raise SystemExit("the domain-shift folders hold nuclei: use --model nuclei with --domain")
        models = ["nuclei"]
    else:
        models = ["nuclei", "skin-lesion"] if args.model == "all" else [args.model]
    measures = ("basic", "forward", "backward")
    rows, histories, seconds, learns, splits = [], {}, {m: 0.0 for m in methods}, [], {}
    packnet_cache = {}  # pruning and retraining the pretrained model, once per model
    for model in models:
        if args.domain:
            dataset, pool = args.domain, _domain_folder(args.data, args.domain)
        else:
            dataset = "dsb2018" if model == "nuclei" else "isic2017"
            pool = load_dataset(model, args.part, args.data)
        per = {m: {k: {"dice": [], "iou": []} for k in (("forward",) if m in DOMAIN_PEERS else measures)}
               for m in methods}
        t0 = time.time()
        for q in range(args.first_sequence, args.first_sequence + args.sequences):
            if args.domain:
                learned, unseen = _draw_domain(len(pool), q, args.tasks, args.unseen)
                seq, unseen = [pool[i] for i in learned], [pool[i] for i in unseen]
                splits[q] = {"learned": [smp.id for smp in seq], "unseen": [smp.id for smp in unseen]}
            else:
                rng = np.random.default_rng(1000 + q)
                seq = [pool[i] for i in rng.choice(len(pool), min(args.tasks, len(pool)), replace=False)]
                unseen = None
            corrected = None
            for method in methods:
                tm = time.time()
                if method in DOMAIN_PEERS:
                    vals = {"forward": _pixel_classifier_run(method, seq, unseen, corrected)}
                else:
                    vals, done, labels, s = _continual_sequence(method, model, seq, unseen, args, packnet_cache)
                    learns.extend({"dataset": dataset, "method": method, "sequence": q, **e} for e in done)
                    if method == "clis":
                        corrected = labels
                    if method == "clis" and q == args.first_sequence:
                        usage = [torch.stack([c.gates.hard(t) for t in range(s.net.n_tasks)]).numpy() > 0
                                 for c in s.net.masked_convs().values()]
                        histories[dataset] = (np.concatenate(usage, 1),
                                              [(n, c.gates.n_kernels) for n, c in s.net.masked_convs().items()])
                for k, v in vals.items():
                    per[method][k]["dice"].append(float(np.mean([x[0] for x in v])))
                    per[method][k]["iou"].append(float(np.mean([x[1] for x in v])))
                seconds[method] += time.time() - tm
            print(f"  {dataset}: sequence {q + 1 - args.first_sequence}/{args.sequences} ({time.time() - t0:.0f}s)",
                  file=sys.stderr)
        for method in methods:
            rows.append((dataset, method, per[method]))
    _print_continual(rows, args, seconds, learns=learns)
    if args.figure and histories:
        _mask_usage_figure(histories, args.figure)
        print(f"\nMask usage figure: {args.figure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [[d, m, r] for d, m, r in rows], "seconds": seconds,
                                               "learns": learns, "splits": splits,
                                               "args": {k: v for k, v in vars(args).items()
                                                        if isinstance(v, (int, float, str, type(None)))}}))
    return 0


def _draw_domain(n: int, sequence: int, tasks: int, unseen: int | None = None) -> tuple[list[int], list[int]]:
    """The domain-shift protocol's split of a folder of ``n`` images for ``sequence``: ``tasks`` images to learn,
    in order, and the unseen ones (the rest of the folder, at most ``unseen`` of them), drawn with seed
    1000 + sequence. The two never share an image."""
    if not 0 < tasks < n:
        raise SystemExit(f"the domain-shift protocol learns --tasks {tasks} images of a folder of {n} and measures "
                         "the rest: the folder needs more images than --tasks (and --tasks at least 1)")
    order = [int(i) for i in np.random.default_rng(1000 + sequence).permutation(n)]
    rest = order[tasks:]
    return order[:tasks], rest if unseen is None else rest[:unseen]


def _domain_folder(root, name: str):
    """The images of ``root/name`` (``images/`` and ``masks/``, paired by file stem) as ``data.Sample`` with the
    foreground (mask > 0) as the mask. Grey images stay grey (16-bit included); colour ones lose alpha."""
    from skimage.io import imread

    from ..data import Sample, _check_root, default_data_root

    folder = _check_root(Path(root) if root else default_data_root(), name)
    kinds = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
    found = {}
    for sub in ("images", "masks"):
        files = sorted(p for p in (folder / sub).glob("*") if p.suffix.lower() in kinds) if (folder / sub).is_dir() \
            else []
        if not files:
            raise ValueError(f"{folder / sub} holds no images (.png, .tif or .jpg): the domain-shift protocol reads "
                             f"{name}/images/ and {name}/masks/ (instance or binary masks, one per image, same name)")
        found[sub] = {p.stem: p for p in files}
    lonely = sorted(set(found["images"]) ^ set(found["masks"]))
    if lonely:
        raise ValueError(f"{folder}: images and masks are paired by file name, and these have no partner: "
                         + ", ".join(lonely[:5]) + (f" and {len(lonely) - 5} more" if len(lonely) > 5 else ""))
    out = []
    for stem, path in found["images"].items():
        image = imread(path)
        if image.ndim == 3:
            image = image[..., :3]
        mask = imread(found["masks"][stem])
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if mask.shape != image.shape[:2]:
            raise ValueError(f"the mask of {path.name} is {mask.shape[1]}x{mask.shape[0]} px, the image "
                             f"{image.shape[1]}x{image.shape[0]}")
        several = len(np.unique(mask[mask > 0])) > 1  # an instance mask: its objects kept for instance measures
        out.append(Sample(stem, np.ascontiguousarray(image), (mask > 0).astype(np.int32),
                          mask.astype(np.int32) if several else None))
    return out


def _continual_sequence(method: str, model: str, seq, unseen, args, packnet_cache: dict):
    """One method through one sequence of ``seq`` samples: each segmented, corrected by the simulated user (2
    iterations of the 16 most uncertain wrong regions), learned.

    Returns (vals, learns, corrected, session): ``vals`` per measure a list of (Dice, IoU) per image: basic (the
    image after the user's corrections), forward (``unseen is None``: the later half of ``seq`` before learning
    them, the paper's; else the ``unseen`` samples after all tasks), backward (each learned image at the end minus
    right after it was learned); ``learns`` one record per learn (rolled back and why, seconds); ``corrected`` the
    corrected foreground of each image, what the method learned from."""
    from ..interactive import InteractionError
    from ..metrics import dice, iou
    from ..session import ClisSession, LearnRejected
    from .simulated_user import ClisMethod, run_protocol

    s = ClisSession.from_pretrained(model, device="cpu", n_samples=args.samples)
    s.learn_settings.steps = args.steps
    s.locality = _none_if_negative(args.locality)
    settings = dataclasses.replace(s.learn_settings, lr=args.baseline_lr or s.learn_settings.lr) \
        if method != "clis" else None
    learner = _baseline(method, s, settings, args, model, packnet_cache)
    vals = {k: [] for k in ("basic", "forward", "backward")}
    then, learns, corrected = [], [], []
    for t, smp in enumerate(seq):
        truth = smp.mask > 0
        if learner is not None:
            s.net = learner.net_for(None)
        s.segment(smp.image)
        if unseen is None and t >= len(seq) // 2:  # unseen image, after at least half the tasks: forward transfer
            vals["forward"].append(_scores(s.result.labels, truth, dice, iou))
        run_protocol(ClisMethod(s.interaction), s.interaction, truth.astype(np.int32), "uncertain",
                     max_clicks=2 * 16, min_clicks=2 * 16, stop_at=2.0)
        vals["basic"].append(_scores(s.labels, truth, dice, iou))
        corrected.append(s.labels > 0)
        entry = {"task": t + 1, "image": smp.id, "rolled_back": False, "reason": None}
        started = time.perf_counter()
        if method == "clis":
            try:
                rec = s.learn()
                entry.update(dice_before=rec.dice_before, dice_after=rec.dice_after,
                             adapted=rec.task in s.net.adapted_tasks())
            except LearnRejected as e:  # counted as it is: the model stays, the image keeps its task
                entry.update(rolled_back=True, reason=str(e))
            except InteractionError as e:  # nothing in the corrected segmentation to learn from
                entry.update(skipped=True, reason=str(e))
        elif learner is not None:
            learner.learn(*s._working(s._normalized, s.labels))
            s.net = learner.net_for(t + 1)
        if method != "none":
            learns.append({**entry, "seconds": time.perf_counter() - started})
        then.append(_scores(s.segment(smp.image).labels, truth, dice, iou))
    for t, smp in enumerate(seq):  # backward transfer: earlier images after all tasks
        if learner is not None:
            s.net = learner.net_for(t + 1)
        now = _scores(s.segment(smp.image).labels, smp.mask > 0, dice, iou)
        vals["backward"].append((now[0] - then[t][0], now[1] - then[t][1]))
    if unseen is not None:  # the folder's other images, after all tasks
        if learner is not None:
            s.net = learner.net_for(None)
        for smp in unseen:
            vals["forward"].append(_scores(s.segment(smp.image).labels, smp.mask > 0, dice, iou))
            if method == "clis":  # which task the task-aware module chose for it, and why
                learns.append({"task": None, "image": smp.id, "unseen": True, "chosen": int(s.task),
                               "agreement": s.task_choice.get("agreement"), "nearest": s.task_choice.get("nearest"),
                               "unfamiliar": s.task_choice.get("unfamiliar"), "dice": vals["forward"][-1][0]})
    return vals, learns, corrected, s


def _pixel_classifier_run(method: str, seq, unseen, corrected) -> list[tuple[float, float]]:
    """The ilastik-style peer: a random forest trained on the learned images, with CLIS's corrected segmentations
    (``rf``) or the true masks (``rf-truth``); (Dice, IoU) of each unseen image."""
    from ..metrics import dice, iou
    from .simulated_user import FolderPixelClassifier

    labels = corrected if method == "rf" else [smp.mask > 0 for smp in seq]
    clf = FolderPixelClassifier(seed=0).fit([smp.image for smp in seq], [lab.astype(np.int32) for lab in labels])
    return [_scores(clf.predict(smp.image), smp.mask > 0, dice, iou) for smp in unseen]


def _merge_continual(args) -> int:
    """Print one table from the JSON files of several runs (parts of one protocol run, ``--first-sequence``, or
    runs of other methods on the same sequences): per dataset and method the sequences of all files together.
    Refuses runs with different settings, and a method's sequence in two files."""
    merged: dict[tuple[str, str], dict] = {}
    settings = None
    seen: dict[tuple[str, str, int], str] = {}  # (dataset, method, sequence) -> file
    learns, splits = [], {}
    for path in args.merge:
        try:
            data = json.loads(Path(path).read_text())
            first, count = int(data["args"].get("first_sequence") or 0), int(data["args"]["sequences"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path} is not the --json file of a bench continual run: {e}") from None
        mine = {k: data["args"].get(k) for k in ("part", "tasks", "steps", "samples", "baseline_lr", "ewc_strength",
                                                  "packnet_prune", "packnet_retrain", "packnet_images",
                                                  "domain", "unseen")}
        # runs from before --locality calibrated over the whole image
        mine["locality"] = -1.0 if data["args"].get("locality") is None else float(data["args"]["locality"])
        if settings is not None and mine != settings:
            raise SystemExit(f"{path} was run with other settings than {args.merge[0]}: {mine} against {settings}")
        settings = mine
        for dataset, method, r in data["rows"]:
            for q in r.get("sequences") or range(first, first + count):
                if (dataset, method, q) in seen:
                    raise SystemExit(f"sequence {q} of {CONTINUAL_NAMES.get(method, method)} on {dataset} is in both "
                                     f"{seen[dataset, method, q]} and {path}: merge parts that do not overlap")
                seen[dataset, method, q] = path
            into = merged.setdefault((dataset, method), {**{k: {"dice": [], "iou": []} for k in r if k != "sequences"},
                                                         "sequences": []})
            for k, v in r.items():
                if k == "sequences":
                    continue
                for m in ("dice", "iou"):
                    into[k][m].extend(v[m])
            into["sequences"].extend(r.get("sequences") or range(first, first + count))
        learns.extend(data.get("learns", []))
        splits.update(data.get("splits", {}))
    args.part, args.tasks, args.steps = settings["part"], settings["tasks"], settings["steps"]
    args.domain, args.unseen = settings["domain"], settings["unseen"]
    rows = [(d, m, r) for (d, m), r in merged.items()]
    _print_continual(rows, args, None, machine=f"merged from {len(args.merge)} runs: " + ", ".join(args.merge),
                     learns=learns)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [[d, m, r] for d, m, r in rows], "merged": args.merge,
                                               "learns": learns, "splits": splits,
                                               "args": {**settings, "first_sequence": min(q for *_, q in seen),
                                                        "sequences": len({q for *_, q in seen})}}))
    return 0


def _print_continual(rows, args, seconds: dict | None, machine: str | None = None, learns=None) -> None:
    """The table of ``bench continual``: ``rows`` of (dataset, method, {measure: {"dice": [...], "iou": [...]}})
    with one value per sequence (a pixel-classifier peer has only "forward"); ``learns``: one record per learn."""
    measures = ("basic", "forward", "backward")
    domain = getattr(args, "domain", None)
    n_seq = max(len(r["forward"]["dice"]) for _, _, r in rows) if rows else 0
    if domain:
        unseen = "the rest of the folder" if getattr(args, "unseen", None) is None else \
            f"at most {args.unseen} of the rest of the folder"
        print(f"\nDomain shift on {domain}: {n_seq} sequence(s) of {args.tasks} images learned, then Dice on {unseen}, "
              f"{args.steps} learning steps per image, {machine or _machine()}\n")
        print("Per sequence the mean over its images; then mean (sd over sequences). Basic: Dice / IoU of each "
              "learned image after 2 iterations of the simulated user. Unseen: the folder's images no method learned, "
              f"segmented after all {args.tasks} images were learned (no click); the pixel classifiers are trained on "
              "the learned images. Backward: change of each learned image's segmentation from right after it was "
              f"learned to after all {args.tasks} (>= 0 is no forgetting).\n")
        head, what = "unseen", "Unseen"
    else:
        print(f"\nContinual learning on the {args.part} part, {n_seq} sequence(s) of {args.tasks} tasks, "
              f"{args.steps} learning steps per task, {machine or _machine()}\n")
        print("Per sequence the mean over its images; then mean (sd over sequences). Basic: Dice / IoU of the current "
              "image after 2 iterations of the simulated user. Forward: initial segmentation of unseen images after "
              f"{args.tasks // 2}+ tasks. Backward: change of earlier images' segmentation after all {args.tasks} "
              "tasks (>= 0 is no forgetting).\n")
        head, what = "forward", "Forward"
    print(f"| dataset | method | basic Dice | basic IoU | {head} Dice | {head} IoU | backward Dice | backward IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset, method, r in rows:
        cells = []
        for k in measures:
            for m in ("dice", "iou"):
                if k not in r:
                    cells.append("-")
                    continue
                v = np.asarray(r[k][m])
                cells.append(f"{v.mean():+.4f} ({v.std():.4f})" if k == "backward"
                             else f"{v.mean():.3f} ({v.std():.3f})")
        print(f"| {dataset} | {CONTINUAL_NAMES[method]} | " + " | ".join(cells) + " |")
    counts = {len(r["forward"]["dice"]) for _, _, r in rows}
    if len(counts) > 1:  # merged parts that ran different methods
        print("\nSequences per method: " + ", ".join(f"{d} {CONTINUAL_NAMES[m]} {len(r['forward']['dice'])}"
                                                   for d, m, r in rows))
    paired = [(d, m, r) for d, m, r in rows if m != "clis" and any(dd == d and mm == "clis" for dd, mm, _ in rows)]
    if paired:  # the sequences are the same images for every method: compare them sequence by sequence
        print(f"\n{what} Dice, CLIS minus each method on the same sequences: mean difference, sequences where CLIS "
              "is ahead\n\n| dataset | method | CLIS - method | CLIS ahead |\n|---|---|---|---|")
        for dataset, method, r in paired:
            ours = next(rr for dd, mm, rr in rows if dd == dataset and mm == "clis")
            mine = dict(zip(ours.get("sequences") or range(len(ours["forward"]["dice"])), ours["forward"]["dice"]))
            theirs = dict(zip(r.get("sequences") or range(len(r["forward"]["dice"])), r["forward"]["dice"]))
            common = [q for q in theirs if q in mine]  # a method run on fewer sequences: the ones both have
            diff = np.asarray([mine[q] - theirs[q] for q in common])
            print(f"| {dataset} | {CONTINUAL_NAMES[method]} | {diff.mean():+.4f} | {int((diff > 0).sum())} of "
                  f"{len(diff)} |")
    if learns:
        _print_learns(learns)
    if seconds:
        print(f"\nSeconds per method (all sequences{'' if domain else ', both datasets'}): " +
              ", ".join(f"{CONTINUAL_NAMES[m]} {s:.0f}" for m, s in seconds.items()))


def _print_learns(learns: list[dict]) -> None:
    """Per method, how many learns were rolled back and how long one took; then why each rollback happened."""
    print("\nLearning: each image learned once per sequence (CLIS keeps a learned task only if it finds objects, "
          "follows at least as many of the corrections as the task that segmented the image, and agrees with the "
          "accepted segmentation on at least 90% of the other pixels; the others always keep what they learned). "
          "Adapted: CLIS tasks with a BatchNorm and adapters of their own (images unlike the pretraining images). "
          "Seconds of one learn (rough: the machine is shared).\n")
    print("| dataset | method | learns | rolled back | rollback rate | skipped (nothing to learn) | learn s, median "
          "(max) |\n|---|---|---|---|---|---|---|")
    choices = [e for e in learns if e.get("unseen")]  # CLIS's task choice on the unseen images
    learns = [e for e in learns if not e.get("unseen")]
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in learns:
        groups.setdefault((e["dataset"], e["method"]), []).append(e)
    for (dataset, method), es in groups.items():
        back = sum(bool(e.get("rolled_back")) for e in es)
        skipped = sum(bool(e.get("skipped")) for e in es)
        secs = np.asarray([e["seconds"] for e in es])
        adapted = sum(bool(e.get("adapted")) for e in es)
        n = f"{len(es)}, {adapted} adapted" if method == "clis" else f"{len(es)}"
        print(f"| {dataset} | {CONTINUAL_NAMES[method]} | {n} | {back} | {back / len(es):.0%} | {skipped} | "
              f"{np.median(secs):.1f} ({secs.max():.1f}) |")
    rolled = [e for e in learns if e.get("rolled_back") or e.get("skipped")]
    if rolled:
        print("\n| dataset | method | sequence | image (task) | why it was not kept |\n|---|---|---|---|---|")
        for e in rolled:
            why = e["reason"].split(". ")[0]  # the message's first sentence holds the reason and its numbers
            print(f"| {e['dataset']} | {CONTINUAL_NAMES[e['method']]} | {e['sequence']} | {e['image']} "
                  f"({e['task']}) | {why} |")
    if choices:
        used = [e for e in choices if e["chosen"] > 0]
        agree = [e["agreement"] for e in choices if e["agreement"] is not None]
        print(f"\nCLIS on the unseen images: a learned task segmented {len(used)} of {len(choices)}, the pretrained "
              "task the others (the task-aware module keeps a learned task for a new image of the pretraining kind "
              "only where it agrees with the pretrained one; an image unlike the pretraining images takes the "
              "nearest learned task" + (f"; agreement {min(agree):.3f} to {max(agree):.3f}" if agree else "")
              + ").")


def _none_if_negative(value: float) -> float | None:
    """A command-line number where a negative value stands for the setting's ``None``."""
    return None if value < 0 else value


def _scores(labels, truth, dice, iou) -> tuple[float, float]:
    return float(dice(labels > 0, truth)), float(iou(labels > 0, truth))


# -- command line -------------------------------------------------------------------------------

def _model_args(p, *, default: str, allow_all: bool, image_only: bool) -> None:
    """The arguments every benchmark shares: model, MC samples, data folder."""
    p.add_argument("--model", default=default, choices=(["all"] if allow_all else []) + ["nuclei", "skin-lesion"],
                   help="the shipped model, and the data it is measured on")
    p.add_argument("--samples", type=int, default=8, help="MC samples T")
    p.add_argument("--data", help="data folder (default ../shared/data); only used to pick a real image" if image_only
                   else "data folder holding dsb2018/ and isic2017/ (default ../shared/data)")


class _DefaultsHelp(argparse.HelpFormatter):
    """``--help`` shows each option's default, where it has one worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _subcommand(bsub, name: str, help: str) -> argparse.ArgumentParser:
    return bsub.add_parser(name, help=help, formatter_class=_DefaultsHelp)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``napari-clis bench ...``: the ``bench`` command hands it every argument after ``bench``."""
    from ..cli import BENCH_HELP

    b = argparse.ArgumentParser(prog="napari-clis bench", description=BENCH_HELP[0].upper() + BENCH_HELP[1:] + ".")
    bsub = b.add_subparsers(dest="bench", required=True)
    sp = _subcommand(bsub, "speed", "time and memory of segment() for 256 to 4096 px images")
    _model_args(sp, default="nuclei", allow_all=False, image_only=True)
    sp.add_argument("--sizes", default=",".join(map(str, SPEED_SIZES)), help="image sides in pixels, comma-separated")
    sp.add_argument("--repeats", type=int, default=5, help="timed runs per size (the median is reported)")
    sp.set_defaults(bench_func=speed)
    q = _subcommand(bsub, "quality", "held-out Dice/IoU beside Otsu, and uncertainty AUROC beside entropy")
    _model_args(q, default="all", allow_all=True, image_only=False)
    q.add_argument("--limit", type=int, help="only the first N held-out images (quick check)")
    q.add_argument("--json", help="also write the numbers to this JSON file")
    q.add_argument("--checkpoint", metavar="PATH", help="measure this model file instead of the shipped one "
                   "(with --model naming its data, e.g. a model from `napari-clis pretrain`)")
    q.add_argument("--compare", metavar="PATH", action="append", help="also the Dice of this model file on the "
                   "same images in the same run (say, the model shipped before); repeatable")
    q.set_defaults(bench_func=quality)
    ins = _subcommand(bsub, "instances", "nuclei as objects on held-out dsb2018 and bbbc039: AP@0.5, mAP 0.5:0.9 and "
                      "0.5:0.95, PQ, beside connected components, Otsu + watershed and the ceiling")
    ins.add_argument("--samples", type=int, default=8, help="MC samples T")
    ins.add_argument("--data", help="data folder holding dsb2018/ and bbbc039/ (default ../shared/data)")
    ins.add_argument("--limit", type=int, help="only the first N held-out images of each set (quick check)")
    ins.add_argument("--checkpoint", metavar="PATH", help="measure this nuclei model file instead of the shipped one "
                     "(a model with an instance head adds its row)")
    ins.add_argument("--json", help="also write the numbers to this JSON file")
    ins.set_defaults(bench_func=instances_bench)
    ou = _subcommand(bsub, "outliers", f"Dice when {OUTLIER_NUCLEI} nuclei per image are made "
                     f"{OUTLIER_FACTOR:g} times brighter, beside Otsu (held-out dsb2018 grey fluorescence, bbbc039)")
    ou.add_argument("--model", default="nuclei", choices=["nuclei"], help="the shipped model measured")
    ou.add_argument("--samples", type=int, default=8, help="MC samples T")
    ou.add_argument("--data", help="data folder holding dsb2018/ and bbbc039/ (default ../shared/data)")
    ou.add_argument("--limit", type=int, help="only the first N usable images of each set (quick check)")
    ou.add_argument("--json", help="also write the numbers, per image too, to this JSON file")
    ou.add_argument("--checkpoint", metavar="PATH", help="measure this nuclei model file instead of the shipped one")
    ou.set_defaults(bench_func=outliers)
    it = _subcommand(bsub, "interactive", "simulated user: NoC@85/90 of CLIS beside random walker and a "
                     "random-forest pixel classifier, both protocols")
    _model_args(it, default="all", allow_all=True, image_only=False)
    it.add_argument("--part", default="heldout", choices=["heldout", "pretrain", "monitor"],
                    help="heldout: the interactive splits (dsb2018 pool, isic2017/test); others for tuning")
    it.add_argument("--images", type=int, default=30, help="images per dataset, drawn with --seed")
    it.add_argument("--seed", type=int, default=0, help="seed of the draw of images")
    it.add_argument("--protocols", default="uncertain,click", help="comma-separated: uncertain (the paper's: the 16 "
                    "most uncertain wrong regions per iteration), click (the next click in the largest error; for "
                    "nuclei also with object clicks, and the object protocol that splits and merges)")
    it.add_argument("--peers", default="rw,rf", help="comma-separated: rw (random walker), rf (pixel classifier)")
    it.add_argument("--max-clicks", type=int, default=20, help="clicks (or iterations) per image at most")
    it.add_argument("--smoothness", type=float, help="MRF smoothness lambda (default: the session's)")
    it.add_argument("--calibration", type=float, help="click-calibration prior strength; negative turns it off")
    it.add_argument("--locality", type=float, help="the calibration's reach, a fraction of the image's longer side "
                    "(0: only the annotated regions); negative: the whole image")
    it.add_argument("--no-refine", action="store_true", help="no pixel-level refinement of single clicks (ablation)")
    it.add_argument("--superpixel-size", type=int, help="mean superpixel side in pixels (default: the session's)")
    it.add_argument("--json", help="also write the numbers and IoU curves to this JSON file")
    it.set_defaults(bench_func=interactive)
    ck = _subcommand(bsub, "clicks", "latency of click -> updated segmentation, beside segment()")
    _model_args(ck, default="nuclei", allow_all=False, image_only=True)
    ck.add_argument("--sizes", default="256,512,1024", help="image sides in pixels, comma-separated")
    ck.add_argument("--clicks", type=int, default=50, help="clicks timed per size")
    ck.set_defaults(bench_func=clicks)
    cl = _subcommand(bsub, "continual", "the paper's transfer protocol: basic, forward and backward transfer; "
                     "--domain: learning a new kind of images (domain shift)")
    _model_args(cl, default="all", allow_all=True, image_only=False)
    cl.add_argument("--sequences", type=int, default=20, help="task sequences (the paper: 20)")
    cl.add_argument("--first-sequence", type=int, default=0, help="start at this sequence (to split a long run; "
                    "sequence q is drawn with seed 1000 + q)")
    cl.add_argument("--tasks", type=int, default=8, help="tasks (images) per sequence (the paper: 8)")
    cl.add_argument("--steps", type=int, default=20, help="learning steps per task (every method)")
    cl.add_argument("--methods", help="comma-separated methods (default: " + CONTINUAL_METHODS + "; with --domain "
                    "also " + ",".join(DOMAIN_PEERS) + ", the pixel-classifier peers trained on CLIS's corrected "
                    "images and on the true masks)")
    cl.add_argument("--domain", metavar="FOLDER", help="the domain-shift protocol on this folder of the data folder "
                    "(he_nuclei, bbbc039: images/ and masks/, paired by name): per sequence --tasks images learned, "
                    "then Dice on the folder's other images; the nuclei model")
    cl.add_argument("--unseen", type=int, help="with --domain: measure at most this many of the other images "
                    "(default: all of them)")
    cl.add_argument("--part", default="heldout", choices=["heldout", "pretrain", "monitor"],
                    help="heldout: the non-pretraining images (dsb2018 pool, isic2017/test); monitor to tune")
    cl.add_argument("--baseline-lr", type=float, help="learning rate of the weight-training baselines "
                    "(default: CLIS's)")
    cl.add_argument("--ewc-strength", type=float, default=1e6, help="EWC's lambda")
    cl.add_argument("--packnet-prune", type=float, default=0.5, help="PackNet's pruning fraction per task")
    cl.add_argument("--packnet-retrain", type=int, default=100, help="PackNet: steps retraining the pruned "
                    "pretrained model on its own training images")
    cl.add_argument("--packnet-images", type=int, default=16, help="PackNet: how many training images for that")
    cl.add_argument("--locality", type=float, help="the simulated user's click calibration reach, a fraction of the "
                    "image's longer side (default: the session's); negative: the whole image, as runs before "
                    "this option")
    cl.add_argument("--figure", help="write the per-kernel mask usage of CLIS's first sequence to this PNG")
    cl.add_argument("--json", help="also write the numbers to this JSON file")
    cl.add_argument("--merge", nargs="+", metavar="JSON", help="run nothing: print one table from the --json files "
                    "of several parts of a run (e.g. sequences 0-7 and 8-19)")
    cl.set_defaults(bench_func=continual)
    lr = _subcommand(bsub, "learn", "time of learn() for one image, beside segment()")
    _model_args(lr, default="nuclei", allow_all=False, image_only=True)
    lr.add_argument("--sizes", default="256,512", help="image sides in pixels, comma-separated")
    lr.add_argument("--steps", type=int, default=20, help="learning steps")
    lr.add_argument("--adapt", default="auto",
                    help="whether the task gets its own BatchNorms and adapters (LearnSettings.adapt; auto: only for "
                         "an image unlike the pretraining images); several, comma-separated, give a row each")
    lr.add_argument("--repeats", type=int, default=3, help="learns per row (the median is shown)")
    lr.set_defaults(bench_func=learn_speed)
    me = _subcommand(bsub, "memory", "RSS over 50 segment / click / learn cycles, net of what each task keeps")
    _model_args(me, default="nuclei", allow_all=False, image_only=False)
    me.add_argument("--cycles", type=int, default=50, help="segment / click / learn cycles")
    me.add_argument("--steps", type=int, default=20, help="learning steps per cycle (fewer: a quicker run)")
    me.add_argument("--clicks", type=int, default=3, help="clicks per cycle")
    me.add_argument("--size", type=int, default=256, help="images are centre crops of at most this many px")
    me.add_argument("--images", type=int, default=10, help="distinct images, used in turn")
    me.add_argument("--margin", type=float, default=MEMORY_MARGIN_MB,
                    help="allowed RSS growth (MB) after cycle 10, net of the tasks")
    me.set_defaults(bench_func=memory)
    from . import gui as _gui  # imports no Qt until it runs

    gu = _subcommand(bsub, "gui", "the widget in a real napari viewer: Segment time beside segment(), GUI-thread "
                     "stalls and where they come from (needs a display: xvfb-run -a napari-clis bench gui)")
    _gui.add_arguments(gu)
    gu.set_defaults(bench_func=_gui.gui)
    return b


def main(argv: list[str]) -> int:
    """``napari-clis bench ARGS``: parse ARGS and run that benchmark. The data folder's absence
    (``DataNotFoundError``) is left to the caller, which names it for every command alike."""
    args = build_parser().parse_args(argv)
    try:
        return args.bench_func(args)
    except MemoryMeasureUnavailable as e:
        print(f"napari-clis bench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "_speed_one":
    print(json.dumps(_speed_one(**json.loads(sys.argv[2]))))
