//! Per-token layer ops of a GPT (GPT-2 layout, as the spec's "Training a
//! small GPT with SAOBP" gives it), forward where a GPT differs from BERT and
//! the backward of each: token + position embeddings and their scatter-add
//! backward, LayerNorm with its statistics and backward, bias + GELU (tanh
//! form) and its backward, the bias gradient, and cross-entropy from logits
//! with its gradient.
//!
//! Shader: `shaders/gpt.wgsl` (GELU from `shaders/shared/gelu.wgsl`). Reference: [`crate::reference::gpt`](mod@crate::reference::gpt).
//!
//! Rows are tokens: activations are `[rows, width]` (any leading shape whose
//! product is `rows`). Token ids and targets are checked on the host and
//! travel to the GPU as f32 ([`TokenIds`]), as the BERT embedding's do: exact
//! below 2²⁴, far above any vocabulary. Every reduction (bias, LayerNorm
//! parameter and embedding gradients, the mean loss) runs in a fixed order
//! without atomics, so repeated runs give bit-identical results.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Dispatch, Gpu, Step};
use crate::kernels::{rows, to_u32};
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("shared/gelu.wgsl", "gpt.wgsl");

kernels! {
    "gpt" in SOURCE, params GptParams, workgroup 64 {
        /// `x[t] = wte[id_t] + wpe[t mod n]`.
        EMBED = "embed" (ef_ids, ef_wte, ef_wpe, ef_out);
        /// `dwte (+)=` gradient rows summed per token id, a segmented
        /// reduction over tokens sorted by id.
        EMBED_BACKWARD_TOKENS = "embed_backward_tokens" (et_dx, et_order, et_offsets, et_dwte);
        /// `dwpe (+)=` gradient rows summed per position.
        EMBED_BACKWARD_POSITIONS = "embed_backward_positions" (ep_dx, ep_dwpe);
        /// LayerNorm of each row, keeping its mean and 1/σ.
        LAYER_NORM_FORWARD = "layer_norm_forward" (lf_x, lf_gamma, lf_beta, lf_out, lf_stats);
        /// LayerNorm's `dx`, one workgroup per row.
        LAYER_NORM_BACKWARD = "layer_norm_backward" (lb_x, lb_gamma, lb_stats, lb_dy, lb_dx);
        /// LayerNorm's `dγ` and `dβ`, one workgroup per column.
        LAYER_NORM_PARAMS = "layer_norm_params" (lp_x, lp_stats, lp_dy, lp_dgamma, lp_dbeta);
        /// `y = gelu(x + b)`, tanh form.
        BIAS_GELU = "bias_gelu" (bg_x, bg_bias, bg_out);
        /// `dx = dy · gelu'(x + b)`.
        GELU_BACKWARD = "gelu_backward" (gb_x, gb_bias, gb_dy, gb_dx);
        /// Column sums of `[rows, width]`: a bias's gradient.
        COLUMN_SUM = "column_sum" (cs_x, cs_out);
        /// Per-row loss and `dlogits` of softmax cross-entropy.
        CROSS_ENTROPY = "cross_entropy" (ce_logits, ce_targets, ce_losses, ce_dlogits);
        /// [`LAYER_NORM_FORWARD`] with one invocation per row ([`rows`]).
        LAYER_NORM_FORWARD_SERIAL = "layer_norm_forward_serial" (lf_x, lf_gamma, lf_beta, lf_out, lf_stats);
        /// [`LAYER_NORM_BACKWARD`] with one invocation per row.
        LAYER_NORM_BACKWARD_SERIAL = "layer_norm_backward_serial" (lb_x, lb_gamma, lb_stats, lb_dy, lb_dx);
        /// [`LAYER_NORM_PARAMS`] with one invocation per column.
        LAYER_NORM_PARAMS_SERIAL = "layer_norm_params_serial" (lp_x, lp_stats, lp_dy, lp_dgamma, lp_dbeta);
        /// [`COLUMN_SUM`] with one invocation per column.
        COLUMN_SUM_SERIAL = "column_sum_serial" (cs_x, cs_out);
        /// [`CROSS_ENTROPY`] with one invocation per row.
        CROSS_ENTROPY_SERIAL = "cross_entropy_serial" (ce_logits, ce_targets, ce_losses, ce_dlogits);
        /// The mean of the per-row losses.
        MEAN_LOSS = "mean_loss" (ml_losses, ml_out);
        /// `out = x + y + bias`: a projection's bias and the residual add.
        BIAS_RESIDUAL = "bias_residual" (br_x, br_y, br_bias, br_out);
        /// `c_attn`'s `[B·T, 3C]` product plus its bias into `q`, `k`, `v` `[B, H, T, C/H]`.
        SPLIT_QKV = "split_qkv" (sq_qkv, sq_bias, sq_q, sq_k, sq_v);
        /// `dq`, `dk`, `dv` `[B, H, T, C/H]` back into `[B·T, 3C]`.
        MERGE_QKV = "merge_qkv" (mq_dq, mq_dk, mq_dv, mq_dqkv);
        /// [`LAYER_NORM_FORWARD_SERIAL`] reading `x`, `γ` and `β` as texels.
        LAYER_NORM_FORWARD_TEXTURE = "layer_norm_forward_texture" (lft_out, lft_stats, tx_x, tx_gamma, tx_beta);
        /// [`LAYER_NORM_BACKWARD_SERIAL`] reading `x`, `γ` and `dy` as texels.
        LAYER_NORM_BACKWARD_TEXTURE = "layer_norm_backward_texture" (lbt_dx, lbt_stats, tx_x, tx_gamma, tx_dy);
    }
    "gpt" in SOURCE, params GptParams, workgroup 8 {
        /// [`LAYER_NORM_PARAMS_SERIAL`] reading `x` and `dy` as texels, four
        /// columns per invocation.
        LAYER_NORM_PARAMS_TEXTURE = "layer_norm_params_texture" (lpt_dgamma, lpt_dbeta, tx_x, lpt_stats, tx_dy);
        /// [`COLUMN_SUM_SERIAL`] reading its input as texels, four columns
        /// per invocation.
        COLUMN_SUM_TEXTURE = "column_sum_texture" (cst_out, cst_x);
    }
}

