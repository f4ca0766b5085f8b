//! Subcommands of the `saobp` binary, one module each, and what they share.

pub mod analyze;
pub mod conformance;
pub mod demo;
pub mod info;
pub mod plot;
pub mod refine;

use std::path::Path;

use saobp::{AdapterSummary, HeadSummary};
use serde_json::{json, Value};

/// A command's error: one line, printed by `main`, which then exits non-zero.
pub type CliResult<T = ()> = Result<T, String>;

/// Writes `files` so that either all appear complete or none does: each goes
/// to a temporary file beside its target first, then all are renamed.
pub fn write_all_or_nothing(files: &[(&Path, Vec<u8>)]) -> CliResult {
    let mut written = Vec::new();
    for (path, bytes) in files {
        let tmp = path.with_file_name(format!(
            ".{}.partial",
            path.file_name()
                .map_or("out".into(), |n| n.to_string_lossy())
        ));
        if let Err(e) = std::fs::write(&tmp, bytes) {
            for (t, _) in &written {
                let _ = std::fs::remove_file(t);
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        written.push((tmp, *path));
    }
    for (i, (tmp, path)) in written.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            for (t, _) in &written[i..] {
                let _ = std::fs::remove_file(t);
            }
            return Err(format!("cannot write {}: {e}", path.display()));
        }
    }
    Ok(())
}

/// The adapter as JSON.
pub fn adapter_json(a: &AdapterSummary) -> Value {
    json!({
        "name": a.name,
        "backend": format!("{:?}", a.backend),
        "device_type": format!("{:?}", a.device_type),
        "driver": a.driver,
        "driver_info": a.driver_info,
    })
}

/// The spec's summary keys of one head (or mean).
pub fn summary_json(s: &HeadSummary) -> Value {
    json!({
        "entropy": s.entropy,
        "normalized_entropy": s.normalized_entropy,
        "sparsity": s.sparsity,
        "peak": s.peak,
        "distance": s.distance,
        "gtd": s.gtd,
        "multi_hop_mass": s.multi_hop_mass,
        "rows": s.rows,
    })
}
