//! Conformance: every kernel, at a fixed matrix of sizes, on one adapter,
//! against the float64 reference.
//!
//! The matrix ([`cases`]) covers each public call — matmul (each variant),
//! softmax, attention in every mode, SAOBP messages and refinement, metrics,
//! and for training the backward of the softmax, the matmul, plain attention
//! and SAOBP's output, the GPT's per-token ops (LayerNorm, bias + GELU,
//! embeddings, cross-entropy) both ways, and AdamW — at small odd sizes
//! (N = 1, 7, 33, 65; D = 1; several batch items and heads; causal and
//! key-padded), a mid size (N = 256, D = 64; GPT-2's width 768), and sizes
//! at the adapter's dispatch limit: grids of more workgroups than
//! `max_compute_workgroups_per_dimension`, which the library splits over x
//! and y. Each case runs through the public API, is compared element by
//! element with [`crate::reference`](mod@crate::reference) under the spec's
//! tolerance ([`Tolerance`](crate::reference::Tolerance)), and becomes one
//! [`Row`]: pass, fail, or skip with its reason. A case the adapter cannot
//! run (a buffer over its binding size, an entry point needing more storage
//! buffers or workgroup memory than it offers, no compute shaders at all) is
//! a skip that names the limit; nothing is left out silently.
//!
//! By job, one file each: `catalogue` (the cases), `runners` (each case
//! through the public API and its reference; the training kernels' in
//! `training`), `report` (rows and counts), `limits` (the adapter facts a
//! report prints), and here the subjects and the judging.
//!
//! `saobp conformance` prints this for every adapter; `tests/conformance.rs`
//! runs the same matrix on the adapters present.

mod catalogue;
mod limits;
mod report;
mod runners;
mod training;

pub use catalogue::{cases, Case};
pub use limits::{downlevel_names, feature_names, relevant_limits};
pub use report::{AdapterReport, Check, Counts, Row, Status};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::matmul::MatmulFamily;

use catalogue::Input;
use runners::measure;

