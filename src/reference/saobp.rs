//! Reference of [`crate::kernels::saobp`]: SAOBP straight from the spec's
//! definitions (`M` summed term by term, `R`, `O = R·V`). The forward never
//! uses the O(N²D) form, so it checks the fused kernels rather than
//! restating them.
//!
//! The backward comes in both forms: [`output_backward_materialized`]
//! differentiates through `M` (N³ per head) and checks
//! [`output_backward`], the spec's O(N²D) adjoint that never forms `M`;
//! [`saobp_backward`] carries the latter through the softmax to `q`, `k`.

use super::attention::{attention, check_inputs, forward, scores_backward, RefOptions};
use super::softmax::softmax_backward;
use super::{blocks, expect_len};
use crate::error::{Error, Result};

/// Fails with a shape error unless `lambda` has one entry per head of `maps`
/// maps (`maps = B·heads`; with no maps, λ is not used).
fn check_heads(what: &str, lambda: &[f64], maps: usize) -> Result<()> {
    if maps > 0 && (lambda.is_empty() || !maps.is_multiple_of(lambda.len())) {
        return Err(Error::shape(format!(
            "{what}: {} λ values do not divide {maps} maps into B·heads",
            lambda.len()
        )));
    }
    Ok(())
}

/// Two-hop messages of `a` (`[G, n, n]`): `M_ij = Σ_{k∉{i,j}} A_ik A_kj`, `M_ii = 0`.
pub fn messages(a: &[f64], n: usize) -> Result<Vec<f64>> {
    blocks("reference messages: A", a.len(), n)?;
    let mut m = vec![0.0; a.len()];
    for (g, block) in m.chunks_mut(n * n).enumerate() {
        let a = &a[g * n * n..][..n * n];
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                block[i * n + j] = (0..n)
                    .filter(|&k| k != i && k != j)
                    .map(|k| a[i * n + k] * a[k * n + j])
                    .sum();
            }
        }
    }
    Ok(m)
}

/// Row sums of `M` (`[G, n, n]`): the multi-hop mass `m`, `[G, n]`.
pub fn multi_hop_mass(messages: &[f64], n: usize) -> Result<Vec<f64>> {
    blocks("reference multi-hop mass: M", messages.len(), n)?;
    Ok(messages.chunks(n).map(|row| row.iter().sum()).collect())
}

/// `R_ij = (A_ij + λ_h M_ij) / (1 + λ_h m_i)` for `a` and `messages`
/// `[G, n, n]` and `mass` `[G, n]`, with `lambda[h]` per head and
/// `G = B·heads` maps.
pub fn refine(
    a: &[f64],
    messages: &[f64],
    mass: &[f64],
    lambda: &[f64],
    n: usize,
) -> Result<Vec<f64>> {
    let maps = blocks("reference refine: A", a.len(), n)?;
    expect_len("reference refine: M", messages.len(), &[maps, n, n])?;
    expect_len("reference refine: m", mass.len(), &[maps, n])?;
    check_heads("reference refine", lambda, maps)?;
    let heads = lambda.len();
    let mut r = vec![0.0; a.len()];
    for (row, out) in r.chunks_mut(n).enumerate() {
        let l = lambda[(row / n) % heads];
        for (j, x) in out.iter_mut().enumerate() {
            *x = (a[row * n + j] + l * messages[row * n + j]) / (1.0 + l * mass[row]);
        }
    }
    Ok(r)
}

/// `GTD_i = λ_h m_i / (1 + λ_h m_i)` for `mass` `[G, n]`, `lambda[h]` per
/// head and `G = B·heads` maps.
pub fn gtd(mass: &[f64], lambda: &[f64], n: usize) -> Result<Vec<f64>> {
    if n == 0 || !mass.len().is_multiple_of(n) {
        return Err(Error::shape(format!(
            "reference GTD: {} values of m are not whole rows of n = {n}",
            mass.len()
        )));
    }
    check_heads("reference GTD", lambda, mass.len() / n)?;
    let heads = lambda.len();
    Ok(mass
        .iter()
        .enumerate()
        .map(|(row, m)| {
            let l = lambda[(row / n) % heads];
            l * m / (1.0 + l * m)
        })
        .collect())
}

