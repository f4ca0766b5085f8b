//! Batched matrix product with optional transposes: `C = alpha · op(A) · op(B)`.
//!
//! Three kernel families, because no one design is fast everywhere:
//!
//! - **buffer** (`shaders/matmul.wgsl`, `matmul_blocked`): 4×4 outputs per
//!   invocation straight from storage buffers. Simple, cheapest for tiny
//!   products, and the one the conformance fault injection breaks.
//! - **tiled** (`shaders/matmul_tiled.wgsl`): workgroup-memory tiles, the
//!   usual design for hardware GPUs.
//! - **texture** (`shaders/matmul_pack.wgsl` + `matmul_texture.wgsl` /
//!   `matmul_texture_subgroup.wgsl`): operands packed into panels of
//!   `rgba32float` textures and read as read-only storage textures. Software
//!   adapters (lavapipe, llvmpipe) load texels 10–20× faster than storage
//!   buffers, so this is their fast path; with subgroups of 8 (lavapipe) A is
//!   shared with `subgroupBroadcast`. Packing is a shader of its own, whose
//!   storage-buffer loads cost more than the product at training sizes; so
//!   operands whose stored rows are whole texels (K a multiple of 4, and M
//!   for a stored `Aᵀ`, N for a stored `B`; buffers with `COPY_SRC`, as
//!   every tensor the library makes) are instead copied into textures as
//!   they lie, by buffer-to-texture copies (a memcpy on lavapipe, 20–30×
//!   faster than the pack), and multiplied by `matmul_linear_subgroup.wgsl`
//!   (with subgroups) or `matmul_linear.wgsl` (without), which read the
//!   stored layouts.
//!
//! Which one runs ([`MatmulVariant`]) is chosen per adapter and size: the
//! family forced by [`set_matmul_family`] or the `SAOBP_MATMUL` environment
//! variable, else the winner [`tune_matmul`] measured for the product's
//! [`SizeClass`] (kept in the device's tuning cache), else a heuristic
//! (software adapter: texture unless the product is tiny; hardware: tiled).
//! Every variant is tested against the reference.
//!
//! The tiled configurations and the conformance runner's deliberately wrong
//! kernel are the same WGSL with other values of its `override` constants.
//!
//! Reference: [`crate::reference::matmul`](mod@crate::reference::matmul).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::{Binding, Dispatch, Gpu, Panels, SizeClass, Step, TEXELS_PER_ROW};
use crate::kernels::{forced, to_u32};
use crate::shader::Kernel;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("shared/matmul_params.wgsl", "matmul.wgsl");
pub(crate) const TILED_SOURCE: &str = shader!("shared/matmul_params.wgsl", "matmul_tiled.wgsl");
pub(crate) const PACK_SOURCE: &str = shader!("shared/matmul_panels.wgsl", "matmul_pack.wgsl");
pub(crate) const TEXTURE_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_put.wgsl",
    "shared/matmul_store.wgsl",
    "matmul_texture.wgsl"
);
pub(crate) const LINEAR_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_put.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);
/// [`LINEAR_SOURCE`] storing `residual + (product + bias)`.
pub(crate) const LINEAR_BIAS_RESIDUAL_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_put_bias_residual.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);
/// [`LINEAR_SOURCE`] storing the product and `gelu(product + bias)`.
pub(crate) const LINEAR_BIAS_GELU_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/gelu.wgsl",
    "shared/matmul_put_bias_gelu.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);
/// [`LINEAR_SOURCE`] storing `product + bias` split into q, k and v heads.
pub(crate) const LINEAR_SPLIT_QKV_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_split_qkv.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);

/// [`LINEAR_SOURCE`] storing `C · gelu'(pre + bias)`.
pub(crate) const LINEAR_GELU_BACKWARD_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/gelu.wgsl",
    "shared/matmul_put_gelu_backward.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);
/// [`LINEAR_SOURCE`] storing per-head C back into token rows.
pub(crate) const LINEAR_MERGE_HEADS_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_merge_heads.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);
/// [`LINEAR_SOURCE`] storing token rows of C into per-head rows.
pub(crate) const LINEAR_SPLIT_HEADS_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_split_heads.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);
/// [`LINEAR_SOURCE`] storing C into a texture.
pub(crate) const LINEAR_TEXELS_SOURCE: &str = shader!(
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_texels.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear.wgsl"
);

