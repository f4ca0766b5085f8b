// Shared by the texture-panel matmul kernels: the host puts this in front of
// matmul_pack.wgsl, matmul_texture.wgsl and matmul_texture_subgroup.wgsl
// (WGSL has no includes). It holds their common parameters, where a texel of
// a panel texture lies, and for the multiply kernels their bindings and the
// place of a group of 8 invocations; the store of C, with the bindings it
// writes (binding 3 and on), comes from shared/matmul_put*.wgsl and
// shared/matmul_store.wgsl (or one of shared/matmul_store_split_qkv.wgsl,
// shared/matmul_store_merge_heads.wgsl and shared/matmul_store_texels.wgsl), put
// after this. The pack kernel binds its own
// resources at bindings 1 and 2; no entry point uses both sets.

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
    // ceil(M / block_rows): A panels (blocks of rows of C) per matrix.
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
    // The split-heads store only (shared/matmul_store_split_qkv.wgsl): heads
    // H and tokens per sequence T.
    split_heads: u32,
    split_seq: u32,
    // The texels store only (shared/matmul_store_texels.wgsl): log2 of the
    // rows of one layer of C's texture.
    c_layer_shift: u32,
    // The heads' merge only (shared/matmul_store_merge_heads.wgsl): parts of
    // a token row, and this product's part.
    merge_parts: u32,
    merge_part: u32,
    // Rows of C per group: 32 for matmul_linear_subgroup, 16 elsewhere (a
    // packed A panel is 16 rows).
    block_rows: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var a_panels: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var b_panels: texture_storage_2d_array<rgba32float, read>;

// This group's place: its batch item, A panel and B panel, or `ok = false`
// past the edge. A group is 8 invocations computing a block of block_rows
// rows of C times one B panel; a workgroup holds 8 groups, group_rows along
// M.
struct Place {
    ok: bool,
    batch: u32,
    a_first: u32,
    b_first: u32,
    row0: u32,
    col0: u32,
}

fn place(tile: u32, group: u32) -> Place {
    var out: Place;
    let tiles_per_matrix = p.tiles_m * p.tiles_n;
    if (tile >= tiles_per_matrix * p.batch) {
        out.ok = false;
        return out;
    }
    let batch = tile / tiles_per_matrix;
    let t = tile % tiles_per_matrix;
    // Consecutive groups share a B panel, which then stays in cache.
    let rb = (t / p.tiles_n) * p.group_rows + group % p.group_rows;
    let cb = (t % p.tiles_n) * (8u / p.group_rows) + group / p.group_rows;
    out.ok = rb < p.row_blocks && cb < p.col_blocks;
    out.batch = batch;
    let ab = select(batch, 0u, p.a_batch_stride == 0u);
    let bb = select(batch, 0u, p.b_batch_stride == 0u);
    out.a_first = (ab * p.row_blocks + rb) * p.k4 * 16u;
    out.b_first = (bb * p.col_blocks + cb) * p.k4 * 4u * p.panel_texels;
    out.row0 = rb * p.block_rows;
    out.col0 = cb * p.panel_texels * 4u;
    return out;
}
