//! `saobp demo`: the main job. Builds a workload whose heads range from
//! diffuse to collapsed, runs plain attention and SAOBP on the default
//! adapter, prints per-head metrics before and after, timings, and how each
//! result compares with the float64 reference under the spec's tolerance
//! (`saobp::reference::Tolerance::SPEC`, the rule every check uses).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use saobp::reference::{self, compare, RefOptions, Tolerance};
use saobp::workload::{median, synthetic, Pattern};
use saobp::{attention_blocking, AttentionOptions, HeadSummary, Lambda, Mode, Tensor};
use serde_json::{json, Value};

use super::progress::with_spinner;
use super::{adapter_json, write_all_or_nothing, CliResult, GpuArgs};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Tokens.
    #[arg(long, default_value_t = 256)]
    n: usize,
    /// Heads (patterns cycle: diffuse, local, sink, collapsed).
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Head width.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// SAOBP strength.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    lambda: f32,
    /// Causal masking.
    #[arg(long)]
    causal: bool,
    /// Timed repetitions per mode (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Skip the float64 reference check (it costs O(N³) per head on the CPU).
    #[arg(long)]
    no_check: bool,
    /// Also write the run as JSON: the workload, each head's summaries of A
    /// and R, the timings (ms) and the reference check (`null` with
    /// --no-check). Written also when the check fails, which it records.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// The median wall time of `repeat` runs of `f` (after one warm-up run that
/// also compiles the pipelines).
fn time<T>(repeat: usize, mut f: impl FnMut() -> CliResult<T>) -> CliResult<(T, Duration)> {
    let mut last = f()?;
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        last = f()?;
        times.push(start.elapsed());
    }
    Ok((last, median(&times).ok_or("no timed run")?))
}

fn print_row(head: &str, pattern: &str, a: &HeadSummary, r: &HeadSummary) {
    println!(
        "{head:>4}  {pattern:<9}  {:>7.4} → {:<7.4}  {:>7.4} → {:<7.4}  {:>7.4} → {:<7.4}  {:>7.4} → {:<7.4}",
        a.entropy, r.entropy, a.normalized_entropy, r.normalized_entropy, a.sparsity, r.sparsity, a.gtd, r.gtd
    );
}

