// SAOBP: one belief-propagation step on the attention graph (the math as README states it).
//
// Every entry point sees A as [matrices, n, n] (matrices = B*H), row i = query i.
//
// Materialized path (N^3 per head; for analysis and as a check):
//   remove_echoes M_ij = sum_{k not in {i,j}} A_ik A_kj (j != i), M_ii = 0, from
//                 P = A A (the fastest matmul.wgsl kernel for the adapter) as
//                 M_ij = P_ij - A_ii A_ij - A_ij A_jj, clamped at 0.
//                 v1 was a dedicated N^3 kernel with the echo terms dropped in
//                 its inner loop; v2 lets the matmul variants do the N^3 work.
//   refine        m_i = sum_j M_ij, then R_ij = (A_ij + lambda_h M_ij) / (1 + lambda_h m_i).
//                 v1: one workgroup per row.
//
// Fused path (O(N^2 D), never forms M):
//   diag_stats    per row: a_i = A_ii, r_i = sum_j A_ij, c_i = sum_{k != i} A_ik A_ki.
//   mass          m_i = sum_k A_ik (r_k - a_k) - a_i (r_i - a_i) - c_i.
//   two_hop_values U'_k = [Y_k - a_k V_k | r_k - a_k | 0 ..]   (Y = A V comes from matmul.wgsl),
//                 one column wider than V so that A U' also gives m's first term.
//   fused_output  m_i = (A U')_{i,D} - a_i (r_i - a_i) - c_i, written once per row,
//                 O_i = (Y_i + lambda (M V)_i) / (1 + lambda m_i),
//                 (M V)_i = (A U)_i - a_i Y_i - (c_i - a_i^2) V_i   (A U' from matmul.wgsl).
//                 v2: m folded into the A U' product (v1 had a separate pass over A).
// m and M V are clamped at 0 only where rounding could push a true 0 below it.
//
// Backward of the fused path (O(N^2 D), never forms M; the spec's "Gradients"):
// the forward's a, r, c (diag_stats), Y = A V, U' and A U' are recomputed
// first, then with s = 1/(1 + lambda m) and W = [dMV | dm]:
//   output_adjoints  per row: W = [lambda s G | -lambda s (G . O)], and the
//                 rowdots t = dMV . V, q = dMV . Y, s and the row's share of
//                 d lambda, s (G . MV - m G . O). v1.
//   row_adjoints  per row, from P = A^T W = [dU | w] (matmul.wgsl):
//                 dY = s G - a dMV + dU, and (da, dr, dc). v1.
//   attention_grad dA_ij = (dY V^T)_ij + (W U'^T)_ij + dr_i
//                 + [i != j] (dc_i + dc_j) A_ji + [i == j] da_i; both products
//                 come from matmul.wgsl, this pass adds the terms read off A
//                 (A read transposed). v1: one element per invocation.
//   attention_grad_texture  v1: attention_grad by 4 x 4 blocks, A^T read as
//                 texels from the texture the backward's A^T products bind
//                 (N a multiple of 4).
//   value_grad    dV = A^T dY - (c - a^2) dMV - a dU. v1.
//   fused_output_merged, value_grad_merged: the same, written into token
//                 rows (MERGED, out_index()). v1.
//   diag_stats_texture  v1: diag_stats from A in a texture (texel i = floats
//                 4i .. 4i + 4 of A, placed by texel(); N a multiple of 4),
//                 one invocation per 4 rows: each step over column texel t
//                 reads the 4 rows' texels at columns 4t .. 4t + 4 and rows
//                 4t .. 4t + 4's texels at the 4 rows' columns, 16 products
//                 of c from 8 texel loads.
//                 The diagonal block is summed apart, without k = i.
//   diag_stats_serial, output_adjoints_serial, row_adjoints_serial: the same
//                 with one invocation per row (the row layout for software
//                 adapters, see kernels::rows). v1.
//   output_adjoints_texture, row_adjoints_texture: the serial ones reading
//                 their [rows, D] and [rows, width] operands from textures
//                 they were copied into (D a multiple of 4, so width = D + 4
//                 and W's last texel is (dm, 0, 0, 0)), four columns per
//                 texel load, W and dY stored four at a time. v1.
//   lambda_grad   d lambda_h = sum over the batch and rows of the row shares,
//                 one workgroup per head in a fixed order (no atomics), so the
//                 sum is the same run to run. v1.

