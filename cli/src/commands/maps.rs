//! `saobp maps`: SAOBP and the metrics on attention maps saved by any
//! framework, e.g. `output_attentions=True` in `transformers`, stacked.
//!
//! The maps are checked on the host first ([`saobp::io::parse_attention_maps`]:
//! the tensor, its dtype and rank, rows stochastic, causal when asked), then
//! each layer runs on the GPU: `R` from the library's `refine_map`, and
//! `metrics` of `A` and of `R`. The table, the JSON and the plot are
//! `analyze`'s, with the input maps as `A`.

use std::path::PathBuf;

use saobp::io::{map_tolerance, parse_attention_maps, AttentionMaps};
use saobp::{
    metrics_blocking, refine_map_blocking, refined_metrics_blocking, Gpu, HeadSummary, Lambda,
    MapMetrics, Metric, MetricsOptions, Tensor,
};
use serde::Serialize;
use serde_json::Value;

use super::layers::{heatmap_layer, layer_lambda, print_table, LayerReport, Names};
use super::plot::{self, Heatmaps, LayerCurves};
use super::progress::Spinner;
use super::{adapter_json, write_all_or_nothing, CliResult, F32Tensor, GpuArgs, HeadReport};

/// What the checks accept, for `saobp maps --help`.
const INPUT: &str = "\
Input: the tensor named `attentions`, or the file's only tensor, shaped
[L, B, H, N, N] (layers of maps) or [B, H, N, N] (one layer), stored as F32,
F16 or BF16 (widened to f32 exactly). Before any GPU work every entry must be
finite and >= 0, every row must sum to 1 within 1e-3 (F32, F16) or 8e-3
(BF16), about twice the format's rounding of a row sum, and with --causal
every entry above the diagonal must be at most that tolerance.";

#[derive(clap::Args)]
#[command(after_help = INPUT)]
pub struct MapsArgs {
    /// Safetensors file holding the attention maps (below).
    #[arg(long)]
    input: PathBuf,
    /// SAOBP strength for every layer, or one per layer separated by commas
    /// (finite, >= 0); a layer with λ = 0 has no refined map.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1",
        allow_negative_numbers = true
    )]
    lambda: Vec<f32>,
    /// The maps are causal: checked to be, and measured with n_i = i + 1 keys.
    #[arg(long)]
    causal: bool,
    /// Write the per-layer, per-head summaries of A and R (means over the batch) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG: normalized entropy and GTD by layer, and heatmaps of A and R.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the per-row metrics as safetensors: `attn.<metric>` and
    /// `refined.<metric>`, each f32 [L, B, H, N].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Layer of the heatmaps (default: the last).
    #[arg(long)]
    layer: Option<usize>,
    /// Head of the heatmaps (batch item 0).
    #[arg(long, default_value_t = 0)]
    head: usize,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// `maps`' names for its maps.
const NAMES: Names = Names {
    caption: "mean over heads and batch items (A: the input maps; R: refined)",
    columns: ["A", "R"],
    maps: ["A, input", "R, refined"],
};

/// One layer's metrics: of `A` (GTD at λ = 1) and, when λ > 0, of `R`.
struct LayerMetrics {
    attn: MapMetrics,
    refined: Option<RefinedLayer>,
}

/// The metrics of `R` as the spec defines them: its own entropy, sparsity,
/// peak and distance, with `A`'s multi-hop mass and the GTD at λ.
struct RefinedLayer {
    /// Per head, batch-major, as [`MapMetrics::heads`].
    heads: Vec<HeadSummary>,
    /// Heads per batch item.
    num_heads: usize,
    /// Per-row metrics `[METRIC_COUNT, B, H, N]`, when asked for.
    rows: Option<Vec<f32>>,
    /// `R` of the heatmaps' head, when asked for.
    heatmap: Option<Vec<f32>>,
}

impl RefinedLayer {
    fn head(&self, b: usize, h: usize) -> Option<&HeadSummary> {
        self.heads.get(b * self.num_heads + h)
    }

