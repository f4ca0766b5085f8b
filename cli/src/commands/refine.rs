//! `saobp refine`: attention and SAOBP on tensors from a safetensors file.
//!
//! Input: `q`, `k`, `v` f32 `[B, H, N, D]`; optional `key_mask` `[B, N]` (f32,
//! u8 or bool, 1 keep / 0 masked) and `lambda` f32 `[H]` (overrides `--lambda`).
//! Everything is validated before any GPU work, and the output files appear
//! whole or not at all.

use std::path::PathBuf;

use saobp::io::parse_refine_input;
use saobp::{
    attention_blocking, AttentionOptions, AttentionShape, Gpu, HeadSummary, Lambda, Metric, Mode,
    RefinedMetrics, RowStats, Tensor,
};
use serde::Serialize;
use serde_json::Value;

use super::progress::Spinner;
use super::{adapter_json, write_all_or_nothing, CliResult, F32Tensor, GpuArgs, HeadReport};

/// What each output costs, for `saobp refine --help`.
const COSTS: &str = "\
Outputs and their cost per head, N tokens of width D:
  out, entropy      every mode, O(N²D); materialized: O(N³), as it forms M
  m, gtd            fused and materialized (streaming: m), O(N²D) with out
  row_stats         flash and streaming, O(N²D) time and O(N·D) memory
  entropy_refined   only with --json or --refined-metrics, like the summaries
                    of R in the JSON: they need R's entries, so fused mode
                    forms M on the side, O(N³)
  attn, refined     materialized, O(N²) memory each";

#[derive(clap::Args)]
#[command(after_help = COSTS)]
pub struct RefineArgs {
    /// Input safetensors file with `q`, `k`, `v` (and optionally `key_mask`, `lambda`).
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
    /// SAOBP strength for every head (finite, >= 0); a `lambda` tensor in the input overrides it.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    lambda: f32,
    /// Causal masking: query i attends to keys j <= i.
    #[arg(long)]
    causal: bool,
    /// Score scale (finite, > 0); default 1/sqrt(D).
    #[arg(long, allow_negative_numbers = true)]
    scale: Option<f32>,
    /// How the output is computed (costs below). The streaming modes write
    /// row_stats instead of metrics, and take no --json.
    #[arg(long, value_enum, default_value_t = ModeArg::Fused)]
    mode: ModeArg,
    /// Write per-head summaries of A and R as JSON to this file (implies
    /// --refined-metrics).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write `entropy_refined`, the row entropy of R. R's entries cost
    /// O(N³) per head in fused mode (M is formed on the side).
    #[arg(long)]
    refined_metrics: bool,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// [`Mode`] on the command line (the library itself depends on no argument
/// parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// No refinement: O = A·V.
    Plain,
    /// SAOBP in O(N²D): M is never formed.
    Fused,
    /// SAOBP with M explicit (N³ per head).
    Materialized,
    /// No refinement, streamed (flash attention): O(N·D) memory.
    Flash,
    /// SAOBP in O(N²D) time and O(N·D) memory, streamed in two passes.
    Streaming,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Plain => Mode::Plain,
            ModeArg::Fused => Mode::Fused,
            ModeArg::Materialized => Mode::Materialized,
            ModeArg::Flash => Mode::Flash,
            ModeArg::Streaming => Mode::Streaming,
        }
    }
}

/// Refuses option combinations the mode cannot serve, before any work.
fn check_mode(args: &RefineArgs) -> CliResult {
    let mode = Mode::from(args.mode);
    if mode.is_streaming() && args.json.is_some() {
        return Err(format!(
            "--json needs per-head metrics, which the {mode} mode does not compute; use plain or fused"
        ));
    }
    if args.refined_metrics && (mode.is_streaming() || !mode.is_refined()) {
        return Err(format!(
            "--refined-metrics needs the entries of R, which the {mode} mode does not form; \
             use fused or materialized"
        ));
    }
    Ok(())
}

