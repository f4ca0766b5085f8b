// The store of the texture-family matmul kernels: the masked loop over a
// lane's 4 columns, calling put() for each value. The host puts one of
// shared/matmul_put*.wgsl (the bindings C goes to and what put() writes)
// in front of this, so the same kernel text builds with an epilogue fused
// into its store or without.

// Writes alpha * v to C[batch][row][col .. col + 4], masked at the edges.
fn store(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let base = batch * p.m * p.n + row * p.n;
    let s = p.alpha * v;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (col + j < p.n) {
            put(base + col + j, col + j, s[j]);
        }
    }
}
