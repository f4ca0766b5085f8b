//! Benchmark: attention (plain and flash), SAOBP (fused, streaming and
//! materialized), matmul and a GPT training step on the default adapter,
//! beside a CPU sgemm on the same machine.
//!
//! `cargo run --release --example bench -- [--sizes 128,512,1024] [--matmul-sizes 512,1024,2048]
//! [--only attention|matmul|training] [--all-variants] [--no-tune] [--repeat N]
//! [--head-dim D] [--max-materialized N] [--long N] [--small-batch B] [--small-micro-batch M]
//! [--memory B] [--json FILE] [--markdown FILE]`
//!
//! `--max-materialized` (default 4096) is the largest N for the N³
//! materialized mode; `--long` (default 16384, 0 skips) runs streaming SAOBP
//! on one head of that length and reports the GPU memory it took.
//!
//! The matmul section times every matmul variant the adapter offers (see
//! `saobp::MatmulVariant`; `--all-variants` adds the texture layouts that
//! autotuning skips), then the default choice before and after
//! `tune_matmul`.
//!
//! The training section ([`train`]) times the forward, backward and AdamW
//! of a step at the `tiny` and `small` presets, with and without λ;
//! `--memory B` first reports the GPU memory each preset's run holds after
//! one step with the `small` preset at batch B (64 is its own).
//!
//! Every figure is the median of several runs inside this one process, so the
//! ratios compare like with like on a shared, noisy machine. Each timed run
//! includes the readback of `O` (a few floats' worth of latency beside the work).

mod train;

use std::time::{Duration, Instant};

use clap::Parser;
use saobp::workload::{self, synthetic, Pattern};
use saobp::{
    attention_blocking, matmul_choice, matmul_variant_blocking, AttentionOptions, Error, Gpu,
    Lambda, MatmulOptions, MatmulVariant, Mode, Tensor,
};

const HEADS: usize = 12;

/// Benchmark attention, SAOBP and matmul on the default adapter.
#[derive(clap::Parser)]
struct Args {
    /// Sequence lengths N of the attention table (0 is dropped).
    #[arg(long, value_delimiter = ',', default_value = "128,512,1024,2048,4096")]
    sizes: Vec<usize>,
    /// Square matmul sizes (0 is dropped).
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    matmul_sizes: Vec<usize>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Write the results as a Markdown table to this file.
    #[arg(long, value_name = "FILE")]
    markdown: Option<String>,
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Run only one section.
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// Add the texture layouts that autotuning skips.
    #[arg(long)]
    all_variants: bool,
    /// Skip `Gpu::tune_matmul`.
    #[arg(long)]
    no_tune: bool,
    /// Head width D of the attention section (the streaming modes take up
    /// to 128).
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Largest N for the N³ materialized mode.
    #[arg(long, default_value_t = 4096)]
    max_materialized: usize,
    /// N of the one-head streaming run (0 skips it).
    #[arg(long = "long", default_value_t = 16384)]
    long_n: usize,
    /// Batch of the `small` training preset (its own is 64; 0 skips it).
    #[arg(long, default_value_t = 64)]
    small_batch: usize,
    /// The `small` preset's windows per pass in `Trainer::train_step`: the
    /// largest divisor of its batch up to this (8, as `saobp train`).
    #[arg(long, default_value_t = 8)]
    small_micro_batch: usize,
    /// Also measure the GPU memory a training run of each preset holds at
    /// this batch (the `small` preset's own is 64), after one step.
    #[arg(long, value_name = "SMALL_BATCH")]
    memory: Option<usize>,
    /// Print where the time goes, kernel by kernel: each attention mode at
    /// the largest N, and each training step.
    #[arg(long)]
    profile: bool,
}

/// A section of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Attention,
    Matmul,
    Training,
}

impl Args {
    fn runs(&self, section: Section) -> bool {
        self.only.is_none_or(|s| s == section)
    }
    fn attention(&self) -> bool {
        self.runs(Section::Attention)
    }
    fn matmul(&self) -> bool {
        self.runs(Section::Matmul)
    }
    fn tune(&self) -> bool {
        !self.no_tune
    }
}

/// Median of `repeat` timed runs after one warm-up (which also builds pipelines).
fn median(repeat: usize, f: impl FnMut() -> Result<(), Error>) -> Result<Duration, Error> {
    median_of(repeat, true, f)
}

