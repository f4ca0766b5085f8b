// The plain store of the texture-family matmul kernels; the host puts one of
// shared/matmul_store*.wgsl after shared/matmul_panels.wgsl, so the same
// kernel text builds with an epilogue fused into its store or without.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Writes alpha * v to C[batch][row][col .. col + 4], masked at the edges.
fn store(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let base = batch * p.m * p.n + row * p.n;
    let s = p.alpha * v;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (col + j < p.n) {
            c[base + col + j] = s[j];
        }
    }
}
