// Streaming attention and streaming SAOBP (as README states it): nothing N x N is
// ever stored, so memory grows with N, not N^2.
//
// Layout: q, k [matrices, n, d]; v [matrices, n, dv]; key mask [batch, n]
// (a placeholder when absent); matrices = batch * heads.
//
// On the software adapters a storage load costs about a hundred arithmetic
// operations, so these kernels are built around loads, not flops: each
// invocation owns ROWS consecutive query rows, keeps their q (and k) rows and
// output accumulators in private memory, and walks the keys. Every k, q, v or
// u value it loads feeds ROWS multiply-adds. Consecutive rows keep the causal
// key range of an invocation tight.
//
// Key ranges: one dispatch covers the keys [key_begin, key_end); the host
// splits the keys over several dispatches and the running state (the online
// softmax's max, sum and entropy term, the diagonal score, the accumulators)
// waits in the output buffers in between. The first range starts the state,
// the last one (key_end = n) finishes the rows. Why: llvmpipe (lavapipe and
// llvmpipe GL) gives each shader invocation one budget of 65,535 loop
// iterations for all its loops together (every back-edge of a loop NIR did
// not unroll counts; the ROWS loops are unrolled, the loops over d, dv and
// the keys are not). Past it every loop quietly stops after its current
// iteration: no error, just wrong numbers in every row. v1 walked all keys in
// one dispatch, about n (d + dv + 1) iterations, and broke near n = 500 at
// d = dv = 64. The host sizes the ranges to stay well under the budget.
//
// Versions:
//   flash_forward  v1: pass 1. Online softmax one key at a time (a rescale per
//                  key costs arithmetic only, no loads), O = A V, and per row:
//                  max, sum of exp(s - max), entropy (streamed: with
//                  T = sum e_j (s_j - max), H = ln L - T / L, both terms >= 0,
//                  rescaled with the running max like L), a_i = A_ii, r_i,
//                  lse_i = max + ln L and the key's mask bit.
//                  v2: one key range per dispatch (above); between ranges the
//                  unnormalized O waits in `out`, (max, L, T) in `stats` and
//                  the diagonal score in `keys`.
//   flash_values   v1: U_k = Y_k - a_k V_k, elementwise.
//                  v2: U'_k = [Y_k - a_k V_k | r_k - a_k], one column wider,
//                  as in saobp.wgsl, so A U' also gives m's first term.
//   flash_refine   v1: pass 2 (SAOBP form (b)). Recomputes A_ik from the row's
//                  lse to accumulate (A U)_i and sum_k A_ik (r_k - a_k), and
//                  the mirrored A_ki = exp(scale q_k . k_i - lse_k) for
//                  c_i = sum_{k != i} A_ik A_ki (skipped when causal: there
//                  A_ik A_ki = 0 unless k = i). Wrote (A U), m and the
//                  (a, r, c) stats.
//                  v2: one key range per dispatch; writes A U' ([.., dv + 1],
//                  its last column sum_k A_ik (r_k - a_k)) and (a, r, c), the
//                  inputs of saobp.wgsl's fused_output, which now forms m.
//                  Between ranges A U' and c wait in the outputs.
//   all three     v3: ROWS and DMAX from a header, so that one source builds
//                  the d <= 64 kernels (8 rows) and the d <= 128 ones (4 rows).
// ROWS and DMAX (the largest d and dv) mirror the constants in
// src/kernels/flash.rs. ROWS = 8 measured faster on lavapipe than 4 or 16.

// Params, its binding and key_end_of come from shared/flash_params.wgsl.

// ROWS (query rows per invocation) and DMAX (the widest d and dv) come from
// the header the source is built with: shared/flash_d64.wgsl (8 rows, d up
// to 64) or shared/flash_d128.wgsl (4 rows, d up to 128), the same private
// footprint either way.
// Row stride of the private A U' accumulators: dv + 1 columns.
const WMAX: u32 = DMAX + 1u;

