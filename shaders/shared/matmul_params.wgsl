// Shared by the storage-buffer matmul kernels (matmul.wgsl and
// matmul_tiled.wgsl; the host puts it in front of each, WGSL has no
// includes): their parameters, mirrored by `MatmulParams` in
// src/kernels/matmul.rs, and their bindings.

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    alpha: f32,
    tiles_m: u32,
    tiles_n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
