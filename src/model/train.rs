//! Training, evaluating and sampling a [`Gpt`] as the spec's "Training a
//! small GPT with SAOBP" fixes them: batches drawn by [`Corpus::batch`] from
//! the seed and the step, AdamW with the spec's schedule ([`lr_at`]), the
//! mean cross-entropy over fixed windows, the per-layer attention metrics of
//! an evaluation, and character sampling.
//!
//! Everything here is `async` and never blocks, so the same loop drives the
//! command line (through `pollster`) and a browser page (through the
//! JavaScript event loop), and both produce the same numbers.
//!
//! ```no_run
//! # async fn run() -> saobp::Result<()> {
//! use saobp::data::Corpus;
//! use saobp::model::{Gpt, GptConfig, Trainer, TrainOptions};
//! use saobp::{Gpu, GpuOptions};
//! let gpu = Gpu::new(&GpuOptions::from_env()?).await?;
//! let corpus = Corpus::from_text(&"To be, or not to be, that is the question. ".repeat(200))?;
//! let config = GptConfig {
//!     vocab_size: corpus.vocab().len(),
//!     n_positions: 16,
//!     n_embd: 32,
//!     n_layer: 2,
//!     n_head: 2,
//!     layer_norm_epsilon: 1e-5,
//! };
//! let lambda = vec![vec![0.3; 2]; 2]; // [layer][head]
//! let model = Gpt::init(&gpu, config, 1, Some(&lambda))?;
//! let opts = TrainOptions { seed: 1, batch: 4, micro_batch: 4, steps: 100, lr: 1e-3, learn_lambda: false };
//! let mut trainer = Trainer::new(&gpu, model, opts)?;
//! while trainer.step() < 100 {
//!     let report = trainer.train_step(&gpu, &corpus).await?;
//!     assert!(report.applied, "step {}: loss {}", trainer.step(), report.loss);
//! }
//! # Ok(()) }
//! ```

use crate::data::Corpus;
use crate::gpu::Step;
use crate::kernels::gpt::TokenIds;
use crate::kernels::metrics::{HeadSummary, MapMetrics};
use crate::kernels::optim::{accumulate_step, lr_at, AdamW, AdamWOptions, ParamGroup};
use crate::workload::SplitMix64;
use crate::{Error, Gpu, Result, Tensor};

use super::{Gpt, GptWorkspace};

/// The run's settings that the step loop needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// Seed of the batches (the model's initialization has its own).
    pub seed: u64,
    /// Windows per step.
    pub batch: usize,
    /// Windows per forward and backward pass. A batch of several passes
    /// averages their gradients (and losses) before AdamW, all in the step's
    /// one submission: the same step as one pass up to f32 rounding, in the
    /// activation memory of `micro_batch` windows. It must divide `batch`;
    /// `batch` itself runs the step in one pass.
    pub micro_batch: usize,
    /// Total steps: the length of the learning-rate schedule.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Whether λ joins the optimizer; otherwise it stays as initialized.
    pub learn_lambda: bool,
}

impl TrainOptions {
    /// The largest micro-batch of at most `cap` windows that divides
    /// `batch` (1 when `batch` or `cap` is 0): what `saobp train` and the
    /// bench run when no micro-batch is given.
    pub fn largest_micro_batch(batch: usize, cap: usize) -> usize {
        (1..=cap.min(batch))
            .rev()
            .find(|&m| batch.is_multiple_of(m))
            .unwrap_or(1)
    }
}

/// What one [`Trainer::train_step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The batch's mean cross-entropy, before the update.
    pub loss: f32,
    /// The global norm of the gradients, before clipping.
    pub grad_norm: f32,
    /// Whether the update was applied: the loss and the gradients were
    /// finite. When not, nothing changed and the step was not counted.
    pub applied: bool,
}

/// A [`Gpt`] with its AdamW state and a workspace of one micro-batch: call
/// [`Trainer::train_step`] until [`Trainer::step`] reaches the run's steps.
///
/// After an error from [`Trainer::train_step`] (a lost device, a failed
/// readback) the GPU may or may not have applied that step: continue from
/// the last checkpoint with a new trainer, not with this one.
pub struct Trainer {
    model: Gpt,
    adamw: AdamW,
    ws: GptWorkspace,
    /// With several micro-batches per step: the step's mean gradient of each
    /// optimized parameter and its mean loss.
    sums: Option<(Vec<Tensor>, Tensor)>,
    /// `[2]`: the loss and the gradient norm of the last step, copied side
    /// by side on the GPU so that one readback brings both.
    report: Tensor,
    /// Indices into [`Gpt::parameters`] of the optimized parameters.
    optimized: Vec<usize>,
    opts: TrainOptions,
    step: usize,
}

