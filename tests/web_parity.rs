//! The browser and native builds agree: the per-head summaries the demo
//! page's self-test computed on WebGPU (its `window.saobpReport`) match the
//! same workload run here, on every adapter, within the spec's tolerance
//! (the library's one rule, `saobp::reference::compare`, which the page's
//! self-test judges by too). Both sides write a summary as `HeadSummary`
//! serializes, so the field names must match exactly as well.
//!
//! The report is `web/selftest-report.json`, written by `bash web/test.sh`
//! (which then runs this test with `SAOBP_WEB_REPORT` pointing at it, so a
//! missing report fails there). Without that variable the committed report is
//! used; if it is absent too (a packaged crate has no `web/`) the test says so
//! and checks nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, on_every_gpu};
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
