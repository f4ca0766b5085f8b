//! The library's one error type.
//!
//! Everything a caller can get wrong, and everything the GPU can do wrong
//! (validation, out-of-memory, device loss, a wait that never ends), comes back
//! as an [`Error`]; the library does not panic on user input.

use std::fmt;

/// Shorthand for `Result<T, saobp::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No adapter at all, or none matching the requested backend and name.
    #[error("{0}")]
    NoAdapter(String),
    /// `SAOBP_BACKEND` (or a backend option) named something we do not know.
    #[error("unknown backend `{0}`: expected one of vulkan, metal, dx12, gl, auto")]
    UnknownBackend(String),
    /// The adapter refused to create a device.
    #[error("could not create a device on {adapter}: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// The driver's reason.
        message: String,
    },
    /// A tensor has the wrong shape or its data the wrong length.
    #[error("shape error: {0}")]
    Shape(String),
    /// An argument is out of its domain (a negative λ, a NaN scale, a zero dimension...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An input tensor holds NaN or ±Inf. Inputs are checked on the host when
    /// uploaded ([`crate::Tensor::from_slice`]), so this costs no GPU work.
    #[error("tensor `{tensor}` holds a non-finite value ({value}) at index {index}; inputs must be finite")]
    NonFinite {
        /// The argument's name (`q`, `k`, `v`, `key_mask`, ...).
        tensor: String,
        /// Flat index of the first non-finite value.
        index: usize,
        /// That value.
        value: f32,
    },
    /// The request is larger than one of the adapter's limits.
    #[error("{what} needs {needed}, over the adapter's limit {limit_name} = {limit}")]
    Limit {
        /// What was being sized.
        what: String,
        /// How much it needed.
        needed: u64,
        /// The wgpu limit's name.
        limit_name: &'static str,
        /// The adapter's value of it.
        limit: u64,
    },
    /// An input file is unusable: malformed, or missing or mis-shaping a tensor.
    #[error("{0}")]
    Input(String),
    /// A model folder is unusable: a missing or malformed file, tensor or setting.
    #[error("model: {0}")]
    Model(String),
    /// wgpu reported a validation error (a bug in this library if it ever happens).
    #[error("GPU validation error: {0}")]
    Validation(String),
    /// The device ran out of memory.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// The device reported an internal error (e.g. the driver rejected a shader).
    #[error("GPU internal error: {0}")]
    Internal(String),
    /// The device is lost (destroyed, reset or crashed); make a new [`crate::Gpu`].
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// A wait on the GPU took longer than the context's timeout.
    #[error("GPU work did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// Reading a buffer back failed.
    #[error("could not read a GPU buffer back: {0}")]
    Readback(String),
}

impl Error {
    /// An [`Error::Shape`] from anything printable.
    pub(crate) fn shape(msg: impl fmt::Display) -> Self {
        Error::Shape(msg.to_string())
    }

    /// An [`Error::Model`] from anything printable.
    // Used by the `model` feature only.
    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub(crate) fn model(msg: impl fmt::Display) -> Self {
        Error::Model(msg.to_string())
    }

    /// An [`Error::InvalidArgument`] from anything printable.
    pub(crate) fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string())
    }
}

impl From<wgpu::Error> for Error {
    fn from(e: wgpu::Error) -> Self {
        match e {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
            wgpu::Error::Validation { description, .. } => Error::Validation(description),
            wgpu::Error::Internal { description, .. } => Error::Internal(description),
        }
    }
}
