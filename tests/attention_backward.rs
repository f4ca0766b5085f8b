//! Backward of the matmul and of plain attention (scores → softmax → `A·V`)
//! against float64 twins on every adapter.

mod common;

use common::{assert_within, key_mask, on_every_gpu, Rng, Tolerance};
use saobp::reference::{self, RefOptions};
use saobp::{
    attention_backward_blocking, matmul_backward_blocking, AttentionBackwardOptions, Error,
    MatmulOptions, Tensor,
};

/// The gradients of `C = alpha · op(A) · op(B)` in f64, straight from the
/// definition (independent of the library's products): `∂op(A) = alpha ·
/// ∂C · op(B)ᵀ`, `∂op(B) = alpha · op(A)ᵀ · ∂C`, transposed back to the
/// stored layouts; a rank-2 `B` shared by a batch of `A` gets the sum over
/// the batch.
fn matmul_grads_f64(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    grad_c: &[f32],
    o: &MatmulOptions,
) -> (Vec<f64>, Vec<f64>) {
    let (ar, br) = (a_shape.len(), b_shape.len());
    let (m, k) = if o.trans_a {
        (a_shape[ar - 1], a_shape[ar - 2])
    } else {
        (a_shape[ar - 2], a_shape[ar - 1])
    };
    let n = if o.trans_b {
        b_shape[br - 2]
    } else {
        b_shape[br - 1]
    };
    let batch: usize = a_shape[..ar - 2].iter().product();
    let b_stride = if br == 2 { 0 } else { k * n };
    let at = |g: usize, i: usize, l: usize| {
        let x = if o.trans_a { l * m + i } else { i * k + l };
        f64::from(a[g * m * k + x])
    };
    let bt = |g: usize, l: usize, j: usize| {
        let x = if o.trans_b { j * k + l } else { l * n + j };
        f64::from(b[g * b_stride + x])
    };
    let alpha = f64::from(o.alpha);
    let mut grad_a = vec![0.0; a.len()];
    let mut grad_b = vec![0.0; b.len()];
    for g in 0..batch {
        for i in 0..m {
            for l in 0..k {
                for j in 0..n {
                    let gc = alpha * f64::from(grad_c[(g * m + i) * n + j]);
                    let xa = if o.trans_a { l * m + i } else { i * k + l };
                    grad_a[g * m * k + xa] += gc * bt(g, l, j);
                    let xb = if o.trans_b { j * k + l } else { l * n + j };
                    grad_b[g * b_stride + xb] += gc * at(g, i, l);
                }
            }
        }
    }
    (grad_a, grad_b)
}

fn check_matmul(
    gpu: &saobp::Gpu,
    rng: &mut Rng,
    a_shape: &[usize],
    b_shape: &[usize],
    o: MatmulOptions,
) {
    let a = rng.vec(a_shape.iter().product(), -1.0, 1.0);
    let b = rng.vec(b_shape.iter().product(), -1.0, 1.0);
    let ta = Tensor::from_slice(gpu, a_shape, &a).unwrap();
    let tb = Tensor::from_slice(gpu, b_shape, &b).unwrap();
    let c_shape = saobp::matmul_blocking(gpu, &ta, &tb, &o)
        .unwrap()
        .shape()
        .to_vec();
    let grad_c = rng.vec(c_shape.iter().product(), -1.0, 1.0);
    let tc = Tensor::from_slice(gpu, &c_shape, &grad_c).unwrap();
    let (ga, gb) = matmul_backward_blocking(gpu, &ta, &tb, &tc, &o).unwrap();
    assert_eq!(ga.shape(), a_shape);
    assert_eq!(gb.shape(), b_shape);
    let (want_a, want_b) = matmul_grads_f64(&a, a_shape, &b, b_shape, &grad_c, &o);
    // ∂A sums N products and ∂B sums M (times the batch for a shared B)
    // of terms bounded by |alpha| ≤ 1: the matmul bound over that many terms.
    let n = c_shape[c_shape.len() - 1];
    let rows: usize = c_shape[..c_shape.len() - 1].iter().product();
    let summed = if b_shape.len() == 2 {
        rows
    } else {
        c_shape[c_shape.len() - 2]
    };
    let what = format!("matmul backward A {a_shape:?} B {b_shape:?} {o:?}");
    assert_within(
        &format!("{what}: dA"),
        &ga.to_vec_blocking(gpu).unwrap(),
        &want_a,
        Tolerance::matmul(n),
    );
    assert_within(
        &format!("{what}: dB"),
        &gb.to_vec_blocking(gpu).unwrap(),
        &want_b,
        Tolerance::matmul(summed),
    );
}

