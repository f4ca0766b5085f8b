//! Reference of [`crate::model`]: a BERT encoder in f64, written from the
//! architecture's definition. It takes its weights through a lookup function
//! by Hugging Face name, so a caller can feed it from its own reading of the
//! weight file; it shares no code with the GPU encoder.

use super::expect_len;
use super::saobp::{messages, multi_hop_mass, refine};
use crate::error::{Error, Result};

/// The hyper-parameters the reference needs.
#[derive(Debug, Clone, Copy)]
pub struct BertRefConfig {
    /// Hidden width.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
}

/// Every layer's attention maps and the last hidden states of one text.
#[derive(Debug, Clone)]
pub struct BertRef {
    /// Last hidden states `[n, hidden]`.
    pub hidden: Vec<f64>,
    /// Per layer, `A` `[heads, n, n]`.
    pub attention: Vec<Vec<f64>>,
    /// Per layer, `R` `[heads, n, n]` (equal to `A` where λ = 0).
    pub refined: Vec<Vec<f64>>,
}

/// `x · Wᵀ + b` for `x` `[n, input]`, `W` `[out, input]`.
fn linear(x: &[f64], w: &[f64], b: &[f64], input: usize) -> Vec<f64> {
    let out = b.len();
    let n = x.len() / input;
    let mut y = vec![0.0; n * out];
    for t in 0..n {
        for o in 0..out {
            let row = &w[o * input..][..input];
            y[t * out + o] = b[o]
                + x[t * input..][..input]
                    .iter()
                    .zip(row)
                    .map(|(a, c)| a * c)
                    .sum::<f64>();
        }
    }
    y
}

fn layer_norm(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let width = gamma.len();
    x.chunks(width)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / width as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / width as f64;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(v, (g, b))| (v - mean) * inv * g + b)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// Runs the encoder on one text (`ids`, `type_ids`, no padding) with λ per
