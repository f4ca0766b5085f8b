//! Row softmax with causal and key-padding masks, and its backward.
//!
//! Shader: `shaders/softmax.wgsl`. Reference: [`crate::reference::softmax`](mod@crate::reference::softmax).

use crate::error::{Error, Result};
use crate::gpu::{Binding, Dispatch, Gpu, Panels, Step};
use crate::kernels::rows;
use crate::kernels::to_u32;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("softmax.wgsl");

kernels! {
    "softmax" in SOURCE, params SoftmaxParams, workgroup 64 {
        /// Masked softmax of each row in place, one workgroup per row.
        SOFTMAX_ROWS = "softmax_rows" (x, key_mask);
        /// `dS = A ⊙ (dA − rowdot(A, dA))` over the valid keys, in place of
        /// `dA`, one workgroup per row.
        SOFTMAX_BACKWARD = "softmax_backward" (sb_grad, key_mask, sb_a);
        /// `softmax_rows` with one invocation per row.
        SOFTMAX_ROWS_SERIAL = "softmax_rows_serial" (x, key_mask);
        /// `softmax_backward` with one invocation per row.
        SOFTMAX_BACKWARD_SERIAL = "softmax_backward_serial" (sb_grad, key_mask, sb_a);
        /// The softmax of scores in a texture into a texture (for maps
        /// whose products read `A` from a texture), one invocation per row.
        SOFTMAX_TEXTURE = "softmax_texture" (st_out, key_mask, st_scores, st_map);
        /// [`SOFTMAX_TEXTURE`], also writing the map into a buffer.
        SOFTMAX_TEXTURE_STORE = "softmax_texture" (st_out, key_mask, st_scores, st_map)
            as "softmax_texture_store" with [STORE_MAP = 1];
        /// `softmax_backward` with one invocation per row, reading `A` and
        /// `dA` from textures they were copied into.
        SOFTMAX_BACKWARD_TEXTURE = "softmax_backward_texture" (sbt_grad, key_mask, sbt_a, sbt_da);
    }
}

/// Options of [`softmax`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftmaxOptions<'a> {
    /// Row `i` only sees columns `j <= i`.
    pub causal: bool,
    /// `[B, C]`: 1 keeps a column, 0 masks it, per batch item (the first
    /// dimension of `x`). For a rank-2 `x`, use `[1, C]` or `[C]`.
    pub key_mask: Option<&'a Tensor>,
}

/// Mirrors `Params` in `shaders/softmax.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SoftmaxParams {
    matrices: u32,
    rows: u32,
    cols: u32,
    heads: u32,
    causal: u32,
    has_mask: u32,
    /// [`texture_step`]: log2 of the rows per layer of the scores' and of
    /// the map's texture; [`backward_steps`]: of `dA`'s and of `A`'s.
    scores_shift: u32,
    map_shift: u32,
}

/// Checks `x` ([.., R, C]) and the mask against each other.
pub(crate) fn plan(x: &[usize], causal: bool, mask: Option<&[usize]>) -> Result<SoftmaxParams> {
    if x.len() < 2 {
        return Err(Error::shape(format!(
            "softmax needs a tensor of rank >= 2, got {x:?}"
        )));
    }
    let rows = x[x.len() - 2];
    let cols = x[x.len() - 1];
    let matrices: usize = x[..x.len() - 2].iter().product();
    let batch = if x.len() > 2 { x[0] } else { 1 };
    let heads = matrices.checked_div(batch).unwrap_or(1);
    if let Some(m) = mask {
        let ok = m == [batch, cols] || (x.len() == 2 && m == [cols]);
        if !ok {
            return Err(Error::shape(format!(
                "key mask has shape {m:?}, expected [{batch}, {cols}] for scores {x:?}"
            )));
        }
    }
    Ok(SoftmaxParams {
        matrices: to_u32("matrices", matrices)?,
        rows: to_u32("rows", rows)?,
        cols: to_u32("cols", cols)?,
        heads: to_u32("heads", heads.max(1))?,
        causal: causal.into(),
        has_mask: mask.is_some().into(),
        scores_shift: 0,
        map_shift: 0,
    })
}

/// Rows of all matrices, which the planned sizes keep within u32.
fn row_count(params: &SoftmaxParams) -> Result<u32> {
    to_u32(
        "softmax rows",
        params.matrices as usize * params.rows as usize,
    )
}

/// The in-place softmax of `x`, its rows laid out as [`rows::row_layout`].
pub(crate) fn step<'a>(
    gpu: &'a Gpu,
    params: &SoftmaxParams,
    x: &'a Tensor,
    mask: Option<&'a Tensor>,
) -> Result<Step<'a>> {
    let kernels = (&SOFTMAX_ROWS, &SOFTMAX_ROWS_SERIAL);
    Ok(
        rows::dispatch(gpu, kernels, params, row_count(params)?, params.cols)?
            .bind("x", x)
            .bind("key_mask", mask.map_or(gpu.placeholder(), Tensor::buffer))
            .step(),
    )
}

/// The softmax of the scores in texture `scores` into texture `map` (each
/// with its layer shift; texel `i` holds floats `4i .. 4i + 4` of the
/// `[matrices, rows, cols]` map, `cols` a multiple of 4), and into `out` as
/// well when `store` (`out` is bound either way, and left as it is without
/// `store`). One invocation per row.
pub(crate) fn texture_step<'a>(
    gpu: &'a Gpu,
    params: &SoftmaxParams,
    (scores, scores_shift): (&Panels, u32),
    (map, map_shift): (&Panels, u32),
    (out, store): (&'a Tensor, bool),
    mask: Option<&'a Tensor>,
) -> Result<Step<'a>> {
    if !params.cols.is_multiple_of(4) {
        return Err(Error::Internal(format!(
            "softmax_texture needs whole texels per row, got {} columns",
            params.cols
        )));
    }
    let params = SoftmaxParams {
        scores_shift,
        map_shift,
        ..*params
    };
    let kernel = if store {
        &SOFTMAX_TEXTURE_STORE
    } else {
        &SOFTMAX_TEXTURE
    };
    let groups = kernel.groups_for(row_count(&params)? as usize);
    Ok(Dispatch::new(kernel, &params, groups)
        .bind("st_out", out)
        .bind("key_mask", mask.map_or(gpu.placeholder(), Tensor::buffer))
        .bind("st_scores", Binding::Texture(scores.clone()))
        .bind("st_map", Binding::Texture(map.clone()))
        .step())
}

