//! `saobp refine` end to end on every adapter: outputs against the float64
//! reference, the JSON report, and one clear error line (with no output file)
//! for each kind of bad input.

#[path = "../../tests/common/mod.rs"]
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
                "multi_hop_mass",
                "gtd",
                "rows",
            ] {
                assert!(
                    head["attn"][key].is_number(),
                    "{mode}: JSON lacks attn.{key}"
                );
            }
            // Batch item 1 pads its last two keys, and a padded query is not counted.
            assert_eq!(head["attn"]["rows"], n - 2, "{mode}");
            assert_eq!(summaries[3][7], (n - 2) as f64);
            let m = head["attn"]["multi_hop_mass"].as_f64().unwrap();
            assert!(
                (m - summaries[3][5]).abs() < 1e-5,
                "{mode}: JSON multi_hop_mass {m} vs {}",
                summaries[3][5]
            );
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

/// A small random input (B=1, H=2, N=12, D=4, causal reference at λ = 1.5)
/// written to `dir`, and its reference.
fn small_input(dir: &Path) -> (std::path::PathBuf, reference::SaobpRef, [usize; 4]) {
    let shape = [1, 2, 12, 4];
    let len = shape.iter().product();
    let mut rng = Rng::new(43);
    let (q, k, v) = (
        rng.vec(len, -2.0, 2.0),
        rng.vec(len, -2.0, 2.0),
        rng.vec(len, -1.0, 1.0),
    );
    let input = dir.join("small.safetensors");
    write_input(
        &input,
        &[
            ("q", Dtype::F32, shape.to_vec(), bytes_f32(&q)),
            ("k", Dtype::F32, shape.to_vec(), bytes_f32(&k)),
            ("v", Dtype::F32, shape.to_vec(), bytes_f32(&v)),
        ],
    );
    let opts = RefOptions {
        causal: true,
        key_mask: None,
        scale: None,
    };
    let want = reference::saobp(&q, &k, &v, shape, shape[3], &opts, &[1.5, 1.5]).unwrap();
    (input, want, shape)
}

/// Without `--json`, fused and materialized refine write `m` and the GTD of
/// `R` but not the entropy of `R`, which `--refined-metrics` adds; modes
/// without `R` refuse that flag.
#[test]
fn refined_metrics_come_only_when_asked_for() {
    let tmp = TempDir::new("refine-metrics");
    let (input, want, [b, h, n, _]) = small_input(&tmp);
    let (_, rows_r) = common::reference_rows(&want, &[1.5, 1.5], [b, h, n], true, None);
    let column = |k: usize| rows_r.iter().map(|r| r[k]).collect::<Vec<f64>>();
    let out = tmp.join("out.safetensors");
    let args = |mode: &'static str| {
        vec![
            "--input".to_string(),
            input.to_str().unwrap().to_string(),
            "--output".to_string(),
            out.to_str().unwrap().to_string(),
            "--causal".to_string(),
            "--lambda".to_string(),
            "1.5".to_string(),
            "--mode".to_string(),
            mode.to_string(),
        ]
    };
    for mode in ["fused", "materialized"] {
        for asked in [false, true] {
            let mut a = args(mode);
            if asked {
                a.push("--refined-metrics".into());
            }
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let r = refine(None, &a);
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
            let bytes = std::fs::read(&out).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut names = st.names();
            names.sort();
            let mut expect = vec!["entropy", "gtd", "m", "out"];
            if asked {
                expect.insert(1, "entropy_refined");
            }
            if mode == "materialized" {
                expect.insert(0, "attn");
                expect.push("refined");
            }
            assert_eq!(names, expect, "{mode} --refined-metrics {asked}");
            let what = |x: &str| format!("refine {mode} ({asked}) {x}");
            assert_within(
                &what("out"),
                &read_f32(&st, "out").1,
                &want.output,
                Tolerance::SPEC,
            );
            assert_within(
                &what("m"),
                &read_f32(&st, "m").1,
                &want.mass,
                Tolerance::SPEC,
            );
            assert_within(
                &what("gtd"),
                &read_f32(&st, "gtd").1,
                &column(6),
                Tolerance::SPEC,
            );
            if asked {
                let got = read_f32(&st, "entropy_refined").1;
                assert_within(&what("entropy_refined"), &got, &column(0), Tolerance::SPEC);
            }
        }
    }
    for mode in ["plain", "flash", "streaming"] {
        let mut a = args(mode);
        a.push("--refined-metrics".into());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = refine(None, &a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{mode}");
        assert!(
            err.contains("--refined-metrics needs the entries of R"),
            "{mode}: {err}"
        );
    }
}

