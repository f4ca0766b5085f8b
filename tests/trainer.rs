//! The library's training loop (`saobp::model::Trainer`) on every adapter:
//! its one-submission step gives the same bits as the forward, backward and
//! AdamW run one after another; a batch in micro-batches trains as in one
//! pass; a few steps lower the loss; a step whose loss is not finite changes
//! nothing; `generate` is deterministic for a seed.

mod common;

use common::{assert_close, assert_near, on_every_gpu, Tolerance};
use saobp::data::{Corpus, Split};
use saobp::kernels::gpt::TokenIds;
use saobp::kernels::optim::{lr_at, AdamW, AdamWOptions};
use saobp::model::{
    evaluate, generate, layer_stats, Gpt, GptConfig, Sampling, TrainOptions, Trainer,
};
use saobp::{Error, Gpu};

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\
All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n";

fn corpus() -> Corpus {
    Corpus::from_text(&TEXT.repeat(8)).unwrap()
}

fn config(vocab: usize) -> GptConfig {
    GptConfig {
        vocab_size: vocab,
        n_positions: 16,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        layer_norm_epsilon: 1e-5,
    }
}

fn options(learn_lambda: bool) -> TrainOptions {
    TrainOptions {
        seed: 3,
        batch: 4,
        micro_batch: 4,
        steps: 300,
        lr: 3e-2,
        learn_lambda,
    }
}

/// The test GPT with λ = 0.3 in every layer and head, from seed 1.
fn with_lambda(gpu: &Gpu, c: &GptConfig) -> Gpt {
    Gpt::init(gpu, c.clone(), 1, Some(&vec![vec![0.3; 2]; 2])).unwrap()
}

fn bits(values: &[(String, Vec<f32>)]) -> Vec<(String, Vec<u32>)> {
    values
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// `Trainer::train_step` (one submission, AdamW guarded by the loss) and
/// the same step spelled out (`forward_backward`, then `AdamW::step`) leave
/// bit-identical parameters, with λ learned.
#[test]
fn one_submission_equals_the_phases_run_apart() {
    on_every_gpu("trainer: one submission", |gpu| {
        let corpus = corpus();
        let c = config(corpus.vocab().len());
        let opts = options(true);
        let mut trainer = Trainer::new(gpu, with_lambda(gpu, &c), opts).unwrap();

        let model = with_lambda(gpu, &c);
        let ws = model.workspace(gpu, opts.batch, c.n_positions).unwrap();
        let shapes: Vec<_> = model
            .parameters()
            .map(|(s, _)| (s.shape.as_slice(), s.group))
            .collect();
        let mut adamw = AdamW::new(gpu, &shapes, AdamWOptions::default()).unwrap();
        let params: Vec<_> = model.parameters().map(|(_, p)| p).collect();
        let grads: Vec<_> = ws.grads().map(|(_, g)| g).collect();
        let t = c.n_positions;
        for step in 0..3 {
            let report = pollster::block_on(trainer.train_step(gpu, &corpus)).unwrap();
            assert!(report.applied, "step {step}: {report:?}");
            let (x, y) = corpus.batch(opts.seed, step as u64, opts.batch, t).unwrap();
            let x = TokenIds::new(gpu, &x, opts.batch, t, c.vocab_size).unwrap();
            let y = TokenIds::new(gpu, &y, opts.batch, t, c.vocab_size).unwrap();
            model.forward_backward_blocking(gpu, &ws, &x, &y).unwrap();
            let apart = ws.loss_blocking(gpu).unwrap();
            adamw
                .step_blocking(gpu, &params, &grads, lr_at(step, opts.steps, opts.lr))
                .unwrap();
            assert_eq!(report.loss.to_bits(), apart.to_bits(), "step {step}: loss");
            let norm = adamw.last_grad_norm_blocking(gpu).unwrap();
            assert_eq!(
                report.grad_norm.to_bits(),
                norm.to_bits(),
                "step {step}: norm"
            );
        }
        assert_eq!(trainer.step(), 3);
        assert_eq!(trainer.optimizer().steps(), 3);
        assert_eq!(
            bits(&trainer.model().values_blocking(gpu).unwrap()),
            bits(&model.values_blocking(gpu).unwrap()),
            "parameters after 3 steps"
        );
    });
}

/// A batch in two passes of half its windows (gradients and losses
/// averaged on the GPU) trains as the batch in one pass, up to f32
/// rounding: the same losses and norms, the same parameters after three
/// steps, with λ learned. The trainer's own evaluation and layer statistics
/// (run in its workspace) equal the free functions'.
#[test]
fn micro_batches_train_as_one_pass() {
    on_every_gpu("trainer: micro-batches", |gpu| {
        let corpus = corpus();
        let c = config(corpus.vocab().len());
        let trainer = |micro_batch| {
            let opts = TrainOptions {
                micro_batch,
                ..options(true)
            };
            Trainer::new(gpu, with_lambda(gpu, &c), opts).unwrap()
        };
        let (mut whole, mut halves) = (trainer(4), trainer(2));
        for step in 0..3 {
            let a = pollster::block_on(whole.train_step(gpu, &corpus)).unwrap();
            let b = pollster::block_on(halves.train_step(gpu, &corpus)).unwrap();
            assert!(a.applied && b.applied, "step {step}: {a:?} {b:?}");
            let tol = Tolerance {
                abs: 1e-6,
                rel: 1e-5,
            };
            assert_near(
                &format!("step {step}: loss"),
                b.loss.into(),
                a.loss.into(),
                tol,
            );
            assert_near(
                &format!("step {step}: gradient norm"),
                b.grad_norm.into(),
                a.grad_norm.into(),
                tol,
            );
        }
        assert_eq!(halves.step(), 3);
        let want = whole.model().values_blocking(gpu).unwrap();
        let got = halves.model().values_blocking(gpu).unwrap();
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            let w: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
            assert_close(name, g, &w, 1e-4, 1e-5);
        }

        let t = c.n_positions;
        let (x, y) = corpus.windows(Split::Val, t, 5).unwrap();
        let free = pollster::block_on(evaluate(gpu, halves.model(), (&x, &y), 5, t, 2, false))
            .unwrap()
            .loss;
        let own = pollster::block_on(halves.evaluate(gpu, (&x, &y), 5)).unwrap();
        assert_eq!(
            own.to_bits(),
            free.to_bits(),
            "evaluation in the trainer's workspace"
        );
        let free = pollster::block_on(layer_stats(gpu, halves.model(), &x, 2, t)).unwrap();
        let own = pollster::block_on(halves.layer_stats(gpu, &x, 2)).unwrap();
        assert_eq!(own, free, "layer statistics in the trainer's workspace");
    });
}

