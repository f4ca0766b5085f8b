//! GPU kernels, one module per family, each next to its `shaders/<family>.wgsl`
//! and its float64 twin in [`crate::reference`](mod@crate::reference).
//!
//! Each module validates shapes and arguments before any GPU work, builds the
//! uniform parameters (a `#[repr(C)]` struct mirrored in the WGSL file) and
//! returns `Step`s that callers may chain into one submission.

/// A family's WGSL source: `shaders/common.wgsl` (reductions, grid helpers)
/// followed by `shaders/<file>`. WGSL has no includes, so this is the include.
macro_rules! shader {
    // A family that needs a WGSL extension: `enable` must come before any
    // declaration, so it goes in front of common.wgsl.
    (enable $ext:literal, $($file:literal),+) => {
        concat!(
            "enable ",
            $ext,
            ";\n",
            include_str!("../../shaders/common.wgsl"),
            $("\n", include_str!(concat!("../../shaders/", $file))),+
        )
    };
    // Several files: pieces shared by a few families first, then the family.
    ($($file:literal),+) => {
        concat!(
            include_str!("../../shaders/common.wgsl"),
            $("\n", include_str!(concat!("../../shaders/", $file))),+
        )
    };
}

pub mod attention;
// Only the `model` feature's encoder dispatches these kernels; without it
// (e.g. the WebAssembly build) just the shader source is used, by the naga test.
#[cfg_attr(not(feature = "model"), allow(dead_code))]
pub mod bert;
pub mod flash;
pub mod matmul;
pub mod metrics;
pub mod saobp;
pub mod softmax;

use crate::error::{Error, Result};
use crate::gpu::Kernel;

/// Sizes go to the GPU as u32; anything larger is a shape error, not a wrap.
pub(crate) fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(format!("{what} = {v} does not fit in 32 bits")))
}

/// Workgroups of 64 invocations covering `elements` one per invocation.
pub(crate) fn elementwise_groups(elements: usize) -> u64 {
    (elements as u64).div_ceil(64)
}

/// Every shader family: (file name, WGSL source as compiled, i.e. with
/// `common.wgsl` in front). The naga validation test walks this list, so a new
/// family is checked as soon as it is added here.
pub const SHADERS: &[(&str, &str)] = &[
    ("bert.wgsl", bert::SOURCE),
    ("flash.wgsl", flash::SOURCE),
    ("matmul.wgsl", matmul::SOURCE),
    ("matmul_pack.wgsl", matmul::PACK_SOURCE),
    ("matmul_texture.wgsl", matmul::TEXTURE_SOURCE),
    (
        "matmul_texture_subgroup.wgsl",
        matmul::TEXTURE_SUBGROUP_SOURCE,
    ),
    ("matmul_tiled.wgsl", matmul::TILED_SOURCE),
    ("metrics.wgsl", metrics::SOURCE),
    ("saobp.wgsl", saobp::SOURCE),
    ("softmax.wgsl", softmax::SOURCE),
];

/// The deliberately wrong kernels: (name, WGSL source, the source it was
/// derived from). Validated like [`SHADERS`]; dispatched only by the
/// conformance runner's fault injection.
#[doc(hidden)]
pub fn fault_shaders() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![(
        "matmul_skips_last_k",
        matmul::skips_last_k_source(),
        matmul::SOURCE,
    )]
}

/// Kernel configurations derived from a family's source by replacing its
/// tile constants: (name, WGSL source, the source it was derived from).
/// Validated like [`SHADERS`].
pub fn derived_shaders() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![(
        "matmul_tiled_128",
        matmul::tiled_128_source(),
        matmul::TILED_SOURCE,
    )]
}

/// Every kernel entry point with the byte size of its Rust parameter struct,
/// so a test can check the WGSL `Params` struct has the same size.
pub(crate) const KERNELS: &[(&Kernel, usize)] = &[
    (
        &matmul::MATMUL_BLOCKED,
        std::mem::size_of::<matmul::MatmulParams>(),
    ),
    (
        &matmul::MATMUL_TILED_64,
        std::mem::size_of::<matmul::MatmulParams>(),
    ),
    (&matmul::PACK, std::mem::size_of::<matmul::TextureParams>()),
    (
        &matmul::MATMUL_TEXTURE,
        std::mem::size_of::<matmul::TextureParams>(),
    ),
    (
        &matmul::MATMUL_TEXTURE_SUBGROUP,
        std::mem::size_of::<matmul::TextureParams>(),
    ),
    (
        &softmax::SOFTMAX_ROWS,
        std::mem::size_of::<softmax::SoftmaxParams>(),
    ),
    (
        &saobp::REMOVE_ECHOES,
        std::mem::size_of::<saobp::SaobpParams>(),
    ),
    (
        &metrics::ROW_METRICS,
        std::mem::size_of::<metrics::MetricsParams>(),
    ),
    (&bert::LAYER_NORM, std::mem::size_of::<bert::BertParams>()),
    (
        &flash::FLASH_FORWARD,
        std::mem::size_of::<flash::FlashParams>(),
    ),
];

/// The size of each uniform `Params` struct (binding 0) of each entry point in
/// [`SHADERS`], as naga lays it out: `(family, entry, WGSL size, Rust size)`.
pub fn param_layouts() -> Result<Vec<(&'static str, &'static str, u32, usize)>, String> {
    KERNELS
        .iter()
        .map(|(k, rust)| {
            let module = naga::front::wgsl::parse_str(k.source)
                .map_err(|e| format!("{}: {}", k.family, e.emit_to_string(k.source)))?;
            let var = module
                .global_variables
                .iter()
                .find(|(_, v)| {
                    v.space == naga::AddressSpace::Uniform
                        && v.binding.as_ref().is_some_and(|b| b.binding == 0)
                })
                .map(|(_, v)| v)
                .ok_or_else(|| format!("{}: no uniform at binding 0", k.family))?;
            let size = module.types[var.ty].inner.size(module.to_ctx());
            Ok((k.family, k.entry, size, *rust))
        })
        .collect()
}
