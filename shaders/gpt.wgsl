// Per-token layer ops of a GPT (GPT-2 layout): the forward where it differs
// from BERT's (bert.wgsl), and the backward of each. Rows are tokens: x is
// [rows, width], rows = B*T. No kernel here uses float atomics: every sum
// runs in a fixed order, so each result is bit-identical run to run.
//
//   embed                     x[t] = wte[id_t] + wpe[t mod n]; elementwise.
//                             Ids travel as f32: exact below 2^24 (the host checks).
//   embed_backward_tokens     dwte[v, c] (+)= sum of dx[t, c] over the tokens t with
//                             id v. The host sorts the tokens by id (order, with
//                             offsets[v]..offsets[v+1] the segment of id v): one
//                             invocation per (v, c) walks its segment in token order.
//   embed_backward_positions  dwpe[p, c] (+)= sum over sequences b of dx[b*n + p, c],
//                             in batch order; rows p >= n get 0.
//   layer_norm_forward        v1: one workgroup per row, two passes (mean, then the
//                             variance of the centred values), as bert's layer_norm;
//                             also stores (mean, 1/sigma) per row for the backward.
//   layer_norm_backward       dx (+)=, one workgroup per row: with g = dy*gamma and
//                             xh = (x - mean)/sigma, dx = (g - mean(g) - xh*mean(g*xh))/sigma.
//                             Accumulating adds the residual stream's gradient in the same pass.
//   layer_norm_params         dgamma = sum over rows of dy*xh, dbeta = sum of dy;
//                             one workgroup per column.
//   bias_gelu                 y = gelu(x + b), tanh form (gelu_new); elementwise.
//   gelu_backward             dx = dy * gelu'(x + b); elementwise.
//   column_sum                out[c] = sum over rows of x[r, c] (the bias gradient);
//                             one workgroup per column, fixed-order tree.
//   cross_entropy             one workgroup per row of logits: max-subtracted softmax,
//                             loss = (max - l[target]) + ln sum exp(l - max),
//                             dlogits = (softmax - onehot) / rows.
//   mean_loss                 one workgroup: the mean of the row losses.
//   bias_residual             out = x + y + b: a projection's bias and the residual add.
//   *_serial                  layer_norm_forward, layer_norm_backward,
//                             layer_norm_params, column_sum and cross_entropy with
//                             one invocation per row (column) instead of one
//                             workgroup: the row layout for software adapters, where
//                             each workgroup barrier of the reductions switches
//                             between the workgroup's SIMD batches and costs more
//                             than a short row's arithmetic (see kernels::rows).
//   *_texture                 layer_norm_forward, layer_norm_backward,
//                             layer_norm_params and column_sum in the invocation
//                             layout where the width is whole texels: the operands
//                             the loops read come from textures they were copied
//                             into (a texel load costs about half a storage load on
//                             the software adapters and carries four floats), and
//                             the outputs are stored four floats at a time. Sums
//                             run over vec4 lanes, then across them: another fixed
//                             order, so these too are bit-identical run to run.
//   split_qkv                 c_attn's [B*T, 3C] product plus its bias into q, k, v
//                             [B, H, T, C/H].
//   merge_qkv                 dq, dk, dv [B, H, T, C/H] back into [B*T, 3C].

