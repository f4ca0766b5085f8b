//! Reference of [`crate::kernels::softmax`]: the masked row softmax and its
//! backward.

use super::{expect_len, numel};
use crate::error::{Error, Result};

/// The rows of a `[.., R, C]` softmax: `(R, C, matrices, matrices per batch
/// item)`, after checking that `data` holds `len` values of `shape` and the
/// key mask is `[B, C]` (`what` names the caller in errors).
fn layout(
    what: &str,
    data: &str,
    len: usize,
    shape: &[usize],
    key_mask: Option<&[f32]>,
) -> Result<(usize, usize, usize, usize)> {
    let rank = shape.len();
    if rank < 2 {
        return Err(Error::shape(format!(
            "{what}: shape {shape:?} needs rank >= 2"
        )));
    }
    expect_len(&format!("{what}: {data}"), len, shape)?;
    let (rows, cols) = (shape[rank - 2], shape[rank - 1]);
    let matrices = numel(what, &shape[..rank - 2])?;
    let batch = if rank > 2 { shape[0] } else { 1 };
    if let Some(m) = key_mask {
        expect_len(&format!("{what}: key_mask"), m.len(), &[batch, cols])?;
    }
    Ok((rows, cols, matrices, (matrices / batch.max(1)).max(1)))
}

/// Whether key `j` of row `i` in batch item `b` takes part in the softmax.
fn valid(
    causal: bool,
    key_mask: Option<&[f32]>,
    cols: usize,
    b: usize,
    i: usize,
    j: usize,
) -> bool {
    (!causal || j <= i) && key_mask.is_none_or(|m| m[b * cols + j] != 0.0)
}

/// Masked row softmax in f64 of `x` (`shape` = `[.., R, C]`); `key_mask` is
/// `[B, C]` with `B = shape[0]` (or `[C]` for rank 2), nonzero = keep.
/// Masked entries and fully masked rows are 0. A rank below 2 or lengths
/// that do not match the shape are a shape error.
pub fn softmax(
    x: &[f32],
    shape: &[usize],
    causal: bool,
    key_mask: Option<&[f32]>,
) -> Result<Vec<f64>> {
    let (rows, cols, matrices, per_batch) =
        layout("reference softmax", "x", x.len(), shape, key_mask)?;
    let mut out = vec![0.0f64; x.len()];
    for g in 0..matrices {
        let b = g / per_batch;
        for i in 0..rows {
            let row = &x[(g * rows + i) * cols..][..cols];
            let valid = |j: usize| valid(causal, key_mask, cols, b, i, j);
            let max = (0..cols)
                .filter(|&j| valid(j))
                .map(|j| f64::from(row[j]))
                .fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                continue;
            }
            let sum: f64 = (0..cols)
                .filter(|&j| valid(j))
                .map(|j| (f64::from(row[j]) - max).exp())
                .sum();
            for j in (0..cols).filter(|&j| valid(j)) {
                out[(g * rows + i) * cols + j] = (f64::from(row[j]) - max).exp() / sum;
            }
        }
    }
    Ok(out)
}

/// Backward of [`softmax`] in f64: from the probabilities `a` and
/// `grad_a = ∂L/∂A` (both `shape` = `[.., R, C]`, f32 or f64), the score
/// gradient `∂L/∂S_ij = A_ij (∂L/∂A_ij − Σ_l A_il ∂L/∂A_il)`, the sum over
/// the valid keys `l` of row `i`. `causal` and `key_mask` are as in
/// [`softmax`]: masked entries and rows with no valid key get 0, whatever
/// `grad_a` holds there. Lengths that do not match the shape are a shape
/// error.
pub fn softmax_backward(
    a: &[impl Copy + Into<f64>],
    grad_a: &[impl Copy + Into<f64>],
    shape: &[usize],
    causal: bool,
    key_mask: Option<&[f32]>,
) -> Result<Vec<f64>> {
    let (rows, cols, matrices, per_batch) =
        layout("reference softmax backward", "A", a.len(), shape, key_mask)?;
    expect_len("reference softmax backward: ∂L/∂A", grad_a.len(), shape)?;
    let mut out = vec![0.0f64; a.len()];
    for g in 0..matrices {
        let b = g / per_batch;
        for i in 0..rows {
            let at = |j: usize| (g * rows + i) * cols + j;
            let valid = |j: usize| valid(causal, key_mask, cols, b, i, j);
            let dot: f64 = (0..cols)
                .filter(|&j| valid(j))
                .map(|j| a[at(j)].into() * grad_a[at(j)].into())
                .sum();
            for j in (0..cols).filter(|&j| valid(j)) {
                out[at(j)] = a[at(j)].into() * (grad_a[at(j)].into() - dot);
            }
        }
    }
    Ok(out)
}