/// Mirrors `Params` in `shaders/gpt.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GptParams {
    rows: u32,
    width: u32,
    n: u32,
    vocab: u32,
    positions: u32,
    accumulate: u32,
    eps: f32,
    heads: u32,
    x_shift: u32,
    dy_shift: u32,
    gamma_shift: u32,
    beta_shift: u32,
}

impl GptParams {
    /// `rows` rows of `width` columns.
    fn rows(rows: usize, width: usize) -> Result<GptParams> {
        Ok(GptParams {
            rows: to_u32("rows", rows)?,
            width: to_u32("width", width)?,
            ..GptParams::default()
        })
    }
}

/// Ids index f32 storage and travel as f32, which is exact below 2²⁴.
const MAX_ID: usize = 1 << 24;

/// Token ids (or cross-entropy targets) of `batch` sequences of `n` tokens,
/// checked against a vocabulary on the host and uploaded with what the
/// embedding backward needs: the tokens sorted by id, and where each id's
/// run of tokens starts. Ids travel as f32 (exact below 2²⁴).
#[derive(Debug, Clone)]
pub struct TokenIds {
    batch: usize,
    n: usize,
    vocab: usize,
    /// `[batch·n]`, the ids.
    ids: Tensor,
    /// `[batch·n]`, token indices sorted by id (token order within an id).
    order: Tensor,
    /// `[vocab + 1]`: the tokens of id `v` are `order[offsets[v]..offsets[v + 1]]`.
    offsets: Tensor,
}

impl TokenIds {
    /// Uploads `ids` (`[batch, n]`, row-major) of a vocabulary of `vocab`.
    ///
    /// Fails with [`Error::Shape`] when `ids.len() != batch·n`, and with
    /// [`Error::InvalidArgument`] when `batch`, `n` or `vocab` is 0, an id is
    /// `>= vocab`, or the tokens or the vocabulary reach 2²⁴ (ids and token
    /// indices travel as f32).
    pub fn new(gpu: &Gpu, ids: &[u32], batch: usize, n: usize, vocab: usize) -> Result<TokenIds> {
        if batch == 0 || n == 0 || vocab == 0 {
            return Err(Error::invalid(format!(
                "token ids need batch, n and vocab >= 1, got {batch}, {n}, {vocab}"
            )));
        }
        let rows = batch
            .checked_mul(n)
            .ok_or_else(|| Error::shape(format!("token ids [{batch}, {n}] are too many")))?;
        if ids.len() != rows {
            return Err(Error::shape(format!(
                "token ids [{batch}, {n}] hold {rows} values but {} were given",
                ids.len()
            )));
        }
        if rows >= MAX_ID || vocab >= MAX_ID {
            return Err(Error::invalid(format!(
                "{rows} tokens of a vocabulary of {vocab}: both must stay below 2^24"
            )));
        }
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {id} at index {i} is outside the vocabulary of {vocab}"
            )));
        }
        // A counting sort, stable, so each id's tokens stay in token order.
        let mut offsets = vec![0usize; vocab + 1];
        for &id in ids {
            offsets[id as usize + 1] += 1;
        }
        for v in 0..vocab {
            offsets[v + 1] += offsets[v];
        }
        let mut next = offsets.clone();
        let mut order = vec![0f32; rows];
        for (t, &id) in ids.iter().enumerate() {
            order[next[id as usize]] = t as f32;
            next[id as usize] += 1;
        }
        let as_f32 = |v: &[usize]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let ids_f32: Vec<f32> = ids.iter().map(|&id| id as f32).collect();
        Ok(TokenIds {
            batch,
            n,
            vocab,
            ids: Tensor::from_slice(gpu, &[batch, n], &ids_f32)?,
            order: Tensor::from_slice(gpu, &[rows], &order)?,
            offsets: Tensor::from_slice(gpu, &[vocab + 1], &as_f32(&offsets))?,
        })
    }

    /// Sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per sequence.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Tokens in all: `batch·n`.
    pub fn len(&self) -> usize {
        self.batch * self.n
    }

    /// Always false: [`TokenIds::new`] refuses an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vocabulary the ids were checked against.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The ids as the GPU sees them: `[batch, n]` f32.
    pub fn ids(&self) -> &Tensor {
        &self.ids
    }
}

/// `(rows, width)` of an activation whose last dimension is its width.
fn rows_width(what: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape.split_last() {
        Some((&width, lead)) if width > 0 => Ok((lead.iter().product(), width)),
        _ => Err(Error::shape(format!(
            "{what} has shape {shape:?}: it needs a last dimension >= 1"
        ))),
    }
}

