//! The PNG of `analyze`: normalized entropy and GTD by layer (plain model vs
//! SAOBP), and attention heatmaps of one layer and head.

use plotters::prelude::*;
use saobp::model::ForwardOutput;
use saobp::{Gpu, HeadSummary};

use super::CliResult;

/// Per-layer means accumulated over texts.
pub struct LayerCurves {
    plain: Vec<Vec<HeadSummary>>,
    refined: Vec<Vec<HeadSummary>>,
}

impl LayerCurves {
    pub fn new(layers: usize) -> Self {
        LayerCurves {
            plain: vec![Vec::new(); layers],
            refined: vec![Vec::new(); layers],
        }
    }

    pub fn layers(&self) -> usize {
        self.plain.len()
    }

    pub fn add_plain(&mut self, layer: usize, s: &HeadSummary) {
        self.plain[layer].push(*s);
    }

    pub fn add_refined(&mut self, layer: usize, s: &HeadSummary) {
        self.refined[layer].push(*s);
    }

    /// Mean over texts of the plain model's `A` at `layer`.
    pub fn plain(&self, layer: usize) -> HeadSummary {
        HeadSummary::mean(&self.plain[layer])
    }

    /// Mean over texts of the SAOBP model's `R` at `layer`.
    pub fn refined(&self, layer: usize) -> HeadSummary {
        HeadSummary::mean(&self.refined[layer])
    }
}

/// The maps shown as heatmaps: plain `A` and, with SAOBP, `R`.
pub struct Heatmaps {
    layer: usize,
    head: usize,
    tokens: Vec<String>,
    plain: Vec<f32>,
    refined: Option<Vec<f32>>,
}

impl Heatmaps {
    /// Maps already read back: `plain` and `refined` are `[n, n]` for the
    /// `n` tokens.
    pub fn new(
        layer: usize,
        head: usize,
        tokens: Vec<String>,
        plain: Vec<f32>,
        refined: Option<Vec<f32>>,
    ) -> Heatmaps {
        Heatmaps {
            layer,
            head,
            tokens,
            plain,
            refined,
        }
    }
}

/// Downloads head `head` of `layer` from the kept maps of one text.
pub fn heatmaps(
    gpu: &Gpu,
    plain: &ForwardOutput,
    with: Option<&ForwardOutput>,
    layer: usize,
    head: usize,
    tokens: &[String],
) -> saobp::Result<Heatmaps> {
    let n = tokens.len();
    let pick = |t: Option<&saobp::Tensor>| -> saobp::Result<Option<Vec<f32>>> {
        match t {
            // Only this head's block comes back.
            Some(t) => Ok(Some(
                t.to_vec_range_blocking(gpu, head * n * n..(head + 1) * n * n)?,
            )),
            None => Ok(None),
        }
    };
    let plain_map = pick(plain.layers[layer].attention.as_ref())?
        .ok_or_else(|| saobp::Error::InvalidArgument("attention maps were not kept".into()))?;
    let refined = match with {
        Some(w) => pick(w.layers[layer].refined.as_ref())?,
        None => None,
    };
    Ok(Heatmaps {
        layer,
        head,
        tokens: tokens.to_vec(),
        plain: plain_map,
        refined,
    })
}

const SIZE: (u32, u32) = (1400, 1050);

/// Renders the figure and encodes it as PNG bytes.
pub fn render(curves: &LayerCurves, maps: &Heatmaps, refined: bool) -> CliResult<Vec<u8>> {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(&mut rgb, curves, maps, refined).map_err(|e| format!("cannot draw the plot: {e}"))?;
    encode_png(&rgb, SIZE)
}

/// An RGB image of `size` as PNG bytes.
pub fn encode_png(rgb: &[u8], size: (u32, u32)) -> CliResult<Vec<u8>> {
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, size.0, size.1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        let mut writer = encoder
            .write_header()
            .map_err(|e| format!("cannot encode PNG: {e}"))?;
        writer
            .write_image_data(rgb)
            .map_err(|e| format!("cannot encode PNG: {e}"))?;
    }
    Ok(png)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Which summary value a line chart shows.
type Field = fn(&HeadSummary) -> f64;

fn draw(rgb: &mut [u8], curves: &LayerCurves, maps: &Heatmaps, refined: bool) -> DrawResult {
    let root = BitMapBackend::with_buffer(rgb, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 30);
    let charts = top.split_evenly((1, 2));
    let layers = curves.layers();
    let series = |f: Field, plain: bool| -> Vec<(f64, f64)> {
        (0..layers)
            .map(|l| {
                let s = if plain {
                    curves.plain(l)
                } else {
                    curves.refined(l)
                };
                (l as f64, f(&s))
            })
            .collect()
    };
    let panels: [(&str, Field); 2] = [
        ("normalized entropy by layer", |s| s.normalized_entropy),
        ("GTD by layer (plain: λ = 1)", |s| s.gtd),
    ];
    for (area, (title, f)) in charts.iter().zip(panels) {
        let mut lines = vec![("plain model, A", series(f, true), BLUE)];
        if refined {
            lines.push(("with SAOBP, R", series(f, false), RED));
        }
        let max = lines
            .iter()
            .flat_map(|(_, s, _)| s.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.2f64..(layers as f64 - 0.8), 0.0f64..max * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .x_labels(layers)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_labels(6)
            .draw()?;
        for (name, points, color) in lines {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    let heat = bottom.split_evenly((1, 2));
    let plain_title = format!("A, plain model: layer {}, head {}", maps.layer, maps.head);
    heatmap(&heat[0], &plain_title, &maps.plain, &maps.tokens)?;
    match &maps.refined {
        Some(r) => heatmap(
            &heat[1],
            &format!("R, with SAOBP: layer {}, head {}", maps.layer, maps.head),
            r,
            &maps.tokens,
        )?,
        None => {
            heat[1].draw(&Text::new(
                "λ = 0: no refined map (pass --lambda > 0)",
                (40, 200),
                ("sans-serif", 20),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

fn heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    map: &[f32],
    tokens: &[String],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let n = tokens.len();
    let max = map.iter().copied().fold(0.0f32, f32::max).max(1e-6);
    let label = |i: usize| -> String {
        if n <= 48 {
            tokens.get(i).cloned().unwrap_or_default()
        } else {
            i.to_string()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} (max {max:.3})"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(70)
        .y_label_area_size(90)
        .build_cartesian_2d(
            // A segmented range a..b has b - a + 1 segments, one per token here.
            (0..n.saturating_sub(1)).into_segmented(),
            (0..n.saturating_sub(1)).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n.min(48))
        .y_labels(n.min(48))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => label(*i),
            _ => String::new(),
        })
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => label(n - 1 - i),
            _ => String::new(),
        })
        .x_label_style(
            ("sans-serif", 12)
                .into_font()
                .transform(FontTransform::Rotate90),
        )
        .y_label_style(("sans-serif", 12))
        .x_desc("key")
        .y_desc("query")
        .draw()?;
    chart.draw_series((0..n).flat_map(|i| {
        (0..n).map(move |j| {
            let v = f64::from(map[i * n + j] / max);
            // Row i is drawn at the top for i = 0.
            let y = n - 1 - i;
            Rectangle::new(
                [
                    (SegmentValue::Exact(j), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(j + 1), SegmentValue::Exact(y + 1)),
                ],
                ViridisRGB::get_color(v).filled(),
            )
        })
    }))?;
    Ok(())
}
