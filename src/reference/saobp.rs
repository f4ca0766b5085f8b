//! Reference of [`crate::kernels::saobp`]: SAOBP straight from the spec's
//! definitions (`M` summed term by term, `R`, `O = R·V`). It never uses the
//! O(N²D) form, so it checks the fused kernels rather than restating them.

use super::attention::{attention, RefOptions};
use super::{blocks, expect_len};
use crate::error::{Error, Result};

/// Fails with a shape error unless `lambda` has one entry per head of `maps`
/// maps (`maps = B·heads`; with no maps, λ is not used).
fn check_heads(what: &str, lambda: &[f64], maps: usize) -> Result<()> {
    if maps > 0 && (lambda.is_empty() || !maps.is_multiple_of(lambda.len())) {
        return Err(Error::shape(format!(
            "{what}: {} λ values do not divide {maps} maps into B·heads",
            lambda.len()
        )));
    }
    Ok(())
}

/// Two-hop messages of `a` (`[G, n, n]`): `M_ij = Σ_{k∉{i,j}} A_ik A_kj`, `M_ii = 0`.
pub fn messages(a: &[f64], n: usize) -> Result<Vec<f64>> {
    blocks("reference messages: A", a.len(), n)?;
    let mut m = vec![0.0; a.len()];
    for (g, block) in m.chunks_mut(n * n).enumerate() {
        let a = &a[g * n * n..][..n * n];
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                block[i * n + j] = (0..n)
                    .filter(|&k| k != i && k != j)
                    .map(|k| a[i * n + k] * a[k * n + j])
                    .sum();
            }
        }
    }
    Ok(m)
}

/// Row sums of `M` (`[G, n, n]`): the multi-hop mass `m`, `[G, n]`.
pub fn multi_hop_mass(messages: &[f64], n: usize) -> Result<Vec<f64>> {
    blocks("reference multi-hop mass: M", messages.len(), n)?;
    Ok(messages.chunks(n).map(|row| row.iter().sum()).collect())
}

/// `R_ij = (A_ij + λ_h M_ij) / (1 + λ_h m_i)` for `a` and `messages`
/// `[G, n, n]` and `mass` `[G, n]`, with `lambda[h]` per head and
/// `G = B·heads` maps.
pub fn refine(
    a: &[f64],
    messages: &[f64],
    mass: &[f64],
    lambda: &[f64],
    n: usize,
) -> Result<Vec<f64>> {
    let maps = blocks("reference refine: A", a.len(), n)?;
    expect_len("reference refine: M", messages.len(), &[maps, n, n])?;
    expect_len("reference refine: m", mass.len(), &[maps, n])?;
    check_heads("reference refine", lambda, maps)?;
    let heads = lambda.len();
    let mut r = vec![0.0; a.len()];
    for (row, out) in r.chunks_mut(n).enumerate() {
        let l = lambda[(row / n) % heads];
        for (j, x) in out.iter_mut().enumerate() {
            *x = (a[row * n + j] + l * messages[row * n + j]) / (1.0 + l * mass[row]);
        }
    }
    Ok(r)
}

/// `GTD_i = λ_h m_i / (1 + λ_h m_i)` for `mass` `[G, n]`, `lambda[h]` per
/// head and `G = B·heads` maps.
pub fn gtd(mass: &[f64], lambda: &[f64], n: usize) -> Result<Vec<f64>> {
    if n == 0 || !mass.len().is_multiple_of(n) {
        return Err(Error::shape(format!(
            "reference GTD: {} values of m are not whole rows of n = {n}",
            mass.len()
        )));
    }
    check_heads("reference GTD", lambda, mass.len() / n)?;
    let heads = lambda.len();
    Ok(mass
        .iter()
        .enumerate()
        .map(|(row, m)| {
            let l = lambda[(row / n) % heads];
            l * m / (1.0 + l * m)
        })
        .collect())
}

/// `P·V` for `p` `[G, n, n]` and `v` `[G, n, dv]`.
pub fn apply(p: &[f64], v: &[f32], n: usize, dv: usize) -> Result<Vec<f64>> {
    let groups = blocks("reference P·V: P", p.len(), n)?;
    expect_len("reference P·V: V", v.len(), &[groups, n, dv])?;
    let mut out = vec![0.0; groups * n * dv];
    for g in 0..groups {
        for i in 0..n {
            for j in 0..n {
                let w = p[(g * n + i) * n + j];
                for c in 0..dv {
                    out[(g * n + i) * dv + c] += w * f64::from(v[(g * n + j) * dv + c]);
                }
            }
        }
    }
    Ok(out)
}

/// Every intermediate of one SAOBP run, in f64.
#[derive(Debug, Clone)]
pub struct SaobpRef {
    /// `A` `[B, H, N, N]`.
    pub attention: Vec<f64>,
    /// `M` `[B, H, N, N]`.
    pub messages: Vec<f64>,
    /// `m` `[B, H, N]`.
    pub mass: Vec<f64>,
    /// `R` `[B, H, N, N]`.
    pub refined: Vec<f64>,
    /// `O = R·V` `[B, H, N, Dv]`.
    pub output: Vec<f64>,
    /// `A·V`, the plain output.
    pub plain_output: Vec<f64>,
}

/// Attention then SAOBP with `lambda[h]` per head (`[H]`), all in f64;
/// arguments otherwise as in [`attention`], and lengths that do not match
/// the shapes are a shape error.
pub fn saobp(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: [usize; 4],
    dv: usize,
    opts: &RefOptions,
    lambda: &[f64],
) -> Result<SaobpRef> {
    expect_len("reference SAOBP: lambda", lambda.len(), &[shape[1]])?;
    let n = shape[2];
    let plain = attention(q, k, v, shape, dv, opts)?;
    let a = plain.attention;
    // With N = 0 there are no rows and nothing to refine.
    if n == 0 {
        return Ok(SaobpRef {
            attention: a,
            messages: Vec::new(),
            mass: Vec::new(),
            refined: Vec::new(),
            output: plain.output.clone(),
            plain_output: plain.output,
        });
    }
    let messages = messages(&a, n)?;
    let mass = multi_hop_mass(&messages, n)?;
    let refined = refine(&a, &messages, &mass, lambda, n)?;
    let output = apply(&refined, v, n, dv)?;
    Ok(SaobpRef {
        attention: a,
        messages,
        mass,
        refined,
        output,
        plain_output: plain.output,
    })
}
