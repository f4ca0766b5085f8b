//! A training run's folder, as `train` writes it and `eval`, `generate` and
//! `train --resume` read it:
//!
//! - `model.safetensors`, `config.json`: the checkpoint, in Hugging Face's
//!   GPT-2 layout (λ as `transformer.h.{i}.attn.saobp_lambda`);
//! - `vocab.json`: the characters, in id order;
//! - `optimizer.safetensors`: AdamW's moments (`{name}.exp_avg`,
//!   `{name}.exp_avg_sq`, PyTorch's names) and its step, in the metadata;
//! - `train.json`: the run's settings, the corpus it trains on and how far
//!   it got, so that a resumed run continues exactly;
//! - `metrics.jsonl`: one line per evaluation; `curves.png`: its plot.
//!
//! Everything a checkpoint holds is written together or not at all.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use saobp::data::Vocab;
use saobp::kernels::optim::AdamW;
use saobp::model::{Gpt, GptConfig};
use saobp::Gpu;
use serde::{Deserialize, Serialize};

use super::CliResult;

pub const MODEL: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub const VOCAB: &str = "vocab.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const SETTINGS: &str = "train.json";
pub const METRICS: &str = "metrics.jsonl";
pub const CURVES: &str = "curves.png";

/// What a run was asked to do, and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The preset the sizes started from.
    pub preset: String,
    pub batch: usize,
    /// Sequences per forward and backward pass; absent in runs written
    /// before micro-batches, which ran the whole batch in one pass.
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// Total steps of the run (the schedule ends there).
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub seed: u64,
    /// λ per layer and head at the start; `None` trains plain GPT-2.
    pub lambda: Option<Vec<Vec<f32>>>,
    pub learn_lambda: bool,
    pub eval_every: usize,
    pub eval_windows: usize,
    /// The training text's fingerprint (`Corpus::fingerprint`).
    pub corpus: String,
    /// Steps done.
    pub step: usize,
    /// Seconds of training so far, over all resumptions.
    pub elapsed_s: f64,
}

impl Settings {
    /// Sequences per forward and backward pass.
    pub fn micro_batch(&self) -> usize {
        self.micro_batch.unwrap_or(self.batch)
    }
}

/// A checkpoint read from a run folder and checked on the host.
pub struct Checkpoint {
    pub config: GptConfig,
    pub vocab: Vocab,
    pub weights: Vec<u8>,
}

fn read(dir: &Path, name: &str) -> CliResult<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_text(dir: &Path, name: &str) -> CliResult<String> {
    String::from_utf8(read(dir, name)?)
        .map_err(|_| format!("{} is not UTF-8", dir.join(name).display()))
}

/// Reads `config.json`, `vocab.json` and `model.safetensors` from `dir` and
/// checks them against each other, before any GPU work.
pub fn read_checkpoint(dir: &Path) -> CliResult<Checkpoint> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let config = GptConfig::from_json(&read_text(dir, CONFIG)?)
        .map_err(|e| format!("{}: {e}", dir.join(CONFIG).display()))?;
    let vocab = Vocab::from_json(&read_text(dir, VOCAB)?)
        .map_err(|e| format!("{}: {e}", dir.join(VOCAB).display()))?;
    if vocab.len() != config.vocab_size {
        return Err(format!(
            "{} holds {} characters but config.json says vocab_size = {}",
            dir.join(VOCAB).display(),
            vocab.len(),
            config.vocab_size
        ));
    }
    let weights = read(dir, MODEL)?;
    Gpt::check_safetensors(&config, &weights)
        .map_err(|e| format!("{}: {e}", dir.join(MODEL).display()))?;
    Ok(Checkpoint {
        config,
        vocab,
        weights,
    })
}

/// Reads `train.json`.
pub fn read_settings(dir: &Path) -> CliResult<Settings> {
    serde_json::from_str(&read_text(dir, SETTINGS)?)
        .map_err(|e| format!("{}: {e}", dir.join(SETTINGS).display()))
}

/// AdamW's state as a safetensors file: the moments of each optimized
/// parameter under its name, and the step in the metadata.
pub fn optimizer_bytes(gpu: &Gpu, adamw: &AdamW, names: &[&str]) -> CliResult<Vec<u8>> {
    let mut values = Vec::with_capacity(2 * names.len());
    for (i, name) in names.iter().enumerate() {
        let (m, v) = adamw
            .moments(i)
            .ok_or_else(|| format!("the optimizer has no tensor {i}"))?;
        let shape = m.shape().to_vec();
        values.push((
            format!("{name}.exp_avg"),
            shape.clone(),
            m.to_vec_blocking(gpu).map_err(|e| e.to_string())?,
        ));
        values.push((
            format!("{name}.exp_avg_sq"),
            shape,
            v.to_vec_blocking(gpu).map_err(|e| e.to_string())?,
        ));
    }
    let views = values
        .iter()
        .map(|(name, shape, v)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
                .map(|t| (name.clone(), t))
                .map_err(|e| e.to_string())
        })
        .collect::<CliResult<Vec<_>>>()?;
    let meta = HashMap::from([("step".to_string(), adamw.steps().to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

/// Reads AdamW's moments from `optimizer.safetensors` in `dir`, one
/// `(exp_avg, exp_avg_sq)` pair per name, after checking that the file is at
/// the run's `step`.
pub fn read_optimizer(
    dir: &Path,
    names: &[&str],
    step: usize,
) -> CliResult<Vec<(Vec<f32>, Vec<f32>)>> {
    let path = dir.join(OPTIMIZER);
    let bytes = read(dir, OPTIMIZER)?;
    let bad = |what: String| format!("{}: {what}", path.display());
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let saved = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| bad("no step in its metadata".into()))?;
    if saved != step {
        return Err(bad(format!(
            "it is at step {saved}, but {SETTINGS} at step {step}"
        )));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let get = |name: String| -> CliResult<Vec<f32>> {
        let t = st
            .tensor(&name)
            .map_err(|_| bad(format!("no tensor `{name}`")))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("`{name}` is not F32")));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    };
    names
        .iter()
        .map(|name| {
            Ok((
                get(format!("{name}.exp_avg"))?,
                get(format!("{name}.exp_avg_sq"))?,
            ))
        })
        .collect()
}
