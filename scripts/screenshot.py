"""Take the documentation screenshots: napari with the widget at work on a sample image.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py OUT.png [nuclei|skin-lesion] [SHOW]

SHOW is the output layer to show over the image: segmentation (default), uncertainty or superpixels.
"""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

from napari_clis._sample_data import nuclei_sample, skin_lesion_sample

out = sys.argv[1]
sample = sys.argv[2] if len(sys.argv) > 2 else "nuclei"
viewer = napari.Viewer(title="napari-clis")
viewer.window.resize(1500, 900)
data, kwargs, _ = (nuclei_sample() if sample == "nuclei" else skin_lesion_sample())[0]
image = viewer.add_image(data, **kwargs)
_, widget = viewer.window.add_plugin_dock_widget("napari-clis", "Segment (CLIS)")
widget.set_model("nuclei" if sample == "nuclei" else "skin-lesion")
widget.run(image)
t = time.time()
while widget.busy and time.time() - t < 120:
    QApplication.processEvents()
    time.sleep(0.05)
show = sys.argv[3] if len(sys.argv) > 3 else "segmentation"
for name in ("segmentation", "uncertainty", "superpixels"):
    viewer.layers[name].visible = name == show
viewer.layers.selection.active = viewer.layers[show]
for _ in range(20):
    QApplication.processEvents()
    time.sleep(0.05)
viewer.reset_view()  # fit the whole image now that the docks have taken their room
for _ in range(10):
    QApplication.processEvents()
    time.sleep(0.05)
viewer.screenshot(out, canvas_only=False)
print("wrote", out)
viewer.close()