/// Fails with a shape error unless `t` has shape `want`.
fn expect_shape(what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape() == want {
        Ok(())
    } else {
        Err(Error::shape(format!(
            "{what} has shape {:?}, expected {want:?}",
            t.shape()
        )))
    }
}

// ---- bias + GELU ------------------------------------------------------------

/// Checks `x` (`[.., width]`) against `bias` (`[width]`) and, when given, `dy`
/// (the shape of `x`).
pub(crate) fn plan_bias_gelu(x: &Tensor, bias: &Tensor, dy: Option<&Tensor>) -> Result<GptParams> {
    let (rows, width) = rows_width("bias + GELU input", x.shape())?;
    expect_shape("bias + GELU bias", bias, &[width])?;
    if let Some(dy) = dy {
        expect_shape("bias + GELU dy", dy, x.shape())?;
    }
    GptParams::rows(rows, width)
}

/// `out = gelu(x + bias)` (tanh form), `bias` broadcast over rows.
pub(crate) fn bias_gelu_step<'a>(
    p: &GptParams,
    x: &'a Tensor,
    bias: &'a Tensor,
    out: &'a Tensor,
) -> Step<'a> {
    let elements = p.rows as usize * p.width as usize;
    Dispatch::new(&BIAS_GELU, p, BIAS_GELU.groups_for(elements))
        .bind("bg_x", x)
        .bind("bg_bias", bias)
        .bind("bg_out", out)
        .step()
}

/// `dx = dy · gelu'(x + bias)`.
pub(crate) fn gelu_backward_step<'a>(
    p: &GptParams,
    x: &'a Tensor,
    bias: &'a Tensor,
    dy: &'a Tensor,
    dx: &'a Tensor,
) -> Step<'a> {
    let elements = p.rows as usize * p.width as usize;
    Dispatch::new(&GELU_BACKWARD, p, GELU_BACKWARD.groups_for(elements))
        .bind("gb_x", x)
        .bind("gb_bias", bias)
        .bind("gb_dy", dy)
        .bind("gb_dx", dx)
        .step()
}

/// `out[c] = Σ_r x[r, c]` for the `[rows, width]` of `p`: the gradient of a
/// bias from the gradient of its output.
pub(crate) fn column_sum_steps<'a>(
    gpu: &Gpu,
    p: &GptParams,
    x: &'a Tensor,
    out: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    if reads_texels(gpu, p)? {
        if let Some((mut steps, [tx])) = rows::texels(gpu, [x]) {
            let k = &COLUMN_SUM_TEXTURE;
            let params = GptParams {
                x_shift: tx.1,
                ..*p
            };
            let sum = Dispatch::new(k, &params, k.groups_for(p.width as usize / 4))
                .bind("cst_out", out)
                .bind("cst_x", bound(&tx));
            steps.push(sum.step());
            return Ok(steps);
        }
    }
    let kernels = (&COLUMN_SUM, &COLUMN_SUM_SERIAL);
    Ok(vec![rows::dispatch(gpu, kernels, p, p.width, p.rows)?
        .bind("cs_x", x)
        .bind("cs_out", out)
        .step()])
}

/// Whether the row kernels over `p`'s `[rows, width]` read their operands
/// as texels on `gpu` ([`rows::reads_texels`]): loops along a row of
/// `width / 4` texels or down a column of `rows`, three textures at most.
fn reads_texels(gpu: &Gpu, p: &GptParams) -> Result<bool> {
    let len = u64::from(p.width / 4).max(u64::from(p.rows));
    rows::reads_texels(gpu, p.width, len, 3)
}

/// A texture of [`rows::texels`] as a binding.
fn bound((panels, _): &rows::Texture) -> Binding<'static> {
    Binding::Texture(panels.clone())
}

/// `gelu(x + bias)` with GPT-2's tanh form (`gelu_new`),
/// `0.5h(1 + tanh(√(2/π)(h + 0.044715h³)))` for `h = x + bias`; `x` is
/// `[.., width]`, `bias` `[width]`. Returns a new tensor shaped as `x`.
///
/// Fails with [`Error::Shape`] when the shapes disagree and with
/// [`Error::NonFinite`] when an input holds NaN or ±Inf.
pub async fn bias_gelu(gpu: &Gpu, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let p = plan_bias_gelu(x, bias, None)?;
    x.check_finite("x")?;
    bias.check_finite("bias")?;
    let out = Tensor::scratch(gpu, x.shape())?;
    gpu.run(&[bias_gelu_step(&p, x, bias, &out)]).await?;
    Ok(out)
}

/// Blocking form of [`bias_gelu`].
#[cfg(not(target_arch = "wasm32"))]
pub fn bias_gelu_blocking(gpu: &Gpu, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    pollster::block_on(bias_gelu(gpu, x, bias))
}

/// Gradients of [`bias_gelu`]'s inputs.
#[derive(Debug, Clone)]
pub struct BiasGeluGrads {
    /// `∂L/∂x`, shaped as `x`.
    pub dx: Tensor,
    /// `∂L/∂bias`, `[width]`: the column sums of `dx`.
    pub dbias: Tensor,
}

