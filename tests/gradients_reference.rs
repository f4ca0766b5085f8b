//! The float64 reference backward passes, held to central finite
//! differences of the reference forward on tiny shapes, and SAOBP's O(N²D)
//! backward held to the materialized one. CPU only.
//!
//! The loss is `L = Σ O ⊙ W` for a fixed random `W`, so `∂L/∂O = W`.
//!
//! Step sizes. The forward takes `q`, `k`, `v` and scores as f32, so those
//! are drawn on a grid of 2⁻¹² with |x| < 64: then `x ± 2⁻¹⁷` is exact in
//! f32 and the step is exactly h = 2⁻¹⁷ ≈ 7.6e-6. `A` and λ are f64 and
//! step by h = 1e-5. A central difference errs by about h²/6·|L'''| plus
//! rounding ε·|L|/h (≈ 1e-10); the worst seen here is 2.3e-9, with
//! |S| ~ 30. The bound `|fd − grad| ≤ 1e-6·(1 + |fd|)` leaves a wide
//! margin, while a missing or wrong term errs by far more than 1e-6.

use saobp::reference::attention::attention_backward;
use saobp::reference::saobp::{
    apply, messages, multi_hop_mass, output_backward, output_backward_materialized, refine,
    saobp_backward, OutputGrads,
};
use saobp::reference::{self, softmax_backward, RefOptions};
use saobp::workload::SplitMix64 as Rng;
use saobp::Error;

/// The f32 step, 2⁻¹⁷: exact for grid values below 64 in magnitude.
const STEP_F32: f32 = 1.0 / 131_072.0;
/// The f64 step.
const STEP_F64: f64 = 1e-5;
/// The finite-difference bound, absolute plus relative (see the module doc).
const FD_TOL: f64 = 1e-6;

/// `len` values uniform in `±spread`, rounded to the grid of 2⁻¹².
fn grid(rng: &mut Rng, len: usize, spread: f32) -> Vec<f32> {
    rng.vec(len, -spread, spread)
        .into_iter()
        .map(|x| (x * 4096.0).round() / 4096.0)
        .collect()
}

/// A fixed random `W` for the loss `Σ O ⊙ W`.
fn weights(rng: &mut Rng, len: usize) -> Vec<f64> {
    rng.vec(len, -1.0, 1.0).into_iter().map(f64::from).collect()
}

fn loss(out: &[f64], w: &[f64]) -> f64 {
    assert_eq!(out.len(), w.len());
    out.iter().zip(w).map(|(o, w)| o * w).sum()
}

/// Central differences of `f` in each entry of the f32 grid values `x`.
fn fd_f32(x: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            // The step is exact only on the grid: x ± h must round-trip.
            assert!(x0.abs() < 64.0 && (x0 * 4096.0).fract() == 0.0);
            x[i] = x0 + STEP_F32;
            assert_eq!(f64::from(x[i]) - f64::from(x0), f64::from(STEP_F32));
            let plus = f(&x);
            x[i] = x0 - STEP_F32;
            let minus = f(&x);
            x[i] = x0;
            (plus - minus) / (2.0 * f64::from(STEP_F32))
        })
        .collect()
}

/// Central differences of `f` in each entry of `x`.
fn fd_f64(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + STEP_F64;
            let plus = f(&x);
            x[i] = x0 - STEP_F64;
            let minus = f(&x);
            x[i] = x0;
            (plus - minus) / (2.0 * STEP_F64)
        })
        .collect()
}

/// `grad` matches the finite differences `fd` within [`FD_TOL`], and the
/// gradient is not trivially zero (so the comparison means something).
fn assert_fd(what: &str, grad: &[f64], fd: &[f64]) {
    assert_eq!(grad.len(), fd.len(), "{what}: lengths");
    for (i, (g, f)) in grad.iter().zip(fd).enumerate() {
        assert!(
            (g - f).abs() <= FD_TOL * (1.0 + f.abs()),
            "{what}[{i}]: backward {g:e}, finite differences {f:e}"
        );
    }
    let largest = fd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(largest > 1e-3, "{what}: every gradient is ~0 ({largest:e})");
}

/// One attention configuration.
struct Case {
    name: &'static str,
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    key_mask: Option<Vec<f32>>,
    /// `q`, `k` entries are uniform in ±spread.
    spread: f32,
    lambda: Vec<f64>,
}

impl Case {
    fn opts(&self) -> RefOptions<'_> {
        RefOptions {
            causal: self.causal,
            key_mask: self.key_mask.as_deref(),
            scale: None,
        }
    }

    fn qkv_len(&self) -> usize {
        self.shape.iter().product()
    }

    fn out_len(&self) -> usize {
        self.shape[0] * self.shape[1] * self.shape[2] * self.dv
    }

    fn maps(&self) -> usize {
        self.shape[0] * self.shape[1]
    }
}

