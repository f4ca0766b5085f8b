//! Reference of [`crate::kernels::gpt`]: a GPT's per-token layer ops and
//! their backward, in f64, straight from the definitions.
//!
//! Each function takes its values as `f32` (what the GPU sees) or `f64` (so
//! a float64 model built from these ops chains them without rounding);
//! all arithmetic is f64. Rows are tokens: activations are `[rows, width]`
//! with `width` given by a parameter's length or an argument. Lengths that
//! disagree, a zero width and ids beyond their table are [`Error::Shape`].
//! The backward functions are checked against central finite differences
//! of the forward ones in this module's tests.

use super::expect_len;
use crate::error::{Error, Result};

/// The values as f64.
fn widen<T: Copy + Into<f64>>(x: &[T]) -> Vec<f64> {
    x.iter().map(|&v| v.into()).collect()
}

/// The rows of `len` values of `width` columns, or a shape error.
fn rows_of(what: &str, len: usize, width: usize) -> Result<usize> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(Error::shape(format!(
            "{what} holds {len} values, not a whole number of rows of {width}"
        )));
    }
    Ok(len / width)
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044715;

/// GPT-2's GELU (`gelu_new`): `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh())
}

/// The derivative of [`gelu`].
pub fn gelu_grad(x: f64) -> f64 {
    let t = (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
}

/// `gelu(x + bias)` for `x` `[rows, width]` and `bias` `[width]`.
pub fn bias_gelu<T: Copy + Into<f64>>(x: &[T], bias: &[T]) -> Result<Vec<f64>> {
    rows_of("reference bias + GELU: x", x.len(), bias.len())?;
    let bias = widen(bias);
    Ok(x.iter()
        .enumerate()
        .map(|(i, &v)| gelu(v.into() + bias[i % bias.len()]))
        .collect())
}

/// The backward of [`bias_gelu`]: `(dx, dbias)` with `dx = dy · gelu'(x + bias)`
/// (`[rows, width]`) and `dbias` its column sums (`[width]`).
pub fn bias_gelu_backward<T: Copy + Into<f64>>(
    x: &[T],
    bias: &[T],
    dy: &[T],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let width = bias.len();
    let rows = rows_of("reference bias + GELU backward: x", x.len(), width)?;
    expect_len(
        "reference bias + GELU backward: dy",
        dy.len(),
        &[rows, width],
    )?;
    let bias = widen(bias);
    let dx: Vec<f64> = x
        .iter()
        .zip(dy)
        .enumerate()
        .map(|(i, (&v, &g))| g.into() * gelu_grad(v.into() + bias[i % width]))
        .collect();
    let dbias = column_sum(&dx, width)?;
    Ok((dx, dbias))
}

/// Column sums of `x` (`[rows, width]`): a bias's gradient from its output's.
pub fn column_sum<T: Copy + Into<f64>>(x: &[T], width: usize) -> Result<Vec<f64>> {
    rows_of("reference column sum: x", x.len(), width)?;
    let mut out = vec![0.0; width];
    for (i, &v) in x.iter().enumerate() {
        out[i % width] += v.into();
    }
    Ok(out)
}

/// What [`layer_norm`] returns.
#[derive(Debug, Clone)]
pub struct LayerNormRef {
    /// `(x − mean)/σ · γ + β`, `[rows, width]`.
    pub out: Vec<f64>,
    /// Each row's mean, `[rows]`.
    pub mean: Vec<f64>,
    /// Each row's `1/σ = 1/√(var + ε)`, `[rows]`.
    pub rstd: Vec<f64>,
}

/// LayerNorm of each row of `x` (`[rows, width]`, `width = gamma.len()`)
/// with the biased variance and `eps` inside the root, as GPT-2's.
pub fn layer_norm<T: Copy + Into<f64>>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
) -> Result<LayerNormRef> {
    let width = gamma.len();
    let rows = rows_of("reference LayerNorm: x", x.len(), width)?;
    expect_len("reference LayerNorm: beta", beta.len(), &[width])?;
    let (x, gamma, beta) = (widen(x), widen(gamma), widen(beta));
    let mut r = LayerNormRef {
        out: Vec::with_capacity(x.len()),
        mean: Vec::with_capacity(rows),
        rstd: Vec::with_capacity(rows),
    };
    for row in x.chunks(width) {
        let mean = row.iter().sum::<f64>() / width as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / width as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        r.out.extend(
            row.iter()
                .zip(gamma.iter().zip(&beta))
                .map(|(v, (g, b))| (v - mean) * rstd * g + b),
        );
        r.mean.push(mean);
        r.rstd.push(rstd);
    }
    Ok(r)
}

