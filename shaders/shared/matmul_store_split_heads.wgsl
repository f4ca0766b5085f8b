// The store of the texture-family matmul kernels for a product whose token
// rows go into heads: C, [B*T, H*hd] (one matrix), is not written; value
// (row, col) goes to heads[((b*H + h)*T + t)*hd + d] with row = b*T + t and
// col = h*hd + d. The GPT's split_heads after its backward's dy·W_projᵀ
// (∂L/∂O into per-head rows) without that kernel's pass over C: the same
// values, moved. A lane's 4 columns lie in one head (hd a multiple of 4).

@group(0) @binding(3) var<storage, read_write> heads: array<f32>;

fn store(batch: u32, row: u32, col: u32, value: vec4<f32>) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let hd = p.n / p.split_heads;
    let h = col / hd;
    let d = col - h * hd;
    let b = row / p.split_seq;
    let t = row - b * p.split_seq;
    let at = ((b * p.split_heads + h) * p.split_seq + t) * hd + d;
    let x = p.alpha * value;
    heads[at] = x.x;
    heads[at + 1u] = x.y;
    heads[at + 2u] = x.z;
    heads[at + 3u] = x.w;
}
