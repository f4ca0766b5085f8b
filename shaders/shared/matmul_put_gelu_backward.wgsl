// put() for shared/matmul_store.wgsl with the GELU backward fused in: the
// product is dL/d gelu(h) (the MLP projection's dy·W^T), and what is stored
// is dL/dh = product * gelu'(pre + bias[col]), as gpt.wgsl's gelu_backward
// computes it, without that kernel's pass. gelu_grad comes from
// shared/gelu.wgsl.

@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> pre: array<f32>;

fn put(i: u32, col: u32, x: f32) {
    c[i] = x * gelu_grad(pre[i] + bias[col]);
}