/// A source that uses subgroup builtins. naga (native) takes them without a
/// directive, and rejects `enable subgroups;`; browsers require it.
macro_rules! subgroup_source {
    ($(#[$meta:meta])* $name:ident = $($file:literal),+) => {
        $(#[$meta])*
        #[cfg(not(target_arch = "wasm32"))]
        pub(crate) const $name: &str = shader!($($file),+);
        $(#[$meta])*
        #[cfg(target_arch = "wasm32")]
        pub(crate) const $name: &str = shader!(enable "subgroups", $($file),+);
    };
}

subgroup_source!(
    TEXTURE_SUBGROUP_SOURCE = "shared/matmul_panels.wgsl",
    "shared/matmul_put.wgsl",
    "shared/matmul_store.wgsl",
    "matmul_texture_subgroup.wgsl"
);
subgroup_source!(
    LINEAR_SUBGROUP_SOURCE = "shared/matmul_panels.wgsl",
    "shared/matmul_put.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl"
);
subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing `residual + (product + bias)`.
    LINEAR_SUBGROUP_BIAS_RESIDUAL_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/matmul_put_bias_residual.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");
subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing the product and `gelu(product + bias)`.
    LINEAR_SUBGROUP_BIAS_GELU_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/gelu.wgsl",
    "shared/matmul_put_bias_gelu.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");
subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing `product + bias` split into q, k
    /// and v heads.
    LINEAR_SUBGROUP_SPLIT_QKV_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_split_qkv.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");

subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing `C · gelu'(pre + bias)`.
    LINEAR_SUBGROUP_GELU_BACKWARD_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/gelu.wgsl",
    "shared/matmul_put_gelu_backward.wgsl",
    "shared/matmul_store.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");
subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing token rows of C into per-head rows.
    LINEAR_SUBGROUP_SPLIT_HEADS_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_split_heads.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");
subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing per-head C back into token rows.
    LINEAR_SUBGROUP_MERGE_HEADS_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_merge_heads.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");
subgroup_source!(
    /// [`LINEAR_SUBGROUP_SOURCE`] storing C into a texture.
    LINEAR_SUBGROUP_TEXELS_SOURCE =
    "shared/matmul_panels.wgsl",
    "shared/matmul_store_texels.wgsl",
    "shared/matmul_linear.wgsl",
    "matmul_linear_subgroup.wgsl");

kernels! {
    "matmul" in SOURCE, params MatmulParams, workgroup 64 {
        /// 4×4 outputs per invocation straight from storage buffers.
        MATMUL_BLOCKED = "matmul_blocked" (a, b, c);
        /// `matmul_blocked` with its k loop one term short (so `C` misses
        /// `A[:, K-1] · B[K-1, :]`), for showing that the conformance runner
        /// catches a broken kernel. Only the runner dispatches it, when asked.
        MATMUL_SKIPS_LAST_K = "matmul_blocked" (a, b, c)
            as "faults/matmul_skips_last_k" with [SKIPPED_K = 1];
    }
    "matmul_tiled" in TILED_SOURCE, params MatmulParams, workgroup 256 {
        /// 64×64 tiles, BK 16, 4×4 outputs per invocation (the WGSL defaults).
        MATMUL_TILED_64 = "matmul_tiled" (a, b, c) as "matmul_tiled_64" with [];
        /// 128×128 tiles, BK 8, 8×8 outputs per invocation: the same 256
        /// invocations and 8 KiB of workgroup memory, twice the reuse.
        MATMUL_TILED_128 = "matmul_tiled" (a, b, c)
            as "matmul_tiled_128" with [BM = 128, BN = 128, BK = 8, TM = 8, TN = 8];
    }
    "matmul_pack" in PACK_SOURCE, params TextureParams, workgroup 64 {
        /// Packs one operand into texture panels.
        PACK = "pack" (src, panels);
    }
    "matmul_texture" in TEXTURE_SOURCE, params TextureParams, workgroup 64 {
        /// The product from packed panels.
        MATMUL_TEXTURE = "matmul_texture" (a_panels, b_panels, c);
    }
    "matmul_texture_subgroup" in TEXTURE_SUBGROUP_SOURCE, params TextureParams, workgroup 64 {
        /// The product from packed panels, A shared by `subgroupBroadcast`.
        MATMUL_TEXTURE_SUBGROUP = "matmul_texture_subgroup" (a_panels, b_panels, c);
    }
    "matmul_linear" in LINEAR_SOURCE, params TextureParams, workgroup 64 {
        /// `matmul_texture`'s product from operands copied as stored: A
        /// `[M, K]`, B `[K, N]`.
        MATMUL_LINEAR = "matmul_linear" (a_panels, b_panels, c) as "matmul_linear" with [];
        /// The same with A stored `[K, M]`.
        MATMUL_LINEAR_TA = "matmul_linear" (a_panels, b_panels, c)
            as "matmul_linear_ta" with [TRANS_A = 1];
        /// The same with B stored `[N, K]`.
        MATMUL_LINEAR_TB = "matmul_linear" (a_panels, b_panels, c)
            as "matmul_linear_tb" with [TRANS_B = 1];
        /// The same with A stored `[K, M]` and B stored `[N, K]`.
        MATMUL_LINEAR_TATB = "matmul_linear" (a_panels, b_panels, c)
            as "matmul_linear_tatb" with [TRANS_A = 1, TRANS_B = 1];
    }
    "matmul_linear" in LINEAR_BIAS_RESIDUAL_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR`] whose store adds a bias per column and a
        /// residual (`Epilogue::BiasResidual`).
        MATMUL_LINEAR_BIAS_RESIDUAL = "matmul_linear" (a_panels, b_panels, c, bias, residual)
            as "matmul_linear_bias_residual" with [];
    }
    "matmul_linear" in LINEAR_BIAS_GELU_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR`] whose store also writes `gelu(C + bias)`
        /// (`Epilogue::BiasGelu`).
        MATMUL_LINEAR_BIAS_GELU = "matmul_linear" (a_panels, b_panels, c, bias, act)
            as "matmul_linear_bias_gelu" with [];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_BIAS_RESIDUAL_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP`] whose store adds a bias per column and
        /// a residual (`Epilogue::BiasResidual`).
        MATMUL_LINEAR_SUBGROUP_BIAS_RESIDUAL = "matmul_linear_subgroup" (a_panels, b_panels, c, bias, residual)
            as "matmul_linear_subgroup_bias_residual" with [];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_BIAS_GELU_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP`] whose store also writes
        /// `gelu(C + bias)` (`Epilogue::BiasGelu`).
        MATMUL_LINEAR_SUBGROUP_BIAS_GELU = "matmul_linear_subgroup" (a_panels, b_panels, c, bias, act)
            as "matmul_linear_subgroup_bias_gelu" with [];
    }
    "matmul_linear" in LINEAR_GELU_BACKWARD_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_TB`] whose store multiplies by GELU's derivative
        /// (`Epilogue::GeluBackward`).
        MATMUL_LINEAR_TB_GELU_BACKWARD = "matmul_linear" (a_panels, b_panels, c, bias, pre)
            as "matmul_linear_tb_gelu_backward" with [TRANS_B = 1];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_GELU_BACKWARD_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP_TB`] whose store multiplies by GELU's
        /// derivative (`Epilogue::GeluBackward`).
        MATMUL_LINEAR_SUBGROUP_TB_GELU_BACKWARD = "matmul_linear_subgroup" (a_panels, b_panels, c, bias, pre)
            as "matmul_linear_subgroup_tb_gelu_backward" with [TRANS_B = 1];
    }
    "matmul_linear" in LINEAR_MERGE_HEADS_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR`] storing per-head C into token rows
        /// (`Epilogue::MergeHeads`).
        MATMUL_LINEAR_MERGE_HEADS = "matmul_linear" (a_panels, b_panels, merged)
            as "matmul_linear_merge_heads" with [];
        /// The same with A stored `[K, M]`.
        MATMUL_LINEAR_TA_MERGE_HEADS = "matmul_linear" (a_panels, b_panels, merged)
            as "matmul_linear_ta_merge_heads" with [TRANS_A = 1];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_MERGE_HEADS_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP`] storing per-head C into token rows
        /// (`Epilogue::MergeHeads`).
        MATMUL_LINEAR_SUBGROUP_MERGE_HEADS = "matmul_linear_subgroup" (a_panels, b_panels, merged)
            as "matmul_linear_subgroup_merge_heads" with [];
        /// The same with A stored `[K, M]`.
        MATMUL_LINEAR_SUBGROUP_TA_MERGE_HEADS = "matmul_linear_subgroup" (a_panels, b_panels, merged)
            as "matmul_linear_subgroup_ta_merge_heads" with [TRANS_A = 1];
    }
    "matmul_linear" in LINEAR_TEXELS_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_TB`] storing C into a texture (`Epilogue::Texels`).
        MATMUL_LINEAR_TB_TEXELS = "matmul_linear" (a_panels, b_panels, c_texels)
            as "matmul_linear_tb_texels" with [TRANS_B = 1];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_TEXELS_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP_TB`] storing C into a texture
        /// (`Epilogue::Texels`).
        MATMUL_LINEAR_SUBGROUP_TB_TEXELS = "matmul_linear_subgroup" (a_panels, b_panels, c_texels)
            as "matmul_linear_subgroup_tb_texels" with [TRANS_B = 1];
    }
    "matmul_linear" in LINEAR_SPLIT_HEADS_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_TB`] storing C's token rows into per-head rows
        /// (`Epilogue::SplitHeads`).
        MATMUL_LINEAR_TB_SPLIT_HEADS = "matmul_linear" (a_panels, b_panels, heads)
            as "matmul_linear_tb_split_heads" with [TRANS_B = 1];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_SPLIT_HEADS_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP_TB`] storing C's token rows into
        /// per-head rows (`Epilogue::SplitHeads`).
        MATMUL_LINEAR_SUBGROUP_TB_SPLIT_HEADS = "matmul_linear_subgroup" (a_panels, b_panels, heads)
            as "matmul_linear_subgroup_tb_split_heads" with [TRANS_B = 1];
    }
    "matmul_linear" in LINEAR_SPLIT_QKV_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR`] whose store adds a bias per column and splits
        /// C into q, k and v heads (`Epilogue::SplitQkv`).
        MATMUL_LINEAR_SPLIT_QKV = "matmul_linear" (a_panels, b_panels, bias, q, k, v)
            as "matmul_linear_split_qkv" with [];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_SPLIT_QKV_SOURCE, params TextureParams, workgroup 64 {
        /// [`MATMUL_LINEAR_SUBGROUP`] whose store adds a bias per column
        /// and splits C into q, k and v heads (`Epilogue::SplitQkv`).
        MATMUL_LINEAR_SUBGROUP_SPLIT_QKV = "matmul_linear_subgroup" (a_panels, b_panels, bias, q, k, v)
            as "matmul_linear_subgroup_split_qkv" with [];
    }
    "matmul_linear_subgroup" in LINEAR_SUBGROUP_SOURCE, params TextureParams, workgroup 64 {
        /// `matmul_texture_subgroup`'s product from operands copied as
        /// stored: A `[M, K]`, B `[K, N]`.
        MATMUL_LINEAR_SUBGROUP = "matmul_linear_subgroup" (a_panels, b_panels, c)
            as "matmul_linear_subgroup" with [];
        /// The same with A stored `[K, M]`.
        MATMUL_LINEAR_SUBGROUP_TA = "matmul_linear_subgroup" (a_panels, b_panels, c)
            as "matmul_linear_subgroup_ta" with [TRANS_A = 1];
        /// The same with B stored `[N, K]`.
        MATMUL_LINEAR_SUBGROUP_TB = "matmul_linear_subgroup" (a_panels, b_panels, c)
            as "matmul_linear_subgroup_tb" with [TRANS_B = 1];
        /// The same with A stored `[K, M]` and B stored `[N, K]`.
        MATMUL_LINEAR_SUBGROUP_TATB = "matmul_linear_subgroup" (a_panels, b_panels, c)
            as "matmul_linear_subgroup_tatb" with [TRANS_A = 1, TRANS_B = 1];
    }
}

/// Output tile edge of `matmul_blocked`.
const TILE: usize = 32;

/// A matmul kernel family, as `SAOBP_MATMUL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulFamily {
    /// `matmul_blocked`, straight from storage buffers.
    Buffer,
    /// Workgroup-memory tiles of storage buffers (for hardware GPUs).
    Tiled,
    /// Operands packed into textures (for software adapters).
    Texture,
}

impl FromStr for MatmulFamily {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "buffer" => Ok(MatmulFamily::Buffer),
            "tiled" => Ok(MatmulFamily::Tiled),
            "texture" => Ok(MatmulFamily::Texture),
            _ => Err(Error::invalid(format!(
                "SAOBP_MATMUL = `{s}`: expected buffer, tiled, texture or auto"
            ))),
        }
    }
}

/// Output tile of the tiled family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TiledTile {
    /// 64×64 outputs per workgroup, k steps of 16, 4×4 per invocation.
    T64,
    /// 128×128 outputs per workgroup, k steps of 8, 8×8 per invocation.
    T128,
}

/// One matmul kernel with its configuration. Every variant computes the same
/// product; they differ in speed per adapter and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// `matmul_blocked`: 32×32 tiles, 4×4 per invocation, storage buffers.
    Buffer,
    /// `matmul_tiled` with the given tile.
    Tiled(TiledTile),
    /// Pack both operands into texture panels, then `matmul_texture_subgroup`
    /// (`subgroups`, needs subgroups of exactly 8) or `matmul_texture`.
    /// Operands whose stored rows are whole texels are copied as they lie
    /// instead, for `matmul_linear_subgroup` or `matmul_linear` (see the
    /// [module docs](self)).
    /// `group_rows` (1, 2, 4 or 8) of a workgroup's 8 invocation groups lie
    /// along M, the others along N.
    Texture {
        /// Share A across each subgroup with `subgroupBroadcast`.
        subgroups: bool,
        /// Groups along M per workgroup: 1, 2, 4 or 8.
        group_rows: u32,
    },
}

impl MatmulVariant {
    /// The family this variant belongs to.
    pub fn family(self) -> MatmulFamily {
        match self {
            MatmulVariant::Buffer => MatmulFamily::Buffer,
            MatmulVariant::Tiled(_) => MatmulFamily::Tiled,
            MatmulVariant::Texture { .. } => MatmulFamily::Texture,
        }
    }

