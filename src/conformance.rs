//! Conformance: every kernel, at a fixed matrix of sizes, on one adapter,
//! against the float64 reference.
//!
//! The matrix ([`cases`]) covers each public kernel — matmul, softmax,
//! attention, SAOBP messages and refinement, the fused and the materialized
//! refined output, metrics — at small odd sizes (N = 1, 7, 33, 65; D = 1;
//! several batch items and heads; causal and key-padded), a mid size
//! (N = 256, D = 64), and sizes at the adapter's dispatch limit: grids of more
//! workgroups than `max_compute_workgroups_per_dimension`, which the library
//! splits over x and y. Each case runs through the public API, is compared
//! element by element with [`crate::reference`](mod@crate::reference) under the spec's tolerance
//! ([`Tolerance`]), and becomes one [`Row`]: pass, fail, or skip with its
//! reason. A case the adapter cannot run (a buffer over its binding size, an
//! entry point needing more storage buffers or workgroup memory than it
//! offers, no compute shaders at all) is a skip that names the limit; nothing
//! is left out silently.
//!
//! `saobp conformance` prints this for every adapter; `tests/conformance.rs`
//! runs the same matrix on the adapters present.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::attention::{attention, AttentionOptions, Mode};
use crate::error::{Error, Result};
use crate::gpu::{self, AdapterSummary, Gpu};
use crate::kernels::flash as flash_kernel;
use crate::kernels::matmul::{
    self as matmul_kernel, matmul, matmul_variant, MatmulFamily, MatmulOptions, MatmulVariant,
    TiledTile,
};
use crate::kernels::metrics as metrics_kernel;
use crate::kernels::metrics::{metrics, MetricsOptions, METRIC_COUNT, METRIC_NAMES};
use crate::kernels::saobp::{self as saobp_kernel, refine_map, Lambda};
use crate::kernels::softmax::{self as softmax_kernel, softmax, SoftmaxOptions};
use crate::reference::{self, compare, Comparison, RefOptions, Tolerance};
use crate::tensor::{numel, Tensor};
use crate::workload::SplitMix64;

/// A kernel of the matrix, as the public API exposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`crate::matmul()`], with transposes and broadcast batches: the
    /// variant it chooses for the adapter and size.
    Matmul,
    /// [`crate::matmul_variant()`] with [`MatmulVariant::Buffer`], on the
    /// [`Kernel::Matmul`] sizes.
    MatmulBuffer,
    /// [`crate::matmul_variant()`] with each [`MatmulVariant::Tiled`] tile.
    MatmulTiled,
    /// [`crate::matmul_variant()`] with each [`MatmulVariant::Texture`]
    /// layout, with and without subgroups.
    MatmulTexture,
    /// [`crate::softmax()`], causal and key-masked.
    Softmax,
    /// [`crate::attention()`] in [`Mode::Plain`]: the map `A` and `O = A·V`.
    Attention,
    /// [`crate::attention()`] in [`Mode::Flash`]: `O = A·V` and the row
    /// statistics, nothing N×N.
    Flash,
    /// The two-hop messages `M` of [`crate::refine_map`].
    Messages,
    /// The multi-hop mass `m` and refined map `R` of [`crate::refine_map`].
    Refine,
    /// [`crate::attention()`] in [`Mode::Fused`]: `O` and `m` in O(N²D).
    FusedOutput,
    /// [`crate::attention()`] in [`Mode::Streaming`]: `O`, `m` and the row
    /// statistics in O(N²D) time and O(N·D) memory.
    Streaming,
    /// [`crate::attention()`] in [`Mode::Materialized`]: `O` and `R` with `M` explicit.
    MaterializedOutput,
    /// [`crate::metrics()`]: every row metric and the per-head summaries.
    Metrics,
}