/// Causal and not; λ = 0, small (0.3) and large (5); a key mask that
/// empties row 0 (causal, key 0 masked) or a whole batch item; logits with
/// |S| ~ 30.
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "full",
            shape: [1, 2, 4, 3],
            dv: 2,
            causal: false,
            key_mask: None,
            spread: 1.5,
            lambda: vec![0.3, 5.0],
        },
        Case {
            name: "causal",
            shape: [2, 2, 4, 3],
            dv: 2,
            causal: true,
            key_mask: None,
            spread: 1.5,
            lambda: vec![0.0, 0.3],
        },
        Case {
            name: "causal, key 0 masked: row 0 empty",
            shape: [2, 2, 4, 3],
            dv: 2,
            causal: true,
            key_mask: Some(vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]),
            spread: 1.5,
            lambda: vec![5.0, 0.3],
        },
        Case {
            name: "masked, batch item 1 empty",
            shape: [2, 1, 4, 2],
            dv: 3,
            causal: false,
            key_mask: Some(vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            spread: 1.5,
            lambda: vec![0.3],
        },
        Case {
            name: "large logits",
            shape: [1, 2, 5, 4],
            dv: 3,
            causal: false,
            key_mask: None,
            spread: 8.0,
            lambda: vec![5.0, 0.3],
        },
        Case {
            name: "large logits, causal",
            shape: [1, 2, 5, 4],
            dv: 3,
            causal: true,
            key_mask: Some(vec![1.0, 1.0, 1.0, 0.0, 1.0]),
            spread: 8.0,
            lambda: vec![0.0, 5.0],
        },
    ]
}

/// Inputs of one case: `q`, `k`, `v` and the loss weights `W` on `O`.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    w: Vec<f64>,
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let inputs = Inputs {
        q: grid(&mut rng, case.qkv_len(), case.spread),
        k: grid(&mut rng, case.qkv_len(), case.spread),
        v: grid(&mut rng, case.out_len(), 1.0),
        w: weights(&mut rng, case.out_len()),
    };
    if case.spread > 5.0 {
        // The case is only a stress test if the logits are really large.
        let s = scores(case, &inputs.q, &inputs.k);
        let largest = s.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(largest >= 25.0, "{}: max |S| = {largest}", case.name);
    }
    inputs
}

/// `S = scale · q·kᵀ`, `[B, H, N, N]`, unmasked.
fn scores(case: &Case, q: &[f32], k: &[f32]) -> Vec<f64> {
    let [_, _, n, d] = case.shape;
    let scale = 1.0 / (d as f64).sqrt();
    let mut s = Vec::new();
    for g in 0..case.maps() {
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..d)
                    .map(|c| f64::from(q[(g * n + i) * d + c]) * f64::from(k[(g * n + j) * d + c]))
                    .sum();
                s.push(scale * dot);
            }
        }
    }
    s
}

/// Whether key `j` is valid for query `i` of batch item `b`.
fn is_valid(case: &Case, b: usize, i: usize, j: usize) -> bool {
    let n = case.shape[2];
    (!case.causal || j <= i) && case.key_mask.as_ref().is_none_or(|m| m[b * n + j] != 0.0)
}

