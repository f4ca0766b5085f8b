//! Streaming attention (flash) and streaming SAOBP: no N×N buffer anywhere.
//!
//! Two kernel layouts ([`FlashVariant`]), chosen per adapter:
//! - `shaders/flash.wgsl` (the buffer variant, for hardware GPUs and any
//!   adapter without subgroups of 8): each invocation owns a few query rows
//!   and reads Q, K, V and `U'` from storage buffers. Built after
//!   `shaders/shared/flash_d64.wgsl` (8 query rows per invocation, heads up to
//!   64 wide) or `shaders/shared/flash_d128.wgsl` (4 rows, up to 128).
//! - `shaders/flash_subgroup.wgsl` (the texture-subgroup variant, for
//!   lavapipe): a subgroup of 8 lanes shares 8 query rows, each lane a slice
//!   of their columns, and reads operands packed into texture panels first.
//!   Built after `shaders/shared/flash_sg64.wgsl` or `flash_sg128.wgsl`.
//!
//! Both after `shaders/shared/flash_params.wgsl`, chosen per problem by the
//! wider of `D` and `Dv`. Reference: [`crate::reference::attention`](mod@crate::reference::attention)
//! (output and [`row_stats`](crate::reference::attention::row_stats)) and
//! [`crate::reference::saobp`](mod@crate::reference::saobp). The pipeline
//! that strings them together is [`crate::attention`](mod@crate::attention)
//! in [`Mode::Flash`](crate::Mode::Flash) and [`Mode::Streaming`](crate::Mode::Streaming).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::{Binding, Dispatch, Gpu, Step};
use crate::kernels::attention::AttentionShape;
use crate::kernels::matmul::PanelTexture;
use crate::kernels::{forced, to_u32};
use crate::shader::Kernel;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!(
    "shared/flash_params.wgsl",
    "shared/flash_d64.wgsl",
    "flash.wgsl"
);
pub(crate) const WIDE_SOURCE: &str = shader!(
    "shared/flash_params.wgsl",
    "shared/flash_d128.wgsl",
    "flash.wgsl"
);
// Subgroup builtins: naga (native) takes them without a directive, and
// rejects `enable subgroups;`; browsers require it.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const SUBGROUP_SOURCE: &str = shader!(
    "shared/flash_params.wgsl",
    "shared/flash_sg64.wgsl",
    "flash_subgroup.wgsl"
);
#[cfg(not(target_arch = "wasm32"))]
pub(crate) const SUBGROUP_WIDE_SOURCE: &str = shader!(
    "shared/flash_params.wgsl",
    "shared/flash_sg128.wgsl",
    "flash_subgroup.wgsl"
);
#[cfg(target_arch = "wasm32")]
pub(crate) const SUBGROUP_SOURCE: &str = shader!(
    enable "subgroups",
    "shared/flash_params.wgsl",
    "shared/flash_sg64.wgsl",
    "flash_subgroup.wgsl"
);
#[cfg(target_arch = "wasm32")]
pub(crate) const SUBGROUP_WIDE_SOURCE: &str = shader!(
    enable "subgroups",
    "shared/flash_params.wgsl",
    "shared/flash_sg128.wgsl",
    "flash_subgroup.wgsl"
);

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
    "flash_subgroup" in SUBGROUP_SOURCE, params FlashParams, workgroup 64 {
        /// Packs one operand into texture panels for the subgroup kernels.
        FLASH_PACK = "flash_pack" (fp_src, fp_panels);
        /// [`FLASH_FORWARD`], 8 rows per subgroup, operands from textures.
        FLASH_FORWARD_SUBGROUP = "flash_forward" (ff_q, ff_k, ff_v, ff_mask, ff_out, ff_stats, ff_keys);
        /// [`FLASH_REFINE`], 8 rows per subgroup, operands from textures.
        FLASH_REFINE_SUBGROUP = "flash_refine" (fr_q, fr_k, fr_u, fr_keys, fr_au, fr_stats);
    }
    "flash_subgroup" in SUBGROUP_WIDE_SOURCE, params FlashParams, workgroup 64 {
        /// [`FLASH_FORWARD_SUBGROUP`] for heads up to 128 wide.
        FLASH_FORWARD_SUBGROUP_WIDE = "flash_forward" (ff_q, ff_k, ff_v, ff_mask, ff_out, ff_stats, ff_keys)
            as "flash_subgroup_d128" with [];
        /// [`FLASH_REFINE_SUBGROUP`] for heads up to 128 wide.
        FLASH_REFINE_SUBGROUP_WIDE = "flash_refine" (fr_q, fr_k, fr_u, fr_keys, fr_au, fr_stats)
            as "flash_subgroup_d128" with [];
    }
}

