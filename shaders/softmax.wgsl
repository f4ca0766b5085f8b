// Row softmax with causal and key-padding masks, in place, and its backward.
//
// x is [matrices, rows, cols]; row i of matrix g becomes
//   softmax over the valid keys j: (!causal || j <= i) && mask[g / heads][j] != 0,
// and invalid entries become 0. A row with no valid key becomes all zeros.
// Subtracting the row maximum keeps it exact for logits up to |1e4| and beyond:
// every exponent is <= 0 and the maximum itself contributes exp(0) = 1 to the sum.
//
// Versions:
//   softmax_rows  v2: one workgroup of 64 invocations per row; each strides over
//                 the columns keeping a running max and a rescaled running sum
//                 (one read of the row instead of two; v1 read it for the max,
//                 then again for the sum), then max and sum are reduced in
//                 workgroup memory (reduce_max / reduce_sum of common.wgsl).
//   softmax_backward  v1: the backward, in place of dA: one workgroup of 64 per
//                 row reduces rowdot_i = sum over valid j of A_ij dA_ij, then
//                 writes dS_ij = A_ij (dA_ij - rowdot_i) on valid keys and 0
//                 elsewhere (so a row with no valid key is all zeros, whatever
//                 dA held). It shares Params, valid() and key_mask (binding 2)
//                 with the forward.
//   softmax_texture  v1: the softmax of maps whose products read A from a
//                 texture (plain and fused attention, the GPT's forward on
//                 the software adapters), one invocation per row: the scores come from a texture and the map goes to
//                 one (texel i = floats 4i .. 4i + 4 of the [matrices, rows,
//                 cols] map, placed by texel() of common.wgsl; cols a
//                 multiple of 4), which the products then read without a
//                 copy. Three texel reads of the row (max, sum, write), two
//                 exponentials per valid score instead of the online
//                 softmax's three, and a causal row stops at its diagonal
//                 texel. STORE_MAP = 1 also writes the map into st_out for
//                 the other readers of A (metrics, the returned map, the
//                 materialized R, the GPT's backward).

struct Params {
    matrices: u32,
    rows: u32,
    cols: u32,
    // Matrices per key-mask row: [B, H, N, N] scores with a [B, N] mask use H.
    heads: u32,
    causal: u32,
    has_mask: u32,
    // softmax_texture: log2 of the rows per layer of the scores' and of the
    // map's texture; softmax_backward_texture: of dA's and of A's.
    scores_shift: u32,
    map_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> key_mask: array<f32>;

fn valid(g: u32, i: u32, j: u32) -> bool {
    if (p.causal != 0u && j > i) {
        return false;
    }
    if (p.has_mask != 0u && key_mask[(g / p.heads) * p.cols + j] == 0.0) {
        return false;
    }
    return true;
}

// Each kernel's body takes the first column and the stride: the workgroup
// entry points stride by their width and reduce in workgroup memory, the
// _serial ones (one invocation per row: no workgroup barriers, which on the
// software adapters cost more than a short row's arithmetic, every barrier
// switching between the workgroup's SIMD batches) take every column.

// Maximum and sum of exponentials over the valid columns first, first +
// step, ... in one pass (online softmax: the running sum is rescaled
// whenever the maximum grows), and whether any was valid (1 or 0).
fn row_stats(row: u32, first: u32, step: u32) -> vec3<f32> {
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;
    var m = -3.0e38;
    var sum = 0.0;
    var found = false;
    for (var j = first; j < p.cols; j = j + step) {
        if (valid(g, i, j)) {
            let s = x[base + j];
            let top = select(s, max(m, s), found);
            sum = select(1.0, sum * exp(m - top) + exp(s - top), found);
            m = top;
            found = true;
        }
    }
    return vec3<f32>(m, sum, select(0.0, 1.0, found));
}

// Writes the row's columns first, first + step, ...: exp(x - top) · inv on
// valid ones where the row has any, 0 elsewhere.
fn row_write(row: u32, top: f32, inv: f32, any: bool, first: u32, step: u32) {
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;
    for (var j = first; j < p.cols; j = j + step) {
        var out = 0.0;
        if (any && valid(g, i, j)) {
            out = exp(x[base + j] - top) * inv;
        }
        x[base + j] = out;
    }
}

@compute @workgroup_size(64)
fn softmax_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    // The whole workgroup leaves together, so the barriers below stay uniform.
    if (row >= p.matrices * p.rows) {
        return;
    }
    let stats = row_stats(row, lid, WG);
    let maxima = reduce_max2(lid, stats.xz);
    // An invocation without valid keys adds nothing (its m is no score).
    let sum = select(0.0, stats.y * exp(stats.x - maxima.x), stats.z > 0.0);
    let inv = 1.0 / reduce_sum(lid, sum);
    row_write(row, maxima.x, inv, maxima.y > 0.0, lid, WG);
}