/// The in-place backward: `grad` holds `∂L/∂A` and becomes `∂L/∂S`, from
/// the probabilities `a` (both shaped as `params` planned). In the
/// invocation layout of [`rows`] (the software adapters), rows of whole
/// texels are read from textures `a` and `grad` are first copied into (a
/// texel load there costs about half a storage-buffer load and carries four
/// floats).
pub(crate) fn backward_steps<'a>(
    gpu: &'a Gpu,
    params: &SoftmaxParams,
    a: &'a Tensor,
    grad: &'a Tensor,
    mask: Option<&'a Tensor>,
) -> Result<Vec<Step<'a>>> {
    let mask = mask.map_or(gpu.placeholder(), Tensor::buffer);
    if rows::reads_texels(gpu, params.cols, u64::from(params.cols / 4), 2)? {
        if let Some((mut steps, [ta, tg])) = rows::texels(gpu, [a, grad]) {
            let params = SoftmaxParams {
                map_shift: ta.1,
                scores_shift: tg.1,
                ..*params
            };
            let k = &SOFTMAX_BACKWARD_TEXTURE;
            let back = Dispatch::new(k, &params, k.groups_for(row_count(&params)? as usize))
                .bind("sbt_grad", grad)
                .bind("key_mask", mask)
                .bind("sbt_a", Binding::Texture(ta.0))
                .bind("sbt_da", Binding::Texture(tg.0));
            steps.push(back.step());
            return Ok(steps);
        }
    }
    let kernels = (&SOFTMAX_BACKWARD, &SOFTMAX_BACKWARD_SERIAL);
    Ok(vec![rows::dispatch(
        gpu,
        kernels,
        params,
        row_count(params)?,
        params.cols,
    )?
    .bind("sb_grad", grad)
    .bind("key_mask", mask)
    .bind("sb_a", a)
    .step()])
}

/// Softmax over the last dimension of `x` (`[.., R, C]`), with masked entries
/// set to 0 and fully masked rows all zeros. Returns a new tensor.
pub async fn softmax(gpu: &Gpu, x: &Tensor, opts: &SoftmaxOptions<'_>) -> Result<Tensor> {
    let params = plan(x.shape(), opts.causal, opts.key_mask.map(Tensor::shape))?;
    x.check_finite("x")?;
    if let Some(m) = opts.key_mask {
        m.check_finite("key_mask")?;
    }
    let y = Tensor::scratch(gpu, x.shape())?;
    gpu.run(&[
        x.copy_to(0, &y, 0, x.len()),
        step(gpu, &params, &y, opts.key_mask)?,
    ])
    .await?;
    Ok(y)
}

/// Blocking form of [`softmax`].
#[cfg(not(target_arch = "wasm32"))]
pub fn softmax_blocking(gpu: &Gpu, x: &Tensor, opts: &SoftmaxOptions<'_>) -> Result<Tensor> {
    pollster::block_on(softmax(gpu, x, opts))
}

/// The backward of [`softmax`]: from the probabilities `a` (its output,
/// `[.., R, C]`) and `grad_a = ∂L/∂A` (shaped as `a`), the score gradient
/// `∂L/∂S_ij = A_ij (∂L/∂A_ij − Σ_l A_il ∂L/∂A_il)`, the sum over the valid
/// keys `l` of row `i`. `opts` must be those of the forward: masked entries
/// and rows with no valid key are exactly 0, whatever `grad_a` holds there.
/// Returns a new tensor shaped as `a`.
///
/// Fails with [`Error::Shape`] when `grad_a` is not shaped as `a` or the
/// mask does not fit (as in [`softmax`]), and with [`Error::NonFinite`] when
/// an input holds NaN or ±Inf.
pub async fn softmax_backward(
    gpu: &Gpu,
    a: &Tensor,
    grad_a: &Tensor,
    opts: &SoftmaxOptions<'_>,
) -> Result<Tensor> {
    let params = plan(a.shape(), opts.causal, opts.key_mask.map(Tensor::shape))?;
    if grad_a.shape() != a.shape() {
        return Err(Error::shape(format!(
            "softmax backward: ∂L/∂A has shape {:?}, A has {:?}; they must match",
            grad_a.shape(),
            a.shape()
        )));
    }
    a.check_finite("a")?;
    grad_a.check_finite("grad_a")?;
    if let Some(m) = opts.key_mask {
        m.check_finite("key_mask")?;
    }
    let grad_s = Tensor::scratch(gpu, a.shape())?;
    let mut steps = vec![grad_a.copy_to(0, &grad_s, 0, grad_a.len())];
    steps.extend(backward_steps(gpu, &params, a, &grad_s, opts.key_mask)?);
    gpu.run(&steps).await?;
    Ok(grad_s)
}

/// Blocking form of [`softmax_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn softmax_backward_blocking(
    gpu: &Gpu,
    a: &Tensor,
    grad_a: &Tensor,
    opts: &SoftmaxOptions<'_>,
) -> Result<Tensor> {
    pollster::block_on(softmax_backward(gpu, a, grad_a, opts))
}