    /// Every variant `gpu` can run (each [`MatmulVariant::Texture`] layout,
    /// with and without subgroups where the device has subgroups of 8).
    pub fn available(gpu: &Gpu) -> Vec<MatmulVariant> {
        let mut out = vec![MatmulVariant::Buffer];
        if tiled_fits(gpu) {
            out.extend([
                MatmulVariant::Tiled(TiledTile::T64),
                MatmulVariant::Tiled(TiledTile::T128),
            ]);
        }
        if gpu.limits().max_storage_textures_per_shader_stage >= 2 {
            let subgroups: &[bool] = if gpu.subgroup_size() == Some(8) {
                &[true, false]
            } else {
                &[false]
            };
            for &subgroups in subgroups {
                for group_rows in [1, 2, 4, 8] {
                    out.push(MatmulVariant::Texture {
                        subgroups,
                        group_rows,
                    });
                }
            }
        }
        out
    }

    /// The fastest-looking variant of `family` on `gpu`, before any tuning.
    fn default_of(gpu: &Gpu, family: MatmulFamily) -> MatmulVariant {
        match family {
            MatmulFamily::Buffer => MatmulVariant::Buffer,
            MatmulFamily::Tiled => MatmulVariant::Tiled(TiledTile::T64),
            MatmulFamily::Texture => MatmulVariant::Texture {
                subgroups: gpu.subgroup_size() == Some(8),
                group_rows: 8,
            },
        }
    }

    /// The longest K this variant computes within the adapter's loop budget
    /// (see [`AdapterSummary::loop_budget`](crate::AdapterSummary::loop_budget)),
    /// measured on llvmpipe with a margin: the buffer kernel runs one loop
    /// iteration per k, the texture kernels one per four, and the tiled ones
    /// up to several, since their inner loops are not always unrolled.
    fn max_k(self, budget: u64) -> u64 {
        let per_k_scaled = match self {
            MatmulVariant::Buffer => 1.1,
            MatmulVariant::Tiled(TiledTile::T64) => 2.2,
            MatmulVariant::Tiled(TiledTile::T128) => 13.0,
            MatmulVariant::Texture { .. } => 0.275,
        };
        (budget as f64 / per_k_scaled) as u64
    }

    /// [`Error::Limit`] when K is beyond what this variant computes within
    /// the adapter's loop budget: past it the results would be silently wrong.
    fn check_k(self, gpu: &Gpu, plan: &MatmulPlan) -> Result<()> {
        let Some(budget) = gpu.adapter().loop_budget() else {
            return Ok(());
        };
        let k = u64::from(plan.params.k);
        let max = self.max_k(budget);
        if k <= max {
            return Ok(());
        }
        Err(Error::Limit {
            what: format!("a product with K = {k} by matmul variant {self}"),
            needed: k,
            limit_name: "K within llvmpipe's 65,535 loop iterations per invocation",
            limit: max,
        })
    }

    fn uses_subgroups(self) -> bool {
        matches!(
            self,
            MatmulVariant::Texture {
                subgroups: true,
                ..
            }
        )
    }

    /// A typed error when `gpu` cannot run this variant at all.
    pub(crate) fn check(self, gpu: &Gpu) -> Result<()> {
        if let MatmulVariant::Texture { group_rows, .. } = self {
            if ![1, 2, 4, 8].contains(&group_rows) {
                return Err(Error::invalid(format!(
                    "matmul variant {self}: group_rows must be 1, 2, 4 or 8"
                )));
            }
        }
        if MatmulVariant::available(gpu).contains(&self) {
            return Ok(());
        }
        Err(match self {
            MatmulVariant::Texture {
                subgroups: true, ..
            } => Error::invalid(format!(
                "matmul variant {self} needs subgroups of exactly 8 invocations; this device has {}",
                gpu.subgroup_size()
                    .map_or("none".to_string(), |s| format!("size {s}"))
            )),
            MatmulVariant::Texture { .. } => Error::Limit {
                what: format!("matmul variant {self}"),
                needed: 2,
                limit_name: "max_storage_textures_per_shader_stage",
                limit: gpu.limits().max_storage_textures_per_shader_stage.into(),
            },
            _ => Error::Limit {
                what: format!("matmul variant {self}"),
                needed: 256,
                limit_name: "max_compute_invocations_per_workgroup",
                limit: gpu.limits().max_compute_invocations_per_workgroup.into(),
            },
        })
    }
}

impl fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatmulVariant::Buffer => f.write_str("buffer"),
            MatmulVariant::Tiled(TiledTile::T64) => f.write_str("tiled 64x64x16 4x4"),
            MatmulVariant::Tiled(TiledTile::T128) => f.write_str("tiled 128x128x8 8x8"),
            MatmulVariant::Texture {
                subgroups,
                group_rows,
            } => write!(
                f,
                "texture{} {}x{} groups",
                if *subgroups { " subgroup" } else { "" },
                group_rows,
                8 / group_rows.max(&1)
            ),
        }
    }
}

/// Both tiled configurations use 256 invocations and 8 KiB of workgroup memory.
fn tiled_fits(gpu: &Gpu) -> bool {
    let l = gpu.limits();
    l.max_compute_invocations_per_workgroup >= 256
        && l.max_compute_workgroup_size_x >= 256
        && l.max_compute_workgroup_storage_size >= 8192
}

/// The tuning-cache key of the matmul variant choice.
const TUNING_KEY: &str = "matmul";
/// The tuning-cache key of the forced family (for every size class).
const FAMILY_KEY: &str = "matmul.family";

/// Makes every later product on `gpu` use `family` (its fastest-looking
/// variant), or (`None`) go back to the choice per adapter and size. Wins
/// over `SAOBP_MATMUL` and over [`tune_matmul`].
pub fn set_matmul_family(gpu: &Gpu, family: Option<MatmulFamily>) {
    gpu.set_tuned(FAMILY_KEY, None, family);
}

/// The family forced on `gpu`: by [`set_matmul_family`], else by
/// `SAOBP_MATMUL` (`buffer`, `tiled`, `texture`).
fn forced_family(gpu: &Gpu) -> Result<Option<MatmulFamily>> {
    forced(gpu, FAMILY_KEY, "SAOBP_MATMUL")
}

/// Options of [`matmul`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulOptions {
    /// Use `Aᵀ`: A is stored `[.., K, M]`.
    pub trans_a: bool,
    /// Use `Bᵀ`: B is stored `[.., N, K]`.
    pub trans_b: bool,
    /// Factor applied to the product; must be finite.
    pub alpha: f32,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        MatmulOptions {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
        }
    }
}

/// Mirrors `Params` in `shaders/matmul.wgsl` and `shaders/matmul_tiled.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    alpha: f32,
    tiles_m: u32,
    tiles_n: u32,
    _pad: u32,
}

/// Mirrors `Params` in `shaders/matmul_pack.wgsl`, `matmul_texture.wgsl` and
/// `matmul_texture_subgroup.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TextureParams {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    alpha: f32,
    k4: u32,
    row_blocks: u32,
    col_blocks: u32,
    panel_texels: u32,
    group_rows: u32,
    tiles_m: u32,
    tiles_n: u32,
    a_layer_shift: u32,
    b_layer_shift: u32,
    operand: u32,
    texels: u32,
    // The split-heads epilogue only: heads H and tokens per sequence T.
    split_heads: u32,
    split_seq: u32,
    // The texels store only: log2 of the rows per layer of C's texture.
    c_layer_shift: u32,
    // The heads' merge only: parts of a token row, and this product's.
    merge_parts: u32,
    merge_part: u32,
    /// Rows of C per group of 8 invocations (see [`TextureLayout`]).
    block_rows: u32,
    _pad: [u32; 2],
}

/// A validated product: its parameters and the shape of `C`.
#[derive(Debug, Clone)]
pub(crate) struct MatmulPlan {
    params: MatmulParams,
    /// Leading (batch) dimensions followed by `[M, N]`.
    pub out_shape: Vec<usize>,
}

impl MatmulPlan {
    /// Multiply-adds: `batch · M · N · K`.
    fn work(&self) -> u64 {
        let p = &self.params;
        u64::from(p.batch) * u64::from(p.m) * u64::from(p.n) * u64::from(p.k)
    }
}

/// Checks the shapes of `A` and `B` (rank >= 2; leading dimensions equal, or
/// absent on one side, which then broadcasts) and plans the product.
pub(crate) fn plan(a: &[usize], b: &[usize], opts: &MatmulOptions) -> Result<MatmulPlan> {
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::shape(format!(
            "matmul needs operands of rank >= 2, got {a:?} and {b:?}"
        )));
    }
    if !opts.alpha.is_finite() {
        return Err(Error::invalid(format!(
            "matmul alpha must be finite, got {}",
            opts.alpha
        )));
    }
    let (a_lead, a_mat) = a.split_at(a.len() - 2);
    let (b_lead, b_mat) = b.split_at(b.len() - 2);
    let (m, ka) = if opts.trans_a {
        (a_mat[1], a_mat[0])
    } else {
        (a_mat[0], a_mat[1])
    };
    let (kb, n) = if opts.trans_b {
        (b_mat[1], b_mat[0])
    } else {
        (b_mat[0], b_mat[1])
    };
    if ka != kb {
        return Err(Error::shape(format!(
            "matmul inner dimensions differ: A {a:?}{} has K = {ka}, B {b:?}{} has K = {kb}",
            if opts.trans_a { "ᵀ" } else { "" },
            if opts.trans_b { "ᵀ" } else { "" },
        )));
    }
    let lead = match (a_lead.is_empty(), b_lead.is_empty()) {
        (_, true) => a_lead,
        (true, false) => b_lead,
        (false, false) if a_lead == b_lead => a_lead,
        _ => {
            return Err(Error::shape(format!(
                "matmul batch dimensions differ: A {a:?}, B {b:?}"
            )))
        }
    };
    let batch: usize = lead.iter().product();
    let stride = |lead: &[usize], mat: &[usize]| {
        if lead.is_empty() {
            Ok(0)
        } else {
            to_u32("matrix size", mat[0] * mat[1])
        }
    };
    let params = MatmulParams {
        batch: to_u32("batch", batch)?,
        m: to_u32("M", m)?,
        n: to_u32("N", n)?,
        k: to_u32("K", ka)?,
        trans_a: opts.trans_a.into(),
        trans_b: opts.trans_b.into(),
        a_batch_stride: stride(a_lead, a_mat)?,
        b_batch_stride: stride(b_lead, b_mat)?,
        alpha: opts.alpha,
        tiles_m: to_u32("M tiles", m.div_ceil(TILE))?,
        tiles_n: to_u32("N tiles", n.div_ceil(TILE))?,
        _pad: 0,
    };
    let mut out_shape = lead.to_vec();
    out_shape.extend([m, n]);
    Ok(MatmulPlan { params, out_shape })
}

