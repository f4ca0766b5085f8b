//! Weights stored as f16 or bf16 load, widened to f32 on upload: MiniLM's
//! weights rounded to f16 on disk give the f32 model's outputs within what
//! f16's precision allows, on every adapter; `analyze` takes such a folder.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::{assert_success, TempDir};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use saobp::model::{sentence_embedding, BertConfig, BertModel, ForwardOptions};
use saobp::Gpu;

/// The model's weights, every f32 tensor rounded to `dtype` (F16 or BF16);
/// others (the integer `position_ids`) are kept as they are.
fn rounded_weights(bytes: &[u8], dtype: Dtype) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            if t.dtype() != Dtype::F32 {
                return (name, t.dtype(), t.shape().to_vec(), t.data().to_vec());
            }
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
            let data = match dtype {
                Dtype::F16 => values
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
                other => panic!("{other:?}"),
            };
            (name, dtype, t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, t, s, d)| (n.as_str(), TensorView::new(*t, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The last hidden states and sentence embedding of `text`.
fn run(gpu: &Gpu, model: &BertModel, dir: &Path, text: &str) -> (Vec<f32>, Vec<f32>) {
    let enc = model.tokenizer(dir).unwrap().encode(text).unwrap();
    let out = pollster::block_on(model.forward(gpu, &[enc], &ForwardOptions::default())).unwrap();
    let hidden = out.hidden.to_vec_blocking(gpu).unwrap();
    let embedding = sentence_embedding(&hidden, model.config.hidden_size, out.lengths[0]);
    (hidden, embedding)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

#[test]
fn minilm_in_f16_and_bf16_gives_the_f32_outputs_on_every_adapter() {
    let dir = common::model_dir();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let config =
        BertConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let f16 = rounded_weights(&bytes, Dtype::F16);
    let bf16 = rounded_weights(&bytes, Dtype::BF16);
    // Half the bytes: the file really is stored in 16 bits.
    assert!(f16.len() < bytes.len() / 2 + 100_000);
    let text = "A man is eating food.";
    common::on_every_gpu("MiniLM in f16 and bf16", |gpu| {
        let full = BertModel::from_safetensors(gpu, config.clone(), &bytes).unwrap();
        let (hidden, embedding) = run(gpu, &full, &dir, text);
        let size = hidden.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let width = config.hidden_size;
        let tokens = hidden.len() / width;
        let pooled = (0..width)
            .map(|c| {
                let mean = (0..tokens)
                    .map(|t| f64::from(hidden[t * width + c]))
                    .sum::<f64>()
                    / tokens as f64;
                mean * mean
            })
            .sum::<f64>()
            .sqrt();
        let u16 = 2f64.powi(-11);
        for (dtype, weights, u) in [(Dtype::F16, &f16, u16), (Dtype::BF16, &bf16, 8.0 * u16)] {
            // Each weight is within u (f16: 2⁻¹¹; bf16: 2⁻⁸) of its f32 value,
            // relatively, so each layer's products move by about u of their
            // size; every layer ends in a LayerNorm, which keeps sizes ~1, so
            // the six layers' errors add rather than compound: 6u times the
            // largest hidden entry. Seen on llvmpipe: f16 2.1e-3 of a bound
            // 1.4e-2, bf16 2.7e-2 of 1.1e-1.
            let max_abs = 6.0 * u * f64::from(size);
            // The embedding is the direction of the tokens' mean hidden
            // state p; moving each entry by at most max_abs moves p by at
            // most √width·max_abs, which turns it by θ ≤ that over |p|, so
            // cos ≥ 1 − θ²/2 (a loose check; seen: 1 − 3e-7 for f16, 1 − 2e-5 for bf16).
            let theta = (width as f64).sqrt() * max_abs / pooled;
            let min_cos = 1.0 - theta * theta / 2.0;
            let model = BertModel::from_safetensors(gpu, config.clone(), weights).unwrap();
            let (h, e) = run(gpu, &model, &dir, text);
            let worst = h
                .iter()
                .zip(&hidden)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let cos = cosine(&e, &embedding);
            eprintln!(
                "{dtype:?}: max |Δhidden| = {worst:.2e} (bound {max_abs:.2e}, max |h| = {size:.2}), \
                 cosine = {cos:.9} (bound {min_cos:.9})"
            );
            assert!(
                f64::from(worst) <= max_abs,
                "{dtype:?}: hidden states differ by {worst}"
            );
            assert!(cos >= min_cos, "{dtype:?}: cosine {cos}");
            // Rounding did change the weights: the outputs are not identical.
            assert!(worst > 0.0, "{dtype:?}");
        }
    });
}

#[test]
fn analyze_takes_a_model_folder_in_f16() {
    let src = common::model_dir();
    let dir = TempDir::new("half-model");
    for f in ["config.json", "tokenizer.json", "sentence_bert_config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        rounded_weights(&bytes, Dtype::F16),
    )
    .unwrap();
    let json = dir.join("report.json");
    let r = common::run_cli(
        None,
        [
            "analyze",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            "The sky is blue.",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_success("analyze of an f16 model", &r);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let emb = report["texts"][0]["embedding"].as_array().unwrap();
    let norm: f64 = emb.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-4, "unit embedding: {norm}");
}
