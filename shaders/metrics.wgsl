// Attention metrics (defined in src/reference/metrics.rs) for any row-stochastic P = A or R,
// [matrices, n, n] with matrices = B*H.
//
//   row_metrics  v1: one workgroup per row. Writes rows[METRIC, matrices*n]:
//                0 entropy, 1 normalized entropy, 2 sparsity, 3 peak,
//                4 distance, 5 multi-hop mass m, 6 GTD, 7 weight
//                (1 when the row counts in summaries: query not padded, n_i >= 1).
//                n_i counts the valid keys from the masks, not the nonzeros of P.
//   summarize    v1: one workgroup per head: the weighted mean of each metric
//                over its rows; out[head, 8], the last entry the row count.

struct Params {
    matrices: u32,
    n: u32,
    heads: u32,
    causal: u32,
    has_mask: u32,
    // GTD with lambda_h (refined map) or with lambda = 1 (plain map).
    use_lambda: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const METRICS: u32 = 8u;

// ---- row_metrics ------------------------------------------------------------

@group(0) @binding(1) var<storage, read> rm_p: array<f32>;
@group(0) @binding(2) var<storage, read> rm_mask: array<f32>;
@group(0) @binding(3) var<storage, read> rm_mass: array<f32>;
@group(0) @binding(4) var<storage, read> rm_lambda: array<f32>;
@group(0) @binding(5) var<storage, read_write> rm_rows: array<f32>;

fn key_kept(b: u32, j: u32) -> bool {
    return p.has_mask == 0u || rm_mask[b * p.n + j] != 0.0;
}

@compute @workgroup_size(64)
fn row_metrics(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    let total = p.matrices * p.n;
    if (row >= total) {
        return;
    }
    let g = row / p.n;
    let i = row % p.n;
    let b = g / p.heads;
    let base = row * p.n;
    var count = 0.0;
    var entropy = 0.0;
    var peak = 0.0;
    var distance = 0.0;
    for (var j = lid; j < p.n; j = j + WG) {
        if ((p.causal == 0u || j <= i) && key_kept(b, j)) {
            count = count + 1.0;
        }
        let q = rm_p[base + j];
        if (q > 0.0) {
            entropy = entropy - q * log(q);
        }
        peak = max(peak, q);
        distance = distance + q * abs(f32(i) - f32(j));
    }
    count = reduce_sum(lid, count);
    entropy = max(reduce_sum(lid, entropy), 0.0);
    peak = reduce_max(lid, peak);
    distance = reduce_sum(lid, distance);
    if (lid == 0u) {
        var normalized = 0.0;
        if (count > 1.0) {
            normalized = clamp(entropy / log(count), 0.0, 1.0);
        }
        var sparsity = 0.0;
        if (count >= 1.0) {
            sparsity = clamp(1.0 - exp(entropy) / count, 0.0, 1.0);
        }
        let m = rm_mass[row];
        var lambda = 1.0;
        if (p.use_lambda != 0u) {
            lambda = rm_lambda[g % p.heads];
        }
        let weight = select(0.0, 1.0, count >= 1.0 && key_kept(b, i));
        rm_rows[row] = entropy;
        rm_rows[total + row] = normalized;
        rm_rows[2u * total + row] = sparsity;
        rm_rows[3u * total + row] = peak;
        rm_rows[4u * total + row] = distance;
        rm_rows[5u * total + row] = m;
        rm_rows[6u * total + row] = lambda * m / (1.0 + lambda * m);
        rm_rows[7u * total + row] = weight;
    }
}

// ---- summarize --------------------------------------------------------------

@group(0) @binding(1) var<storage, read> sm_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> sm_out: array<f32>;

@compute @workgroup_size(64)
fn summarize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = linear_id(wid, nwg);
    if (g >= p.matrices) {
        return;
    }
    let total = p.matrices * p.n;
    let first = g * p.n;
    var w = 0.0;
    for (var i = lid; i < p.n; i = i + WG) {
        w = w + sm_rows[7u * total + first + i];
    }
    let count = reduce_sum(lid, w);
    for (var metric = 0u; metric < METRICS - 1u; metric = metric + 1u) {
        var s = 0.0;
        for (var i = lid; i < p.n; i = i + WG) {
            s = s + sm_rows[7u * total + first + i] * sm_rows[metric * total + first + i];
        }
        s = reduce_sum(lid, s);
        if (lid == 0u) {
            sm_out[g * METRICS + metric] = select(0.0, s / count, count > 0.0);
        }
    }
    if (lid == 0u) {
        sm_out[g * METRICS + METRICS - 1u] = count;
    }
}
