// Batched matrix product  C[b] = alpha * op(A[b]) * op(B[b])  for software
// adapters without subgroups (llvmpipe GL), reading A and B as read-only
// storage textures packed by matmul_pack.wgsl. On llvmpipe a texel load costs
// about half of one f32 storage-buffer load and brings 4 floats, which makes
// this 15-20x faster there than any storage-buffer kernel.
//
// Versions:
//   matmul_texture  v1: groups of 8 invocations share a 16-row A panel; each
//                   invocation computes 16 rows x 8 columns (two texels of a
//                   64-column B panel), updating a row's 4 columns at once as
//                   one vec4. Panels are zero-padded, so the k loop needs no
//                   masks; only the writes of C are masked. Every access to
//                   the accumulator arrays uses a constant index (the body is
//                   unrolled): one dynamic index makes Mesa keep the whole
//                   array in scratch memory, which halves the speed.
//
// The same kernel with subgroupBroadcast of A is matmul_texture_subgroup.wgsl.
//
// Parameters, texel placement (and for the multiply kernels, bindings, group
// placement and the store of C) come from shared/matmul_panels.wgsl, put in front.

@compute @workgroup_size(64)
fn matmul_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lid % 8u;
    let g = place(linear_id(wid, nwg), lid / 8u);
    if (!g.ok) {
        return;
    }
    var left: array<vec4<f32>, 16>;
    var right: array<vec4<f32>, 16>;
    for (var kc = 0u; kc < p.k4; kc = kc + 1u) {
        let bt = texel(g.b_first + kc * 64u, p.b_layer_shift);
        let b0 = textureLoad(b_panels, bt.xy + vec2<u32>(lane, 0u), bt.z);
        let b1 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 16u, 0u), bt.z);
        let b2 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 32u, 0u), bt.z);
        let b3 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 48u, 0u), bt.z);
        let d0 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 8u, 0u), bt.z);
        let d1 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 24u, 0u), bt.z);
        let d2 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 40u, 0u), bt.z);
        let d3 = textureLoad(b_panels, bt.xy + vec2<u32>(lane + 56u, 0u), bt.z);
        let at = texel(g.a_first + kc * 16u, p.a_layer_shift);
        var x: vec4<f32>;
        x = textureLoad(a_panels, at.xy + vec2<u32>(0u, 0u), at.z);
        left[0] = left[0] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[0] = right[0] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(1u, 0u), at.z);
        left[1] = left[1] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[1] = right[1] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(2u, 0u), at.z);
        left[2] = left[2] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[2] = right[2] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(3u, 0u), at.z);
        left[3] = left[3] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[3] = right[3] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(4u, 0u), at.z);
        left[4] = left[4] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[4] = right[4] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(5u, 0u), at.z);
        left[5] = left[5] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[5] = right[5] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(6u, 0u), at.z);
        left[6] = left[6] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[6] = right[6] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(7u, 0u), at.z);
        left[7] = left[7] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[7] = right[7] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(8u, 0u), at.z);
        left[8] = left[8] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[8] = right[8] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(9u, 0u), at.z);
        left[9] = left[9] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[9] = right[9] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(10u, 0u), at.z);
        left[10] = left[10] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[10] = right[10] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(11u, 0u), at.z);
        left[11] = left[11] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[11] = right[11] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(12u, 0u), at.z);
        left[12] = left[12] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[12] = right[12] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(13u, 0u), at.z);
        left[13] = left[13] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[13] = right[13] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(14u, 0u), at.z);
        left[14] = left[14] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[14] = right[14] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
        x = textureLoad(a_panels, at.xy + vec2<u32>(15u, 0u), at.z);
        left[15] = left[15] + x.x * b0 + x.y * b1 + x.z * b2 + x.w * b3;
        right[15] = right[15] + x.x * d0 + x.y * d1 + x.z * d2 + x.w * d3;
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
