//! `saobp info`: every adapter, and which one the current settings pick.

use saobp::{choose_adapter, list_adapters_blocking, BackendChoice, GpuOptions, Result};

pub fn run() -> Result<()> {
    let opts = GpuOptions::from_env()?;
    let all = list_adapters_blocking(BackendChoice::Auto);
    if all.is_empty() {
        return Err(saobp::Error::NoAdapter(
            saobp::gpu::NO_ADAPTER_HINT.to_string(),
        ));
    }
    let auto = choose_adapter(&all, &GpuOptions::default());
    let chosen = choose_adapter(&all, &opts);
    println!("{} adapter(s):", all.len());
    for (i, a) in all.iter().enumerate() {
        let mut marks = Vec::new();
        if Some(i) == auto {
            marks.push("auto");
        }
        if Some(i) == chosen && opts != GpuOptions::default() {
            marks.push("selected by SAOBP_BACKEND/SAOBP_ADAPTER");
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
    if chosen.is_none() {
        return Err(saobp::Error::NoAdapter(format!(
            "no adapter matches SAOBP_BACKEND={:?} SAOBP_ADAPTER={:?}",
            opts.backend,
            opts.adapter.as_deref().unwrap_or("")
        )));
    }
    Ok(())
}
