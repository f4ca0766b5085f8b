//! The PNG of `analyze` and `maps`: normalized entropy and GTD by layer
//! (`A` vs `R`), and heatmaps of one layer and head on a log colour scale.

use plotters::prelude::*;
use saobp::model::ForwardOutput;
use saobp::{Gpu, HeadSummary};

use super::layers::Names;
use super::CliResult;

/// Decades of the heatmaps' log colour scale: from the larger map's maximum
/// down to 10⁻⁴ of it, as the browser demo draws its maps. Attention that
/// piles onto `[CLS]`/`[SEP]` leaves every other entry orders of magnitude
/// smaller; a linear scale would show those as one flat dark.
pub const DECADES: f64 = 4.0;

/// Where `v` falls on the log colour scale whose top is `max`: 1 at `max`,
/// 0 at `max·10⁻⁴` and below; `None` for an entry that is exactly 0 (or
/// less), drawn apart from the scale.
pub fn log_position(v: f32, max: f32) -> Option<f64> {
    if v <= 0.0 || max <= 0.0 {
        return None;
    }
    let t = (f64::from(v) / f64::from(max)).log10() / DECADES + 1.0;
    Some(t.clamp(0.0, 1.0))
}

/// The colour of an exact zero: darker than the scale's bottom.
const ZERO: RGBColor = RGBColor(20, 20, 28);

/// The colour of `v` on the scale topped by `max`.
fn colour(v: f32, max: f32) -> RGBColor {
    log_position(v, max).map_or(ZERO, ViridisRGB::get_color)
}

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
pub fn render(
    curves: &LayerCurves,
    maps: &Heatmaps,
    refined: bool,
    names: &Names,
) -> CliResult<Vec<u8>> {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(&mut rgb, curves, maps, refined, names)
        .map_err(|e| format!("cannot draw the plot: {e}"))?;
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

fn draw(
    rgb: &mut [u8],
    curves: &LayerCurves,
    maps: &Heatmaps,
    refined: bool,
    names: &Names,
) -> DrawResult {
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
        let mut lines = vec![(names.maps[0], series(f, true), BLUE)];
        if refined {
            lines.push((names.maps[1], series(f, false), RED));
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
    let (bottom, legend) = bottom.split_vertically(SIZE.1 / 2 + 30 - 60);
    let heat = bottom.split_evenly((1, 2));
    // One scale for both maps, so the eye compares like with like.
    let max = maps
        .plain
        .iter()
        .chain(maps.refined.iter().flatten())
        .copied()
        .fold(0.0f32, f32::max);
    let title = |name: &str| format!("{name}: layer {}, head {}", maps.layer, maps.head);
    heatmap(
        &heat[0],
        &title(names.maps[0]),
        &maps.plain,
        max,
        &maps.tokens,
    )?;
    match &maps.refined {
        Some(r) => heatmap(&heat[1], &title(names.maps[1]), r, max, &maps.tokens)?,
        None => {
            heat[1].draw(&Text::new(
                "λ = 0: no refined map (pass --lambda > 0)",
                (40, 200),
                ("sans-serif", 20),
            ))?;
        }
    }
    colour_bar(&legend, max)?;
    root.present()?;
    Ok(())
}

/// The colour scale under the heatmaps: one tick per decade, and what the
/// scale is.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    max: f32,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let (x0, width, y0, height) = (160i32, 500i32, 8i32, 16i32);
    let font = ("sans-serif", 15);
    let caption = [
        format!(
            "colour: log scale over {DECADES} decades, 1e-{DECADES}·max to max = {max:.3} \
             (one scale for both maps)"
        ),
        format!("below 1e-{DECADES}·max: the bottom colour; exact zeros: near-black"),
    ];
    for (i, line) in caption.into_iter().enumerate() {
        area.draw(&Text::new(
            line,
            (x0 + width + 30, y0 + 20 * i as i32),
            font,
        ))?;
    }
    for x in 0..width {
        let t = f64::from(x) / f64::from(width - 1);
        area.draw(&Rectangle::new(
            [(x0 + x, y0), (x0 + x + 1, y0 + height)],
            ViridisRGB::get_color(t).filled(),
        ))?;
    }
    for k in 0..=DECADES as i32 {
        let x = x0 + (f64::from(k) / DECADES * f64::from(width - 1)) as i32;
        area.draw(&PathElement::new(
            vec![(x, y0 + height), (x, y0 + height + 5)],
            BLACK,
        ))?;
        let label = match DECADES as i32 - k {
            0 => "max".to_string(),
            d => format!("1e-{d}·max"),
        };
        area.draw(&Text::new(label, (x - 25, y0 + height + 8), font))?;
    }
    Ok(())
}

/// One map as a heatmap, coloured by [`log_position`] on the scale topped by `max`.
fn heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    map: &[f32],
    max: f32,
    tokens: &[String],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let n = tokens.len();
    let own_max = map.iter().copied().fold(0.0f32, f32::max);
    let label = |i: usize| -> String {
        if n <= 48 {
            tokens.get(i).cloned().unwrap_or_default()
        } else {
            i.to_string()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} (max {own_max:.3})"), ("sans-serif", 20))
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
            // Row i is drawn at the top for i = 0.
            let y = n - 1 - i;
            Rectangle::new(
                [
                    (SegmentValue::Exact(j), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(j + 1), SegmentValue::Exact(y + 1)),
                ],
                colour(map[i * n + j], max).filled(),
            )
        })
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_scale_is_logarithmic_over_four_decades() {
        let at = |v: f32| log_position(v, 0.8).unwrap();
        assert_eq!(at(0.8), 1.0);
        assert!((at(0.08) - 0.75).abs() < 1e-6);
        assert!((at(0.008) - 0.5).abs() < 1e-6);
        assert!(at(8e-5).abs() < 1e-6);
        // Below the scale's bottom, and exact zeros, which are not on it.
        assert_eq!(at(1e-9), 0.0);
        assert_eq!(log_position(0.0, 0.8), None);
        assert_eq!(colour(0.0, 0.8), ZERO);
        assert_ne!(colour(1e-9, 0.8), ZERO);
    }
}
