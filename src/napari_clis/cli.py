"""The ``napari-clis`` command: ``demo``, ``segment``, ``train``, ``pretrain``, ``calibrate`` and ``bench``. Thin: it
parses arguments and calls the core."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

# `bench` in the list of commands; the benchmarks' own parser (napari_clis.evaluation) describes itself with it too
BENCH_HELP = ("benchmarks: speed and memory, held-out quality, interactive clicks against peers, click latency, "
              "learning, the continual and domain-shift protocols, nuclei as objects, bright outliers")


def _threads(value: str) -> int:
    """argparse type of ``--threads``: a whole number >= 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number of threads >= 1, got {value!r}")
    return n


def _intensity_range(value: str):
    """argparse type of ``--intensity-range``: ``auto`` (None) or ``LOW,HIGH`` in the images' own units."""
    from .preprocessing import check_intensity_range

    if value.strip().lower() in ("auto", "automatic"):
        return None
    try:
        pair = [float(p) for p in value.split(",")]
    except ValueError:
        pair = []
    if len(pair) != 2:
        raise argparse.ArgumentTypeError(f"takes 'auto' or LOW,HIGH (two numbers, e.g. 100,4000), got {value!r}")
    try:
        return check_intensity_range(pair)
    except ValueError as e:  # zero or negative width, NaN, infinite
        raise argparse.ArgumentTypeError(str(e)) from e


def _object_diameter(value: str) -> float:
    """argparse type of ``--object-diameter``: a positive number of pixels (the model's check comes later)."""
    try:
        px = float(value)
    except ValueError:
        px = float("nan")
    if not px > 0 or px == float("inf"):
        raise argparse.ArgumentTypeError(f"takes the typical width of one object in pixels (a number above 0), "
                                         f"got {value!r}")
    return px


def _name_and_probability(value: str) -> tuple[str, float]:
    """argparse type of ``--augment-probability``: ``NAME=P`` with P a number from 0 to 1 (names checked later)."""
    name, _, p = value.partition("=")
    try:
        prob = float(p)
    except ValueError:
        prob = float("nan")
    if not name or not 0.0 <= prob <= 1.0:
        raise argparse.ArgumentTypeError(f"takes NAME=P with P from 0 to 1 (say he=0.3), got {value!r}")
    return name.strip(), prob