#[test]
fn matmul_backward_matches_reference_for_every_transpose() {
    on_every_gpu("matmul backward", |gpu| {
        let mut rng = Rng::new(41);
        for (case, alpha) in [1.0f32, -0.5, 0.75, 1.0].into_iter().enumerate() {
            let (trans_a, trans_b) = (case & 1 == 1, case & 2 == 2);
            let o = MatmulOptions {
                trans_a,
                trans_b,
                alpha,
            };
            // A tiny product (one buffer dispatch) and one large enough for
            // the fast variants (texture on software adapters), odd sizes.
            for (lead, m, k, n) in [(vec![], 3, 5, 7), (vec![2, 3], 41, 37, 45)] {
                let mat = |rows: usize, cols: usize, t: bool| {
                    let mut s = lead.clone();
                    s.extend(if t { [cols, rows] } else { [rows, cols] });
                    s
                };
                check_matmul(gpu, &mut rng, &mat(m, k, trans_a), &mat(k, n, trans_b), o);
            }
        }
    });
}

#[test]
fn matmul_backward_sums_a_shared_b_over_the_batch() {
    on_every_gpu("matmul backward shared B", |gpu| {
        let mut rng = Rng::new(42);
        // A linear layer x·W (and x·Wᵀ) over a batch of 2·3 items.
        for trans_b in [false, true] {
            let o = MatmulOptions {
                trans_a: false,
                trans_b,
                alpha: 0.75,
            };
            let b_shape = if trans_b { [29, 19] } else { [19, 29] };
            check_matmul(gpu, &mut rng, &[2, 3, 23, 19], &b_shape, o);
        }
    });
}

#[test]
fn matmul_backward_refuses_what_it_does_not_support() {
    let gpu = &common::gpus()[0];
    let t = |s: &[usize]| Tensor::zeros(gpu, s).unwrap();
    let plain = MatmulOptions::default();
    // A shared by a batch of B: its gradient would be a sum over the batch.
    let e = matmul_backward_blocking(gpu, &t(&[4, 5]), &t(&[2, 5, 3]), &t(&[2, 4, 3]), &plain)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // A shared B under Aᵀ.
    let ta = MatmulOptions {
        trans_a: true,
        ..plain
    };
    let e = matmul_backward_blocking(gpu, &t(&[2, 5, 4]), &t(&[5, 3]), &t(&[2, 4, 3]), &ta)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // ∂C not shaped as C, and operands that do not fit.
    let e =
        matmul_backward_blocking(gpu, &t(&[4, 5]), &t(&[5, 3]), &t(&[3, 4]), &plain).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
    let e =
        matmul_backward_blocking(gpu, &t(&[4, 5]), &t(&[6, 3]), &t(&[4, 3]), &plain).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
}

/// One attention backward case: `[B, H, N, D]`, value width `Dv`, inputs
/// `q`, `k` uniform in ±`amp` (the logits grow as `amp²`), causal or not,
/// and a key mask whose last batch item keeps no key (empty rows).
struct Case {
    shape: [usize; 4],
    dv: usize,
    amp: f32,
    causal: bool,
    masked: bool,
    /// Pass the reference's `A` instead of recomputing it.
    given_a: bool,
}

/// Runs `case` on the GPU and checks dQ, dK and dV against the reference
/// under `tol`; returns the largest |logit| of the case.
fn check_attention(gpu: &saobp::Gpu, rng: &mut Rng, case: &Case, tol: [Tolerance; 3]) -> f64 {
    let [b, h, n, d] = case.shape;
    let dv = case.dv;
    let q = rng.vec(b * h * n * d, -case.amp, case.amp);
    let k = rng.vec(b * h * n * d, -case.amp, case.amp);
    let v = rng.vec(b * h * n * dv, -1.0, 1.0);
    let g = rng.vec(b * h * n * dv, -1.0, 1.0);
    let mask = key_mask(b, n, |item, j| item + 1 < b && (j * 7 + item) % 5 != 0);
    let mask = case.masked.then_some(&mask[..]);
    let ropts = RefOptions {
        causal: case.causal,
        key_mask: mask,
        scale: None,
    };
    let want = reference::attention_backward(&q, &k, &v, case.shape, dv, &ropts, &g).unwrap();
    let up = |s: &[usize], x: &[f32]| Tensor::from_slice(gpu, s, x).unwrap();
    let (tq, tk) = (up(&case.shape, &q), up(&case.shape, &k));
    let (tv, tg) = (up(&[b, h, n, dv], &v), up(&[b, h, n, dv], &g));
    let tm = mask.map(|m| up(&[b, n], m));
    let forward = reference::attention(&q, &k, &v, case.shape, dv, &ropts).unwrap();
    let a32: Vec<f32> = forward.attention.iter().map(|&x| x as f32).collect();
    let ta = up(&[b, h, n, n], &a32);
    let opts = AttentionBackwardOptions {
        causal: case.causal,
        key_mask: tm.as_ref(),
        scale: None,
        attention: case.given_a.then_some(&ta),
    };
    let got = attention_backward_blocking(gpu, &tq, &tk, &tv, &tg, &opts).unwrap();
    let what = format!(
        "attention backward {:?} dv={dv} amp={} causal={} masked={} given A={}",
        case.shape, case.amp, case.causal, case.masked, case.given_a
    );
    let results = [
        ("dQ", got.grad_q.to_vec_blocking(gpu).unwrap(), &want.grad_q),
        ("dK", got.grad_k.to_vec_blocking(gpu).unwrap(), &want.grad_k),
        ("dV", got.grad_v.to_vec_blocking(gpu).unwrap(), &want.grad_v),
    ];
    for ((name, got, want), tol) in results.iter().zip(tol) {
        assert_within(&format!("{what}: {name}"), got, want, tol);
        if case.masked {
            // The last batch item has no valid key: every gradient of it is 0.
            let per_item = got.len() / b;
            assert!(
                got[(b - 1) * per_item..].iter().all(|&x| x == 0.0),
                "{what}: {name} of the empty item"
            );
        }
    }
    let scale = 1.0 / (d as f64).sqrt();
    let mut max_logit = 0.0f64;
    for gh in 0..b * h {
        for i in 0..n {
            for j in 0..n {
                let s: f64 = (0..d)
                    .map(|c| {
                        f64::from(q[(gh * n + i) * d + c]) * f64::from(k[(gh * n + j) * d + c])
                    })
                    .sum();
                max_logit = max_logit.max((scale * s).abs());
            }
        }
    }
    max_logit
}

