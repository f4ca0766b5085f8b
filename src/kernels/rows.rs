//! Where the row kernels put a row: softmax and its backward, LayerNorm
//! (forward, backward and its parameters' gradients), the bias gradients'
//! column sums and cross-entropy.
//!
//! Each reduces along a row (or a column) and exists in two layouts, chosen
//! per adapter like the matmul and flash variants:
//!
//! - [`RowLayout::Workgroup`]: one workgroup of 64 per row, the reductions
//!   in workgroup memory. For hardware GPUs, where a row's loads then
//!   coalesce and long rows (attention at N = 4096) spread over many lanes.
//! - [`RowLayout::Invocation`]: one invocation per row, a plain loop. For the
//!   software adapters, where every workgroup barrier of a reduction switches
//!   between the workgroup's SIMD batches: at training sizes (rows of 64 to
//!   128) the barriers cost 5–10× the arithmetic (the softmax of the tiny
//!   preset's step went from about 190 ms to under 20 ms on lavapipe).
//!
//! In the invocation layout, the LayerNorm kernels, the column sums, the
//! softmax backward and SAOBP's backward adjoints (`output_adjoints`,
//! `row_adjoints`) read rows of whole texels (widths a multiple of 4) from
//! textures their operands are first copied into (`*_texture` entry
//! points): on the software adapters a texel load costs about half a
//! storage-buffer load and carries four floats, and the copies are
//! buffer-to-texture memcpys (the tiny preset's LayerNorm passes and column
//! sums went from about 80 to 21 ms of a step on lavapipe).
//!
//! The default is [`RowLayout::Invocation`] on software adapters and
//! [`RowLayout::Workgroup`] elsewhere; [`set_row_layout`] or `SAOBP_ROWS`
//! (`workgroup`, `invocation`, `auto`) force one. A row too long for one
//! invocation within llvmpipe's loop budget (over about 21,800 values) takes
//! the workgroup layout whatever was asked. Each layout sums in a fixed
//! order, and both are tested against the reference.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, Panels, Step};
use crate::kernels::{forced, matmul};
use crate::shader::Kernel;
use crate::tensor::Tensor;

/// How a row kernel splits its rows over invocations (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowLayout {
    /// One workgroup per row, reductions in workgroup memory.
    Workgroup,
    /// One invocation per row, no barriers.
    Invocation,
}

impl RowLayout {
    /// Both layouts: every device runs either.
    pub const ALL: [RowLayout; 2] = [RowLayout::Workgroup, RowLayout::Invocation];
}

impl FromStr for RowLayout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "workgroup" => Ok(RowLayout::Workgroup),
            "invocation" => Ok(RowLayout::Invocation),
            _ => Err(Error::invalid(format!(
                "SAOBP_ROWS = `{s}`: expected workgroup, invocation or auto"
            ))),
        }
    }
}

impl fmt::Display for RowLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RowLayout::Workgroup => "workgroup",
            RowLayout::Invocation => "invocation",
        })
    }
}

/// The tuning-cache key of the forced layout.
const LAYOUT_KEY: &str = "rows.layout";

/// Makes every later row kernel on `gpu` use `layout`, or (`None`) go back
/// to the choice per adapter. Wins over `SAOBP_ROWS`.
pub fn set_row_layout(gpu: &Gpu, layout: Option<RowLayout>) {
    gpu.set_tuned(LAYOUT_KEY, None, layout);
}

/// The layout forced on `gpu` by [`set_row_layout`] or `SAOBP_ROWS`, if any.
pub(crate) fn forced_layout(gpu: &Gpu) -> Result<Option<RowLayout>> {
    forced::<RowLayout>(gpu, LAYOUT_KEY, "SAOBP_ROWS")
}

/// The layout the row kernels use on `gpu` (rows within the loop budget).
/// Fails only on a malformed `SAOBP_ROWS`.
pub fn row_layout(gpu: &Gpu) -> Result<RowLayout> {
    Ok(
        forced_layout(gpu)?.unwrap_or(if gpu.adapter().is_software() {
            RowLayout::Invocation
        } else {
            RowLayout::Workgroup
        }),
    )
}

/// Loop iterations the invocation layout may spend per row on adapters
/// with a loop budget: up to three passes over a row of `len`, with room to
/// spare (past the budget llvmpipe ends loops early, silently).
pub(crate) fn fits(gpu: &Gpu, len: u64) -> bool {
    gpu.adapter()
        .loop_budget()
        .is_none_or(|budget| 3 * len + 64 <= budget)
}

/// A row kernel's dispatch over `count` rows (or columns) of `len` values
/// each, in [`row_layout`]: `kernels.0` with one workgroup per row, or
/// `kernels.1` with one invocation per row. Rows too long for one
/// invocation within the adapter's loop budget take the workgroup layout.
pub(crate) fn dispatch<'a>(
    gpu: &Gpu,
    kernels: (&'static Kernel, &'static Kernel),
    params: &impl bytemuck::NoUninit,
    count: impl Into<u64>,
    len: u32,
) -> Result<Dispatch<'a>> {
    let count: u64 = count.into();
    Ok(match row_layout(gpu)? {
        RowLayout::Invocation if fits(gpu, u64::from(len)) => Dispatch::new(
            kernels.1,
            params,
            count.div_ceil(u64::from(kernels.1.workgroup_size)),
        ),
        _ => Dispatch::new(kernels.0, params, count),
    })
}

/// Whether a row kernel over rows `width` wide reads its operands as texels
/// on `gpu` (the `*_texture` entry points): in the invocation layout, with
/// rows of whole texels, its longest loop (`len` iterations) within the
/// adapter's loop budget and `textures` storage textures per kernel.
pub(crate) fn reads_texels(gpu: &Gpu, width: u32, len: u64, textures: u32) -> Result<bool> {
    Ok(row_layout(gpu)? == RowLayout::Invocation
        && width.is_multiple_of(4)
        && fits(gpu, len)
        && gpu.limits().max_storage_textures_per_shader_stage >= textures)
}

/// A scratch texture holding a tensor as stored, and its layer shift.
pub(crate) type Texture = (Panels, u32);

/// Each tensor (whole texels) copied as stored into a scratch texture, for
/// the `*_texture` row kernels: the copies (buffer-to-texture copies, cheap
/// beside the storage loads they spare) and the textures; `None` where one
/// would pass the device's texture limits, and the caller reads buffers.
pub(crate) fn texels<'a, const K: usize>(
    gpu: &Gpu,
    tensors: [&'a Tensor; K],
) -> Option<(Vec<Step<'a>>, [Texture; K])> {
    let mut copies = Vec::with_capacity(K);
    let mut textures = Vec::with_capacity(K);
    for t in tensors {
        let texture =
            matmul::PanelTexture::new(gpu, "a row kernel's operand", t.len() as u64 / 4).ok()?;
        let panels = texture.create(gpu);
        copies.push(texture.copy_from(t, &panels));
        textures.push((panels, texture.layer_shift));
    }
    Some((copies, textures.try_into().ok()?))
}
