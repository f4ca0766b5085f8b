//! Encoder layers for BERT-family models: embeddings, LayerNorm, bias + GELU,
//! and the head split/merge around attention.
//!
//! Shader: `shaders/bert.wgsl`. Reference: [`crate::reference::bert`](mod@crate::reference::bert). The
//! encoder that strings them together is [`crate::model`].

use crate::error::Result;
use crate::gpu::{Dispatch, Gpu, Kernel, Step};
use crate::kernels::{elementwise_groups, to_u32};
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("bert.wgsl");

macro_rules! kernel {
    ($name:ident, $entry:literal) => {
        pub(crate) static $name: Kernel = Kernel {
            family: "bert",
            source: SOURCE,
            entry: $entry,
        };
    };
}
kernel!(EMBED, "embed");
kernel!(LAYER_NORM, "layer_norm");
kernel!(BIAS_ACT, "bias_act");
kernel!(SPLIT_HEADS, "split_heads");
kernel!(MERGE_HEADS, "merge_heads");

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

fn step<'a>(
    kernel: &'static Kernel,
    p: BertParams,
    buffers: Vec<&'a wgpu::Buffer>,
    workgroups: u64,
) -> Step<'a> {
    Step::Dispatch(Dispatch {
        kernel,
        params: bytemuck::bytes_of(&p).to_vec(),
        bindings: buffers.into_iter().map(Into::into).collect(),
        workgroups,
    })
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
    let buffers = [ids, types, word, position, token_type, out]
        .map(Tensor::buffer)
        .to_vec();
    Ok(step(
        &EMBED,
        p,
        buffers,
        elementwise_groups(d.batch * d.n * d.width),
    ))
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
    let buffers = vec![
        x.buffer(),
        residual.map_or(gpu.placeholder(), Tensor::buffer),
        gamma.buffer(),
        beta.buffer(),
        out.buffer(),
    ];
    Ok(step(&LAYER_NORM, p, buffers, (d.batch * d.n) as u64))
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
    Ok(step(
        &BIAS_ACT,
        p,
        vec![x.buffer(), bias.buffer()],
        elementwise_groups(d.batch * d.n * width),
    ))
}

/// `[B, N, H, dh]` → `[B, H, N, dh]`.
pub(crate) fn split_heads<'a>(d: &Dims, x: &'a Tensor, out: &'a Tensor) -> Result<Step<'a>> {
    let p = d.params(d.width, false, 0.0)?;
    Ok(step(
        &SPLIT_HEADS,
        p,
        vec![x.buffer(), out.buffer()],
        elementwise_groups(d.batch * d.n * d.width),
    ))
}

/// `[B, H, N, dh]` → `[B, N, H, dh]`.
pub(crate) fn merge_heads<'a>(d: &Dims, x: &'a Tensor, out: &'a Tensor) -> Result<Step<'a>> {
    let p = d.params(d.width, false, 0.0)?;
    Ok(step(
        &MERGE_HEADS,
        p,
        vec![x.buffer(), out.buffer()],
        elementwise_groups(d.batch * d.n * d.width),
    ))
}