/// What a row of the matrix tests: one public call of the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// [`crate::matmul()`], with transposes and broadcast batches: the
    /// variant it chooses for the adapter and size.
    Matmul,
    /// [`crate::matmul_variant()`] with [`crate::MatmulVariant::Buffer`], on the
    /// [`Subject::Matmul`] sizes.
    MatmulBuffer,
    /// [`crate::matmul_variant()`] with each [`crate::MatmulVariant::Tiled`] tile.
    MatmulTiled,
    /// [`crate::matmul_variant()`] with each [`crate::MatmulVariant::Texture`]
    /// layout, with and without subgroups.
    MatmulTexture,
    /// The GPT's products with their elementwise epilogue fused into the
    /// store (bias + residual, bias + GELU, bias + split into q, k, v
    /// heads), by each [`crate::MatmulVariant::Texture`] layout that copies
    /// its operands.
    MatmulEpilogue,
    /// [`crate::softmax()`], causal and key-masked.
    Softmax,
    /// [`crate::attention()`] in [`crate::Mode::Plain`]: the map `A` and `O = A·V`.
    Attention,
    /// [`crate::attention()`] in [`crate::Mode::Flash`]: `O = A·V` and the row
    /// statistics, nothing N×N.
    Flash,
    /// The two-hop messages `M` of [`crate::refine_map`].
    Messages,
    /// The multi-hop mass `m` and refined map `R` of [`crate::refine_map`].
    Refine,
    /// [`crate::attention()`] in [`crate::Mode::Fused`]: `O` and `m` in O(N²D).
    FusedOutput,
    /// [`crate::attention()`] in [`crate::Mode::Streaming`]: `O`, `m` and the row
    /// statistics in O(N²D) time and O(N·D) memory.
    Streaming,
    /// [`crate::attention()`] in [`crate::Mode::Materialized`]: `O` and `R` with `M` explicit.
    MaterializedOutput,
    /// [`crate::metrics()`]: every row metric and the per-head summaries.
    Metrics,
    /// [`crate::softmax_backward()`], causal and key-masked: `∂L/∂S` from `A`
    /// and `∂L/∂A`.
    SoftmaxBackward,
    /// [`crate::matmul_backward()`], with transposes and a `B` shared by a
    /// batch (a linear layer): `∂L/∂A` and `∂L/∂B`.
    MatmulBackward,
    /// [`crate::attention_backward()`], causal and key-masked, the map
    /// recomputed or given: `∂L/∂q`, `∂L/∂k` and `∂L/∂v`.
    AttentionBackward,
    /// [`crate::saobp_output_backward()`]: `∂L/∂A`, `∂L/∂V` and `∂L/∂λ`, with
    /// λ = 0 and λ > 0.
    SaobpOutputBackward,
    /// The GPT's per-head outputs written by the kernels that form them
    /// straight into token rows: SAOBP's refined output `O` (its heads side
    /// by side) and `∂L/∂V` (the third part of `∂L/∂qkv`).
    MergedOutputs,
    /// [`crate::kernels::gpt::layer_norm()`]: the output and each row's mean and `1/σ`.
    LayerNorm,
    /// [`crate::kernels::gpt::layer_norm_backward()`]: `∂L/∂x`, `∂L/∂γ` and `∂L/∂β`.
    LayerNormBackward,
    /// [`crate::kernels::gpt::bias_gelu()`]: `gelu(x + b)`, tanh form.
    BiasGelu,
    /// [`crate::kernels::gpt::bias_gelu_backward()`]: `∂L/∂x` and `∂L/∂b`.
    BiasGeluBackward,
    /// [`crate::kernels::gpt::embed()`]: token plus position embeddings.
    Embed,
    /// [`crate::kernels::gpt::embed_backward()`]: the scatter-add into
    /// `∂L/∂wte` and `∂L/∂wpe`.
    EmbedBackward,
    /// [`crate::kernels::gpt::cross_entropy()`]: the mean loss, each row's
    /// loss and `∂loss/∂logits`.
    CrossEntropy,
    /// [`crate::AdamW`]: a few steps over tensors of every group, with and
    /// without clipping, each step's gradient accumulated from two
    /// micro-batches ([`crate::kernels::optim::accumulate`]): the
    /// parameters, both moments and the gradient norm.
    AdamW,
}

