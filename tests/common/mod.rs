//! Shared test harness: every GPU test runs on every adapter the machine has.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use saobp::{
    attention_blocking, AttentionOptions, AttentionOutput, Gpu, GpuOptions, Lambda, Mode, Tensor,
};

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

/// A small deterministic generator (SplitMix64), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Asserts `got` (f32 from the GPU) matches `want` (f64 reference) within
/// `|got - want| <= abs + rel * |want|` element-wise (the library's
/// [`saobp::reference::compare`]), naming the first miss.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    let c = saobp::reference::compare(got, want, saobp::reference::Tolerance { abs, rel })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(i) = c.first_failure {
        let (g, w) = (f64::from(got[i]), want[i]);
        assert!(g.is_finite(), "{what}[{i}] = {g} is not finite (want {w})");
        panic!(
            "{what}[{i}] = {g}, want {w} (error {:e}, rel {rel:e}, abs {abs:e}; {} of {} values miss)",
            (g - w).abs(),
            c.failures,
            c.len
        );
    }
}

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped (also when the test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("saobp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts a map's GPU metrics (every row metric, then the per-head
/// summaries) match reference rows from `saobp::reference::metrics::row_metrics`.
/// Distances are sums of up to N terms of size up to N, so their absolute
/// bound scales with N.
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
        let abs = if *name == "distance" {
            1e-5 * n as f64
        } else {
            1e-5
        };
        assert_close(&format!("{what} {name}"), &got[k * g..][..g], &w, 1e-4, abs);
    }
    let summaries = saobp::reference::metrics::summarize(want, n);
    for (head, (s, w)) in map.heads.iter().zip(&summaries).enumerate() {
        let got: Vec<f32> = s
            .fields()
            .iter()
            .map(|(_, x)| *x as f32)
            .chain([s.rows as f32])
            .collect();
        assert_close(
            &format!("{what} summary of head {head}"),
            &got,
            w,
            1e-4,
            1e-5 * n as f64,
        );
    }
}

/// The all-MiniLM-L6-v2 folder (`SAOBP_MODEL_DIR`, or `models/` as
/// `scripts/fetch-model.sh` fills it); fails, saying how to get it, when absent.
pub fn model_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SAOBP_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "no model in {}: run `bash scripts/fetch-model.sh` (or set SAOBP_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// Reference row metrics of `A` (GTD at λ = 1) and of `R` (GTD at `lambda`)
/// for one SAOBP reference run over `[B, H, N]` rows.
pub fn reference_rows(
    want: &saobp::reference::SaobpRef,
    lambda: &[f64],
    rows: [usize; 3],
    causal: bool,
    mask: Option<&[f32]>,
) -> (Vec<[f64; 8]>, Vec<[f64; 8]>) {
    use saobp::reference::metrics::row_metrics;
    (
        row_metrics(&want.attention, &want.mass, None, rows, causal, mask),
        row_metrics(&want.refined, &want.mass, Some(lambda), rows, causal, mask),
    )
}

/// The spec's worked example: scores `S` (reached with `k = I` and scale 1)
/// and values `V`, one head of three tokens, λ = 0.5.
const SPEC_S: [f32; 9] = [2.0, 0.0, 1.0, 0.5, 1.5, 0.0, 0.0, 1.0, 1.0];
const SPEC_EYE: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
const SPEC_V: [f32; 6] = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
/// The spec prints 6 decimals: half a unit in the last place, plus f32 rounding.
pub const SPEC_TOL: f64 = 6e-7;

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