impl Trainer {
    /// A trainer at step 0 with zero moments. Fails with
    /// [`Error::InvalidArgument`] for a zero batch or step count, a
    /// micro-batch that does not divide the batch, or a learning rate that
    /// is not finite and ≥ 0.
    pub fn new(gpu: &Gpu, model: Gpt, opts: TrainOptions) -> Result<Trainer> {
        if opts.batch == 0 || opts.steps == 0 {
            return Err(Error::invalid(format!(
                "training needs batch >= 1 and steps >= 1, got batch {} and steps {}",
                opts.batch, opts.steps
            )));
        }
        if opts.micro_batch == 0 || !opts.batch.is_multiple_of(opts.micro_batch) {
            return Err(Error::invalid(format!(
                "the micro-batch ({}) must be >= 1 and divide the batch ({})",
                opts.micro_batch, opts.batch
            )));
        }
        if !(opts.lr.is_finite() && opts.lr >= 0.0) {
            return Err(Error::invalid(format!(
                "learning rate {} must be finite and >= 0",
                opts.lr
            )));
        }
        let optimized: Vec<usize> = model
            .parameters()
            .enumerate()
            .filter(|(_, (spec, _))| spec.group != ParamGroup::Lambda || opts.learn_lambda)
            .map(|(i, _)| i)
            .collect();
        let specs: Vec<_> = model.parameters().map(|(s, _)| s).collect();
        let shapes: Vec<_> = optimized
            .iter()
            .map(|&i| (specs[i].shape.as_slice(), specs[i].group))
            .collect();
        let adamw = AdamW::new(gpu, &shapes, AdamWOptions::default())?;
        let ws = model.workspace(gpu, opts.micro_batch, model.config().n_positions)?;
        let sums = if opts.micro_batch < opts.batch {
            let grads = shapes
                .iter()
                .map(|(shape, _)| Tensor::zeros(gpu, shape))
                .collect::<Result<_>>()?;
            Some((grads, Tensor::zeros(gpu, &[1])?))
        } else {
            None
        };
        Ok(Trainer {
            model,
            adamw,
            ws,
            sums,
            report: Tensor::zeros(gpu, &[2])?,
            optimized,
            opts,
            step: 0,
        })
    }