impl Kernel {
    /// Every kernel, in report order.
    pub const ALL: [Kernel; 13] = [
        Kernel::Matmul,
        Kernel::MatmulBuffer,
        Kernel::MatmulTiled,
        Kernel::MatmulTexture,
        Kernel::Softmax,
        Kernel::Attention,
        Kernel::Flash,
        Kernel::Messages,
        Kernel::Refine,
        Kernel::FusedOutput,
        Kernel::Streaming,
        Kernel::MaterializedOutput,
        Kernel::Metrics,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::MatmulBuffer => "matmul_buffer",
            Kernel::MatmulTiled => "matmul_tiled",
            Kernel::MatmulTexture => "matmul_texture",
            Kernel::Flash => "flash",
            Kernel::Streaming => "streaming",
            Kernel::Softmax => "softmax",
            Kernel::Attention => "attention",
            Kernel::Messages => "messages",
            Kernel::Refine => "refine",
            Kernel::FusedOutput => "fused_output",
            Kernel::MaterializedOutput => "materialized_output",
            Kernel::Metrics => "metrics",
        }
    }

    /// The shader entry points the public call dispatches, given those of
    /// the matmul variant(s) it uses (`matmul`: the default choice depends
    /// on the adapter and the size, see [`Case::shaders`]).
    pub(crate) fn shaders(self, matmul: &[&'static gpu::Kernel]) -> Vec<&'static gpu::Kernel> {
        let map = [matmul, &[&softmax_kernel::SOFTMAX_ROWS]].concat();
        let materialize = [
            matmul,
            &[&saobp_kernel::REMOVE_ECHOES, &saobp_kernel::REFINE],
        ]
        .concat();
        let stats = [&saobp_kernel::DIAG_STATS, &saobp_kernel::MASS];
        let flash = [&flash_kernel::FLASH_FORWARD];
        let mut out = match self {
            Kernel::Matmul | Kernel::MatmulBuffer | Kernel::MatmulTiled | Kernel::MatmulTexture => {
                matmul.to_vec()
            }
            Kernel::Softmax => vec![&softmax_kernel::SOFTMAX_ROWS],
            Kernel::Attention => map,
            Kernel::Flash => flash.to_vec(),
            // The messages come from `refine_map`, which refines too.
            Kernel::Messages | Kernel::Refine => materialize,
            // The fused output computes m itself: no `mass` dispatch.
            Kernel::FusedOutput => [
                &map[..],
                &[
                    &saobp_kernel::DIAG_STATS,
                    &saobp_kernel::TWO_HOP_VALUES,
                    &saobp_kernel::FUSED_OUTPUT,
                ],
            ]
            .concat(),
            Kernel::Streaming => [
                &flash[..],
                &[
                    &flash_kernel::FLASH_VALUES,
                    &flash_kernel::FLASH_REFINE,
                    &saobp_kernel::FUSED_OUTPUT,
                ],
            ]
            .concat(),
            Kernel::MaterializedOutput => [&map[..], &materialize[..]].concat(),
            Kernel::Metrics => [
                &stats[..],
                &[&metrics_kernel::ROW_METRICS, &metrics_kernel::SUMMARIZE],
            ]
            .concat(),
        };
        // Products of several sizes may share a variant: list each entry point once.
        let mut seen = Vec::new();
        out.retain(|k| {
            let key = (k.family, k.entry);
            let new = !seen.contains(&key);
            seen.push(key);
            new
        });
        out
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let want = s.trim().to_ascii_lowercase().replace('-', "_");
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == want)
            .ok_or_else(|| {
                let names: Vec<_> = Kernel::ALL.iter().map(|k| k.name()).collect();
                Error::invalid(format!(
                    "unknown kernel `{s}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// A deliberately wrong kernel variant to run instead of the real one, so
/// that the report can be shown to fail. Not for use outside that check.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The matmul kernel with its k loop one term short, for the matmul cases.
    MatmulSkipsLastK,
}

impl Fault {
    /// The kernel whose cases the fault breaks.
    pub fn kernel(self) -> Kernel {
        match self {
            Fault::MatmulSkipsLastK => Kernel::Matmul,
        }
    }
}

impl FromStr for Fault {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "matmul" | "matmul_skips_last_k" => Ok(Fault::MatmulSkipsLastK),
            _ => Err(Error::invalid(format!(
                "unknown fault `{s}`: the only one is `matmul`"
            ))),
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these kernels; empty means all of them.
    pub kernels: Vec<Kernel>,
    /// Run a deliberately wrong kernel variant (see [`Fault`]).
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

impl Options {
    /// Whether `kernel` is among those to run.
    pub fn selects(&self, kernel: Kernel) -> bool {
        self.kernels.is_empty() || self.kernels.contains(&kernel)
    }
}

/// The inputs of one case.
#[derive(Debug, Clone)]
enum Input {
    /// `A` (`a`) times `B` (`b`), values uniform in [-1, 1), by `variant`
    /// (`None`: the default choice).
    Matmul {
        a: Vec<usize>,
        b: Vec<usize>,
        opts: MatmulOptions,
        variant: Option<MatmulVariant>,
    },
    /// Scores of `shape` uniform in [-range, range).
    Softmax {
        shape: Vec<usize>,
        causal: bool,
        masked: bool,
        range: f32,
    },
    /// `q`, `k` (`shape`) uniform in [-2, 2), `v` (`[B, H, N, dv]`) in [-1, 1);
    /// refined modes use λ per head from [`lambdas`].
    Attention {
        shape: [usize; 4],
        dv: usize,
        causal: bool,
        masked: bool,
        with_lambda: bool,
    },
    /// An attention map `[B, H, N, N]`: the reference softmax of scores
    /// uniform in [-6, 6), rounded to f32; λ per head from [`lambdas`] when
    /// `with_lambda`, else none given.
    Map {
        shape: [usize; 3],
        causal: bool,
        masked: bool,
        with_lambda: bool,
    },
    /// A size at the adapter's limits that would be unreasonable to build
    /// and check here; the reason.
    TooLarge(String),
}

/// One kernel at one size.
#[derive(Debug, Clone)]
pub struct Case {
    /// The kernel.
    pub kernel: Kernel,
    /// The size, e.g. `[2,3,7,5] dv=3 causal mask λ=0.5,2,0`.
    pub size: String,
    /// What the size exercises, where the size alone does not say (e.g. a
    /// grid over the per-dimension workgroup cap).
    pub note: Option<String>,
    input: Input,
}

/// A case's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Every value met its bound.
    Pass,
    /// A value missed its bound, was not finite, or the GPU call failed: why.
    Fail(String),
    /// The adapter cannot run this case: the reason, naming the limit.
    Skip(String),
}

impl Status {
    /// `pass`, `fail` or `skip`.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail(_) => "fail",
            Status::Skip(_) => "skip",
        }
    }

    /// The reason of a failure or skip.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Pass => None,
            Status::Fail(r) | Status::Skip(r) => Some(r),
        }
    }
}

/// One output compared with its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The output, in the spec's words (`O`, `R`, `m`, `entropy`, ...).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The bound it is held to.
    pub tolerance: Tolerance,
    /// How it compared.
    pub comparison: Comparison,
    /// The worst element when it missed its bound: `(index, gpu, reference)`.
    pub worst_miss: Option<(Vec<usize>, f32, f64)>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The kernel.
    pub kernel: Kernel,
    /// The case's size label.
    pub size: String,
    /// The case's note.
    pub note: Option<String>,
    /// The shader entry points the case dispatches on this adapter, as
    /// `family::entry` (see [`Kernel`]).
    pub shaders: Vec<String>,
    /// Each output compared (empty when skipped or when the call failed).
    pub checks: Vec<Check>,
    /// Pass, fail or skip.
    pub status: Status,
    /// GPU wall time: upload, dispatch, readback (and the pipeline build the
    /// first time a kernel runs on the adapter).
    pub time: Duration,
    /// CPU time of the float64 reference.
    pub reference_time: Duration,
}

impl Row {
    /// The largest absolute error over all outputs.
    pub fn max_abs(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.comparison.max_abs)
            .fold(0.0, f64::max)
    }

    /// The largest relative error over all outputs (see [`Comparison::max_rel`]).
    pub fn max_rel(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.comparison.max_rel)
            .fold(0.0, f64::max)
    }

    /// The largest error as a fraction of its bound: at most 1 on a pass.
    pub fn worst(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.comparison.worst)
            .fold(0.0, f64::max)
    }
}

/// Rows by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Skipped.
    pub skip: usize,
}

impl Counts {
    /// Counts of `rows`.
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Counts {
        let mut c = Counts::default();
        for r in rows {
            match r.status {
                Status::Pass => c.pass += 1,
                Status::Fail(_) => c.fail += 1,
                Status::Skip(_) => c.skip += 1,
            }
        }
        c
    }
}

/// The report of one adapter.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    /// Backend, name, type, driver.
    pub adapter: AdapterSummary,
    /// The adapter's limits (the device is opened with them).
    pub limits: wgpu::Limits,
    /// The adapter's optional features.
    pub features: wgpu::Features,
    /// What a downlevel (e.g. GL) adapter can and cannot do.
    pub downlevel: wgpu::DownlevelCapabilities,
    /// One per case, in matrix order.
    pub rows: Vec<Row>,
}

impl AdapterReport {
    /// Rows by status.
    pub fn counts(&self) -> Counts {
        Counts::of(&self.rows)
    }

    /// No row failed.
    pub fn passed(&self) -> bool {
        self.counts().fail == 0
    }
}

/// What one entry point asks of the adapter, read from its WGSL with naga:
/// the pipelines use automatic layouts, so only the bindings and workgroup
/// variables the entry point uses count, exactly as wgpu counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resources {
    /// Storage buffers bound.
    storage_buffers: u32,
    /// Bytes of `var<workgroup>` memory.
    workgroup_bytes: u32,
    /// `@workgroup_size`.
    workgroup_size: [u32; 3],
}

/// The [`Resources`] of `kernel`'s entry point, analysed once per process.
fn resources(kernel: &gpu::Kernel) -> Result<Resources, String> {
    type Cache = HashMap<(&'static str, &'static str), Result<Resources, String>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (kernel.family, kernel.entry);
    if let Some(r) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return r.clone();
    }
    let r = analyse(kernel);
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, r.clone());
    r
}

