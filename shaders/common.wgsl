// Shared by every kernel family: prepended to each family's source when its
// pipelines are built (WGSL has no includes). Families must not redeclare
// these names.

// Invocations per workgroup of the kernels that use the reductions below
// (`@workgroup_size(64)`; each kernel's Rust declaration states its own size,
// and a test checks it against the shader, e.g. matmul_tiled uses 256).
const WG: u32 = 64u;

var<workgroup> scratch: array<f32, 64>;

// Sum of `v` over the workgroup. Call from uniform control flow; every
// invocation gets the result.
fn reduce_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            scratch[lid] = scratch[lid] + scratch[lid + s];
        }
        workgroupBarrier();
    }
    return scratch[0];
}

// Maximum of `v` over the workgroup, as `reduce_sum`.
fn reduce_max(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            scratch[lid] = max(scratch[lid], scratch[lid + s]);
        }
        workgroupBarrier();
    }
    return scratch[0];
}

// The linear workgroup id: the host splits grids over x and y when they
// exceed the per-dimension cap of 65,535.
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The element an invocation of an elementwise kernel handles.
fn element_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_id(wid, nwg) * WG + lid;
}