struct Params {
    matrices: u32,
    n: u32,
    // Value width D (elementwise kernels).
    d: u32,
    heads: u32,
    // Columns of U', A U', W and A^T W: D + 1, padded with zero columns to
    // a multiple of 4 on the fused path (whole texels, which the matmul
    // copies instead of packing), exactly D + 1 on the streaming path.
    width: u32,
    // diag_stats_texture only: log2 of the rows per layer of A's texture.
    map_shift: u32,
    // fused_output_merged and value_grad_merged only: the output goes into
    // token rows [B * n, merge_parts * heads * d] as part merge_part.
    merge_parts: u32,
    merge_part: u32,
    // output_adjoints_texture and row_adjoints_texture only: log2 of the
    // rows per layer of their four textures, in binding order.
    shift0: u32,
    shift1: u32,
    shift2: u32,
    shift3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- remove_echoes ----------------------------------------------------------

@group(0) @binding(1) var<storage, read> echo_a: array<f32>;
// In: P = A A (from matmul.wgsl). Out: M.
@group(0) @binding(2) var<storage, read_write> echo_m: array<f32>;

@compute @workgroup_size(64)
fn remove_echoes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    let nn = p.n * p.n;
    if (idx >= p.matrices * nn) {
        return;
    }
    let base = (idx / nn) * nn;
    let i = (idx % nn) / p.n;
    let j = idx % p.n;
    // (A A)_ij holds k = i and k = j on top of M_ij: subtract A_ii A_ij and A_ij A_jj.
    let a_ij = echo_a[idx];
    let echoes = a_ij * (echo_a[base + i * p.n + i] + echo_a[base + j * p.n + j]);
    echo_m[idx] = select(max(echo_m[idx] - echoes, 0.0), 0.0, i == j);
}

// ---- refine -----------------------------------------------------------------

@group(0) @binding(1) var<storage, read> ref_a: array<f32>;
@group(0) @binding(2) var<storage, read> ref_m: array<f32>;
@group(0) @binding(3) var<storage, read> ref_lambda: array<f32>;
@group(0) @binding(4) var<storage, read_write> ref_r: array<f32>;
@group(0) @binding(5) var<storage, read_write> ref_mass: array<f32>;

@compute @workgroup_size(64)
fn refine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.matrices * p.n) {
        return;
    }
    let lambda = ref_lambda[(row / p.n) % p.heads];
    let base = row * p.n;
    var s = 0.0;
    for (var j = lid; j < p.n; j = j + WG) {
        s = s + ref_m[base + j];
    }
    let mass = reduce_sum(lid, s);
    let inv = 1.0 / (1.0 + lambda * mass);
    for (var j = lid; j < p.n; j = j + WG) {
        ref_r[base + j] = (ref_a[base + j] + lambda * ref_m[base + j]) * inv;
    }
    if (lid == 0u) {
        ref_mass[row] = mass;
    }
}

// ---- diag_stats -------------------------------------------------------------

@group(0) @binding(1) var<storage, read> ds_a: array<f32>;
// [matrices * n, 3]: a_i, r_i, c_i.
@group(0) @binding(2) var<storage, read_write> ds_stats: array<f32>;

// The row's (r, c) partial sums over k = first, first + step, ...: the
// workgroup layout strides by its width, the invocation layout takes all.
fn diag_sums(row: u32, first: u32, step: u32) -> vec2<f32> {
    let i = row % p.n;
    let base = (row / p.n) * p.n * p.n;
    var r = 0.0;
    var c = 0.0;
    for (var k = first; k < p.n; k = k + step) {
        let a_ik = ds_a[base + i * p.n + k];
        r = r + a_ik;
        if (k != i) {
            c = c + a_ik * ds_a[base + k * p.n + i];
        }
    }
    return vec2<f32>(r, c);
}

