//! Streaming attention (flash) and streaming SAOBP: no N×N buffer anywhere.
//!
//! Shader: `shaders/flash.wgsl`. Reference: [`crate::reference::attention`](mod@crate::reference::attention)
//! (output and [`row_stats`](crate::reference::attention::row_stats)) and
//! [`crate::reference::saobp`](mod@crate::reference::saobp). The pipeline
//! that strings them together is [`crate::attention`](mod@crate::attention)
//! in [`Mode::Flash`](crate::Mode::Flash) and [`Mode::Streaming`](crate::Mode::Streaming).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, Kernel, Step};
use crate::kernels::attention::AttentionShape;
use crate::kernels::{elementwise_groups, to_u32};
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("flash.wgsl");

macro_rules! kernel {
    ($name:ident, $entry:literal) => {
        pub(crate) static $name: Kernel = Kernel {
            family: "flash",
            source: SOURCE,
            entry: $entry,
        };
    };
}
kernel!(FLASH_FORWARD, "flash_forward");
kernel!(FLASH_VALUES, "flash_values");
kernel!(FLASH_REFINE, "flash_refine");

/// Query rows per invocation (`ROWS` in the shader).
const ROWS: usize = 8;
/// Invocations per workgroup.
const WG: usize = 64;
/// The widest `D` and `Dv` the kernels hold in private memory (`DMAX`).
pub const MAX_HEAD_DIM: usize = 64;

/// Mirrors `Params` in `shaders/flash.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct FlashParams {
    matrices: u32,
    n: u32,
    d: u32,
    dv: u32,
    heads: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    groups: u32,
    _pad: [u32; 3],
}

/// One streaming problem, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    params: FlashParams,
    /// Workgroups of the row-block kernels.
    blocks: u64,
    /// `B·H·N·Dv`.
    elements: usize,
}

/// Checks that the kernels can hold `D` and `Dv` and sizes the dispatches.
pub(crate) fn plan(shape: &AttentionShape, causal: bool, has_mask: bool) -> Result<Plan> {
    if shape.d > MAX_HEAD_DIM || shape.dv > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "the flash and streaming modes support D and Dv up to {MAX_HEAD_DIM}, got D = {} and \
             Dv = {}; use the plain or fused mode",
            shape.d, shape.dv
        )));
    }
    let matrices = shape.batch * shape.heads;
    let groups = shape.n.div_ceil(WG * ROWS);
    Ok(Plan {
        params: FlashParams {
            matrices: to_u32("matrices", matrices)?,
            n: to_u32("N", shape.n)?,
            d: to_u32("D", shape.d)?,
            dv: to_u32("Dv", shape.dv)?,
            heads: to_u32("heads", shape.heads)?,
            causal: causal.into(),
            has_mask: has_mask.into(),
            scale: shape.scale,
            groups: to_u32("workgroups per matrix", groups)?,
            _pad: [0; 3],
        },
        blocks: (matrices * groups) as u64,
        elements: matrices * shape.n * shape.dv,
    })
}

fn dispatch<'a>(
    plan: &Plan,
    kernel: &'static Kernel,
    buffers: Vec<&'a wgpu::Buffer>,
    workgroups: u64,
) -> Step<'a> {
    Step::Dispatch(Dispatch {
        kernel,
        params: bytemuck::bytes_of(&plan.params).to_vec(),
        buffers,
        workgroups,
    })
}

/// Pass 1: `out = A·V` (`[B, H, N, Dv]`), `row_stats` (`[B, H, N, 3]`: max,
/// sum, entropy) and `keys` (`[B·H·N, 4]`: `a_i`, `r_i`, log-sum-exp, mask bit).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<'a>(
    gpu: &'a Gpu,
    plan: &Plan,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    mask: Option<&'a Tensor>,
    out: &'a Tensor,
    row_stats: &'a Tensor,
    keys: &'a Tensor,
) -> Step<'a> {
    let mask = mask.map_or(gpu.placeholder(), Tensor::buffer);
    let buffers = vec![
        q.buffer(),
        k.buffer(),
        v.buffer(),
        mask,
        out.buffer(),
        row_stats.buffer(),
        keys.buffer(),
    ];
    dispatch(plan, &FLASH_FORWARD, buffers, plan.blocks)
}

/// `U = Y − a ⊙ V` from pass 1's output and `keys`.
pub(crate) fn values<'a>(
    plan: &Plan,
    y: &'a Tensor,
    v: &'a Tensor,
    keys: &'a Tensor,
    u: &'a Tensor,
) -> Step<'a> {
    let buffers = vec![y.buffer(), v.buffer(), keys.buffer(), u.buffer()];
    dispatch(
        plan,
        &FLASH_VALUES,
        buffers,
        elementwise_groups(plan.elements),
    )
}

/// Pass 2: `au = A·U`, the SAOBP row stats `(a, r, c)` (`[B·H·N, 3]`, as
/// [`super::saobp::fused_output`] reads them) and the multi-hop mass `m`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine<'a>(
    plan: &Plan,
    q: &'a Tensor,
    k: &'a Tensor,
    u: &'a Tensor,
    keys: &'a Tensor,
    au: &'a Tensor,
    stats: &'a Tensor,
    mass: &'a Tensor,
) -> Step<'a> {
    let buffers = vec![
        q.buffer(),
        k.buffer(),
        u.buffer(),
        keys.buffer(),
        au.buffer(),
        stats.buffer(),
        mass.buffer(),
    ];
    dispatch(plan, &FLASH_REFINE, buffers, plan.blocks)
}
