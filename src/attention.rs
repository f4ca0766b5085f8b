//! The pipeline a reader follows top to bottom:
//! scores → softmax → (messages → refine | fused output) → output → metrics.
//!
//! Everything is recorded into one submission; only the per-head summaries
//! are downloaded, never an N×N map unless the caller asks for it. The
//! streaming modes ([`Mode::Flash`], [`Mode::Streaming`]) go another way:
//! two passes over the keys per query block, with no N×N buffer at all.

use crate::error::Result;
use crate::gpu::{Gpu, Step};
use crate::kernels::attention::{map_steps_via, AttentionShape};
use crate::kernels::flash;
use crate::kernels::matmul::{self, MatmulOptions};
use crate::kernels::metrics::{MapMetrics, Metric, MetricsJob, METRIC_COUNT};
use crate::kernels::saobp::{self, Lambda};
use crate::tensor::Tensor;

/// How the refined output is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// No refinement: `O = A·V`.
    Plain,
    /// SAOBP in O(N²D): `O` from `A·V`, `A·U` and row statistics; `M` is never formed.
    #[default]
    Fused,
    /// SAOBP with `M` explicit (N³ per head): `R = (A + λM)/(1 + λm)`, `O = R·V`.
    Materialized,
    /// No refinement, streamed (flash attention): `O = A·V` with an online
    /// softmax over the keys, never storing `A`. Memory is O(N·D).
    Flash,
    /// SAOBP in O(N²D) and O(N·D) memory: a flash pass for `A·V` and the row
    /// statistics, then a second streamed pass for `A·U`, `c` and `m`.
    Streaming,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 5] = [
        Mode::Plain,
        Mode::Fused,
        Mode::Materialized,
        Mode::Flash,
        Mode::Streaming,
    ];

    /// The mode's name, as the command line and [`str::parse`] spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Fused => "fused",
            Mode::Materialized => "materialized",
            Mode::Flash => "flash",
            Mode::Streaming => "streaming",
        }
    }

    /// True for the modes that never store an N×N map.
    pub fn is_streaming(self) -> bool {
        matches!(self, Mode::Flash | Mode::Streaming)
    }

    /// True for the modes that refine `A` by SAOBP.
    pub fn is_refined(self) -> bool {
        !matches!(self, Mode::Plain | Mode::Flash)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                crate::Error::invalid(format!(
                    "unknown mode `{s}`: expected plain, fused, materialized, flash or streaming"
                ))
            })
    }
}

/// How far [`AttentionOptions::metrics`] measures the refined map `R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefinedMetrics {
    /// Every metric of `R` from its entries ([`Metrics::refined`]). In fused
    /// mode that forms `M` on the side: N³ work per head.
    #[default]
    Full,
    /// Only what the multi-hop mass gives: the GTD of `R` at λ per row
    /// ([`Metrics::refined_gtd`]); [`Metrics::refined`] is `None`. Fused mode
    /// then stays O(N²D) with metrics.
    FromMass,
}

/// Options of [`attention`].
#[derive(Debug, Clone, Default)]
pub struct AttentionOptions<'a> {
    /// Query `i` only attends to keys `j <= i`.
    pub causal: bool,
    /// `[B, N]`: 1 = the key may be attended, 0 = padding.
    pub key_mask: Option<&'a Tensor>,
    /// Score scale; `None` means `1/sqrt(D)`. Must be finite and positive.
    pub scale: Option<f32>,
    /// SAOBP strength, finite and >= 0; ignored in [`Mode::Plain`] and
    /// [`Mode::Flash`].
    pub lambda: Lambda,
    /// Plain, fused, materialized, flash or streaming.
    pub mode: Mode,
    /// Return the attention map `A` `[B, H, N, N]` (not in the streaming modes).
    pub return_attention: bool,
    /// Return the refined map `R` `[B, H, N, N]` (not in [`Mode::Plain`] nor
    /// the streaming modes). In fused mode this forms `M` once, on the side,
    /// for `R` alone.
    pub return_refined: bool,
    /// Compute row metrics and per-head summaries of `A` (and of `R` unless
    /// plain). Metrics of `R` need its entries, so in fused mode they form `M`
    /// on the side as `return_refined` does (N³ per head) unless
    /// `refined_metrics` is [`RefinedMetrics::FromMass`]; the output itself
    /// stays O(N²D).
    /// Not in the streaming modes, which report
    /// [`AttentionOutput::row_stats`] instead.
    pub metrics: bool,
    /// With `metrics` in a refined mode: every metric of `R` (the default),
    /// or only its GTD, which needs no `M` in fused mode.
    pub refined_metrics: RefinedMetrics,
}

