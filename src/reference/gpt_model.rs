//! A float64 CPU reference of the whole GPT of the spec's "Training a small
//! GPT with SAOBP": the forward pass and loss, the gradient of the loss with
//! respect to every parameter, and the spec's initialization.
//!
//! It is written by hand from the per-op references ([`super::gpt`],
//! [`attention`](mod@super::attention), [`saobp`](mod@super::saobp),
//! [`matmul`](mod@super::matmul)) and shares no code with the GPU model, so
//! that each checks the other: the GPU model's loss and gradients are judged
//! against these, and these are checked against central finite differences
//! of [`forward`] in this module's tests.
//! All arithmetic is f64. Activations are `[B·n, C]` rows, one per token;
//! attention works on `q`, `k`, `v` in `[B, H, n, C/H]`.
//!
//! Parameters travel as [`Named`] tensors under their Hugging Face names
//! ([`GptConfig::parameters`]). A map holding
//! `transformer.h.{i}.attn.saobp_lambda` for every layer runs SAOBP with
//! those λ; a map holding none runs plain causal attention.

use std::collections::{BTreeMap, BTreeSet};

use super::attention::{attention, attention_backward, RefOptions};
use super::expect_len;
use super::gpt::{
    bias_gelu, bias_gelu_backward, column_sum, cross_entropy, embed, embed_backward, layer_norm,
    layer_norm_backward,
};
use super::matmul::matmul;
use super::saobp::{saobp, saobp_backward};
use crate::error::{Error, Result};
use crate::kernels::matmul::MatmulOptions;
use crate::kernels::optim::ParamGroup;
use crate::model::GptConfig;

/// Named f64 tensors, keyed by the Hugging Face names of
/// [`GptConfig::parameters`].
pub type Named = BTreeMap<String, Vec<f64>>;

/// What [`forward`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct GptRefOutput {
    /// Mean cross-entropy over all `B·n` positions.
    pub loss: f64,
    /// `ln_f(x)·wteᵀ`, `[B·n, V]`.
    pub logits: Vec<f64>,
}

/// Forward of the spec's model: `x = wte[idx] + wpe[pos]`; per layer
/// `x += c_proj(attn(ln_1(x)))`, `x += mlp(ln_2(x))`; `logits = ln_f(x)·wteᵀ`;
/// the loss is the mean cross-entropy over all `B·n` positions.
///
/// Attention is causal with scale `1/√(C/H)`, then SAOBP with the layer's λ
/// per head (`O = R·V`) when `transformer.h.{i}.attn.saobp_lambda` is in
/// `params`, plain attention when it is absent. `ids` and `targets` are
/// `[batch, n]` row-major with `1 <= n <= n_positions`.
///
/// Every parameter of `config.parameters(has_lambda)` must be present with
/// its length, and nothing else; `has_lambda` is whether layer 0's λ is
/// present, and all layers must agree. Wrong lengths, `n` out of range and
/// ids or targets `>= vocab_size` are [`Error::Shape`]; a missing or unknown
/// tensor, a non-finite value, a negative λ, or weights so large that the
/// loss overflows are [`Error::InvalidArgument`].
pub fn forward(
    config: &GptConfig,
    params: &Named,
    ids: &[u32],
    targets: &[u32],
    batch: usize,
    n: usize,
) -> Result<GptRefOutput> {
    let (dims, weights) = prepare(config, params, ids, targets, batch, n)?;
    Ok(run(&dims, &weights, ids, targets)?.0)
}

/// [`forward`], then the gradient of the loss with respect to every
/// parameter: the same keys as `params` (λ included where present). The
/// output head is tied to `wte`, so `wte`'s gradient sums the head's and the
/// embedding's. Errors as in [`forward`].
pub fn backward(
    config: &GptConfig,
    params: &Named,
    ids: &[u32],
    targets: &[u32],
    batch: usize,
    n: usize,
) -> Result<(GptRefOutput, Named)> {
    let (dims, weights) = prepare(config, params, ids, targets, batch, n)?;
    let (output, cache) = run(&dims, &weights, ids, targets)?;
    let mut grads = Named::new();
    let (mut dx, dwte_head) = head_backward(&dims, &weights, &cache.head, &mut grads)?;
    // The residual stream carries `dx` past each block; each block adds
    // what flows back through it.
    for (layer, c) in weights.layers.iter().zip(&cache.layers).rev() {
        let through_mlp = mlp_block_backward(&dims, layer, &c.mlp, &dx, &mut grads)?;
        add(&mut dx, &through_mlp);
        let through_attention =
            attention_block_backward(&dims, layer, &c.attention, &dx, &mut grads)?;
        add(&mut dx, &through_attention);
    }
    let (mut dwte, dwpe) = embed_backward(ids, dims.n, &dx, dims.vocab, dims.positions)?;
    add(&mut dwte, &dwte_head);
    grads.insert(WTE.into(), dwte);
    grads.insert(WPE.into(), dwpe);
    if let Some((name, _)) = grads.iter().find(|(_, g)| g.iter().any(|x| !x.is_finite())) {
        return Err(Error::invalid(format!(
            "GPT reference: the gradient of `{name}` overflows f64; the weights are too large"
        )));
    }
    Ok((output, grads))
}

