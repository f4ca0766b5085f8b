//! The attention map: `A = softmax(scale · Q Kᵀ)` with causal and key masks,
//! and the backward of plain attention `O = A·V` ([`attention_backward`]).
//!
//! Composed from [`super::matmul`] (scores, with `alpha = scale`) and
//! [`super::softmax`] (in place), both directions. Reference: [`crate::reference::attention`](mod@crate::reference::attention).
//! The full pipeline, with SAOBP and metrics, is [`crate::attention`](mod@crate::attention).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Step};
use crate::kernels::{matmul, rows, softmax};
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
    let scores = scores_plan(shape, q, k)?;
    let softmax = softmax::plan(&scores.out_shape, causal, key_mask.map(Tensor::shape))?;
    let mut steps = matmul::steps(gpu, &scores, q, k, a)?;
    steps.push(softmax::step(gpu, &softmax, a, key_mask)?);
    Ok(steps)
}

/// The steps writing the attention map of `q`, `k`: into `map`'s texture
/// where one is given and the softmax can write it there (for the products
/// that share it, [`matmul::map_texture`]), and into `a` as well when
/// `store` (otherwise `a` is left holding anything); else into `a`, as
/// [`map_steps`]. Returns the steps and `map` if `A` went into it (`None`:
/// the products read `a`).
///
/// On the texture path the scores go into a texture of their own (stored
/// as texels by the product where [`matmul::texel_steps`] can, else copied
/// from `a`), and the softmax reads them from there and writes `A` as
/// texels ([`softmax::texture_step`]): on the software adapters nothing
/// N×N then goes one lane at a time through a storage buffer unless
/// `store`. It runs one invocation per row, so it is taken only where the
/// row kernels do ([`rows::row_layout`]) and a row fits the adapter's loop
/// budget.
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_steps_via<'a>(
    gpu: &'a Gpu,
    shape: &AttentionShape,
    q: &'a Tensor,
    k: &'a Tensor,
    causal: bool,
    key_mask: Option<&'a Tensor>,
    a: &'a Tensor,
    map: Option<matmul::MapTexture>,
    store: bool,
) -> Result<(Vec<Step<'a>>, Option<matmul::MapTexture>)> {
    let map = match map {
        Some(m)
            if rows::row_layout(gpu)? == rows::RowLayout::Invocation
                && rows::fits(gpu, shape.n.div_ceil(4) as u64) =>
        {
            m
        }
        _ => {
            let steps = map_steps(gpu, shape, q, k, causal, key_mask, a)?;
            return Ok((steps, None));
        }
    };
    let scores = scores_plan(shape, q, k)?;
    let softmax = softmax::plan(&scores.out_shape, causal, key_mask.map(Tensor::shape))?;
    let texture = matmul::PanelTexture::new(gpu, "the scores", a.len().div_ceil(4) as u64)?;
    let panels = texture.create(gpu);
    let mut steps = match matmul::texel_steps(gpu, &scores, q, k, (&panels, texture.layer_shift))? {
        Some(steps) => steps,
        None => {
            let mut steps = matmul::steps(gpu, &scores, q, k, a)?;
            steps.push(texture.copy_from(a, &panels));
            steps
        }
    };
    steps.push(softmax::texture_step(
        gpu,
        &softmax,
        (&panels, texture.layer_shift),
        (&map.panels, map.shift),
        (a, store),
        key_mask,
    )?);
    Ok((steps, Some(map)))
}

/// The plan of the scores `scale · Q Kᵀ`.
fn scores_plan(shape: &AttentionShape, q: &Tensor, k: &Tensor) -> Result<matmul::MatmulPlan> {
    matmul::plan(
        q.shape(),
        k.shape(),
        &matmul::MatmulOptions {
            trans_a: false,
            trans_b: true,
            alpha: shape.scale,
        },
    )
}

/// Options of [`attention_backward`]: those of the forward, and optionally
/// its attention map.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionBackwardOptions<'a> {
    /// Query `i` only sees keys `j <= i`.
    pub causal: bool,
    /// `[B, N]`: 1 keeps a key, 0 masks it.
    pub key_mask: Option<&'a Tensor>,
    /// Score scale; `1/sqrt(D)` when `None`.
    pub scale: Option<f32>,
    /// The forward's `A` (`[B, H, N, N]`), if the caller kept it. It must be
    /// the map of these `q`, `k` and options; it is not checked against them.
    /// When `None`, `A` is recomputed from `q` and `k` in the same submission
    /// (one `N×N×D` product and a softmax), so nothing `N×N` need be kept
    /// between the forward and the backward.
    pub attention: Option<&'a Tensor>,
}

/// Gradients of plain attention's inputs, from [`attention_backward`].
#[derive(Debug)]
pub struct AttentionGrads {
    /// `∂L/∂q`, `[B, H, N, D]`.
    pub grad_q: Tensor,
    /// `∂L/∂k`, `[B, H, N, D]`.
    pub grad_k: Tensor,
    /// `∂L/∂v`, `[B, H, N, Dv]`.
    pub grad_v: Tensor,
}

