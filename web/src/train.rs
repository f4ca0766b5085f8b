//! The page's training tab: the spec's character GPT trained in the browser
//! by the library's own loop ([`saobp::model::Trainer`], the one
//! `saobp train` runs), with evaluations ([`saobp::model::evaluate`],
//! [`saobp::model::layer_stats`]) and samples ([`saobp::model::generate`]).
//!
//! The page keeps two [`TrainRun`]s, λ = 0 and λ > 0, and steps them in
//! turn. Every call is async and one call runs at a time per run: a second
//! call while one is in flight fails with "busy" instead of interleaving GPU
//! work on the same buffers.
//!
//! [`selftest`] is the self-test's training part: a very small GPT trained a
//! few steps from a fixed seed, its losses and final parameters reported so
//! that `tests/web_parity.rs` can train the same natively and compare.

use std::cell::RefCell;
use std::rc::Rc;

use saobp::data::{Corpus, Split};
use saobp::model::{
    evaluate, generate, layer_stats, Gpt, GptConfig, Sampling, TrainOptions, Trainer,
};
use saobp::Gpu;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::{js_error, now_ms};

/// Largest sizes the page accepts: the spec's `tiny` preset is L = 4, H = 4,
/// C = 128, T = 64, batch 12; the caps keep a mistyped URL from asking the
/// GPU for gigabytes.
const MAX_LAYERS: usize = 12;
const MAX_EMBD: usize = 768;
const MAX_BLOCK: usize = 512;
const MAX_BATCH: usize = 128;

/// A run's settings, as the page passes them (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Layers `L`.
    pub layers: usize,
    /// Heads per layer `H`.
    pub heads: usize,
    /// Width `C`.
    pub embd: usize,
    /// Context `T`.
    pub block: usize,
    /// Windows per step.
    pub batch: usize,
    /// Length of the learning-rate schedule.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// λ of every head; 0 trains plain GPT-2 (no λ tensors at all).
    pub lambda: f32,
    /// Whether λ is learned (only with λ > 0).
    pub learn_lambda: bool,
    /// Seed of the initialization and of the batches.
    pub seed: u64,
    /// Windows of each split per evaluation.
    pub eval_windows: usize,
}

impl Settings {
    /// Parses the page's JSON; every field is required.
    pub fn from_json(json: &str) -> Result<Settings, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("settings: {e}"))?;
        let uint = |key: &str| -> Result<usize, String> {
            v[key]
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| format!("settings: `{key}` must be a whole number >= 0"))
        };
        let float = |key: &str| -> Result<f64, String> {
            v[key]
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("settings: `{key}` must be a finite number"))
        };
        let s = Settings {
            layers: uint("layers")?,
            heads: uint("heads")?,
            embd: uint("embd")?,
            block: uint("block")?,
            batch: uint("batch")?,
            steps: uint("steps")?,
            lr: float("lr")?,
            lambda: float("lambda")? as f32,
            learn_lambda: v["learn_lambda"]
                .as_bool()
                .ok_or("settings: `learn_lambda` must be true or false")?,
            seed: v["seed"]
                .as_u64()
                .ok_or("settings: `seed` must be a whole number >= 0")?,
            eval_windows: uint("eval_windows")?,
        };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        let within = |name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(format!("{name} must be between 1 and {max}, got {v}"))
            } else {
                Ok(())
            }
        };
        within("layers", self.layers, MAX_LAYERS)?;
        within("width", self.embd, MAX_EMBD)?;
        within("heads", self.heads, self.embd)?;
        within("context", self.block, MAX_BLOCK)?;
        within("batch", self.batch, MAX_BATCH)?;
        within("evaluation windows", self.eval_windows, MAX_BATCH)?;
        if !self.embd.is_multiple_of(self.heads) {
            return Err(format!(
                "the width {} must be a multiple of the heads {}",
                self.embd, self.heads
            ));
        }
        if self.steps == 0 {
            return Err("steps must be >= 1".into());
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            return Err(format!(
                "the learning rate must be in (0, 1], got {}",
                self.lr
            ));
        }
        if !(self.lambda >= 0.0 && self.lambda <= 100.0) {
            return Err(format!("λ must be between 0 and 100, got {}", self.lambda));
        }
        if self.learn_lambda && self.lambda == 0.0 {
            return Err("a learned λ needs a starting λ > 0".into());
        }
        Ok(())
    }

    fn config(&self, vocab: usize) -> GptConfig {
        GptConfig {
            vocab_size: vocab,
            n_positions: self.block,
            n_embd: self.embd,
            n_layer: self.layers,
            n_head: self.heads,
            layer_norm_epsilon: 1e-5,
        }
    }

    fn options(&self) -> TrainOptions {
        TrainOptions {
            seed: self.seed,
            batch: self.batch,
            micro_batch: self.batch,
            steps: self.steps,
            lr: self.lr,
            learn_lambda: self.learn_lambda,
        }
    }
}

