//! Shared test harness: every GPU test runs on every adapter the machine
//! has, every check holds to the library's one tolerance rule, and the
//! pieces several test files need (key masks, attention cases and their
//! check against the reference, running the CLI) are written here once.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use saobp::reference::{self, compare, RefOptions, SaobpRef};
use saobp::{
    attention_blocking, AttentionOptions, AttentionOutput, Gpu, GpuOptions, Lambda, Mode, Tensor,
};

pub use saobp::reference::Tolerance;

/// All adapters, opened once per test binary. Fails loudly when there are
/// none, or when `SAOBP_REQUIRE_BACKENDS` (e.g. `vulkan,gl`, set by CI) names
/// a backend that is missing: a GPU test never passes by running nowhere.
pub fn gpus() -> &'static [Gpu] {
    static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();
    GPUS.get_or_init(|| {
        let opts = GpuOptions::from_env().expect("SAOBP_* environment variables");
        let gpus: Vec<Gpu> = Gpu::all_blocking(&opts)
            .into_iter()
            .map(|g| g.expect("an adapter was listed but could not be opened"))
            .collect();
        assert!(!gpus.is_empty(), "{}", saobp::gpu::NO_ADAPTER_HINT);
        if let Ok(required) = std::env::var("SAOBP_REQUIRE_BACKENDS") {
            for want in required.split(',').filter(|s| !s.trim().is_empty()) {
                let want: saobp::BackendChoice = want.parse().expect("SAOBP_REQUIRE_BACKENDS");
                assert!(
                    gpus.iter()
                        .any(|g| want.backends().contains(g.adapter().backend.into())),
                    "SAOBP_REQUIRE_BACKENDS asks for {want:?} but the adapters are {:?}",
                    gpus.iter()
                        .map(|g| g.adapter().to_string())
                        .collect::<Vec<_>>()
                );
            }
        }
        for g in &gpus {
            eprintln!("GPU tests run on: {}", g.adapter());
        }
        gpus
    })
}

/// Runs `f` on every adapter once per [`saobp::RowLayout`], each in a fresh
/// context (so no other test changes the layout meanwhile), and checks that
/// the row kernels `f` ran were that layout's: the `*_serial` entry points
/// for one invocation per row, the others for one workgroup.
pub fn on_every_row_layout(test: &str, mut f: impl FnMut(&Gpu)) {
    let opts = GpuOptions::from_env().expect("SAOBP_* environment variables");
    for gpu in Gpu::all_blocking(&opts) {
        let gpu = gpu.expect("an adapter was listed but could not be opened");
        let name = format!("{:?} {}", gpu.adapter().backend, gpu.adapter().name);
        for layout in saobp::RowLayout::ALL {
            saobp::set_row_layout(&gpu, Some(layout));
            let before = gpu.work();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&gpu)));
            if let Err(e) = r {
                eprintln!("{test} FAILED on {name}, rows by {layout}");
                std::panic::resume_unwind(e);
            }
            let work = gpu.work().since(&before);
            let serial = work.kernels.iter().filter(|(k, _)| k.ends_with("_serial"));
            match layout {
                saobp::RowLayout::Invocation => assert!(
                    serial.count() > 0,
                    "{test} on {name}: no per-invocation row kernel ran: {:?}",
                    work.kernels
                ),
                saobp::RowLayout::Workgroup => {
                    assert_eq!(serial.count(), 0, "{test} on {name}: {:?}", work.kernels)
                }
            }
            eprintln!("{test}: ok on {name}, rows by {layout}");
        }
    }
}

/// Runs `f` on every adapter, naming the adapter in any failure, and prints
/// where the test ran.
pub fn on_every_gpu(test: &str, mut f: impl FnMut(&Gpu)) {
    for gpu in gpus() {
        let name = format!("{:?} {}", gpu.adapter().backend, gpu.adapter().name);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(gpu)));
        if let Err(e) = r {
            eprintln!("{test} FAILED on {name}");
            std::panic::resume_unwind(e);
        }
        eprintln!("{test}: ok on {name}");
    }
}