pub fn run(args: &RefineArgs) -> CliResult {
    check_mode(args)?;
    let mode = Mode::from(args.mode);
    let bytes = std::fs::read(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let input = parse_refine_input(&bytes).map_err(|e| format!("{}: {e}", args.input.display()))?;
    let mask_shape = input
        .key_mask
        .as_ref()
        .map(|_| [input.q_shape[0], input.q_shape[2]]);
    let shape = AttentionShape::check(
        &input.q_shape,
        &input.q_shape,
        &input.v_shape,
        mask_shape.as_ref().map(|s| &s[..]),
        args.scale,
    )
    .map_err(|e| e.to_string())?;
    let lambda = match &input.lambda {
        Some(l) => Lambda::PerHead(l.clone()),
        None => Lambda::Scalar(args.lambda),
    };
    let lambda_values = lambda.per_head(shape.heads).map_err(|e| e.to_string())?;

    let gpu = args.gpu.open()?;
    // Shown only when the work takes more than a moment, on a terminal.
    let spinner = Spinner::start(format!("{mode} attention on {:?}", input.q_shape));
    let upload = |shape: &[usize], data: &[f32]| {
        Tensor::from_slice(&gpu, shape, data).map_err(|e| e.to_string())
    };
    let q = upload(&input.q_shape, &input.q)?;
    let k = upload(&input.q_shape, &input.k)?;
    let v = upload(&input.v_shape, &input.v)?;
    let mask = match (&input.key_mask, mask_shape) {
        (Some(m), Some(s)) => Some(upload(&s, m)?),
        _ => None,
    };
    let opts = AttentionOptions {
        causal: args.causal,
        key_mask: mask.as_ref(),
        scale: args.scale,
        lambda,
        mode,
        return_attention: mode == Mode::Materialized,
        return_refined: mode == Mode::Materialized,
        // The streaming modes keep no map to measure; they report row_stats.
        metrics: !mode.is_streaming(),
        // R's own entries (N³ in fused mode) only when an output needs them.
        refined_metrics: if args.refined_metrics || args.json.is_some() {
            RefinedMetrics::Full
        } else {
            RefinedMetrics::FromMass
        },
    };
    let out = attention_blocking(&gpu, &q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let e = |e: saobp::Error| e.to_string();
    let download = |t: &Tensor| t.to_vec_blocking(&gpu).map_err(e);
    let row_stats = out.row_stats.as_ref().map(download).transpose()?;
    let rows = shape.row_shape();
    let entropy = match (&out.metrics, &row_stats) {
        (Some(m), _) => m.attention.row_blocking(&gpu, Metric::Entropy).map_err(e)?,
        (None, Some(stats)) => RowStats::from_interleaved(stats).map_err(e)?.entropy,
        (None, None) => return Err("metrics were not computed".into()),
    };

    let mut tensors: Vec<(String, F32Tensor)> = vec![
        (
            "out".into(),
            F32Tensor::new(&shape.output_shape(), &download(&out.output)?),
        ),
        ("entropy".into(), F32Tensor::new(&rows, &entropy)),
    ];
    let gtd = out.metrics.as_ref().and_then(|m| m.refined_gtd.as_ref());
    if let (Some(gtd), Some(m)) = (gtd, &out.multi_hop_mass) {
        tensors.push(("m".into(), F32Tensor::new(&rows, &download(m)?)));
        tensors.push(("gtd".into(), F32Tensor::new(&rows, &download(gtd)?)));
    }
    if let Some(refined) = out.metrics.as_ref().and_then(|m| m.refined.as_ref()) {
        let entropy_r = refined.row_blocking(&gpu, Metric::Entropy).map_err(e)?;
        tensors.push(("entropy_refined".into(), F32Tensor::new(&rows, &entropy_r)));
    }
    if let (Mode::Streaming, Some(m)) = (mode, &out.multi_hop_mass) {
        tensors.push(("m".into(), F32Tensor::new(&rows, &download(m)?)));
    }
    if let Some(stats) = &row_stats {
        let [b, h, n] = rows;
        tensors.push((
            "row_stats".into(),
            F32Tensor::new(&[b, h, n, RowStats::<f32>::COLUMNS], stats),
        ));
    }
    if let (Some(a), Some(r)) = (&out.attention, &out.refined) {
        tensors.push((
            "attn".into(),
            F32Tensor::new(&shape.map_shape(), &download(a)?),
        ));
        tensors.push((
            "refined".into(),
            F32Tensor::new(&shape.map_shape(), &download(r)?),
        ));
    }
    drop(spinner);
    let meta = [
        ("adapter".to_string(), gpu.adapter().to_string()),
        ("mode".to_string(), mode.name().to_string()),
        ("lambda".to_string(), format!("{lambda_values:?}")),
        ("causal".to_string(), args.causal.to_string()),
        ("scale".to_string(), shape.scale.to_string()),
    ];
    let st = safetensors::serialize(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta.into_iter().collect()),
    )
    .map_err(|e| format!("cannot encode the output: {e}"))?;

    let mut files = vec![(args.output.as_path(), st)];
    if let (Some(path), Some(metrics)) = (&args.json, &out.metrics) {
        let report = Report::new(&gpu, &shape, mode, args.causal, &lambda_values, metrics);
        let text =
            serde_json::to_vec_pretty(&report).map_err(|e| format!("cannot encode JSON: {e}"))?;
        files.push((path.as_path(), text));
    }
    write_all_or_nothing(&files)?;
    eprintln!(
        "wrote {} ({} tensors) on {}",
        args.output.display(),
        tensors.len(),
        gpu.adapter()
    );
    // What the run cost, counted rather than timed: the N³ step shows here.
    let work = gpu.work();
    eprintln!(
        "gpu work: {} dispatches, {:.6} GFLOP of matrix products",
        work.dispatches,
        work.product_flops as f64 / 1e9
    );
    Ok(())
}

/// The JSON report: per batch item and head, summaries of `A` and of `R`.
#[derive(Serialize)]
struct Report<'a> {
    adapter: Value,
    mode: &'static str,
    causal: bool,
    scale: f32,
    lambda: &'a [f32],
    shape: ShapeReport,
    batch: Vec<BatchReport>,
    overall: MeanReport,
}

