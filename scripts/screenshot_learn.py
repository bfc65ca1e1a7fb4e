"""Screenshot of the Learn section for the docs: segment two H&E nuclei images from tests/data, correct each with
clicks where the standard simulated user would, learn from both, and show the task and mask-usage plots.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_learn.py docs/learn_panel.png
"""

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from skimage.io import imread

from napari_clis.evaluation.simulated_user import next_click

DATA = Path(__file__).parents[1] / "tests" / "data" / "dsb2018"
STEM = "0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6"


def settle(seconds=1.0):
    t = time.time()
    while time.time() - t < seconds:
        QApplication.processEvents()
        time.sleep(0.05)


def wait(widget, limit=300):
    t = time.time()
    while widget.busy and time.time() - t < limit:
        settle(0.1)


out = sys.argv[1] if len(sys.argv) > 1 else "docs/learn_panel.png"
image = imread(DATA / "images" / f"{STEM}.png")[..., :3]
truth = (imread(DATA / "masks" / f"{STEM}.png") > 0).astype(np.int32)
halves = [(image[:, :w], truth[:, :w]) for w in [image.shape[1] // 2]] + \
         [(image[:, image.shape[1] // 2:], truth[:, image.shape[1] // 2:])]
viewer = napari.Viewer(title="napari-clis")
viewer.window.resize(1500, 1000)
_, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
for i, (img, tru) in enumerate(halves):
    layer = viewer.add_image(img, name=f"H&E part {i + 1}", rgb=True)
    widget.run(layer)
    wait(widget)
    seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
    for _ in range(4):
        y, x, label = next_click(seg.data, tru)
        widget.set_click_class(label)
        clicks.selected_data = set()
        clicks.add([y, x])
        settle(0.3)
    widget.session.learn_settings.steps = 20
    widget.learn()
    wait(widget)
    settle(0.5)
    if i == 0:
        viewer.layers.remove(layer)
widget.run(viewer.layers[f"H&E part {len(halves)}"])  # segment again: the mask plot shows the learned task
wait(widget)
viewer.layers["uncertainty"].visible = False
viewer.layers["segmentation"].opacity = 0.45
viewer.reset_view()
settle(1.5)
viewer.screenshot(out, canvas_only=False)
tasks = [(r.task, round(r.dice_before, 3), round(r.dice_after, 3)) for r in widget.session.tasks]
print(f"wrote {out}; tasks: {tasks}")
viewer.close()
