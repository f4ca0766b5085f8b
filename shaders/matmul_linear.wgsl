// Batched matrix product  C[b] = alpha * op(A[b]) * op(B[b])  for software
// adapters without subgroups (llvmpipe GL), reading A and B from read-only
// storage textures that hold each operand exactly as stored, as
// matmul_linear_subgroup.wgsl does with subgroups: the host fills them with
// buffer-to-texture copies instead of matmul_pack.wgsl's shader, which took
// about half of a tiny training step on llvmpipe GL. It serves the same
// operands: K a multiple of 4, and M for a stored A^T, N for a stored B;
// others are packed for matmul_texture.wgsl.
//
// Versions:
//   matmul_linear  v1: matmul_texture's work split (a group of 8 invocations
//                  computes 16 rows of C times 64 columns, each invocation
//                  16 rows x 8 columns: columns 4 lane .. + 4 and
//                  32 + 4 lane .. + 4), each invocation loading the 16
//                  rows' A values itself, with loads for the stored layouts:
//                    A   [M, K]: one texel (4 k) per row;
//                    A^T [K, M]: per 4 rows, one texel at each of the 4 k,
//                                transposed in registers;
//                    B   [K, N]: each of the lane's two column texels at 4
//                                consecutive k;
//                    B^T [N, K]: one texel (4 k) per column of the lane,
//                                transposed in registers.
//                  Rows and columns past the edge read the last one
//                  (clamped) and are never stored; K needs no padding.
//                  Accumulator indices are literals, as in matmul_texture.
//
// Parameters, texel placement, bindings, group placement and the store of C
// come from shared/matmul_panels.wgsl, the loads of the stored layouts from
// shared/matmul_linear.wgsl, both put in front.

// A stored [K, M]: rows 4 q .. 4 q + 4 (`rows`: the texel offset of q) at
// k = 4 kc .. 4 kc + 4, one vec4 of 4 k per row.
fn a_transposed(rows: u32, kc: u32) -> Quad {
    let m4 = p.m / 4u;
    let t0 = load_a(rows + 4u * kc * m4);
    let t1 = load_a(rows + (4u * kc + 1u) * m4);
    let t2 = load_a(rows + (4u * kc + 2u) * m4);
    let t3 = load_a(rows + (4u * kc + 3u) * m4);
    return Quad(
        vec4<f32>(t0.x, t1.x, t2.x, t3.x),
        vec4<f32>(t0.y, t1.y, t2.y, t3.y),
        vec4<f32>(t0.z, t1.z, t2.z, t3.z),
        vec4<f32>(t0.w, t1.w, t2.w, t3.w),
    );
}