impl Subject {
    /// Every kernel, in report order.
    pub const ALL: [Subject; 27] = [
        Subject::Matmul,
        Subject::MatmulBuffer,
        Subject::MatmulTiled,
        Subject::MatmulTexture,
        Subject::MatmulEpilogue,
        Subject::Softmax,
        Subject::Attention,
        Subject::Flash,
        Subject::Messages,
        Subject::Refine,
        Subject::FusedOutput,
        Subject::Streaming,
        Subject::MaterializedOutput,
        Subject::Metrics,
        Subject::SoftmaxBackward,
        Subject::MatmulBackward,
        Subject::AttentionBackward,
        Subject::SaobpOutputBackward,
        Subject::MergedOutputs,
        Subject::LayerNorm,
        Subject::LayerNormBackward,
        Subject::BiasGelu,
        Subject::BiasGeluBackward,
        Subject::Embed,
        Subject::EmbedBackward,
        Subject::CrossEntropy,
        Subject::AdamW,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Matmul => "matmul",
            Subject::MatmulBuffer => "matmul_buffer",
            Subject::MatmulTiled => "matmul_tiled",
            Subject::MatmulTexture => "matmul_texture",
            Subject::MatmulEpilogue => "matmul_epilogue",
            Subject::Flash => "flash",
            Subject::Streaming => "streaming",
            Subject::Softmax => "softmax",
            Subject::Attention => "attention",
            Subject::Messages => "messages",
            Subject::Refine => "refine",
            Subject::FusedOutput => "fused_output",
            Subject::MaterializedOutput => "materialized_output",
            Subject::Metrics => "metrics",
            Subject::SoftmaxBackward => "softmax_backward",
            Subject::MatmulBackward => "matmul_backward",
            Subject::AttentionBackward => "attention_backward",
            Subject::SaobpOutputBackward => "saobp_output_backward",
            Subject::MergedOutputs => "merged_outputs",
            Subject::LayerNorm => "layer_norm",
            Subject::LayerNormBackward => "layer_norm_backward",
            Subject::BiasGelu => "bias_gelu",
            Subject::BiasGeluBackward => "bias_gelu_backward",
            Subject::Embed => "embed",
            Subject::EmbedBackward => "embed_backward",
            Subject::CrossEntropy => "cross_entropy",
            Subject::AdamW => "adamw",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Subject {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let want = s.trim().to_ascii_lowercase().replace('-', "_");
        Subject::ALL
            .into_iter()
            .find(|k| k.name() == want)
            .ok_or_else(|| {
                let names: Vec<_> = Subject::ALL.iter().map(|k| k.name()).collect();
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
    pub fn subject(self) -> Subject {
        match self {
            Fault::MatmulSkipsLastK => Subject::Matmul,
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
    pub kernels: Vec<Subject>,
    /// Run a deliberately wrong kernel variant (see [`Fault`]).
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

impl Options {
    /// Whether `kernel` is among those to run.
    pub fn selects(&self, subject: Subject) -> bool {
        self.kernels.is_empty() || self.kernels.contains(&subject)
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
        subject: case.subject,
        size: case.size.clone(),
        note: case.note.clone(),
        shaders: Vec::new(),
        checks: Vec::new(),
        status: Status::Pass,
        time: Duration::ZERO,
        reference_time: Duration::ZERO,
    };
    let downlevel = gpu.downlevel().flags;
    if let Some(reason) = case.skip_reason(gpu.limits(), downlevel) {
        row.status = Status::Skip(reason);
        return row;
    }
    // A variant the adapter lacks (no subgroups of 8, too few storage
    // textures, too small workgroups) is a skip that says why.
    let variant = match &case.input {
        Input::Matmul {
            variant: Some(v), ..
        }
        | Input::MatmulEpilogue(catalogue::FusedCase { variant: v, .. }) => Some(v),
        _ => None,
    };
    if let Some(v) = variant {
        if let Err(e) = v.check(gpu) {
            row.status = Status::Skip(e.to_string());
            return row;
        }
        if case.at_cap && v.family() == MatmulFamily::Tiled && gpu.adapter().is_software() {
            row.status = Status::Skip(
                "the tiled family is for hardware GPUs, which the default choice gives it: a \
                 software adapter takes minutes over 65,536+ workgroups of 256 invocations"
                    .to_string(),
            );
            return row;
        }
    }
    // A case of one row layout forces it for its run only.
    let layout = match (case.rows, crate::kernels::rows::forced_layout(gpu)) {
        (Some(rows), Ok(before)) => {
            crate::kernels::rows::set_row_layout(gpu, Some(rows));
            Some(before)
        }
        (Some(_), Err(e)) => {
            row.status = Status::Fail(format!("error: {e}"));
            return row;
        }
        (None, _) => None,
    };
    // The entry points the case dispatches are what the library really ran.
    let before = gpu.work();
    let measured = measure(gpu, case, opts).await;
    if let Some(before) = layout {
        crate::kernels::rows::set_row_layout(gpu, before);
    }
    row.shaders = gpu
        .work()
        .since(&before)
        .kernels
        .into_iter()
        .map(|(label, _)| label)
        .collect();
    let measured = match measured {
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
        if !opts.selects(case.subject) {
            continue;
        }
        let row = run_case(gpu, &case, opts).await;
        on_row(&row);
        rows.push(row);
    }
    AdapterReport {
        adapter: gpu.adapter().clone(),
        limits: gpu.limits().clone(),
        features: gpu
            .wgpu_adapter()
            .map_or_else(|| gpu.device().features(), wgpu::Adapter::features),
        downlevel: gpu.downlevel(),
        rows,
    }
}

/// Blocking form of [`run`].
pub fn run_blocking(gpu: &Gpu, opts: &Options, on_row: impl FnMut(&Row)) -> AdapterReport {
    pollster::block_on(run(gpu, opts, on_row))
}

/// Blocking form of [`run_case`].
pub fn run_case_blocking(gpu: &Gpu, case: &Case, opts: &Options) -> Row {
    pollster::block_on(run_case(gpu, case, opts))
}
