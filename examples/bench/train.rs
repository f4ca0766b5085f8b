//! The training-step section: forward, backward and AdamW time per step of
//! the GPT at the `tiny` and `small` presets, plain (no λ) and with a
//! learned λ > 0 in every head, and the SAOBP step's cost relative to the
//! plain one.
//!
//! Beside it, what a naive autograd through `M = A·A` would add: its N³
//! products (`M` forward, `∂A` from `∂M` backward: 6·T³ FLOP per head and
//! layer), in FLOP and in seconds at the rate the plain step itself reached.

use std::time::Duration;

use saobp::data::Corpus;
use saobp::kernels::gpt::TokenIds;
use saobp::kernels::optim::{AdamW, AdamWOptions};
use saobp::model::{Gpt, GptConfig, GptWorkspace, TrainOptions, Trainer};
use saobp::workload::SplitMix64;
use saobp::{Error, Gpu, Work};

use super::median;

/// A model and batch shape to time.
pub struct Preset {
    pub name: &'static str,
    pub config: GptConfig,
    pub batch: usize,
    /// Windows per forward and backward pass of [`Trainer::train_step`].
    pub micro_batch: usize,
}

/// The training presets: `tiny` (L = 4, H = 4, C = 128, T = 64, batch 12
/// in one pass) and `small` (L = 6, H = 6, C = 384, T = 256, batch
/// `small_batch`, the preset's own being 64, in passes of the largest
/// divisor of it up to `small_micro`, as `saobp train` runs it), on an
/// 84-character vocabulary.
pub fn presets(small_batch: usize, small_micro: usize) -> Vec<Preset> {
    let config = |n_layer, n_head, n_embd, n_positions| GptConfig {
        vocab_size: 84,
        n_positions,
        n_embd,
        n_layer,
        n_head,
        layer_norm_epsilon: 1e-5,
    };
    vec![
        Preset {
            name: "tiny",
            config: config(4, 4, 128, 64),
            batch: 12,
            micro_batch: 12,
        },
        Preset {
            name: "small",
            config: config(6, 6, 384, 256),
            batch: small_batch,
            micro_batch: TrainOptions::largest_micro_batch(small_batch, small_micro),
        },
    ]
}

/// One timed configuration.
pub struct TrainRow {
    pub preset: &'static str,
    pub t: usize,
    pub batch: usize,
    pub lambda: bool,
    pub forward: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
    pub dispatches: u64,
    pub submissions: u64,
    /// Host time to prepare, encode and submit the step's command buffers.
    pub host: Duration,
    /// The library's whole training step (`Trainer::train_step`: batch,
    /// forward, backward and AdamW in one submission, loss read back), its
    /// submissions and host time.
    pub trainer: Duration,
    pub trainer_submissions: u64,
    pub trainer_host: Duration,
    /// FLOP of the step's products (forward and backward), as counted by the library.
    pub product_flops: u64,
}

impl TrainRow {
    pub fn step(&self) -> Duration {
        self.forward + self.backward + self.optimizer
    }
}

/// A model of `preset` (λ = 0.5 in every head when `lambda`), its
/// workspace and one batch of random tokens.
struct Setup {
    model: Gpt,
    ws: GptWorkspace,
    ids: TokenIds,
    targets: TokenIds,
}

fn setup(gpu: &Gpu, preset: &Preset, lambda: bool) -> Result<Setup, Error> {
    let c = &preset.config;
    let (b, t) = (preset.batch, c.n_positions);
    let lambdas = lambda.then(|| vec![vec![0.5; c.n_head]; c.n_layer]);
    let model = Gpt::init(gpu, c.clone(), 1, lambdas.as_deref())?;
    let ws = model.workspace(gpu, b, t)?;
    let mut rng = SplitMix64::new(2);
    let mut draw = || -> Vec<u32> { (0..b * t).map(|_| rng.below(c.vocab_size) as u32).collect() };
    Ok(Setup {
        ids: TokenIds::new(gpu, &draw(), b, t, c.vocab_size)?,
        targets: TokenIds::new(gpu, &draw(), b, t, c.vocab_size)?,
        model,
        ws,
    })
}

