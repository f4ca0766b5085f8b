//! SAOBP (messages, refinement, fused and materialized outputs) and the spec's
//! worked example, against the float64 reference on every adapter.

mod common;

use common::{
    absolute, assert_near, assert_within, key_mask, on_every_gpu, on_every_row_layout, spec_run,
    Case, Request, Rng, Tolerance, SPEC_PRINTED,
};
use saobp::{attention_blocking, refine_map_blocking, AttentionOptions, Gpu, Lambda, Mode, Tensor};

/// Metric `index` (see `saobp::METRIC_NAMES`) of the 3 rows.
fn metric_rows(gpu: &Gpu, map: &saobp::MapMetrics, index: usize) -> Vec<f32> {
    map.rows.to_vec_blocking(gpu).unwrap()[index * 3..][..3].to_vec()
}

#[test]
fn spec_worked_example() {
    #[rustfmt::skip]
    let a = [0.665241, 0.090031, 0.244728, 0.231224, 0.628532, 0.140244, 0.155362, 0.422319, 0.422319];
    #[rustfmt::skip]
    let m_msgs = [0.0, 0.103353, 0.012626, 0.021789, 0.0, 0.056587, 0.097650, 0.013987, 0.0];
    let mass = [0.115980, 0.078376, 0.111638];
    #[rustfmt::skip]
    let r = [0.628778, 0.133940, 0.237282, 0.232988, 0.604830, 0.162182, 0.193393, 0.406616, 0.399992];
    let gtd = [0.054811, 0.037710, 0.052868];
    let gtd_a = [0.103926, 0.072679, 0.100426];
    let h_a = [0.832396, 0.905959, 1.017357];
    let h_r = [0.902338, 0.938538, 1.050175];
    let sparsity_a = [0.233727, 0.175232, 0.078042];
    let peak_a = [0.665241, 0.628532, 0.422319];
    let distance_a = [0.579488, 0.371468, 0.733044];
    let o = [0.866060, 0.371222, 0.395170, 0.767012, 0.593384, 0.806607];
    on_every_gpu("spec worked example", |gpu| {
        for mode in [Mode::Fused, Mode::Materialized] {
            let out = spec_run(gpu, mode, false, true);
            let what = |x: &str| format!("spec {x} ({mode:?})");
            let got = |t: &Option<Tensor>| t.as_ref().unwrap().to_vec_blocking(gpu).unwrap();
            assert_within(&what("A"), &got(&out.attention), &a, SPEC_PRINTED);
            assert_within(&what("R"), &got(&out.refined), &r, SPEC_PRINTED);
            assert_within(&what("m"), &got(&out.multi_hop_mass), &mass, SPEC_PRINTED);
            assert_within(
                &what("O"),
                &out.output.to_vec_blocking(gpu).unwrap(),
                &o,
                SPEC_PRINTED,
            );
            let metrics = out.metrics.unwrap();
            let (ma, mr) = (&metrics.attention, metrics.refined.as_ref().unwrap());
            assert_within(&what("H(A)"), &metric_rows(gpu, ma, 0), &h_a, SPEC_PRINTED);
            assert_within(
                &what("sparsity(A)"),
                &metric_rows(gpu, ma, 2),
                &sparsity_a,
                SPEC_PRINTED,
            );
            assert_within(
                &what("peak(A)"),
                &metric_rows(gpu, ma, 3),
                &peak_a,
                SPEC_PRINTED,
            );
            assert_within(
                &what("distance(A)"),
                &metric_rows(gpu, ma, 4),
                &distance_a,
                SPEC_PRINTED,
            );
            assert_within(
                &what("GTD(A)"),
                &metric_rows(gpu, ma, 6),
                &gtd_a,
                SPEC_PRINTED,
            );
            assert_within(&what("H(R)"), &metric_rows(gpu, mr, 0), &h_r, SPEC_PRINTED);
            assert_within(
                &what("GTD(R)"),
                &metric_rows(gpu, mr, 6),
                &gtd,
                SPEC_PRINTED,
            );
            // The head summary is the mean of the three rows.
            let mean = |x: &[f64]| x.iter().sum::<f64>() / 3.0;
            let summary = absolute(1e-6);
            assert_near("H(A) of the head", ma.heads[0].entropy, mean(&h_a), summary);
            assert_near("GTD(R) of the head", mr.heads[0].gtd, mean(&gtd), summary);
            assert_eq!(mr.heads[0].rows, 3);
        }
        // M itself, from the materialized refinement of A.
        let out = spec_run(gpu, Mode::Plain, false, true);
        let refined =
            refine_map_blocking(gpu, out.attention.as_ref().unwrap(), &Lambda::Scalar(0.5))
                .unwrap();
        assert_within(
            "spec M",
            &refined.messages.to_vec_blocking(gpu).unwrap(),
            &m_msgs,
            SPEC_PRINTED,
        );
        assert_within(
            "spec R (refine_map)",
            &refined.refined.to_vec_blocking(gpu).unwrap(),
            &r,
            SPEC_PRINTED,
        );
    });
}