/// The backward of [`bias_gelu`]: from `dy = ∂L/∂y` (shaped as `x`),
/// `dx = dy · gelu'(x + bias)` and `dbias = Σ_rows dx`, in one submission.
///
/// Fails as [`bias_gelu`] does, and with [`Error::Shape`] when `dy` is not
/// shaped as `x`.
pub async fn bias_gelu_backward(
    gpu: &Gpu,
    x: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
) -> Result<BiasGeluGrads> {
    let p = plan_bias_gelu(x, bias, Some(dy))?;
    x.check_finite("x")?;
    bias.check_finite("bias")?;
    dy.check_finite("dy")?;
    let dx = Tensor::scratch(gpu, x.shape())?;
    let dbias = Tensor::scratch(gpu, bias.shape())?;
    let mut steps = vec![gelu_backward_step(&p, x, bias, dy, &dx)];
    steps.extend(column_sum_steps(gpu, &p, &dx, &dbias)?);
    gpu.run(&steps).await?;
    Ok(BiasGeluGrads { dx, dbias })
}

/// Blocking form of [`bias_gelu_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn bias_gelu_backward_blocking(
    gpu: &Gpu,
    x: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
) -> Result<BiasGeluGrads> {
    pollster::block_on(bias_gelu_backward(gpu, x, bias, dy))
}

/// The backward of a bias add `y = x + b` for the bias: `db[c] = Σ_r dy[r, c]`
/// of `dy` (`[.., width]`), summed in a fixed order (no atomics). Returns
/// `[width]`. (`∂L/∂x` is `dy` itself.)
///
/// Fails with [`Error::Shape`] when `dy` has no last dimension.
pub async fn bias_backward(gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
    let (rows, width) = rows_width("bias backward dy", dy.shape())?;
    let p = GptParams::rows(rows, width)?;
    dy.check_finite("dy")?;
    let db = Tensor::scratch(gpu, &[width])?;
    gpu.run(&column_sum_steps(gpu, &p, dy, &db)?).await?;
    Ok(db)
}

/// Blocking form of [`bias_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn bias_backward_blocking(gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
    pollster::block_on(bias_backward(gpu, dy))
}

// ---- LayerNorm --------------------------------------------------------------

/// Checks `x` (`[.., width]`) against `gamma` and `beta` (`[width]`), the
/// statistics `[rows, 2]` and `dy` (shaped as `x`) where given, and `eps`.
pub(crate) fn plan_layer_norm(
    x: &Tensor,
    params: &[(&str, &Tensor)],
    stats: Option<&Tensor>,
    dy: Option<&Tensor>,
    eps: f32,
) -> Result<GptParams> {
    let (rows, width) = rows_width("LayerNorm input", x.shape())?;
    for (what, t) in params {
        expect_shape(&format!("LayerNorm {what}"), t, &[width])?;
    }
    if let Some(s) = stats {
        expect_shape("LayerNorm statistics", s, &[rows, 2])?;
    }
    if let Some(dy) = dy {
        expect_shape("LayerNorm dy", dy, x.shape())?;
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(format!(
            "LayerNorm epsilon {eps} must be finite and >= 0"
        )));
    }
    Ok(GptParams {
        eps,
        ..GptParams::rows(rows, width)?
    })
}

/// `out = LayerNorm(x)·γ + β` per row, writing each row's `(mean, 1/σ)` to
/// `stats` (`[rows, 2]`).
pub(crate) fn layer_norm_steps<'a>(
    gpu: &Gpu,
    p: &GptParams,
    x: &'a Tensor,
    gamma: &'a Tensor,
    beta: &'a Tensor,
    out: &'a Tensor,
    stats: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    if reads_texels(gpu, p)? {
        if let Some((mut steps, [tx, tg, tb])) = rows::texels(gpu, [x, gamma, beta]) {
            let k = &LAYER_NORM_FORWARD_TEXTURE;
            let params = GptParams {
                x_shift: tx.1,
                gamma_shift: tg.1,
                beta_shift: tb.1,
                ..*p
            };
            let norm = Dispatch::new(k, &params, k.groups_for(p.rows as usize))
                .bind("lft_out", out)
                .bind("lft_stats", stats)
                .bind("tx_x", bound(&tx))
                .bind("tx_gamma", bound(&tg))
                .bind("tx_beta", bound(&tb));
            steps.push(norm.step());
            return Ok(steps);
        }
    }
    let kernels = (&LAYER_NORM_FORWARD, &LAYER_NORM_FORWARD_SERIAL);
    Ok(vec![rows::dispatch(gpu, kernels, p, p.rows, p.width)?
        .bind("lf_x", x)
        .bind("lf_gamma", gamma)
        .bind("lf_beta", beta)
        .bind("lf_out", out)
        .bind("lf_stats", stats)
        .step()])
}

