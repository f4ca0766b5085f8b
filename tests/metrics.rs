//! Metrics of arbitrary attention maps: exact values on maps whose metrics are
//! known in closed form, and random maps against the float64 reference.

mod common;

use common::{absolute, assert_within, key_mask, on_every_gpu, Rng, Tolerance};
use saobp::{
    metrics_blocking, reference, refined_metrics_blocking, Lambda, Metric, MetricsOptions,
    RowStats, Tensor, METRIC_NAMES,
};

#[test]
fn uniform_one_hot_and_empty_rows_have_known_metrics() {
    let n = 5usize;
    // Head 0: uniform rows. Head 1: row i attends only to token (i + 2) % n.
    let mut p = vec![1.0 / n as f32; n * n];
    p.extend((0..n * n).map(|x| if x % n == (x / n + 2) % n { 1.0 } else { 0.0 }));
    on_every_gpu("metrics closed form", |gpu| {
        let t = Tensor::from_slice(gpu, &[1, 2, n, n], &p).unwrap();
        let m = metrics_blocking(gpu, &t, &MetricsOptions::default()).unwrap();
        let metric = |metric: Metric, head: usize| {
            let row = m.row_blocking(gpu, metric).unwrap();
            assert_eq!(
                row.len(),
                2 * n,
                "{metric:?}: one value per row of [B, H, N]"
            );
            row[head * n..][..n].to_vec()
        };
        let ln_n = (n as f64).ln();
        assert_within(
            "uniform entropy",
            &metric(Metric::Entropy, 0),
            &[ln_n; 5],
            Tolerance {
                abs: 1e-6,
                rel: 1e-6,
            },
        );
        assert_within(
            "uniform normalized",
            &metric(Metric::NormalizedEntropy, 0),
            &[1.0; 5],
            Tolerance {
                abs: 1e-6,
                rel: 1e-6,
            },
        );
        assert_within(
            "uniform sparsity",
            &metric(Metric::Sparsity, 0),
            &[0.0; 5],
            absolute(1e-6),
        );
        assert_within(
            "uniform peak",
            &metric(Metric::Peak, 0),
            &[0.2; 5],
            Tolerance {
                abs: 1e-7,
                rel: 1e-6,
            },
        );
        // Mean |i - j| over j for a uniform row.
        let dist: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| (i as f64 - j as f64).abs()).sum::<f64>() / n as f64)
            .collect();
        assert_within(
            "uniform distance",
            &metric(Metric::Distance, 0),
            &dist,
            Tolerance {
                abs: 1e-6,
                rel: 1e-6,
            },
        );
        // m of a uniform map: each of the n-2 intermediates k ∉ {i, j} carries 1/n², for n-1 targets.
        let m_uniform = ((n - 1) * (n - 2)) as f64 / (n * n) as f64;
        assert_within(
            "uniform m",
            &metric(Metric::MultiHopMass, 0),
            &[m_uniform; 5],
            Tolerance {
                abs: 1e-6,
                rel: 1e-5,
            },
        );
        assert_within(
            "uniform GTD at λ=1",
            &metric(Metric::Gtd, 0),
            &[m_uniform / (1.0 + m_uniform); 5],
            Tolerance {
                abs: 1e-6,
                rel: 1e-5,
            },
        );

        assert_eq!(metric(Metric::Entropy, 1), vec![0.0; n]);
        assert_eq!(metric(Metric::NormalizedEntropy, 1), vec![0.0; n]);
        assert_within(
            "one-hot sparsity",
            &metric(Metric::Sparsity, 1),
            &[0.8; 5],
            Tolerance {
                abs: 1e-6,
                rel: 1e-6,
            },
        );
        assert_eq!(metric(Metric::Peak, 1), vec![1.0; n]);
        let dist: Vec<f64> = (0..n)
            .map(|i| (i as f64 - ((i + 2) % n) as f64).abs())
            .collect();
        assert_within(
            "one-hot distance",
            &metric(Metric::Distance, 1),
            &dist,
            absolute(1e-6),
        );
        // i → i+2 → i+4 is a genuine two-hop path for n = 5: m = 1.
        assert_within(
            "one-hot m",
            &metric(Metric::MultiHopMass, 1),
            &[1.0; 5],
            absolute(1e-6),
        );
        assert_eq!(m.heads[1].rows, n as u32);
        assert_eq!(m.heads[1].peak, 1.0);
    });
}

/// Maps `[B, H, N, N]`: a genuine (masked) softmax of scores uniform in
/// `[-range, range]`, so rows are stochastic; in f32, and the same values in
/// f64 for the reference.
fn stochastic_maps(
    rng: &mut Rng,
    [b, h, n]: [usize; 3],
    range: f32,
    causal: bool,
    mask: Option<&[f32]>,
) -> (Vec<f32>, Vec<f64>) {
    let scores = rng.vec(b * h * n * n, -range, range);
    let p64 = reference::softmax(&scores, &[b, h, n, n], causal, mask).unwrap();
    let p: Vec<f32> = p64.iter().map(|&x| x as f32).collect();
    let p64 = p.iter().map(|&x| f64::from(x)).collect();
    (p, p64)
}

