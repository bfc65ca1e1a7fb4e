"""Property-based tests (hypothesis) of the core's entry points: any input either works, with outputs of the
documented shape, dtype and range, or is refused with ``ImageError`` / ``InteractionError`` /
``CheckpointError`` / ``ValueError`` whose message names the problem; a refused call changes nothing.

Examples are small (images up to 64 px) so the file runs in about a minute on one core.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_clis import ClisSession
from napari_clis.checkpoint import CheckpointError, load_model, shipped_model_path
from napari_clis.interactive import InteractionError, renumber_epochs
from napari_clis.preprocessing import ImageError, normalize_image
from napari_clis.propagation import minimize_potts, potts_energy
from napari_clis.uncertainty import decide

SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                   HealthCheck.function_scoped_fixture])

INT_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]


@pytest.fixture(scope="module")
def session():
    return ClisSession.from_pretrained("nuclei", device="cpu", n_samples=4)


@pytest.fixture(scope="module")
def lesion_session():
    return ClisSession.from_pretrained("skin-lesion", device="cpu", n_samples=2)


@pytest.fixture(scope="module")
def crops_from(nuclei_he, nuclei_fluo):
    """Real images to cut small crops from: H&E colour and fluorescence grey."""
    return [nuclei_he[0], nuclei_fluo[0]]


# -- strategies ---------------------------------------------------------------------------------------

def _elements(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(int(info.min), int(info.max))
    return st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)


@st.composite
def valid_images(draw, max_side=64):
    """Grey (H, W) or (H, W, 1), colour (H, W, 3), RGBA with a constant alpha (H, W, 4); any dtype; sides from 2
    (thin, not multiples of 8); values random, constant, or at the dtype's extremes."""
    dtype = np.dtype(draw(st.sampled_from([bool] + INT_DTYPES + FLOAT_DTYPES)))
    h, w = draw(st.integers(2, max_side)), draw(st.integers(2, max_side))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    fill = draw(st.sampled_from(["random", "constant", "extremes"]))
    if fill == "constant":
        image = np.full(shape, draw(_elements(dtype)), dtype)
    elif fill == "extremes":  # only the smallest and the largest value of the type
        lo, hi = ((False, True) if dtype.kind == "b" else
                  (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" else
                  (np.finfo(dtype).min, np.finfo(dtype).max))
        seed = draw(st.integers(0, 2**32 - 1))
        image = np.where(np.random.default_rng(seed).random(shape) < 0.5, lo, hi).astype(dtype)
    else:
        image = draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))
    if channels == 4:
        image[..., 3] = image[..., 3].flat[0]  # a constant alpha: RGBA, not a 4-channel image
    return image


def _check_segmentation(r, shape, session):
    h, w, k = *shape, session.n_classes
    assert r.labels.shape == (h, w) and r.labels.dtype == np.int32
    assert r.probabilities.shape == (k, h, w) and r.probabilities.dtype == np.float32
    assert np.isfinite(r.probabilities).all() and (r.probabilities >= 0).all()
    np.testing.assert_allclose(r.probabilities.sum(0), 1.0, atol=1e-4)
    # the plain argmax for models without a calibrated decision or the one-object rule
    np.testing.assert_array_equal(r.labels, decide(r.probabilities, session.class_log_prior, session.single_object))
    for m in (r.uncertainty, r.epistemic, r.aleatoric, r.entropy):
        assert m.shape == (h, w) and m.dtype == np.float32 and np.isfinite(m).all()
    assert r.uncertainty.min() >= -1e-6 and r.uncertainty.max() <= 1 - 1 / k + 1e-5
    np.testing.assert_allclose(r.uncertainty, r.epistemic + r.aleatoric, atol=1e-6)
    assert r.superpixels.shape == (h, w) and r.superpixels.dtype == np.int32 and r.superpixels.min() >= 1


# -- images ------------------------------------------------------------------------------------------

@settings(max_examples=60, **SLOW)
@given(image=valid_images())
def test_any_valid_image_gives_maps_of_the_right_shape_and_range(session, image):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an overflow on the way is a bug, even if clipped later
        x = normalize_image(image)
        r = session.segment(image)
    assert x.shape == (3,) + image.shape[:2] and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= -0.5 and x.max() <= 0.5
    _check_segmentation(r, image.shape[:2], session)
    labels = session.labels  # the propagated segmentation before any click
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < session.n_classes