fn analyse(kernel: &gpu::Kernel) -> Result<Resources, String> {
    let module = naga::front::wgsl::parse_str(kernel.source)
        .map_err(|e| format!("{}: {}", kernel.family, e.emit_to_string(kernel.source)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| format!("{}: {}", kernel.family, e.emit_to_string(kernel.source)))?;
    let (index, entry) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, e)| e.name == kernel.entry)
        .ok_or_else(|| format!("{} has no entry point {}", kernel.family, kernel.entry))?;
    let uses = info.get_entry_point(index);
    let mut out = Resources {
        storage_buffers: 0,
        workgroup_bytes: 0,
        workgroup_size: entry.workgroup_size,
    };
    for (handle, var) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue;
        }
        match var.space {
            naga::AddressSpace::Storage { .. } => out.storage_buffers += 1,
            naga::AddressSpace::WorkGroup => {
                out.workgroup_bytes += module.types[var.ty].inner.size(module.to_ctx());
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The limits that matter to these kernels, by their wgpu names.
pub fn relevant_limits(l: &wgpu::Limits) -> Vec<(&'static str, u64)> {
    vec![
        ("max_bind_groups", l.max_bind_groups.into()),
        (
            "max_bindings_per_bind_group",
            l.max_bindings_per_bind_group.into(),
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            l.max_uniform_buffers_per_shader_stage.into(),
        ),
        (
            "max_uniform_buffer_binding_size",
            l.max_uniform_buffer_binding_size,
        ),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        ("max_buffer_size", l.max_buffer_size),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment.into(),
        ),
        (
            "min_storage_buffer_offset_alignment",
            l.min_storage_buffer_offset_alignment.into(),
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size.into(),
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup.into(),
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x.into(),
        ),
        (
            "max_compute_workgroup_size_y",
            l.max_compute_workgroup_size_y.into(),
        ),
        (
            "max_compute_workgroup_size_z",
            l.max_compute_workgroup_size_z.into(),
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension.into(),
        ),
    ]
}

/// The names of the features in `f` (WebGPU's kebab-case names, `wgpu-`
/// prefixed for native-only ones).
pub fn feature_names(f: wgpu::Features) -> Vec<String> {
    f.iter()
        .map(|one| match one.as_str() {
            Some(name) => name.to_string(),
            None => format!("{one:?}"),
        })
        .collect()
}

/// The names of the downlevel flags in `f` (what the adapter does support).
pub fn downlevel_names(f: wgpu::DownlevelFlags) -> Vec<String> {
    f.iter_names().map(|(name, _)| name.to_string()).collect()
}

/// The largest buffer a case at the dispatch limit may allocate: an adapter
/// with a far larger workgroup cap gets a skip instead of a huge CPU check.
const LIMIT_CASE_BUDGET: u64 = 256 << 20;

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dims(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// ` causal mask λ=0.5,2,...`: the flags of a size label; λ for `heads`
/// heads when given.
fn flags(causal: bool, masked: bool, lambda_heads: Option<usize>) -> String {
    let mut s = String::new();
    if causal {
        s.push_str(" causal");
    }
    if masked {
        s.push_str(" mask");
    }
    if let Some(heads) = lambda_heads {
        // λ cycles with period 4 (see `lambdas`): show one period.
        let l: Vec<String> = lambdas(heads.min(4))
            .iter()
            .map(|x| x.to_string())
            .collect();
        let more = if heads > 4 { ",..." } else { "" };
        s.push_str(&format!(" λ={}{more}", l.join(",")));
    }
    s
}

/// λ per head: 0.5, 2, 0, 1, 0.5, ... (0 checks that refinement is then off).
fn lambdas(heads: usize) -> Vec<f32> {
    (0..heads).map(|h| [0.5, 2.0, 0.0, 1.0][h % 4]).collect()
}

/// The key mask of every masked case, `[B, N]`: item 0 pads its last key;
/// odd items pad key 0 and the second half (so a causal row 0 is empty, and
/// with N = 1 the whole item is); other even items keep everything.
fn key_mask(batch: usize, n: usize) -> Vec<f32> {
    (0..batch * n)
        .map(|i| {
            let (b, j) = (i / n, i % n);
            let padded = if b == 0 {
                n > 1 && j == n - 1
            } else if b % 2 == 1 {
                j == 0 || j > n / 2
            } else {
                false
            };
            if padded {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

/// A stable seed per case, so a failure reproduces whatever else runs.
fn seed(kernel: Kernel, size: &str) -> u64 {
    kernel
        .name()
        .bytes()
        .chain(size.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Every matmul variant of `family` an adapter may offer, in report order;
/// those an adapter lacks become skips.
fn family_variants(family: MatmulFamily) -> Vec<MatmulVariant> {
    match family {
        MatmulFamily::Buffer => vec![MatmulVariant::Buffer],
        MatmulFamily::Tiled => vec![
            MatmulVariant::Tiled(TiledTile::T64),
            MatmulVariant::Tiled(TiledTile::T128),
        ],
        MatmulFamily::Texture => [false, true]
            .into_iter()
            .flat_map(|subgroups| {
                [1, 2, 4, 8].map(|group_rows| MatmulVariant::Texture {
                    subgroups,
                    group_rows,
                })
            })
            .collect(),
    }
}

/// A variant as its row labels name it: without the family, which is the
/// kernel's name (`64x64x16 4x4`, `subgroup 8x1 groups`); the buffer
/// family's one variant has no label.
fn variant_label(v: MatmulVariant) -> String {
    let full = v.to_string();
    ["buffer", "tiled ", "texture "]
        .iter()
        .find_map(|family| full.strip_prefix(family))
        .unwrap_or(&full)
        .to_string()
}

impl Case {
    fn new(kernel: Kernel, input: Input, note: Option<String>) -> Case {
        let size = match &input {
            Input::Matmul {
                a,
                b,
                opts,
                variant,
            } => {
                let t = |on: bool| if on { "^T" } else { "" };
                let alpha = if opts.alpha == 1.0 {
                    String::new()
                } else {
                    format!(" alpha={}", opts.alpha)
                };
                // The family is the kernel's name; the label says which of its variants.
                let variant = match variant.map(variant_label) {
                    Some(v) if !v.is_empty() => format!("{v}: "),
                    _ => String::new(),
                };
                format!(
                    "{variant}A{}{} x B{}{}{alpha}",
                    dims(a),
                    t(opts.trans_a),
                    dims(b),
                    t(opts.trans_b)
                )
            }
            Input::Softmax {
                shape,
                causal,
                masked,
                range,
            } => format!(
                "{}{} |x|<{range}",
                dims(shape),
                flags(*causal, *masked, None)
            ),
            Input::Attention {
                shape,
                dv,
                causal,
                masked,
                with_lambda,
            } => format!(
                "{} dv={dv}{}",
                dims(shape),
                flags(*causal, *masked, with_lambda.then_some(shape[1]))
            ),
            Input::Map {
                shape: [b, h, n],
                causal,
                masked,
                with_lambda,
            } => format!(
                "A{}{}",
                dims(&[*b, *h, *n, *n]),
                flags(*causal, *masked, with_lambda.then_some(*h))
            ),
            Input::TooLarge(_) => String::new(),
        };
        Case {
            kernel,
            size,
            note,
            input,
        }
    }

    /// The shapes of the tensors the case allocates that may be largest.
    fn buffers(&self) -> Vec<Vec<usize>> {
        match &self.input {
            Input::Matmul { a, b, opts, .. } => {
                let out = matmul_kernel::plan(a, b, opts)
                    .map(|p| p.out_shape)
                    .unwrap_or_default();
                vec![a.clone(), b.clone(), out]
            }
            Input::Softmax { shape, .. } => vec![shape.clone()],
            Input::Attention { shape, dv, .. } => {
                let [b, h, n, _] = *shape;
                let mut out = vec![shape.to_vec(), vec![b, h, n, *dv]];
                // The streaming modes never form an N×N map.
                if !matches!(self.kernel, Kernel::Flash | Kernel::Streaming) {
                    out.push(vec![b, h, n, n]);
                }
                out
            }
            Input::Map {
                shape: [b, h, n], ..
            } => {
                vec![vec![*b, *h, *n, *n], vec![METRIC_COUNT, *b, *h, *n]]
            }
            Input::TooLarge(_) => Vec::new(),
        }
    }

    /// The products `A·B` the case's public call computes with the default
    /// matmul choice (none for the forced-variant rows and the kernels
    /// without a product).
    fn products(&self) -> Vec<matmul_kernel::MatmulPlan> {
        let plain = MatmulOptions::default();
        let plans: Vec<Result<matmul_kernel::MatmulPlan>> = match &self.input {
            Input::Matmul {
                a,
                b,
                opts,
                variant: None,
            } => vec![matmul_kernel::plan(a, b, opts)],
            Input::Attention { shape, dv, .. } => {
                let [b, h, n, _] = *shape;
                let map = [b, h, n, n];
                let scores = MatmulOptions {
                    trans_b: true,
                    ..plain
                };
                let av = matmul_kernel::plan(&map, &[b, h, n, *dv], &plain);
                match self.kernel {
                    Kernel::Attention => vec![matmul_kernel::plan(shape, shape, &scores), av],
                    Kernel::FusedOutput => vec![
                        matmul_kernel::plan(shape, shape, &scores),
                        av,
                        matmul_kernel::plan(&map, &[b, h, n, dv + 1], &plain),
                    ],
                    Kernel::MaterializedOutput => vec![
                        matmul_kernel::plan(shape, shape, &scores),
                        matmul_kernel::plan(&map, &map, &plain),
                        av,
                    ],
                    _ => Vec::new(),
                }
            }
            Input::Map {
                shape: [b, h, n], ..
            } if matches!(self.kernel, Kernel::Messages | Kernel::Refine) => {
                let map = [*b, *h, *n, *n];
                vec![matmul_kernel::plan(&map, &map, &plain)]
            }
            _ => Vec::new(),
        };
        plans.into_iter().filter_map(Result::ok).collect()
    }

    /// The shader entry points this case dispatches on `gpu`: the matmul
    /// variant is the row's own, else what the default choice picks for
    /// each product on `gpu`, else (no adapter at hand) `matmul_blocked`,
    /// the one every adapter runs.
    pub(crate) fn shaders(&self, gpu: Option<&Gpu>) -> Vec<&'static gpu::Kernel> {
        let matmul: Vec<&'static gpu::Kernel> = match (&self.input, gpu) {
            (
                Input::Matmul {
                    variant: Some(v), ..
                },
                _,
            ) => v.kernels(),
            (_, Some(gpu)) => self
                .products()
                .iter()
                .flat_map(|p| matmul_kernel::choose(gpu, p).kernels())
                .collect(),
            (_, None) => MatmulVariant::Buffer.kernels(),
        };
        self.kernel.shaders(&matmul)
    }

    /// Why an adapter with `limits` and `downlevel` flags cannot run this
    /// case, naming the limit; `None` when it can. Judges the entry points
    /// this case dispatches when no adapter is known (the buffer matmul).
    pub fn skip_reason(
        &self,
        limits: &wgpu::Limits,
        downlevel: wgpu::DownlevelFlags,
    ) -> Option<String> {
        self.skip_reason_of(&self.shaders(None), limits, downlevel)
    }

    fn skip_reason_of(
        &self,
        shaders: &[&'static gpu::Kernel],
        limits: &wgpu::Limits,
        downlevel: wgpu::DownlevelFlags,
    ) -> Option<String> {
        if let Input::TooLarge(reason) = &self.input {
            return Some(reason.clone());
        }
        if !downlevel.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            return Some("the adapter does not support compute shaders".to_string());
        }
        for shader in shaders {
            // A shader that fails to analyse fails for real when it runs.
            let Ok(r) = resources(shader) else {
                continue;
            };
            let [x, y, z] = r.workgroup_size;
            let needs: [(u64, &str, u64, &str); 6] = [
                (
                    r.storage_buffers.into(),
                    "storage buffers",
                    limits.max_storage_buffers_per_shader_stage.into(),
                    "max_storage_buffers_per_shader_stage",
                ),
                (
                    r.workgroup_bytes.into(),
                    "bytes of workgroup memory",
                    limits.max_compute_workgroup_storage_size.into(),
                    "max_compute_workgroup_storage_size",
                ),
                (
                    u64::from(x) * u64::from(y) * u64::from(z),
                    "invocations per workgroup",
                    limits.max_compute_invocations_per_workgroup.into(),
                    "max_compute_invocations_per_workgroup",
                ),
                (
                    x.into(),
                    "invocations along x",
                    limits.max_compute_workgroup_size_x.into(),
                    "max_compute_workgroup_size_x",
                ),
                (
                    y.into(),
                    "invocations along y",
                    limits.max_compute_workgroup_size_y.into(),
                    "max_compute_workgroup_size_y",
                ),
                (
                    z.into(),
                    "invocations along z",
                    limits.max_compute_workgroup_size_z.into(),
                    "max_compute_workgroup_size_z",
                ),
            ];
            for (need, what, limit, name) in needs {
                if need > limit {
                    return Some(format!(
                        "{}::{} needs {need} {what}, over {name} = {limit}",
                        shader.family, shader.entry
                    ));
                }
            }
        }
        for shape in self.buffers() {
            let bytes = numel(&shape).map_or(u64::MAX, |n| (n as u64).saturating_mul(4));
            for (name, limit) in [
                (
                    "max_storage_buffer_binding_size",
                    limits.max_storage_buffer_binding_size,
                ),
                ("max_buffer_size", limits.max_buffer_size),
            ] {
                if bytes > limit {
                    return Some(format!(
                        "a {} tensor needs {} bytes, over {name} = {}",
                        dims(&shape),
                        grouped(bytes),
                        grouped(limit)
                    ));
                }
            }
        }
        None
    }

    fn seed(&self) -> u64 {
        seed(self.kernel, &self.size)
    }
}

/// A case sized from the per-dimension workgroup cap, noted as such; a skip
/// (keeping its size) when that would allocate more than [`LIMIT_CASE_BUDGET`].
fn at_cap(kernel: Kernel, input: Input, cap: u64, what: &str, workgroups: u64) -> Case {
    let case = Case::new(kernel, input, None);
    let note = Some(format!(
        "{what}: {} workgroups > max_compute_workgroups_per_dimension = {}, split over x and y",
        grouped(workgroups),
        grouped(cap)
    ));
    let largest = case
        .buffers()
        .iter()
        .map(|s| numel(s).map_or(u64::MAX, |n| (n as u64).saturating_mul(4)))
        .max()
        .unwrap_or(0);
    let input = if largest > LIMIT_CASE_BUDGET {
        Input::TooLarge(format!(
            "max_compute_workgroups_per_dimension = {}: a grid over it needs a buffer of {} MiB here, \
             over this check's {} MiB",
            grouped(cap),
            grouped(largest >> 20),
            LIMIT_CASE_BUDGET >> 20
        ))
    } else {
        case.input
    };
    Case {
        note,
        input,
        ..case
    }
}

/// The fixed matrix for an adapter with `limits`: the same sizes everywhere,
/// except those at the dispatch limit, which follow the adapter's
/// `max_compute_workgroups_per_dimension`. Each entry point that sizes its
/// grid from the data goes over that cap once, just barely: software adapters
/// pay a few microseconds per workgroup.
pub fn cases(limits: &wgpu::Limits) -> Vec<Case> {
    let cap = u64::from(limits.max_compute_workgroups_per_dimension.max(1));
    let cap_usize = usize::try_from(cap).unwrap_or(usize::MAX);
    // The smallest count `c` with `c · unit` over the cap.
    let over = |unit: usize| (cap_usize / unit).saturating_add(1);
    let mut out = Vec::new();

    // Matmul: 1x1x1, K = 1, transposes, rank-4 batches, broadcast of either
    // operand, the score product at N = 256, and one tile per matrix over the cap.
    let mm =
        |m: usize, n: usize, k: usize, batch: &[usize], broadcast: char, opts: MatmulOptions| {
            let (a_mat, b_mat) = (
                if opts.trans_a { [k, m] } else { [m, k] },
                if opts.trans_b { [n, k] } else { [k, n] },
            );
            let with = |lead: bool, mat: [usize; 2]| {
                let mut s = if lead { batch.to_vec() } else { Vec::new() };
                s.extend(mat);
                s
            };
            Input::Matmul {
                a: with(broadcast != 'a', a_mat),
                b: with(broadcast != 'b', b_mat),
                opts,
                variant: None,
            }
        };
    let plain = MatmulOptions::default();
    let ta = MatmulOptions {
        trans_a: true,
        ..plain
    };
    let tb = MatmulOptions {
        trans_b: true,
        ..plain
    };
    let matmuls = [
        mm(1, 1, 1, &[], '-', plain),
        mm(7, 33, 65, &[], '-', ta),
        mm(33, 7, 1, &[3], '-', tb),
        mm(65, 31, 33, &[2, 3], 'b', plain),
        mm(9, 7, 5, &[3], 'a', MatmulOptions { alpha: -1.5, ..ta }),
        mm(
            256,
            256,
            64,
            &[2],
            '-',
            MatmulOptions { alpha: 0.125, ..tb },
        ),
    ];
    let batch = over(1);
    let matmul_at_cap = mm(5, 4, 3, &[batch], 'b', plain);
    // The default choice, then every variant of each family on the same sizes.
    let families = [
        (Kernel::Matmul, None),
        (Kernel::MatmulBuffer, Some(MatmulFamily::Buffer)),
        (Kernel::MatmulTiled, Some(MatmulFamily::Tiled)),
        (Kernel::MatmulTexture, Some(MatmulFamily::Texture)),
    ];
    for (kernel, family) in families {
        let variants = family.map_or(vec![None], |f| {
            family_variants(f).into_iter().map(Some).collect()
        });
        for variant in variants {
            let with = |input: &Input| match input {
                Input::Matmul { a, b, opts, .. } => Input::Matmul {
                    a: a.clone(),
                    b: b.clone(),
                    opts: *opts,
                    variant,
                },
                other => other.clone(),
            };
            for input in &matmuls {
                out.push(Case::new(kernel, with(input), None));
            }
            // Over the cap once per family's default variant (with and
            // without subgroups): the layouts of a family share their grid
            // indexing, and each such case costs seconds on a software adapter.
            let defaults = [
                MatmulVariant::Buffer,
                MatmulVariant::Tiled(TiledTile::T64),
                MatmulVariant::Texture {
                    subgroups: false,
                    group_rows: 8,
                },
                MatmulVariant::Texture {
                    subgroups: true,
                    group_rows: 8,
                },
            ];
            if variant.is_some_and(|v| !defaults.contains(&v)) {
                continue;
            }
            out.push(at_cap(
                kernel,
                with(&matmul_at_cap),
                cap,
                "one tile per matrix",
                batch as u64,
            ));
        }
    }

    // Softmax: one element, short and long rows, logits at the spec's ±50,
    // and one workgroup per row over the cap.
    let sm = |shape: &[usize], causal, masked, range| Input::Softmax {
        shape: shape.to_vec(),
        causal,
        masked,
        range,
    };
    for input in [
        sm(&[1, 1], false, false, 8.0),
        sm(&[2, 3, 7, 33], true, true, 8.0),
        sm(&[1, 2, 65, 65], true, true, 8.0),
        sm(&[1, 1, 33, 257], false, false, 50.0),
        sm(&[1, 2, 256, 256], false, true, 8.0),
    ] {
        out.push(Case::new(Kernel::Softmax, input, None));
    }
    let rows = over(2);
    out.push(at_cap(
        Kernel::Softmax,
        sm(&[2, 1, rows, 5], true, true, 8.0),
        cap,
        "one workgroup per row",
        2 * rows as u64,
    ));

    // Attention and the refined outputs share shapes: N = 1, odd N and D,
    // D = 1, Dv != D, several items and heads, masks, N = 256 D = 64 (one
    // head: the reference of the refined modes is N³ per head). Plain
    // attention is matmul then softmax, whose cases above go over the cap.
    let att = |shape: [usize; 4], dv, causal, masked, with_lambda| Input::Attention {
        shape,
        dv,
        causal,
        masked,
        with_lambda,
    };
    let shapes: [([usize; 4], usize, bool, bool); 5] = [
        ([1, 1, 1, 1], 1, false, false),
        ([2, 3, 7, 5], 3, true, true),
        ([2, 2, 33, 1], 7, false, true),
        ([1, 2, 65, 16], 16, true, true),
        ([1, 1, 256, 64], 64, false, false),
    ];
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Kernel::Attention,
            att(shape, dv, causal, masked, false),
            None,
        ));
    }
    // The streaming modes on the same shapes (D and Dv within their 64),
    // then one N long enough that software adapters split the keys over
    // several dispatches, masked keys straddling a boundary. Streaming's
    // reference is N³ per head, so its long case is shorter.
    let streamed = |kernel: Kernel, n: usize, causal: bool| {
        let (d, dv) = (64, 64);
        let (forward, refine) = flash_kernel::keys_per_dispatch(n, d, dv, causal, true);
        let ranges = |keys: usize| n.div_ceil(keys.max(1));
        let note = if kernel == Kernel::Flash {
            format!(
                "keys in {} dispatches on software adapters",
                ranges(forward)
            )
        } else {
            format!(
                "keys in {} + {} dispatches on software adapters",
                ranges(forward),
                ranges(refine)
            )
        };
        Case::new(
            kernel,
            att([1, 1, n, d], dv, causal, true, kernel == Kernel::Streaming),
            Some(note),
        )
    };
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Kernel::Flash,
            att(shape, dv, causal, masked, false),
            None,
        ));
    }
    out.push(streamed(Kernel::Flash, 1100, false));
    out.push(streamed(Kernel::Flash, 1100, true));

    // Messages and refinement of given maps. Over the cap: one message tile
    // per 3x3 map (refine then has three times as many rows), and one refine
    // workgroup per row of 8x8 maps.
    let map = |shape: [usize; 3], causal, masked, with_lambda| Input::Map {
        shape,
        causal,
        masked,
        with_lambda,
    };
    let maps: [([usize; 3], bool, bool); 5] = [
        ([1, 1, 1], false, false),
        ([2, 3, 3], false, true),
        ([2, 2, 33], true, true),
        ([1, 3, 65], false, false),
        ([1, 1, 256], false, false),
    ];
    for kernel in [Kernel::Messages, Kernel::Refine] {
        for &(shape, causal, masked) in &maps {
            out.push(Case::new(kernel, map(shape, causal, masked, true), None));
        }
    }
    let heads = over(2);
    let messages_at_cap = at_cap(
        Kernel::Messages,
        map([2, heads, 3], true, true, true),
        cap,
        "one tile per map",
        2 * heads as u64,
    );
    let heads = over(8);
    out.push(at_cap(
        Kernel::Refine,
        map([1, heads, 8], true, false, true),
        cap,
        "one workgroup per row",
        8 * heads as u64,
    ));
    let refine_at = out
        .iter()
        .position(|c| c.kernel == Kernel::Refine)
        .unwrap_or(out.len());
    out.insert(refine_at, messages_at_cap);

    // The fused output, then the materialized one, on the attention shapes;
    // the fused one also with its elementwise kernels over the cap (wide
    // values keep the row-wise kernels under it).
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Kernel::FusedOutput,
            att(shape, dv, causal, masked, true),
            None,
        ));
    }
    let heads = over(64);
    let elements = heads as u64 * 4 * 1024;
    out.push(at_cap(
        Kernel::FusedOutput,
        att([1, heads, 4, 2], 1024, false, true, true),
        cap,
        &format!("{} output values, 64 per workgroup", grouped(elements)),
        elements / 64,
    ));
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Kernel::Streaming,
            att(shape, dv, causal, masked, true),
            None,
        ));
    }
    out.push(streamed(Kernel::Streaming, 400, false));
    for &(shape, dv, causal, masked) in &shapes {
        out.push(Case::new(
            Kernel::MaterializedOutput,
            att(shape, dv, causal, masked, true),
            None,
        ));
    }

    // Metrics of given maps, with and without λ; then one workgroup per row over the cap.
    for (&(shape, causal, masked), lambda) in maps.iter().zip([false, true, false, true, true]) {
        out.push(Case::new(
            Kernel::Metrics,
            map(shape, causal, masked, lambda),
            None,
        ));
    }
    let heads = over(16);
    out.push(at_cap(
        Kernel::Metrics,
        map([4, heads, 4], true, true, true),
        cap,
        "one workgroup per row",
        16 * heads as u64,
    ));
    out
}

