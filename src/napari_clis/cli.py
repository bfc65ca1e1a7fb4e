"""The ``napari-clis`` command: ``demo``, ``pretrain`` and ``bench``. Thin: it parses arguments and calls the core."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _pretrain(args) -> int:
    import torch
    from tqdm import tqdm

    from .training import MODEL_PRESETS, PretrainSettings, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = dict(MODEL_PRESETS[args.model])
    if args.steps:
        preset["steps"] = args.steps
    for key in ("lr", "fg_crop_fraction", "init", "kind_balance"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.area_weighted:
        preset["area_weighted"] = True
    if args.working_long_side is not None:  # 0: the image's own resolution
        preset["working_long_side"] = args.working_long_side or None
    settings = PretrainSettings(model=args.model, seed=args.seed, precise_bn_batches=args.bn_batches, **preset)
    output = Path(args.output or f"{args.model}.pt")
    log_file = open(args.log, "a") if args.log else None

    bar = tqdm(total=settings.steps, desc=f"pretrain {args.model}", unit="step", file=sys.stderr)

    def log(msg):
        bar.write(msg)
        if log_file:
            log_file.write(msg + "\n")
            log_file.flush()

    def progress(step, total, loss):
        bar.n = step
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.refresh()

    pretrain(settings, output, data_root=args.data, resume=not args.restart, log=log, progress=progress)
    bar.close()
    return 0


def _demo(args) -> int:
    import napari

    from ._sample_data import nuclei_sample, skin_lesion_sample

    viewer = napari.Viewer(title="napari-clis")
    sample = nuclei_sample() if args.sample == "nuclei" else skin_lesion_sample()
    for data, kwargs, _ in sample:
        viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget._model_combo.value = "nuclei" if args.sample == "nuclei" else "skin-lesion"
    viewer.reset_view()  # fit the image into the room the dock widget leaves
    napari.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-clis", description="CLIS interactive segmentation: training and benchmarks.")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="train a model from scratch on the hold-out split of ../shared/data")
    pt.add_argument("model", choices=["nuclei", "skin-lesion"])
    pt.add_argument("--data", help="data folder holding dsb2018/ and isic2017/ (default ../shared/data)")
    pt.add_argument("--output", help="model file to write (default MODEL.pt)")
    pt.add_argument("--steps", type=int, help="optimisation steps (default: the model's preset)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--init", help="start from this model file (a second training phase) instead of from scratch")
    pt.add_argument("--lr", type=float, help="peak learning rate of the weights (default 3e-3)")
    pt.add_argument("--fg-crop-fraction", type=float,
                    help="fraction of crops centred on a random foreground pixel (default: the model's preset)")
    pt.add_argument("--area-weighted", action="store_true", help="draw images by the square root of their area")
    pt.add_argument("--kind-balance", type=float, metavar="B",
                    help="0 (default) to 1: draw each kind of image (fluorescence, brightfield, stained) in proportion "
                         "to its number of images to the power 1 - B; 1 draws every kind equally often")
    pt.add_argument("--working-long-side", type=int, metavar="PX",
                    help="resize images so their longer side is PX pixels (0: their own size; default: the "
                         "model's preset)")
    pt.add_argument("--bn-batches", type=int, default=100,
                    help="training batches over which BatchNorm statistics are recomputed at the end")
    pt.add_argument("--threads", type=int, help="CPU threads for torch")
    pt.add_argument("--log", help="also append progress lines to this file")
    pt.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    pt.set_defaults(func=_pretrain)

    dm = sub.add_parser("demo", help="open napari with a sample image and the segmentation widget")
    dm.add_argument("--sample", choices=["nuclei", "skin-lesion"], default="nuclei")
    dm.set_defaults(func=_demo)

    from . import benchmarks

    benchmarks.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