// The first row of an invocation's block, and its matrix; n rows past the end
// when the invocation has no rows.
struct Block {
    g: u32,
    i0: u32,
}

fn block_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Block {
    let wg = linear_id(wid, nwg);
    let g = wg / p.groups;
    let i0 = ((wg % p.groups) * WG + lid) * ROWS;
    return Block(g, i0);
}

// ---- flash_forward ----------------------------------------------------------

@group(0) @binding(1) var<storage, read> ff_q: array<f32>;
@group(0) @binding(2) var<storage, read> ff_k: array<f32>;
@group(0) @binding(3) var<storage, read> ff_v: array<f32>;
@group(0) @binding(4) var<storage, read> ff_mask: array<f32>;
// [matrices * n, dv]: O; unnormalized until the last key range.
@group(0) @binding(5) var<storage, read_write> ff_out: array<f32>;
// [matrices * n, 3]: max, sum, entropy; before the last key range the
// entropy slot holds the running T.
@group(0) @binding(6) var<storage, read_write> ff_stats: array<f32>;
// [matrices * n, 4]: a_i, r_i, lse_i, keep_i (key i's mask bit); before the
// last key range the a_i slot holds the diagonal score.
@group(0) @binding(7) var<storage, read_write> ff_keys: array<f32>;

fn ff_keep(b: u32, j: u32) -> bool {
    return p.has_mask == 0u || ff_mask[b * p.n + j] != 0.0;
}

@compute @workgroup_size(64)
fn flash_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg, lid);
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

    var q: array<f32, ROWS * DMAX>;
    if (p.key_begin < kend) {
        for (var r = 0u; r < rows; r = r + 1u) {
            let base = (g * p.n + i0 + r) * p.d;
            for (var c = 0u; c < p.d; c = c + 1u) {
                q[r * DMAX + c] = ff_q[base + c];
            }
        }
    }
    var o: array<f32, ROWS * DMAX>;
    // Running max, sum L, entropy term T and the diagonal score, per row.
    var m: array<f32, ROWS>;
    var l: array<f32, ROWS>;
    var t: array<f32, ROWS>;
    var sdiag: array<f32, ROWS>;
    if (!first) {
        for (var r = 0u; r < rows; r = r + 1u) {
            let row = g * p.n + i0 + r;
            for (var c = 0u; c < p.dv; c = c + 1u) {
                o[r * DMAX + c] = ff_out[row * p.dv + c];
            }
            m[r] = ff_stats[3u * row];
            l[r] = ff_stats[3u * row + 1u];
            t[r] = ff_stats[3u * row + 2u];
            sdiag[r] = ff_keys[4u * row];
        }
    }

    for (var j = p.key_begin; j < kend; j = j + 1u) {
        if (!ff_keep(b, j)) {
            continue;
        }
        var s: array<f32, ROWS>;
        let kb = (g * p.n + j) * p.d;
        for (var c = 0u; c < p.d; c = c + 1u) {
            let kv = ff_k[kb + c];
            for (var r = 0u; r < ROWS; r = r + 1u) {
                s[r] = s[r] + q[r * DMAX + c] * kv;
            }
        }
        var alpha: array<f32, ROWS>;
        var e: array<f32, ROWS>;
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let i = i0 + r;
            let sc = p.scale * s[r];
            let valid = r < rows && (p.causal == 0u || j <= i);
            let fresh = l[r] == 0.0;
            let m_new = select(max(m[r], sc), sc, fresh);
            // min(., 0) keeps exp finite whatever the first score was.
            let a = select(exp(min(m[r] - m_new, 0.0)), 0.0, fresh);
            let ex = exp(sc - m_new);
            let t_new = a * (t[r] + l[r] * (m[r] - m_new)) + ex * (sc - m_new);
            alpha[r] = select(1.0, a, valid);
            e[r] = select(0.0, ex, valid);
            if (valid) {
                t[r] = t_new;
                l[r] = a * l[r] + ex;
                m[r] = m_new;
                if (j == i) {
                    sdiag[r] = sc;
                }
            }
        }
        let vb = (g * p.n + j) * p.dv;
        for (var c = 0u; c < p.dv; c = c + 1u) {
            let vv = ff_v[vb + c];
            for (var r = 0u; r < ROWS; r = r + 1u) {
                o[r * DMAX + c] = alpha[r] * o[r * DMAX + c] + e[r] * vv;
            }
        }
    }

    for (var r = 0u; r < rows; r = r + 1u) {
        let row = g * p.n + i0 + r;
        if (!last) {
            for (var c = 0u; c < p.dv; c = c + 1u) {
                ff_out[row * p.dv + c] = o[r * DMAX + c];
            }
            ff_stats[3u * row] = m[r];
            ff_stats[3u * row + 1u] = l[r];
            ff_stats[3u * row + 2u] = t[r];
            ff_keys[4u * row] = sdiag[r];
            continue;
        }
        let filled = l[r] > 0.0;
        let inv = select(0.0, 1.0 / l[r], filled);
        for (var c = 0u; c < p.dv; c = c + 1u) {
            ff_out[row * p.dv + c] = o[r * DMAX + c] * inv;
        }
        let keep_i = ff_keep(b, i0 + r);
        ff_stats[3u * row] = m[r];
        ff_stats[3u * row + 1u] = l[r];
        ff_stats[3u * row + 2u] = select(0.0, log(l[r]) - t[r] * inv, filled);
        ff_keys[4u * row] = select(0.0, exp(sdiag[r] - m[r]) * inv, filled && keep_i);
        ff_keys[4u * row + 1u] = select(0.0, 1.0, filled);
        ff_keys[4u * row + 2u] = select(0.0, m[r] + log(l[r]), filled);
        ff_keys[4u * row + 3u] = select(0.0, 1.0, keep_i);
    }
}

