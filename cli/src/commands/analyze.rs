//! `saobp analyze`: a real model's attention, layer by layer, with and without
//! SAOBP.
//!
//! For each text the model runs once plainly (λ = 0) and, when λ > 0, once
//! with SAOBP inside every layer. The JSON's `attn` and `refined` describe the
//! run the embedding comes from: the SAOBP run when λ > 0 (its `A` and `R`),
//! else the plain run. The printed table and the plot compare the plain run's
//! `A` with the SAOBP run's `R`.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use saobp::model::{sentence_embedding, BertModel, ForwardOptions, ForwardOutput};
use saobp::{Gpu, HeadSummary, Lambda};
use serde::Serialize;
use serde_json::Value;

use saobp::kernels::gpt::TokenIds;
use saobp::model::Gpt;

use super::layers::{heatmap_layer, layer_lambda, print_table, LayerReport, Names};
use super::plot::{self, LayerCurves};
use super::progress::with_spinner;
use super::run_dir;
use super::{adapter_json, write_all_or_nothing, CliResult, GpuArgs, HeadReport};

/// `analyze`'s names for its maps: the plain model's `A`, the SAOBP model's `R`.
const NAMES: Names = Names {
    caption: "mean over heads and texts (plain model: A; with SAOBP: R)",
    columns: ["plain", "SAOBP"],
    maps: ["A, plain model", "R, with SAOBP"],
};

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Hugging Face model folder (config.json, model.safetensors, tokenizer.json),
    /// or a GPT run folder written by `train`.
    #[arg(long)]
    model: PathBuf,
    /// A text to analyse; repeat for several.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// SAOBP strength for every layer, or one per layer separated by commas (finite, >= 0).
    /// A GPT uses its checkpoint's own λ instead.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0",
        allow_negative_numbers = true
    )]
    lambda: Vec<f32>,
    /// Write the per-text, per-layer, per-head summaries as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG: normalized entropy and GTD by layer, and attention heatmaps.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Layer of the heatmaps (default: the last).
    #[arg(long)]
    layer: Option<usize>,
    /// Head of the heatmaps.
    #[arg(long, default_value_t = 0)]
    head: usize,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// The JSON report.
#[derive(Serialize)]
struct Report<'a> {
    adapter: Value,
    model: String,
    lambda: &'a [f32],
    texts: Vec<TextReport<'a>>,
}

/// One text: its tokens, sentence embedding and per-layer, per-head summaries.
#[derive(Serialize)]
struct TextReport<'a> {
    text: &'a str,
    tokens: &'a [String],
    /// The sentence embedding (BERT-family models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
    layers: Vec<LayerReport>,
}

/// Mean over heads of one layer's summaries, from `pick` (A or R).
fn layer_mean(out: &ForwardOutput, layer: usize, refined: bool) -> Option<HeadSummary> {
    let m = out.layers.get(layer)?.metrics.as_ref()?;
    let map = if refined {
        m.refined.as_ref()?
    } else {
        &m.attention
    };
    Some(map.batch(0))
}

/// Whether `dir` holds a GPT (`model_type: "gpt2"` in its config.json).
fn is_gpt(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("model_type").and_then(Value::as_str) == Some("gpt2"))
}