/// A model, its optimizer and its corpus, built on the GPU.
pub struct Run {
    trainer: Trainer,
    corpus: Corpus,
    settings: Settings,
    /// The fixed evaluation windows of each split (`Corpus::windows`).
    train_windows: (Vec<u32>, Vec<u32>),
    val_windows: (Vec<u32>, Vec<u32>),
}

impl Run {
    /// The model initialized from the settings' seed, on `text`'s
    /// characters. Fails when the text is too short for the context and the
    /// evaluation windows, or the model does not fit the GPU.
    pub fn new(gpu: &Gpu, text: &str, settings: Settings) -> Result<Run, String> {
        let err = |e: saobp::Error| e.to_string();
        let corpus = Corpus::from_text(text).map_err(err)?;
        let t = settings.block;
        for split in [Split::Train, Split::Val] {
            corpus.check_len(split, t).map_err(err)?;
        }
        let train_windows = corpus
            .windows(Split::Train, t, settings.eval_windows)
            .map_err(err)?;
        let val_windows = corpus
            .windows(Split::Val, t, settings.eval_windows)
            .map_err(err)?;
        let config = settings.config(corpus.vocab().len());
        let lambda = (settings.lambda > 0.0)
            .then(|| vec![vec![settings.lambda; settings.heads]; settings.layers]);
        let model = Gpt::init(gpu, config, settings.seed, lambda.as_deref()).map_err(err)?;
        let trainer = Trainer::new(gpu, model, settings.options()).map_err(err)?;
        Ok(Run {
            trainer,
            corpus,
            settings,
            train_windows,
            val_windows,
        })
    }

    /// Trains `count` steps (fewer at the schedule's end); returns their
    /// losses. A non-finite loss stops here with an error naming the step.
    pub async fn steps(&mut self, gpu: &Gpu, count: usize) -> Result<Vec<f32>, String> {
        let count = count.min(self.settings.steps);
        let mut losses = Vec::with_capacity(count);
        while losses.len() < count && self.trainer.step() < self.settings.steps {
            let step = self.trainer.step();
            let r = self
                .trainer
                .train_step(gpu, &self.corpus)
                .await
                .map_err(|e| e.to_string())?;
            if !r.applied {
                return Err(format!(
                    "step {step}: the loss is {} and the gradient norm {}; training stopped",
                    r.loss, r.grad_norm
                ));
            }
            losses.push(r.loss);
        }
        Ok(losses)
    }

    /// The losses of both splits on their fixed windows, and each layer's
    /// entropy and GTD of `A` and `R` on the first validation windows, as
    /// `saobp train` records them (`metrics.jsonl`); `lr` is the next
    /// step's learning rate.
    pub async fn evaluate(&self, gpu: &Gpu) -> Result<Value, String> {
        let err = |e: saobp::Error| e.to_string();
        let (model, t) = (self.trainer.model(), self.settings.block);
        let (w, chunk) = (self.settings.eval_windows, self.settings.batch);
        let (x, y) = &self.train_windows;
        let train = evaluate(gpu, model, (x, y), w, t, chunk, false)
            .await
            .map_err(err)?;
        let (x, y) = &self.val_windows;
        let val = evaluate(gpu, model, (x, y), w, t, chunk, false)
            .await
            .map_err(err)?;
        let layers = layer_stats(gpu, model, x, chunk.min(w), t)
            .await
            .map_err(err)?;
        let layers: Vec<Value> = layers
            .iter()
            .map(|l| {
                json!({
                    "entropy_a": l.entropy_a,
                    "entropy_r": l.entropy_r,
                    "gtd_a": l.gtd_a,
                    "gtd_r": l.gtd_r,
                    "lambda": l.lambda,
                })
            })
            .collect();
        Ok(json!({
            "step": self.trainer.step(),
            "train_loss": train.loss,
            "val_loss": val.loss,
            "lr": self.trainer.lr(),
            "layers": layers,
        }))
    }