fn diag_store(row: u32, rc: vec2<f32>) {
    let i = row % p.n;
    let base = (row / p.n) * p.n * p.n;
    ds_stats[3u * row] = ds_a[base + i * p.n + i];
    ds_stats[3u * row + 1u] = rc.x;
    ds_stats[3u * row + 2u] = rc.y;
}

@compute @workgroup_size(64)
fn diag_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.matrices * p.n) {
        return;
    }
    let rc = reduce_sum2(lid, diag_sums(row, lid, WG));
    if (lid == 0u) {
        diag_store(row, rc);
    }
}

@compute @workgroup_size(64)
fn diag_stats_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.n) {
        return;
    }
    diag_store(row, diag_sums(row, 0u, 1u));
}

// ---- diag_stats_texture -----------------------------------------------------

@group(0) @binding(1) var dt_map: texture_storage_2d_array<rgba32float, read>;

fn map_texel(t: u32) -> vec4<f32> {
    let at = texel(t, p.map_shift);
    return textureLoad(dt_map, at.xy, at.z);
}

// The 4 rows' (r, c) partial sums over the column texels t = lo .. hi
// (first: the texel index of the first of the 4 rows, mat: of the matrix,
// q: the 4 rows' own column texel).
struct DiagSums {
    r: vec4<f32>,
    c: vec4<f32>,
}

fn diag_block_sums(acc: DiagSums, first: u32, mat: u32, q: u32, lo: u32, hi: u32) -> DiagSums {
    let n4 = p.n / 4u;
    var r = acc.r;
    var c = acc.c;
    for (var t = lo; t < hi; t = t + 1u) {
        let r0 = map_texel(first + t);
        let r1 = map_texel(first + n4 + t);
        let r2 = map_texel(first + 2u * n4 + t);
        let r3 = map_texel(first + 3u * n4 + t);
        // Rows 4t .. 4t + 4 at the 4 rows' columns.
        let col = mat + 4u * t * n4 + q;
        let c0 = map_texel(col);
        let c1 = map_texel(col + n4);
        let c2 = map_texel(col + 2u * n4);
        let c3 = map_texel(col + 3u * n4);
        let one = vec4<f32>(1.0);
        r = r + vec4<f32>(dot(r0, one), dot(r1, one), dot(r2, one), dot(r3, one));
        c = c + vec4<f32>(
            dot(r0, vec4<f32>(c0.x, c1.x, c2.x, c3.x)),
            dot(r1, vec4<f32>(c0.y, c1.y, c2.y, c3.y)),
            dot(r2, vec4<f32>(c0.z, c1.z, c2.z, c3.z)),
            dot(r3, vec4<f32>(c0.w, c1.w, c2.w, c3.w)),
        );
    }
    return DiagSums(r, c);
}

@compute @workgroup_size(64)
fn diag_stats_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let quad = element_id(wid, nwg, lid);
    let n4 = p.n / 4u;
    if (quad >= p.matrices * n4) {
        return;
    }
    // Rows 4q .. 4q + 4 of matrix g, whose diagonal lies in column texel q.
    let g = quad / n4;
    let q = quad % n4;
    let mat = g * p.n * n4;
    let first = mat + 4u * q * n4;
    var sums = DiagSums(vec4<f32>(0.0), vec4<f32>(0.0));
    sums = diag_block_sums(sums, first, mat, q, 0u, q);
    sums = diag_block_sums(sums, first, mat, q, q + 1u, n4);
    // The diagonal block: d_r[j] = A_{4q+r, 4q+j}, c without j = r.
    let d0 = map_texel(first + q);
    let d1 = map_texel(first + n4 + q);
    let d2 = map_texel(first + 2u * n4 + q);
    let d3 = map_texel(first + 3u * n4 + q);
    let one = vec4<f32>(1.0);
    let r = sums.r + vec4<f32>(dot(d0, one), dot(d1, one), dot(d2, one), dot(d3, one));
    let c = sums.c + vec4<f32>(
        d0.y * d1.x + d0.z * d2.x + d0.w * d3.x,
        d1.x * d0.y + d1.z * d2.y + d1.w * d3.y,
        d2.x * d0.z + d2.y * d1.z + d2.w * d3.z,
        d3.x * d0.w + d3.y * d1.w + d3.z * d2.w,
    );
    let a = vec4<f32>(d0.x, d1.y, d2.z, d3.w);
    let row = g * p.n + 4u * q;
    for (var k = 0u; k < 4u; k = k + 1u) {
        ds_stats[3u * (row + k)] = a[k];
        ds_stats[3u * (row + k) + 1u] = r[k];
        ds_stats[3u * (row + k) + 2u] = c[k];
    }
}

