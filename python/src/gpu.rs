//! `saobp.Gpu`, `saobp.adapters()` and the default context the functions
//! use when no `gpu=` is given.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use saobp::{AdapterSummary, BackendChoice, Gpu, GpuOptions};

use crate::error::{detached, to_py};

/// A GPU context: one adapter, its device and compiled kernels.
///
/// `backend`: "auto" (a hardware adapter if there is one, else a software
/// one), "vulkan", "metal", "dx12" or "gl". `adapter`: a case-insensitive
/// part of the adapter's name, or an `index` from `saobp.adapters(backend)`;
/// None takes the preferred one. `timeout_s`: the longest one wait on the
/// GPU may take (default 300). Raises `ValueError` for an unknown backend
/// and `GpuError` when no adapter matches or the device cannot be created.
///
/// Opening one costs a device and, on first use of each kernel, a shader
/// compilation, so keep it and pass it as `gpu=` rather than opening one
/// per call. Safe to share between threads.
#[pyclass(name = "Gpu", module = "saobp", frozen)]
pub struct PyGpu {
    pub gpu: Arc<Gpu>,
}

/// The default context: opened from the environment on first use, kept for
/// the life of the process. A failed open is not kept, so a later call
/// tries again.
static DEFAULT: Mutex<Option<Arc<Gpu>>> = Mutex::new(None);

/// The default context, opened from `SAOBP_BACKEND`, `SAOBP_ADAPTER` and
/// `SAOBP_TIMEOUT_S` if it is not open yet.
pub fn default_gpu(py: Python<'_>) -> PyResult<Arc<Gpu>> {
    detached(py, || {
        // A poisoned lock only means another thread panicked while opening.
        let mut slot = DEFAULT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gpu) = slot.as_ref() {
            return Ok(Arc::clone(gpu));
        }
        let gpu = Arc::new(Gpu::from_env_blocking()?);
        *slot = Some(Arc::clone(&gpu));
        Ok(gpu)
    })
}

/// Forgets the default context if it is `gpu`, e.g. after its device was
/// lost, so the next call opens a new one.
pub fn forget_default(gpu: &Arc<Gpu>) {
    let mut slot = DEFAULT.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_some_and(|g| Arc::ptr_eq(g, gpu)) {
        *slot = None;
    }
}

/// `gpu` if given, else the default context.
pub fn resolve(py: Python<'_>, gpu: Option<&Bound<'_, PyGpu>>) -> PyResult<Arc<Gpu>> {
    match gpu {
        Some(g) => Ok(Arc::clone(&g.get().gpu)),
        None => default_gpu(py),
    }
}

/// The backend's name as `Gpu(backend=...)` takes it.
fn backend_name(a: &AdapterSummary) -> &'static str {
    a.backend.to_str()
}

/// `DiscreteGpu` as `discrete_gpu`.
fn device_type_name(a: &AdapterSummary) -> String {
    let mut out = String::new();
    for (i, c) in format!("{:?}", a.device_type).chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// One adapter as a dict; `index` is its place in `saobp.adapters(backend)`.
fn adapter_dict<'py>(
    py: Python<'py>,
    a: &AdapterSummary,
    index: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    if let Some(i) = index {
        d.set_item("index", i)?;
    }
    d.set_item("name", &a.name)?;
    d.set_item("backend", backend_name(a))?;
    d.set_item("device_type", device_type_name(a))?;
    d.set_item("driver", &a.driver)?;
    d.set_item("driver_info", &a.driver_info)?;
    d.set_item("software", a.is_software())?;
    Ok(d)
}

fn parse_backend(backend: &str) -> PyResult<BackendChoice> {
    backend.parse().map_err(to_py)
}

/// Every adapter this machine offers, in the order wgpu lists them, as dicts
/// with `index` (pass it as `Gpu(backend, adapter=index)`), `name`,
/// `backend` ("vulkan", "metal", "dx12", "gl"), `device_type`
/// ("discrete_gpu", "integrated_gpu", "virtual_gpu", "cpu", "other"),
/// `driver`, `driver_info` and `software` (a CPU rasterizer such as lavapipe
/// or llvmpipe). `backend` limits the list to one API. Opens no device.
#[pyfunction]
#[pyo3(signature = (backend = "auto"))]
pub fn adapters<'py>(py: Python<'py>, backend: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let choice = parse_backend(backend)?;
    let list = detached(py, || Ok(saobp::list_adapters_blocking(choice)))?;
    list.iter()
        .enumerate()
        .map(|(i, a)| adapter_dict(py, a, Some(i)))
        .collect()
}