/// Products up to this many multiply-adds (about 48³) run fastest as one
/// `matmul_blocked` dispatch: the texture path's packing dispatches and
/// scratch textures cost more than they save.
const TINY_WORK: u64 = 48 * 48 * 48;

/// The variant that computes `plan` on `gpu`: the forced family (see
/// [`forced_family`]), else the tuned winner of its size class, else the
/// heuristic. A texture variant whose panels exceed the texture limits gives
/// way to the tiled (hardware) or buffer kernel. Fails only on a malformed
/// `SAOBP_MATMUL`.
pub(crate) fn choose(gpu: &Gpu, plan: &MatmulPlan) -> Result<MatmulVariant> {
    let work = plan.work();
    if work == 0 {
        // Nothing to multiply; the buffer kernel writes the zeros.
        return Ok(MatmulVariant::Buffer);
    }
    let wanted = if let Some(family) = forced_family(gpu)? {
        MatmulVariant::default_of(gpu, family)
    } else if let Some(v) = gpu.tuned::<MatmulVariant>(TUNING_KEY, Some(SizeClass::of_work(work))) {
        v
    } else if gpu.adapter().is_software() {
        if work <= TINY_WORK {
            MatmulVariant::Buffer
        } else {
            MatmulVariant::default_of(gpu, MatmulFamily::Texture)
        }
    } else if work <= TINY_WORK {
        MatmulVariant::Buffer
    } else {
        MatmulVariant::default_of(gpu, MatmulFamily::Tiled)
    };
    let usable = wanted.check(gpu).is_ok()
        && wanted.check_k(gpu, plan).is_ok()
        && match wanted {
            MatmulVariant::Texture { subgroups, .. } => {
                // Packed panels are never smaller than copied operands.
                TextureLayout::new(gpu, plan, subgroups, false).is_ok()
            }
            _ => true,
        };
    let texture = MatmulVariant::default_of(gpu, MatmulFamily::Texture);
    Ok(if usable {
        wanted
    } else if !gpu.adapter().is_software() && tiled_fits(gpu) {
        MatmulVariant::Tiled(TiledTile::T64)
    } else if MatmulVariant::Buffer.check_k(gpu, plan).is_err()
        && texture.check(gpu).is_ok()
        && texture.check_k(gpu, plan).is_ok()
        && TextureLayout::new(gpu, plan, texture.uses_subgroups(), false).is_ok()
    {
        // The longest products fit the loop budget only four k per iteration.
        texture
    } else {
        MatmulVariant::Buffer
    })
}

/// The steps computing `c = plan(a, b)` with the variant [`choose`] picks.
pub(crate) fn steps<'a>(
    gpu: &Gpu,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    steps_for(gpu, choose(gpu, plan)?, plan, a, b, c)
}

/// What a product's store can add, fused into the linear texture kernels
/// (their builds with `shared/matmul_put_*.wgsl` or
/// `shared/matmul_store_split_qkv.wgsl`): a pass over `C` fewer, on
/// the software adapters a pass of per-lane storage-buffer loads and
/// stores. The values are those of the product followed by the GPT's own
/// elementwise kernel, bit for bit.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
pub(crate) enum Epilogue<'a> {
    /// `C = residual + (product + bias)`: a projection's bias and the
    /// residual add (`bias` `[N]`, `residual` shaped as `C`).
    BiasResidual {
        bias: &'a Tensor,
        residual: &'a Tensor,
    },
    /// `C = product` and `act = gelu(product + bias)` (`bias` `[N]`, `act`
    /// shaped as `C`).
    BiasGelu { bias: &'a Tensor, act: &'a Tensor },
    /// A GPT's c_attn: `product + bias`, `[B·T, 3·C]`, split into `q`, `k`
    /// and `v`, each `[B, H, T, C/H]`; `C` itself is not written.
    SplitQkv {
        bias: &'a Tensor,
        q: &'a Tensor,
        k: &'a Tensor,
        v: &'a Tensor,
        heads: usize,
        seq: usize,
    },
    /// `C = product · gelu'(pre + bias)`, the product being `∂L/∂gelu(h)`
    /// (`bias` `[N]`, `pre` shaped as `C`): the MLP's GELU backward, whose
    /// product is `dy·Wᵀ`, so built for `B` transposed only.
    GeluBackward { bias: &'a Tensor, pre: &'a Tensor },
    /// Per-head `C` (`batch` = B·H matrices of `[T, hd]`, matrix `b·H + h`)
    /// stored back into token rows: value `(t, d)` of matrix `(b, h)` goes
    /// to `out[b·T + t][part·H·hd + h·hd + d]`, `out` `[B·T, parts·H·hd]`,
    /// and `C` itself is not written: the GPT's merge of its heads (one
    /// part) and of its q, k and v gradients (three parts). `A` may be
    /// transposed.
    MergeHeads {
        out: &'a Tensor,
        heads: usize,
        parts: usize,
        part: usize,
    },
    /// `C`, token rows `[B·T, H·hd]`, stored into per-head rows: value
    /// `(b·T + t, h·hd + d)` goes to `out[((b·H + h)·T + t)·hd + d]`, `out`
    /// `[B, H, T, hd]`, and `C` itself is not written: the GPT's split of
    /// `∂L/∂O` into heads after its backward's `dy·W_projᵀ`, so built for
    /// `B` transposed only.
    SplitHeads {
        out: &'a Tensor,
        heads: usize,
        seq: usize,
    },
    /// `C` into texture `out` (with its layer shift) instead of a buffer,
    /// texel `i` holding floats `4i .. 4i + 4` of `C` as a buffer would (`N`
    /// a multiple of 4), for a kernel that reads `C` as texels next: the
    /// attention scores, which the softmax reads from a texture. Built for
    /// `B` transposed only ([`texel_steps`]).
    Texels { out: Panels, shift: u32 },
}

impl Epilogue<'_> {
    /// Whether this store is built for these transposes: the heads' merge
    /// with `A` as stored or transposed, the GELU backward, the split into
    /// heads and the texels store with `B` transposed, the others with
    /// neither.
    fn built_for(&self, trans_a: bool, trans_b: bool) -> bool {
        match self {
            Epilogue::MergeHeads { .. } => !trans_b,
            Epilogue::GeluBackward { .. }
            | Epilogue::SplitHeads { .. }
            | Epilogue::Texels { .. } => !trans_a && trans_b,
            _ => !trans_a && !trans_b,
        }
    }

    /// The linear kernel built with this store ([`Epilogue::built_for`]
    /// these transposes), with or without subgroups.
    fn kernel(&self, subgroups: bool, trans_a: bool) -> &'static Kernel {
        match (self, subgroups) {
            (Epilogue::BiasResidual { .. }, true) => &MATMUL_LINEAR_SUBGROUP_BIAS_RESIDUAL,
            (Epilogue::BiasResidual { .. }, false) => &MATMUL_LINEAR_BIAS_RESIDUAL,
            (Epilogue::BiasGelu { .. }, true) => &MATMUL_LINEAR_SUBGROUP_BIAS_GELU,
            (Epilogue::BiasGelu { .. }, false) => &MATMUL_LINEAR_BIAS_GELU,
            (Epilogue::SplitQkv { .. }, true) => &MATMUL_LINEAR_SUBGROUP_SPLIT_QKV,
            (Epilogue::SplitQkv { .. }, false) => &MATMUL_LINEAR_SPLIT_QKV,
            (Epilogue::GeluBackward { .. }, true) => &MATMUL_LINEAR_SUBGROUP_TB_GELU_BACKWARD,
            (Epilogue::GeluBackward { .. }, false) => &MATMUL_LINEAR_TB_GELU_BACKWARD,
            (Epilogue::MergeHeads { .. }, true) if trans_a => {
                &MATMUL_LINEAR_SUBGROUP_TA_MERGE_HEADS
            }
            (Epilogue::MergeHeads { .. }, true) => &MATMUL_LINEAR_SUBGROUP_MERGE_HEADS,
            (Epilogue::MergeHeads { .. }, false) if trans_a => &MATMUL_LINEAR_TA_MERGE_HEADS,
            (Epilogue::MergeHeads { .. }, false) => &MATMUL_LINEAR_MERGE_HEADS,
            (Epilogue::SplitHeads { .. }, true) => &MATMUL_LINEAR_SUBGROUP_TB_SPLIT_HEADS,
            (Epilogue::SplitHeads { .. }, false) => &MATMUL_LINEAR_TB_SPLIT_HEADS,
            (Epilogue::Texels { .. }, true) => &MATMUL_LINEAR_SUBGROUP_TB_TEXELS,
            (Epilogue::Texels { .. }, false) => &MATMUL_LINEAR_TB_TEXELS,
        }
    }
}