/// Metrics of [`attention`]: of `A`, and of `R` when refined.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Metrics of the attention map; GTD at λ = 1.
    pub attention: MapMetrics,
    /// Metrics of the refined map; GTD at the λ used. `None` in plain mode
    /// and with [`RefinedMetrics::FromMass`].
    pub refined: Option<MapMetrics>,
    /// GTD of `R` at the λ used, per row `[B, H, N]`: `λ m_i / (1 + λ m_i)`.
    /// In every refined mode, with either [`RefinedMetrics`].
    pub refined_gtd: Option<Tensor>,
}

/// The result of [`attention`].
#[derive(Debug, Clone)]
pub struct AttentionOutput {
    /// `O` `[B, H, N, Dv]`: `R·V`, or `A·V` in plain mode.
    pub output: Tensor,
    /// `A` when asked for.
    pub attention: Option<Tensor>,
    /// `R` when asked for (not in plain mode).
    pub refined: Option<Tensor>,
    /// Multi-hop mass `m` `[B, H, N]`, whenever it was computed (any refined
    /// mode, or metrics).
    pub multi_hop_mass: Option<Tensor>,
    /// Row metrics and summaries when asked for.
    pub metrics: Option<Metrics>,
    /// Statistics of each row of `A` `[B, H, N, 3]`, from the streaming modes:
    /// the largest valid score `max_j S_ij`, the softmax denominator
    /// `Σ_j exp(S_ij − max)` and the entropy `H_i` of the row (nats). A row
    /// with no valid key has all three 0.
    pub row_stats: Option<Tensor>,
}

/// Attention of `q`, `k`, `v` (`[B, H, N, D]`; `v` may have another last
/// dimension), refined by SAOBP unless the mode is plain, exactly as in the
/// spec. λ = 0 gives plain attention in every mode.
///
/// ```no_run
/// # fn main() -> saobp::Result<()> {
/// use saobp::{attention_blocking, AttentionOptions, Gpu, Lambda, Mode, Tensor};
/// let gpu = Gpu::from_env_blocking()?;
/// let x: Vec<f32> = (0..2 * 16 * 8).map(|i| (i as f32 * 0.61).cos()).collect();
/// let q = Tensor::from_slice(&gpu, &[1, 2, 16, 8], &x)?;
/// let opts = AttentionOptions { lambda: Lambda::Scalar(0.5), mode: Mode::Fused, metrics: true, ..Default::default() };
/// let out = attention_blocking(&gpu, &q, &q, &q, &opts)?;
/// let m = out.metrics.unwrap();
/// println!("entropy of A {:.3}, of R {:.3}", m.attention.heads[0].entropy, m.refined.unwrap().heads[0].entropy);
/// # Ok(()) }
/// ```
///
/// When the `[B, H, N, N]` maps exceed the adapter's storage-binding limit
/// (128 MiB on lavapipe and in browsers by default), the work runs in chunks
/// of heads whose maps fit, one after another, and the outputs, `m` and the
/// metrics are gathered into whole tensors. Returning `A` or `R` still needs
/// them to fit in one binding.
pub async fn attention(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
) -> Result<AttentionOutput> {
    let shape = AttentionShape::check(
        q.shape(),
        k.shape(),
        v.shape(),
        opts.key_mask.map(Tensor::shape),
        opts.scale,
    )?;
    // Checked once here: the chunked path's copies carry no upload record.
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        t.check_finite(name)?;
    }
    if let Some(m) = opts.key_mask {
        m.check_finite("key_mask")?;
    }
    if opts.mode.is_streaming() {
        return attention_streaming(gpu, &shape, q, k, v, opts).await;
    }
    let map_bytes = |heads: usize| (heads * shape.n * shape.n * 4) as u64;
    let limit = gpu
        .limits()
        .max_storage_buffer_binding_size
        .min(gpu.limits().max_buffer_size);
    let fits = map_bytes(shape.batch * shape.heads) <= limit;
    if fits || opts.return_attention || opts.return_refined {
        return attention_whole(gpu, &shape, q, k, v, opts).await;
    }
    let per_chunk = (limit / map_bytes(1).max(1)) as usize;
    if per_chunk == 0 {
        return Err(crate::Error::Limit {
            what: format!("one {0}×{0} attention map", shape.n),
            needed: map_bytes(1),
            limit_name: "max_storage_buffer_binding_size",
            limit,
        });
    }
    attention_chunked(gpu, q, k, v, opts, &shape, per_chunk.min(shape.heads)).await
}