    /// Trains one step on `corpus`'s training split: the batch of
    /// [`Corpus::batch`] for this seed and step, forward and backward of
    /// each micro-batch (their gradients averaged when there are several),
    /// and AdamW at [`lr_at`] of this step, all in one GPU submission; then
    /// reads the batch's loss and the gradient norm back, together.
    ///
    /// When the loss or the gradients are not finite, the GPU skips AdamW
    /// (its guard is the loss), so the parameters, the optimizer and
    /// [`Trainer::step`] stay as they were, and the report says so
    /// ([`StepReport::applied`]): the caller decides whether to stop (the
    /// command line does).
    pub async fn train_step(&mut self, gpu: &Gpu, corpus: &Corpus) -> Result<StepReport> {
        let (b, m, t) = (self.opts.batch, self.opts.micro_batch, self.ws.n());
        let vocab = self.model.config().vocab_size;
        let (x, y) = corpus.batch(self.opts.seed, self.step as u64, b, t)?;
        let passes = (0..b / m)
            .map(|j| {
                let rows = j * m * t..(j + 1) * m * t;
                Ok((
                    TokenIds::new(gpu, &x[rows.clone()], m, t, vocab)?,
                    TokenIds::new(gpu, &y[rows], m, t, vocab)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let lr = self.lr();
        {
            let params: Vec<_> = self.model.parameters().map(|(_, p)| p).collect();
            let grads: Vec<_> = self.ws.grads().map(|(_, g)| g).collect();
            let params: Vec<_> = self.optimized.iter().map(|&i| params[i]).collect();
            let grads: Vec<_> = self.optimized.iter().map(|&i| grads[i]).collect();
            let mut steps = Vec::new();
            for (j, (x, y)) in passes.iter().enumerate() {
                steps.extend(self.model.forward_backward_steps(gpu, &self.ws, x, y)?);
                if let Some((sums, loss)) = &self.sums {
                    let scale = 1.0 / passes.len() as f32;
                    for (sum, grad) in sums.iter().zip(&grads) {
                        steps.push(accumulate_step(sum, grad, scale, j == 0)?);
                    }
                    steps.push(accumulate_step(loss, self.ws.loss(), scale, j == 0)?);
                }
            }
            let (grads, loss) = match &self.sums {
                Some((sums, loss)) => (sums.iter().collect(), loss),
                None => (grads, self.ws.loss()),
            };
            steps.extend(self.adamw.prepare_step(
                &params,
                &grads,
                lr,
                self.adamw.steps() + 1,
                Some(loss),
            )?);
            for (i, src) in [loss, self.adamw.norm_tensor()].into_iter().enumerate() {
                steps.push(Step::Copy {
                    src: src.buffer(),
                    src_offset: 0,
                    dst: self.report.buffer(),
                    dst_offset: 4 * i as u64,
                    bytes: 4,
                });
            }
            gpu.run(&steps).await?;
        }
        let read = self.report.to_vec(gpu).await?;
        let (loss, grad_norm) = (read[0], read[1]);
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            self.adamw.advance();
            self.step += 1;
        }
        Ok(StepReport {
            loss,
            grad_norm,
            applied,
        })
    }

    /// Steps taken so far (the next batch's step index).
    pub fn step(&self) -> usize {
        self.step
    }

    /// The learning rate the next step will use.
    pub fn lr(&self) -> f64 {
        lr_at(self.step, self.opts.steps, self.opts.lr)
    }

    /// The settings it was made with.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// The model being trained.
    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// The model, handing it over.
    pub fn into_model(self) -> Gpt {
        self.model
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.adamw
    }

    /// Names of the optimized parameters, in the optimizer's order (λ only
    /// when it is learned).
    pub fn optimized_names(&self) -> Vec<&str> {
        let specs: Vec<_> = self.model.parameters().map(|(s, _)| s).collect();
        self.optimized
            .iter()
            .map(|&i| specs[i].name.as_str())
            .collect()
    }

    /// [`evaluate`] of the model being trained (no gradients), in chunks of
    /// a micro-batch that run in the trainer's own workspace: an evaluation
    /// during a run holds no second set of activations.
    pub async fn evaluate(&self, gpu: &Gpu, data: (&[u32], &[u32]), count: usize) -> Result<f64> {
        let (n, chunk) = (self.ws.n(), self.opts.micro_batch);
        let eval = evaluate_in(
            gpu,
            &self.model,
            Some(&self.ws),
            data,
            count,
            n,
            chunk,
            false,
        );
        Ok(eval.await?.loss)
    }

    /// [`layer_stats`] of the model being trained, over the first `windows`
    /// windows of `inputs`, in the trainer's own workspace when `windows` is
    /// the micro-batch.
    pub async fn layer_stats(
        &self,
        gpu: &Gpu,
        inputs: &[u32],
        windows: usize,
    ) -> Result<Vec<LayerStats>> {
        let n = self.ws.n();
        layer_stats_in(gpu, &self.model, Some(&self.ws), inputs, windows, n).await
    }

    /// Continues a run: sets the optimizer's step count and moments (in
    /// [`Trainer::optimized_names`] order; see [`AdamW::set_state`]) and the
    /// next batch's step.
    pub fn resume(&mut self, gpu: &Gpu, step: usize, moments: &[(&[f32], &[f32])]) -> Result<()> {
        self.adamw.set_state(gpu, step as u64, moments)?;
        self.step = step;
        Ok(())
    }
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy over the windows.
    pub loss: f64,
    /// With gradients asked for: the gradient of that mean for every
    /// parameter, in [`Gpt::parameters`] order.
    pub grads: Option<Vec<Vec<f64>>>,
}

/// Mean cross-entropy of `model` over `count` windows of `n` tokens
/// (`inputs`, `targets`: `[count, n]`, as [`Corpus::windows`] gives them),
/// run in chunks of at most `chunk` windows, and with `grads` the gradient of
/// that mean. Chunks' results are weighted by their windows, so the answer
/// does not depend on `chunk`.
pub async fn evaluate(
    gpu: &Gpu,
    model: &Gpt,
    data: (&[u32], &[u32]),
    count: usize,
    n: usize,
    chunk: usize,
    grads: bool,
) -> Result<Evaluation> {
    evaluate_in(gpu, model, None, data, count, n, chunk, grads).await
}

/// [`evaluate`], running the chunks that fit `given` (a workspace of
/// `chunk` windows of `n` tokens) in it rather than in a new workspace.
#[allow(clippy::too_many_arguments)]
async fn evaluate_in(
    gpu: &Gpu,
    model: &Gpt,
    given: Option<&GptWorkspace>,
    (inputs, targets): (&[u32], &[u32]),
    count: usize,
    n: usize,
    chunk: usize,
    grads: bool,
) -> Result<Evaluation> {
    if count == 0 || n == 0 || chunk == 0 {
        return Err(Error::invalid(format!(
            "evaluation needs windows, a length and a chunk >= 1, got {count}, {n} and {chunk}"
        )));
    }
    if inputs.len() < count * n || targets.len() < count * n {
        return Err(Error::shape(format!(
            "evaluation of {count} windows of {n} tokens needs {} ids, got {} inputs and {} targets",
            count * n,
            inputs.len(),
            targets.len()
        )));
    }
    let vocab = model.config().vocab_size;
    let mut loss = 0.0;
    let mut sums: Option<Vec<Vec<f64>>> = grads.then(|| {
        model
            .parameters()
            .map(|(s, _)| vec![0.0; s.shape.iter().product()])
            .collect()
    });
    // At most two sizes: full chunks and the remainder.
    let mut workspaces: Vec<GptWorkspace> = Vec::new();
    let mut start = 0;
    while start < count {
        let b = chunk.min(count - start);
        let ws = match given.filter(|ws| ws.batch() == b && ws.n() == n) {
            Some(ws) => ws,
            None => {
                let k = match workspaces.iter().position(|ws| ws.batch() == b) {
                    Some(k) => k,
                    None => {
                        workspaces.push(model.workspace(gpu, b, n)?);
                        workspaces.len() - 1
                    }
                };
                &workspaces[k]
            }
        };
        let rows = start * n..(start + b) * n;
        let x = TokenIds::new(gpu, &inputs[rows.clone()], b, n, vocab)?;
        let y = TokenIds::new(gpu, &targets[rows], b, n, vocab)?;
        let weight = b as f64 / count as f64;
        if let Some(sums) = &mut sums {
            model.forward_backward(gpu, ws, &x, &y).await?;
            for ((_, g), sum) in ws.grads().zip(sums.iter_mut()) {
                for (s, v) in sum.iter_mut().zip(g.to_vec(gpu).await?) {
                    *s += f64::from(v) * weight;
                }
            }
        } else {
            model.forward(gpu, ws, &x, Some(&y)).await?;
        }
        loss += f64::from(ws.read_loss(gpu).await?) * weight;
        start += b;
    }
    Ok(Evaluation { loss, grads: sums })
}

/// One layer's attention at an evaluation (see [`layer_stats`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    /// Mean normalized entropy of `A`.
    pub entropy_a: f64,
    /// Mean normalized entropy of `R` (of `A` when the layer has no λ).
    pub entropy_r: f64,
    /// GTD of `A` per head, at λ = 1 (the spec's measure of a plain map).
    pub gtd_a: Vec<f64>,
    /// GTD of `R` per head, at the layer's λ.
    pub gtd_r: Vec<f64>,
    /// λ per head (empty without λ).
    pub lambda: Vec<f32>,
}

/// The attention metrics of every layer over the first `windows` windows of
/// `inputs` (`[≥ windows, n]`): normalized entropy of `A` and `R` averaged
/// over rows, heads and windows, and GTD per head averaged over windows.
pub async fn layer_stats(
    gpu: &Gpu,
    model: &Gpt,
    inputs: &[u32],
    windows: usize,
    n: usize,
) -> Result<Vec<LayerStats>> {
    layer_stats_in(gpu, model, None, inputs, windows, n).await
}

/// [`layer_stats`] in `given`, a workspace of `windows` windows of `n`
/// tokens, or in a new one.
async fn layer_stats_in(
    gpu: &Gpu,
    model: &Gpt,
    given: Option<&GptWorkspace>,
    inputs: &[u32],
    windows: usize,
    n: usize,
) -> Result<Vec<LayerStats>> {
    if windows == 0 || inputs.len() < windows * n {
        return Err(Error::shape(format!(
            "layer statistics of {windows} windows of {n} tokens need {} ids, got {}",
            windows * n,
            inputs.len()
        )));
    }
    let owned;
    let ws = match given.filter(|ws| ws.batch() == windows && ws.n() == n) {
        Some(ws) => ws,
        None => {
            owned = model.workspace(gpu, windows, n)?;
            &owned
        }
    };
    let x = TokenIds::new(
        gpu,
        &inputs[..windows * n],
        windows,
        n,
        model.config().vocab_size,
    )?;
    model.forward(gpu, ws, &x, None).await?;
    let metrics = model.attention_metrics(gpu, ws).await?;
    let lambdas = model.lambda_values(gpu).await?;
    let heads = model.config().n_head;
    let per_head = |map: &MapMetrics| -> Vec<f64> {
        (0..heads)
            .map(|h| {
                let rows: Vec<_> = (0..windows).filter_map(|i| map.head(i, h)).collect();
                HeadSummary::mean(rows).gtd
            })
            .collect()
    };
    Ok(metrics
        .iter()
        .zip(lambdas)
        .map(|(m, lambda)| {
            let refined = m.refined.as_ref().unwrap_or(&m.attention);
            LayerStats {
                entropy_a: m.attention.overall().normalized_entropy,
                entropy_r: refined.overall().normalized_entropy,
                gtd_a: per_head(&m.attention),
                gtd_r: per_head(refined),
                lambda,
            }
        })
        .collect())
}

/// How [`generate`] draws each character.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely id.
    pub temperature: f64,
    /// Draw only among the `k` most likely ids.
    pub top_k: Option<usize>,
    /// Seed of the draws.
    pub seed: u64,
}

/// Draws an id from `logits` at `temperature` among the `top_k` largest,
/// with a uniform draw of 53 bits from `rng`. Ties order by id, so the
/// choice never depends on the sort.
pub fn sample(logits: &[f32], temperature: f64, top_k: Option<usize>, rng: &mut SplitMix64) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature == 0.0 || order.len() <= 1 {
        return order.first().map_or(0, |&i| i as u32);
    }
    order.truncate(top_k.unwrap_or(order.len()).max(1));
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i]) - top) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

