// DELIBERATELY WRONG: a copy of matmul_blocked (../matmul.wgsl) whose k loop
// stops one term short, so C misses the last product A[:, K-1] * B[K-1, :]
// (and is all zeros when K = 1).
//
// It exists only so that the conformance report can be shown to fail: it is
// reachable through `saobp conformance --inject-fault matmul` and the hidden
// `conformance::Options::fault`, never through the library's matmul.

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    alpha: f32,
    tiles_m: u32,
    tiles_n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TILE: u32 = 32u;
const BLOCK: u32 = 4u;

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_a != 0u) {
        return a[base + kk * p.m + row];
    }
    return a[base + row * p.k + kk];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (col >= p.n || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_b != 0u) {
        return b[base + col * p.k + kk];
    }
    return b[base + kk * p.n + col];
}

@compute @workgroup_size(64)
fn matmul_blocked(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Linear workgroup id: the host splits large grids over x and y.
    let tile = wid.x + wid.y * nwg.x;
    let tiles_per_matrix = p.tiles_m * p.tiles_n;
    if (tile >= tiles_per_matrix * p.batch) {
        return;
    }
    let batch = tile / tiles_per_matrix;
    let t = tile % tiles_per_matrix;
    let row0 = (t / p.tiles_n) * TILE + (lid / 8u) * BLOCK;
    let col0 = (t % p.tiles_n) * TILE + (lid % 8u) * BLOCK;
    let a_base = batch * p.a_batch_stride;
    let b_base = batch * p.b_batch_stride;

    var acc: array<array<f32, 4>, 4>;
    for (var kk = 0u; kk + 1u < p.k; kk = kk + 1u) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < BLOCK; i = i + 1u) {
            av[i] = load_a(a_base, row0 + i, kk);
            bv[i] = load_b(b_base, kk, col0 + i);
        }
        for (var i = 0u; i < BLOCK; i = i + 1u) {
            for (var j = 0u; j < BLOCK; j = j + 1u) {
                acc[i][j] = acc[i][j] + av[i] * bv[j];
            }
        }
    }
    let c_base = batch * p.m * p.n;
    for (var i = 0u; i < BLOCK; i = i + 1u) {
        let row = row0 + i;
        if (row < p.m) {
            for (var j = 0u; j < BLOCK; j = j + 1u) {
                let col = col0 + j;
                if (col < p.n) {
                    c[c_base + row * p.n + col] = p.alpha * acc[i][j];
                }
            }
        }
    }
}
