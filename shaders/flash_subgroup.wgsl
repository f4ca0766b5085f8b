// Flash attention and streaming SAOBP for the software adapters with
// subgroups of 8 (lavapipe): the same passes, key ranges and outputs as
// flash.wgsl, laid out for how llvmpipe runs them.
//
// Why a second layout: llvmpipe keeps a private array that is ever indexed
// by a variable (a loop counter included) in memory it reads and writes one
// lane at a time, at about a hundred cycles per access. flash.wgsl indexes
// its per-row q and O arrays inside loops over d, so its O(N^2 D)
// arithmetic ran at about 3 GFLOP/s there, whatever it read its operands
// from. Here a subgroup of 8 lanes shares a block of 8 query rows and each
// lane holds a slice of every row's columns: DQ texels of q, k, v, O, U' and
// A U' (a Slice below, a fixed-size struct),
// so that every private access has a literal index. That is why the rows
// are written out one line each instead of looped over, and why a Slice has
// room for 4 texels whose last two a 64-wide build never touches (the
// `DQ > 2u` conditions fold away when the shader compiles). The operands
// come packed in texture panels (flash_pack), four columns per texel load.
// A butterfly of subgroup shuffles sums the lanes' partial dot products and
// leaves row r's score with lane r, which owns that row's softmax state
// (max, sum, entropy term, diagonal; the log-sum-exp and c in the second
// pass) and broadcasts its per-key weights to the other lanes.
//
// Texture operands: a [rows, width] matrix, texel row * ceil(width / 4) + c4
// holding columns 4 c4 .. 4 c4 + 3 (zero past width), texel i at
// x = i % 128, row i / 128 of the 2D-array texture, layers of
// 2^layer_shift rows. Lane l holds texels l * DQ .. l * DQ + DQ - 1 of each
// row; past the row's end, zeros. U''s last column, r_k - a_k, is not in
// the slices: each lane adds its own row's sum_k A_ik (r_k - a_k) from pass
// 1's per-key stats.
//
// Versions:
//   flash_pack     v1: one invocation per texel.
//   flash_forward  v1: pass 1 of flash.wgsl v2 (with its key ranges).
//   flash_refine   v1: pass 2 of flash.wgsl v2.
//   both           v2: scores summed by a shuffle butterfly instead of a
//                  subgroupAdd per row: flash 1.6x, streaming 2x faster.
//   flash_refine   v3: pass 1's per-row stats packed too (a texel per key).
//                  v4: U''s last column summed per lane from those stats,
//                  not carried in the slices (DQ texels of U', not DQ + 1).
// DQ comes from shared/flash_sg64.wgsl or shared/flash_sg128.wgsl;
// Params from shared/flash_params.wgsl.

const ROWS: u32 = 8u;

// A lane's DQ texels of one row of q, k, v or O; t2 and t3 only when DQ = 4.
struct Slice {
    t0: vec4<f32>,
    t1: vec4<f32>,
    t2: vec4<f32>,
    t3: vec4<f32>,
}

fn slice(t0: vec4<f32>, t1: vec4<f32>, t2: vec4<f32>, t3: vec4<f32>) -> Slice {
    let wide = DQ > 2u;
    return Slice(t0, t1, select(vec4<f32>(), t2, wide), select(vec4<f32>(), t3, wide));
}

// This lane's part of a dot product of two rows.
fn sdot(a: Slice, b: Slice) -> f32 {
    var s = dot(a.t0, b.t0) + dot(a.t1, b.t1);
    if (DQ > 2u) {
        s = s + dot(a.t2, b.t2) + dot(a.t3, b.t3);
    }
    return s;
}

// x a + y b.
fn saxpby(x: f32, a: Slice, y: f32, b: Slice) -> Slice {
    var out = Slice(x * a.t0 + y * b.t0, x * a.t1 + y * b.t1, vec4<f32>(), vec4<f32>());
    if (DQ > 2u) {
        out.t2 = x * a.t2 + y * b.t2;
        out.t3 = x * a.t3 + y * b.t3;
    }
    return out;
}

