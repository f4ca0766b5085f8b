//! SAOBP (messages, refinement, fused and materialized outputs) and the spec's
//! worked example, against the float64 reference on every adapter.

mod common;

use common::{assert_close, on_every_gpu, spec_run, Rng, SPEC_TOL};
use saobp::reference::{self, RefOptions};
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
            assert_close(&what("A"), &got(&out.attention), &a, 0.0, SPEC_TOL);
            assert_close(&what("R"), &got(&out.refined), &r, 0.0, SPEC_TOL);
            assert_close(&what("m"), &got(&out.multi_hop_mass), &mass, 0.0, SPEC_TOL);
            assert_close(
                &what("O"),
                &out.output.to_vec_blocking(gpu).unwrap(),
                &o,
                0.0,
                SPEC_TOL,
            );
            let metrics = out.metrics.unwrap();
            let (ma, mr) = (&metrics.attention, metrics.refined.as_ref().unwrap());
            assert_close(&what("H(A)"), &metric_rows(gpu, ma, 0), &h_a, 0.0, SPEC_TOL);
            assert_close(
                &what("sparsity(A)"),
                &metric_rows(gpu, ma, 2),
                &sparsity_a,
                0.0,
                SPEC_TOL,
            );
            assert_close(
                &what("peak(A)"),
                &metric_rows(gpu, ma, 3),
                &peak_a,
                0.0,
                SPEC_TOL,
            );
            assert_close(
                &what("distance(A)"),
                &metric_rows(gpu, ma, 4),
                &distance_a,
                0.0,
                SPEC_TOL,
            );
            assert_close(
                &what("GTD(A)"),
                &metric_rows(gpu, ma, 6),
                &gtd_a,
                0.0,
                SPEC_TOL,
            );
            assert_close(&what("H(R)"), &metric_rows(gpu, mr, 0), &h_r, 0.0, SPEC_TOL);
            assert_close(
                &what("GTD(R)"),
                &metric_rows(gpu, mr, 6),
                &gtd,
                0.0,
                SPEC_TOL,
            );
            // The head summary is the mean of the three rows.
            let mean = |x: &[f64]| x.iter().sum::<f64>() / 3.0;
            assert!((ma.heads[0].entropy - mean(&h_a)).abs() < 1e-6);
            assert!((mr.heads[0].gtd - mean(&gtd)).abs() < 1e-6);
            assert_eq!(mr.heads[0].rows, 3);
        }
        // M itself, from the materialized refinement of A.
        let out = spec_run(gpu, Mode::Plain, false, true);
        let refined =
            refine_map_blocking(gpu, out.attention.as_ref().unwrap(), &Lambda::Scalar(0.5))
                .unwrap();
        assert_close(
            "spec M",
            &refined.messages.to_vec_blocking(gpu).unwrap(),
            &m_msgs,
            0.0,
            SPEC_TOL,
        );
        assert_close(
            "spec R (refine_map)",
            &refined.refined.to_vec_blocking(gpu).unwrap(),
            &r,
            0.0,
            SPEC_TOL,
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
            assert_close(
                "causal R_2",
                &r[6..],
                &[0.200751, 0.399624, 0.399624],
                0.0,
                SPEC_TOL,
            );
            let metrics = out.metrics.unwrap();
            let gtd = metric_rows(gpu, metrics.refined.as_ref().unwrap(), 6);
            assert_close("causal GTD", &gtd, &[0.0, 0.0, 0.053738], 0.0, SPEC_TOL);
            let m = out.multi_hop_mass.unwrap().to_vec_blocking(gpu).unwrap();
            // Only row 2 receives a message: M_20 = A_21 · A_10.
            assert_close("causal m", &m, &[0.0, 0.0, 0.113579], 0.0, SPEC_TOL);
        }
    });
}

struct Case {
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    masked: bool,
    lambda: Lambda,
}