    fn batch(&self, b: usize) -> HeadSummary {
        HeadSummary::mean(&self.heads[b * self.num_heads..][..self.num_heads])
    }
}

/// What each layer's work must bring back, besides the summaries.
struct Wanted {
    rows: bool,
    /// Values of the heatmaps' layer and head.
    heatmap: Option<(usize, std::ops::Range<usize>)>,
}

/// `R` and the metrics of layer `l`.
fn measure(
    gpu: &Gpu,
    maps: &AttentionMaps,
    l: usize,
    lambda: f32,
    causal: bool,
    wanted: &Wanted,
) -> saobp::Result<LayerMetrics> {
    let a = Tensor::from_slice(gpu, &maps.layer_shape(), maps.layer(l))?;
    let plain = MetricsOptions {
        causal,
        ..Default::default()
    };
    let attn = metrics_blocking(gpu, &a, &plain)?;
    if lambda <= 0.0 {
        return Ok(LayerMetrics {
            attn,
            refined: None,
        });
    }
    let lambda = Lambda::Scalar(lambda);
    let at_lambda = MetricsOptions {
        causal,
        lambda: Some(&lambda),
        ..Default::default()
    };
    let r = refine_map_blocking(gpu, &a, &lambda)?;
    let of_r = refined_metrics_blocking(gpu, &a, &r.refined, &at_lambda)?;
    let heads = of_r.heads;
    let rows = if wanted.rows {
        Some(of_r.rows.to_vec_blocking(gpu)?)
    } else {
        None
    };
    let heatmap = match &wanted.heatmap {
        Some((layer, range)) if *layer == l => {
            Some(r.refined.to_vec_range_blocking(gpu, range.clone())?)
        }
        _ => None,
    };
    Ok(LayerMetrics {
        attn,
        refined: Some(RefinedLayer {
            heads,
            num_heads: of_r.num_heads,
            rows,
            heatmap,
        }),
    })
}

/// The JSON report.
#[derive(Serialize)]
struct Report<'a> {
    adapter: Value,
    input: String,
    tensor: &'a str,
    dtype: String,
    /// The row-sum tolerance the maps were checked with.
    tolerance: f32,
    shape: ShapeReport,
    causal: bool,
    lambda: &'a [f32],
    layers: Vec<LayerReport>,
}

#[derive(Serialize)]
struct ShapeReport {
    layers: usize,
    batch: usize,
    heads: usize,
    n: usize,
}

/// `attn.<metric>` and `refined.<metric>` from each layer's rows
/// (`[METRIC_COUNT, B, H, N]`), stacked over layers; the `weight` row is left out.
fn row_tensors(
    shape: [usize; 4],
    attn: &[Vec<f32>],
    refined: &[Option<Vec<f32>>],
) -> Vec<(String, F32Tensor)> {
    let [layers, b, h, n] = shape;
    let per = b * h * n;
    let mut out = Vec::new();
    for (part, rows) in [
        ("attn", attn.iter().map(Some).collect::<Vec<_>>()),
        ("refined", refined.iter().map(Option::as_ref).collect()),
    ] {
        // A layer without R (λ = 0) leaves the refined tensors out.
        let Some(rows) = rows.into_iter().collect::<Option<Vec<_>>>() else {
            continue;
        };
        for m in Metric::ALL.into_iter().filter(|m| *m != Metric::Weight) {
            let values: Vec<f32> = rows
                .iter()
                .flat_map(|r| r[m.range(per)].iter().copied())
                .collect();
            out.push((
                format!("{part}.{}", m.name()),
                F32Tensor::new(&[layers, b, h, n], &values),
            ));
        }
    }
    out
}