/// One output of a run, before it is compared.
struct Output {
    name: String,
    shape: Vec<usize>,
    got: Vec<f32>,
    want: Vec<f64>,
    tolerance: Tolerance,
}

impl Output {
    fn new(
        name: &str,
        shape: &[usize],
        got: Vec<f32>,
        want: Vec<f64>,
        tolerance: Tolerance,
    ) -> Output {
        Output {
            name: name.to_string(),
            shape: shape.to_vec(),
            got,
            want,
            tolerance,
        }
    }

    fn check(self) -> Result<Check> {
        let comparison = compare(&self.got, &self.want, self.tolerance)?;
        let worst_miss = match comparison.worst_index {
            Some(i) if !comparison.passed() => {
                Some((unravel(i, &self.shape), self.got[i], self.want[i]))
            }
            _ => None,
        };
        Ok(Check {
            name: self.name,
            shape: self.shape,
            tolerance: self.tolerance,
            comparison,
            worst_miss,
        })
    }
}

/// The multi-index of flat index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &d) in index.iter_mut().zip(shape).rev() {
        let d = d.max(1);
        *slot = i % d;
        i /= d;
    }
    index
}

/// GPU outputs with their references, and the time each side took.
struct Measured {
    outputs: Vec<Output>,
    time: Duration,
    reference_time: Duration,
}

