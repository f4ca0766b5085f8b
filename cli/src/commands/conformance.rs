//! `saobp conformance`: every kernel at a fixed matrix of sizes on every
//! adapter (or the chosen ones), against the float64 reference. Prints one
//! table, optionally writes it as JSON with each adapter's limits and
//! features, and exits non-zero if any row fails. The matrix itself is
//! [`saobp::conformance`].

use std::path::PathBuf;

use saobp::conformance::{self, AdapterReport, Counts, Fault, Options, Row, Status, Subject};
use saobp::{BackendChoice, Gpu, GpuOptions};
use serde_json::{json, Value};

use super::{adapter_json, write_all_or_nothing, CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Also write the report as JSON: every row, plus each adapter's limits and features.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only these kernels: matmul, matmul_buffer, matmul_tiled, matmul_texture,
    /// matmul_epilogue, softmax, attention, flash, messages, refine, fused_output, streaming, materialized_output,
    /// metrics, softmax_backward, matmul_backward, attention_backward,
    /// saobp_output_backward, layer_norm, layer_norm_backward, bias_gelu,
    /// bias_gelu_backward, embed, embed_backward, cross_entropy, adamw. Repeat or
    /// comma-separate. Default: all.
    #[arg(long, value_delimiter = ',')]
    kernel: Vec<String>,
    /// Run a deliberately wrong variant of a kernel (`matmul`) to see the report fail.
    #[arg(long, hide = true)]
    inject_fault: Option<String>,
    // Here `--backend` names the backends to cover (auto: every adapter), and
    // `--adapter` keeps the adapters whose name contains it.
    #[command(flatten)]
    gpu: GpuArgs,
}

/// The backends to open, without overlaps: `auto` covers the others.
fn backends(names: &[String], env: BackendChoice) -> CliResult<Vec<BackendChoice>> {
    let mut out: Vec<BackendChoice> = Vec::new();
    for name in names.iter().filter(|n| !n.trim().is_empty()) {
        let b: BackendChoice = name.parse().map_err(|e: saobp::Error| e.to_string())?;
        if !out.contains(&b) {
            out.push(b);
        }
    }
    if out.is_empty() {
        out.push(env);
    }
    if out.contains(&BackendChoice::Auto) {
        out = vec![BackendChoice::Auto];
    }
    Ok(out)
}

/// `Vulkan`, `Gl`, ... as wgpu names them.
fn backend_name(b: wgpu::Backend) -> String {
    format!("{b:?}")
}

fn driver(a: &saobp::AdapterSummary) -> String {
    format!("{} {}", a.driver, a.driver_info).trim().to_string()
}

fn sci(x: f64) -> String {
    format!("{x:.1e}")
}

fn ratio(x: f64) -> String {
    if !x.is_finite() {
        "inf".to_string()
    } else if x >= 1000.0 {
        format!("{x:.1e}")
    } else {
        format!("{x:.2}")
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The width of the kernel column: the longest kernel name.
fn kernel_width() -> usize {
    Subject::ALL
        .iter()
        .map(|k| k.name().chars().count())
        .max()
        .unwrap_or(6)
}

/// `s` padded with spaces to `width` characters.
fn pad(s: &str, width: usize) -> String {
    let len = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(len)))
}

/// The columns of the row table.
struct Table {
    size_width: usize,
}

impl Table {
    fn header(&self) -> String {
        format!(
            "{:<7}  {}  {}  {:>8}  {:>8}  {:>7}  {:<6}  {:>9}  note",
            "adapter",
            pad("kernel", kernel_width()),
            pad("size", self.size_width),
            "max abs",
            "max rel",
            "err/tol",
            "result",
            "time (ms)",
        )
    }

    fn line(&self, id: usize, row: &Row) -> String {
        let (abs, rel, worst) = if row.checks.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (sci(row.max_abs()), sci(row.max_rel()), ratio(row.worst()))
        };
        let result = match row.status {
            Status::Pass => "pass",
            Status::Fail(_) => "FAIL",
            Status::Skip(_) => "skip",
        };
        let time = if matches!(row.status, Status::Skip(_)) {
            "-".to_string()
        } else {
            format!("{:.1}", ms(row.time))
        };
        let note = row
            .status
            .reason()
            .map(str::to_string)
            .or_else(|| row.note.clone())
            .unwrap_or_default();
        format!(
            "{:<7}  {}  {}  {abs:>8}  {rel:>8}  {worst:>7}  {result:<6}  {time:>9}  {note}",
            format!("#{id}"),
            pad(row.subject.name(), kernel_width()),
            pad(&row.size, self.size_width),
        )
        .trim_end()
        .to_string()
    }
}

