//! The page's self-test (`index.html?selftest=1`): one fixed workload, run on
//! the browser's WebGPU adapter and checked against the float64 CPU reference
//! ([`saobp::reference`]) compiled into this same module.
//!
//! The report (a JSON object, `window.saobpReport` on the page) holds the
//! workload's parameters and a checksum of its Q, K and V, every check with
//! its largest error, and each head's summaries of `A` and `R` as the GPU
//! computed them next to the reference's. Its `model` part runs the model
//! the page loaded (all-MiniLM-L6-v2) on [`MODEL_TEXTS`] as the page's model
//! view does ([`crate::model`]): the tokens, each layer's mean summaries of
//! `A` and `R` at [`MODEL_LAMBDA`], and the cosine of the two sentence
//! embeddings without and with SAOBP. Its `training` part trains a very
//! small GPT a few steps ([`crate::train::selftest`]). The root crate's `tests/web_parity.rs`
//! reruns both parts natively and compares its summaries with the report's.

use saobp::reference::{self, Comparison, RefOptions, Tolerance};
use saobp::workload::{synthetic, Pattern};
use saobp::{attention, AttentionOptions, Gpu, HeadSummary, Lambda, Mode, Tensor};
use serde_json::{json, Value};

use crate::model::{self, Loaded};

/// `[B, H, N, D]` of the fixed workload: the four patterns, one head each.
pub const SHAPE: [usize; 4] = [1, 4, 128, 32];
/// Score sharpness of the fixed workload.
pub const TEMPERATURE: f32 = 1.0;
/// Seed of the fixed workload.
pub const SEED: u64 = 7;
/// λ per head: distinct values, so a head/λ mix-up shows.
pub const LAMBDA: [f32; 4] = [0.25, 0.5, 1.0, 2.0];

/// The model part's sentences: the first is one of the library's tokenizer
/// cases (`tests/model.rs`), the second shares most of its words.
pub const MODEL_TEXTS: [&str; 2] = ["A man is eating food.", "A man is eating a piece of bread."];
/// The first sentence's wordpieces, by BERT's rules (as `tests/model.rs`).
pub const MODEL_TOKENS: [&str; 8] = ["[CLS]", "a", "man", "is", "eating", "food", ".", "[SEP]"];
/// λ of the model part: SAOBP on the kept maps, and inside the model for
/// the embeddings.
pub const MODEL_LAMBDA: f32 = 0.5;

/// The workload's patterns, in head order.
pub fn patterns() -> [Pattern; 4] {
    [
        Pattern::Diffuse,
        Pattern::Local,
        Pattern::Sink,
        Pattern::Collapsed,
    ]
}