/// `P·V` for `p` `[G, n, n]` and `v` `[G, n, dv]` (f32 or f64).
pub fn apply(p: &[f64], v: &[impl Copy + Into<f64>], n: usize, dv: usize) -> Result<Vec<f64>> {
    let groups = blocks("reference P·V: P", p.len(), n)?;
    expect_len("reference P·V: V", v.len(), &[groups, n, dv])?;
    let mut out = vec![0.0; groups * n * dv];
    for g in 0..groups {
        for i in 0..n {
            for j in 0..n {
                let w = p[(g * n + i) * n + j];
                for c in 0..dv {
                    out[(g * n + i) * dv + c] += w * v[(g * n + j) * dv + c].into();
                }
            }
        }
    }
    Ok(out)
}

/// Every intermediate of one SAOBP run, in f64.
#[derive(Debug, Clone)]
pub struct SaobpRef {
    /// `A` `[B, H, N, N]`.
    pub attention: Vec<f64>,
    /// `M` `[B, H, N, N]`.
    pub messages: Vec<f64>,
    /// `m` `[B, H, N]`.
    pub mass: Vec<f64>,
    /// `R` `[B, H, N, N]`.
    pub refined: Vec<f64>,
    /// `O = R·V` `[B, H, N, Dv]`.
    pub output: Vec<f64>,
    /// `A·V`, the plain output.
    pub plain_output: Vec<f64>,
}

/// Attention then SAOBP with `lambda[h]` per head (`[H]`), all in f64;
/// arguments otherwise as in [`attention`] (f32 or f64 inputs), and lengths
/// that do not match the shapes are a shape error.
pub fn saobp(
    q: &[impl Copy + Into<f64>],
    k: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    shape: [usize; 4],
    dv: usize,
    opts: &RefOptions,
    lambda: &[f64],
) -> Result<SaobpRef> {
    expect_len("reference SAOBP: lambda", lambda.len(), &[shape[1]])?;
    let n = shape[2];
    let plain = attention(q, k, v, shape, dv, opts)?;
    let a = plain.attention;
    // With N = 0 there are no rows and nothing to refine.
    if n == 0 {
        return Ok(SaobpRef {
            attention: a,
            messages: Vec::new(),
            mass: Vec::new(),
            refined: Vec::new(),
            output: plain.output.clone(),
            plain_output: plain.output,
        });
    }
    let messages = messages(&a, n)?;
    let mass = multi_hop_mass(&messages, n)?;
    let refined = refine(&a, &messages, &mass, lambda, n)?;
    let output = apply(&refined, v, n, dv)?;
    Ok(SaobpRef {
        attention: a,
        messages,
        mass,
        refined,
        output,
        plain_output: plain.output,
    })
}

/// Gradients of the refined output `O = R·V` with respect to `A`, `V` and λ.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputGrads {
    /// `∂L/∂A`, `[G, n, n]`: `A` taken as a free matrix, so masked entries
    /// get a gradient too (the softmax's backward zeroes them).
    pub grad_attention: Vec<f64>,
    /// `∂L/∂V`, `[G, n, dv]`.
    pub grad_v: Vec<f64>,
    /// `∂L/∂λ_h`, `[heads]`, summed over the batch.
    pub grad_lambda: Vec<f64>,
}

/// `x` in f64.
fn widen(x: &[impl Copy + Into<f64>]) -> Vec<f64> {
    x.iter().map(|&v| v.into()).collect()
}

/// Checks the arguments of an output backward (`what` names it) and gives
/// the number of maps `G`.
fn check_output_args(
    what: &str,
    a: usize,
    v: usize,
    grad_output: usize,
    lambda: &[f64],
    n: usize,
    dv: usize,
) -> Result<usize> {
    let maps = blocks(&format!("{what}: A"), a, n)?;
    expect_len(&format!("{what}: V"), v, &[maps, n, dv])?;
    expect_len(&format!("{what}: ∂L/∂O"), grad_output, &[maps, n, dv])?;
    check_heads(what, lambda, maps)?;
    Ok(maps)
}

/// `P·X` for `p` `[n, n]` and `x` `[n, dv]`.
fn product(p: &[f64], x: &[f64], n: usize, dv: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * dv];
    for i in 0..n {
        for j in 0..n {
            for c in 0..dv {
                out[i * dv + c] += p[i * n + j] * x[j * dv + c];
            }
        }
    }
    out
}

/// `Pᵀ·X` for `p` `[n, n]` and `x` `[n, dv]`; rows of `X` are summed in
/// order, so that at λ = 0 `∂L/∂V` matches plain attention's bit for bit.
fn product_transposed(p: &[f64], x: &[f64], n: usize, dv: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * dv];
    for i in 0..n {
        for j in 0..n {
            for c in 0..dv {
                out[j * dv + c] += p[i * n + j] * x[i * dv + c];
            }
        }
    }
    out
}