#[test]
fn random_maps_with_masks_match_reference() {
    on_every_gpu("metrics random", |gpu| {
        let mut rng = Rng::new(21);
        for case in 0..6 {
            let (b, h, n) = (1 + rng.below(2), 1 + rng.below(3), 1 + rng.below(90));
            let causal = case % 2 == 0;
            let mask = key_mask(b, n, |_, _| rng.below(5) != 0);
            let masked = case % 3 != 0;
            let (p, p64) =
                stochastic_maps(&mut rng, [b, h, n], 6.0, causal, masked.then_some(&mask));
            let lambda: Vec<f32> = (0..h).map(|_| rng.uniform(0.0, 4.0)).collect();
            let lambda64: Vec<f64> = lambda.iter().map(|&x| f64::from(x)).collect();
            let messages = reference::saobp::messages(&p64, n).unwrap();
            let mass = reference::saobp::multi_hop_mass(&messages, n).unwrap();
            let want = reference::metrics::row_metrics(
                &p64,
                &mass,
                Some(&lambda64),
                [b, h, n],
                causal,
                masked.then_some(&mask),
            )
            .unwrap();

            let t = Tensor::from_slice(gpu, &[b, h, n, n], &p).unwrap();
            let tm = Tensor::from_slice(gpu, &[b, n], &mask).unwrap();
            let l = Lambda::PerHead(lambda);
            let opts = MetricsOptions {
                causal,
                key_mask: masked.then_some(&tm),
                lambda: Some(&l),
            };
            let got = metrics_blocking(gpu, &t, &opts).unwrap();
            common::assert_map_metrics(gpu, &format!("case {case}"), &got, &want, n);
        }
    });
}

/// `refined_metrics` reports R as the spec defines it: R's own entropy,
/// sparsity, peak and distance with A's multi-hop mass and GTD at λ. Plain
/// `metrics` of R would report R's own two-hop mass, which differs (checked
/// too, so the case cannot pass by accident).
#[test]
fn refined_maps_take_the_mass_of_their_attention_map() {
    on_every_gpu("refined metrics", |gpu| {
        let mut rng = Rng::new(33);
        for case in 0..4 {
            let (b, h, n) = (1 + rng.below(2), 1 + rng.below(3), 8 + rng.below(60));
            let causal = case % 2 == 1;
            let mask = key_mask(b, n, |_, _| rng.below(5) != 0);
            let masked = case >= 2;
            let (a, a64) =
                stochastic_maps(&mut rng, [b, h, n], 5.0, causal, masked.then_some(&mask));
            let lambda: Vec<f32> = (0..h).map(|_| rng.uniform(0.2, 3.0)).collect();
            let lambda64: Vec<f64> = lambda.iter().map(|&x| f64::from(x)).collect();
            let messages = reference::saobp::messages(&a64, n).unwrap();
            let mass = reference::saobp::multi_hop_mass(&messages, n).unwrap();
            let r64 = reference::saobp::refine(&a64, &messages, &mass, &lambda64, n).unwrap();
            let r: Vec<f32> = r64.iter().map(|&x| x as f32).collect();
            let r64: Vec<f64> = r.iter().map(|&x| f64::from(x)).collect();
            let want = reference::metrics::row_metrics(
                &r64,
                &mass,
                Some(&lambda64),
                [b, h, n],
                causal,
                masked.then_some(&mask),
            )
            .unwrap();

            let ta = Tensor::from_slice(gpu, &[b, h, n, n], &a).unwrap();
            let tr = Tensor::from_slice(gpu, &[b, h, n, n], &r).unwrap();
            let tm = Tensor::from_slice(gpu, &[b, n], &mask).unwrap();
            let l = Lambda::PerHead(lambda);
            let opts = MetricsOptions {
                causal,
                key_mask: masked.then_some(&tm),
                lambda: Some(&l),
            };
            let got = refined_metrics_blocking(gpu, &ta, &tr, &opts).unwrap();
            common::assert_map_metrics(gpu, &format!("case {case}"), &got, &want, n);

            // R's own two-hop mass is another number.
            let own = metrics_blocking(gpu, &tr, &opts).unwrap();
            let differs = own
                .heads
                .iter()
                .zip(&got.heads)
                .any(|(o, g)| (o.multi_hop_mass - g.multi_hop_mass).abs() > 1e-4);
            assert!(
                differs,
                "case {case}: R's own mass equals A's; the case proves nothing"
            );
        }
        // A and R of different shapes.
        let a = Tensor::zeros(gpu, &[1, 1, 4, 4]).unwrap();
        let r = Tensor::zeros(gpu, &[1, 2, 4, 4]).unwrap();
        let e = refined_metrics_blocking(gpu, &a, &r, &MetricsOptions::default()).unwrap_err();
        assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
    });
}

#[test]
fn non_square_map_is_a_shape_error() {
    let gpu = &common::gpus()[0];
    let t = Tensor::zeros(gpu, &[1, 2, 3, 4]).unwrap();
    let e = metrics_blocking(gpu, &t, &MetricsOptions::default()).unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
}

#[test]
fn metrics_name_the_rows_of_the_tensor_in_order() {
    let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(names, METRIC_NAMES);
    for (i, m) in Metric::ALL.into_iter().enumerate() {
        assert_eq!(m.index(), i);
        assert_eq!(m.range(10), 10 * i..10 * (i + 1));
    }
}

#[test]
fn row_stats_decode_the_interleaved_columns() {
    let stats = RowStats::from_interleaved(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    assert_eq!(stats.max, [1.0, 4.0]);
    assert_eq!(stats.sum, [2.0, 5.0]);
    assert_eq!(stats.entropy, [3.0, 6.0]);
    let names: Vec<&str> = stats.columns().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["max", "sum", "entropy"]);
    let e = RowStats::from_interleaved(&[0.0f64; 4]).unwrap_err();
    assert!(matches!(e, saobp::Error::Shape(_)), "{e}");
}