/// The steps of `c = plan(a, b)` with `epilogue` fused into the product's
/// store, where the variant [`choose`] picks copies both operands for a
/// linear texture kernel and neither is transposed; `None` elsewhere, and
/// the caller runs the product and the epilogue's own kernel.
#[cfg_attr(not(feature = "model"), allow(dead_code))] // The GPT model uses these.
pub(crate) fn fused_steps<'a>(
    gpu: &Gpu,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    epilogue: Epilogue<'a>,
) -> Result<Option<Vec<Step<'a>>>> {
    fused_steps_with(gpu, choose(gpu, plan)?, plan, a, b, c, epilogue, None)
}

/// [`fused_steps`] by `variant`, sharing `A`'s texture through `shared`
/// where given (as [`steps_sharing_a`]): `None` unless it is a texture
/// layout that copies both operands (and, for the split, heads a whole
/// number of texels wide). Outputs of the wrong size are a shape error, an
/// output sharing a buffer with another binding an invalid argument.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_steps_with<'a>(
    gpu: &Gpu,
    variant: MatmulVariant,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    epilogue: Epilogue<'a>,
    shared: Option<&mut SharedA>,
) -> Result<Option<Vec<Step<'a>>>> {
    let p = &plan.params;
    let MatmulVariant::Texture {
        subgroups,
        group_rows,
    } = variant
    else {
        return Ok(None);
    };
    let outputs = p.batch as usize * p.m as usize * p.n as usize;
    let (bias, others, part): (Option<&Tensor>, &[&Tensor], usize) = match &epilogue {
        Epilogue::Texels { .. } => {
            return Err(Error::Internal(
                "the texels store goes through texel_steps".into(),
            ))
        }
        Epilogue::MergeHeads {
            out,
            heads,
            parts,
            part,
        } => {
            if *heads == 0 || !(p.batch as usize).is_multiple_of(*heads) || part >= parts {
                return Err(Error::shape(format!(
                    "matmul epilogue: {} matrices are not whole items of {heads} heads, or part {part} is not one of {parts}",
                    p.batch
                )));
            }
            (None, std::slice::from_ref(out), outputs * parts)
        }
        Epilogue::BiasResidual { bias, residual } => (Some(bias), &[residual, c], outputs),
        Epilogue::BiasGelu { bias, act } => (Some(bias), &[act, c], outputs),
        // `pre` is read, but beside C it must be a distinct buffer as well.
        Epilogue::GeluBackward { bias, pre } => (Some(bias), &[pre, c], outputs),
        Epilogue::SplitQkv {
            bias,
            q,
            k,
            v,
            heads,
            seq,
        } => {
            if !(p.n.is_multiple_of(3) && heads_fit(p, p.n as usize / 3, *heads, *seq)) {
                return Ok(None);
            }
            (Some(bias), &[q, k, v], outputs / 3)
        }
        Epilogue::SplitHeads { out, heads, seq } => {
            if !heads_fit(p, p.n as usize, *heads, *seq) {
                return Ok(None);
            }
            (None, std::slice::from_ref(out), outputs)
        }
    };
    if bias.is_some_and(|b| b.len() != p.n as usize) || others.iter().any(|t| t.len() != part) {
        return Err(Error::shape(format!(
            "matmul epilogue: a bias of {} values and outputs of {:?} for a product of {} rows by {} columns",
            bias.map_or(0, Tensor::len),
            others.iter().map(|t| t.len()).collect::<Vec<_>>(),
            p.batch as usize * p.m as usize,
            p.n
        )));
    }
    // One dispatch may not bind a buffer it writes twice: the epilogue's
    // tensors (outputs, or a residual beside C) must be distinct from each
    // other and from the operands and the bias.
    let read = [Some(a), Some(b), bias].map(|t| t.map(Tensor::buffer));
    for (i, t) in others.iter().enumerate() {
        let buffer = t.buffer();
        if others[..i].iter().any(|o| o.buffer() == buffer) || read.contains(&Some(buffer)) {
            return Err(Error::InvalidArgument(
                "matmul epilogue: an output shares its buffer with another input or output".into(),
            ));
        }
    }
    if plan.work() == 0 || !epilogue.built_for(p.trans_a != 0, p.trans_b != 0) {
        return Ok(None);
    }
    variant.check(gpu)?;
    variant.check_k(gpu, plan)?;
    let layout = TextureLayout::of(gpu, plan, subgroups, a, b)?;
    if !layout.linear {
        return Ok(None);
    }
    let steps = texture_steps(
        gpu,
        plan,
        layout,
        subgroups,
        group_rows,
        a,
        b,
        c,
        shared,
        Some(epilogue),
    )?;
    Ok(Some(steps))
}

/// Whether the split stores ([`Epilogue::SplitQkv`], [`Epilogue::SplitHeads`])
/// can place a product's token rows into heads: one matrix of whole
/// sequences of `seq` tokens, each part `width` columns of `heads` heads
/// that are whole texels wide (the store places 4 columns at once); other
/// shapes take the separate kernel.
fn heads_fit(p: &MatmulParams, width: usize, heads: usize, seq: usize) -> bool {
    p.batch == 1
        && heads > 0
        && width.is_multiple_of(heads)
        && (width / heads).is_multiple_of(4)
        && seq > 0
        && (p.m as usize).is_multiple_of(seq)
}

/// The steps of `plan(a, b)` (`B` transposed, as the attention scores
/// `Q·Kᵀ`) storing C into texture `out` ([`Epilogue::Texels`]), where the
/// variant [`choose`] picks copies both operands for a linear texture
/// kernel, `N` is a multiple of 4 and the device binds three storage
/// textures; `None` elsewhere, and the caller stores C into a buffer.
pub(crate) fn texel_steps<'a>(
    gpu: &Gpu,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    (out, shift): (&Panels, u32),
) -> Result<Option<Vec<Step<'a>>>> {
    let p = &plan.params;
    let variant = choose(gpu, plan)?;
    let MatmulVariant::Texture {
        subgroups,
        group_rows,
    } = variant
    else {
        return Ok(None);
    };
    let epilogue = Epilogue::Texels {
        out: out.clone(),
        shift,
    };
    if plan.work() == 0
        || !epilogue.built_for(p.trans_a != 0, p.trans_b != 0)
        || !p.n.is_multiple_of(4)
        || gpu.limits().max_storage_textures_per_shader_stage < 3
    {
        return Ok(None);
    }
    variant.check(gpu)?;
    variant.check_k(gpu, plan)?;
    let layout = TextureLayout::of(gpu, plan, subgroups, a, b)?;
    if !layout.linear {
        return Ok(None);
    }
    let steps = texture_steps(
        gpu,
        plan,
        layout,
        subgroups,
        group_rows,
        a,
        b,
        a,
        None,
        Some(epilogue),
    )?;
    Ok(Some(steps))
}

/// `op(A)` as one product packed it into texture panels, kept so that a
/// later product of the same `A` (same tensor, shape, transpose and variant)
/// binds the panels instead of packing `A` again. The fused SAOBP output
/// multiplies `A` by `V` and then by `U'`: on the software adapters packing
/// the N×N map costs about as much as a pass over it.
#[derive(Default)]
pub(crate) struct SharedA {
    packed: Option<(wgpu::Buffer, MatmulVariant, [u32; 11], Panels)>,
}

impl SharedA {
    /// The texture holding `A` copied as stored (texel `i` = floats
    /// `4i .. 4i + 4` of its buffer, whatever the products' transposes) and
    /// its layer shift, once a product recorded with this `SharedA` copied
    /// it so; `None` before, or where `A` was packed into panels.
    pub(crate) fn copied(&self) -> Option<(Panels, u32)> {
        match &self.packed {
            Some((_, _, key, panels)) if key[0] != 0 => Some((panels.clone(), key[9])),
            _ => None,
        }
    }
}

/// A texture that a caller writes `A` into for the products that share it
/// (from [`map_texture`]): they bind it through `shared` instead of copying
/// `A` from its buffer.
pub(crate) struct MapTexture {
    /// Holds the panels, for [`steps_sharing_a`].
    pub(crate) shared: SharedA,
    pub(crate) panels: Panels,
    /// log2 of the rows per layer.
    pub(crate) shift: u32,
}

/// The texture to write `A` into for `products`, each `(plan, b)` with
/// `plan` multiplying `a` by `b`, where the variant and layout
/// [`steps_sharing_a`] would choose for each is the texture family's,
/// copying `A` as stored (texel `i` = floats `4i .. 4i + 4` of `a`), and the
/// same for all. The products then read whatever the caller writes there as
/// their `A`, whatever `a`'s buffer holds. `None` otherwise: the caller
/// writes `a` as usual.
pub(crate) fn map_texture(
    gpu: &Gpu,
    products: &[(&MatmulPlan, &Tensor)],
    a: &Tensor,
) -> Result<Option<MapTexture>> {
    let mut agreed: Option<(MatmulVariant, [u32; 11], PanelTexture)> = None;
    for &(plan, b) in products {
        let variant = choose(gpu, plan)?;
        let MatmulVariant::Texture { subgroups, .. } = variant else {
            return Ok(None);
        };
        if plan.work() == 0 || variant.check(gpu).is_err() || variant.check_k(gpu, plan).is_err() {
            return Ok(None);
        }
        let layout = TextureLayout::of(gpu, plan, subgroups, a, b)?;
        if !layout.linear || plan.params.trans_a != 0 {
            return Ok(None);
        }
        let key = a_key(&layout, &plan.params);
        match &agreed {
            Some((v, k, _)) if (*v, *k) != (variant, key) => return Ok(None),
            _ => agreed = Some((variant, key, layout.a)),
        }
    }
    let Some((variant, key, texture)) = agreed else {
        return Ok(None);
    };
    let panels = texture.create(gpu);
    Ok(Some(MapTexture {
        shared: SharedA {
            packed: Some((a.buffer().clone(), variant, key, panels.clone())),
        },
        panels,
        shift: texture.layer_shift,
    }))
}

