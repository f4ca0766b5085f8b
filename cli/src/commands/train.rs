//! `saobp train`: a character-level GPT trained on a text file with AdamW,
//! with or without SAOBP, as the spec's "Training a small GPT with SAOBP"
//! gives it, writing a run folder ([`super::run_dir`]) as it goes.
//!
//! Choices where the issue leaves room:
//!
//! - Batches are a pure function of the seed and the step, so a resumed run
//!   draws exactly the batches of an uninterrupted one; with the saved
//!   parameters and AdamW moments it continues bit for bit (on the same
//!   adapter).
//! - A checkpoint is written at each evaluation, at the end, on Ctrl-C and
//!   at `--stop-after`; never after a non-finite loss.
//! - The train loss of an evaluation is measured like the val loss, on the
//!   spec's fixed windows of the train split, not on the step's batch.
//! - With `--resume`, the settings come from the run folder; only `--data`
//!   (which must be the same corpus) and `--stop-after` may be given.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use saobp::data::{Corpus, Split};
use saobp::model::{Gpt, GptConfig, TrainOptions, Trainer};
use saobp::Gpu;
use serde::{Deserialize, Serialize};

use super::run_dir::{self, Settings};
use super::{train_plot, write_all_or_nothing, CliResult, GpuArgs};

/// Model and batch sizes to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// L = 4, H = 4, C = 128, T = 64, batch 12, 2,000 steps, lr 1e-3.
    Tiny,
    /// L = 6, H = 6, C = 384, T = 256, batch 64 in passes of 8, 5,000
    /// steps, lr 1e-3.
    Small,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// UTF-8 text to train on (the first 90 % trains, the rest validates).
    #[arg(long)]
    data: PathBuf,
    /// Folder to write the run into (created; must not hold a run already).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder, where it stopped.
    #[arg(long, conflicts_with_all = ["out", "preset", "layers", "heads", "embd", "block", "batch", "micro_batch", "steps", "lr", "lambda", "lambda_per_layer", "learn_lambda", "seed", "eval_every", "eval_windows"])]
    resume: Option<PathBuf>,
    /// Sizes, steps and learning rate to start from.
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Layers L.
    #[arg(long)]
    layers: Option<usize>,
    /// Heads per layer H.
    #[arg(long)]
    heads: Option<usize>,
    /// Width C (a multiple of H).
    #[arg(long)]
    embd: Option<usize>,
    /// Context T.
    #[arg(long)]
    block: Option<usize>,
    /// Sequences per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Sequences per forward and backward pass; must divide the batch. A
    /// step of several passes averages their gradients before AdamW: the
    /// same step up to rounding, in the activation memory of one pass.
    /// Default: the whole batch (tiny), or the largest divisor of the batch
    /// up to 8 (small, which then trains within 1 GiB of GPU memory).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Steps in all.
    #[arg(long)]
    steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// λ in every layer and head (finite, >= 0).
    #[arg(long, conflicts_with = "lambda_per_layer")]
    lambda: Option<f32>,
    /// λ per layer, for every head of that layer.
    #[arg(long, value_delimiter = ',')]
    lambda_per_layer: Option<Vec<f32>>,
    /// Learn λ per head (clamped to >= 0), starting from --lambda (default 0).
    #[arg(long)]
    learn_lambda: bool,
    /// Seed of the initialization and of the batches.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Evaluate (and checkpoint) every K steps.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Fixed windows of each split per evaluation.
    #[arg(long, default_value_t = 32)]
    eval_windows: usize,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    #[arg(long)]
    stop_after: Option<usize>,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub layers: Vec<LayerRecord>,
}

/// One layer's attention at an evaluation, on the first validation windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Mean normalized entropy of `A`.
    pub entropy_a: f64,
    /// Mean normalized entropy of `R` (of `A` when λ = 0).
    pub entropy_r: f64,
    /// GTD of `A` per head, at λ = 1 (the spec's measure of a plain map).
    pub gtd_a: Vec<f64>,
    /// GTD of `R` per head, at the layer's λ.
    pub gtd_r: Vec<f64>,
    /// λ per head.
    pub lambda: Vec<f32>,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
        }
    }

    /// (L, H, C, T, batch, steps, lr)
    fn values(self) -> (usize, usize, usize, usize, usize, usize, f64) {
        match self {
            Preset::Tiny => (4, 4, 128, 64, 12, 2000, 1e-3),
            Preset::Small => (6, 6, 384, 256, 64, 5000, 1e-3),
        }
    }

    /// The micro-batch for `batch` when none is given: the largest divisor
    /// of `batch` up to the preset's cap (none for tiny).
    fn micro_batch(self, batch: usize) -> usize {
        let cap = match self {
            Preset::Tiny => batch,
            Preset::Small => 8,
        };
        TrainOptions::largest_micro_batch(batch, cap)
    }
}

