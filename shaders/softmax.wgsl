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
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;

    // Maximum and sum of exponentials in one pass (online softmax): each
    // invocation rescales its running sum whenever its maximum grows.
    var m = -3.0e38;
    var sum = 0.0;
    var found = 0.0;
    for (var j = lid; j < p.cols; j = j + WG) {
        if (valid(g, i, j)) {
            let s = x[base + j];
            if (found == 0.0) {
                m = s;
                sum = 1.0;
                found = 1.0;
            } else if (s > m) {
                sum = sum * exp(m - s) + 1.0;
                m = s;
            } else {
                sum = sum + exp(s - m);
            }
        }
    }
    let maxima = reduce_max2(lid, vec2<f32>(m, found));
    let row_max = maxima.x;
    let row_any = maxima.y;
    // An invocation without valid keys adds nothing (its m is no score).
    sum = select(0.0, sum * exp(m - row_max), found > 0.0);
    let inv = 1.0 / reduce_sum(lid, sum);

    for (var j = lid; j < p.cols; j = j + WG) {
        var out = 0.0;
        if (row_any > 0.0 && valid(g, i, j)) {
            out = exp(x[base + j] - row_max) * inv;
        }
        x[base + j] = out;
    }
}

// One invocation per row: no workgroup barriers, which on the software
// adapters cost more than the arithmetic of a short row (every barrier
// switches between the workgroup's SIMD batches).
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
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;
    // Online maximum and rescaled sum, as softmax_rows per invocation.
    var m = 0.0;
    var sum = 0.0;
    var found = false;
    for (var j = 0u; j < p.cols; j = j + 1u) {
        if (valid(g, i, j)) {
            let s = x[base + j];
            let top = select(s, max(m, s), found);
            sum = select(1.0, sum * exp(m - top) + exp(s - top), found);
            m = top;
            found = true;
        }
    }
    let inv = select(0.0, 1.0 / sum, found);
    for (var j = 0u; j < p.cols; j = j + 1u) {
        var out = 0.0;
        if (valid(g, i, j)) {
            out = exp(x[base + j] - m) * inv;
        }
        x[base + j] = out;
    }
}

// ---- softmax_backward -------------------------------------------------------

// dA in, dS out.
@group(0) @binding(1) var<storage, read_write> sb_grad: array<f32>;
@group(0) @binding(3) var<storage, read> sb_a: array<f32>;

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
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;

    var dot = 0.0;
    for (var j = lid; j < p.cols; j = j + WG) {
        if (valid(g, i, j)) {
            dot = dot + sb_a[base + j] * sb_grad[base + j];
        }
    }
    let row_dot = reduce_sum(lid, dot);

    // Each invocation rewrites only the columns it read above.
    for (var j = lid; j < p.cols; j = j + WG) {
        var out = 0.0;
        if (valid(g, i, j)) {
            out = sb_a[base + j] * (sb_grad[base + j] - row_dot);
        }
        sb_grad[base + j] = out;
    }
}

// One invocation per row, as softmax_rows_serial.
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
    let g = row / p.rows;
    let i = row % p.rows;
    let base = row * p.cols;
    var dot = 0.0;
    for (var j = 0u; j < p.cols; j = j + 1u) {
        if (valid(g, i, j)) {
            dot = dot + sb_a[base + j] * sb_grad[base + j];
        }
    }
    for (var j = 0u; j < p.cols; j = j + 1u) {
        var out = 0.0;
        if (valid(g, i, j)) {
            out = sb_a[base + j] * (sb_grad[base + j] - dot);
        }
        sb_grad[base + j] = out;
    }
}