/// [`steps`], reusing `A`'s packed panels from an earlier product recorded
/// with the same `shared` (and leaving them there for a later one). Only
/// the texture family packs; other variants ignore `shared`.
pub(crate) fn steps_sharing_a<'a>(
    gpu: &Gpu,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    shared: &mut SharedA,
) -> Result<Vec<Step<'a>>> {
    let variant = choose(gpu, plan)?;
    match variant {
        MatmulVariant::Texture {
            subgroups,
            group_rows,
        } if plan.work() > 0 => {
            variant.check(gpu)?;
            variant.check_k(gpu, plan)?;
            let layout = TextureLayout::of(gpu, plan, subgroups, a, b)?;
            texture_steps(
                gpu,
                plan,
                layout,
                subgroups,
                group_rows,
                a,
                b,
                c,
                Some(shared),
                None,
            )
        }
        _ => steps_for(gpu, variant, plan, a, b, c),
    }
}

/// The steps computing `c = plan(a, b)` with `variant`.
fn steps_for<'a>(
    gpu: &Gpu,
    variant: MatmulVariant,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    variant.check(gpu)?;
    variant.check_k(gpu, plan)?;
    if plan.work() == 0 {
        // Empty panels would be empty textures; the buffer kernel handles K = 0.
        return Ok(vec![blocked(&MATMUL_BLOCKED, plan, a, b, c)]);
    }
    match variant {
        MatmulVariant::Buffer => Ok(vec![blocked(&MATMUL_BLOCKED, plan, a, b, c)]),
        MatmulVariant::Tiled(tile) => {
            let (kernel, edge): (&'static Kernel, u32) = match tile {
                TiledTile::T64 => (&MATMUL_TILED_64, 64),
                TiledTile::T128 => (&MATMUL_TILED_128, 128),
            };
            let mut p = plan.params;
            p.tiles_m = p.m.div_ceil(edge);
            p.tiles_n = p.n.div_ceil(edge);
            let tiles = u64::from(p.batch) * u64::from(p.tiles_m) * u64::from(p.tiles_n);
            Ok(vec![Dispatch::new(kernel, &p, tiles)
                .bind("a", a)
                .bind("b", b)
                .bind("c", c)
                .flops(2 * plan.work())
                .step()])
        }
        MatmulVariant::Texture {
            subgroups,
            group_rows,
        } => {
            let layout = TextureLayout::of(gpu, plan, subgroups, a, b)?;
            texture_steps(
                gpu, plan, layout, subgroups, group_rows, a, b, c, None, None,
            )
        }
    }
}

/// Texels per row of a panel texture. 128 texels of 16 bytes make a 2 KiB
/// row, which keeps every panel step within one row (and is a whole number
/// of the 256-byte rows a buffer-to-texture copy needs).
const PANEL_WIDTH: u32 = TEXELS_PER_ROW;

/// How one operand's panels lie in its texture (also the flash kernels'
/// texture operands, which use the same texel placement).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PanelTexture {
    texels: u32,
    /// log2 of the rows per layer.
    pub(crate) layer_shift: u32,
    layers: u32,
}

impl PanelTexture {
    /// Room for `texels` texels within the device's texture limits, or
    /// [`Error::Limit`] naming `what` and the limit it exceeds.
    pub(crate) fn new(gpu: &Gpu, what: &str, texels: u64) -> Result<PanelTexture> {
        if texels > u64::from(u32::MAX) {
            return Err(Error::Limit {
                what: format!("the texture panels of {what}"),
                needed: texels,
                limit_name: "texels per panel texture (32-bit indexing)",
                limit: u64::from(u32::MAX),
            });
        }
        let limits = gpu.limits();
        let max_rows = limits.max_texture_dimension_2d;
        if max_rows < PANEL_WIDTH {
            return Err(Error::Limit {
                what: format!("the texture panels of {what}"),
                needed: PANEL_WIDTH.into(),
                limit_name: "max_texture_dimension_2d",
                limit: max_rows.into(),
            });
        }
        let rows = texels.div_ceil(u64::from(PANEL_WIDTH)).max(1);
        // At least two layers: some backends (GL) treat a one-layer texture as
        // plain 2D, which an array view cannot bind. So each layer holds
        // about half the rows, rounded up to a power of two (one shift and
        // mask per texel in the shaders), capped by the dimension limit.
        let max_shift = 31 - max_rows.leading_zeros();
        let half = rows.div_ceil(2);
        let layer_shift = (64 - (half - 1).leading_zeros()).min(max_shift);
        let layers = rows.div_ceil(1u64 << layer_shift).max(2);
        if layers > u64::from(limits.max_texture_array_layers) {
            return Err(Error::Limit {
                what: format!("the texture panels of {what}"),
                needed: layers,
                limit_name: "max_texture_array_layers",
                limit: limits.max_texture_array_layers.into(),
            });
        }
        Ok(PanelTexture {
            texels: texels as u32,
            layer_shift,
            layers: layers as u32,
        })
    }

    /// A scratch texture of this size.
    pub(crate) fn create(&self, gpu: &Gpu) -> Panels {
        gpu.storage_texture(PANEL_WIDTH, 1 << self.layer_shift, self.layers)
    }

    /// The step copying the first texels of `src` into `dst` (a texture of
    /// this size) as they lie in the buffer.
    pub(crate) fn copy_from<'a>(&self, src: &'a Tensor, dst: &Panels) -> Step<'a> {
        Step::Texels {
            src: src.buffer(),
            texels: self.texels,
            dst: dst.clone(),
            layer_shift: self.layer_shift,
        }
    }
}

/// The panels of a texture-family product.
#[derive(Debug, Clone, Copy)]
struct TextureLayout {
    /// The operands are copied into their textures as stored, for
    /// `matmul_linear_subgroup` or `matmul_linear`, rather than packed into
    /// panels.
    linear: bool,
    k4: u32,
    /// Rows of C per group of 8 invocations: 32 for `matmul_linear_subgroup`,
    /// else 16 (packed A panels are 16 rows).
    block_rows: u32,
    row_blocks: u32,
    col_blocks: u32,
    panel_texels: u32,
    a: PanelTexture,
    b: PanelTexture,
}