/// [`attention`] over chunks of at most `per_chunk` heads of one batch item.
async fn attention_chunked(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
    shape: &AttentionShape,
    per_chunk: usize,
) -> Result<AttentionOutput> {
    let (bs, hs, n, d, dv) = (shape.batch, shape.heads, shape.n, shape.d, shape.dv);
    let lambda = opts.lambda.per_head(hs)?;
    let output = Tensor::scratch(gpu, &shape.output_shape())?;
    let mass_needed = opts.mode != Mode::Plain || opts.metrics;
    let mass = mass_needed
        .then(|| Tensor::scratch(gpu, &shape.row_shape()))
        .transpose()?;
    let rows_shape = [METRIC_COUNT, bs, hs, n];
    let metric_rows = if opts.metrics {
        Some((
            Tensor::scratch(gpu, &rows_shape)?,
            full_refined_metrics(opts)
                .then(|| Tensor::scratch(gpu, &rows_shape))
                .transpose()?,
        ))
    } else {
        None
    };
    let refined_gtd = (opts.metrics && opts.mode != Mode::Plain)
        .then(|| Tensor::scratch(gpu, &shape.row_shape()))
        .transpose()?;
    let mut heads_a = Vec::new();
    let mut heads_r = Vec::new();
    for b in 0..bs {
        for h0 in (0..hs).step_by(per_chunk) {
            let hc = per_chunk.min(hs - h0);
            let first = b * hs + h0;
            let cq = Tensor::scratch(gpu, &[1, hc, n, d])?;
            let ck = Tensor::scratch(gpu, &[1, hc, n, d])?;
            let cv = Tensor::scratch(gpu, &[1, hc, n, dv])?;
            let cm = opts
                .key_mask
                .map(|_| Tensor::scratch(gpu, &[1, n]))
                .transpose()?;
            let mut steps = vec![
                q.copy_to(first * n * d, &cq, 0, hc * n * d),
                k.copy_to(first * n * d, &ck, 0, hc * n * d),
                v.copy_to(first * n * dv, &cv, 0, hc * n * dv),
            ];
            if let (Some(m), Some(cm)) = (opts.key_mask, &cm) {
                steps.push(m.copy_to(b * n, cm, 0, n));
            }
            gpu.run(&steps).await?;
            drop(steps);
            let chunk_opts = AttentionOptions {
                key_mask: cm.as_ref(),
                lambda: Lambda::PerHead(lambda[h0..h0 + hc].to_vec()),
                ..opts.clone()
            };
            let chunk_shape = AttentionShape {
                batch: 1,
                heads: hc,
                ..*shape
            };
            let out = attention_whole(gpu, &chunk_shape, &cq, &ck, &cv, &chunk_opts).await?;
            let mut steps = vec![out.output.copy_to(0, &output, first * n * dv, hc * n * dv)];
            if let (Some(all), Some(part)) = (&mass, &out.multi_hop_mass) {
                steps.push(part.copy_to(0, all, first * n, hc * n));
            }
            if let (Some((rows_a, rows_r)), Some(m)) = (&metric_rows, &out.metrics) {
                let (rows, total) = (hc * n, bs * hs * n);
                steps.extend(gather_rows(
                    &m.attention.rows,
                    rows_a,
                    first * n,
                    rows,
                    total,
                ));
                if let (Some(rows_r), Some(r)) = (rows_r, &m.refined) {
                    steps.extend(gather_rows(&r.rows, rows_r, first * n, rows, total));
                }
                if let (Some(all), Some(part)) = (&refined_gtd, &m.refined_gtd) {
                    steps.push(part.copy_to(0, all, first * n, rows));
                }
                heads_a.extend(m.attention.heads.iter().copied());
                if let Some(r) = &m.refined {
                    heads_r.extend(r.heads.iter().copied());
                }
            }
            gpu.run(&steps).await?;
        }
    }
    let metrics = metric_rows.map(|(rows_a, rows_r)| Metrics {
        attention: MapMetrics {
            rows: rows_a,
            heads: heads_a,
            num_heads: hs,
        },
        refined: rows_r.map(|rows| MapMetrics {
            rows,
            heads: heads_r,
            num_heads: hs,
        }),
        refined_gtd,
    });
    Ok(AttentionOutput {
        output,
        attention: None,
        refined: None,
        multi_hop_mass: mass,
        metrics,
        row_stats: None,
    })
}