/// LayerNorm's gradients from the forward's `x` and `stats` and `dy =
/// ∂L/∂out`, into `grads` = (`dx`, `dγ`, `dβ`): `dx` overwritten or, with
/// `accumulate`, added to. Where the kernels read texels, both read the
/// same copies of `x` and `dy`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward_steps<'a>(
    gpu: &Gpu,
    p: &GptParams,
    accumulate: bool,
    x: &'a Tensor,
    gamma: &'a Tensor,
    stats: &'a Tensor,
    dy: &'a Tensor,
    grads: (&'a Tensor, &'a Tensor, &'a Tensor),
) -> Result<Vec<Step<'a>>> {
    let (dx, dgamma, dbeta) = grads;
    let p = GptParams {
        accumulate: accumulate.into(),
        ..*p
    };
    if reads_texels(gpu, &p)? {
        if let Some((mut steps, [tx, tdy, tg])) = rows::texels(gpu, [x, dy, gamma]) {
            let params = GptParams {
                x_shift: tx.1,
                dy_shift: tdy.1,
                gamma_shift: tg.1,
                ..p
            };
            let k = &LAYER_NORM_PARAMS_TEXTURE;
            let sums = Dispatch::new(k, &params, k.groups_for(p.width as usize / 4))
                .bind("lpt_dgamma", dgamma)
                .bind("lpt_dbeta", dbeta)
                .bind("tx_x", bound(&tx))
                .bind("lpt_stats", stats)
                .bind("tx_dy", bound(&tdy));
            let k = &LAYER_NORM_BACKWARD_TEXTURE;
            let back = Dispatch::new(k, &params, k.groups_for(p.rows as usize))
                .bind("lbt_dx", dx)
                .bind("lbt_stats", stats)
                .bind("tx_x", bound(&tx))
                .bind("tx_gamma", bound(&tg))
                .bind("tx_dy", bound(&tdy));
            steps.extend([sums.step(), back.step()]);
            return Ok(steps);
        }
    }
    let kernels = (&LAYER_NORM_PARAMS, &LAYER_NORM_PARAMS_SERIAL);
    let sums = rows::dispatch(gpu, kernels, &p, p.width, p.rows)?
        .bind("lp_x", x)
        .bind("lp_stats", stats)
        .bind("lp_dy", dy)
        .bind("lp_dgamma", dgamma)
        .bind("lp_dbeta", dbeta);
    let kernels = (&LAYER_NORM_BACKWARD, &LAYER_NORM_BACKWARD_SERIAL);
    let back = rows::dispatch(gpu, kernels, &p, p.rows, p.width)?
        .bind("lb_x", x)
        .bind("lb_gamma", gamma)
        .bind("lb_stats", stats)
        .bind("lb_dy", dy)
        .bind("lb_dx", dx);
    Ok(vec![sums.step(), back.step()])
}

/// What [`layer_norm`] returns.
#[derive(Debug, Clone)]
pub struct LayerNormOutput {
    /// `(x − mean)/σ · γ + β`, shaped as `x`.
    pub out: Tensor,
    /// `[rows, 2]`: each row's mean and `1/σ = 1/√(var + ε)`, for
    /// [`layer_norm_backward`].
    pub stats: Tensor,
}

/// LayerNorm over the last dimension of `x` (`[.., width]`) with `gamma`
/// and `beta` (`[width]`) and `eps` (the spec's GPT uses 1e-5), no residual.
/// Also returns each row's statistics for the backward.
///
/// Fails with [`Error::Shape`] when the shapes disagree, with
/// [`Error::InvalidArgument`] when `eps` is negative or not finite, and with
/// [`Error::NonFinite`] when an input holds NaN or ±Inf.
pub async fn layer_norm(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<LayerNormOutput> {
    let p = plan_layer_norm(x, &[("gamma", gamma), ("beta", beta)], None, None, eps)?;
    for (name, t) in [("x", x), ("gamma", gamma), ("beta", beta)] {
        t.check_finite(name)?;
    }
    let out = Tensor::scratch(gpu, x.shape())?;
    let stats = Tensor::scratch(gpu, &[p.rows as usize, 2])?;
    gpu.run(&layer_norm_steps(gpu, &p, x, gamma, beta, &out, &stats)?)
        .await?;
    Ok(LayerNormOutput { out, stats })
}

/// Blocking form of [`layer_norm`].
#[cfg(not(target_arch = "wasm32"))]
pub fn layer_norm_blocking(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<LayerNormOutput> {
    pollster::block_on(layer_norm(gpu, x, gamma, beta, eps))
}

/// Gradients of [`layer_norm`]'s inputs.
#[derive(Debug, Clone)]
pub struct LayerNormGrads {
    /// `∂L/∂x`, shaped as `x`.
    pub dx: Tensor,
    /// `∂L/∂γ`, `[width]`.
    pub dgamma: Tensor,
    /// `∂L/∂β`, `[width]`.
    pub dbeta: Tensor,
}

/// The backward of [`layer_norm`] from its input `x`, `gamma`, the `stats`
/// it returned and `dy = ∂L/∂out`: with `x̂ = (x − mean)/σ` and `g = dy·γ`,
/// `dx = (g − mean(g) − x̂·mean(g·x̂))/σ` per row, `dγ = Σ_rows dy·x̂` and
/// `dβ = Σ_rows dy`, in one submission.
///
/// Fails with [`Error::Shape`] when the shapes disagree and with
/// [`Error::NonFinite`] when an input holds NaN or ±Inf.
pub async fn layer_norm_backward(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<LayerNormGrads> {
    let p = plan_layer_norm(x, &[("gamma", gamma)], Some(stats), Some(dy), 0.0)?;
    for (name, t) in [("x", x), ("gamma", gamma), ("stats", stats), ("dy", dy)] {
        t.check_finite(name)?;
    }
    let dx = Tensor::scratch(gpu, x.shape())?;
    let dgamma = Tensor::scratch(gpu, gamma.shape())?;
    let dbeta = Tensor::scratch(gpu, gamma.shape())?;
    let grads = (&dx, &dgamma, &dbeta);
    gpu.run(&layer_norm_backward_steps(
        gpu, &p, false, x, gamma, stats, dy, grads,
    )?)
    .await?;
    Ok(LayerNormGrads { dx, dgamma, dbeta })
}

/// Blocking form of [`layer_norm_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn layer_norm_backward_blocking(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<LayerNormGrads> {
    pollster::block_on(layer_norm_backward(gpu, x, gamma, stats, dy))
}

// ---- embeddings -------------------------------------------------------------

/// Checks the tables `wte` (`[vocab, C]`) and `wpe` (`[positions, C]`, at
/// least `n` rows) against `ids`.
pub(crate) fn plan_embed(ids: &TokenIds, wte: &[usize], wpe: &[usize]) -> Result<GptParams> {
    let (vocab, width) = match *wte {
        [v, c] if c > 0 => (v, c),
        ref s => {
            return Err(Error::shape(format!(
                "wte has shape {s:?}, expected [vocab, width]"
            )))
        }
    };
    if vocab != ids.vocab() {
        return Err(Error::shape(format!(
            "wte has {vocab} rows but the ids were checked against a vocabulary of {}",
            ids.vocab()
        )));
    }
    let positions = match *wpe {
        [t, c] if c == width && t >= ids.n() => t,
        ref s => {
            return Err(Error::shape(format!(
                "wpe has shape {s:?}, expected [positions >= {}, {width}]",
                ids.n()
            )))
        }
    };
    Ok(GptParams {
        n: to_u32("n", ids.n())?,
        vocab: to_u32("vocab", vocab)?,
        positions: to_u32("positions", positions)?,
        ..GptParams::rows(ids.len(), width)?
    })
}

/// `out[t] = wte[id_t] + wpe[t mod n]`, `out` `[rows, C]`.
pub(crate) fn embed_step<'a>(
    p: &GptParams,
    ids: &'a TokenIds,
    wte: &'a Tensor,
    wpe: &'a Tensor,
    out: &'a Tensor,
) -> Step<'a> {
    let elements = p.rows as usize * p.width as usize;
    Dispatch::new(&EMBED, p, EMBED.groups_for(elements))
        .bind("ef_ids", &ids.ids)
        .bind("ef_wte", wte)
        .bind("ef_wpe", wpe)
        .bind("ef_out", out)
        .step()
}