/// `rowdot(X, Y)_i = X_i · Y_i` for `[n, dv]` matrices.
fn rowdot(x: &[f64], y: &[f64], dv: usize) -> Vec<f64> {
    x.chunks(dv.max(1))
        .zip(y.chunks(dv.max(1)))
        .map(|(x, y)| x.iter().zip(y).map(|(x, y)| x * y).sum())
        .collect()
}

/// Backward of the refined output `O = R·V` in its O(N²D) form, exactly as
/// the spec writes it: from `a` (`A`, `[G, n, n]`), `v` (`[G, n, dv]`),
/// `lambda[h]` per head (`G = B·heads`) and `grad_output = G = ∂L/∂O`
/// (`[G, n, dv]`), the gradients with respect to `A`, `V` and λ. It
/// recomputes `a, r, c, Y, U, M·V, m` and never forms `M`. Inputs may be
/// f32 or f64; lengths that do not match are a shape error.
pub fn output_backward(
    a: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    lambda: &[f64],
    n: usize,
    dv: usize,
    grad_output: &[impl Copy + Into<f64>],
) -> Result<OutputGrads> {
    let maps = check_output_args(
        "reference SAOBP output backward",
        a.len(),
        v.len(),
        grad_output.len(),
        lambda,
        n,
        dv,
    )?;
    let (a_all, v_all, g_all) = (widen(a), widen(v), widen(grad_output));
    let heads = lambda.len();
    let mut grad_attention = vec![0.0; a.len()];
    let mut grad_v = vec![0.0; v.len()];
    let mut grad_lambda = vec![0.0; heads];
    for map in 0..maps {
        let l = lambda[map % heads];
        let at = &a_all[map * n * n..][..n * n];
        let vs = &v_all[map * n * dv..][..n * dv];
        let go = &g_all[map * n * dv..][..n * dv];

        // The forward's intermediates.
        let diag: Vec<f64> = (0..n).map(|i| at[i * n + i]).collect();
        let r: Vec<f64> = at.chunks(n).map(|row| row.iter().sum()).collect();
        let c: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .filter(|&k| k != i)
                    .map(|k| at[i * n + k] * at[k * n + i])
                    .sum()
            })
            .collect();
        let y = product(at, vs, n, dv);
        let u: Vec<f64> = (0..n * dv).map(|x| y[x] - diag[x / dv] * vs[x]).collect();
        let au = product(at, &u, n, dv);
        let mv: Vec<f64> = (0..n * dv)
            .map(|x| {
                let i = x / dv;
                au[x] - diag[i] * y[x] - (c[i] - diag[i] * diag[i]) * vs[x]
            })
            .collect();
        let m: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|k| at[i * n + k] * (r[k] - diag[k]))
                    .sum::<f64>()
                    - diag[i] * (r[i] - diag[i])
                    - c[i]
            })
            .collect();
        let s: Vec<f64> = m.iter().map(|m| 1.0 / (1.0 + l * m)).collect();
        let o: Vec<f64> = (0..n * dv)
            .map(|x| s[x / dv] * (y[x] + l * mv[x]))
            .collect();

        // Through O = s ⊙ (Y + λ MV).
        let g_dot_o = rowdot(go, &o, dv);
        let g_dot_mv = rowdot(go, &mv, dv);
        let mut d_y: Vec<f64> = (0..n * dv).map(|x| s[x / dv] * go[x]).collect();
        let d_mv: Vec<f64> = (0..n * dv).map(|x| l * s[x / dv] * go[x]).collect();
        let d_m: Vec<f64> = (0..n).map(|i| -l * s[i] * g_dot_o[i]).collect();
        grad_lambda[map % heads] += (0..n)
            .map(|i| s[i] * (g_dot_mv[i] - m[i] * g_dot_o[i]))
            .sum::<f64>();

        let mut d_a = vec![0.0; n * n];
        let mut d_v = vec![0.0; n * dv];
        let (mut d_diag, mut d_r, mut d_c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);

        // From MV = A·U − a⊙Y − (c − a²)⊙V.
        for i in 0..n {
            for k in 0..n {
                d_a[i * n + k] += (0..dv)
                    .map(|x| d_mv[i * dv + x] * u[k * dv + x])
                    .sum::<f64>();
            }
        }
        let d_u = product_transposed(at, &d_mv, n, dv);
        let mv_dot_y = rowdot(&d_mv, &y, dv);
        let t = rowdot(&d_mv, vs, dv);
        for i in 0..n {
            d_diag[i] -= mv_dot_y[i];
            d_c[i] -= t[i];
            d_diag[i] += 2.0 * diag[i] * t[i];
            for x in 0..dv {
                d_y[i * dv + x] -= diag[i] * d_mv[i * dv + x];
                d_v[i * dv + x] -= (c[i] - diag[i] * diag[i]) * d_mv[i * dv + x];
            }
        }

        // From m = A·(r − a) − a⊙(r − a) − c.
        for i in 0..n {
            for k in 0..n {
                d_a[i * n + k] += d_m[i] * (r[k] - diag[k]);
            }
        }
        let w: Vec<f64> = (0..n)
            .map(|k| (0..n).map(|i| at[i * n + k] * d_m[i]).sum())
            .collect();
        for i in 0..n {
            d_r[i] += w[i];
            d_diag[i] -= w[i];
            d_diag[i] -= d_m[i] * (r[i] - 2.0 * diag[i]);
            d_r[i] -= d_m[i] * diag[i];
            d_c[i] -= d_m[i];
        }

        // From U = Y − a⊙V.
        let u_dot_v = rowdot(&d_u, vs, dv);
        for k in 0..n {
            d_diag[k] -= u_dot_v[k];
            for x in 0..dv {
                d_y[k * dv + x] += d_u[k * dv + x];
                d_v[k * dv + x] -= diag[k] * d_u[k * dv + x];
            }
        }

        // From Y = A·V.
        for i in 0..n {
            for j in 0..n {
                let mut dot = 0.0;
                for x in 0..dv {
                    dot += d_y[i * dv + x] * vs[j * dv + x];
                }
                d_a[i * n + j] += dot;
            }
        }
        let back = product_transposed(at, &d_y, n, dv);
        for (d, b) in d_v.iter_mut().zip(back) {
            *d += b;
        }

        // From r, c and a, which are read off A.
        for p in 0..n {
            for q in 0..n {
                d_a[p * n + q] += d_r[p];
                if p != q {
                    d_a[p * n + q] += (d_c[p] + d_c[q]) * at[q * n + p];
                }
            }
            d_a[p * n + p] += d_diag[p];
        }

        grad_attention[map * n * n..][..n * n].copy_from_slice(&d_a);
        grad_v[map * n * dv..][..n * dv].copy_from_slice(&d_v);
    }
    Ok(OutputGrads {
        grad_attention,
        grad_v,
        grad_lambda,
    })
}

