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
    "How many times the network looks at the image, each time slightly changed, to tell where it is unsure "
    "(Monte-Carlo samples of its random parts). More is smoother but slower; 0 turns the uncertainty map and the "
    "suggestions off."
)
TASK = (
    "What the model learned from your corrections is kept as tasks, one per image you taught. 'automatic': the "
    "task of the most similar image you taught is used when it fits this image, else the pretrained model. Choose "
    "a task to use it on any image, or 'none (pretrained)'. (Each task is a kernel mask of the network: the "
    "task-aware module picks the nearest task by image fingerprint and checks its agreement with task 0.)"
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
RUN = (
    "Segment the image (Shift-S): the objects are outlined ('instances') over a light fill ('segmentation'); "
    "'uncertainty' and 'superpixels' are hidden layers you can show."
)
CANCEL = "Stop after the current slice. Slices already segmented are kept."
UNFAMILIAR = ("This image is unlike the model's training images: objects may be missed. Click a few it missed "
              "and correct the rest, then press Learn.")
UNCERTAINTY_LAYER = (
    "The uncertainty map: bright = the model is unsure there; clear = sure. Check and correct these places first. "
    "(The entropy of the mean prediction over Monte-Carlo samples: epistemic + aleatoric.)"
)
SHOW_UNCERTAINTY = (
    "Show the uncertainty map over the image (Shift-U): bright where the model is unsure, clear where it is sure. "
    "The same as the eye of the 'uncertainty' layer."
)
CLASS = (
    "What a new click says is under it: background (0) or an object class (Shift-B background, Shift-F the "
    "first object class, Shift-C the next class). Select clicks and change the class to relabel them."
)
CLICKS = (
    "Click on the 'clicks' layer (Points, add mode) where the segmentation is wrong. Nuclei and other models with "
    "many objects: a click of an object class on background adds the whole object there, a background click on an "
    "object removes it, and 'Click does' splits or merges objects. Lesions and other one-object models: the region "
    "under the click takes the chosen class and the segmentation follows. Delete or move points to undo. Paint on "
    "'segmentation' for pixel edits; they are kept."
)
CLICK_ACTION = (
    "What a new click does (nuclei and other many-object models). Add / remove: a click of an object class on "
    "background adds the whole object there, a background click on an object removes it. Split (Shift-D): click "
    "inside two objects found as one to cut them apart; the point shows as a cross. Merge (Shift-M): click on the "
    "border between two pieces of one object to join them; the point shows as a diamond. The same key again: "
    "add / remove. Select points in select mode and choose another action to change theirs. Models with one "
    "object per class (lesions) only add / remove."
)
SUGGEST = (
    "Yellow rings ('suggestions' layer) on up to 16 places where the model is least sure and nothing is clicked "
    "yet: check those first, and click where the segmentation is wrong."
)
CLEAR = "Remove all clicks on the slice being corrected (painted edits stay)."
LEARN = (
    "Learn from this image (Shift-L): the model adds a task from the corrected segmentation, so similar images "
    "start better. Earlier tasks are never changed; a step that would make this image worse is rolled back. The "
    "learned model saves itself in your models folder (a shipped model becomes a new file there, chosen in Model; "
    "the shipped one stays as it was)."
)
SAVE_MODEL = "Save the model with everything it learned (tasks, their clicks and annotations) to a .pt file."
TASKS = (
    "What the model learned from your images. Images like them are segmented with it from now on (Learned task: "
    "automatic); it is saved in the model file, so choosing that file in Model brings it back. 'Fits your "
    "corrections': the Dice overlap of the segmentation with your corrected one, before and after learning "
    "(1 = the same). 'Room for new tasks': the share of the network's free kernels not used yet."
)
DETAILS = "Show two plots: how well each learned task fits its image, and how much of the network each task uses."
TASK_PLOT = (
    "How well each learned task fits its own image (Dice against your corrections, 1 = the same): grey before "
    "learning, blue after."
)
MASK_PLOT = (
    "How much of the network the task in use switches on, layer by layer from input (left) to output (right): "
    "blue what the pretrained model uses, orange what learning added (its kernel mask per layer A1 ... B3)."
)
