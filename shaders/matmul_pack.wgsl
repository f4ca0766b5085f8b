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

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    alpha: f32,
    // ceil(K / 4): texels per row of an A panel, and steps of the k loop.
    k4: u32,
    // ceil(M / 16): A panels per matrix.
    row_blocks: u32,
    // ceil(N / (4 * panel_texels)): B panels per matrix.
    col_blocks: u32,
    // Texels per k of a B panel: 8 (32 columns) or 16 (64 columns).
    panel_texels: u32,
    // Panels along M per workgroup; 8 / group_rows along N.
    group_rows: u32,
    tiles_m: u32,
    tiles_n: u32,
    // log2 of the rows of one layer of the A and of the B texture.
    a_layer_shift: u32,
    b_layer_shift: u32,
    // Pack only: 0 packs A, 1 packs B.
    operand: u32,
    // Pack only: texels to write.
    texels: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
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
    let shift = select(p.b_layer_shift, p.a_layer_shift, p.operand == 0u);
    let row = t >> 7u;
    textureStore(panels, vec2<u32>(t & 127u, row & ((1u << shift) - 1u)), row >> shift, v);
}
