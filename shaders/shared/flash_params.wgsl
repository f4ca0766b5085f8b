// Shared by flash.wgsl and flash_subgroup.wgsl (the host puts it in front):
// the parameters of the streaming kernels, mirrored by FlashParams in
// src/kernels/flash.rs, and the causal end of a block's keys.

struct Params {
    matrices: u32,
    n: u32,
    d: u32,
    dv: u32,
    heads: u32,
    causal: u32,
    has_mask: u32,
    scale: f32,
    // Workgroups per matrix: ceil(n / rows per workgroup).
    groups: u32,
    // The keys of this dispatch: [key_begin, key_end).
    key_begin: u32,
    key_end: u32,
    // The texture-subgroup kernels: log2 of the rows of one layer of each
    // panel texture.
    layer_shift: u32,
    // flash_pack only: the columns of the matrix it packs, and its texels.
    pack_width: u32,
    pack_texels: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The end of the keys this dispatch gives a block of `rows` rows from i0:
// under causal masking no row of it attends past i0 + rows - 1.
fn key_end_of(i0: u32, rows: u32) -> u32 {
    return select(p.key_end, min(p.key_end, i0 + rows), p.causal != 0u);
}

