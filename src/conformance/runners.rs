//! Each case through the public API and through the float64 reference:
//! the outputs side by side, and the time each side took.

use std::time::{Duration, Instant};

use crate::attention::{attention, AttentionOptions, Mode};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::matmul::{
    self as matmul_kernel, matmul, matmul_variant, MatmulOptions, MatmulVariant,
};
use crate::kernels::metrics::{metrics, Metric, MetricsOptions, RowStats, METRIC_COUNT};
use crate::kernels::saobp::{refine_map, Lambda};
use crate::kernels::softmax::{softmax, SoftmaxOptions};
use crate::reference::{self, compare, RefOptions, Tolerance};
use crate::tensor::{numel, Tensor};
use crate::workload::SplitMix64;

use super::catalogue::{key_mask, lambdas, Epilogue, FusedCase, Input};
use super::report::Check;
use super::training;
use super::{Case, Fault, Options, Subject};

/// One output of a run, before it is compared.
pub(super) struct Output {
    name: String,
    shape: Vec<usize>,
    got: Vec<f32>,
    want: Vec<f64>,
    tolerance: Tolerance,
}

impl Output {
    pub(super) fn new(
        name: &str,
        shape: &[usize],
        got: Vec<f32>,
        want: Vec<f64>,
        tolerance: Tolerance,
    ) -> Output {
        Output {
            name: name.to_string(),
            shape: shape.to_vec(),
            got,
            want,
            tolerance,
        }
    }

    pub(super) fn check(self) -> Result<Check> {
        let comparison = compare(&self.got, &self.want, self.tolerance)?;
        let worst_miss = match comparison.worst_index {
            Some(i) if !comparison.passed() => {
                Some((unravel(i, &self.shape), self.got[i], self.want[i]))
            }
            _ => None,
        };
        Ok(Check {
            name: self.name,
            shape: self.shape,
            tolerance: self.tolerance,
            comparison,
            worst_miss,
        })
    }
}

/// The multi-index of flat index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &d) in index.iter_mut().zip(shape).rev() {
        let d = d.max(1);
        *slot = i % d;
        i /= d;
    }
    index
}

/// GPU outputs with their references, and the time each side took.
pub(super) struct Measured {
    pub(super) outputs: Vec<Output>,
    pub(super) time: Duration,
    pub(super) reference_time: Duration,
}

/// `len` values uniform in `[lo, hi)`.
pub(super) fn uniform(rng: &mut SplitMix64, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len)
        .map(|_| lo + (hi - lo) * (rng.uniform(-1.0, 1.0) + 1.0) / 2.0)
        .collect()
}

pub(super) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

async fn run_matmul(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    a_shape: &[usize],
    b_shape: &[usize],
    opts: &MatmulOptions,
    variant: Option<MatmulVariant>,
    fault: Option<Fault>,
) -> Result<Measured> {
    let a = uniform(rng, numel(a_shape)?, -1.0, 1.0);
    let b = uniform(rng, numel(b_shape)?, -1.0, 1.0);
    let start = Instant::now();
    let ta = Tensor::from_slice(gpu, a_shape, &a)?;
    let tb = Tensor::from_slice(gpu, b_shape, &b)?;
    let c = match fault {
        Some(Fault::MatmulSkipsLastK) => {
            matmul_kernel::matmul_skipping_last_k(gpu, &ta, &tb, opts).await?
        }
        None => match variant {
            Some(v) => matmul_variant(gpu, &ta, &tb, opts, v).await?,
            None => matmul(gpu, &ta, &tb, opts).await?,
        },
    };
    let got = c.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::matmul(&a, a_shape, &b, b_shape, opts)?;
    let reference_time = start.elapsed();
    let k = if opts.trans_a {
        a_shape[a_shape.len() - 2]
    } else {
        a_shape[a_shape.len() - 1]
    };
    Ok(Measured {
        outputs: vec![Output::new("C", c.shape(), got, want, Tolerance::matmul(k))],
        time,
        reference_time,
    })
}

