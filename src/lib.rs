//! # saobp
//!
//! Attention, its one-step belief-propagation refinement (SAOBP) and
//! attention-analysis metrics as WGSL compute shaders on [wgpu], so the same
//! code runs on Vulkan, Metal, DX12, OpenGL and WebGPU. Every kernel has a
//! float64 CPU twin in [`reference`](mod@reference) that tests (and users) check it against.
//!
//! ```no_run
//! # fn main() -> saobp::Result<()> {
//! use saobp::{attention_blocking, AttentionOptions, Gpu, Lambda, Mode, Tensor};
//! let gpu = Gpu::from_env_blocking()?; // SAOBP_BACKEND, SAOBP_ADAPTER
//! let (b, h, n, d) = (1, 2, 4, 8);
//! let data: Vec<f32> = (0..b * h * n * d).map(|i| (i as f32 * 0.37).sin()).collect();
//! let q = Tensor::from_slice(&gpu, &[b, h, n, d], &data)?;
//! let opts = AttentionOptions {
//!     causal: true,
//!     lambda: Lambda::Scalar(0.5), // SAOBP strength
//!     mode: Mode::Fused,           // O(N²D), never forms the N×N message matrix
//!     metrics: true,
//!     ..Default::default()
//! };
//! let out = attention_blocking(&gpu, &q, &q, &q, &opts)?;
//! let o = out.output.to_vec_blocking(&gpu)?; // [B, H, N, D]
//! assert_eq!(o.len(), b * h * n * d);
//! let gtd = out.metrics.unwrap().refined.unwrap().overall().gtd;
//! # Ok(()) }
//! ```
//!
//! Layout: [`gpu`] (context), [`tensor`] (data), [`attention`](mod@attention) (the pipeline:
//! scores → softmax → SAOBP → output → metrics), [`kernels`] (one module per
//! `shaders/*.wgsl` family), [`reference`](mod@reference) (float64 twins), and
//! [`conformance`] (every kernel at a matrix of sizes against the reference,
//! behind `saobp conformance`).

#![warn(missing_docs)]

pub mod attention;
#[cfg(not(target_arch = "wasm32"))]
pub mod conformance;
pub mod data;
pub mod error;
pub mod gpu;
#[cfg(feature = "io")]
pub mod io;
pub mod kernels;
#[cfg(feature = "model")]
pub mod model;
mod pool;
pub mod reference;
mod shader;
pub mod tensor;
pub mod workload;

#[cfg(not(target_arch = "wasm32"))]
pub use attention::attention_blocking;
pub use attention::{attention, AttentionOptions, AttentionOutput, Metrics, Mode, RefinedMetrics};
pub use error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
pub use gpu::list_adapters_blocking;
pub use gpu::{
    choose_adapter, list_adapters, AdapterSummary, BackendChoice, Gpu, GpuOptions, SizeClass, Work,
};
pub use kernels::attention::{
    attention_backward, AttentionBackwardOptions, AttentionGrads, AttentionShape,
};
pub use kernels::flash::{set_flash_variant, FlashVariant};
pub use kernels::matmul::{
    matmul, matmul_backward, matmul_choice, matmul_variant, set_matmul_family, MatmulFamily,
    MatmulOptions, MatmulVariant, TiledTile, TunedClass, Tuning,
};
#[cfg(not(target_arch = "wasm32"))]
pub use kernels::matmul::{tune_matmul, tune_matmul_blocking};
pub use kernels::metrics::{
    metrics, refined_metrics, HeadSummary, MapMetrics, Metric, MetricsOptions, RowStats,
    METRIC_NAMES,
};
pub use kernels::optim::{lr_at, AdamW, AdamWOptions, ParamGroup};
pub use kernels::rows::{row_layout, set_row_layout, RowLayout};
pub use kernels::saobp::{refine_map, saobp_output_backward, Lambda, OutputGradients, Refined};
pub use kernels::softmax::{softmax, softmax_backward, SoftmaxOptions};
#[cfg(not(target_arch = "wasm32"))]
pub use kernels::{
    attention::attention_backward_blocking, matmul::matmul_backward_blocking,
    matmul::matmul_blocking, matmul::matmul_variant_blocking, metrics::metrics_blocking,
    metrics::refined_metrics_blocking, saobp::refine_map_blocking,
    saobp::saobp_output_backward_blocking, softmax::softmax_backward_blocking,
    softmax::softmax_blocking,
};
pub use tensor::Tensor;

/// The README's Rust examples, compiled (and the first run) as doctests so
/// the README stays true to the API.
#[cfg(all(doctest, feature = "model"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