// Columns of a row in texels.
fn quads(width: u32) -> u32 {
    return (width + 3u) / 4u;
}

// Texel c4 of row `row` of a packed operand whose rows are w4 texels long;
// zeros past the row.
fn load4(t: texture_storage_2d_array<rgba32float, read>, row: u32, c4: u32, w4: u32) -> vec4<f32> {
    let at = texel(row * w4 + min(c4, w4 - 1u), p.layer_shift);
    return select(vec4<f32>(), textureLoad(t, at.xy, at.z), c4 < w4);
}

// This lane's slice (from texel c0) of row `row` of a packed operand of
// `width` columns.
fn load_slice(t: texture_storage_2d_array<rgba32float, read>, row: u32, c0: u32, width: u32) -> Slice {
    let w = quads(width);
    return slice(load4(t, row, c0, w), load4(t, row, c0 + 1u, w), load4(t, row, c0 + 2u, w), load4(t, row, c0 + 3u, w));
}

// x from each lane, to every lane: element r is lane r's value.
fn from_lanes(x: f32) -> array<f32, ROWS> {
    return array<f32, ROWS>(
        subgroupBroadcast(x, 0u),
        subgroupBroadcast(x, 1u),
        subgroupBroadcast(x, 2u),
        subgroupBroadcast(x, 3u),
        subgroupBroadcast(x, 4u),
        subgroupBroadcast(x, 5u),
        subgroupBroadcast(x, 6u),
        subgroupBroadcast(x, 7u),
    );
}

// Each row's sum over the lanes, kept by the lane that owns the row: a
// butterfly that halves the rows each lane carries at each step (seven
// shuffles in all, where a subgroupAdd per row would take eight reductions).
fn own_sums(x: array<f32, ROWS>, lane: u32) -> f32 {
    let hi = (lane & 4u) != 0u;
    let y0 = select(x[0], x[4], hi) + subgroupShuffleXor(select(x[4], x[0], hi), 4u);
    let y1 = select(x[1], x[5], hi) + subgroupShuffleXor(select(x[5], x[1], hi), 4u);
    let y2 = select(x[2], x[6], hi) + subgroupShuffleXor(select(x[6], x[2], hi), 4u);
    let y3 = select(x[3], x[7], hi) + subgroupShuffleXor(select(x[7], x[3], hi), 4u);
    let mid = (lane & 2u) != 0u;
    let z0 = select(y0, y2, mid) + subgroupShuffleXor(select(y2, y0, mid), 2u);
    let z1 = select(y1, y3, mid) + subgroupShuffleXor(select(y3, y1, mid), 2u);
    let lo = (lane & 1u) != 0u;
    return select(z0, z1, lo) + subgroupShuffleXor(select(z1, z0, lo), 1u);
}

// A subgroup's block: its matrix and first row; the workgroup's 8 subgroups
// take consecutive blocks.
struct Block {
    g: u32,
    i0: u32,
}

fn block_of(wid: vec3<u32>, nwg: vec3<u32>, sg: u32) -> Block {
    let wg = linear_id(wid, nwg);
    return Block(wg / p.groups, ((wg % p.groups) * 8u + sg) * ROWS);
}

// v, the four values from column 4 c4 of a row of `width` columns, with
// those past the row's end zeroed.
fn masked4(c4: u32, width: u32, v: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(), v, vec4<u32>(4u * c4) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(width));
}

// ---- flash_pack ---------------------------------------------------------------

@group(0) @binding(1) var<storage, read> fp_src: array<f32>;
@group(0) @binding(2) var fp_panels: texture_storage_2d_array<rgba32float, write>;

