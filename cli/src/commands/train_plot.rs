//! `curves.png` of `train`: the losses, and per layer the normalized entropy
//! and GTD of the attention, against the step.

use plotters::prelude::*;

use super::plot::encode_png;
use super::train::Record;
use super::CliResult;

const SIZE: (u32, u32) = (1500, 500);

/// The run's curves so far (an empty frame before the first evaluation).
pub fn render(records: &[Record]) -> CliResult<Vec<u8>> {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(&mut rgb, records).map_err(|e| format!("cannot draw the curves: {e}"))?;
    encode_png(&rgb, SIZE)
}

type Series = Vec<(String, Vec<(f64, f64)>, RGBColor, bool)>;

/// A layer's colour, from dark to light along the depth.
fn layer_color(layer: usize, layers: usize) -> RGBColor {
    let c = ViridisRGB::get_color(layer as f64 / layers.max(2).saturating_sub(1) as f64 * 0.85);
    RGBColor(c.0, c.1, c.2)
}

fn draw(rgb: &mut [u8], records: &[Record]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(rgb, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let steps = |f: &dyn Fn(&Record) -> f64| -> Vec<(f64, f64)> {
        records.iter().map(|r| (r.step as f64, f(r))).collect()
    };
    let layers = records.first().map_or(0, |r| r.layers.len());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let loss: Series = vec![
        ("train".into(), steps(&|r| r.train_loss), BLUE, false),
        ("val".into(), steps(&|r| r.val_loss), RED, false),
    ];
    let mut entropy: Series = Vec::new();
    let mut gtd: Series = Vec::new();
    for l in 0..layers {
        let color = layer_color(l, layers);
        let at = |f: &dyn Fn(&super::train::LayerRecord) -> f64| {
            steps(&|r: &Record| r.layers.get(l).map_or(0.0, f))
        };
        entropy.push((format!("layer {l}, A"), at(&|x| x.entropy_a), color, true));
        entropy.push((format!("layer {l}, R"), at(&|x| x.entropy_r), color, false));
        gtd.push((
            format!("layer {l}, A (λ = 1)"),
            at(&|x| mean(&x.gtd_a)),
            color,
            true,
        ));
        gtd.push((
            format!("layer {l}, R"),
            at(&|x| mean(&x.gtd_r)),
            color,
            false,
        ));
    }
    let last = records.last().map_or(1.0, |r| r.step as f64).max(1.0);
    for (area, (title, series)) in panels.iter().zip([
        ("loss (nats)", loss),
        ("normalized entropy (A dashed, R solid)", entropy),
        ("GTD (A at λ = 1 dashed, R solid)", gtd),
    ]) {
        let top = series
            .iter()
            .flat_map(|(_, s, _, _)| s.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..last, 0.0..top * 1.1)?;
        chart.configure_mesh().x_desc("step").y_labels(6).draw()?;
        for (name, points, color, dashed) in series {
            let style = color.stroke_width(2);
            if dashed {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?;
            } else {
                chart
                    .draw_series(LineSeries::new(points, style))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
        }
        if !records.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
