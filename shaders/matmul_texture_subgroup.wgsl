// Batched matrix product  C[b] = alpha * op(A[b]) * op(B[b])  for software
// adapters with subgroups of 8 (lavapipe), reading A and B as read-only
// storage textures packed by matmul_pack.wgsl. Runs only on devices with the
// subgroup feature and, by the host's choice, a fixed subgroup size of 8
// (browsers also need `enable subgroups;`, which the host puts in front there).
//
// Versions:
//   matmul_texture_subgroup  v1: a subgroup of 8 computes 16 rows of C times
//                   a 32-column B panel; each invocation 16 rows x 4 columns
//                   (one texel). Each invocation loads 2 of the 16 A texels
//                   of a k step and subgroupBroadcast shares them, so A costs
//                   2 texel loads per invocation instead of 16 (+40 % on
//                   lavapipe). A row's 4 columns update together as one vec4.
//                   Broadcast lane ids must be constants, hence the unrolled
//                   body; the accumulators too are only ever indexed by
//                   constants (a dynamic index makes Mesa keep the array in
//                   scratch memory: 2.3x slower). Panels are zero-padded;
//                   only writes of C are masked.
//
// Parameters, texel placement, bindings, group placement and the store of C
// come from shared/matmul_panels.wgsl, put in front.

@compute @workgroup_size(64)
fn matmul_texture_subgroup(
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
    // acc[r]: row r of the block, this invocation's 4 columns.
    var acc: array<vec4<f32>, 16>;
    for (var kc = 0u; kc < p.k4; kc = kc + 1u) {
        let at = texel(g.a_first + kc * 16u, p.a_layer_shift);
        let lo = textureLoad(a_panels, at.xy + vec2<u32>(lane, 0u), at.z);
        let hi = textureLoad(a_panels, at.xy + vec2<u32>(lane + 8u, 0u), at.z);
        let bt = texel(g.b_first + kc * 32u, p.b_layer_shift);
        let b0 = textureLoad(b_panels, bt.xy + vec2<u32>(lane, 0u), bt.z);
        let b1 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 8u, 0u), bt.z);
        let b2 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 16u, 0u), bt.z);
        let b3 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 24u, 0u), bt.z);
        var x: vec4<f32>;
        x = subgroupBroadcast(lo, 0u);
        acc[0] = acc[0] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 0u);
        acc[8] = acc[8] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 1u);
        acc[1] = acc[1] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 1u);
        acc[9] = acc[9] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 2u);
        acc[2] = acc[2] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 2u);
        acc[10] = acc[10] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 3u);
        acc[3] = acc[3] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 3u);
        acc[11] = acc[11] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 4u);
        acc[4] = acc[4] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 4u);
        acc[12] = acc[12] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 5u);
        acc[5] = acc[5] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 5u);
        acc[13] = acc[13] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 6u);
        acc[6] = acc[6] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 6u);
        acc[14] = acc[14] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(lo, 7u);
        acc[7] = acc[7] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        x = subgroupBroadcast(hi, 7u);
        acc[15] = acc[15] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
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
}
