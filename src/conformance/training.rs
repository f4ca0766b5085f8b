//! Each training case through the public API and through the float64
//! reference: the backward of the softmax, the matmul, attention and SAOBP's
//! output, the GPT's per-token ops both ways, and AdamW.
//!
//! A backward's inputs are what its forward leaves, as the GPU would see
//! them: a map or statistics from the reference, rounded to f32, so that
//! each case runs the backward's entry points alone.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::attention::{attention_backward, AttentionBackwardOptions};
use crate::kernels::gpt::{self, TokenIds};
use crate::kernels::matmul::{self as matmul_kernel, matmul_backward, MatmulOptions};
use crate::kernels::optim::{accumulate, AdamW, AdamWOptions, ParamGroup};
use crate::kernels::saobp::{saobp_output_backward, Lambda};
use crate::kernels::softmax::{softmax_backward, SoftmaxOptions};
use crate::reference::optim::AdamWRef;
use crate::reference::{self, RefOptions, Tolerance};
use crate::tensor::{numel, Tensor};
use crate::workload::SplitMix64;

use super::catalogue::key_mask;
use super::runners::{softmax_key_mask, to_f64, uniform, Measured, Output};
use super::Subject;

/// The spec's LayerNorm epsilon for the GPT.
const LAYER_NORM_EPS: f32 = 1e-5;

/// The learning rate of every AdamW step: each step moves a value by about
/// this much, so a λ at 0.001 is clamped at its first step.
const ADAMW_LR: f64 = 0.01;

/// `x` rounded to the f32 the GPU is given.
fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// `(rows, width)` of an activation shaped `[.., width]`.
fn rows_width(shape: &[usize]) -> Result<(usize, usize)> {
    match shape.split_last() {
        Some((&width, lead)) => Ok((numel(lead)?, width)),
        None => Err(Error::shape("an activation needs a last dimension")),
    }
}

pub(super) async fn run_softmax_backward(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    shape: &[usize],
    causal: bool,
    masked: bool,
    range: f32,
) -> Result<Measured> {
    let scores = uniform(rng, numel(shape)?, -range, range);
    let ([batch, cols], mask) = softmax_key_mask(shape);
    let mask_ref = masked.then_some(&mask[..]);
    let a = to_f32(&reference::softmax(&scores, shape, causal, mask_ref)?);
    let grad_a = uniform(rng, a.len(), -1.0, 1.0);
    let start = Instant::now();
    let ta = Tensor::from_slice(gpu, shape, &a)?;
    let tg = Tensor::from_slice(gpu, shape, &grad_a)?;
    let tm = Tensor::from_slice(gpu, &[batch, cols], &mask)?;
    let opts = SoftmaxOptions {
        causal,
        key_mask: masked.then_some(&tm),
    };
    let got = softmax_backward(gpu, &ta, &tg, &opts)
        .await?
        .to_vec(gpu)
        .await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::softmax_backward(&a, &grad_a, shape, causal, mask_ref)?;
    Ok(Measured {
        outputs: vec![Output::new("dS", shape, got, want, Tolerance::SPEC)],
        time,
        reference_time: start.elapsed(),
    })
}