/// Steps copying a chunk's row metrics (`[METRIC_COUNT, rows]`) into the
/// whole tensor (`[METRIC_COUNT, total]`) from row `first` on.
fn gather_rows<'a>(
    part: &'a Tensor,
    all: &'a Tensor,
    first: usize,
    rows: usize,
    total: usize,
) -> impl Iterator<Item = Step<'a>> {
    Metric::ALL.into_iter().map(move |metric| {
        part.copy_to(
            metric.range(rows).start,
            all,
            metric.range(total).start + first,
            rows,
        )
    })
}

/// True when the metrics of `R` come from its entries ([`RefinedMetrics::Full`]).
fn full_refined_metrics(opts: &AttentionOptions<'_>) -> bool {
    opts.metrics && opts.mode != Mode::Plain && opts.refined_metrics == RefinedMetrics::Full
}

/// [`attention`] in one piece: every map fits in one storage binding.
/// `shape` is `q`, `k`, `v`'s, already checked by [`attention`].
async fn attention_whole(
    gpu: &Gpu,
    shape: &AttentionShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
) -> Result<AttentionOutput> {
    let lambda_values = shape_lambda(shape, opts)?;
    let matrices = shape.batch * shape.heads;
    let plan = saobp::plan(matrices, shape.heads, shape.n, shape.dv)?;
    let refined_mode = opts.mode != Mode::Plain;
    let full_metrics_r = full_refined_metrics(opts);
    // R is formed in materialized mode, and on the side when asked for.
    let form_r = opts.mode == Mode::Materialized
        || (refined_mode && (opts.return_refined || full_metrics_r));
    // The fused output keeps its own row stats; plain metrics need them for m.
    let need_stats = opts.mode == Mode::Plain && opts.metrics;

    // Allocate everything first: the steps borrow it.
    let a = Tensor::scratch(gpu, &shape.map_shape())?;
    let output = Tensor::scratch(gpu, &shape.output_shape())?;
    let lambda = Tensor::from_slice(gpu, &[shape.heads], &lambda_values)?;
    let rows = shape.row_shape();
    let stats = need_stats
        .then(|| Tensor::scratch(gpu, &[matrices * shape.n, 3]))
        .transpose()?;
    let mass = Tensor::scratch(gpu, &rows)?;
    // In fused mode the m from `refine` is a by-product; the formula's m is reported.
    let side_mass = (form_r && opts.mode == Mode::Fused)
        .then(|| Tensor::scratch(gpu, &rows))
        .transpose()?;
    let (messages, refined) = if form_r {
        (
            Some(Tensor::scratch(gpu, &shape.map_shape())?),
            Some(Tensor::scratch(gpu, &shape.map_shape())?),
        )
    } else {
        (None, None)
    };
    let fused = (opts.mode == Mode::Fused)
        .then(|| saobp::FusedIntermediates::new(gpu, shape.output_shape()))
        .transpose()?;
    let has_mask = opts.key_mask.is_some();
    let metrics_a = opts
        .metrics
        .then(|| MetricsJob::new(gpu, rows, opts.causal, has_mask, false))
        .transpose()?;
    let metrics_r = full_metrics_r
        .then(|| MetricsJob::new(gpu, rows, opts.causal, has_mask, true))
        .transpose()?;
    // R's GTD needs only m: the row metrics of A with λ_h in place of 1 give
    // λ_h m / (1 + λ_h m) in their GTD row, in O(N²) per head.
    let gtd_of_a = (opts.metrics && refined_mode && !full_metrics_r)
        .then(|| MetricsJob::new(gpu, rows, opts.causal, has_mask, true))
        .transpose()?;
    let refined_gtd = (opts.metrics && refined_mode)
        .then(|| Tensor::scratch(gpu, &rows))
        .transpose()?;

    // Where the products read `A` copied into a texture as stored, the
    // softmax writes it there itself; into `a` as well only when something
    // else reads it.
    let plain = MatmulOptions::default();
    let av_plan = matmul::plan(a.shape(), v.shape(), &plain)?;
    let map = match (&fused, opts.mode) {
        (Some(fused), _) => fused.map_texture(gpu, &a, v)?,
        (None, Mode::Plain) => matmul::map_texture(gpu, &[(&av_plan, v)], &a)?,
        _ => None,
    };
    let store = opts.return_attention || opts.metrics || form_r;
    let (mut steps, map) =
        map_steps_via(gpu, shape, q, k, opts.causal, opts.key_mask, &a, map, store)?;
    if let Some(stats) = &stats {
        steps.push(saobp::diag_stats(gpu, &plan, &a, stats)?);
        steps.push(saobp::mass(&plan, &a, stats, &mass));
    }
    if let (Some(messages), Some(refined)) = (&messages, &refined) {
        let m_out = side_mass.as_ref().unwrap_or(&mass);
        steps.extend(saobp::messages(gpu, &plan, &a, messages)?);
        steps.push(saobp::refine(&plan, &a, messages, &lambda, refined, m_out));
    }
    match opts.mode {
        // `attention` sends these to `attention_streaming` before any map exists.
        Mode::Flash | Mode::Streaming => {}
        Mode::Plain => match map {
            Some(mut m) => steps.extend(matmul::steps_sharing_a(
                gpu,
                &av_plan,
                &a,
                v,
                &output,
                &mut m.shared,
            )?),
            None => steps.extend(matmul::steps(gpu, &av_plan, &a, v, &output)?),
        },
        Mode::Materialized => {
            let r = refined.as_ref().unwrap_or(&a);
            let p = matmul::plan(r.shape(), v.shape(), &plain)?;
            steps.extend(matmul::steps(gpu, &p, r, v, &output)?);
        }
        Mode::Fused => {
            // The fused output computes m itself, from one more column of A·U.
            if let Some(fused) = &fused {
                steps.extend(
                    fused.output_steps(gpu, &plan, &a, v, map, &lambda, &mass, &output, None)?,
                );
            }
        }
    }
    if let Some(job) = &metrics_a {
        steps.extend(job.steps(gpu, &a, opts.key_mask, &mass, None));
    }
    if let (Some(job), Some(r)) = (&metrics_r, &refined) {
        steps.extend(job.steps(gpu, r, opts.key_mask, &mass, Some(&lambda)));
    }
    if let Some(job) = &gtd_of_a {
        // Its summaries would mix A's entropy with R's GTD: only the rows are made.
        let [row_metrics, _summaries] = job.steps(gpu, &a, opts.key_mask, &mass, Some(&lambda));
        steps.push(row_metrics);
    }
    let gtd_rows = metrics_r
        .as_ref()
        .or(gtd_of_a.as_ref())
        .map(|job| &job.rows);
    if let (Some(from), Some(to)) = (gtd_rows, &refined_gtd) {
        let total = to.len();
        steps.push(from.copy_to(Metric::Gtd.range(total).start, to, 0, total));
    }
    gpu.run(&steps).await?;
    drop(steps);

    let metrics = match metrics_a {
        Some(job) => Some(Metrics {
            attention: job.finish(gpu).await?,
            refined: match metrics_r {
                Some(job) => Some(job.finish(gpu).await?),
                None => None,
            },
            refined_gtd,
        }),
        None => None,
    };
    let mass_computed = refined_mode || opts.metrics;
    Ok(AttentionOutput {
        output,
        attention: opts.return_attention.then_some(a),
        refined: if opts.return_refined { refined } else { None },
        multi_hop_mass: mass_computed.then_some(mass),
        metrics,
        row_stats: None,
    })
}