    /// `tokens` characters after `prompt`, sampled at `temperature` among
    /// the 40 most likely. The prompt's characters outside the corpus's
    /// vocabulary are dropped (all of them: the corpus's first character
    /// stands in). Returns the prompt used and the sample, as one text.
    pub async fn sample(
        &self,
        gpu: &Gpu,
        prompt: &str,
        tokens: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<String, String> {
        let err = |e: saobp::Error| e.to_string();
        let vocab = self.corpus.vocab();
        let mut used: String = prompt
            .chars()
            .filter(|c| vocab.chars().contains(c))
            .collect();
        if used.is_empty() {
            used = vocab
                .chars()
                .first()
                .map(|c| c.to_string())
                .unwrap_or_default();
        }
        let ids = vocab.encode(&used).map_err(err)?;
        let sampling = Sampling {
            temperature,
            top_k: Some(40),
            seed,
        };
        let out = generate(gpu, self.trainer.model(), &ids, tokens, sampling)
            .await
            .map_err(err)?;
        Ok(used + &vocab.decode(&out).map_err(err)?)
    }
}

/// A training run for the page (see the module's documentation).
#[wasm_bindgen]
pub struct TrainRun {
    gpu: Rc<Gpu>,
    /// Taken out while a call runs: a second call meanwhile finds it empty.
    run: Rc<RefCell<Option<Run>>>,
    vocab: usize,
    parameters: usize,
}

impl TrainRun {
    pub(crate) fn new(gpu: Rc<Gpu>, text: &str, settings_json: &str) -> Result<TrainRun, JsValue> {
        let settings = Settings::from_json(settings_json).map_err(js_error)?;
        let run = Run::new(&gpu, text, settings).map_err(js_error)?;
        let vocab = run.corpus.vocab().len();
        let parameters = run
            .trainer
            .model()
            .parameters()
            .map(|(s, _)| s.shape.iter().product::<usize>())
            .sum();
        Ok(TrainRun {
            gpu,
            run: Rc::new(RefCell::new(Some(run))),
            vocab,
            parameters,
        })
    }

    /// Runs `f` on the run, taken out of its cell for the call's duration.
    fn with_run<F, Fut>(&self, f: F) -> js_sys::Promise
    where
        F: FnOnce(Rc<Gpu>, Run) -> Fut + 'static,
        Fut: std::future::Future<Output = (Run, Result<JsValue, String>)> + 'static,
    {
        let (gpu, cell) = (self.gpu.clone(), self.run.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(run) = cell.borrow_mut().take() else {
                return Err(js_error("busy: this run is still working on the last call"));
            };
            let (run, result) = f(gpu, run).await;
            *cell.borrow_mut() = Some(run);
            result.map_err(js_error)
        })
    }
}

#[wasm_bindgen]
impl TrainRun {
    /// Characters in the corpus's vocabulary.
    #[wasm_bindgen(getter)]
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Number of parameters of the model.
    #[wasm_bindgen(getter)]
    pub fn parameters(&self) -> usize {
        self.parameters
    }

    /// Trains up to `count` steps. Resolves to JSON: `step` (steps done),
    /// `losses` (one per step taken), `lr` (the next step's) and `ms`.
    pub fn step(&self, count: usize) -> js_sys::Promise {
        self.with_run(move |gpu, mut run| async move {
            let start = now_ms();
            let result = run.steps(&gpu, count).await.map(|losses| {
                JsValue::from_str(
                    &json!({
                        "step": run.trainer.step(),
                        "losses": losses,
                        "lr": run.trainer.lr(),
                        "ms": now_ms() - start,
                    })
                    .to_string(),
                )
            });
            (run, result)
        })
    }

    /// Evaluates the model (see [`Run::evaluate`]); resolves to its JSON
    /// with `ms`.
    pub fn evaluate(&self) -> js_sys::Promise {
        self.with_run(move |gpu, run| async move {
            let start = now_ms();
            let result = run.evaluate(&gpu).await.map(|mut v| {
                v["ms"] = json!(now_ms() - start);
                JsValue::from_str(&v.to_string())
            });
            (run, result)
        })
    }

