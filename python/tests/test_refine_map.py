"""`saobp.refine_map` and `saobp.metrics` on attention maps of any leading
shape, against the float64 reference."""

import numpy as np
import pytest

import saobp
import reference as ref
from reference import assert_close


def random_maps(shape, causal=False, seed=0, empty_row=False):
    """Row-stochastic maps ``shape + [N, N]`` (a causal one is lower
    triangular); with ``empty_row`` the last map's row 0 is all zeros."""
    rng = np.random.default_rng(seed)
    x = rng.exponential(size=shape)
    if causal:
        x = np.tril(x)
    x = x / x.sum(axis=-1, keepdims=True)
    if empty_row:
        x.reshape((-1,) + shape[-2:])[-1, 0, :] = 0.0
    return x


SHAPES = [(4, 4), (3, 4, 4), (2, 2, 3, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_refine_map(gpu, shape, causal):
    a = random_maps(shape, causal, empty_row=True)
    heads = shape[-3] if len(shape) > 2 else 1
    lam = [0.25 * (h + 1) for h in range(heads)]
    msg, m, r, gtd = ref.refine(a if len(shape) > 2 else a[None], lam)
    if len(shape) == 2:
        msg, m, r, gtd = msg[0], m[0], r[0], gtd[0]
    out = saobp.refine_map(a, lam=lam, causal=causal, return_messages=True, gpu=gpu)
    assert out["refined"].shape == shape and out["m"].shape == shape[:-1]
    assert_close(out["messages"], msg, "M")
    assert_close(out["m"], m, "m")
    assert_close(out["refined"], r, "R")
    assert_close(out["gtd"], gtd, "GTD")
    if causal:
        assert np.all(np.triu(out["refined"], 1) == 0)


def test_refine_map_defaults_and_lambda_zero(gpu):
    a = random_maps((2, 5, 5), seed=1)
    _, m, r, gtd = ref.refine(a, 1.0)
    out = saobp.refine_map(a, gpu=gpu)
    assert set(out) == {"refined", "m", "gtd"}
    assert_close(out["refined"], r, "R at the default λ = 1")
    assert_close(out["gtd"], gtd, "GTD at λ = 1")
    assert_close(saobp.refine_map(a, lam=0.0, gpu=gpu)["refined"], a, "λ = 0 gives R = A")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_metrics(gpu, shape, causal):
    p = random_maps(shape, causal, seed=2)
    n = shape[-1]
    rows_shape = shape[:-1]
    p4 = p.reshape((-1,) + shape[-3:]) if len(shape) > 2 else p[None, None]
    b, h = p4.shape[:2]
    n_valid, weight = ref.n_valid_and_weight(b, h, n, causal)
    m = ref.refine(p4, 1.0)[1]
    want = ref.row_metrics(p4, n_valid, m, 1.0, weight)
    got = saobp.metrics(p, causal=causal, gpu=gpu)
    assert list(got) == list(saobp.METRIC_NAMES)
    for name in saobp.METRIC_NAMES:
        assert got[name].shape == rows_shape, name
        bound = ref.ABS * n if name == "distance" else ref.ABS
        assert_close(got[name], want[name].reshape(rows_shape), name, abs_tol=bound)


def test_metrics_key_mask_broadcast_and_lambda(gpu):
    # Layers x batch x heads; the [B, N] mask broadcasts over the layers.
    layers, b, h, n = 2, 2, 2, 4
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=bool)
    q = np.random.default_rng(3).normal(size=(layers * b, h, n, 2))
    p = ref.softmax_attention(q, q, key_mask=np.tile(mask, (layers, 1)))
    lam = [0.5, 2.0]
    got = saobp.metrics(p.reshape(layers, b, h, n, n), key_mask=mask, lam=lam, gpu=gpu)
    n_valid, weight = ref.n_valid_and_weight(layers * b, h, n, False, np.tile(mask, (layers, 1)))
    m = ref.refine(p, 1.0)[1]
    want = ref.row_metrics(p, n_valid, m, lam, weight)
    for name in saobp.METRIC_NAMES:
        bound = ref.ABS * n if name == "distance" else ref.ABS
        assert_close(got[name], want[name].reshape(layers, b, h, n), name, abs_tol=bound)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_refined_metrics_take_the_mass_of_a(gpu, causal):
    # R's own entropy, sparsity, peak and distance; A's m and GTD at λ.
    shape, lam = (2, 3, 6, 6), [0.5, 1.0, 2.0]
    a = random_maps(shape, causal, seed=4)
    b, h, n = shape[0], shape[1], shape[-1]
    _, m, r, _ = ref.refine(a, lam)
    n_valid, weight = ref.n_valid_and_weight(b, h, n, causal)
    want = ref.row_metrics(r, n_valid, m, lam, weight)
    r32 = saobp.refine_map(a, lam=lam, causal=causal, gpu=gpu)["refined"]
    got = saobp.refined_metrics(a, r32, causal=causal, lam=lam, gpu=gpu)
    assert list(got) == list(saobp.METRIC_NAMES)
    for name in saobp.METRIC_NAMES:
        bound = ref.ABS * n if name == "distance" else ref.ABS
        assert_close(got[name], want[name], name, abs_tol=bound)
    # metrics(R) reports R's own two-hop mass, another number.
    own = saobp.metrics(r32, causal=causal, lam=lam, gpu=gpu)["multi_hop_mass"]
    assert np.abs(own - got["multi_hop_mass"]).max() > 1e-3


def test_refined_metrics_needs_maps_of_one_shape(gpu):
    a = random_maps((2, 4, 4))
    with pytest.raises(ValueError, match="must be the same"):
        saobp.refined_metrics(a, a[:, :3, :3], gpu=gpu)
