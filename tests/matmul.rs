//! Batched matmul against the float64 reference on every adapter.

mod common;

use common::{assert_within, on_every_gpu, Rng, Tolerance};
use saobp::{
    matmul_blocking, matmul_variant_blocking, reference, MatmulOptions, MatmulVariant, Tensor,
};

fn check(
    gpu: &saobp::Gpu,
    rng: &mut Rng,
    a_shape: &[usize],
    b_shape: &[usize],
    opts: MatmulOptions,
) {
    check_variant(gpu, None, rng, a_shape, b_shape, opts);
}

/// Compares one product, by `variant` (or the default choice), with the reference.
fn check_variant(
    gpu: &saobp::Gpu,
    variant: Option<MatmulVariant>,
    rng: &mut Rng,
    a_shape: &[usize],
    b_shape: &[usize],
    opts: MatmulOptions,
) {
    let a = rng.vec(a_shape.iter().product(), -1.0, 1.0);
    let b = rng.vec(b_shape.iter().product(), -1.0, 1.0);
    let ta = Tensor::from_slice(gpu, a_shape, &a).unwrap();
    let tb = Tensor::from_slice(gpu, b_shape, &b).unwrap();
    let c = match variant {
        Some(v) => matmul_variant_blocking(gpu, &ta, &tb, &opts, v).unwrap(),
        None => matmul_blocking(gpu, &ta, &tb, &opts).unwrap(),
    };
    let want = reference::matmul(&a, a_shape, &b, b_shape, &opts).unwrap();
    // f32 accumulation over `k` unit-bounded terms: rounding grows like k·2⁻²⁴.
    let k = if opts.trans_a {
        a_shape[a_shape.len() - 2]
    } else {
        a_shape[a_shape.len() - 1]
    };
    let what = match variant {
        Some(v) => format!("matmul ({v}) {a_shape:?} x {b_shape:?} {opts:?}"),
        None => format!("matmul {a_shape:?} x {b_shape:?} {opts:?}"),
    };
    assert_within(
        &what,
        &c.to_vec_blocking(gpu).unwrap(),
        &want,
        Tolerance::matmul(k),
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

/// `[batch.., rows, cols]`, or `[batch.., cols, rows]` when transposed.
fn stored(batch: &[usize], rows: usize, cols: usize, trans: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    s.extend(if trans { [cols, rows] } else { [rows, cols] });
    s
}

#[test]
fn every_variant_matches_reference() {
    on_every_gpu("matmul variants", |gpu| {
        let variants = MatmulVariant::available(gpu);
        eprintln!("variants: {variants:?}");
        for (i, &v) in variants.iter().enumerate() {
            let mut rng = Rng::new(10 + i as u64);
            // Ragged sizes, every transpose, alpha.
            for (case, &(m, n, k)) in [(1, 1, 1), (37, 53, 29), (130, 70, 257), (16, 32, 4)]
                .iter()
                .enumerate()
            {
                for t in 0..4 {
                    let (trans_a, trans_b) = (t % 2 == 1, t >= 2);
                    let opts = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: if case % 2 == 0 { 1.0 } else { -0.75 },
                    };
                    check_variant(
                        gpu,
                        Some(v),
                        &mut rng,
                        &stored(&[], m, k, trans_a),
                        &stored(&[], k, n, trans_b),
                        opts,
                    );
                }
            }
            // Batches, with either side broadcast.
            let opts = MatmulOptions {
                trans_a: false,
                trans_b: true,
                alpha: 0.5,
            };
            for (a_batch, b_batch) in [(&[3][..], &[3][..]), (&[2, 3], &[]), (&[], &[3])] {
                check_variant(
                    gpu,
                    Some(v),
                    &mut rng,
                    &stored(a_batch, 19, 23, false),
                    &stored(b_batch, 23, 41, true),
                    opts,
                );
            }
            check_variant(
                gpu,
                Some(v),
                &mut rng,
                &[2, 23, 19],
                &[23, 70],
                MatmulOptions {
                    trans_a: true,
                    ..Default::default()
                },
            );
        }
    });
}

#[test]
fn every_variant_matches_reference_over_many_panels() {
    on_every_gpu("matmul variants, many panels", |gpu| {
        for (i, v) in MatmulVariant::available(gpu).into_iter().enumerate() {
            let mut rng = Rng::new(40 + i as u64);
            // Several workgroup tiles and texture panels in each direction.
            check_variant(
                gpu,
                Some(v),
                &mut rng,
                &[2, 300, 200],
                &[2, 200, 270],
                MatmulOptions::default(),
            );
        }
    });
}

/// Batch dimensions of A and of B, then m, n, k.
type Case = (&'static [usize], &'static [usize], usize, usize, usize);

/// The texture variants copy operands whose stored rows are whole texels
/// straight into textures, for `matmul_linear_subgroup` with subgroups of 8
/// and `matmul_linear` without, and pack the others. Both layouts, every
/// transpose, ragged edges of the 16 × 32 blocks, batches and broadcasts, and
/// which kernels ran (in fresh contexts, whose counts no other test shares).
#[test]
fn copied_and_packed_operands_match_reference() {
    let opts = saobp::GpuOptions::from_env().unwrap();
    for gpu in saobp::Gpu::all_blocking(&opts) {
        let gpu = &gpu.unwrap();
        let variants: Vec<MatmulVariant> = MatmulVariant::available(gpu)
            .into_iter()
            .filter(|v| matches!(v, MatmulVariant::Texture { .. }))
            .collect();
        assert!(
            !variants.is_empty(),
            "{}: no texture variant",
            gpu.adapter()
        );
        let mut rng = Rng::new(90);
        for &v in &variants {
            let cases: [Case; 7] = [
                (&[], &[], 4, 4, 4),
                (&[], &[], 36, 52, 28),
                (&[], &[], 37, 53, 28),
                (&[], &[], 36, 52, 29),
                (&[3], &[3], 20, 40, 12),
                (&[2, 3], &[], 20, 44, 8),
                (&[], &[3], 100, 68, 132),
            ];
            for (a_batch, b_batch, m, n, k) in cases {
                for t in 0..4 {
                    let (trans_a, trans_b) = (t % 2 == 1, t >= 2);
                    let opts = MatmulOptions {
                        trans_a,
                        trans_b,
                        alpha: -0.5,
                    };
                    let before = gpu.work();
                    check_variant(
                        gpu,
                        Some(v),
                        &mut rng,
                        &stored(a_batch, m, k, trans_a),
                        &stored(b_batch, k, n, trans_b),
                        opts,
                    );
                    let subgroups = matches!(
                        v,
                        MatmulVariant::Texture {
                            subgroups: true,
                            ..
                        }
                    );
                    let copied = k % 4 == 0 && (!trans_a || m % 4 == 0) && (trans_b || n % 4 == 0);
                    let kernel = match (copied, trans_a, trans_b) {
                        (false, _, _) if subgroups => "matmul_texture_subgroup".to_string(),
                        (false, _, _) => "matmul_texture".to_string(),
                        (true, _, _) => {
                            let family = if subgroups {
                                "matmul_linear_subgroup"
                            } else {
                                "matmul_linear"
                            };
                            let suffix = match (trans_a, trans_b) {
                                (false, false) => "",
                                (true, false) => "_ta",
                                (false, true) => "_tb",
                                (true, true) => "_tatb",
                            };
                            format!("{family}{suffix}")
                        }
                    };
                    let work = gpu.work().since(&before);
                    let ran: Vec<&str> = work.kernels.iter().map(|(k, _)| k.as_str()).collect();
                    assert!(
                        ran.iter().any(|r| r.starts_with(&format!("{kernel}::"))),
                        "{v} {m}x{n}x{k} {opts:?}: expected {kernel}, ran {ran:?}"
                    );
                    assert_eq!(
                        ran.iter().any(|r| r.starts_with("matmul_pack::")),
                        !copied,
                        "{v} {m}x{n}x{k} {opts:?}: ran {ran:?}"
                    );
                }
            }
        }
        eprintln!(
            "copied and packed operands: ok with {} variants on {}",
            variants.len(),
            gpu.adapter()
        );
    }
}

#[test]
fn unavailable_variants_are_typed_errors() {
    let gpu = &common::gpus()[0];
    let a = Tensor::zeros(gpu, &[2, 3]).unwrap();
    let b = Tensor::zeros(gpu, &[3, 2]).unwrap();
    let bad = MatmulVariant::Texture {
        subgroups: false,
        group_rows: 3,
    };
    let e = matmul_variant_blocking(gpu, &a, &b, &MatmulOptions::default(), bad).unwrap_err();
    assert!(matches!(e, saobp::Error::InvalidArgument(_)), "{e}");
    if gpu.subgroup_size() != Some(8) {
        let sg = MatmulVariant::Texture {
            subgroups: true,
            group_rows: 8,
        };
        assert!(matmul_variant_blocking(gpu, &a, &b, &MatmulOptions::default(), sg).is_err());
    }
}

#[test]
fn forced_family_and_tuned_choice_are_used() {
    use saobp::{
        matmul_choice, set_matmul_family, tune_matmul_blocking, Gpu, GpuOptions, MatmulFamily,
    };
    assert_eq!("Texture".parse::<MatmulFamily>(), Ok(MatmulFamily::Texture));
    assert!(matches!(
        "fast".parse::<MatmulFamily>(),
        Err(saobp::Error::InvalidArgument(_))
    ));
    let plain = MatmulOptions::default();
    let opts = GpuOptions::from_env().unwrap();
    // Fresh contexts, so tuning does not change what the other tests run.
    for gpu in Gpu::all_blocking(&opts) {
        let gpu = gpu.unwrap();
        let tuning = tune_matmul_blocking(&gpu).unwrap();
        assert!(!tuning.classes.is_empty());
        for class in &tuning.classes {
            let n = class.size;
            assert_eq!(
                matmul_choice(&gpu, &[n, n], &[n, n], &plain).unwrap(),
                class.winner,
                "{}: {class:?}",
                gpu.adapter()
            );
        }
        // The tuned variant computes the right product.
        let mut rng = Rng::new(7);
        check(&gpu, &mut rng, &[70, 90], &[90, 65], plain);
        // A forced family wins over the tuned choice, and lifting it brings
        // the tuned choice back.
        let n = tuning.classes.last().map_or(32, |c| c.size);
        let tuned = matmul_choice(&gpu, &[n, n], &[n, n], &plain).unwrap();
        for family in [MatmulFamily::Buffer, MatmulFamily::Tiled] {
            set_matmul_family(&gpu, Some(family));
            let v = matmul_choice(&gpu, &[512, 512], &[512, 512], &plain).unwrap();
            assert_eq!(v.family(), family, "{}", gpu.adapter());
        }
        set_matmul_family(&gpu, None);
        assert_eq!(
            matmul_choice(&gpu, &[n, n], &[n, n], &plain).unwrap(),
            tuned
        );
    }
}

/// llvmpipe ends every loop of an invocation once it has run 65,535 loop
/// iterations, silently. Long products must still be exact: the default
/// choice moves to a variant that fits the budget, and a forced variant that
/// does not fit is refused with the limit named, never computed wrong.
#[test]
fn long_inner_dimension_is_exact_or_refused() {
    on_every_gpu("long K", |gpu| {
        let k = 70_000;
        let ones = vec![1.0; 4 * k];
        let a = Tensor::from_slice(gpu, &[4, k], &ones).unwrap();
        let b = Tensor::from_slice(gpu, &[k, 4], &ones).unwrap();
        let opts = MatmulOptions::default();
        let c = matmul_blocking(gpu, &a, &b, &opts).unwrap();
        assert_eq!(c.to_vec_blocking(gpu).unwrap(), vec![k as f32; 16]);
        for variant in MatmulVariant::available(gpu) {
            match matmul_variant_blocking(gpu, &a, &b, &opts, variant) {
                Ok(c) => assert_eq!(
                    c.to_vec_blocking(gpu).unwrap(),
                    vec![k as f32; 16],
                    "{variant} at K = {k}"
                ),
                Err(saobp::Error::Limit { limit_name, .. }) => {
                    assert!(
                        gpu.adapter().loop_budget().is_some(),
                        "{variant}: {limit_name}"
                    );
                    assert!(limit_name.contains("loop iterations"), "{limit_name}");
                }
                Err(e) => panic!("{variant} at K = {k}: {e}"),
            }
        }
    });
}
