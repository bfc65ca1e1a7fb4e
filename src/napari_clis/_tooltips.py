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
ALL_SLICES = "Segment every 2D slice of a stack or time series, not only the one on screen. You can cancel at any time."
RUN = "Segment the image and show the segmentation, the uncertainty map and the superpixels as layers (Shift-S)."
CANCEL = "Stop after the current slice. Slices already segmented are kept."
UNCERTAINTY_LAYER = (
    "Bright = the model is unsure there (epistemic + aleatoric variance). Check and correct these places first."
)
