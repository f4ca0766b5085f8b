//! Python bindings of `saobp`: attention, SAOBP and attention metrics on
//! numpy arrays, run as WGSL compute shaders through wgpu.
//!
//! Layout: [`convert`] (numpy in and out), [`gpu`] (`saobp.Gpu`, adapters,
//! the default context), [`run`] (the GPU work, detached from the
//! interpreter), [`error`] (exceptions); the Python functions are here.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use saobp::{HeadSummary, Lambda, Mode, RefinedMetrics, METRIC_NAMES};

mod convert;
mod error;
mod gpu;
mod run;

use convert::Host;
use error::{detached, to_py, GpuError};
use gpu::PyGpu;

/// Runs `work` on `gpu` detached; forgets the default context if its device
/// was lost, so the next call opens a fresh one.
fn on_gpu<T: Send>(
    py: Python<'_>,
    gpu: Arc<saobp::Gpu>,
    work: impl FnOnce(&saobp::Gpu) -> saobp::Result<T> + Send,
) -> PyResult<T> {
    detached(py, || {
        let result = work(&gpu);
        if let Err(saobp::Error::DeviceLost(_)) = &result {
            gpu::forget_default(&gpu);
        }
        result
    })
}

/// One summary as a dict: every metric of [`HeadSummary::fields`] and `rows`.
fn summary_dict<'py>(py: Python<'py>, s: &HeadSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, value) in s.fields() {
        d.set_item(name, value)?;
    }
    d.set_item("rows", s.rows)?;
    Ok(d)
}

/// `{"heads": [[summary] * H] * B, "batch": [summary] * B, "overall":
/// summary, "rows": {metric: array [B, H, N]}}`.
fn map_dict<'py>(py: Python<'py>, m: run::MapResult) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let heads = PyList::empty(py);
    for item in m.heads.chunks(m.num_heads.max(1)) {
        let row = PyList::empty(py);
        for s in item {
            row.append(summary_dict(py, s)?)?;
        }
        heads.append(row)?;
    }
    d.set_item("heads", heads)?;
    let batch = PyList::empty(py);
    for s in &m.batch {
        batch.append(summary_dict(py, s)?)?;
    }
    d.set_item("batch", batch)?;
    d.set_item("overall", summary_dict(py, &m.overall)?)?;
    d.set_item("rows", rows_dict(py, m.rows, None)?)?;
    Ok(d)
}

/// `{metric: array}`, each reshaped to `shape` when given.
fn rows_dict<'py>(
    py: Python<'py>,
    rows: Vec<(&'static str, Host)>,
    shape: Option<&[usize]>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, mut host) in rows {
        if let Some(shape) = shape {
            host.shape = shape.to_vec();
        }
        d.set_item(name, host.into_numpy(py)?)?;
    }
    Ok(d)
}

/// Attention of `q`, `k`, `v` (`[B, H, N, D]`; `v` may be `[B, H, N, Dv]`),
/// refined by SAOBP unless the mode is plain or flash, exactly as the spec
/// defines it. Inputs are float32 or float64 arrays (any memory layout);
/// the work runs in float32 and results are float32 arrays.
///
/// - `lam`: SAOBP strength λ ≥ 0, one number or one per head; λ = 0 is
///   plain attention.
/// - `causal`: query `i` attends only to keys `j <= i`.
/// - `mode`: "plain" (`O = A·V`), "fused" (SAOBP in O(N²D), never forming
///   the message matrix), "materialized" (`M` explicit, N³ per head),
///   "flash" (plain, streamed, O(N·D) memory) or "streaming" (SAOBP,
///   streamed).
/// - `key_mask`: `[B, N]`, 1 where a key may be attended, 0 for padding
///   (float, int or bool).
/// - `scale`: score scale, default `1/sqrt(D)`.
/// - `metrics`: per-row metrics and per-head summaries of `A` (and of `R`
///   in refined modes); not in the streaming modes, which give `row_stats`.
/// - `refined_metrics`: "full" (every metric of `R`; in fused mode this
///   forms `M` on the side) or "from_mass" (only `R`'s GTD, no N³ work).
/// - `return_attention`, `return_refined`: also return `A`, `R`
///   `[B, H, N, N]` (not in the streaming modes; `R` not in plain mode).
/// - `gpu`: a `saobp.Gpu`; default: `saobp.default_gpu()`.
///
/// Returns a dict: `output` `[B, H, N, Dv]`; `attention`, `refined` when
/// asked for; `m` (multi-hop mass `[B, H, N]`) whenever it was computed;
/// `row_stats` `[B, H, N, 3]` (max score, softmax denominator, entropy) in
/// the streaming modes; `metrics` when asked for: `{"attention": map,
/// "refined": map (refined modes, "full"), "refined_gtd": [B, H, N]
/// (refined modes)}`, where a map is `{"heads": [[summary] * H] * B,
/// "batch": [summary] * B, "overall": summary, "rows": {metric: [B, H, N]}}`
/// and a summary is a dict of the metrics' means over counted rows plus
/// `rows` (how many were counted).
///
/// Raises `TypeError` for other dtypes, `ValueError` for bad shapes or
/// arguments (with the library's message) and `GpuError` when the device
/// fails.
#[pyfunction]
#[pyo3(signature = (
    q, k, v, lam = None, causal = false, mode = "fused", key_mask = None, scale = None,
    metrics = false, return_attention = false, return_refined = false,
    refined_metrics = "full", gpu = None,
), text_signature = "(q, k, v, lam=0.0, causal=False, mode='fused', key_mask=None, \
    scale=None, metrics=False, return_attention=False, return_refined=False, \
    refined_metrics='full', gpu=None)")]