/// A product with its epilogue fused into the store, by the case's variant,
/// which must fuse it: `x` `[rows, k]`, `W` `[k, n]`, bias and residual
/// uniform in [-1, 1).
async fn run_matmul_epilogue(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    case: &FusedCase,
) -> Result<Measured> {
    use crate::kernels::matmul::{fused_steps_with, Epilogue as Fused};
    let FusedCase {
        epilogue,
        rows,
        k,
        n,
        heads,
        seq,
        variant,
    } = *case;
    // The epilogues of one product over token rows (all but the split into
    // heads add a bias); the heads' merge multiplies per-head matrices.
    enum Bias {
        Residual,
        Gelu,
        SplitQkv,
        GeluBackward,
        SplitHeads,
    }
    let name = epilogue.name();
    let epilogue = match epilogue {
        Epilogue::BiasResidual => Bias::Residual,
        Epilogue::BiasGelu => Bias::Gelu,
        Epilogue::SplitQkv => Bias::SplitQkv,
        Epilogue::GeluBackward => Bias::GeluBackward,
        Epilogue::SplitHeads => Bias::SplitHeads,
        Epilogue::MergeHeads | Epilogue::MergeHeadsTransposed => {
            return run_merge_heads(gpu, rng, case).await
        }
    };
    // The GELU backward's product and the one split into heads are dy·Wᵀ:
    // W stored [n, k].
    let trans_b = matches!(epilogue, Bias::GeluBackward | Bias::SplitHeads);
    let opts = MatmulOptions {
        trans_b,
        ..MatmulOptions::default()
    };
    let w_shape = if trans_b { [n, k] } else { [k, n] };
    let x = uniform(rng, rows * k, -1.0, 1.0);
    let w = uniform(rng, k * n, -1.0, 1.0);
    let bias = uniform(rng, n, -1.0, 1.0);
    // The residual, or the GELU's input before its bias (into its tails).
    let residual = uniform(rng, rows * n, -1.0, 1.0);
    let pre: Vec<f32> = residual.iter().map(|r| 4.0 * r).collect();
    let plan = matmul_kernel::plan(&[rows, k], &w_shape, &opts)?;
    let start = Instant::now();
    let tx = Tensor::from_slice(gpu, &[rows, k], &x)?;
    let tw = Tensor::from_slice(gpu, &w_shape, &w)?;
    let tb = Tensor::from_slice(gpu, &[n], &bias)?;
    let c = Tensor::zeros(gpu, &[rows, n])?;
    // q, k and v of the split, or the heads: [B, H, T, C/H].
    let width = if matches!(epilogue, Bias::SplitQkv) {
        n / 3
    } else {
        n
    };
    let head_shape = [rows / seq.max(1), heads, seq, width / heads.max(1)];
    let extra = match epilogue {
        Bias::Residual => vec![Tensor::from_slice(gpu, &[rows, n], &residual)?],
        Bias::Gelu => vec![Tensor::zeros(gpu, &[rows, n])?],
        Bias::GeluBackward => vec![Tensor::from_slice(gpu, &[rows, n], &pre)?],
        Bias::SplitQkv => vec![
            Tensor::zeros(gpu, &head_shape)?,
            Tensor::zeros(gpu, &head_shape)?,
            Tensor::zeros(gpu, &head_shape)?,
        ],
        Bias::SplitHeads => vec![Tensor::zeros(gpu, &head_shape)?],
    };
    let spec = match epilogue {
        Bias::Residual => Fused::BiasResidual {
            bias: &tb,
            residual: &extra[0],
        },
        Bias::Gelu => Fused::BiasGelu {
            bias: &tb,
            act: &extra[0],
        },
        Bias::GeluBackward => Fused::GeluBackward {
            bias: &tb,
            pre: &extra[0],
        },
        Bias::SplitQkv => Fused::SplitQkv {
            bias: &tb,
            q: &extra[0],
            k: &extra[1],
            v: &extra[2],
            heads,
            seq,
        },
        Bias::SplitHeads => Fused::SplitHeads {
            out: &extra[0],
            heads,
            seq,
        },
    };
    let steps = fused_steps_with(gpu, variant, &plan, &tx, &tw, &c, spec, None)?
        .ok_or_else(|| Error::Internal(format!("{variant} did not fuse the {name} epilogue")))?;
    gpu.run(&steps).await?;
    // What the epilogue writes: C (not the residual it reads), the
    // activation, or q, k and v (not C).
    let written: Vec<&Tensor> = match epilogue {
        Bias::Residual => vec![&c],
        Bias::Gelu => vec![&c, &extra[0]],
        Bias::GeluBackward => vec![&c],
        Bias::SplitQkv | Bias::SplitHeads => extra.iter().collect(),
    };
    let mut got = Vec::with_capacity(written.len());
    for t in written {
        got.push(t.to_vec(gpu).await?);
    }
    let time = start.elapsed();
    let start = Instant::now();
    let product = reference::matmul(&x, &[rows, k], &w, &w_shape, &opts)?;
    let biased = |i: usize| product[i] + f64::from(bias[i % n]);
    let tolerance = Tolerance::matmul(k);
    let outputs = match epilogue {
        Bias::Residual => {
            let want = (0..rows * n)
                .map(|i| f64::from(residual[i]) + biased(i))
                .collect();
            vec![Output::new("C", &[rows, n], got.remove(0), want, tolerance)]
        }
        Bias::Gelu => {
            let act = (0..rows * n)
                .map(|i| reference::gpt::gelu(biased(i)))
                .collect();
            vec![
                Output::new("C", &[rows, n], got.remove(0), product, tolerance),
                Output::new("act", &[rows, n], got.remove(0), act, tolerance),
            ]
        }
        Bias::GeluBackward => {
            let want = (0..rows * n)
                .map(|i| product[i] * reference::gpt::gelu_grad(f64::from(pre[i] + bias[i % n])))
                .collect();
            vec![Output::new("C", &[rows, n], got.remove(0), want, tolerance)]
        }
        Bias::SplitQkv => {
            let width = n / 3;
            let hd = width / heads;
            let mut want = vec![vec![0.0; rows * width]; 3];
            for i in 0..rows * n {
                let (row, col) = (i / n, i % n);
                let (part, h, d) = (col / width, col % width / hd, col % hd);
                let (b, t) = (row / seq, row % seq);
                want[part][((b * heads + h) * seq + t) * hd + d] = biased(i);
            }
            ["q", "k", "v"]
                .into_iter()
                .zip(want)
                .map(|(name, want)| Output::new(name, &head_shape, got.remove(0), want, tolerance))
                .collect()
        }
        Bias::SplitHeads => {
            let hd = n / heads;
            let mut want = vec![0.0; rows * n];
            for (i, &value) in product.iter().enumerate() {
                let (row, col) = (i / n, i % n);
                let (b, t) = (row / seq, row % seq);
                want[((b * heads + col / hd) * seq + t) * hd + col % hd] = value;
            }
            vec![Output::new(
                "heads",
                &head_shape,
                got.remove(0),
                want,
                tolerance,
            )]
        }
    };
    Ok(Measured {
        outputs,
        time,
        reference_time: start.elapsed(),
    })
}

