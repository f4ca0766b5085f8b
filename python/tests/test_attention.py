"""`saobp.attention` against the float64 reference in every mode, with and
without causal and key masks (including rows with no valid key), per-head λ,
maps, multi-hop mass, row statistics and metrics."""

import numpy as np
import pytest

import saobp
import reference as ref
from reference import assert_close

B, H, N, D, DV = 2, 2, 5, 3, 4
LAM = [0.3, 1.5]
# Batch 1 masks key 0: under causal masking its row 0 has no valid key at all.
MASK = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H, N, D))
    k = rng.normal(size=(B, H, N, D))
    v = rng.normal(size=(B, H, N, DV))
    return q, k, v


def want(q, k, v, causal, mask, refined):
    a = ref.softmax_attention(q, k, causal=causal, key_mask=mask)
    _, m, r, gtd = ref.refine(a, LAM)
    o = (r if refined else a) @ v
    return a, m, r, gtd, o


CASES = [(c, m) for c in (False, True) for m in (False, True)]
IDS = [f"{'causal' if c else 'full'}-{'mask' if m else 'nomask'}" for c, m in CASES]


@pytest.mark.parametrize("mode", saobp.MODES)
@pytest.mark.parametrize("causal,masked", CASES, ids=IDS)
def test_output_and_mass(gpu, mode, causal, masked):
    q, k, v = inputs()
    mask = MASK if masked else None
    refined = mode in ("fused", "materialized", "streaming")
    a, m, _, _, o = want(q, k, v, causal, mask, refined)
    out = saobp.attention(q, k, v, lam=LAM, causal=causal, mode=mode, key_mask=mask, gpu=gpu)
    assert out["output"].dtype == np.float32
    assert_close(out["output"], o, f"O ({mode})")
    if refined:
        assert_close(out["m"], m, f"m ({mode})")
    else:
        assert "m" not in out
    if mode in ("flash", "streaming"):
        # Row statistics: max valid score, softmax denominator, entropy of A.
        s = np.einsum("bhid,bhjd->bhij", q, k) / np.sqrt(D)
        valid = np.broadcast_to(ref.valid_keys(B, N, causal, mask), s.shape)
        has_key = valid.any(axis=-1)
        s_max = np.where(has_key, np.where(valid, s, -np.inf).max(axis=-1), 0.0)
        total = np.where(valid, np.exp(s - s_max[..., None]), 0.0).sum(axis=-1)
        entropy = ref.row_metrics(a, 1, m)["entropy"]
        stats = out["row_stats"]
        assert stats.shape == (B, H, N, 3)
        assert_close(stats[..., 0], s_max, "row max")
        assert_close(stats[..., 1], total, "row denominator")
        assert_close(stats[..., 2], entropy, "row entropy")
    else:
        assert "row_stats" not in out


@pytest.mark.parametrize("mode", ["plain", "fused", "materialized"])
@pytest.mark.parametrize("causal,masked", CASES, ids=IDS)
def test_maps_and_metrics(gpu, mode, causal, masked):
    q, k, v = inputs(1)
    mask = MASK if masked else None
    a, m, r, gtd, _ = want(q, k, v, causal, mask, True)
    refined = mode != "plain"
    out = saobp.attention(
        q, k, v, lam=LAM, causal=causal, mode=mode, key_mask=mask, metrics=True,
        return_attention=True, return_refined=refined, gpu=gpu,
    )
    assert_close(out["attention"], a, "A")
    if refined:
        assert_close(out["refined"], r, "R")
    else:
        assert "refined" not in out
    n_valid, weight = ref.n_valid_and_weight(B, H, N, causal, mask)
    metrics = out["metrics"]
    maps = [("attention", ref.row_metrics(a, n_valid, m, 1.0, weight))]
    if refined:
        maps.append(("refined", ref.row_metrics(r, n_valid, m, LAM, weight)))
        assert_close(metrics["refined_gtd"], gtd, "refined_gtd")
    else:
        assert "refined" not in metrics and "refined_gtd" not in metrics
    for which, rows in maps:
        got = metrics[which]
        assert list(got["rows"]) == list(saobp.METRIC_NAMES)
        for name in saobp.METRIC_NAMES:
            bound = ref.ABS * N if name == "distance" else ref.ABS
            assert_close(got["rows"][name], rows[name], f"{which} {name}", abs_tol=bound)
        means = ref.head_means(rows)
        assert len(got["heads"]) == B and all(len(h) == H for h in got["heads"])
        for b in range(B):
            for h in range(H):
                summary = got["heads"][b][h]
                assert summary["rows"] == means["rows"][b, h]
                for name, value in summary.items():
                    if name == "rows":
                        continue
                    bound = ref.ABS * N if name == "distance" else ref.ABS
                    assert_close(value, means[name][b, h], f"{which} head {b},{h} {name}",
                                 abs_tol=bound)
        assert len(got["batch"]) == B
        assert set(got["overall"]) == set(got["heads"][0][0])


def test_fused_from_mass_gives_only_refined_gtd(gpu):
    q, k, v = inputs(2)
    _, _, _, gtd, _ = want(q, k, v, False, None, True)
    out = saobp.attention(q, k, v, lam=LAM, metrics=True, refined_metrics="from_mass", gpu=gpu)
    assert "refined" not in out["metrics"]
    assert_close(out["metrics"]["refined_gtd"], gtd, "refined_gtd")


def test_lambda_zero_is_plain_attention(gpu):
    q, k, v = inputs(3)
    plain = saobp.attention(q, k, v, mode="plain", gpu=gpu)["output"]
    for mode in ("fused", "materialized", "streaming"):
        out = saobp.attention(q, k, v, lam=0.0, mode=mode, gpu=gpu)["output"]
        assert_close(out, plain, f"λ=0 in {mode}")


def test_value_width_and_scale(gpu):
    rng = np.random.default_rng(4)
    q, k = rng.normal(size=(2, 1, 1, 4, 2))
    v = rng.normal(size=(1, 1, 4, 6))
    a = ref.softmax_attention(q, k, scale=0.7)
    _, _, r, _ = ref.refine(a, 0.8)
    out = saobp.attention(q, k, v, lam=0.8, scale=0.7, gpu=gpu)
    assert out["output"].shape == (1, 1, 4, 6)
    assert_close(out["output"], r @ v, "O with Dv != D and scale 0.7")
