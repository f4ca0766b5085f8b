// GELU's tanh form (gelu_new) and its derivative, shared by gpt.wgsl's
// bias_gelu and gelu_backward and the matmul stores that fuse them
// (shared/matmul_put_bias_gelu.wgsl, shared/matmul_put_gelu_backward.wgsl);
// the host puts it in front of them.

// gelu(x) = 0.5x(1 + tanh(u)) with u = sqrt(2/pi)(x + 0.044715x^3), written as
// x*sigmoid(2u) with e = exp(-2|u|) <= 1: the textbook (e^2u - 1)/(e^2u + 1)
// is inf/inf beyond |u| ~ 44, and 1 + tanh(u) cancels for negative u.
const GELU_K: f32 = 0.7978845608028654;
const GELU_C: f32 = 0.044715;

// (sigmoid(2u), sigmoid(2u)*(1 - sigmoid(2u))) of the x above.
fn gelu_parts(x: f32) -> vec2<f32> {
    // Beyond |x| = 20, e is 0 in f32; the clamp keeps x^3 finite.
    let xc = clamp(x, -20.0, 20.0);
    let u = GELU_K * (xc + GELU_C * xc * xc * xc);
    let e = exp(-2.0 * abs(u));
    let s = select(1.0 / (1.0 + e), e / (1.0 + e), u < 0.0);
    return vec2<f32>(s, e / ((1.0 + e) * (1.0 + e)));
}

// d gelu(h) / dh = sigmoid(2u) + h * 2 sigmoid(1 - sigmoid) * du/dh.
fn gelu_grad(h: f32) -> f32 {
    let parts = gelu_parts(h);
    let hc = clamp(h, -20.0, 20.0);
    let du = GELU_K * (1.0 + 3.0 * GELU_C * hc * hc);
    return parts.x + 2.0 * hc * parts.y * du;
}
