//! Multi-head attention (plain mode) against the float64 reference on every
//! adapter, and what the metrics options cost and give in the refined modes.
//! SAOBP and the spec's worked example are in `saobp.rs`.

mod common;

use common::{assert_within, on_every_gpu, Case, Request, Rng, Tolerance};
use saobp::reference::{self, RefOptions};
use saobp::{
    attention_blocking, AttentionOptions, Gpu, GpuOptions, Lambda, Metric, Mode, RefinedMetrics,
    Tensor,
};

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

/// The same adapter as `gpu`, opened again: its own context (so that its
/// work counts are its own), with a storage-binding limit of `limit` bytes
/// if given.
fn reopen(gpu: &Gpu, limit: Option<u64>) -> Gpu {
    let a = gpu.adapter();
    Gpu::new_blocking(&GpuOptions {
        backend: format!("{:?}", a.backend).to_lowercase().parse().unwrap(),
        adapter: Some(a.name.clone()),
        limits: limit.map(|limit| wgpu::Limits {
            max_storage_buffer_binding_size: limit,
            ..gpu.limits().clone()
        }),
        ..Default::default()
    })
    .unwrap()
}

/// Both ways of measuring `R`, in both refined modes, whole and in chunks of
/// heads: the metrics of `A`, `m` and the GTD of `R` at λ always match the
/// reference; only [`RefinedMetrics::Full`] gives the metrics of `R` itself.
#[test]
fn refined_metrics_from_mass_give_gtd_without_r() {
    // N = 100: one 40 KB map per head, so a 64 KiB binding limit runs one head at a time.
    let (b, h, n, d) = (2, 3, 100, 8);
    let mut rng = Rng::new(71);
    let q = rng.vec(b * h * n * d, -2.0, 2.0);
    let k = rng.vec(b * h * n * d, -2.0, 2.0);
    let v = rng.vec(b * h * n * d, -1.0, 1.0);
    let mask: Vec<f32> = (0..b * n)
        .map(|i| if i >= n + 80 { 0.0 } else { 1.0 })
        .collect();
    let lambda = [0.4f32, 1.0, 3.0];
    let lambda64: Vec<f64> = lambda.iter().map(|&x| f64::from(x)).collect();
    let ref_opts = RefOptions {
        causal: true,
        key_mask: Some(&mask),
        scale: None,
    };
    let want = reference::saobp(&q, &k, &v, [b, h, n, d], d, &ref_opts, &lambda64).unwrap();
    let (rows_a, rows_r) = common::reference_rows(&want, &lambda64, [b, h, n], true, Some(&mask));
    let gtd_r: Vec<f64> = rows_r.iter().map(|r| r[Metric::Gtd.index()]).collect();
    on_every_gpu("refined metrics", |gpu| {
        let chunked = reopen(gpu, Some(64 << 10));
        for (gpu, layout) in [(gpu, "whole"), (&chunked, "chunked")] {
            let shape = [b, h, n, d];
            let tq = Tensor::from_slice(gpu, &shape, &q).unwrap();
            let tk = Tensor::from_slice(gpu, &shape, &k).unwrap();
            let tv = Tensor::from_slice(gpu, &shape, &v).unwrap();
            let tm = Tensor::from_slice(gpu, &[b, n], &mask).unwrap();
            for mode in [Mode::Fused, Mode::Materialized] {
                for refined_metrics in [RefinedMetrics::Full, RefinedMetrics::FromMass] {
                    let what = format!("{layout} {mode:?} {refined_metrics:?}");
                    let opts = AttentionOptions {
                        causal: true,
                        key_mask: Some(&tm),
                        lambda: Lambda::PerHead(lambda.to_vec()),
                        mode,
                        metrics: true,
                        refined_metrics,
                        ..Default::default()
                    };
                    let out = attention_blocking(gpu, &tq, &tk, &tv, &opts).unwrap();
                    assert_within(
                        &format!("{what} O"),
                        &out.output.to_vec_blocking(gpu).unwrap(),
                        &want.output,
                        Tolerance::SPEC,
                    );
                    assert_within(
                        &format!("{what} m"),
                        &out.multi_hop_mass.unwrap().to_vec_blocking(gpu).unwrap(),
                        &want.mass,
                        Tolerance::SPEC,
                    );
                    let m = out.metrics.unwrap();
                    common::assert_map_metrics(gpu, &format!("{what} A"), &m.attention, &rows_a, n);
                    assert_within(
                        &format!("{what} GTD of R"),
                        &m.refined_gtd.unwrap().to_vec_blocking(gpu).unwrap(),
                        &gtd_r,
                        Tolerance::SPEC,
                    );
                    match (refined_metrics, &m.refined) {
                        (RefinedMetrics::Full, Some(r)) => {
                            common::assert_map_metrics(gpu, &format!("{what} R"), r, &rows_r, n)
                        }
                        (RefinedMetrics::FromMass, None) => {}
                        (_, r) => panic!("{what}: metrics of R present: {}", r.is_some()),
                    }
                }
            }
            // Plain attention has no R, hence no GTD of it either.
            let plain = AttentionOptions {
                mode: Mode::Plain,
                metrics: true,
                refined_metrics: RefinedMetrics::FromMass,
                ..Default::default()
            };
            let m = attention_blocking(gpu, &tq, &tk, &tv, &plain)
                .unwrap()
                .metrics
                .unwrap();
            assert!(m.refined.is_none() && m.refined_gtd.is_none(), "{layout}");
        }
    });
}