@settings(max_examples=8, **SLOW)
@given(image=valid_images(max_side=40))
def test_the_lesion_model_resizes_any_valid_image_and_back(lesion_session, image):
    r = lesion_session.segment(image)
    _check_segmentation(r, image.shape[:2], lesion_session)


@st.composite
def invalid_images(draw):
    """An image that must be refused, and words its message must contain."""
    kind = draw(st.sampled_from(["ndim", "channels", "small", "nan", "rgba", "dtype", "complex"]))
    if kind == "ndim":
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=5).filter(lambda s: len(s) not in (2, 3))))
        return np.zeros(shape, np.uint8), [str(shape)]
    if kind == "channels":
        h, w, c = draw(st.integers(2, 9)), draw(st.integers(2, 9)), draw(st.sampled_from([2, 5, 6, 7, 8]))
        if c == 2:  # grey and a varying alpha (a constant one is dropped, as RGBA's is)
            image = np.zeros((h, w, 2), np.float32)
            image[0, 0, 1] = draw(st.floats(0.5, 255))
            return image, ["2 channels", "alpha"]
        return np.zeros((h, w, c), np.float32), [str((h, w, c))]
    if kind == "small":
        h, w = draw(st.tuples(st.integers(0, 3), st.integers(0, 3)).filter(lambda s: min(s) < 2))
        c = draw(st.sampled_from([(), (1,), (3,)]))
        return np.zeros((h, w) + c, np.uint16), [f"{h}x{w}", "too small"]
    if kind == "nan":
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
        image = np.zeros((draw(st.integers(3, 12)), draw(st.integers(3, 12))), dtype)  # room for 8 bad values
        n_nan, n_inf = draw(st.integers(0, 4)), draw(st.integers(0, 4))
        assume(n_nan + n_inf > 0)
        values = [np.nan] * n_nan + [draw(st.sampled_from([np.inf, -np.inf])) for _ in range(n_inf)]
        image.flat[: len(values)] = values
        return image, [f"{n_nan} NaN", f"{n_inf} infinite"]
    if kind == "rgba":
        image = np.zeros((draw(st.integers(2, 12)), draw(st.integers(2, 12)), 4), np.uint8)
        image[0, 0, 3] = draw(st.integers(1, 255))  # the alpha channel varies: not RGBA
        return image, ["4 channels", "alpha"]
    if kind == "dtype":
        dtype = draw(st.sampled_from(["U3", "S2", "O", "M8[s]", "m8[s]", "V4"]))
        return np.zeros((4, 4), dtype), ["numbers", str(np.dtype(dtype))]
    return np.zeros((4, 4), draw(st.sampled_from([np.complex64, np.complex128]))), ["complex"]


@settings(max_examples=80, **SLOW)
@given(case=invalid_images())
def test_an_invalid_image_is_refused_with_its_problem_named_and_the_last_result_kept(session, case):
    image, words = case
    if session.result is None:
        session.segment(np.zeros((8, 8), np.uint8))
    before, inter = session.result, session.interaction
    with pytest.raises(ImageError) as err:
        session.segment(image)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert session.result is before and session.interaction is inter


@settings(max_examples=30, **SLOW)
@given(image=hnp.arrays(np.uint8, st.tuples(st.integers(2, 24), st.integers(2, 24))),
       scale=st.floats(1e-6, 1e6), offset=st.floats(-1e6, 1e6))
def test_normalisation_does_not_depend_on_the_intensity_unit(image, scale, offset):
    """The same picture in other units (a * x + b, a > 0; 8 or 16 bits) is the same network input."""
    ref = normalize_image(image)
    np.testing.assert_allclose(normalize_image(image * scale + offset), ref, atol=2e-3)
    np.testing.assert_allclose(normalize_image(image.astype(np.uint16) * 257), ref, atol=1e-6)


@settings(max_examples=30, **SLOW)
@given(image=valid_images(max_side=24))
def test_grey_as_h_w_1_and_rgb_as_rgba_are_the_same_input(image):
    grey = image[..., 0] if image.ndim == 3 else image
    ref = normalize_image(grey)
    np.testing.assert_array_equal(normalize_image(grey[..., None]), ref)
    rgb = normalize_image(np.stack([grey] * 3, -1))
    rgba = np.stack([grey] * 3 + [np.full_like(grey, grey.flat[0])], -1)
    np.testing.assert_array_equal(normalize_image(rgba), rgb)
    # (grey repeated as RGB is not compared with grey: the percentiles of three copies interpolate between
    # other ranks, which on an image of a few pixels moves the range by a few percent)


# -- clicks and painting -------------------------------------------------------------------------------

