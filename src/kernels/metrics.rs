//! Attention metrics per row (entropy, normalized entropy, sparsity, peak,
//! distance, multi-hop mass, GTD) and their per-head means, on the GPU.
//!
//! Shader: `shaders/metrics.wgsl`. Reference: [`crate::reference::metrics`](mod@crate::reference::metrics).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, Step};
use crate::kernels::saobp::{self, Lambda};
use crate::kernels::to_u32;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("metrics.wgsl");

kernels! {
    "metrics" in SOURCE, params MetricsParams, workgroup 64 {
        /// Every metric of every row of a map, one workgroup per row.
        ROW_METRICS = "row_metrics" (rm_p, rm_mask, rm_mass, rm_lambda, rm_rows);
        /// The per-head means of the row metrics.
        SUMMARIZE = "summarize" (sm_rows, sm_out);
    }
}

/// Rows of the per-row metrics tensor `[METRIC_COUNT, B, H, N]`, in order.
pub const METRIC_NAMES: [&str; 8] = [
    "entropy",
    "normalized_entropy",
    "sparsity",
    "peak",
    "distance",
    "multi_hop_mass",
    "gtd",
    "weight",
];

/// Number of rows in the per-row metrics tensor.
pub const METRIC_COUNT: usize = METRIC_NAMES.len();

/// One row metric: a row of the per-row metrics tensor
/// `[METRIC_COUNT, B, H, N]` ([`MapMetrics::rows`]) and a column of the
/// `[B·H, METRIC_COUNT]` summaries, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Row entropy `H_i` (nats).
    Entropy,
    /// `H_i / ln n_i`, 0 when `n_i ≤ 1`.
    NormalizedEntropy,
    /// `1 − exp(H_i)/n_i`.
    Sparsity,
    /// Largest weight of the row.
    Peak,
    /// `Σ_j P_ij |i − j|`.
    Distance,
    /// Multi-hop mass `m_i` (from `A`).
    MultiHopMass,
    /// Global Token Dependency `λ m_i / (1 + λ m_i)` (`λ = 1` for `A`).
    Gtd,
    /// 1 when the row counts in summaries (query not padded, `n_i ≥ 1`),
    /// else 0. Its summary column is the number of rows counted.
    Weight,
}

impl Metric {
    /// Every metric, in the tensor's order.
    pub const ALL: [Metric; METRIC_COUNT] = [
        Metric::Entropy,
        Metric::NormalizedEntropy,
        Metric::Sparsity,
        Metric::Peak,
        Metric::Distance,
        Metric::MultiHopMass,
        Metric::Gtd,
        Metric::Weight,
    ];

    /// Position of the metric in the tensor (its row) and in a summary (its column).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric's name, as in [`METRIC_NAMES`] and the JSON reports.
    pub fn name(self) -> &'static str {
        METRIC_NAMES[self.index()]
    }

    /// Where this metric's values lie in a flattened `[METRIC_COUNT, rows]`
    /// tensor of `rows` rows per metric.
    pub fn range(self, rows: usize) -> std::ops::Range<usize> {
        self.index() * rows..(self.index() + 1) * rows
    }
}

/// Mirrors `Params` in `shaders/metrics.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MetricsParams {
    matrices: u32,
    n: u32,
    heads: u32,
    causal: u32,
    has_mask: u32,
    use_lambda: u32,
    _pad: [u32; 2],
}

/// The means of one head's row metrics over its counted rows (query not
/// padded, at least one valid key), as the spec's summaries define them.
///
/// Serializes (serde) to an object with one field per metric and `rows`,
/// the one JSON shape every output of the library and its tools uses.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct HeadSummary {
    /// Mean row entropy (nats).
    pub entropy: f64,
    /// Mean entropy divided by `ln n_i`.
    pub normalized_entropy: f64,
    /// Mean `1 − exp(H)/n_i`.
    pub sparsity: f64,
    /// Mean largest weight.
    pub peak: f64,
    /// Mean `Σ_j P_ij |i − j|`.
    pub distance: f64,
    /// Mean multi-hop mass `m` (from `A`).
    pub multi_hop_mass: f64,
    /// Mean Global Token Dependency (`λ=1` for `A`, `λ_h` for `R`).
    pub gtd: f64,
    /// Number of rows averaged.
    pub rows: u32,
}