    /// The prompt used and the text sampled after it (see [`Run::sample`]).
    /// The seed is a 32-bit number, so JavaScript passes a plain number.
    pub fn sample(
        &self,
        prompt: String,
        tokens: usize,
        temperature: f64,
        seed: u32,
    ) -> js_sys::Promise {
        self.with_run(move |gpu, run| async move {
            let result = run
                .sample(&gpu, &prompt, tokens, temperature, u64::from(seed))
                .await
                .map(|s| JsValue::from_str(&s));
            (run, result)
        })
    }
}

/// The self-test's training text: short lines of verse repeated, enough for
/// both splits at [`SELFTEST_SETTINGS`]' context.
pub const SELFTEST_TEXT: &str = "Shall I compare thee to a summer's day?\n\
Thou art more lovely and more temperate:\n\
Rough winds do shake the darling buds of May,\n\
And summer's lease hath all too short a date.\n";

/// Copies of [`SELFTEST_TEXT`] in the self-test's corpus.
pub const SELFTEST_REPEAT: usize = 6;

/// The self-test's runs: a very small GPT (so that SwiftShader trains it in
/// seconds), trained [`SELFTEST_STEPS`] steps plain and with λ learned.
pub const SELFTEST_SETTINGS: &str = r#"{"layers": 2, "heads": 2, "embd": 16, "block": 16,
    "batch": 4, "steps": 200, "lr": 0.03, "lambda": 0, "learn_lambda": false,
    "seed": 5, "eval_windows": 4}"#;

/// Steps of each self-test run.
pub const SELFTEST_STEPS: usize = 8;

/// Values of each parameter the report keeps (every `len / this`-th, from
/// the first), besides its norm.
pub const SELFTEST_SAMPLES: usize = 32;

/// λ of the self-test's second run, learned.
pub const SELFTEST_LAMBDA: f32 = 0.3;

/// The self-test's training part: the two runs of [`SELFTEST_SETTINGS`]
/// (λ = 0, and λ = [`SELFTEST_LAMBDA`] learned) trained [`SELFTEST_STEPS`]
/// steps each. Reports the text, the settings, and per run every step's
/// loss, the validation loss after the steps and every parameter's final
/// norm and a strided sample of its values. Checked here: every loss finite and the last below the first.
/// Returns the report's `training` object and the failures.
pub async fn selftest(gpu: &Gpu) -> Result<(Value, Vec<String>), String> {
    let text = SELFTEST_TEXT.repeat(SELFTEST_REPEAT);
    let base = Settings::from_json(SELFTEST_SETTINGS)?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for (lambda, learn) in [(0.0, false), (SELFTEST_LAMBDA, true)] {
        let settings = Settings {
            lambda,
            learn_lambda: learn,
            ..base.clone()
        };
        let mut run = Run::new(gpu, &text, settings.clone())?;
        let losses = run.steps(gpu, SELFTEST_STEPS).await?;
        let eval = run.evaluate(gpu).await?;
        let what = format!("training λ = {lambda}");
        match (losses.first(), losses.last()) {
            (Some(first), Some(last)) if last < first => {}
            _ => failures.push(format!("{what}: the loss did not fall: {losses:?}")),
        }
        let mut parameters = serde_json::Map::new();
        for (name, values) in run
            .trainer
            .model()
            .values(gpu)
            .await
            .map_err(|e| e.to_string())?
        {
            if values.iter().any(|v| !v.is_finite()) {
                failures.push(format!("{what}: {name} is not finite"));
            }
            // Every value's square in the norm; a strided sample of the
            // values themselves keeps the committed report small.
            let stride = values.len().div_ceil(SELFTEST_SAMPLES).max(1);
            let norm = values
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            let sample: Vec<f32> = values.iter().step_by(stride).copied().collect();
            parameters.insert(
                name,
                json!({ "len": values.len(), "stride": stride, "values": sample, "norm": norm }),
            );
        }
        runs.push(json!({
            "lambda": lambda,
            "learn_lambda": learn,
            "losses": losses,
            "val_loss": eval["val_loss"],
            "parameters": parameters,
        }));
    }
    let settings: Value = serde_json::from_str(SELFTEST_SETTINGS).map_err(|e| e.to_string())?;
    Ok((
        json!({
            "text": text,
            "settings": settings,
            "steps": SELFTEST_STEPS,
            "runs": runs,
        }),
        failures,
    ))
}
