//! `saobp maps` end to end on every adapter: MiniLM's own attention maps,
//! saved as f32 and as f16, give `analyze`'s summaries; the spec's worked
//! example gives the spec's numbers; and every bad input of
//! `docs/ERRORS.md`'s maps table is one error line, before any GPU work.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::{absolute, assert_near, assert_one_error_line, assert_success, TempDir, Tolerance};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use saobp::model::{BertModel, ForwardOptions};
use saobp::{Gpu, Lambda};
use serde_json::Value;

const TEXT: &str = "A man is eating food.";
const LAMBDA: f32 = 0.5;
/// The summary fields compared, as `HeadSummary` serializes them.
const FIELDS: [&str; 7] = [
    "entropy",
    "normalized_entropy",
    "sparsity",
    "peak",
    "distance",
    "multi_hop_mass",
    "gtd",
];

/// Writes one tensor of `values` (f32) as `dtype` (F32, F16, BF16 or F64).
fn write_tensor(path: &Path, name: &str, dtype: Dtype, shape: &[usize], values: &[f32]) {
    write_tensors(path, &[(name, dtype, shape, values)]);
}

fn write_tensors(path: &Path, tensors: &[(&str, Dtype, &[usize], &[f32])]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, _, values)| match dtype {
            Dtype::F32 => bytemuck::cast_slice(values).to_vec(),
            Dtype::F16 => values
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => values
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::F64 => values
                .iter()
                .flat_map(|&x| f64::from(x).to_le_bytes())
                .collect(),
            other => panic!("no writer for {other:?}"),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, dtype, shape, _), b)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.to_vec(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `saobp maps --input input args` on `gpu`.
fn maps(gpu: Option<&Gpu>, input: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["maps", "--input", input.to_str().unwrap()];
    all.extend(args);
    common::run_cli(gpu, all)
}

/// MiniLM's attention maps for [`TEXT`] with SAOBP at [`LAMBDA`] in every
/// layer (as `analyze --lambda 0.5` runs it): `[L, 1, H, N, N]` and its shape.
fn minilm_maps(gpu: &Gpu) -> (Vec<f32>, [usize; 5]) {
    let dir = common::model_dir();
    let model = BertModel::load(gpu, &dir).unwrap();
    let text = model.tokenizer(&dir).unwrap().encode(TEXT).unwrap();
    let c = &model.config;
    let opts = ForwardOptions {
        lambda: vec![Lambda::Scalar(LAMBDA); c.num_hidden_layers],
        keep_maps: true,
        ..Default::default()
    };
    let out = pollster::block_on(model.forward(gpu, &[text], &opts)).unwrap();
    let mut values = Vec::new();
    for layer in &out.layers {
        let a = layer.attention.as_ref().expect("kept maps");
        values.extend(a.to_vec_blocking(gpu).unwrap());
    }
    let n = out.lengths[0];
    (
        values,
        [c.num_hidden_layers, 1, c.num_attention_heads, n, n],
    )
}

/// Asserts `maps`' per-layer, per-head summaries (`layers`) match
/// `analyze`'s for its one text (`texts[0].layers`) under `tol`; the
/// distance's bound grows with N, as every summary check's does.
fn assert_same_summaries(what: &str, maps: &Value, analyze: &Value, n: usize, tol: Tolerance) {
    let got = maps["layers"].as_array().unwrap();
    let want = analyze["texts"][0]["layers"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: layers");
    let (mut compared, mut worst) = (0, 0.0f64);
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        let (gh, wh) = (
            g["heads"].as_array().unwrap(),
            w["heads"].as_array().unwrap(),
        );
        assert_eq!(gh.len(), wh.len(), "{what}: heads of layer {l}");
        for (h, (g, w)) in gh.iter().zip(wh).enumerate() {
            for part in ["attn", "refined"] {
                assert_eq!(g[part]["rows"], w[part]["rows"], "{what} {l}/{h} {part}");
                for field in FIELDS {
                    let tol = if field == "distance" {
                        Tolerance {
                            abs: tol.abs * n as f64,
                            ..tol
                        }
                    } else {
                        tol
                    };
                    let (g, w) = (
                        g[part][field].as_f64().unwrap(),
                        w[part][field].as_f64().unwrap(),
                    );
                    let what = format!("{what}: layer {l} head {h} {part}.{field}");
                    assert_near(&what, g, w, tol);
                    worst = worst.max((g - w).abs() / tol.bound(w));
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 6 * 12 * 2 * FIELDS.len(), "{what}");
    eprintln!("{what}: {compared} summaries, worst error / bound = {worst:.3}");
}

#[test]
fn maps_of_minilm_match_analyze_on_every_adapter() {
    let dir = TempDir::new("maps-minilm");
    common::on_every_gpu("maps of MiniLM", |gpu| {
        let (values, shape) = minilm_maps(gpu);
        let n = shape[3];
        let f32_path = dir.join("maps-f32.safetensors");
        let f16_path = dir.join("maps-f16.safetensors");
        write_tensor(&f32_path, "attentions", Dtype::F32, &shape, &values);
        write_tensor(&f16_path, "attentions", Dtype::F16, &shape, &values);

        let lambda = LAMBDA.to_string();
        let analyze_json = dir.join("analyze.json");
        let mut args: Vec<std::ffi::OsString> = vec!["analyze".into(), "--model".into()];
        args.push(common::model_dir().into());
        for a in ["--text", TEXT, "--lambda", &lambda, "--json"] {
            args.push(a.into());
        }
        args.push(analyze_json.clone().into());
        let r = common::run_cli(Some(gpu), args);
        assert_success("analyze", &r);
        let analyze = read_json(&analyze_json);

        let f32_json = dir.join("maps-f32.json");
        let png = dir.join("maps.png");
        let r = maps(
            Some(gpu),
            &f32_path,
            &[
                "--lambda",
                &lambda,
                "--json",
                f32_json.to_str().unwrap(),
                "--plot",
                png.to_str().unwrap(),
            ],
        );
        assert_success("maps (f32)", &r);
        let got = read_json(&f32_json);
        assert_eq!(got["adapter"]["name"], gpu.adapter().name.as_str());
        assert_eq!(
            (got["dtype"].as_str(), got["tensor"].as_str()),
            (Some("F32"), Some("attentions"))
        );
        assert_eq!(got["shape"]["layers"], 6);
        assert_eq!(got["shape"]["n"], n);
        // The same maps on the same adapter: the spec's tolerance, the
        // distance's absolute part scaled by N as in every summary check.
        assert_same_summaries("f32", &got, &analyze, n, Tolerance::SPEC);
        // Not vacuous: SAOBP spreads attention, and R's GTD is below A's at λ = 1.
        let head = &got["layers"][3]["heads"][2];
        let (of_a, of_r) = (&head["attn"], &head["refined"]);
        assert!(of_r["normalized_entropy"].as_f64() > of_a["normalized_entropy"].as_f64());
        assert!(of_r["gtd"].as_f64().unwrap() < of_a["gtd"].as_f64().unwrap());
        let table = String::from_utf8_lossy(&r.stdout);
        assert_eq!(
            table
                .lines()
                .filter(|l| l.trim_start().starts_with(char::is_numeric))
                .count(),
            6,
            "one row per layer:\n{table}"
        );
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

        // f16 rounds each entry of A by at most u = 2⁻¹¹ relatively, and R
        // (A plus λ times a product of two A's, renormalized) by at most about
        // 3u. Entropy moves by at most 3u·Σ p|ln p + 1| ≤ 3u(1 + ln N), the
        // other summaries (peak, sparsity, m, GTD) by less, and the distance
        // by at most 3u times itself: hence this bound, with the spec's on top.
        let f16_json = dir.join("maps-f16.json");
        let r = maps(
            Some(gpu),
            &f16_path,
            &["--lambda", &lambda, "--json", f16_json.to_str().unwrap()],
        );
        assert_success("maps (f16)", &r);
        let half = read_json(&f16_json);
        assert_eq!(half["dtype"], "F16");
        let u = 2f64.powi(-11);
        let bound = Tolerance {
            abs: 3.0 * u * (1.0 + (n as f64).ln()) + Tolerance::SPEC.abs,
            rel: 3.0 * u + Tolerance::SPEC.rel,
        };
        assert_same_summaries("f16", &half, &analyze, n, bound);
    });
}

/// The spec's worked example: `A` from its scores, in f64 then f32.
fn spec_map(causal: bool) -> Vec<f32> {
    let s = [[2.0f64, 0.0, 1.0], [0.5, 1.5, 0.0], [0.0, 1.0, 1.0]];
    let mut a = Vec::new();
    for (i, row) in s.iter().enumerate() {
        let keys = if causal { i + 1 } else { 3 };
        let max = row[..keys].iter().copied().fold(f64::MIN, f64::max);
        let z: f64 = row[..keys].iter().map(|x| (x - max).exp()).sum();
        for (j, x) in row.iter().enumerate() {
            a.push(if j < keys {
                ((x - max).exp() / z) as f32
            } else {
                0.0
            });
        }
    }
    a
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn a_4d_map_is_one_layer_and_gives_the_spec_numbers() {
    let dir = TempDir::new("maps-spec");
    // Printed to 6 decimals; the means of printed values are within 5e-7.
    let tol = absolute(2e-6);
    common::on_every_gpu("maps of the spec's example", |gpu| {
        let input = dir.join("spec.safetensors");
        write_tensor(&input, "maps", Dtype::F32, &[1, 1, 3, 3], &spec_map(false));
        let json = dir.join("spec.json");
        let r = maps(
            Some(gpu),
            &input,
            &["--lambda", "0.5", "--json", json.to_str().unwrap()],
        );
        assert_success("maps of the spec's example", &r);
        let report = read_json(&json);
        assert_eq!(report["tensor"], "maps", "the file's only tensor");
        assert_eq!(report["shape"]["layers"], 1);
        let layers = report["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        let head = &layers[0]["heads"][0];
        let want_a = [
            ("entropy", mean(&[0.832396, 0.905959, 1.017357])),
            ("sparsity", mean(&[0.233727, 0.175232, 0.078042])),
            ("peak", mean(&[0.665241, 0.628532, 0.422319])),
            ("distance", mean(&[0.579488, 0.371468, 0.733044])),
            ("multi_hop_mass", mean(&[0.115980, 0.078376, 0.111638])),
            ("gtd", mean(&[0.103926, 0.072679, 0.100426])),
        ];
        for (field, want) in want_a {
            let got = head["attn"][field].as_f64().unwrap();
            assert_near(&format!("A {field}"), got, want, tol);
        }
        let want_r = [
            ("entropy", mean(&[0.902338, 0.938538, 1.050175])),
            ("multi_hop_mass", mean(&[0.115980, 0.078376, 0.111638])),
            ("gtd", mean(&[0.054811, 0.037710, 0.052868])),
            ("peak", mean(&[0.628778, 0.604830, 0.406616])),
        ];
        for (field, want) in want_r {
            let got = head["refined"][field].as_f64().unwrap();
            assert_near(&format!("R {field}"), got, want, tol);
        }

        // Causal: only row 2 receives a message; GTD = [0, 0, 0.053738].
        let input = dir.join("causal.safetensors");
        write_tensor(
            &input,
            "attentions",
            Dtype::BF16,
            &[1, 1, 3, 3],
            &spec_map(true),
        );
        let r = maps(
            Some(gpu),
            &input,
            &[
                "--causal",
                "--lambda",
                "0.5",
                "--json",
                json.to_str().unwrap(),
            ],
        );
        assert_success("causal maps", &r);
        let report = read_json(&json);
        assert_eq!(report["dtype"], "BF16");
        let gtd = report["layers"][0]["heads"][0]["refined"]["gtd"]
            .as_f64()
            .unwrap();
        // bf16 rounds A's entries by up to u = 2⁻⁸ relatively; m, a product
        // of two of them, and GTD with it, by up to about 2u.
        let bound = Tolerance {
            abs: 1e-6,
            rel: 3.0 * 2f64.powi(-8),
        };
        assert_near("causal GTD of R", gtd, 0.053738 / 3.0, bound);
    });
}

#[test]
fn the_per_row_metrics_are_written_for_every_layer() {
    let dir = TempDir::new("maps-rows");
    let input = dir.join("two-layers.safetensors");
    // Two layers of the spec's map, the second with λ = 0 (no R).
    let a = spec_map(false);
    let values: Vec<f32> = a.iter().chain(&a).copied().collect();
    write_tensor(&input, "attentions", Dtype::F16, &[2, 1, 1, 3, 3], &values);
    let out = dir.join("rows.safetensors");
    let r = maps(
        None,
        &input,
        &["--lambda", "0.5,0", "--output", out.to_str().unwrap()],
    );
    assert_success("maps --output", &r);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let entropy = st.tensor("attn.entropy").unwrap();
    assert_eq!(entropy.shape(), [2, 1, 1, 3]);
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(entropy.data());
    // f16 moves each entropy by at most u(1 + ln 3) ≈ 1.0e-3.
    let want = [0.832396, 0.905959, 1.017357];
    for (i, (g, w)) in values.iter().zip(want.iter().cycle()).enumerate() {
        assert_near(
            &format!("entropy[{i}]"),
            f64::from(*g),
            *w,
            absolute(1.1e-3),
        );
    }
    // A layer with λ = 0 has no R, so no `refined.*` tensors are written.
    assert!(st.tensor("refined.gtd").is_err());
    assert_eq!(st.names().len(), 7);
}

/// The rows of `docs/ERRORS.md`'s maps table: id, case, message.
fn documented_rows() -> Vec<[String; 3]> {
    common::documented_errors(Some("Attention maps"))
        .into_iter()
        .map(|cells| {
            cells
                .try_into()
                .unwrap_or_else(|c| panic!("malformed row {c:?}"))
        })
        .collect()
}

#[test]
fn every_documented_maps_error_is_one_line_before_any_gpu_work() {
    let dir = TempDir::new("maps-errors");
    let file = |name: &str| dir.join(name);
    let good = spec_map(false);
    let shape = [1usize, 1, 3, 3];
    let json = file("never.json");
    let rows = documented_rows();
    assert!(rows.len() >= 8, "{} rows", rows.len());
    for [id, case, needle] in &rows {
        let input = file(&format!("{id}.safetensors"));
        let mut extra: Vec<&str> = Vec::new();
        match id.as_str() {
            "maps-missing" => {}
            "maps-not-safetensors" => std::fs::write(&input, b"not a safetensors file").unwrap(),
            "maps-two-tensors" => write_tensors(
                &input,
                &[
                    ("layer0", Dtype::F32, &shape, &good),
                    ("layer1", Dtype::F32, &shape, &good),
                ],
            ),
            "maps-wrong-dtype" => write_tensor(&input, "attentions", Dtype::F64, &shape, &good),
            "maps-wrong-rank" => write_tensor(&input, "attentions", Dtype::F32, &[3, 3], &good),
            "maps-not-square" => {
                write_tensor(&input, "attentions", Dtype::F32, &[1, 3, 3, 1], &good)
            }
            "maps-non-finite" => {
                let mut bad = good.clone();
                bad[4] = f32::NAN;
                write_tensor(&input, "attentions", Dtype::F32, &shape, &bad);
            }
            "maps-negative" => {
                let bad = [1.5, -0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
                write_tensor(&input, "attentions", Dtype::F32, &shape, &bad);
            }
            "maps-not-stochastic" => {
                let mut bad = good.clone();
                bad[8] += 0.01;
                write_tensor(&input, "attentions", Dtype::F16, &shape, &bad);
            }
            "maps-not-causal" => {
                write_tensor(&input, "attentions", Dtype::F32, &shape, &good);
                extra.push("--causal");
            }
            "maps-lambda-length" => {
                write_tensor(&input, "attentions", Dtype::F32, &shape, &good);
                extra.extend(["--lambda", "1,2"]);
            }
            "maps-heatmap-range" => {
                write_tensor(&input, "attentions", Dtype::F32, &shape, &good);
                extra.extend(["--layer", "1"]);
            }
            other => panic!("row `{other}` ({case}) has no test"),
        }
        // An adapter that does not exist: an input error must come first.
        let mut args = vec![
            "--adapter",
            "no-such-adapter",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend(extra);
        let r = maps(None, &input, &args);
        assert_one_error_line(id, &r, needle);
        assert!(!json.exists(), "{id}: no output file");
        eprintln!("{id}: {}", String::from_utf8_lossy(&r.stderr).trim());
    }
}