fn counts_json(c: &Counts) -> Value {
    json!({ "pass": c.pass, "fail": c.fail, "skip": c.skip })
}

fn row_json(row: &Row) -> Value {
    let checks: Vec<Value> = row
        .checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "shape": c.shape,
                "tolerance": { "abs": c.tolerance.abs, "rel": c.tolerance.rel },
                "values": c.comparison.len,
                "max_abs": c.comparison.max_abs,
                "max_rel": c.comparison.max_rel,
                "err_over_tol": c.comparison.worst,
                "failures": c.comparison.failures,
                "non_finite": c.comparison.non_finite,
                "worst_miss": c.worst_miss.as_ref().map(|(index, got, want)| json!({
                    "index": index, "gpu": got, "reference": want,
                })),
            })
        })
        .collect();
    let measured = !row.checks.is_empty();
    json!({
        "kernel": row.subject.name(),
        "size": row.size,
        "note": row.note,
        "shaders": row.shaders,
        "status": row.status.label(),
        "reason": row.status.reason(),
        "max_abs": measured.then(|| row.max_abs()),
        "max_rel": measured.then(|| row.max_rel()),
        "err_over_tol": measured.then(|| row.worst()),
        "time_ms": ms(row.time),
        "reference_ms": ms(row.reference_time),
        "checks": checks,
    })
}

fn adapter_report_json(r: &AdapterReport) -> Value {
    let limits: serde_json::Map<String, Value> = conformance::relevant_limits(&r.limits)
        .into_iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    json!({
        "adapter": adapter_json(&r.adapter),
        "limits": limits,
        "features": conformance::feature_names(r.features),
        "downlevel": {
            "flags": conformance::downlevel_names(r.downlevel.flags),
            "shader_model": format!("{:?}", r.downlevel.shader_model),
        },
        "passed": r.passed(),
        "counts": counts_json(&r.counts()),
        "rows": r.rows.iter().map(row_json).collect::<Vec<_>>(),
    })
}

/// Every adapter of the chosen backends and name, opened; the errors of
/// those that would not open.
fn open_adapters(
    args: &ConformanceArgs,
    env: &GpuOptions,
    choices: &[BackendChoice],
) -> CliResult<(Vec<Gpu>, Vec<String>)> {
    let name = args.gpu.adapter.clone().or_else(|| env.adapter.clone());
    let mut gpus = Vec::new();
    let mut open_errors = Vec::new();
    for backend in choices {
        let gpu_opts = GpuOptions {
            backend: *backend,
            adapter: name.clone(),
            ..env.clone()
        };
        let found = Gpu::all_blocking(&gpu_opts);
        // A backend asked for by name that has no adapter is not silently left out.
        if found.is_empty() && *backend != BackendChoice::Auto && !args.gpu.backend.is_empty() {
            return Err(format!(
                "--backend {}: no such adapter{}; `saobp info` lists them",
                format!("{backend:?}").to_lowercase(),
                name.as_ref()
                    .map_or(String::new(), |a| format!(" named like `{a}`")),
            ));
        }
        for g in found {
            match g {
                Ok(g) => gpus.push(g),
                Err(err) => open_errors.push(err.to_string()),
            }
        }
    }
    if gpus.is_empty() && open_errors.is_empty() {
        let any = saobp::list_adapters_blocking(BackendChoice::Auto);
        if any.is_empty() {
            return Err(saobp::gpu::NO_ADAPTER_HINT.to_string());
        }
        let names: Vec<String> = any
            .iter()
            .map(|a| format!("{} ({:?})", a.name, a.backend))
            .collect();
        let backends: Vec<String> = choices
            .iter()
            .map(|b| format!("{b:?}").to_lowercase())
            .collect();
        return Err(format!(
            "no adapter matches backend {}{}; available: {}",
            backends.join(","),
            name.map_or(String::new(), |a| format!(" and name `{a}`")),
            names.join(", ")
        ));
    }
    Ok((gpus, open_errors))
}

/// The adapter list the table's `#i` refers to.
fn print_adapters(gpus: &[Gpu], open_errors: &[String]) {
    let name_width = gpus
        .iter()
        .map(|g| g.adapter().name.chars().count())
        .max()
        .unwrap_or(4);
    println!(
        "{:<7}  {:<7}  {:<13}  {}  driver",
        "adapter",
        "backend",
        "type",
        pad("name", name_width)
    );
    for (i, g) in gpus.iter().enumerate() {
        let a = g.adapter();
        println!(
            "{:<7}  {:<7}  {:<13}  {}  {}",
            format!("#{i}"),
            backend_name(a.backend),
            format!("{:?}", a.device_type),
            pad(&a.name, name_width),
            driver(a)
        );
    }
    for err in open_errors {
        println!("could not open an adapter: {err}");
    }
}