/// Fused mode's cost, counted: with the metrics of `A`, `m` and the GTD of
/// `R` from m ([`RefinedMetrics::FromMass`]) its matrix products are the
/// three O(N²D) ones (`Q·Kᵀ`, `A·V`, `A·U`); only the metrics of `R` itself
/// form `M`, N³ multiply-adds per head.
#[test]
fn fused_metrics_do_no_cubic_work_unless_r_is_measured() {
    let (b, h, n, d) = (1, 2, 256, 8);
    let mut rng = Rng::new(73);
    let x = rng.vec(b * h * n * d, -1.0, 1.0);
    let (bh, n64, d64) = ((b * h) as u64, n as u64, d as u64);
    // 2 FLOPs per multiply-add: Q·Kᵀ (D), A·V (D) and A·U' per entry of A,
    // U' being D + 1 wide padded with zero columns to a multiple of 4.
    let quadratic = 2 * bh * n64 * n64 * (2 * d64 + (d64 + 1).next_multiple_of(4));
    let cubic = 2 * bh * n64 * n64 * n64;
    on_every_gpu("fused work", |shared| {
        let gpu = reopen(shared, None);
        let t = Tensor::from_slice(&gpu, &[b, h, n, d], &x).unwrap();
        for refined_metrics in [RefinedMetrics::FromMass, RefinedMetrics::Full] {
            let opts = AttentionOptions {
                lambda: Lambda::Scalar(0.5),
                mode: Mode::Fused,
                metrics: true,
                refined_metrics,
                ..Default::default()
            };
            let before = gpu.work();
            let out = attention_blocking(&gpu, &t, &t, &t, &opts).unwrap();
            out.output.to_vec_blocking(&gpu).unwrap();
            let work = gpu.work().since(&before);
            let what = format!("{refined_metrics:?}: {work:?}");
            let echoes = work.count("saobp::remove_echoes");
            match refined_metrics {
                RefinedMetrics::FromMass => {
                    assert!(work.product_flops > 0, "{what}");
                    assert!(work.product_flops <= quadratic, "{what}");
                    assert!(quadratic < cubic / 5, "N = 256 separates the two");
                    assert_eq!(echoes, 0, "{what}");
                }
                RefinedMetrics::Full => {
                    assert!(work.product_flops >= cubic, "{what}");
                    assert_eq!(echoes, 1, "{what}");
                }
            }
        }
    });
}
