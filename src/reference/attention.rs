//! Reference of [`crate::kernels::attention`]: the spec's attention, written
//! out loop by loop (it does not call the other reference functions, so the
//! two paths check each other), and its backward.

use super::softmax::softmax_backward;
use super::{expect_len, numel};
use crate::error::Result;

/// Reference attention result.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionRef {
    /// `A`, `[B, H, N, N]`.
    pub attention: Vec<f64>,
    /// `O = A·V`, `[B, H, N, Dv]`.
    pub output: Vec<f64>,
}

/// Masks and scale of the reference, as in [`crate::AttentionOptions`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RefOptions<'a> {
    /// Query `i` only sees keys `j <= i`.
    pub causal: bool,
    /// `[B, N]`, nonzero = keep.
    pub key_mask: Option<&'a [f32]>,
    /// Defaults to `1/sqrt(D)`.
    pub scale: Option<f64>,
}

/// Fails with a shape error unless `q` and `k` are `[B, H, N, D]` (`shape`),
/// the key mask, if any, is `[B, N]` and a `[B, H, N, N]` map is addressable.
pub(super) fn check_inputs<T, U>(
    q: &[T],
    k: &[U],
    shape: [usize; 4],
    opts: &RefOptions,
) -> Result<()> {
    let [bs, hs, n, _] = shape;
    numel("reference attention: A", &[bs, hs, n, n])?;
    expect_len("reference attention: q", q.len(), &shape)?;
    expect_len("reference attention: k", k.len(), &shape)?;
    if let Some(m) = opts.key_mask {
        expect_len("reference attention: key_mask", m.len(), &[bs, n])?;
    }
    Ok(())
}

/// Attention in f64. `q`, `k` are `[B, H, N, D]` (`shape`), `v` is
/// `[B, H, N, dv]`; other lengths are a shape error. Inputs may be f32 (what
/// the GPU sees) or f64 (a model's reference, chained without rounding).
pub fn attention(
    q: &[impl Copy + Into<f64>],
    k: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    shape: [usize; 4],
    dv: usize,
    opts: &RefOptions,
) -> Result<AttentionRef> {
    check_inputs(q, k, shape, opts)?;
    expect_len(
        "reference attention: v",
        v.len(),
        &[shape[0], shape[1], shape[2], dv],
    )?;
    Ok(forward(q, k, v, shape, dv, opts))
}

/// [`attention`] on inputs of checked lengths, f32 or f64.
pub(super) fn forward(
    q: &[impl Copy + Into<f64>],
    k: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    shape: [usize; 4],
    dv: usize,
    opts: &RefOptions,
) -> AttentionRef {
    let [bs, hs, n, d] = shape;
    let RefOptions {
        causal,
        key_mask,
        scale,
    } = *opts;
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut attention = vec![0.0f64; bs * hs * n * n];
    let mut output = vec![0.0f64; bs * hs * n * dv];
    for b in 0..bs {
        for h in 0..hs {
            let g = b * hs + h;
            for i in 0..n {
                let valid: Vec<usize> = (0..n)
                    .filter(|&j| {
                        (!causal || j <= i) && key_mask.is_none_or(|m| m[b * n + j] != 0.0)
                    })
                    .collect();
                let scores: Vec<f64> = valid
                    .iter()
                    .map(|&j| {
                        let dot: f64 = (0..d)
                            .map(|c| q[(g * n + i) * d + c].into() * k[(g * n + j) * d + c].into())
                            .sum();
                        scale * dot
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (&j, s) in valid.iter().zip(&scores) {
                    let p = (s - max).exp() / sum;
                    attention[(g * n + i) * n + j] = p;
                    for c in 0..dv {
                        output[(g * n + i) * dv + c] += p * v[(g * n + j) * dv + c].into();
                    }
                }
            }
        }
    }
    AttentionRef { attention, output }
}

/// Statistics of each row of `A`, `[B, H, N, 3]`: the largest valid score
/// `max_j S_ij`, `Σ_j exp(S_ij − max)` and the entropy `−Σ_j A_ij ln A_ij`
/// (all 0 for a row with no valid key), as the streaming modes report them.
/// Arguments as in [`attention`].
pub fn row_stats(q: &[f32], k: &[f32], shape: [usize; 4], opts: &RefOptions) -> Result<Vec<f64>> {
    check_inputs(q, k, shape, opts)?;
    let [bs, hs, n, d] = shape;
    numel("reference row stats", &[bs, hs, n, 3])?;
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut out = Vec::with_capacity(bs * hs * n * 3);
    for b in 0..bs {
        for h in 0..hs {
            let g = b * hs + h;
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .filter(|&j| {
                        (!opts.causal || j <= i)
                            && opts.key_mask.is_none_or(|m| m[b * n + j] != 0.0)
                    })
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|c| {
                                f64::from(q[(g * n + i) * d + c])
                                    * f64::from(k[(g * n + j) * d + c])
                            })
                            .sum();
                        scale * dot
                    })
                    .collect();
                if scores.is_empty() {
                    out.extend([0.0; 3]);
                    continue;
                }
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let entropy: f64 = -scores
                    .iter()
                    .map(|s| (s - max).exp() / sum)
                    .filter(|&a| a > 0.0)
                    .map(|a| a * a.ln())
                    .sum::<f64>();
                out.extend([max, sum, entropy]);
            }
        }
    }
    Ok(out)
}

