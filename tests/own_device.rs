//! The library on a device and buffers the caller opened: `Gpu::from_device`
//! leaves the caller's error handler in place and still reports its own
//! errors as typed errors; `Tensor::from_buffer` wraps a caller's buffer
//! without a copy, and the caller's buffer stays theirs.

mod common;

use std::sync::{Arc, Mutex};

use common::{assert_within, on_every_gpu, Rng, Tolerance};
use saobp::reference::{self, RefOptions};
use saobp::{attention_blocking, AttentionOptions, Error, Gpu, Lambda, Mode, Tensor};

/// A device of `gpu`'s adapter, opened here as a caller would, with an
/// uncaptured-error handler of the caller's that records what reaches it.
fn callers_device(gpu: &Gpu) -> (wgpu::Device, wgpu::Queue, Arc<Mutex<Vec<String>>>) {
    callers_device_with(gpu, wgpu::Features::empty())
}

/// [`callers_device`] with those of `features` the adapter has.
fn callers_device_with(
    gpu: &Gpu,
    features: wgpu::Features,
) -> (wgpu::Device, wgpu::Queue, Arc<Mutex<Vec<String>>>) {
    let adapter = gpu
        .wgpu_adapter()
        .expect("the test's contexts own their adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        required_features: adapter.features() & features,
        ..Default::default()
    }))
    .expect("a second device on the adapter");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        s.lock().unwrap().push(e.to_string());
    }));
    (device, queue, seen)
}

