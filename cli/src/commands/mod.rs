//! Subcommands of the `saobp` binary, one module each, and what they share.

pub mod analyze;
pub mod conformance;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod info;
pub mod layers;
pub mod maps;
pub mod plot;
pub mod progress;
pub mod refine;
pub mod run_dir;
pub mod train;
pub mod train_plot;

use std::io::Write;
use std::path::Path;

use saobp::{AdapterSummary, BackendChoice, Gpu, GpuOptions, HeadSummary, Metrics};
use serde::Serialize;
use serde_json::{json, Value};

/// A command's error: one line, printed by `main`, which then exits non-zero.
pub type CliResult<T = ()> = Result<T, String>;

/// The adapter choice every subcommand takes. Each flag, when given, wins
/// over its environment variable (`SAOBP_BACKEND`, `SAOBP_ADAPTER`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GpuArgs {
    /// Backend: auto, vulkan, metal, dx12 or gl (`conformance` takes several,
    /// comma-separated). Default: SAOBP_BACKEND, else auto.
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<String>,
    /// Only an adapter whose name contains this (case-insensitive). Default:
    /// SAOBP_ADAPTER.
    #[arg(long)]
    pub adapter: Option<String>,
}

impl GpuArgs {
    /// The backends named by `--backend`, parsed (empty when not given).
    pub fn backends(&self) -> CliResult<Vec<BackendChoice>> {
        self.backend
            .iter()
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                b.parse()
                    .map_err(|e: saobp::Error| format!("--backend: {e}"))
            })
            .collect()
    }

    /// The environment's options with the flags applied, for a command that
    /// runs on one adapter.
    pub fn options(&self) -> CliResult<GpuOptions> {
        let backend = match self.backends()?[..] {
            [] => None,
            [one] => Some(one),
            _ => {
                return Err(
                    "--backend takes one backend here (only `conformance` takes several)".into(),
                )
            }
        };
        // --backend replaces SAOBP_BACKEND, malformed or not.
        let mut opts = GpuOptions::from_env_with_backend(backend).map_err(|e| e.to_string())?;
        if let Some(name) = self.adapter.as_ref().filter(|a| !a.trim().is_empty()) {
            opts.adapter = Some(name.clone());
        }
        Ok(opts)
    }

    /// Opens the adapter the flags and the environment choose.
    pub fn open(&self) -> CliResult<Gpu> {
        Gpu::new_blocking(&self.options()?).map_err(|e| e.to_string())
    }
}

/// Writes `files` so that either all appear complete or none does: each goes
/// to a temporary file beside its target first (removed again if anything
/// fails), then all are renamed onto their targets.
pub fn write_all_or_nothing(files: &[(&Path, Vec<u8>)]) -> CliResult {
    let cannot =
        |path: &Path, e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    // Found now, a directory in the way would otherwise fail a rename after
    // earlier files were already in place.
    if let Some((path, _)) = files.iter().find(|(path, _)| path.is_dir()) {
        return Err(cannot(path, &"it is a directory"));
    }
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut builder = tempfile::Builder::new();
        builder.prefix(".saobp-").suffix(".partial");
        // What a plain create gives (less the umask), not the private 0600
        // of temporary files: the renamed file is the user's output.
        #[cfg(unix)]
        builder.permissions(
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
        );
        let mut tmp = builder.tempfile_in(dir).map_err(|e| cannot(path, &e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| cannot(path, &e))?;
        staged.push((tmp, *path));
    }
    for (tmp, path) in staged {
        tmp.persist(path).map_err(|e| cannot(path, &e.error))?;
    }
    Ok(())
}

/// An f32 tensor for a safetensors output file.
pub struct F32Tensor {
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl F32Tensor {
    pub fn new(shape: &[usize], values: &[f32]) -> F32Tensor {
        F32Tensor {
            shape: shape.to_vec(),
            data: bytemuck::cast_slice(values).to_vec(),
        }
    }
}

impl safetensors::View for &F32Tensor {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
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

/// One head's summaries in a JSON report: of `A` and, when computed, of `R`.
#[derive(Serialize)]
pub struct HeadReport {
    /// Head index within its layer or batch item.
    pub head: usize,
    /// Summary of the attention map `A`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn: Option<HeadSummary>,
    /// Summary of the refined map `R`, when its metrics were computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refined: Option<HeadSummary>,
}

impl HeadReport {
    /// Head `h` of batch item `b`.
    pub fn of(metrics: &Metrics, b: usize, h: usize) -> HeadReport {
        HeadReport {
            head: h,
            attn: metrics.attention.head(b, h).copied(),
            refined: metrics.refined.as_ref().and_then(|r| r.head(b, h)).copied(),
        }
    }
}
