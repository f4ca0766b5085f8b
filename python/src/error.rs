//! The library's errors as Python exceptions, and the guard that keeps a
//! panic from reaching Python as anything but an exception.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    saobp,
    GpuError,
    PyRuntimeError,
    "The GPU or its driver failed: no adapter, no device, validation, out of \
     memory, device lost, a timeout, a limit of the adapter exceeded."
);

/// The exception for `e`: `ValueError` for what the caller got wrong (shapes,
/// λ, non-finite values, an unknown backend), [`GpuError`] (a
/// `RuntimeError`) for what the device did. The message is the library's.
pub fn to_py(e: saobp::Error) -> PyErr {
    use saobp::Error as E;
    let msg = e.to_string();
    match e {
        E::Shape(_)
        | E::InvalidArgument(_)
        | E::NonFinite { .. }
        | E::UnknownBackend(_)
        | E::Input(_)
        | E::Model(_) => PyValueError::new_err(msg),
        // NoAdapter, RequestDevice, Limit (a property of the adapter, not of
        // the call alone), Validation, OutOfMemory, Internal, DeviceLost,
        // Timeout, Readback, and any variant added later.
        _ => GpuError::new_err(msg),
    }
}

/// Runs `work` detached from the interpreter (other Python threads run
/// meanwhile) and turns its error, or a panic inside it, into an exception.
pub fn detached<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> saobp::Result<T> + Send,
{
    // A panic would otherwise unwind into PyO3's trampoline and surface as
    // `PanicException`, which `except Exception` does not catch.
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
    match outcome {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown cause");
            Err(GpuError::new_err(format!(
                "internal error in the GPU code: {what}"
            )))
        }
    }
}