/// How the flash and streaming kernels lay out their work. Both compute the
/// same thing; they differ in speed per adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlashVariant {
    /// `shaders/flash.wgsl`: each invocation owns a few query rows and reads
    /// `Q`, `K`, `V` (and `U'`) straight from storage buffers. For hardware
    /// GPUs, and any adapter without subgroups of 8.
    Buffer,
    /// `shaders/flash_subgroup.wgsl`: a subgroup of 8 lanes shares 8 query
    /// rows, each lane a slice of their columns, with the operands packed
    /// into texture panels first. For the software adapters, where private
    /// arrays indexed in loops and storage-buffer loads are slow. Needs
    /// subgroups of exactly 8 and four storage textures per shader stage.
    TextureSubgroup,
}

impl FromStr for FlashVariant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "buffer" => Ok(FlashVariant::Buffer),
            "texture" | "texture subgroup" | "texture-subgroup" => {
                Ok(FlashVariant::TextureSubgroup)
            }
            _ => Err(Error::invalid(format!(
                "SAOBP_FLASH = `{s}`: expected buffer, texture or auto"
            ))),
        }
    }
}

impl fmt::Display for FlashVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlashVariant::Buffer => "buffer",
            FlashVariant::TextureSubgroup => "texture subgroup",
        })
    }
}

impl FlashVariant {
    /// Every variant `gpu` can run.
    pub fn available(gpu: &Gpu) -> Vec<FlashVariant> {
        let mut out = vec![FlashVariant::Buffer];
        if gpu.subgroup_size() == Some(8) && gpu.limits().max_storage_textures_per_shader_stage >= 4
        {
            out.push(FlashVariant::TextureSubgroup);
        }
        out
    }
}

/// The tuning-cache key of the forced variant.
const VARIANT_KEY: &str = "flash.variant";

/// Makes every later flash and streaming call on `gpu` use `variant` where
/// the device can run it (else the buffer variant), or (`None`) go back to
/// the choice per adapter: the texture-subgroup variant on software
/// adapters that can run it, else the buffer one. Wins over `SAOBP_FLASH`.
pub fn set_flash_variant(gpu: &Gpu, variant: Option<FlashVariant>) {
    gpu.set_tuned(VARIANT_KEY, None, variant);
}

/// The variant a problem of `texels` texels per operand runs with on `gpu`,
/// and for the texture variant the size of each operand's texture.
fn choose(gpu: &Gpu, texels: u64) -> Result<Option<PanelTexture>> {
    let available = FlashVariant::available(gpu);
    // Forced by `set_flash_variant`, else by `SAOBP_FLASH` (`buffer`, `texture`).
    let wanted = forced::<FlashVariant>(gpu, VARIANT_KEY, "SAOBP_FLASH")?.unwrap_or(
        if gpu.adapter().is_software() {
            FlashVariant::TextureSubgroup
        } else {
            FlashVariant::Buffer
        },
    );
    Ok(match wanted {
        FlashVariant::TextureSubgroup if available.contains(&wanted) => {
            PanelTexture::new(gpu, "a flash operand", texels).ok()
        }
        _ => None,
    })
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
    layer_shift: u32,
    pack_width: u32,
    pack_texels: u32,
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
    /// With the texture-subgroup variant, the size of each operand's texture.
    panels: Option<PanelTexture>,
    /// `B·H·N`: rows of each operand.
    rows: usize,
    /// Keys per dispatch of pass 1 and of pass 2.
    forward_keys: usize,
    refine_keys: usize,
}