/// λ per layer and head from the flags, `None` for plain GPT-2.
fn lambda_of(args: &TrainArgs, layers: usize, heads: usize) -> CliResult<Option<Vec<Vec<f32>>>> {
    let per_layer = match (&args.lambda, &args.lambda_per_layer) {
        (Some(l), _) => vec![*l; layers],
        (None, Some(v)) if v.len() == layers => v.clone(),
        (None, Some(v)) => {
            return Err(format!(
                "--lambda-per-layer has {} values for {layers} layers",
                v.len()
            ))
        }
        (None, None) if args.learn_lambda => vec![0.0; layers],
        (None, None) => return Ok(None),
    };
    if let Some(l) = per_layer.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
        return Err(format!("λ must be finite and >= 0, got {l}"));
    }
    Ok(Some(
        per_layer.into_iter().map(|l| vec![l; heads]).collect(),
    ))
}

/// Everything checked before any GPU work: the run's settings, model
/// config, corpus and, when resuming, the checkpoint.
struct Plan {
    dir: PathBuf,
    settings: Settings,
    config: GptConfig,
    corpus: Corpus,
    resume: Option<run_dir::Checkpoint>,
    records: Vec<Record>,
}

fn plan(args: &TrainArgs) -> CliResult<Plan> {
    if let Some(dir) = &args.resume {
        let checkpoint = run_dir::read_checkpoint(dir)?;
        let settings = run_dir::read_settings(dir)?;
        let corpus =
            Corpus::read(&args.data, Some(&checkpoint.vocab)).map_err(|e| e.to_string())?;
        if corpus.fingerprint() != settings.corpus {
            return Err(format!(
                "{} is not the text this run trains on ({}, it has {})",
                args.data.display(),
                settings.corpus,
                corpus.fingerprint()
            ));
        }
        let records = read_records(dir)?;
        return Ok(Plan {
            dir: dir.clone(),
            config: checkpoint.config.clone(),
            settings,
            corpus,
            resume: Some(checkpoint),
            records,
        });
    }
    let dir = args.out.clone().ok_or("--out or --resume is needed")?;
    if dir.join(run_dir::MODEL).exists() || dir.join(run_dir::SETTINGS).exists() {
        return Err(format!(
            "{} already holds a run; continue it with --resume {0} or choose another --out",
            dir.display()
        ));
    }
    let corpus = Corpus::read(&args.data, None).map_err(|e| e.to_string())?;
    let (l, h, c, t, b, steps, lr) = args.preset.values();
    let config = GptConfig {
        vocab_size: corpus.vocab().len(),
        n_positions: args.block.unwrap_or(t),
        n_embd: args.embd.unwrap_or(c),
        n_layer: args.layers.unwrap_or(l),
        n_head: args.heads.unwrap_or(h),
        layer_norm_epsilon: 1e-5,
    };
    config.validate().map_err(|e| e.to_string())?;
    let batch = args.batch.unwrap_or(b);
    let settings = Settings {
        preset: args.preset.name().into(),
        batch,
        micro_batch: Some(
            args.micro_batch
                .unwrap_or_else(|| args.preset.micro_batch(batch)),
        ),
        steps: args.steps.unwrap_or(steps),
        lr: args.lr.unwrap_or(lr),
        seed: args.seed,
        lambda: lambda_of(args, config.n_layer, config.n_head)?,
        learn_lambda: args.learn_lambda,
        eval_every: args.eval_every,
        eval_windows: args.eval_windows,
        corpus: corpus.fingerprint(),
        step: 0,
        elapsed_s: 0.0,
    };
    if settings.batch == 0
        || settings.steps == 0
        || settings.eval_every == 0
        || settings.eval_windows == 0
    {
        return Err("--batch, --steps, --eval-every and --eval-windows must be >= 1".into());
    }
    let micro = settings.micro_batch();
    if micro == 0 || !settings.batch.is_multiple_of(micro) {
        return Err(format!(
            "--micro-batch {micro} must be >= 1 and divide --batch {}",
            settings.batch
        ));
    }
    if !(settings.lr.is_finite() && settings.lr > 0.0) {
        return Err(format!("--lr must be finite and > 0, got {}", settings.lr));
    }
    Ok(Plan {
        dir,
        settings,
        config,
        corpus,
        resume: None,
        records: Vec::new(),
    })
}