// One argument per option, as the Python signature has them.
#[allow(clippy::too_many_arguments)]
fn attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    lam: Option<&Bound<'py, PyAny>>,
    causal: bool,
    mode: &str,
    key_mask: Option<&Bound<'py, PyAny>>,
    scale: Option<f64>,
    metrics: bool,
    return_attention: bool,
    return_refined: bool,
    refined_metrics: &str,
    gpu: Option<&Bound<'py, PyGpu>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mode: Mode = mode.parse().map_err(to_py)?;
    let refined_metrics = match refined_metrics {
        "full" => RefinedMetrics::Full,
        "from_mass" => RefinedMetrics::FromMass,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown refined_metrics `{other}`: expected full or from_mass"
            )))
        }
    };
    let job = run::AttentionJob {
        q: convert::float_array(q, "q")?,
        k: convert::float_array(k, "k")?,
        v: convert::float_array(v, "v")?,
        key_mask: key_mask
            .map(|m| convert::mask_array(m, "key_mask"))
            .transpose()?,
        lambda: lam.map(convert::lambda).transpose()?.unwrap_or_default(),
        causal,
        mode,
        scale: scale.map(|s| s as f32),
        metrics,
        refined_metrics,
        return_attention,
        return_refined,
    };
    let gpu = gpu::resolve(py, gpu)?;
    let out = on_gpu(py, gpu, move |g| run::attention(g, job))?;

    let d = PyDict::new(py);
    d.set_item("output", out.output.into_numpy(py)?)?;
    let optional = [
        ("attention", out.attention),
        ("refined", out.refined),
        ("m", out.mass),
        ("row_stats", out.row_stats),
    ];
    for (name, host) in optional {
        if let Some(h) = host {
            d.set_item(name, h.into_numpy(py)?)?;
        }
    }
    if let Some(a) = out.metrics_attention {
        let m = PyDict::new(py);
        m.set_item("attention", map_dict(py, a)?)?;
        if let Some(r) = out.metrics_refined {
            m.set_item("refined", map_dict(py, r)?)?;
        }
        if let Some(g) = out.refined_gtd {
            m.set_item("refined_gtd", g.into_numpy(py)?)?;
        }
        d.set_item("metrics", m)?;
    }
    Ok(d)
}

/// How a map `[..., N, N]` is seen by the library: `[B, H, N, N]` with `H`
/// the last leading dimension (1 if none) and `B` the product of the others.
struct MapDims {
    /// The leading dimensions, `[...]`.
    lead: Vec<usize>,
    b: usize,
    h: usize,
    n: usize,
}

impl MapDims {
    fn of(shape: &[usize], name: &str) -> PyResult<MapDims> {
        let nd = shape.len();
        if nd < 2 || shape[nd - 1] != shape[nd - 2] {
            return Err(PyValueError::new_err(format!(
                "shape error: `{name}` must be attention maps [..., N, N] (square in the last \
                 two dimensions), got shape {shape:?}"
            )));
        }
        let lead = shape[..nd - 2].to_vec();
        let (h, batch) = match lead.split_last() {
            Some((&h, batch)) => (h, batch.iter().product()),
            None => (1, 1),
        };
        Ok(MapDims {
            b: batch,
            h,
            n: shape[nd - 1],
            lead,
        })
    }

    fn library_shape(&self) -> Vec<usize> {
        vec![self.b, self.h, self.n, self.n]
    }

    /// `[..., N]`: the shape of per-row results.
    fn row_shape(&self) -> Vec<usize> {
        let mut s = self.lead.clone();
        s.push(self.n);
        s
    }

