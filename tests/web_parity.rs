//! The browser and native builds agree: the per-head summaries the demo
//! page's self-test computed on WebGPU (its `window.saobpReport`) match the
//! same workload run here, on every adapter, within the spec's tolerance
//! (the library's one rule, `saobp::reference::compare`, which the page's
//! self-test judges by too). Both sides write a summary as `HeadSummary`
//! serializes, so the field names must match exactly as well.
//!
//! The report's model part (`model`) is checked the same way: the page ran
//! all-MiniLM-L6-v2 on fixed sentences as its model view does (the plain
//! model's `A` per layer, SAOBP on those maps with the library's
//! `refine_map`, the metrics of `R` as the spec defines them); here the same
//! sentences must give the same wordpieces and ids, each layer's mean
//! summaries of `A` and `R` must match within the spec's tolerance, and so
//! must the cosine of the two sentence embeddings without and with SAOBP
//! inside the model. A report without the model part fails. The model comes
//! from `bash scripts/fetch-model.sh`, as for `tests/model.rs`.
//!
//! The report is `web/selftest-report.json`, written by `bash web/test.sh`
//! (which then runs this test with `SAOBP_WEB_REPORT` pointing at it, so a
//! missing report fails there). Without that variable the committed report is
//! used; if it is absent too (a packaged crate has no `web/`) the test says so
//! and checks nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, assert_near, assert_within, on_every_gpu};
use saobp::reference::Tolerance;
use saobp::workload::{synthetic, Pattern};
use saobp::{attention_blocking, AttentionOptions, Lambda, Mode, Tensor};
use serde_json::Value;

/// A summary's JSON fields, in the order `HeadSummary` declares them.
const SUMMARY_FIELDS: [&str; 8] = [
    "entropy",
    "normalized_entropy",
    "sparsity",
    "peak",
    "distance",
    "multi_hop_mass",
    "gtd",
    "rows",
];

/// The field names of a summary object, sorted.
fn keys(summary: &Value, what: &str) -> Vec<String> {
    let mut keys: Vec<String> = summary
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {summary}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn report() -> Value {
    let (path, required) = match std::env::var("SAOBP_WEB_REPORT") {
        Ok(p) => (PathBuf::from(p), true),
        Err(_) => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("web/selftest-report.json"),
            false,
        ),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
        Err(e) if !required => panic!(
            "no browser report at {} ({e}); run `bash web/test.sh`",
            path.display()
        ),
        Err(e) => panic!("SAOBP_WEB_REPORT = {}: {e}", path.display()),
    }
}

fn pattern(name: &str) -> Pattern {
    (0..4)
        .map(Pattern::for_head)
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("unknown pattern {name:?} in the report"))
}

/// FNV-1a over the bit patterns of the inputs, as `web/src/selftest.rs` computes it.
fn checksum(q: &[f32], k: &[f32], v: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in q.iter().chain(k).chain(v) {
        for byte in x.to_bits().to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn numbers(v: &Value, what: &str) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("report: {what} is not an array"))
        .iter()
        .map(|x| {
            x.as_f64()
                .unwrap_or_else(|| panic!("report: {what} holds {x}"))
        })
        .collect()
}