/// [`attention`] in [`Mode::Flash`] or [`Mode::Streaming`]: every buffer is
/// O(N·D), so there are never chunks of heads.
async fn attention_streaming(
    gpu: &Gpu,
    shape: &AttentionShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
) -> Result<AttentionOutput> {
    let mode = opts.mode;
    let refused = [
        (opts.return_attention, "return_attention", "plain or fused"),
        (
            opts.return_refined,
            "return_refined",
            "fused or materialized",
        ),
        (opts.metrics, "metrics", "plain or fused"),
    ];
    if let Some((_, what, instead)) = refused.iter().find(|(asked, _, _)| *asked) {
        return Err(crate::Error::invalid(format!(
            "{mode:?} mode never forms an N×N map, so it cannot give `{what}`; use the {instead} \
             mode (it reports row_stats instead of metrics)"
        )));
    }
    let lambda_values = opts.lambda.per_head(shape.heads)?;
    let plan = flash::plan(gpu, shape, opts.causal, opts.key_mask.is_some())?;
    let rows = shape.batch * shape.heads * shape.n;
    let y = Tensor::scratch(gpu, &shape.output_shape())?;
    let row_stats = Tensor::scratch(gpu, &[shape.batch, shape.heads, shape.n, 3])?;
    let keys = Tensor::scratch(gpu, &[rows, 4])?;
    let (mut steps, operands) =
        flash::forward(gpu, &plan, q, k, v, opts.key_mask, &y, &row_stats, &keys);
    if mode == Mode::Flash {
        gpu.run(&steps).await?;
        drop(steps);
        return Ok(AttentionOutput {
            output: y,
            attention: None,
            refined: None,
            multi_hop_mass: None,
            metrics: None,
            row_stats: Some(row_stats),
        });
    }
    let wide = [shape.batch, shape.heads, shape.n, shape.dv + 1];
    let u = Tensor::scratch(gpu, &wide)?;
    let au = Tensor::scratch(gpu, &wide)?;
    let stats = Tensor::scratch(gpu, &[rows, 3])?;
    let mass = Tensor::scratch(gpu, &shape.row_shape())?;
    let output = Tensor::scratch(gpu, &shape.output_shape())?;
    let lambda = Tensor::from_slice(gpu, &[shape.heads], &lambda_values)?;
    let out_plan = saobp::plan(shape.batch * shape.heads, shape.heads, shape.n, shape.dv)?
        .with_width(shape.dv + 1)?;
    steps.push(flash::values(&plan, &y, v, &keys, &u));
    steps.extend(flash::refine(gpu, &plan, &operands, &u, &keys, &au, &stats));
    steps.push(saobp::fused_output(
        &out_plan, &y, v, &au, &stats, &mass, &lambda, &output, None,
    )?);
    gpu.run(&steps).await?;
    drop(steps);
    Ok(AttentionOutput {
        output,
        attention: None,
        refined: None,
        multi_hop_mass: Some(mass),
        metrics: None,
        row_stats: Some(row_stats),
    })
}

/// λ per head, validated; all zeros in plain mode (where it is not read).
fn shape_lambda(shape: &AttentionShape, opts: &AttentionOptions<'_>) -> Result<Vec<f32>> {
    let values = opts.lambda.per_head(shape.heads)?;
    Ok(if opts.mode == Mode::Plain {
        vec![0.0; shape.heads]
    } else {
        values
    })
}

/// Blocking form of [`attention`].
#[cfg(not(target_arch = "wasm32"))]
pub fn attention_blocking(
    gpu: &Gpu,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions<'_>,
) -> Result<AttentionOutput> {
    pollster::block_on(attention(gpu, q, k, v, opts))
}
