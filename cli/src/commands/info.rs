//! `saobp info`: every adapter, and which one the current settings pick.

use std::path::PathBuf;

use saobp::{choose_adapter, list_adapters_blocking, BackendChoice, GpuOptions};
use serde_json::json;

use super::{adapter_json, write_all_or_nothing, CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Also write the adapters as JSON to this file: each with its index,
    /// name, backend, type and driver, and whether `auto` and the current
    /// settings pick it.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn run(args: &InfoArgs) -> CliResult {
    let opts = args.gpu.options()?;
    let all = list_adapters_blocking(BackendChoice::Auto);
    if all.is_empty() {
        return Err(saobp::gpu::NO_ADAPTER_HINT.to_string());
    }
    let auto = choose_adapter(&all, &GpuOptions::default());
    let chosen = choose_adapter(&all, &opts);
    let narrowed = opts.backend != BackendChoice::Auto || opts.adapter.is_some();
    println!("{} adapter(s):", all.len());
    for (i, a) in all.iter().enumerate() {
        let mut marks = Vec::new();
        if Some(i) == auto {
            marks.push("auto");
        }
        if Some(i) == chosen && narrowed {
            marks.push("selected by --backend/--adapter or SAOBP_BACKEND/SAOBP_ADAPTER");
        }
        let mark = if marks.is_empty() {
            String::new()
        } else {
            format!("  <- {}", marks.join(", "))
        };
        println!(
            "  [{i}] {:<8} {:<14} {}{mark}\n      driver: {} {}",
            format!("{:?}", a.backend),
            format!("{:?}", a.device_type),
            a.name,
            a.driver,
            a.driver_info
        );
    }
    let Some(chosen) = chosen else {
        return Err(format!(
            "no adapter matches backend {:?} and name {:?}",
            opts.backend,
            opts.adapter.as_deref().unwrap_or("any")
        ));
    };
    if let Some(path) = &args.json {
        let adapters: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut entry = adapter_json(a);
                entry["index"] = json!(i);
                entry["auto"] = json!(Some(i) == auto);
                entry["selected"] = json!(i == chosen);
                entry
            })
            .collect();
        let report = json!({
            "adapters": adapters,
            "auto": auto,
            "selected": chosen,
            "backend": format!("{:?}", opts.backend).to_lowercase(),
            "adapter_filter": opts.adapter,
        });
        let text =
            serde_json::to_vec_pretty(&report).map_err(|e| format!("cannot encode JSON: {e}"))?;
        write_all_or_nothing(&[(path.as_path(), text)])?;
    }
    Ok(())
}
