//! Reference of [`crate::kernels::metrics`].

use super::expect_len;
use crate::error::{Error, Result};
use crate::kernels::metrics::METRIC_COUNT;

/// Per-row metrics of `p` (`[B, H, N, N]`, `shape = [B, H, N]`) in
/// [`crate::METRIC_NAMES`] order: entropy, normalized entropy, sparsity, peak,
/// distance, `m`, GTD, weight. `lambda` per head gives GTD at λ_h; `None`
/// means λ = 1. `n_i` counts the keys the masks allow. `mass` is `[B, H, N]`,
/// `lambda` `[H]` and `key_mask` `[B, N]`; other lengths are a shape error.
pub fn row_metrics(
    p: &[f64],
    mass: &[f64],
    lambda: Option<&[f64]>,
    shape: [usize; 3],
    causal: bool,
    key_mask: Option<&[f32]>,
) -> Result<Vec<[f64; METRIC_COUNT]>> {
    let [bs, hs, n] = shape;
    expect_len("reference metrics: p", p.len(), &[bs, hs, n, n])?;
    expect_len("reference metrics: mass", mass.len(), &shape)?;
    if let Some(l) = lambda {
        expect_len("reference metrics: lambda", l.len(), &[hs])?;
    }
    if let Some(m) = key_mask {
        expect_len("reference metrics: key_mask", m.len(), &[bs, n])?;
    }
    let kept = |b: usize, j: usize| key_mask.is_none_or(|m| m[b * n + j] != 0.0);
    let mut out = Vec::with_capacity(bs * hs * n);
    for b in 0..bs {
        for h in 0..hs {
            for i in 0..n {
                let row_index = (b * hs + h) * n + i;
                let row = &p[row_index * n..][..n];
                let count = (0..n)
                    .filter(|&j| (!causal || j <= i) && kept(b, j))
                    .count() as f64;
                let entropy: f64 = -row
                    .iter()
                    .filter(|&&x| x > 0.0)
                    .map(|x| x * x.ln())
                    .sum::<f64>();
                let normalized = if count > 1.0 {
                    entropy / count.ln()
                } else {
                    0.0
                };
                let sparsity = if count >= 1.0 {
                    1.0 - entropy.exp() / count
                } else {
                    0.0
                };
                let peak = row.iter().copied().fold(0.0, f64::max);
                let distance: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x * (i as f64 - j as f64).abs())
                    .sum();
                let m = mass[row_index];
                let l = lambda.map_or(1.0, |l| l[h]);
                let weight = if count >= 1.0 && kept(b, i) { 1.0 } else { 0.0 };
                out.push([
                    entropy,
                    normalized,
                    sparsity,
                    peak,
                    distance,
                    m,
                    l * m / (1.0 + l * m),
                    weight,
                ]);
            }
        }
    }
    Ok(out)
}

/// Per-head means of `rows` (from [`row_metrics`], `n` rows per head) over
/// rows of weight 1; the last entry is the number of such rows. `n = 0`, or
/// a number of rows that is not a multiple of `n`, is a shape error.
pub fn summarize(rows: &[[f64; METRIC_COUNT]], n: usize) -> Result<Vec<[f64; METRIC_COUNT]>> {
    if n == 0 || !rows.len().is_multiple_of(n) {
        return Err(Error::shape(format!(
            "reference summarize: {} rows are not whole heads of n = {n} rows",
            rows.len()
        )));
    }
    Ok(rows
        .chunks(n)
        .map(|head| {
            let counted: Vec<_> = head.iter().filter(|r| r[METRIC_COUNT - 1] == 1.0).collect();
            let mut s = [0.0; METRIC_COUNT];
            for r in &counted {
                for (acc, x) in s.iter_mut().zip(r.iter()).take(METRIC_COUNT - 1) {
                    *acc += x;
                }
            }
            let c = counted.len() as f64;
            if c > 0.0 {
                s.iter_mut().take(METRIC_COUNT - 1).for_each(|x| *x /= c);
            }
            s[METRIC_COUNT - 1] = c;
            s
        })
        .collect())
}
