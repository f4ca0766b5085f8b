// Batched matrix product  C[b] = alpha * op(A[b]) * op(B[b])  for hardware GPUs:
// workgroup-memory tiles of storage buffers. Same parameters, bindings and
// layouts as matmul.wgsl (A is [batch, M, K] or [batch, K, M] when trans_a, B
// is [batch, K, N] or [batch, N, K] when trans_b, batch stride 0 broadcasts).
//
// Versions:
//   matmul_tiled  v2: a workgroup computes a BM x BN tile of C. Each step of
//                 BK along k, the workgroup stages a BM x BK slice of op(A)
//                 and a BK x BN slice of op(B) in workgroup memory (read
//                 along the operand's contiguous axis, so loads coalesce),
//                 then each invocation accumulates TM x TN outputs, strided
//                 by the invocation grid so workgroup-memory reads of B are
//                 consecutive. Out-of-range rows, columns and k are masked.
//                 The tile sizes are pipeline-overridable constants: the
//                 defaults below are the 64 x 64 x 16, 4 x 4 configuration,
//                 and the host sets others (128 x 128 x 8, 8 x 8) when it
//                 builds the pipeline. Every configuration keeps 256
//                 invocations, BK * BM and BK * BN within the 1,024-element
//                 tiles, and TM, TN <= 8.
//
// On software adapters (lavapipe, llvmpipe) workgroup memory is slower than
// plain loads; they use the texture family (matmul_texture.wgsl) instead.
//
// Parameters and bindings come from shared/matmul_params.wgsl, put in front.

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
override TM: u32 = 4u;
override TN: u32 = 4u;

// The invocation grid: WX columns by WY rows, WX * WY = THREADS.
override WX: u32 = BN / TN;
override WY: u32 = BM / TM;
const THREADS: u32 = 256u;
// Function-scope arrays need sizes fixed before overrides are known: the
// accumulators are sized for the largest TM and TN, and tiles for the
// largest BK * BM (the compiler sees the constants and drops what is unused).
const TMAX: u32 = 8u;
const TILE_ELEMENTS: u32 = 1024u;

var<workgroup> a_tile: array<f32, TILE_ELEMENTS>;
var<workgroup> b_tile: array<f32, TILE_ELEMENTS>;

@compute @workgroup_size(THREADS)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = linear_id(wid, nwg);
    let tiles_per_matrix = p.tiles_m * p.tiles_n;
    // The same for the whole workgroup, so the barriers below stay uniform.
    if (tile >= tiles_per_matrix * p.batch) {
        return;
    }
    let batch = tile / tiles_per_matrix;
    let t = tile % tiles_per_matrix;
    let row0 = (t / p.tiles_n) * BM;
    let col0 = (t % p.tiles_n) * BN;
    let a_base = batch * p.a_batch_stride;
    let b_base = batch * p.b_batch_stride;
    let tx = lid % WX;
    let ty = lid / WX;

    var acc: array<array<f32, TMAX>, TMAX>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        for (var i = lid; i < BM * BK; i = i + THREADS) {
            var row: u32;
            var kk: u32;
            if (p.trans_a != 0u) {
                // A is [K, M]: consecutive invocations read consecutive rows.
                row = i % BM;
                kk = i / BM;
            } else {
                row = i / BK;
                kk = i % BK;
            }
            let gr = row0 + row;
            let gk = k0 + kk;
            var v = 0.0;
            if (gr < p.m && gk < p.k) {
                if (p.trans_a != 0u) {
                    v = a[a_base + gk * p.m + gr];
                } else {
                    v = a[a_base + gr * p.k + gk];
                }
            }
            a_tile[kk * BM + row] = v;
        }
        for (var i = lid; i < BN * BK; i = i + THREADS) {
            var col: u32;
            var kk: u32;
            if (p.trans_b != 0u) {
                // B is [N, K]: consecutive invocations read consecutive k.
                col = i / BK;
                kk = i % BK;
            } else {
                col = i % BN;
                kk = i / BN;
            }
            let gc = col0 + col;
            let gk = k0 + kk;
            var v = 0.0;
            if (gc < p.n && gk < p.k) {
                if (p.trans_b != 0u) {
                    v = b[b_base + gc * p.k + gk];
                } else {
                    v = b[b_base + gk * p.n + gc];
                }
            }
            b_tile[kk * BN + col] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            var av: array<f32, TMAX>;
            var bv: array<f32, TMAX>;
            for (var i = 0u; i < TM; i = i + 1u) {
                av[i] = a_tile[kk * BM + ty + i * WY];
            }
            for (var j = 0u; j < TN; j = j + 1u) {
                bv[j] = b_tile[kk * BN + tx + j * WX];
            }
            for (var i = 0u; i < TM; i = i + 1u) {
                for (var j = 0u; j < TN; j = j + 1u) {
                    acc[i][j] = acc[i][j] + av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    let c_base = batch * p.m * p.n;
    for (var i = 0u; i < TM; i = i + 1u) {
        let row = row0 + ty + i * WY;
        if (row < p.m) {
            for (var j = 0u; j < TN; j = j + 1u) {
                let col = col0 + tx + j * WX;
                if (col < p.n) {
                    c[c_base + row * p.n + col] = p.alpha * acc[i][j];
                }
            }
        }
    }
}
