// Batched matrix product  C[b] = alpha * op(A[b]) * op(B[b])  for software
// adapters with subgroups of 8 (lavapipe), reading A and B from read-only
// storage textures that hold each operand exactly as stored: texel i is
// floats 4i .. 4i + 4 of its buffer, placed by texel(). The host fills them
// with buffer-to-texture copies, a transfer that lavapipe does as a memcpy,
// where matmul_pack.wgsl's per-texel shader costs more than the product
// itself at training sizes (its storage-buffer loads run one lane at a
// time). So it serves operands whose stored rows are whole texels: K a
// multiple of 4, and M for a stored A^T, N for a stored B; others are packed.
//
// Versions:
//   matmul_linear_subgroup  v1: matmul_texture_subgroup's work split (a
//                   subgroup of 8 computes 16 rows of C times 32 columns,
//                   each invocation 16 rows x 4 columns, the 16 A texels of
//                   a k step loaded two per invocation and shared by
//                   subgroupBroadcast) with loads for the stored layouts:
//                     A   [M, K]: lane l loads rows l and l + 8, 4 k each;
//                     A^T [K, M]: lane l loads rows 4 (l % 4) .. + 4 at
//                                 k = 4 kc + l / 4 and 4 kc + 2 + l / 4,
//                                 transposed in registers after the broadcast;
//                     B   [K, N]: the lane's 4 columns at 4 consecutive k;
//                     B^T [N, K]: one texel (4 k) per column of the lane,
//                                 transposed in registers.
//                   TRANS_A and TRANS_B are pipeline constants, so each
//                   pipeline keeps one load path. Rows and columns past the
//                   edge read the last one (clamped) and are never stored;
//                   K needs no padding. Broadcast lane ids and accumulator
//                   indices are literals, as in matmul_texture_subgroup.
//                           v2: 32 rows of C per subgroup: A as stored,
//                   lane l loads rows l, l + 8, l + 16 and l + 24; A^T, two
//                   more texels per lane for rows 16 .. 32. Each B texel
//                   serves twice the rows, 8 texel loads per 8,192 flops
//                   instead of 6 per 4,096: about 15 % faster from 1024^3 up
//                   on lavapipe, 3-5 % off the small preset's training step.
//                   The host's block_rows is 32 for this kernel.
//
// Parameters, texel placement, bindings, group placement and the store of C
// come from shared/matmul_panels.wgsl, the loads of the stored layouts from
// shared/matmul_linear.wgsl, both put in front; of Params this uses batch,
// m, n, k, the batch strides, alpha, k4 and the tiling fields.

