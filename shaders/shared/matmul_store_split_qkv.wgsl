// The store of the texture-family matmul kernels for a GPT's c_attn
// product, with gpt.wgsl's split_qkv fused in: C, [B*T, 3C] (one matrix),
// is not written; each value plus bias[col] goes to its place in q, k or v,
// [B, H, T, C/H], the same bits as the product followed by split_qkv,
// without that kernel's pass over C. A lane's 4 columns lie in one part and
// one head (C/H is a multiple of 4), so the place is worked out once per
// store.

@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> k: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;

fn store(batch: u32, row: u32, col: u32, value: vec4<f32>) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let width = p.n / 3u;
    let hd = width / p.split_heads;
    let part = col / width;
    let h = (col - part * width) / hd;
    let d = col - part * width - h * hd;
    let b = row / p.split_seq;
    let t = row - b * p.split_seq;
    let at = ((b * p.split_heads + h) * p.split_seq + t) * hd + d;
    let x = p.alpha * value + vec4<f32>(bias[col], bias[col + 1u], bias[col + 2u], bias[col + 3u]);
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (part == 0u) {
            q[at + j] = x[j];
        } else if (part == 1u) {
            k[at + j] = x[j];
        } else {
            v[at + j] = x[j];
        }
    }
}