/// The library's seeded generator (`saobp::workload::SplitMix64`), so
/// failures reproduce and tests draw from the same stream as the workloads.
pub use saobp::workload::SplitMix64 as Rng;

/// A bound with no relative part: `|got − want| ≤ abs`, for values known in
/// closed form or printed to a fixed number of decimals.
pub const fn absolute(abs: f64) -> Tolerance {
    Tolerance { abs, rel: 0.0 }
}

/// Asserts `got` (f32 from the GPU) matches `want` (f64 reference) under
/// `tol`, element by element, by the library's one rule
/// ([`saobp::reference::compare`]), naming the first miss.
pub fn assert_within(what: &str, got: &[f32], want: &[f64], tol: Tolerance) {
    let c = compare(got, want, tol).unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(i) = c.first_failure {
        let (g, w) = (f64::from(got[i]), want[i]);
        assert!(g.is_finite(), "{what}[{i}] = {g} is not finite (want {w})");
        panic!(
            "{what}[{i}] = {g}, want {w} (error {:e}, bound {:e} = {:e} + {:e}·|want|; {} of {} values miss)",
            (g - w).abs(),
            tol.bound(w),
            tol.abs,
            tol.rel,
            c.failures,
            c.len
        );
    }
}

/// [`assert_within`] with the bound given by its relative and absolute parts.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_within(what, got, want, Tolerance { abs, rel });
}

/// Asserts one value (`got` computed in f64 or read from a report) is
/// within `tol` of `want`, by the same rule.
pub fn assert_near(what: &str, got: f64, want: f64, tol: Tolerance) {
    assert!(
        tol.accepts(got, want),
        "{what} = {got}, want {want} (error {:e}, bound {:e})",
        (got - want).abs(),
        tol.bound(want)
    );
}

/// A `[batch, n]` key mask, 1 = keep, 0 = masked: `keep(item, key)` says
/// which keys each batch item keeps (called in row-major order).
pub fn key_mask(batch: usize, n: usize, mut keep: impl FnMut(usize, usize) -> bool) -> Vec<f32> {
    (0..batch * n)
        .map(|i| if keep(i / n, i % n) { 1.0 } else { 0.0 })
        .collect()
}

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped (also when the test panics).
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A new directory whose name starts with `saobp-{name}-`.
    pub fn new(name: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("saobp-{name}-"))
            .tempdir()
            .expect("a temporary directory");
        TempDir(dir)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

/// Runs the `saobp` binary with `args`, on `gpu`'s adapter when one is
/// given (by `SAOBP_BACKEND` and `SAOBP_ADAPTER`), else on the default one.
pub fn run_cli<S: AsRef<OsStr>>(gpu: Option<&Gpu>, args: impl IntoIterator<Item = S>) -> Output {
    // Only the CLI package (cli/) has the binary; its tests share this file.
    let Some(bin) = option_env!("CARGO_BIN_EXE_saobp") else {
        panic!("run_cli runs in the CLI package's tests only");
    };
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if let Some(g) = gpu {
        cmd.env(
            "SAOBP_BACKEND",
            format!("{:?}", g.adapter().backend).to_lowercase(),
        )
        .env("SAOBP_ADAPTER", &g.adapter().name);
    }
    cmd.output().expect("the saobp binary runs")
}

/// Asserts a CLI run succeeded, showing its error output if not.
pub fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a CLI run failed with exactly one line starting with `error`,
/// which contains `needle`, and without a panic.
pub fn assert_one_error_line(what: &str, out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: exit status {:?}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{what}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{what}: `{}` lacks `{needle}`",
        lines[0]
    );
}

