"""A float64 numpy reference of the spec's math, written from its formulas
(and independent of the library), plus the spec's tolerance rule."""

import numpy as np

# The spec: |got - want| <= ABS + REL * |want| for probabilities and outputs.
ABS = 1e-5
REL = 1e-4


def assert_close(got, want, what, abs_tol=ABS, rel=REL):
    """Every element within ``abs_tol + rel * |want|``; the message names the
    worst element."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    excess = np.abs(got - want) - (abs_tol + rel * np.abs(want))
    if excess.size and excess.max() > 0:
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(
            f"{what}: at {i} got {got[i]!r}, want {want[i]!r} "
            f"(bound {abs_tol + rel * abs(want[i]):.3g}); "
            f"{int((excess > 0).sum())} of {excess.size} elements out of bounds"
        )


def valid_keys(b, n, causal, key_mask=None):
    """``[B, 1, N, N]`` booleans: key j is valid for query i."""
    valid = np.ones((b, 1, n, n), dtype=bool)
    if key_mask is not None:
        valid &= np.asarray(key_mask, dtype=bool)[:, None, None, :]
    if causal:
        valid &= np.tril(np.ones((n, n), dtype=bool))
    return valid


def softmax_attention(q, k, causal=False, key_mask=None, scale=None):
    """``A`` ``[B, H, N, N]``: softmax over each row's valid keys; a row with
    none is all zeros."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    b, _, n, d = q.shape
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    valid = np.broadcast_to(valid_keys(b, n, causal, key_mask), s.shape)
    s = np.where(valid, s, -np.inf)
    row_max = s.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(valid, np.exp(s - row_max), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def messages(a):
    """``M_ij = sum_{k not in {i, j}} A_ik A_kj`` for j != i, ``M_ii = 0``."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[-1]
    m = np.zeros_like(a)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            ks = [k for k in range(n) if k not in (i, j)]
            m[..., i, j] = (a[..., i, ks] * a[..., ks, j]).sum(axis=-1)
    return m


def lam_per_head(lam, h):
    """``[H, 1]`` for broadcasting over ``[..., H, N]``."""
    return np.broadcast_to(np.asarray(lam, dtype=np.float64), (h,))[:, None]


def refine(a, lam):
    """``(M, m, R, GTD)`` of maps ``[..., H, N, N]`` at λ (number or per head)."""
    a = np.asarray(a, dtype=np.float64)
    msg = messages(a)
    m = msg.sum(axis=-1)
    lam = lam_per_head(lam, a.shape[-3])
    r = (a + lam[..., None] * msg) / (1.0 + lam * m)[..., None]
    gtd = lam * m / (1.0 + lam * m)
    return msg, m, r, gtd


def row_metrics(p, n_valid, m, lam=1.0, weight=None):
    """The spec's per-row metrics of ``p`` ``[..., H, N, N]`` as a dict of
    ``[..., H, N]`` arrays; ``n_valid`` is ``n_i`` per row, ``m`` the
    multi-hop mass reported (from ``A``)."""
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[-1]
    logs = np.log(np.where(p > 0, p, 1.0))
    entropy = -(p * logs).sum(axis=-1)
    n_valid = np.broadcast_to(n_valid, entropy.shape).astype(np.float64)
    log_n = np.log(np.maximum(n_valid, 1.0))
    normalized = np.divide(entropy, log_n, out=np.zeros_like(entropy), where=n_valid > 1)
    sparsity = np.where(n_valid > 0, 1.0 - np.exp(entropy) / np.maximum(n_valid, 1.0), 0.0)
    idx = np.arange(n)
    distance = (p * np.abs(idx[:, None] - idx[None, :])).sum(axis=-1)
    lam = lam_per_head(lam, p.shape[-3])
    gtd = lam * m / (1.0 + lam * m)
    if weight is None:
        weight = (n_valid >= 1).astype(np.float64)
    return {
        "entropy": entropy,
        "normalized_entropy": normalized,
        "sparsity": sparsity,
        "peak": p.max(axis=-1),
        "distance": distance,
        "multi_hop_mass": m,
        "gtd": gtd,
        "weight": np.broadcast_to(weight, entropy.shape).astype(np.float64),
    }


def n_valid_and_weight(b, h, n, causal, key_mask=None):
    """``n_i`` and the summary weight (query not padded, ``n_i >= 1``), ``[B, H, N]``."""
    valid = valid_keys(b, n, causal, key_mask)
    n_valid = np.broadcast_to(valid.sum(axis=-1), (b, h, n))
    query_kept = np.ones((b, n), dtype=bool) if key_mask is None else np.asarray(key_mask, bool)
    weight = (n_valid >= 1) & query_kept[:, None, :]
    return n_valid, weight.astype(np.float64)


def head_means(rows):
    """Per-head means over counted rows: ``{metric: [B, H]}``."""
    w = rows["weight"]
    count = w.sum(axis=-1)
    out = {}
    for name, values in rows.items():
        if name == "weight":
            continue
        total = (values * w).sum(axis=-1)
        out[name] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    out["rows"] = count
    return out
