//! `saobp conformance`: its exit status, its table and its JSON report on
//! every adapter present, and its one-line errors. The matrix itself is
//! tested in the library's `tests/conformance.rs`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{gpus, TempDir};

fn conformance(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saobp"))
        .arg("conformance")
        .args(args)
        .output()
        .unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_command_passes_and_writes_its_json_report() {
    let dir = TempDir::new("conformance-pass");
    let json = dir.join("report.json");
    let out = conformance(&["--kernel", "attention", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = gpus().len();
    assert!(
        stdout.contains(" pass, 0 fail, 0 skip on ")
            && stdout.contains(&format!("on {n} adapter(s)")),
        "{stdout}"
    );
    for header in [
        "adapter",
        "kernel",
        "size",
        "max abs",
        "max rel",
        "result",
        "time (ms)",
    ] {
        assert!(stdout.contains(header), "no `{header}` column:\n{stdout}");
    }

    let report = read_json(&json);
    assert_eq!(report["passed"], true);
    assert_eq!(report["kernels"], serde_json::json!(["attention"]));
    assert!(report["injected_fault"].is_null());
    let adapters = report["adapters"].as_array().unwrap();
    assert_eq!(adapters.len(), n);
    for (entry, gpu) in adapters.iter().zip(gpus()) {
        let a = &entry["adapter"];
        assert_eq!(a["name"], gpu.adapter().name.as_str());
        assert_eq!(a["backend"], format!("{:?}", gpu.adapter().backend));
        for key in ["device_type", "driver", "driver_info"] {
            assert!(a[key].is_string(), "adapter.{key}");
        }
        let limits = &entry["limits"];
        assert_eq!(
            limits["max_storage_buffer_binding_size"],
            gpu.limits().max_storage_buffer_binding_size
        );
        assert_eq!(
            limits["max_compute_workgroups_per_dimension"],
            gpu.limits().max_compute_workgroups_per_dimension
        );
        assert!(entry["features"].is_array());
        assert!(entry["downlevel"]["flags"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("COMPUTE_SHADERS")));
        let rows = entry["rows"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            entry["counts"]["pass"].as_u64().unwrap() as usize
        );
        for row in rows {
            assert_eq!(row["status"], "pass", "{row}");
            assert!(row["reason"].is_null());
            for key in [
                "max_abs",
                "max_rel",
                "err_over_tol",
                "time_ms",
                "reference_ms",
            ] {
                assert!(row[key].is_number(), "{key} in {row}");
            }
            let checks = row["checks"].as_array().unwrap();
            assert!(!checks.is_empty());
            for c in checks {
                assert!(c["tolerance"]["abs"].is_number() && c["tolerance"]["rel"].is_number());
                assert_eq!(c["failures"], 0);
            }
        }
    }
    // Nothing but the report is left beside it.
    let files: Vec<_> = std::fs::read_dir(&*dir).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[test]
fn the_command_fails_when_a_kernel_is_broken() {
    let dir = TempDir::new("conformance-fault");
    let json = dir.join("report.json");
    let out = conformance(&[
        "--kernel",
        "matmul",
        "--inject-fault",
        "matmul",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("FAIL"), "{stdout}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("conformance rows failed"), "{stderr}");

    // The report is still written, and says what happened.
    let report = read_json(&json);
    assert_eq!(report["passed"], false);
    assert_eq!(report["injected_fault"], "matmul");
    for entry in report["adapters"].as_array().unwrap() {
        for row in entry["rows"].as_array().unwrap() {
            assert_eq!(row["status"], "fail", "{row}");
            assert!(row["reason"].as_str().unwrap().starts_with("C["));
        }
    }
}

#[test]
fn bad_arguments_are_one_error_line() {
    let dir = TempDir::new("conformance-bad");
    let json = dir.join("report.json");
    for (args, want) in [
        (vec!["--backend", "cuda"], "unknown backend `cuda`"),
        (
            vec!["--kernel", "convolution"],
            "unknown kernel `convolution`",
        ),
        (vec!["--inject-fault", "softmax"], "unknown fault `softmax`"),
        (
            vec!["--adapter", "no such adapter anywhere"],
            "no adapter matches",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--json", json.to_str().unwrap()]);
        let out = conformance(&all);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(want), "{args:?}: {stderr}");
        assert!(!json.exists(), "{args:?} wrote a report");
    }
    let nowhere = dir.join("no such directory").join("report.json");
    let out = conformance(&["--json", nowhere.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: --json: no directory "),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "ran before failing");
}
