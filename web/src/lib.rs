//! The saobp library in the browser: WebAssembly on WebGPU.
//!
//! What the demo page (`web/index.html`, `web/main.js`) calls:
//!
//! - [`Demo::create`] opens the browser's WebGPU adapter (async, like every
//!   GPU call on the web: nothing here blocks);
//! - [`Demo::run`] builds a synthetic workload, runs attention and SAOBP with
//!   metrics, and returns every head's summaries before and after, with
//!   timings; it keeps every head's `A` and `R` on the GPU;
//! - [`Demo::head`] reads one head's `A` and `R` of the last run back (only
//!   that head's block), so showing another head recomputes nothing;
//! - [`Demo::selftest`] runs a fixed workload and checks it against the
//!   float64 CPU reference compiled into the same module ([`selftest`]).

use std::cell::RefCell;
use std::rc::Rc;

use saobp::workload::{synthetic, Pattern};
use saobp::{attention, AttentionOptions, Gpu, GpuOptions, Lambda, Mode, Tensor};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

pub mod selftest;

/// Largest sizes the demo accepts: N = 1024 is what the page offers; the
/// caps keep a mistyped call from asking the GPU for gigabytes.
const MAX_N: usize = 2048;
const MAX_HEADS: usize = 64;
const MAX_D: usize = 256;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// Runs when the module is instantiated: a Rust panic becomes a console
/// message and `globalThis.saobpPanic`, so the page can show it instead of a
/// bare "unreachable" trap.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("saobp panicked: {info}");
        console_error(&message);
        let _ = js_sys::Reflect::set(
            &js_sys::global(),
            &JsValue::from_str("saobpPanic"),
            &JsValue::from_str(&message),
        );
    }));
}

/// Milliseconds since the page loaded (`performance.now()`).
pub(crate) fn now_ms() -> f64 {
    performance_now()
}

pub(crate) fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The heads' patterns from the page's choice: `mixed` cycles through all four.
pub(crate) fn patterns(choice: &str) -> Result<Vec<Pattern>, String> {
    let all = [
        Pattern::Diffuse,
        Pattern::Local,
        Pattern::Sink,
        Pattern::Collapsed,
    ];
    if choice == "mixed" {
        return Ok(all.to_vec());
    }
    all.iter()
        .find(|p| p.name() == choice)
        .map(|p| vec![*p])
        .ok_or_else(|| {
            format!("unknown pattern `{choice}`: expected mixed, diffuse, local, sink or collapsed")
        })
}

/// A WebGPU context for the page.
#[wasm_bindgen]
pub struct Demo {
    gpu: Rc<Gpu>,
    /// `A` and `R` of the last run, kept on the GPU: showing another head
    /// reads that head's block back and recomputes nothing.
    last: Rc<RefCell<Option<Maps>>>,
}

/// Every head's `A` and `R` from one run, `[1, heads, n, n]` each.
struct Maps {
    n: usize,
    heads: usize,
    attention: Tensor,
    refined: Tensor,
}

