//! The whole GPT on the GPU against its float64 reference
//! (`saobp::reference::gpt_model`), on every adapter: the loss and the
//! gradient of every parameter, without λ, and with a learned λ per head
//! (zero in one head). Also: a repeated step creates no buffer and gives
//! the same bits; checkpoints round-trip; bad checkpoints and batches are
//! typed errors.
//!
//! Bounds. The loss and logits take the spec's. A gradient is compared
//! within the spec's relative 1e-4, with an absolute floor of 1e-4 × the
//! largest reference gradient of its tensor (instead of the spec's fixed
//! 1e-5): each is a chain of f32 products and row sums through two layers,
//! and the softmax and LayerNorm backwards subtract nearly equal terms
//! (`A(g − Σ Ag)`, `g − mean(g) − x̂·mean(g·x̂)`), so entries near zero carry
//! the rounding of their tensor's large ones. Measured on both software
//! adapters, the worst entry uses under a tenth of this bound; a wrong or
//! missing term moves entries by the size of the gradient itself.

mod common;

use std::collections::BTreeMap;

use common::{assert_near, assert_within, on_every_gpu, Rng, Tolerance};
use saobp::kernels::gpt::TokenIds;
use saobp::model::{init_values, Gpt, GptConfig};
use saobp::reference::gpt_model;
use saobp::{Error, Gpu};

fn config() -> GptConfig {
    GptConfig {
        vocab_size: 11,
        n_positions: 20,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        layer_norm_epsilon: 1e-5,
    }
}

const BATCH: usize = 3;
const N: usize = 16;

/// The spec's initial values, with the LayerNorm parameters and biases
/// moved off 1 and 0 so that their gradients are exercised in full.
fn values(c: &GptConfig, seed: u64, lambda: Option<&[Vec<f32>]>) -> Vec<(String, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    let mut values = init_values(c, seed, lambda).unwrap();
    for (name, v) in &mut values {
        if name.contains("ln_") || name.ends_with(".bias") {
            for x in v.iter_mut() {
                *x += rng.uniform(-0.2, 0.2);
            }
        }
    }
    values
}

fn tokens(rng: &mut Rng, vocab: usize) -> Vec<u32> {
    (0..BATCH * N).map(|_| rng.below(vocab) as u32).collect()
}

fn named(values: &[(String, Vec<f32>)]) -> gpt_model::Named {
    values
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|&x| f64::from(x)).collect()))
        .collect::<BTreeMap<_, _>>()
}

fn grad_tolerance(want: &[f64]) -> Tolerance {
    let top = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    Tolerance {
        abs: 1e-4 * top,
        rel: 1e-4,
    }
}

/// Runs a forward and backward of `values` on `gpu` and checks the loss and
/// every gradient against the reference.
fn check_against_reference(gpu: &Gpu, what: &str, values: &[(String, Vec<f32>)], seed: u64) {
    check_config_against_reference(gpu, &config(), what, values, seed);
}

/// [`check_against_reference`] for the model of config `c`.
fn check_config_against_reference(
    gpu: &Gpu,
    c: &GptConfig,
    what: &str,
    values: &[(String, Vec<f32>)],
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let (ids, targets) = (
        tokens(&mut rng, c.vocab_size),
        tokens(&mut rng, c.vocab_size),
    );
    let (want, want_grads) =
        gpt_model::backward(c, &named(values), &ids, &targets, BATCH, N).unwrap();
    let model = Gpt::from_values(gpu, c.clone(), values).unwrap();
    let ws = model.workspace(gpu, BATCH, N).unwrap();
    let gpu_ids = TokenIds::new(gpu, &ids, BATCH, N, c.vocab_size).unwrap();
    let gpu_targets = TokenIds::new(gpu, &targets, BATCH, N, c.vocab_size).unwrap();
    model
        .forward_backward_blocking(gpu, &ws, &gpu_ids, &gpu_targets)
        .unwrap();
    let loss = ws.loss_blocking(gpu).unwrap();
    assert_near(
        &format!("{what}: loss"),
        f64::from(loss),
        want.loss,
        Tolerance::SPEC,
    );
    let logits = ws.logits().to_vec_blocking(gpu).unwrap();
    assert_within(
        &format!("{what}: logits"),
        &logits,
        &want.logits,
        Tolerance::SPEC,
    );
    assert_eq!(
        ws.grads().count(),
        want_grads.len(),
        "{what}: gradient count"
    );
    for (spec, grad) in ws.grads() {
        let want = &want_grads[&spec.name];
        let got = grad.to_vec_blocking(gpu).unwrap();
        assert_within(
            &format!("{what}: ∂{}", spec.name),
            &got,
            want,
            grad_tolerance(want),
        );
    }
}