/// Asserts a map's GPU metrics (every row metric, then the per-head
/// summaries) match reference rows from `saobp::reference::metrics::row_metrics`.
/// Distances are sums of up to N terms of size up to N, so their bound (and
/// that of the summaries, which include them) scales with N.
pub fn assert_map_metrics(
    gpu: &Gpu,
    what: &str,
    map: &saobp::MapMetrics,
    want: &[[f64; 8]],
    n: usize,
) {
    let got = map.rows.to_vec_blocking(gpu).expect("download metrics");
    let g = want.len();
    for (k, name) in saobp::METRIC_NAMES.iter().enumerate() {
        let w: Vec<f64> = want.iter().map(|r| r[k]).collect();
        let tol = if *name == "distance" {
            Tolerance::scaled_by(n)
        } else {
            Tolerance::SPEC
        };
        assert_within(&format!("{what} {name}"), &got[k * g..][..g], &w, tol);
    }
    let summaries = reference::metrics::summarize(want, n).expect("reference summaries");
    for (head, (s, w)) in map.heads.iter().zip(&summaries).enumerate() {
        let got: Vec<f32> = s
            .fields()
            .iter()
            .map(|(_, x)| *x as f32)
            .chain([s.rows as f32])
            .collect();
        assert_within(
            &format!("{what} summary of head {head}"),
            &got,
            w,
            Tolerance::scaled_by(n),
        );
    }
}

/// The all-MiniLM-L6-v2 folder (`SAOBP_MODEL_DIR`, or `models/` as
/// `scripts/fetch-model.sh` fills it); fails, saying how to get it, when absent.
pub fn model_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SAOBP_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "no model in {}: run `bash scripts/fetch-model.sh` (or set SAOBP_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// The repository's root, from the library's tests or the CLI's (`cli/`).
pub fn repo_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("shaders").is_dir())
        .unwrap_or(manifest)
}

/// The rows of one table of `docs/ERRORS.md`, each a list of its cells
/// (code quotes stripped): the table under the heading `section`, or the
/// library's first table when `None`; header and rule lines left out.
pub fn documented_errors(section: Option<&str>) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(repo_root().join("docs/ERRORS.md")).expect("docs/ERRORS.md");
    let table = match section {
        None => doc.as_str(),
        Some(heading) => doc
            .split(&format!("## {heading}"))
            .nth(1)
            .unwrap_or_else(|| panic!("docs/ERRORS.md has no section `{heading}`")),
    };
    table
        .lines()
        // Up to the next section's heading: each table has its own test.
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| id ") && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').trim().to_string())
                .collect()
        })
        .collect()
}

/// Reference row metrics of `A` (GTD at λ = 1) and of `R` (GTD at `lambda`)
/// for one SAOBP reference run over `[B, H, N]` rows.
pub fn reference_rows(
    want: &SaobpRef,
    lambda: &[f64],
    rows: [usize; 3],
    causal: bool,
    mask: Option<&[f32]>,
) -> (Vec<[f64; 8]>, Vec<[f64; 8]>) {
    use saobp::reference::metrics::row_metrics;
    (
        row_metrics(&want.attention, &want.mass, None, rows, causal, mask).expect("rows of A"),
        row_metrics(&want.refined, &want.mass, Some(lambda), rows, causal, mask)
            .expect("rows of R"),
    )
}

/// The spec's worked example: scores `S` (reached with `k = I` and scale 1)
/// and values `V`, one head of three tokens, λ = 0.5.
const SPEC_S: [f32; 9] = [2.0, 0.0, 1.0, 0.5, 1.5, 0.0, 0.0, 1.0, 1.0];
const SPEC_EYE: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
const SPEC_V: [f32; 6] = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
/// The spec prints 6 decimals: half a unit in the last place, plus f32 rounding.
pub const SPEC_TOL: f64 = 6e-7;
/// [`SPEC_TOL`] as a bound on one printed value.
pub const SPEC_PRINTED: Tolerance = absolute(SPEC_TOL);