// ---- mass -------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> ms_a: array<f32>;
@group(0) @binding(2) var<storage, read> ms_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> ms_mass: array<f32>;

@compute @workgroup_size(64)
fn mass(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.matrices * p.n) {
        return;
    }
    let first = (row / p.n) * p.n;
    let base = row * p.n;
    var s = 0.0;
    for (var k = lid; k < p.n; k = k + WG) {
        let sk = 3u * (first + k);
        s = s + ms_a[base + k] * (ms_stats[sk + 1u] - ms_stats[sk]);
    }
    s = reduce_sum(lid, s);
    if (lid == 0u) {
        let a = ms_stats[3u * row];
        let r = ms_stats[3u * row + 1u];
        let c = ms_stats[3u * row + 2u];
        ms_mass[row] = max(s - a * (r - a) - c, 0.0);
    }
}

// ---- two_hop_values ---------------------------------------------------------

@group(0) @binding(1) var<storage, read> tv_y: array<f32>;
@group(0) @binding(2) var<storage, read> tv_v: array<f32>;
@group(0) @binding(3) var<storage, read> tv_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> tv_u: array<f32>;

@compute @workgroup_size(64)
fn two_hop_values(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let width = p.width;
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.matrices * p.n * width) {
        return;
    }
    let row = idx / width;
    let col = idx % width;
    let a = tv_stats[3u * row];
    if (col > p.d) {
        // Padding to whole texels.
        tv_u[idx] = 0.0;
    } else if (col == p.d) {
        // r_k - a_k: A times this column gives the first term of m.
        tv_u[idx] = tv_stats[3u * row + 1u] - a;
    } else {
        tv_u[idx] = tv_y[row * p.d + col] - a * tv_v[row * p.d + col];
    }
}

// ---- fused_output -----------------------------------------------------------

// MERGED = 1 (fused_output_merged, value_grad_merged): value idx of the
// [matrices, n, d] output goes to its place in token rows instead,
// [B * n, merge_parts * heads * d] as part merge_part (the GPT's merge of
// the heads, or of dq, dk, dv into dqkv, without its own pass).
override MERGED: u32 = 0u;

fn out_index(idx: u32) -> u32 {
    if (MERGED == 0u) {
        return idx;
    }
    let g = idx / (p.n * p.d);
    let t = (idx / p.d) % p.n;
    let b = g / p.heads;
    let h = g - b * p.heads;
    let width = p.merge_parts * p.heads * p.d;
    return (b * p.n + t) * width + (p.merge_part * p.heads + h) * p.d + idx % p.d;
}

@group(0) @binding(1) var<storage, read> fo_y: array<f32>;
@group(0) @binding(2) var<storage, read> fo_v: array<f32>;
// A U' with U' = [U | r - a], [matrices * n, d + 1].
@group(0) @binding(3) var<storage, read> fo_au: array<f32>;
@group(0) @binding(4) var<storage, read> fo_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> fo_mass: array<f32>;
@group(0) @binding(6) var<storage, read> fo_lambda: array<f32>;
@group(0) @binding(7) var<storage, read_write> fo_out: array<f32>;

@compute @workgroup_size(64)
fn fused_output(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.matrices * p.n * p.d) {
        return;
    }
    let row = idx / p.d;
    let col = idx % p.d;
    let width = p.width;
    let lambda = fo_lambda[(row / p.n) % p.heads];
    let a = fo_stats[3u * row];
    let r = fo_stats[3u * row + 1u];
    let c = fo_stats[3u * row + 2u];
    let mass = max(fo_au[row * width + p.d] - a * (r - a) - c, 0.0);
    if (col == 0u) {
        fo_mass[row] = mass;
    }
    let mv = fo_au[row * width + col] - a * fo_y[idx] - (c - a * a) * fo_v[idx];
    fo_out[out_index(idx)] = (fo_y[idx] + lambda * mv) / (1.0 + lambda * mass);
}