/// The embedding's backward: `dwte` and `dwpe` from `dx` (`[rows, C]`),
/// each overwritten or, with its `accumulate` flag, added to.
pub(crate) fn embed_backward_steps<'a>(
    p: &GptParams,
    [accumulate_wte, accumulate_wpe]: [bool; 2],
    ids: &'a TokenIds,
    dx: &'a Tensor,
    dwte: &'a Tensor,
    dwpe: &'a Tensor,
) -> [Step<'a>; 2] {
    let with = |accumulate: bool| GptParams {
        accumulate: accumulate.into(),
        ..*p
    };
    let width = p.width as usize;
    let tokens = EMBED_BACKWARD_TOKENS.groups_for(p.vocab as usize * width);
    let positions = EMBED_BACKWARD_POSITIONS.groups_for(p.positions as usize * width);
    [
        Dispatch::new(&EMBED_BACKWARD_TOKENS, &with(accumulate_wte), tokens)
            .bind("et_dx", dx)
            .bind("et_order", &ids.order)
            .bind("et_offsets", &ids.offsets)
            .bind("et_dwte", dwte)
            .step(),
        Dispatch::new(&EMBED_BACKWARD_POSITIONS, &with(accumulate_wpe), positions)
            .bind("ep_dx", dx)
            .bind("ep_dwpe", dwpe)
            .step(),
    ]
}

/// The GPT embedding `x = wte[idx] + wpe[pos]` of `ids` (`[B, T]`), with
/// `wte` `[vocab, C]` and `wpe` `[positions, C]` (`positions >= T`).
/// Returns `[B, T, C]`.
///
/// Fails with [`Error::Shape`] when the tables' shapes disagree with each
/// other or with `ids` and with [`Error::NonFinite`] when a table holds NaN
/// or ±Inf.
pub async fn embed(gpu: &Gpu, ids: &TokenIds, wte: &Tensor, wpe: &Tensor) -> Result<Tensor> {
    let p = plan_embed(ids, wte.shape(), wpe.shape())?;
    wte.check_finite("wte")?;
    wpe.check_finite("wpe")?;
    let out = Tensor::scratch(gpu, &[ids.batch(), ids.n(), p.width as usize])?;
    gpu.run(&[embed_step(&p, ids, wte, wpe, &out)]).await?;
    Ok(out)
}

/// Blocking form of [`embed`].
#[cfg(not(target_arch = "wasm32"))]
pub fn embed_blocking(gpu: &Gpu, ids: &TokenIds, wte: &Tensor, wpe: &Tensor) -> Result<Tensor> {
    pollster::block_on(embed(gpu, ids, wte, wpe))
}

