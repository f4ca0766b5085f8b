//! How a GPU result is held to its float64 reference: the one rule every
//! check in the project uses (the tests, [`crate::conformance`], `saobp demo`
//! and the browser's self-test), and the summary of one comparison (largest
//! absolute and relative errors, the worst element, non-finite values).
//!
//! # The rule
//!
//! One element passes when
//!
//! ```text
//! |gpu − ref| ≤ abs + rel·|ref|
//! ```
//!
//! with the spec's `abs = 1e-5`, `rel = 1e-4` ([`Tolerance::SPEC`]), or a
//! stated looser bound where a kernel needs one ([`Tolerance::matmul`],
//! [`Tolerance::scaled_by`]). The bound is a sum, measured against the
//! reference only. A NaN or infinite GPU value never passes, and a bound of
//! 0 demands equality.
//!
//! The judgement is [`approx::AbsDiffEq`] with that bound as its epsilon
//! ([`Tolerance::accepts`]). approx's `relative_eq!` is not used: it accepts
//! `|gpu − ref| ≤ max(abs, rel·max(|gpu|, |ref|))`, which measures against
//! the GPU value too, so where `|ref|` is large it lets through errors this
//! rule refuses.

use approx::AbsDiffEq;

use crate::error::{Error, Result};

/// A per-element error bound: `|gpu − ref| ≤ abs + rel·|ref|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Relative part, a fraction of `|ref|`.
    pub rel: f64,
}

impl Tolerance {
    /// The spec's bound on probabilities and outputs: absolute 1e-5, relative 1e-4.
    pub const SPEC: Tolerance = Tolerance {
        abs: 1e-5,
        rel: 1e-4,
    };

    /// A matrix product over `k` unit-bounded terms: f32 accumulation
    /// rounding grows like `k·2⁻²⁴`, so the absolute part does too.
    pub fn matmul(k: usize) -> Tolerance {
        Tolerance {
            abs: 1e-5 + k as f64 * 2.4e-7,
            ..Tolerance::SPEC
        }
    }

    /// A sum of up to `n` terms of size up to `n` (the `distance` metric,
    /// and means of it): the absolute part scales with `n`.
    pub fn scaled_by(n: usize) -> Tolerance {
        Tolerance {
            abs: 1e-5 * n.max(1) as f64,
            ..Tolerance::SPEC
        }
    }

    /// The bound on one element whose reference value is `want`.
    pub fn bound(&self, want: f64) -> f64 {
        self.abs + self.rel * want.abs()
    }

    /// Whether `got` is within [`bound`](Self::bound)`(want)` of `want`: the
    /// per-element rule (see the module docs). NaN and infinite `got` fail.
    pub fn accepts(&self, got: f64, want: f64) -> bool {
        got.is_finite() && got.abs_diff_eq(&want, self.bound(want))
    }

    /// Below this magnitude the absolute part dominates the bound, so
    /// relative errors are measured against it instead of against `|ref|`
    /// (which may be 0).
    pub fn rel_floor(&self) -> f64 {
        if self.rel > 0.0 {
            self.abs / self.rel
        } else {
            f64::MIN_POSITIVE
        }
    }
}

/// The result of comparing GPU values with their reference under a [`Tolerance`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Comparison {
    /// Number of elements compared.
    pub len: usize,
    /// Largest `|gpu − ref|` over the finite GPU values.
    pub max_abs: f64,
    /// Largest `|gpu − ref| / max(|ref|, floor)`, floor = [`Tolerance::rel_floor`].
    pub max_rel: f64,
    /// Largest error as a fraction of its element's bound: at most 1 when
    /// every element passes, infinite for a non-finite GPU value.
    pub worst: f64,
    /// The element with the largest `worst`, if any element was compared.
    pub worst_index: Option<usize>,
    /// The first element over its bound (or not finite).
    pub first_failure: Option<usize>,
    /// Elements over their bound, non-finite ones included.
    pub failures: usize,
    /// GPU values that are NaN or infinite (always failures).
    pub non_finite: usize,
}

