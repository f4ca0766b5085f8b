//! `saobp train`, `eval` and `generate` on a small fixed text: training
//! lowers the loss on every adapter; a stopped and resumed run equals an
//! uninterrupted one bit for bit; `eval --grads` gives the library's
//! gradients; checkpoints round-trip; sampling is deterministic for a seed;
//! and every bad input of `docs/ERRORS.md`'s training table gives its one
//! error line.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{assert_one_error_line, assert_success, on_every_gpu, run_cli, TempDir};
use saobp::data::{Corpus, Split};
use saobp::kernels::gpt::TokenIds;
use saobp::model::Gpt;
use saobp::Gpu;
use serde_json::Value;

/// About 3,000 characters of English with a small alphabet.
fn text() -> String {
    let lines = [
        "shall i compare thee to a summer's day? thou art more lovely and more temperate.",
        "rough winds do shake the darling buds of may, and summer's lease hath all too short a date.",
        "sometime too hot the eye of heaven shines, and often is his gold complexion dimm'd;",
        "and every fair from fair sometime declines, by chance or nature's changing course untrimm'd;",
    ];
    (0..9).flat_map(|_| lines).collect::<Vec<_>>().join("\n")
}

/// A tiny model: 2 layers of 2 heads, width 32, context 16, batch 4.
const SIZES: [&str; 10] = [
    "--layers", "2", "--heads", "2", "--embd", "32", "--block", "16", "--batch", "4",
];

fn write_text(dir: &Path) -> String {
    let path = dir.join("text.txt");
    std::fs::write(&path, text()).unwrap();
    path.display().to_string()
}

fn train(gpu: Option<&Gpu>, data: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--data", data, "--out", out.to_str().unwrap()];
    args.extend(SIZES);
    args.extend(["--eval-windows", "4", "--lr", "1e-2"]);
    args.extend(extra);
    run_cli(gpu, args)
}

fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn training_lowers_the_loss_on_every_adapter() {
    on_every_gpu("train", |gpu| {
        let tmp = TempDir::new("train");
        let data = write_text(&tmp);
        let out = tmp.join("run");
        let r = train(
            Some(gpu),
            &data,
            &out,
            &[
                "--steps",
                "60",
                "--eval-every",
                "20",
                "--lambda",
                "0.3",
                "--learn-lambda",
            ],
        );
        assert_success("train", &r);
        let recs = records(&out);
        assert_eq!(recs.len(), 3, "evaluations at steps 20, 40, 60");
        let val: Vec<f64> = recs
            .iter()
            .map(|r| r["val_loss"].as_f64().unwrap())
            .collect();
        let train_loss = recs[2]["train_loss"].as_f64().unwrap();
        // Uniform guessing over the text's alphabet costs ln V nats.
        let vocab = Corpus::from_text(&text()).unwrap().vocab().len() as f64;
        assert!(val[0] < vocab.ln(), "{val:?} vs ln V = {}", vocab.ln());
        // The schedule is still warming up (100 steps): a steady fall.
        assert!(
            val[1] < val[0] && val[2] < val[1] - 0.05,
            "the val loss should fall: {val:?}"
        );
        assert!(train_loss < val[0], "{train_loss} vs {val:?}");
        for layer in recs[2]["layers"].as_array().unwrap() {
            let lambda = layer["lambda"].as_array().unwrap();
            assert_eq!(lambda.len(), 2);
            // Learned: λ moved from 0.3 and stayed >= 0.
            assert!(lambda.iter().all(|l| l.as_f64().unwrap() >= 0.0));
            assert!(lambda
                .iter()
                .any(|l| (l.as_f64().unwrap() - 0.3).abs() > 1e-4));
            for key in ["entropy_a", "entropy_r"] {
                let e = layer[key].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&e), "{key} = {e}");
            }
        }
        assert!(out.join("curves.png").metadata().unwrap().len() > 1000);
    });
}

