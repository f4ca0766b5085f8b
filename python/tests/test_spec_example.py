"""The spec's worked example (one head, no mask, λ = 0.5), with its exact
numbers (given to six decimals, well inside the tolerance), through every
function and mode."""

import numpy as np
import pytest

import saobp
from reference import assert_close

S = np.array([[2.0, 0.0, 1.0], [0.5, 1.5, 0.0], [0.0, 1.0, 1.0]])
A = [[0.665241, 0.090031, 0.244728], [0.231224, 0.628532, 0.140244], [0.155362, 0.422319, 0.422319]]
M = [[0, 0.103353, 0.012626], [0.021789, 0, 0.056587], [0.097650, 0.013987, 0]]
MASS = [0.115980, 0.078376, 0.111638]
R = [[0.628778, 0.133940, 0.237282], [0.232988, 0.604830, 0.162182], [0.193393, 0.406616, 0.399992]]
GTD_R = [0.054811, 0.037710, 0.052868]
GTD_A = [0.103926, 0.072679, 0.100426]
H_A = [0.832396, 0.905959, 1.017357]
H_R = [0.902338, 0.938538, 1.050175]
SPARSITY_A = [0.233727, 0.175232, 0.078042]
PEAK_A = [0.665241, 0.628532, 0.422319]
DISTANCE_A = [0.579488, 0.371468, 0.733044]
V = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
O = [[0.866060, 0.371222], [0.395170, 0.767012], [0.593384, 0.806607]]
LAM = 0.5

# q = S and k = I with scale 1 give exactly the example's scores.
Q = S[None, None]
K = np.eye(3)[None, None]
VV = V[None, None]


def run(gpu, mode, **kw):
    return saobp.attention(Q, K, VV, lam=LAM, mode=mode, scale=1.0, gpu=gpu, **kw)


@pytest.mark.parametrize("mode", ["fused", "materialized"])
def test_maps_and_metrics(gpu, mode):
    out = run(gpu, mode, return_attention=True, return_refined=True, metrics=True)
    assert_close(out["attention"][0, 0], A, "A")
    assert_close(out["refined"][0, 0], R, "R")
    assert_close(out["m"][0, 0], MASS, "m")
    assert_close(out["output"][0, 0], O, "O")
    rows_a = out["metrics"]["attention"]["rows"]
    rows_r = out["metrics"]["refined"]["rows"]
    assert_close(out["metrics"]["refined_gtd"][0, 0], GTD_R, "GTD(R) at λ=0.5")
    assert_close(rows_r["gtd"][0, 0], GTD_R, "GTD row of R's metrics")
    assert_close(rows_a["gtd"][0, 0], GTD_A, "GTD(A) at λ=1")
    assert_close(rows_a["entropy"][0, 0], H_A, "H(A)")
    assert_close(rows_r["entropy"][0, 0], H_R, "H(R)")
    assert_close(rows_a["sparsity"][0, 0], SPARSITY_A, "sparsity(A)")
    assert_close(rows_a["peak"][0, 0], PEAK_A, "peak(A)")
    # Distance sums N terms of size up to N - 1: the absolute part scales with N.
    assert_close(rows_a["distance"][0, 0], DISTANCE_A, "distance(A)", abs_tol=1e-5 * 3)
    head = out["metrics"]["attention"]["heads"][0][0]
    assert head["rows"] == 3
    assert_close(head["entropy"], np.mean(H_A), "mean H(A)")
    assert_close(head["gtd"], np.mean(GTD_A), "mean GTD(A)")
    assert out["metrics"]["attention"]["overall"]["entropy"] == pytest.approx(head["entropy"])


@pytest.mark.parametrize("mode", ["fused", "materialized", "streaming"])
def test_refined_output_every_refined_mode(gpu, mode):
    out = run(gpu, mode)
    assert_close(out["output"][0, 0], O, f"O ({mode})")
    assert_close(out["m"][0, 0], MASS, f"m ({mode})")


@pytest.mark.parametrize("mode", ["plain", "flash"])
def test_plain_modes_give_a_v(gpu, mode):
    out = run(gpu, mode)
    assert_close(out["output"][0, 0], np.array(A) @ V, f"A·V ({mode})")


def test_refine_map_of_the_example(gpu):
    out = saobp.refine_map(np.array(A), lam=LAM, return_messages=True, gpu=gpu)
    assert out["refined"].shape == (3, 3)
    assert out["m"].shape == (3,)
    assert_close(out["messages"], M, "M")
    assert_close(out["m"], MASS, "m")
    assert_close(out["refined"], R, "R")
    assert_close(out["gtd"], GTD_R, "GTD at λ=0.5")


def test_metrics_of_the_example(gpu):
    rows = saobp.metrics(np.array(A), gpu=gpu)
    assert_close(rows["entropy"], H_A, "H(A)")
    assert_close(rows["sparsity"], SPARSITY_A, "sparsity(A)")
    assert_close(rows["peak"], PEAK_A, "peak(A)")
    assert_close(rows["distance"], DISTANCE_A, "distance(A)", abs_tol=1e-5 * 3)
    assert_close(rows["multi_hop_mass"], MASS, "m")
    assert_close(rows["gtd"], GTD_A, "GTD(A) at λ=1")
    assert_close(saobp.metrics(np.array(R), gpu=gpu)["entropy"], H_R, "H(R)")


def test_causal_example(gpu):
    out = run(gpu, "materialized", causal=True, return_refined=True, metrics=True)
    r = out["refined"][0, 0]
    assert_close(r[2], [0.200751, 0.399624, 0.399624], "causal R_2")
    assert_close(out["metrics"]["refined_gtd"][0, 0], [0.0, 0.0, 0.053738], "causal GTD")
    causal_a = saobp.attention(Q, K, VV, mode="plain", causal=True, scale=1.0,
                               return_attention=True, gpu=gpu)["attention"][0, 0]
    refined = saobp.refine_map(causal_a, lam=LAM, causal=True, return_messages=True, gpu=gpu)
    assert_close(refined["messages"][2, 0], 0.113579, "causal M_20")
    assert_close(refined["refined"][2], [0.200751, 0.399624, 0.399624], "causal R_2 (refine_map)")
    assert np.all(np.triu(refined["refined"], 1) == 0), "R of a causal A is causal"
