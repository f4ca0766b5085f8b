//! Masked row softmax and its backward against the float64 reference on
//! every adapter.

mod common;

use common::{absolute, assert_within, key_mask, on_every_row_layout, Rng, Tolerance};
use saobp::{reference, softmax_backward_blocking, softmax_blocking, SoftmaxOptions, Tensor};

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
    on_every_row_layout("softmax random", |gpu| {
        let mut rng = Rng::new(3);
        for case in 0..16 {
            let (b, h) = (1 + rng.below(3), 1 + rng.below(3));
            // Every third row length whole texels.
            let n = if case % 3 == 2 {
                4 * (1 + rng.below(37))
            } else {
                1 + rng.below(150)
            };
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
    on_every_row_layout("softmax extremes", |gpu| {
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
    on_every_row_layout("softmax fully masked", |gpu| {
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

/// Runs the softmax backward of `a` and `grad_a` (`shape`) on the GPU and
/// checks it against the reference. `SPEC` holds: each `∂L/∂S_ij` is
/// `A_ij (∂L/∂A_ij − rowdot)` with `|∂L/∂A| ≤ 1` and the row of `A` summing
/// to 1, so the f32 rowdot and difference are off by a few 1e-7 at most.
fn check_backward(
    gpu: &saobp::Gpu,
    a: &[f32],
    grad_a: &[f32],
    shape: &[usize],
    causal: bool,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let ta = Tensor::from_slice(gpu, shape, a).unwrap();
    let tg = Tensor::from_slice(gpu, shape, grad_a).unwrap();
    let tm = mask.map(|m| {
        let mask_shape = if shape.len() == 2 {
            vec![shape[1]]
        } else {
            vec![shape[0], shape[shape.len() - 1]]
        };
        Tensor::from_slice(gpu, &mask_shape, m).unwrap()
    });
    let opts = SoftmaxOptions {
        causal,
        key_mask: tm.as_ref(),
    };
    let before = gpu.work();
    let got = softmax_backward_blocking(gpu, &ta, &tg, &opts)
        .unwrap()
        .to_vec_blocking(gpu)
        .unwrap();
    let want = reference::softmax_backward(a, grad_a, shape, causal, mask).unwrap();
    let what = format!(
        "softmax backward {shape:?} causal={causal} mask={}",
        mask.is_some()
    );
    // Rows of whole texels read textures in the invocation layout.
    let kernel = match saobp::row_layout(gpu).unwrap() {
        saobp::RowLayout::Invocation if shape[shape.len() - 1].is_multiple_of(4) => "_texture",
        saobp::RowLayout::Invocation => "_serial",
        saobp::RowLayout::Workgroup => "",
    };
    let kernel = format!("softmax::softmax_backward{kernel}");
    let work = gpu.work().since(&before);
    assert!(
        work.kernels.iter().any(|(k, _)| *k == kernel),
        "{what}: {kernel} did not run: {:?}",
        work.kernels
    );
    assert_within(&what, &got, &want, Tolerance::SPEC);
    got
}

#[test]
fn backward_of_random_rows_with_masks_matches_reference() {
    on_every_row_layout("softmax backward random", |gpu| {
        let mut rng = Rng::new(31);
        for case in 0..12 {
            let (b, h) = (1 + rng.below(3), 1 + rng.below(3));
            // Every third row length whole texels.
            let n = if case % 3 == 2 {
                4 * (1 + rng.below(37))
            } else {
                1 + rng.below(150)
            };
            let shape = [b, h, n, n];
            let causal = case % 2 == 0;
            // Logits of |S| up to 30: most rows are nearly one-hot, where the
            // difference dA − rowdot cancels.
            let x = rng.vec(b * h * n * n, -30.0, 30.0);
            let mut mask = key_mask(b, n, |_, _| rng.below(4) != 0);
            if case % 3 == 1 {
                // The last batch item has no valid key: its rows are empty.
                mask[(b - 1) * n..].fill(0.0);
            }
            let mask = (case % 3 != 0).then_some(&mask[..]);
            let a = softmax_blocking(
                gpu,
                &Tensor::from_slice(gpu, &shape, &x).unwrap(),
                &SoftmaxOptions {
                    causal,
                    key_mask: mask
                        .map(|m| Tensor::from_slice(gpu, &[b, n], m).unwrap())
                        .as_ref(),
                },
            )
            .unwrap()
            .to_vec_blocking(gpu)
            .unwrap();
            let grad_a = rng.vec(a.len(), -1.0, 1.0);
            let got = check_backward(gpu, &a, &grad_a, &shape, causal, mask);
            // Masked entries (and so empty rows) are exactly 0.
            for (idx, &g) in got.iter().enumerate() {
                let (item, i, j) = (idx / (h * n * n), (idx / n) % n, idx % n);
                let masked = (causal && j > i) || mask.is_some_and(|m| m[item * n + j] == 0.0);
                if masked {
                    assert_eq!(g, 0.0, "{shape:?} causal={causal}: masked entry {idx}");
                }
            }
        }
    });
}

#[test]
fn backward_ignores_masked_entries_of_its_inputs() {
    on_every_row_layout("softmax backward masked inputs", |gpu| {
        // Rank 2 with a [C] mask, rows of odd length and of whole texels. A
        // holds nonzero values at masked keys and dA holds gradients there:
        // neither may leak into the row's sum or the output.
        let mut rng = Rng::new(32);
        for (r, c) in [(5, 37), (6, 36)] {
            let a = rng.vec(r * c, 0.0, 0.05);
            let grad_a = rng.vec(r * c, -1.0, 1.0);
            let mask = key_mask(1, c, |_, j| j % 3 != 0);
            let got = check_backward(gpu, &a, &grad_a, &[r, c], true, Some(&mask));
            for i in 0..r {
                for j in 0..c {
                    if j > i || j % 3 == 0 {
                        assert_eq!(got[i * c + j], 0.0, "[{r}, {c}] row {i}, key {j}");
                    }
                }
            }
            // Row 0 sees key 0 only, which is masked: the row is empty.
            assert!(got[..c].iter().all(|&g| g == 0.0), "[{r}, {c}]");
        }
    });
}

#[test]
fn backward_of_mismatched_shapes_is_a_shape_error() {
    let gpu = &common::gpus()[0];
    let a = Tensor::zeros(gpu, &[2, 3, 4, 4]).unwrap();
    let grad = Tensor::zeros(gpu, &[2, 3, 4, 5]).unwrap();
    let e = softmax_backward_blocking(gpu, &a, &grad, &SoftmaxOptions::default()).unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
    let grad = Tensor::zeros(gpu, &[2, 3, 4, 4]).unwrap();
    let mask = Tensor::zeros(gpu, &[3, 4]).unwrap();
    let e = softmax_backward_blocking(
        gpu,
        &a,
        &grad,
        &SoftmaxOptions {
            causal: false,
            key_mask: Some(&mask),
        },
    )
    .unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
}

/// Rows too long for one invocation within llvmpipe's loop budget take the
/// workgroup layout even where one invocation per row is asked for, and stay
/// exact; a malformed layout name is a typed error.
#[test]
fn rows_past_the_loop_budget_take_the_workgroup_layout() {
    assert_eq!(
        "Invocation".parse::<saobp::RowLayout>().unwrap(),
        saobp::RowLayout::Invocation
    );
    assert!(matches!(
        "rows".parse::<saobp::RowLayout>(),
        Err(saobp::Error::InvalidArgument(_))
    ));
    let opts = saobp::GpuOptions::from_env().unwrap();
    for gpu in saobp::Gpu::all_blocking(&opts) {
        let gpu = &gpu.unwrap();
        saobp::set_row_layout(gpu, Some(saobp::RowLayout::Invocation));
        assert_eq!(
            saobp::row_layout(gpu).unwrap(),
            saobp::RowLayout::Invocation
        );
        let mut rng = Rng::new(5);
        let n = 30_000;
        let x = rng.vec(2 * n, -8.0, 8.0);
        let before = gpu.work();
        check(gpu, &x, &[2, n], false, None);
        let ran = gpu.work().since(&before).kernels;
        let serial = ran.iter().any(|(k, _)| k.ends_with("_serial"));
        assert_eq!(
            serial,
            gpu.adapter().loop_budget().is_none(),
            "{}: {ran:?}",
            gpu.adapter()
        );
        eprintln!("rows of {n} on {}: {ran:?}", gpu.adapter());
    }
}
