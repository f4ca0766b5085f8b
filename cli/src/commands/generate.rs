//! `saobp generate`: text sampled from a trained GPT, one character at a
//! time.
//! The sampling loop is the library's [`saobp::model::generate`].

use std::path::PathBuf;

use saobp::model::{generate, Gpt, Sampling};

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
    let ids = checkpoint
        .vocab
        .encode(&args.prompt)
        .map_err(|e| format!("--prompt: {e}"))?;
    let gpu = args.gpu.open()?;
    let e = |e: saobp::Error| e.to_string();
    let model =
        Gpt::from_safetensors(&gpu, checkpoint.config.clone(), &checkpoint.weights).map_err(e)?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    let ids = pollster::block_on(generate(&gpu, &model, &ids, args.tokens, sampling)).map_err(e)?;
    let text = checkpoint.vocab.decode(&ids).map_err(e)?;
    println!("{}{text}", args.prompt);
    Ok(())
}