impl HeadSummary {
    /// Decodes one `METRIC_COUNT`-wide row of the downloaded summaries.
    fn from_row(v: &[f32]) -> Self {
        let at = |m: Metric| f64::from(v[m.index()]);
        HeadSummary {
            entropy: at(Metric::Entropy),
            normalized_entropy: at(Metric::NormalizedEntropy),
            sparsity: at(Metric::Sparsity),
            peak: at(Metric::Peak),
            distance: at(Metric::Distance),
            multi_hop_mass: at(Metric::MultiHopMass),
            gtd: at(Metric::Gtd),
            rows: v[Metric::Weight.index()].round() as u32,
        }
    }

    /// The metrics as `(name, value)` pairs, in [`METRIC_NAMES`] order (without `weight`).
    pub fn fields(&self) -> [(&'static str, f64); 7] {
        [
            (Metric::Entropy.name(), self.entropy),
            (Metric::NormalizedEntropy.name(), self.normalized_entropy),
            (Metric::Sparsity.name(), self.sparsity),
            (Metric::Peak.name(), self.peak),
            (Metric::Distance.name(), self.distance),
            (Metric::MultiHopMass.name(), self.multi_hop_mass),
            (Metric::Gtd.name(), self.gtd),
        ]
    }

    /// The mean of `items` that have at least one row (all zeros if none has).
    pub fn mean<'a>(items: impl IntoIterator<Item = &'a HeadSummary>) -> HeadSummary {
        let counted: Vec<&HeadSummary> = items.into_iter().filter(|s| s.rows > 0).collect();
        if counted.is_empty() {
            return HeadSummary::default();
        }
        let k = counted.len() as f64;
        let avg = |f: fn(&HeadSummary) -> f64| counted.iter().map(|s| f(s)).sum::<f64>() / k;
        HeadSummary {
            entropy: avg(|s| s.entropy),
            normalized_entropy: avg(|s| s.normalized_entropy),
            sparsity: avg(|s| s.sparsity),
            peak: avg(|s| s.peak),
            distance: avg(|s| s.distance),
            multi_hop_mass: avg(|s| s.multi_hop_mass),
            gtd: avg(|s| s.gtd),
            rows: counted.iter().map(|s| s.rows).sum(),
        }
    }
}

/// Metrics of one attention map (`A` or `R`).
#[derive(Debug, Clone)]
pub struct MapMetrics {
    /// Per-row metrics `[METRIC_COUNT, B, H, N]`, rows in [`METRIC_NAMES`] order.
    pub rows: Tensor,
    /// Per-head summaries, `B·H` of them, batch-major.
    pub heads: Vec<HeadSummary>,
    /// Heads per batch item.
    pub num_heads: usize,
}

impl MapMetrics {
    /// Summary of head `h` of batch item `b`.
    pub fn head(&self, b: usize, h: usize) -> Option<&HeadSummary> {
        self.heads
            .get(b * self.num_heads + h)
            .filter(|_| h < self.num_heads)
    }

    /// Mean over the heads of batch item `b`.
    pub fn batch(&self, b: usize) -> HeadSummary {
        HeadSummary::mean(
            self.heads
                .iter()
                .skip(b * self.num_heads)
                .take(self.num_heads),
        )
    }

    /// Mean over batch items of their means over heads.
    pub fn overall(&self) -> HeadSummary {
        let items = self.heads.len() / self.num_heads.max(1);
        let per_batch: Vec<HeadSummary> = (0..items).map(|b| self.batch(b)).collect();
        HeadSummary::mean(&per_batch)
    }

    /// The per-row values of `metric`, `[B, H, N]` flattened, downloaded
    /// from [`MapMetrics::rows`].
    pub async fn row(&self, gpu: &Gpu, metric: Metric) -> Result<Vec<f32>> {
        // Only that metric's rows come back, not all eight.
        let per = self.rows.len() / METRIC_COUNT;
        self.rows.to_vec_range(gpu, metric.range(per)).await
    }

    /// Blocking form of [`MapMetrics::row`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn row_blocking(&self, gpu: &Gpu, metric: Metric) -> Result<Vec<f32>> {
        pollster::block_on(self.row(gpu, metric))
    }
}

/// Statistics of each row of `A`, decoded from the `[B, H, N, 3]` tensor the
/// streaming modes return ([`crate::AttentionOutput::row_stats`]) or from the
/// reference's [`row_stats`](crate::reference::attention::row_stats) (`T = f64`).
/// A row with no valid key has all three 0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowStats<T = f32> {
    /// The largest valid score of each row, `max_j S_ij`.
    pub max: Vec<T>,
    /// The softmax denominator of each row, `Σ_j exp(S_ij − max)`.
    pub sum: Vec<T>,
    /// The entropy `H_i` of each row of `A` (nats).
    pub entropy: Vec<T>,
}