/// Median of `repeat` timed runs, after one untimed warm-up if `warm_up`.
fn median_of(
    repeat: usize,
    warm_up: bool,
    mut f: impl FnMut() -> Result<(), Error>,
) -> Result<Duration, Error> {
    if warm_up {
        f()?;
    }
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    // There is at least one run, so there is a median.
    Ok(workload::median(&times).unwrap_or_default())
}

/// A timing, or why there is none.
enum Cell {
    Time(Duration, f64),
    Skipped(String),
}

impl Cell {
    fn secs(&self) -> Option<f64> {
        match self {
            Cell::Time(d, _) => Some(d.as_secs_f64()),
            Cell::Skipped(_) => None,
        }
    }
    fn show(&self) -> String {
        match self {
            Cell::Time(d, gflops) => {
                format!("{:.2} ms ({gflops:.1} GFLOP/s)", d.as_secs_f64() * 1e3)
            }
            Cell::Skipped(why) => format!("— ({why})"),
        }
    }
    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Time(d, g) => serde_json::json!({ "ms": d.as_secs_f64() * 1e3, "gflops": g }),
            Cell::Skipped(why) => serde_json::json!({ "skipped": why }),
        }
    }
}

fn ratio(a: &Cell, b: &Cell) -> String {
    match (a.secs(), b.secs()) {
        (Some(x), Some(y)) => format!("{:.2}×", x / y),
        _ => "—".into(),
    }
}

/// Synthetic `[1, heads, n, d]` inputs with diffuse, local, sink and collapsed heads.
fn inputs(heads: usize, n: usize, d: usize) -> workload::Workload {
    synthetic(
        [1, heads, n, d],
        &[
            Pattern::Diffuse,
            Pattern::Local,
            Pattern::Sink,
            Pattern::Collapsed,
        ],
        1.0,
        3,
    )
}

/// One attention call of the table: `q`, `k`, `v` of H = 12 heads from
/// [`inputs`] on the GPU, in `mode` with λ = 1.
struct Call {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    opts: AttentionOptions<'static>,
}

impl Call {
    fn new(gpu: &Gpu, n: usize, d: usize, mode: Mode) -> Result<Call, Error> {
        let shape = [1, HEADS, n, d];
        let w = inputs(HEADS, n, d);
        Ok(Call {
            q: Tensor::from_slice(gpu, &shape, &w.q)?,
            k: Tensor::from_slice(gpu, &shape, &w.k)?,
            v: Tensor::from_slice(gpu, &shape, &w.v)?,
            opts: AttentionOptions {
                mode,
                lambda: Lambda::Scalar(1.0),
                ..Default::default()
            },
        })
    }

    /// Runs it and downloads O, which waits for the whole submission.
    fn run(&self, gpu: &Gpu) -> Result<(), Error> {
        let out = attention_blocking(gpu, &self.q, &self.k, &self.v, &self.opts)?;
        out.output.to_vec_blocking(gpu).map(|_| ())
    }
}

/// Times one attention mode; `repeat` runs, after a warm-up if `warm_up`.
#[allow(clippy::too_many_arguments)]
fn time_mode(
    gpu: &Gpu,
    n: usize,
    d: usize,
    mode: Mode,
    repeat: usize,
    warm_up: bool,
    flops: f64,
) -> Cell {
    let run = || -> Result<Cell, Error> {
        let call = Call::new(gpu, n, d, mode)?;
        let t = median_of(repeat, warm_up, || call.run(gpu))?;
        Ok(Cell::Time(t, flops / t.as_secs_f64() / 1e9))
    };
    match run() {
        Ok(c) => c,
        Err(Error::Limit { limit_name, .. }) => Cell::Skipped(format!("over {limit_name}")),
        Err(e) => Cell::Skipped(e.to_string()),
    }
}

/// One row of the attention table.
struct AttentionRow {
    n: usize,
    plain: Cell,
    flash: Cell,
    fused: Cell,
    streaming: Cell,
    materialized: Cell,
}