#[test]
fn a_stopped_and_resumed_run_equals_an_uninterrupted_one() {
    let tmp = TempDir::new("resume");
    let data = write_text(&tmp);
    let (straight, resumed) = (tmp.join("straight"), tmp.join("resumed"));
    let common = [
        "--steps",
        "24",
        "--eval-every",
        "8",
        "--lambda",
        "0.5",
        "--learn-lambda",
        // Two passes a step: the gradient sums resume as exactly as the rest.
        "--micro-batch",
        "2",
    ];
    assert_success("straight", &train(None, &data, &straight, &common));
    let settings = std::fs::read_to_string(straight.join("train.json")).unwrap();
    assert!(settings.contains("\"micro_batch\": 2"), "{settings}");
    let mut first = common.to_vec();
    first.extend(["--stop-after", "11"]);
    let r = train(None, &data, &resumed, &first);
    assert_success("first half", &r);
    assert!(String::from_utf8_lossy(&r.stdout).contains("stopped at step 11"));
    let r = run_cli(
        None,
        [
            "train",
            "--data",
            &data,
            "--resume",
            resumed.to_str().unwrap(),
        ],
    );
    assert_success("resume", &r);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (
            std::fs::read(straight.join(file)).unwrap(),
            std::fs::read(resumed.join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs after resuming");
    }
    let strip = |mut r: Value| {
        r.as_object_mut()
            .unwrap()
            .retain(|k, _| k != "tokens_per_s" && k != "elapsed_s");
        r
    };
    let a: Vec<Value> = records(&straight).into_iter().map(strip).collect();
    let b: Vec<Value> = records(&resumed).into_iter().map(strip).collect();
    assert_eq!(a, b, "the evaluations differ");
}

#[test]
fn checkpoints_evaluate_and_differentiate_as_the_library_does() {
    let gpu = &common::gpus()[0];
    let (tmp, data, run) = trained_with(gpu, "eval", "10", "0.2");
    // The checkpoint reloads as it was written.
    let model = Gpt::load(gpu, &run).unwrap();
    let bytes = std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(
        model.to_safetensors_blocking(gpu).unwrap() == bytes,
        "model.safetensors does not round-trip"
    );

    // `eval` of the same windows gives the run's last val loss exactly.
    let grads = tmp.join("grads.safetensors");
    let r = run_cli(
        Some(gpu),
        [
            "eval",
            "--model",
            run.to_str().unwrap(),
            "--data",
            &data,
            "--windows",
            "4",
            "--json",
            "--grads",
            grads.to_str().unwrap(),
        ],
    );
    assert_success("eval", &r);
    let report: Value = serde_json::from_slice(&r.stdout).unwrap();
    let loss = report["loss"].as_f64().unwrap();
    let last = records(&run).pop().unwrap();
    assert_eq!(loss, last["val_loss"].as_f64().unwrap());
    assert!((report["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);

    // Its gradients are the library's for those windows, bit for bit.
    let corpus = Corpus::from_text(&text()).unwrap();
    let (x, y) = corpus.windows(Split::Val, 16, 4).unwrap();
    let vocab = model.config().vocab_size;
    let ws = model.workspace(gpu, 4, 16).unwrap();
    let x = TokenIds::new(gpu, &x, 4, 16, vocab).unwrap();
    let y = TokenIds::new(gpu, &y, 4, 16, vocab).unwrap();
    model.forward_backward_blocking(gpu, &ws, &x, &y).unwrap();
    assert_eq!(f64::from(ws.loss_blocking(gpu).unwrap()), loss);
    let file = std::fs::read(&grads).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    assert_eq!(st.len(), ws.grads().count());
    assert!(st.tensor("transformer.h.1.attn.saobp_lambda").is_ok());
    for (spec, g) in ws.grads() {
        let want = g.to_vec_blocking(gpu).unwrap();
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor(&spec.name).unwrap().data());
        assert!(got == want, "∂{} differs from the library's", spec.name);
    }
}

#[test]
fn generation_is_deterministic_for_a_seed() {
    let tmp = TempDir::new("generate");
    let data = write_text(&tmp);
    let run = tmp.join("run");
    assert_success(
        "train",
        &train(None, &data, &run, &["--steps", "30", "--eval-every", "30"]),
    );
    let sample = |seed: &str, temperature: &str| {
        let r = run_cli(
            None,
            [
                "generate",
                "--model",
                run.to_str().unwrap(),
                "--prompt",
                "shall i ",
                "--tokens",
                "40",
                "--seed",
                seed,
                "--temperature",
                temperature,
                "--top-k",
                "10",
            ],
        );
        assert_success("generate", &r);
        String::from_utf8(r.stdout).unwrap()
    };
    let a = sample("7", "1.0");
    assert!(
        a.starts_with("shall i ") && a.trim_end().chars().count() >= 40,
        "{a:?}"
    );
    assert_eq!(a, sample("7", "1.0"));
    assert_ne!(a, sample("8", "1.0"));
    assert_eq!(
        sample("7", "0"),
        sample("8", "0"),
        "temperature 0 is greedy"
    );
}

/// A fresh folder holding the text and a run trained on `gpu` for `steps`
/// steps at λ = `lambda`, evaluated once at the end.
fn trained_with(gpu: &Gpu, name: &str, steps: &str, lambda: &str) -> (TempDir, String, PathBuf) {
    let tmp = TempDir::new(name);
    let data = write_text(&tmp);
    let run = tmp.join("run");
    let r = train(
        Some(gpu),
        &data,
        &run,
        &["--steps", steps, "--eval-every", steps, "--lambda", lambda],
    );
    assert_success("train", &r);
    (tmp, data, run)
}

/// A run folder trained for `steps` steps, for the rows that need one.
fn trained(tmp: &Path, data: &str, steps: &str) -> PathBuf {
    let run = tmp.join(format!("run-{steps}"));
    let r = train(None, data, &run, &["--steps", steps, "--eval-every", "2"]);
    assert_success("train", &r);
    run
}

/// Scales every tensor of the run's model.safetensors whose name contains
/// one of `scales`' names by its factor.
fn scale_weights(run: &Path, scales: &[(&str, f32)]) {
    let path = run.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let mut v: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
            for (name, factor) in scales {
                if n.contains(name) {
                    v.iter_mut().for_each(|x| *x *= factor);
                }
            }
            (n, t.shape().to_vec(), v)
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, v)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                s.clone(),
                bytemuck::cast_slice(v),
            )
            .unwrap();
            (n.clone(), view)
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn every_documented_training_error_is_one_line() {
    let tmp = TempDir::new("train-errors");
    let data = write_text(&tmp);
    let rows = common::documented_errors(Some("Training, evaluation and generation"));
    assert!(rows.len() >= 12, "{} rows", rows.len());
    let out = |name: &str| tmp.join(name).display().to_string();
    let file = |name: &str, bytes: &[u8]| {
        std::fs::write(tmp.join(name), bytes).unwrap();
        out(name)
    };
    let done = trained(&tmp, &data, "2");
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A 4-step run in tmp/`name`, stopped (and checkpointed) after one step.
    let one_step_run = |name: &str| {
        let run = tmp.join(name);
        let mut a = args(&[
            "train",
            "--data",
            &data,
            "--out",
            run.to_str().unwrap(),
            "--steps",
            "4",
            "--stop-after",
            "1",
            "--eval-windows",
            "4",
        ]);
        a.extend(args(&SIZES));
        assert_success("first step", &run_cli(None, &a));
        run
    };
    let mut seen = Vec::new();
    for row in &rows {
        let [id, case, needle] = &row[..] else {
            panic!("malformed row {row:?}")
        };
        let d = done.display().to_string();
        let run: Vec<String> = match id.as_str() {
            "data-missing" => args(&["train", "--data", &out("absent.txt"), "--out", &out("r1")]),
            "data-empty" => args(&[
                "train",
                "--data",
                &file("empty.txt", b""),
                "--out",
                &out("r2"),
            ]),
            "data-not-utf8" => args(&[
                "train",
                "--data",
                &file("bad.txt", b"ab\xff\xfecd"),
                "--out",
                &out("r3"),
            ]),
            "data-too-short" => args(&[
                "train",
                "--data",
                &file("short.txt", b"0123456789abcdefghij"),
                "--out",
                &out("r4"),
                "--block",
                "16",
            ]),
            "eval-windows-too-many" => {
                let mut a = args(&[
                    "train",
                    "--data",
                    &data,
                    "--out",
                    &out("r5"),
                    "--eval-windows",
                    "1000",
                ]);
                a.extend(args(&SIZES));
                a
            }
            "out-holds-run" => args(&["train", "--data", &data, "--out", &d]),
            "lambda-negative" => {
                args(&["train", "--data", &data, "--out", &out("r6"), "--lambda=-1"])
            }
            "micro-batch-divides" => args(&[
                "train",
                "--data",
                &data,
                "--out",
                &out("r8"),
                "--batch",
                "12",
                "--micro-batch",
                "5",
            ]),
            "heads-width" => args(&[
                "train",
                "--data",
                &data,
                "--out",
                &out("r7"),
                "--embd",
                "30",
                "--heads",
                "4",
            ]),
            "resume-other-corpus" => {
                let other: String = text().chars().rev().collect();
                args(&[
                    "train",
                    "--data",
                    &file("other.txt", other.as_bytes()),
                    "--resume",
                    &d,
                ])
            }
            "resume-complete" => args(&["train", "--data", &data, "--resume", &d]),
            "optimizer-step-mismatch" => {
                let run = one_step_run("skewed");
                // train.json one step ahead of optimizer.safetensors.
                let settings = std::fs::read_to_string(run.join("train.json")).unwrap();
                assert!(settings.contains("\"step\": 1,"), "{settings}");
                std::fs::write(
                    run.join("train.json"),
                    settings.replace("\"step\": 1,", "\"step\": 2,"),
                )
                .unwrap();
                args(&["train", "--data", &data, "--resume", run.to_str().unwrap()])
            }
            "checkpoint-mismatch" => {
                let copy = tmp.join("mismatch");
                std::fs::create_dir_all(&copy).unwrap();
                for f in std::fs::read_dir(&done).unwrap() {
                    let f = f.unwrap().path();
                    std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
                }
                let config = std::fs::read_to_string(copy.join("config.json")).unwrap();
                std::fs::write(
                    copy.join("config.json"),
                    config.replace("\"n_embd\": 32", "\"n_embd\": 16"),
                )
                .unwrap();
                args(&["eval", "--model", copy.to_str().unwrap(), "--data", &data])
            }
            "non-finite-loss" => {
                let run = one_step_run("blow-up");
                // Finite weights whose logits overflow f32: a LayerNorm gain
                // of ~1e36 times embeddings of ~100.
                scale_weights(&run, &[("ln_f.weight", 1e36), ("wte", 1e4)]);
                let before = std::fs::read(run.join("model.safetensors")).unwrap();
                let r = run_cli(
                    None,
                    ["train", "--data", &data, "--resume", run.to_str().unwrap()],
                );
                assert_one_error_line(id, &r, needle);
                let stderr = String::from_utf8_lossy(&r.stderr);
                assert!(stderr.contains("step 1"), "the step is named: {stderr}");
                assert!(
                    std::fs::read(run.join("model.safetensors")).unwrap() == before,
                    "checkpoint kept"
                );
                seen.push(id.clone());
                continue;
            }
            "eval-unknown-character" => args(&[
                "eval",
                "--model",
                &d,
                "--data",
                &file("unknown.txt", "shall i ☃".as_bytes()),
            ]),
            "generate-unknown-character" => args(&["generate", "--model", &d, "--prompt", "☃"]),
            other => panic!("row `{other}` has no trigger"),
        };
        let r = run_cli(None, &run);
        assert_one_error_line(&format!("{id} ({case})"), &r, needle);
        seen.push(id.clone());
    }
    assert_eq!(seen.len(), rows.len());
}

#[test]
fn analyze_reads_a_trained_gpt_with_its_own_lambda() {
    let gpu = &common::gpus()[0];
    let (tmp, _, run) = trained_with(gpu, "analyze-gpt", "6", "0.4");
    let json = tmp.join("analyze.json");
    let plot = tmp.join("analyze.png");
    let text = "summer's lease";
    let r = run_cli(
        Some(gpu),
        [
            "analyze",
            "--model",
            run.to_str().unwrap(),
            "--text",
            text,
            "--json",
            json.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert_success("analyze", &r);
    assert!(plot.metadata().unwrap().len() > 1000);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let layers = report["texts"][0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        report["texts"][0]["tokens"].as_array().unwrap().len(),
        text.chars().count()
    );

    // The library's own metrics of the same forward.
    let model = Gpt::load(gpu, &run).unwrap();
    let vocab =
        saobp::data::Vocab::from_json(&std::fs::read_to_string(run.join("vocab.json")).unwrap())
            .unwrap();
    let ids = vocab.encode(text).unwrap();
    let ws = model.workspace(gpu, 1, ids.len()).unwrap();
    let x = TokenIds::new(gpu, &ids, 1, ids.len(), vocab.len()).unwrap();
    model.forward_blocking(gpu, &ws, &x, None).unwrap();
    let metrics = model.attention_metrics_blocking(gpu, &ws).unwrap();
    for (l, m) in metrics.iter().enumerate() {
        let heads = layers[l]["heads"].as_array().unwrap();
        assert_eq!(heads.len(), 2);
        for (h, head) in heads.iter().enumerate() {
            let a = m.attention.head(0, h).unwrap();
            let r = m.refined.as_ref().unwrap().head(0, h).unwrap();
            // Equal values; JSON's decimal form may move the last bit.
            let same =
                |got: &Value, want: f64| (got.as_f64().unwrap() - want).abs() <= 1e-15 * want.abs();
            assert!(
                same(&head["attn"]["normalized_entropy"], a.normalized_entropy),
                "{head}"
            );
            assert!(same(&head["refined"]["gtd"], r.gtd), "{head}");
            // λ = 0.4 refines: R's GTD is λm/(1 + λm), below A's at λ = 1.
            assert!(
                r.gtd > 0.0 && r.gtd < a.gtd,
                "layer {l} head {h}: {} vs {}",
                r.gtd,
                a.gtd
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let tmp = TempDir::new("ctrl-c");
    let data = write_text(&tmp);
    let run = tmp.join("run");
    let mut args = vec!["train", "--data", &data, "--out", run.to_str().unwrap()];
    args.extend(SIZES);
    args.extend([
        "--steps",
        "1000000",
        "--eval-every",
        "1000000",
        "--eval-windows",
        "4",
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_saobp"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line comes once Ctrl-C is handled.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("training 1000000 steps from step 0"),
        "{line}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("interrupted at step"), "{rest}");
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train.json")).unwrap()).unwrap();
    let step = settings["step"].as_u64().unwrap();
    assert!(
        rest.contains(&format!("interrupted at step {step} ")),
        "{rest}"
    );
    // The checkpoint is whole: it loads and resumes.
    let gpu = &common::gpus()[0];
    Gpt::load(gpu, &run).unwrap();
    assert!(run.join("optimizer.safetensors").exists());
}
