//! Reliability: numerical extremes, non-finite inputs, adapter limits, device
//! loss, timeouts and threads, on every adapter.

mod common;

use std::time::Duration;

use common::{absolute, assert_within, key_mask, on_every_gpu, Rng, Tolerance};
use saobp::reference::{self, RefOptions};
use saobp::{
    attention_blocking, matmul_blocking, softmax_blocking, AttentionOptions, Error, Gpu,
    GpuOptions, Lambda, MatmulFamily, MatmulOptions, Mode, SoftmaxOptions, Tensor,
};

use common::same_adapter;

/// Scores of ±1e4, all-equal rows and one-hot rows through every mode: finite
/// and equal to the reference (the spec's tolerance holds for |S| ≤ 50; at
/// 1e4 the softmax is exactly one-hot or uniform, so it holds here too).
#[test]
fn extreme_logits_are_finite_and_correct_in_every_mode() {
    let (n, d) = (9, 2);
    // q_i · k_j with k = e_0 or e_1: row patterns of ±1e4, equal, one-hot.
    let mut q = vec![0.0f32; n * d];
    let mut k = vec![0.0f32; n * d];
    for i in 0..n {
        q[i * d] = [1e4, -1e4, 0.0][i % 3];
        q[i * d + 1] = [0.0, 0.0, 1e4][i % 3];
        k[i * d] = if i % 2 == 0 { 1.0 } else { -1.0 };
        k[i * d + 1] = if i == 4 { 1.0 } else { 0.0 };
    }
    let v = Rng::new(41).vec(n * d, -1.0, 1.0);
    let shape = [1, 1, n, d];
    let want = reference::saobp(
        &q,
        &k,
        &v,
        shape,
        d,
        &RefOptions {
            scale: Some(1.0),
            ..Default::default()
        },
        &[0.7],
    )
    .unwrap();
    on_every_gpu("extreme logits", |gpu| {
        let t = |x: &[f32]| Tensor::from_slice(gpu, &shape, x).unwrap();
        let (tq, tk, tv) = (t(&q), t(&k), t(&v));
        for mode in [Mode::Plain, Mode::Fused, Mode::Materialized] {
            let opts = AttentionOptions {
                scale: Some(1.0),
                lambda: Lambda::Scalar(0.7),
                mode,
                return_attention: true,
                metrics: true,
                ..Default::default()
            };
            let out = attention_blocking(gpu, &tq, &tk, &tv, &opts).unwrap();
            let a = out.attention.unwrap().to_vec_blocking(gpu).unwrap();
            assert_within(&format!("{mode:?} A"), &a, &want.attention, Tolerance::SPEC);
            let o_want = if mode == Mode::Plain {
                &want.plain_output
            } else {
                &want.output
            };
            assert_within(
                &format!("{mode:?} O"),
                &out.output.to_vec_blocking(gpu).unwrap(),
                o_want,
                Tolerance::SPEC,
            );
            let rows = out
                .metrics
                .unwrap()
                .attention
                .rows
                .to_vec_blocking(gpu)
                .unwrap();
            assert!(
                rows.iter().all(|x| x.is_finite()),
                "{mode:?}: metrics finite"
            );
        }
    });
}

#[test]
fn non_finite_inputs_are_refused_naming_the_tensor() {
    on_every_gpu("non-finite inputs", |gpu| {
        let good = Tensor::from_slice(gpu, &[1, 1, 2, 2], &[0.5; 4]).unwrap();
        for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let bad = Tensor::from_slice(gpu, &[1, 1, 2, 2], &[0.5, 0.5, bad_value, 0.5]).unwrap();
            assert_eq!(bad.first_non_finite().map(|x| x.0), Some(2));
            for (name, q, k, v) in [
                ("q", &bad, &good, &good),
                ("k", &good, &bad, &good),
                ("v", &good, &good, &bad),
            ] {
                let e = attention_blocking(gpu, q, k, v, &AttentionOptions::default()).unwrap_err();
                match &e {
                    Error::NonFinite { tensor, index, .. } => {
                        assert_eq!((tensor.as_str(), *index), (name, 2))
                    }
                    other => panic!("{name}: {other}"),
                }
                assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
            }
            let m = bad.reshape(&[2, 2]).unwrap();
            assert!(matches!(
                matmul_blocking(gpu, &m, &m, &MatmulOptions::default()),
                Err(Error::NonFinite { .. })
            ));
            assert!(matches!(
                softmax_blocking(gpu, &m, &SoftmaxOptions::default()),
                Err(Error::NonFinite { .. })
            ));
        }
        let mask = Tensor::from_slice(gpu, &[1, 2], &[1.0, f32::NAN]).unwrap();
        let opts = AttentionOptions {
            key_mask: Some(&mask),
            ..Default::default()
        };
        let e = attention_blocking(gpu, &good, &good, &good, &opts).unwrap_err();
        assert!(e.to_string().contains("key_mask"), "{e}");
    });
}

