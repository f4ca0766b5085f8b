//! The attention map: `A = softmax(scale · Q Kᵀ)` with causal and key masks.
//!
//! Composed from [`super::matmul`] (scores, with `alpha = scale`) and
//! [`super::softmax`] (in place). Reference: [`crate::reference::attention`](mod@crate::reference::attention).
//! The full pipeline, with SAOBP and metrics, is [`crate::attention`](mod@crate::attention).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step};
use crate::kernels::{matmul, softmax};
use crate::tensor::Tensor;

/// Checked sizes of one attention problem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Batch items.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Tokens.
    pub n: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
    /// Score scale (`1/sqrt(D)` unless given).
    pub scale: f32,
}

impl AttentionShape {
    /// Checks `q`, `k` (`[B, H, N, D]`), `v` (`[B, H, N, Dv]`), an optional key
    /// mask (`[B, N]`) and the scale.
    pub fn check(
        q: &[usize],
        k: &[usize],
        v: &[usize],
        key_mask: Option<&[usize]>,
        scale: Option<f32>,
    ) -> Result<AttentionShape> {
        let &[batch, heads, n, d] = q else {
            return Err(Error::shape(format!("q must be [B, H, N, D], got {q:?}")));
        };
        if k != q {
            return Err(Error::shape(format!(
                "k has shape {k:?}, q has {q:?}; they must match"
            )));
        }
        let &[vb, vh, vn, dv] = v else {
            return Err(Error::shape(format!("v must be [B, H, N, D], got {v:?}")));
        };
        if (vb, vh, vn) != (batch, heads, n) {
            return Err(Error::shape(format!(
                "v has shape {v:?}, its first three dimensions must match q {q:?}"
            )));
        }
        if let Some(m) = key_mask {
            if m != [batch, n] {
                return Err(Error::shape(format!(
                    "key mask has shape {m:?}, expected [B, N] = [{batch}, {n}]"
                )));
            }
        }
        if batch == 0 || heads == 0 || n == 0 || d == 0 || dv == 0 {
            return Err(Error::invalid(format!(
                "attention needs non-empty tensors, got q {q:?} and v {v:?}"
            )));
        }
        let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid(format!(
                "scale must be finite and positive, got {scale}"
            )));
        }
        Ok(AttentionShape {
            batch,
            heads,
            n,
            d,
            dv,
            scale,
        })
    }

    /// `[B, H, N, N]`.
    pub fn map_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n, self.n]
    }

    /// `[B, H, N]`.
    pub fn row_shape(&self) -> [usize; 3] {
        [self.batch, self.heads, self.n]
    }

    /// `[B, H, N, Dv]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n, self.dv]
    }
}

/// The steps writing the attention map of `q`, `k` into `a` (`[B, H, N, N]`).
pub(crate) fn map_steps<'a>(
    gpu: &'a Gpu,
    shape: &AttentionShape,
    q: &'a Tensor,
    k: &'a Tensor,
    causal: bool,
    key_mask: Option<&'a Tensor>,
    a: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    let scores = matmul::plan(
        q.shape(),
        k.shape(),
        &matmul::MatmulOptions {
            trans_a: false,
            trans_b: true,
            alpha: shape.scale,
        },
    )?;
    let softmax = softmax::plan(&scores.out_shape, causal, key_mask.map(Tensor::shape))?;
    let mut steps = matmul::steps(gpu, &scores, q, k, a)?;
    steps.push(softmax::step(gpu, &softmax, a, key_mask));
    Ok(steps)
}