_frac = st.floats(0, 1, exclude_max=True)
_op = st.one_of(
    st.tuples(st.just("click"), _frac, _frac, st.integers(0, 1)),
    st.tuples(st.just("remove"), st.integers(-20, 20)),
    st.tuples(st.just("clear")),
    st.tuples(st.just("set"), st.lists(st.tuples(_frac, _frac, st.integers(0, 1)), max_size=6)),
    st.tuples(st.just("annotate"), st.integers(0, 2**32 - 1), st.floats(0, 1), st.integers(0, 1)),
)


def _position(u: float, n: int) -> float:
    """A coordinate anywhere on a pixel (each covers [i - 0.5, i + 0.5), as in napari)."""
    return u * n - 0.5


def _pixel(c: float) -> int:
    return int(np.floor(c + 0.5))


@settings(max_examples=60, **SLOW)
@given(data=st.data(), ops=st.lists(_op, min_size=1, max_size=8))
def test_random_click_sequences_honour_every_click_and_every_painted_pixel(session, crops_from, data, ops):
    """After any sequence of click / remove_click / clear_clicks / set_clicks / annotate on a real crop: the
    segmentation has the image's shape and valid classes, and the last edit of a pixel wins (interactive.py's
    contract): pixels painted after every click keep their class (in region mode every painted pixel does), and
    every clicked pixel not painted after its latest click has that click's class. A stroke stays after the clicks
    it was made after: removing one of them renumbers it, set_clicks keeps its number."""
    base = crops_from[data.draw(st.integers(0, len(crops_from) - 1))]
    h, w = data.draw(st.integers(2, 64)), data.draw(st.integers(2, 64))
    y0, x0 = data.draw(st.integers(0, base.shape[0] - h)), data.draw(st.integers(0, base.shape[1] - w))
    session.segment(base[y0:y0 + h, x0:x0 + w])
    k = session.n_classes
    clicks: list[tuple[int, int, int]] = []
    painted = np.full((h, w), -1)
    epochs = np.zeros((h, w), int)  # how many clicks were made before each painted pixel
    objects = session.click_mode == "object"
    for op in ops:
        if op[0] == "click":
            y, x = _position(op[1], h), _position(op[2], w)
            assert session.click(y, x, op[3]) == len(clicks)
            clicks.append((_pixel(y), _pixel(x), op[3]))
        elif op[0] == "remove":
            if -len(clicks) <= op[1] < len(clicks):
                session.remove_click(op[1])
                epochs = renumber_epochs(epochs, [op[1] % len(clicks)])
                del clicks[op[1]]
            else:
                with pytest.raises(InteractionError, match=f"no click {op[1]}; there are {len(clicks)}"):
                    session.remove_click(op[1])
        elif op[0] == "clear":
            session.clear_clicks()
            clicks, epochs = [], np.zeros_like(epochs)
        elif op[0] == "set":
            pts = [(_position(u, h), _position(v, w)) for u, v, _ in op[1]]
            session.set_clicks(pts, [lab for *_, lab in op[1]])
            clicks = [(_pixel(y), _pixel(x), lab) for (y, x), (*_, lab) in zip(pts, op[1])]
        else:
            mask = np.random.default_rng(op[1]).random((h, w)) < op[2]
            session.annotate(mask, op[3])
            painted[mask], epochs[mask] = op[3], len(clicks)
        assert session.clicks == clicks
        on = painted >= 0
        if on.any():
            np.testing.assert_array_equal(session.interaction.paint_epochs[on], epochs[on])
        labels = session.labels
        assert labels.shape == (h, w) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < k
        last = on & (epochs >= len(clicks)) if objects else on  # painted after every click
        np.testing.assert_array_equal(labels[last], painted[last])
        latest = {(y, x): (i, lab) for i, (y, x, lab) in enumerate(clicks)}
        for (y, x), (i, lab) in latest.items():
            if not on[y, x] or (objects and epochs[y, x] <= i):  # not painted after this click
                assert labels[y, x] == lab, f"click {(y, x, lab)} not honoured among {clicks}"
    pts = session.suggest(4)
    assert pts.shape[1] == 2 and len(pts) <= 4 and pts.dtype.kind == "i"
    assert ((pts >= 0) & (pts < (h, w))).all()


_not_a_class = st.one_of(st.integers(2, 10**6), st.integers(-10**6, -1), st.floats(0, 1).filter(lambda v: v != int(v)),
                         st.just(True), st.just("1"), st.none())