/// With a browser's default limits (128 MiB per storage binding): asking for
/// the whole H=12, N=4096 map (768 MiB) back, or for any work on one map of
/// N=8192 (256 MiB), is refused before any GPU work, naming the limit. (Maps
/// that are not returned run in chunks of heads: see the chunking test.)
#[test]
fn browser_default_limits_refuse_oversized_maps_with_the_limit_named() {
    on_every_gpu("browser limits", |gpu| {
        let opts = GpuOptions {
            limits: Some(wgpu::Limits::default()),
            ..same_adapter(gpu)
        };
        let small = Gpu::new_blocking(&opts).unwrap();
        assert_eq!(small.limits().max_storage_buffer_binding_size, 128 << 20);
        let q = Tensor::zeros(&small, &[1, 12, 4096, 64]).unwrap();
        let keep = AttentionOptions {
            return_attention: true,
            ..Default::default()
        };
        let e = attention_blocking(&small, &q, &q, &q, &keep).unwrap_err();
        match &e {
            Error::Limit {
                limit_name,
                limit,
                needed,
                ..
            } => {
                assert_eq!(
                    (*limit_name, *limit),
                    ("max_storage_buffer_binding_size", 128 << 20)
                );
                assert_eq!(*needed, 12 * 4096 * 4096 * 4);
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().contains("max_storage_buffer_binding_size"),
            "{e}"
        );
        let q = Tensor::zeros(&small, &[1, 1, 8192, 8]).unwrap();
        let e = attention_blocking(&small, &q, &q, &q, &AttentionOptions::default()).unwrap_err();
        assert!(e.to_string().contains("one 8192×8192 attention map"), "{e}");
        // The same context still works afterwards.
        let x = Tensor::from_slice(&small, &[1, 3], &[1.0, 2.0, 3.0]).unwrap();
        let y = softmax_blocking(&small, &x, &SoftmaxOptions::default())
            .unwrap()
            .to_vec_blocking(&small)
            .unwrap();
        assert_within(
            "softmax after a refusal",
            &y,
            &reference::softmax(&[1.0, 2.0, 3.0], &[1, 3], false, None).unwrap(),
            Tolerance {
                abs: 1e-7,
                rel: 1e-6,
            },
        );
    });
}

#[test]
fn requests_beyond_memory_fail_cleanly() {
    on_every_gpu("beyond memory", |gpu| {
        // 2^33 elements: beyond 32-bit indexing and any binding.
        let e = Tensor::zeros(gpu, &[1 << 17, 1 << 16]).unwrap_err();
        assert!(matches!(e, Error::Limit { .. }), "{e}");
        let e = Tensor::zeros(gpu, &[usize::MAX, 4]).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
        // Just over the binding limit.
        let max = gpu.limits().max_storage_buffer_binding_size;
        let e = Tensor::zeros(gpu, &[(max / 4 + 1) as usize]).unwrap_err();
        assert!(matches!(e, Error::Limit { .. }), "{e}");
    });
}

/// More than 65,535 rows: the dispatch is split over x and y and every row is right.
#[test]
fn dispatches_beyond_the_per_dimension_cap_are_split() {
    on_every_gpu("workgroup cap", |gpu| {
        let rows = 70_000usize;
        let cap = gpu.limits().max_compute_workgroups_per_dimension as usize;
        assert!(rows > cap, "this test needs more rows than the {cap} cap");
        let x: Vec<f32> = (0..rows * 3).map(|i| (i % 7) as f32 - 3.0).collect();
        let t = Tensor::from_slice(gpu, &[rows, 3], &x).unwrap();
        let y = softmax_blocking(gpu, &t, &SoftmaxOptions::default())
            .unwrap()
            .to_vec_blocking(gpu)
            .unwrap();
        assert_within(
            "70,000-row softmax",
            &y,
            &reference::softmax(&x, &[rows, 3], false, None).unwrap(),
            Tolerance {
                abs: 1e-6,
                rel: 1e-5,
            },
        );
    });
}

#[test]
fn device_loss_surfaces_as_an_error_and_a_new_context_works() {
    on_every_gpu("device loss", |gpu| {
        let opts = same_adapter(gpu);
        let doomed = Gpu::new_blocking(&opts).unwrap();
        let q = Tensor::from_slice(&doomed, &[1, 1, 4, 2], &[0.25; 8]).unwrap();
        attention_blocking(&doomed, &q, &q, &q, &AttentionOptions::default()).unwrap();
        doomed.destroy();
        let e = attention_blocking(&doomed, &q, &q, &q, &AttentionOptions::default()).unwrap_err();
        assert!(matches!(e, Error::DeviceLost(_)), "{e}");
        assert!(matches!(
            q.to_vec_blocking(&doomed),
            Err(Error::DeviceLost(_))
        ));
        assert!(matches!(
            Tensor::zeros(&doomed, &[4]),
            Err(Error::DeviceLost(_))
        ));
        let fresh = Gpu::new_blocking(&opts).unwrap();
        let q = Tensor::from_slice(&fresh, &[1, 1, 4, 2], &[0.25; 8]).unwrap();
        let out = attention_blocking(&fresh, &q, &q, &q, &AttentionOptions::default()).unwrap();
        assert_within(
            "after loss",
            &out.output.to_vec_blocking(&fresh).unwrap(),
            &[0.25; 8],
            Tolerance {
                abs: 1e-7,
                rel: 1e-6,
            },
        );
    });
}

/// A wait longer than the context's timeout returns `Error::Timeout` instead
/// of hanging, even on a driver (lavapipe) that blocks past a timeout it is
/// given. Vulkan runs submissions asynchronously, so a 1 µs budget must
/// expire there; llvmpipe GL does the work inside `submit`, so its reads may
/// simply succeed, and must then be right.
#[test]
fn waits_time_out_instead_of_hanging() {
    on_every_gpu("timeout", |gpu| {
        let opts = GpuOptions {
            timeout: Duration::from_micros(1),
            ..same_adapter(gpu)
        };
        let impatient = Gpu::new_blocking(&opts).unwrap();
        // About a billion multiply-adds a product (tens of milliseconds on
        // lavapipe), so that even on a loaded machine the read starts before
        // the work ends and must wait for it.
        let a = Tensor::from_slice(&impatient, &[1024, 1024], &vec![0.5; 1024 * 1024]).unwrap();
        let mut timed_out = false;
        for _ in 0..4 {
            let c = matmul_blocking(&impatient, &a, &a, &MatmulOptions::default()).unwrap();
            match c.to_vec_blocking(&impatient) {
                Err(Error::Timeout(t)) => {
                    assert_eq!(t, Duration::from_micros(1));
                    timed_out = true;
                    break;
                }
                Ok(v) => assert_within("1024 × 0.25", &v, &vec![256.0; v.len()], absolute(1e-3)),
                Err(e) => panic!("{e}"),
            }
        }
        if gpu.adapter().backend == wgpu::Backend::Vulkan {
            assert!(timed_out, "no read timed out on Vulkan");
        }
    });
}

#[test]
fn contexts_are_send_and_sync_and_threads_agree_with_serial_calls() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Gpu>();
    assert_send_sync::<Tensor>();
    on_every_gpu("threads", |gpu| {
        let mut rng = Rng::new(43);
        let inputs: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(2 * 3 * 24 * 8, -2.0, 2.0)).collect();
        let run = |x: &[f32]| -> Vec<f32> {
            let t = Tensor::from_slice(gpu, &[2, 3, 24, 8], x).unwrap();
            let opts = AttentionOptions {
                lambda: Lambda::Scalar(0.8),
                causal: true,
                metrics: true,
                ..Default::default()
            };
            attention_blocking(gpu, &t, &t, &t, &opts)
                .unwrap()
                .output
                .to_vec_blocking(gpu)
                .unwrap()
        };
        let serial: Vec<Vec<f32>> = inputs.iter().map(|x| run(x)).collect();
        let parallel: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = inputs
                .iter()
                .map(|x| s.spawn(move || (0..3).map(|_| run(x)).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .flat_map(|v| v.into_iter().take(1))
                .collect()
        });
        assert_eq!(
            serial, parallel,
            "threads give the serial results bit for bit"
        );
    });
}

