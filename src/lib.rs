//! # saobp
//!
//! Attention, its one-step belief-propagation refinement (SAOBP) and
//! attention-analysis metrics as WGSL compute shaders on [wgpu], so the same
//! code runs on Vulkan, Metal, DX12, OpenGL and WebGPU. Every kernel has a
//! float64 CPU twin in [`reference`] that tests (and users) check it against.
//!
//! ```no_run
//! # fn main() -> saobp::Result<()> {
//! use saobp::{attention_blocking, AttentionOptions, Gpu, Tensor};
//! let gpu = Gpu::from_env_blocking()?; // SAOBP_BACKEND, SAOBP_ADAPTER
//! let (b, h, n, d) = (1, 2, 4, 8);
//! let data: Vec<f32> = (0..b * h * n * d).map(|i| (i as f32 * 0.37).sin()).collect();
//! let q = Tensor::from_slice(&gpu, &[b, h, n, d], &data)?;
//! let out = attention_blocking(&gpu, &q, &q, &q, &AttentionOptions { causal: true, ..Default::default() })?;
//! let a = out.attention.to_vec_blocking(&gpu)?; // [B, H, N, N]
//! assert_eq!(a.len(), b * h * n * n);
//! # Ok(()) }
//! ```
//!
//! Layout: [`gpu`] (context), [`tensor`] (data), [`kernels`] (one module per
//! `shaders/*.wgsl` family), [`reference`] (float64 twins).

pub mod error;
pub mod gpu;
pub mod kernels;
pub mod reference;
pub mod tensor;

pub use error::{Error, Result};
pub use gpu::{choose_adapter, list_adapters, AdapterSummary, BackendChoice, Gpu, GpuOptions};
#[cfg(not(target_arch = "wasm32"))]
pub use gpu::list_adapters_blocking;
pub use kernels::attention::{attention, Attention, AttentionOptions};
pub use kernels::matmul::{matmul, MatmulOptions};
pub use kernels::softmax::{softmax, SoftmaxOptions};
#[cfg(not(target_arch = "wasm32"))]
pub use kernels::{attention::attention_blocking, matmul::matmul_blocking, softmax::softmax_blocking};
pub use tensor::Tensor;