#[test]
fn spec_causal_example() {
    on_every_gpu("spec causal example", |gpu| {
        for mode in [Mode::Fused, Mode::Materialized] {
            let out = spec_run(gpu, mode, true, true);
            let r = out.refined.as_ref().unwrap().to_vec_blocking(gpu).unwrap();
            assert_eq!(
                &r[..3],
                &[1.0, 0.0, 0.0],
                "{mode:?}: row 0 receives no message"
            );
            assert_eq!(r[5], 0.0);
            assert_within(
                "causal R_2",
                &r[6..],
                &[0.200751, 0.399624, 0.399624],
                SPEC_PRINTED,
            );
            let metrics = out.metrics.unwrap();
            let gtd = metric_rows(gpu, metrics.refined.as_ref().unwrap(), 6);
            assert_within("causal GTD", &gtd, &[0.0, 0.0, 0.053738], SPEC_PRINTED);
            let m = out.multi_hop_mass.unwrap().to_vec_blocking(gpu).unwrap();
            // Only row 2 receives a message: M_20 = A_21 · A_10.
            assert_within("causal m", &m, &[0.0, 0.0, 0.113579], SPEC_PRINTED);
        }
    });
}

/// Item 0 keeps all but its last key, item 1 the first half of its keys.
fn padding(item: usize, n: usize) -> usize {
    match item {
        0 => n - usize::from(n > 1),
        1 => n / 2,
        _ => n,
    }
}

/// Runs one case in fused and materialized mode and checks everything
/// against the reference, then properties of `R` and the two modes against
/// each other.
fn check(gpu: &Gpu, rng: &mut Rng, c: &Case) {
    let request = Request {
        refined: true,
        metrics: true,
        ..Default::default()
    };
    let runs = common::check(gpu, rng, c, &[Mode::Fused, Mode::Materialized], request);
    let n = c.shape[2];
    for run in &runs {
        let what = format!("{:?} {}", run.mode, c.describe());
        let r = run.refined.as_ref().expect("R was asked for");
        // Rows of R sum to 1 (or are empty), causal R is zero above the diagonal.
        for (row, chunk) in r.chunks(n).enumerate() {
            let s: f32 = chunk.iter().sum();
            if s != 0.0 {
                assert_near(
                    &format!("{what}: sum of row {row} of R"),
                    f64::from(s),
                    1.0,
                    absolute(1e-5),
                );
            }
            if c.causal {
                let i = row % n;
                assert!(
                    chunk[i + 1..].iter().all(|&x| x == 0.0),
                    "{what}: R row {i} not causal"
                );
            }
        }
    }
    // The two paths agree with each other, not only with the reference.
    assert_within(
        &format!("{} fused vs materialized O", c.describe()),
        &runs[0].output,
        &runs[1]
            .output
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<_>>(),
        Tolerance::SPEC,
    );
}

/// A SAOBP case with the padding above when `masked`.
fn saobp_case(shape: [usize; 4], dv: usize, causal: bool, masked: bool, lambda: Lambda) -> Case {
    Case {
        shape,
        dv,
        causal,
        padding: masked.then_some(padding as common::Padding),
        lambda,
        scale: None,
    }
}

#[test]
fn random_cases_match_reference_in_both_modes() {
    on_every_row_layout("saobp random", |gpu| {
        let mut rng = Rng::new(11);
        for i in 0..10 {
            let h = 1 + rng.below(3);
            let shape = [1 + rng.below(2), h, 1 + rng.below(60), 1 + rng.below(24)];
            let lambda = if i % 2 == 0 {
                Lambda::Scalar(rng.uniform(0.0, 3.0))
            } else {
                Lambda::PerHead((0..h).map(|_| rng.uniform(0.0, 3.0)).collect())
            };
            let case = saobp_case(shape, 1 + rng.below(16), i % 3 == 0, i % 2 == 1, lambda);
            check(gpu, &mut rng, &case);
        }
    });
}

#[test]
fn edge_shapes_match_reference() {
    on_every_gpu("saobp edges", |gpu| {
        let mut rng = Rng::new(12);
        let cases = [
            saobp_case([1, 1, 1, 1], 1, false, false, Lambda::Scalar(1.0)),
            saobp_case([1, 1, 2, 1], 1, true, false, Lambda::Scalar(2.0)),
            saobp_case(
                [2, 2, 33, 1],
                3,
                true,
                true,
                Lambda::PerHead(vec![0.0, 5.0]),
            ),
            saobp_case([1, 2, 70, 16], 16, false, true, Lambda::Scalar(100.0)),
        ];
        for c in &cases {
            check(gpu, &mut rng, c);
        }
    });
}