impl TextureLayout {
    /// The panels of `plan` for operands `a` and `b`: copied where their
    /// buffers allow it.
    fn of(
        gpu: &Gpu,
        plan: &MatmulPlan,
        subgroups: bool,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<TextureLayout> {
        let copyable = [a, b]
            .iter()
            .all(|t| t.buffer().usage().contains(wgpu::BufferUsages::COPY_SRC));
        TextureLayout::new(gpu, plan, subgroups, copyable)
    }

    /// The panels of `plan`; `copyable`: both operands' buffers allow
    /// copies out of them (`COPY_SRC`; a caller's own buffer may not), which
    /// the linear layout needs.
    fn new(gpu: &Gpu, plan: &MatmulPlan, subgroups: bool, copyable: bool) -> Result<TextureLayout> {
        let p = &plan.params;
        // B panel width in texels: 32 columns per subgroup of 8 (one texel
        // each), 64 per group of the plain kernel (two texels each).
        let panel_texels: u32 = if subgroups { 8 } else { 16 };
        let k4 = p.k.div_ceil(4);
        // Copies need every stored row to be whole texels; then K needs no
        // padding and each texel holds 4 values of one row.
        let linear = copyable
            && p.k.is_multiple_of(4)
            && (p.trans_a == 0 || p.m.is_multiple_of(4))
            && (p.trans_b != 0 || p.n.is_multiple_of(4));
        // matmul_linear_subgroup takes 32 rows per group: each B texel it
        // loads then serves twice the rows (about 15 % faster from 1024³ up
        // on lavapipe); the other kernels take 16.
        let block_rows = if linear && subgroups { 32 } else { 16 };
        let row_blocks = p.m.div_ceil(block_rows);
        let col_blocks = p.n.div_ceil(panel_texels * 4);
        let a_batches = u64::from(if p.a_batch_stride == 0 { 1 } else { p.batch });
        let b_batches = u64::from(if p.b_batch_stride == 0 { 1 } else { p.batch });
        let (a_texels, b_texels) = if linear {
            let (m, n, k) = (u64::from(p.m), u64::from(p.n), u64::from(p.k));
            (a_batches * m * k / 4, b_batches * k * n / 4)
        } else {
            (
                a_batches * u64::from(row_blocks) * u64::from(k4) * 16,
                b_batches * u64::from(col_blocks) * u64::from(k4) * 4 * u64::from(panel_texels),
            )
        };
        Ok(TextureLayout {
            linear,
            k4,
            block_rows,
            row_blocks,
            col_blocks,
            panel_texels,
            a: PanelTexture::new(gpu, "A", a_texels)?,
            b: PanelTexture::new(gpu, "B", b_texels)?,
        })
    }
}

/// Everything a texture-family product's copied or packed `A` depends on
/// (whether it was copied first, its layer shift tenth: [`SharedA::copied`]).
fn a_key(layout: &TextureLayout, p: &MatmulParams) -> [u32; 11] {
    [
        layout.linear.into(),
        p.batch,
        p.m,
        p.k,
        p.trans_a,
        p.a_batch_stride,
        layout.k4,
        layout.row_blocks,
        layout.a.texels,
        layout.a.layer_shift,
        layout.a.layers,
    ]
}

#[allow(clippy::too_many_arguments)]
fn texture_steps<'a>(
    gpu: &Gpu,
    plan: &MatmulPlan,
    layout: TextureLayout,
    subgroups: bool,
    group_rows: u32,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    shared: Option<&mut SharedA>,
    epilogue: Option<Epilogue<'a>>,
) -> Result<Vec<Step<'a>>> {
    let p = &plan.params;
    let params = TextureParams {
        batch: p.batch,
        m: p.m,
        n: p.n,
        k: p.k,
        trans_a: p.trans_a,
        trans_b: p.trans_b,
        a_batch_stride: p.a_batch_stride,
        b_batch_stride: p.b_batch_stride,
        alpha: p.alpha,
        k4: layout.k4,
        row_blocks: layout.row_blocks,
        col_blocks: layout.col_blocks,
        panel_texels: layout.panel_texels,
        group_rows,
        tiles_m: layout.row_blocks.div_ceil(group_rows),
        tiles_n: layout.col_blocks.div_ceil(8 / group_rows),
        a_layer_shift: layout.a.layer_shift,
        b_layer_shift: layout.b.layer_shift,
        operand: 0,
        texels: 0,
        split_heads: 0,
        split_seq: 0,
        c_layer_shift: 0,
        merge_parts: 0,
        merge_part: 0,
        block_rows: layout.block_rows,
        _pad: [0; 2],
    };
    let a_key = a_key(&layout, p);
    let variant = MatmulVariant::Texture {
        subgroups,
        group_rows,
    };
    let reused = shared.as_ref().and_then(|s| match &s.packed {
        Some((buffer, v, key, panels))
            if buffer == a.buffer() && *v == variant && *key == a_key =>
        {
            Some(panels.clone())
        }
        _ => None,
    });
    let pack_a = reused.is_none();
    let a_panels = reused.unwrap_or_else(|| layout.a.create(gpu));
    if let Some(shared) = shared {
        shared.packed = Some((a.buffer().clone(), variant, a_key, a_panels.clone()));
    }
    let b_panels = layout.b.create(gpu);
    let pack = |operand: u32, texels: u32, src: &'a Tensor, dst: &Panels| {
        let params = TextureParams {
            operand,
            texels,
            ..params
        };
        Dispatch::new(&PACK, &params, PACK.groups_for(texels as usize))
            .bind("src", src)
            .bind("panels", Binding::Texture(dst.clone()))
            .step()
    };
    let mut steps = Vec::with_capacity(3);
    if layout.linear {
        if pack_a {
            steps.push(layout.a.copy_from(a, &a_panels));
        }
        steps.push(layout.b.copy_from(b, &b_panels));
    } else {
        if pack_a {
            steps.push(pack(0, layout.a.texels, a, &a_panels));
        }
        steps.push(pack(1, layout.b.texels, b, &b_panels));
    }
    let (trans_a, trans_b) = (p.trans_a != 0, p.trans_b != 0);
    let kernel = match &epilogue {
        None => texture_kernel(layout.linear, subgroups, trans_a, trans_b),
        Some(e) if layout.linear && e.built_for(trans_a, trans_b) => e.kernel(subgroups, trans_a),
        Some(_) => {
            return Err(Error::Internal(
                "a fused epilogue needs both operands copied, with the transposes it is built for"
                    .into(),
            ))
        }
    };
    let tiles = u64::from(p.batch) * u64::from(params.tiles_m) * u64::from(params.tiles_n);
    let params = match epilogue {
        Some(Epilogue::SplitQkv { heads, seq, .. } | Epilogue::SplitHeads { heads, seq, .. }) => {
            TextureParams {
                split_heads: to_u32("heads", heads)?,
                split_seq: to_u32("sequence length", seq)?,
                ..params
            }
        }
        Some(Epilogue::Texels { shift, .. }) => TextureParams {
            c_layer_shift: shift,
            ..params
        },
        Some(Epilogue::MergeHeads {
            heads, parts, part, ..
        }) => TextureParams {
            split_heads: to_u32("heads", heads)?,
            merge_parts: to_u32("parts", parts)?,
            merge_part: to_u32("part", part)?,
            ..params
        },
        _ => params,
    };
    let dispatch = Dispatch::new(kernel, &params, tiles)
        .bind("a_panels", Binding::Texture(a_panels))
        .bind("b_panels", Binding::Texture(b_panels))
        .flops(2 * plan.work());
    steps.push(
        match epilogue {
            None => dispatch.bind("c", c),
            Some(Epilogue::BiasResidual { bias, residual }) => dispatch
                .bind("c", c)
                .bind("bias", bias)
                .bind("residual", residual),
            Some(Epilogue::BiasGelu { bias, act }) => {
                dispatch.bind("c", c).bind("bias", bias).bind("act", act)
            }
            Some(Epilogue::GeluBackward { bias, pre }) => {
                dispatch.bind("c", c).bind("bias", bias).bind("pre", pre)
            }
            Some(Epilogue::SplitQkv { bias, q, k, v, .. }) => dispatch
                .bind("bias", bias)
                .bind("q", q)
                .bind("k", k)
                .bind("v", v),
            Some(Epilogue::Texels { out, .. }) => {
                dispatch.bind("c_texels", Binding::Texture(out.clone()))
            }
            Some(Epilogue::MergeHeads { out, .. }) => dispatch.bind("merged", out),
            Some(Epilogue::SplitHeads { out, .. }) => dispatch.bind("heads", out),
        }
        .step(),
    );
    Ok(steps)
}

/// The product kernel of the texture family for these layouts.
fn texture_kernel(linear: bool, subgroups: bool, trans_a: bool, trans_b: bool) -> &'static Kernel {
    match (linear, subgroups, trans_a, trans_b) {
        (true, true, false, false) => &MATMUL_LINEAR_SUBGROUP,
        (true, true, true, false) => &MATMUL_LINEAR_SUBGROUP_TA,
        (true, true, false, true) => &MATMUL_LINEAR_SUBGROUP_TB,
        (true, true, true, true) => &MATMUL_LINEAR_SUBGROUP_TATB,
        (true, false, false, false) => &MATMUL_LINEAR,
        (true, false, true, false) => &MATMUL_LINEAR_TA,
        (true, false, false, true) => &MATMUL_LINEAR_TB,
        (true, false, true, true) => &MATMUL_LINEAR_TATB,
        (false, true, _, _) => &MATMUL_TEXTURE_SUBGROUP,
        (false, false, _, _) => &MATMUL_TEXTURE,
    }
}

/// The `matmul_blocked` dispatch of `kernel` (the real one, or the
/// deliberately wrong configuration with the same parameters and bindings).
fn blocked<'a>(
    kernel: &'static Kernel,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
) -> Step<'a> {
    let p = &plan.params;
    let tiles = u64::from(p.batch) * u64::from(p.tiles_m) * u64::from(p.tiles_n);
    Dispatch::new(kernel, p, tiles)
        .bind("a", a)
        .bind("b", b)
        .bind("c", c)
        .flops(2 * plan.work())
        .step()
}

/// `C = alpha · op(A) · op(B)` over matching leading (batch) dimensions.
///
/// A is `[.., M, K]` (`[.., K, M]` with `trans_a`), B is `[.., K, N]`
/// (`[.., N, K]` with `trans_b`); an operand of rank 2 is shared by every batch
/// item. C is `[.., M, N]`. The kernel is chosen per adapter and size (see
/// the [module docs](self)).
pub async fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
    let plan = plan(a.shape(), b.shape(), opts)?;
    run(gpu, choose(gpu, &plan)?, &plan, a, b).await
}

/// [`matmul`] with a given variant instead of the chosen one, e.g. to test
/// or time each. Fails with [`Error::InvalidArgument`] or [`Error::Limit`]
/// when `gpu` cannot run `variant` or the operands exceed its limits.
pub async fn matmul_variant(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    variant: MatmulVariant,
) -> Result<Tensor> {
    let plan = plan(a.shape(), b.shape(), opts)?;
    run(gpu, variant, &plan, a, b).await
}

/// The variant [`matmul`] would use for operands of these shapes on `gpu`.
pub fn matmul_choice(
    gpu: &Gpu,
    a: &[usize],
    b: &[usize],
    opts: &MatmulOptions,
) -> Result<MatmulVariant> {
    choose(gpu, &plan(a, b, opts)?)
}

async fn run(
    gpu: &Gpu,
    variant: MatmulVariant,
    plan: &MatmulPlan,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    a.check_finite("a")?;
    b.check_finite("b")?;
    let c = Tensor::zeros(gpu, &plan.out_shape)?;
    gpu.run(&steps_for(gpu, variant, plan, a, b, &c)?).await?;
    Ok(c)
}

/// [`matmul`] computed by the deliberately wrong `matmul_blocked`
/// configuration, for the conformance runner's fault injection.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) async fn matmul_skipping_last_k(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
) -> Result<Tensor> {
    let plan = plan(a.shape(), b.shape(), opts)?;
    a.check_finite("a")?;
    b.check_finite("b")?;
    let c = Tensor::scratch(gpu, &plan.out_shape)?;
    gpu.run(&[blocked(&MATMUL_SKIPS_LAST_K, &plan, a, b, &c)])
        .await?;
    Ok(c)
}

/// Blocking form of [`matmul`].
#[cfg(not(target_arch = "wasm32"))]
pub fn matmul_blocking(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
    pollster::block_on(matmul(gpu, a, b, opts))
}