// ---- output_adjoints --------------------------------------------------------

@group(0) @binding(1) var<storage, read> oa_grad: array<f32>;
@group(0) @binding(2) var<storage, read> oa_y: array<f32>;
@group(0) @binding(3) var<storage, read> oa_v: array<f32>;
// A U' with U' = [U | r - a], [matrices * n, d + 1].
@group(0) @binding(4) var<storage, read> oa_au: array<f32>;
@group(0) @binding(5) var<storage, read> oa_stats: array<f32>;
@group(0) @binding(6) var<storage, read> oa_lambda: array<f32>;
// W = [dMV | dm], [matrices * n, d + 1]: one product with U'^T gives both
// dMV U^T and dm (r - a)^T.
@group(0) @binding(7) var<storage, read_write> oa_w: array<f32>;
// [matrices * n, 4]: t = dMV . V, q = dMV . Y, s, s (G . MV - m G . O).
@group(0) @binding(8) var<storage, read_write> oa_row: array<f32>;

// What output_adjoints needs of a row besides its columns: λ of its head,
// a and c, and m and s = 1 / (1 + λ m) exactly as fused_output forms m.
struct OaTerms {
    lambda: f32,
    a: f32,
    c: f32,
    mass: f32,
    s: f32,
}

fn oa_terms(row: u32) -> OaTerms {
    var t: OaTerms;
    t.lambda = oa_lambda[(row / p.n) % p.heads];
    t.a = oa_stats[3u * row];
    let r = oa_stats[3u * row + 1u];
    t.c = oa_stats[3u * row + 2u];
    t.mass = max(oa_au[row * p.width + p.d] - t.a * (r - t.a) - t.c, 0.0);
    t.s = 1.0 / (1.0 + t.lambda * t.mass);
    return t;
}

// Writes W's columns x = first, first + step, ... of the row and returns
// their shares of the rowdots (G . O, G . MV, G . V, G . Y).
fn oa_columns(row: u32, t: OaTerms, first: u32, step: u32) -> vec4<f32> {
    var sums = vec4<f32>(0.0);
    for (var x = first; x < p.d; x = x + step) {
        let i = row * p.d + x;
        let g = oa_grad[i];
        let y = oa_y[i];
        let v = oa_v[i];
        let mv = oa_au[row * p.width + x] - t.a * y - (t.c - t.a * t.a) * v;
        sums = sums + g * vec4<f32>(t.s * (y + t.lambda * mv), mv, v, y);
        oa_w[row * p.width + x] = t.lambda * t.s * g;
    }
    return sums;
}

// W's last column and padding, and the row's terms, from the full rowdots.
fn oa_finish(row: u32, t: OaTerms, sums: vec4<f32>) {
    let ls = t.lambda * t.s;
    oa_w[row * p.width + p.d] = -ls * sums.x;
    for (var x = p.d + 1u; x < p.width; x = x + 1u) {
        oa_w[row * p.width + x] = 0.0;
    }
    oa_row[4u * row] = ls * sums.z;
    oa_row[4u * row + 1u] = ls * sums.w;
    oa_row[4u * row + 2u] = t.s;
    oa_row[4u * row + 3u] = t.s * (sums.y - t.mass * sums.x);
}

@compute @workgroup_size(64)
fn output_adjoints(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.matrices * p.n) {
        return;
    }
    let t = oa_terms(row);
    let sums = reduce_sum4(lid, oa_columns(row, t, lid, WG));
    if (lid == 0u) {
        oa_finish(row, t, sums);
    }
}

@compute @workgroup_size(64)
fn output_adjoints_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.n) {
        return;
    }
    let t = oa_terms(row);
    oa_finish(row, t, oa_columns(row, t, 0u, 1u));
}

// ---- row_adjoints -----------------------------------------------------------