impl<T: Copy> RowStats<T> {
    /// Values per row in the interleaved layout: max, sum, entropy.
    pub const COLUMNS: usize = 3;

    /// Decodes the interleaved layout (`[rows, 3]`: max, sum, entropy).
    pub fn from_interleaved(values: &[T]) -> Result<RowStats<T>> {
        if !values.len().is_multiple_of(Self::COLUMNS) {
            return Err(Error::shape(format!(
                "row statistics hold {} values, not a multiple of {}",
                values.len(),
                Self::COLUMNS
            )));
        }
        let column = |c: usize| {
            values
                .iter()
                .skip(c)
                .step_by(Self::COLUMNS)
                .copied()
                .collect()
        };
        Ok(RowStats {
            max: column(0),
            sum: column(1),
            entropy: column(2),
        })
    }

    /// The columns with their names, in the interleaved order.
    pub fn columns(&self) -> [(&'static str, &[T]); 3] {
        [
            ("max", &self.max),
            ("sum", &self.sum),
            ("entropy", &self.entropy),
        ]
    }
}

impl RowStats<f32> {
    /// Downloads and decodes a row-statistics tensor (`[B, H, N, 3]`).
    pub async fn read(gpu: &Gpu, stats: &Tensor) -> Result<RowStats> {
        if stats.shape().last() != Some(&Self::COLUMNS) {
            return Err(Error::shape(format!(
                "row statistics have shape {:?}, expected [B, H, N, 3]",
                stats.shape()
            )));
        }
        RowStats::from_interleaved(&stats.to_vec(gpu).await?)
    }

    /// Blocking form of [`RowStats::read`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(gpu: &Gpu, stats: &Tensor) -> Result<RowStats> {
        pollster::block_on(RowStats::read(gpu, stats))
    }
}

/// Tensors and parameters of one metrics computation, allocated up front so
/// that its steps can join a larger submission.
pub(crate) struct MetricsJob {
    params: MetricsParams,
    pub rows: Tensor,
    pub summary: Tensor,
    heads: usize,
}

impl MetricsJob {
    pub(crate) fn new(
        gpu: &Gpu,
        shape: [usize; 3],
        causal: bool,
        has_mask: bool,
        use_lambda: bool,
    ) -> Result<MetricsJob> {
        let [b, h, n] = shape;
        let params = MetricsParams {
            matrices: to_u32("matrices", b * h)?,
            n: to_u32("N", n)?,
            heads: to_u32("heads", h.max(1))?,
            causal: causal.into(),
            has_mask: has_mask.into(),
            use_lambda: use_lambda.into(),
            _pad: [0; 2],
        };
        Ok(MetricsJob {
            params,
            rows: Tensor::scratch(gpu, &[METRIC_COUNT, b, h, n])?,
            summary: Tensor::scratch(gpu, &[b * h, METRIC_COUNT])?,
            heads: h,
        })
    }

    /// Row metrics of `p` then the per-head summaries. `lambda` is read only
    /// when the job uses λ; `mask` may be the placeholder.
    pub(crate) fn steps<'a>(
        &'a self,
        gpu: &'a Gpu,
        p: &'a Tensor,
        mask: Option<&'a Tensor>,
        mass: &'a Tensor,
        lambda: Option<&'a Tensor>,
    ) -> [Step<'a>; 2] {
        let placeholder = gpu.placeholder();
        let rows = u64::from(self.params.matrices) * u64::from(self.params.n);
        [
            Dispatch::new(&ROW_METRICS, &self.params, rows)
                .bind("rm_p", p)
                .bind("rm_mask", mask.map_or(placeholder, Tensor::buffer))
                .bind("rm_mass", mass)
                .bind("rm_lambda", lambda.map_or(placeholder, Tensor::buffer))
                .bind("rm_rows", &self.rows)
                .step(),
            Dispatch::new(&SUMMARIZE, &self.params, u64::from(self.params.matrices))
                .bind("sm_rows", &self.rows)
                .bind("sm_out", &self.summary)
                .step(),
        ]
    }

    /// Downloads the `B·H × 8` summary (never the N×N map).
    pub(crate) async fn finish(self, gpu: &Gpu) -> Result<MapMetrics> {
        let values = self.summary.to_vec(gpu).await?;
        Ok(MapMetrics {
            heads: values
                .chunks(METRIC_COUNT)
                .map(HeadSummary::from_row)
                .collect(),
            rows: self.rows,
            num_heads: self.heads,
        })
    }
}