pub fn run(args: &AnalyzeArgs) -> CliResult {
    let e = |e: saobp::Error| e.to_string();
    if args.texts.iter().any(|t| t.trim().is_empty()) {
        return Err("--text must not be empty".into());
    }
    if is_gpt(&args.model) {
        return run_gpt(args);
    }
    let gpu = args.gpu.open()?;
    let model =
        with_spinner("loading the model", || BertModel::load(&gpu, &args.model)).map_err(e)?;
    let tokenizer = model.tokenizer(&args.model).map_err(e)?;
    let c = &model.config;
    let lambda = layer_lambda(&args.lambda, c.num_hidden_layers)?;
    let refined = lambda.iter().any(|&l| l > 0.0);
    let heat_layer = heatmap_layer(
        args.layer,
        args.head,
        c.num_hidden_layers,
        c.num_attention_heads,
    )?;
    let encoded = args
        .texts
        .iter()
        .map(|t| tokenizer.encode(t).map_err(e))
        .collect::<CliResult<Vec<_>>>()?;

    let bar = (args.texts.len() > 1).then(|| {
        let bar = ProgressBar::new(args.texts.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} texts {elapsed}") {
            bar.set_style(style);
        }
        bar
    });
    let plain_opts = ForwardOptions {
        metrics: true,
        keep_maps: args.plot.is_some(),
        ..Default::default()
    };
    let saobp_opts = ForwardOptions {
        lambda: lambda.iter().map(|&l| Lambda::Scalar(l)).collect(),
        ..plain_opts.clone()
    };
    let mut texts_json = Vec::new();
    let mut curves = LayerCurves::new(c.num_hidden_layers);
    let mut heatmaps = None;
    for (ti, (text, enc)) in args.texts.iter().zip(&encoded).enumerate() {
        let plain = pollster::block_on(model.forward(&gpu, std::slice::from_ref(enc), &plain_opts))
            .map_err(e)?;
        let with = if refined {
            Some(
                pollster::block_on(model.forward(&gpu, std::slice::from_ref(enc), &saobp_opts))
                    .map_err(e)?,
            )
        } else {
            None
        };
        let main = with.as_ref().unwrap_or(&plain);
        let hidden = main.hidden.to_vec_blocking(&gpu).map_err(e)?;
        let embedding = sentence_embedding(&hidden, c.hidden_size, enc.ids.len());
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let metrics = main.layers[l].metrics.as_ref().ok_or("metrics missing")?;
            let heads = (0..c.num_attention_heads)
                .map(|h| HeadReport::of(metrics, 0, h))
                .collect();
            layers.push(LayerReport { layer: l, heads });
            if let Some(a) = layer_mean(&plain, l, false) {
                curves.add_plain(l, &a);
            }
            if let Some(r) = with.as_ref().and_then(|w| layer_mean(w, l, true)) {
                curves.add_refined(l, &r);
            }
        }
        if ti == 0 && args.plot.is_some() {
            heatmaps = Some(
                plot::heatmaps(
                    &gpu,
                    &plain,
                    with.as_ref(),
                    heat_layer,
                    args.head,
                    &enc.tokens,
                )
                .map_err(e)?,
            );
        }
        texts_json.push(TextReport {
            text,
            tokens: &enc.tokens,
            embedding: Some(embedding),
            layers,
        });
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    finish(
        args,
        &gpu,
        &curves,
        refined,
        &lambda,
        texts_json,
        heatmaps.as_ref(),
    )
}