@compute @workgroup_size(64)
fn softmax_rows_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.rows) {
        return;
    }
    let stats = row_stats(row, 0u, 1u);
    let any = stats.z > 0.0;
    row_write(row, stats.x, select(0.0, 1.0 / stats.y, any), any, 0u, 1u);
}

// ---- softmax_backward -------------------------------------------------------

// dA in, dS out.
@group(0) @binding(1) var<storage, read_write> sb_grad: array<f32>;
@group(0) @binding(3) var<storage, read> sb_a: array<f32>;

// Σ A·dA over the row's valid columns first, first + step, ...
fn row_dot(row: u32, first: u32, step: u32) -> f32 {
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;
    var dot = 0.0;
    for (var j = first; j < p.cols; j = j + step) {
        if (valid(g, i, j)) {
            dot = dot + sb_a[base + j] * sb_grad[base + j];
        }
    }
    return dot;
}

// Rewrites the columns first, first + step, ... (those row_dot read with
// the same arguments): A (dA - dot) on valid ones, 0 elsewhere.
fn row_grad(row: u32, dot: f32, first: u32, step: u32) {
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;
    for (var j = first; j < p.cols; j = j + step) {
        var out = 0.0;
        if (valid(g, i, j)) {
            out = sb_a[base + j] * (sb_grad[base + j] - dot);
        }
        sb_grad[base + j] = out;
    }
}

@compute @workgroup_size(64)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    // The whole workgroup leaves together, so the barriers below stay uniform.
    if (row >= p.matrices * p.rows) {
        return;
    }
    row_grad(row, reduce_sum(lid, row_dot(row, lid, WG)), lid, WG);
}

@compute @workgroup_size(64)
fn softmax_backward_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.rows) {
        return;
    }
    row_grad(row, row_dot(row, 0u, 1u), 0u, 1u);
}

// ---- softmax_texture --------------------------------------------------------

override STORE_MAP: u32 = 0u;

@group(0) @binding(1) var<storage, read_write> st_out: array<vec4<f32>>;
@group(0) @binding(3) var st_scores: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(4) var st_map: texture_storage_2d_array<rgba32float, write>;

fn scores_texel(t: u32) -> vec4<f32> {
    let at = texel(t, p.scores_shift);
    return textureLoad(st_scores, at.xy, at.z);
}

// Which of columns j .. j + 4 of row i of matrix g are valid keys.
fn valid4(g: u32, i: u32, j: u32) -> vec4<bool> {
    var ok = vec4<bool>(true);
    if (p.causal != 0u) {
        ok = vec4<u32>(j, j + 1u, j + 2u, j + 3u) <= vec4<u32>(i);
    }
    if (p.has_mask != 0u) {
        let m = (g / p.heads) * p.cols + j;
        let keep = vec4<f32>(key_mask[m], key_mask[m + 1u], key_mask[m + 2u], key_mask[m + 3u]);
        ok = ok & (keep != vec4<f32>(0.0));
    }
    return ok;
}