pub(super) async fn run_matmul_backward(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    a_shape: &[usize],
    b_shape: &[usize],
    opts: &MatmulOptions,
) -> Result<Measured> {
    let c_shape = matmul_kernel::plan(a_shape, b_shape, opts)?.out_shape;
    let a = uniform(rng, numel(a_shape)?, -1.0, 1.0);
    let b = uniform(rng, numel(b_shape)?, -1.0, 1.0);
    let grad_c = uniform(rng, numel(&c_shape)?, -1.0, 1.0);
    let start = Instant::now();
    let ta = Tensor::from_slice(gpu, a_shape, &a)?;
    let tb = Tensor::from_slice(gpu, b_shape, &b)?;
    let tc = Tensor::from_slice(gpu, &c_shape, &grad_c)?;
    let (grad_a, grad_b) = matmul_backward(gpu, &ta, &tb, &tc, opts).await?;
    let got_a = grad_a.to_vec(gpu).await?;
    let got_b = grad_b.to_vec(gpu).await?;
    let time = start.elapsed();

    // The spec's products, each through the reference matmul:
    // ∂op(A) = alpha · ∂C · op(B)ᵀ and ∂op(B) = alpha · op(A)ᵀ · ∂C, taken
    // back to the stored layouts.
    let start = Instant::now();
    let o = |trans_a, trans_b| MatmulOptions {
        trans_a,
        trans_b,
        alpha: opts.alpha,
    };
    let want_a = if opts.trans_a {
        reference::matmul(&b, b_shape, &grad_c, &c_shape, &o(opts.trans_b, true))?
    } else {
        reference::matmul(&grad_c, &c_shape, &b, b_shape, &o(false, !opts.trans_b))?
    };
    // A B shared by a batch sums its gradient over the batch: the batch's
    // rows become one inner dimension.
    let shared_b = b_shape.len() == 2 && a_shape.len() > 2;
    let flat = |shape: &[usize]| -> Result<Vec<usize>> {
        let (rows, width) = rows_width(shape)?;
        Ok(if shared_b {
            vec![rows, width]
        } else {
            shape.to_vec()
        })
    };
    let (a_flat, c_flat) = (flat(a_shape)?, flat(&c_shape)?);
    let want_b = if opts.trans_b {
        reference::matmul(&grad_c, &c_flat, &a, &a_flat, &o(true, opts.trans_a))?
    } else {
        reference::matmul(&a, &a_flat, &grad_c, &c_flat, &o(!opts.trans_a, false))?
    };
    let reference_time = start.elapsed();
    // Looser than the spec's bound, as the forward's: ∂A sums the N columns
    // of ∂C and ∂B its M rows (times the batch for a shared B), unit-bounded
    // terms whose f32 rounding grows with their count.
    let (rows, n) = rows_width(&c_shape)?;
    let summed = if shared_b {
        rows
    } else {
        c_shape[c_shape.len() - 2]
    };
    Ok(Measured {
        outputs: vec![
            Output::new("dA", a_shape, got_a, want_a, Tolerance::matmul(n)),
            Output::new("dB", b_shape, got_b, want_b, Tolerance::matmul(summed)),
        ],
        time,
        reference_time,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_attention_backward(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    masked: bool,
    given_a: bool,
) -> Result<Measured> {
    let [b, h, n, d] = shape;
    let q = uniform(rng, b * h * n * d, -2.0, 2.0);
    let k = uniform(rng, b * h * n * d, -2.0, 2.0);
    let v = uniform(rng, b * h * n * dv, -1.0, 1.0);
    let grad_o = uniform(rng, b * h * n * dv, -1.0, 1.0);
    let mask = key_mask(b, n);
    let ref_opts = RefOptions {
        causal,
        key_mask: masked.then_some(&mask),
        scale: None,
    };
    let a = if given_a {
        to_f32(&reference::attention(&q, &k, &v, shape, dv, &ref_opts)?.attention)
    } else {
        Vec::new()
    };
    let o_shape = [b, h, n, dv];
    let start = Instant::now();
    let tq = Tensor::from_slice(gpu, &shape, &q)?;
    let tk = Tensor::from_slice(gpu, &shape, &k)?;
    let tv = Tensor::from_slice(gpu, &o_shape, &v)?;
    let tg = Tensor::from_slice(gpu, &o_shape, &grad_o)?;
    let tm = Tensor::from_slice(gpu, &[b, n], &mask)?;
    let ta = if given_a {
        Some(Tensor::from_slice(gpu, &[b, h, n, n], &a)?)
    } else {
        None
    };
    let opts = AttentionBackwardOptions {
        causal,
        key_mask: masked.then_some(&tm),
        scale: None,
        attention: ta.as_ref(),
    };
    let grads = attention_backward(gpu, &tq, &tk, &tv, &tg, &opts).await?;
    let got_q = grads.grad_q.to_vec(gpu).await?;
    let got_k = grads.grad_k.to_vec(gpu).await?;
    let got_v = grads.grad_v.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::attention_backward(&q, &k, &v, shape, dv, &ref_opts, &grad_o)?;
    Ok(Measured {
        outputs: vec![
            Output::new("dQ", &shape, got_q, want.grad_q, Tolerance::SPEC),
            Output::new("dK", &shape, got_k, want.grad_k, Tolerance::SPEC),
            Output::new("dV", &o_shape, got_v, want.grad_v, Tolerance::SPEC),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

/// An output backward's inputs, drawn from `rng` in this order: a map
/// `[B, H, N, N]`, the reference softmax of scores uniform in [-6, 6)
/// rounded to f32 (rows stochastic, or empty, as the forward leaves them),
/// then `v` and `∂L/∂O` (`[B, H, N, dv]`) uniform in [-1, 1).
fn output_backward_inputs(
    rng: &mut SplitMix64,
    [b, h, n]: [usize; 3],
    dv: usize,
    causal: bool,
    mask: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let scores = uniform(rng, b * h * n * n, -6.0, 6.0);
    let a = to_f32(&reference::softmax(&scores, &[b, h, n, n], causal, mask)?);
    let v = uniform(rng, b * h * n * dv, -1.0, 1.0);
    let grad_o = uniform(rng, b * h * n * dv, -1.0, 1.0);
    Ok((a, v, grad_o))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_output_backward(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    [b, h, n]: [usize; 3],
    dv: usize,
    causal: bool,
    masked: bool,
    lambda: &[f32],
) -> Result<Measured> {
    let map_shape = [b, h, n, n];
    let o_shape = [b, h, n, dv];
    let mask = key_mask(b, n);
    let (a, v, grad_o) =
        output_backward_inputs(rng, [b, h, n], dv, causal, masked.then_some(&mask[..]))?;
    let start = Instant::now();
    let ta = Tensor::from_slice(gpu, &map_shape, &a)?;
    let tv = Tensor::from_slice(gpu, &o_shape, &v)?;
    let tg = Tensor::from_slice(gpu, &o_shape, &grad_o)?;
    let grads =
        saobp_output_backward(gpu, &ta, &tv, &Lambda::PerHead(lambda.to_vec()), &tg).await?;
    let got_a = grads.grad_attention.to_vec(gpu).await?;
    let got_v = grads.grad_v.to_vec(gpu).await?;
    let got_lambda = grads.grad_lambda.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::saobp::output_backward(&a, &v, &to_f64(lambda), n, dv, &grad_o)?;
    Ok(Measured {
        outputs: vec![
            Output::new(
                "dA",
                &map_shape,
                got_a,
                want.grad_attention,
                Tolerance::SPEC,
            ),
            Output::new("dV", &o_shape, got_v, want.grad_v, Tolerance::SPEC),
            Output::new("dλ", &[h], got_lambda, want.grad_lambda, Tolerance::SPEC),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

/// SAOBP's refined output and `∂L/∂V` of a map made as
/// [`run_output_backward`] makes it, each written into token rows by the
/// kernel that forms it: `O`'s heads side by side (`[B·N, H·dv]`) and
/// `∂L/∂V` as the third of three parts (`[B·N, 3·H·dv]`, the others left
/// at zero).
pub(super) async fn run_merged_outputs(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    [b, h, n]: [usize; 3],
    dv: usize,
    lambda: &[f32],
) -> Result<Measured> {
    use crate::kernels::saobp::{self as saobp_kernel, FusedIntermediates, Merge};
    let map_shape = [b, h, n, n];
    let o_shape = [b, h, n, dv];
    let (a, v, grad_o) = output_backward_inputs(rng, [b, h, n], dv, false, None)?;
    let start = Instant::now();
    let ta = Tensor::from_slice(gpu, &map_shape, &a)?;
    let tv = Tensor::from_slice(gpu, &o_shape, &v)?;
    let tg = Tensor::from_slice(gpu, &o_shape, &grad_o)?;
    let tl = Tensor::from_slice(gpu, &[h], lambda)?;
    let o_merged_shape = [b * n, h * dv];
    let v_merged_shape = [b * n, 3 * h * dv];
    let o_merged = Tensor::zeros(gpu, &o_merged_shape)?;
    let v_merged = Tensor::zeros(gpu, &v_merged_shape)?;
    let plan = saobp_kernel::plan(b * h, h, n, dv)?;
    let fused = FusedIntermediates::new(gpu, o_shape)?;
    let (mass, o) = (
        Tensor::scratch(gpu, &[b, h, n])?,
        Tensor::scratch(gpu, &o_shape)?,
    );
    let merge = Merge {
        out: &o_merged,
        parts: 1,
        part: 0,
    };
    let steps = fused.output_steps(gpu, &plan, &ta, &tv, None, &tl, &mass, &o, Some(merge))?;
    gpu.run(&steps).await?;
    drop(steps);
    let merge = Merge {
        out: &v_merged,
        parts: 3,
        part: 2,
    };
    let lambdas = Lambda::PerHead(lambda.to_vec());
    saobp_kernel::output_backward_merging(gpu, &ta, &tv, &lambdas, &tg, Some(merge)).await?;
    let got_o = o_merged.to_vec(gpu).await?;
    let got_v = v_merged.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let lambda64 = to_f64(lambda);
    let a64 = to_f64(&a);
    let messages = reference::saobp::messages(&a64, n)?;
    let m = reference::saobp::multi_hop_mass(&messages, n)?;
    let r = reference::saobp::refine(&a64, &messages, &m, &lambda64, n)?;
    let output = reference::saobp::apply(&r, &v, n, dv)?;
    let grads = reference::saobp::output_backward(&a, &v, &lambda64, n, dv, &grad_o)?;
    // Value (g, t, d) of a [B·H, N, dv] output into part `part` of `parts`.
    let merged = |values: &[f64], parts: usize, part: usize| {
        let width = parts * h * dv;
        let mut out = vec![0.0; b * n * width];
        for (i, &x) in values.iter().enumerate() {
            let (g, t, d) = (i / (n * dv), i / dv % n, i % dv);
            out[(g / h * n + t) * width + (part * h + g % h) * dv + d] = x;
        }
        out
    };
    Ok(Measured {
        outputs: vec![
            Output::new(
                "O",
                &o_merged_shape,
                got_o,
                merged(&output, 1, 0),
                Tolerance::SPEC,
            ),
            Output::new(
                "dV",
                &v_merged_shape,
                got_v,
                merged(&grads.grad_v, 3, 2),
                Tolerance::SPEC,
            ),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

/// LayerNorm forward or backward of `x` (`shape`) uniform in `[lo, hi)`,
/// with `γ` in [0.5, 1.5), `β` in [-0.5, 0.5) and `∂L/∂y` in [-1, 1).
pub(super) async fn run_layer_norm(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    subject: Subject,
    shape: &[usize],
    lo: f32,
    hi: f32,
) -> Result<Measured> {
    let (rows, width) = rows_width(shape)?;
    let x = uniform(rng, rows * width, lo, hi);
    let gamma = uniform(rng, width, 0.5, 1.5);
    let beta = uniform(rng, width, -0.5, 0.5);
    let eps = f64::from(LAYER_NORM_EPS);
    if subject == Subject::LayerNorm {
        let start = Instant::now();
        let tx = Tensor::from_slice(gpu, shape, &x)?;
        let tg = Tensor::from_slice(gpu, &[width], &gamma)?;
        let tb = Tensor::from_slice(gpu, &[width], &beta)?;
        let y = gpt::layer_norm(gpu, &tx, &tg, &tb, LAYER_NORM_EPS).await?;
        let got = y.out.to_vec(gpu).await?;
        let stats = y.stats.to_vec(gpu).await?;
        let time = start.elapsed();
        let start = Instant::now();
        let want = reference::gpt::layer_norm(&x, &gamma, &beta, eps)?;
        let column = |c: usize| stats.iter().skip(c).step_by(2).copied().collect();
        return Ok(Measured {
            outputs: vec![
                Output::new("y", shape, got, want.out, Tolerance::SPEC),
                Output::new("mean", &[rows], column(0), want.mean, Tolerance::SPEC),
                Output::new("1/σ", &[rows], column(1), want.rstd, Tolerance::SPEC),
            ],
            time,
            reference_time: start.elapsed(),
        });
    }
    let dy = uniform(rng, rows * width, -1.0, 1.0);
    // The statistics as the forward leaves them.
    let forward = reference::gpt::layer_norm(&x, &gamma, &beta, eps)?;
    let stats: Vec<f32> = forward
        .mean
        .iter()
        .zip(&forward.rstd)
        .flat_map(|(&mean, &rstd)| [mean as f32, rstd as f32])
        .collect();
    let start = Instant::now();
    let tx = Tensor::from_slice(gpu, shape, &x)?;
    let tg = Tensor::from_slice(gpu, &[width], &gamma)?;
    let ts = Tensor::from_slice(gpu, &[rows, 2], &stats)?;
    let tdy = Tensor::from_slice(gpu, shape, &dy)?;
    let grads = gpt::layer_norm_backward(gpu, &tx, &tg, &ts, &tdy).await?;
    let got_x = grads.dx.to_vec(gpu).await?;
    let got_gamma = grads.dgamma.to_vec(gpu).await?;
    let got_beta = grads.dbeta.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::gpt::layer_norm_backward(&x, &gamma, &dy, eps)?;
    // dγ and dβ sum a column over the rows: the matmul's bound for that many terms.
    Ok(Measured {
        outputs: vec![
            Output::new("dx", shape, got_x, want.dx, Tolerance::SPEC),
            Output::new(
                "dγ",
                &[width],
                got_gamma,
                want.dgamma,
                Tolerance::matmul(rows),
            ),
            Output::new(
                "dβ",
                &[width],
                got_beta,
                want.dbeta,
                Tolerance::matmul(rows),
            ),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

/// Bias + GELU forward or backward of `x` (`shape`) uniform in `[lo, hi)`,
/// with the bias and `∂L/∂y` in [-1, 1).
pub(super) async fn run_bias_gelu(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    subject: Subject,
    shape: &[usize],
    lo: f32,
    hi: f32,
) -> Result<Measured> {
    let (rows, width) = rows_width(shape)?;
    let x = uniform(rng, rows * width, lo, hi);
    let bias = uniform(rng, width, -1.0, 1.0);
    if subject == Subject::BiasGelu {
        let start = Instant::now();
        let tx = Tensor::from_slice(gpu, shape, &x)?;
        let tb = Tensor::from_slice(gpu, &[width], &bias)?;
        let got = gpt::bias_gelu(gpu, &tx, &tb).await?.to_vec(gpu).await?;
        let time = start.elapsed();
        let start = Instant::now();
        let want = reference::gpt::bias_gelu(&x, &bias)?;
        return Ok(Measured {
            outputs: vec![Output::new("y", shape, got, want, Tolerance::SPEC)],
            time,
            reference_time: start.elapsed(),
        });
    }
    let dy = uniform(rng, rows * width, -1.0, 1.0);
    let start = Instant::now();
    let tx = Tensor::from_slice(gpu, shape, &x)?;
    let tb = Tensor::from_slice(gpu, &[width], &bias)?;
    let tdy = Tensor::from_slice(gpu, shape, &dy)?;
    let grads = gpt::bias_gelu_backward(gpu, &tx, &tb, &tdy).await?;
    let got_x = grads.dx.to_vec(gpu).await?;
    let got_bias = grads.dbias.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let (want_x, want_bias) = reference::gpt::bias_gelu_backward(&x, &bias, &dy)?;
    // The bias's gradient sums a column over the rows: the matmul's bound
    // for that many terms.
    Ok(Measured {
        outputs: vec![
            Output::new("dx", shape, got_x, want_x, Tolerance::SPEC),
            Output::new(
                "dbias",
                &[width],
                got_bias,
                want_bias,
                Tolerance::matmul(rows),
            ),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

/// The embedding forward or backward: ids uniform below `vocab`, tables and
/// `∂L/∂x` in [-1, 1).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_embed(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    subject: Subject,
    batch: usize,
    n: usize,
    vocab: usize,
    positions: usize,
    width: usize,
) -> Result<Measured> {
    let ids: Vec<u32> = (0..batch * n)
        .map(|_| u32::try_from(rng.below(vocab)).unwrap_or(u32::MAX))
        .collect();
    let x_shape = [batch, n, width];
    if subject == Subject::Embed {
        let wte = uniform(rng, vocab * width, -1.0, 1.0);
        let wpe = uniform(rng, positions * width, -1.0, 1.0);
        let start = Instant::now();
        let tokens = TokenIds::new(gpu, &ids, batch, n, vocab)?;
        let twte = Tensor::from_slice(gpu, &[vocab, width], &wte)?;
        let twpe = Tensor::from_slice(gpu, &[positions, width], &wpe)?;
        let got = gpt::embed(gpu, &tokens, &twte, &twpe)
            .await?
            .to_vec(gpu)
            .await?;
        let time = start.elapsed();
        let start = Instant::now();
        let want = reference::gpt::embed(&ids, n, &wte, &wpe, width)?;
        return Ok(Measured {
            outputs: vec![Output::new("x", &x_shape, got, want, Tolerance::SPEC)],
            time,
            reference_time: start.elapsed(),
        });
    }
    let dx = uniform(rng, batch * n * width, -1.0, 1.0);
    let start = Instant::now();
    let tokens = TokenIds::new(gpu, &ids, batch, n, vocab)?;
    let tdx = Tensor::from_slice(gpu, &x_shape, &dx)?;
    let grads = gpt::embed_backward(gpu, &tokens, &tdx, positions).await?;
    let got_wte = grads.dwte.to_vec(gpu).await?;
    let got_wpe = grads.dwpe.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let (want_wte, want_wpe) = reference::gpt::embed_backward(&ids, n, &dx, vocab, positions)?;
    // Sums of gradient rows: a row of ∂wte over the tokens of its id (up to
    // every token), a row of ∂wpe over the batch. The matmul's bound for
    // that many terms.
    Ok(Measured {
        outputs: vec![
            Output::new(
                "dwte",
                &[vocab, width],
                got_wte,
                want_wte,
                Tolerance::matmul(batch * n),
            ),
            Output::new(
                "dwpe",
                &[positions, width],
                got_wpe,
                want_wpe,
                Tolerance::matmul(batch),
            ),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

pub(super) async fn run_cross_entropy(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    batch: usize,
    n: usize,
    vocab: usize,
    range: f32,
) -> Result<Measured> {
    let shape = [batch, n, vocab];
    let logits = uniform(rng, batch * n * vocab, -range, range);
    let targets: Vec<u32> = (0..batch * n)
        .map(|_| u32::try_from(rng.below(vocab)).unwrap_or(u32::MAX))
        .collect();
    let start = Instant::now();
    let tl = Tensor::from_slice(gpu, &shape, &logits)?;
    let tokens = TokenIds::new(gpu, &targets, batch, n, vocab)?;
    let ce = gpt::cross_entropy(gpu, &tl, &tokens).await?;
    let loss = ce.loss.to_vec(gpu).await?;
    let losses = ce.losses.to_vec(gpu).await?;
    let dlogits = ce.dlogits.to_vec(gpu).await?;
    let time = start.elapsed();
    let start = Instant::now();
    let want = reference::gpt::cross_entropy(&logits, &targets, vocab)?;
    Ok(Measured {
        outputs: vec![
            Output::new("loss", &[1], loss, vec![want.loss], Tolerance::SPEC),
            Output::new("losses", &[batch * n], losses, want.losses, Tolerance::SPEC),
            Output::new("dlogits", &shape, dlogits, want.dlogits, Tolerance::SPEC),
        ],
        time,
        reference_time: start.elapsed(),
    })
}

/// `steps` AdamW steps at [`ADAMW_LR`] with the spec's options (clipping
/// at norm 1 when `clip`): every tensor's values and moments after the
/// last step, and that step's gradient norm.
pub(super) async fn run_adamw(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    tensors: &[(Vec<usize>, ParamGroup)],
    steps: usize,
    amp: f32,
    clip: bool,
) -> Result<Measured> {
    let opts = AdamWOptions {
        max_grad_norm: clip.then_some(1.0),
        ..AdamWOptions::default()
    };
    let lens = tensors
        .iter()
        .map(|(shape, group)| Ok((numel(shape)?, *group)))
        .collect::<Result<Vec<_>>>()?;
    let init: Vec<Vec<f32>> = lens
        .iter()
        .map(|&(len, group)| match group {
            // At, near and well above the clamp.
            ParamGroup::Lambda => (0..len).map(|i| [0.001, 0.0, 0.5][i % 3]).collect(),
            _ => uniform(rng, len, -1.0, 1.0),
        })
        .collect();
    // Each step's gradient comes in two micro-batches, accumulated on the
    // GPU at scale 1/2 (`accumulate`): halving is exact and so is adding the
    // two halves up to one rounding, so the GPU's sum is the mean rounded to
    // f32, which is the gradient the reference steps with.
    let halves: Vec<[Vec<Vec<f32>>; 2]> = (0..steps)
        .map(|_| {
            [0, 1].map(|_| {
                lens.iter()
                    .map(|&(len, group)| match group {
                        // Pushes λ down by about the learning rate a step.
                        ParamGroup::Lambda => vec![amp; len],
                        _ => uniform(rng, len, -amp, amp),
                    })
                    .collect()
            })
        })
        .collect();
    let grads: Vec<Vec<Vec<f32>>> = halves
        .iter()
        .map(|[a, b]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(&x, &y)| ((f64::from(x) + f64::from(y)) / 2.0) as f32)
                        .collect()
                })
                .collect()
        })
        .collect();

    let start = Instant::now();
    let upload = |values: &[Vec<f32>]| -> Result<Vec<Tensor>> {
        tensors
            .iter()
            .zip(values)
            .map(|((shape, _), v)| Tensor::from_slice(gpu, shape, v))
            .collect()
    };
    let params = upload(&init)?;
    let sums = upload(&init)?;
    let shapes: Vec<(&[usize], ParamGroup)> = tensors
        .iter()
        .map(|(shape, group)| (shape.as_slice(), *group))
        .collect();
    let mut optimizer = AdamW::new(gpu, &shapes, opts)?;
    for pair in &halves {
        for (j, half) in pair.iter().enumerate() {
            for (sum, g) in sums.iter().zip(upload(half)?) {
                accumulate(gpu, sum, &g, 0.5, j == 0).await?;
            }
        }
        let params: Vec<&Tensor> = params.iter().collect();
        let g: Vec<&Tensor> = sums.iter().collect();
        optimizer.step(gpu, &params, &g, ADAMW_LR).await?;
    }
    let norm = optimizer.last_grad_norm(gpu).await?;
    let mut got = Vec::with_capacity(tensors.len());
    for (i, p) in params.iter().enumerate() {
        let (m, v) = optimizer
            .moments(i)
            .ok_or_else(|| Error::Internal(format!("AdamW has no moments for tensor {i}")))?;
        got.push([
            p.to_vec(gpu).await?,
            m.to_vec(gpu).await?,
            v.to_vec(gpu).await?,
        ]);
    }
    let time = start.elapsed();

    let start = Instant::now();
    let mut reference = AdamWRef::new(&lens, opts)?;
    let mut want: Vec<Vec<f64>> = init.iter().map(|v| to_f64(v)).collect();
    let mut want_norm = 0.0;
    for g in &grads {
        let g: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
        want_norm = reference.step(&mut want, &g, ADAMW_LR)?;
    }
    let mut outputs = Vec::with_capacity(3 * tensors.len() + 1);
    for (i, ((shape, _), [p, m, v])) in tensors.iter().zip(got).enumerate() {
        outputs.push(Output::new(
            &format!("p{i}"),
            shape,
            p,
            std::mem::take(&mut want[i]),
            Tolerance::SPEC,
        ));
        outputs.push(Output::new(
            &format!("m{i}"),
            shape,
            m,
            std::mem::take(&mut reference.m[i]),
            Tolerance::SPEC,
        ));
        outputs.push(Output::new(
            &format!("v{i}"),
            shape,
            v,
            std::mem::take(&mut reference.v[i]),
            Tolerance::SPEC,
        ));
    }
    outputs.push(Output::new(
        "|g|",
        &[1],
        vec![norm],
        vec![want_norm],
        Tolerance::SPEC,
    ));
    Ok(Measured {
        outputs,
        time,
        reference_time: start.elapsed(),
    })
}