/// Blocking form of [`matmul_variant`].
#[cfg(not(target_arch = "wasm32"))]
pub fn matmul_variant_blocking(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
    variant: MatmulVariant,
) -> Result<Tensor> {
    pollster::block_on(matmul_variant(gpu, a, b, opts, variant))
}

/// What [`tune_matmul`] measured for one size class.
#[derive(Debug, Clone)]
pub struct TunedClass {
    /// The class.
    pub class: SizeClass,
    /// Edge of the square product timed.
    pub size: usize,
    /// Each candidate timed and its best time of a few runs (including one
    /// submission and wait). Candidates far behind at a smaller class are
    /// not timed again.
    pub timings: Vec<(MatmulVariant, Duration)>,
    /// The fastest, now used for products of this class.
    pub winner: MatmulVariant,
}

/// The outcome of [`tune_matmul`], smallest class first.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// One entry per size class.
    pub classes: Vec<TunedClass>,
}

/// Candidates more than this many times slower than a class's winner are
/// not timed at larger classes: on software adapters the slow families take
/// seconds there.
#[cfg(not(target_arch = "wasm32"))]
const TUNE_DROP_RATIO: f64 = 4.0;

/// Times the matmul variants `gpu` can run on a representative product of
/// each size class, and keeps the fastest per class in the device's tuning
/// cache: later products (in [`matmul()`], attention and the model) use it.
/// Takes a few seconds on software adapters. A forced family
/// ([`set_matmul_family`], `SAOBP_MATMUL`) still wins over the tuned choice.
/// Native only (it needs a clock).
#[cfg(not(target_arch = "wasm32"))]
pub async fn tune_matmul(gpu: &Gpu) -> Result<Tuning> {
    let mut candidates: Vec<MatmulVariant> = MatmulVariant::available(gpu)
        .into_iter()
        // group_rows 1 and 4 rarely win; timing them would double the work.
        .filter(|v| {
            !matches!(
                v,
                MatmulVariant::Texture {
                    group_rows: 1 | 4,
                    ..
                }
            )
        })
        .collect();
    let mut classes = Vec::new();
    for class in SizeClass::ALL {
        let s = class.representative();
        let data: Vec<f32> = (0..s * s).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
        let a = Tensor::from_slice(gpu, &[s, s], &data)?;
        let b = Tensor::from_slice(gpu, &[s, s], &data)?;
        let c = Tensor::zeros(gpu, &[s, s])?;
        let plan = plan(a.shape(), b.shape(), &MatmulOptions::default())?;
        let mut timings = Vec::new();
        for &v in &candidates {
            if matches!(v, MatmulVariant::Texture { subgroups, .. } if TextureLayout::new(gpu, &plan, subgroups, false).is_err())
            {
                continue;
            }
            let mut best = Duration::MAX;
            // The first run compiles the pipeline; it is not timed.
            for run in 0..3 {
                let start = std::time::Instant::now();
                gpu.run(&steps_for(gpu, v, &plan, &a, &b, &c)?).await?;
                gpu.read_f32(c.buffer(), 1).await?;
                if run > 0 {
                    best = best.min(start.elapsed());
                }
            }
            timings.push((v, best));
        }
        let Some(&(winner, fastest)) = timings.iter().min_by_key(|(_, t)| *t) else {
            break;
        };
        candidates.retain(|v| {
            timings
                .iter()
                .any(|(w, t)| w == v && t.as_secs_f64() <= fastest.as_secs_f64() * TUNE_DROP_RATIO)
        });
        gpu.set_tuned(TUNING_KEY, Some(class), winner);
        classes.push(TunedClass {
            class,
            size: s,
            timings,
            winner,
        });
    }
    Ok(Tuning { classes })
}

/// Blocking form of [`tune_matmul`].
#[cfg(not(target_arch = "wasm32"))]
pub fn tune_matmul_blocking(gpu: &Gpu) -> Result<Tuning> {
    pollster::block_on(tune_matmul(gpu))
}

/// The two products of [`matmul_backward`]: for each stored operand, the
/// operands, shapes and options of the forward product that gives its
/// gradient.
struct BackwardProducts<'a> {
    grad_a: (&'a Tensor, &'a Tensor, MatmulOptions),
    grad_b: (&'a Tensor, &'a Tensor, MatmulOptions),
}

/// For `C = alpha · op(A) · op(B)`: `∂op(A) = alpha · ∂C · op(B)ᵀ` and
/// `∂op(B) = alpha · op(A)ᵀ · ∂C`, each written as one forward product of
/// the stored tensors, transposed back where the operand was stored
/// transposed, so each runs through the same fast variants as the forward.
/// `a` and `grad_c` may be flattened views (see [`matmul_backward`]).
fn backward_products<'a>(
    b: &'a Tensor,
    grad_c: &'a Tensor,
    a_flat: &'a Tensor,
    grad_c_flat: &'a Tensor,
    opts: &MatmulOptions,
) -> BackwardProducts<'a> {
    let (ta, tb, alpha) = (opts.trans_a, opts.trans_b, opts.alpha);
    let o = |trans_a, trans_b| MatmulOptions {
        trans_a,
        trans_b,
        alpha,
    };
    let grad_a = if ta {
        // A is [K, M]: ∂A = alpha · op(B) · ∂Cᵀ.
        (b, grad_c, o(tb, true))
    } else {
        // ∂A = alpha · ∂C · op(B)ᵀ.
        (grad_c, b, o(false, !tb))
    };
    let grad_b = if tb {
        // B is [N, K]: ∂B = alpha · ∂Cᵀ · op(A).
        (grad_c_flat, a_flat, o(true, ta))
    } else {
        // ∂B = alpha · op(A)ᵀ · ∂C.
        (a_flat, grad_c_flat, o(!ta, false))
    };
    BackwardProducts { grad_a, grad_b }
}

/// The backward of [`matmul`]: from `grad_c = ∂L/∂C` (shaped as `C`), the
/// gradients `(∂L/∂A, ∂L/∂B)` of the operands as stored (a transposed
/// operand's gradient is transposed too), for any `trans_a`, `trans_b` and
/// `alpha`. Both are products through the matmul kernels, in one submission.
///
/// Operands with the same leading (batch) dimensions, or both of rank 2,
/// are supported. A shared rank-2 `B` under a batch of `A` (e.g. a linear
/// layer `x·W`) is supported when `trans_a` is false: its gradient is the
/// sum over the batch, one product of the flattened batch. A shared `A`,
/// or a shared `B` with `trans_a`, would need a separate sum over the batch
/// and is refused with [`Error::InvalidArgument`]; pass the shared operand
/// with the batch dimensions instead.
///
/// Fails as [`matmul`] does for the operands, and with [`Error::Shape`] when
/// `grad_c` is not shaped as `C`.
pub async fn matmul_backward(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    opts: &MatmulOptions,
) -> Result<(Tensor, Tensor)> {
    let forward = plan(a.shape(), b.shape(), opts)?;
    if grad_c.shape() != forward.out_shape {
        return Err(Error::shape(format!(
            "matmul backward: ∂L/∂C has shape {:?}, C = op(A {:?})·op(B {:?}) has {:?}",
            grad_c.shape(),
            a.shape(),
            b.shape(),
            forward.out_shape
        )));
    }
    let (a_rank, b_rank) = (a.shape().len(), b.shape().len());
    let b_shared = b_rank == 2 && a_rank > 2;
    if a_rank == 2 && b_rank > 2 {
        return Err(Error::invalid(format!(
            "matmul backward: A {:?} is shared by the batch of B {:?}; the sum of its \
             gradient over the batch is not supported (give A the batch dimensions)",
            a.shape(),
            b.shape()
        )));
    }
    if b_shared && opts.trans_a {
        return Err(Error::invalid(format!(
            "matmul backward: B {:?} is shared by the batch of Aᵀ {:?}; the sum of its \
             gradient over the batch is supported only without trans_a",
            b.shape(),
            a.shape()
        )));
    }
    a.check_finite("a")?;
    b.check_finite("b")?;
    grad_c.check_finite("grad_c")?;
    // A shared B sums over every row of the batch: with A [.., M, K] and
    // ∂C [.., M, N] flattened to [G·M, K] and [G·M, N], that sum is the
    // inner dimension of one product.
    let flat = |t: &Tensor| -> Result<Tensor> {
        let s = t.shape();
        if b_shared {
            t.reshape(&[s[..s.len() - 1].iter().product(), s[s.len() - 1]])
        } else {
            Ok(t.clone())
        }
    };
    let (a_flat, grad_c_flat) = (flat(a)?, flat(grad_c)?);
    let products = backward_products(b, grad_c, &a_flat, &grad_c_flat, opts);
    let plan_of = |(x, y, o): (&Tensor, &Tensor, MatmulOptions)| plan(x.shape(), y.shape(), &o);
    let (plan_a, plan_b) = (plan_of(products.grad_a)?, plan_of(products.grad_b)?);
    let grad_a = Tensor::zeros(gpu, a.shape())?;
    let grad_b = Tensor::zeros(gpu, b.shape())?;
    let mut all = steps(gpu, &plan_a, products.grad_a.0, products.grad_a.1, &grad_a)?;
    all.extend(steps(
        gpu,
        &plan_b,
        products.grad_b.0,
        products.grad_b.1,
        &grad_b,
    )?);
    gpu.run(&all).await?;
    Ok((grad_a, grad_b))
}

/// Blocking form of [`matmul_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn matmul_backward_blocking(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    grad_c: &Tensor,
    opts: &MatmulOptions,
) -> Result<(Tensor, Tensor)> {
    pollster::block_on(matmul_backward(gpu, a, b, grad_c, opts))
}