/// Runs one case in fused and materialized mode and checks everything
/// against the reference; returns the two outputs for cross-checks.
fn check(gpu: &Gpu, rng: &mut Rng, c: &Case) {
    let [b, h, n, d] = c.shape;
    let q = rng.vec(b * h * n * d, -2.0, 2.0);
    let k = rng.vec(b * h * n * d, -2.0, 2.0);
    let v = rng.vec(b * h * n * c.dv, -1.0, 1.0);
    // Batch item 1 (if any) has its whole tail padded; item 0 keeps all but the last key.
    let mask: Vec<f32> = (0..b * n)
        .map(|i| {
            if c.masked
                && ((i / n == 0 && i % n == n - 1 && n > 1) || (i / n == 1 && i % n >= n / 2))
            {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let lambda = c.lambda.per_head(h).unwrap();
    let lambda64: Vec<f64> = lambda.iter().map(|&l| f64::from(l)).collect();
    let want = reference::saobp(
        &q,
        &k,
        &v,
        c.shape,
        c.dv,
        &RefOptions {
            causal: c.causal,
            key_mask: c.masked.then_some(&mask),
            scale: None,
        },
        &lambda64,
    );
    let (rows_a, rows) = common::reference_rows(
        &want,
        &lambda64,
        [b, h, n],
        c.causal,
        c.masked.then_some(&mask),
    );
    let tq = Tensor::from_slice(gpu, &c.shape, &q).unwrap();
    let tk = Tensor::from_slice(gpu, &c.shape, &k).unwrap();
    let tv = Tensor::from_slice(gpu, &[b, h, n, c.dv], &v).unwrap();
    let tm = Tensor::from_slice(gpu, &[b, n], &mask).unwrap();
    let what = format!(
        "{:?} dv={} causal={} masked={} λ={:?}",
        c.shape, c.dv, c.causal, c.masked, c.lambda
    );
    let mut outputs = Vec::new();
    for mode in [Mode::Fused, Mode::Materialized] {
        let opts = AttentionOptions {
            causal: c.causal,
            key_mask: c.masked.then_some(&tm),
            lambda: c.lambda.clone(),
            mode,
            return_refined: true,
            metrics: true,
            ..Default::default()
        };
        let out = attention_blocking(gpu, &tq, &tk, &tv, &opts).unwrap();
        let what = format!("{what} {mode:?}");
        let o = out.output.to_vec_blocking(gpu).unwrap();
        assert_close(&format!("{what} O"), &o, &want.output, 1e-4, 1e-5);
        let r = out.refined.as_ref().unwrap().to_vec_blocking(gpu).unwrap();
        assert_close(&format!("{what} R"), &r, &want.refined, 1e-4, 1e-5);
        let m = out
            .multi_hop_mass
            .as_ref()
            .unwrap()
            .to_vec_blocking(gpu)
            .unwrap();
        assert_close(&format!("{what} m"), &m, &want.mass, 1e-4, 1e-5);
        let metrics = out.metrics.as_ref().unwrap();
        for (label, map, rows) in [
            ("R", metrics.refined.as_ref().unwrap(), &rows),
            ("A", &metrics.attention, &rows_a),
        ] {
            common::assert_map_metrics(gpu, &format!("{what} {label}"), map, rows, n);
        }
        // Properties: rows of R sum to 1 (or are empty), causal R is zero above the diagonal.
        for (row, chunk) in r.chunks(n).enumerate() {
            let s: f32 = chunk.iter().sum();
            assert!(
                s == 0.0 || (s - 1.0).abs() < 1e-5,
                "{what}: row {row} of R sums to {s}"
            );
            if c.causal {
                let i = row % n;
                assert!(
                    chunk[i + 1..].iter().all(|&x| x == 0.0),
                    "{what}: R row {i} not causal"
                );
            }
        }
        outputs.push(o);
    }
    // The two paths agree with each other, not only with the reference.
    assert_close(
        &format!("{what} fused vs materialized O"),
        &outputs[0],
        &outputs[1].iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        1e-4,
        1e-5,
    );
}

#[test]
fn random_cases_match_reference_in_both_modes() {
    on_every_gpu("saobp random", |gpu| {
        let mut rng = Rng::new(11);
        for i in 0..10 {
            let h = 1 + rng.below(3);
            let shape = [1 + rng.below(2), h, 1 + rng.below(60), 1 + rng.below(24)];
            let lambda = if i % 2 == 0 {
                Lambda::Scalar(rng.uniform(0.0, 3.0))
            } else {
                Lambda::PerHead((0..h).map(|_| rng.uniform(0.0, 3.0)).collect())
            };
            let case = Case {
                shape,
                dv: 1 + rng.below(16),
                causal: i % 3 == 0,
                masked: i % 2 == 1,
                lambda,
            };
            check(gpu, &mut rng, &case);
        }
    });
}

#[test]
fn edge_shapes_match_reference() {
    on_every_gpu("saobp edges", |gpu| {
        let mut rng = Rng::new(12);
        let cases = [
            Case {
                shape: [1, 1, 1, 1],
                dv: 1,
                causal: false,
                masked: false,
                lambda: Lambda::Scalar(1.0),
            },
            Case {
                shape: [1, 1, 2, 1],
                dv: 1,
                causal: true,
                masked: false,
                lambda: Lambda::Scalar(2.0),
            },
            Case {
                shape: [2, 2, 33, 1],
                dv: 3,
                causal: true,
                masked: true,
                lambda: Lambda::PerHead(vec![0.0, 5.0]),
            },
            Case {
                shape: [1, 2, 70, 16],
                dv: 16,
                causal: false,
                masked: true,
                lambda: Lambda::Scalar(100.0),
            },
        ];
        for c in &cases {
            check(gpu, &mut rng, c);
        }
    });
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
            assert_close(
                &format!("{mode:?} λ=0 O"),
                &out.output.to_vec_blocking(gpu).unwrap(),
                &want,
                1e-5,
                1e-6,
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
        let mut mask = vec![1.0f32; b * n];
        mask[n..].fill(0.0);
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
