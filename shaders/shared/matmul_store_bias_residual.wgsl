// The store of the texture-family matmul kernels with a projection's bias
// and the residual add fused in, for the linear kernels' epilogue variants:
// C = residual + (alpha * product + bias[col]), in the order of gpt.wgsl's
// bias_residual, so the values are the same bits as the product followed by
// that kernel, without its pass over C.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;

// Writes row `row` of C[batch], columns col .. col + 4, masked at the edges.
fn store(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let base = batch * p.m * p.n + row * p.n;
    let s = p.alpha * v;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (col + j < p.n) {
            c[base + col + j] = residual[base + col + j] + (s[j] + bias[col + j]);
        }
    }
}
