//! What `analyze` and `maps` report alike: λ per layer, each layer's
//! per-head summaries in the JSON, and the per-layer table.

use serde::Serialize;

use super::plot::LayerCurves;
use super::{CliResult, HeadReport};

/// `--lambda` for every layer: one value for all, or one per layer.
pub fn layer_lambda(values: &[f32], layers: usize) -> CliResult<Vec<f32>> {
    if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(format!("--lambda must be finite and >= 0, got {v}"));
    }
    match values.len() {
        1 => Ok(vec![values[0]; layers]),
        n if n == layers => Ok(values.to_vec()),
        n => Err(format!(
            "--lambda has {n} values; give one, or one per layer ({layers})"
        )),
    }
}

/// Checks `--layer` (default: the last) and `--head` of the heatmaps
/// against the maps' size; returns the layer.
pub fn heatmap_layer(
    layer: Option<usize>,
    head: usize,
    layers: usize,
    heads: usize,
) -> CliResult<usize> {
    let l = layer.unwrap_or(layers.saturating_sub(1));
    if l >= layers || head >= heads {
        return Err(format!(
            "--layer {l} / --head {head} out of range: there are {layers} layers of {heads} heads"
        ));
    }
    Ok(l)
}

/// One layer of a JSON report: the summaries of each head's `A` and `R`.
#[derive(Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub heads: Vec<HeadReport>,
}

/// What the two maps are called in the table, the plot's legends and its
/// heatmap titles.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// The table's first line: what its means are taken over.
    pub caption: &'static str,
    /// The table's column labels of `A` and of `R`.
    pub columns: [&'static str; 2],
    /// `A` and `R` in the plot.
    pub maps: [&'static str; 2],
}

/// Prints normalized entropy and GTD per layer, of `A` and, when `refined`,
/// of `R`.
pub fn print_table(curves: &LayerCurves, refined: bool, lambda: &[f32], names: &Names) {
    println!("{}", names.caption);
    let [a_label, r_label] = names.columns;
    if refined {
        println!(
            "{:>5}  {:>6}  {:>16}  {:>16}  {:>11}  {:>11}",
            "layer", "λ", "norm. entropy", "norm. entropy", "GTD", "GTD"
        );
        println!(
            "{:>5}  {:>6}  {:>16}  {:>16}  {:>11}  {:>11}",
            "",
            "",
            a_label,
            r_label,
            format!("{a_label} (λ=1)"),
            format!("{r_label} (λ)")
        );
    } else {
        println!(
            "{:>5}  {:>16}  {:>11}",
            "layer", "norm. entropy", "GTD (λ=1)"
        );
    }
    for (l, lam) in lambda.iter().enumerate().take(curves.layers()) {
        let (a, r) = (curves.plain(l), curves.refined(l));
        if refined {
            println!(
                "{l:>5}  {:>6.2}  {:>16.4}  {:>16.4}  {:>11.4}  {:>11.4}",
                lam, a.normalized_entropy, r.normalized_entropy, a.gtd, r.gtd
            );
        } else {
            println!("{l:>5}  {:>16.4}  {:>11.4}", a.normalized_entropy, a.gtd);
        }
    }
}
