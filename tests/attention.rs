//! Multi-head attention (plain mode) against the float64 reference on every
//! adapter. SAOBP and the spec's worked example are in `saobp.rs`.

mod common;

use common::{on_every_gpu, Case, Request, Rng};
use saobp::{attention_blocking, AttentionOptions, Lambda, Mode, Tensor};

/// Batch items keep the first half of their keys (at least one), odd items
/// one more.
fn padding(item: usize, n: usize) -> usize {
    (n / 2).max(1) + item % 2
}

/// Plain attention of one case: `A` and `O` against the reference.
fn check(gpu: &saobp::Gpu, rng: &mut Rng, c: &Case) {
    let request = Request {
        attention: true,
        ..Default::default()
    };
    common::check(gpu, rng, c, &[Mode::Plain], request);
}

/// A plain-attention case (λ plays no part).
fn plain_case(
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    masked: bool,
    scale: Option<f32>,
) -> Case {
    Case {
        shape,
        dv,
        causal,
        padding: masked.then_some(padding as common::Padding),
        lambda: Lambda::default(),
        scale,
    }
}

#[test]
fn random_cases_match_reference() {
    on_every_gpu("attention random", |gpu| {
        let mut rng = Rng::new(5);
        for i in 0..12 {
            let shape = [
                1 + rng.below(2),
                1 + rng.below(3),
                1 + rng.below(80),
                1 + rng.below(40),
            ];
            let case = plain_case(shape, 1 + rng.below(20), i % 2 == 0, i % 3 != 0, None);
            check(gpu, &mut rng, &case);
        }
    });
}

#[test]
fn edge_shapes_match_reference() {
    on_every_gpu("attention edges", |gpu| {
        let mut rng = Rng::new(6);
        let cases = [
            plain_case([1, 1, 1, 1], 1, false, false, None),
            plain_case([1, 1, 1, 5], 3, true, false, None),
            plain_case([2, 2, 7, 1], 1, true, true, Some(3.0)),
            plain_case([1, 3, 33, 64], 64, false, true, None),
            plain_case([2, 1, 65, 9], 2, true, true, Some(0.05)),
        ];
        for c in &cases {
            check(gpu, &mut rng, c);
        }
    });
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = &common::gpus()[0];
    let q = Tensor::zeros(gpu, &[1, 2, 4, 8]).unwrap();
    let k3 = Tensor::zeros(gpu, &[2, 4, 8]).unwrap();
    let v_bad = Tensor::zeros(gpu, &[1, 2, 5, 8]).unwrap();
    let empty = Tensor::zeros(gpu, &[1, 2, 0, 8]).unwrap();
    let mask_bad = Tensor::zeros(gpu, &[1, 5]).unwrap();
    let plain = AttentionOptions::default();
    let shape_err =
        |r: saobp::Result<saobp::AttentionOutput>| matches!(r, Err(saobp::Error::Shape(_)));
    let invalid = |r: saobp::Result<saobp::AttentionOutput>| {
        matches!(r, Err(saobp::Error::InvalidArgument(_)))
    };
    assert!(shape_err(attention_blocking(gpu, &q, &k3, &q, &plain)));
    assert!(shape_err(attention_blocking(gpu, &q, &q, &v_bad, &plain)));
    assert!(shape_err(attention_blocking(
        gpu,
        &q,
        &q,
        &q,
        &AttentionOptions {
            key_mask: Some(&mask_bad),
            ..plain.clone()
        }
    )));
    assert!(invalid(attention_blocking(
        gpu, &empty, &empty, &empty, &plain
    )));
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(invalid(attention_blocking(
            gpu,
            &q,
            &q,
            &q,
            &AttentionOptions {
                scale: Some(scale),
                ..plain.clone()
            }
        )));
    }
}