/// `analyze` of a GPT trained by `train`: causal attention with the
/// checkpoint's own λ; the table and plot compare each layer's `A` with its
/// `R`. Characters are the tokens.
fn run_gpt(args: &AnalyzeArgs) -> CliResult {
    let e = |e: saobp::Error| e.to_string();
    let checkpoint = run_dir::read_checkpoint(&args.model)?;
    let c = checkpoint.config.clone();
    let heat_layer = heatmap_layer(args.layer, args.head, c.n_layer, c.n_head)?;
    let encoded = args
        .texts
        .iter()
        .map(|t| {
            let ids = checkpoint
                .vocab
                .encode(t)
                .map_err(|err| format!("--text: {err}"))?;
            if ids.len() > c.n_positions {
                return Err(format!(
                    "--text has {} characters; the model's context is {}",
                    ids.len(),
                    c.n_positions
                ));
            }
            Ok(ids)
        })
        .collect::<CliResult<Vec<_>>>()?;
    let gpu = args.gpu.open()?;
    let model = with_spinner("loading the model", || {
        Gpt::from_safetensors(&gpu, c.clone(), &checkpoint.weights)
    })
    .map_err(e)?;
    let lambdas = pollster::block_on(model.lambda_values(&gpu)).map_err(e)?;
    let layer_lambda: Vec<f32> = lambdas
        .iter()
        .map(|l| l.iter().sum::<f32>() / l.len().max(1) as f32)
        .collect();
    let refined = model.has_lambda();
    let mut curves = LayerCurves::new(c.n_layer);
    let mut texts_json = Vec::new();
    let mut heatmaps = None;
    let token_lists: Vec<Vec<String>> = args
        .texts
        .iter()
        .map(|t| t.chars().map(String::from).collect())
        .collect();
    for (ti, (text, ids)) in args.texts.iter().zip(&encoded).enumerate() {
        let n = ids.len();
        let ws = model.workspace(&gpu, 1, n).map_err(e)?;
        let x = TokenIds::new(&gpu, ids, 1, n, c.vocab_size).map_err(e)?;
        model.forward_blocking(&gpu, &ws, &x, None).map_err(e)?;
        let metrics = model.attention_metrics_blocking(&gpu, &ws).map_err(e)?;
        let mut layers = Vec::new();
        for (l, m) in metrics.iter().enumerate() {
            let heads = (0..c.n_head).map(|h| HeadReport::of(m, 0, h)).collect();
            layers.push(LayerReport { layer: l, heads });
            curves.add_plain(l, &m.attention.batch(0));
            if let Some(r) = &m.refined {
                curves.add_refined(l, &r.batch(0));
            }
        }
        if ti == 0 && args.plot.is_some() {
            let [q, k, v] = ws.qkv(heat_layer).ok_or("no such layer")?;
            let opts = saobp::AttentionOptions {
                causal: true,
                lambda: Lambda::PerHead(lambdas[heat_layer].clone()),
                mode: saobp::Mode::Fused,
                return_attention: true,
                return_refined: refined,
                ..Default::default()
            };
            let out = saobp::attention_blocking(&gpu, q, k, v, &opts).map_err(e)?;
            let head = args.head * n * n..(args.head + 1) * n * n;
            let read = |t: Option<&saobp::Tensor>| -> CliResult<Option<Vec<f32>>> {
                t.map(|t| t.to_vec_range_blocking(&gpu, head.clone()).map_err(e))
                    .transpose()
            };
            let plain = read(out.attention.as_ref())?.ok_or("no attention map")?;
            heatmaps = Some(plot::Heatmaps::new(
                heat_layer,
                args.head,
                token_lists[ti].clone(),
                plain,
                read(out.refined.as_ref())?,
            ));
        }
        texts_json.push(TextReport {
            text,
            tokens: &token_lists[ti],
            embedding: None,
            layers,
        });
    }
    finish(
        args,
        &gpu,
        &curves,
        refined,
        &layer_lambda,
        texts_json,
        heatmaps.as_ref(),
    )
}

/// Prints the table and writes the JSON and the plot, all or nothing.
fn finish(
    args: &AnalyzeArgs,
    gpu: &Gpu,
    curves: &LayerCurves,
    refined: bool,
    lambda: &[f32],
    texts: Vec<TextReport<'_>>,
    heatmaps: Option<&plot::Heatmaps>,
) -> CliResult {
    print_table(curves, refined, lambda, &NAMES);
    let mut files = Vec::new();
    if let Some(path) = &args.json {
        let report = Report {
            adapter: adapter_json(gpu.adapter()),
            model: args.model.display().to_string(),
            lambda,
            texts,
        };
        files.push((
            path.as_path(),
            serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?,
        ));
    }
    if let (Some(path), Some(maps)) = (&args.plot, heatmaps) {
        files.push((path.as_path(), plot::render(curves, maps, refined, &NAMES)?));
    }
    write_all_or_nothing(&files)?;
    println!("adapter: {}", gpu.adapter());
    Ok(())
}