// ---- flash_values -----------------------------------------------------------

@group(0) @binding(1) var<storage, read> fv_y: array<f32>;
@group(0) @binding(2) var<storage, read> fv_v: array<f32>;
@group(0) @binding(3) var<storage, read> fv_keys: array<f32>;
// [matrices * n, dv + 1]: U'.
@group(0) @binding(4) var<storage, read_write> fv_u: array<f32>;

@compute @workgroup_size(64)
fn flash_values(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let width = p.dv + 1u;
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.matrices * p.n * width) {
        return;
    }
    let row = idx / width;
    let col = idx % width;
    let a = fv_keys[4u * row];
    if (col == p.dv) {
        fv_u[idx] = fv_keys[4u * row + 1u] - a;
    } else {
        fv_u[idx] = fv_y[row * p.dv + col] - a * fv_v[row * p.dv + col];
    }
}

// ---- flash_refine -----------------------------------------------------------

@group(0) @binding(1) var<storage, read> fr_q: array<f32>;
@group(0) @binding(2) var<storage, read> fr_k: array<f32>;
// U' [matrices * n, dv + 1].
@group(0) @binding(3) var<storage, read> fr_u: array<f32>;
@group(0) @binding(4) var<storage, read> fr_keys: array<f32>;
// A U' [matrices * n, dv + 1]; partial sums until the last key range.
@group(0) @binding(5) var<storage, read_write> fr_au: array<f32>;
// [matrices * n, 3]: a_i, r_i, c_i, as saobp.wgsl's fused_output reads them;
// before the last key range only the partial c_i.
@group(0) @binding(6) var<storage, read_write> fr_stats: array<f32>;

