// The plain put() of shared/matmul_store.wgsl: C[i] = x.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn put(i: u32, col: u32, x: f32) {
    c[i] = x;
}