@group(0) @binding(1) var<storage, read> ra_grad: array<f32>;
@group(0) @binding(2) var<storage, read> ra_w: array<f32>;
// P = A^T W = [dU | w], [matrices * n, d + 1].
@group(0) @binding(3) var<storage, read> ra_p: array<f32>;
@group(0) @binding(4) var<storage, read> ra_v: array<f32>;
@group(0) @binding(5) var<storage, read> ra_stats: array<f32>;
@group(0) @binding(6) var<storage, read> ra_row: array<f32>;
@group(0) @binding(7) var<storage, read_write> ra_dy: array<f32>;
// [matrices * n, 3]: da, dr, dc.
@group(0) @binding(8) var<storage, read_write> ra_diag: array<f32>;

// Writes dY's columns x = first, first + step, ... of the row and returns
// their share of dU . V.
fn ra_columns(row: u32, first: u32, step: u32) -> f32 {
    let a = ra_stats[3u * row];
    let s = ra_row[4u * row + 2u];
    var u_v = 0.0;
    for (var x = first; x < p.d; x = x + step) {
        let i = row * p.d + x;
        let du = ra_p[row * p.width + x];
        ra_dy[i] = s * ra_grad[i] - a * ra_w[row * p.width + x] + du;
        u_v = u_v + du * ra_v[i];
    }
    return u_v;
}

// (da, dr, dc) of the row from the full dU . V.
fn ra_finish(row: u32, u_v: f32) {
    let a = ra_stats[3u * row];
    let r = ra_stats[3u * row + 1u];
    let dm = ra_w[row * p.width + p.d];
    let w = ra_p[row * p.width + p.d];
    let t = ra_row[4u * row];
    let q = ra_row[4u * row + 1u];
    ra_diag[3u * row] = -q + 2.0 * a * t - w - dm * (r - 2.0 * a) - u_v;
    ra_diag[3u * row + 1u] = w - dm * a;
    ra_diag[3u * row + 2u] = -t - dm;
}

@compute @workgroup_size(64)
fn row_adjoints(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.matrices * p.n) {
        return;
    }
    let u_v = reduce_sum(lid, ra_columns(row, lid, WG));
    if (lid == 0u) {
        ra_finish(row, u_v);
    }
}

@compute @workgroup_size(64)
fn row_adjoints_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.n) {
        return;
    }
    ra_finish(row, ra_columns(row, 0u, 1u));
}

// ---- output_adjoints_texture / row_adjoints_texture -------------------------

// The operands, copied as stored: texel i holds floats 4i .. 4i + 4.
@group(0) @binding(1) var adj_0: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var adj_1: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(3) var adj_2: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(4) var adj_3: texture_storage_2d_array<rgba32float, read>;

fn adj0(i: u32) -> vec4<f32> {
    let at = texel(i, p.shift0);
    return textureLoad(adj_0, at.xy, at.z);
}

fn adj1(i: u32) -> vec4<f32> {
    let at = texel(i, p.shift1);
    return textureLoad(adj_1, at.xy, at.z);
}

fn adj2(i: u32) -> vec4<f32> {
    let at = texel(i, p.shift2);
    return textureLoad(adj_2, at.xy, at.z);
}

fn adj3(i: u32) -> vec4<f32> {
    let at = texel(i, p.shift3);
    return textureLoad(adj_3, at.xy, at.z);
}

// output_adjoints_texture: adj_0 = G, adj_1 = Y, adj_2 = V, adj_3 = A U'.
@group(0) @binding(5) var<storage, read> oat_stats: array<f32>;
@group(0) @binding(6) var<storage, read> oat_lambda: array<f32>;
@group(0) @binding(7) var<storage, read_write> oat_w: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> oat_row: array<vec4<f32>>;

@compute @workgroup_size(64)
fn output_adjoints_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.n) {
        return;
    }
    let d4 = p.d / 4u;
    let w4 = p.width / 4u;
    let lambda = oat_lambda[(row / p.n) % p.heads];
    let a = oat_stats[3u * row];
    let r = oat_stats[3u * row + 1u];
    let c = oat_stats[3u * row + 2u];
    // As oa_terms: m from A U''s column D, the first of its last texel.
    let m = max(adj3(row * w4 + d4).x - a * (r - a) - c, 0.0);
    let s = 1.0 / (1.0 + lambda * m);
    var sums = vec4<f32>(0.0);
    for (var x = 0u; x < d4; x = x + 1u) {
        let g = adj0(row * d4 + x);
        let y = adj1(row * d4 + x);
        let v = adj2(row * d4 + x);
        let mv = adj3(row * w4 + x) - a * y - (c - a * a) * v;
        sums = sums + vec4<f32>(dot(g, s * (y + lambda * mv)), dot(g, mv), dot(g, v), dot(g, y));
        oat_w[row * w4 + x] = lambda * s * g;
    }
    let ls = lambda * s;
    oat_w[row * w4 + d4] = vec4<f32>(-ls * sums.x, 0.0, 0.0, 0.0);
    oat_row[row] = vec4<f32>(ls * sums.z, ls * sums.w, s, s * (sums.y - m * sums.x));
}

