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

struct Params {
    matrices: u32,
    rows: u32,
    cols: u32,
    // Matrices per key-mask row: [B, H, N, N] scores with a [B, N] mask use H.
    heads: u32,
    causal: u32,
    has_mask: u32,
    _pad0: u32,
    _pad1: u32,
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