/// `len` values uniform in `[lo, hi)`.
fn uniform(rng: &mut SplitMix64, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len)
        .map(|_| lo + (hi - lo) * (rng.uniform(-1.0, 1.0) + 1.0) / 2.0)
        .collect()
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

async fn run_matmul(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    a_shape: &[usize],
    b_shape: &[usize],
    opts: &MatmulOptions,
    variant: Option<MatmulVariant>,
    fault: Option<Fault>,
) -> Result<Measured> {
    let a = uniform(rng, numel(a_shape)?, -1.0, 1.0);
    let b = uniform(rng, numel(b_shape)?, -1.0, 1.0);
    let start = Instant::now();
    let ta = Tensor::from_slice(gpu, a_shape, &a)?;
    let tb = Tensor::from_slice(gpu, b_shape, &b)?;
    let c = match fault {
        Some(Fault::MatmulSkipsLastK) => {
            matmul_kernel::matmul_with(&matmul_kernel::MATMUL_SKIPS_LAST_K, gpu, &ta, &tb, opts)
                .await?
        }
        None => match variant {
            Some(v) => matmul_variant(gpu, &ta, &tb, opts, v).await?,
            None => matmul(gpu, &ta, &tb, opts).await?,
        },
    };
    let got = c.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::matmul(&a, a_shape, &b, b_shape, opts)?;
    let reference_time = start.elapsed();
    let k = if opts.trans_a {
        a_shape[a_shape.len() - 2]
    } else {
        a_shape[a_shape.len() - 1]
    };
    Ok(Measured {
        outputs: vec![Output::new("C", c.shape(), got, want, Tolerance::matmul(k))],
        time,
        reference_time,
    })
}

