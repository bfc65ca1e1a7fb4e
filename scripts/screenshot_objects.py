"""The guide's screenshots of counting and measuring nuclei, through the public surface only.

    xvfb-run -a python scripts/screenshot_objects.py [OUT_DIR]

A real DSB 2018 image from tests/data, in a 1280x720 window: the objects Segment finds and their count, a pair of
touching nuclei the model found as one (found with the image's own instance mask: one object over two true
nuclei; else a large object with two distance-transform peaks), the same pair after one split click (Shift-D),
and the Measurements (CLIS) dock sorted by area with a row selected. Writes OUT_DIR/objects_<n>_<step>.png
(default docs/).
"""

import sys
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.io import imread

import napari_clis
from napari_clis._napari_compat import camera

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "dsb2018"
STEMS = ("0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6",  # H&E, 30 nuclei
         "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21")  # fluorescence, 16 nuclei
out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"
out.mkdir(parents=True, exist_ok=True)


def settle(seconds=1.0):
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.03)


def shot(viewer, name):
    settle(0.8)
    path = out / f"objects_{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def count(viewer) -> int:
    return int(viewer.layers["instances"].data.max())


def merged_candidates(instances, truth):
    """Objects that look like two nuclei found as one, most likely first, those cut by the image's edge last (a
    pair half outside the picture shows little): (id, the click for a split)."""
    areas = np.bincount(instances.ravel())[1:]
    median = float(np.median(areas[areas > 0]))
    found = []
    for i in range(1, len(areas) + 1):
        obj = instances == i
        if not obj.any():
            continue
        # the true nuclei the object covers (each at least 30% inside it)
        inside = [k for k in np.unique(truth[obj]) if k and (obj & (truth == k)).sum() > 0.3 * (truth == k).sum()]
        edge = bool(obj[0].any() or obj[-1].any() or obj[:, 0].any() or obj[:, -1].any())
        dist = ndimage.distance_transform_edt(obj)
        peaks = peak_local_max(dist, min_distance=3, labels=obj.astype(int), exclude_border=False)
        if len(inside) >= 2:  # the click: the middle of the larger true nucleus, inside the object
            part = obj & (truth == max(inside, key=lambda k: (obj & (truth == k)).sum()))
            d = ndimage.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
            found.append((edge, 0, -areas[i - 1], i, np.unravel_index(int(d.argmax()), d.shape)))
        elif areas[i - 1] > 1.6 * median and len(peaks) >= 2:
            found.append((edge, 1, -areas[i - 1], i, tuple(peaks[0])))
    return [(i, (int(y), int(x))) for *_, i, (y, x) in sorted(found, key=lambda f: f[:3])]


def zoom_on(viewer, mask, share=0.45):
    """Zoom so that ``mask`` spans ``share`` of the canvas, centred on it; an object at the image's edge is shown
    off centre, with a fifth of the canvas at most beyond the edge rather than half."""
    canvas = np.array(viewer.screenshot(canvas_only=True, flash=False).shape[:2], float)  # the canvas, in pixels
    rows, cols = np.nonzero(mask)
    extent = np.array([np.ptp(rows) + 1, np.ptp(cols) + 1], float)
    zoom = float(np.min(share * canvas / extent))
    shape = np.array(mask.shape, float)
    half = canvas / zoom / 2  # half the data shown, in pixels
    centre = np.array([rows.mean(), cols.mean()])
    centre = np.where(half * 2 < shape, np.clip(centre, 0.6 * half - 0.5, shape - 0.6 * half - 0.5), centre)
    cam = camera(viewer)
    cam.zoom = zoom
    cam.center = tuple(float(c) for c in centre)


def attempt(stem):
    """Open ``stem``, segment it, and split its first merged pair that splits well. Returns the viewer and the
    widget at the split, or None (the viewer closed)."""
    image = imread(DATA / "images" / f"{stem}.png")[..., :3]
    truth = imread(DATA / "masks" / f"{stem}.png")
    if (image == image[..., :1]).all():  # a grey image stored as colour
        image = image[..., 0]
    viewer, widget = napari_clis.annotate(image, model="nuclei")
    viewer.window.resize(1280, 720)
    viewer.layers[0].name = "nuclei"
    widget.suggest = False  # no suggestion rings over the outlines (the dock's "Suggest where to click")
    widget.run()
    widget.wait(timeout=300)
    settle(1.5)
    viewer.reset_view()
    n = count(viewer)
    print(f"{stem[:8]}: {n} objects; status: {widget.status}")
    shot(viewer, "1_count")
    inst, clicks = viewer.layers["instances"], viewer.layers["clicks"]
    for ident, (y, x) in merged_candidates(inst.data.copy(), truth):
        pair = inst.data == ident
        zoom_on(viewer, pair)
        viewer.layers.selection.active = clicks
        widget.set_click_action("split")  # as Shift-D does
        shot(viewer, "2_merged_pair")
        clicks.add([y, x])  # data coordinates, as a click in add mode gives
        settle(1.0)
        parts = [i for i in np.unique(inst.data[pair]) if i]
        split_well = count(viewer) == n + 1 and len(parts) == 2 and all(
            len([k for k in np.unique(truth[inst.data == i]) if k]) >= 1 for i in parts)
        print(f"  object {ident} split at ({y}, {x}): {split_well}; {widget.click_status}")
        if split_well:
            return viewer, widget, n
        clicks.selected_data = set(range(len(clicks.data)))  # take the click back
        clicks.remove_selected()
        settle(0.5)
    viewer.close()
    return None


for stem in STEMS:
    done = attempt(stem)
    if done:
        break
else:
    raise SystemExit("no merged pair found that one split click separates")
viewer, widget, n = done
shot(viewer, "3_split")
widget.set_click_action("auto")  # Shift-D again: the next clicks add / remove

_, table = viewer.window.add_plugin_dock_widget("napari-clis", "Measurements (CLIS)")
end = time.time() + 60
while (table.busy or table.model.rowCount() != n + 1) and time.time() < end:
    settle(0.2)
columns = list(table.measurements)
table.table.sortByColumn(columns.index("area"), Qt.SortOrder.DescendingOrder)
viewer.reset_view()
settle(0.3)
camera(viewer).zoom = camera(viewer).zoom * 2.5
table.table.selectRow(0)  # the largest object: the view centres on it, its label selected
settle(0.6)
while table.busy:
    settle(0.2)
if not table.table.selectionModel().selectedRows():
    # napari 0.9 emits set_data when a row sets the layer's show_selected_label, the dock measures again and its
    # new table drops the selection: the row shown selected again, as the user chose it (the view is centred)
    blocked = table.table.selectionModel().blockSignals(True)
    table.table.selectRow(0)
    table.table.selectionModel().blockSignals(blocked)
viewer.layers.selection.active = viewer.layers["instances"]  # its controls show the label selected
table.table.setFocus()  # the selected row highlighted as after a click on it
shot(viewer, "4_measurements")
viewer.close()