impl AttentionRow {
    /// Times every mode at `n`. Multiply-adds counted (×2 for FLOP): Q·Kᵀ and
    /// A·V for plain and flash; fused adds A·U'; streaming recomputes the
    /// scores and their mirror for A·U' (5 products); materialized adds
    /// M = A·A (N³) and R·V.
    fn measure(gpu: &Gpu, n: usize, d: usize, repeat: usize, max_materialized: usize) -> Self {
        let (nf, df, hf) = (n as f64, d as f64, HEADS as f64);
        let pair = hf * 2.0 * nf * nf * df;
        let materialized = if n <= max_materialized {
            // Pipelines are built by then; the longest runs are timed once.
            let (repeat, warm_up) = if n >= 2048 {
                (1, false)
            } else {
                (repeat.min(2), true)
            };
            let flops = 2.0 * pair + hf * 2.0 * nf * nf * nf;
            time_mode(gpu, n, d, Mode::Materialized, repeat, warm_up, flops)
        } else {
            Cell::Skipped(format!("N > {max_materialized}, see --max-materialized"))
        };
        let row = AttentionRow {
            n,
            plain: time_mode(gpu, n, d, Mode::Plain, repeat, true, 2.0 * pair),
            flash: time_mode(gpu, n, d, Mode::Flash, repeat, true, 2.0 * pair),
            fused: time_mode(gpu, n, d, Mode::Fused, repeat, true, 3.0 * pair),
            streaming: time_mode(gpu, n, d, Mode::Streaming, repeat, true, 5.0 * pair),
            materialized,
        };
        println!(
            "N={n:>5}  plain {}  flash {}  fused {}  streaming {}  materialized {}",
            row.plain.show(),
            row.flash.show(),
            row.fused.show(),
            row.streaming.show(),
            row.materialized.show()
        );
        row
    }

    fn markdown(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            self.n,
            self.plain.show(),
            self.flash.show(),
            self.fused.show(),
            self.streaming.show(),
            self.materialized.show(),
            ratio(&self.fused, &self.plain),
            ratio(&self.streaming, &self.flash),
            ratio(&self.streaming, &self.plain),
            ratio(&self.materialized, &self.fused),
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "plain": self.plain.json(),
            "flash": self.flash.json(),
            "fused": self.fused.json(),
            "streaming": self.streaming.json(),
            "materialized": self.materialized.json(),
        })
    }
}

/// Where one attention call's time goes: each kernel's wall time with every
/// dispatch submitted and waited for on its own ([`Gpu::set_profiling`]),
/// longest first.
fn profile_mode(
    gpu: &Gpu,
    n: usize,
    d: usize,
    mode: Mode,
) -> Result<Vec<(String, Duration)>, Error> {
    let call = Call::new(gpu, n, d, mode)?;
    // Pipelines are built outside the profile.
    call.run(gpu)?;
    let before = gpu.work();
    gpu.set_profiling(true);
    let run = call.run(gpu);
    gpu.set_profiling(false);
    run?;
    let mut times = gpu.work().since(&before).kernel_time;
    times.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(times)
}

/// Prints a profile's total and its thirty longest kernels.
fn print_profile(what: &str, times: &[(String, Duration)]) {
    let total: f64 = times.iter().map(|(_, t)| t.as_secs_f64()).sum();
    println!(
        "  profile ({what}, each dispatch alone): {:.1} ms",
        total * 1e3
    );
    for (name, t) in times.iter().take(30) {
        println!("  {:>8.1} ms  {name}", t.as_secs_f64() * 1e3);
    }
}

/// Streaming SAOBP on one long head: its time, and the GPU memory the call
/// took (where the backend reports allocations).
fn long_sequence(gpu: &Gpu, n: usize, d: usize) -> Result<(Duration, Option<u64>), Error> {
    let w = inputs(1, n, d);
    let shape = [1, 1, n, d];
    gpu.trim_pool();
    let before = gpu.allocated_bytes();
    let q = Tensor::from_slice(gpu, &shape, &w.q)?;
    let k = Tensor::from_slice(gpu, &shape, &w.k)?;
    let v = Tensor::from_slice(gpu, &shape, &w.v)?;
    let opts = AttentionOptions {
        mode: Mode::Streaming,
        lambda: Lambda::Scalar(1.0),
        ..Default::default()
    };
    let t = Instant::now();
    let out = attention_blocking(gpu, &q, &k, &v, &opts)?;
    out.output.to_vec_blocking(gpu)?;
    let elapsed = t.elapsed();
    let used = gpu
        .allocated_bytes()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    Ok((elapsed, used))
}