@st.composite
def bad_interaction_calls(draw, h, w):
    """(method, args, words in the message) for calls that must be refused."""
    kind = draw(st.sampled_from(["outside", "not finite", "class", "positions", "shape", "lengths", "remove",
                                 "mask shape", "mask dtype", "mask class", "suggest"]))
    if kind == "outside":
        y = draw(st.one_of(st.floats(-1e9, -0.5, exclude_max=True), st.floats(h - 0.5, 1e9)))
        return "click", (y, w / 2, 1), ["outside the image", f"height {h}"]
    if kind == "not finite":
        return "click", (draw(st.sampled_from([np.nan, np.inf, -np.inf])), 0, 1), ["not a finite position"]
    if kind == "class":
        return "click", (0, 0, draw(_not_a_class)), ["not one of this model's classes 0..1"]
    if kind == "positions":
        return "set_clicks", ([[0, "a"]], [1]), ["must be numbers"]
    if kind == "shape":
        n, c = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 4]))
        return "set_clicks", (np.zeros((n, c)), [0] * (n * c // 2)), ["shape (N, 2)", str((n, c))]
    if kind == "lengths":
        n, m = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        assume(n != m)
        return "set_clicks", (np.zeros((n, 2)), [0] * m), [f"{n} click positions but {m} classes"]
    if kind == "remove":
        index = draw(st.one_of(st.integers(10, 10**6), st.integers(-10**6, -10)))
        bad = draw(st.sampled_from([index, float(index) + 0.5, "0", None, True]))
        return "remove_click", (bad,), ["no click" if bad is index else "whole number"]
    if kind == "mask shape":
        shape = draw(st.tuples(st.integers(1, 70), st.integers(1, 70)).filter(lambda s: s != (h, w)))
        return "annotate", (np.ones(shape, bool), 1), [str(shape), str((h, w))]
    if kind == "mask dtype":
        mask = draw(st.sampled_from([np.full((h, w), "1"), np.full((h, w), np.nan), np.full((h, w), None),
                                     np.full((h, w), 0.4)]))  # a probability map: not a painted mask
        return "annotate", (mask, 1), ["annotation mask"]
    if kind == "mask class":
        return "annotate", (np.ones((h, w), bool), draw(_not_a_class)), ["not one of this model's classes"]
    return "suggest", (draw(st.sampled_from([1.5, "4", None, False])),), ["whole number"]


@settings(max_examples=60, **SLOW)
@given(data=st.data())
def test_a_bad_click_or_annotation_is_refused_with_its_problem_named_and_changes_nothing(session, crops_from, data):
    h, w = data.draw(st.integers(2, 48)), data.draw(st.integers(2, 48))
    session.segment(crops_from[0][:h, :w])
    session.click(h // 2, w // 2, 1)
    session.annotate(np.eye(h, w, dtype=bool), 0)
    before = (session.clicks, session.labels.copy(), session.interaction.painted.copy())
    method, args, words = data.draw(bad_interaction_calls(h, w))
    with pytest.raises(InteractionError) as err:  # an InteractionError is a ValueError
        getattr(session, method)(*args)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert session.clicks == before[0]
    np.testing.assert_array_equal(session.labels, before[1])
    np.testing.assert_array_equal(session.interaction.painted, before[2])


# -- the propagation solver -------------------------------------------------------------------------------

@st.composite
def potts_problems(draw):
    n, k = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    size = draw(st.sampled_from([1e-6, 1.0, 1e6]))
    unary = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-1, 1))) * size
    m = draw(st.integers(0, 10))  # self-loops and repeated edges included
    edges = draw(hnp.arrays(np.int64, (m, 2), elements=st.integers(0, n - 1)))
    weights = draw(hnp.arrays(np.float64, (m,), elements=st.floats(0, 1))) * draw(st.sampled_from([1e-6, 1.0, 1e6]))
    fixed = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, k - 1)))
    return unary, edges, weights, fixed


