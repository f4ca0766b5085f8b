//! Multi-head scaled-dot-product attention: `A = softmax(scale · Q Kᵀ)` with
//! masks, and `O = A · V`.
//!
//! Composed from [`super::matmul`] and [`super::softmax`] in one submission.
//! Reference: [`crate::reference::attention`].

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{matmul, softmax};
use crate::tensor::Tensor;

/// Options of [`attention`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionOptions<'a> {
    /// Query `i` only attends to keys `j <= i`.
    pub causal: bool,
    /// `[B, N]`: 1 = the key may be attended, 0 = padding.
    pub key_mask: Option<&'a Tensor>,
    /// Score scale; `None` means `1/sqrt(D)`. Must be finite and positive.
    pub scale: Option<f32>,
}

/// The result of [`attention`].
#[derive(Debug, Clone)]
pub struct Attention {
    /// `O = A·V`, `[B, H, N, Dv]`.
    pub output: Tensor,
    /// The attention map `A`, `[B, H, N, N]`.
    pub attention: Tensor,
}

/// Checks `q`, `k`, `v` shapes and the scale; returns `(B, H, N, D, Dv, scale)`.
pub(crate) fn check(
    q: &[usize],
    k: &[usize],
    v: &[usize],
    scale: Option<f32>,
) -> Result<(usize, usize, usize, usize, usize, f32)> {
    let &[b, h, n, d] = q else {
        return Err(Error::shape(format!("q must be [B, H, N, D], got {q:?}")));
    };
    if k != q {
        return Err(Error::shape(format!("k has shape {k:?}, q has {q:?}; they must match")));
    }
    let &[vb, vh, vn, dv] = v else {
        return Err(Error::shape(format!("v must be [B, H, N, D], got {v:?}")));
    };
    if (vb, vh, vn) != (b, h, n) {
        return Err(Error::shape(format!(
            "v has shape {v:?}, its first three dimensions must match q {q:?}"
        )));
    }
    if b == 0 || h == 0 || n == 0 || d == 0 || dv == 0 {
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
    Ok((b, h, n, d, dv, scale))
}

/// Multi-head attention of `q`, `k`, `v` (`[B, H, N, D]`, `v` may have another
/// last dimension), exactly as in the spec: masked keys get zero weight, a
/// query with no valid key gets a zero row of `A` and a zero output.
pub async fn attention(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
) -> Result<Attention> {
    let (_, _, _, _, _, scale) = check(q.shape(), k.shape(), v.shape(), opts.scale)?;
    let scores_plan = matmul::plan(
        q.shape(),
        k.shape(),
        &matmul::MatmulOptions {
            trans_a: false,
            trans_b: true,
            alpha: scale,
        },
    )?;
    let softmax_params = softmax::plan(
        &scores_plan.out_shape,
        opts.causal,
        opts.key_mask.map(Tensor::shape),
    )?;
    let output_plan = matmul::plan(&scores_plan.out_shape, v.shape(), &Default::default())?;

    let attn = Tensor::zeros(gpu, &scores_plan.out_shape)?;
    let output = Tensor::zeros(gpu, &output_plan.out_shape)?;
    gpu.run(&[
        matmul::step(&scores_plan, q, k, &attn),
        softmax::step(gpu, &softmax_params, &attn, opts.key_mask),
        matmul::step(&output_plan, &attn, v, &output),
    ])
    .await?;
    Ok(Attention {
        output,
        attention: attn,
    })
}

/// Blocking form of [`attention`].
#[cfg(not(target_arch = "wasm32"))]
pub fn attention_blocking(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
) -> Result<Attention> {
    pollster::block_on(attention(gpu, q, k, v, opts))
}
