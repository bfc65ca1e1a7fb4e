"""Every help text the widgets show, in one place, written for the people who use them."""

IMAGE = "The image to segment: grey or colour (RGB). For a stack or time series, the slice on screen is segmented."
MODEL = (
    "'nuclei': cell nuclei in fluorescence, brightfield or H&E images. "
    "'skin-lesion': a lesion in a dermoscopy photograph. "
    "'Model file…': a model you trained or saved with napari-clis."
)
CHECKPOINT = "A napari-clis model file (.pt) saved earlier."
DEVICE = "Where the network runs: 'auto' uses an NVIDIA GPU when there is one, else the CPU."
SAMPLES = (
    "How many random variations of the network are drawn to estimate uncertainty. "
    "More is smoother but slower; 0 turns the uncertainty map off."
)
TASK = (
    "Which learned task (kernel mask) segments the image. 'auto': the task of the most similar image you taught, "
    "if it agrees with the pretrained model here, else the pretrained task 0. Choose one to use it regardless."
)
ALL_SLICES = "Segment every 2D slice of a stack or time series, not only the one on screen. You can cancel at any time."
INTENSITY_RANGE = (
    "Which brightness counts as black and as white for the model. 'automatic': set from each image, and not "
    "thrown off by a few very bright cells or specks. 'as displayed': the image layer's contrast limits (the "
    "layer controls' contrast slider), so what you see is what is segmented: use it when faint objects are missed."
)
OBJECT_SIZE = (
    "The typical width of one object (e.g. a nucleus) in pixels; measure one with the ruler or by hovering. The "
    "image is enlarged or shrunk for the model so its objects have the size it learned; the results keep the "
    "image's own size. 0: use the image as it is."
)
RUN = "Segment the image and show the segmentation, the uncertainty map and the superpixels as layers (Shift-S)."
CANCEL = "Stop after the current slice. Slices already segmented are kept."
UNFAMILIAR = "This image is unlike those the model learned from: check it, correct it and press Learn."
UNCERTAINTY_LAYER = (
    "Bright = the model is unsure there (epistemic + aleatoric variance). Check and correct these places first."
)
CLASS = (
    "The class a new click gives (Shift-B background, Shift-F the first object class, Shift-C the next class). "
    "Select clicks and change the class to relabel them."
)
CLICKS = (
    "Click on the 'clicks' layer (Points, add mode) where the segmentation is wrong: the superpixel under the "
    "click takes the chosen class and the segmentation follows. Delete or move points to undo. Paint on "
    "'segmentation' for pixel edits; they are kept."
)
SUGGEST = "Show up to 16 of the most uncertain places not annotated yet ('suggestions' layer): click there first."
CLEAR = "Remove all clicks on the slice being corrected (painted edits stay)."
LEARN = (
    "Learn from this image (Shift-L): the model adds a task from the corrected segmentation, so similar images "
    "start better. Earlier tasks are never changed; a step that would make this image worse is rolled back."
)
SAVE_MODEL = "Save the model with everything it learned (tasks, their clicks and annotations) to a .pt file."