/// The spec's initialization, deterministic from `seed`: weights
/// `N(0, 0.02)`, the two `c_proj` weights of each layer `N(0, 0.02/√(2L))`,
/// biases 0, LayerNorm weight 1 and bias 0; with `lambda`, each layer's
/// `attn.saobp_lambda` set to `lambda[layer]` (one value per head).
///
/// These are [`crate::model::init_values`] in f64 (one
/// [`SplitMix64::normal`](crate::workload::SplitMix64::normal) stream in the
/// order of [`GptConfig::parameters`], each rounded to f32), so a GPU model
/// starts from exactly these numbers. `lambda` with other than `n_layer`
/// rows of `n_head` values is [`Error::Shape`]; a negative or non-finite λ
/// is [`Error::InvalidArgument`].
pub fn init(config: &GptConfig, seed: u64, lambda: Option<&[Vec<f32>]>) -> Result<Named> {
    Ok(crate::model::init_values(config, seed, lambda)?
        .into_iter()
        .map(|(name, values)| (name, values.into_iter().map(f64::from).collect()))
        .collect())
}

const WTE: &str = "transformer.wte.weight";
const WPE: &str = "transformer.wpe.weight";

/// The name of layer `i`'s tensor `suffix`.
fn layer_name(i: usize, suffix: &str) -> String {
    format!("transformer.h.{i}.{suffix}")
}

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    /// Tokens per sequence.
    n: usize,
    /// `C`.
    width: usize,
    heads: usize,
    head_dim: usize,
    vocab: usize,
    positions: usize,
    eps: f64,
}

impl Dims {
    /// Token rows, `B·n`.
    fn rows(&self) -> usize {
        self.batch * self.n
    }

    /// `[B, H, n, C/H]`, the per-head layout of `q`, `k`, `v`.
    fn head_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n, self.head_dim]
    }

    fn attention_options(&self) -> RefOptions<'static> {
        RefOptions {
            causal: true,
            key_mask: None,
            scale: Some(1.0 / (self.head_dim as f64).sqrt()),
        }
    }
}

/// A weight and its bias: a LayerNorm's gain and shift, or a `Conv1D`'s
/// `W` (`[in, out]`) and `b`.
#[derive(Debug, Clone, Copy)]
struct Affine<'a> {
    weight: &'a [f64],
    bias: &'a [f64],
}

/// One layer's tensors, borrowed from the [`Named`] map.
#[derive(Debug)]
struct Layer<'a> {
    index: usize,
    ln_1: Affine<'a>,
    c_attn: Affine<'a>,
    attn_proj: Affine<'a>,
    ln_2: Affine<'a>,
    c_fc: Affine<'a>,
    mlp_proj: Affine<'a>,
    /// `[H]`; `None` runs plain attention.
    lambda: Option<&'a [f64]>,
}

impl Layer<'_> {
    fn name(&self, suffix: &str) -> String {
        layer_name(self.index, suffix)
    }
}

/// Every tensor of the model, borrowed from the [`Named`] map.
#[derive(Debug)]
struct Weights<'a> {
    wte: &'a [f64],
    wpe: &'a [f64],
    layers: Vec<Layer<'a>>,
    ln_f: Affine<'a>,
}

/// The tensor `name`, or an error naming it.
fn tensor<'a>(params: &'a Named, name: &str) -> Result<&'a [f64]> {
    params.get(name).map(Vec::as_slice).ok_or_else(|| {
        let hint = if name.ends_with("attn.saobp_lambda") {
            " (λ is given for every layer or for none)"
        } else {
            ""
        };
        Error::invalid(format!("GPT reference: no tensor `{name}`{hint}"))
    })
}

fn affine<'a>(params: &'a Named, prefix: &str) -> Result<Affine<'a>> {
    Ok(Affine {
        weight: tensor(params, &format!("{prefix}.weight"))?,
        bias: tensor(params, &format!("{prefix}.bias"))?,
    })
}