/// Times a step of `preset`, with λ = 0.5 learned in every head when `lambda`.
pub fn measure(gpu: &Gpu, preset: &Preset, lambda: bool, repeat: usize) -> Result<TrainRow, Error> {
    let Setup {
        model,
        ws,
        ids,
        targets,
    } = setup(gpu, preset, lambda)?;
    let specs: Vec<_> = model
        .parameters()
        .map(|(s, _)| (s.shape.as_slice(), s.group))
        .collect();
    let mut adamw = AdamW::new(gpu, &specs, AdamWOptions::default())?;
    let params: Vec<_> = model.parameters().map(|(_, p)| p).collect();
    let grads: Vec<_> = ws.grads().map(|(_, g)| g).collect();

    // Reading the loss (or the gradient norm) back waits for the submission.
    let forward = median(repeat, || {
        model.forward_blocking(gpu, &ws, &ids, Some(&targets))?;
        ws.loss_blocking(gpu).map(drop)
    })?;
    let both = median(repeat, || {
        model.forward_backward_blocking(gpu, &ws, &ids, &targets)?;
        ws.loss_blocking(gpu).map(drop)
    })?;
    let optimizer = median(repeat, || {
        adamw.step_blocking(gpu, &params, &grads, 1e-3)?;
        adamw.last_grad_norm_blocking(gpu).map(drop)
    })?;
    // Counted once more after the timed runs, so that building the
    // pipelines (the first call's) is not in the host time.
    let before = gpu.work();
    model.forward_backward_blocking(gpu, &ws, &ids, &targets)?;
    ws.loss_blocking(gpu)?;
    let work = gpu.work().since(&before);
    let before = gpu.work();
    adamw.step_blocking(gpu, &params, &grads, 1e-3)?;
    adamw.last_grad_norm_blocking(gpu)?;
    let opt_work = gpu.work().since(&before);
    let (trainer, trainer_work) = trainer_step(gpu, preset, lambda, repeat)?;
    Ok(TrainRow {
        preset: preset.name,
        t: preset.config.n_positions,
        batch: preset.batch,
        lambda,
        forward,
        backward: both.saturating_sub(forward),
        optimizer,
        dispatches: work.dispatches + opt_work.dispatches,
        submissions: work.submissions + opt_work.submissions,
        host: work.host_time + opt_work.host_time,
        trainer,
        trainer_submissions: trainer_work.submissions,
        trainer_host: trainer_work.host_time,
        product_flops: work.product_flops,
    })
}

/// GPU memory a training run of `preset` holds (λ = 0.5 learned in every
/// head when `lambda`): the model, a workspace of one batch and AdamW's
/// moments, after one `Trainer::train_step`, so the scratch
/// textures and buffers the step uses are counted too. `None` where the
/// backend does not report its allocations ([`Gpu::allocated_bytes`]).
pub fn memory(gpu: &Gpu, preset: &Preset, lambda: bool) -> Result<Option<u64>, Error> {
    let before = gpu.allocated_bytes();
    let (mut trainer, corpus) = trainer(gpu, preset, lambda)?;
    pollster::block_on(trainer.train_step(gpu, &corpus))?;
    Ok(gpu
        .allocated_bytes()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before)))
}

/// A [`Trainer`] of `preset` (λ = 0.5 learned in every head when `lambda`)
/// and a random text of the preset's vocabulary to train on (one character
/// per id).
fn trainer(gpu: &Gpu, preset: &Preset, lambda: bool) -> Result<(Trainer, Corpus), Error> {
    let c = &preset.config;
    let chars: Vec<char> = (0..c.vocab_size as u32)
        .map(|i| char::from_u32(0x100 + i).unwrap_or('?'))
        .collect();
    let mut rng = SplitMix64::new(3);
    let text: String = (0..200_000)
        .map(|_| chars[rng.below(chars.len())])
        .collect();
    let corpus = Corpus::from_text(&text)?;
    let lambdas = lambda.then(|| vec![vec![0.5; c.n_head]; c.n_layer]);
    let model = Gpt::init(gpu, c.clone(), 1, lambdas.as_deref())?;
    let opts = TrainOptions {
        seed: 1,
        batch: preset.batch,
        micro_batch: preset.micro_batch,
        steps: 10_000,
        lr: 1e-3,
        learn_lambda: lambda,
    };
    Ok((Trainer::new(gpu, model, opts)?, corpus))
}