#[test]
fn browser_summaries_match_native() {
    let report = report();
    assert_eq!(
        report["pass"], true,
        "the browser self-test itself failed: {}",
        report["failures"]
    );
    let w = &report["workload"];
    assert_eq!(w["mode"], "fused", "report: unexpected mode");
    let shape: Vec<usize> = numbers(&w["shape"], "shape")
        .iter()
        .map(|&x| x as usize)
        .collect();
    let shape: [usize; 4] = shape.try_into().expect("report: shape has 4 entries");
    let patterns: Vec<Pattern> = w["patterns"]
        .as_array()
        .expect("report: patterns")
        .iter()
        .map(|p| pattern(p.as_str().unwrap_or("")))
        .collect();
    let lambda: Vec<f32> = numbers(&w["lambda"], "lambda")
        .iter()
        .map(|&x| x as f32)
        .collect();
    let temperature = w["temperature"].as_f64().expect("report: temperature") as f32;
    let seed = w["seed"].as_u64().expect("report: seed");
    let work = synthetic(shape, &patterns, temperature, seed);
    // The same bits in: any difference below comes from the GPU, not the inputs.
    assert_eq!(
        checksum(&work.q, &work.k, &work.v),
        w["checksum"].as_str().unwrap_or(""),
        "the native workload differs from the browser's"
    );
    let [b, heads, n, _] = shape;
    assert_eq!(b, 1, "report: one batch item expected");
    let cases = report["cases"].as_array().expect("report: cases");
    assert!(!cases.is_empty(), "report: no cases");
    let mut want_keys: Vec<String> = SUMMARY_FIELDS.iter().map(|s| s.to_string()).collect();
    want_keys.sort();

    on_every_gpu("web parity", |gpu| {
        let q = Tensor::from_slice(gpu, &shape, &work.q).unwrap();
        let k = Tensor::from_slice(gpu, &shape, &work.k).unwrap();
        let v = Tensor::from_slice(gpu, &shape, &work.v).unwrap();
        for case in cases {
            let causal = case["causal"].as_bool().expect("report: causal");
            let opts = AttentionOptions {
                causal,
                lambda: Lambda::PerHead(lambda.clone()),
                mode: Mode::Fused,
                metrics: true,
                ..Default::default()
            };
            let out = attention_blocking(gpu, &q, &k, &v, &opts).unwrap();
            let metrics = out.metrics.unwrap();
            let refined = metrics.refined.unwrap();
            let browser_heads = case["heads"].as_array().expect("report: heads");
            assert_eq!(browser_heads.len(), heads, "report: heads per case");
            for (h, browser) in browser_heads.iter().enumerate() {
                for (map, native) in [
                    ("attention", metrics.attention.head(0, h).unwrap()),
                    ("refined", refined.head(0, h).unwrap()),
                ] {
                    // One JSON shape: the derive's fields, on both sides.
                    let native_json = serde_json::to_value(native).unwrap();
                    assert_eq!(keys(&native_json, "a native summary"), want_keys);
                    assert_eq!(
                        keys(&browser[map], &format!("report: head {h} {map}")),
                        want_keys,
                        "report: head {h} {map} fields"
                    );
                    for (name, value) in native.fields() {
                        assert_eq!(native_json[name].as_f64(), Some(value), "{name}");
                        let want = browser[map][name]
                            .as_f64()
                            .unwrap_or_else(|| panic!("report: head {h} {map} has no {name}"));
                        // `distance` sums N positions of up to N − 1: its
                        // absolute error grows with N (as in tests/metrics.rs).
                        let tol = if name == "distance" {
                            Tolerance::scaled_by(n)
                        } else {
                            Tolerance::SPEC
                        };
                        let what = format!(
                            "{} head {h} {map} {name}",
                            if causal { "causal" } else { "full" }
                        );
                        assert_close(&what, &[value as f32], &[want], tol.rel, tol.abs);
                    }
                    assert_eq!(
                        Some(u64::from(native.rows)),
                        browser[map]["rows"].as_u64(),
                        "head {h} {map}: counted rows"
                    );
                }
            }
        }
    });
}

/// `A`'s and `R`'s per-head summaries of every layer of `text`, as the page's
/// model view computes them (`web/src/model.rs`), and the sentence embedding
/// without and with SAOBP of strength `lambda` inside the model.
#[cfg(feature = "model")]
struct NativeText {
    encoded: saobp::model::Encoded,
    layers: Vec<(saobp::HeadSummary, saobp::HeadSummary)>,
    plain: Vec<f32>,
    with_saobp: Vec<f32>,
}

#[cfg(feature = "model")]
fn native_text(
    gpu: &saobp::Gpu,
    model: &saobp::model::BertModel,
    tokenizer: &saobp::model::TextTokenizer,
    text: &str,
    lambda: f32,
) -> NativeText {
    use saobp::model::{sentence_embedding, ForwardOptions};
    use saobp::{metrics_blocking, refine_map_blocking, HeadSummary, MetricsOptions};

    let encoded = tokenizer.encode(text).unwrap();
    let embed = |out: &saobp::model::ForwardOutput| {
        let hidden = out.hidden.to_vec_blocking(gpu).unwrap();
        sentence_embedding(&hidden, model.config.hidden_size, encoded.ids.len())
    };
    let plain_opts = ForwardOptions {
        metrics: true,
        keep_maps: true,
        ..Default::default()
    };
    let plain = pollster::block_on(model.forward(gpu, std::slice::from_ref(&encoded), &plain_opts))
        .unwrap();
    let lam = Lambda::Scalar(lambda);
    let at_lambda = MetricsOptions {
        lambda: Some(&lam),
        ..Default::default()
    };
    let layers = plain
        .layers
        .iter()
        .map(|layer| {
            let a = layer.attention.as_ref().unwrap();
            let of_a = &layer.metrics.as_ref().unwrap().attention;
            let r = refine_map_blocking(gpu, a, &lam).unwrap();
            let of_r = metrics_blocking(gpu, &r.refined, &at_lambda).unwrap();
            // R's GTD and mass are A's (the spec's m) at λ: combined here
            // by hand, as a check of the library's `refined_metrics`, which
            // the page uses.
            let a_at_lambda = metrics_blocking(gpu, a, &at_lambda).unwrap();
            let refined: Vec<HeadSummary> = of_r
                .heads
                .iter()
                .zip(&a_at_lambda.heads)
                .map(|(r, a)| HeadSummary {
                    multi_hop_mass: a.multi_hop_mass,
                    gtd: a.gtd,
                    ..*r
                })
                .collect();
            (of_a.batch(0), HeadSummary::mean(&refined))
        })
        .collect();
    let saobp_opts = ForwardOptions {
        lambda: vec![lam.clone(); model.config.num_hidden_layers],
        ..Default::default()
    };
    let with = pollster::block_on(model.forward(gpu, std::slice::from_ref(&encoded), &saobp_opts))
        .unwrap();
    NativeText {
        layers,
        plain: embed(&plain),
        with_saobp: embed(&with),
        encoded,
    }
}