struct Params {
    rows: u32,
    // Columns: C for the embeddings and LayerNorm, V for cross_entropy.
    width: u32,
    // Tokens per sequence.
    n: u32,
    // Rows of wte.
    vocab: u32,
    // Rows of wpe.
    positions: u32,
    // Embedding and LayerNorm backward: add to the gradient already there
    // instead of overwriting it (the tied output head also contributes to
    // dwte; the residual stream's gradient passes around each LayerNorm).
    accumulate: u32,
    eps: f32,
    // Heads, for split_qkv and merge_qkv.
    heads: u32,
    // The *_texture kernels: log2 of the rows per layer of the textures
    // holding x, dy, gamma and beta (see texel() in common.wgsl).
    x_shift: u32,
    dy_shift: u32,
    gamma_shift: u32,
    beta_shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- embed ------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> ef_ids: array<f32>;
@group(0) @binding(2) var<storage, read> ef_wte: array<f32>;
@group(0) @binding(3) var<storage, read> ef_wpe: array<f32>;
@group(0) @binding(4) var<storage, read_write> ef_out: array<f32>;

@compute @workgroup_size(64)
fn embed(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    let t = idx / p.width;
    let c = idx % p.width;
    let id = u32(ef_ids[t]);
    ef_out[idx] = ef_wte[id * p.width + c] + ef_wpe[(t % p.n) * p.width + c];
}

// ---- embed_backward_tokens --------------------------------------------------

@group(0) @binding(1) var<storage, read> et_dx: array<f32>;
@group(0) @binding(2) var<storage, read> et_order: array<f32>;
@group(0) @binding(3) var<storage, read> et_offsets: array<f32>;
@group(0) @binding(4) var<storage, read_write> et_dwte: array<f32>;

@compute @workgroup_size(64)
fn embed_backward_tokens(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.vocab * p.width) {
        return;
    }
    let v = idx / p.width;
    let c = idx % p.width;
    let end = u32(et_offsets[v + 1u]);
    var s = 0.0;
    for (var k = u32(et_offsets[v]); k < end; k = k + 1u) {
        s = s + et_dx[u32(et_order[k]) * p.width + c];
    }
    et_dwte[idx] = select(0.0, et_dwte[idx], p.accumulate != 0u) + s;
}

// ---- embed_backward_positions -----------------------------------------------

@group(0) @binding(1) var<storage, read> ep_dx: array<f32>;
@group(0) @binding(2) var<storage, read_write> ep_dwpe: array<f32>;

@compute @workgroup_size(64)
fn embed_backward_positions(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.positions * p.width) {
        return;
    }
    let pos = idx / p.width;
    let c = idx % p.width;
    var s = 0.0;
    if (pos < p.n) {
        for (var t = pos; t < p.rows; t = t + p.n) {
            s = s + ep_dx[t * p.width + c];
        }
    }
    ep_dwpe[idx] = select(0.0, ep_dwpe[idx], p.accumulate != 0u) + s;
}

// ---- layer_norm_forward -----------------------------------------------------

@group(0) @binding(1) var<storage, read> lf_x: array<f32>;
@group(0) @binding(2) var<storage, read> lf_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> lf_beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> lf_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lf_stats: array<f32>;

// Each row kernel's body takes the first column (row) and the stride: the
// workgroup entry points stride by their width and reduce the partial sums
// in workgroup memory, the _serial ones take every column themselves.

// Σ x and, given the mean, Σ (x - mean)² over the row's columns first, first + step, ...
fn lf_sum(base: u32, first: u32, step: u32) -> f32 {
    var s = 0.0;
    for (var c = first; c < p.width; c = c + step) {
        s = s + lf_x[base + c];
    }
    return s;
}

fn lf_squares(base: u32, mean: f32, first: u32, step: u32) -> f32 {
    var q = 0.0;
    for (var c = first; c < p.width; c = c + step) {
        let d = lf_x[base + c] - mean;
        q = q + d * d;
    }
    return q;
}

fn lf_write(base: u32, mean: f32, rstd: f32, first: u32, step: u32) {
    for (var c = first; c < p.width; c = c + step) {
        lf_out[base + c] = (lf_x[base + c] - mean) * rstd * lf_gamma[c] + lf_beta[c];
    }
}

fn lf_stats_store(row: u32, mean: f32, rstd: f32) {
    lf_stats[2u * row] = mean;
    lf_stats[2u * row + 1u] = rstd;
}

@compute @workgroup_size(64)
fn layer_norm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    let w = f32(p.width);
    let mean = reduce_sum(lid, lf_sum(base, lid, WG)) / w;
    let rstd = inverseSqrt(reduce_sum(lid, lf_squares(base, mean, lid, WG)) / w + p.eps);
    lf_write(base, mean, rstd, lid, WG);
    if (lid == 0u) {
        lf_stats_store(row, mean, rstd);
    }
}