/// The context the functions use when `gpu=` is not given: opened on first
/// use from the environment (`SAOBP_BACKEND`: auto, vulkan, metal, dx12 or
/// gl; `SAOBP_ADAPTER`: part of the adapter's name; `SAOBP_TIMEOUT_S`),
/// then kept. Raises `GpuError` when no adapter matches.
#[pyfunction(name = "default_gpu")]
pub fn default_gpu_py(py: Python<'_>) -> PyResult<PyGpu> {
    Ok(PyGpu {
        gpu: default_gpu(py)?,
    })
}

#[pymethods]
impl PyGpu {
    /// Opens an adapter (see the class).
    #[new]
    #[pyo3(signature = (backend = "auto", adapter = None, timeout_s = None))]
    fn new(
        py: Python<'_>,
        backend: &str,
        adapter: Option<&Bound<'_, PyAny>>,
        timeout_s: Option<f64>,
    ) -> PyResult<PyGpu> {
        let mut opts = GpuOptions {
            backend: parse_backend(backend)?,
            ..GpuOptions::default()
        };
        if let Some(t) = timeout_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(PyValueError::new_err(format!(
                    "timeout_s must be a positive number of seconds, got {t}"
                )));
            }
            opts.timeout = Duration::from_secs_f64(t);
        }
        let index = match adapter {
            None => None,
            Some(a) if a.is_instance_of::<pyo3::types::PyBool>() => {
                return Err(PyTypeError::new_err(
                    "adapter must be a name (str) or an index (int), got bool",
                ))
            }
            Some(a) => {
                if let Ok(name) = a.extract::<String>() {
                    opts.adapter = Some(name);
                    None
                } else if let Ok(i) = a.extract::<i64>() {
                    Some(i)
                } else {
                    return Err(PyTypeError::new_err(
                        "adapter must be a name (str) or an index (int)",
                    ));
                }
            }
        };
        let gpu = detached(py, move || {
            if let Some(i) = index {
                // The index names one listed adapter; its backend and full
                // name select it again (the library opens by filter).
                let list = saobp::list_adapters_blocking(opts.backend);
                let chosen = usize::try_from(i).ok().and_then(|i| list.get(i));
                let Some(chosen) = chosen else {
                    return Err(saobp::Error::InvalidArgument(format!(
                        "adapter index {i} is out of range: {} adapter(s) for backend {:?}",
                        list.len(),
                        opts.backend
                    )));
                };
                opts.backend = backend_name(chosen).parse()?;
                opts.adapter = Some(chosen.name.clone());
            }
            Gpu::new_blocking(&opts)
        })?;
        Ok(PyGpu { gpu: Arc::new(gpu) })
    }

    /// A new context chosen as the default one is (`SAOBP_BACKEND`,
    /// `SAOBP_ADAPTER`, `SAOBP_TIMEOUT_S`), but not shared with it.
    #[staticmethod]
    fn from_env(py: Python<'_>) -> PyResult<PyGpu> {
        let gpu = detached(py, Gpu::from_env_blocking)?;
        Ok(PyGpu { gpu: Arc::new(gpu) })
    }

    /// The adapter as a dict, like an entry of `saobp.adapters()` without `index`.
    #[getter]
    fn adapter<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        adapter_dict(py, self.gpu.adapter(), None)
    }

    /// The adapter's name.
    #[getter]
    fn name(&self) -> String {
        self.gpu.adapter().name.clone()
    }

    /// The adapter's API: "vulkan", "metal", "dx12" or "gl".
    #[getter]
    fn backend(&self) -> &'static str {
        backend_name(self.gpu.adapter())
    }

    /// True for a CPU rasterizer (lavapipe, llvmpipe, WARP, SwiftShader).
    #[getter]
    fn software(&self) -> bool {
        self.gpu.adapter().is_software()
    }

    fn __repr__(&self) -> String {
        format!(
            "saobp.Gpu(backend={:?}, adapter={:?})",
            self.backend(),
            self.gpu.adapter().name
        )
    }
}