/// Gradients of the loss with respect to attention's inputs, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGrads {
    /// `∂L/∂q`, `[B, H, N, D]`.
    pub grad_q: Vec<f64>,
    /// `∂L/∂k`, `[B, H, N, D]`.
    pub grad_k: Vec<f64>,
    /// `∂L/∂v`, `[B, H, N, Dv]`.
    pub grad_v: Vec<f64>,
}

/// Backward of [`attention`] (scores → softmax → `O = A·V`) in f64: from
/// `grad_output = G = ∂L/∂O` (`[B, H, N, Dv]`), `∂L/∂v = Aᵀ·G`, then
/// `∂L/∂A = G·Vᵀ` through the softmax's backward
/// ([`softmax_backward`]) to `∂L/∂S`, and
/// `∂L/∂q = scale · (∂L/∂S)·K`, `∂L/∂k = scale · (∂L/∂S)ᵀ·Q`. Inputs may be
/// f32 (what the GPU sees) or f64 (a model's reference); other arguments are
/// as in [`attention`], and lengths that do not match the shapes are a shape
/// error.
pub fn attention_backward(
    q: &[impl Copy + Into<f64>],
    k: &[impl Copy + Into<f64>],
    v: &[impl Copy + Into<f64>],
    shape: [usize; 4],
    dv: usize,
    opts: &RefOptions,
    grad_output: &[impl Copy + Into<f64>],
) -> Result<AttentionGrads> {
    let [bs, hs, n, _] = shape;
    check_inputs(q, k, shape, opts)?;
    expect_len("reference attention backward: v", v.len(), &[bs, hs, n, dv])?;
    expect_len(
        "reference attention backward: ∂L/∂O",
        grad_output.len(),
        &[bs, hs, n, dv],
    )?;
    let a = forward(q, k, v, shape, dv, opts).attention;
    let mut grad_a = vec![0.0; a.len()];
    let mut grad_v = vec![0.0; v.len()];
    for g in 0..bs * hs {
        for i in 0..n {
            for j in 0..n {
                let p = a[(g * n + i) * n + j];
                let mut dot = 0.0;
                for c in 0..dv {
                    let go: f64 = grad_output[(g * n + i) * dv + c].into();
                    dot += go * v[(g * n + j) * dv + c].into();
                    grad_v[(g * n + j) * dv + c] += p * go;
                }
                grad_a[(g * n + i) * n + j] = dot;
            }
        }
    }
    let grad_scores = softmax_backward(&a, &grad_a, &[bs, hs, n, n], opts.causal, opts.key_mask)?;
    let (grad_q, grad_k) = scores_backward(&grad_scores, q, k, shape, opts);
    Ok(AttentionGrads {
        grad_q,
        grad_k,
        grad_v,
    })
}

/// Backward of the scores `S = scale · Q·Kᵀ` (`[B, H, N, N]` from `q`, `k`
/// of checked lengths `shape`): `(scale · (∂L/∂S)·K, scale · (∂L/∂S)ᵀ·Q)`.
pub(super) fn scores_backward(
    grad_scores: &[f64],
    q: &[impl Copy + Into<f64>],
    k: &[impl Copy + Into<f64>],
    shape: [usize; 4],
    opts: &RefOptions,
) -> (Vec<f64>, Vec<f64>) {
    let [bs, hs, n, d] = shape;
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut grad_q = vec![0.0; q.len()];
    let mut grad_k = vec![0.0; k.len()];
    for g in 0..bs * hs {
        for i in 0..n {
            for j in 0..n {
                let ds = scale * grad_scores[(g * n + i) * n + j];
                for c in 0..d {
                    grad_q[(g * n + i) * d + c] += ds * k[(g * n + j) * d + c].into();
                    grad_k[(g * n + j) * d + c] += ds * q[(g * n + i) * d + c].into();
                }
            }
        }
    }
    (grad_q, grad_k)
}