@compute @workgroup_size(64)
fn layer_norm_forward_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    let w = f32(p.width);
    let mean = lf_sum(base, 0u, 1u) / w;
    let rstd = inverseSqrt(lf_squares(base, mean, 0u, 1u) / w + p.eps);
    lf_write(base, mean, rstd, 0u, 1u);
    lf_stats_store(row, mean, rstd);
}

// ---- layer_norm_backward ----------------------------------------------------

@group(0) @binding(1) var<storage, read> lb_x: array<f32>;
@group(0) @binding(2) var<storage, read> lb_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> lb_stats: array<f32>;
@group(0) @binding(4) var<storage, read> lb_dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> lb_dx: array<f32>;

// (Σ g, Σ g·xh) with g = dy·γ over the row's columns first, first + step, ...
fn lb_sums(row: u32, first: u32, step: u32) -> vec2<f32> {
    let base = row * p.width;
    let mean = lb_stats[2u * row];
    let rstd = lb_stats[2u * row + 1u];
    var sums = vec2<f32>(0.0);
    for (var c = first; c < p.width; c = c + step) {
        let g = lb_dy[base + c] * lb_gamma[c];
        sums = sums + vec2<f32>(g, g * (lb_x[base + c] - mean) * rstd);
    }
    return sums;
}

fn lb_write(row: u32, sums: vec2<f32>, first: u32, step: u32) {
    let base = row * p.width;
    let w = f32(p.width);
    let mean = lb_stats[2u * row];
    let rstd = lb_stats[2u * row + 1u];
    let mean_g = sums.x / w;
    let mean_gx = sums.y / w;
    for (var c = first; c < p.width; c = c + step) {
        let g = lb_dy[base + c] * lb_gamma[c];
        let xh = (lb_x[base + c] - mean) * rstd;
        let prior = select(0.0, lb_dx[base + c], p.accumulate != 0u);
        lb_dx[base + c] = prior + rstd * (g - mean_g - xh * mean_gx);
    }
}

@compute @workgroup_size(64)
fn layer_norm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    lb_write(row, reduce_sum2(lid, lb_sums(row, lid, WG)), lid, WG);
}

@compute @workgroup_size(64)
fn layer_norm_backward_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.rows) {
        return;
    }
    lb_write(row, lb_sums(row, 0u, 1u), 0u, 1u);
}

// ---- layer_norm_params ------------------------------------------------------

@group(0) @binding(1) var<storage, read> lp_x: array<f32>;
@group(0) @binding(2) var<storage, read> lp_stats: array<f32>;
@group(0) @binding(3) var<storage, read> lp_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> lp_dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> lp_dbeta: array<f32>;

// (dγ, dβ) of column col over rows first, first + step, ...
fn lp_sums(col: u32, first: u32, step: u32) -> vec2<f32> {
    var sums = vec2<f32>(0.0);
    for (var r = first; r < p.rows; r = r + step) {
        let i = r * p.width + col;
        let xh = (lp_x[i] - lp_stats[2u * r]) * lp_stats[2u * r + 1u];
        sums = sums + vec2<f32>(lp_dy[i] * xh, lp_dy[i]);
    }
    return sums;
}

fn lp_store(col: u32, sums: vec2<f32>) {
    lp_dgamma[col] = sums.x;
    lp_dbeta[col] = sums.y;
}

@compute @workgroup_size(64)
fn layer_norm_params(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = linear_id(wid, nwg);
    if (col >= p.width) {
        return;
    }
    let sums = reduce_sum2(lid, lp_sums(col, lid, WG));
    if (lid == 0u) {
        lp_store(col, sums);
    }
}

@compute @workgroup_size(64)
fn layer_norm_params_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = element_id(wid, nwg, lid);
    if (col >= p.width) {
        return;
    }
    lp_store(col, lp_sums(col, 0u, 1u));
}

// ---- bias_gelu / gelu_backward ----------------------------------------------