/// Keys per dispatch of `flash_forward` and `flash_refine`, so that no
/// invocation comes near llvmpipe's loop budget (see `shaders/flash.wgsl`).
/// The counts follow the shaders' loops. Buffer variant: the loops NIR does
/// not unroll: per key one trip of the key loop, `d` for the scores (`2d`
/// with the mirrored scores of pass 2 when not causal) and `dv` (`dv + 1`)
/// for the values; per dispatch the loads of q (and k) and the state loaded
/// and stored around the key range. Texture-subgroup variant: every loop,
/// as if none unrolled (its loops are short and constant, so this only
/// costs a few more dispatches than needed). Hardware adapters have no such
/// budget: one dispatch covers every key.
pub(crate) fn keys_per_dispatch(
    n: usize,
    d: usize,
    dv: usize,
    causal: bool,
    software: Option<FlashVariant>,
) -> (usize, usize) {
    let Some(variant) = software else {
        return (n.max(1), n.max(1));
    };
    let mirror = usize::from(!causal);
    let ((forward_fixed, forward_key), (refine_fixed, refine_key)) = match variant {
        FlashVariant::Buffer => {
            let rows = rows_and_width(d, dv).0;
            (
                (rows * (1 + d + 2 * (dv + 1)), 1 + d + dv),
                (
                    rows * (1 + d * (1 + mirror) + 2 * (dv + 2)),
                    1 + d * (1 + mirror) + dv + 1,
                ),
            )
        }
        FlashVariant::TextureSubgroup => {
            let rows = SUBGROUP_ROWS;
            let dq = subgroup_texels(d, dv);
            // The shader writes its rows out; counted as loops over rows,
            // each over the lane's texels: the scores, the butterfly and
            // the update of O (or A U').
            let scores = rows * (1 + dq);
            let forward = 1 + dq + scores + rows + rows * (1 + dq);
            let refine =
                1 + dq + scores + rows + mirror * (dq + scores + rows) + dq + rows * (1 + dq);
            (
                (rows * (1 + 3 * dq) + 3 * rows, forward),
                (rows * (1 + 4 * dq) + 3 * rows, refine),
            )
        }
    };
    let keys = |fixed: usize, per_key: usize| {
        (SOFTWARE_LOOP_BUDGET.saturating_sub(fixed) / per_key).clamp(1, n.max(1))
    };
    (
        keys(forward_fixed, forward_key),
        keys(refine_fixed, refine_key),
    )
}

/// Query rows per subgroup of the texture-subgroup variant (one per lane).
const SUBGROUP_ROWS: usize = 8;

/// Texels per lane of each row of q, k, v, O and `U'` (`DQ` in
/// `shaders/shared/flash_sg*.wgsl`).
fn subgroup_texels(d: usize, dv: usize) -> usize {
    if d.max(dv) <= NARROW.1 {
        2
    } else {
        4
    }
}

/// The build for heads of `d` and `dv`: (rows per invocation, widest head).
fn rows_and_width(d: usize, dv: usize) -> (usize, usize) {
    if d.max(dv) <= NARROW.1 {
        NARROW
    } else {
        WIDE
    }
}

/// Checks that the kernels can hold `D` and `Dv`, chooses the variant for
/// `gpu` and sizes the dispatches (on software adapters within their loop
/// budget, see [`keys_per_dispatch`]).
pub(crate) fn plan(
    gpu: &Gpu,
    shape: &AttentionShape,
    causal: bool,
    has_mask: bool,
) -> Result<Plan> {
    if shape.d > MAX_HEAD_DIM || shape.dv > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "the flash and streaming modes support D and Dv up to {MAX_HEAD_DIM}, got D = {} and \
             Dv = {}; use the plain or fused mode",
            shape.d, shape.dv
        )));
    }
    let matrices = shape.batch * shape.heads;
    let rows = matrices * shape.n;
    // One texture size for Q, K, V, U' and pass 1's row stats, so that they
    // share pooled textures.
    let texels = rows as u64 * shape.d.max(shape.dv + 1).div_ceil(4) as u64;
    let panels = choose(gpu, texels)?;
    let variant = if panels.is_some() {
        FlashVariant::TextureSubgroup
    } else {
        FlashVariant::Buffer
    };
    let (block_rows, width) = rows_and_width(shape.d, shape.dv);
    // Query rows per workgroup: 64 invocations of a few rows each, or 8
    // subgroups of 8 rows.
    let per_group = match variant {
        FlashVariant::Buffer => FLASH_FORWARD.workgroup_size as usize * block_rows,
        FlashVariant::TextureSubgroup => 64,
    };
    let groups = shape.n.div_ceil(per_group);
    let software = gpu.adapter().is_software().then_some(variant);
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
            layer_shift: panels.map_or(0, |p| p.layer_shift),
            pack_width: 0,
            pack_texels: 0,
            _pad: 0,
        },
        blocks: (matrices * groups) as u64,
        wide: width > NARROW.1,
        panels,
        rows,
        wide_elements: matrices * shape.n * (shape.dv + 1),
        forward_keys,
        refine_keys,
    })
}

impl Plan {
    /// The variant this problem runs with.
    pub(crate) fn variant(&self) -> FlashVariant {
        if self.panels.is_some() {
            FlashVariant::TextureSubgroup
        } else {
            FlashVariant::Buffer
        }
    }