#[test]
fn softmax_backward_matches_finite_differences() {
    for (seed, case) in cases().iter().enumerate() {
        let [b, h, n, _] = case.shape;
        let map_shape = [b, h, n, n];
        let mut rng = Rng::new(100 + seed as u64);
        // Scores straight from the grid, as large as the case's logits.
        let x = grid(&mut rng, b * h * n * n, 5.0 * case.spread);
        let w = weights(&mut rng, x.len());
        let mask = case.key_mask.as_deref();
        let a = reference::softmax(&x, &map_shape, case.causal, mask).unwrap();
        let grad = softmax_backward(&a, &w, &map_shape, case.causal, mask).unwrap();
        let fd = fd_f32(&x, |x| {
            loss(
                &reference::softmax(x, &map_shape, case.causal, mask).unwrap(),
                &w,
            )
        });
        assert_fd(&format!("{}: ∂L/∂S", case.name), &grad, &fd);
        // Masked entries get exactly 0, though W is nonzero there.
        for (idx, g) in grad.iter().enumerate() {
            let (bi, i, j) = (idx / (h * n * n), idx / n % n, idx % n);
            if !is_valid(case, bi, i, j) {
                assert_eq!(*g, 0.0, "{}: masked entry {idx}", case.name);
            }
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    for (seed, case) in cases().iter().enumerate() {
        let x = inputs(case, seed as u64);
        let (shape, dv, opts) = (case.shape, case.dv, case.opts());
        let grad = attention_backward(&x.q, &x.k, &x.v, shape, dv, &opts, &x.w).unwrap();
        let out = |q: &[f32], k: &[f32], v: &[f32]| {
            let o = reference::attention(q, k, v, shape, dv, &opts).unwrap();
            loss(&o.output, &x.w)
        };
        let name = case.name;
        assert_fd(
            &format!("{name}: ∂L/∂q"),
            &grad.grad_q,
            &fd_f32(&x.q, |q| out(q, &x.k, &x.v)),
        );
        assert_fd(
            &format!("{name}: ∂L/∂k"),
            &grad.grad_k,
            &fd_f32(&x.k, |k| out(&x.q, k, &x.v)),
        );
        assert_fd(
            &format!("{name}: ∂L/∂v"),
            &grad.grad_v,
            &fd_f32(&x.v, |v| out(&x.q, &x.k, v)),
        );
    }
}

/// `L = Σ (R·V) ⊙ W` through the materialized forward (`M`, `m`, `R`).
fn refined_loss(a: &[f64], v: &[f32], lambda: &[f64], n: usize, dv: usize, w: &[f64]) -> f64 {
    let m = messages(a, n).unwrap();
    let mass = multi_hop_mass(&m, n).unwrap();
    let r = refine(a, &m, &mass, lambda, n).unwrap();
    loss(&apply(&r, v, n, dv).unwrap(), w)
}

#[test]
fn output_backward_matches_finite_differences() {
    for (seed, case) in cases().iter().enumerate() {
        let x = inputs(case, seed as u64);
        let (n, dv) = (case.shape[2], case.dv);
        let a = reference::attention(&x.q, &x.k, &x.v, case.shape, dv, &case.opts())
            .unwrap()
            .attention;
        let lambda = &case.lambda;
        let fd_a = fd_f64(&a, |a| refined_loss(a, &x.v, lambda, n, dv, &x.w));
        let fd_v = fd_f32(&x.v, |v| refined_loss(&a, v, lambda, n, dv, &x.w));
        let fd_lambda = fd_f64(lambda, |l| refined_loss(&a, &x.v, l, n, dv, &x.w));
        for (form, grad) in [
            (
                "O(N²D)",
                output_backward(&a, &x.v, lambda, n, dv, &x.w).unwrap(),
            ),
            (
                "materialized",
                output_backward_materialized(&a, &x.v, lambda, n, dv, &x.w).unwrap(),
            ),
        ] {
            let name = format!("{}, {form}", case.name);
            assert_fd(&format!("{name}: ∂L/∂A"), &grad.grad_attention, &fd_a);
            assert_fd(&format!("{name}: ∂L/∂V"), &grad.grad_v, &fd_v);
            assert_fd(&format!("{name}: ∂L/∂λ"), &grad.grad_lambda, &fd_lambda);
        }
    }
}

#[test]
fn saobp_backward_matches_finite_differences() {
    for (seed, case) in cases().iter().enumerate() {
        let x = inputs(case, seed as u64);
        let (shape, dv, opts, lambda) = (case.shape, case.dv, case.opts(), &case.lambda);
        let grad = saobp_backward(&x.q, &x.k, &x.v, shape, dv, &opts, lambda, &x.w).unwrap();
        let out = |q: &[f32], k: &[f32], v: &[f32], lambda: &[f64]| {
            let o = reference::saobp(q, k, v, shape, dv, &opts, lambda).unwrap();
            loss(&o.output, &x.w)
        };
        let name = case.name;
        assert_fd(
            &format!("{name}: ∂L/∂q"),
            &grad.grad_q,
            &fd_f32(&x.q, |q| out(q, &x.k, &x.v, lambda)),
        );
        assert_fd(
            &format!("{name}: ∂L/∂k"),
            &grad.grad_k,
            &fd_f32(&x.k, |k| out(&x.q, k, &x.v, lambda)),
        );
        assert_fd(
            &format!("{name}: ∂L/∂v"),
            &grad.grad_v,
            &fd_f32(&x.v, |v| out(&x.q, &x.k, v, lambda)),
        );
        assert_fd(
            &format!("{name}: ∂L/∂λ"),
            &grad.grad_lambda,
            &fd_f64(lambda, |l| out(&x.q, &x.k, &x.v, l)),
        );
    }
}

/// `got` equals `want` to 1e-10 of `want`'s largest entry: both are exact
/// expressions of the same derivative, differing only by f64 rounding, and
/// an elementwise relative bound would be meaningless where terms cancel.
fn assert_same(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: all zero");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-10 * scale,
            "{what}[{i}]: O(N²D) {g:e}, materialized {w:e}"
        );
    }
}

