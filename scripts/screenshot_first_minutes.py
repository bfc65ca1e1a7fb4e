"""The guide's screenshots of a new user's first minutes, through the widget's public surface only.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_first_minutes.py [OUT_DIR]

For each image (nuclei in fluorescence and a skin lesion from tests/data; a 16-bit BBBC039 fluorescence field from
../shared/data/bbbc039 when it is there, read, never copied), in a 1280x720 window: the segmentation as Segment
leaves it, the uncertainty map shown ('Show uncertainty'), and the image after the user clicked one suggestion.
Writes OUT_DIR/first_<image>_<step>.png (default docs/).
"""

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from skimage.io import imread

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "data" / "bbbc039"
out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"


def settle(seconds=1.0):
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.03)


def _mask(m):
    return (m[..., 0] if m.ndim == 3 else m) > 0


def cases():
    """(name, model, image, the true foreground: what the user knows is there)"""
    stem = "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21.png"
    yield ("nuclei", "nuclei", imread(DATA / "dsb2018" / "images" / stem)[..., 0],
           imread(DATA / "dsb2018" / "masks" / stem) > 0)
    yield ("lesion", "skin-lesion", imread(DATA / "isic2017" / "images" / "2.jpg"),
           imread(DATA / "isic2017" / "masks" / "2.png") > 127)
    files = sorted((SHARED / "images").glob("*.png")) if SHARED.is_dir() else []
    if files:
        image = imread(files[0])
        assert image.dtype == np.uint16, image.dtype
        mask = SHARED / "masks" / files[0].name
        yield ("fluorescence16", "nuclei", image, _mask(imread(mask)) if mask.exists() else None)
    else:
        print("no ../shared/data/bbbc039: the 16-bit field is left out")


def shot(viewer, name, step):
    viewer.reset_view()
    settle(0.6)
    path = out / f"first_{name}_{step}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


for name, model, image, truth in cases():
    viewer = napari.Viewer(title="napari-clis")
    viewer.window.resize(1280, 720)
    layer = viewer.add_image(image, name=name, rgb=image.ndim == 3)
    _, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
    widget.set_model(model)
    widget.set_image(layer)
    widget.run()
    widget.wait(timeout=300)
    settle()
    shot(viewer, name, "1_segmented")
    widget.show_uncertainty = True
    shot(viewer, name, "2_uncertainty")
    widget.show_uncertainty = False
    rings = viewer.layers["suggestions"].data
    if len(rings) and truth is not None:  # the user checks the first ring and clicks what is there
        y, x = np.round(rings[0]).astype(int)
        widget.set_click_class(int(truth[y, x]))
        viewer.layers["clicks"].add(rings[0])
        widget.set_click_class(1)
        settle()
    shot(viewer, name, "3_clicked")
    viewer.close()