/// layer and head (`lambda[layer][head]`; missing layers get 0). `weight`
/// returns a tensor's values by name (without a `bert.` prefix).
///
/// A missing tensor is an [`Error::Model`]; a tensor of the wrong length, a
/// token or type id beyond its table, more tokens than positions, a λ row
/// without one value per head, a zero width, or a width that the heads do
/// not divide is an [`Error::Shape`].
pub fn bert(
    weight: &dyn Fn(&str) -> Option<Vec<f64>>,
    cfg: &BertRefConfig,
    ids: &[u32],
    type_ids: &[u32],
    lambda: &[Vec<f64>],
) -> Result<BertRef> {
    let (h, n, inter) = (cfg.hidden, ids.len(), cfg.intermediate);
    if h == 0 || cfg.heads == 0 || h % cfg.heads != 0 {
        return Err(Error::shape(format!(
            "reference BERT: hidden width {h} is not split evenly over {} heads",
            cfg.heads
        )));
    }
    if inter == 0 {
        return Err(Error::shape("reference BERT: the feed-forward width is 0"));
    }
    if n == 0 {
        return Err(Error::shape("reference BERT: the text has no tokens"));
    }
    expect_len("reference BERT: type_ids", type_ids.len(), &[n])?;
    if let Some((l, row)) = lambda
        .iter()
        .enumerate()
        .find(|(_, row)| row.len() != cfg.heads)
    {
        return Err(Error::shape(format!(
            "reference BERT: layer {l} has {} λ values for {} heads",
            row.len(),
            cfg.heads
        )));
    }
    let dh = h / cfg.heads;
    let get =
        |name: &str| weight(name).ok_or_else(|| Error::Model(format!("missing tensor {name}")));
    // A tensor of shape `dims`.
    let w = |name: &str, dims: &[usize]| -> Result<Vec<f64>> {
        let t = get(name)?;
        expect_len(&format!("reference BERT: {name}"), t.len(), dims)?;
        Ok(t)
    };
    // A table of `[rows, h]` with at least `needed` rows.
    let table = |name: &str, needed: usize| -> Result<Vec<f64>> {
        let t = get(name)?;
        let rows = t.len() / h;
        if t.len() % h != 0 || rows < needed {
            return Err(Error::shape(format!(
                "reference BERT: {name} holds {} values, not {needed} or more rows of {h}",
                t.len()
            )));
        }
        Ok(t)
    };
    let rows_for = |index: &[u32]| {
        index
            .iter()
            .map(|&i| (i as usize).saturating_add(1))
            .max()
            .unwrap_or(0)
    };
    let word = table("embeddings.word_embeddings.weight", rows_for(ids))?;
    let pos = table("embeddings.position_embeddings.weight", n)?;
    let ty = table(
        "embeddings.token_type_embeddings.weight",
        rows_for(type_ids),
    )?;
    let mut x = vec![0.0; n * h];
    for t in 0..n {
        for c in 0..h {
            x[t * h + c] =
                word[ids[t] as usize * h + c] + pos[t * h + c] + ty[type_ids[t] as usize * h + c];
        }
    }
    x = layer_norm(
        &x,
        &w("embeddings.LayerNorm.weight", &[h])?,
        &w("embeddings.LayerNorm.bias", &[h])?,
        cfg.eps,
    );
    let (mut attention, mut refined) = (Vec::new(), Vec::new());
    for l in 0..cfg.layers {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        // `x · Wᵀ + b` for the linear layer `name`, `input` wide to `out` wide.
        let proj = |x: &[f64], name: &str, input: usize, out: usize| -> Result<Vec<f64>> {
            Ok(linear(
                x,
                &w(&p(&format!("{name}.weight")), &[out, input])?,
                &w(&p(&format!("{name}.bias")), &[out])?,
                input,
            ))
        };
        let q = proj(&x, "attention.self.query", h, h)?;
        let k = proj(&x, "attention.self.key", h, h)?;
        let v = proj(&x, "attention.self.value", h, h)?;
        let scale = 1.0 / (dh as f64).sqrt();
        let mut a = vec![0.0; cfg.heads * n * n];
        for head in 0..cfg.heads {
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        scale
                            * (0..dh)
                                .map(|c| q[i * h + head * dh + c] * k[j * h + head * dh + c])
                                .sum::<f64>()
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for j in 0..n {
                    a[(head * n + i) * n + j] = (s[j] - max).exp() / sum;
                }
            }
        }
        let lam = lambda
            .get(l)
            .cloned()
            .unwrap_or_else(|| vec![0.0; cfg.heads]);
        let msgs = messages(&a, n)?;
        let r = refine(&a, &msgs, &multi_hop_mass(&msgs, n)?, &lam, n)?;
        let mut ctx = vec![0.0; n * h];
        for head in 0..cfg.heads {
            for i in 0..n {
                for j in 0..n {
                    let p = r[(head * n + i) * n + j];
                    for c in 0..dh {
                        ctx[i * h + head * dh + c] += p * v[j * h + head * dh + c];
                    }
                }
            }
        }
        let attn_out = proj(&ctx, "attention.output.dense", h, h)?;
        let res: Vec<f64> = attn_out.iter().zip(&x).map(|(a, b)| a + b).collect();
        let x1 = layer_norm(
            &res,
            &w(&p("attention.output.LayerNorm.weight"), &[h])?,
            &w(&p("attention.output.LayerNorm.bias"), &[h])?,
            cfg.eps,
        );
        let inner: Vec<f64> = proj(&x1, "intermediate.dense", h, inter)?
            .into_iter()
            .map(gelu)
            .collect();
        let out = proj(&inner, "output.dense", inter, h)?;
        let res: Vec<f64> = out.iter().zip(&x1).map(|(a, b)| a + b).collect();
        x = layer_norm(
            &res,
            &w(&p("output.LayerNorm.weight"), &[h])?,
            &w(&p("output.LayerNorm.bias"), &[h])?,
            cfg.eps,
        );
        attention.push(a);
        refined.push(r);
    }
    Ok(BertRef {
        hidden: x,
        attention,
        refined,
    })
}