// gelu_parts and gelu_grad come from shared/gelu.wgsl, put in front.

@group(0) @binding(1) var<storage, read> bg_x: array<f32>;
@group(0) @binding(2) var<storage, read> bg_bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> bg_out: array<f32>;

@compute @workgroup_size(64)
fn bias_gelu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    let h = bg_x[idx] + bg_bias[idx % p.width];
    bg_out[idx] = h * gelu_parts(h).x;
}

@group(0) @binding(1) var<storage, read> gb_x: array<f32>;
@group(0) @binding(2) var<storage, read> gb_bias: array<f32>;
@group(0) @binding(3) var<storage, read> gb_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> gb_dx: array<f32>;

@compute @workgroup_size(64)
fn gelu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    gb_dx[idx] = gb_dy[idx] * gelu_grad(gb_x[idx] + gb_bias[idx % p.width]);
}

// ---- column_sum -------------------------------------------------------------

@group(0) @binding(1) var<storage, read> cs_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cs_out: array<f32>;

// Σ x[r, col] over rows first, first + step, ...
fn cs_sum(col: u32, first: u32, step: u32) -> f32 {
    var s = 0.0;
    for (var r = first; r < p.rows; r = r + step) {
        s = s + cs_x[r * p.width + col];
    }
    return s;
}

@compute @workgroup_size(64)
fn column_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = linear_id(wid, nwg);
    if (col >= p.width) {
        return;
    }
    let total = reduce_sum(lid, cs_sum(col, lid, WG));
    if (lid == 0u) {
        cs_out[col] = total;
    }
}

@compute @workgroup_size(64)
fn column_sum_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = element_id(wid, nwg, lid);
    if (col >= p.width) {
        return;
    }
    cs_out[col] = cs_sum(col, 0u, 1u);
}

// ---- cross_entropy ----------------------------------------------------------

@group(0) @binding(1) var<storage, read> ce_logits: array<f32>;
@group(0) @binding(2) var<storage, read> ce_targets: array<f32>;
@group(0) @binding(3) var<storage, read_write> ce_losses: array<f32>;
@group(0) @binding(4) var<storage, read_write> ce_dlogits: array<f32>;

// The row's maximum, and given it Σ exp(l - top), over its columns first,
// first + step, ...
fn ce_max(base: u32, first: u32, step: u32) -> f32 {
    var m = -3.4028234663852886e38; // -f32::MAX, exactly: Tint rejects literals beyond it
    for (var c = first; c < p.width; c = c + step) {
        m = max(m, ce_logits[base + c]);
    }
    return m;
}

fn ce_sum(base: u32, top: f32, first: u32, step: u32) -> f32 {
    var s = 0.0;
    for (var c = first; c < p.width; c = c + step) {
        s = s + exp(ce_logits[base + c] - top);
    }
    return s;
}

// The row's loss (where `loss`) and its dlogits at columns first, first + step, ...;
// sum >= 1: the maximum contributes exp(0).
fn ce_write(row: u32, top: f32, sum: f32, loss: bool, first: u32, step: u32) {
    let base = row * p.width;
    let label = u32(ce_targets[row]);
    if (loss) {
        ce_losses[row] = (top - ce_logits[base + label]) + log(sum);
    }
    let rows = f32(p.rows);
    for (var c = first; c < p.width; c = c + step) {
        let prob = exp(ce_logits[base + c] - top) / sum;
        ce_dlogits[base + c] = (prob - select(0.0, 1.0, c == label)) / rows;
    }
}

@compute @workgroup_size(64)
fn cross_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = linear_id(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    let top = reduce_max(lid, ce_max(base, lid, WG));
    let sum = reduce_sum(lid, ce_sum(base, top, lid, WG));
    ce_write(row, top, sum, lid == 0u, lid, WG);
}

@compute @workgroup_size(64)
fn cross_entropy_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.width;
    let top = ce_max(base, 0u, 1u);
    ce_write(row, top, ce_sum(base, top, 0u, 1u), true, 0u, 1u);
}