@settings(max_examples=150, deadline=None)
@given(problem=potts_problems())
def test_potts_minimum_is_exact_for_two_labels_and_a_local_minimum_for_more(problem):
    unary, edges, weights, fixed = problem
    n, k = unary.shape
    f = minimize_potts(unary, edges, weights, fixed=fixed)
    assert f.shape == (n,) and f.dtype == np.int32 and f.min() >= 0 and f.max() < k
    np.testing.assert_array_equal(f[fixed >= 0], fixed[fixed >= 0])
    energy = potts_energy(f, unary, edges, weights)
    tol = 1e-7 * (np.abs(unary).sum() + weights.sum()) + 1e-12
    free = np.flatnonzero(fixed < 0)
    if k <= 2:  # exact: no labelling that keeps the fixed nodes is lower
        for values in itertools.product(range(k), repeat=len(free)):
            g = f.copy()
            g[free] = values
            assert energy <= potts_energy(g, unary, edges, weights) + tol
    else:  # alpha-expansion: no single free node can change to lower the energy
        for i, lab in itertools.product(free, range(k)):
            g = f.copy()
            g[i] = lab
            assert energy <= potts_energy(g, unary, edges, weights) + tol


@st.composite
def bad_potts_problems(draw):
    unary, edges, weights, fixed = np.zeros((4, 2)), np.array([[0, 1], [1, 2], [2, 3]]), np.ones(3), None
    kind = draw(st.sampled_from(["nan unary", "inf weight", "edge index", "edge shape", "fractional edge",
                                 "negative weight", "unary shape", "fixed", "count"]))
    if kind == "nan unary":
        unary[draw(st.integers(0, 3)), draw(st.integers(0, 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        words = ["unary must be finite"]
    elif kind == "inf weight":
        weights[draw(st.integers(0, 2))] = draw(st.sampled_from([np.nan, np.inf]))
        words = ["weights must be finite"]
    elif kind == "edge index":
        edges[draw(st.integers(0, 2)), draw(st.integers(0, 1))] = draw(st.one_of(st.integers(4, 10**9),
                                                                                 st.integers(-10**9, -1)))
        words = ["edges must index nodes 0..3"]
    elif kind == "edge shape":
        c = draw(st.sampled_from([1, 3, 4]))
        edges, weights = np.zeros((2, c), int), np.ones(2 * c // 2)
        words = ["edges must have shape (E, 2)", str((2, c))]
    elif kind == "fractional edge":
        edges = edges + draw(st.floats(0.01, 0.99))
        words = ["edges must be whole numbers"]
    elif kind == "negative weight":
        weights[0] = -draw(st.floats(1e-9, 1e9))
        words = [">= 0"]
    elif kind == "unary shape":
        unary = np.zeros(draw(st.sampled_from([(4,), (4, 0), (2, 2, 2)])))
        words = ["unary must have shape (n, K)"]
    elif kind == "fixed":
        fixed = draw(st.sampled_from([[0, 1], [2, -1, -1, -1], [-2, 0, 0, 0]]))
        words = ["fixed must hold"]
    else:
        weights = np.ones(draw(st.sampled_from([0, 2, 4])))
        words = ["3 edges but"]
    return unary, edges, weights, fixed, words


@settings(max_examples=60, deadline=None)
@given(case=bad_potts_problems())
def test_a_bad_potts_problem_is_refused_with_its_problem_named(case):
    unary, edges, weights, fixed, words = case
    with pytest.raises(ValueError) as err:
        minimize_potts(unary, edges, weights, fixed=fixed)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


# -- model files ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_bytes():
    path = shipped_model_path("nuclei")
    net, metadata, _ = load_model(path)
    return path.read_bytes(), net.state_dict(), metadata


@settings(max_examples=60, **SLOW)
@given(data=st.one_of(st.binary(max_size=4000),
                      st.binary(max_size=4000).map(lambda b: b"PK\x03\x04" + b),  # looks like a zip
                      st.binary(max_size=200).map(lambda b: b"\x80\x02" + b)))  # looks like a pickle
def test_random_bytes_are_refused_as_a_model_file(tmp_path, data):
    path = tmp_path / "random.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        ClisSession.from_checkpoint(path, device="cpu")
    assert str(path) in str(err.value)


@settings(max_examples=60, **SLOW)
@given(where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255), cut=st.booleans())
def test_a_damaged_model_file_is_refused_or_loads_exactly_as_written(tmp_path, model_bytes, where, xor, cut):
    """One byte changed anywhere, or the file cut short: either refused with CheckpointError, or (a byte the
    format does not use, e.g. a zip header's time stamp) loaded with exactly the original weights."""
    data, state, metadata = model_bytes
    pos = int(where * len(data))
    damaged = data[:pos] if cut else data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1:]
    path = tmp_path / "damaged.pt"
    path.write_bytes(damaged)
    try:
        net, meta, _ = load_model(path)
    except CheckpointError as e:
        assert str(path) in str(e)
        return
    assert meta == metadata
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], value) for name, value in state.items()), f"byte {pos} changed the weights"