#[test]
fn output_backward_equals_materialized_backward() {
    let mut rng = Rng::new(7);
    for trial in 0..24 {
        let n = 2 + rng.below(8);
        let dv = 1 + rng.below(4);
        let heads = 1 + rng.below(3);
        let maps = heads * (1 + rng.below(2));
        let lambda: Vec<f64> = (0..heads)
            .map(|h| [0.0, 0.3, 5.0, f64::from(rng.uniform(0.0, 8.0))][(trial + h) % 4])
            .collect();
        // Odd trials: a free matrix (rows not stochastic, so r ≠ 1 and the
        // r terms count); even ones: a causal map with row 0 emptied.
        let mut a: Vec<f64> = rng
            .vec(maps * n * n, 0.0, 1.0)
            .into_iter()
            .map(f64::from)
            .collect();
        if trial % 2 == 0 {
            for (idx, x) in a.iter_mut().enumerate() {
                let (i, j) = (idx / n % n, idx % n);
                if j > i || i == 0 {
                    *x = 0.0;
                }
            }
            for row in a.chunks_mut(n) {
                let sum: f64 = row.iter().sum();
                if sum > 0.0 {
                    row.iter_mut().for_each(|x| *x /= sum);
                }
            }
        }
        let v = rng.vec(maps * n * dv, -1.0, 1.0);
        let g = rng.vec(maps * n * dv, -1.0, 1.0);
        let fused = output_backward(&a, &v, &lambda, n, dv, &g).unwrap();
        let full = output_backward_materialized(&a, &v, &lambda, n, dv, &g).unwrap();
        let what = format!("trial {trial} (n {n}, dv {dv}, λ {lambda:?})");
        assert_same(
            &format!("{what}: ∂L/∂A"),
            &fused.grad_attention,
            &full.grad_attention,
        );
        assert_same(&format!("{what}: ∂L/∂V"), &fused.grad_v, &full.grad_v);
        if n > 2 {
            assert_same(
                &format!("{what}: ∂L/∂λ"),
                &fused.grad_lambda,
                &full.grad_lambda,
            );
        } else {
            // Below three tokens there is no two-hop path: M = 0, so ∂L/∂λ
            // is exactly 0 through M, and 0 up to the rounding of terms
            // that cancel in the O(N²D) form (bounded as above, by the size
            // of the other gradients).
            let scale = full.grad_v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(full.grad_lambda.iter().all(|&x| x == 0.0), "{what}");
            assert!(
                fused.grad_lambda.iter().all(|x| x.abs() <= 1e-10 * scale),
                "{what}: ∂L/∂λ {:?}",
                fused.grad_lambda
            );
        }
    }
}

#[test]
fn lambda_zero_gives_plain_attention_gradients_exactly() {
    for (seed, case) in cases().iter().enumerate() {
        let x = inputs(case, seed as u64);
        let (shape, dv, opts) = (case.shape, case.dv, case.opts());
        let zero = vec![0.0; shape[1]];
        let plain = attention_backward(&x.q, &x.k, &x.v, shape, dv, &opts, &x.w).unwrap();
        let refined = saobp_backward(&x.q, &x.k, &x.v, shape, dv, &opts, &zero, &x.w).unwrap();
        assert_eq!(refined.grad_q, plain.grad_q, "{}: ∂L/∂q", case.name);
        assert_eq!(refined.grad_k, plain.grad_k, "{}: ∂L/∂k", case.name);
        assert_eq!(refined.grad_v, plain.grad_v, "{}: ∂L/∂v", case.name);
        // ∂L/∂λ at λ = 0 is still defined (λ = −h is a valid point of the
        // formula) and nonzero wherever there are two-hop paths.
        let fd = fd_f64(&zero, |l| {
            let o = reference::saobp(&x.q, &x.k, &x.v, shape, dv, &opts, l).unwrap();
            loss(&o.output, &x.w)
        });
        assert_fd(
            &format!("{}: ∂L/∂λ at 0", case.name),
            &refined.grad_lambda,
            &fd,
        );
    }
}