// ---- mean_loss --------------------------------------------------------------

@group(0) @binding(1) var<storage, read> ml_losses: array<f32>;
@group(0) @binding(2) var<storage, read_write> ml_out: array<f32>;

@compute @workgroup_size(64)
fn mean_loss(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var r = lid; r < p.rows; r = r + WG) {
        s = s + ml_losses[r];
    }
    let total = reduce_sum(lid, s);
    if (lid == 0u) {
        ml_out[0] = total / f32(p.rows);
    }
}

// ---- bias_residual ----------------------------------------------------------

@group(0) @binding(1) var<storage, read> br_x: array<f32>;
@group(0) @binding(2) var<storage, read> br_y: array<f32>;
@group(0) @binding(3) var<storage, read> br_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> br_out: array<f32>;

@compute @workgroup_size(64)
fn bias_residual(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    br_out[idx] = br_x[idx] + (br_y[idx] + br_bias[idx % p.width]);
}

// ---- split_qkv / merge_qkv --------------------------------------------------

// Element idx of the [B*T, 3C] tensor: which of q, k, v (0, 1, 2) and its
// index in that [B, H, T, C/H] tensor.
fn qkv_place(idx: u32) -> vec2<u32> {
    let c = p.width;
    let hd = c / p.heads;
    let row = idx / (3u * c);
    let col = idx % (3u * c);
    let part = col / c;
    let h = (col % c) / hd;
    let d = col % hd;
    let b = row / p.n;
    let t = row % p.n;
    return vec2<u32>(part, ((b * p.heads + h) * p.n + t) * hd + d);
}

@group(0) @binding(1) var<storage, read> sq_qkv: array<f32>;
@group(0) @binding(2) var<storage, read> sq_bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> sq_q: array<f32>;
@group(0) @binding(4) var<storage, read_write> sq_k: array<f32>;
@group(0) @binding(5) var<storage, read_write> sq_v: array<f32>;

@compute @workgroup_size(64)
fn split_qkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * 3u * p.width) {
        return;
    }
    let at = qkv_place(idx);
    let x = sq_qkv[idx] + sq_bias[idx % (3u * p.width)];
    if (at.x == 0u) {
        sq_q[at.y] = x;
    } else if (at.x == 1u) {
        sq_k[at.y] = x;
    } else {
        sq_v[at.y] = x;
    }
}

@group(0) @binding(1) var<storage, read> mq_dq: array<f32>;
@group(0) @binding(2) var<storage, read> mq_dk: array<f32>;
@group(0) @binding(3) var<storage, read> mq_dv: array<f32>;
@group(0) @binding(4) var<storage, read_write> mq_dqkv: array<f32>;

@compute @workgroup_size(64)
fn merge_qkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * 3u * p.width) {
        return;
    }
    let at = qkv_place(idx);
    var x = mq_dv[at.y];
    if (at.x == 0u) {
        x = mq_dq[at.y];
    } else if (at.x == 1u) {
        x = mq_dk[at.y];
    }
    mq_dqkv[idx] = x;
}

// ---- row kernels reading texels ---------------------------------------------

// The operands, each copied as stored into a texture: texel i holds floats
// 4i .. 4i + 4. Bindings count from 1 in each entry point (see kernels!), so
// the column sum has a texture of its own.
@group(0) @binding(3) var tx_x: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(4) var tx_gamma: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(5) var tx_beta: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(5) var tx_dy: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var cst_x: texture_storage_2d_array<rgba32float, read>;

fn x4(i: u32) -> vec4<f32> {
    let at = texel(i, p.x_shift);
    return textureLoad(tx_x, at.xy, at.z);
}

fn dy4(i: u32) -> vec4<f32> {
    let at = texel(i, p.dy_shift);
    return textureLoad(tx_dy, at.xy, at.z);
}

fn gamma4(i: u32) -> vec4<f32> {
    let at = texel(i, p.gamma_shift);
    return textureLoad(tx_gamma, at.xy, at.z);
}

