//! The library on your own wgpu device and buffers: a caller (a game engine,
//! another ML library) opens the device, fills `q`, `k` and `v` with a
//! compute shader of its own, hands the buffers to the library without a
//! copy, and reads SAOBP's output back through its own staging buffer.
//!
//! `cargo run --release --example own_device`

use saobp::{attention_blocking, AttentionOptions, Gpu, Lambda, Tensor};

/// The caller's kernel: writes `sin(0.37·i + phase)` into its buffer.
const FILL: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> phase: vec4<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&out)) {
        out[id.x] = sin(0.37 * f32(id.x) + phase.x);
    }
}
"#;

fn main() -> saobp::Result<()> {
    // Everything up to `Gpu::from_device` is the caller's own wgpu code.
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("an adapter (on Linux without a GPU: apt-get install mesa-vulkan-drivers)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a device");

    let shape = [1, 2, 16, 8]; // [B, H, N, D]
    let len: usize = shape.iter().product();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let fill = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("fill"),
        layout: None,
        module: &device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("fill"),
            source: wgpu::ShaderSource::Wgsl(FILL.into()),
        }),
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    let buffers: Vec<wgpu::Buffer> = [0.0f32, 1.0, 2.0]
        .iter()
        .map(|&phase| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("caller's input"),
                size: (len * 4) as u64,
                usage,
                mapped_at_creation: false,
            });
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("phase"),
                size: 16,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&uniform, 0, bytemuck::cast_slice(&[phase, 0.0, 0.0, 0.0]));
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &fill.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: uniform.as_entire_binding(),
                    },
                ],
            });
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&fill);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(len.div_ceil(64) as u32, 1, 1);
            drop(pass);
            buffer
        })
        .collect();
    queue.submit([encoder.finish()]);

    // The library on the same device: no new device, no copies of the inputs,
    // and the caller's error handler and device-lost callback left alone.
    let gpu = Gpu::from_device(device.clone(), queue.clone())?;
    println!("adapter: {}", gpu.adapter());
    let [q, k, v] = [0, 1, 2].map(|i| Tensor::from_buffer(&gpu, buffers[i].clone(), &shape));
    let opts = AttentionOptions {
        causal: true,
        lambda: Lambda::Scalar(0.5),
        metrics: true,
        ..Default::default()
    };
    let out = attention_blocking(&gpu, &q?, &k?, &v?, &opts)?;

    // Back to the caller's code: the output's buffer, read through the
    // caller's own staging buffer.
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's staging"),
        size: (len * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(out.output.buffer(), 0, &staging, 0, (len * 4) as u64);
    queue.submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("mapped"));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("the copy finishes");
    let view = staging
        .get_mapped_range(..)
        .expect("the staging buffer is mapped");
    let o: Vec<f32> = bytemuck::cast_slice(&view).to_vec();
    println!("O[0, 0, 0, ..4] = {:?}", &o[..4]);
    if let Some(r) = out.metrics.and_then(|m| m.refined) {
        println!("GTD of R: {:.4}", r.overall().gtd);
    }
    Ok(())
}