@compute @workgroup_size(64)
fn matmul_linear(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lid % 8u;
    let g = place(linear_id(wid, nwg), lid / 8u);
    if (!g.ok) {
        return;
    }
    let a_base = a_offset(g.batch);
    let b_base = b_offset(g.batch);
    // Where this lane's B texels start: its two column texels (B), or the
    // rows of its 8 columns (B^T).
    var b_left: u32;
    var b_right: u32;
    var left_cols: vec4<u32>;
    var right_cols: vec4<u32>;
    if (TRANS_B == 0u) {
        let n4 = p.n / 4u;
        b_left = b_base + min(g.col0 / 4u + lane, n4 - 1u);
        b_right = b_base + min(g.col0 / 4u + lane + 8u, n4 - 1u);
    } else {
        left_cols = b_rows(b_base, g.col0 + lane * 4u);
        right_cols = b_rows(b_base, g.col0 + 32u + lane * 4u);
    }
    // left[r], right[r]: row r of the block, the lane's two groups of 4 columns.
    var left: array<vec4<f32>, 16>;
    var right: array<vec4<f32>, 16>;
    let m4 = p.m / 4u;
    for (var kc = 0u; kc < p.k4; kc = kc + 1u) {
        var b: Quad;
        var d: Quad;
        if (TRANS_B == 0u) {
            b = b_stored(b_left, kc);
            d = b_stored(b_right, kc);
        } else {
            b = b_transposed(left_cols, kc);
            d = b_transposed(right_cols, kc);
        }
        if (TRANS_A == 0u) {
            var x: vec4<f32>;
            x = load_a(a_base + min(g.row0 + 0u, p.m - 1u) * p.k4 + kc);
            left[0] = fma4(left[0], x, b);
            right[0] = fma4(right[0], x, d);
            x = load_a(a_base + min(g.row0 + 1u, p.m - 1u) * p.k4 + kc);
            left[1] = fma4(left[1], x, b);
            right[1] = fma4(right[1], x, d);
            x = load_a(a_base + min(g.row0 + 2u, p.m - 1u) * p.k4 + kc);
            left[2] = fma4(left[2], x, b);
            right[2] = fma4(right[2], x, d);
            x = load_a(a_base + min(g.row0 + 3u, p.m - 1u) * p.k4 + kc);
            left[3] = fma4(left[3], x, b);
            right[3] = fma4(right[3], x, d);
            x = load_a(a_base + min(g.row0 + 4u, p.m - 1u) * p.k4 + kc);
            left[4] = fma4(left[4], x, b);
            right[4] = fma4(right[4], x, d);
            x = load_a(a_base + min(g.row0 + 5u, p.m - 1u) * p.k4 + kc);
            left[5] = fma4(left[5], x, b);
            right[5] = fma4(right[5], x, d);
            x = load_a(a_base + min(g.row0 + 6u, p.m - 1u) * p.k4 + kc);
            left[6] = fma4(left[6], x, b);
            right[6] = fma4(right[6], x, d);
            x = load_a(a_base + min(g.row0 + 7u, p.m - 1u) * p.k4 + kc);
            left[7] = fma4(left[7], x, b);
            right[7] = fma4(right[7], x, d);
            x = load_a(a_base + min(g.row0 + 8u, p.m - 1u) * p.k4 + kc);
            left[8] = fma4(left[8], x, b);
            right[8] = fma4(right[8], x, d);
            x = load_a(a_base + min(g.row0 + 9u, p.m - 1u) * p.k4 + kc);
            left[9] = fma4(left[9], x, b);
            right[9] = fma4(right[9], x, d);
            x = load_a(a_base + min(g.row0 + 10u, p.m - 1u) * p.k4 + kc);
            left[10] = fma4(left[10], x, b);
            right[10] = fma4(right[10], x, d);
            x = load_a(a_base + min(g.row0 + 11u, p.m - 1u) * p.k4 + kc);
            left[11] = fma4(left[11], x, b);
            right[11] = fma4(right[11], x, d);
            x = load_a(a_base + min(g.row0 + 12u, p.m - 1u) * p.k4 + kc);
            left[12] = fma4(left[12], x, b);
            right[12] = fma4(right[12], x, d);
            x = load_a(a_base + min(g.row0 + 13u, p.m - 1u) * p.k4 + kc);
            left[13] = fma4(left[13], x, b);
            right[13] = fma4(right[13], x, d);
            x = load_a(a_base + min(g.row0 + 14u, p.m - 1u) * p.k4 + kc);
            left[14] = fma4(left[14], x, b);
            right[14] = fma4(right[14], x, d);
            x = load_a(a_base + min(g.row0 + 15u, p.m - 1u) * p.k4 + kc);
            left[15] = fma4(left[15], x, b);
            right[15] = fma4(right[15], x, d);
        } else {
            var x4: Quad;
            x4 = a_transposed(a_base + min(g.row0 / 4u + 0u, m4 - 1u), kc);
            left[0] = fma4(left[0], x4.r0, b);
            right[0] = fma4(right[0], x4.r0, d);
            left[1] = fma4(left[1], x4.r1, b);
            right[1] = fma4(right[1], x4.r1, d);
            left[2] = fma4(left[2], x4.r2, b);
            right[2] = fma4(right[2], x4.r2, d);
            left[3] = fma4(left[3], x4.r3, b);
            right[3] = fma4(right[3], x4.r3, d);
            x4 = a_transposed(a_base + min(g.row0 / 4u + 1u, m4 - 1u), kc);
            left[4] = fma4(left[4], x4.r0, b);
            right[4] = fma4(right[4], x4.r0, d);
            left[5] = fma4(left[5], x4.r1, b);
            right[5] = fma4(right[5], x4.r1, d);
            left[6] = fma4(left[6], x4.r2, b);
            right[6] = fma4(right[6], x4.r2, d);
            left[7] = fma4(left[7], x4.r3, b);
            right[7] = fma4(right[7], x4.r3, d);
            x4 = a_transposed(a_base + min(g.row0 / 4u + 2u, m4 - 1u), kc);
            left[8] = fma4(left[8], x4.r0, b);
            right[8] = fma4(right[8], x4.r0, d);
            left[9] = fma4(left[9], x4.r1, b);
            right[9] = fma4(right[9], x4.r1, d);
            left[10] = fma4(left[10], x4.r2, b);
            right[10] = fma4(right[10], x4.r2, d);
            left[11] = fma4(left[11], x4.r3, b);
            right[11] = fma4(right[11], x4.r3, d);
            x4 = a_transposed(a_base + min(g.row0 / 4u + 3u, m4 - 1u), kc);
            left[12] = fma4(left[12], x4.r0, b);
            right[12] = fma4(right[12], x4.r0, d);
            left[13] = fma4(left[13], x4.r1, b);
            right[13] = fma4(right[13], x4.r1, d);
            left[14] = fma4(left[14], x4.r2, b);
            right[14] = fma4(right[14], x4.r2, d);
            left[15] = fma4(left[15], x4.r3, b);
            right[15] = fma4(right[15], x4.r3, d);
        }
    }
    store(g.batch, g.row0 + 0u, g.col0 + lane * 4u, left[0]);
    store(g.batch, g.row0 + 0u, g.col0 + 32u + lane * 4u, right[0]);
    store(g.batch, g.row0 + 1u, g.col0 + lane * 4u, left[1]);
    store(g.batch, g.row0 + 1u, g.col0 + 32u + lane * 4u, right[1]);
    store(g.batch, g.row0 + 2u, g.col0 + lane * 4u, left[2]);
    store(g.batch, g.row0 + 2u, g.col0 + 32u + lane * 4u, right[2]);
    store(g.batch, g.row0 + 3u, g.col0 + lane * 4u, left[3]);
    store(g.batch, g.row0 + 3u, g.col0 + 32u + lane * 4u, right[3]);
    store(g.batch, g.row0 + 4u, g.col0 + lane * 4u, left[4]);
    store(g.batch, g.row0 + 4u, g.col0 + 32u + lane * 4u, right[4]);
    store(g.batch, g.row0 + 5u, g.col0 + lane * 4u, left[5]);
    store(g.batch, g.row0 + 5u, g.col0 + 32u + lane * 4u, right[5]);
    store(g.batch, g.row0 + 6u, g.col0 + lane * 4u, left[6]);
    store(g.batch, g.row0 + 6u, g.col0 + 32u + lane * 4u, right[6]);
    store(g.batch, g.row0 + 7u, g.col0 + lane * 4u, left[7]);
    store(g.batch, g.row0 + 7u, g.col0 + 32u + lane * 4u, right[7]);
    store(g.batch, g.row0 + 8u, g.col0 + lane * 4u, left[8]);
    store(g.batch, g.row0 + 8u, g.col0 + 32u + lane * 4u, right[8]);
    store(g.batch, g.row0 + 9u, g.col0 + lane * 4u, left[9]);
    store(g.batch, g.row0 + 9u, g.col0 + 32u + lane * 4u, right[9]);
    store(g.batch, g.row0 + 10u, g.col0 + lane * 4u, left[10]);
    store(g.batch, g.row0 + 10u, g.col0 + 32u + lane * 4u, right[10]);
    store(g.batch, g.row0 + 11u, g.col0 + lane * 4u, left[11]);
    store(g.batch, g.row0 + 11u, g.col0 + 32u + lane * 4u, right[11]);
    store(g.batch, g.row0 + 12u, g.col0 + lane * 4u, left[12]);
    store(g.batch, g.row0 + 12u, g.col0 + 32u + lane * 4u, right[12]);
    store(g.batch, g.row0 + 13u, g.col0 + lane * 4u, left[13]);
    store(g.batch, g.row0 + 13u, g.col0 + 32u + lane * 4u, right[13]);
    store(g.batch, g.row0 + 14u, g.col0 + lane * 4u, left[14]);
    store(g.batch, g.row0 + 14u, g.col0 + 32u + lane * 4u, right[14]);
    store(g.batch, g.row0 + 15u, g.col0 + lane * 4u, left[15]);
    store(g.batch, g.row0 + 15u, g.col0 + 32u + lane * 4u, right[15]);
}
