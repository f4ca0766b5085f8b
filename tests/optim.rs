//! AdamW on the GPU against its float64 twin on every adapter: several
//! steps with clipping on and off, the λ ≥ 0 clamp, a norm reduction that
//! is the same bits run to run, gradient accumulation, and typed errors for
//! bad inputs.

mod common;

use common::{assert_near, assert_within, on_every_gpu, Rng, Tolerance};
use saobp::kernels::optim::accumulate_blocking;
use saobp::reference::optim::AdamWRef;
use saobp::{lr_at, AdamW, AdamWOptions, Error, Gpu, ParamGroup, Tensor};

/// Odd sizes, every group; the 3,300-value weight spans 13 partial sums.
const PARAMS: &[(&[usize], ParamGroup)] = &[
    (&[7, 13], ParamGroup::Decayed),
    (&[13], ParamGroup::NotDecayed),
    (&[300, 11], ParamGroup::Decayed),
    (&[5], ParamGroup::NotDecayed),
    (&[3], ParamGroup::Lambda),
];

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn upload(gpu: &Gpu, values: &[Vec<f32>]) -> Vec<Tensor> {
    PARAMS
        .iter()
        .zip(values)
        .map(|((shape, _), v)| Tensor::from_slice(gpu, shape, v).unwrap())
        .collect()
}

fn refs(tensors: &[Tensor]) -> Vec<&Tensor> {
    tensors.iter().collect()
}

/// Gradients uniform in `[-a, a]`, except λ's, all `+a`: they push λ
/// down (Adam steps by about `lr` whatever `a`), so the clamp has work to do.
fn grads(rng: &mut Rng, a: f32) -> Vec<Vec<f32>> {
    PARAMS
        .iter()
        .map(|(shape, group)| match group {
            ParamGroup::Lambda => vec![a; len(shape)],
            _ => rng.vec(len(shape), -a, a),
        })
        .collect()
}