/// Each kernel's shader entry points on each adapter, over its rows: the
/// matmul variant the default choice picks depends on the adapter and size.
fn print_shaders(reports: &[AdapterReport], opts: &Options) {
    println!(
        "\n{:<7}  {}  shader entry points",
        "adapter",
        pad("kernel", kernel_width())
    );
    for (i, report) in reports.iter().enumerate() {
        for kernel in Subject::ALL.into_iter().filter(|k| opts.selects(*k)) {
            let mut shaders: Vec<&str> = Vec::new();
            for s in report
                .rows
                .iter()
                .filter(|r| r.subject == kernel)
                .flat_map(|r| &r.shaders)
            {
                if !shaders.contains(&s.as_str()) {
                    shaders.push(s);
                }
            }
            println!(
                "{:<7}  {}  {}",
                format!("#{i}"),
                pad(kernel.name(), kernel_width()),
                shaders.join(", ")
            );
        }
    }
}

pub fn run(args: &ConformanceArgs) -> CliResult {
    let e = |e: saobp::Error| e.to_string();
    // --backend replaces SAOBP_BACKEND, malformed or not.
    let flagged = args.gpu.backend.iter().any(|b| !b.trim().is_empty());
    let env =
        GpuOptions::from_env_with_backend(flagged.then_some(BackendChoice::Auto)).map_err(e)?;
    let choices = backends(&args.gpu.backend, env.backend)?;
    let kernels = args
        .kernel
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| k.parse::<Subject>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(e)?;
    let fault = args
        .inject_fault
        .as_deref()
        .map(str::parse::<Fault>)
        .transpose()
        .map_err(e)?;
    let opts = Options { kernels, fault };
    // Fail before the run, not after it, when the report cannot be written.
    if let Some(dir) = args.json.as_deref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(format!("--json: no directory {}", dir.display()));
        }
    }
    let (gpus, open_errors) = open_adapters(args, &env, &choices)?;

    if let Some(f) = fault {
        println!(
            "INJECTED FAULT: the {} cases run a deliberately wrong kernel; they must fail.\n",
            f.subject()
        );
    }
    println!(
        "saobp conformance: each kernel against the float64 reference on {} adapter(s)\n",
        gpus.len()
    );
    print_adapters(&gpus, &open_errors);
    let size_width = gpus
        .iter()
        .flat_map(|g| conformance::cases(g.limits()))
        .filter(|c| opts.selects(c.subject))
        .map(|c| c.size.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let table = Table { size_width };
    println!("\n{}", table.header());
    let reports: Vec<AdapterReport> = gpus
        .iter()
        .enumerate()
        .map(|(i, gpu)| {
            conformance::run_blocking(gpu, &opts, |row| println!("{}", table.line(i, row)))
        })
        .collect();

    print_shaders(&reports, &opts);
    let counts = Counts::of(reports.iter().flat_map(|r| &r.rows));
    let passed = counts.fail == 0 && open_errors.is_empty();
    println!(
        "\nconformance: {} pass, {} fail, {} skip on {} adapter(s)",
        counts.pass,
        counts.fail,
        counts.skip,
        gpus.len()
    );
    if let Some(path) = &args.json {
        let mut adapters: Vec<Value> = reports.iter().map(adapter_report_json).collect();
        adapters.extend(
            open_errors
                .iter()
                .map(|err| json!({ "adapter": null, "error": err, "passed": false, "rows": [] })),
        );
        let report = json!({
            "saobp": env!("CARGO_PKG_VERSION"),
            "kernels": Subject::ALL
                .iter()
                .filter(|k| opts.selects(**k))
                .map(|k| k.name())
                .collect::<Vec<_>>(),
            "injected_fault": fault.map(|f| f.subject().name()),
            "passed": passed,
            "counts": counts_json(&counts),
            "adapters": adapters,
        });
        let text =
            serde_json::to_vec_pretty(&report).map_err(|e| format!("cannot encode JSON: {e}"))?;
        write_all_or_nothing(&[(path.as_path(), text)])?;
        eprintln!("wrote {}", path.display());
    }
    if passed {
        Ok(())
    } else if counts.fail > 0 {
        Err(format!(
            "{} of {} conformance rows failed (FAIL above)",
            counts.fail,
            counts.pass + counts.fail + counts.skip
        ))
    } else {
        Err(format!(
            "{} adapter(s) could not be opened",
            open_errors.len()
        ))
    }
}