/// Gradients of [`embed`]'s tables.
#[derive(Debug, Clone)]
pub struct EmbedGrads {
    /// `∂L/∂wte`, `[vocab, C]`: row `v` sums the gradient rows of the tokens with id `v`.
    pub dwte: Tensor,
    /// `∂L/∂wpe`, `[positions, C]`: row `p` sums the gradient rows at
    /// position `p`; rows `p >= T` are 0.
    pub dwpe: Tensor,
}

/// Checks `dx` (`[B, T, C]` or `[B·T, C]`) against `ids` and the tables'
/// gradients, returning the parameters of the backward.
fn plan_embed_backward(
    ids: &TokenIds,
    dx: &Tensor,
    dwte: &[usize],
    dwpe: &[usize],
) -> Result<GptParams> {
    let p = plan_embed(ids, dwte, dwpe)?;
    let (rows, width) = rows_width("embedding dx", dx.shape())?;
    if rows != ids.len() || width != p.width as usize {
        return Err(Error::shape(format!(
            "embedding dx has shape {:?}, expected [{}, {}, {}]",
            dx.shape(),
            ids.batch(),
            ids.n(),
            p.width
        )));
    }
    Ok(p)
}

/// The backward of [`embed`]: from `dx = ∂L/∂x` (`[B, T, C]`), the
/// scatter-add of gradient rows into a fresh `dwte` (`[vocab, C]`) and
/// `dwpe` (`[positions, C]`). Each row is a segmented sum over the tokens
/// sorted by id (or by position) in token order: deterministic, no atomics.
///
/// Fails with [`Error::Shape`] when `dx` is not `[B, T, C]` for some `C`,
/// with [`Error::InvalidArgument`] when `positions < T`, and with
/// [`Error::NonFinite`] when `dx` holds NaN or ±Inf.
pub async fn embed_backward(
    gpu: &Gpu,
    ids: &TokenIds,
    dx: &Tensor,
    positions: usize,
) -> Result<EmbedGrads> {
    if positions < ids.n() {
        return Err(Error::invalid(format!(
            "{positions} positions cannot hold sequences of {} tokens",
            ids.n()
        )));
    }
    let (_, width) = rows_width("embedding dx", dx.shape())?;
    let (wte_shape, wpe_shape) = ([ids.vocab(), width], [positions, width]);
    let p = plan_embed_backward(ids, dx, &wte_shape, &wpe_shape)?;
    dx.check_finite("dx")?;
    let dwte = Tensor::scratch(gpu, &wte_shape)?;
    let dwpe = Tensor::scratch(gpu, &wpe_shape)?;
    gpu.run(&embed_backward_steps(&p, [false; 2], ids, dx, &dwte, &dwpe))
        .await?;
    Ok(EmbedGrads { dwte, dwpe })
}

/// Blocking form of [`embed_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn embed_backward_blocking(
    gpu: &Gpu,
    ids: &TokenIds,
    dx: &Tensor,
    positions: usize,
) -> Result<EmbedGrads> {
    pollster::block_on(embed_backward(gpu, ids, dx, positions))
}

/// As [`embed_backward`], but adds the gradients to `dwte` (`[vocab, C]`)
/// and `dwpe` (`[positions, C]`) in place: the tied output head has already
/// put its gradient in `dwte`.
///
/// Fails with [`Error::Shape`] when the shapes disagree and with
/// [`Error::NonFinite`] when `dx` holds NaN or ±Inf.
pub async fn embed_backward_add(
    gpu: &Gpu,
    ids: &TokenIds,
    dx: &Tensor,
    dwte: &Tensor,
    dwpe: &Tensor,
) -> Result<()> {
    let p = plan_embed_backward(ids, dx, dwte.shape(), dwpe.shape())?;
    dx.check_finite("dx")?;
    gpu.run(&embed_backward_steps(&p, [true; 2], ids, dx, dwte, dwpe))
        .await
}

/// Blocking form of [`embed_backward_add`].
#[cfg(not(target_arch = "wasm32"))]
pub fn embed_backward_add_blocking(
    gpu: &Gpu,
    ids: &TokenIds,
    dx: &Tensor,
    dwte: &Tensor,
    dwpe: &Tensor,
) -> Result<()> {
    pollster::block_on(embed_backward_add(gpu, ids, dx, dwte, dwpe))
}

// ---- the attention block's plumbing -------------------------------------------

/// `[rows, width]` elementwise ops of a model: `rows` tokens, `n` per sequence,
/// `heads` heads over `width`.
#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
pub(crate) fn block_params(rows: usize, n: usize, width: usize, heads: usize) -> Result<GptParams> {
    Ok(GptParams {
        n: to_u32("n", n)?,
        heads: to_u32("heads", heads)?,
        ..GptParams::rows(rows, width)?
    })
}

#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
impl GptParams {
    /// The same rows, `width` columns wide.
    pub(crate) fn with_width(self, width: usize) -> Result<GptParams> {
        Ok(GptParams {
            width: to_u32("width", width)?,
            ..self
        })
    }

    /// The same shape, with LayerNorm's ε.
    pub(crate) fn with_eps(self, eps: f32) -> GptParams {
        GptParams { eps, ..self }
    }
}