#[wasm_bindgen]
impl Demo {
    /// Opens the browser's WebGPU adapter. Fails with a readable message when
    /// the browser has no WebGPU (`navigator.gpu` missing or no adapter).
    pub async fn create() -> Result<Demo, JsValue> {
        let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_error)?;
        Ok(Demo {
            gpu: Rc::new(gpu),
            last: Rc::new(RefCell::new(None)),
        })
    }

    /// The adapter's name as WebGPU reports it (often empty in browsers,
    /// which hide it; the page then shows the adapter info it reads itself).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.gpu.adapter().name.clone()
    }

    /// The adapter as one line: name, backend and device type.
    #[wasm_bindgen(getter, js_name = adapterDetails)]
    pub fn adapter_details(&self) -> String {
        let a = self.gpu.adapter();
        format!("{} [{:?}, {:?}]", a.name, a.backend, a.device_type)
    }

    /// Runs one workload: `heads` synthetic heads of `n` tokens and width
    /// `d`, pattern `pattern` (`mixed`, `diffuse`, `local`, `sink`,
    /// `collapsed`), scores sharpened by `temperature`, SAOBP with strength
    /// `lambda`. Resolves to a [`RunResult`] with every head's summaries; the
    /// maps stay on the GPU for [`Demo::head`] until the next run.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        n: usize,
        heads: usize,
        d: usize,
        temperature: f32,
        lambda: f32,
        causal: bool,
        pattern: String,
        seed: u32,
    ) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let last = self.last.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let settings = RunSettings {
                n,
                heads,
                d,
                temperature,
                lambda,
                causal,
                pattern,
                seed: u64::from(seed),
            };
            run_workload(&gpu, &last, &settings)
                .await
                .map(JsValue::from)
                .map_err(js_error)
        })
    }

    /// Reads head `head`'s `A` and `R` of the last run back, without
    /// computing anything again. Resolves to a [`HeadMaps`]; fails when no
    /// run has finished or the head does not exist.
    pub fn head(&self, head: usize) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let last = self.last.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            read_head(&gpu, &last, head)
                .await
                .map(JsValue::from)
                .map_err(js_error)
        })
    }

    /// The self-test: a fixed workload against the float64 reference.
    /// Resolves to the report as a JSON string (see [`selftest::run`]).
    pub fn selftest(&self) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            selftest::run(&gpu)
                .await
                .map(|report| JsValue::from_str(&report.to_string()))
                .map_err(js_error)
        })
    }
}

/// What the page asks [`Demo::run`] for.
struct RunSettings {
    n: usize,
    heads: usize,
    d: usize,
    temperature: f32,
    lambda: f32,
    causal: bool,
    pattern: String,
    seed: u64,
}

/// The outcome of [`Demo::run`].
#[wasm_bindgen]
pub struct RunResult {
    n: usize,
    heads: usize,
    summaries: String,
    workload_ms: f64,
    gpu_ms: f64,
}

#[wasm_bindgen]
impl RunResult {
    /// Tokens per head.
    #[wasm_bindgen(getter)]
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of heads.
    #[wasm_bindgen(getter)]
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Per-head summaries of `A` and `R` and their means, as JSON (each
    /// summary as [`HeadSummary`] serializes).
    #[wasm_bindgen(getter)]
    pub fn summaries(&self) -> String {
        self.summaries.clone()
    }

    /// Time to generate Q, K, V on the CPU and upload them (ms).
    #[wasm_bindgen(getter, js_name = workloadMs)]
    pub fn workload_ms(&self) -> f64 {
        self.workload_ms
    }

    /// Time of attention, SAOBP and metrics on the GPU, summaries read back (ms).
    #[wasm_bindgen(getter, js_name = gpuMs)]
    pub fn gpu_ms(&self) -> f64 {
        self.gpu_ms
    }
}

/// One head's maps from [`Demo::head`].
#[wasm_bindgen]
pub struct HeadMaps {
    n: usize,
    head: usize,
    attention: Vec<f32>,
    refined: Vec<f32>,
    readback_ms: f64,
}

#[wasm_bindgen]
impl HeadMaps {
    /// Tokens per head.
    #[wasm_bindgen(getter)]
    pub fn n(&self) -> usize {
        self.n
    }

    /// The head these maps belong to.
    #[wasm_bindgen(getter)]
    pub fn head(&self) -> usize {
        self.head
    }

    /// `A` of the head, N×N row-major (a copy, as a `Float32Array`).
    #[wasm_bindgen(getter)]
    pub fn attention(&self) -> Vec<f32> {
        self.attention.clone()
    }

    /// `R` of the head, N×N row-major.
    #[wasm_bindgen(getter)]
    pub fn refined(&self) -> Vec<f32> {
        self.refined.clone()
    }

