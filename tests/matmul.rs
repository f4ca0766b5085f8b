//! Batched matmul against the float64 reference on every adapter.

mod common;

use common::{assert_close, on_every_gpu, Rng};
use saobp::{matmul_blocking, reference, MatmulOptions, Tensor};

/// f32 accumulation over `k` unit-bounded terms: rounding grows like k·2⁻²⁴.
fn abs_tol(k: usize) -> f64 {
    saobp::reference::Tolerance::matmul(k).abs
}

fn check(
    gpu: &saobp::Gpu,
    rng: &mut Rng,
    a_shape: &[usize],
    b_shape: &[usize],
    opts: MatmulOptions,
) {
    let a = rng.vec(a_shape.iter().product(), -1.0, 1.0);
    let b = rng.vec(b_shape.iter().product(), -1.0, 1.0);
    let ta = Tensor::from_slice(gpu, a_shape, &a).unwrap();
    let tb = Tensor::from_slice(gpu, b_shape, &b).unwrap();
    let c = matmul_blocking(gpu, &ta, &tb, &opts).unwrap();
    let want = reference::matmul(&a, a_shape, &b, b_shape, &opts).unwrap();
    let k = if opts.trans_a {
        a_shape[a_shape.len() - 2]
    } else {
        a_shape[a_shape.len() - 1]
    };
    let what = format!("matmul {a_shape:?} x {b_shape:?} {opts:?}");
    assert_close(
        &what,
        &c.to_vec_blocking(gpu).unwrap(),
        &want,
        1e-4,
        abs_tol(k),
    );
}

#[test]
fn random_shapes_and_transposes_match_reference() {
    on_every_gpu("matmul random", |gpu| {
        let mut rng = Rng::new(1);
        for case in 0..24 {
            let batch = 1 + rng.below(3);
            let (m, n, k) = (1 + rng.below(70), 1 + rng.below(70), 1 + rng.below(90));
            let trans_a = case % 2 == 1;
            let trans_b = case % 4 >= 2;
            let a = if trans_a {
                [batch, k, m]
            } else {
                [batch, m, k]
            };
            let b = if trans_b {
                [batch, n, k]
            } else {
                [batch, k, n]
            };
            let alpha = rng.uniform(-2.0, 2.0);
            check(
                gpu,
                &mut rng,
                &a,
                &b,
                MatmulOptions {
                    trans_a,
                    trans_b,
                    alpha,
                },
            );
        }
    });
}

#[test]
fn edge_sizes_match_reference() {
    on_every_gpu("matmul edges", |gpu| {
        let mut rng = Rng::new(2);
        let plain = MatmulOptions::default();
        // 1x1x1, a single row/column, D=1 inner, exact and off-by-one tile multiples.
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 33, 7),
            (33, 1, 7),
            (5, 5, 1),
            (32, 32, 32),
            (33, 31, 65),
            (64, 96, 3),
        ] {
            check(gpu, &mut rng, &[m, k], &[k, n], plain);
        }
        // Broadcast one operand over a batch, and rank-4 batches.
        check(gpu, &mut rng, &[3, 9, 5], &[5, 7], plain);
        check(gpu, &mut rng, &[9, 5], &[3, 5, 7], plain);
        check(
            gpu,
            &mut rng,
            &[2, 3, 9, 5],
            &[2, 3, 7, 5],
            MatmulOptions {
                trans_b: true,
                ..plain
            },
        );
    });
}

#[test]
fn shape_errors_are_typed() {
    let gpu = &common::gpus()[0];
    let a = Tensor::zeros(gpu, &[2, 3]).unwrap();
    let b = Tensor::zeros(gpu, &[4, 5]).unwrap();
    let e = matmul_blocking(gpu, &a, &b, &MatmulOptions::default()).unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
    let c = Tensor::zeros(gpu, &[3]).unwrap();
    assert!(matches!(
        matmul_blocking(gpu, &a, &c, &MatmulOptions::default()),
        Err(saobp::Error::Shape(_))
    ));
    let bad_alpha = MatmulOptions {
        alpha: f32::NAN,
        ..Default::default()
    };
    let d = Tensor::zeros(gpu, &[3, 2]).unwrap();
    assert!(matches!(
        matmul_blocking(gpu, &a, &d, &bad_alpha),
        Err(saobp::Error::InvalidArgument(_))
    ));
    let e = Tensor::from_slice(gpu, &[2, 2], &[1.0; 3]).unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
}