/// A buffer of the caller's holding `data`.
fn callers_buffer(device: &wgpu::Device, queue: &wgpu::Queue, data: &[f32]) -> wgpu::Buffer {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's"),
        size: (data.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
    buffer
}

#[test]
fn attention_runs_on_the_callers_device_and_buffers() {
    on_every_gpu("own device", |shared| {
        let (device, queue, seen) = callers_device(shared);
        let gpu = Gpu::from_device(device.clone(), queue.clone()).unwrap();
        assert_eq!(gpu.adapter().name, shared.adapter().name);
        assert_eq!(gpu.limits(), &device.limits());
        assert!(gpu.wgpu_adapter().is_none());

        let shape = [1, 2, 5, 4];
        let mut rng = Rng::new(41);
        let [q, k, v] = [0, 1, 2].map(|_| rng.vec(40, -1.5, 1.5));
        let [qb, kb, vb] = [&q, &k, &v].map(|x| callers_buffer(&device, &queue, x));
        let [qt, kt, vt] = [qb, kb, vb].map(|b| Tensor::from_buffer(&gpu, b, &shape).unwrap());
        let lambda = Lambda::PerHead(vec![0.0, 0.7]);
        let opts = AttentionOptions {
            causal: true,
            lambda: lambda.clone(),
            mode: Mode::Fused,
            ..Default::default()
        };
        let out = attention_blocking(&gpu, &qt, &kt, &vt, &opts).unwrap();
        let want = reference::saobp(
            &q,
            &k,
            &v,
            shape,
            4,
            &RefOptions {
                causal: true,
                ..Default::default()
            },
            &[0.0, 0.7],
        )
        .unwrap();
        let got = out.output.to_vec_blocking(&gpu).unwrap();
        assert_within(
            "O on the caller's device",
            &got,
            &want.output,
            Tolerance::SPEC,
        );

        // The output's buffer, handed out, works in the caller's own commands.
        let copy = callers_buffer(&device, &queue, &[0.0; 40]);
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(out.output.buffer(), 0, &copy, 0, 160);
        queue.submit([encoder.finish()]);
        let back = Tensor::from_buffer(&gpu, copy, &shape).unwrap();
        assert_eq!(back.to_vec_blocking(&gpu).unwrap(), got);

        // Taken for good, the output's buffer is never handed to a later
        // tensor of the library's, which would overwrite it.
        let shared = out.output.clone();
        let out_tensor = out.output.into_buffer().unwrap_err();
        drop(shared);
        let taken = out_tensor.into_buffer().unwrap();
        for _ in 0..3 {
            let scratch = Tensor::zeros(&gpu, &shape).unwrap();
            assert_eq!(scratch.to_vec_blocking(&gpu).unwrap(), vec![0.0; 40]);
        }
        let kept = Tensor::from_buffer(&gpu, taken, &shape).unwrap();
        assert_eq!(kept.to_vec_blocking(&gpu).unwrap(), got);

        // The library's own mistakes come back typed, not through the
        // caller's handler, which the library left in place.
        let unreadable = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no COPY_SRC"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let t = Tensor::from_buffer(&gpu, unreadable, &[4]).unwrap();
        let err = t.to_vec_blocking(&gpu).unwrap_err();
        assert!(matches!(err, Error::Validation(_)), "{err:?}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
        // The caller's own uncaptured error still reaches the caller's handler.
        drop(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid usage"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        }));
        assert_eq!(seen.lock().unwrap().len(), 1);
    });
}

#[test]
fn a_callers_buffer_is_checked_and_never_pooled() {
    on_every_gpu("from_buffer", |shared| {
        let (device, queue, _) = callers_device(shared);
        let gpu = Gpu::from_device(device.clone(), queue.clone()).unwrap();
        let buffer = callers_buffer(&device, &queue, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        let small = Tensor::from_buffer(&gpu, buffer.clone(), &[7]).unwrap_err();
        assert!(
            matches!(&small, Error::Shape(m) if m.contains("needs 28 bytes but the buffer has 24")),
            "{small:?}"
        );
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        });
        let err = Tensor::from_buffer(&gpu, uniform, &[4]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("needs STORAGE")),
            "{err:?}"
        );
        let huge = Tensor::from_buffer(&gpu, buffer.clone(), &[1 << 20, 1 << 13]).unwrap_err();
        assert!(matches!(huge, Error::Limit { .. }), "{huge:?}");

        // A view of the first values of a larger buffer, in any shape.
        let t = Tensor::from_buffer(&gpu, buffer.clone(), &[2, 2]).unwrap();
        assert_eq!(t.to_vec_blocking(&gpu).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let before = (gpu.allocations(), gpu.pooled_bytes());
        drop(t);
        assert_eq!((gpu.allocations(), gpu.pooled_bytes()), before);
        // Still the caller's: a fresh tensor of the library's own does not
        // receive it, and the caller's data is intact.
        let own = Tensor::zeros(&gpu, &[6]).unwrap();
        assert_eq!(own.to_vec_blocking(&gpu).unwrap(), [0.0; 6]);
        let again = Tensor::from_buffer(&gpu, buffer, &[6]).unwrap();
        assert_eq!(
            again.to_vec_blocking(&gpu).unwrap(),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    });
}

/// A caller's buffer with `STORAGE` only (no `COPY_SRC`): the matmul cannot
/// copy it into a texture (where a texture kernel runs, it copies the
/// library's own tensors), so it packs it, and the product is right.
#[test]
fn matmul_of_storage_only_buffers_packs_them() {
    on_every_gpu("storage-only matmul", |shared| {
        let (device, queue, seen) = callers_device_with(shared, wgpu::Features::SUBGROUP);
        let gpu = Gpu::from_device(device.clone(), queue.clone()).unwrap();
        let mut rng = Rng::new(31);
        let (m, k, n) = (72, 64, 80);
        let (a, b) = (rng.vec(m * k, -1.0, 1.0), rng.vec(k * n, -1.0, 1.0));
        let storage_only = |data: &[f32]| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("caller's, storage only"),
                size: (data.len() * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
            buffer
        };
        let ta = Tensor::from_buffer(&gpu, storage_only(&a), &[m, k]).unwrap();
        let tb = Tensor::from_buffer(&gpu, storage_only(&b), &[k, n]).unwrap();
        let opts = saobp::MatmulOptions::default();
        let want = reference::matmul(&a, &[m, k], &b, &[k, n], &opts).unwrap();
        let before = gpu.work();
        let c = saobp::matmul_blocking(&gpu, &ta, &tb, &opts).unwrap();
        assert_within(
            "storage-only matmul",
            &c.to_vec_blocking(&gpu).unwrap(),
            &want,
            Tolerance::matmul(k),
        );
        let ran = gpu.work().since(&before).kernels;
        assert!(
            !ran.iter().any(|(l, _)| l.starts_with("matmul_linear")),
            "{ran:?}"
        );
        // The library's own tensors have COPY_SRC: copied wherever a
        // texture kernel multiplies them.
        let (oa, ob) = (
            Tensor::from_slice(&gpu, &[m, k], &a).unwrap(),
            Tensor::from_slice(&gpu, &[k, n], &b).unwrap(),
        );
        let before = gpu.work();
        let c = saobp::matmul_blocking(&gpu, &oa, &ob, &opts).unwrap();
        assert_within(
            "matmul",
            &c.to_vec_blocking(&gpu).unwrap(),
            &want,
            Tolerance::matmul(k),
        );
        let ran = gpu.work().since(&before).kernels;
        let texture = ran
            .iter()
            .any(|(l, _)| l.starts_with("matmul_texture") || l.starts_with("matmul_linear"));
        assert_eq!(
            ran.iter().any(|(l, _)| l.starts_with("matmul_linear")),
            texture,
            "{ran:?}"
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
    });
}
