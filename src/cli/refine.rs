//! `saobp refine`: attention and SAOBP on tensors from a safetensors file.
//!
//! Input: `q`, `k`, `v` f32 `[B, H, N, D]`; optional `key_mask` `[B, N]` (f32,
//! u8 or bool, 1 keep / 0 masked) and `lambda` f32 `[H]` (overrides `--lambda`).
//! Everything is validated before any GPU work, and the output files appear
//! whole or not at all.

use std::path::PathBuf;

use safetensors::{Dtype, View};
use saobp::io::parse_refine_input;
use saobp::{
    attention_blocking, AttentionOptions, AttentionShape, Gpu, Lambda, Mode, Tensor, METRIC_NAMES,
};
use serde_json::{json, Value};

use super::{adapter_json, summary_json, write_all_or_nothing, CliResult};

#[derive(clap::Args)]
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
    /// plain (no refinement), fused (O(N²D)), materialized (M explicit),
    /// flash (plain, streamed: no N×N memory) or streaming (SAOBP, no N×N
    /// memory; writes row_stats instead of the metrics of R, and no --json).
    #[arg(long, default_value = "fused")]
    mode: String,
    /// Write per-head summaries of A and R as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// An f32 tensor to write.
struct Out {
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Out {
    fn new(shape: &[usize], values: &[f32]) -> Out {
        Out {
            shape: shape.to_vec(),
            data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

impl View for &Out {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Metric `name` of every row (`[B, H, N]`) out of a downloaded metrics tensor.
fn metric(rows: &[f32], name: &str) -> Vec<f32> {
    let k = METRIC_NAMES.iter().position(|x| *x == name).unwrap_or(0);
    let per = rows.len() / METRIC_NAMES.len();
    rows[k * per..][..per].to_vec()
}

pub fn run(args: &RefineArgs) -> CliResult {
    let mode: Mode = args.mode.parse().map_err(|e: saobp::Error| e.to_string())?;
    if mode.is_streaming() && args.json.is_some() {
        return Err(format!(
            "--json needs per-head metrics, which the {} mode does not compute; use plain or fused",
            args.mode
        ));
    }
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

    let gpu = Gpu::from_env_blocking().map_err(|e| e.to_string())?;
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
    };
    let out = attention_blocking(&gpu, &q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let download = |t: &Tensor| t.to_vec_blocking(&gpu).map_err(|e| e.to_string());
    let rows = shape.row_shape();
    let entropy = match (&out.metrics, &out.row_stats) {
        (Some(m), _) => metric(&download(&m.attention.rows)?, "entropy"),
        (None, Some(stats)) => download(stats)?.into_iter().skip(2).step_by(3).collect(),
        (None, None) => return Err("metrics were not computed".into()),
    };

    let mut tensors: Vec<(String, Out)> = vec![
        (
            "out".into(),
            Out::new(&shape.output_shape(), &download(&out.output)?),
        ),
        ("entropy".into(), Out::new(&rows, &entropy)),
    ];
    let refined = out.metrics.as_ref().and_then(|m| m.refined.as_ref());
    if let (Some(refined), Some(m)) = (refined, &out.multi_hop_mass) {
        let rows_r = download(&refined.rows)?;
        tensors.push(("m".into(), Out::new(&rows, &download(m)?)));
        tensors.push(("gtd".into(), Out::new(&rows, &metric(&rows_r, "gtd"))));
        tensors.push((
            "entropy_refined".into(),
            Out::new(&rows, &metric(&rows_r, "entropy")),
        ));
    }
    if let (Mode::Streaming, Some(m)) = (mode, &out.multi_hop_mass) {
        tensors.push(("m".into(), Out::new(&rows, &download(m)?)));
    }
    if let Some(stats) = &out.row_stats {
        let [b, h, n] = rows;
        tensors.push((
            "row_stats".into(),
            Out::new(&[b, h, n, 3], &download(stats)?),
        ));
    }
    if let (Some(a), Some(r)) = (&out.attention, &out.refined) {
        tensors.push(("attn".into(), Out::new(&shape.map_shape(), &download(a)?)));
        tensors.push((
            "refined".into(),
            Out::new(&shape.map_shape(), &download(r)?),
        ));
    }
    let meta = [
        ("adapter".to_string(), gpu.adapter().to_string()),
        ("mode".to_string(), args.mode.clone()),
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
        let report = report_json(
            &gpu,
            &shape,
            &args.mode,
            args.causal,
            &lambda_values,
            metrics,
        );
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
    Ok(())
}

/// The JSON report: per batch item and head, summaries of `A` and of `R`.
fn report_json(
    gpu: &Gpu,
    shape: &AttentionShape,
    mode: &str,
    causal: bool,
    lambda: &[f32],
    metrics: &saobp::Metrics,
) -> Value {
    let batch: Vec<Value> = (0..shape.batch)
        .map(|b| {
            let heads: Vec<Value> = (0..shape.heads)
                .map(|h| {
                    let mut head = json!({ "head": h });
                    if let Some(s) = metrics.attention.head(b, h) {
                        head["attn"] = summary_json(s);
                    }
                    if let Some(s) = metrics.refined.as_ref().and_then(|r| r.head(b, h)) {
                        head["refined"] = summary_json(s);
                    }
                    head
                })
                .collect();
            let mut item = json!({ "batch": b, "heads": heads, "attn_mean": summary_json(&metrics.attention.batch(b)) });
            if let Some(r) = &metrics.refined {
                item["refined_mean"] = summary_json(&r.batch(b));
            }
            item
        })
        .collect();
    let mut overall = json!({ "attn": summary_json(&metrics.attention.overall()) });
    if let Some(r) = &metrics.refined {
        overall["refined"] = summary_json(&r.overall());
    }
    json!({
        "adapter": adapter_json(gpu.adapter()),
        "mode": mode,
        "causal": causal,
        "scale": shape.scale,
        "lambda": lambda,
        "shape": { "batch": shape.batch, "heads": shape.heads, "n": shape.n, "d": shape.d, "dv": shape.dv },
        "batch": batch,
        "overall": overall,
    })
}