#[test]
fn gradients_without_lambda_match_the_reference() {
    on_every_gpu("GPT gradients, no λ", |gpu| {
        let v = values(&config(), 5, None);
        check_against_reference(gpu, "no λ", &v, 50);
    });
}

/// The forward fuses the projections' bias + residual, the MLP's bias +
/// GELU, c_attn's bias + split into heads and the merge of O's heads, and
/// the backward the GELU backward and the merge of dq, dk and dv, into the
/// product's store where
/// the matmul copies both operands for a linear texture kernel, and runs
/// the elementwise kernels after the product elsewhere: both paths against the reference, with each
/// matmul family forced, in fresh contexts (their kernel counts are their
/// own), checking which path ran.
#[test]
fn fused_and_separate_epilogues_match_the_reference() {
    use saobp::{set_matmul_family, GpuOptions, MatmulFamily, MatmulVariant};
    let opts = GpuOptions::from_env().unwrap();
    let v = values(&config(), 8, None);
    for gpu in Gpu::all_blocking(&opts) {
        let gpu = gpu.unwrap();
        let mut families: Vec<MatmulFamily> = MatmulVariant::available(&gpu)
            .into_iter()
            .map(|v| v.family())
            .collect();
        families.dedup();
        for &family in &families {
            set_matmul_family(&gpu, Some(family));
            let before = gpu.work();
            check_against_reference(&gpu, &format!("{family:?}"), &v, 80);
            let work = gpu.work().since(&before);
            let ran = |label: &str| work.kernels.iter().any(|(k, _)| k.contains(label));
            let fused = family == MatmulFamily::Texture;
            assert_eq!(
                ran("_bias_residual::"),
                fused,
                "{family:?}: {:?}",
                work.kernels
            );
            assert_eq!(ran("_bias_gelu::"), fused, "{family:?}: {:?}", work.kernels);
            assert_eq!(
                ran("gpt::bias_residual"),
                !fused,
                "{family:?}: {:?}",
                work.kernels
            );
            assert_eq!(
                ran("gpt::bias_gelu"),
                !fused,
                "{family:?}: {:?}",
                work.kernels
            );
            assert_eq!(ran("_split_qkv::"), fused, "{family:?}: {:?}", work.kernels);
            // The backward's GELU, in the store of the product before it.
            assert_eq!(
                ran("_tb_gelu_backward::"),
                fused,
                "{family:?}: {:?}",
                work.kernels
            );
            assert_eq!(
                ran("gpt::gelu_backward"),
                !fused,
                "{family:?}: {:?}",
                work.kernels
            );
            // The heads of O (forward) and of dq, dk, dv (backward) go
            // into token rows from the products' stores.
            let stored = ran("linear_merge_heads::") || ran("subgroup_merge_heads::");
            assert_eq!(stored, fused, "{family:?}: {:?}", work.kernels);
            assert_eq!(
                ran("_ta_merge_heads::"),
                fused,
                "{family:?}: {:?}",
                work.kernels
            );
            for separate in ["bert::merge_heads", "gpt::merge_qkv"] {
                assert_eq!(ran(separate), !fused, "{family:?}: {:?}", work.kernels);
            }
            // ∂L/∂O into heads from the store of dy·W_projᵀ.
            assert_eq!(
                ran("_tb_split_heads::"),
                fused,
                "{family:?}: {:?}",
                work.kernels
            );
            assert_eq!(
                ran("bert::split_heads"),
                !fused,
                "{family:?}: {:?}",
                work.kernels
            );
            // With λ > 0 the refined output writes its heads into token
            // rows whatever the products; dv's last kernel and dq and dk's
            // products where the products fuse.
            let before = gpu.work();
            let lambda = vec![vec![0.4, 1.1], vec![0.0, 0.7]];
            let with_lambda = values(&config(), 6, Some(&lambda));
            check_against_reference(&gpu, &format!("{family:?} λ"), &with_lambda, 60);
            let work = gpu.work().since(&before);
            let ran = |label: &str| work.kernels.iter().any(|(k, _)| k.contains(label));
            let merged = (ran("fused_output_merged::"), ran("bert::merge_heads"));
            assert_eq!(merged, (true, false), "{family:?} λ: {:?}", work.kernels);
            for merged in ["value_grad_merged::", "_merge_heads::"] {
                assert_eq!(ran(merged), fused, "{family:?} λ: {:?}", work.kernels);
            }
            assert_eq!(
                ran("gpt::merge_qkv"),
                !fused,
                "{family:?} λ: {:?}",
                work.kernels
            );
            // dA's terms read off A from the texture the Aᵀ products copied
            // it into, where they copied it.
            assert_eq!(
                ran("saobp::attention_grad_texture"),
                fused,
                "{family:?} λ: {:?}",
                work.kernels
            );
            assert_eq!(
                ran("gpt::split_qkv"),
                !fused,
                "{family:?}: {:?}",
                work.kernels
            );
        }
        // Heads 6 wide are not whole texels: with the texture family the
        // split of c_attn takes its own kernel, the other epilogues still fuse.
        let narrow = GptConfig {
            n_embd: 12,
            ..config()
        };
        set_matmul_family(&gpu, Some(MatmulFamily::Texture));
        let before = gpu.work();
        let v = values(&narrow, 9, None);
        check_config_against_reference(&gpu, &narrow, "heads 6 wide", &v, 90);
        let work = gpu.work().since(&before);
        let ran = |label: &str| work.kernels.iter().any(|(k, _)| k.contains(label));
        assert!(
            ran("gpt::split_qkv") && !ran("_split_qkv::"),
            "{:?}",
            work.kernels
        );
        assert!(
            ran("_bias_gelu::") && ran("_bias_residual::"),
            "{:?}",
            work.kernels
        );
        eprintln!(
            "fused and separate epilogues: ok with {families:?} on {}",
            gpu.adapter()
        );
    }
}