#[cfg(feature = "model")]
#[test]
fn browser_model_matches_native() {
    use saobp::model::BertModel;

    let report = report();
    assert_eq!(
        report["pass"], true,
        "the browser self-test itself failed: {}",
        report["failures"]
    );
    let m = &report["model"];
    assert!(
        m.is_object(),
        "the browser report has no model part (`model`): rerun `bash web/test.sh` \
         with the model fetched (`bash scripts/fetch-model.sh`)"
    );
    let lambda = m["lambda"].as_f64().expect("report: model lambda") as f32;
    let texts = m["texts"].as_array().expect("report: model texts");
    assert_eq!(texts.len(), 2, "report: the model part has two texts");
    let dir = common::model_dir();
    let mut want_keys: Vec<String> = SUMMARY_FIELDS.iter().map(|s| s.to_string()).collect();
    want_keys.sort();

    on_every_gpu("web parity: model", |gpu| {
        let model = BertModel::load(gpu, &dir).unwrap();
        let tokenizer = model.tokenizer(&dir).unwrap();
        let mut embeddings = Vec::new();
        for browser in texts {
            let text = browser["text"].as_str().expect("report: model text");
            let native = native_text(gpu, &model, &tokenizer, text, lambda);
            let tokens: Vec<&str> = browser["tokens"]
                .as_array()
                .expect("report: tokens")
                .iter()
                .map(|t| t.as_str().unwrap_or("?"))
                .collect();
            assert_eq!(native.encoded.tokens, tokens, "{text:?}: wordpieces");
            let ids: Vec<u64> = browser["ids"]
                .as_array()
                .expect("report: ids")
                .iter()
                .map(|i| i.as_u64().unwrap_or(u64::MAX))
                .collect();
            let native_ids: Vec<u64> = native.encoded.ids.iter().map(|&i| u64::from(i)).collect();
            assert_eq!(native_ids, ids, "{text:?}: token ids");
            let n = native.encoded.ids.len();
            let layers = browser["layers"].as_array().expect("report: layers");
            assert_eq!(layers.len(), native.layers.len(), "{text:?}: layers");
            for (l, (browser, (a, r))) in layers.iter().zip(&native.layers).enumerate() {
                for (map, native) in [("attention", a), ("refined", r)] {
                    assert_eq!(
                        keys(&browser[map], &format!("report: layer {l} {map}")),
                        want_keys,
                        "report: layer {l} {map} fields"
                    );
                    for (name, value) in native.fields() {
                        let want = browser[map][name].as_f64().unwrap_or_else(|| {
                            panic!("report: {text:?} layer {l} {map} has no {name}")
                        });
                        let tol = if name == "distance" {
                            Tolerance::scaled_by(n)
                        } else {
                            Tolerance::SPEC
                        };
                        assert_close(
                            &format!("{text:?} layer {l} {map} {name}"),
                            &[value as f32],
                            &[want],
                            tol.rel,
                            tol.abs,
                        );
                    }
                    assert_eq!(
                        Some(u64::from(native.rows)),
                        browser[map]["rows"].as_u64(),
                        "{text:?} layer {l} {map}: counted rows"
                    );
                }
            }
            embeddings.push((native.plain, native.with_saobp));
        }
        let cosine = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum()
        };
        // Embeddings agree with the float64 reference within 1e-4 absolute
        // (tests/model.rs); so does a cosine of two of them.
        let tol = Tolerance {
            abs: 1e-4,
            rel: 0.0,
        };
        for (key, got) in [
            ("plain", cosine(&embeddings[0].0, &embeddings[1].0)),
            ("saobp", cosine(&embeddings[0].1, &embeddings[1].1)),
        ] {
            let want = m["cosine"][key]
                .as_f64()
                .unwrap_or_else(|| panic!("report: model cosine has no {key}"));
            assert_near(&format!("cosine {key}"), got, want, tol);
        }
    });
}