pub fn run(args: &DemoArgs) -> CliResult {
    let e = |e: saobp::Error| e.to_string();
    if args.n == 0 || args.heads == 0 || args.d == 0 {
        return Err("--n, --heads and --d must be positive".into());
    }
    let gpu = args.gpu.open()?;
    println!("adapter: {}", gpu.adapter());
    let shape = [1, args.heads, args.n, args.d];
    let patterns = [
        Pattern::Diffuse,
        Pattern::Local,
        Pattern::Sink,
        Pattern::Collapsed,
    ];
    let w = synthetic(shape, &patterns, 1.0, 7);
    println!(
        "workload: B=1 H={} N={} D={} causal={} λ={}\n",
        args.heads, args.n, args.d, args.causal, args.lambda
    );
    let q = Tensor::from_slice(&gpu, &shape, &w.q).map_err(e)?;
    let k = Tensor::from_slice(&gpu, &shape, &w.k).map_err(e)?;
    let v = Tensor::from_slice(&gpu, &shape, &w.v).map_err(e)?;
    let base = AttentionOptions {
        causal: args.causal,
        lambda: Lambda::Scalar(args.lambda),
        ..Default::default()
    };
    let run_mode = |mode: Mode, metrics: bool, keep_maps: bool| {
        let opts = AttentionOptions {
            mode,
            metrics,
            return_attention: keep_maps,
            return_refined: keep_maps && mode != Mode::Plain,
            ..base.clone()
        };
        let out = attention_blocking(&gpu, &q, &k, &v, &opts).map_err(e)?;
        let o = out.output.to_vec_blocking(&gpu).map_err(e)?;
        Ok((out, o))
    };

    let ((plain, o_plain), t_plain) = time(args.repeat, || run_mode(Mode::Plain, false, false))?;
    // The streaming modes hold D-wide rows in registers; wider heads skip them.
    let streams = args.d <= saobp::kernels::flash::MAX_HEAD_DIM;
    let streamed = |mode: Mode| -> CliResult<Option<(Vec<f32>, Duration)>> {
        if !streams {
            return Ok(None);
        }
        let ((_, o), t) = time(args.repeat, || run_mode(mode, false, false))?;
        Ok(Some((o, t)))
    };
    let flash = streamed(Mode::Flash)?;
    let ((_, o_fused), t_fused) = time(args.repeat, || run_mode(Mode::Fused, false, false))?;
    let streaming = streamed(Mode::Streaming)?;
    let ((_, o_mat), t_mat) = time(args.repeat, || run_mode(Mode::Materialized, false, false))?;
    drop(plain);
    // One more run with everything kept, for the table and the check.
    let (full, _) = run_mode(Mode::Materialized, true, true)?;
    let metrics = full.metrics.as_ref().ok_or("no metrics")?;
    let refined = metrics.refined.as_ref().ok_or("no refined metrics")?;

    println!(
        "{:>4}  {:<9}  {:>17}  {:>17}  {:>17}  {:>17}",
        "head", "pattern", "entropy (nats)", "norm. entropy", "sparsity", "GTD"
    );
    println!(
        "{:>4}  {:<9}  {:>17}  {:>17}  {:>17}  {:>17}",
        "", "", "A → R", "A → R", "A → R", "A(λ=1) → R(λ)"
    );
    let mut heads_json = Vec::new();
    for h in 0..args.heads {
        let (a, r) = match (metrics.attention.head(0, h), refined.head(0, h)) {
            (Some(a), Some(r)) => (a, r),
            _ => return Err(format!("no summary for head {h}")),
        };
        print_row(&h.to_string(), w.patterns[h].name(), a, r);
        heads_json.push(json!({
            "head": h,
            "pattern": w.patterns[h].name(),
            "attn": a,
            "refined": r,
        }));
    }
    print_row(
        "all",
        "mean",
        &metrics.attention.overall(),
        &refined.overall(),
    );
    println!();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "time (median of {}, including the readback of O):",
        args.repeat.max(1)
    );
    println!("  plain attention      {:>9.2} ms", ms(t_plain));
    if let Some((_, t)) = &flash {
        println!(
            "  flash attention      {:>9.2} ms  ({:.2}× plain, nothing N×N stored)",
            ms(*t),
            ms(*t) / ms(t_plain)
        );
    }
    println!(
        "  SAOBP fused O(N²D)   {:>9.2} ms  ({:.2}× plain)",
        ms(t_fused),
        ms(t_fused) / ms(t_plain)
    );
    if let (Some((_, t)), Some((_, t_flash))) = (&streaming, &flash) {
        println!(
            "  SAOBP streaming      {:>9.2} ms  ({:.2}× flash, nothing N×N stored)",
            ms(*t),
            ms(*t) / ms(*t_flash)
        );
    }
    if !streams {
        println!(
            "  (flash and streaming take D up to {}; skipped)",
            saobp::kernels::flash::MAX_HEAD_DIM
        );
    }
    println!(
        "  SAOBP materialized   {:>9.2} ms  ({:.2}× plain)",
        ms(t_mat),
        ms(t_mat) / ms(t_plain)
    );

    let mut report = json!({
        "adapter": adapter_json(gpu.adapter()),
        "workload": {
            "batch": 1, "heads": args.heads, "n": args.n, "d": args.d,
            "causal": args.causal, "lambda": args.lambda,
        },
        "heads": heads_json,
        "overall": { "attn": metrics.attention.overall(), "refined": refined.overall() },
        "time_ms": {
            "repeat": args.repeat.max(1),
            "plain": ms(t_plain),
            "flash": flash.as_ref().map(|(_, t)| ms(*t)),
            "fused": ms(t_fused),
            "streaming": streaming.as_ref().map(|(_, t)| ms(*t)),
            "materialized": ms(t_mat),
        },
        "check": Value::Null,
    });
    let write_report = |report: &Value| -> CliResult {
        let Some(path) = &args.json else {
            return Ok(());
        };
        let text =
            serde_json::to_vec_pretty(report).map_err(|e| format!("cannot encode JSON: {e}"))?;
        write_all_or_nothing(&[(path.as_path(), text)])
    };
    if args.no_check {
        return write_report(&report);
    }
    let want = with_spinner("float64 reference check", || {
        reference::saobp(
            &w.q,
            &w.k,
            &w.v,
            shape,
            args.d,
            &RefOptions {
                causal: args.causal,
                key_mask: None,
                scale: None,
            },
            &vec![f64::from(args.lambda); args.heads],
        )
    })
    .map_err(e)?;
    let get = |t: &Option<Tensor>| -> CliResult<Vec<f32>> {
        t.as_ref()
            .ok_or("missing map")?
            .to_vec_blocking(&gpu)
            .map_err(e)
    };
    let (a, r) = (get(&full.attention)?, get(&full.refined)?);
    let mut checks: Vec<(&str, &[f32], &[f64])> = vec![
        ("A", &a[..], &want.attention[..]),
        ("R", &r, &want.refined),
        ("O plain", &o_plain, &want.plain_output),
        ("O fused", &o_fused, &want.output),
        ("O materialized", &o_mat, &want.output),
    ];
    if let (Some((o_flash, _)), Some((o_stream, _))) = (&flash, &streaming) {
        checks.push(("O flash", o_flash, &want.plain_output));
        checks.push(("O streaming", o_stream, &want.output));
    }
    let tol = Tolerance::SPEC;
    println!(
        "\nagainst the float64 reference (pass: |GPU − ref| ≤ {:e} + {:e}·|ref| for every value):",
        tol.abs, tol.rel
    );
    println!(
        "  {:<15} {:>9}  {:>9}  {:>13}",
        "", "max abs", "max rel", "worst / bound"
    );
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for (name, got, want) in checks {
        let c = compare(got, want, tol).map_err(e)?;
        results.push(json!({
            "name": name,
            "max_abs": c.max_abs,
            "max_rel": c.max_rel,
            "worst": c.worst,
            "failures": c.failures,
            "values": c.len,
            "passed": c.passed(),
        }));
        let verdict = if c.passed() {
            "ok".to_string()
        } else {
            failed.push(name);
            format!("FAIL ({} of {} values)", c.failures, c.len)
        };
        println!(
            "  {name:<15} {:>9.2e}  {:>9.2e}  {:>13.3}  {verdict}",
            c.max_abs, c.max_rel, c.worst
        );
    }
    report["check"] = json!({
        "tolerance": { "abs": tol.abs, "rel": tol.rel },
        "results": results,
        "passed": failed.is_empty(),
    });
    write_report(&report)?;
    if !failed.is_empty() {
        return Err(format!(
            "{} differ from the float64 reference by more than the spec's tolerance",
            failed.join(", ")
        ));
    }
    Ok(())
}