fn read_records(dir: &Path) -> CliResult<Vec<Record>> {
    let path = dir.join(run_dir::METRICS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

/// Checks the corpus can feed the run: a block and its target in each split,
/// and the evaluation windows in each.
fn check_corpus(corpus: &Corpus, t: usize, windows: usize) -> CliResult {
    for split in [Split::Train, Split::Val] {
        corpus.check_len(split, t).map_err(|e| e.to_string())?;
    }
    for split in [Split::Train, Split::Val] {
        let fit = corpus.max_windows(split, t);
        if windows > fit {
            return Err(format!(
                "--eval-windows {windows} is more than the {fit} windows of {t} characters the {} split holds",
                if split == Split::Train { "train" } else { "validation" }
            ));
        }
    }
    Ok(())
}

pub fn run(args: &TrainArgs) -> CliResult {
    let mut plan = plan(args)?;
    let (t, s) = (plan.config.n_positions, &plan.settings);
    check_corpus(&plan.corpus, t, s.eval_windows)?;
    if s.step >= s.steps {
        return Err(format!(
            "the run in {} is complete ({} of {} steps)",
            plan.dir.display(),
            s.step,
            s.steps
        ));
    }
    let gpu = args.gpu.open()?;
    let e = |e: saobp::Error| e.to_string();
    let model = match &plan.resume {
        Some(c) => Gpt::from_safetensors(&gpu, plan.config.clone(), &c.weights).map_err(e)?,
        None => Gpt::init(&gpu, plan.config.clone(), s.seed, s.lambda.as_deref()).map_err(e)?,
    };
    let opts = TrainOptions {
        seed: s.seed,
        batch: s.batch,
        micro_batch: s.micro_batch(),
        steps: s.steps,
        lr: s.lr,
        learn_lambda: s.learn_lambda,
    };
    let mut trainer = Trainer::new(&gpu, model, opts).map_err(e)?;
    if plan.resume.is_some() {
        let names = trainer.optimized_names();
        let moments = run_dir::read_optimizer(&plan.dir, &names, s.step)?;
        let refs: Vec<(&[f32], &[f32])> = moments
            .iter()
            .map(|(m, v)| (m.as_slice(), v.as_slice()))
            .collect();
        trainer
            .resume(&gpu, s.step, &refs)
            .map_err(|err| format!("{}: {err}", plan.dir.join(run_dir::OPTIMIZER).display()))?;
    }
    std::fs::create_dir_all(&plan.dir)
        .map_err(|err| format!("cannot create {}: {err}", plan.dir.display()))?;

    let val = plan
        .corpus
        .windows(Split::Val, t, s.eval_windows)
        .map_err(e)?;
    let train = plan
        .corpus
        .windows(Split::Train, t, s.eval_windows)
        .map_err(e)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only the first handler can be set in a process; a second run in
        // the same process (never the CLI's case) keeps the first.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let bar = ProgressBar::new(s.steps as u64).with_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len}  {msg}  ETA {eta}")
            .map_err(|err| err.to_string())?,
    );
    bar.set_position(s.step as u64);
    // From here on Ctrl-C checkpoints; say where the run stands (the bar
    // says it on a terminal).
    let starting = format!(
        "training {} steps from step {} on {}",
        s.steps,
        s.step,
        gpu.adapter()
    );
    if bar.is_hidden() {
        println!("{starting}");
    } else {
        bar.println(starting);
    }

    let start_step = plan.settings.step;
    let mut since_eval = (Instant::now(), 0usize);
    let session = Instant::now();
    let elapsed_before = plan.settings.elapsed_s;
    let mut step = start_step;
    let stop = args.stop_after.map(|k| start_step + k);
    let outcome: CliResult<&str> = loop {
        if step == plan.settings.steps {
            break Ok("done");
        }
        if stop == Some(step) {
            break Ok("stopped");
        }
        if interrupted.load(Ordering::SeqCst) {
            break Ok("interrupted");
        }
        let lr = trainer.lr();
        let report = pollster::block_on(trainer.train_step(&gpu, &plan.corpus)).map_err(e)?;
        let loss = report.loss;
        if !report.applied {
            let what = if loss.is_finite() {
                format!(
                    "the gradients are not finite (norm {}) though the loss is {loss}",
                    report.grad_norm
                )
            } else {
                format!("the loss is {loss}")
            };
            break Err(format!(
                "step {step}: {what}; stopping. The last checkpoint ({} steps) is kept in {}",
                plan.settings.step,
                plan.dir.display()
            ));
        }
        step = trainer.step();
        since_eval.1 += 1;
        let elapsed = since_eval.0.elapsed().as_secs_f64().max(1e-9);
        let tokens_per_s = (since_eval.1 * plan.settings.batch * t) as f64 / elapsed;
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss:.4}  {tokens_per_s:.0} tok/s"));
        let eval_due = step % plan.settings.eval_every == 0 || step == plan.settings.steps;
        if eval_due {
            let record = measure(
                &gpu,
                &trainer,
                &train,
                &val,
                &plan.settings,
                step,
                lr,
                tokens_per_s,
            )
            .map(|mut r| {
                r.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
                r
            })?;
            let line = format!(
                "step {step}: train {:.4}  val {:.4}  lr {:.2e}  {:.0} tok/s",
                record.train_loss, record.val_loss, record.lr, record.tokens_per_s
            );
            // Without a terminal the bar is hidden, and so is its println.
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            plan.records.push(record);
            since_eval = (Instant::now(), 0);
        }
        if eval_due || step == plan.settings.steps || stop == Some(step) {
            plan.settings.step = step;
            plan.settings.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
            checkpoint(&gpu, &plan, &trainer)?;
        }
    };
    bar.finish_and_clear();
    let what = outcome?;
    // A stop always leaves a checkpoint, even before the first step.
    if plan.settings.step != step || what != "done" {
        plan.settings.step = step;
        plan.settings.elapsed_s = elapsed_before + session.elapsed().as_secs_f64();
        checkpoint(&gpu, &plan, &trainer)?;
    }
    let last = plan.records.last();
    match what {
        "done" => println!(
            "trained {} steps into {}{}",
            step,
            plan.dir.display(),
            last.map_or(String::new(), |r| format!(": val loss {:.4}", r.val_loss))
        ),
        other => println!(
            "{other} at step {step} of {}; checkpoint in {} (continue with --resume {})",
            plan.settings.steps,
            plan.dir.display(),
            plan.dir.display()
        ),
    }
    Ok(())
}