/// Runs the worked example in `mode`; with `keep_maps` it also returns `A`,
/// `R` (unless plain) and the metrics, which the streaming modes refuse.
pub fn spec_run(gpu: &Gpu, mode: Mode, causal: bool, keep_maps: bool) -> AttentionOutput {
    let q = Tensor::from_slice(gpu, &[1, 1, 3, 3], &SPEC_S).unwrap();
    let k = Tensor::from_slice(gpu, &[1, 1, 3, 3], &SPEC_EYE).unwrap();
    let v = Tensor::from_slice(gpu, &[1, 1, 3, 2], &SPEC_V).unwrap();
    let opts = AttentionOptions {
        causal,
        scale: Some(1.0),
        lambda: Lambda::Scalar(0.5),
        mode,
        return_attention: keep_maps,
        return_refined: keep_maps && mode != Mode::Plain,
        metrics: keep_maps,
        ..Default::default()
    };
    attention_blocking(gpu, &q, &k, &v, &opts).unwrap()
}

/// Options that open `gpu`'s adapter again (a fresh context on it).
pub fn same_adapter(gpu: &Gpu) -> GpuOptions {
    let a = gpu.adapter();
    GpuOptions {
        backend: format!("{:?}", a.backend).to_lowercase().parse().unwrap(),
        adapter: Some(a.name.clone()),
        ..Default::default()
    }
}

/// How many keys batch item `item` keeps out of `n`; the rest are padding.
pub type Padding = fn(item: usize, n: usize) -> usize;

/// One attention case; its inputs are drawn at random by [`Case::inputs`].
#[derive(Debug, Clone)]
pub struct Case {
    /// `[B, H, N, D]` of `q` and `k`.
    pub shape: [usize; 4],
    /// Width of `v`.
    pub dv: usize,
    pub causal: bool,
    /// The key mask's padding, if the case has a mask.
    pub padding: Option<Padding>,
    pub lambda: Lambda,
    pub scale: Option<f32>,
}

/// The inputs of one case.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// `[B, N]`, if the case has a mask.
    pub mask: Option<Vec<f32>>,
}

/// What a run returns besides `O`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    pub attention: bool,
    pub refined: bool,
    pub metrics: bool,
}

/// What [`check`] read back from one run, for cross-checks.
#[derive(Debug, Clone)]
pub struct Checked {
    pub mode: Mode,
    /// `O`.
    pub output: Vec<f32>,
    /// `R`, when it was returned.
    pub refined: Option<Vec<f32>>,
    /// The row statistics, when the mode gives them.
    pub row_stats: Option<Vec<f32>>,
}

impl Case {
    /// `q` and `k` uniform in [-2, 2), `v` in [-1, 1), then the mask.
    pub fn inputs(&self, rng: &mut Rng) -> Inputs {
        let [b, h, n, d] = self.shape;
        Inputs {
            q: rng.vec(b * h * n * d, -2.0, 2.0),
            k: rng.vec(b * h * n * d, -2.0, 2.0),
            v: rng.vec(b * h * n * self.dv, -1.0, 1.0),
            mask: self
                .padding
                .map(|kept| key_mask(b, n, |item, j| j < kept(item, n))),
        }
    }

    /// λ per head, in f64.
    pub fn lambda64(&self) -> Vec<f64> {
        self.lambda
            .per_head(self.shape[1])
            .expect("one λ per head")
            .iter()
            .map(|&l| f64::from(l))
            .collect()
    }

