//! The GPU work of each function, on host buffers only, so that it runs
//! detached from the interpreter: upload, run the library, download.

use saobp::{
    attention_blocking, metrics_blocking, refine_map_blocking, refined_metrics_blocking,
    AttentionOptions, Gpu, HeadSummary, Lambda, MapMetrics, Metric, MetricsOptions, Mode,
    RefinedMetrics, Result, Tensor,
};

use crate::convert::Host;

fn upload(gpu: &Gpu, h: &Host) -> Result<Tensor> {
    Tensor::from_slice(gpu, &h.shape, &h.data)
}

fn download(gpu: &Gpu, t: &Tensor) -> Result<Host> {
    Ok(Host::new(t.to_vec_blocking(gpu)?, t.shape().to_vec()))
}

/// Row metrics and summaries of one map, downloaded.
pub struct MapResult {
    /// One `[B, H, N]` array per metric, in the library's order.
    pub rows: Vec<(&'static str, Host)>,
    /// `B·H` summaries, batch-major.
    pub heads: Vec<HeadSummary>,
    /// Heads per batch item.
    pub num_heads: usize,
    /// Mean over heads, per batch item.
    pub batch: Vec<HeadSummary>,
    /// Mean over batch items.
    pub overall: HeadSummary,
}

fn map_result(gpu: &Gpu, m: &MapMetrics) -> Result<MapResult> {
    // One download of all metrics' rows, then split: `[METRIC_COUNT, B, H, N]`.
    let all = m.rows.to_vec_blocking(gpu)?;
    let row_shape = m.rows.shape()[1..].to_vec();
    let per = all.len() / Metric::ALL.len();
    let rows = Metric::ALL
        .iter()
        .map(|&metric| {
            let values = all[metric.range(per)].to_vec();
            (metric.name(), Host::new(values, row_shape.clone()))
        })
        .collect();
    let items = m.heads.len() / m.num_heads.max(1);
    Ok(MapResult {
        rows,
        heads: m.heads.clone(),
        num_heads: m.num_heads,
        batch: (0..items).map(|b| m.batch(b)).collect(),
        overall: m.overall(),
    })
}

/// The inputs of `saobp.attention`.
pub struct AttentionJob {
    pub q: Host,
    pub k: Host,
    pub v: Host,
    pub key_mask: Option<Host>,
    pub lambda: Lambda,
    pub causal: bool,
    pub mode: Mode,
    pub scale: Option<f32>,
    pub metrics: bool,
    pub refined_metrics: RefinedMetrics,
    pub return_attention: bool,
    pub return_refined: bool,
}

/// What `saobp.attention` returns, on the host.
pub struct AttentionResult {
    pub output: Host,
    pub attention: Option<Host>,
    pub refined: Option<Host>,
    pub mass: Option<Host>,
    pub row_stats: Option<Host>,
    pub metrics_attention: Option<MapResult>,
    pub metrics_refined: Option<MapResult>,
    pub refined_gtd: Option<Host>,
}

pub fn attention(gpu: &Gpu, job: AttentionJob) -> Result<AttentionResult> {
    let q = upload(gpu, &job.q)?;
    let k = upload(gpu, &job.k)?;
    let v = upload(gpu, &job.v)?;
    let mask = job.key_mask.as_ref().map(|m| upload(gpu, m)).transpose()?;
    let opts = AttentionOptions {
        causal: job.causal,
        key_mask: mask.as_ref(),
        scale: job.scale,
        lambda: job.lambda,
        mode: job.mode,
        return_attention: job.return_attention,
        return_refined: job.return_refined,
        metrics: job.metrics,
        refined_metrics: job.refined_metrics,
    };
    let out = attention_blocking(gpu, &q, &k, &v, &opts)?;
    let get = |t: &Option<Tensor>| t.as_ref().map(|t| download(gpu, t)).transpose();
    let (metrics_attention, metrics_refined, refined_gtd) = match &out.metrics {
        Some(m) => (
            Some(map_result(gpu, &m.attention)?),
            m.refined.as_ref().map(|r| map_result(gpu, r)).transpose()?,
            get(&m.refined_gtd)?,
        ),
        None => (None, None, None),
    };
    Ok(AttentionResult {
        output: download(gpu, &out.output)?,
        attention: get(&out.attention)?,
        refined: get(&out.refined)?,
        mass: get(&out.multi_hop_mass)?,
        row_stats: get(&out.row_stats)?,
        metrics_attention,
        metrics_refined,
        refined_gtd,
    })
}

/// What `saobp.refine_map` returns, on the host, in the library's
/// `[B, H, N, N]` and `[B, H, N]` shapes.
pub struct RefineResult {
    pub refined: Host,
    pub mass: Host,
    pub messages: Option<Host>,
    /// λ per head, as validated by the library.
    pub lambda: Vec<f32>,
}

pub fn refine_map(gpu: &Gpu, a: &Host, lambda: &Lambda, messages: bool) -> Result<RefineResult> {
    let heads = a.shape.get(1).copied().unwrap_or(1);
    let per_head = lambda.per_head(heads)?;
    let a = upload(gpu, a)?;
    let out = refine_map_blocking(gpu, &a, lambda)?;
    Ok(RefineResult {
        refined: download(gpu, &out.refined)?,
        mass: download(gpu, &out.mass)?,
        messages: messages.then(|| download(gpu, &out.messages)).transpose()?,
        lambda: per_head,
    })
}

pub fn metrics(
    gpu: &Gpu,
    p: &Host,
    causal: bool,
    key_mask: Option<&Host>,
    lambda: Option<&Lambda>,
) -> Result<MapResult> {
    let p = upload(gpu, p)?;
    let mask = key_mask.map(|m| upload(gpu, m)).transpose()?;
    let opts = MetricsOptions {
        causal,
        key_mask: mask.as_ref(),
        lambda,
    };
    let m = metrics_blocking(gpu, &p, &opts)?;
    map_result(gpu, &m)
}

/// The metrics of `r`, refined from `a`, as the spec defines them: `r`'s
/// own, with `a`'s multi-hop mass and GTD.
pub fn refined_metrics(
    gpu: &Gpu,
    a: &Host,
    r: &Host,
    causal: bool,
    key_mask: Option<&Host>,
    lambda: Option<&Lambda>,
) -> Result<MapResult> {
    let a = upload(gpu, a)?;
    let r = upload(gpu, r)?;
    let mask = key_mask.map(|m| upload(gpu, m)).transpose()?;
    let opts = MetricsOptions {
        causal,
        key_mask: mask.as_ref(),
        lambda,
    };
    let m = refined_metrics_blocking(gpu, &a, &r, &opts)?;
    map_result(gpu, &m)
}