#[test]
fn gradients_with_learned_lambda_match_the_reference() {
    on_every_gpu("GPT gradients, λ", |gpu| {
        // λ = 0 in one head: its dλ is still the full derivative.
        let lambda = vec![vec![0.4, 1.1], vec![0.0, 0.7]];
        let v = values(&config(), 6, Some(&lambda));
        check_against_reference(gpu, "λ", &v, 60);
        // Large λ: the refined map is mostly two-hop mass.
        let lambda = vec![vec![6.0, 3.0], vec![9.0, 0.2]];
        let v = values(&config(), 7, Some(&lambda));
        check_against_reference(gpu, "large λ", &v, 70);
    });
}

#[test]
fn lambda_zero_trains_as_plain_gpt2() {
    on_every_gpu("GPT λ = 0 vs no λ", |gpu| {
        let c = config();
        let plain = values(&c, 8, None);
        let zero = values(&c, 8, Some(&[vec![0.0; 2], vec![0.0; 2]]));
        let mut rng = Rng::new(80);
        let (ids, targets) = (
            tokens(&mut rng, c.vocab_size),
            tokens(&mut rng, c.vocab_size),
        );
        let ids = TokenIds::new(gpu, &ids, BATCH, N, c.vocab_size).unwrap();
        let targets = TokenIds::new(gpu, &targets, BATCH, N, c.vocab_size).unwrap();
        let run = |values: &[(String, Vec<f32>)]| {
            let model = Gpt::from_values(gpu, c.clone(), values).unwrap();
            let ws = model.workspace(gpu, BATCH, N).unwrap();
            model
                .forward_backward_blocking(gpu, &ws, &ids, &targets)
                .unwrap();
            let grads: BTreeMap<String, Vec<f32>> = ws
                .grads()
                .map(|(s, g)| (s.name.clone(), g.to_vec_blocking(gpu).unwrap()))
                .collect();
            (ws.loss_blocking(gpu).unwrap(), grads)
        };
        let (loss_plain, grads_plain) = run(&plain);
        let (loss_zero, grads_zero) = run(&zero);
        assert_near(
            "loss",
            f64::from(loss_zero),
            f64::from(loss_plain),
            Tolerance::SPEC,
        );
        for (name, want) in &grads_plain {
            let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
            assert_within(
                &format!("∂{name}"),
                &grads_zero[name],
                &want,
                grad_tolerance(&want),
            );
        }
        assert_eq!(grads_zero.len(), grads_plain.len() + 2, "one dλ per layer");
    });
}

#[test]
fn a_repeated_step_creates_no_buffer_and_gives_the_same_bits() {
    on_every_gpu("GPT repeated step", |shared| {
        // A context of its own: other tests allocate on the shared one.
        let gpu = &Gpu::new_blocking(&common::same_adapter(shared)).unwrap();
        let c = config();
        let model = Gpt::init(gpu, c.clone(), 9, Some(&[vec![0.5, 0.0], vec![1.0, 2.0]])).unwrap();
        let ws = model.workspace(gpu, BATCH, N).unwrap();
        let mut rng = Rng::new(90);
        let ids =
            TokenIds::new(gpu, &tokens(&mut rng, c.vocab_size), BATCH, N, c.vocab_size).unwrap();
        let targets =
            TokenIds::new(gpu, &tokens(&mut rng, c.vocab_size), BATCH, N, c.vocab_size).unwrap();
        let snapshot = || -> Vec<u32> {
            let mut bits = vec![ws.loss_blocking(gpu).unwrap().to_bits()];
            for (_, g) in ws.grads() {
                bits.extend(g.to_vec_blocking(gpu).unwrap().iter().map(|x| x.to_bits()));
            }
            bits
        };
        model
            .forward_backward_blocking(gpu, &ws, &ids, &targets)
            .unwrap();
        let first = snapshot();
        let (buffers, work) = (gpu.allocations(), gpu.work());
        for _ in 0..3 {
            model
                .forward_backward_blocking(gpu, &ws, &ids, &targets)
                .unwrap();
        }
        assert_eq!(
            gpu.allocations(),
            buffers,
            "a repeated step created buffers"
        );
        assert_eq!(
            gpu.work().since(&work).submissions,
            3,
            "one submission per step"
        );
        assert_eq!(snapshot(), first, "a repeated step changed bits");
    });
}