@compute @workgroup_size(64)
fn flash_pack(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = element_id(wid, nwg, lid);
    if (t >= p.pack_texels) {
        return;
    }
    let w4 = quads(p.pack_width);
    let row = t / w4;
    let c0 = (t % w4) * 4u;
    var v = vec4<f32>();
    for (var c = 0u; c < 4u; c = c + 1u) {
        if (c0 + c < p.pack_width) {
            v[c] = fp_src[row * p.pack_width + c0 + c];
        }
    }
    let at = texel(t, p.layer_shift);
    textureStore(fp_panels, at.xy, at.z, v);
}

// ---- flash_forward ----------------------------------------------------------

@group(0) @binding(1) var ff_q: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var ff_k: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(3) var ff_v: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(4) var<storage, read> ff_mask: array<f32>;
// As in flash.wgsl: O [matrices * n, dv], (max, sum, entropy) and
// (a_i, r_i, lse_i, keep_i) per row, the running state between key ranges.
@group(0) @binding(5) var<storage, read_write> ff_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> ff_stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> ff_keys: array<f32>;

fn ff_keep(b: u32, j: u32) -> bool {
    return p.has_mask == 0u || ff_mask[b * p.n + j] != 0.0;
}

// Texel c4 of O's row `row`, zeros past dv.
fn ff_out4(row: u32, c4: u32) -> vec4<f32> {
    let i = row * p.dv + 4u * c4;
    let end = arrayLength(&ff_out) - 1u;
    let v = vec4<f32>(ff_out[min(i, end)], ff_out[min(i + 1u, end)], ff_out[min(i + 2u, end)], ff_out[min(i + 3u, end)]);
    return masked4(c4, p.dv, v);
}

fn ff_out_store4(row: u32, c4: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i = i + 1u) {
        let c = 4u * c4 + i;
        if (c < p.dv) {
            ff_out[row * p.dv + c] = v[i];
        }
    }
}

// Row r of block i0 of matrix g, or the block's last row past n (its values
// then take no part).
fn block_row(g: u32, i0: u32, rows: u32, r: u32) -> u32 {
    return g * p.n + i0 + min(r, rows - 1u);
}

// O's row r of the block (this lane's slice) from the last key range.
fn ff_out_slice(g: u32, i0: u32, rows: u32, r: u32, c0: u32) -> Slice {
    let row = block_row(g, i0, rows, r);
    return slice(ff_out4(row, c0), ff_out4(row, c0 + 1u), ff_out4(row, c0 + 2u), ff_out4(row, c0 + 3u));
}

// Stores this lane's slice of O's row r of the block, times `scale`.
fn ff_out_store(g: u32, i0: u32, rows: u32, r: u32, c0: u32, o: Slice, scale: f32) {
    if (r >= rows) {
        return;
    }
    let row = g * p.n + i0 + r;
    ff_out_store4(row, c0, o.t0 * scale);
    ff_out_store4(row, c0 + 1u, o.t1 * scale);
    if (DQ > 2u) {
        ff_out_store4(row, c0 + 2u, o.t2 * scale);
        ff_out_store4(row, c0 + 3u, o.t3 * scale);
    }
}