#[derive(Serialize)]
struct ShapeReport {
    batch: usize,
    heads: usize,
    n: usize,
    d: usize,
    dv: usize,
}

#[derive(Serialize)]
struct BatchReport {
    batch: usize,
    heads: Vec<HeadReport>,
    attn_mean: HeadSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    refined_mean: Option<HeadSummary>,
}

#[derive(Serialize)]
struct MeanReport {
    attn: HeadSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    refined: Option<HeadSummary>,
}

impl<'a> Report<'a> {
    fn new(
        gpu: &Gpu,
        shape: &AttentionShape,
        mode: Mode,
        causal: bool,
        lambda: &'a [f32],
        metrics: &saobp::Metrics,
    ) -> Report<'a> {
        let batch = (0..shape.batch)
            .map(|b| BatchReport {
                batch: b,
                heads: (0..shape.heads)
                    .map(|h| HeadReport::of(metrics, b, h))
                    .collect(),
                attn_mean: metrics.attention.batch(b),
                refined_mean: metrics.refined.as_ref().map(|r| r.batch(b)),
            })
            .collect();
        Report {
            adapter: adapter_json(gpu.adapter()),
            mode: mode.name(),
            causal,
            scale: shape.scale,
            lambda,
            shape: ShapeReport {
                batch: shape.batch,
                heads: shape.heads,
                n: shape.n,
                d: shape.d,
                dv: shape.dv,
            },
            batch,
            overall: MeanReport {
                attn: metrics.attention.overall(),
                refined: metrics.refined.as_ref().map(|r| r.overall()),
            },
        }
    }
}