@compute @workgroup_size(64)
fn flash_refine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let blk = block_of(wid, nwg, lid);
    if (blk.g >= p.matrices || blk.i0 >= p.n) {
        return;
    }
    let g = blk.g;
    let i0 = blk.i0;
    let rows = min(ROWS, p.n - i0);
    let mirror = p.causal == 0u;
    let width = p.dv + 1u;
    let first = p.key_begin == 0u;
    let last = p.key_end == p.n;
    let kend = key_end_of(i0, rows);
    if (p.key_begin >= kend && !first && !last) {
        return;
    }
    let busy = p.key_begin < kend;

    var q: array<f32, ROWS * DMAX>;
    var kr: array<f32, ROWS * DMAX>;
    var lse: array<f32, ROWS>;
    // Rows with no valid key, and keys i no query may attend, take no part.
    var live: array<bool, ROWS>;
    var keep: array<bool, ROWS>;
    var au: array<f32, ROWS * WMAX>;
    var cc: array<f32, ROWS>;
    for (var r = 0u; r < rows; r = r + 1u) {
        let row = g * p.n + i0 + r;
        let base = row * p.d;
        if (busy) {
            for (var c = 0u; c < p.d; c = c + 1u) {
                q[r * DMAX + c] = fr_q[base + c];
            }
            if (mirror) {
                for (var c = 0u; c < p.d; c = c + 1u) {
                    kr[r * DMAX + c] = fr_k[base + c];
                }
            }
        }
        if (!first) {
            for (var c = 0u; c < width; c = c + 1u) {
                au[r * WMAX + c] = fr_au[row * width + c];
            }
            cc[r] = fr_stats[3u * row + 2u];
        }
        live[r] = fr_keys[4u * row + 1u] != 0.0;
        lse[r] = fr_keys[4u * row + 2u];
        keep[r] = fr_keys[4u * row + 3u] != 0.0;
    }

    for (var k = p.key_begin; k < kend; k = k + 1u) {
        let key = g * p.n + k;
        if (fr_keys[4u * key + 3u] == 0.0) {
            continue;
        }
        var s: array<f32, ROWS>;
        let kb = key * p.d;
        for (var c = 0u; c < p.d; c = c + 1u) {
            let kv = fr_k[kb + c];
            for (var r = 0u; r < ROWS; r = r + 1u) {
                s[r] = s[r] + q[r * DMAX + c] * kv;
            }
        }
        var w: array<f32, ROWS>;
        for (var r = 0u; r < ROWS; r = r + 1u) {
            let valid = r < rows && live[r] && (p.causal == 0u || k <= i0 + r);
            // exp(min(., 0)): A_ik <= 1 exactly, so rounding cannot overflow.
            w[r] = select(0.0, exp(min(p.scale * s[r] - lse[r], 0.0)), valid);
        }
        if (mirror) {
            var sm: array<f32, ROWS>;
            let qb = key * p.d;
            for (var c = 0u; c < p.d; c = c + 1u) {
                let qv = fr_q[qb + c];
                for (var r = 0u; r < ROWS; r = r + 1u) {
                    sm[r] = sm[r] + kr[r * DMAX + c] * qv;
                }
            }
            let lse_k = fr_keys[4u * key + 2u];
            for (var r = 0u; r < ROWS; r = r + 1u) {
                let pair = keep[r] && k != i0 + r;
                let a_ki = exp(min(p.scale * sm[r] - lse_k, 0.0));
                cc[r] = cc[r] + select(0.0, w[r] * a_ki, pair);
            }
        }
        // U' carries r_k - a_k in its last column: sum_k A_ik (r_k - a_k) comes along.
        let ub = key * width;
        for (var c = 0u; c < width; c = c + 1u) {
            let uv = fr_u[ub + c];
            for (var r = 0u; r < ROWS; r = r + 1u) {
                au[r * WMAX + c] = au[r * WMAX + c] + w[r] * uv;
            }
        }
    }

    for (var r = 0u; r < rows; r = r + 1u) {
        let row = g * p.n + i0 + r;
        for (var c = 0u; c < width; c = c + 1u) {
            fr_au[row * width + c] = au[r * WMAX + c];
        }
        fr_stats[3u * row + 2u] = cc[r];
        if (last) {
            fr_stats[3u * row] = fr_keys[4u * row];
            fr_stats[3u * row + 1u] = fr_keys[4u * row + 1u];
        }
    }
}