@compute @workgroup_size(64)
fn flash_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let blk = block_of(wid, nwg, sg);
    // Whole subgroups leave together, so the subgroup operations stay uniform.
    if (blk.g >= p.matrices || blk.i0 >= p.n) {
        return;
    }
    let g = blk.g;
    let i0 = blk.i0;
    let b = g / p.heads;
    let rows = min(ROWS, p.n - i0);
    let first = p.key_begin == 0u;
    let last = p.key_end == p.n;
    let kend = key_end_of(i0, rows);
    // A causal block whose keys all lie before this range: its state waits.
    if (p.key_begin >= kend && !first && !last) {
        return;
    }
    // This lane's row (its softmax state) and its texels of every row.
    let mine = lane < rows;
    let own_row = block_row(g, i0, rows, lane);
    let c0 = lane * DQ;

    var q: array<Slice, ROWS>;
    q[0] = load_slice(ff_q, block_row(g, i0, rows, 0u), c0, p.d);
    q[1] = load_slice(ff_q, block_row(g, i0, rows, 1u), c0, p.d);
    q[2] = load_slice(ff_q, block_row(g, i0, rows, 2u), c0, p.d);
    q[3] = load_slice(ff_q, block_row(g, i0, rows, 3u), c0, p.d);
    q[4] = load_slice(ff_q, block_row(g, i0, rows, 4u), c0, p.d);
    q[5] = load_slice(ff_q, block_row(g, i0, rows, 5u), c0, p.d);
    q[6] = load_slice(ff_q, block_row(g, i0, rows, 6u), c0, p.d);
    q[7] = load_slice(ff_q, block_row(g, i0, rows, 7u), c0, p.d);
    var o: array<Slice, ROWS>;
    // Running max, sum L, entropy term T and diagonal score of this lane's row.
    var m = 0.0;
    var l = 0.0;
    var t = 0.0;
    var sdiag = 0.0;
    if (!first) {
        o[0] = ff_out_slice(g, i0, rows, 0u, c0);
        o[1] = ff_out_slice(g, i0, rows, 1u, c0);
        o[2] = ff_out_slice(g, i0, rows, 2u, c0);
        o[3] = ff_out_slice(g, i0, rows, 3u, c0);
        o[4] = ff_out_slice(g, i0, rows, 4u, c0);
        o[5] = ff_out_slice(g, i0, rows, 5u, c0);
        o[6] = ff_out_slice(g, i0, rows, 6u, c0);
        o[7] = ff_out_slice(g, i0, rows, 7u, c0);
        m = ff_stats[3u * own_row];
        l = ff_stats[3u * own_row + 1u];
        t = ff_stats[3u * own_row + 2u];
        sdiag = ff_keys[4u * own_row];
    }

    for (var j = p.key_begin; j < kend; j = j + 1u) {
        if (!ff_keep(b, j)) {
            continue;
        }
        let key = g * p.n + j;
        let kv = load_slice(ff_k, key, c0, p.d);
        let vv = load_slice(ff_v, key, c0, p.dv);
        let parts = array<f32, ROWS>(
            sdot(q[0], kv),
            sdot(q[1], kv),
            sdot(q[2], kv),
            sdot(q[3], kv),
            sdot(q[4], kv),
            sdot(q[5], kv),
            sdot(q[6], kv),
            sdot(q[7], kv),
        );
        // flash.wgsl's online softmax, for this lane's row.
        let sc = p.scale * own_sums(parts, lane);
        let valid = mine && (p.causal == 0u || j <= i0 + lane);
        let fresh = l == 0.0;
        let m_new = select(max(m, sc), sc, fresh);
        // min(., 0) keeps exp finite whatever the first score was.
        let a = select(exp(min(m - m_new, 0.0)), 0.0, fresh);
        let ex = exp(sc - m_new);
        let t_new = a * (t + l * (m - m_new)) + ex * (sc - m_new);
        let alpha = from_lanes(select(1.0, a, valid));
        let e = from_lanes(select(0.0, ex, valid));
        t = select(t, t_new, valid);
        l = select(l, a * l + ex, valid);
        m = select(m, m_new, valid);
        sdiag = select(sdiag, sc, valid && j == i0 + lane);
        o[0] = saxpby(alpha[0], o[0], e[0], vv);
        o[1] = saxpby(alpha[1], o[1], e[1], vv);
        o[2] = saxpby(alpha[2], o[2], e[2], vv);
        o[3] = saxpby(alpha[3], o[3], e[3], vv);
        o[4] = saxpby(alpha[4], o[4], e[4], vv);
        o[5] = saxpby(alpha[5], o[5], e[5], vv);
        o[6] = saxpby(alpha[6], o[6], e[6], vv);
        o[7] = saxpby(alpha[7], o[7], e[7], vv);
    }

    // Before the last key range O waits unnormalized; after it, divided by L.
    let filled = l > 0.0;
    let inv = select(select(0.0, 1.0 / l, filled), 1.0, !last);
    let scale = from_lanes(inv);
    ff_out_store(g, i0, rows, 0u, c0, o[0], scale[0]);
    ff_out_store(g, i0, rows, 1u, c0, o[1], scale[1]);
    ff_out_store(g, i0, rows, 2u, c0, o[2], scale[2]);
    ff_out_store(g, i0, rows, 3u, c0, o[3], scale[3]);
    ff_out_store(g, i0, rows, 4u, c0, o[4], scale[4]);
    ff_out_store(g, i0, rows, 5u, c0, o[5], scale[5]);
    ff_out_store(g, i0, rows, 6u, c0, o[6], scale[6]);
    ff_out_store(g, i0, rows, 7u, c0, o[7], scale[7]);
    if (!mine) {
        return;
    }
    ff_stats[3u * own_row] = m;
    ff_stats[3u * own_row + 1u] = l;
    if (!last) {
        ff_stats[3u * own_row + 2u] = t;
        ff_keys[4u * own_row] = sdiag;
        return;
    }
    let keep_i = ff_keep(b, i0 + lane);
    ff_stats[3u * own_row + 2u] = select(0.0, log(l) - t * inv, filled);
    ff_keys[4u * own_row] = select(0.0, exp(sdiag - m) * inv, filled && keep_i);
    ff_keys[4u * own_row + 1u] = select(0.0, 1.0, filled);
    ff_keys[4u * own_row + 2u] = select(0.0, m + log(l), filled);
    ff_keys[4u * own_row + 3u] = select(0.0, 1.0, keep_i);
}