// Row `row` of the [matrices, rows, cols] map as the texture kernels walk
// it: its matrix g and row i, its texels cols4, its first texel, and the end
// of its texels with valid keys (past the diagonal texel a causal row has
// none).
struct TexelRow {
    g: u32,
    i: u32,
    cols4: u32,
    first: u32,
    end: u32,
}

fn texel_row(row: u32) -> TexelRow {
    let i = row % p.rows;
    let cols4 = p.cols / 4u;
    let end = select(cols4, min(i / 4u + 1u, cols4), p.causal != 0u);
    return TexelRow(row / p.rows, i, cols4, row * cols4, end);
}

@compute @workgroup_size(64)
fn softmax_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.rows) {
        return;
    }
    let r = texel_row(row);
    let g = r.g;
    let i = r.i;
    let cols4 = r.cols4;
    let first = r.first;
    let end = r.end;
    let lowest = vec4<f32>(-3.0e38);
    var top4 = lowest;
    var found = false;
    for (var t = 0u; t < end; t = t + 1u) {
        let ok = valid4(g, i, 4u * t);
        top4 = max(top4, select(lowest, scores_texel(first + t), ok));
        found = found || any(ok);
    }
    let top = max(max(top4.x, top4.y), max(top4.z, top4.w));
    var sum4 = vec4<f32>(0.0);
    for (var t = 0u; t < end; t = t + 1u) {
        let ok = valid4(g, i, 4u * t);
        sum4 = sum4 + select(vec4<f32>(0.0), exp(scores_texel(first + t) - top), ok);
    }
    // A row without valid keys is all zeros.
    let inv = select(0.0, 1.0 / (sum4.x + sum4.y + sum4.z + sum4.w), found);
    for (var t = 0u; t < cols4; t = t + 1u) {
        var out = vec4<f32>(0.0);
        if (t < end) {
            let ok = valid4(g, i, 4u * t);
            out = select(vec4<f32>(0.0), exp(scores_texel(first + t) - top) * inv, ok);
        }
        let at = texel(first + t, p.map_shift);
        textureStore(st_map, at.xy, at.z, out);
        if (STORE_MAP != 0u) {
            st_out[first + t] = out;
        }
    }
}

// ---- softmax_backward_texture -----------------------------------------------

@group(0) @binding(1) var<storage, read_write> sbt_grad: array<vec4<f32>>;
@group(0) @binding(3) var sbt_a: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(4) var sbt_da: texture_storage_2d_array<rgba32float, read>;

fn a_texel(t: u32) -> vec4<f32> {
    let at = texel(t, p.map_shift);
    return textureLoad(sbt_a, at.xy, at.z);
}

fn da_texel(t: u32) -> vec4<f32> {
    let at = texel(t, p.scores_shift);
    return textureLoad(sbt_da, at.xy, at.z);
}

@compute @workgroup_size(64)
fn softmax_backward_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.rows) {
        return;
    }
    let r = texel_row(row);
    let g = r.g;
    let i = r.i;
    let cols4 = r.cols4;
    let first = r.first;
    let end = r.end;
    var dot4 = vec4<f32>(0.0);
    for (var t = 0u; t < end; t = t + 1u) {
        let ok = valid4(g, i, 4u * t);
        dot4 = dot4 + select(vec4<f32>(0.0), a_texel(first + t) * da_texel(first + t), ok);
    }
    let dot = (dot4.x + dot4.y) + (dot4.z + dot4.w);
    for (var t = 0u; t < cols4; t = t + 1u) {
        var out = vec4<f32>(0.0);
        if (t < end) {
            let ok = valid4(g, i, 4u * t);
            out = select(vec4<f32>(0.0), a_texel(first + t) * (da_texel(first + t) - dot), ok);
        }
        sbt_grad[first + t] = out;
    }
}
