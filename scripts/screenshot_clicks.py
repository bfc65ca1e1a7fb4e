"""Screenshots of the click loop for the docs: segment the dermoscopy sample, then click where the
standard simulated user would (tests/data ground truth), one screenshot per step.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_clicks.py docs/clicks
"""

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from skimage.io import imread

from napari_clis._sample_data import skin_lesion_sample
from napari_clis.evaluation.simulated_user import iou, next_click


def settle(seconds=1.0):
    t = time.time()
    while time.time() - t < seconds:
        QApplication.processEvents()
        time.sleep(0.05)


prefix = sys.argv[1] if len(sys.argv) > 1 else "docs/clicks"
truth = (imread(Path(__file__).parents[1] / "tests" / "data" / "isic2017" / "masks" / "1.png") > 127).astype(np.int32)
viewer = napari.Viewer(title="napari-clis")
viewer.window.resize(1500, 900)
data, kwargs, _ = skin_lesion_sample()[0]
image = viewer.add_image(data, **kwargs)
_, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
widget.set_model("skin-lesion")
widget.run(image)
t = time.time()
while widget.busy and time.time() - t < 120:
    settle(0.1)
viewer.layers["uncertainty"].visible = False
viewer.layers["segmentation"].opacity = 0.45
viewer.reset_view()
settle()
seg, clicks = viewer.layers["segmentation"], viewer.layers["clicks"]
shots = {0, 1, 3, 6}
for k in range(max(shots) + 1):
    if k in shots:
        viewer.text_overlay.visible = True
        viewer.text_overlay.text = f"{k} click(s): IoU {iou(seg.data, truth):.2f}"
        viewer.text_overlay.font_size = 14
        settle()
        viewer.screenshot(f"{prefix}_{k}.png", canvas_only=False)
        print(f"wrote {prefix}_{k}.png  IoU {iou(seg.data, truth):.3f}")
    y, x, label = next_click(seg.data, truth)
    widget.set_click_class(label)
    clicks.selected_data = set()
    clicks.add([y, x])
    settle(0.3)
viewer.close()