fn is_shape<T: std::fmt::Debug>(r: saobp::Result<T>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

#[test]
fn wrong_lengths_are_shape_errors() {
    let x = [0.5f32; 8];
    let g = [0.25f64; 8];
    let a = [0.25f64; 8];
    let shape = [1, 2, 2, 2];
    let opts = RefOptions::default();

    // Softmax: A and ∂L/∂A of the shape, the key mask [B, C].
    assert!(softmax_backward(&a, &g, &[2, 2, 2], false, None).is_ok());
    assert!(is_shape(softmax_backward(
        &a[..7],
        &g,
        &[2, 2, 2],
        false,
        None
    )));
    assert!(is_shape(softmax_backward(
        &a,
        &g[..7],
        &[2, 2, 2],
        false,
        None
    )));
    assert!(is_shape(softmax_backward(&a, &g, &[8], false, None)));
    assert!(is_shape(softmax_backward(
        &a,
        &g,
        &[2, 2, 2],
        false,
        Some(&[1.0])
    )));

    // Attention: q, k, v, ∂L/∂O and the key mask.
    assert!(attention_backward(&x, &x, &x, shape, 2, &opts, &g).is_ok());
    assert!(is_shape(attention_backward(
        &x[..7],
        &x,
        &x,
        shape,
        2,
        &opts,
        &g
    )));
    assert!(is_shape(attention_backward(
        &x,
        &x[..7],
        &x,
        shape,
        2,
        &opts,
        &g
    )));
    assert!(is_shape(attention_backward(
        &x,
        &x,
        &x[..7],
        shape,
        2,
        &opts,
        &g
    )));
    assert!(is_shape(attention_backward(
        &x,
        &x,
        &x,
        shape,
        2,
        &opts,
        &g[..7]
    )));
    let short_mask = RefOptions {
        key_mask: Some(&[1.0]),
        ..opts
    };
    assert!(is_shape(attention_backward(
        &x,
        &x,
        &x,
        shape,
        2,
        &short_mask,
        &g
    )));
    let huge = [usize::MAX, 2, 2, 2];
    assert!(is_shape(attention_backward(&x, &x, &x, huge, 2, &opts, &g)));

    // The output backward, both forms: A whole [n, n] blocks, V and ∂L/∂O
    // [G, n, dv], λ dividing the maps into heads.
    let v = [1.0f32; 8];
    type Backward = fn(&[f64], &[f32], &[f64], usize, usize, &[f64]) -> saobp::Result<OutputGrads>;
    let forms: [Backward; 2] = [output_backward, output_backward_materialized];
    for backward in forms {
        assert!(backward(&a, &v, &[1.0, 2.0], 2, 2, &g).is_ok());
        assert!(is_shape(backward(&a[..7], &v, &[1.0], 2, 2, &g)));
        assert!(is_shape(backward(&a, &v[..6], &[1.0], 2, 2, &g)));
        assert!(is_shape(backward(&a, &v, &[1.0], 2, 2, &g[..6])));
        assert!(is_shape(backward(&a, &v, &[], 2, 2, &g)));
        assert!(is_shape(backward(&a, &v, &[1.0; 3], 2, 2, &g)));
        assert!(is_shape(backward(&a, &v, &[1.0], 0, 2, &g)));
    }

    // The full SAOBP backward: λ is [H], and the rest as attention's.
    let lambda = [0.5, 1.0];
    assert!(saobp_backward(&x, &x, &x, shape, 2, &opts, &lambda, &g).is_ok());
    assert!(is_shape(saobp_backward(
        &x,
        &x,
        &x,
        shape,
        2,
        &opts,
        &[0.5],
        &g
    )));
    assert!(is_shape(saobp_backward(
        &x[..6],
        &x,
        &x,
        shape,
        2,
        &opts,
        &lambda,
        &g
    )));
    assert!(is_shape(saobp_backward(
        &x,
        &x[..6],
        &x,
        shape,
        2,
        &opts,
        &lambda,
        &g
    )));
    assert!(is_shape(saobp_backward(
        &x,
        &x,
        &x[..6],
        shape,
        2,
        &opts,
        &lambda,
        &g
    )));
    assert!(is_shape(saobp_backward(
        &x,
        &x,
        &x,
        shape,
        2,
        &opts,
        &lambda,
        &g[..6]
    )));
    assert!(is_shape(saobp_backward(
        &x,
        &x,
        &x,
        shape,
        2,
        &short_mask,
        &lambda,
        &g
    )));

    // No tokens: nothing to differentiate, and ∂L/∂λ is 0 per head.
    let none: [f32; 0] = [];
    let empty =
        saobp_backward(&none, &none, &none, [1, 2, 0, 2], 2, &opts, &lambda, &none).unwrap();
    assert!(empty.grad_q.is_empty() && empty.grad_v.is_empty());
    assert_eq!(empty.grad_lambda, vec![0.0, 0.0]);
}