    /// `[..., N]` without the head dimension: what a key mask broadcasts to.
    fn mask_shape(&self) -> Vec<usize> {
        let mut s = self.lead[..self.lead.len().saturating_sub(1)].to_vec();
        s.push(self.n);
        s
    }
}

/// SAOBP on attention maps from any source (e.g. a transformer's
/// `output_attentions`), with `M` materialized (N³ per head).
///
/// - `A`: `[..., N, N]`, float32 or float64, rows stochastic (or all zero).
///   The last leading dimension is the heads (for a per-head `lam`); the
///   others are flattened and restored.
/// - `lam`: λ ≥ 0, one number or one per head (default 1, the λ at which
///   the spec reports a plain map's GTD).
/// - `causal`: `A` was computed with a causal mask. `R` of a causal `A` is
///   causal by itself; this checks that `A` has no weight above the
///   diagonal and raises `ValueError` if it has.
/// - `return_messages`: also return the two-hop messages `M` `[..., N, N]`.
/// - `gpu`: a `saobp.Gpu`; default: `saobp.default_gpu()`.
///
/// Returns a dict: `refined` (`R = (A + λM)/(1 + λm)`, `[..., N, N]`), `m`
/// (multi-hop mass `Σ_j M_ij`, `[..., N]`), `gtd` (`λm/(1 + λm)`,
/// `[..., N]`) and `messages` when asked for.
#[pyfunction]
#[pyo3(
    signature = (a, lam = None, causal = false, return_messages = false, gpu = None),
    text_signature = "(a, lam=1.0, causal=False, return_messages=False, gpu=None)"
)]
fn refine_map<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    lam: Option<&Bound<'py, PyAny>>,
    causal: bool,
    return_messages: bool,
    gpu: Option<&Bound<'py, PyGpu>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut host = convert::float_array(a, "A")?;
    let dims = MapDims::of(&host.shape, "A")?;
    let full_shape = std::mem::replace(&mut host.shape, dims.library_shape());
    if causal {
        check_causal(&host, dims.n)?;
    }
    let lambda = match lam {
        Some(l) => convert::lambda(l)?,
        None => Lambda::Scalar(1.0),
    };
    let gpu = gpu::resolve(py, gpu)?;
    let out = on_gpu(py, gpu, move |g| {
        run::refine_map(g, &host, &lambda, return_messages)
    })?;

    let (h, n) = (dims.h, dims.n);
    let gtd: Vec<f32> = out
        .mass
        .data
        .iter()
        .enumerate()
        .map(|(row, &m)| {
            let l = f64::from(out.lambda[(row / n) % h]);
            let m = f64::from(m);
            (l * m / (1.0 + l * m)) as f32
        })
        .collect();
    let row_shape = dims.row_shape();
    let d = PyDict::new(py);
    let refined = Host::new(out.refined.data, full_shape.clone());
    d.set_item("refined", refined.into_numpy(py)?)?;
    let mass = Host::new(out.mass.data, row_shape.clone());
    d.set_item("m", mass.into_numpy(py)?)?;
    d.set_item("gtd", Host::new(gtd, row_shape).into_numpy(py)?)?;
    if let Some(msg) = out.messages {
        d.set_item("messages", Host::new(msg.data, full_shape).into_numpy(py)?)?;
    }
    Ok(d)
}

/// A `ValueError` naming the first weight above the diagonal of a map
/// claimed to be causal.
fn check_causal(a: &Host, n: usize) -> PyResult<()> {
    for (idx, &x) in a.data.iter().enumerate() {
        let (i, j) = ((idx / n) % n, idx % n);
        if j > i && x != 0.0 {
            return Err(PyValueError::new_err(format!(
                "causal=True but map {} has A[{i}, {j}] = {x} above the diagonal",
                idx / (n * n)
            )));
        }
    }
    Ok(())
}

/// Per-row metrics of attention maps `P` `[..., N, N]` from any source,
/// rows stochastic (or all zero), as the spec defines them.
///
/// - `causal`: `P` was computed with a causal mask (this sets `n_i`, the
///   number of keys row `i` may attend).
/// - `key_mask`: 1 keep / 0 masked, `[..., N]` without the head dimension
///   (e.g. `[B, N]` for `P` `[B, H, N, N]`), or anything that broadcasts to
///   it. Sets `n_i` and which rows count (see `weight`).
/// - `lam`: report GTD at this λ (number or one per head); default 1, as
///   the spec reports a plain map.
/// - `gpu`: a `saobp.Gpu`; default: `saobp.default_gpu()`.
///
/// Returns a dict of float32 arrays `[..., N]`, one per name of
/// `saobp.METRIC_NAMES`: `entropy` (nats), `normalized_entropy`,
/// `sparsity`, `peak`, `distance`, `multi_hop_mass` (`m` of `P` itself),
/// `gtd` and `weight` (1 where the row counts in summaries: query not
/// padded and at least one valid key).
#[pyfunction]
#[pyo3(signature = (p, causal = false, key_mask = None, lam = None, gpu = None))]
fn metrics<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    causal: bool,
    key_mask: Option<&Bound<'py, PyAny>>,
    lam: Option<&Bound<'py, PyAny>>,
    gpu: Option<&Bound<'py, PyGpu>>,
) -> PyResult<Bound<'py, PyDict>> {
    metrics_of(py, p, None, causal, key_mask, lam, gpu)
}

