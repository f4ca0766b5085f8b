// The store of the texture-family matmul kernels into a texture instead of
// a buffer: texel i of c_texels holds floats 4i .. 4i + 4 of C as a buffer
// would (placed by texel() of common.wgsl), for a kernel that reads C as
// texels next (the attention scores, read by softmax.wgsl's
// softmax_texture). N is a multiple of 4, so a lane's 4 columns are one
// texel: one texel store where the buffer store writes 4 values one lane
// at a time.

@group(0) @binding(3) var c_texels: texture_storage_2d_array<rgba32float, write>;

fn store(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let n4 = p.n / 4u;
    let i = batch * p.m * n4 + row * n4 + col / 4u;
    let at = texel(i, p.c_layer_shift);
    textureStore(c_texels, at.xy, at.z, p.alpha * v);
}
