// Packs op(A) or op(B) of a batched matrix product into contiguous per-tile
// panels of a 128-texel-wide rgba32float 2D-array texture, for the texture
// matmul kernels (matmul_texture.wgsl, matmul_texture_subgroup.wgsl), which
// read them as read-only storage textures.
//
// Transposes, batch strides (0 broadcasts) and ragged edges are all handled
// here, so the multiply kernels only see full, zero-padded panels:
//   A panel (16 rows of op(A)): for each group of 4 k, 16 texels, one per row,
//     each holding A[row, 4kc .. 4kc + 4].
//   B panel (4 * panel_texels columns of op(B)): for each k, panel_texels
//     texels, each holding B[k, 4 consecutive columns].
// Texel i of the texture is at x = i % 128, row i / 128, rows filling one
// layer after another.
//
// Versions:
//   pack  v1: one invocation per texel, four masked loads from the buffer.
//
// Parameters, texel placement (and for the multiply kernels, bindings, group
// placement and the store of C) come from shared/matmul_panels.wgsl, put in front.

@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var panels: texture_storage_2d_array<rgba32float, write>;

// op(A)[batch item ab][row][kk], 0 outside the matrix.
fn a_at(ab: u32, row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    let base = ab * p.a_batch_stride;
    if (p.trans_a != 0u) {
        return src[base + kk * p.m + row];
    }
    return src[base + row * p.k + kk];
}

// op(B)[batch item bb][kk][col], 0 outside the matrix.
fn b_at(bb: u32, kk: u32, col: u32) -> f32 {
    if (col >= p.n || kk >= p.k) {
        return 0.0;
    }
    let base = bb * p.b_batch_stride;
    if (p.trans_b != 0u) {
        return src[base + col * p.k + kk];
    }
    return src[base + kk * p.n + col];
}

@compute @workgroup_size(64)
fn pack(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = element_id(wid, nwg, lid);
    if (t >= p.texels) {
        return;
    }
    var v: vec4<f32>;
    if (p.operand == 0u) {
        let r = t % 16u;
        let kc = (t / 16u) % p.k4;
        let rest = t / 16u / p.k4;
        let row = (rest % p.row_blocks) * 16u + r;
        let ab = rest / p.row_blocks;
        let kk = kc * 4u;
        v = vec4<f32>(a_at(ab, row, kk), a_at(ab, row, kk + 1u), a_at(ab, row, kk + 2u), a_at(ab, row, kk + 3u));
    } else {
        let k_rows = p.k4 * 4u;
        let tt = t % p.panel_texels;
        let kk = (t / p.panel_texels) % k_rows;
        let rest = t / p.panel_texels / k_rows;
        let col = (rest % p.col_blocks) * p.panel_texels * 4u + tt * 4u;
        let bb = rest / p.col_blocks;
        v = vec4<f32>(b_at(bb, kk, col), b_at(bb, kk, col + 1u), b_at(bb, kk, col + 2u), b_at(bb, kk, col + 3u));
    }
    let at = texel(t, select(p.b_layer_shift, p.a_layer_shift, p.operand == 0u));
    textureStore(panels, at.xy, at.z, v);
}