/// A [`Epilogue::MergeHeads`] case: the per-head products stored as part 2
/// of 3 of token rows, the other parts left as they were (zeros).
async fn run_merge_heads(gpu: &Gpu, rng: &mut SplitMix64, case: &FusedCase) -> Result<Measured> {
    use crate::kernels::matmul::{fused_steps_with, Epilogue as Fused};
    let FusedCase {
        epilogue,
        rows: t,
        k,
        n: hd,
        heads,
        seq: items,
        variant,
    } = *case;
    let g = items * heads;
    let trans_a = epilogue == Epilogue::MergeHeadsTransposed;
    let opts = MatmulOptions {
        trans_a,
        ..MatmulOptions::default()
    };
    let x_shape = if trans_a { [g, k, t] } else { [g, t, k] };
    let x = uniform(rng, g * t * k, -1.0, 1.0);
    let w = uniform(rng, g * k * hd, -1.0, 1.0);
    let plan = matmul_kernel::plan(&x_shape, &[g, k, hd], &opts)?;
    let start = Instant::now();
    let tx = Tensor::from_slice(gpu, &x_shape, &x)?;
    let tw = Tensor::from_slice(gpu, &[g, k, hd], &w)?;
    let c = Tensor::zeros(gpu, &[g, t, hd])?;
    let merged_shape = [items * t, 3 * heads * hd];
    let merged = Tensor::zeros(gpu, &merged_shape)?;
    let spec = Fused::MergeHeads {
        out: &merged,
        heads,
        parts: 3,
        part: 1,
    };
    let steps =
        fused_steps_with(gpu, variant, &plan, &tx, &tw, &c, spec, None)?.ok_or_else(|| {
            Error::Internal(format!(
                "{variant} did not fuse the {} epilogue",
                epilogue.name()
            ))
        })?;
    gpu.run(&steps).await?;
    let got = merged.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let product = reference::matmul(&x, &x_shape, &w, &[g, k, hd], &opts)?;
    let width = 3 * heads * hd;
    let mut want = vec![0.0; items * t * width];
    for (i, value) in product.into_iter().enumerate() {
        let (matrix, row, d) = (i / (t * hd), i / hd % t, i % hd);
        let (b, h) = (matrix / heads, matrix % heads);
        want[(b * t + row) * width + (heads + h) * hd + d] = value;
    }
    Ok(Measured {
        outputs: vec![Output::new(
            "merged",
            &merged_shape,
            got,
            want,
            Tolerance::matmul(k),
        )],
        time,
        reference_time: start.elapsed(),
    })
}