def _pretrain(args) -> int:
    import torch
    from tqdm import tqdm

    from .checkpoint import CheckpointError
    from .training import MODEL_PRESETS, PretrainSettings, TrainingDiverged, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = dict(MODEL_PRESETS[args.model])
    if args.steps:
        preset["steps"] = args.steps
    for key in ("lr", "fg_crop_fraction", "init", "kind_balance", "width", "bottleneck_dilation"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.area_weighted:
        preset["area_weighted"] = True
    if args.dice_per_image:
        preset["dice_per_image"] = True
    if args.instance_head or args.head_only:
        preset["instance_head"] = True
    if args.head_only:
        preset["head_only"] = True
    if args.extra_data:
        preset["extra_data"] = tuple(args.extra_data)
    preset["augment"] = args.augment
    if args.augment_probability:
        preset["augment_probabilities"] = dict(args.augment_probability)
    preset["log_every"] = args.log_every
    if args.contact_weight is not None:
        preset["contact_weight"] = args.contact_weight
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

    try:
        pretrain(settings, output, data_root=args.data, resume=not args.restart, log=log, progress=progress)
    except (TrainingDiverged, CheckpointError) as e:  # a diverged training, a model that cannot be written
        bar.close()
        print(f"napari-clis pretrain: {e}", file=sys.stderr)
        return 1
    bar.close()
    return 0


def _train(args) -> int:
    import signal

    import torch
    from tqdm import tqdm

    from .checkpoint import CheckpointError
    from .training import TrainingCancelled, TrainingDiverged, train

    if args.threads:
        torch.set_num_threads(args.threads)
    bar = tqdm(desc="train", unit="step", file=sys.stderr)
    stop = []

    def on_interrupt(signum, frame):  # the first Ctrl-C stops after the step, keeping the checkpoint
        if stop:
            raise KeyboardInterrupt
        stop.append(True)
        bar.write("stopping after this step (press Ctrl-C again to stop at once, losing the last steps)")

    def progress(step, total, loss):
        bar.total = total
        bar.n = step
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.refresh()

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: Ctrl-C stays as it was
        previous = None
    try:
        path = train(args.images, args.masks, init=args.init, output=args.output, steps=args.steps,
                     val_fraction=args.val_fraction, classes=args.classes, lr=args.lr, seed=args.seed,
                     resume=not args.restart, progress=progress, cancel=lambda: bool(stop), log=bar.write,
                     contact_weight=args.contact_weight)
    except TrainingDiverged as e:
        bar.close()
        print(f"napari-clis train: {e}", file=sys.stderr)
        return 1
    except (ValueError, CheckpointError, OSError) as e:  # bad input (ImageError and CheckpointError are ValueError)
        bar.close()
        print(f"napari-clis train: {e}", file=sys.stderr)
        return 2
    except (TrainingCancelled, KeyboardInterrupt) as e:
        bar.close()
        print(f"napari-clis train: {e or 'stopped; no model was written'}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    bar.close()
    print(f"saved {path}", file=sys.stderr)
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


def _load_session(model: str, **kwargs):
    """A session from a shipped model's name or a model file's path."""
    from .checkpoint import shipped_models
    from .session import ClisSession

    if model in shipped_models():
        return ClisSession.from_pretrained(model, **kwargs)
    if not Path(model).is_file():
        raise ValueError(f"--model {model!r} is neither a shipped model ({', '.join(shipped_models())}) nor a "
                         "model file that exists.")
    return ClisSession.from_checkpoint(model, **kwargs)


def _segment(args) -> int:
    import torch
    from tqdm import tqdm

    from .batch import OutputExistsError
    from .checkpoint import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        session = _load_session(args.model, device=args.device,
                                **({"n_samples": args.samples} if args.samples is not None else {}))
    except (CheckpointError, ValueError) as e:
        print(f"napari-clis segment: {e}", file=sys.stderr)
        return 2
    bar = tqdm(unit="image", desc="segment", file=sys.stderr)

    def progress(done, total, record):
        bar.total = total
        bar.update(done - bar.n)
        if record is not None and record.status == "failed":
            bar.write(f"failed: {record.error}", file=sys.stderr)

    try:
        records = session.segment_many(args.inputs, args.output, overwrite=args.overwrite, scheduler=args.scheduler,
                                       workers=args.workers, tile=args.tile, superpixels=args.superpixels,
                                       progress=progress, intensity_range=args.intensity_range,
                                       object_diameter=args.object_diameter)
    except (OutputExistsError, ValueError, OSError, RuntimeError, ImportError) as e:
        bar.close()
        print(f"napari-clis segment: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print("napari-clis segment: interrupted. Run the same command again to go on: the files already written "
              "are skipped.", file=sys.stderr)
        return 130
    bar.close()
    return _report(records, args.output)


def _report(records, output) -> int:
    """A summary on stderr; 1 when a file failed."""
    count = {s: sum(r.status == s for r in records) for s in ("segmented", "skipped", "failed")}
    print(f"{count['segmented']} segmented, {count['skipped']} skipped (already done), {count['failed']} failed, "
          f"of {len(records)}; outputs in {output}", file=sys.stderr)
    failed = [r for r in records if r.status == "failed"]
    if failed:
        print("These could not be segmented:", file=sys.stderr)
        for r in failed:
            print(f"  {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _add_segment_parser(sub) -> None:
    from .preprocessing import DEFAULT_TILE

    sg = sub.add_parser("segment", help="segment image files and folders into labels, objects and uncertainty "
                                        "TIFFs and a table of measurements per object (resumable; in this "
                                        "process or on a Dask cluster)")
    sg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (tif, png, jpg) or folders of them")
    sg.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                    help="nuclei, skin-lesion, or a model file saved by napari-clis")
    sg.add_argument("--output", required=True, metavar="DIR", help="folder for the TIFFs (created if needed)")
    sg.add_argument("--overwrite", action="store_true",
                    help="replace outputs that another run wrote (outputs of this same run are skipped anyway)")
    sg.add_argument("--workers", type=int, default=1, metavar="N",
                    help="N > 1: start a local Dask cluster of N worker processes (needs napari-clis[batch])")
    sg.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786")
    sg.add_argument("--tile", type=int, default=DEFAULT_TILE, metavar="PX",
                    help=f"images larger than PX on a side go in tiles of at most PX (default {DEFAULT_TILE}, as "
                         "in napari)")
    sg.add_argument("--superpixels", action="store_true", help="also write the superpixels (<name>_superpixels.tif)")
    sg.add_argument("--samples", type=int, metavar="T", help="Monte-Carlo samples for the uncertainty (default 8)")
    sg.add_argument("--intensity-range", type=_intensity_range, default=None, metavar="auto|LOW,HIGH",
                    help="the intensities shown black and white to the model: auto (default: each image's own, "
                         "robust to a few very bright objects) or LOW,HIGH in the images' units, e.g. 100,4000 "
                         "(napari's contrast limits)")
    sg.add_argument("--object-diameter", type=_object_diameter, default=None, metavar="PX",
                    help="the typical width of one object (e.g. a nucleus) in pixels: images are rescaled so the "
                         "objects have the size the model learned (default: the images as they are)")
    sg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sg.add_argument("--threads", type=_threads, help="CPU threads for torch in this process")
    sg.set_defaults(func=_segment)


def _calibrate(args) -> int:
    import torch

    from .checkpoint import CheckpointError, load_model, save_model
    from .data import load_dataset
    from .training import DECISION_THRESHOLDS, calibrate_decision

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "heldout":
        raise SystemExit("napari-clis calibrate: the held-out images measure the model; choose on another part")
    try:
        thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else DECISION_THRESHOLDS
    except ValueError:
        raise SystemExit(f"napari-clis calibrate: --thresholds takes numbers separated by commas, got "
                         f"{args.thresholds!r}") from None
    try:
        net, metadata, payload = load_model(args.model_file)
    except CheckpointError as e:
        raise SystemExit(f"napari-clis calibrate: {e}") from None
    name = metadata.get("name")
    if name not in ("nuclei", "skin-lesion"):
        raise SystemExit(f"napari-clis calibrate: {args.model_file} is a {name!r} model; its images are not known")
    try:
        samples = load_dataset(name, args.part, args.data)
    except KeyError:
        parts = "pretrain" if name == "nuclei" else "monitor (isic2017/val) or pretrain"
        raise SystemExit(f"napari-clis calibrate: the {name} data has no part {args.part!r}; choose --part "
                         f"{parts} (never heldout: it measures the model)") from None
    try:
        metadata = calibrate_decision(net, metadata, samples, single_object=args.single_object,
                                      thresholds=thresholds)
    except ValueError as e:
        raise SystemExit(f"napari-clis calibrate: {e}") from None
    # whatever else the file holds (a session's annotations of its learned tasks) goes into the calibrated file too
    extra = {k: v for k, v in payload.items() if k not in ("format", "format_version", "config", "state_dict",
                                                          "metadata")}
    try:
        save_model(args.output, net, metadata, extra=extra)
    except CheckpointError as e:  # it names the file and why (a full disk, a field out of range)
        raise SystemExit(f"napari-clis calibrate: {e}") from None
    except OSError as e:
        raise SystemExit(f"napari-clis calibrate: could not write {args.output}: {e.strerror or e}") from None
    print(f"saved {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-clis", description="CLIS interactive segmentation: demo, batch "
                                "segmentation, training and benchmarks.")
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
    pt.add_argument("--width", type=int, metavar="W", help="channels of block A1 (A4 has 8 W; default: the preset)")
    pt.add_argument("--bottleneck-dilation", type=int, metavar="D",
                    help="dilate the bottleneck A4's convolutions by D and 2 D, for a wider field of view (default 1)")
    pt.add_argument("--dice-per-image", action="store_true",
                    help="average the soft Dice loss per image (as the held-out Dice is) instead of over the batch")
    pt.add_argument("--augment", choices=["none", "robust"], default="none",
                    help="robust: train on harder images (a few very bright objects, gamma, stain, blur, noise, dim "
                         "fields, scale 0.5-2), made before the intensity normalisation (default none)")
    pt.add_argument("--augment-probability", action="append", type=_name_and_probability, metavar="NAME=P",
                    help="with --augment robust: the probability of one augmentation (outliers, stain, pale, he, "
                         "gamma, blur, dim, noise, scale); repeatable")
    pt.add_argument("--instance-head", action="store_true",
                    help="also train the distance head that splits touching nuclei (from the instance masks)")
    pt.add_argument("--head-only", action="store_true",
                    help="with --init: train only the distance head (implies --instance-head); the rest of the "
                         "model stays exactly as it was, so it segments as before")
    pt.add_argument("--extra-data", action="append", choices=["bbbc039"],
                    help="add the pretraining half of this dataset (nuclei; its other half stays held out)")
    pt.add_argument("--contact-weight", type=float, metavar="W",
                    help="where two nuclei touch, train their 1 px border as background, its errors weighted W times "
                         "(a neck between touching nuclei for the objects' watershed; the shipped model: 10)")
    pt.add_argument("--log-every", type=int, default=0, metavar="N",
                    help="also log the losses every N steps (default 0: only at the progress lines)")
    pt.add_argument("--bn-batches", type=int, default=100,
                    help="training batches over which BatchNorm statistics are recomputed at the end")
    pt.add_argument("--threads", type=_threads, help="CPU threads for torch")
    pt.add_argument("--log", help="also append progress lines to this file")
    pt.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    pt.set_defaults(func=_pretrain)

    tr = sub.add_parser("train", help="train a model on a folder of annotated images, or fine-tune one (the model "
                                      "file goes to the models folder the widget lists)")
    tr.add_argument("--images", required=True, metavar="DIR", help="folder of images (tif, png, jpg)")
    tr.add_argument("--masks", required=True, metavar="DIR",
                    help="folder of masks, one per image with the same file name (any extension)")
    tr.add_argument("--init", metavar="NAME_OR_PATH",
                    help="start from nuclei, skin-lesion or a model file (default: a new network)")
    tr.add_argument("--output", metavar="FILE", help="model file to write (default: a new file in the models folder, "
                    "~/.napari-clis/models or $NAPARI_CLIS_MODELS); never written over")
    tr.add_argument("--steps", type=int, metavar="N",
                    help="training steps (default 500 from a model, 2000 for a new one)")  # training.TRAIN_STEPS
    tr.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                    help="share of the images kept aside to check the model on (default 0.2, at least one image)")
    tr.add_argument("--classes", type=int, metavar="K",
                    help="classes including the background (default 2, or the starting model's): with 2 every mask "
                         "value above 0 is foreground (binary or instance masks); with more, masks hold class ids "
                         "0 to K-1")
    tr.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 from a model, 3e-3 for a new one)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the validation split and the training (default 0)")
    tr.add_argument("--contact-weight", type=float, metavar="W",
                    help="where objects of an instance mask touch, their 1 px border is background and the errors "
                         "between objects count W times, so touching nuclei come out apart (default: the starting "
                         "model's, 10 for nuclei; 0: off)")
    tr.add_argument("--restart", action="store_true", help="ignore the checkpoint of an earlier, unfinished run")
    tr.add_argument("--threads", type=_threads, help="CPU threads for torch")
    tr.set_defaults(func=_train)

    cb = sub.add_parser("calibrate", help="choose a two-class model's decision threshold (and one-object rule) "
                        "on validation images, and write the calibrated model")
    cb.add_argument("model_file", help="the model file to calibrate (a napari-clis .pt)")
    cb.add_argument("--output", required=True, help="the calibrated model file to write")
    cb.add_argument("--data", help="data folder holding dsb2018/ and isic2017/ (default ../shared/data)")
    cb.add_argument("--part", default="monitor",
                    help="which images to choose on (default monitor: isic2017/val; never the held-out ones)")
    cb.add_argument("--single-object", action="store_true",
                    help="declare one object per class (a lesion) and choose the threshold with that rule applied")
    cb.add_argument("--thresholds", help="foreground probabilities to try, comma-separated (default 0.5, 0.45, "
                    "... 0.2)")
    cb.add_argument("--threads", type=_threads, help="CPU threads for torch")
    cb.set_defaults(func=_calibrate)

    dm = sub.add_parser("demo", help="open napari with a sample image and the segmentation widget")
    dm.add_argument("--sample", choices=["nuclei", "skin-lesion"], default="nuclei")
    dm.set_defaults(func=_demo)

    _add_segment_parser(sub)

    # The benchmarks are evaluation code (napari_clis.evaluation, with its own parser and Unix-only memory
    # measures): only `bench` imports them, so the product's commands and `--help` start on any platform.
    bn = sub.add_parser("bench", add_help=False, help=BENCH_HELP,
                        usage="napari-clis bench BENCHMARK [options] (napari-clis bench --help lists them)")
    bn.add_argument("bench_args", nargs=argparse.REMAINDER)
    bn.set_defaults(func=_bench)
    return p


def _bench(args) -> int:
    from .evaluation.benchmarks import main as bench_main

    return bench_main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    from .data import DataNotFoundError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.command == "bench":  # everything after `bench`, untouched, goes to the benchmarks' own parser
        args.bench_args = argv[argv.index("bench") + 1:]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return args.func(args)
    except DataNotFoundError as e:  # pretraining and the benchmarks read the real data: say where it was looked for
        print(f"napari-clis {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