/// The backward of plain attention (scores → masked softmax → `O = A·V`):
/// from `grad_output = G = ∂L/∂O` (`[B, H, N, Dv]`),
///
/// - `∂L/∂v = Aᵀ·G`,
/// - `∂L/∂A = G·Vᵀ`, through the softmax backward to `∂L/∂S`,
/// - `∂L/∂q = scale · (∂L/∂S)·K` and `∂L/∂k = scale · (∂L/∂S)ᵀ·Q`,
///
/// four products and the softmax backward kernel (after recomputing `A`,
/// unless [`AttentionBackwardOptions::attention`] gives it), in one
/// submission. Queries with no valid key get zero gradients.
///
/// Fails with [`Error::Shape`] when `q`, `k`, `v` or the mask do not fit (as
/// the forward checks them), `grad_output` is not `[B, H, N, Dv]` or a given
/// `A` is not `[B, H, N, N]`; with [`Error::InvalidArgument`] on empty
/// tensors or a scale that is not finite and positive; with
/// [`Error::NonFinite`] when an input holds NaN or ±Inf.
pub async fn attention_backward(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grad_output: &Tensor,
    opts: &AttentionBackwardOptions<'_>,
) -> Result<AttentionGrads> {
    let shape = AttentionShape::check(
        q.shape(),
        k.shape(),
        v.shape(),
        opts.key_mask.map(Tensor::shape),
        opts.scale,
    )?;
    if grad_output.shape() != shape.output_shape() {
        return Err(Error::shape(format!(
            "attention backward: ∂L/∂O has shape {:?}, expected [B, H, N, Dv] = {:?}",
            grad_output.shape(),
            shape.output_shape()
        )));
    }
    if let Some(a) = opts.attention {
        if a.shape() != shape.map_shape() {
            return Err(Error::shape(format!(
                "attention backward: A has shape {:?}, expected [B, H, N, N] = {:?}",
                a.shape(),
                shape.map_shape()
            )));
        }
        a.check_finite("attention")?;
    }
    q.check_finite("q")?;
    k.check_finite("k")?;
    v.check_finite("v")?;
    grad_output.check_finite("grad_output")?;
    if let Some(m) = opts.key_mask {
        m.check_finite("key_mask")?;
    }

    let plain = matmul::MatmulOptions::default();
    let map = shape.map_shape();
    let grad_v_plan = matmul::plan(
        &map,
        v.shape(),
        &matmul::MatmulOptions {
            trans_a: true,
            ..plain
        },
    )?;
    let grad_a_plan = matmul::plan(
        grad_output.shape(),
        v.shape(),
        &matmul::MatmulOptions {
            trans_b: true,
            ..plain
        },
    )?;

    let recomputed;
    let a = match opts.attention {
        Some(a) => a,
        None => {
            recomputed = Tensor::scratch(gpu, &map)?;
            &recomputed
        }
    };
    let grad_s = Tensor::scratch(gpu, &map)?;
    let grad_q = Tensor::scratch(gpu, q.shape())?;
    let grad_k = Tensor::scratch(gpu, k.shape())?;
    let grad_v = Tensor::scratch(gpu, v.shape())?;

    let mut steps = Vec::new();
    if opts.attention.is_none() {
        steps.extend(map_steps(gpu, &shape, q, k, opts.causal, opts.key_mask, a)?);
    }
    steps.extend(matmul::steps(gpu, &grad_v_plan, a, grad_output, &grad_v)?);
    steps.extend(matmul::steps(gpu, &grad_a_plan, grad_output, v, &grad_s)?);
    steps.extend(scores_backward_steps(
        gpu,
        &shape,
        q,
        k,
        a,
        opts.causal,
        opts.key_mask,
        &grad_s,
        &grad_q,
        &grad_k,
    )?);
    gpu.run(&steps).await?;
    Ok(AttentionGrads {
        grad_q,
        grad_k,
        grad_v,
    })
}

/// From `grad = ∂L/∂A` (`[B, H, N, N]`, turned into `∂L/∂S` in place by the
/// softmax's backward), `∂L/∂q = scale · (∂L/∂S)·K` and
/// `∂L/∂k = scale · (∂L/∂S)ᵀ·Q` into `grad_q` and `grad_k`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores_backward_steps<'a>(
    gpu: &'a Gpu,
    shape: &AttentionShape,
    q: &'a Tensor,
    k: &'a Tensor,
    a: &'a Tensor,
    causal: bool,
    key_mask: Option<&'a Tensor>,
    grad: &'a Tensor,
    grad_q: &'a Tensor,
    grad_k: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    let map = shape.map_shape();
    let scaled = |trans_a| matmul::MatmulOptions {
        trans_a,
        trans_b: false,
        alpha: shape.scale,
    };
    let grad_q_plan = matmul::plan(&map, k.shape(), &scaled(false))?;
    let grad_k_plan = matmul::plan(&map, q.shape(), &scaled(true))?;
    let mut steps = scores_backward_softmax_steps(gpu, shape, a, causal, key_mask, grad)?;
    steps.extend(matmul::steps(gpu, &grad_q_plan, grad, k, grad_q)?);
    steps.extend(matmul::steps(gpu, &grad_k_plan, grad, q, grad_k)?);
    Ok(steps)
}

/// The first steps of [`scores_backward_steps`]: `grad = ∂L/∂A` turned into
/// `∂L/∂S` in place, for a caller that runs the products itself.
pub(crate) fn scores_backward_softmax_steps<'a>(
    gpu: &'a Gpu,
    shape: &AttentionShape,
    a: &'a Tensor,
    causal: bool,
    key_mask: Option<&'a Tensor>,
    grad: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    let softmax = softmax::plan(&shape.map_shape(), causal, key_mask.map(Tensor::shape))?;
    softmax::backward_steps(gpu, &softmax, a, grad, key_mask)
}

/// Blocking form of [`attention_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn attention_backward_blocking(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grad_output: &Tensor,
    opts: &AttentionBackwardOptions<'_>,
) -> Result<AttentionGrads> {
    pollster::block_on(attention_backward(gpu, q, k, v, grad_output, opts))
}
