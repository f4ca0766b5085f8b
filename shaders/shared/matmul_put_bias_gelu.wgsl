// put() for shared/matmul_store.wgsl with bias + GELU fused in:
// C = alpha * product, as the plain put writes it (the GELU backward reads
// it), and act = gelu(C + bias[col]) as gpt.wgsl's bias_gelu computes it,
// without that kernel's pass over C. gelu_parts comes from shared/gelu.wgsl.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> act: array<f32>;

fn put(i: u32, col: u32, x: f32) {
    c[i] = x;
    let h = x + bias[col];
    act[i] = h * gelu_parts(h).x;
}
