//! Streaming attention (flash) and streaming SAOBP: no N×N buffer anywhere.
//!
//! Shader: `shaders/flash.wgsl`, built twice: after
//! `shaders/shared/flash_d64.wgsl` (8 query rows per invocation, heads up to
//! 64 wide) and after `shaders/shared/flash_d128.wgsl` (4 rows, up to 128),
//! chosen per problem by the wider of `D` and `Dv`. Reference: [`crate::reference::attention`](mod@crate::reference::attention)
//! (output and [`row_stats`](crate::reference::attention::row_stats)) and
//! [`crate::reference::saobp`](mod@crate::reference::saobp). The pipeline
//! that strings them together is [`crate::attention`](mod@crate::attention)
//! in [`Mode::Flash`](crate::Mode::Flash) and [`Mode::Streaming`](crate::Mode::Streaming).

use crate::error::{Error, Result};
use crate::gpu::{Binding, Dispatch, Gpu, Step};
use crate::kernels::attention::AttentionShape;
use crate::kernels::to_u32;
use crate::shader::Kernel;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("shared/flash_d64.wgsl", "flash.wgsl");
pub(crate) const WIDE_SOURCE: &str = shader!("shared/flash_d128.wgsl", "flash.wgsl");

kernels! {
    "flash" in SOURCE, params FlashParams, workgroup 64 {
        /// Pass 1: `A·V`, row statistics and per-key values, over a key range.
        FLASH_FORWARD = "flash_forward" (ff_q, ff_k, ff_v, ff_mask, ff_out, ff_stats, ff_keys);
        /// `U'` from pass 1.
        FLASH_VALUES = "flash_values" (fv_y, fv_v, fv_keys, fv_u);
        /// Pass 2: `A·U'` and the SAOBP row stats, over a key range.
        FLASH_REFINE = "flash_refine" (fr_q, fr_k, fr_u, fr_keys, fr_au, fr_stats);
    }
    "flash" in WIDE_SOURCE, params FlashParams, workgroup 64 {
        /// [`FLASH_FORWARD`] for heads up to 128 wide.
        FLASH_FORWARD_WIDE = "flash_forward" (ff_q, ff_k, ff_v, ff_mask, ff_out, ff_stats, ff_keys)
            as "flash_d128" with [];
        /// [`FLASH_REFINE`] for heads up to 128 wide.
        FLASH_REFINE_WIDE = "flash_refine" (fr_q, fr_k, fr_u, fr_keys, fr_au, fr_stats)
            as "flash_d128" with [];
    }
}

/// Query rows per invocation and the widest `D` and `Dv` of each build
/// (`ROWS` and `DMAX` in `shaders/shared/flash_d*.wgsl`): the same private
/// arrays (`ROWS · DMAX` floats) either way.
const NARROW: (usize, usize) = (8, 64);
const WIDE: (usize, usize) = (4, 128);

/// The widest `D` and `Dv` the flash and streaming modes take.
pub const MAX_HEAD_DIM: usize = WIDE.1;

/// Loop iterations one invocation may spend per dispatch on the software
/// adapters. llvmpipe (lavapipe, llvmpipe GL) stops every loop of an
/// invocation, silently, once all its loops together have iterated 65,535
/// times; this leaves room for what the count below does not see.
const SOFTWARE_LOOP_BUDGET: usize = 40_000;

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
    key_begin: u32,
    key_end: u32,
    _pad: u32,
}

/// One streaming problem, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    params: FlashParams,
    /// Workgroups of the row-block kernels.
    blocks: u64,
    /// `B·H·N·(Dv + 1)`: elements of `U'`.
    wide_elements: usize,
    /// Whether the heads need the 128-wide build.
    wide: bool,
    /// Keys per dispatch of pass 1 and of pass 2.
    forward_keys: usize,
    refine_keys: usize,
}

/// Keys per dispatch of `flash_forward` and `flash_refine`, so that no
/// invocation comes near llvmpipe's loop budget (see `shaders/flash.wgsl`).
/// The counts follow the shaders' loops that NIR does not unroll: per key
/// one trip of the key loop, `d` for the scores (`2d` with the mirrored
/// scores of pass 2 when not causal) and `dv` (`dv + 1`) for the values; per
/// dispatch the loads of q (and k) and the state loaded and stored around
/// the key range. Hardware adapters have no such budget: one dispatch covers
/// every key.
pub(crate) fn keys_per_dispatch(
    n: usize,
    d: usize,
    dv: usize,
    causal: bool,
    software: bool,
) -> (usize, usize) {
    if !software {
        return (n.max(1), n.max(1));
    }
    let rows = rows_and_width(d, dv).0;
    let mirror = usize::from(!causal);
    let forward_fixed = rows * (1 + d + 2 * (dv + 1));
    let forward_key = 1 + d + dv;
    let refine_fixed = rows * (1 + d * (1 + mirror) + 2 * (dv + 2));
    let refine_key = 1 + d * (1 + mirror) + dv + 1;
    let keys = |fixed: usize, per_key: usize| {
        (SOFTWARE_LOOP_BUDGET.saturating_sub(fixed) / per_key).clamp(1, n.max(1))
    };
    (
        keys(forward_fixed, forward_key),
        keys(refine_fixed, refine_key),
    )
}

