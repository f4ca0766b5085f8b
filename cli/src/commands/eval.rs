//! `saobp eval`: a trained GPT's mean cross-entropy over the spec's fixed
//! windows of a text, its perplexity and, with `--grads`, the gradient of
//! that loss with respect to every parameter.

use std::path::PathBuf;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use saobp::data::{Corpus, Split};
use saobp::model::{evaluate, Gpt};
use serde_json::json;

use super::run_dir;
use super::{adapter_json, write_all_or_nothing, CliResult, GpuArgs};

/// Which part of the text to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// The last 10 % of the text.
    Val,
    /// The first 90 %.
    Train,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run folder written by `train` (model.safetensors, config.json, vocab.json).
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text; every character must be in the model's vocabulary.
    #[arg(long)]
    data: PathBuf,
    /// The split to evaluate on.
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    /// Fixed windows of the model's context T (window w starts at w·T).
    #[arg(long, default_value_t = 100)]
    windows: usize,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Write ∂loss/∂(every parameter) to this safetensors file, under the checkpoint's names.
    #[arg(long, value_name = "OUT.safetensors")]
    grads: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// Windows per forward pass.
const CHUNK: usize = 32;

pub fn run(args: &EvalArgs) -> CliResult {
    let checkpoint = run_dir::read_checkpoint(&args.model)?;
    let corpus = Corpus::read(&args.data, Some(&checkpoint.vocab)).map_err(|e| e.to_string())?;
    let split = match args.split {
        SplitArg::Val => Split::Val,
        SplitArg::Train => Split::Train,
    };
    let t = checkpoint.config.n_positions;
    let fit = corpus.max_windows(split, t);
    if args.windows == 0 || args.windows > fit {
        return Err(format!(
            "--windows must be between 1 and {fit}, the windows of {t} characters the {} split holds",
            if split == Split::Val { "validation" } else { "train" }
        ));
    }
    let (inputs, targets) = corpus
        .windows(split, t, args.windows)
        .map_err(|e| e.to_string())?;
    let gpu = args.gpu.open()?;
    let model = Gpt::from_safetensors(&gpu, checkpoint.config.clone(), &checkpoint.weights)
        .map_err(|e| e.to_string())?;
    let result = pollster::block_on(evaluate(
        &gpu,
        &model,
        (&inputs, &targets),
        args.windows,
        t,
        CHUNK,
        args.grads.is_some(),
    ))
    .map_err(|e| e.to_string())?;
    if let (Some(path), Some(grads)) = (&args.grads, &result.grads) {
        let values: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| g.iter().map(|&x| x as f32).collect())
            .collect();
        let views = model
            .parameters()
            .zip(&values)
            .map(|((spec, _), v)| {
                TensorView::new(Dtype::F32, spec.shape.clone(), bytemuck::cast_slice(v))
                    .map(|view| (spec.name.clone(), view))
                    .map_err(|e| e.to_string())
            })
            .collect::<CliResult<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
        write_all_or_nothing(&[(path, bytes)])?;
    }
    let perplexity = result.loss.exp();
    if args.json {
        let report = json!({
            "adapter": adapter_json(gpu.adapter()),
            "model": args.model.display().to_string(),
            "split": if split == Split::Val { "val" } else { "train" },
            "windows": args.windows,
            "tokens": args.windows * t,
            "loss": result.loss,
            "perplexity": perplexity,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "{} split, {} windows of {t}: loss {:.4} nats/char, perplexity {:.3}",
            if split == Split::Val { "val" } else { "train" },
            args.windows,
            result.loss,
            perplexity
        );
    }
    Ok(())
}