/// Outputs are written whole or not at all: when one of them cannot be
/// written, no output file and no temporary file is left behind.
#[test]
fn a_failing_write_leaves_no_partial_output() {
    let tmp = TempDir::new("refine-atomic");
    let (input, _, _) = small_input(&tmp);
    let out = tmp.join("out.safetensors");
    let blocked = tmp.join("a-directory");
    std::fs::create_dir(&blocked).unwrap();
    for (json, needle) in [
        (blocked.clone(), "is a directory"),
        (tmp.join("absent").join("x.json"), "cannot write"),
    ] {
        let r = refine(
            None,
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--json",
                json.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{}", json.display());
        assert!(err.contains(needle), "{err}");
        let mut left: Vec<String> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a-directory", "small.safetensors"], "{err}");
        assert_eq!(std::fs::read_dir(&blocked).unwrap().count(), 0);
    }
}

/// `gpu work: D dispatches, G GFLOP of matrix products` from refine's output.
fn gpu_work(stderr: &str) -> (u64, f64) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("gpu work: "))
        .unwrap_or_else(|| panic!("no `gpu work:` line in {stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[1], "dispatches,", "{line}");
    assert_eq!(words[3..], ["GFLOP", "of", "matrix", "products"], "{line}");
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

/// `refine --mode fused` does what the mode promises, counted: without
/// `--json` its matrix products are O(N²D) (`Q·Kᵀ`, `A·V`, `A·U`), far
/// under the N³ per head that forming `M` takes; with `--json`, which
/// measures `R` itself, the N³ product is there.
#[test]
fn fused_refine_without_json_does_no_cubic_work() {
    let tmp = TempDir::new("refine-work");
    let (b, h, n, d) = (1usize, 2usize, 256usize, 8usize);
    let mut rng = Rng::new(47);
    let shape = vec![b, h, n, d];
    let input = tmp.join("in.safetensors");
    let tensors: Vec<Raw> = ["q", "k", "v"]
        .into_iter()
        .map(|name| {
            let x = rng.vec(b * h * n * d, -1.0, 1.0);
            (name, Dtype::F32, shape.clone(), bytes_f32(&x))
        })
        .collect();
    write_input(&input, &tensors);
    let out = tmp.join("out.safetensors");
    let json = tmp.join("out.json");
    let base = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--mode",
        "fused",
    ];
    let run = |extra: &[&str]| {
        let r = refine(None, &[&base[..], extra].concat());
        let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(r.status.success(), "{stderr}");
        gpu_work(&stderr)
    };
    let (bh, n) = ((b * h) as f64, n as f64);
    // In GFLOP, 2 per multiply-add: Q·Kᵀ and A·V (D each) and A·U', U'
    // being D + 1 wide padded with zero columns to a multiple of 4.
    let quadratic = 2.0 * bh * n * n * (2 * d + (d + 1).next_multiple_of(4)) as f64 / 1e9;
    let cubic = 2.0 * bh * n * n * n / 1e9;
    let (dispatches, gflop) = run(&[]);
    assert!(dispatches > 0 && gflop > 0.0, "{dispatches} {gflop}");
    // Printed to 1e-6 GFLOP.
    assert!(gflop <= quadratic + 1e-6, "{gflop} GFLOP > {quadratic}");
    assert!(quadratic < cubic / 5.0);
    let (dispatches_json, gflop_json) = run(&["--json", json.to_str().unwrap()]);
    assert!(gflop_json >= cubic, "{gflop_json} GFLOP < {cubic}");
    assert!(dispatches_json > dispatches);
}

/// Values stored as f16 (`half`) and their exact f32 widening, as raw bytes.
fn f16_bytes(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    (
        h.iter().flat_map(|x| x.to_le_bytes()).collect(),
        h.iter().map(|x| x.to_f32()).collect(),
    )
}

/// Values stored as bf16 and their exact f32 widening.
fn bf16_bytes(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
    (
        h.iter().flat_map(|x| x.to_le_bytes()).collect(),
        h.iter().map(|x| x.to_f32()).collect(),
    )
}

#[test]
fn f16_and_bf16_inputs_run_as_their_exact_f32_values_on_every_adapter() {
    let dir = TempDir::new("refine-half");
    let (b, h, n, d) = (1, 2, 7, 4);
    let mut rng = Rng::new(5);
    let shape = vec![b, h, n, d];
    let (q16, q) = f16_bytes(&rng.vec(b * h * n * d, -2.0, 2.0));
    let (k16, k) = bf16_bytes(&rng.vec(b * h * n * d, -2.0, 2.0));
    let (v16, v) = f16_bytes(&rng.vec(b * h * n * d, -1.0, 1.0));
    let (l16, lambda) = bf16_bytes(&[0.3, 1.7]);
    let (m16, mask) = f16_bytes(&key_mask(b, n, |_, j| j < n - 1));
    let halves = dir.join("half.safetensors");
    write_input(
        &halves,
        &[
            ("q", Dtype::F16, shape.clone(), q16),
            ("k", Dtype::BF16, shape.clone(), k16),
            ("v", Dtype::F16, shape.clone(), v16),
            ("lambda", Dtype::BF16, vec![h], l16),
            ("key_mask", Dtype::F16, vec![b, n], m16),
        ],
    );
    let widened = dir.join("f32.safetensors");
    write_input(
        &widened,
        &[
            ("q", Dtype::F32, shape.clone(), bytes_f32(&q)),
            ("k", Dtype::F32, shape.clone(), bytes_f32(&k)),
            ("v", Dtype::F32, shape.clone(), bytes_f32(&v)),
            ("lambda", Dtype::F32, vec![h], bytes_f32(&lambda)),
            ("key_mask", Dtype::F32, vec![b, n], bytes_f32(&mask)),
        ],
    );
    common::on_every_gpu("refine of f16/bf16 inputs", |gpu| {
        let mut outs = Vec::new();
        for (input, name) in [(&halves, "half-out"), (&widened, "f32-out")] {
            let out = dir.join(format!("{name}.safetensors"));
            let r = refine(
                Some(gpu),
                &[
                    "--input",
                    input.to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                ],
            );
            assert_success(name, &r);
            let bytes = std::fs::read(&out).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            outs.push((read_f32(&st, "out").1, read_f32(&st, "gtd").1));
        }
        // The same f32 values reach the same kernels: the same bits come out.
        assert_eq!(outs[0], outs[1]);
        // And they are SAOBP's output for those values, by the reference.
        let want = reference::saobp(
            &q,
            &k,
            &v,
            [b, h, n, d],
            d,
            &RefOptions {
                causal: false,
                key_mask: Some(&mask),
                scale: None,
            },
            &lambda.iter().map(|&l| f64::from(l)).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_within("out", &outs[0].0, &want.output, Tolerance::SPEC);
    });
}