/// Times [`Trainer::train_step`] (see [`trainer`]); returns the median and
/// the work of one step.
fn trainer_step(
    gpu: &Gpu,
    preset: &Preset,
    lambda: bool,
    repeat: usize,
) -> Result<(Duration, Work), Error> {
    let (mut trainer, corpus) = trainer(gpu, preset, lambda)?;
    let time = median(repeat, || {
        pollster::block_on(trainer.train_step(gpu, &corpus)).map(drop)
    })?;
    let before = gpu.work();
    pollster::block_on(trainer.train_step(gpu, &corpus))?;
    Ok((time, gpu.work().since(&before)))
}

/// Where one step's time goes: each kernel's wall time with every dispatch
/// submitted and waited for on its own ([`Gpu::set_profiling`]), longest first.
pub fn profile(gpu: &Gpu, preset: &Preset, lambda: bool) -> Result<Vec<(String, Duration)>, Error> {
    let Setup {
        model,
        ws,
        ids,
        targets,
    } = setup(gpu, preset, lambda)?;
    // Pipelines are built outside the profile.
    model.forward_backward_blocking(gpu, &ws, &ids, &targets)?;
    ws.loss_blocking(gpu)?;
    let before = gpu.work();
    gpu.set_profiling(true);
    let run = model.forward_backward_blocking(gpu, &ws, &ids, &targets);
    gpu.set_profiling(false);
    run?;
    let mut times = gpu.work().since(&before).kernel_time;
    times.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(times)
}

/// FLOP a naive autograd through `M = A·A` adds per step: 6·T³ per head and layer.
fn naive_flops(preset: &Preset) -> f64 {
    let c = &preset.config;
    6.0 * (preset.batch * c.n_head * c.n_layer) as f64 * (c.n_positions as f64).powi(3)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The section's Markdown: one row per preset and λ, then per preset the
/// SAOBP step relative to the plain one and the naive N³ cost.
pub fn markdown(presets: &[Preset], rows: &[TrainRow], repeat: usize) -> String {
    let mut md = format!(
        "\nTraining step, GPT (vocabulary 84), λ = 0.5 learned in every head for \"λ > 0\" \
         (median of {repeat} runs; each phase waits for its results):\n\n\
         | preset | T | batch | λ | forward | backward | AdamW | step | dispatches | submissions | host time | product GFLOP | `Trainer::train_step` | its submissions | its host time |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |\n",
            r.preset,
            r.t,
            r.batch,
            if r.lambda { "> 0" } else { "0" },
            ms(r.forward),
            ms(r.backward),
            ms(r.optimizer),
            ms(r.step()),
            r.dispatches,
            r.submissions,
            ms(r.host),
            r.product_flops as f64 / 1e9,
            ms(r.trainer),
            r.trainer_submissions,
            ms(r.trainer_host),
        );
    }
    md += "\n| preset | T | SAOBP step / plain step | naive A·A autograd: extra GFLOP | at the plain step's rate |\n|---|---|---|---|---|\n";
    for p in presets {
        let find = |lambda| {
            rows.iter()
                .find(|r| r.preset == p.name && r.lambda == lambda)
        };
        if let (Some(plain), Some(saobp)) = (find(false), find(true)) {
            let rate = plain.product_flops as f64 / plain.step().as_secs_f64();
            let naive = naive_flops(p);
            md += &format!(
                "| {} | {} | {:.2}× | {:.1} | +{:.2} s |\n",
                p.name,
                p.config.n_positions,
                saobp.step().as_secs_f64() / plain.step().as_secs_f64(),
                naive / 1e9,
                naive / rate,
            );
        }
    }
    md
}

/// The section as JSON values.
pub fn json(rows: &[TrainRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "preset": r.preset,
                "t": r.t,
                "batch": r.batch,
                "lambda": r.lambda,
                "forward_s": r.forward.as_secs_f64(),
                "backward_s": r.backward.as_secs_f64(),
                "optimizer_s": r.optimizer.as_secs_f64(),
                "dispatches": r.dispatches,
                "submissions": r.submissions,
                "host_s": r.host.as_secs_f64(),
                "trainer_step_s": r.trainer.as_secs_f64(),
                "trainer_submissions": r.trainer_submissions,
                "trainer_host_s": r.trainer_host.as_secs_f64(),
                "product_flops": r.product_flops,
            })
        })
        .collect()
}
