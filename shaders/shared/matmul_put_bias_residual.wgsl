// put() for shared/matmul_store.wgsl with a projection's bias and the
// residual add fused in: C = residual + (alpha * product + bias[col]), in
// the order of gpt.wgsl's bias_residual, so the values are the same bits as
// the product followed by that kernel, without its pass over C.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;

fn put(i: u32, col: u32, x: f32) {
    c[i] = residual[i] + (x + bias[col]);
}