/// Gradients of [`layer_norm`]'s inputs.
#[derive(Debug, Clone)]
pub struct LayerNormGradsRef {
    /// `∂L/∂x`, `[rows, width]`.
    pub dx: Vec<f64>,
    /// `∂L/∂γ`, `[width]`.
    pub dgamma: Vec<f64>,
    /// `∂L/∂β`, `[width]`.
    pub dbeta: Vec<f64>,
}

/// The backward of [`layer_norm`] from `dy = ∂L/∂out`: with `x̂ = (x − mean)/σ`
/// and `g = dy·γ`, `dx = (g − mean(g) − x̂·mean(g·x̂))/σ` per row,
/// `dγ = Σ_rows dy·x̂`, `dβ = Σ_rows dy`. The statistics are recomputed from `x`.
pub fn layer_norm_backward<T: Copy + Into<f64>>(
    x: &[T],
    gamma: &[T],
    dy: &[T],
    eps: f64,
) -> Result<LayerNormGradsRef> {
    let width = gamma.len();
    let rows = rows_of("reference LayerNorm backward: x", x.len(), width)?;
    expect_len("reference LayerNorm backward: dy", dy.len(), &[rows, width])?;
    let stats = layer_norm(x, gamma, gamma, eps)?;
    let (x, gamma, dy) = (widen(x), widen(gamma), widen(dy));
    let mut g = LayerNormGradsRef {
        dx: vec![0.0; x.len()],
        dgamma: vec![0.0; width],
        dbeta: vec![0.0; width],
    };
    for r in 0..rows {
        let (mean, rstd) = (stats.mean[r], stats.rstd[r]);
        let xh: Vec<f64> = x[r * width..][..width]
            .iter()
            .map(|v| (v - mean) * rstd)
            .collect();
        let dy = &dy[r * width..][..width];
        let gy: Vec<f64> = dy.iter().zip(&gamma).map(|(d, w)| d * w).collect();
        let mean_g = gy.iter().sum::<f64>() / width as f64;
        let mean_gx = gy.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / width as f64;
        for c in 0..width {
            g.dx[r * width + c] = rstd * (gy[c] - mean_g - xh[c] * mean_gx);
            g.dgamma[c] += dy[c] * xh[c];
            g.dbeta[c] += dy[c];
        }
    }
    Ok(g)
}

/// Checks `ids` (`[B, n]`) against a table of `vocab` rows: their count,
/// `n >= 1` and every id in range.
fn check_ids(what: &str, ids: &[u32], n: usize, vocab: usize) -> Result<()> {
    rows_of(what, ids.len(), n)?;
    match ids.iter().position(|&id| id as usize >= vocab) {
        Some(i) => Err(Error::shape(format!(
            "{what}: id {} at index {i} is outside a table of {vocab} rows",
            ids[i]
        ))),
        None => Ok(()),
    }
}

/// `x[t] = wte[ids[t]] + wpe[t mod n]` for `ids` `[B, n]`, `wte`
/// `[vocab, width]` and `wpe` `[positions, width]` (`positions >= n`).
/// Returns `[B·n, width]`.
pub fn embed<T: Copy + Into<f64>>(
    ids: &[u32],
    n: usize,
    wte: &[T],
    wpe: &[T],
    width: usize,
) -> Result<Vec<f64>> {
    let vocab = rows_of("reference embedding: wte", wte.len(), width)?;
    let positions = rows_of("reference embedding: wpe", wpe.len(), width)?;
    check_ids("reference embedding: ids", ids, n, vocab)?;
    if positions < n {
        return Err(Error::shape(format!(
            "reference embedding: {positions} positions for sequences of {n}"
        )));
    }
    let mut x = Vec::with_capacity(ids.len() * width);
    for (t, &id) in ids.iter().enumerate() {
        let (word, pos) = (id as usize * width, (t % n) * width);
        x.extend((0..width).map(|c| wte[word + c].into() + wpe[pos + c].into()));
    }
    Ok(x)
}

/// The backward of [`embed`]: `(dwte, dwpe)`, `[vocab, width]` and
/// `[positions, width]`, from `dx` (`[B·n, width]`): each token's gradient
/// row added to its id's row and its position's row.
pub fn embed_backward<T: Copy + Into<f64>>(
    ids: &[u32],
    n: usize,
    dx: &[T],
    vocab: usize,
    positions: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    check_ids("reference embedding backward: ids", ids, n, vocab)?;
    let width = if ids.is_empty() {
        0
    } else {
        dx.len() / ids.len()
    };
    rows_of("reference embedding backward: dx", dx.len(), width)?;
    expect_len(
        "reference embedding backward: dx",
        dx.len(),
        &[ids.len(), width],
    )?;
    if positions < n {
        return Err(Error::shape(format!(
            "reference embedding backward: {positions} positions for sequences of {n}"
        )));
    }
    let mut dwte = vec![0.0; vocab * width];
    let mut dwpe = vec![0.0; positions * width];
    for (t, &id) in ids.iter().enumerate() {
        for c in 0..width {
            let g = dx[t * width + c].into();
            dwte[id as usize * width + c] += g;
            dwpe[(t % n) * width + c] += g;
        }
    }
    Ok((dwte, dwpe))
}