fn cpu_sgemm_gflops(n: usize, repeat: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; n * n];
    let t = median(repeat, || {
        // SAFETY: the pointers cover n×n row-major matrices with the strides given.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n as isize,
                1,
                a.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        Ok(())
    })
    .unwrap_or(Duration::MAX);
    2.0 * (n as f64).powi(3) / t.as_secs_f64() / 1e9
}

/// numpy's sgemm (OpenBLAS) if python3 with numpy is installed.
fn numpy_gflops(n: usize) -> Option<f64> {
    let script = format!(
        "import numpy as np, time\na=np.random.rand({n},{n}).astype(np.float32)\na@a\nts=[]\nfor _ in range(3):\n  t=time.perf_counter(); a@a; ts.append(time.perf_counter()-t)\nprint(2*{n}**3/sorted(ts)[1]/1e9)"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = Args::parse();
    args.sizes.retain(|&n| n > 0);
    args.matmul_sizes.retain(|&n| n > 0);
    let gpu = Gpu::from_env_blocking().map_err(|e| e.to_string())?;
    println!("adapter: {}", gpu.adapter());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cpus} CPU threads\n");

    let sizes = if args.attention() {
        &args.sizes[..]
    } else {
        &[]
    };
    let rows: Vec<AttentionRow> = sizes
        .iter()
        .map(|&n| AttentionRow::measure(&gpu, n, args.head_dim, args.repeat, args.max_materialized))
        .collect();
    if let (true, Some(&n)) = (args.profile, sizes.iter().max()) {
        for mode in [Mode::Plain, Mode::Flash, Mode::Fused, Mode::Streaming] {
            let times = profile_mode(&gpu, n, args.head_dim, mode).map_err(|e| e.to_string())?;
            print_profile(&format!("{mode} N={n}"), &times);
        }
    }
    let long = (args.attention() && args.long_n > 0).then(|| {
        let r = long_sequence(&gpu, args.long_n, args.head_dim);
        match &r {
            Ok((t, used)) => println!(
                "streaming SAOBP, N={}, H=1: {:.2} s, {}",
                args.long_n,
                t.as_secs_f64(),
                used.map_or("memory not reported by this backend".into(), |b| format!(
                    "{:.1} MiB allocated",
                    b as f64 / (1 << 20) as f64
                ))
            ),
            Err(e) => println!("streaming SAOBP, N={}: {e}", args.long_n),
        }
        r
    });
    let mm = if args.matmul() {
        matmul_section(&gpu, &args, cpus)?
    } else {
        MatmulSection::default()
    };
    let mut presets = train::presets(args.small_batch, args.small_micro_batch);
    presets.retain(|p| p.batch > 0 && args.runs(Section::Training));
    let mut training = Vec::new();
    if let Some(batch) = args.memory {
        for preset in train::presets(batch, args.small_micro_batch) {
            if !args.runs(Section::Training) {
                break;
            }
            let held = train::memory(&gpu, &preset, true).map_err(|e| e.to_string())?;
            println!(
                "training {} (T = {}, batch {} in passes of {}, λ > 0): GPU memory held after one step: {}",
                preset.name,
                preset.config.n_positions,
                preset.batch,
                preset.micro_batch,
                held.map_or("not reported by this backend".to_string(), |b| {
                    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
                })
            );
        }
    }
    for preset in &presets {
        for lambda in [false, true] {
            let row =
                train::measure(&gpu, preset, lambda, args.repeat).map_err(|e| e.to_string())?;
            println!(
                "training {} λ {}: step {:.1} ms ({} dispatches, {} submissions, host {:.1} ms); \
                 Trainer::train_step {:.1} ms ({} submission(s), host {:.1} ms)",
                preset.name,
                if lambda { "> 0" } else { "0" },
                row.step().as_secs_f64() * 1e3,
                row.dispatches,
                row.submissions,
                row.host.as_secs_f64() * 1e3,
                row.trainer.as_secs_f64() * 1e3,
                row.trainer_submissions,
                row.trainer_host.as_secs_f64() * 1e3
            );
            training.push(row);
            if args.profile {
                let times = train::profile(&gpu, preset, lambda).map_err(|e| e.to_string())?;
                print_profile("forward + backward", &times);
            }
        }
    }

    let mut md = format!("Adapter: {}\n", gpu.adapter());
    if !rows.is_empty() {
        md += &format!(
            "\nAttention, B=1, H={HEADS}, D={}, λ=1 (median of {} runs, download of O included):\n\n\
             | N | plain | flash | SAOBP fused (a) | SAOBP streaming (b) | SAOBP materialized | fused/plain | streaming/flash | streaming/plain | materialized/fused |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
            args.head_dim,
            args.repeat
        );
        for row in &rows {
            md += &row.markdown();
        }
    }
    if let Some(long) = &long {
        md += &match long {
            Ok((t, used)) => format!(
                "\nStreaming SAOBP (b) at N={}, H=1, D={}: {:.2} s; GPU memory allocated by the call: {}.\n",
                args.long_n,
                args.head_dim,
                t.as_secs_f64(),
                used.map_or("not reported by this backend".into(), |b| format!(
                    "{:.1} MiB",
                    b as f64 / (1 << 20) as f64
                ))
            ),
            Err(e) => format!("\nStreaming SAOBP (b) at N={}: {e}\n", args.long_n),
        };
    }
    if args.matmul() {
        md += &mm.markdown(cpus);
    }
    if !training.is_empty() {
        md += &train::markdown(&presets, &training, args.repeat);
    }
    println!("\n{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    if let Some(path) = &args.json {
        let attn: Vec<serde_json::Value> = rows.iter().map(AttentionRow::json).collect();
        let long = long.as_ref().map(|r| match r {
            Ok((t, used)) => serde_json::json!({ "n": args.long_n, "seconds": t.as_secs_f64(), "allocated_bytes": used }),
            Err(e) => serde_json::json!({ "n": args.long_n, "error": e.to_string() }),
        });
        let mms = mm.json();
        let report = serde_json::json!({
            "adapter": gpu.adapter().to_string(),
            "heads": HEADS,
            "d": args.head_dim,
            "attention": attn,
            "long_sequence": long,
            "matmul": mms,
            "training": train::json(&training),
        });
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(())
}

/// Matmul timings: per size, each variant's GFLOP/s, the CPU's, and the
/// default choice before and after tuning.
#[derive(Default)]
struct MatmulSection {
    variants: Vec<MatmulVariant>,
    /// (size, per-variant cells, CPU sgemm GFLOP/s, numpy GFLOP/s).
    rows: Vec<(usize, Vec<Cell>, f64, Option<f64>)>,
    /// (size, heuristic choice, tuned choice).
    choices: Vec<(usize, MatmulVariant, Option<MatmulVariant>)>,
}

/// A run predicted to take longer than this is skipped: the storage-buffer
/// families take minutes at 2048³ on software adapters.
const MATMUL_BUDGET_S: f64 = 20.0;

fn matmul_section(gpu: &Gpu, args: &Args, cpus: usize) -> Result<MatmulSection, String> {
    let variants: Vec<MatmulVariant> = MatmulVariant::available(gpu)
        .into_iter()
        .filter(|v| {
            args.all_variants
                || !matches!(
                    v,
                    MatmulVariant::Texture {
                        group_rows: 1 | 4,
                        ..
                    }
                )
        })
        .collect();
    let plain = MatmulOptions::default();
    let mut section = MatmulSection {
        variants: variants.clone(),
        ..Default::default()
    };
    // The last measured rate of each variant, to skip hopeless runs.
    let mut last: Vec<Option<f64>> = vec![None; variants.len()];
    for &n in &args.matmul_sizes {
        let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.05).collect();
        let t = Tensor::from_slice(gpu, &[n, n], &a).map_err(|e| e.to_string())?;
        let flops = 2.0 * (n as f64).powi(3);
        let mut cells = Vec::new();
        for (i, &v) in variants.iter().enumerate() {
            let predicted = last[i].map_or(0.0, |g| flops / (g * 1e9));
            let cell = if predicted > MATMUL_BUDGET_S {
                Cell::Skipped(format!("about {predicted:.0} s a run"))
            } else {
                match median(args.repeat.min(2), || {
                    matmul_variant_blocking(gpu, &t, &t, &plain, v)?
                        .to_vec_blocking(gpu)
                        .map(|_| ())
                }) {
                    Ok(d) => Cell::Time(d, flops / d.as_secs_f64() / 1e9),
                    Err(e) => Cell::Skipped(e.to_string()),
                }
            };
            if let Cell::Time(_, g) = cell {
                last[i] = Some(g);
            }
            println!("matmul {n}³ {v}: {}", cell.show());
            cells.push(cell);
        }
        let cpu = cpu_sgemm_gflops(n, 3);
        let np = numpy_gflops(n);
        println!(
            "matmul {n}³: CPU sgemm (matrixmultiply, {cpus} threads) {cpu:.1} GFLOP/s, numpy {}",
            np.map_or("not installed".into(), |x| format!("{x:.1} GFLOP/s"))
        );
        section.rows.push((n, cells, cpu, np));
    }
    let choice = |n: usize| matmul_choice(gpu, &[n, n], &[n, n], &plain).map_err(|e| e.to_string());
    let before: Vec<MatmulVariant> = args
        .matmul_sizes
        .iter()
        .map(|&n| choice(n))
        .collect::<Result<_, _>>()?;
    if args.tune() {
        let t = Instant::now();
        let tuning = saobp::tune_matmul_blocking(gpu).map_err(|e| e.to_string())?;
        println!("tune_matmul: {:.1} s", t.elapsed().as_secs_f64());
        for c in &tuning.classes {
            println!("  {}: {}", c.class, c.winner);
        }
    }
    for (&n, v) in args.matmul_sizes.iter().zip(before) {
        let after = if args.tune() { Some(choice(n)?) } else { None };
        section.choices.push((n, v, after));
    }
    Ok(section)
}