/// Maps over the storage-binding limit run in chunks of heads: with a 64 KiB
/// limit, B=2, H=3, N=100 (40 KB per head) runs one head at a time and gives
/// the reference's outputs, multi-hop mass and metrics.
#[test]
fn oversized_maps_run_in_chunks_of_heads() {
    let (b, h, n, d) = (2, 3, 100, 16);
    let mut rng = Rng::new(61);
    let q = rng.vec(b * h * n * d, -2.0, 2.0);
    let v = rng.vec(b * h * n * d, -1.0, 1.0);
    // Batch item 1 keeps its first 70 keys.
    let mask = key_mask(b, n, |item, j| item == 0 || j < 70);
    let lambda = [0.3f32, 1.0, 2.5];
    let lambda64: Vec<f64> = lambda.iter().map(|&x| f64::from(x)).collect();
    let ref_opts = RefOptions {
        causal: true,
        key_mask: Some(&mask),
        scale: None,
    };
    let want = reference::saobp(&q, &q, &v, [b, h, n, d], d, &ref_opts, &lambda64).unwrap();
    let (rows_a, rows_r) = common::reference_rows(&want, &lambda64, [b, h, n], true, Some(&mask));
    on_every_gpu("chunked attention", |gpu| {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 10,
            ..gpu.limits().clone()
        };
        let small = Gpu::new_blocking(&GpuOptions {
            limits: Some(limits),
            ..same_adapter(gpu)
        })
        .unwrap();
        let tq = Tensor::from_slice(&small, &[b, h, n, d], &q).unwrap();
        let tv = Tensor::from_slice(&small, &[b, h, n, d], &v).unwrap();
        let tm = Tensor::from_slice(&small, &[b, n], &mask).unwrap();
        for mode in [Mode::Plain, Mode::Fused, Mode::Materialized] {
            let opts = AttentionOptions {
                causal: true,
                key_mask: Some(&tm),
                lambda: Lambda::PerHead(lambda.to_vec()),
                mode,
                metrics: true,
                ..Default::default()
            };
            let out = attention_blocking(&small, &tq, &tq, &tv, &opts).unwrap();
            let what = format!("chunked {mode:?}");
            let o_want = if mode == Mode::Plain {
                &want.plain_output
            } else {
                &want.output
            };
            assert_within(
                &format!("{what} O"),
                &out.output.to_vec_blocking(&small).unwrap(),
                o_want,
                Tolerance::SPEC,
            );
            assert_within(
                &format!("{what} m"),
                &out.multi_hop_mass.unwrap().to_vec_blocking(&small).unwrap(),
                &want.mass,
                Tolerance::SPEC,
            );
            let m = out.metrics.unwrap();
            common::assert_map_metrics(&small, &format!("{what} A"), &m.attention, &rows_a, n);
            if let Some(r) = &m.refined {
                common::assert_map_metrics(&small, &format!("{what} R"), r, &rows_r, n);
            }
            assert_eq!(m.attention.heads.len(), b * h);
            // Asking for the whole map back still needs it to fit.
            let keep = AttentionOptions {
                return_attention: true,
                ..opts
            };
            assert!(matches!(
                attention_blocking(&small, &tq, &tq, &tv, &keep),
                Err(Error::Limit { .. })
            ));
        }
    });
}

