// Layers of a BERT-family encoder that attention.wgsl-style kernels do not
// already cover. Rows are tokens: x is [rows, width], rows = B*N.
//
//   embed        word[id] + position[t mod n] + token_type[type]; elementwise.
//                Token ids travel as f32: exact below 2^24, far above any vocabulary.
//   layer_norm   v1: one workgroup per row; LN(x + residual) with two passes
//                (mean, then variance of the centred values) for accuracy.
//   bias_act     in place: x += bias, then GELU (erf form) when flag = 1.
//                WGSL has no erf: Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
//   split_heads  [B, N, H, dh] -> [B, H, N, dh]; elementwise.
//   merge_heads  [B, H, N, dh] -> [B, N, H, dh]; elementwise.

struct Params {
    rows: u32,
    width: u32,
    // Tokens per sequence.
    n: u32,
    heads: u32,
    head_dim: u32,
    // embed: unused; layer_norm: has residual; bias_act: apply GELU.
    flag: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- embed ------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> em_ids: array<f32>;
@group(0) @binding(2) var<storage, read> em_types: array<f32>;
@group(0) @binding(3) var<storage, read> em_word: array<f32>;
@group(0) @binding(4) var<storage, read> em_position: array<f32>;
@group(0) @binding(5) var<storage, read> em_type: array<f32>;
@group(0) @binding(6) var<storage, read_write> em_out: array<f32>;

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
    let id = u32(em_ids[t]);
    let ty = u32(em_types[t]);
    em_out[idx] = em_word[id * p.width + c] + em_position[(t % p.n) * p.width + c] + em_type[ty * p.width + c];
}

// ---- layer_norm -------------------------------------------------------------

@group(0) @binding(1) var<storage, read> ln_x: array<f32>;
@group(0) @binding(2) var<storage, read> ln_residual: array<f32>;
@group(0) @binding(3) var<storage, read> ln_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> ln_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> ln_out: array<f32>;

fn ln_value(base: u32, c: u32) -> f32 {
    var v = ln_x[base + c];
    if (p.flag != 0u) {
        v = v + ln_residual[base + c];
    }
    return v;
}

@compute @workgroup_size(64)
fn layer_norm(
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
    var s = 0.0;
    for (var c = lid; c < p.width; c = c + WG) {
        s = s + ln_value(base, c);
    }
    let mean = reduce_sum(lid, s) / w;
    var q = 0.0;
    for (var c = lid; c < p.width; c = c + WG) {
        let d = ln_value(base, c) - mean;
        q = q + d * d;
    }
    let inv = inverseSqrt(reduce_sum(lid, q) / w + p.eps);
    for (var c = lid; c < p.width; c = c + WG) {
        ln_out[base + c] = (ln_value(base, c) - mean) * inv * ln_gamma[c] + ln_beta[c];
    }
}

// ---- bias_act ---------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> ba_x: array<f32>;
@group(0) @binding(2) var<storage, read> ba_bias: array<f32>;

fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

@compute @workgroup_size(64)
fn bias_act(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    var v = ba_x[idx] + ba_bias[idx % p.width];
    if (p.flag != 0u) {
        v = 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
    }
    ba_x[idx] = v;
}

// ---- split_heads / merge_heads ----------------------------------------------

@group(0) @binding(1) var<storage, read> sh_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> sh_out: array<f32>;

// For element `idx` of a [B, H, N, dh] tensor, its index in [B, N, H, dh].
fn token_major(idx: u32) -> u32 {
    let c = idx % p.head_dim;
    let t = (idx / p.head_dim) % p.n;
    let h = (idx / (p.head_dim * p.n)) % p.heads;
    let b = idx / (p.head_dim * p.n * p.heads);
    return ((b * p.n + t) * p.heads + h) * p.head_dim + c;
}

@compute @workgroup_size(64)
fn split_heads(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    sh_out[idx] = sh_in[token_major(idx)];
}

@compute @workgroup_size(64)
fn merge_heads(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = element_id(wid, nwg, lid);
    if (idx >= p.rows * p.width) {
        return;
    }
    sh_out[token_major(idx)] = sh_in[idx];
}