// ---- flash_refine -----------------------------------------------------------

@group(0) @binding(1) var fr_q: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var fr_k: texture_storage_2d_array<rgba32float, read>;
// U' [matrices * n, dv + 1], packed.
@group(0) @binding(3) var fr_u: texture_storage_2d_array<rgba32float, read>;
// Pass 1's (a_i, r_i, lse_i, keep_i) per row, packed: one texel per row, so
// that a key's two values cost one texel load instead of two storage loads.
@group(0) @binding(4) var fr_keys: texture_storage_2d_array<rgba32float, read>;
// As in flash.wgsl: A U' [matrices * n, dv + 1] and (a_i, r_i, c_i).
@group(0) @binding(5) var<storage, read_write> fr_au: array<f32>;
@group(0) @binding(6) var<storage, read_write> fr_stats: array<f32>;

// (a, r, lse, keep) of row `row`.
fn fr_key(row: u32) -> vec4<f32> {
    let at = texel(row, p.layer_shift);
    return textureLoad(fr_keys, at.xy, at.z);
}

// This lane's slice of U''s row `row` without its last column (zeros from
// dv on): each row's own lane adds that column from pass 1's stats.
fn fr_u_slice(row: u32, c0: u32) -> Slice {
    let u = load_slice(fr_u, row, c0, p.dv + 1u);
    return Slice(masked4(c0, p.dv, u.t0), masked4(c0 + 1u, p.dv, u.t1), masked4(c0 + 2u, p.dv, u.t2), masked4(c0 + 3u, p.dv, u.t3));
}

// Texel c4 of A U''s row `row` (rows dv + 1 wide) without its last column.
fn fr_au4(row: u32, c4: u32) -> vec4<f32> {
    let i = row * (p.dv + 1u) + 4u * c4;
    let end = arrayLength(&fr_au) - 1u;
    let v = vec4<f32>(fr_au[min(i, end)], fr_au[min(i + 1u, end)], fr_au[min(i + 2u, end)], fr_au[min(i + 3u, end)]);
    return masked4(c4, p.dv, v);
}