/// FNV-1a over the bit patterns of `q`, `k` and `v`: the same inputs on
/// every platform give the same hex string, so the native side can check it
/// rebuilt exactly the browser's workload.
pub fn checksum(q: &[f32], k: &[f32], v: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in q.iter().chain(k).chain(v) {
        for byte in x.to_bits().to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// One comparison of GPU values with reference values, judged by the
/// library's rule ([`reference::compare`]), as the native tests judge.
struct Check {
    what: String,
    tolerance: Tolerance,
    result: Comparison,
}

impl Check {
    /// Compares `got` with `want` under `tolerance`; fails when their lengths differ.
    fn new(
        what: impl Into<String>,
        got: &[f32],
        want: &[f64],
        tolerance: Tolerance,
    ) -> Result<Check, String> {
        let what = what.into();
        let result =
            reference::compare(got, want, tolerance).map_err(|e| format!("{what}: {e}"))?;
        Ok(Check {
            what,
            tolerance,
            result,
        })
    }

    fn pass(&self) -> bool {
        self.result.passed()
    }

    fn json(&self) -> Value {
        let c = &self.result;
        json!({
            "what": self.what,
            "values": c.len,
            "tolerance": { "relative": self.tolerance.rel, "absolute": self.tolerance.abs },
            "max_error": c.max_abs,
            "max_relative_error": c.max_rel,
            // The largest error as a fraction of its element's bound.
            "worst_ratio": if c.worst.is_finite() { json!(c.worst) } else { json!("inf") },
            "worst_index": c.worst_index,
            "failures": c.failures,
            "non_finite": c.non_finite,
            "pass": self.pass(),
        })
    }
}

/// A reference summary row (`[METRIC_COUNT]`, from
/// [`reference::metrics::summarize`]) as a [`HeadSummary`].
fn reference_summary(row: &[f64]) -> HeadSummary {
    let get = |i: usize| row.get(i).copied().unwrap_or(f64::NAN);
    HeadSummary {
        entropy: get(0),
        normalized_entropy: get(1),
        sparsity: get(2),
        peak: get(3),
        distance: get(4),
        multi_hop_mass: get(5),
        gtd: get(6),
        rows: get(7) as u32,
    }
}

/// Compares every field of GPU summaries with reference summaries at the
/// spec's tolerance, except `distance`, whose absolute bound scales with N
/// ([`Tolerance::scaled_by`]: it sums N positions of up to N − 1 weighted by
/// probabilities, the bound the native metric tests use). `rows` must match
/// exactly.
fn summary_checks(
    map: &str,
    got: &[HeadSummary],
    want: &[HeadSummary],
    n: usize,
) -> Result<Vec<Check>, String> {
    let mut checks = Vec::new();
    for (field, (name, _)) in HeadSummary::default().fields().into_iter().enumerate() {
        let pick = |s: &HeadSummary| s.fields()[field].1;
        let g: Vec<f32> = got.iter().map(|s| pick(s) as f32).collect();
        let w: Vec<f64> = want.iter().map(pick).collect();
        let tolerance = if name == "distance" {
            Tolerance::scaled_by(n)
        } else {
            Tolerance::SPEC
        };
        checks.push(Check::new(
            format!("{map} summary {name}"),
            &g,
            &w,
            tolerance,
        )?);
    }
    let g: Vec<f32> = got.iter().map(|s| s.rows as f32).collect();
    let w: Vec<f64> = want.iter().map(|s| f64::from(s.rows)).collect();
    let exact = Tolerance { abs: 0.0, rel: 0.0 };
    checks.push(Check::new(format!("{map} summary rows"), &g, &w, exact)?);
    Ok(checks)
}

/// Runs the fixed workload causal and not, in fused and materialized mode,
/// and compares `A`, `R`, `m`, `O` and the per-head summaries with the
/// float64 reference, then runs the model part ([`model_part`]). The
/// report's `pass` is true only if every check passed.
/// The model part (`model` in the report) must pass as well; without a
/// loaded model the self-test fails.
pub async fn run(gpu: &Gpu, loaded: Option<&Loaded>) -> Result<Value, String> {
    let Some(loaded) = loaded else {
        return Err("the self-test needs the model: it was not loaded".to_string());
    };
    let err = |e: saobp::Error| e.to_string();
    let [b, h, n, d] = SHAPE;
    let w = synthetic(SHAPE, &patterns(), TEMPERATURE, SEED);
    let q = Tensor::from_slice(gpu, &SHAPE, &w.q).map_err(err)?;
    let k = Tensor::from_slice(gpu, &SHAPE, &w.k).map_err(err)?;
    let v = Tensor::from_slice(gpu, &SHAPE, &w.v).map_err(err)?;
    let lambda64: Vec<f64> = LAMBDA.iter().map(|&l| f64::from(l)).collect();

    let mut cases = Vec::new();
    let mut failures = Vec::new();
    for causal in [false, true] {
        let base = AttentionOptions {
            causal,
            lambda: Lambda::PerHead(LAMBDA.to_vec()),
            ..Default::default()
        };
        let fused = attention(
            gpu,
            &q,
            &k,
            &v,
            &AttentionOptions {
                mode: Mode::Fused,
                return_attention: true,
                return_refined: true,
                metrics: true,
                ..base.clone()
            },
        )
        .await
        .map_err(err)?;
        let materialized = attention(
            gpu,
            &q,
            &k,
            &v,
            &AttentionOptions {
                mode: Mode::Materialized,
                ..base.clone()
            },
        )
        .await
        .map_err(err)?;
        let (Some(a), Some(r), Some(mass), Some(metrics)) = (
            &fused.attention,
            &fused.refined,
            &fused.multi_hop_mass,
            &fused.metrics,
        ) else {
            return Err("the attention call returned no maps or metrics".to_string());
        };
        let Some(refined_metrics) = &metrics.refined else {
            return Err("the attention call returned no metrics of R".to_string());
        };

        let want = reference::saobp(
            &w.q,
            &w.k,
            &w.v,
            SHAPE,
            d,
            &RefOptions {
                causal,
                key_mask: None,
                scale: None,
            },
            &lambda64,
        )
        .map_err(err)?;
        let rows_a = reference::metrics::row_metrics(
            &want.attention,
            &want.mass,
            None,
            [b, h, n],
            causal,
            None,
        )
        .map_err(err)?;
        let rows_r = reference::metrics::row_metrics(
            &want.refined,
            &want.mass,
            Some(&lambda64),
            [b, h, n],
            causal,
            None,
        )
        .map_err(err)?;
        let want_a: Vec<HeadSummary> = reference::metrics::summarize(&rows_a, n)
            .map_err(err)?
            .iter()
            .map(|r| reference_summary(r))
            .collect();
        let want_r: Vec<HeadSummary> = reference::metrics::summarize(&rows_r, n)
            .map_err(err)?
            .iter()
            .map(|r| reference_summary(r))
            .collect();

        let spec = Tolerance::SPEC;
        let mut checks = vec![
            Check::new(
                "A",
                &a.to_vec(gpu).await.map_err(err)?,
                &want.attention,
                spec,
            )?,
            Check::new("R", &r.to_vec(gpu).await.map_err(err)?, &want.refined, spec)?,
            Check::new("m", &mass.to_vec(gpu).await.map_err(err)?, &want.mass, spec)?,
            Check::new(
                "O fused",
                &fused.output.to_vec(gpu).await.map_err(err)?,
                &want.output,
                spec,
            )?,
            Check::new(
                "O materialized",
                &materialized.output.to_vec(gpu).await.map_err(err)?,
                &want.output,
                spec,
            )?,
        ];
        checks.extend(summary_checks("A", &metrics.attention.heads, &want_a, n)?);
        checks.extend(summary_checks("R", &refined_metrics.heads, &want_r, n)?);
        for c in checks.iter().filter(|c| !c.pass()) {
            let r = &c.result;
            failures.push(format!(
                "{} {}: {} of {} values over the bound, error {:.3e}, worst at [{}] ({}x the bound{})",
                if causal { "causal" } else { "full" },
                c.what,
                r.failures,
                r.len,
                r.max_abs,
                r.worst_index.unwrap_or(0),
                r.worst,
                if r.non_finite > 0 {
                    format!(", {} values not finite", r.non_finite)
                } else {
                    String::new()
                }
            ));
        }

        let heads: Vec<Value> = (0..h)
            .map(|i| {
                // Each summary as `HeadSummary` serializes; null if missing.
                let pick = |v: &[HeadSummary]| json!(v.get(i));
                json!({
                    "head": i,
                    "pattern": w.patterns.get(i).map_or("?", |p| p.name()),
                    "lambda": LAMBDA.get(i),
                    "attention": pick(&metrics.attention.heads),
                    "refined": pick(&refined_metrics.heads),
                    "reference": {
                        "attention": pick(&want_a),
                        "refined": pick(&want_r),
                    },
                })
            })
            .collect();
        cases.push(json!({
            "causal": causal,
            "checks": checks.iter().map(Check::json).collect::<Vec<_>>(),
            "heads": heads,
        }));
    }

    let (model_report, model_failures) = model_part(gpu, loaded).await?;
    failures.extend(model_failures);
    let (training_report, training_failures) = crate::train::selftest(gpu).await?;
    failures.extend(training_failures);

    let worst = cases
        .iter()
        .flat_map(|c| c["checks"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["worst_ratio"].as_f64())
        .fold(0.0, f64::max);
    let adapter = gpu.adapter();
    Ok(json!({
        "suite": "saobp browser self-test",
        "pass": failures.is_empty(),
        "failures": failures,
        "worst_ratio": worst,
        "adapter": {
            "name": adapter.name,
            "backend": format!("{:?}", adapter.backend),
            "device_type": format!("{:?}", adapter.device_type),
        },
        "tolerance": {
            "relative": Tolerance::SPEC.rel,
            "absolute": Tolerance::SPEC.abs,
            "distance_absolute": Tolerance::scaled_by(n).abs,
        },
        "workload": {
            "shape": SHAPE,
            "temperature": TEMPERATURE,
            "seed": SEED,
            "patterns": w.patterns.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "lambda": LAMBDA,
            "mode": "fused",
            "checksum": checksum(&w.q, &w.k, &w.v),
        },
        "cases": cases,
        "model": model_report,
        "training": training_report,
    }))
}

/// The model on [`MODEL_TEXTS`], as the page's model view runs it: each
/// text's tokens and ids and, per layer, the mean over heads of `A`'s
/// summaries (GTD at λ = 1) and of `R`'s at [`MODEL_LAMBDA`] (the layer
/// curves of `saobp analyze`), and the cosine of the two embeddings without
/// and with SAOBP inside the model. Checked here: the first text's
/// wordpieces, every row of every `A` and `R` summing to 1, the embeddings'
/// unit length, and every summary finite and in its range. Returns the
/// report's `model` object and the failures.
pub async fn model_part(gpu: &Gpu, loaded: &Loaded) -> Result<(Value, Vec<String>), String> {
    let mut failures = Vec::new();
    let mut checks = Vec::new();
    let mut texts = Vec::new();
    let mut runs = Vec::new();
    for text in MODEL_TEXTS {
        let run = model::plain(gpu, &loaded.model, loaded.encode(text)?).await?;
        let refined = model::refine(gpu, &run, MODEL_LAMBDA).await?;
        let n = run.encoded.ids.len();
        for (name, maps) in [("A", &run.attention), ("R", &refined.refined)] {
            let values = model::read_all(gpu, maps).await?;
            let sums: Vec<f32> = values
                .chunks(n.max(1))
                .map(|row| row.iter().map(|&x| f64::from(x)).sum::<f64>() as f32)
                .collect();
            checks.push(Check::new(
                format!("model {text:?}: rows of {name} sum to 1"),
                &sums,
                &vec![1.0; sums.len()],
                Tolerance::SPEC,
            )?);
        }
        let length = model::cosine(&run.embedding, &run.embedding).sqrt() as f32;
        checks.push(Check::new(
            format!("model {text:?}: embedding length 1"),
            &[length],
            &[1.0],
            Tolerance::SPEC,
        )?);
        for (l, (a, r)) in run.summaries.iter().zip(&refined.summaries).enumerate() {
            for (name, s) in a.iter().map(|s| ("A", s)).chain(r.iter().map(|s| ("R", s))) {
                if let Some(problem) = out_of_range(s) {
                    failures.push(format!("model {text:?} layer {l} {name}: {problem}"));
                }
            }
        }
        texts.push(json!({
            "text": text,
            "tokens": run.encoded.tokens,
            "ids": run.encoded.ids,
            "layers": model::layers_json(&run.summaries, &refined.summaries, false),
        }));
        runs.push(run);
    }
    let tokens = &runs[0].encoded.tokens;
    if tokens.iter().map(String::as_str).ne(MODEL_TOKENS) {
        failures.push(format!(
            "model: {:?} gave the wordpieces {tokens:?}, expected {MODEL_TOKENS:?}",
            MODEL_TEXTS[0]
        ));
    }
    let with: Vec<Vec<f32>> = {
        let mut with = Vec::new();
        for run in &runs {
            with.push(
                model::saobp_embedding(gpu, &loaded.model, &run.encoded, MODEL_LAMBDA).await?,
            );
        }
        with
    };
    let cosine = json!({
        "plain": model::cosine(&runs[0].embedding, &runs[1].embedding),
        "saobp": model::cosine(&with[0], &with[1]),
    });
    for c in checks.iter().filter(|c| !c.pass()) {
        failures.push(format!(
            "{}: {} of {} values over the bound, error {:.3e}",
            c.what, c.result.failures, c.result.len, c.result.max_abs
        ));
    }
    let report = json!({
        "model": loaded.describe(),
        "lambda": MODEL_LAMBDA,
        "texts": texts,
        "cosine": cosine,
        "checks": checks.iter().map(Check::json).collect::<Vec<_>>(),
    });
    Ok((report, failures))
}

/// Why a summary is impossible (a value not finite, or outside the range
/// the spec gives it), or `None`.
fn out_of_range(s: &HeadSummary) -> Option<String> {
    let fields = s.fields();
    if let Some((name, v)) = fields.iter().find(|(_, v)| !v.is_finite()) {
        return Some(format!("{name} = {v} is not finite"));
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, v)| *v)
    };
    // Both in [0, 1] (GTD below 1), up to f32 rounding.
    let h = get("normalized_entropy");
    if !(-1e-6..=1.0 + 1e-5).contains(&h) {
        return Some(format!("normalized_entropy = {h} is outside [0, 1]"));
    }
    let gtd = get("gtd");
    if !(-1e-6..1.0).contains(&gtd) {
        return Some(format!("gtd = {gtd} is outside [0, 1)"));
    }
    None
}