fn beta4(i: u32) -> vec4<f32> {
    let at = texel(i, p.beta_shift);
    return textureLoad(tx_beta, at.xy, at.z);
}

fn lanes_sum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@group(0) @binding(1) var<storage, read_write> lft_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> lft_stats: array<f32>;

@compute @workgroup_size(64)
fn layer_norm_forward_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.rows) {
        return;
    }
    let cols4 = p.width / 4u;
    let first = row * cols4;
    let w = f32(p.width);
    var s = vec4<f32>(0.0);
    for (var t = 0u; t < cols4; t = t + 1u) {
        s = s + x4(first + t);
    }
    let mean = lanes_sum(s) / w;
    var q = vec4<f32>(0.0);
    for (var t = 0u; t < cols4; t = t + 1u) {
        let d = x4(first + t) - mean;
        q = q + d * d;
    }
    let rstd = inverseSqrt(lanes_sum(q) / w + p.eps);
    for (var t = 0u; t < cols4; t = t + 1u) {
        lft_out[first + t] = (x4(first + t) - mean) * rstd * gamma4(t) + beta4(t);
    }
    lft_stats[2u * row] = mean;
    lft_stats[2u * row + 1u] = rstd;
}

@group(0) @binding(1) var<storage, read_write> lbt_dx: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> lbt_stats: array<f32>;

@compute @workgroup_size(64)
fn layer_norm_backward_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = element_id(wid, nwg, lid);
    if (row >= p.rows) {
        return;
    }
    let cols4 = p.width / 4u;
    let first = row * cols4;
    let mean = lbt_stats[2u * row];
    let rstd = lbt_stats[2u * row + 1u];
    var sg = vec4<f32>(0.0);
    var sgx = vec4<f32>(0.0);
    for (var t = 0u; t < cols4; t = t + 1u) {
        let g = dy4(first + t) * gamma4(t);
        sg = sg + g;
        sgx = sgx + g * ((x4(first + t) - mean) * rstd);
    }
    let w = f32(p.width);
    let mean_g = lanes_sum(sg) / w;
    let mean_gx = lanes_sum(sgx) / w;
    for (var t = 0u; t < cols4; t = t + 1u) {
        let g = dy4(first + t) * gamma4(t);
        let xh = (x4(first + t) - mean) * rstd;
        var prior = vec4<f32>(0.0);
        if (p.accumulate != 0u) {
            prior = lbt_dx[first + t];
        }
        lbt_dx[first + t] = prior + rstd * (g - mean_g - xh * mean_gx);
    }
}

// The column kernels take four columns (one texel) per invocation, in
// workgroups of 8, so that a few hundred columns still spread over the
// cores.
fn column_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_id(wid, nwg) * 8u + lid;
}

@group(0) @binding(1) var<storage, read_write> lpt_dgamma: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> lpt_dbeta: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> lpt_stats: array<f32>;

@compute @workgroup_size(8)
fn layer_norm_params_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = column_id(wid, nwg, lid);
    let cols4 = p.width / 4u;
    if (t >= cols4) {
        return;
    }
    var dg = vec4<f32>(0.0);
    var db = vec4<f32>(0.0);
    for (var r = 0u; r < p.rows; r = r + 1u) {
        let i = r * cols4 + t;
        let d = dy4(i);
        dg = dg + d * ((x4(i) - lpt_stats[2u * r]) * lpt_stats[2u * r + 1u]);
        db = db + d;
    }
    lpt_dgamma[t] = dg;
    lpt_dbeta[t] = db;
}

@group(0) @binding(1) var<storage, read_write> cst_out: array<vec4<f32>>;

@compute @workgroup_size(8)
fn column_sum_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = column_id(wid, nwg, lid);
    let cols4 = p.width / 4u;
    if (t >= cols4) {
        return;
    }
    var s = vec4<f32>(0.0);
    for (var r = 0u; r < p.rows; r = r + 1u) {
        let at = texel(r * cols4 + t, p.x_shift);
        s = s + textureLoad(cst_x, at.xy, at.z);
    }
    cst_out[t] = s;
}
