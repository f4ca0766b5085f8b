//! `saobp analyze` end to end on every adapter with all-MiniLM-L6-v2 (fetched
//! by `bash scripts/fetch-model.sh`; without it this test fails and says so).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::ffi::OsString;

use common::{absolute, assert_near, assert_one_error_line, assert_success, TempDir};

/// `saobp analyze --model <the model> args`.
fn analyze(gpu: Option<&saobp::Gpu>, args: &[&str]) -> std::process::Output {
    let mut all: Vec<OsString> = vec!["analyze".into(), "--model".into()];
    all.push(common::model_dir().into());
    all.extend(args.iter().map(OsString::from));
    common::run_cli(gpu, all)
}

#[test]
fn analyze_writes_json_and_plot_on_every_adapter() {
    let dir = TempDir::new("analyze-ok");
    for gpu in common::gpus() {
        let json = dir.join("report.json");
        let png = dir.join("plot.png");
        let r = analyze(
            Some(gpu),
            &[
                "--text",
                "A man is eating food.",
                "--text",
                "The sky is blue.",
                "--lambda",
                "0.5",
                "--json",
                json.to_str().unwrap(),
                "--plot",
                png.to_str().unwrap(),
            ],
        );
        assert_success("analyze", &r);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["adapter"]["name"], gpu.adapter().name.as_str());
        let texts = report["texts"].as_array().unwrap();
        assert_eq!(texts.len(), 2);
        let t = &texts[0];
        assert_eq!(t["text"], "A man is eating food.");
        let tokens: Vec<&str> = t["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            tokens,
            ["[CLS]", "a", "man", "is", "eating", "food", ".", "[SEP]"],
            "no padding"
        );
        let emb: Vec<f64> = t["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(emb.len(), 384);
        assert_near(
            "squared length of the L2-normalized embedding",
            emb.iter().map(|x| x * x).sum::<f64>(),
            1.0,
            absolute(1e-4),
        );
        let layers = t["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 6);
        for (l, layer) in layers.iter().enumerate() {
            assert_eq!(layer["layer"], l);
            let heads = layer["heads"].as_array().unwrap();
            assert_eq!(heads.len(), 12);
            for key in [
                "entropy",
                "normalized_entropy",
                "sparsity",
                "peak",
                "distance",
                "multi_hop_mass",
                "gtd",
            ] {
                for part in ["attn", "refined"] {
                    let v = heads[5][part][key].as_f64().unwrap_or(f64::NAN);
                    assert!(v.is_finite() && v >= 0.0, "layer {l} {part}.{key} = {v}");
                }
            }
            for part in ["attn", "refined"] {
                // One text, never padded: every token's row counts.
                assert_eq!(
                    heads[5][part]["rows"],
                    tokens.len(),
                    "layer {l} {part}.rows"
                );
            }
            // Both summaries report the m of the same A, averaged over the same rows.
            let m = heads[5]["attn"]["multi_hop_mass"].as_f64().unwrap();
            assert!(m > 0.0 && m < 1.0, "layer {l} multi_hop_mass = {m}");
            assert_eq!(heads[5]["refined"]["multi_hop_mass"], m, "layer {l}");
            // GTD is a mean of λm/(1 + λm), concave in m: at most its value at the mean m.
            let gtd_r = heads[5]["refined"]["gtd"].as_f64().unwrap();
            assert!(
                gtd_r <= 0.5 * m / (1.0 + 0.5 * m) + 1e-6,
                "layer {l} GTD of R at λ = 0.5: {gtd_r}"
            );
            let ne = heads[0]["attn"]["normalized_entropy"].as_f64().unwrap();
            assert!(ne > 0.0 && ne <= 1.0);
        }
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 20_000, "the plot has content");
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(
            stdout.contains("norm. entropy") && stdout.lines().count() >= 9,
            "{stdout}"
        );
        eprintln!("analyze: ok on {}", gpu.adapter());
    }
}

#[test]
fn without_lambda_there_is_no_refined_part() {
    let dir = TempDir::new("analyze-plain");
    let json = dir.join("plain.json");
    let r = analyze(
        None,
        &["--text", "Hello there.", "--json", json.to_str().unwrap()],
    );
    assert_success("analyze without λ", &r);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let head = &report["texts"][0]["layers"][2]["heads"][7];
    assert!(head["attn"]["gtd"].as_f64().unwrap() > 0.0);
    assert!(head.get("refined").is_none());
}

#[test]
fn bad_arguments_give_one_line_and_no_files() {
    let dir = TempDir::new("analyze-bad");
    let json = dir.join("x.json");
    let j = json.to_str().unwrap();
    for (args, needle) in [
        (vec!["--text", "x", "--lambda", "-1", "--json", j], "lambda"),
        (
            vec!["--text", "x", "--lambda", "nan", "--json", j],
            "lambda",
        ),
        (
            vec!["--text", "x", "--lambda", "1,2", "--json", j],
            "one per layer",
        ),
        (
            vec!["--text", "x", "--layer", "6", "--json", j],
            "out of range",
        ),
        (vec!["--text", " ", "--json", j], "empty"),
    ] {
        let r = analyze(None, &args);
        assert_one_error_line(&format!("{args:?}"), &r, needle);
        assert!(!json.exists());
    }
    let empty_model = ["analyze", "--model", dir.to_str().unwrap(), "--text", "x"];
    let r = common::run_cli(None, empty_model);
    assert_one_error_line("a folder without a model", &r, "config.json");
}