/// The report's training part: the page trained a very small GPT a few
/// steps with the library's `Trainer` (plain, and with λ learned); here the
/// same text, settings and seed must give the same loss at every step, the
/// same validation loss after them, and the same parameters.
///
/// Bounds: the losses (and the parameters' norms) within 1e-5, relative and
/// absolute, and the parameters within 2e-5 absolute. SwiftShader and both
/// llvmpipe adapters agree to about 1e-6 on all of them, from the same
/// initial weights and batches; the bounds leave ten times that for other
/// adapters' rounding. An AdamW update is about `lr·m/√v`: a gradient that
/// differs only by rounding moves a value by a rounding-sized amount, and
/// the warm-up's learning rates (at most 8·0.03/100) keep even an
/// ill-conditioned `m/√v` far below the bound. A wrong kernel or a
/// different batch moves the loss in its third digit.
#[cfg(feature = "model")]
#[test]
fn browser_training_matches_native() {
    use saobp::data::Corpus;
    use saobp::model::{evaluate, Gpt, GptConfig, TrainOptions, Trainer};

    let report = report();
    let t = &report["training"];
    assert!(
        t.is_object(),
        "the browser report has no training part (`training`): rerun `bash web/test.sh`"
    );
    let text = t["text"].as_str().expect("report: training text");
    let s = &t["settings"];
    let uint = |key: &str| {
        s[key]
            .as_u64()
            .unwrap_or_else(|| panic!("report: settings {key}")) as usize
    };
    let steps = t["steps"].as_u64().expect("report: training steps") as usize;
    let runs = t["runs"].as_array().expect("report: training runs");
    assert_eq!(
        runs.len(),
        2,
        "report: two training runs (plain and with λ)"
    );
    let corpus = Corpus::from_text(text).unwrap();
    let (layers, heads, block) = (uint("layers"), uint("heads"), uint("block"));
    let config = GptConfig {
        vocab_size: corpus.vocab().len(),
        n_positions: block,
        n_embd: uint("embd"),
        n_layer: layers,
        n_head: heads,
        layer_norm_epsilon: 1e-5,
    };
    let loss_tol = Tolerance {
        abs: 1e-5,
        rel: 1e-5,
    };
    let param_tol = Tolerance {
        abs: 2e-5,
        rel: 0.0,
    };
    on_every_gpu("web parity: training", |gpu| {
        for browser in runs {
            let lambda = browser["lambda"].as_f64().expect("report: run lambda") as f32;
            let learn = browser["learn_lambda"]
                .as_bool()
                .expect("report: learn_lambda");
            let what = format!("training λ = {lambda}");
            let lambdas = (lambda > 0.0).then(|| vec![vec![lambda; heads]; layers]);
            let seed = s["seed"].as_u64().expect("report: seed");
            let model = Gpt::init(gpu, config.clone(), seed, lambdas.as_deref()).unwrap();
            let opts = TrainOptions {
                seed,
                batch: uint("batch"),
                micro_batch: uint("batch"),
                steps: uint("steps"),
                lr: s["lr"].as_f64().expect("report: lr"),
                learn_lambda: learn,
            };
            let mut trainer = Trainer::new(gpu, model, opts).unwrap();
            let mut losses = Vec::new();
            for _ in 0..steps {
                let r = pollster::block_on(trainer.train_step(gpu, &corpus)).unwrap();
                assert!(r.applied, "{what}: a step was not applied: {r:?}");
                losses.push(r.loss);
            }
            let want = numbers(&browser["losses"], &format!("{what} losses"));
            assert_eq!(want.len(), steps, "{what}: losses reported");
            assert_within(&format!("{what} losses"), &losses, &want, loss_tol);

            let w = uint("eval_windows");
            let (x, y) = corpus.windows(saobp::data::Split::Val, block, w).unwrap();
            let val = pollster::block_on(evaluate(
                gpu,
                trainer.model(),
                (&x, &y),
                w,
                block,
                uint("batch"),
                false,
            ))
            .unwrap();
            let want = browser["val_loss"].as_f64().expect("report: val_loss");
            assert_near(&format!("{what} val loss"), val.loss, want, loss_tol);

            let params = browser["parameters"]
                .as_object()
                .expect("report: parameters");
            let values = trainer.model().values_blocking(gpu).unwrap();
            assert_eq!(
                params.len(),
                values.len(),
                "{what}: parameter tensors reported"
            );
            for (name, got) in values {
                let p = &params[&name];
                assert_eq!(
                    p["len"].as_u64(),
                    Some(got.len() as u64),
                    "{what} {name}: length"
                );
                let stride = p["stride"].as_u64().expect("report: stride") as usize;
                let sample: Vec<f32> = got.iter().step_by(stride.max(1)).copied().collect();
                let want = numbers(&p["values"], &format!("{what} {name}"));
                assert_within(&format!("{what} {name}"), &sample, &want, param_tol);
                let norm = got
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let want = p["norm"].as_f64().expect("report: norm");
                assert_near(&format!("{what} {name} norm"), norm, want, loss_tol);
            }
        }
    });
}