/// Buffers of dropped tensors, uniforms, staging and the texture matmul's
/// panels are reused: once a call has run, repeating it with the same shapes
/// creates no GPU buffer or texture at all, whichever matmul family runs.
#[test]
fn repeated_calls_of_the_same_shape_allocate_nothing() {
    let (b, h, n, d) = (1, 2, 40, 8);
    let mut rng = Rng::new(67);
    let q = rng.vec(b * h * n * d, -1.0, 1.0);
    on_every_gpu("buffer reuse", |gpu| {
        for family in [
            MatmulFamily::Buffer,
            MatmulFamily::Tiled,
            MatmulFamily::Texture,
        ] {
            let Ok(gpu) = Gpu::new_blocking(&same_adapter(gpu)) else {
                panic!("{family:?}: cannot open the adapter again");
            };
            saobp::set_matmul_family(&gpu, Some(family));
            let gpu = &gpu;
            let call = |mode: Mode| {
                let tq = Tensor::from_slice(gpu, &[b, h, n, d], &q).unwrap();
                let opts = AttentionOptions {
                    lambda: Lambda::Scalar(0.5),
                    mode,
                    metrics: true,
                    return_attention: true,
                    ..Default::default()
                };
                let out = attention_blocking(gpu, &tq, &tq, &tq, &opts).unwrap();
                let product = MatmulOptions {
                    trans_b: true,
                    ..Default::default()
                };
                let c = matmul_blocking(gpu, &tq, &tq, &product).unwrap();
                (
                    out.output.to_vec_blocking(gpu).unwrap(),
                    c.to_vec_blocking(gpu).unwrap(),
                )
            };
            for mode in [Mode::Plain, Mode::Fused, Mode::Materialized] {
                let first = call(mode);
                let created = gpu.allocations();
                for _ in 0..3 {
                    assert_eq!(
                        call(mode),
                        first,
                        "{family:?} {mode:?}: reuse changes results"
                    );
                }
                assert_eq!(
                    gpu.allocations(),
                    created,
                    "{family:?} {mode:?}: repeated calls allocated"
                );
            }
        }
        // A reused buffer handed out by `zeros` is cleared.
        let len = 1000;
        drop(Tensor::from_slice(gpu, &[len], &vec![7.0; len]).unwrap());
        let created = gpu.allocations();
        let z = Tensor::zeros(gpu, &[len]).unwrap();
        assert_eq!(gpu.allocations(), created, "zeros did not reuse the buffer");
        assert_eq!(z.to_vec_blocking(gpu).unwrap(), vec![0.0; len]);
        assert!(gpu.pooled_bytes() > 0);
        gpu.trim_pool();
        assert_eq!(gpu.pooled_bytes(), 0);
    });
}
