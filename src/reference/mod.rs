//! The float64 CPU reference of every kernel, written as plainly as the spec.
//!
//! Inputs are the same f32 values the GPU sees; all arithmetic is f64. Tests
//! compare GPU results against these functions, and users can do the same to
//! check their own GPU, judging with [`compare()`] and the spec's [`Tolerance`].
//! Nothing here shares code with the GPU path beyond argument types.

pub mod attention;
pub mod bert;
pub mod compare;
pub mod matmul;
pub mod metrics;
pub mod saobp;
pub mod softmax;

pub use attention::{attention, AttentionRef, RefOptions};
pub use compare::{compare, Comparison, Tolerance};
pub use matmul::matmul;
pub use saobp::{saobp, SaobpRef};
pub use softmax::softmax;
