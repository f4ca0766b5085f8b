//! GPU kernels, one module per family, each next to its `shaders/<family>.wgsl`
//! and its float64 twin in [`crate::reference`](mod@crate::reference).
//!
//! Each module declares its kernels once, with `kernels!`: entry point,
//! binding names, parameter struct, workgroup size and any overridden
//! constants. [`registry`] lists every family's declarations; the tests
//! check each one against its WGSL with naga, and the context refuses a
//! kernel the device cannot run. Each module validates shapes and arguments
//! before any GPU work, builds the uniform parameters (a `#[repr(C)]` struct
//! mirrored in the WGSL file) and returns `Step`s that callers may chain
//! into one submission.

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

/// Declares a module's kernels, one line each, and lists them in the
/// module's `KERNELS` for the [`registry`]:
///
/// ```text
/// kernels! {
///     "saobp" in SOURCE, params SaobpParams, workgroup 64 {
///         /// Doc of the kernel.
///         REFINE = "refine" (ref_a, ref_m, ref_lambda, ref_r, ref_mass);
///     }
///     "matmul_tiled" in TILED_SOURCE, params MatmulParams, workgroup 256 {
///         MATMUL_TILED_128 = "matmul_tiled" (a, b, c)
///             as "matmul_tiled_128" with [BM = 128, BN = 128];
///     }
/// }
/// ```
///
/// Per family: its name (the WGSL file and report label), its source, its
/// Rust `Params` struct and `@workgroup_size`. Per kernel: the static's
/// name, the entry point, the WGSL names of bindings 1, 2, … in order, and
/// optionally a report label with values for the shader's `override`
/// constants.
macro_rules! kernels {
    ($(
        $family:literal in $source:expr, params $params:ty, workgroup $wg:literal {
            $(
                $(#[$meta:meta])*
                $name:ident = $entry:literal ($($binding:ident),* $(,)?)
                $(as $label:literal with [$($constant:ident = $value:literal),* $(,)?])?;
            )+
        }
    )+) => {
        $($(
            $(#[$meta])*
            pub(crate) static $name: $crate::shader::Kernel = $crate::shader::Kernel::new(
                $family,
                $source,
                $entry,
                ::std::mem::size_of::<$params>(),
                &[$(stringify!($binding)),*],
            )
            .workgroup($wg)
            $(.with_constants($label, &[$((stringify!($constant), $value as f64)),*]))?;
        )+)+

        /// Every kernel this module declares, for the registry.
        pub(crate) static KERNELS: &[&$crate::shader::Kernel] = &[$($(&$name),+),+];
    };
}

pub mod attention;
// Only the `model` feature's encoder dispatches these kernels; without it
// (e.g. the WebAssembly build) they are only declared and checked.
#[cfg_attr(not(feature = "model"), allow(dead_code))]
pub mod bert;
pub mod flash;
pub mod gpt;
pub mod matmul;
pub mod metrics;
pub mod optim;
pub mod registry;
pub mod rows;
pub mod saobp;
pub mod softmax;

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Sizes go to the GPU as u32; anything larger is a shape error, not a wrap.
pub(crate) fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(format!("{what} = {v} does not fit in 32 bits")))
}

/// A kernel choice forced on `gpu` under tuning-cache key `key`: set from
/// code earlier (`Some(None)` there means "choose per adapter"), else read
/// from the environment variable `env` (empty or `auto` forces none) on the
/// first call and kept for the device. A malformed value is `T`'s parse
/// error. Serves `SAOBP_MATMUL`, `SAOBP_FLASH` and `SAOBP_ROWS`.
pub(crate) fn forced<T>(gpu: &Gpu, key: &'static str, env: &str) -> Result<Option<T>>
where
    T: FromStr<Err = Error> + Copy + Send + Sync + 'static,
{
    if let Some(choice) = gpu.tuned::<Option<T>>(key, None) {
        return Ok(choice);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let choice = match std::env::var(env) {
        Ok(m) if !m.trim().is_empty() && m.trim() != "auto" => Some(m.parse()?),
        _ => None,
    };
    #[cfg(target_arch = "wasm32")]
    let choice = {
        let _ = env;
        None
    };
    gpu.set_tuned(key, None, choice);
    Ok(choice)
}
