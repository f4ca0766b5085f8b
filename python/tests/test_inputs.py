"""What the functions accept (float32 and float64, any memory layout, masks
of any numeric or bool dtype, lists) and what they refuse, with the error
type and a message that says what is wrong."""

import threading

import numpy as np
import pytest

import saobp
import reference as ref
from reference import assert_close


def qkv(b=1, h=2, n=4, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(b, h, n, d)) for _ in range(3)]


def test_float32_float64_and_strided_agree(gpu):
    q, k, v = qkv()
    want = ref.refine(ref.softmax_attention(q, k), 0.5)[2] @ v
    as64 = saobp.attention(q, k, v, lam=0.5, gpu=gpu)["output"]
    as32 = saobp.attention(*(x.astype(np.float32) for x in (q, k, v)), lam=0.5, gpu=gpu)["output"]
    # Fortran order and a transposed view: the same values, other layouts.
    fortran = [np.asfortranarray(x) for x in (q, k, v)]
    strided = [np.ascontiguousarray(np.swapaxes(x, 0, 3)).swapaxes(0, 3) for x in (q, k, v)]
    assert not strided[0].flags.c_contiguous
    for got, what in [(as64, "float64"), (as32, "float32"),
                      (saobp.attention(*fortran, lam=0.5, gpu=gpu)["output"], "Fortran order"),
                      (saobp.attention(*strided, lam=0.5, gpu=gpu)["output"], "strided view")]:
        assert_close(got, want, what)


def test_lists_and_mask_dtypes(gpu):
    q, k, v = qkv(b=2)
    mask = np.array([[1, 1, 0, 1], [1, 0, 1, 1]])
    want = saobp.attention(q, k, v, lam=0.5, key_mask=mask.astype(np.float32), gpu=gpu)["output"]
    for m in (mask, mask.astype(bool), mask.astype(np.uint8), mask.tolist()):
        got = saobp.attention(q.tolist(), k, v, lam=0.5, key_mask=m, gpu=gpu)["output"]
        assert_close(got, want, f"key mask as {type(m).__name__} {getattr(m, 'dtype', '')}")
    per_head = saobp.attention(q, k, v, lam=np.array([0.5, 0.5]), key_mask=mask, gpu=gpu)["output"]
    assert_close(per_head, want, "λ as an array")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex64, np.bool_, object])
def test_other_dtypes_are_type_errors(gpu, dtype):
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"`q` must be a float32 or float64 array, got dtype"):
        saobp.attention(q.astype(dtype), k, v, gpu=gpu)
    with pytest.raises(TypeError, match="`A` must be a float32 or float64 array"):
        saobp.refine_map(np.eye(3).astype(dtype), gpu=gpu)
    with pytest.raises(TypeError, match="`P` must be a float32 or float64 array"):
        saobp.metrics(np.eye(3).astype(dtype), gpu=gpu)


def test_bad_shapes_and_arguments_are_value_errors(gpu):
    q, k, v = qkv()
    cases = [
        (lambda: saobp.attention(q[0], k[0], v[0], gpu=gpu), "shape"),
        (lambda: saobp.attention(q, k[:, :, :3], v, gpu=gpu), "shape"),
        (lambda: saobp.attention(q, k, v, key_mask=np.ones((1, 3)), gpu=gpu), "mask"),
        (lambda: saobp.attention(q, k, v, lam=-1.0, gpu=gpu), "lambda must be finite and >= 0"),
        (lambda: saobp.attention(q, k, v, lam=[0.1, 0.2, 0.3], gpu=gpu), "3 values but there are 2 heads"),
        (lambda: saobp.attention(q, k, v, lam=float("nan"), gpu=gpu), "lambda must be finite"),
        (lambda: saobp.attention(q, k, v, scale=0.0, gpu=gpu), "scale"),
        (lambda: saobp.attention(q, k, v, mode="fast", gpu=gpu), "unknown mode `fast`"),
        (lambda: saobp.attention(q, k, v, refined_metrics="some", gpu=gpu), "refined_metrics"),
        (lambda: saobp.attention(q, k, v, mode="flash", metrics=True, gpu=gpu), "row_stats"),
        (lambda: saobp.attention(q, k, v, mode="streaming", return_attention=True, gpu=gpu),
         "return_attention"),
        (lambda: saobp.attention(np.full_like(q, np.nan), k, v, gpu=gpu), "non-finite"),
        (lambda: saobp.attention(q * 1e300, k, v, gpu=gpu), "non-finite"),
        (lambda: saobp.refine_map(np.ones((3, 4)), gpu=gpu), r"\[\.\.\., N, N\]"),
        (lambda: saobp.refine_map(np.ones(3), gpu=gpu), r"\[\.\.\., N, N\]"),
        (lambda: saobp.refine_map(np.zeros((0, 3, 3)), gpu=gpu), "non-empty"),
        (lambda: saobp.refine_map(np.full((3, 3), 1 / 3), causal=True, gpu=gpu), "above the diagonal"),
        (lambda: saobp.refine_map(np.eye(3), lam=[1.0, 2.0], gpu=gpu), "2 values but there are 1 heads"),
        (lambda: saobp.refine_map(np.eye(3), lam=np.ones((1, 1)), gpu=gpu), "1-D"),
        (lambda: saobp.metrics(np.eye(3), key_mask=np.ones(4), gpu=gpu), "broadcast"),
        (lambda: saobp.metrics(np.where(np.eye(3) > 0, np.inf, 0.0), gpu=gpu), "non-finite"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_wrong_types_of_arguments(gpu):
    q, k, v = qkv()
    with pytest.raises(TypeError):
        saobp.attention(q, k, v, gpu="vulkan")
    with pytest.raises(TypeError, match="lam"):
        saobp.attention(q, k, v, lam="big", gpu=gpu)
    with pytest.raises(TypeError, match="`lam` must be a number or a sequence"):
        saobp.attention(q, k, v, lam=["a", "b"], gpu=gpu)
    with pytest.raises(TypeError, match="key_mask"):
        saobp.attention(q, k, v, key_mask=np.array([["a"] * 4]), gpu=gpu)


def test_threads_share_a_gpu(gpu):
    """The work runs detached from the interpreter: threads may call at once."""
    q, k, v = qkv(seed=5)
    want = saobp.attention(q, k, v, lam=0.4, gpu=gpu)["output"]
    results, errors = [], []

    def work():
        try:
            results.append(saobp.attention(q, k, v, lam=0.4, gpu=gpu)["output"])
        except Exception as e:  # reported below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 3
    for got in results:
        assert_close(got, want, "output computed in a thread")