// row_adjoints_texture: adj_0 = G, adj_1 = W, adj_2 = P = A^T W, adj_3 = V.
@group(0) @binding(5) var<storage, read> rat_stats: array<f32>;
@group(0) @binding(6) var<storage, read> rat_row: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> rat_dy: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> rat_diag: array<f32>;

@compute @workgroup_size(64)
fn row_adjoints_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.matrices * p.n) {
        return;
    }
    let d4 = p.d / 4u;
    let w4 = p.width / 4u;
    let a = rat_stats[3u * row];
    let r = rat_stats[3u * row + 1u];
    let terms = rat_row[row];
    var u_v = 0.0;
    for (var x = 0u; x < d4; x = x + 1u) {
        let du = adj2(row * w4 + x);
        rat_dy[row * d4 + x] = terms.z * adj0(row * d4 + x) - a * adj1(row * w4 + x) + du;
        u_v = u_v + dot(du, adj3(row * d4 + x));
    }
    let dm = adj1(row * w4 + d4).x;
    let w = adj2(row * w4 + d4).x;
    rat_diag[3u * row] = -terms.y + 2.0 * a * terms.x - w - dm * (r - 2.0 * a) - u_v;
    rat_diag[3u * row + 1u] = w - dm * a;
    rat_diag[3u * row + 2u] = -terms.x - dm;
}

// ---- attention_grad ---------------------------------------------------------

@group(0) @binding(1) var<storage, read> ag_a: array<f32>;
// W U'^T = dMV U^T + dm (r - a)^T.
@group(0) @binding(2) var<storage, read> ag_wu: array<f32>;
@group(0) @binding(3) var<storage, read> ag_diag: array<f32>;
// In: dY V^T (from matmul.wgsl). Out: dA.
@group(0) @binding(4) var<storage, read_write> ag_out: array<f32>;

@compute @workgroup_size(64)
fn attention_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    let nn = p.n * p.n;
    if (idx >= p.matrices * nn) {
        return;
    }
    let map = idx / nn;
    let i = (idx % nn) / p.n;
    let j = idx % p.n;
    let ri = map * p.n + i;
    let rj = map * p.n + j;
    let g = ag_out[idx] + ag_wu[idx] + ag_diag[3u * ri + 1u];
    // c_p = sum_{k != p} A_pk A_kp, so A_pq (p != q) also enters c_q through A_qp.
    let pair = (ag_diag[3u * ri + 2u] + ag_diag[3u * rj + 2u]) * ag_a[map * nn + j * p.n + i];
    ag_out[idx] = g + select(pair, ag_diag[3u * ri], i == j);
}

// ---- attention_grad_texture -------------------------------------------------

// attention_grad by 4 x 4 blocks, A read from a texture (texel i = floats
// 4i .. 4i + 4 of A, placed by texel(); N a multiple of 4): the block's A^T
// is 4 texel loads, dY V^T and W U'^T 4 rows of vec4 each.
@group(0) @binding(1) var agt_map: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var<storage, read> agt_wu: array<vec4<f32>>;
// ag_diag at binding 3 as above.
@group(0) @binding(4) var<storage, read_write> agt_out: array<vec4<f32>>;

fn agt_texel(t: u32) -> vec4<f32> {
    let at = texel(t, p.map_shift);
    return textureLoad(agt_map, at.xy, at.z);
}

