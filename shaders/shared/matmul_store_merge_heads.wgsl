// The store of the texture-family matmul kernels for per-head products
// whose heads go back into token rows: C, B·H matrices of [T, hd] (matrix
// b·H + h), is not written; value (t, d) of matrix (b, h) goes to
// merged[(b·T + t)·W + (part·H + h)·hd + d], W = parts·H·hd. The GPT's
// merge_heads (parts 1, after A·V) and merge_qkv (parts 3, after the q, k
// and v gradients' products) without their pass over C: the same values,
// moved.

@group(0) @binding(3) var<storage, read_write> merged: array<f32>;

fn store(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let b = batch / p.split_heads;
    let h = batch - b * p.split_heads;
    let width = p.merge_parts * p.split_heads * p.n;
    let at = (b * p.m + row) * width + (p.merge_part * p.split_heads + h) * p.n + col;
    let s = p.alpha * v;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (col + j < p.n) {
            merged[at + j] = s[j];
        }
    }
}