pub fn run(args: &MapsArgs) -> CliResult {
    let e = |e: saobp::Error| e.to_string();
    let bytes = std::fs::read(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let maps = parse_attention_maps(&bytes, args.causal)
        .map_err(|e| format!("{}: {e}", args.input.display()))?;
    drop(bytes);
    let [layers, batch, heads, n] = maps.shape;
    let lambda = layer_lambda(&args.lambda, layers)?;
    let refined = lambda.iter().any(|&l| l > 0.0);
    let heat_layer = heatmap_layer(args.layer, args.head, layers, heads)?;
    let heat_range = args.head * n * n..(args.head + 1) * n * n;
    let wanted = Wanted {
        rows: args.output.is_some(),
        heatmap: args
            .plot
            .is_some()
            .then(|| (heat_layer, heat_range.clone())),
    };

    let gpu = args.gpu.open()?;
    let spinner = Spinner::start(format!("refining and measuring {layers} layer(s)"));
    let measured = (0..layers)
        .map(|l| measure(&gpu, &maps, l, lambda[l], args.causal, &wanted).map_err(e))
        .collect::<CliResult<Vec<_>>>()?;
    let attn_rows = if wanted.rows {
        measured
            .iter()
            .map(|m| m.attn.rows.to_vec_blocking(&gpu).map_err(e))
            .collect::<CliResult<Vec<_>>>()?
    } else {
        Vec::new()
    };
    drop(spinner);

    let mut curves = LayerCurves::new(layers);
    let mut layer_reports = Vec::new();
    for (l, m) in measured.iter().enumerate() {
        for b in 0..batch {
            curves.add_plain(l, &m.attn.batch(b));
            if let Some(r) = &m.refined {
                curves.add_refined(l, &r.batch(b));
            }
        }
        // Each head's summary averaged over the batch.
        let over_batch = |get: &dyn Fn(usize) -> Option<HeadSummary>| {
            let items: Vec<HeadSummary> = (0..batch).filter_map(get).collect();
            (!items.is_empty()).then(|| HeadSummary::mean(&items))
        };
        let heads = (0..heads)
            .map(|h| HeadReport {
                head: h,
                attn: over_batch(&|b| m.attn.head(b, h).copied()),
                refined: m
                    .refined
                    .as_ref()
                    .and_then(|r| over_batch(&|b| r.head(b, h).copied())),
            })
            .collect();
        layer_reports.push(LayerReport { layer: l, heads });
    }
    print_table(&curves, refined, &lambda, &NAMES);

    let mut files = Vec::new();
    if let Some(path) = &args.json {
        let report = Report {
            adapter: adapter_json(gpu.adapter()),
            input: args.input.display().to_string(),
            tensor: &maps.name,
            dtype: format!("{:?}", maps.dtype),
            tolerance: map_tolerance(maps.dtype),
            shape: ShapeReport {
                layers,
                batch,
                heads,
                n,
            },
            causal: args.causal,
            lambda: &lambda,
            layers: layer_reports,
        };
        let text =
            serde_json::to_vec_pretty(&report).map_err(|e| format!("cannot encode JSON: {e}"))?;
        files.push((path.as_path(), text));
    }
    if let Some(path) = &args.plot {
        let plain = maps.layer(heat_layer)[heat_range].to_vec();
        let refined_map = measured[heat_layer]
            .refined
            .as_ref()
            .and_then(|r| r.heatmap.clone());
        let tokens = (0..n).map(|i| i.to_string()).collect();
        let heatmaps = Heatmaps::new(heat_layer, args.head, tokens, plain, refined_map);
        files.push((
            path.as_path(),
            plot::render(&curves, &heatmaps, refined, &NAMES)?,
        ));
    }
    if let Some(path) = &args.output {
        let refined_rows: Vec<Option<Vec<f32>>> = measured
            .into_iter()
            .map(|m| m.refined.and_then(|r| r.rows))
            .collect();
        let tensors = row_tensors(maps.shape, &attn_rows, &refined_rows);
        let meta = [
            ("adapter".to_string(), gpu.adapter().to_string()),
            ("lambda".to_string(), format!("{lambda:?}")),
            ("causal".to_string(), args.causal.to_string()),
        ];
        let st = safetensors::serialize(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta.into_iter().collect()),
        )
        .map_err(|e| format!("cannot encode the output: {e}"))?;
        files.push((path.as_path(), st));
    }
    write_all_or_nothing(&files)?;
    println!("adapter: {}", gpu.adapter());
    Ok(())
}
