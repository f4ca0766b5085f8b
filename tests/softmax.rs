//! Masked row softmax against the float64 reference on every adapter.

mod common;

use common::{absolute, assert_within, key_mask, on_every_gpu, Rng, Tolerance};
use saobp::{reference, softmax_blocking, SoftmaxOptions, Tensor};

fn check(
    gpu: &saobp::Gpu,
    x: &[f32],
    shape: &[usize],
    causal: bool,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let tx = Tensor::from_slice(gpu, shape, x).unwrap();
    let tm = mask.map(|m| Tensor::from_slice(gpu, &[shape[0], shape[shape.len() - 1]], m).unwrap());
    let y = softmax_blocking(
        gpu,
        &tx,
        &SoftmaxOptions {
            causal,
            key_mask: tm.as_ref(),
        },
    )
    .unwrap();
    let got = y.to_vec_blocking(gpu).unwrap();
    let want = reference::softmax(x, shape, causal, mask).unwrap();
    let what = format!("softmax {shape:?} causal={causal} mask={}", mask.is_some());
    assert_within(&what, &got, &want, Tolerance::SPEC);
    got
}

#[test]
fn random_rows_with_masks_match_reference() {
    on_every_gpu("softmax random", |gpu| {
        let mut rng = Rng::new(3);
        for case in 0..16 {
            let (b, h, n) = (1 + rng.below(3), 1 + rng.below(3), 1 + rng.below(150));
            let shape = [b, h, n, n];
            let x = rng.vec(b * h * n * n, -8.0, 8.0);
            let mask = key_mask(b, n, |_, _| rng.below(4) != 0);
            check(
                gpu,
                &x,
                &shape,
                case % 2 == 0,
                (case % 3 != 0).then_some(&mask[..]),
            );
        }
    });
}

#[test]
fn huge_equal_and_one_hot_rows_are_exact() {
    on_every_gpu("softmax extremes", |gpu| {
        let n = 67;
        let mut x = Vec::new();
        // Logits of magnitude 1e4, an all-equal row, a one-hot row, a constant 1e4 row.
        x.extend((0..n).map(|j| if j % 2 == 0 { 1e4 } else { -1e4 }));
        x.extend(std::iter::repeat_n(3.0f32, n));
        x.extend((0..n).map(|j| if j == 5 { 1e4 } else { 0.0 }));
        x.extend(std::iter::repeat_n(1e4f32, n));
        let got = check(gpu, &x, &[4, n], false, None);
        let even = 1.0 / n.div_ceil(2) as f64;
        assert_within(
            "±1e4 row, first two",
            &got[..2],
            &[even, 0.0],
            absolute(1e-6),
        );
        let uniform = vec![1.0 / n as f64; n];
        assert_within("equal row", &got[n..2 * n], &uniform, absolute(1e-7));
        assert_eq!(got[2 * n + 5], 1.0);
        let sum: f32 = got[3 * n..].iter().sum();
        assert_within("constant 1e4 row's sum", &[sum], &[1.0], absolute(1e-5));
    });
}

#[test]
fn fully_masked_rows_are_zero() {
    on_every_gpu("softmax fully masked", |gpu| {
        let (b, n) = (2, 9);
        let x = Rng::new(4).vec(b * n * n, -3.0, 3.0);
        // Batch item 1: every key padded.
        let mask = key_mask(b, n, |item, _| item == 0);
        let got = check(gpu, &x, &[b, 1, n, n], true, Some(&mask));
        assert!(got[n * n..].iter().all(|&p| p == 0.0));
        // Causal row 0 of item 0 sees only key 0.
        assert_eq!(&got[..2], &[1.0, 0.0]);
    });
}

#[test]
fn mask_of_wrong_shape_is_a_shape_error() {
    let gpu = &common::gpus()[0];
    let x = Tensor::zeros(gpu, &[2, 3, 4, 4]).unwrap();
    let mask = Tensor::zeros(gpu, &[2, 5]).unwrap();
    let e = softmax_blocking(
        gpu,
        &x,
        &SoftmaxOptions {
            causal: false,
            key_mask: Some(&mask),
        },
    )
    .unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
}