@compute @workgroup_size(64)
fn matmul_linear_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) group: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let g = place(linear_id(wid, nwg), group);
    // Whole subgroups leave together, so the broadcasts below stay uniform.
    if (!g.ok) {
        return;
    }
    let a_base = a_offset(g.batch);
    let b_base = b_offset(g.batch);
    // Where this lane's A texels start; the k step adds kc (A) or 4 kc rows (A^T).
    // A as stored: rows lane + 8 j (a_0 .. a_3); A^T: a_0 and a_1 for rows
    // 0 .. 16, a_2 and a_3 for rows 16 .. 32.
    var a_0: u32;
    var a_1: u32;
    var a_2: u32;
    var a_3: u32;
    if (TRANS_A == 0u) {
        a_0 = a_base + min(g.row0 + lane, p.m - 1u) * p.k4;
        a_1 = a_base + min(g.row0 + lane + 8u, p.m - 1u) * p.k4;
        a_2 = a_base + min(g.row0 + lane + 16u, p.m - 1u) * p.k4;
        a_3 = a_base + min(g.row0 + lane + 24u, p.m - 1u) * p.k4;
    } else {
        let m4 = p.m / 4u;
        let rows = a_base + min(g.row0 / 4u + lane % 4u, m4 - 1u);
        let rows2 = a_base + min(g.row0 / 4u + 4u + lane % 4u, m4 - 1u);
        a_0 = rows + (lane / 4u) * m4;
        a_1 = rows + (2u + lane / 4u) * m4;
        a_2 = rows2 + (lane / 4u) * m4;
        a_3 = rows2 + (2u + lane / 4u) * m4;
    }
    // Where this lane's B texels start: its column texel (B), or its 4
    // columns' rows (B^T).
    var b_col: u32;
    var b_cols: vec4<u32>;
    if (TRANS_B == 0u) {
        b_col = b_base + min(g.col0 / 4u + lane, p.n / 4u - 1u);
    } else {
        b_cols = b_rows(b_base, g.col0 + lane * 4u);
    }
    // acc[r]: row r of the block, this invocation's 4 columns.
    var acc: array<vec4<f32>, 32>;
    for (var kc = 0u; kc < p.k4; kc = kc + 1u) {
        var b: Quad;
        if (TRANS_B == 0u) {
            b = b_stored(b_col, kc);
        } else {
            b = b_transposed(b_cols, kc);
        }
        if (TRANS_A == 0u) {
            let x0 = load_a(a_0 + kc);
            let x1 = load_a(a_1 + kc);
            let x2 = load_a(a_2 + kc);
            let x3 = load_a(a_3 + kc);
            acc[0] = fma4(acc[0], subgroupBroadcast(x0, 0u), b);
            acc[8] = fma4(acc[8], subgroupBroadcast(x1, 0u), b);
            acc[16] = fma4(acc[16], subgroupBroadcast(x2, 0u), b);
            acc[24] = fma4(acc[24], subgroupBroadcast(x3, 0u), b);
            acc[1] = fma4(acc[1], subgroupBroadcast(x0, 1u), b);
            acc[9] = fma4(acc[9], subgroupBroadcast(x1, 1u), b);
            acc[17] = fma4(acc[17], subgroupBroadcast(x2, 1u), b);
            acc[25] = fma4(acc[25], subgroupBroadcast(x3, 1u), b);
            acc[2] = fma4(acc[2], subgroupBroadcast(x0, 2u), b);
            acc[10] = fma4(acc[10], subgroupBroadcast(x1, 2u), b);
            acc[18] = fma4(acc[18], subgroupBroadcast(x2, 2u), b);
            acc[26] = fma4(acc[26], subgroupBroadcast(x3, 2u), b);
            acc[3] = fma4(acc[3], subgroupBroadcast(x0, 3u), b);
            acc[11] = fma4(acc[11], subgroupBroadcast(x1, 3u), b);
            acc[19] = fma4(acc[19], subgroupBroadcast(x2, 3u), b);
            acc[27] = fma4(acc[27], subgroupBroadcast(x3, 3u), b);
            acc[4] = fma4(acc[4], subgroupBroadcast(x0, 4u), b);
            acc[12] = fma4(acc[12], subgroupBroadcast(x1, 4u), b);
            acc[20] = fma4(acc[20], subgroupBroadcast(x2, 4u), b);
            acc[28] = fma4(acc[28], subgroupBroadcast(x3, 4u), b);
            acc[5] = fma4(acc[5], subgroupBroadcast(x0, 5u), b);
            acc[13] = fma4(acc[13], subgroupBroadcast(x1, 5u), b);
            acc[21] = fma4(acc[21], subgroupBroadcast(x2, 5u), b);
            acc[29] = fma4(acc[29], subgroupBroadcast(x3, 5u), b);
            acc[6] = fma4(acc[6], subgroupBroadcast(x0, 6u), b);
            acc[14] = fma4(acc[14], subgroupBroadcast(x1, 6u), b);
            acc[22] = fma4(acc[22], subgroupBroadcast(x2, 6u), b);
            acc[30] = fma4(acc[30], subgroupBroadcast(x3, 6u), b);
            acc[7] = fma4(acc[7], subgroupBroadcast(x0, 7u), b);
            acc[15] = fma4(acc[15], subgroupBroadcast(x1, 7u), b);
            acc[23] = fma4(acc[23], subgroupBroadcast(x2, 7u), b);
            acc[31] = fma4(acc[31], subgroupBroadcast(x3, 7u), b);
        } else {
            let step = kc * 4u * (p.m / 4u);
            let lo = load_a(a_0 + step);
            let hi = load_a(a_1 + step);
            let lo2 = load_a(a_2 + step);
            let hi2 = load_a(a_3 + step);
            // x_j: rows 4 g .. 4 g + 4 (rows 16 + 4 g .. from lo2 and hi2)
            // at k = 4 kc + j, from lane g (j = 0, 2) or g + 4 (j = 1, 3).
            var x0: vec4<f32>;
            var x1: vec4<f32>;
            var x2: vec4<f32>;
            var x3: vec4<f32>;
            x0 = subgroupBroadcast(lo, 0u);
            x1 = subgroupBroadcast(lo, 4u);
            x2 = subgroupBroadcast(hi, 0u);
            x3 = subgroupBroadcast(hi, 4u);
            acc[0] = fma4(acc[0], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[1] = fma4(acc[1], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[2] = fma4(acc[2], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[3] = fma4(acc[3], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo, 1u);
            x1 = subgroupBroadcast(lo, 5u);
            x2 = subgroupBroadcast(hi, 1u);
            x3 = subgroupBroadcast(hi, 5u);
            acc[4] = fma4(acc[4], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[5] = fma4(acc[5], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[6] = fma4(acc[6], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[7] = fma4(acc[7], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo, 2u);
            x1 = subgroupBroadcast(lo, 6u);
            x2 = subgroupBroadcast(hi, 2u);
            x3 = subgroupBroadcast(hi, 6u);
            acc[8] = fma4(acc[8], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[9] = fma4(acc[9], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[10] = fma4(acc[10], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[11] = fma4(acc[11], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo, 3u);
            x1 = subgroupBroadcast(lo, 7u);
            x2 = subgroupBroadcast(hi, 3u);
            x3 = subgroupBroadcast(hi, 7u);
            acc[12] = fma4(acc[12], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[13] = fma4(acc[13], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[14] = fma4(acc[14], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[15] = fma4(acc[15], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo2, 0u);
            x1 = subgroupBroadcast(lo2, 4u);
            x2 = subgroupBroadcast(hi2, 0u);
            x3 = subgroupBroadcast(hi2, 4u);
            acc[16] = fma4(acc[16], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[17] = fma4(acc[17], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[18] = fma4(acc[18], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[19] = fma4(acc[19], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo2, 1u);
            x1 = subgroupBroadcast(lo2, 5u);
            x2 = subgroupBroadcast(hi2, 1u);
            x3 = subgroupBroadcast(hi2, 5u);
            acc[20] = fma4(acc[20], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[21] = fma4(acc[21], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[22] = fma4(acc[22], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[23] = fma4(acc[23], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo2, 2u);
            x1 = subgroupBroadcast(lo2, 6u);
            x2 = subgroupBroadcast(hi2, 2u);
            x3 = subgroupBroadcast(hi2, 6u);
            acc[24] = fma4(acc[24], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[25] = fma4(acc[25], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[26] = fma4(acc[26], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[27] = fma4(acc[27], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
            x0 = subgroupBroadcast(lo2, 3u);
            x1 = subgroupBroadcast(lo2, 7u);
            x2 = subgroupBroadcast(hi2, 3u);
            x3 = subgroupBroadcast(hi2, 7u);
            acc[28] = fma4(acc[28], vec4<f32>(x0.x, x1.x, x2.x, x3.x), b);
            acc[29] = fma4(acc[29], vec4<f32>(x0.y, x1.y, x2.y, x3.y), b);
            acc[30] = fma4(acc[30], vec4<f32>(x0.z, x1.z, x2.z, x3.z), b);
            acc[31] = fma4(acc[31], vec4<f32>(x0.w, x1.w, x2.w, x3.w), b);
        }
    }
    store(g.batch, g.row0 + 0u, g.col0 + lane * 4u, acc[0]);
    store(g.batch, g.row0 + 1u, g.col0 + lane * 4u, acc[1]);
    store(g.batch, g.row0 + 2u, g.col0 + lane * 4u, acc[2]);
    store(g.batch, g.row0 + 3u, g.col0 + lane * 4u, acc[3]);
    store(g.batch, g.row0 + 4u, g.col0 + lane * 4u, acc[4]);
    store(g.batch, g.row0 + 5u, g.col0 + lane * 4u, acc[5]);
    store(g.batch, g.row0 + 6u, g.col0 + lane * 4u, acc[6]);
    store(g.batch, g.row0 + 7u, g.col0 + lane * 4u, acc[7]);
    store(g.batch, g.row0 + 8u, g.col0 + lane * 4u, acc[8]);
    store(g.batch, g.row0 + 9u, g.col0 + lane * 4u, acc[9]);
    store(g.batch, g.row0 + 10u, g.col0 + lane * 4u, acc[10]);
    store(g.batch, g.row0 + 11u, g.col0 + lane * 4u, acc[11]);
    store(g.batch, g.row0 + 12u, g.col0 + lane * 4u, acc[12]);
    store(g.batch, g.row0 + 13u, g.col0 + lane * 4u, acc[13]);
    store(g.batch, g.row0 + 14u, g.col0 + lane * 4u, acc[14]);
    store(g.batch, g.row0 + 15u, g.col0 + lane * 4u, acc[15]);
    store(g.batch, g.row0 + 16u, g.col0 + lane * 4u, acc[16]);
    store(g.batch, g.row0 + 17u, g.col0 + lane * 4u, acc[17]);
    store(g.batch, g.row0 + 18u, g.col0 + lane * 4u, acc[18]);
    store(g.batch, g.row0 + 19u, g.col0 + lane * 4u, acc[19]);
    store(g.batch, g.row0 + 20u, g.col0 + lane * 4u, acc[20]);
    store(g.batch, g.row0 + 21u, g.col0 + lane * 4u, acc[21]);
    store(g.batch, g.row0 + 22u, g.col0 + lane * 4u, acc[22]);
    store(g.batch, g.row0 + 23u, g.col0 + lane * 4u, acc[23]);
    store(g.batch, g.row0 + 24u, g.col0 + lane * 4u, acc[24]);
    store(g.batch, g.row0 + 25u, g.col0 + lane * 4u, acc[25]);
    store(g.batch, g.row0 + 26u, g.col0 + lane * 4u, acc[26]);
    store(g.batch, g.row0 + 27u, g.col0 + lane * 4u, acc[27]);
    store(g.batch, g.row0 + 28u, g.col0 + lane * 4u, acc[28]);
    store(g.batch, g.row0 + 29u, g.col0 + lane * 4u, acc[29]);
    store(g.batch, g.row0 + 30u, g.col0 + lane * 4u, acc[30]);
    store(g.batch, g.row0 + 31u, g.col0 + lane * 4u, acc[31]);
}
