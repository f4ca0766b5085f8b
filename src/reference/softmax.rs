//! Reference of [`crate::kernels::softmax`].

use super::{expect_len, numel};
use crate::error::{Error, Result};

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
    let rank = shape.len();
    if rank < 2 {
        return Err(Error::shape(format!(
            "reference softmax: shape {shape:?} needs rank >= 2"
        )));
    }
    expect_len("reference softmax: x", x.len(), shape)?;
    let (rows, cols) = (shape[rank - 2], shape[rank - 1]);
    let matrices = numel("reference softmax", &shape[..rank - 2])?;
    let batch = if rank > 2 { shape[0] } else { 1 };
    if let Some(m) = key_mask {
        expect_len("reference softmax: key_mask", m.len(), &[batch, cols])?;
    }
    let per_batch = (matrices / batch.max(1)).max(1);
    let mut out = vec![0.0f64; x.len()];
    for g in 0..matrices {
        let b = g / per_batch;
        for i in 0..rows {
            let row = &x[(g * rows + i) * cols..][..cols];
            let valid =
                |j: usize| (!causal || j <= i) && key_mask.is_none_or(|m| m[b * cols + j] != 0.0);
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
