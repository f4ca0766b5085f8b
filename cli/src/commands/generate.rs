//! `saobp generate`: text sampled from a trained GPT, one character at a
//! time.
//!
//! Each step runs the model over the last `T` characters, padded to `T`
//! after the real ones: attention is causal, so the padding cannot change
//! the logits of the last real position, and one workspace serves every
//! step.

use std::path::PathBuf;

use saobp::kernels::gpt::TokenIds;
use saobp::model::Gpt;
use saobp::workload::SplitMix64;

use super::run_dir;
use super::{CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A run folder written by `train`.
    #[arg(long)]
    model: PathBuf,
    /// The text to continue; every character must be in the model's vocabulary.
    #[arg(long)]
    prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Softmax temperature; 0 picks the most likely character.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample only among the K most likely characters.
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// Draws an id from `logits` at `temperature` among the `top_k` largest.
fn sample(logits: &[f32], temperature: f64, top_k: Option<usize>, rng: &mut SplitMix64) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Largest first; ties by id, so the choice does not depend on the sort.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature == 0.0 {
        return order[0] as u32;
    }
    order.truncate(top_k.unwrap_or(order.len()).max(1));
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i]) - top) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // A uniform draw in [0, total) from 53 random bits.
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

pub fn run(args: &GenerateArgs) -> CliResult {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(format!(
            "--temperature must be finite and >= 0, got {}",
            args.temperature
        ));
    }
    if args.top_k == Some(0) {
        return Err("--top-k must be >= 1".into());
    }
    let checkpoint = run_dir::read_checkpoint(&args.model)?;
    if args.prompt.is_empty() {
        return Err("--prompt is empty; give at least one character".into());
    }
    let mut ids = checkpoint
        .vocab
        .encode(&args.prompt)
        .map_err(|e| format!("--prompt: {e}"))?;
    let (t, vocab) = (checkpoint.config.n_positions, checkpoint.config.vocab_size);
    let gpu = args.gpu.open()?;
    let e = |e: saobp::Error| e.to_string();
    let model =
        Gpt::from_safetensors(&gpu, checkpoint.config.clone(), &checkpoint.weights).map_err(e)?;
    let ws = model.workspace(&gpu, 1, t).map_err(e)?;
    let mut rng = SplitMix64::new(args.seed);
    let prompt_len = ids.len();
    for _ in 0..args.tokens {
        let context = &ids[ids.len().saturating_sub(t)..];
        let last = context.len() - 1;
        let mut window = context.to_vec();
        window.resize(t, 0);
        let x = TokenIds::new(&gpu, &window, 1, t, vocab).map_err(e)?;
        model.forward_blocking(&gpu, &ws, &x, None).map_err(e)?;
        let logits = ws
            .logits()
            .to_vec_range_blocking(&gpu, last * vocab..(last + 1) * vocab)
            .map_err(e)?;
        ids.push(sample(&logits, args.temperature, args.top_k, &mut rng));
    }
    let text = checkpoint.vocab.decode(&ids[prompt_len..]).map_err(e)?;
    println!("{}{text}", args.prompt);
    Ok(())
}