    /// The reference's options for inputs `x`.
    pub fn ref_options<'a>(&self, x: &'a Inputs) -> RefOptions<'a> {
        RefOptions {
            causal: self.causal,
            key_mask: x.mask.as_deref(),
            scale: self.scale.map(f64::from),
        }
    }

    /// SAOBP and plain attention of `x` in f64.
    pub fn reference(&self, x: &Inputs) -> SaobpRef {
        reference::saobp(
            &x.q,
            &x.k,
            &x.v,
            self.shape,
            self.dv,
            &self.ref_options(x),
            &self.lambda64(),
        )
        .expect("reference SAOBP")
    }

    /// Runs `mode` on `x`, returning what `request` asks for besides `O`.
    pub fn run(&self, gpu: &Gpu, x: &Inputs, mode: Mode, request: Request) -> AttentionOutput {
        let [b, h, n, _] = self.shape;
        let q = Tensor::from_slice(gpu, &self.shape, &x.q).unwrap();
        let k = Tensor::from_slice(gpu, &self.shape, &x.k).unwrap();
        let v = Tensor::from_slice(gpu, &[b, h, n, self.dv], &x.v).unwrap();
        let m = x
            .mask
            .as_ref()
            .map(|m| Tensor::from_slice(gpu, &[b, n], m).unwrap());
        // Options the library adds later keep their defaults.
        #[allow(clippy::needless_update)]
        let opts = AttentionOptions {
            causal: self.causal,
            key_mask: m.as_ref(),
            scale: self.scale,
            lambda: self.lambda.clone(),
            mode,
            return_attention: request.attention,
            return_refined: request.refined,
            metrics: request.metrics,
            ..Default::default()
        };
        attention_blocking(gpu, &q, &k, &v, &opts).unwrap()
    }

    /// The case in words, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{:?} dv={} causal={} masked={} λ={:?} scale={:?}",
            self.shape,
            self.dv,
            self.causal,
            self.padding.is_some(),
            self.lambda,
            self.scale
        )
    }
}

/// Draws `case`'s inputs from `rng`, runs it in each of `modes` (asking for
/// what `request` names), and holds every output each run returns (`O`, `A`,
/// `R`, `m`, row statistics, metrics) to the float64 reference under the
/// spec's tolerance. Returns what was read back, for cross-checks.
pub fn check(
    gpu: &Gpu,
    rng: &mut Rng,
    case: &Case,
    modes: &[Mode],
    request: Request,
) -> Vec<Checked> {
    let x = case.inputs(rng);
    let want = case.reference(&x);
    let [b, h, n, _] = case.shape;
    let ref_opts = case.ref_options(&x);
    let stats = modes.iter().any(|m| m.is_streaming()).then(|| {
        reference::attention::row_stats(&x.q, &x.k, case.shape, &ref_opts).expect("row stats")
    });
    let rows = request.metrics.then(|| {
        reference_rows(
            &want,
            &case.lambda64(),
            [b, h, n],
            case.causal,
            x.mask.as_deref(),
        )
    });
    let download = |t: &Tensor| t.to_vec_blocking(gpu).unwrap();
    modes
        .iter()
        .map(|&mode| {
            let out = case.run(gpu, &x, mode, request);
            let what = |part: &str| format!("{mode:?} {part} {}", case.describe());
            let output = download(&out.output);
            let o_want = if mode.is_refined() {
                &want.output
            } else {
                &want.plain_output
            };
            assert_within(&what("O"), &output, o_want, Tolerance::SPEC);
            if let Some(a) = &out.attention {
                assert_within(&what("A"), &download(a), &want.attention, Tolerance::SPEC);
            }
            let refined = out.refined.as_ref().map(download);
            if let Some(r) = &refined {
                assert_within(&what("R"), r, &want.refined, Tolerance::SPEC);
            }
            if let Some(m) = &out.multi_hop_mass {
                assert_within(&what("m"), &download(m), &want.mass, Tolerance::SPEC);
            }
            let row_stats = out.row_stats.as_ref().map(download);
            if let (Some(got), Some(stats)) = (&row_stats, &stats) {
                assert_within(&what("row stats"), got, stats, Tolerance::SPEC);
            }
            if let (Some(metrics), Some((rows_a, rows_r))) = (&out.metrics, &rows) {
                assert_map_metrics(gpu, &what("metrics of A"), &metrics.attention, rows_a, n);
                if let Some(r) = &metrics.refined {
                    assert_map_metrics(gpu, &what("metrics of R"), r, rows_r, n);
                }
            }
            Checked {
                mode,
                output,
                refined,
                row_stats,
            }
        })
        .collect()
}