#[test]
fn attention_backward_matches_reference() {
    on_every_gpu("attention backward", |gpu| {
        let mut rng = Rng::new(43);
        for c in 0..8 {
            let masked = c % 4 < 2;
            // A masked case has a second batch item, whose rows are all empty.
            let b = if masked { 2 } else { 1 + rng.below(2) };
            let shape = [b, 1 + rng.below(3), 1 + rng.below(70), 1 + rng.below(40)];
            let case = Case {
                shape,
                dv: 1 + rng.below(40),
                amp: 1.0,
                causal: c % 2 == 0,
                masked,
                given_a: c % 3 == 2,
            };
            // SPEC: inputs of size ≤ 1 keep every sum within ~1e-6 of f64.
            check_attention(gpu, &mut rng, &case, [Tolerance::SPEC; 3]);
        }
    });
}

#[test]
fn attention_backward_with_large_logits_matches_reference() {
    on_every_gpu("attention backward large logits", |gpu| {
        let mut rng = Rng::new(44);
        for c in 0..4 {
            let case = Case {
                shape: [2, 2, 33 + 16 * c, 17 + 8 * c],
                dv: 13 + 6 * c,
                amp: 9.0,
                causal: c % 2 == 1,
                masked: c < 2,
                given_a: false,
            };
            // SPEC holds here too, with about half its bound used at the
            // largest case (dK, [2, 2, 81, 41]): recomputing scores of size
            // ~30 in f32 moves A by ~1e-6 relative, which dK then sums over N.
            let max_logit = check_attention(gpu, &mut rng, &case, [Tolerance::SPEC; 3]);
            assert!(max_logit > 25.0, "logits of |S| ~ 30, got {max_logit}");
        }
    });
}

#[test]
fn attention_backward_of_bad_shapes_is_a_typed_error() {
    let gpu = &common::gpus()[0];
    let t = |s: &[usize]| Tensor::zeros(gpu, s).unwrap();
    let (q, v) = (t(&[2, 3, 5, 4]), t(&[2, 3, 5, 6]));
    let run = |k: &Tensor, g: &Tensor, opts: &AttentionBackwardOptions| {
        attention_backward_blocking(gpu, &q, k, &v, g, opts).unwrap_err()
    };
    let plain = AttentionBackwardOptions::default();
    // ∂L/∂O not [B, H, N, Dv].
    let e = run(&q, &t(&[2, 3, 5, 4]), &plain);
    assert!(matches!(e, Error::Shape(_)), "{e}");
    // k not shaped as q.
    let e = run(&t(&[2, 3, 6, 4]), &v, &plain);
    assert!(matches!(e, Error::Shape(_)), "{e}");
    // A given with the wrong shape.
    let a = t(&[2, 3, 5, 4]);
    let e = run(
        &q,
        &v,
        &AttentionBackwardOptions {
            attention: Some(&a),
            ..plain
        },
    );
    assert!(matches!(e, Error::Shape(_)), "{e}");
    // A key mask that is not [B, N].
    let m = t(&[3, 5]);
    let e = run(
        &q,
        &v,
        &AttentionBackwardOptions {
            key_mask: Some(&m),
            ..plain
        },
    );
    assert!(matches!(e, Error::Shape(_)), "{e}");
    // A scale that is not positive.
    let e = run(
        &q,
        &v,
        &AttentionBackwardOptions {
            scale: Some(0.0),
            ..plain
        },
    );
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}
