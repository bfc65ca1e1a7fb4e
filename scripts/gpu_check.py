"""Check the GPU path against the CPU: segment, click, learn, save/load and batch, with timings.

    python scripts/gpu_check.py                  # CUDA if torch sees it, else Apple's mps, else it says so
    python scripts/gpu_check.py --device cuda    # or mps; --device cpu checks the script itself (CPU against CPU)

Prints markdown tables for docs/benchmarks.md. Runs on the shipped sample images (nothing else needed), in well
under 5 minutes. Each step runs on the CPU and on the device with the same input; agreement is the share of pixels
with the same label, the uncertainty difference the largest absolute one. The MC samples use the device's random
numbers, so the uncertainty differs by sampling noise, not by a bug, when that difference stays small (limits
below). Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# what counts as the same result on another device: float arithmetic differs, and the MC samples come from the
# device's own random number generator
MIN_LABEL_AGREEMENT = 0.99
MAX_UNCERTAINTY_DIFFERENCE = 0.10


def _pick_device(requested: str | None) -> str:
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    raise SystemExit("gpu_check: this PyTorch sees no GPU (neither CUDA nor Apple's mps); nothing to check. "
                     "`--device cpu` checks the script itself.")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def _timed(device: str, fn):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def _journey(model: str, image: np.ndarray, device: str, clicks: list[tuple[int, int, int]], save_to: Path,
             learn_steps: int) -> dict:
    """One user's path on ``device``: segment (twice: the first run warms up), clicks, learn, save."""
    from napari_clis import ClisSession, LearnRejected

    s = ClisSession.from_pretrained(model, device=device)
    s.segment(image)  # warm-up: kernels, memory pools
    r, t_segment = _timed(device, lambda: s.segment(image))
    out = {"labels": r.labels.copy(), "uncertainty": r.uncertainty.copy(), "segment": t_segment}
    times = []
    for y, x, c in clicks:
        _, t = _timed(device, lambda y=y, x=x, c=c: s.click(y, x, c))
        times.append(t)
    out["click"] = float(np.median(times))
    out["clicked"] = s.labels.copy()
    try:
        _, out["learn"] = _timed(device, lambda: s.learn(steps=learn_steps))
        out["learned"] = "kept"
    except LearnRejected:
        out["learn"], out["learned"] = float("nan"), "rolled back"
    out["relabelled"] = s.segment(image).labels.copy()  # the image again, with what was learned
    _, out["save"] = _timed(device, lambda: s.save(save_to))
    return out


def _clicks_for(labels: np.ndarray, n: int = 4, seed: int = 0) -> list[tuple[int, int, int]]:
    """Clicks that change something: background on segmented pixels, object on unsegmented ones."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, where in ((0, labels > 0), (1, labels == 0)):
        ys, xs = np.nonzero(where)
        for i in rng.choice(len(ys), size=min(n // 2, len(ys)), replace=False):
            chosen.append((int(ys[i]), int(xs[i]), cls))
    return chosen


def main(argv=None) -> int:
    from napari_clis import ClisSession
    from napari_clis._sample_data import nuclei_sample, skin_lesion_sample

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the GPU torch sees)")
    p.add_argument("--models", default="nuclei,skin-lesion", help="shipped models to check (default both)")
    p.add_argument("--learn-steps", type=int, default=30, help="optimisation steps of the learn step (default 30)")
    args = p.parse_args(argv)
    device = _pick_device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    rows, failures = [], []
    samples = {"nuclei": nuclei_sample()[0][0], "skin-lesion": skin_lesion_sample()[0][0]}
    samples = {m: samples[m] for m in args.models.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model, image in samples.items():
            first = ClisSession.from_pretrained(model, device="cpu").segment(image).labels
            clicks = _clicks_for(first)
            cpu = _journey(model, image, "cpu", clicks, tmp / f"{model}-cpu.pt", args.learn_steps)
            dev = _journey(model, image, device, clicks, tmp / f"{model}-{device}.pt", args.learn_steps)
            # a model learned on the device, loaded on the CPU, segments as it did on the device
            reloaded = ClisSession.load(tmp / f"{model}-{device}.pt", device="cpu").segment(image).labels
            checks = {
                "segment labels": _agreement(cpu["labels"], dev["labels"]),
                "uncertainty max diff": float(np.max(np.abs(cpu["uncertainty"] - dev["uncertainty"]))),
                "clicked labels": _agreement(cpu["clicked"], dev["clicked"]),
                "after learn": _agreement(cpu["relabelled"], dev["relabelled"]),
                f"saved on {device}, loaded on cpu": _agreement(reloaded, dev["relabelled"]),
            }
            batch_dev, t_batch = _timed(device, lambda model=model, image=image: _batch(model, image, device, tmp))
            batch_cpu = _batch(model, image, "cpu", tmp)
            checks["batch labels"] = _agreement(batch_cpu, batch_dev)
            checks["batch = segment()"] = _agreement(batch_dev, dev["labels"])
            for name, value in checks.items():
                ok = value <= MAX_UNCERTAINTY_DIFFERENCE if "diff" in name else value >= MIN_LABEL_AGREEMENT
                if not ok:
                    failures.append(f"{model}: {name} = {value:.4f}")
            rows.append((model, image.shape, cpu, dev, t_batch, checks))
    seconds = time.perf_counter() - started
    _report(rows, device, seconds)
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


def _batch(model: str, image: np.ndarray, device: str, folder: Path) -> np.ndarray:
    """Batch segmentation of the image as a file, in this process, nothing written."""
    from skimage.io import imsave

    from napari_clis import ClisSession

    path = folder / f"{model}-input.png"
    if not path.exists():
        imsave(path, image, check_contrast=False)
    s = ClisSession.from_pretrained(model, device=device)
    (result,) = s.segment_many([path], None)
    if result.status != "segmented":
        raise RuntimeError(f"batch on {device} failed: {result.error}")
    return result.labels


def _report(rows, device: str, seconds: float) -> None:
    """Markdown tables: what docs/benchmarks.md records."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    print(f"gpu_check: {device} ({name}) against cpu ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {seconds:.0f} s in all")
    header = ("| model | image | step | cpu s | " + device + " s | ratio |", "|---|---|---|---|---|---|")
    lines = list(header)
    for model, shape, cpu, dev, t_batch, _checks in rows:
        for step in ("segment", "click", "learn", "save"):
            ratio = cpu[step] / dev[step] if dev[step] and np.isfinite(dev[step]) else float("nan")
            lines.append(f"| {model} | {shape[1]}x{shape[0]} | {step} | {cpu[step]:.4f} | {dev[step]:.4f} | "
                         f"{ratio:.1f}x |")
        lines.append(f"| {model} | {shape[1]}x{shape[0]} | batch (one file) | | {t_batch:.3f} | |")
    lines += ["", "| model | check | value |", "|---|---|---|"]
    for model, _, cpu, dev, _, checks in rows:
        lines.append(f"| {model} | learn on cpu / {device} | {cpu['learned']} / {dev['learned']} |")
        lines += [f"| {model} | {k} | {v:.4f} |" for k, v in checks.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