/// Where the products read `A` copied into a texture as stored (the texture
/// matmul family, rows one invocation each, `N` a multiple of 4), the
/// scores product stores its scores as texels, the softmax reads them and
/// writes `A` into the products' texture itself, and the row statistics read
/// it from there; into `A`'s buffer as well only when something else reads
/// it (returned maps, metrics). Both, and the paths that keep the buffer
/// (`N` not a multiple of 4, another family, workgroup rows), against the
/// reference on every adapter, in fresh contexts (their kernel counts are
/// their own), checking which path ran.
#[test]
fn softmax_into_the_products_texture_matches_the_reference() {
    use saobp::{set_matmul_family, set_row_layout, GpuOptions, MatmulFamily, RowLayout};
    let opts = GpuOptions::from_env().unwrap();
    let cases = [
        saobp_case(
            [2, 2, 12, 8],
            8,
            true,
            true,
            Lambda::PerHead(vec![0.5, 2.0]),
        ),
        saobp_case([1, 3, 64, 16], 16, false, true, Lambda::Scalar(1.0)),
        saobp_case([1, 1, 36, 4], 12, false, false, Lambda::Scalar(3.0)),
        saobp_case([2, 1, 8, 3], 4, true, false, Lambda::Scalar(0.7)),
    ];
    let everything = Request {
        attention: true,
        refined: true,
        metrics: true,
    };
    for gpu in Gpu::all_blocking(&opts) {
        let gpu = gpu.unwrap();
        let mut rng = Rng::new(13);
        set_matmul_family(&gpu, Some(MatmulFamily::Texture));
        set_row_layout(&gpu, Some(RowLayout::Invocation));
        let before = gpu.work();
        for c in &cases {
            common::check(
                &gpu,
                &mut rng,
                c,
                &[Mode::Plain, Mode::Fused],
                Request::default(),
            );
            common::check(&gpu, &mut rng, c, &[Mode::Plain, Mode::Fused], everything);
        }
        let work = gpu.work().since(&before);
        let runs = |label: &str| {
            work.kernels
                .iter()
                .find(|(k, _)| k == label)
                .map_or(0, |(_, n)| *n)
        };
        // Every map of the first request into the texture only, of the
        // second into the buffer as well; the fused runs' statistics from it.
        let maps = 2 * cases.len() as u64;
        assert_eq!(runs("softmax::softmax_texture"), maps, "{:?}", work.kernels);
        assert_eq!(
            runs("softmax_texture_store::softmax_texture"),
            maps,
            "{:?}",
            work.kernels
        );
        assert_eq!(
            runs("saobp::diag_stats_texture"),
            maps,
            "{:?}",
            work.kernels
        );
        // The scores go into their texture from the product's store where
        // it copies Q and K (D a multiple of 4), else by a copy.
        let whole = cases.iter().filter(|c| c.shape[3] % 4 == 0).count() as u64;
        let texels: u64 = work
            .kernels
            .iter()
            .filter(|(k, _)| k.contains("_tb_texels::"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(texels, 4 * whole, "{:?}", work.kernels);
        assert_eq!(
            runs("softmax::softmax_rows_serial"),
            0,
            "{:?}",
            work.kernels
        );

        // The buffer path: rows not whole texels (N, then V's width),
        // another family, workgroup rows.
        let before = gpu.work();
        for odd in [
            saobp_case([1, 2, 10, 8], 4, false, true, Lambda::Scalar(1.0)),
            saobp_case([1, 2, 12, 8], 5, true, false, Lambda::Scalar(1.0)),
        ] {
            common::check(
                &gpu,
                &mut rng,
                &odd,
                &[Mode::Plain, Mode::Fused],
                Request::default(),
            );
        }
        set_matmul_family(&gpu, Some(MatmulFamily::Buffer));
        common::check(
            &gpu,
            &mut rng,
            &cases[1],
            &[Mode::Plain, Mode::Fused],
            Request::default(),
        );
        set_matmul_family(&gpu, Some(MatmulFamily::Texture));
        set_row_layout(&gpu, Some(RowLayout::Workgroup));
        common::check(
            &gpu,
            &mut rng,
            &cases[1],
            &[Mode::Plain, Mode::Fused],
            Request::default(),
        );
        let work = gpu.work().since(&before);
        assert!(
            !work
                .kernels
                .iter()
                .any(|(k, _)| k.contains("softmax_texture") || k.contains("diag_stats_texture")),
            "{:?}",
            work.kernels
        );
        eprintln!(
            "softmax into the products' texture: ok on {}",
            gpu.adapter()
        );
    }
}

#[test]
fn lambda_zero_gives_plain_attention_exactly() {
    on_every_gpu("saobp λ=0", |gpu| {
        let mut rng = Rng::new(13);
        let shape = [1, 2, 37, 8];
        let q = Tensor::from_slice(gpu, &shape, &rng.vec(2 * 37 * 8, -2.0, 2.0)).unwrap();
        let v = Tensor::from_slice(gpu, &shape, &rng.vec(2 * 37 * 8, -1.0, 1.0)).unwrap();
        for mode in [Mode::Fused, Mode::Materialized] {
            let opts = AttentionOptions {
                mode,
                return_attention: true,
                return_refined: true,
                ..Default::default()
            };
            let out = attention_blocking(gpu, &q, &q, &v, &opts).unwrap();
            let a = out.attention.unwrap().to_vec_blocking(gpu).unwrap();
            assert_eq!(
                out.refined.unwrap().to_vec_blocking(gpu).unwrap(),
                a,
                "{mode:?}: R = A"
            );
            let plain = attention_blocking(
                gpu,
                &q,
                &q,
                &v,
                &AttentionOptions {
                    mode: Mode::Plain,
                    ..Default::default()
                },
            )
            .unwrap();
            let want: Vec<f64> = plain
                .output
                .to_vec_blocking(gpu)
                .unwrap()
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            assert_within(
                &format!("{mode:?} λ=0 O"),
                &out.output.to_vec_blocking(gpu).unwrap(),
                &want,
                Tolerance {
                    abs: 1e-6,
                    rel: 1e-5,
                },
            );
        }
    });
}

#[test]
fn fully_masked_rows_are_zero_without_nan() {
    on_every_gpu("saobp fully masked", |gpu| {
        let (b, h, n, d) = (2, 2, 6, 4);
        let mut rng = Rng::new(14);
        let q =
            Tensor::from_slice(gpu, &[b, h, n, d], &rng.vec(b * h * n * d, -30.0, 30.0)).unwrap();
        // Batch item 1: every key masked.
        let mask = key_mask(b, n, |item, _| item == 0);
        let tm = Tensor::from_slice(gpu, &[b, n], &mask).unwrap();
        for mode in [Mode::Plain, Mode::Fused, Mode::Materialized] {
            let opts = AttentionOptions {
                key_mask: Some(&tm),
                lambda: Lambda::Scalar(1.5),
                mode,
                return_attention: true,
                return_refined: true,
                metrics: true,
                ..Default::default()
            };
            let out = attention_blocking(gpu, &q, &q, &q, &opts).unwrap();
            let second_item = |t: &Tensor| {
                let v = t.to_vec_blocking(gpu).unwrap();
                assert!(
                    v.iter().all(|x| x.is_finite()),
                    "{mode:?}: non-finite value"
                );
                let half = v.len() / 2;
                v[half..].to_vec()
            };
            assert!(
                second_item(&out.output).iter().all(|&x| x == 0.0),
                "{mode:?} O"
            );
            assert!(second_item(out.attention.as_ref().unwrap())
                .iter()
                .all(|&x| x == 0.0));
            if let Some(r) = &out.refined {
                assert!(second_item(r).iter().all(|&x| x == 0.0), "{mode:?} R");
            }
            let metrics = out.metrics.unwrap();
            let rows = metrics.attention.rows.to_vec_blocking(gpu).unwrap();
            assert!(rows.iter().all(|x| x.is_finite()));
            // Item 1's heads count no rows and summarize to zeros.
            assert_eq!(metrics.attention.head(1, 0).unwrap().rows, 0);
            assert_eq!(metrics.attention.head(1, 1).unwrap().entropy, 0.0);
            assert_eq!(metrics.attention.head(0, 1).unwrap().rows, n as u32);
        }
    });
}

#[test]
fn bad_lambda_is_rejected() {
    let gpu = &common::gpus()[0];
    let q = Tensor::zeros(gpu, &[1, 2, 4, 8]).unwrap();
    for lambda in [
        Lambda::Scalar(-0.1),
        Lambda::Scalar(f32::NAN),
        Lambda::Scalar(f32::INFINITY),
        Lambda::PerHead(vec![1.0]),
        Lambda::PerHead(vec![1.0, -1.0]),
    ] {
        let opts = AttentionOptions {
            lambda: lambda.clone(),
            ..Default::default()
        };
        let e = attention_blocking(gpu, &q, &q, &q, &opts).unwrap_err();
        assert!(
            matches!(e, saobp::Error::InvalidArgument(_)),
            "{lambda:?}: {e}"
        );
    }
}