/// Options of [`metrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsOptions<'a> {
    /// The map was computed with a causal mask (sets `n_i`).
    pub causal: bool,
    /// `[B, N]` key mask the map was computed with (sets `n_i` and which
    /// query rows count in summaries).
    pub key_mask: Option<&'a Tensor>,
    /// GTD at these λ; `None` means λ = 1, as the spec reports a plain map.
    pub lambda: Option<&'a Lambda>,
}

/// Row metrics and per-head summaries of any attention map `p` (`[B, H, N, N]`).
/// The multi-hop mass is that of `p` itself, computed in O(N²) without `M`.
pub async fn metrics(gpu: &Gpu, p: &Tensor, opts: &MetricsOptions<'_>) -> Result<MapMetrics> {
    metrics_of(gpu, p, p, opts).await
}

/// The metrics of a refined map `r = SAOBP(a, λ)` as the spec defines them:
/// `r`'s own entropy, sparsity, peak and distance, with the multi-hop mass
/// `m` of `a` (the mass SAOBP moved) and the GTD at λ, `λm/(1+λm)`, both in
/// [`MapMetrics::rows`] and in the summaries. [`metrics`] of `r` alone would
/// report `r`'s own two-hop mass instead, which the spec does not define as
/// R's. `opts.lambda` should be the λ `r` was refined with (`None` is λ = 1).
///
/// Fails as [`metrics`] does, and with [`Error::Shape`] when `a` and `r`
/// differ in shape. One pass: `a`'s mass, then `r`'s row metrics with it.
pub async fn refined_metrics(
    gpu: &Gpu,
    a: &Tensor,
    r: &Tensor,
    opts: &MetricsOptions<'_>,
) -> Result<MapMetrics> {
    if a.shape() != r.shape() {
        return Err(Error::shape(format!(
            "the refined map has shape {:?}, its attention map {:?}",
            r.shape(),
            a.shape()
        )));
    }
    metrics_of(gpu, r, a, opts).await
}

/// Blocking form of [`refined_metrics`].
#[cfg(not(target_arch = "wasm32"))]
pub fn refined_metrics_blocking(
    gpu: &Gpu,
    a: &Tensor,
    r: &Tensor,
    opts: &MetricsOptions<'_>,
) -> Result<MapMetrics> {
    pollster::block_on(refined_metrics(gpu, a, r, opts))
}

/// The row metrics of `p`, with the multi-hop mass (and so the GTD) of
/// `mass_of`, which has `p`'s shape.
async fn metrics_of(
    gpu: &Gpu,
    p: &Tensor,
    mass_of: &Tensor,
    opts: &MetricsOptions<'_>,
) -> Result<MapMetrics> {
    let (b, h, n) = saobp::check_map(p.shape())?;
    p.check_finite("p")?;
    if !std::ptr::eq(p, mass_of) {
        mass_of.check_finite("a")?;
    }
    if let Some(m) = opts.key_mask {
        m.check_finite("key_mask")?;
        if m.shape() != [b, n] {
            return Err(Error::shape(format!(
                "key mask has shape {:?}, expected [B, N] = [{b}, {n}]",
                m.shape()
            )));
        }
    }
    let lambda = opts
        .lambda
        .map(|l| {
            l.per_head(h)
                .and_then(|v| Tensor::from_slice(gpu, &[h], &v))
        })
        .transpose()?;
    let plan = saobp::plan(b * h, h, n, 1)?;
    let stats = Tensor::scratch(gpu, &[b * h * n, 3])?;
    let mass = Tensor::scratch(gpu, &[b, h, n])?;
    let job = MetricsJob::new(
        gpu,
        [b, h, n],
        opts.causal,
        opts.key_mask.is_some(),
        lambda.is_some(),
    )?;
    let mut steps = vec![
        saobp::diag_stats(gpu, &plan, mass_of, &stats)?,
        saobp::mass(&plan, mass_of, &stats, &mass),
    ];
    steps.extend(job.steps(gpu, p, opts.key_mask, &mass, lambda.as_ref()));
    gpu.run(&steps).await?;
    drop(steps);
    job.finish(gpu).await
}

/// Blocking form of [`metrics`].
#[cfg(not(target_arch = "wasm32"))]
pub fn metrics_blocking(gpu: &Gpu, p: &Tensor, opts: &MetricsOptions<'_>) -> Result<MapMetrics> {
    pollster::block_on(metrics(gpu, p, opts))
}
