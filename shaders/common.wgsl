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

var<workgroup> scratch2: array<vec2<f32>, 64>;
var<workgroup> scratch4: array<vec4<f32>, 64>;

// Componentwise `reduce_sum` of two (four) sums at once: the same tree, so
// the same bits as separate calls, with a quarter (an eighth) of the barriers,
// which dominate short rows on CPU adapters.
fn reduce_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    workgroupBarrier();
    scratch2[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            scratch2[lid] = scratch2[lid] + scratch2[lid + s];
        }
        workgroupBarrier();
    }
    return scratch2[0];
}

fn reduce_sum4(lid: u32, v: vec4<f32>) -> vec4<f32> {
    workgroupBarrier();
    scratch4[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            scratch4[lid] = scratch4[lid] + scratch4[lid + s];
        }
        workgroupBarrier();
    }
    return scratch4[0];
}

// Componentwise `reduce_max` of two maxima at once.
fn reduce_max2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    workgroupBarrier();
    scratch2[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            scratch2[lid] = max(scratch2[lid], scratch2[lid + s]);
        }
        workgroupBarrier();
    }
    return scratch2[0];
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

// Where texel `i` of a panel texture lies, (x, y, layer): 128 texels per
// row, layers of 2^shift rows. The matmul's and the flash kernels' packed
// operands both use this placement.
fn texel(i: u32, shift: u32) -> vec3<u32> {
    let row = i >> 7u;
    return vec3<u32>(i & 127u, row & ((1u << shift) - 1u), row >> shift);
}