fn fr_au_store4(row: u32, c4: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i = i + 1u) {
        let c = 4u * c4 + i;
        if (c < p.dv) {
            fr_au[row * (p.dv + 1u) + c] = v[i];
        }
    }
}

// A U''s row r of the block (this lane's slice) from the last key range.
fn fr_au_slice(g: u32, i0: u32, rows: u32, r: u32, c0: u32) -> Slice {
    let row = block_row(g, i0, rows, r);
    return slice(fr_au4(row, c0), fr_au4(row, c0 + 1u), fr_au4(row, c0 + 2u), fr_au4(row, c0 + 3u));
}

fn fr_au_store(g: u32, i0: u32, rows: u32, r: u32, c0: u32, au: Slice) {
    if (r >= rows) {
        return;
    }
    let row = g * p.n + i0 + r;
    fr_au_store4(row, c0, au.t0);
    fr_au_store4(row, c0 + 1u, au.t1);
    if (DQ > 2u) {
        fr_au_store4(row, c0 + 2u, au.t2);
        fr_au_store4(row, c0 + 3u, au.t3);
    }
}

@compute @workgroup_size(64)
fn flash_refine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let blk = block_of(wid, nwg, sg);
    if (blk.g >= p.matrices || blk.i0 >= p.n) {
        return;
    }
    let g = blk.g;
    let i0 = blk.i0;
    let rows = min(ROWS, p.n - i0);
    let mirror = p.causal == 0u;
    let first = p.key_begin == 0u;
    let last = p.key_end == p.n;
    let kend = key_end_of(i0, rows);
    if (p.key_begin >= kend && !first && !last) {
        return;
    }
    let mine = lane < rows;
    let own_row = block_row(g, i0, rows, lane);
    let c0 = lane * DQ;

    var q: array<Slice, ROWS>;
    var kr: array<Slice, ROWS>;
    q[0] = load_slice(fr_q, block_row(g, i0, rows, 0u), c0, p.d);
    kr[0] = load_slice(fr_k, block_row(g, i0, rows, 0u), c0, p.d);
    q[1] = load_slice(fr_q, block_row(g, i0, rows, 1u), c0, p.d);
    kr[1] = load_slice(fr_k, block_row(g, i0, rows, 1u), c0, p.d);
    q[2] = load_slice(fr_q, block_row(g, i0, rows, 2u), c0, p.d);
    kr[2] = load_slice(fr_k, block_row(g, i0, rows, 2u), c0, p.d);
    q[3] = load_slice(fr_q, block_row(g, i0, rows, 3u), c0, p.d);
    kr[3] = load_slice(fr_k, block_row(g, i0, rows, 3u), c0, p.d);
    q[4] = load_slice(fr_q, block_row(g, i0, rows, 4u), c0, p.d);
    kr[4] = load_slice(fr_k, block_row(g, i0, rows, 4u), c0, p.d);
    q[5] = load_slice(fr_q, block_row(g, i0, rows, 5u), c0, p.d);
    kr[5] = load_slice(fr_k, block_row(g, i0, rows, 5u), c0, p.d);
    q[6] = load_slice(fr_q, block_row(g, i0, rows, 6u), c0, p.d);
    kr[6] = load_slice(fr_k, block_row(g, i0, rows, 6u), c0, p.d);
    q[7] = load_slice(fr_q, block_row(g, i0, rows, 7u), c0, p.d);
    kr[7] = load_slice(fr_k, block_row(g, i0, rows, 7u), c0, p.d);
    var au: array<Slice, ROWS>;
    // This lane's row: rows with no valid key, and keys i no query may
    // attend, take no part.
    let own_key = fr_key(own_row);
    let live = mine && own_key.y != 0.0;
    let lse = own_key.z;
    let keep = own_key.w != 0.0;
    var cc = 0.0;
    // sum_k A_ik (r_k - a_k), U''s last column of A U', for this lane's row.
    var extra = 0.0;
    if (!first) {
        au[0] = fr_au_slice(g, i0, rows, 0u, c0);
        au[1] = fr_au_slice(g, i0, rows, 1u, c0);
        au[2] = fr_au_slice(g, i0, rows, 2u, c0);
        au[3] = fr_au_slice(g, i0, rows, 3u, c0);
        au[4] = fr_au_slice(g, i0, rows, 4u, c0);
        au[5] = fr_au_slice(g, i0, rows, 5u, c0);
        au[6] = fr_au_slice(g, i0, rows, 6u, c0);
        au[7] = fr_au_slice(g, i0, rows, 7u, c0);
        cc = fr_stats[3u * own_row + 2u];
        extra = fr_au[own_row * (p.dv + 1u) + p.dv];
    }

    for (var k = p.key_begin; k < kend; k = k + 1u) {
        let key = g * p.n + k;
        let key_stats = fr_key(key);
        if (key_stats.w == 0.0) {
            continue;
        }
        let kv = load_slice(fr_k, key, c0, p.d);
        let parts = array<f32, ROWS>(
            sdot(q[0], kv),
            sdot(q[1], kv),
            sdot(q[2], kv),
            sdot(q[3], kv),
            sdot(q[4], kv),
            sdot(q[5], kv),
            sdot(q[6], kv),
            sdot(q[7], kv),
        );
        let valid = live && (p.causal == 0u || k <= i0 + lane);
        // exp(min(., 0)): A_ik <= 1 exactly, so rounding cannot overflow.
        let w_own = select(0.0, exp(min(p.scale * own_sums(parts, lane) - lse, 0.0)), valid);
        if (mirror) {
            let qv = load_slice(fr_q, key, c0, p.d);
            let mirrored = array<f32, ROWS>(
                sdot(kr[0], qv),
                sdot(kr[1], qv),
                sdot(kr[2], qv),
                sdot(kr[3], qv),
                sdot(kr[4], qv),
                sdot(kr[5], qv),
                sdot(kr[6], qv),
                sdot(kr[7], qv),
            );
            let lse_k = key_stats.z;
            let a_ki = exp(min(p.scale * own_sums(mirrored, lane) - lse_k, 0.0));
            let pair = keep && k != i0 + lane;
            cc = cc + select(0.0, w_own * a_ki, pair);
        }
        extra = extra + w_own * (key_stats.y - key_stats.x);
        let uv = fr_u_slice(key, c0);
        let w = from_lanes(w_own);
        au[0] = saxpby(1.0, au[0], w[0], uv);
        au[1] = saxpby(1.0, au[1], w[1], uv);
        au[2] = saxpby(1.0, au[2], w[2], uv);
        au[3] = saxpby(1.0, au[3], w[3], uv);
        au[4] = saxpby(1.0, au[4], w[4], uv);
        au[5] = saxpby(1.0, au[5], w[5], uv);
        au[6] = saxpby(1.0, au[6], w[6], uv);
        au[7] = saxpby(1.0, au[7], w[7], uv);
    }

    fr_au_store(g, i0, rows, 0u, c0, au[0]);
    fr_au_store(g, i0, rows, 1u, c0, au[1]);
    fr_au_store(g, i0, rows, 2u, c0, au[2]);
    fr_au_store(g, i0, rows, 3u, c0, au[3]);
    fr_au_store(g, i0, rows, 4u, c0, au[4]);
    fr_au_store(g, i0, rows, 5u, c0, au[5]);
    fr_au_store(g, i0, rows, 6u, c0, au[6]);
    fr_au_store(g, i0, rows, 7u, c0, au[7]);
    if (!mine) {
        return;
    }
    fr_au[own_row * (p.dv + 1u) + p.dv] = extra;
    fr_stats[3u * own_row + 2u] = cc;
    if (last) {
        fr_stats[3u * own_row] = own_key.x;
        fr_stats[3u * own_row + 1u] = own_key.y;
    }
}