/// The metrics of refined maps `R` `[..., N, N]`, made from attention maps
/// `A` of the same shape (e.g. `refine_map(A, lam)["refined"]`), as the
/// spec defines them: `R`'s own entropy, normalized entropy, sparsity, peak
/// and distance, with `A`'s multi-hop mass `m` and the GTD at `lam`,
/// `λm/(1 + λm)`. (`metrics(R)` would report `R`'s own two-hop mass.)
///
/// `causal`, `key_mask` and `gpu` as for `metrics`; `lam` should be the λ
/// `R` was refined with (default 1).
///
/// Returns the same dict as `metrics`.
#[pyfunction]
#[pyo3(signature = (a, r, causal = false, key_mask = None, lam = None, gpu = None))]
fn refined_metrics<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    r: &Bound<'py, PyAny>,
    causal: bool,
    key_mask: Option<&Bound<'py, PyAny>>,
    lam: Option<&Bound<'py, PyAny>>,
    gpu: Option<&Bound<'py, PyGpu>>,
) -> PyResult<Bound<'py, PyDict>> {
    metrics_of(py, r, Some(a), causal, key_mask, lam, gpu)
}

/// `metrics` of `p`, or with `mass_of` (`A` of the same shape) the metrics
/// of `p` as `R` refined from it.
fn metrics_of<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    mass_of: Option<&Bound<'py, PyAny>>,
    causal: bool,
    key_mask: Option<&Bound<'py, PyAny>>,
    lam: Option<&Bound<'py, PyAny>>,
    gpu: Option<&Bound<'py, PyGpu>>,
) -> PyResult<Bound<'py, PyDict>> {
    let name = if mass_of.is_some() { "R" } else { "P" };
    let mut host = convert::float_array(p, name)?;
    let dims = MapDims::of(&host.shape, name)?;
    let a = match mass_of {
        Some(a) => {
            let mut a = convert::float_array(a, "A")?;
            if a.shape != host.shape {
                return Err(PyValueError::new_err(format!(
                    "shape error: A has shape {:?} and R {:?}; they must be the same",
                    a.shape, host.shape
                )));
            }
            a.shape = dims.library_shape();
            Some(a)
        }
        None => None,
    };
    host.shape = dims.library_shape();
    let mask = match key_mask {
        Some(m) => {
            let target = dims.mask_shape();
            let broadcast = py
                .import("numpy")?
                .call_method1("broadcast_to", (m, PyTuple::new(py, &target)?))
                .map_err(|e| {
                    PyValueError::new_err(format!(
                        "shape error: key_mask must broadcast to {target:?} (P's leading \
                         dimensions without the heads, then N): {e}"
                    ))
                })?;
            let mut mask = convert::mask_array(&broadcast, "key_mask")?;
            mask.shape = vec![dims.b, dims.n];
            Some(mask)
        }
        None => None,
    };
    let lambda = lam.map(convert::lambda).transpose()?;
    let gpu = gpu::resolve(py, gpu)?;
    let out = on_gpu(py, gpu, move |g| match &a {
        Some(a) => run::refined_metrics(g, a, &host, causal, mask.as_ref(), lambda.as_ref()),
        None => run::metrics(g, &host, causal, mask.as_ref(), lambda.as_ref()),
    })?;
    rows_dict(py, out.rows, Some(&dims.row_shape()))
}

/// Attention, its one-step belief-propagation refinement (SAOBP) and
/// attention metrics on the GPU, on numpy arrays.
#[pymodule]
#[pyo3(name = "_saobp")]
fn saobp_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    m.add_function(wrap_pyfunction!(refine_map, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_function(wrap_pyfunction!(refined_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(gpu::adapters, m)?)?;
    m.add_function(wrap_pyfunction!(gpu::default_gpu_py, m)?)?;
    m.add_class::<PyGpu>()?;
    m.add("GpuError", m.py().get_type::<GpuError>())?;
    m.add("METRIC_NAMES", PyTuple::new(m.py(), METRIC_NAMES)?)?;
    let modes: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
    m.add("MODES", PyTuple::new(m.py(), modes)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