impl MatmulSection {
    fn markdown(&self, cpus: usize) -> String {
        let mut md = format!(
            "\nMatmul (square, f32; GFLOP/s, readback of C included) per kernel variant, beside CPU sgemm on the same machine ({cpus} threads):\n\n| variant |"
        );
        for (n, ..) in &self.rows {
            md += &format!(" {n}³ |");
        }
        md += "\n|---|";
        md += &"---|".repeat(self.rows.len());
        md += "\n";
        for (i, v) in self.variants.iter().enumerate() {
            md += &format!("| {v} |");
            for (_, cells, ..) in &self.rows {
                md += &match &cells[i] {
                    Cell::Time(_, g) => format!(" {g:.2} |"),
                    Cell::Skipped(why) => format!(" — ({why}) |"),
                };
            }
            md += "\n";
        }
        md += "| CPU `matrixmultiply` |";
        for (_, _, c, _) in &self.rows {
            md += &format!(" {c:.1} |");
        }
        md += "\n| numpy (OpenBLAS) |";
        for (.., np) in &self.rows {
            md += &np.map_or(" not installed |".into(), |x| format!(" {x:.1} |"));
        }
        md += "\n| best GPU / CPU |";
        for (_, cells, c, _) in &self.rows {
            let best = cells
                .iter()
                .filter_map(|x| match x {
                    Cell::Time(_, g) => Some(*g),
                    Cell::Skipped(_) => None,
                })
                .fold(0.0, f64::max);
            md += &format!(" {:.3}× |", best / c);
        }
        md += "\n\nDefault choice per size (heuristic; after `tune_matmul`):\n\n| size | heuristic | tuned |\n|---|---|---|\n";
        for (n, before, after) in &self.choices {
            md += &format!(
                "| {n}³ | {before} | {} |\n",
                after.map_or("not run".into(), |v| v.to_string())
            );
        }
        md
    }

    fn json(&self) -> Vec<serde_json::Value> {
        self.rows
            .iter()
            .map(|(n, cells, c, np)| {
                let variants: Vec<serde_json::Value> = self
                    .variants
                    .iter()
                    .zip(cells)
                    .map(|(v, cell)| serde_json::json!({ "variant": v.to_string(), "timing": cell.json() }))
                    .collect();
                let choice = self.choices.iter().find(|(m, ..)| m == n);
                serde_json::json!({
                    "n": n,
                    "variants": variants,
                    "cpu_gflops": c,
                    "numpy_gflops": np,
                    "heuristic": choice.map(|(_, v, _)| v.to_string()),
                    "tuned": choice.and_then(|(_, _, v)| v.map(|v| v.to_string())),
                })
            })
            .collect()
    }
}
