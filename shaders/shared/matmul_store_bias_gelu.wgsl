// The store of the texture-family matmul kernels with bias + GELU fused in,
// for the linear kernels' epilogue variants: C = alpha * product, as the
// plain store writes it (the GELU backward reads it), and
// act = gelu(C + bias[col]) as gpt.wgsl's bias_gelu computes it, without
// that kernel's pass over C. gelu_parts comes from shared/gelu.wgsl.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> act: array<f32>;

// Writes row `row` of C[batch] and of act, columns col .. col + 4, masked at
// the edges.
fn store(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let base = batch * p.m * p.n + row * p.n;
    let s = p.alpha * v;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (col + j < p.n) {
            c[base + col + j] = s[j];
            let h = s[j] + bias[col + j];
            act[base + col + j] = h * gelu_parts(h).x;
        }
    }
}