    /// Time to read the two maps back (ms).
    #[wasm_bindgen(getter, js_name = readbackMs)]
    pub fn readback_ms(&self) -> f64 {
        self.readback_ms
    }
}

async fn run_workload(
    gpu: &Gpu,
    last: &RefCell<Option<Maps>>,
    s: &RunSettings,
) -> Result<RunResult, String> {
    if !(1..=MAX_N).contains(&s.n) || !(1..=MAX_HEADS).contains(&s.heads) {
        return Err(format!(
            "N must be in 1..={MAX_N} and heads in 1..={MAX_HEADS}, got N = {} and {} heads",
            s.n, s.heads
        ));
    }
    if !(1..=MAX_D).contains(&s.d) {
        return Err(format!("d must be in 1..={MAX_D}, got {}", s.d));
    }
    if !(s.temperature.is_finite() && s.temperature >= 0.0) {
        return Err(format!(
            "temperature must be finite and >= 0, got {}",
            s.temperature
        ));
    }
    let patterns = patterns(&s.pattern)?;
    let err = |e: saobp::Error| e.to_string();
    // The previous maps go back to the pool before the new ones are made.
    *last.borrow_mut() = None;

    let start = now_ms();
    let shape = [1, s.heads, s.n, s.d];
    let w = synthetic(shape, &patterns, s.temperature, s.seed);
    let q = Tensor::from_slice(gpu, &shape, &w.q).map_err(err)?;
    let k = Tensor::from_slice(gpu, &shape, &w.k).map_err(err)?;
    let v = Tensor::from_slice(gpu, &shape, &w.v).map_err(err)?;
    let uploaded = now_ms();

    let opts = AttentionOptions {
        causal: s.causal,
        lambda: Lambda::Scalar(s.lambda),
        mode: Mode::Fused,
        return_attention: true,
        return_refined: true,
        metrics: true,
        ..Default::default()
    };
    let out = attention(gpu, &q, &k, &v, &opts).await.map_err(err)?;
    let computed = now_ms();

    let (Some(a), Some(r), Some(metrics)) = (out.attention, out.refined, &out.metrics) else {
        return Err("the attention call returned no maps or metrics".to_string());
    };
    let Some(refined_metrics) = &metrics.refined else {
        return Err("the attention call returned no metrics of R".to_string());
    };
    let heads: Vec<Value> = (0..s.heads)
        .map(|h| {
            json!({
                "head": h,
                "pattern": w.patterns.get(h).map_or("?", |p| p.name()),
                "attention": metrics.attention.head(0, h).copied().unwrap_or_default(),
                "refined": refined_metrics.head(0, h).copied().unwrap_or_default(),
            })
        })
        .collect();
    let summaries = json!({
        "heads": heads,
        "overall": {
            "attention": metrics.attention.overall(),
            "refined": refined_metrics.overall(),
        },
    });
    *last.borrow_mut() = Some(Maps {
        n: s.n,
        heads: s.heads,
        attention: a,
        refined: r,
    });
    Ok(RunResult {
        n: s.n,
        heads: s.heads,
        summaries: summaries.to_string(),
        workload_ms: uploaded - start,
        gpu_ms: computed - uploaded,
    })
}

async fn read_head(
    gpu: &Gpu,
    last: &RefCell<Option<Maps>>,
    head: usize,
) -> Result<HeadMaps, String> {
    // Clones share the buffers; the borrow ends before the first await.
    let (n, heads, a, r) = match &*last.borrow() {
        Some(m) => (m.n, m.heads, m.attention.clone(), m.refined.clone()),
        None => return Err("no run has finished yet: there are no maps to show".to_string()),
    };
    if head >= heads {
        return Err(format!(
            "head {head} does not exist: the last run had {heads} heads"
        ));
    }
    let err = |e: saobp::Error| e.to_string();
    let start = now_ms();
    let block = head * n * n..(head + 1) * n * n;
    let attention = a.to_vec_range(gpu, block.clone()).await.map_err(err)?;
    let refined = r.to_vec_range(gpu, block).await.map_err(err)?;
    Ok(HeadMaps {
        n,
        head,
        attention,
        refined,
        readback_ms: now_ms() - start,
    })
}
