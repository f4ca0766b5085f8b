// AdamW with global-norm gradient clipping, as the spec's "Optimizer" states.
//
// One step is, in one submission:
//   optim_sumsq    once per gradient tensor: each workgroup sums the squares of
//                  its CHUNK consecutive elements (a fixed tree, reduce_sum of
//                  common.wgsl) into partials[offset + workgroup];
//   optim_norm     one workgroup: the partials in index order, strided over the
//                  64 invocations, then the same tree; norm[0] = sqrt(sum).
//                  No atomics, so the norm is the same bits run to run. When
//                  guard[0] (a loss, say) is not finite, norm[0] = guard[0];
//   optim_adamw    once per parameter tensor, one invocation per element:
//                    g = grad * s,  s = max_norm / norm when clipping and
//                                       norm > max_norm, else 1 (read from the
//                                       buffer, so the host never waits);
//                    p = p - lr * wd * p           (decoupled decay; wd = 0 for
//                                                   the undecayed groups)
//                    m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
//                    p = p - (lr / bc1) m / (sqrt(v) / bc2_sqrt + eps)
//                    p = max(p, 0)                 (λ tensors only)
//                  where bc1 = 1 - b1^t and bc2_sqrt = sqrt(1 - b2^t);
//                  nothing at all when the norm is not finite (NaN or Inf
//                  in a gradient, or the guard's Inf), so a step whose loss
//                  or gradients blew up leaves parameters and moments as
//                  they were, without the host reading anything first.
//   optim_accumulate  gradient accumulation over the micro-batches of one
//                  step, one invocation per element: sum = scale * grad
//                  for the first micro-batch (flags bit 2), else
//                  sum = sum + scale * grad (scale = 1 / micro-batches, so
//                  the sum is the mean gradient of the whole batch).
//
// Finiteness is tested on the bits: WGSL lets implementations assume floats
// are finite, so a comparison such as x != x may be folded away.
//
// Versions:
//   v1: as above, without the guard.
//   v2: the guard and the skip of a non-finite step, so that a training step
//       (forward, backward, AdamW) is one submission.
//   v3: optim_accumulate.

struct Params {
    // Elements of the tensor (optim_sumsq, optim_adamw).
    len: u32,
    // Where this tensor's partial sums start (optim_sumsq).
    offset: u32,
    // All partial sums of the step (optim_norm).
    count: u32,
    // Bit 0: clip to max_norm. Bit 1: clamp to >= 0 after the update.
    // Bit 2: the first micro-batch (optim_accumulate overwrites).
    flags: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    // The factor optim_accumulate adds each gradient with.
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Elements per workgroup of optim_sumsq (4 per invocation).
const CHUNK: u32 = 256u;

// ---- optim_sumsq -------------------------------------------------------------

@group(0) @binding(1) var<storage, read> sq_grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_partials: array<f32>;

@compute @workgroup_size(64)
fn optim_sumsq(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = linear_id(wid, nwg);
    // The whole workgroup leaves together, so the barriers below stay uniform.
    if (w * CHUNK >= p.len) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < CHUNK; k = k + WG) {
        let i = w * CHUNK + k + lid;
        if (i < p.len) {
            let g = sq_grad[i];
            acc = acc + g * g;
        }
    }
    let total = reduce_sum(lid, acc);
    if (lid == 0u) {
        sq_partials[p.offset + w] = total;
    }
}

// ---- optim_norm --------------------------------------------------------------

@group(0) @binding(1) var<storage, read> fin_partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> fin_norm: array<f32>;
// [1]: a value that must be finite for the step to count (a loss), or 0.
@group(0) @binding(3) var<storage, read> fin_guard: array<f32>;

// Whether x is neither NaN nor ±Inf: its exponent bits are not all ones.
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(64)
fn optim_norm(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var j = lid; j < p.count; j = j + WG) {
        acc = acc + fin_partials[j];
    }
    let total = reduce_sum(lid, acc);
    if (lid == 0u) {
        // A non-finite guard becomes the norm itself: a runtime value, as
        // Tint refuses a constant Inf or NaN in the source.
        let guard = fin_guard[0];
        fin_norm[0] = select(guard, sqrt(total), finite(guard));
    }
}

// ---- optim_adamw -------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> ad_param: array<f32>;
@group(0) @binding(2) var<storage, read> ad_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> ad_m: array<f32>;
@group(0) @binding(4) var<storage, read_write> ad_v: array<f32>;
@group(0) @binding(5) var<storage, read> ad_norm: array<f32>;

@compute @workgroup_size(64)
fn optim_adamw(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_id(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let norm = ad_norm[0];
    if (!finite(norm)) {
        return;
    }
    var scale = 1.0;
    if ((p.flags & 1u) != 0u && norm > p.max_norm) {
        scale = p.max_norm / norm;
    }
    let g = ad_grad[i] * scale;
    var x = ad_param[i];
    x = x - p.lr * p.weight_decay * x;
    let m = p.beta1 * ad_m[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * ad_v[i] + (1.0 - p.beta2) * g * g;
    x = x - (p.lr / p.bc1) * m / (sqrt(v) / p.bc2_sqrt + p.eps);
    if ((p.flags & 2u) != 0u) {
        x = max(x, 0.0);
    }
    ad_m[i] = m;
    ad_v[i] = v;
    ad_param[i] = x;
}

// ---- optim_accumulate --------------------------------------------------------

@group(0) @binding(1) var<storage, read> ac_grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> ac_sum: array<f32>;

@compute @workgroup_size(64)
fn optim_accumulate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_id(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let g = p.scale * ac_grad[i];
    if ((p.flags & 4u) != 0u) {
        ac_sum[i] = g;
    } else {
        ac_sum[i] = ac_sum[i] + g;
    }
}