    /// The build of pass 1 (`refine` false) or pass 2 for these heads and variant.
    fn kernel(&self, refine: bool) -> &'static Kernel {
        match (refine, self.wide, self.variant()) {
            (false, false, FlashVariant::Buffer) => &FLASH_FORWARD,
            (false, true, FlashVariant::Buffer) => &FLASH_FORWARD_WIDE,
            (false, false, FlashVariant::TextureSubgroup) => &FLASH_FORWARD_SUBGROUP,
            (false, true, FlashVariant::TextureSubgroup) => &FLASH_FORWARD_SUBGROUP_WIDE,
            (true, false, FlashVariant::Buffer) => &FLASH_REFINE,
            (true, true, FlashVariant::Buffer) => &FLASH_REFINE_WIDE,
            (true, false, FlashVariant::TextureSubgroup) => &FLASH_REFINE_SUBGROUP,
            (true, true, FlashVariant::TextureSubgroup) => &FLASH_REFINE_SUBGROUP_WIDE,
        }
    }

    /// `t` (rows of `width` columns) as the kernels read it: its buffer, or
    /// for the texture variant a scratch texture that a step pushed onto
    /// `steps` packs it into.
    fn operand<'a>(
        &self,
        gpu: &Gpu,
        t: &'a Tensor,
        width: usize,
        steps: &mut Vec<Step<'a>>,
    ) -> Binding<'a> {
        let Some(panels) = self.panels else {
            return Binding::Buffer(t.buffer());
        };
        let texture = panels.create(gpu);
        // At most the texture's texel count, which `plan` checked fits in u32.
        let texels = self.rows * width.div_ceil(4);
        let params = FlashParams {
            pack_width: width as u32,
            pack_texels: texels as u32,
            ..self.params
        };
        steps.push(
            Dispatch::new(&FLASH_PACK, &params, FLASH_PACK.groups_for(texels))
                .bind("fp_src", t)
                .bind("fp_panels", Binding::Texture(texture.clone()))
                .step(),
        );
        Binding::Texture(texture)
    }
}

/// `Q` and `K` as pass 1 read them, for pass 2 to read the same way (packed
/// once for both passes with the texture variant).
pub(crate) struct Operands<'a> {
    q: Binding<'a>,
    k: Binding<'a>,
}

/// One dispatch of `kernel` per range of `keys` keys, in order, each
/// binding `bindings` by name.
fn key_ranges<'a>(
    plan: &Plan,
    kernel: &'static Kernel,
    bindings: &[(&'static str, Binding<'a>)],
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
                    |d, (name, b)| d.bind(name, b.clone()),
                )
                .step()
        })
        .collect()
}

/// Pass 1: `out = A·V` (`[B, H, N, Dv]`), `row_stats` (`[B, H, N, 3]`: max,
/// sum, entropy) and `keys` (`[B·H·N, 4]`: `a_i`, `r_i`, log-sum-exp, mask bit),
/// in one dispatch per key range (after packing Q, K and V, with the texture
/// variant). Writes every element of the three. Also returns Q and K as
/// read, for [`refine`].
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
) -> (Vec<Step<'a>>, Operands<'a>) {
    let d = plan.params.d as usize;
    let mut steps = Vec::new();
    let operands = Operands {
        q: plan.operand(gpu, q, d, &mut steps),
        k: plan.operand(gpu, k, d, &mut steps),
    };
    let v = plan.operand(gpu, v, plan.params.dv as usize, &mut steps);
    let mask = mask.map_or(gpu.placeholder(), Tensor::buffer);
    let bindings = [
        ("ff_q", operands.q.clone()),
        ("ff_k", operands.k.clone()),
        ("ff_v", v),
        ("ff_mask", Binding::Buffer(mask)),
        ("ff_out", Binding::Buffer(out.buffer())),
        ("ff_stats", Binding::Buffer(row_stats.buffer())),
        ("ff_keys", Binding::Buffer(keys.buffer())),
    ];
    steps.extend(key_ranges(
        plan,
        plan.kernel(false),
        &bindings,
        plan.forward_keys,
    ));
    (steps, operands)
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
/// in one dispatch per key range (after packing `U'`, with the texture
/// variant), reading Q and K as [`forward`] did. Writes every element of both.
pub(crate) fn refine<'a>(
    gpu: &Gpu,
    plan: &Plan,
    operands: &Operands<'a>,
    u: &'a Tensor,
    keys: &'a Tensor,
    au: &'a Tensor,
    stats: &'a Tensor,
) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let u = plan.operand(gpu, u, plan.params.dv as usize + 1, &mut steps);
    let keys = plan.operand(gpu, keys, 4, &mut steps);
    let bindings = [
        ("fr_q", operands.q.clone()),
        ("fr_k", operands.k.clone()),
        ("fr_u", u),
        ("fr_keys", keys),
        ("fr_au", Binding::Buffer(au.buffer())),
        ("fr_stats", Binding::Buffer(stats.buffer())),
    ];
    steps.extend(key_ranges(
        plan,
        plan.kernel(true),
        &bindings,
        plan.refine_keys,
    ));
    steps
}