/// What [`cross_entropy`] returns.
#[derive(Debug, Clone)]
pub struct CrossEntropyRef {
    /// The mean of `losses`.
    pub loss: f64,
    /// Each row's `ln Σ_j exp(l_j) − l_target`, `[rows]`.
    pub losses: Vec<f64>,
    /// `∂loss/∂logits = (softmax − onehot)/rows`, `[rows, vocab]`.
    pub dlogits: Vec<f64>,
}

/// Softmax cross-entropy of `logits` (`[rows, vocab]`) against `targets`
/// (`[rows]`), averaged over rows, with its gradient. Max-subtracted, so
/// any finite logits give finite results. No rows is a shape error.
pub fn cross_entropy<T: Copy + Into<f64>>(
    logits: &[T],
    targets: &[u32],
    vocab: usize,
) -> Result<CrossEntropyRef> {
    let rows = rows_of("reference cross-entropy: logits", logits.len(), vocab)?;
    if rows == 0 {
        return Err(Error::shape("reference cross-entropy: no rows"));
    }
    expect_len("reference cross-entropy: targets", targets.len(), &[rows])?;
    check_ids("reference cross-entropy: targets", targets, rows, vocab)?;
    let logits = widen(logits);
    let mut r = CrossEntropyRef {
        loss: 0.0,
        losses: Vec::with_capacity(rows),
        dlogits: Vec::with_capacity(logits.len()),
    };
    for (row, &target) in logits.chunks(vocab).zip(targets) {
        let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|l| (l - top).exp()).sum();
        r.losses.push(top - row[target as usize] + sum.ln());
        r.dlogits.extend(row.iter().enumerate().map(|(j, l)| {
            let onehot = if j == target as usize { 1.0 } else { 0.0 };
            ((l - top).exp() / sum - onehot) / rows as f64
        }));
    }
    r.loss = r.losses.iter().sum::<f64>() / rows as f64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    //! Each backward against central finite differences of its forward, on
    //! tiny shapes, for the scalar loss `L = Σ w ⊙ y` with fixed random `w`.

    use super::*;
    use crate::workload::SplitMix64;

    fn draw(rng: &mut SplitMix64, len: usize, lo: f32, hi: f32) -> Vec<f64> {
        rng.vec(len, lo, hi).into_iter().map(f64::from).collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Central differences of `f` at `x`, one entry at a time.
    fn numeric(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let h = 1e-6;
        (0..x.len())
            .map(|i| {
                let mut p = x.to_vec();
                p[i] += h;
                let up = f(&p);
                p[i] -= 2.0 * h;
                (up - f(&p)) / (2.0 * h)
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-7 + 1e-6 * w.abs(),
                "{what}[{i}] = {g}, finite differences give {w}"
            );
        }
    }

    #[test]
    fn gelu_matches_known_values_and_its_derivative() {
        // gelu(1) of the tanh form (the erf form gives 0.841345).
        assert!((gelu(1.0) - 0.841_191_990_608_276_8).abs() < 1e-15);
        assert_eq!(gelu(0.0), 0.0);
        for x in [-6.0, -2.5, -0.3, 0.0, 0.7, 3.0, 8.0] {
            let fd = numeric(&[x], |v| gelu(v[0]));
            assert_close(&format!("gelu'({x})"), &[gelu_grad(x)], &fd);
        }
    }

    #[test]
    fn bias_gelu_backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(1);
        let (rows, width) = (3, 5);
        let (x, b) = (
            draw(&mut rng, rows * width, -3.0, 3.0),
            draw(&mut rng, width, -1.0, 1.0),
        );
        let w = draw(&mut rng, rows * width, -1.0, 1.0);
        let (dx, db) = bias_gelu_backward(&x, &b, &w).unwrap();
        let loss = |x: &[f64], b: &[f64]| dot(&bias_gelu(x, b).unwrap(), &w);
        assert_close("dx", &dx, &numeric(&x, |x| loss(x, &b)));
        assert_close("dbias", &db, &numeric(&b, |b| loss(&x, b)));
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(2);
        let (rows, width, eps) = (3, 7, 1e-5);
        let x = draw(&mut rng, rows * width, -2.0, 2.0);
        let gamma = draw(&mut rng, width, 0.5, 1.5);
        let beta = draw(&mut rng, width, -0.5, 0.5);
        let w = draw(&mut rng, rows * width, -1.0, 1.0);
        let g = layer_norm_backward(&x, &gamma, &w, eps).unwrap();
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
            dot(&layer_norm(x, gamma, beta, eps).unwrap().out, &w)
        };
        assert_close("dx", &g.dx, &numeric(&x, |x| loss(x, &gamma, &beta)));
        assert_close(
            "dgamma",
            &g.dgamma,
            &numeric(&gamma, |gm| loss(&x, gm, &beta)),
        );
        assert_close("dbeta", &g.dbeta, &numeric(&beta, |b| loss(&x, &gamma, b)));
    }

    #[test]
    fn embed_backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(3);
        let (n, width, vocab, positions) = (3, 2, 4, 5);
        let ids = [2u32, 0, 2, 2, 3, 0];
        let wte = draw(&mut rng, vocab * width, -1.0, 1.0);
        let wpe = draw(&mut rng, positions * width, -1.0, 1.0);
        let w = draw(&mut rng, ids.len() * width, -1.0, 1.0);
        let (dwte, dwpe) = embed_backward(&ids, n, &w, vocab, positions).unwrap();
        let loss = |wte: &[f64], wpe: &[f64]| dot(&embed(&ids, n, wte, wpe, width).unwrap(), &w);
        assert_close("dwte", &dwte, &numeric(&wte, |t| loss(t, &wpe)));
        assert_close("dwpe", &dwpe, &numeric(&wpe, |p| loss(&wte, p)));
        // Id 1 and positions 3, 4 are never used.
        assert!(dwte[2..4].iter().chain(&dwpe[6..]).all(|&g| g == 0.0));
    }

    #[test]
    fn cross_entropy_backward_matches_finite_differences() {
        let mut rng = SplitMix64::new(4);
        let (rows, vocab) = (3, 6);
        let logits = draw(&mut rng, rows * vocab, -4.0, 4.0);
        let targets = [5u32, 0, 3];
        let r = cross_entropy(&logits, &targets, vocab).unwrap();
        let fd = numeric(&logits, |l| cross_entropy(l, &targets, vocab).unwrap().loss);
        assert_close("dlogits", &r.dlogits, &fd);
        // Uniform logits: the loss is ln V.
        let flat = cross_entropy(&[0.5f64; 6], &[2], 6).unwrap();
        assert!((flat.loss - 6f64.ln()).abs() < 1e-15);
        // ±1e4 logits stay finite: a confident miss costs the gap.
        let big = cross_entropy(&[1e4f64, -1e4], &[1], 2).unwrap();
        assert!((big.loss - 2e4).abs() < 1e-9, "{}", big.loss);
        assert!(big.dlogits.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn bad_lengths_and_ids_are_shape_errors() {
        let is_shape = |r: Result<()>| matches!(r, Err(Error::Shape(_)));
        let x = [0.5f32; 6];
        assert!(is_shape(bias_gelu(&x, &[0.0f32; 4]).map(drop)));
        assert!(is_shape(bias_gelu(&x, &[]).map(drop)));
        assert!(is_shape(
            bias_gelu_backward(&x, &[0.0; 3], &x[..3]).map(drop)
        ));
        assert!(is_shape(column_sum(&x, 4).map(drop)));
        assert!(is_shape(
            layer_norm(&x, &[1.0; 3], &[0.0; 2], 1e-5).map(drop)
        ));
        assert!(is_shape(
            layer_norm_backward(&x, &[1.0; 3], &x[..5], 1e-5).map(drop)
        ));
        assert!(is_shape(embed(&[0, 3], 2, &x, &x, 2).map(drop)));
        assert!(is_shape(embed(&[0, 1, 2], 2, &x, &x, 2).map(drop)));
        assert!(is_shape(embed(&[0, 1, 2, 0], 4, &x, &x, 2).map(drop)));
        assert!(is_shape(
            embed_backward(&[0, 1], 2, &x[..5], 3, 2).map(drop)
        ));
        assert!(is_shape(embed_backward(&[0, 1], 2, &x, 3, 1).map(drop)));
        assert!(is_shape(cross_entropy(&x, &[0, 3], 3).map(drop)));
        assert!(is_shape(cross_entropy(&x, &[0], 3).map(drop)));
        assert!(is_shape(cross_entropy(&[] as &[f32], &[], 3).map(drop)));
    }
}