/// Gradient accumulation over three micro-batches with scale 1/3: the first
/// overwrites whatever the sum held, the others add; the sum is the mean of
/// the three within f32 rounding.
#[test]
fn accumulation_gives_the_mean_gradient() {
    on_every_gpu("gradient accumulation", |gpu| {
        let mut rng = Rng::new(29);
        let n = 1000;
        let parts: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(n, -2.0, 2.0)).collect();
        let sum = Tensor::from_slice(gpu, &[10, 100], &rng.vec(n, -9.0, 9.0)).unwrap();
        for (j, part) in parts.iter().enumerate() {
            let g = Tensor::from_slice(gpu, &[10, 100], part).unwrap();
            accumulate_blocking(gpu, &sum, &g, 1.0 / 3.0, j == 0).unwrap();
        }
        let want: Vec<f64> = (0..n)
            .map(|i| parts.iter().map(|p| f64::from(p[i])).sum::<f64>() / 3.0)
            .collect();
        assert_within(
            "mean of three",
            &sum.to_vec_blocking(gpu).unwrap(),
            &want,
            Tolerance {
                abs: 1e-6,
                rel: 1e-6,
            },
        );
        let other = Tensor::zeros(gpu, &[1000]).unwrap();
        assert!(matches!(
            accumulate_blocking(gpu, &sum, &other, 1.0, false),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            accumulate_blocking(gpu, &sum, &sum, f32::NAN, false),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn five_steps_match_the_reference() {
    on_every_gpu("adamw five steps", |gpu| {
        let mut rng = Rng::new(13);
        let mut init: Vec<Vec<f32>> = PARAMS
            .iter()
            .map(|(shape, _)| rng.vec(len(shape), -1.0, 1.0))
            .collect();
        // λ: one just above 0 (clamped at step 1), one at 0, one well above.
        init[4] = vec![0.001, 0.0, 0.5];
        let params = upload(gpu, &init);
        let opts = AdamWOptions::default();
        let mut gpu_opt = AdamW::new(gpu, PARAMS, opts).unwrap();
        let lens: Vec<(usize, ParamGroup)> = PARAMS.iter().map(|(s, g)| (len(s), *g)).collect();
        let mut ref_opt = AdamWRef::new(&lens, opts).unwrap();
        let mut want: Vec<Vec<f64>> = init
            .iter()
            .map(|v| v.iter().map(|&x| f64::from(x)).collect())
            .collect();
        // Global norms ≈ 34·a: clipped at steps 0, 2 and 4, not at 1 and 3.
        let scales = [2.0, 0.01, 0.5, 0.005, 1.0];
        for (k, &a) in scales.iter().enumerate() {
            let g = grads(&mut rng, a);
            let g_gpu = upload(gpu, &g);
            let lr = lr_at(25 * k, 200, 0.1);
            gpu_opt
                .step_blocking(gpu, &refs(&params), &refs(&g_gpu), lr)
                .unwrap();
            let g_ref: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
            let norm = ref_opt.step(&mut want, &g_ref, lr).unwrap();
            assert_eq!(norm > 1.0, k % 2 == 0, "step {k}: norm {norm}");
            let got_norm = gpu_opt.last_grad_norm_blocking(gpu).unwrap();
            assert_near(
                &format!("norm at step {k}"),
                f64::from(got_norm),
                norm,
                Tolerance::SPEC,
            );
        }
        assert_eq!(gpu_opt.steps(), 5);
        for (i, p) in params.iter().enumerate() {
            let got = p.to_vec_blocking(gpu).unwrap();
            assert_within(&format!("param {i}"), &got, &want[i], Tolerance::SPEC);
            let (m, v) = gpu_opt.moments(i).unwrap();
            let m = m.to_vec_blocking(gpu).unwrap();
            let v = v.to_vec_blocking(gpu).unwrap();
            assert_within(&format!("m {i}"), &m, &ref_opt.m[i], Tolerance::SPEC);
            assert_within(&format!("v {i}"), &v, &ref_opt.v[i], Tolerance::SPEC);
        }
        // λ never goes below 0; the two that start at or near 0 end exactly there.
        let lambda = params[4].to_vec_blocking(gpu).unwrap();
        assert_eq!(&lambda[..2], &[0.0, 0.0]);
        assert!(lambda[2] > 0.0 && lambda[2] < 0.5, "λ = {lambda:?}");
        assert!(want[4].iter().all(|&x| x >= 0.0));
    });
}

/// After one step, `m = (1 − β1)·g·s`: the clip scale `s` is visible there.
#[test]
fn clip_engages_only_above_the_max_norm() {
    on_every_gpu("adamw clip", |gpu| {
        let n: usize = PARAMS.iter().map(|(s, _)| len(s)).sum();
        let cases = [
            // (value of every gradient, clip?, the scale expected)
            (4.0 / (n as f32).sqrt(), true, 0.25),
            (0.5 / (n as f32).sqrt(), true, 1.0),
            (4.0 / (n as f32).sqrt(), false, 1.0),
        ];
        for (c, clip, scale) in cases {
            let opts = AdamWOptions {
                max_grad_norm: clip.then_some(1.0),
                ..AdamWOptions::default()
            };
            let mut opt = AdamW::new(gpu, PARAMS, opts).unwrap();
            let zeros: Vec<Vec<f32>> = PARAMS.iter().map(|(s, _)| vec![0.0; len(s)]).collect();
            let params = upload(gpu, &zeros);
            let g: Vec<Vec<f32>> = PARAMS.iter().map(|(s, _)| vec![c; len(s)]).collect();
            let g_gpu = upload(gpu, &g);
            opt.step_blocking(gpu, &refs(&params), &refs(&g_gpu), 1e-3)
                .unwrap();
            let norm = f64::from(c) * (n as f64).sqrt();
            assert_near(
                "norm",
                f64::from(opt.last_grad_norm_blocking(gpu).unwrap()),
                norm,
                Tolerance::SPEC,
            );
            for i in 0..PARAMS.len() {
                let m = opt.moments(i).unwrap().0.to_vec_blocking(gpu).unwrap();
                let want = vec![0.1 * f64::from(c) * scale; m.len()];
                let what = format!("m {i}, |g| = {norm:.3}, clip {clip}");
                assert_within(&what, &m, &want, Tolerance::SPEC);
            }
        }
    });
}

#[test]
fn the_norm_is_the_same_bits_run_to_run() {
    on_every_gpu("adamw norm bits", |gpu| {
        let mut rng = Rng::new(5);
        let opt = AdamW::new(gpu, PARAMS, AdamWOptions::default()).unwrap();
        let g = grads(&mut rng, 3.0);
        let g_gpu = upload(gpu, &g);
        let first = opt.grad_norm_blocking(gpu, &refs(&g_gpu)).unwrap();
        for _ in 0..4 {
            let again = opt.grad_norm_blocking(gpu, &refs(&g_gpu)).unwrap();
            assert_eq!(again.to_bits(), first.to_bits());
        }
        let want = g
            .iter()
            .flatten()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        assert_near("norm", f64::from(first), want, Tolerance::SPEC);
        // A step reduces the same way.
        let mut opt = opt;
        let params = upload(gpu, &g);
        opt.step_blocking(gpu, &refs(&params), &refs(&g_gpu), 1e-3)
            .unwrap();
        let stepped = opt.last_grad_norm_blocking(gpu).unwrap();
        assert_eq!(stepped.to_bits(), first.to_bits());
    });
}

/// A tensor of `values` written straight into a GPU buffer, NaN and ±Inf
/// included: the way a kernel's non-finite output reaches AdamW
/// (`Tensor::from_slice` refuses them at upload).
fn raw_tensor(gpu: &Gpu, shape: &[usize], values: &[f32]) -> Tensor {
    let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("raw gradient"),
        size: (values.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(values));
    Tensor::from_buffer(gpu, buffer, shape).unwrap()
}

/// A step whose gradients hold NaN or ±Inf (a blown-up loss) changes no
/// parameter and no moment: the GPU skips it on the norm, which then reads
/// non-finite. The next finite step updates again.
#[test]
fn a_non_finite_gradient_skips_the_step() {
    on_every_gpu("adamw non-finite step", |gpu| {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut rng = Rng::new(17);
            let init: Vec<Vec<f32>> = PARAMS
                .iter()
                .map(|(shape, _)| rng.vec(len(shape), 0.1, 1.0))
                .collect();
            let params = upload(gpu, &init);
            let mut opt = AdamW::new(gpu, PARAMS, AdamWOptions::default()).unwrap();
            let g = upload(gpu, &grads(&mut rng, 0.5));
            opt.step_blocking(gpu, &refs(&params), &refs(&g), 1e-2)
                .unwrap();
            let snapshot = |opt: &AdamW| -> Vec<Vec<f32>> {
                let mut all: Vec<Vec<f32>> = params
                    .iter()
                    .map(|p| p.to_vec_blocking(gpu).unwrap())
                    .collect();
                for i in 0..PARAMS.len() {
                    let (m, v) = opt.moments(i).unwrap();
                    all.push(m.to_vec_blocking(gpu).unwrap());
                    all.push(v.to_vec_blocking(gpu).unwrap());
                }
                all
            };
            let before = snapshot(&opt);

            let mut values = grads(&mut rng, 0.5);
            values[2][1234] = bad;
            let mut g: Vec<Tensor> = upload(gpu, &values);
            g[2] = raw_tensor(gpu, PARAMS[2].0, &values[2]);
            opt.step_blocking(gpu, &refs(&params), &refs(&g), 1e-2)
                .unwrap();
            let norm = opt.last_grad_norm_blocking(gpu).unwrap();
            assert!(!norm.is_finite(), "{bad}: the norm reads {norm}");
            let after = snapshot(&opt);
            for (k, (a, b)) in before.iter().zip(&after).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{bad}: tensor {k} (parameters, then m and v) changed");
            }

            // A finite step afterwards moves the parameters again.
            let g = upload(gpu, &grads(&mut rng, 0.5));
            opt.step_blocking(gpu, &refs(&params), &refs(&g), 1e-2)
                .unwrap();
            let moved = snapshot(&opt);
            assert!(
                moved[0] != before[0],
                "{bad}: the next finite step did not update"
            );
        }
    });
}

/// `step_guarded` with finite gradients: a finite guard applies the step
/// as `step` does, bit for bit; a NaN or ±Inf guard (a blown-up loss whose
/// gradients happen to be finite) skips it on the GPU, and the norm reads
/// the guard.
#[test]
fn a_non_finite_guard_skips_the_step() {
    on_every_gpu("adamw guard", |gpu| {
        let mut rng = Rng::new(19);
        let init: Vec<Vec<f32>> = PARAMS
            .iter()
            .map(|(shape, _)| rng.vec(len(shape), 0.1, 1.0))
            .collect();
        let values = grads(&mut rng, 0.5);
        let (plain, guarded) = (upload(gpu, &init), upload(gpu, &init));
        let g = upload(gpu, &values);
        let mut a = AdamW::new(gpu, PARAMS, AdamWOptions::default()).unwrap();
        let mut b = AdamW::new(gpu, PARAMS, AdamWOptions::default()).unwrap();
        let finite = raw_tensor(gpu, &[1], &[2.5]);
        a.step_blocking(gpu, &refs(&plain), &refs(&g), 1e-2)
            .unwrap();
        pollster::block_on(b.step_guarded(gpu, &refs(&guarded), &refs(&g), 1e-2, &finite)).unwrap();
        let read = |ts: &[Tensor]| -> Vec<Vec<u32>> {
            ts.iter()
                .map(|t| {
                    t.to_vec_blocking(gpu)
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                })
                .collect()
        };
        assert_eq!(
            read(&plain),
            read(&guarded),
            "a finite guard changes nothing"
        );
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let before = read(&guarded);
            let guard = raw_tensor(gpu, &[1], &[bad]);
            pollster::block_on(b.step_guarded(gpu, &refs(&guarded), &refs(&g), 1e-2, &guard))
                .unwrap();
            assert_eq!(
                read(&guarded),
                before,
                "{bad}: the guarded step changed the parameters"
            );
            let norm = b.last_grad_norm_blocking(gpu).unwrap();
            assert_eq!(
                norm.to_bits(),
                bad.to_bits(),
                "{bad}: the norm reads {norm}"
            );
        }
    });
}

#[test]
fn bad_inputs_are_typed_errors_before_any_gpu_work() {
    on_every_gpu("adamw bad inputs", |gpu| {
        let shape = |r: Result<AdamW, Error>| matches!(r, Err(Error::Shape(_)));
        let invalid = |r: Result<AdamW, Error>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(shape(AdamW::new(gpu, &[], AdamWOptions::default())));
        assert!(shape(AdamW::new(
            gpu,
            &[(&[3, 0], ParamGroup::Decayed)],
            AdamWOptions::default()
        )));
        assert!(invalid(AdamW::new(
            gpu,
            PARAMS,
            AdamWOptions {
                eps: f32::NAN,
                ..AdamWOptions::default()
            }
        )));
        assert!(invalid(AdamW::new(
            gpu,
            PARAMS,
            AdamWOptions {
                beta1: 1.5,
                ..AdamWOptions::default()
            }
        )));

        let mut rng = Rng::new(1);
        let mut opt = AdamW::new(gpu, PARAMS, AdamWOptions::default()).unwrap();
        let init = grads(&mut rng, 1.0);
        let params = upload(gpu, &init);
        let g_gpu = upload(gpu, &grads(&mut rng, 1.0));
        let (p, g) = (refs(&params), refs(&g_gpu));
        let wrong_shape = Tensor::zeros(gpu, &[13, 7]).unwrap();
        let mut swapped = g.clone();
        swapped[0] = &wrong_shape;
        let nan = Tensor::from_slice(gpu, &[5], &[0.0, 1.0, f32::NAN, 0.0, 0.0]).unwrap();
        let mut with_nan = g.clone();
        with_nan[3] = &nan;

        let is = |r: saobp::Result<()>, want: &str| {
            let e = r.expect_err(want);
            let name = match e {
                Error::Shape(_) => "shape",
                Error::InvalidArgument(_) => "invalid",
                Error::NonFinite { .. } => "non-finite",
                ref other => panic!("{want}: unexpected {other:?}"),
            };
            assert_eq!(name, want, "{e}");
        };
        is(opt.step_blocking(gpu, &p[..4], &g[..4], 1e-3), "shape");
        is(opt.step_blocking(gpu, &p, &g[..4], 1e-3), "shape");
        is(opt.step_blocking(gpu, &p, &swapped, 1e-3), "shape");
        is(opt.step_blocking(gpu, &p, &with_nan, 1e-3), "non-finite");
        is(opt.step_blocking(gpu, &p, &g, f64::NAN), "invalid");
        is(opt.step_blocking(gpu, &p, &g, -1e-3), "invalid");
        is(opt.step_blocking(gpu, &p, &g, 1e300), "invalid");
        assert!(matches!(
            opt.grad_norm_blocking(gpu, &swapped),
            Err(Error::Shape(_))
        ));
        // Nothing ran: no step counted, the parameters and the norm untouched.
        assert_eq!(opt.steps(), 0);
        assert_eq!(opt.last_grad_norm_blocking(gpu).unwrap(), 0.0);
        for (t, v) in params.iter().zip(&init) {
            assert_eq!(&t.to_vec_blocking(gpu).unwrap(), v);
        }
        assert!(opt.moments(PARAMS.len()).is_none());
    });
}