async fn run_softmax(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    shape: &[usize],
    causal: bool,
    masked: bool,
    range: f32,
) -> Result<Measured> {
    let x = uniform(rng, numel(shape)?, -range, range);
    // The key mask is [B, C], B the first dimension; a matrix has one row of it.
    let batch = if shape.len() > 2 { shape[0] } else { 1 };
    let cols = shape[shape.len() - 1];
    let mask = key_mask(batch, cols);
    let start = Instant::now();
    let tx = Tensor::from_slice(gpu, shape, &x)?;
    let tm = Tensor::from_slice(gpu, &[batch, cols], &mask)?;
    let y = softmax(
        gpu,
        &tx,
        &SoftmaxOptions {
            causal,
            key_mask: masked.then_some(&tm),
        },
    )
    .await?;
    let got = y.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::softmax(&x, shape, causal, masked.then_some(&mask[..]))?;
    let reference_time = start.elapsed();
    Ok(Measured {
        outputs: vec![Output::new("P", shape, got, want, Tolerance::SPEC)],
        time,
        reference_time,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_attention(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    kernel: Kernel,
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    masked: bool,
    lambda: &[f32],
) -> Result<Measured> {
    let [b, h, n, d] = shape;
    let q = uniform(rng, b * h * n * d, -2.0, 2.0);
    let k = uniform(rng, b * h * n * d, -2.0, 2.0);
    let v = uniform(rng, b * h * n * dv, -1.0, 1.0);
    let mask = key_mask(b, n);
    let mode = match kernel {
        Kernel::FusedOutput => Mode::Fused,
        Kernel::MaterializedOutput => Mode::Materialized,
        Kernel::Flash => Mode::Flash,
        Kernel::Streaming => Mode::Streaming,
        _ => Mode::Plain,
    };
    let start = Instant::now();
    let tq = Tensor::from_slice(gpu, &shape, &q)?;
    let tk = Tensor::from_slice(gpu, &shape, &k)?;
    let tv = Tensor::from_slice(gpu, &[b, h, n, dv], &v)?;
    let tm = Tensor::from_slice(gpu, &[b, n], &mask)?;
    let opts = AttentionOptions {
        causal,
        key_mask: masked.then_some(&tm),
        lambda: if lambda.is_empty() {
            Lambda::default()
        } else {
            Lambda::PerHead(lambda.to_vec())
        },
        mode,
        return_attention: mode == Mode::Plain,
        return_refined: mode == Mode::Materialized,
        ..Default::default()
    };
    let out = attention(gpu, &tq, &tk, &tv, &opts).await?;
    let read = |t: Option<&Tensor>, what: &str| {
        t.cloned()
            .ok_or_else(|| Error::Internal(format!("attention returned no {what}")))
    };
    let o = out.output.to_vec(gpu).await?;
    let second = match mode {
        Mode::Plain => read(out.attention.as_ref(), "attention map")?,
        Mode::Fused | Mode::Streaming => read(out.multi_hop_mass.as_ref(), "multi-hop mass")?,
        Mode::Materialized => read(out.refined.as_ref(), "refined map")?,
        Mode::Flash => read(out.row_stats.as_ref(), "row stats")?,
    };
    let second_values = second.to_vec(gpu).await?;
    let stats = if mode.is_streaming() {
        read(out.row_stats.as_ref(), "row stats")?
            .to_vec(gpu)
            .await?
    } else {
        Vec::new()
    };
    let time = start.elapsed();

    let start = Instant::now();
    let ref_opts = RefOptions {
        causal,
        key_mask: masked.then_some(&mask),
        scale: None,
    };
    let o_shape = [b, h, n, dv];
    // Max, sum and entropy of each row, as three outputs so that a miss names its statistic.
    let row_stats = |want: Vec<f64>| {
        ["max", "sum", "entropy"]
            .into_iter()
            .enumerate()
            .map(|(c, name)| {
                let column = |x: &[f32]| x.iter().skip(c).step_by(3).copied().collect::<Vec<_>>();
                let want: Vec<f64> = want.iter().skip(c).step_by(3).copied().collect();
                Output::new(name, &[b, h, n], column(&stats), want, Tolerance::SPEC)
            })
            .collect::<Vec<_>>()
    };
    let outputs = if mode == Mode::Flash {
        let want = reference::attention(&q, &k, &v, shape, dv, &ref_opts)?;
        let mut outputs = vec![Output::new("O", &o_shape, o, want.output, Tolerance::SPEC)];
        outputs.extend(row_stats(reference::attention::row_stats(
            &q, &k, shape, &ref_opts,
        )?));
        outputs
    } else if mode == Mode::Plain {
        let want = reference::attention(&q, &k, &v, shape, dv, &ref_opts)?;
        vec![
            Output::new(
                "A",
                second.shape(),
                second_values,
                want.attention,
                Tolerance::SPEC,
            ),
            Output::new("O", &o_shape, o, want.output, Tolerance::SPEC),
        ]
    } else {
        let lambda64 = to_f64(lambda);
        let want = reference::saobp(&q, &k, &v, shape, dv, &ref_opts, &lambda64)?;
        let (name, reference) = if mode == Mode::Materialized {
            ("R", want.refined)
        } else {
            ("m", want.mass)
        };
        let mut outputs = vec![
            Output::new("O", &o_shape, o, want.output, Tolerance::SPEC),
            Output::new(
                name,
                second.shape(),
                second_values,
                reference,
                Tolerance::SPEC,
            ),
        ];
        if mode == Mode::Streaming {
            outputs.extend(row_stats(reference::attention::row_stats(
                &q, &k, shape, &ref_opts,
            )?));
        }
        outputs
    };
    Ok(Measured {
        outputs,
        time,
        reference_time: start.elapsed(),
    })
}

async fn run_map(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    kernel: Kernel,
    [b, h, n]: [usize; 3],
    causal: bool,
    masked: bool,
    lambda: &[f32],
) -> Result<Measured> {
    let map_shape = [b, h, n, n];
    let mask = key_mask(b, n);
    let scores = uniform(rng, b * h * n * n, -6.0, 6.0);
    let mask_ref = masked.then_some(&mask[..]);
    // Rows stochastic (or empty) as the kernels expect, then exactly the f32 the GPU sees.
    let p: Vec<f32> = reference::softmax(&scores, &map_shape, causal, mask_ref)?
        .iter()
        .map(|&x| x as f32)
        .collect();
    let p64 = to_f64(&p);
    let lambda64 = to_f64(lambda);
    let row_shape = [b, h, n];

    let start = Instant::now();
    let tp = Tensor::from_slice(gpu, &map_shape, &p)?;
    let tm = Tensor::from_slice(gpu, &[b, n], &mask)?;
    if kernel == Kernel::Metrics {
        let l = Lambda::PerHead(lambda.to_vec());
        let opts = MetricsOptions {
            causal,
            key_mask: masked.then_some(&tm),
            lambda: (!lambda.is_empty()).then_some(&l),
        };
        let got = metrics(gpu, &tp, &opts).await?;
        let rows = got.rows.to_vec(gpu).await?;
        let time = start.elapsed();

        let start = Instant::now();
        let mass = reference::saobp::multi_hop_mass(&reference::saobp::messages(&p64, n)?, n)?;
        let want = reference::metrics::row_metrics(
            &p64,
            &mass,
            (!lambda.is_empty()).then_some(&lambda64[..]),
            row_shape,
            causal,
            mask_ref,
        )?;
        let summaries = reference::metrics::summarize(&want, n)?;
        let reference_time = start.elapsed();
        let g = b * h * n;
        let mut outputs: Vec<Output> = METRIC_NAMES
            .iter()
            .enumerate()
            .map(|(k, name)| {
                // Distances sum up to N terms of size up to N.
                let tolerance = if *name == "distance" {
                    Tolerance::scaled_by(n)
                } else {
                    Tolerance::SPEC
                };
                Output::new(
                    name,
                    &row_shape,
                    rows[k * g..][..g].to_vec(),
                    want.iter().map(|r| r[k]).collect(),
                    tolerance,
                )
            })
            .collect();
        let got_summaries: Vec<f32> = got
            .heads
            .iter()
            .flat_map(|s| {
                s.fields()
                    .into_iter()
                    .map(|(_, x)| x as f32)
                    .chain([s.rows as f32])
            })
            .collect();
        // Means of row metrics, distance included: bounded like distance.
        outputs.push(Output::new(
            "summaries",
            &[b * h, METRIC_COUNT],
            got_summaries,
            summaries.concat(),
            Tolerance::scaled_by(n),
        ));
        return Ok(Measured {
            outputs,
            time,
            reference_time,
        });
    }

    let refined = refine_map(gpu, &tp, &Lambda::PerHead(lambda.to_vec())).await?;
    let outputs_gpu = if kernel == Kernel::Messages {
        vec![refined.messages.to_vec(gpu).await?]
    } else {
        vec![
            refined.mass.to_vec(gpu).await?,
            refined.refined.to_vec(gpu).await?,
        ]
    };
    let time = start.elapsed();
    let start = Instant::now();
    let messages = reference::saobp::messages(&p64, n)?;
    let outputs = if kernel == Kernel::Messages {
        let mut got = outputs_gpu.into_iter();
        vec![Output::new(
            "M",
            &map_shape,
            got.next().unwrap_or_default(),
            messages,
            Tolerance::SPEC,
        )]
    } else {
        let mass = reference::saobp::multi_hop_mass(&messages, n)?;
        let r = reference::saobp::refine(&p64, &messages, &mass, &lambda64, n)?;
        let mut got = outputs_gpu.into_iter();
        vec![
            Output::new(
                "m",
                &row_shape,
                got.next().unwrap_or_default(),
                mass,
                Tolerance::SPEC,
            ),
            Output::new(
                "R",
                &map_shape,
                got.next().unwrap_or_default(),
                r,
                Tolerance::SPEC,
            ),
        ]
    };
    Ok(Measured {
        outputs,
        time,
        reference_time: start.elapsed(),
    })
}

async fn measure(gpu: &Gpu, case: &Case, opts: &Options) -> Result<Measured> {
    let mut rng = SplitMix64::new(case.seed());
    match &case.input {
        Input::Matmul {
            a,
            b,
            opts: m,
            variant,
        } => {
            let fault = opts.fault.filter(|f| f.kernel() == case.kernel);
            run_matmul(gpu, &mut rng, a, b, m, *variant, fault).await
        }
        Input::Softmax {
            shape,
            causal,
            masked,
            range,
        } => run_softmax(gpu, &mut rng, shape, *causal, *masked, *range).await,
        Input::Attention {
            shape,
            dv,
            causal,
            masked,
            with_lambda,
        } => {
            let lambda = if *with_lambda {
                lambdas(shape[1])
            } else {
                Vec::new()
            };
            run_attention(
                gpu,
                &mut rng,
                case.kernel,
                *shape,
                *dv,
                *causal,
                *masked,
                &lambda,
            )
            .await
        }
        Input::Map {
            shape,
            causal,
            masked,
            with_lambda,
        } => {
            let lambda = if *with_lambda {
                lambdas(shape[1])
            } else {
                Vec::new()
            };
            run_map(
                gpu,
                &mut rng,
                case.kernel,
                *shape,
                *causal,
                *masked,
                &lambda,
            )
            .await
        }
        Input::TooLarge(reason) => Err(Error::invalid(reason)),
    }
}

/// Why a row failed, from its worst check.
fn failure(checks: &[Check]) -> Option<String> {
    let c = checks
        .iter()
        .filter(|c| !c.comparison.passed())
        .max_by(|a, b| a.comparison.worst.total_cmp(&b.comparison.worst))?;
    let over = format!(
        "{} of {} values over their bound",
        c.comparison.failures, c.comparison.len
    );
    Some(match &c.worst_miss {
        Some((index, got, want)) => {
            let index: Vec<String> = index.iter().map(|i| i.to_string()).collect();
            let times = if c.comparison.worst.is_finite() {
                format!("{:.1}x its bound", c.comparison.worst)
            } else {
                "not finite".to_string()
            };
            format!(
                "{}[{}] = {got}, want {want:.7} ({times}); {over}",
                c.name,
                index.join(",")
            )
        }
        None => format!("{}: {over}", c.name),
    })
}

/// Runs `case` on `gpu` and judges it.
pub async fn run_case(gpu: &Gpu, case: &Case, opts: &Options) -> Row {
    let mut row = Row {
        kernel: case.kernel,
        size: case.size.clone(),
        note: case.note.clone(),
        shaders: case
            .shaders(Some(gpu))
            .iter()
            .map(|k| format!("{}::{}", k.family, k.entry))
            .collect(),
        checks: Vec::new(),
        status: Status::Pass,
        time: Duration::ZERO,
        reference_time: Duration::ZERO,
    };
    let downlevel = gpu.wgpu_adapter().get_downlevel_capabilities().flags;
    if let Some(reason) = case.skip_reason_of(&case.shaders(Some(gpu)), gpu.limits(), downlevel) {
        row.status = Status::Skip(reason);
        return row;
    }
    // A variant the adapter lacks (no subgroups of 8, too few storage
    // textures, too small workgroups) is a skip that says why.
    if let Input::Matmul {
        variant: Some(v), ..
    } = &case.input
    {
        if let Err(e) = v.check(gpu) {
            row.status = Status::Skip(e.to_string());
            return row;
        }
        let at_cap = case
            .note
            .as_deref()
            .is_some_and(|n| n.contains("max_compute_workgroups_per_dimension"));
        if at_cap && v.family() == MatmulFamily::Tiled && gpu.adapter().is_software() {
            row.status = Status::Skip(
                "the tiled family is for hardware GPUs, which the default choice gives it: a \
                 software adapter takes minutes over 65,536+ workgroups of 256 invocations"
                    .to_string(),
            );
            return row;
        }
    }
    let measured = match measure(gpu, case, opts).await {
        Ok(m) => m,
        // The library refuses sizes over a limit before any GPU work.
        Err(e @ Error::Limit { .. }) => {
            row.status = Status::Skip(e.to_string());
            return row;
        }
        Err(e) => {
            row.status = Status::Fail(format!("error: {e}"));
            return row;
        }
    };
    row.time = measured.time;
    row.reference_time = measured.reference_time;
    for output in measured.outputs {
        match output.check() {
            Ok(check) => row.checks.push(check),
            Err(e) => {
                row.status = Status::Fail(format!("error: {e}"));
                return row;
            }
        }
    }
    if let Some(reason) = failure(&row.checks) {
        row.status = Status::Fail(reason);
    }
    row
}

/// Runs the matrix (or the kernels `opts` selects) on `gpu`, calling
/// `on_row` as each row is done.
pub async fn run(gpu: &Gpu, opts: &Options, mut on_row: impl FnMut(&Row)) -> AdapterReport {
    let mut rows = Vec::new();
    for case in cases(gpu.limits()) {
        if !opts.selects(case.kernel) {
            continue;
        }
        let row = run_case(gpu, &case, opts).await;
        on_row(&row);
        rows.push(row);
    }
    let adapter = gpu.wgpu_adapter();
    AdapterReport {
        adapter: gpu.adapter().clone(),
        limits: gpu.limits().clone(),
        features: adapter.features(),
        downlevel: adapter.get_downlevel_capabilities(),
        rows,
    }
}

/// Blocking form of [`run`].
pub fn run_blocking(gpu: &Gpu, opts: &Options, on_row: impl FnMut(&Row)) -> AdapterReport {
    pollster::block_on(run(gpu, opts, on_row))
}