impl Comparison {
    /// Every element met its bound.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

/// Compares `got` (f32 from the GPU) with `want` (the f64 reference) element
/// by element. Fails with [`Error::Shape`] when the lengths differ.
pub fn compare(got: &[f32], want: &[f64], tol: Tolerance) -> Result<Comparison> {
    if got.len() != want.len() {
        return Err(Error::shape(format!(
            "{} GPU values to compare with {} reference values",
            got.len(),
            want.len()
        )));
    }
    let floor = tol.rel_floor();
    let mut c = Comparison {
        len: got.len(),
        ..Comparison::default()
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        let bound = tol.bound(w);
        let (ok, ratio) = if g.is_finite() {
            let err = (g - w).abs();
            c.max_abs = c.max_abs.max(err);
            c.max_rel = c.max_rel.max(err / w.abs().max(floor));
            let ratio = if bound > 0.0 {
                err / bound
            } else if err == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            (tol.accepts(g, w), ratio)
        } else {
            c.non_finite += 1;
            (false, f64::INFINITY)
        };
        if !ok {
            c.failures += 1;
            c.first_failure.get_or_insert(i);
        }
        if c.worst_index.is_none() || ratio > c.worst {
            c.worst = ratio;
            c.worst_index = Some(i);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_abs_plus_rel_times_reference() {
        let c = compare(&[1.0001, 0.0, 2.0], &[1.0, 0.0, 2.0], Tolerance::SPEC).unwrap();
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.worst_index, Some(0));
        assert!(c.worst > 0.8 && c.worst < 1.0, "{c:?}");
        // 0.1 is the floor: an error of 1e-6 on a zero reference is 1e-5 relative.
        let z = compare(&[1e-6], &[0.0], Tolerance::SPEC).unwrap();
        assert!((z.max_rel - 1e-5).abs() < 1e-12, "{z:?}");
    }

    #[test]
    fn misses_and_non_finite_values_fail() {
        let c = compare(
            &[0.5, f32::NAN, 0.5 + 1e-3, f32::INFINITY],
            &[0.5, 0.5, 0.5, 0.5],
            Tolerance::SPEC,
        )
        .unwrap();
        assert_eq!((c.failures, c.non_finite), (3, 2));
        assert_eq!(c.first_failure, Some(1));
        assert_eq!(c.worst, f64::INFINITY);
        assert!(c.max_abs > 9e-4 && c.max_abs < 1.1e-3, "{c:?}");
        assert!(compare(&[1.0], &[1.0, 2.0], Tolerance::SPEC).is_err());
    }

    #[test]
    fn the_bound_is_a_sum_against_the_reference_only() {
        let t = Tolerance::SPEC;
        // At ref = 1e6 the bound is 100.00001: an error of 100 passes, one
        // of 100.005 does not, though approx's relative_eq (measuring
        // against the larger of the two values) would let it through.
        assert!(t.accepts(1_000_100.0, 1e6));
        assert!(!t.accepts(1_000_100.005, 1e6));
        assert!(approx::relative_eq!(
            1_000_100.005,
            1e6,
            epsilon = t.abs,
            max_relative = t.rel
        ));
        // On a zero reference only the absolute part counts.
        assert!(t.accepts(1e-5, 0.0) && !t.accepts(1.1e-5, 0.0));
        assert!(t.accepts(-1e-5, 0.0) && !t.accepts(-1.1e-5, 0.0));
        // A small probability: at 1e-3 the bound is 1.01e-5.
        assert!(t.accepts(1e-3 + 1.005e-5, 1e-3) && !t.accepts(1e-3 + 1.02e-5, 1e-3));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!t.accepts(bad, 0.5), "{bad}");
        }
    }

    #[test]
    fn exact_bounds_demand_equality() {
        let exact = Tolerance { abs: 0.0, rel: 0.0 };
        assert!(compare(&[0.25], &[0.25], exact).unwrap().passed());
        let c = compare(&[0.25], &[0.2500001], exact).unwrap();
        assert!(!c.passed() && c.worst.is_infinite());
    }
}