/// Backward of the refined output `O = R·V` through `M` explicitly (N³ per
/// head), the check on [`output_backward`]: `R = (A + λM)/(1 + λm)`,
/// `m_i = Σ_j M_ij`, `M_ij = Σ_{k∉{i,j}} A_ik A_kj`, each differentiated
/// as written. Arguments and result as in [`output_backward`].
pub fn output_backward_materialized(
    a: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    lambda: &[f64],
    n: usize,
    dv: usize,
    grad_output: &[impl Copy + Into<f64>],
) -> Result<OutputGrads> {
    let maps = check_output_args(
        "reference SAOBP materialized output backward",
        a.len(),
        v.len(),
        grad_output.len(),
        lambda,
        n,
        dv,
    )?;
    let (a_all, v_all, g_all) = (widen(a), widen(v), widen(grad_output));
    let messages = messages(&a_all, n)?;
    let mass = multi_hop_mass(&messages, n)?;
    let heads = lambda.len();
    let mut grad_attention = vec![0.0; a.len()];
    let mut grad_v = vec![0.0; v.len()];
    let mut grad_lambda = vec![0.0; heads];
    for map in 0..maps {
        let l = lambda[map % heads];
        let at = &a_all[map * n * n..][..n * n];
        let mm = &messages[map * n * n..][..n * n];
        let m = &mass[map * n..][..n];
        let vs = &v_all[map * n * dv..][..n * dv];
        let go = &g_all[map * n * dv..][..n * dv];
        let d_a = &mut grad_attention[map * n * n..][..n * n];
        let d_v = &mut grad_v[map * n * dv..][..n * dv];

        let mut d_m = vec![0.0; n * n];
        for i in 0..n {
            let s = 1.0 / (1.0 + l * m[i]);
            // R_ij = P_ij · s_i with P = A + λM.
            let mut d_s = 0.0;
            let mut d_p = vec![0.0; n];
            for j in 0..n {
                let p = at[i * n + j] + l * mm[i * n + j];
                let d_r: f64 = (0..dv).map(|x| go[i * dv + x] * vs[j * dv + x]).sum();
                for x in 0..dv {
                    d_v[j * dv + x] += p * s * go[i * dv + x];
                }
                d_p[j] = s * d_r;
                d_s += d_r * p;
            }
            // s_i = 1/(1 + λ m_i): ∂s/∂m = −λ s², ∂s/∂λ = −m s².
            let d_mass = -l * s * s * d_s;
            grad_lambda[map % heads] += -m[i] * s * s * d_s;
            for j in 0..n {
                d_a[i * n + j] += d_p[j];
                grad_lambda[map % heads] += d_p[j] * mm[i * n + j];
                // M_ii is 0 by definition, not a function of A.
                if j != i {
                    d_m[i * n + j] = l * d_p[j] + d_mass;
                }
            }
        }
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                for k in (0..n).filter(|&k| k != i && k != j) {
                    d_a[i * n + k] += d_m[i * n + j] * at[k * n + j];
                    d_a[k * n + j] += d_m[i * n + j] * at[i * n + k];
                }
            }
        }
    }
    Ok(OutputGrads {
        grad_attention,
        grad_v,
        grad_lambda,
    })
}

