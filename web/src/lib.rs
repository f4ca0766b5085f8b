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
//! - [`Demo::load_model`] builds a BERT-family model (all-MiniLM-L6-v2) from
//!   the files the page fetched; [`Demo::analyze`] runs it on typed text
//!   and keeps every layer's `A` on the GPU, and [`Demo::refine`] reruns
//!   only SAOBP on those maps for another λ ([`model`]);
//! - [`Demo::trainer`] builds a character GPT on a text the page fetched,
//!   which the training tab steps, evaluates and samples ([`train`]);
//! - [`Demo::selftest`] runs a fixed workload and checks it against the
//!   float64 CPU reference compiled into the same module, then runs the
//!   model on fixed sentences and trains a very small GPT a few steps
//!   ([`selftest`]).

use std::cell::RefCell;
use std::rc::Rc;

use model::{Loaded, PlainRun};
use saobp::workload::{synthetic, Pattern};
use saobp::{attention, AttentionOptions, Gpu, GpuOptions, Lambda, Mode, Tensor};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

pub mod model;
pub mod selftest;
pub mod train;

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
    /// The model, once [`Demo::load_model`] has built it.
    model: Rc<RefCell<Option<Rc<Loaded>>>>,
    /// The plain model's pass over each text of the last analysis, its `A`
    /// maps kept on the GPU for [`Demo::refine`].
    texts: Rc<RefCell<Vec<Rc<PlainRun>>>>,
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
            model: Rc::new(RefCell::new(None)),
            texts: Rc::new(RefCell::new(Vec::new())),
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

    /// The self-test: a fixed workload against the float64 reference, then
    /// the model on fixed sentences. Resolves to the report as a JSON string
    /// (see [`selftest::run`]).
    /// The model's part runs on the model [`Demo::load_model`] built; without
    /// one the self-test fails.
    pub fn selftest(&self) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let model = self.model.borrow().clone();
        wasm_bindgen_futures::future_to_promise(async move {
            selftest::run(&gpu, model.as_deref())
                .await
                .map(|report| JsValue::from_str(&report.to_string()))
                .map_err(js_error)
        })
    }
}

#[wasm_bindgen]
impl Demo {
    /// A training run of the spec's character GPT on `text`, with the
    /// settings as JSON (`layers`, `heads`, `embd`, `block`, `batch`,
    /// `steps`, `lr`, `lambda`, `learn_lambda`, `seed`, `eval_windows`; see
    /// [`train::Settings`]). The model is initialized from the seed, so two
    /// runs differing only in λ start from the same weights.
    pub fn trainer(&self, text: &str, settings: &str) -> Result<train::TrainRun, JsValue> {
        train::TrainRun::new(self.gpu.clone(), text, settings)
    }
}

#[wasm_bindgen]
impl Demo {
    /// Builds the model from the files the page fetched: the text of
    /// `config.json`, the bytes of `model.safetensors` and `tokenizer.json`,
    /// and the text of `sentence_bert_config.json` if the model has one.
    /// Returns the model's shape as JSON (`layers`, `heads`, `hidden`,
    /// `vocabulary`) with `upload_ms`, the time to check and upload the
    /// weights. Replaces any model loaded before.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(
        &self,
        config_json: &str,
        weights: &[u8],
        tokenizer_json: &[u8],
        sentence_config: Option<String>,
    ) -> Result<String, JsValue> {
        // The old model's buffers go back before the new ones are made.
        *self.model.borrow_mut() = None;
        self.texts.borrow_mut().clear();
        let start = now_ms();
        let loaded = Loaded::from_bytes(
            &self.gpu,
            config_json,
            weights,
            tokenizer_json,
            sentence_config.as_deref(),
        )
        .map_err(js_error)?;
        let mut info = loaded.describe();
        info["upload_ms"] = json!(now_ms() - start);
        *self.model.borrow_mut() = Some(Rc::new(loaded));
        Ok(info.to_string())
    }

    /// Runs the model on one or two texts: tokens, the plain forward pass
    /// keeping every layer's `A`, SAOBP of strength `lambda` on those maps,
    /// and, for two texts, the cosine of their sentence embeddings without
    /// and with SAOBP inside the model. Resolves to a [`ModelResult`] with
    /// every map read back.
    pub fn analyze(&self, texts: Vec<String>, lambda: f32) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let model = self.model.borrow().clone();
        let kept = self.texts.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(model) = model else {
                return Err(js_error("the model is not loaded yet"));
            };
            analyze(&gpu, &model, &kept, &texts, lambda)
                .await
                .map(JsValue::from)
                .map_err(js_error)
        })
    }

    /// Reruns only SAOBP, with strength `lambda`, on the `A` maps the last
    /// [`Demo::analyze`] kept (and the embeddings with SAOBP, for two
    /// texts). Resolves to a [`ModelResult`] without `A` (unchanged).
    pub fn refine(&self, lambda: f32) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let model = self.model.borrow().clone();
        let runs = self.texts.borrow().clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(model) = model else {
                return Err(js_error("the model is not loaded yet"));
            };
            if runs.is_empty() {
                return Err(js_error("no text has been analysed yet"));
            }
            refine_texts(&gpu, &model, &runs, lambda, None)
                .await
                .map(JsValue::from)
                .map_err(js_error)
        })
    }
}