/// Continues `prompt` (ids, at least one) by `tokens` ids, one at a time.
///
/// Each step runs the model over the last `T` ids, padded to `T` after the
/// real ones: attention is causal, so the padding cannot change the logits of
/// the last real position, and one workspace serves every step. Fails with
/// [`Error::InvalidArgument`] for an empty prompt, a temperature that is not
/// finite and ≥ 0, or `top_k` of 0.
pub async fn generate(
    gpu: &Gpu,
    model: &Gpt,
    prompt: &[u32],
    tokens: usize,
    sampling: Sampling,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty; give at least one id"));
    }
    if !(sampling.temperature.is_finite() && sampling.temperature >= 0.0) {
        return Err(Error::invalid(format!(
            "temperature must be finite and >= 0, got {}",
            sampling.temperature
        )));
    }
    if sampling.top_k == Some(0) {
        return Err(Error::invalid("top-k must be >= 1"));
    }
    let (t, vocab) = (model.config().n_positions, model.config().vocab_size);
    let ws = model.workspace(gpu, 1, t)?;
    let mut rng = SplitMix64::new(sampling.seed);
    let mut ids = prompt.to_vec();
    for _ in 0..tokens {
        let context = &ids[ids.len().saturating_sub(t)..];
        let last = context.len() - 1;
        let mut window = context.to_vec();
        window.resize(t, 0);
        let x = TokenIds::new(gpu, &window, 1, t, vocab)?;
        model.forward(gpu, &ws, &x, None).await?;
        let logits = ws
            .logits()
            .to_vec_range(gpu, last * vocab..(last + 1) * vocab)
            .await?;
        ids.push(sample(
            &logits,
            sampling.temperature,
            sampling.top_k,
            &mut rng,
        ));
    }
    Ok(ids.split_off(prompt.len()))
}