/// An evaluation: the losses on the fixed windows of both splits and the
/// attention metrics of every layer on the first validation windows, in
/// micro-batches in the trainer's workspace.
#[allow(clippy::too_many_arguments)]
fn measure(
    gpu: &Gpu,
    trainer: &Trainer,
    train: &(Vec<u32>, Vec<u32>),
    val: &(Vec<u32>, Vec<u32>),
    settings: &Settings,
    step: usize,
    lr: f64,
    tokens_per_s: f64,
) -> CliResult<Record> {
    let e = |e: saobp::Error| e.to_string();
    let w = settings.eval_windows;
    let eval = |(x, y): &(Vec<u32>, Vec<u32>)| {
        pollster::block_on(trainer.evaluate(gpu, (x, y), w)).map_err(e)
    };
    let train_loss = eval(train)?;
    let val_loss = eval(val)?;
    // The maps of one micro-batch of validation windows.
    let windows = settings.micro_batch().min(w);
    let stats = pollster::block_on(trainer.layer_stats(gpu, &val.0, windows)).map_err(e)?;
    let layers = stats
        .into_iter()
        .map(|l| LayerRecord {
            entropy_a: l.entropy_a,
            entropy_r: l.entropy_r,
            gtd_a: l.gtd_a,
            gtd_r: l.gtd_r,
            lambda: l.lambda,
        })
        .collect();
    Ok(Record {
        step,
        train_loss,
        val_loss,
        lr,
        tokens_per_s,
        elapsed_s: 0.0,
        layers,
    })
}

/// Writes the checkpoint, settings, metrics and curves, all or nothing.
fn checkpoint(gpu: &Gpu, plan: &Plan, trainer: &Trainer) -> CliResult {
    let e = |e: saobp::Error| e.to_string();
    let dir = &plan.dir;
    let metrics: String = plan
        .records
        .iter()
        .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
        .collect::<Result<_, _>>()
        .map_err(|err| err.to_string())?;
    let settings =
        serde_json::to_string_pretty(&plan.settings).map_err(|err| err.to_string())? + "\n";
    let model_bytes = trainer.model().to_safetensors_blocking(gpu).map_err(e)?;
    let optimizer = run_dir::optimizer_bytes(gpu, trainer.optimizer(), &trainer.optimized_names())?;
    let curves = train_plot::render(&plan.records)?;
    let (m, c, v, o, s, j, p) = (
        dir.join(run_dir::MODEL),
        dir.join(run_dir::CONFIG),
        dir.join(run_dir::VOCAB),
        dir.join(run_dir::OPTIMIZER),
        dir.join(run_dir::SETTINGS),
        dir.join(run_dir::METRICS),
        dir.join(run_dir::CURVES),
    );
    write_all_or_nothing(&[
        (&m, model_bytes),
        (&c, plan.config.to_json().into_bytes()),
        (&v, plan.corpus.vocab().to_json().into_bytes()),
        (&o, optimizer),
        (&s, settings.into_bytes()),
        (&j, metrics.into_bytes()),
        (&p, curves),
    ])
}