/// The key mask of a softmax case over `shape` and its `[B, C]` shape: B
/// the first dimension, C the last; a matrix has one row of it.
pub(super) fn softmax_key_mask(shape: &[usize]) -> ([usize; 2], Vec<f32>) {
    let batch = if shape.len() > 2 { shape[0] } else { 1 };
    let cols = shape[shape.len() - 1];
    ([batch, cols], key_mask(batch, cols))
}

async fn run_softmax(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    shape: &[usize],
    causal: bool,
    masked: bool,
    range: f32,
) -> Result<Measured> {
    let x = uniform(rng, numel(shape)?, -range, range);
    let ([batch, cols], mask) = softmax_key_mask(shape);
    let start = Instant::now();
    let tx = Tensor::from_slice(gpu, shape, &x)?;
    let tm = Tensor::from_slice(gpu, &[batch, cols], &mask)?;
    let y = softmax(
        gpu,
        &tx,
        &SoftmaxOptions {
            causal,
            key_mask: masked.then_some(&tm),
        },
    )
    .await?;
    let got = y.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::softmax(&x, shape, causal, masked.then_some(&mask[..]))?;
    let reference_time = start.elapsed();
    Ok(Measured {
        outputs: vec![Output::new("P", shape, got, want, Tolerance::SPEC)],
        time,
        reference_time,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_attention(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    subject: Subject,
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    masked: bool,
    lambda: &[f32],
) -> Result<Measured> {
    let [b, h, n, d] = shape;
    let q = uniform(rng, b * h * n * d, -2.0, 2.0);
    let k = uniform(rng, b * h * n * d, -2.0, 2.0);
    let v = uniform(rng, b * h * n * dv, -1.0, 1.0);
    let mask = key_mask(b, n);
    let mode = match subject {
        Subject::FusedOutput => Mode::Fused,
        Subject::MaterializedOutput => Mode::Materialized,
        Subject::Flash => Mode::Flash,
        Subject::Streaming => Mode::Streaming,
        _ => Mode::Plain,
    };
    let start = Instant::now();
    let tq = Tensor::from_slice(gpu, &shape, &q)?;
    let tk = Tensor::from_slice(gpu, &shape, &k)?;
    let tv = Tensor::from_slice(gpu, &[b, h, n, dv], &v)?;
    let tm = Tensor::from_slice(gpu, &[b, n], &mask)?;
    let opts = AttentionOptions {
        causal,
        key_mask: masked.then_some(&tm),
        lambda: if lambda.is_empty() {
            Lambda::default()
        } else {
            Lambda::PerHead(lambda.to_vec())
        },
        mode,
        return_attention: mode == Mode::Plain,
        return_refined: mode == Mode::Materialized,
        ..Default::default()
    };
    let out = attention(gpu, &tq, &tk, &tv, &opts).await?;
    let read = |t: Option<&Tensor>, what: &str| {
        t.cloned()
            .ok_or_else(|| Error::Internal(format!("attention returned no {what}")))
    };
    let o = out.output.to_vec(gpu).await?;
    let second = match mode {
        Mode::Plain => read(out.attention.as_ref(), "attention map")?,
        Mode::Fused | Mode::Streaming => read(out.multi_hop_mass.as_ref(), "multi-hop mass")?,
        Mode::Materialized => read(out.refined.as_ref(), "refined map")?,
        Mode::Flash => read(out.row_stats.as_ref(), "row stats")?,
    };
    let second_values = second.to_vec(gpu).await?;
    let stats = if mode.is_streaming() {
        read(out.row_stats.as_ref(), "row stats")?
            .to_vec(gpu)
            .await?
    } else {
        Vec::new()
    };
    let time = start.elapsed();

    let start = Instant::now();
    let ref_opts = RefOptions {
        causal,
        key_mask: masked.then_some(&mask),
        scale: None,
    };
    let o_shape = [b, h, n, dv];
    // Max, sum and entropy of each row, as three outputs so that a miss names its statistic.
    let row_stats = |want: Vec<f64>| -> Result<Vec<Output>> {
        let (got, want) = (
            RowStats::from_interleaved(&stats)?,
            RowStats::from_interleaved(&want)?,
        );
        Ok(got
            .columns()
            .into_iter()
            .zip(want.columns())
            .map(|((name, got), (_, want))| {
                Output::new(
                    name,
                    &[b, h, n],
                    got.to_vec(),
                    want.to_vec(),
                    Tolerance::SPEC,
                )
            })
            .collect())
    };
    let outputs = if mode == Mode::Flash {
        let want = reference::attention(&q, &k, &v, shape, dv, &ref_opts)?;
        let mut outputs = vec![Output::new("O", &o_shape, o, want.output, Tolerance::SPEC)];
        outputs.extend(row_stats(reference::attention::row_stats(
            &q, &k, shape, &ref_opts,
        )?)?);
        outputs
    } else if mode == Mode::Plain {
        let want = reference::attention(&q, &k, &v, shape, dv, &ref_opts)?;
        vec![
            Output::new(
                "A",
                second.shape(),
                second_values,
                want.attention,
                Tolerance::SPEC,
            ),
            Output::new("O", &o_shape, o, want.output, Tolerance::SPEC),
        ]
    } else {
        let lambda64 = to_f64(lambda);
        let want = reference::saobp(&q, &k, &v, shape, dv, &ref_opts, &lambda64)?;
        let (name, reference) = if mode == Mode::Materialized {
            ("R", want.refined)
        } else {
            ("m", want.mass)
        };
        let mut outputs = vec![
            Output::new("O", &o_shape, o, want.output, Tolerance::SPEC),
            Output::new(
                name,
                second.shape(),
                second_values,
                reference,
                Tolerance::SPEC,
            ),
        ];
        if mode == Mode::Streaming {
            outputs.extend(row_stats(reference::attention::row_stats(
                &q, &k, shape, &ref_opts,
            )?)?);
        }
        outputs
    };
    Ok(Measured {
        outputs,
        time,
        reference_time: start.elapsed(),
    })
}

async fn run_map(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    subject: Subject,
    [b, h, n]: [usize; 3],
    causal: bool,
    masked: bool,
    lambda: &[f32],
) -> Result<Measured> {
    let map_shape = [b, h, n, n];
    let mask = key_mask(b, n);
    let scores = uniform(rng, b * h * n * n, -6.0, 6.0);
    let mask_ref = masked.then_some(&mask[..]);
    // Rows stochastic (or empty) as the kernels expect, then exactly the f32 the GPU sees.
    let p: Vec<f32> = reference::softmax(&scores, &map_shape, causal, mask_ref)?
        .iter()
        .map(|&x| x as f32)
        .collect();
    let p64 = to_f64(&p);
    let lambda64 = to_f64(lambda);
    let row_shape = [b, h, n];

    let start = Instant::now();
    let tp = Tensor::from_slice(gpu, &map_shape, &p)?;
    let tm = Tensor::from_slice(gpu, &[b, n], &mask)?;
    if subject == Subject::Metrics {
        let l = Lambda::PerHead(lambda.to_vec());
        let opts = MetricsOptions {
            causal,
            key_mask: masked.then_some(&tm),
            lambda: (!lambda.is_empty()).then_some(&l),
        };
        let got = metrics(gpu, &tp, &opts).await?;
        let rows = got.rows.to_vec(gpu).await?;
        let time = start.elapsed();

        let start = Instant::now();
        let mass = reference::saobp::multi_hop_mass(&reference::saobp::messages(&p64, n)?, n)?;
        let want = reference::metrics::row_metrics(
            &p64,
            &mass,
            (!lambda.is_empty()).then_some(&lambda64[..]),
            row_shape,
            causal,
            mask_ref,
        )?;
        let summaries = reference::metrics::summarize(&want, n)?;
        let reference_time = start.elapsed();
        let g = b * h * n;
        let mut outputs: Vec<Output> = Metric::ALL
            .into_iter()
            .map(|metric| {
                // Distances sum up to N terms of size up to N.
                let tolerance = if metric == Metric::Distance {
                    Tolerance::scaled_by(n)
                } else {
                    Tolerance::SPEC
                };
                Output::new(
                    metric.name(),
                    &row_shape,
                    rows[metric.range(g)].to_vec(),
                    want.iter().map(|r| r[metric.index()]).collect(),
                    tolerance,
                )
            })
            .collect();
        let got_summaries: Vec<f32> = got
            .heads
            .iter()
            .flat_map(|s| {
                s.fields()
                    .into_iter()
                    .map(|(_, x)| x as f32)
                    .chain([s.rows as f32])
            })
            .collect();
        // Means of row metrics, distance included: bounded like distance.
        outputs.push(Output::new(
            "summaries",
            &[b * h, METRIC_COUNT],
            got_summaries,
            summaries.concat(),
            Tolerance::scaled_by(n),
        ));
        return Ok(Measured {
            outputs,
            time,
            reference_time,
        });
    }

    let refined = refine_map(gpu, &tp, &Lambda::PerHead(lambda.to_vec())).await?;
    let outputs_gpu = if subject == Subject::Messages {
        vec![refined.messages.to_vec(gpu).await?]
    } else {
        vec![
            refined.mass.to_vec(gpu).await?,
            refined.refined.to_vec(gpu).await?,
        ]
    };
    let time = start.elapsed();
    let start = Instant::now();
    let messages = reference::saobp::messages(&p64, n)?;
    let outputs = if subject == Subject::Messages {
        let mut got = outputs_gpu.into_iter();
        vec![Output::new(
            "M",
            &map_shape,
            got.next().unwrap_or_default(),
            messages,
            Tolerance::SPEC,
        )]
    } else {
        let mass = reference::saobp::multi_hop_mass(&messages, n)?;
        let r = reference::saobp::refine(&p64, &messages, &mass, &lambda64, n)?;
        let mut got = outputs_gpu.into_iter();
        vec![
            Output::new(
                "m",
                &row_shape,
                got.next().unwrap_or_default(),
                mass,
                Tolerance::SPEC,
            ),
            Output::new(
                "R",
                &map_shape,
                got.next().unwrap_or_default(),
                r,
                Tolerance::SPEC,
            ),
        ]
    };
    Ok(Measured {
        outputs,
        time,
        reference_time: start.elapsed(),
    })
}

pub(super) async fn measure(gpu: &Gpu, case: &Case, opts: &Options) -> Result<Measured> {
    let mut rng = SplitMix64::new(case.seed());
    match &case.input {
        Input::Matmul { a, b, opts: m, .. } if case.subject == Subject::MatmulBackward => {
            training::run_matmul_backward(gpu, &mut rng, a, b, m).await
        }
        Input::Matmul {
            a,
            b,
            opts: m,
            variant,
        } => {
            let fault = opts.fault.filter(|f| f.subject() == case.subject);
            run_matmul(gpu, &mut rng, a, b, m, *variant, fault).await
        }
        Input::MatmulEpilogue(f) => run_matmul_epilogue(gpu, &mut rng, f).await,
        Input::Softmax {
            shape,
            causal,
            masked,
            range,
        } if case.subject == Subject::SoftmaxBackward => {
            training::run_softmax_backward(gpu, &mut rng, shape, *causal, *masked, *range).await
        }
        Input::Softmax {
            shape,
            causal,
            masked,
            range,
        } => run_softmax(gpu, &mut rng, shape, *causal, *masked, *range).await,
        Input::Attention {
            shape,
            dv,
            causal,
            masked,
            with_lambda,
        } => {
            let lambda = lambdas(if *with_lambda { shape[1] } else { 0 });
            run_attention(
                gpu,
                &mut rng,
                case.subject,
                *shape,
                *dv,
                *causal,
                *masked,
                &lambda,
            )
            .await
        }
        Input::Map {
            shape,
            causal,
            masked,
            with_lambda,
        } => {
            let lambda = lambdas(if *with_lambda { shape[1] } else { 0 });
            run_map(
                gpu,
                &mut rng,
                case.subject,
                *shape,
                *causal,
                *masked,
                &lambda,
            )
            .await
        }
        Input::AttentionBackward {
            shape,
            dv,
            causal,
            masked,
            given_a,
        } => {
            training::run_attention_backward(gpu, &mut rng, *shape, *dv, *causal, *masked, *given_a)
                .await
        }
        Input::OutputBackward { shape, dv, .. } if case.subject == Subject::MergedOutputs => {
            training::run_merged_outputs(gpu, &mut rng, *shape, *dv, &lambdas(shape[1])).await
        }
        Input::OutputBackward {
            shape,
            dv,
            causal,
            masked,
            with_lambda,
        } => {
            // λ = 0 everywhere turns the refinement off.
            let lambda = if *with_lambda {
                lambdas(shape[1])
            } else {
                vec![0.0; shape[1]]
            };
            training::run_output_backward(gpu, &mut rng, *shape, *dv, *causal, *masked, &lambda)
                .await
        }
        Input::Activations { shape, lo, hi } => {
            if matches!(
                case.subject,
                Subject::LayerNorm | Subject::LayerNormBackward
            ) {
                training::run_layer_norm(gpu, &mut rng, case.subject, shape, *lo, *hi).await
            } else {
                training::run_bias_gelu(gpu, &mut rng, case.subject, shape, *lo, *hi).await
            }
        }
        Input::Embed {
            batch,
            n,
            vocab,
            positions,
            width,
        } => {
            training::run_embed(
                gpu,
                &mut rng,
                case.subject,
                *batch,
                *n,
                *vocab,
                *positions,
                *width,
            )
            .await
        }
        Input::CrossEntropy {
            batch,
            n,
            vocab,
            range,
        } => training::run_cross_entropy(gpu, &mut rng, *batch, *n, *vocab, *range).await,
        Input::AdamW {
            tensors,
            steps,
            amp,
            clip,
        } => training::run_adamw(gpu, &mut rng, tensors, *steps, *amp, *clip).await,
        Input::TooLarge(reason) => Err(Error::invalid(reason)),
    }
}