/// Gradients of the loss with respect to SAOBP attention's inputs, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct SaobpGrads {
    /// `∂L/∂q`, `[B, H, N, D]`.
    pub grad_q: Vec<f64>,
    /// `∂L/∂k`, `[B, H, N, D]`.
    pub grad_k: Vec<f64>,
    /// `∂L/∂v`, `[B, H, N, Dv]`.
    pub grad_v: Vec<f64>,
    /// `∂L/∂λ_h`, `[H]`, summed over the batch.
    pub grad_lambda: Vec<f64>,
}

/// Backward of [`saobp`] (attention then SAOBP, `O = R·V`) in f64: from
/// `grad_output = ∂L/∂O` (`[B, H, N, Dv]`), the O(N²D) [`output_backward`]
/// gives `∂L/∂A`, `∂L/∂V` and `∂L/∂λ`; the softmax's backward and the
/// scores' (`∂L/∂q = scale · (∂L/∂S)·K`, `∂L/∂k = scale · (∂L/∂S)ᵀ·Q`) carry
/// `∂L/∂A` to `q` and `k`. With λ = 0 the gradients of `q`, `k` and `v` are
/// exactly those of [`attention_backward`](super::attention::attention_backward).
/// Inputs may be f32 or f64; other arguments as in [`saobp`], and lengths
/// that do not match are a shape error.
#[allow(clippy::too_many_arguments)]
pub fn saobp_backward(
    q: &[impl Copy + Into<f64>],
    k: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    shape: [usize; 4],
    dv: usize,
    opts: &RefOptions,
    lambda: &[f64],
    grad_output: &[impl Copy + Into<f64>],
) -> Result<SaobpGrads> {
    let [bs, hs, n, _] = shape;
    expect_len("reference SAOBP backward: lambda", lambda.len(), &[hs])?;
    check_inputs(q, k, shape, opts)?;
    expect_len("reference SAOBP backward: v", v.len(), &[bs, hs, n, dv])?;
    expect_len(
        "reference SAOBP backward: ∂L/∂O",
        grad_output.len(),
        &[bs, hs, n, dv],
    )?;
    // With N = 0 there are no rows: every gradient is empty, ∂L/∂λ is 0.
    if n == 0 {
        return Ok(SaobpGrads {
            grad_q: Vec::new(),
            grad_k: Vec::new(),
            grad_v: Vec::new(),
            grad_lambda: vec![0.0; hs],
        });
    }
    let a = forward(q, k, v, shape, dv, opts).attention;
    let out = output_backward(&a, v, lambda, n, dv, grad_output)?;
    let grad_scores = softmax_backward(
        &a,
        &out.grad_attention,
        &[bs, hs, n, n],
        opts.causal,
        opts.key_mask,
    )?;
    let (grad_q, grad_k) = scores_backward(&grad_scores, q, k, shape, opts);
    Ok(SaobpGrads {
        grad_q,
        grad_k,
        grad_v: out.grad_v,
        grad_lambda: out.grad_lambda,
    })
}