/// `out = x + y + bias` over `[rows, width]`, `bias` `[width]`.
#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
pub(crate) fn bias_residual_step<'a>(
    p: &GptParams,
    x: &'a Tensor,
    y: &'a Tensor,
    bias: &'a Tensor,
    out: &'a Tensor,
) -> Step<'a> {
    let elements = p.rows as usize * p.width as usize;
    Dispatch::new(&BIAS_RESIDUAL, p, BIAS_RESIDUAL.groups_for(elements))
        .bind("br_x", x)
        .bind("br_y", y)
        .bind("br_bias", bias)
        .bind("br_out", out)
        .step()
}

/// `qkv + bias` (`[B·T, 3C]`, `width` = C) into `q`, `k`, `v` (`[B, H, T, C/H]`).
#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
pub(crate) fn split_qkv_step<'a>(
    p: &GptParams,
    qkv: &'a Tensor,
    bias: &'a Tensor,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
) -> Step<'a> {
    let elements = 3 * p.rows as usize * p.width as usize;
    Dispatch::new(&SPLIT_QKV, p, SPLIT_QKV.groups_for(elements))
        .bind("sq_qkv", qkv)
        .bind("sq_bias", bias)
        .bind("sq_q", q)
        .bind("sq_k", k)
        .bind("sq_v", v)
        .step()
}

/// The backward of [`split_qkv_step`]: `dq`, `dk`, `dv` into `dqkv`.
#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
pub(crate) fn merge_qkv_step<'a>(
    p: &GptParams,
    dq: &'a Tensor,
    dk: &'a Tensor,
    dv: &'a Tensor,
    dqkv: &'a Tensor,
) -> Step<'a> {
    let elements = 3 * p.rows as usize * p.width as usize;
    Dispatch::new(&MERGE_QKV, p, MERGE_QKV.groups_for(elements))
        .bind("mq_dq", dq)
        .bind("mq_dk", dk)
        .bind("mq_dv", dv)
        .bind("mq_dqkv", dqkv)
        .step()
}

// ---- cross-entropy ----------------------------------------------------------

/// Checks `logits` (`[.., V]`, `rows` rows) against `targets`.
pub(crate) fn plan_cross_entropy(logits: &Tensor, targets: &TokenIds) -> Result<GptParams> {
    let (rows, vocab) = rows_width("cross-entropy logits", logits.shape())?;
    if rows != targets.len() || vocab != targets.vocab() {
        return Err(Error::shape(format!(
            "cross-entropy logits have shape {:?}: {rows} rows of {vocab}, but there are {} targets of a vocabulary of {}",
            logits.shape(),
            targets.len(),
            targets.vocab()
        )));
    }
    GptParams::rows(rows, vocab)
}

/// Per-row losses, `dlogits` and the mean loss (`[1]`) of softmax
/// cross-entropy, in one submission's worth of steps.
pub(crate) fn cross_entropy_steps<'a>(
    gpu: &Gpu,
    p: &GptParams,
    logits: &'a Tensor,
    targets: &'a TokenIds,
    losses: &'a Tensor,
    dlogits: &'a Tensor,
    loss: &'a Tensor,
) -> Result<[Step<'a>; 2]> {
    let kernels = (&CROSS_ENTROPY, &CROSS_ENTROPY_SERIAL);
    Ok([
        rows::dispatch(gpu, kernels, p, p.rows, p.width)?
            .bind("ce_logits", logits)
            .bind("ce_targets", &targets.ids)
            .bind("ce_losses", losses)
            .bind("ce_dlogits", dlogits)
            .step(),
        Dispatch::new(&MEAN_LOSS, p, 1)
            .bind("ml_losses", losses)
            .bind("ml_out", loss)
            .step(),
    ])
}

/// What [`cross_entropy`] returns.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    /// `[1]`: the mean loss over rows, reduced on the GPU.
    pub loss: Tensor,
    /// `[rows]`: each row's loss `ln Σ_j exp(l_j) − l_target`.
    pub losses: Tensor,
    /// `∂loss/∂logits = (softmax(logits) − onehot(target)) / rows`, shaped as `logits`.
    pub dlogits: Tensor,
}

/// Softmax cross-entropy of `logits` (`[.., V]`, one row per target) against
/// `targets` (`[B, T]` of a vocabulary of `V`), reduced to the mean over
/// rows, with its gradient. The softmax is max-subtracted, so any finite
/// logits (±1e4 included) give finite results.
///
/// Fails with [`Error::Shape`] when the logits' rows or width disagree with
/// `targets` and with [`Error::NonFinite`] when the logits hold NaN or ±Inf.
pub async fn cross_entropy(gpu: &Gpu, logits: &Tensor, targets: &TokenIds) -> Result<CrossEntropy> {
    let p = plan_cross_entropy(logits, targets)?;
    logits.check_finite("logits")?;
    let losses = Tensor::scratch(gpu, &[targets.len()])?;
    let dlogits = Tensor::scratch(gpu, logits.shape())?;
    let loss = Tensor::scratch(gpu, &[1])?;
    gpu.run(&cross_entropy_steps(
        gpu, &p, logits, targets, &losses, &dlogits, &loss,
    )?)
    .await?;
    Ok(CrossEntropy {
        loss,
        losses,
        dlogits,
    })
}

/// Blocking form of [`cross_entropy`].
#[cfg(not(target_arch = "wasm32"))]
pub fn cross_entropy_blocking(
    gpu: &Gpu,
    logits: &Tensor,
    targets: &TokenIds,
) -> Result<CrossEntropy> {
    pollster::block_on(cross_entropy(gpu, logits, targets))
}