/// The build for heads of `d` and `dv`: (rows per invocation, widest head).
fn rows_and_width(d: usize, dv: usize) -> (usize, usize) {
    if d.max(dv) <= NARROW.1 {
        NARROW
    } else {
        WIDE
    }
}

/// Checks that the kernels can hold `D` and `Dv` and sizes the dispatches;
/// `software` says whether the adapter is a CPU one (see [`keys_per_dispatch`]).
pub(crate) fn plan(
    shape: &AttentionShape,
    causal: bool,
    has_mask: bool,
    software: bool,
) -> Result<Plan> {
    if shape.d > MAX_HEAD_DIM || shape.dv > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "the flash and streaming modes support D and Dv up to {MAX_HEAD_DIM}, got D = {} and \
             Dv = {}; use the plain or fused mode",
            shape.d, shape.dv
        )));
    }
    let matrices = shape.batch * shape.heads;
    let (rows, width) = rows_and_width(shape.d, shape.dv);
    let groups = shape
        .n
        .div_ceil(FLASH_FORWARD.workgroup_size as usize * rows);
    let (forward_keys, refine_keys) =
        keys_per_dispatch(shape.n, shape.d, shape.dv, causal, software);
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
            key_begin: 0,
            key_end: to_u32("N", shape.n)?,
            _pad: 0,
        },
        blocks: (matrices * groups) as u64,
        wide: width > NARROW.1,
        wide_elements: matrices * shape.n * (shape.dv + 1),
        forward_keys,
        refine_keys,
    })
}

/// One dispatch of `kernel` per range of `keys` keys, in order, each
/// binding `bindings` by name.
fn key_ranges<'a>(
    plan: &Plan,
    kernel: &'static Kernel,
    bindings: &[(&'static str, &'a wgpu::Buffer)],
    keys: usize,
) -> Vec<Step<'a>> {
    let n = plan.params.n;
    // `keys` is at most N (see `keys_per_dispatch`), so it fits in u32.
    let step = u32::try_from(keys).unwrap_or(n).max(1);
    (0..n)
        .step_by(step as usize)
        .map(|begin| {
            let params = FlashParams {
                key_begin: begin,
                key_end: begin.saturating_add(step).min(n),
                ..plan.params
            };
            bindings
                .iter()
                .fold(
                    Dispatch::new(kernel, &params, plan.blocks),
                    |d, (name, b)| d.bind(name, Binding::Buffer(b)),
                )
                .step()
        })
        .collect()
}

/// Pass 1: `out = A·V` (`[B, H, N, Dv]`), `row_stats` (`[B, H, N, 3]`: max,
/// sum, entropy) and `keys` (`[B·H·N, 4]`: `a_i`, `r_i`, log-sum-exp, mask bit),
/// in one dispatch per key range. Writes every element of the three.
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
) -> Vec<Step<'a>> {
    let mask = mask.map_or(gpu.placeholder(), Tensor::buffer);
    let bindings = [
        ("ff_q", q.buffer()),
        ("ff_k", k.buffer()),
        ("ff_v", v.buffer()),
        ("ff_mask", mask),
        ("ff_out", out.buffer()),
        ("ff_stats", row_stats.buffer()),
        ("ff_keys", keys.buffer()),
    ];
    let kernel = if plan.wide {
        &FLASH_FORWARD_WIDE
    } else {
        &FLASH_FORWARD
    };
    key_ranges(plan, kernel, &bindings, plan.forward_keys)
}

/// `U' = [Y − a ⊙ V | r − a]` (`[B·H·N, Dv + 1]`) from pass 1's output and `keys`.
pub(crate) fn values<'a>(
    plan: &Plan,
    y: &'a Tensor,
    v: &'a Tensor,
    keys: &'a Tensor,
    u: &'a Tensor,
) -> Step<'a> {
    Dispatch::new(
        &FLASH_VALUES,
        &plan.params,
        FLASH_VALUES.groups_for(plan.wide_elements),
    )
    .bind("fv_y", y)
    .bind("fv_v", v)
    .bind("fv_keys", keys)
    .bind("fv_u", u)
    .step()
}

/// Pass 2: `au = A·U'` (`[B·H·N, Dv + 1]`) and the SAOBP row stats
/// `(a, r, c)` (`[B·H·N, 3]`), as [`super::saobp::fused_output`] reads them,
/// in one dispatch per key range. Writes every element of both.
pub(crate) fn refine<'a>(
    plan: &Plan,
    q: &'a Tensor,
    k: &'a Tensor,
    u: &'a Tensor,
    keys: &'a Tensor,
    au: &'a Tensor,
    stats: &'a Tensor,
) -> Vec<Step<'a>> {
    let bindings = [
        ("fr_q", q.buffer()),
        ("fr_k", k.buffer()),
        ("fr_u", u.buffer()),
        ("fr_keys", keys.buffer()),
        ("fr_au", au.buffer()),
        ("fr_stats", stats.buffer()),
    ];
    let kernel = if plan.wide {
        &FLASH_REFINE_WIDE
    } else {
        &FLASH_REFINE
    };
    key_ranges(plan, kernel, &bindings, plan.refine_keys)
}
