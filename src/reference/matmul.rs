//! Reference of [`crate::kernels::matmul`].

use super::{expect_len, numel};
use crate::error::{Error, Result};
use crate::kernels::matmul::MatmulOptions;

/// `alpha · op(A) · op(B)` in f64, with the shape rules of
/// [`crate::kernels::matmul::matmul`]. Returns the values of `C` (row-major).
/// Shapes that do not fit, or data lengths that do not match them, are a
/// shape error. Operands may be f32 (what the GPU sees) or f64 (a model's
/// reference, chained without rounding).
pub fn matmul(
    a: &[impl Copy + Into<f64>],
    a_shape: &[usize],
    b: &[impl Copy + Into<f64>],
    b_shape: &[usize],
    opts: &MatmulOptions,
) -> Result<Vec<f64>> {
    if a_shape.len() < 2 || b_shape.len() < 2 {
        return Err(Error::shape("matmul operands need rank >= 2"));
    }
    expect_len("reference matmul: a", a.len(), a_shape)?;
    expect_len("reference matmul: b", b.len(), b_shape)?;
    let (a_lead, a_mat) = a_shape.split_at(a_shape.len() - 2);
    let (b_lead, b_mat) = b_shape.split_at(b_shape.len() - 2);
    let (m, k) = if opts.trans_a {
        (a_mat[1], a_mat[0])
    } else {
        (a_mat[0], a_mat[1])
    };
    let (k2, n) = if opts.trans_b {
        (b_mat[1], b_mat[0])
    } else {
        (b_mat[0], b_mat[1])
    };
    if k != k2 || (!a_lead.is_empty() && !b_lead.is_empty() && a_lead != b_lead) {
        return Err(Error::shape(format!(
            "matmul shapes {a_shape:?} and {b_shape:?} do not fit"
        )));
    }
    let batch = numel(
        "reference matmul: batch",
        if a_lead.is_empty() { b_lead } else { a_lead },
    )?;
    numel("reference matmul: C", &[batch, m, n])?;
    let a_stride = if a_lead.is_empty() { 0 } else { m * k };
    let b_stride = if b_lead.is_empty() { 0 } else { k * n };
    let mut c = vec![0.0f64; batch * m * n];
    for g in 0..batch {
        let a = &a[g * a_stride..];
        let b = &b[g * b_stride..];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0.0f64;
                for l in 0..k {
                    let x: f64 = if opts.trans_a {
                        a[l * m + i].into()
                    } else {
                        a[i * k + l].into()
                    };
                    let y: f64 = if opts.trans_b {
                        b[j * k + l].into()
                    } else {
                        b[l * n + j].into()
                    };
                    sum += x * y;
                }
                c[(g * m + i) * n + j] = f64::from(opts.alpha) * sum;
            }
        }
    }
    Ok(c)
}
