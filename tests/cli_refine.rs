//! `saobp refine` end to end on every adapter: outputs against the float64
//! reference, the JSON report, and one clear error line (with no output file)
//! for each kind of bad input.

mod common;

use std::path::Path;

use common::{
    absolute, assert_near, assert_one_error_line, assert_success, assert_within, key_mask, Rng,
    TempDir, Tolerance,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use saobp::reference::{self, RefOptions};

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One input tensor: name, dtype, shape, raw little-endian bytes.
type Raw = (&'static str, Dtype, Vec<usize>, Vec<u8>);

/// A bad input: (case, tensors or `None` for a malformed file, extra
/// arguments, text the error line must contain).
type BadCase = (
    &'static str,
    Option<Vec<Raw>>,
    Vec<&'static str>,
    &'static str,
);

/// Writes a safetensors file of raw tensors.
fn write_input(path: &Path, tensors: &[Raw]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn refine(gpu: Option<&saobp::Gpu>, args: &[&str]) -> std::process::Output {
    common::run_cli(gpu, ["refine"].iter().chain(args))
}

fn read_f32(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("output has `{name}`"));
    assert_eq!(t.dtype(), Dtype::F32);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn refine_matches_reference_on_every_adapter() {
    let dir = TempDir::new("refine-ok");
    let (b, h, n, d) = (2, 2, 9, 4);
    let mut rng = Rng::new(31);
    let q = rng.vec(b * h * n * d, -2.0, 2.0);
    let k = rng.vec(b * h * n * d, -2.0, 2.0);
    let v = rng.vec(b * h * n * d, -1.0, 1.0);
    // Batch item 1 loses its last two keys.
    let mask_f = key_mask(b, n, |item, j| item == 0 || j < n - 2);
    let mask: Vec<u8> = mask_f.iter().map(|&x| x as u8).collect();
    let lambda = [0.5f32, 2.0];
    let input = dir.join("in.safetensors");
    let shape = vec![b, h, n, d];
    write_input(
        &input,
        &[
            ("q", Dtype::F32, shape.clone(), bytes_f32(&q)),
            ("k", Dtype::F32, shape.clone(), bytes_f32(&k)),
            ("v", Dtype::F32, shape.clone(), bytes_f32(&v)),
            ("key_mask", Dtype::U8, vec![b, n], mask.clone()),
            ("lambda", Dtype::F32, vec![h], bytes_f32(&lambda)),
        ],
    );
    let lambda64: Vec<f64> = lambda.iter().map(|&l| f64::from(l)).collect();
    let want = reference::saobp(
        &q,
        &k,
        &v,
        [b, h, n, d],
        d,
        &RefOptions {
            causal: true,
            key_mask: Some(&mask_f),
            scale: Some(0.7),
        },
        &lambda64,
    )
    .unwrap();
    let (rows_a, rows_r) = common::reference_rows(&want, &lambda64, [b, h, n], true, Some(&mask_f));

    for gpu in common::gpus() {
        for mode in ["plain", "fused", "materialized"] {
            let out = dir.join(format!("out-{mode}.safetensors"));
            let json = dir.join(format!("out-{mode}.json"));
            let r = refine(
                Some(gpu),
                &[
                    "--input",
                    input.to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                    "--causal",
                    "--scale",
                    "0.7",
                    "--lambda",
                    "9",
                    "--mode",
                    mode,
                    "--json",
                    json.to_str().unwrap(),
                ],
            );
            assert_success(mode, &r);
            let bytes = std::fs::read(&out).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut names = st.names();
            names.sort();
            let expect: &[&str] = match mode {
                "plain" => &["entropy", "out"],
                "fused" => &["entropy", "entropy_refined", "gtd", "m", "out"],
                _ => &[
                    "attn",
                    "entropy",
                    "entropy_refined",
                    "gtd",
                    "m",
                    "out",
                    "refined",
                ],
            };
            assert_eq!(names, expect, "{mode}");
            let what = |x: &str| format!("refine {mode} {x} on {}", gpu.adapter());
            let (s, o) = read_f32(&st, "out");
            assert_eq!(s, shape);
            let o_want = if mode == "plain" {
                &want.plain_output
            } else {
                &want.output
            };
            assert_within(&what("out"), &o, o_want, Tolerance::SPEC);
            let (s, e) = read_f32(&st, "entropy");
            assert_eq!(s, [b, h, n]);
            assert_within(
                &what("entropy"),
                &e,
                &rows_a.iter().map(|r| r[0]).collect::<Vec<_>>(),
                Tolerance::SPEC,
            );
            if mode != "plain" {
                assert_within(
                    &what("m"),
                    &read_f32(&st, "m").1,
                    &want.mass,
                    Tolerance::SPEC,
                );
                assert_within(
                    &what("gtd"),
                    &read_f32(&st, "gtd").1,
                    &rows_r.iter().map(|r| r[6]).collect::<Vec<_>>(),
                    Tolerance::SPEC,
                );
                assert_within(
                    &what("entropy_refined"),
                    &read_f32(&st, "entropy_refined").1,
                    &rows_r.iter().map(|r| r[0]).collect::<Vec<_>>(),
                    Tolerance::SPEC,
                );
            }
            if mode == "materialized" {
                assert_within(
                    &what("attn"),
                    &read_f32(&st, "attn").1,
                    &want.attention,
                    Tolerance::SPEC,
                );
                assert_within(
                    &what("refined"),
                    &read_f32(&st, "refined").1,
                    &want.refined,
                    Tolerance::SPEC,
                );
            }
            let report: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            assert_eq!(report["adapter"]["name"], gpu.adapter().name.as_str());
            assert_eq!(
                report["lambda"],
                serde_json::json!([0.5, 2.0]),
                "the lambda tensor overrides --lambda"
            );
            let head = &report["batch"][1]["heads"][1];
            let summaries = reference::metrics::summarize(&rows_a, n).unwrap();
            assert_near(
                &format!("{mode}: JSON entropy"),
                head["attn"]["entropy"].as_f64().unwrap(),
                summaries[3][0],
                absolute(1e-5),
            );
            assert_eq!(head["refined"].is_object(), mode != "plain");
            for key in [
                "entropy",
                "normalized_entropy",
                "sparsity",
                "peak",
                "distance",
                "gtd",
            ] {
                assert!(
                    head["attn"][key].is_number(),
                    "{mode}: JSON lacks attn.{key}"
                );
            }
            eprintln!("refine {mode}: ok on {}", gpu.adapter());
        }
        // The streaming modes: no metrics of R and no JSON, but the row stats.
        for mode in ["flash", "streaming"] {
            let out = dir.join(format!("out-{mode}.safetensors"));
            let args = [
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--causal",
                "--scale",
                "0.7",
                "--mode",
                mode,
            ];
            let r = refine(Some(gpu), &args);
            assert_success(mode, &r);
            let bytes = std::fs::read(&out).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut names = st.names();
            names.sort();
            let (expect, o_want): (&[&str], _) = if mode == "flash" {
                (&["entropy", "out", "row_stats"], &want.plain_output)
            } else {
                (&["entropy", "m", "out", "row_stats"], &want.output)
            };
            assert_eq!(names, expect, "{mode}");
            let what = |x: &str| format!("refine {mode} {x} on {}", gpu.adapter());
            assert_within(
                &what("out"),
                &read_f32(&st, "out").1,
                o_want,
                Tolerance::SPEC,
            );
            let entropy: Vec<f64> = rows_a.iter().map(|r| r[0]).collect();
            assert_within(
                &what("entropy"),
                &read_f32(&st, "entropy").1,
                &entropy,
                Tolerance::SPEC,
            );
            assert_eq!(read_f32(&st, "row_stats").0, [b, h, n, 3]);
            if mode == "streaming" {
                assert_within(
                    &what("m"),
                    &read_f32(&st, "m").1,
                    &want.mass,
                    Tolerance::SPEC,
                );
            }
            let json = dir.join(format!("out-{mode}.json"));
            let mut with_json = args.to_vec();
            with_json.extend(["--json", json.to_str().unwrap()]);
            let r = refine(Some(gpu), &with_json);
            assert_one_error_line(&format!("{mode} with --json"), &r, "use plain or fused");
            assert!(!json.exists());
            eprintln!("refine {mode}: ok on {}", gpu.adapter());
        }
    }
}

#[test]
fn bad_input_exits_with_one_line_and_no_output() {
    let dir = TempDir::new("refine-bad");
    let shape = vec![1, 2, 3, 4];
    let ones = bytes_f32(&[0.5; 24]);
    let qkv = |q: (Dtype, Vec<usize>, Vec<u8>)| {
        vec![
            ("q", q.0, q.1, q.2),
            ("k", Dtype::F32, shape.clone(), ones.clone()),
            ("v", Dtype::F32, shape.clone(), ones.clone()),
        ]
    };
    let good = || qkv((Dtype::F32, shape.clone(), ones.clone()));
    let with = |extra: Raw| {
        let mut t = good();
        t.push(extra);
        t
    };
    let cases: Vec<BadCase> = vec![
        (
            "missing tensor",
            Some(good()[..2].to_vec()),
            vec![],
            "no tensor `v`",
        ),
        (
            "wrong dtype",
            Some(qkv((Dtype::F64, shape.clone(), vec![0; 192]))),
            vec![],
            "dtype F64",
        ),
        (
            "wrong rank",
            Some(qkv((Dtype::F32, vec![2, 3, 4], ones.clone()))),
            vec![],
            "rank 4",
        ),
        (
            "mismatched k",
            Some(vec![
                good()[0].clone(),
                ("k", Dtype::F32, vec![1, 2, 4, 3], ones.clone()),
                good()[2].clone(),
            ]),
            vec![],
            "must match",
        ),
        (
            "mismatched v",
            Some(vec![
                good()[0].clone(),
                good()[1].clone(),
                ("v", Dtype::F32, vec![1, 2, 2, 6], ones.clone()),
            ]),
            vec![],
            "first three dimensions",
        ),
        (
            "NaN in q",
            Some(qkv((Dtype::F32, shape.clone(), bytes_f32(&[f32::NAN; 24])))),
            vec![],
            "non-finite",
        ),
        (
            "mask shape",
            Some(with(("key_mask", Dtype::U8, vec![1, 4], vec![1; 4]))),
            vec![],
            "key_mask",
        ),
        (
            "mask values",
            Some(with((
                "key_mask",
                Dtype::F32,
                vec![1, 3],
                bytes_f32(&[1.0, 0.5, 1.0]),
            ))),
            vec![],
            "only 0 and 1",
        ),
        (
            "lambda length",
            Some(with(("lambda", Dtype::F32, vec![3], bytes_f32(&[1.0; 3])))),
            vec![],
            "lambda",
        ),
        (
            "negative lambda tensor",
            Some(with((
                "lambda",
                Dtype::F32,
                vec![2],
                bytes_f32(&[1.0, -1.0]),
            ))),
            vec![],
            "lambda",
        ),
        (
            "negative lambda",
            Some(good()),
            vec!["--lambda", "-0.5"],
            "lambda",
        ),
        (
            "NaN lambda",
            Some(good()),
            vec!["--lambda", "NaN"],
            "lambda",
        ),
        ("zero scale", Some(good()), vec!["--scale", "0"], "scale"),
        (
            "infinite scale",
            Some(good()),
            vec!["--scale", "inf"],
            "scale",
        ),
        ("bad mode", Some(good()), vec!["--mode", "fast"], "mode"),
        ("malformed file", None, vec![], "not a valid safetensors"),
    ];
    for (i, (name, tensors, extra, needle)) in cases.into_iter().enumerate() {
        let input = dir.join(format!("in{i}.safetensors"));
        match tensors {
            Some(t) => write_input(&input, &t),
            None => std::fs::write(&input, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap(),
        }
        let out = dir.join(format!("out{i}.safetensors"));
        let mut args = vec![
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let r = refine(None, &args);
        assert_one_error_line(name, &r, needle);
        assert!(!out.exists(), "{name}: an output file was written");
    }
    let r = refine(
        None,
        &[
            "--input",
            dir.join("absent.safetensors").to_str().unwrap(),
            "--output",
            dir.join("x").to_str().unwrap(),
        ],
    );
    assert_one_error_line("absent input", &r, "cannot read");
}
