//! The flags every subcommand shares: `--backend` and `--adapter` (which win
//! over `SAOBP_BACKEND` and `SAOBP_ADAPTER`), and the JSON of `info` and
//! `demo`, on every adapter.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};

use common::{assert_one_error_line, assert_success, TempDir};
use saobp::Gpu;
use serde_json::Value;

const SUBCOMMANDS: [&str; 9] = [
    "info",
    "demo",
    "refine",
    "maps",
    "analyze",
    "conformance",
    "train",
    "eval",
    "generate",
];

/// The binary with `args` and these environment variables.
fn saobp(args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = env!("CARGO_BIN_EXE_saobp");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("SAOBP_BACKEND")
        .env_remove("SAOBP_ADAPTER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `--backend` and `--adapter` naming `gpu`'s adapter.
fn flags(gpu: &Gpu) -> [String; 4] {
    let a = gpu.adapter();
    [
        "--backend".into(),
        format!("{:?}", a.backend).to_lowercase(),
        "--adapter".into(),
        a.name.clone(),
    ]
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn every_subcommand_takes_backend_and_adapter() {
    for sub in SUBCOMMANDS {
        let r = saobp(&[sub, "--help"], &[]);
        assert_success(sub, &r);
        let help = String::from_utf8_lossy(&r.stdout);
        for flag in ["--backend <BACKEND>", "--adapter <ADAPTER>"] {
            assert!(help.contains(flag), "`{sub} --help` lacks {flag}:\n{help}");
        }
    }
}

#[test]
fn info_json_marks_the_adapter_the_flags_select_over_the_environment() {
    let dir = TempDir::new("info-json");
    for gpu in common::gpus() {
        let json = dir.join("info.json");
        let f = flags(gpu);
        let mut args = vec!["info", "--json", json.to_str().unwrap()];
        args.extend(f.iter().map(String::as_str));
        // The environment names nothing that exists, and no backend at
        // all; the flags win, and the malformed variable is not read.
        let r = saobp(
            &args,
            &[
                ("SAOBP_BACKEND", "no-such-backend"),
                ("SAOBP_ADAPTER", "no-such-adapter"),
            ],
        );
        assert_success("info --json", &r);
        let report = read_json(&json);
        let adapters = report["adapters"].as_array().unwrap();
        assert!(adapters.len() >= common::gpus().len());
        let selected: Vec<&Value> = adapters.iter().filter(|a| a["selected"] == true).collect();
        assert_eq!(selected.len(), 1, "{report}");
        assert_eq!(selected[0]["name"], gpu.adapter().name.as_str());
        assert_eq!(report["selected"], selected[0]["index"]);
        assert_eq!(
            adapters.iter().filter(|a| a["auto"] == true).count(),
            1,
            "exactly one adapter is auto's choice"
        );
        for (i, a) in adapters.iter().enumerate() {
            assert_eq!(a["index"], i);
        }
    }
}

#[test]
fn bad_adapter_choices_are_one_error_line() {
    let r = saobp(&["info", "--backend", "nonsense"], &[]);
    assert_one_error_line("unknown backend", &r, "unknown backend `nonsense`");
    let r = saobp(&["demo", "--backend", "vulkan,gl", "--n", "4"], &[]);
    assert_one_error_line("two backends", &r, "takes one backend");
    let r = saobp(&["demo", "--adapter", "no-such-adapter", "--n", "4"], &[]);
    assert_one_error_line("no such adapter", &r, "no adapter matches");
    // The flag wins over an environment that names a real adapter.
    let name = &common::gpus()[0].adapter().name;
    let r = saobp(
        &["demo", "--adapter", "no-such-adapter", "--n", "4"],
        &[("SAOBP_ADAPTER", name)],
    );
    assert_one_error_line("flag over environment", &r, "no adapter matches");
}

#[test]
fn demo_json_holds_the_table_timings_and_check_on_every_adapter() {
    let dir = TempDir::new("demo-json");
    for gpu in common::gpus() {
        let json = dir.join("demo.json");
        let f = flags(gpu);
        let mut args = vec![
            "demo", "--n", "24", "--heads", "4", "--d", "8", "--repeat", "1", "--json",
        ];
        args.push(json.to_str().unwrap());
        args.extend(f.iter().map(String::as_str));
        let r = saobp(&args, &[]);
        assert_success("demo --json", &r);
        let report = read_json(&json);
        assert_eq!(report["adapter"]["name"], gpu.adapter().name.as_str());
        assert_eq!(report["workload"]["n"], 24);
        let heads = report["heads"].as_array().unwrap();
        assert_eq!(heads.len(), 4);
        for (h, head) in heads.iter().enumerate() {
            assert_eq!(head["head"], h);
            let (a, r) = (&head["attn"], &head["refined"]);
            assert_eq!(a["rows"], 24);
            let ne = a["normalized_entropy"].as_f64().unwrap();
            assert!(ne > 0.0 && ne <= 1.0, "head {h}: {ne}");
            // At λ = 1 (the default), R's GTD λm/(1 + λm) is A's at λ = 1.
            let (ga, gr) = (a["gtd"].as_f64().unwrap(), r["gtd"].as_f64().unwrap());
            assert!(
                ga > 0.0 && (ga - gr).abs() <= 1e-6,
                "head {h}: {ga} vs {gr}"
            );
        }
        for mode in ["plain", "fused", "materialized"] {
            let t = report["time_ms"][mode].as_f64().unwrap();
            assert!(t > 0.0, "{mode}: {t} ms");
        }
        let check = &report["check"];
        assert_eq!(check["passed"], true);
        assert_eq!(check["tolerance"]["abs"], 1e-5);
        let results = check["results"].as_array().unwrap();
        assert!(results.len() >= 5);
        for c in results {
            assert_eq!(c["failures"], 0, "{c}");
            assert!(c["values"].as_u64().unwrap() > 0);
            let worst = c["worst"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&worst), "{c}");
        }
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(stdout.contains("against the float64 reference"), "{stdout}");
    }
}
