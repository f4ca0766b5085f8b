// Batched matrix product  C[b] = alpha * op(A[b]) * op(B[b]),  op = identity or transpose.
//
// Shapes (row-major): A is [batch, M, K] (or [batch, K, M] when trans_a),
// B is [batch, K, N] (or [batch, N, K] when trans_b), C is [batch, M, N].
// A batch stride of 0 broadcasts one matrix over the batch.
//
// Versions:
//   matmul_blocked  v1: each invocation computes a 4x4 block of C straight from
//                   storage buffers; a workgroup of 8x8 invocations covers a
//                   32x32 tile. Every size works: out-of-range rows, columns
//                   and k are masked, not padded.
//
// Parameters and bindings come from shared/matmul_params.wgsl, put in front.

const TILE: u32 = 32u;
// Terms of the k loop left out at its end: 0 in every real product. The
// conformance runner sets 1 to show that its report catches a broken kernel.
override SKIPPED_K: u32 = 0u;
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
    let tile = linear_id(wid, nwg);
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
    for (var kk = 0u; kk + SKIPPED_K < p.k; kk = kk + 1u) {
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