/// The outcome of [`Demo::analyze`] or [`Demo::refine`].
#[wasm_bindgen]
pub struct ModelResult {
    summary: String,
    attention: Vec<Vec<f32>>,
    refined: Vec<Vec<f32>>,
}

#[wasm_bindgen]
impl ModelResult {
    /// As JSON: `lambda`; per text its `text`, `tokens`, `ids` and `layers`
    /// (per layer the mean over heads of `A`'s and `R`'s summaries, and
    /// each head's under `heads`); `cosine` (`plain` and `saobp`, or null
    /// for one text); and `timings` in ms (`tokenize`, `forward`, `saobp`,
    /// `readback`: the stages this call ran; `saobp` splits into
    /// `saobp_maps`, SAOBP and metrics on the kept maps, and
    /// `saobp_embeddings`, the model with SAOBP inside for two texts).
    #[wasm_bindgen(getter)]
    pub fn summary(&self) -> String {
        self.summary.clone()
    }

    /// `A` of text `text`, every layer and head: `[L, H, N, N]` row-major
    /// (empty after [`Demo::refine`], which leaves `A` as it was).
    pub fn attention(&self, text: usize) -> Vec<f32> {
        self.attention.get(text).cloned().unwrap_or_default()
    }

    /// `R` of text `text`, `[L, H, N, N]` row-major.
    pub fn refined(&self, text: usize) -> Vec<f32> {
        self.refined.get(text).cloned().unwrap_or_default()
    }
}

async fn analyze(
    gpu: &Gpu,
    loaded: &Loaded,
    kept: &RefCell<Vec<Rc<PlainRun>>>,
    texts: &[String],
    lambda: f32,
) -> Result<ModelResult, String> {
    if texts.is_empty() || texts.len() > 2 {
        return Err(format!("one or two texts, not {}", texts.len()));
    }
    model::check_lambda(lambda)?;
    kept.borrow_mut().clear();
    let start = now_ms();
    let encoded = texts
        .iter()
        .map(|t| loaded.encode(t))
        .collect::<Result<Vec<_>, _>>()?;
    let tokenized = now_ms();
    let mut runs = Vec::new();
    for e in encoded {
        runs.push(Rc::new(model::plain(gpu, &loaded.model, e).await?));
    }
    let forward_ms = now_ms() - tokenized;
    let readback = now_ms();
    let mut attention = Vec::new();
    for run in &runs {
        attention.push(model::read_all(gpu, &run.attention).await?);
    }
    let readback_ms = now_ms() - readback;
    *kept.borrow_mut() = runs.clone();
    let mut result = refine_texts(gpu, loaded, &runs, lambda, Some(texts)).await?;
    result.attention = attention;
    let mut summary: Value = serde_json::from_str(&result.summary).map_err(|e| e.to_string())?;
    summary["timings"]["tokenize"] = json!(tokenized - start);
    summary["timings"]["forward"] = json!(forward_ms);
    let total = summary["timings"]["readback"].as_f64().unwrap_or(0.0) + readback_ms;
    summary["timings"]["readback"] = json!(total);
    result.summary = summary.to_string();
    Ok(result)
}

/// SAOBP on the kept maps of `runs` (and the embeddings with SAOBP for two
/// texts), every `R` read back. `texts` names the texts in the summary.
async fn refine_texts(
    gpu: &Gpu,
    loaded: &Loaded,
    runs: &[Rc<PlainRun>],
    lambda: f32,
    texts: Option<&[String]>,
) -> Result<ModelResult, String> {
    let start = now_ms();
    let mut refinements = Vec::new();
    for run in runs {
        refinements.push(model::refine(gpu, run, lambda).await?);
    }
    let maps_ms = now_ms() - start;
    let cosine = match runs {
        [a, b] => {
            let ea = model::saobp_embedding(gpu, &loaded.model, &a.encoded, lambda).await?;
            let eb = model::saobp_embedding(gpu, &loaded.model, &b.encoded, lambda).await?;
            json!({
                "plain": model::cosine(&a.embedding, &b.embedding),
                "saobp": model::cosine(&ea, &eb),
            })
        }
        _ => Value::Null,
    };
    let saobp_ms = now_ms() - start;
    let readback = now_ms();
    let mut refined = Vec::new();
    for r in &refinements {
        refined.push(model::read_all(gpu, &r.refined).await?);
    }
    let readback_ms = now_ms() - readback;
    let texts_json: Vec<Value> = runs
        .iter()
        .zip(&refinements)
        .enumerate()
        .map(|(i, (run, r))| {
            json!({
                "text": texts.and_then(|t| t.get(i)),
                "tokens": run.encoded.tokens,
                "ids": run.encoded.ids,
                "layers": model::layers_json(&run.summaries, &r.summaries, true),
            })
        })
        .collect();
    let summary = json!({
        "lambda": lambda,
        "texts": texts_json,
        "cosine": cosine,
        "timings": {
            "saobp": saobp_ms,
            "saobp_maps": maps_ms,
            "saobp_embeddings": saobp_ms - maps_ms,
            "readback": readback_ms,
        },
    });
    Ok(ModelResult {
        summary: summary.to_string(),
        attention: Vec::new(),
        refined,
    })
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
