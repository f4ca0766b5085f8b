//! numpy arrays in and out: inputs are copied into row-major f32 host
//! buffers while attached to the interpreter, so the GPU work that follows
//! can run detached; results come back as new float32 arrays.

use numpy::ndarray::{ArrayD, ArrayViewD, IxDyn};
use numpy::prelude::*;
use numpy::{Element, PyArrayDyn, PyUntypedArray};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// A row-major f32 array on the host.
#[derive(Debug, Clone)]
pub struct Host {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Host {
    /// A host array, its length checked against `shape`.
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> Host {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Host { data, shape }
    }

    /// As a new float32 numpy array.
    pub fn into_numpy<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let array = ArrayD::from_shape_vec(IxDyn(&self.shape), self.data)
            .map_err(|e| PyValueError::new_err(format!("result of an unexpected size: {e}")))?;
        Ok(array.into_pyarray(py).into_any())
    }
}

/// `obj` as a numpy array: itself if it is one, else `numpy.asarray(obj)`
/// (lists, tensors of other libraries that support the array protocol).
fn as_ndarray<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    if obj.cast::<PyUntypedArray>().is_ok() {
        return Ok(obj.clone());
    }
    let py = obj.py();
    let converted = py
        .import("numpy")?
        .call_method1("asarray", (obj,))
        .map_err(|e| {
            PyTypeError::new_err(format!(
                "`{name}` must be a numpy array (float32 or float64), got {} that numpy \
                 cannot convert: {e}",
                type_name(obj)
            ))
        })?;
    // numpy wraps arbitrary objects in 0-d object arrays; those get the dtype error.
    Ok(converted)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".to_string())
}

/// The elements of `obj` in row-major (C) order, converted by `f`, if its
/// dtype is `T`. Any memory layout works: strided arrays are read
/// element by element.
fn read_as<T: Element + Copy>(
    obj: &Bound<'_, PyAny>,
    name: &str,
    f: impl Fn(T) -> f32,
) -> PyResult<Option<Host>> {
    let Ok(array) = obj.cast::<PyArrayDyn<T>>() else {
        return Ok(None);
    };
    let ro = array
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("`{name}` cannot be read right now: {e}")))?;
    let view: ArrayViewD<'_, T> = ro.as_array();
    let shape = view.shape().to_vec();
    let data: Vec<f32> = match view.as_slice() {
        Some(s) => s.iter().map(|&x| f(x)).collect(),
        None => view.iter().map(|&x| f(x)).collect(),
    };
    Ok(Some(Host::new(data, shape)))
}

fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A float32 or float64 array (or anything numpy turns into one) as f32.
/// Other dtypes are a `TypeError`: integers would silently truncate scores.
pub fn float_array(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Host> {
    let arr = as_ndarray(obj, name)?;
    if let Some(h) = read_as::<f32>(&arr, name, |x| x)? {
        return Ok(h);
    }
    // Values beyond f32's range become ±inf, which the library refuses
    // with a message naming the tensor.
    if let Some(h) = read_as::<f64>(&arr, name, |x| x as f32)? {
        return Ok(h);
    }
    Err(PyTypeError::new_err(format!(
        "`{name}` must be a float32 or float64 array, got dtype {}",
        dtype_name(&arr)
    )))
}

/// A key mask (1 = keep, 0 = masked) of float, bool or integer dtype, as f32:
/// tokenizers' `attention_mask` is int64.
pub fn mask_array(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Host> {
    let arr = as_ndarray(obj, name)?;
    macro_rules! try_types {
        ($($t:ty),*) => {
            $(
                if let Some(h) = read_as::<$t>(&arr, name, |x| x as f32)? {
                    return Ok(h);
                }
            )*
        };
    }
    try_types!(f32, f64, i64, i32, i16, i8, u64, u32, u16, u8);
    if let Some(h) = read_as::<bool>(&arr, name, |x| if x { 1.0 } else { 0.0 })? {
        return Ok(h);
    }
    Err(PyTypeError::new_err(format!(
        "`{name}` must be a float, integer or bool array of 1 (keep) and 0 (masked), \
         got dtype {}",
        dtype_name(&arr)
    )))
}

/// λ as the library takes it: a number for every head, or a sequence (list,
/// tuple, 1-D array) of one number per head.
pub fn lambda(obj: &Bound<'_, PyAny>) -> PyResult<saobp::Lambda> {
    if let Ok(l) = obj.extract::<f64>() {
        return Ok(saobp::Lambda::Scalar(l as f32));
    }
    if obj.cast::<PyUntypedArray>().is_ok()
        || obj.cast::<PyList>().is_ok()
        || obj.is_instance_of::<pyo3::types::PyTuple>()
    {
        // Integer λ values are exact in f32: accept them as a mask's are.
        let host = float_array(obj, "lam")
            .or_else(|_| mask_array(obj, "lam"))
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "`lam` must be a number or a sequence of numbers (one per head), got {}",
                    type_name(obj)
                ))
            })?;
        if host.shape.len() > 1 {
            return Err(PyValueError::new_err(format!(
                "`lam` must be a number or a 1-D sequence of one value per head, got shape {:?}",
                host.shape
            )));
        }
        return Ok(saobp::Lambda::PerHead(host.data));
    }
    Err(PyTypeError::new_err(format!(
        "`lam` must be a number or a sequence of numbers (one per head), got {}",
        type_name(obj)
    )))
}