#[test]
fn checkpoints_round_trip_through_safetensors_and_config_json() {
    let gpu = &common::gpus()[0];
    let c = config();
    let model = Gpt::init(gpu, c.clone(), 3, Some(&[vec![0.25, 0.0], vec![1.5, 0.75]])).unwrap();
    let bytes = model.to_safetensors_blocking(gpu).unwrap();
    let dir = common::TempDir::new("gpt-checkpoint");
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    std::fs::write(dir.join("config.json"), c.to_json()).unwrap();
    let loaded = Gpt::load(gpu, &dir).unwrap();
    assert!(loaded.has_lambda());
    assert_eq!(loaded.config(), &c);
    assert_eq!(
        loaded.values_blocking(gpu).unwrap(),
        model.values_blocking(gpu).unwrap()
    );
    let lambda = loaded
        .parameter("transformer.h.1.attn.saobp_lambda")
        .unwrap();
    assert_eq!(lambda.to_vec_blocking(gpu).unwrap(), vec![1.5, 0.75]);
}

/// Named parameter values, as `Gpt::from_values` takes them.
type Values = Vec<(String, Vec<f32>)>;

fn model_error(gpu: &Gpu, values: &[(String, Vec<f32>)]) -> String {
    match Gpt::from_values(gpu, config(), values) {
        Err(Error::Model(msg)) => msg,
        other => panic!("expected a model error, got {other:?}"),
    }
}

#[test]
fn bad_checkpoints_and_batches_are_typed_errors() {
    let gpu = &common::gpus()[0];
    let c = config();
    let good = init_values(&c, 1, Some(&[vec![0.5; 2], vec![0.5; 2]])).unwrap();
    let edit = |f: &dyn Fn(&mut Values)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let missing = edit(&|v| v.retain(|(n, _)| n != "transformer.h.1.mlp.c_fc.bias"));
    assert!(model_error(gpu, &missing).contains("transformer.h.1.mlp.c_fc.bias"));
    let short = edit(&|v| {
        v[4].1.pop();
    });
    assert!(model_error(gpu, &short).contains(&short[4].0));
    let negative = edit(&|v| {
        let l = v
            .iter_mut()
            .find(|(n, _)| n.ends_with("h.1.attn.saobp_lambda"))
            .unwrap();
        l.1[0] = -0.1;
    });
    assert!(model_error(gpu, &negative).contains("λ"));
    let layer0_only = edit(&|v| v.retain(|(n, _)| n != "transformer.h.1.attn.saobp_lambda"));
    assert!(model_error(gpu, &layer0_only).contains("saobp_lambda"));
    let layer1_only = edit(&|v| v.retain(|(n, _)| n != "transformer.h.0.attn.saobp_lambda"));
    assert!(model_error(gpu, &layer1_only).contains("all or none"));
    let extra = edit(&|v| v.push(("lm_head.weight".into(), vec![0.0; 11 * 32])));
    assert!(model_error(gpu, &extra).contains("not GPT-2 parameters"));
    assert!(matches!(
        Gpt::from_safetensors(gpu, c.clone(), b"not a file"),
        Err(Error::Model(_))
    ));

    let model = Gpt::from_values(gpu, c.clone(), &good).unwrap();
    assert!(matches!(
        model.workspace(gpu, 2, 21),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        model.workspace(gpu, 0, 4),
        Err(Error::InvalidArgument(_))
    ));
    let ws = model.workspace(gpu, 2, 4).unwrap();
    let ids = TokenIds::new(gpu, &[1; 8], 2, 4, 11).unwrap();
    let other_vocab = TokenIds::new(gpu, &[1; 8], 2, 4, 12).unwrap();
    let other_shape = TokenIds::new(gpu, &[1; 6], 2, 3, 11).unwrap();
    for (what, targets) in [("vocabulary", &other_vocab), ("shape", &other_shape)] {
        let r = model.forward_backward_blocking(gpu, &ws, &ids, targets);
        assert!(matches!(r, Err(Error::Shape(_))), "{what}: {r:?}");
    }
    let plain = Gpt::init(gpu, c, 1, None).unwrap();
    let r = plain.forward_blocking(gpu, &ws, &ids, None);
    assert!(
        matches!(r, Err(Error::Shape(_))),
        "a workspace of another model: {r:?}"
    );
}