// Row r (of 4) of the block at rows i0.., columns j0.. of matrix `map`:
// t holds A_{j, i0 + r} for the block's 4 columns j.
fn agt_row(map: u32, i: u32, j0: u32, t: vec4<f32>, cj: vec4<f32>) {
    let n4 = p.n / 4u;
    let ri = map * p.n + i;
    let at = ri * n4 + j0 / 4u;
    let g = agt_out[at] + agt_wu[at] + ag_diag[3u * ri + 1u];
    let pair = (ag_diag[3u * ri + 2u] + cj) * t;
    // The diagonal element, where j = i, takes da_i instead of its pair term.
    let js = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u);
    agt_out[at] = g + select(pair, vec4<f32>(ag_diag[3u * ri]), js == vec4<u32>(i));
}

@compute @workgroup_size(64)
fn attention_grad_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = element_id(wid, nwg, lid);
    let n4 = p.n / 4u;
    if (block >= p.matrices * n4 * n4) {
        return;
    }
    let map = block / (n4 * n4);
    let i0 = 4u * ((block / n4) % n4);
    let j0 = 4u * (block % n4);
    // Rows j0 .. j0 + 4 of A at columns i0 .. i0 + 4: u_c[r] = A_{j0 + c, i0 + r}.
    let first = (map * p.n + j0) * n4 + i0 / 4u;
    let u0 = agt_texel(first);
    let u1 = agt_texel(first + n4);
    let u2 = agt_texel(first + 2u * n4);
    let u3 = agt_texel(first + 3u * n4);
    let rj = map * p.n + j0;
    let cj = vec4<f32>(
        ag_diag[3u * rj + 2u],
        ag_diag[3u * (rj + 1u) + 2u],
        ag_diag[3u * (rj + 2u) + 2u],
        ag_diag[3u * (rj + 3u) + 2u],
    );
    agt_row(map, i0, j0, vec4<f32>(u0.x, u1.x, u2.x, u3.x), cj);
    agt_row(map, i0 + 1u, j0, vec4<f32>(u0.y, u1.y, u2.y, u3.y), cj);
    agt_row(map, i0 + 2u, j0, vec4<f32>(u0.z, u1.z, u2.z, u3.z), cj);
    agt_row(map, i0 + 3u, j0, vec4<f32>(u0.w, u1.w, u2.w, u3.w), cj);
}

// ---- value_grad -------------------------------------------------------------

@group(0) @binding(1) var<storage, read> vg_w: array<f32>;
@group(0) @binding(2) var<storage, read> vg_p: array<f32>;
@group(0) @binding(3) var<storage, read> vg_stats: array<f32>;
// In: A^T dY (from matmul.wgsl). Out: dV (value_grad), or kept and dV
// written into vg_merged's token rows (value_grad_merged, MERGED = 1).
@group(0) @binding(4) var<storage, read_write> vg_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> vg_merged: array<f32>;

fn value_grad_at(idx: u32) -> f32 {
    let row = idx / p.d;
    let at = row * p.width + idx % p.d;
    let a = vg_stats[3u * row];
    let c = vg_stats[3u * row + 2u];
    return vg_out[idx] - (c - a * a) * vg_w[at] - a * vg_p[at];
}

@compute @workgroup_size(64)
fn value_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.matrices * p.n * p.d) {
        return;
    }
    vg_out[idx] = value_grad_at(idx);
}

@compute @workgroup_size(64)
fn value_grad_merged(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.matrices * p.n * p.d) {
        return;
    }
    vg_merged[out_index(idx)] = value_grad_at(idx);
}

// ---- lambda_grad ------------------------------------------------------------

@group(0) @binding(1) var<storage, read> lg_row: array<f32>;
// [heads].
@group(0) @binding(2) var<storage, read_write> lg_out: array<f32>;

@compute @workgroup_size(64)
fn lambda_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = linear_id(wid, nwg);
    if (h >= p.heads) {
        return;
    }
    let rows = (p.matrices / p.heads) * p.n;
    var s = 0.0;
    for (var k = lid; k < rows; k = k + WG) {
        let row = ((k / p.n) * p.heads + h) * p.n + k % p.n;
        s = s + lg_row[4u * row + 3u];
    }
    s = reduce_sum(lid, s);
    if (lid == 0u) {
        lg_out[h] = s;
    }
}