/// Checks every argument of [`forward`] and borrows the model's tensors.
fn prepare<'a>(
    config: &GptConfig,
    params: &'a Named,
    ids: &[u32],
    targets: &[u32],
    batch: usize,
    n: usize,
) -> Result<(Dims, Weights<'a>)> {
    config.validate()?;
    if n == 0 || n > config.n_positions {
        return Err(Error::shape(format!(
            "GPT reference: sequences of {n} tokens; the model takes 1 to {}",
            config.n_positions
        )));
    }
    if batch == 0 {
        return Err(Error::shape("GPT reference: a batch of no sequences"));
    }
    for (what, tokens) in [("ids", ids), ("targets", targets)] {
        expect_len(&format!("GPT reference: {what}"), tokens.len(), &[batch, n])?;
        if let Some(i) = tokens.iter().position(|&t| t as usize >= config.vocab_size) {
            return Err(Error::shape(format!(
                "GPT reference: {what}[{i}] = {} is outside the vocabulary of {}",
                tokens[i], config.vocab_size
            )));
        }
    }

    let has_lambda = params.contains_key(&layer_name(0, "attn.saobp_lambda"));
    let specs = config.parameters(has_lambda);
    for spec in &specs {
        let values = tensor(params, &spec.name)?;
        expect_len(
            &format!("GPT reference: `{}`", spec.name),
            values.len(),
            &spec.shape,
        )?;
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "GPT reference: `{}`[{i}] = {} is not finite",
                spec.name, values[i]
            )));
        }
        if spec.group == ParamGroup::Lambda {
            if let Some(l) = values.iter().find(|&&l| l < 0.0) {
                return Err(Error::invalid(format!(
                    "GPT reference: `{}` holds λ = {l}; λ must be >= 0",
                    spec.name
                )));
            }
        }
    }
    let known: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    if let Some(extra) = params.keys().find(|k| !known.contains(k.as_str())) {
        let why = if extra.ends_with("attn.saobp_lambda") {
            "layer 0 has no λ, and λ is given for every layer or for none"
        } else {
            "it is not a parameter of this model"
        };
        return Err(Error::invalid(format!(
            "GPT reference: unexpected tensor `{extra}`: {why}"
        )));
    }

    let dims = Dims {
        batch,
        n,
        width: config.n_embd,
        heads: config.n_head,
        head_dim: config.head_dim(),
        vocab: config.vocab_size,
        positions: config.n_positions,
        eps: f64::from(config.layer_norm_epsilon),
    };
    let layers = (0..config.n_layer)
        .map(|i| {
            let p = |suffix: &str| layer_name(i, suffix);
            Ok(Layer {
                index: i,
                ln_1: affine(params, &p("ln_1"))?,
                c_attn: affine(params, &p("attn.c_attn"))?,
                attn_proj: affine(params, &p("attn.c_proj"))?,
                ln_2: affine(params, &p("ln_2"))?,
                c_fc: affine(params, &p("mlp.c_fc"))?,
                mlp_proj: affine(params, &p("mlp.c_proj"))?,
                lambda: if has_lambda {
                    Some(tensor(params, &p("attn.saobp_lambda"))?)
                } else {
                    None
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = Weights {
        wte: tensor(params, WTE)?,
        wpe: tensor(params, WPE)?,
        layers,
        ln_f: affine(params, "transformer.ln_f")?,
    };
    Ok((dims, weights))
}

/// What the attention block keeps for its backward.
#[derive(Debug)]
struct AttentionCache {
    /// The block's input, `[B·n, C]`.
    x: Vec<f64>,
    /// `ln_1(x)`.
    ln_1: Vec<f64>,
    /// `[B, H, n, C/H]` each.
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    /// The heads' outputs merged back to `[B·n, C]`: `c_proj`'s input.
    heads: Vec<f64>,
}

/// What the MLP block keeps for its backward.
#[derive(Debug)]
struct MlpCache {
    /// The block's input, `[B·n, C]`.
    x: Vec<f64>,
    /// `ln_2(x)`.
    ln_2: Vec<f64>,
    /// `ln_2(x)·W_fc` before its bias, `[B·n, 4C]`.
    fc: Vec<f64>,
    /// `gelu(fc + b_fc)`: `c_proj`'s input.
    gelu: Vec<f64>,
}

/// What the output head keeps for its backward.
#[derive(Debug)]
struct HeadCache {
    /// The last layer's output, `[B·n, C]`.
    x: Vec<f64>,
    /// `ln_f(x)`.
    ln_f: Vec<f64>,
    /// `∂loss/∂logits`, `[B·n, V]`.
    dlogits: Vec<f64>,
}

#[derive(Debug)]
struct LayerCache {
    attention: AttentionCache,
    mlp: MlpCache,
}

/// Every activation the backward needs.
#[derive(Debug)]
struct Cache {
    layers: Vec<LayerCache>,
    head: HeadCache,
}

/// `x += y`, entry by entry.
fn add(x: &mut [f64], y: &[f64]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// `x·W` for `x` `[rows, inputs]` and `W` `[inputs, outputs]` (`Conv1D`'s layout).
fn times(x: &[f64], w: &[f64], inputs: usize, outputs: usize) -> Result<Vec<f64>> {
    let rows = x.len() / inputs;
    matmul(
        x,
        &[rows, inputs],
        w,
        &[inputs, outputs],
        &MatmulOptions::default(),
    )
}

/// `Conv1D`: `x·W + b` for `x` `[rows, inputs]`.
fn conv1d(x: &[f64], p: Affine, inputs: usize) -> Result<Vec<f64>> {
    let outputs = p.bias.len();
    let mut y = times(x, p.weight, inputs, outputs)?;
    for row in y.chunks_mut(outputs) {
        add(row, p.bias);
    }
    Ok(y)
}

/// The backward of `y = x·W (+ b)` from `dy` (`[rows, outputs]`):
/// `(dx, dW) = (dy·Wᵀ, xᵀ·dy)`. The bias's gradient is `dy`'s column sums.
fn conv1d_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    inputs: usize,
    outputs: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let rows = x.len() / inputs;
    let transposed = |trans_a, trans_b| MatmulOptions {
        trans_a,
        trans_b,
        alpha: 1.0,
    };
    let dx = matmul(
        dy,
        &[rows, outputs],
        w,
        &[inputs, outputs],
        &transposed(false, true),
    )?;
    let dw = matmul(
        x,
        &[rows, inputs],
        dy,
        &[rows, outputs],
        &transposed(true, false),
    )?;
    Ok((dx, dw))
}

/// Calls `f(head_index, row, column)` for every entry of a `[B, H, n, C/H]`
/// tensor: its index there, and the token row (of `B·n`) and column (of
/// `C`) it has in the token layout.
fn for_each_head_entry(d: &Dims, mut f: impl FnMut(usize, usize, usize)) {
    for b in 0..d.batch {
        for h in 0..d.heads {
            for t in 0..d.n {
                for e in 0..d.head_dim {
                    let index = ((b * d.heads + h) * d.n + t) * d.head_dim + e;
                    f(index, b * d.n + t, h * d.head_dim + e);
                }
            }
        }
    }
}

/// Columns `offset..offset + C` of `rows` (`[B·n, stride]`) as `[B, H, n, C/H]`.
fn rows_to_heads(d: &Dims, rows: &[f64], stride: usize, offset: usize) -> Vec<f64> {
    let mut heads = vec![0.0; d.rows() * d.width];
    for_each_head_entry(d, |i, row, col| {
        heads[i] = rows[row * stride + offset + col]
    });
    heads
}

/// The inverse of [`rows_to_heads`]: writes `heads` into those columns of `rows`.
fn heads_to_rows(d: &Dims, heads: &[f64], rows: &mut [f64], stride: usize, offset: usize) {
    for_each_head_entry(d, |i, row, col| {
        rows[row * stride + offset + col] = heads[i]
    });
}

/// `c_proj(attn(ln_1(x)))`, the attention block's addition to the residual stream.
fn attention_block(d: &Dims, p: &Layer, x: &[f64]) -> Result<(Vec<f64>, AttentionCache)> {
    let c = d.width;
    let ln_1 = layer_norm(x, p.ln_1.weight, p.ln_1.bias, d.eps)?.out;
    let qkv = conv1d(&ln_1, p.c_attn, c)?;
    let [q, k, v] = [0, 1, 2].map(|part| rows_to_heads(d, &qkv, 3 * c, part * c));
    let opts = d.attention_options();
    let out = match p.lambda {
        Some(lambda) => saobp(&q, &k, &v, d.head_shape(), d.head_dim, &opts, lambda)?.output,
        None => attention(&q, &k, &v, d.head_shape(), d.head_dim, &opts)?.output,
    };
    let mut heads = vec![0.0; d.rows() * c];
    heads_to_rows(d, &out, &mut heads, c, 0);
    let y = conv1d(&heads, p.attn_proj, c)?;
    let cache = AttentionCache {
        x: x.to_vec(),
        ln_1,
        q,
        k,
        v,
        heads,
    };
    Ok((y, cache))
}

/// The backward of [`attention_block`] from `dy`: stores the layer's
/// attention gradients (λ's too) in `grads` and returns `∂loss/∂x` through
/// the block.
fn attention_block_backward(
    d: &Dims,
    p: &Layer,
    cache: &AttentionCache,
    dy: &[f64],
    grads: &mut Named,
) -> Result<Vec<f64>> {
    let c = d.width;
    let (dheads, dw_proj) = conv1d_backward(&cache.heads, p.attn_proj.weight, dy, c, c)?;
    let dout = rows_to_heads(d, &dheads, c, 0);
    let (q, k, v, shape, opts) = (
        &cache.q,
        &cache.k,
        &cache.v,
        d.head_shape(),
        d.attention_options(),
    );
    let (dq, dk, dv) = match p.lambda {
        Some(lambda) => {
            let g = saobp_backward(q, k, v, shape, d.head_dim, &opts, lambda, &dout)?;
            grads.insert(p.name("attn.saobp_lambda"), g.grad_lambda);
            (g.grad_q, g.grad_k, g.grad_v)
        }
        None => {
            let g = attention_backward(q, k, v, shape, d.head_dim, &opts, &dout)?;
            (g.grad_q, g.grad_k, g.grad_v)
        }
    };
    let mut dqkv = vec![0.0; d.rows() * 3 * c];
    for (part, g) in [dq, dk, dv].iter().enumerate() {
        heads_to_rows(d, g, &mut dqkv, 3 * c, part * c);
    }
    let (dln_1, dw_attn) = conv1d_backward(&cache.ln_1, p.c_attn.weight, &dqkv, c, 3 * c)?;
    let ln = layer_norm_backward(&cache.x, p.ln_1.weight, &dln_1, d.eps)?;
    grads.insert(p.name("attn.c_proj.weight"), dw_proj);
    grads.insert(p.name("attn.c_proj.bias"), column_sum(dy, c)?);
    grads.insert(p.name("attn.c_attn.weight"), dw_attn);
    grads.insert(p.name("attn.c_attn.bias"), column_sum(&dqkv, 3 * c)?);
    grads.insert(p.name("ln_1.weight"), ln.dgamma);
    grads.insert(p.name("ln_1.bias"), ln.dbeta);
    Ok(ln.dx)
}

/// `c_proj(gelu(c_fc(ln_2(x))))`, the MLP block's addition to the residual stream.
fn mlp_block(d: &Dims, p: &Layer, x: &[f64]) -> Result<(Vec<f64>, MlpCache)> {
    let c = d.width;
    let ln_2 = layer_norm(x, p.ln_2.weight, p.ln_2.bias, d.eps)?.out;
    let fc = times(&ln_2, p.c_fc.weight, c, 4 * c)?;
    let gelu = bias_gelu(&fc, p.c_fc.bias)?;
    let y = conv1d(&gelu, p.mlp_proj, 4 * c)?;
    let cache = MlpCache {
        x: x.to_vec(),
        ln_2,
        fc,
        gelu,
    };
    Ok((y, cache))
}

/// The backward of [`mlp_block`] from `dy`: stores the layer's MLP
/// gradients in `grads` and returns `∂loss/∂x` through the block.
fn mlp_block_backward(
    d: &Dims,
    p: &Layer,
    cache: &MlpCache,
    dy: &[f64],
    grads: &mut Named,
) -> Result<Vec<f64>> {
    let c = d.width;
    let (dgelu, dw_proj) = conv1d_backward(&cache.gelu, p.mlp_proj.weight, dy, 4 * c, c)?;
    let (dfc, db_fc) = bias_gelu_backward(&cache.fc, p.c_fc.bias, &dgelu)?;
    let (dln_2, dw_fc) = conv1d_backward(&cache.ln_2, p.c_fc.weight, &dfc, c, 4 * c)?;
    let ln = layer_norm_backward(&cache.x, p.ln_2.weight, &dln_2, d.eps)?;
    grads.insert(p.name("mlp.c_proj.weight"), dw_proj);
    grads.insert(p.name("mlp.c_proj.bias"), column_sum(dy, c)?);
    grads.insert(p.name("mlp.c_fc.weight"), dw_fc);
    grads.insert(p.name("mlp.c_fc.bias"), db_fc);
    grads.insert(p.name("ln_2.weight"), ln.dgamma);
    grads.insert(p.name("ln_2.bias"), ln.dbeta);
    Ok(ln.dx)
}

/// `logits = ln_f(x)·wteᵀ` and the mean cross-entropy against `targets`.
fn head(d: &Dims, w: &Weights, x: &[f64], targets: &[u32]) -> Result<(GptRefOutput, HeadCache)> {
    let ln_f = layer_norm(x, w.ln_f.weight, w.ln_f.bias, d.eps)?.out;
    let logits = matmul(
        &ln_f,
        &[d.rows(), d.width],
        w.wte,
        &[d.vocab, d.width],
        &MatmulOptions {
            trans_b: true,
            ..MatmulOptions::default()
        },
    )?;
    let ce = cross_entropy(&logits, targets, d.vocab)?;
    if !ce.loss.is_finite() {
        return Err(Error::invalid(format!(
            "GPT reference: the loss is {}; the weights are too large for f64",
            ce.loss
        )));
    }
    let cache = HeadCache {
        x: x.to_vec(),
        ln_f,
        dlogits: ce.dlogits,
    };
    Ok((
        GptRefOutput {
            loss: ce.loss,
            logits,
        },
        cache,
    ))
}

/// The backward of [`head`]: stores `ln_f`'s gradients in `grads` and
/// returns `(∂loss/∂x, the head's part of ∂loss/∂wte)`.
fn head_backward(
    d: &Dims,
    w: &Weights,
    cache: &HeadCache,
    grads: &mut Named,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let dln_f = times(&cache.dlogits, w.wte, d.vocab, d.width)?;
    let dwte = matmul(
        &cache.dlogits,
        &[d.rows(), d.vocab],
        &cache.ln_f,
        &[d.rows(), d.width],
        &MatmulOptions {
            trans_a: true,
            ..MatmulOptions::default()
        },
    )?;
    let ln = layer_norm_backward(&cache.x, w.ln_f.weight, &dln_f, d.eps)?;
    grads.insert("transformer.ln_f.weight".into(), ln.dgamma);
    grads.insert("transformer.ln_f.bias".into(), ln.dbeta);
    Ok((ln.dx, dwte))
}

/// The forward pass on checked arguments, keeping what the backward needs.
fn run(d: &Dims, w: &Weights, ids: &[u32], targets: &[u32]) -> Result<(GptRefOutput, Cache)> {
    let mut x = embed(ids, d.n, w.wte, w.wpe, d.width)?;
    let mut layers = Vec::with_capacity(w.layers.len());
    for layer in &w.layers {
        let (y, attention) = attention_block(d, layer, &x)?;
        add(&mut x, &y);
        let (y, mlp) = mlp_block(d, layer, &x)?;
        add(&mut x, &y);
        layers.push(LayerCache { attention, mlp });
    }
    let (output, head) = head(d, w, &x, targets)?;
    Ok((output, Cache { layers, head }))
}

#[cfg(test)]
mod tests {
    //! The backward against finite differences of the forward for every
    //! parameter entry, exact values of degenerate models, typed errors and
    //! the initialization's distribution.

    use super::*;
    use crate::workload::SplitMix64;

    /// V = 7, T = 6, C = 8, H = 2, L = 2: every path with few entries.
    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 7,
            n_positions: 6,
            n_embd: 8,
            n_layer: 2,
            n_head: 2,
            layer_norm_epsilon: 1e-5,
        }
    }

    const BATCH: usize = 2;
    const N: usize = 5;
    /// `[2, 5]`; id 1 appears once, targets miss 6, position 5 is unused.
    const IDS: [u32; 10] = [3, 0, 6, 2, 2, 5, 1, 4, 0, 3];
    const TARGETS: [u32; 10] = [0, 6, 2, 2, 4, 1, 4, 0, 3, 5];

    /// λ per layer and head, with a 0 among them.
    fn lambdas() -> Vec<Vec<f32>> {
        vec![vec![0.3, 0.9], vec![0.0, 1.4]]
    }

    /// [`init`], then every entry but λ moved by a uniform draw in ±0.3:
    /// LayerNorm gains and biases leave 1 and 0, and the larger weights make
    /// attention far from uniform, so every gradient is exercised.
    fn perturbed(config: &GptConfig, lambda: Option<&[Vec<f32>]>) -> Named {
        let mut params = init(config, 5, lambda).unwrap();
        let mut rng = SplitMix64::new(6);
        for (name, values) in params.iter_mut() {
            if !name.ends_with("saobp_lambda") {
                for x in values.iter_mut() {
                    *x += f64::from(rng.uniform(-0.3, 0.3));
                }
            }
        }
        params
    }

    fn loss(config: &GptConfig, params: &Named) -> f64 {
        forward(config, params, &IDS, &TARGETS, BATCH, N)
            .unwrap()
            .loss
    }

    /// `∂loss/∂(every entry)` by central differences of [`forward`] with
    /// step `h`. A λ at 0 cannot step below it ([`forward`] refuses a
    /// negative λ), so there the one-sided rule
    /// `(−3f(x) + 4f(x+h) − f(x+2h))/2h` is used, of the same O(h²) error.
    fn finite_differences(config: &GptConfig, params: &Named, h: f64) -> Named {
        let mut p = params.clone();
        let f0 = loss(config, params);
        let mut fd = Named::new();
        for (name, values) in params {
            let mut grad = Vec::with_capacity(values.len());
            for (i, &x) in values.iter().enumerate() {
                let mut at = |dx: f64| {
                    if let Some(v) = p.get_mut(name) {
                        v[i] = x + dx;
                    }
                    loss(config, &p)
                };
                let g = if name.ends_with("saobp_lambda") && x == 0.0 {
                    (-3.0 * f0 + 4.0 * at(h) - at(2.0 * h)) / (2.0 * h)
                } else {
                    (at(h) - at(-h)) / (2.0 * h)
                };
                at(0.0);
                grad.push(g);
            }
            fd.insert(name.clone(), grad);
        }
        fd
    }

    /// Checks every entry of `backward` against finite differences and
    /// returns the largest `|g − fd|`. The bound: the loss is O(1), so with
    /// h = 1e-5 rounding costs about ε·|loss|/h ≈ 1e-11 and truncation
    /// h²·|f'''|/6 about 1e-10 (both measured below 1e-9); `1e-8 + 1e-6·|fd|`
    /// leaves room for them while a wrong term of any size seen here
    /// (gradients run to 1e-1) fails.
    fn check_against_finite_differences(lambda: Option<&[Vec<f32>]>) -> f64 {
        let config = tiny();
        let params = perturbed(&config, lambda);
        let (out, grads) = backward(&config, &params, &IDS, &TARGETS, BATCH, N).unwrap();
        assert_eq!(out.loss, loss(&config, &params));
        let fd = finite_differences(&config, &params, 1e-5);
        assert_eq!(
            grads.keys().collect::<Vec<_>>(),
            params.keys().collect::<Vec<_>>()
        );
        let mut worst = 0.0f64;
        for (name, want) in &fd {
            let got = &grads[name];
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                let err = (g - w).abs();
                worst = worst.max(err);
                assert!(
                    err <= 1e-8 + 1e-6 * w.abs(),
                    "{name}[{i}]: backward {g}, finite differences {w}"
                );
            }
            // No tensor passes by having no gradient at all.
            let largest = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
            assert!(largest > 1e-3, "{name}: largest gradient {largest}");
        }
        // Position 5 is never used: its row of wpe gets exactly nothing.
        assert!(grads[WPE][5 * 8..].iter().all(|&g| g == 0.0));
        worst
    }

    #[test]
    fn plain_backward_matches_finite_differences_for_every_entry() {
        let worst = check_against_finite_differences(None);
        eprintln!("plain attention: largest |backward − finite differences| = {worst:.2e}");
    }

    #[test]
    fn saobp_backward_matches_finite_differences_for_every_entry() {
        let worst = check_against_finite_differences(Some(&lambdas()));
        eprintln!("SAOBP: largest |backward − finite differences| = {worst:.2e}");
    }

    /// All weights 0 but the LayerNorm gains (1) and `ln_f`'s bias `β`: the
    /// logits are 0, the loss is ln V, and only the head's tie to `wte` has a
    /// gradient, `∂loss/∂wte[v, c] = β_c (1/V − count_v/rows)` with `count_v`
    /// the number of targets equal to `v`; everything behind `ln_f` gets 0.
    #[test]
    fn zero_model_predicts_uniformly_and_only_the_head_learns() {
        let config = tiny();
        for lambda in [None, Some(lambdas())] {
            let mut params = init(&config, 1, lambda.as_deref()).unwrap();
            for (name, values) in params.iter_mut() {
                let gain = name.contains("ln_") && name.ends_with(".weight");
                if !gain && !name.ends_with("saobp_lambda") {
                    values.fill(0.0);
                }
            }
            let beta: Vec<f64> = (0..8).map(|c| 0.1 * (c as f64 - 3.5)).collect();
            params.insert("transformer.ln_f.bias".into(), beta.clone());
            let (out, grads) = backward(&config, &params, &IDS, &TARGETS, BATCH, N).unwrap();
            assert!((out.loss - 7f64.ln()).abs() <= 1e-15, "{}", out.loss);
            assert!(out.logits.iter().all(|&l| l == 0.0));
            let rows = (BATCH * N) as f64;
            for (name, g) in &grads {
                if name == WTE {
                    for (i, &got) in g.iter().enumerate() {
                        let (v, c) = (i / 8, i % 8);
                        let count = TARGETS.iter().filter(|&&t| t as usize == v).count();
                        let want = beta[c] * (1.0 / 7.0 - count as f64 / rows);
                        assert!((got - want).abs() <= 1e-16, "wte[{v}, {c}] {got} vs {want}");
                    }
                } else {
                    assert!(g.iter().all(|&x| x == 0.0), "{name}: {g:?}");
                }
            }
        }
    }

    /// λ = 0 everywhere is plain GPT-2: the same loss, logits and non-λ
    /// gradients, bit for bit (SAOBP's refinement is then `R = A` exactly).
    #[test]
    fn zero_lambda_is_the_plain_model_exactly() {
        let config = tiny();
        let plain = perturbed(&config, None);
        let mut with = plain.clone();
        for i in 0..config.n_layer {
            with.insert(layer_name(i, "attn.saobp_lambda"), vec![0.0; 2]);
        }
        let (a, ga) = backward(&config, &plain, &IDS, &TARGETS, BATCH, N).unwrap();
        let (b, gb) = backward(&config, &with, &IDS, &TARGETS, BATCH, N).unwrap();
        assert_eq!(a, b);
        for (name, g) in &ga {
            assert_eq!(g, &gb[name], "{name}");
        }
        assert_eq!(gb.len(), ga.len() + config.n_layer);
        // dλ at 0 is the first-order effect of turning SAOBP on: not 0.
        assert!(gb[&layer_name(0, "attn.saobp_lambda")]
            .iter()
            .all(|g| g.abs() > 1e-4));
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let config = tiny();
        let good = perturbed(&config, Some(&lambdas()));
        let run = |p: &Named, ids: &[u32], targets: &[u32], batch, n| {
            let f = forward(&config, p, ids, targets, batch, n).map(drop);
            let b = backward(&config, p, ids, targets, batch, n).map(drop);
            assert_eq!(f, b);
            f
        };
        let is_shape = |r: Result<()>| matches!(r, Err(Error::Shape(_)));
        let is_invalid = |r: Result<()>| matches!(r, Err(Error::InvalidArgument(_)));
        let with = |name: &str, edit: &dyn Fn(&mut Vec<f64>)| {
            let mut p = good.clone();
            if let Some(v) = p.get_mut(name) {
                edit(v);
            }
            p
        };
        assert!(run(&good, &IDS, &TARGETS, BATCH, N).is_ok());

        // Missing, unknown, short and non-finite tensors.
        let mut missing = good.clone();
        missing.remove(&layer_name(1, "mlp.c_fc.bias"));
        assert!(is_invalid(run(&missing, &IDS, &TARGETS, BATCH, N)));
        let mut extra = good.clone();
        extra.insert("lm_head.weight".into(), vec![0.0; 56]);
        assert!(is_invalid(run(&extra, &IDS, &TARGETS, BATCH, N)));
        let short = with(&layer_name(0, "attn.c_attn.weight"), &|v| {
            v.pop();
        });
        assert!(is_shape(run(&short, &IDS, &TARGETS, BATCH, N)));
        let nan = with(WPE, &|v| v[3] = f64::NAN);
        assert!(is_invalid(run(&nan, &IDS, &TARGETS, BATCH, N)));

        // λ: in some layers only, negative, NaN, or of the wrong length.
        for layer in [0, 1] {
            let mut partial = good.clone();
            partial.remove(&layer_name(layer, "attn.saobp_lambda"));
            assert!(is_invalid(run(&partial, &IDS, &TARGETS, BATCH, N)));
        }
        let lambda = layer_name(1, "attn.saobp_lambda");
        let negative = with(&lambda, &|v| v[1] = -0.1);
        assert!(is_invalid(run(&negative, &IDS, &TARGETS, BATCH, N)));
        let nan_lambda = with(&lambda, &|v| v[0] = f64::NAN);
        assert!(is_invalid(run(&nan_lambda, &IDS, &TARGETS, BATCH, N)));
        let long = with(&lambda, &|v| v.push(0.5));
        assert!(is_shape(run(&long, &IDS, &TARGETS, BATCH, N)));

        // Tokens: out of the vocabulary, of the wrong count, n out of range.
        let mut bad = IDS;
        bad[7] = 7;
        assert!(is_shape(run(&good, &bad, &TARGETS, BATCH, N)));
        assert!(is_shape(run(&good, &IDS, &bad, BATCH, N)));
        assert!(is_shape(run(&good, &IDS[..9], &TARGETS, BATCH, N)));
        assert!(is_shape(run(&good, &IDS, &TARGETS, 1, N)));
        assert!(is_shape(run(&good, &[0; 14], &[0; 14], 2, 7)));
        assert!(is_shape(run(&good, &[], &[], BATCH, 0)));
        assert!(is_shape(run(&good, &[], &[], 0, N)));
        // n = T is allowed.
        assert!(run(&good, &[1; 12], &[2; 12], 2, 6).is_ok());

        // Finite weights whose logits overflow f64: an error, not a NaN loss.
        let huge = with(WTE, &|v| v.fill(1e300));
        let huge = {
            let mut p = huge;
            p.insert("transformer.ln_f.bias".into(), vec![1e10; 8]);
            p
        };
        assert!(is_invalid(run(&huge, &IDS, &TARGETS, BATCH, N)));

        // A config that does not validate.
        let odd = GptConfig {
            n_head: 3,
            ..tiny()
        };
        assert!(forward(&odd, &good, &IDS, &TARGETS, BATCH, N).is_err());
    }

    /// Weights drawn as the spec says, rounded to f32, reproducible from the
    /// seed; λ as given; typed errors for λ of the wrong shape or sign.
    #[test]
    fn init_follows_the_spec() {
        let config = GptConfig {
            vocab_size: 50,
            n_positions: 32,
            n_embd: 64,
            n_layer: 3,
            n_head: 4,
            layer_norm_epsilon: 1e-5,
        };
        let lambda: Vec<Vec<f32>> = (0..3).map(|i| vec![0.25 * i as f32; 4]).collect();
        let params = init(&config, 42, Some(&lambda)).unwrap();
        let specs = config.parameters(true);
        assert_eq!(
            params.keys().collect::<BTreeSet<_>>(),
            specs.iter().map(|s| &s.name).collect::<BTreeSet<_>>()
        );
        assert_eq!(params, init(&config, 42, Some(&lambda)).unwrap());
        assert_ne!(params[WTE], init(&config, 43, None).unwrap()[WTE]);
        assert!(params.values().flatten().all(|&x| f64::from(x as f32) == x));
        // The first draw of the stream is wte[0, 0].
        let first = (0.02 * SplitMix64::new(42).normal()) as f32;
        assert_eq!(params[WTE][0], f64::from(first));

        // Sample moments of 12,288 (c_attn) to 16,384 (mlp.c_proj) draws:
        // the standard error of the std is under 0.7%, so 4% is ~6 of them.
        let moments = |name: &str| {
            let v = &params[name];
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var.sqrt())
        };
        let residual = 0.02 / 6f64.sqrt();
        for (suffix, std) in [
            ("attn.c_attn.weight", 0.02),
            ("mlp.c_fc.weight", 0.02),
            ("attn.c_proj.weight", residual),
            ("mlp.c_proj.weight", residual),
        ] {
            let (mean, s) = moments(&layer_name(1, suffix));
            assert!(mean.abs() < 0.05 * std, "{suffix}: mean {mean}");
            assert!(
                (s / std - 1.0).abs() < 0.04,
                "{suffix}: std {s}, want {std}"
            );
        }
        for spec in &specs {
            let v = &params[&spec.name];
            match spec.group {
                ParamGroup::NotDecayed if spec.name.ends_with(".weight") => {
                    assert!(v.iter().all(|&x| x == 1.0), "{}", spec.name)
                }
                ParamGroup::NotDecayed => assert!(v.iter().all(|&x| x == 0.0), "{}", spec.name),
                _ => {}
            }
        }
        for (i, row) in lambda.iter().enumerate() {
            let want: Vec<f64> = row.iter().map(|&l| f64::from(l)).collect();
            assert_eq!(params[&layer_name(i, "attn.saobp_lambda")], want);
        }
        assert!(!init(&config, 42, None)
            .unwrap()
            .contains_key(&layer_name(0, "attn.saobp_lambda")));

        let is_shape = |r: Result<Named>| matches!(r, Err(Error::Shape(_)));
        let is_invalid = |r: Result<Named>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(is_shape(init(&config, 1, Some(&lambda[..2]))));
        let mut narrow = lambda.clone();
        narrow[2].pop();
        assert!(is_shape(init(&config, 1, Some(&narrow))));
        let mut negative = lambda.clone();
        negative[1][3] = -1.0;
        assert!(is_invalid(init(&config, 1, Some(&negative))));
        negative[1][3] = f32::INFINITY;
        assert!(is_invalid(init(&config, 1, Some(&negative))));
    }
}