/// A micro-batch that does not divide the batch, or is 0, is refused.
#[test]
fn a_micro_batch_must_divide_the_batch() {
    on_every_gpu("trainer: bad micro-batch", |gpu| {
        let corpus = corpus();
        let c = config(corpus.vocab().len());
        for micro_batch in [0, 3, 8] {
            let model = Gpt::init(gpu, c.clone(), 1, None).unwrap();
            let opts = TrainOptions {
                micro_batch,
                ..options(false)
            };
            assert!(
                matches!(
                    Trainer::new(gpu, model, opts),
                    Err(Error::InvalidArgument(_))
                ),
                "micro-batch {micro_batch} of a batch of 4"
            );
        }
    });
}

/// Sixty steps on a short text lower the batch loss well below its start
/// (ln V at initialization).
#[test]
fn a_few_steps_lower_the_loss() {
    on_every_gpu("trainer: loss falls", |gpu| {
        let corpus = corpus();
        let c = config(corpus.vocab().len());
        let model = Gpt::init(gpu, c, 1, None).unwrap();
        let mut trainer = Trainer::new(gpu, model, options(false)).unwrap();
        let mut losses = Vec::new();
        for _ in 0..60 {
            losses.push(
                pollster::block_on(trainer.train_step(gpu, &corpus))
                    .unwrap()
                    .loss,
            );
        }
        let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
        let last: f32 = losses[55..].iter().sum::<f32>() / 5.0;
        assert!(
            last < first - 0.5,
            "mean loss of the first 5 steps {first}, of the last 5 {last}"
        );
    });
}

/// Finite weights whose logits overflow f32 give a non-finite loss: the
/// step leaves every parameter, the optimizer and the step count as they
/// were, and returns the loss.
#[test]
fn a_non_finite_loss_changes_nothing() {
    on_every_gpu("trainer: non-finite loss", |gpu| {
        let corpus = corpus();
        let c = config(corpus.vocab().len());
        let mut values = saobp::model::init_values(&c, 1, None).unwrap();
        for (name, v) in &mut values {
            let scale = match name.as_str() {
                "transformer.ln_f.weight" => 1e36,
                "transformer.wte.weight" => 1e4,
                _ => 1.0,
            };
            v.iter_mut().for_each(|x| *x *= scale);
        }
        let model = Gpt::from_values(gpu, c, &values).unwrap();
        let mut trainer = Trainer::new(gpu, model, options(false)).unwrap();
        let before = bits(&trainer.model().values_blocking(gpu).unwrap());
        let report = pollster::block_on(trainer.train_step(gpu, &corpus)).unwrap();
        assert!(!report.loss.is_finite(), "the loss is {}", report.loss);
        assert!(!report.applied);
        assert_eq!(trainer.step(), 0);
        assert_eq!(trainer.optimizer().steps(), 0);
        assert_eq!(bits(&trainer.model().values_blocking(gpu).unwrap()), before);
        for i in 0..trainer.optimized_names().len() {
            let (m, v) = trainer.optimizer().moments(i).unwrap();
            let zero =
                |t: &saobp::Tensor| t.to_vec_blocking(gpu).unwrap().iter().all(|&x| x == 0.0);
            assert!(zero(m) && zero(v), "moments of tensor {i} moved");
        }
    });
}

/// The same seed draws the same characters; another seed, others.
#[test]
fn generation_is_deterministic_for_a_seed() {
    on_every_gpu("trainer: generate", |gpu| {
        let corpus = corpus();
        let c = config(corpus.vocab().len());
        let model = Gpt::init(gpu, c, 1, None).unwrap();
        let prompt = corpus.vocab().encode("First").unwrap();
        let sampling = |seed| Sampling {
            temperature: 1.0,
            top_k: Some(20),
            seed,
        };
        let run =
            |seed| pollster::block_on(generate(gpu, &model, &prompt, 40, sampling(seed))).unwrap();
        let a = run(7);
        assert_eq!(a.len(), 40);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        // Temperature 0 is the argmax, whatever the seed.
        let greedy = |seed| {
            let s = Sampling {
                temperature: 0.0,
                ..sampling(seed)
            };
            pollster::block_on(generate(gpu, &model, &prompt, 10, s)).unwrap()
        };
        assert_eq!(greedy(1), greedy(2));
        assert!(pollster::block_on(generate(gpu, &model, &[], 5, sampling(1))).is_err());
    });
}
