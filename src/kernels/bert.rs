//! Encoder layers for BERT-family models: embeddings, LayerNorm, bias + GELU,
//! and the head split/merge around attention.
//!
//! Shader: `shaders/bert.wgsl`. Reference: [`crate::reference::bert`](mod@crate::reference::bert). The
//! encoder that strings them together is [`crate::model`].

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Step};
use crate::kernels::to_u32;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("bert.wgsl");

kernels! {
    "bert" in SOURCE, params BertParams, workgroup 64 {
        /// Word, position and token-type embeddings summed.
        EMBED = "embed" (em_ids, em_types, em_word, em_position, em_type, em_out);
        /// LayerNorm of `x` (plus a residual), one workgroup per row.
        LAYER_NORM = "layer_norm" (ln_x, ln_residual, ln_gamma, ln_beta, ln_out);
        /// Bias add, then GELU if asked, in place.
        BIAS_ACT = "bias_act" (ba_x, ba_bias);
        /// `[B, N, H, dh]` → `[B, H, N, dh]`.
        SPLIT_HEADS = "split_heads" (sh_in, sh_out);
        /// `[B, H, N, dh]` → `[B, N, H, dh]`.
        MERGE_HEADS = "merge_heads" (sh_in, sh_out);
    }
}

/// Mirrors `Params` in `shaders/bert.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BertParams {
    rows: u32,
    width: u32,
    n: u32,
    heads: u32,
    head_dim: u32,
    flag: u32,
    eps: f32,
    _pad: u32,
}

/// Sizes of one encoder pass: `batch` sequences of `n` tokens, `width` wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub n: usize,
    pub width: usize,
    pub heads: usize,
}

impl Dims {
    fn params(&self, width: usize, flag: bool, eps: f32) -> Result<BertParams> {
        Ok(BertParams {
            rows: to_u32("tokens", self.batch * self.n)?,
            width: to_u32("width", width)?,
            n: to_u32("N", self.n)?,
            heads: to_u32("heads", self.heads.max(1))?,
            head_dim: to_u32("head width", self.width / self.heads.max(1))?,
            flag: flag.into(),
            eps,
            _pad: 0,
        })
    }
}

/// `out[t] = word[ids[t]] + position[t mod n] + token_type[types[t]]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed<'a>(
    d: &Dims,
    ids: &'a Tensor,
    types: &'a Tensor,
    word: &'a Tensor,
    position: &'a Tensor,
    token_type: &'a Tensor,
    out: &'a Tensor,
) -> Result<Step<'a>> {
    let p = d.params(d.width, false, 0.0)?;
    Ok(
        Dispatch::new(&EMBED, &p, EMBED.groups_for(d.batch * d.n * d.width))
            .bind("em_ids", ids)
            .bind("em_types", types)
            .bind("em_word", word)
            .bind("em_position", position)
            .bind("em_type", token_type)
            .bind("em_out", out)
            .step(),
    )
}

/// `out = LayerNorm(x + residual)` over rows of `d.width`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm<'a>(
    gpu: &'a Gpu,
    d: &Dims,
    eps: f32,
    x: &'a Tensor,
    residual: Option<&'a Tensor>,
    gamma: &'a Tensor,
    beta: &'a Tensor,
    out: &'a Tensor,
) -> Result<Step<'a>> {
    let p = d.params(d.width, residual.is_some(), eps)?;
    Ok(Dispatch::new(&LAYER_NORM, &p, (d.batch * d.n) as u64)
        .bind("ln_x", x)
        .bind(
            "ln_residual",
            residual.map_or(gpu.placeholder(), Tensor::buffer),
        )
        .bind("ln_gamma", gamma)
        .bind("ln_beta", beta)
        .bind("ln_out", out)
        .step())
}

/// In place: `x += bias` per column (`width` columns), then GELU if asked.
pub(crate) fn bias_act<'a>(
    d: &Dims,
    width: usize,
    gelu: bool,
    x: &'a Tensor,
    bias: &'a Tensor,
) -> Result<Step<'a>> {
    let p = d.params(width, gelu, 0.0)?;
    Ok(
        Dispatch::new(&BIAS_ACT, &p, BIAS_ACT.groups_for(d.batch * d.n * width))
            .bind("ba_x", x)
            .bind("ba_bias", bias)
            .step(),
    )
}

/// `[B, N, H, dh]` → `[B, H, N, dh]`.
pub(crate) fn split_heads<'a>(d: &Dims, x: &'a Tensor, out: &'a Tensor) -> Result<Step<'a>> {
    let p = d.params(d.width, false, 0.0)?;
    let groups = SPLIT_HEADS.groups_for(d.batch * d.n * d.width);
    Ok(Dispatch::new(&SPLIT_HEADS, &p, groups)
        .bind("sh_in", x)
        .bind("sh_out", out)
        .step())
}

/// `[B, H, N, dh]` → `[B, N, H, dh]`.
pub(crate) fn merge_heads<'a>(d: &Dims, x: &'a Tensor, out: &'a Tensor) -> Result<Step<'a>> {
    let p = d.params(d.width, false, 0.0)?;
    let groups = MERGE_HEADS.groups_for(d.batch * d.n * d.width);
    Ok(Dispatch::new(&MERGE_HEADS, &p, groups)
        .bind("sh_in", x)
        .bind("sh_out", out)
        .step())
}
