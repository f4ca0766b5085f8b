// Shared by the two matmul kernels that read operands copied as stored
// (matmul_linear.wgsl, matmul_linear_subgroup.wgsl); the host puts this after
// shared/matmul_panels.wgsl and in front of the kernel. Texel i of a texture
// is floats 4i .. 4i + 4 of its operand's buffer, placed by texel().
// TRANS_A and TRANS_B are pipeline constants, so each pipeline keeps one
// load path.

override TRANS_A: u32 = 0u;
override TRANS_B: u32 = 0u;

fn load_a(i: u32) -> vec4<f32> {
    let at = texel(i, p.a_layer_shift);
    return textureLoad(a_panels, at.xy, at.z);
}

fn load_b(i: u32) -> vec4<f32> {
    let at = texel(i, p.b_layer_shift);
    return textureLoad(b_panels, at.xy, at.z);
}

// Four vec4 values: 4 columns of B at 4 consecutive k, or 4 rows of A at
// 4 consecutive k.
struct Quad {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// One k step of a row: acc + a.x * b.r0 + a.y * b.r1 + a.z * b.r2 + a.w * b.r3,
// where a holds the row's 4 values of A and b 4 columns of B at the same 4 k.
fn fma4(acc: vec4<f32>, a: vec4<f32>, b: Quad) -> vec4<f32> {
    return acc + a.x * b.r0 + a.y * b.r1 + a.z * b.r2 + a.w * b.r3;
}

// Texel offsets of batch item `batch`'s A and B (strides are whole texels).
fn a_offset(batch: u32) -> u32 {
    return select(batch, 0u, p.a_batch_stride == 0u) * (p.a_batch_stride / 4u);
}

fn b_offset(batch: u32) -> u32 {
    return select(batch, 0u, p.b_batch_stride == 0u) * (p.b_batch_stride / 4u);
}

// B stored [K, N]: the 4 columns of column texel `col` (offset included) at
// k = 4 kc .. 4 kc + 4.
fn b_stored(col: u32, kc: u32) -> Quad {
    let n4 = p.n / 4u;
    let i = col + kc * 4u * n4;
    return Quad(load_b(i), load_b(i + n4), load_b(i + 2u * n4), load_b(i + 3u * n4));
}

// B stored [N, K]: the texel offsets of the rows of columns c .. c + 4
// (`base`: the batch item's offset), clamped to the last column.
fn b_rows(base: u32, c: u32) -> vec4<u32> {
    let last = p.n - 1u;
    let cols = vec4<u32>(min(c, last), min(c + 1u, last), min(c + 2u, last), min(c + 3u, last));
    return base + cols * p.k4;
}

// B stored [N, K]: the 4 columns of b_rows() at k = 4 kc .. 4 kc + 4, one
// texel (4 k) each, transposed in registers.
fn b_transposed(rows: vec4<u32>, kc: u32) -> Quad {
    let t0 = load_b(rows.x + kc);
    let t1 = load_b(rows.y + kc);
    let t2 = load_b(rows.z + kc);
    let t3 = load_b(rows.w + kc);
    return Quad(
        vec4<f32>(t0.x, t1.x, t2.x, t3.x),
        vec4<f32>(t0.y, t1.y, t2.y, t3.y),
        vec4<f32>(t0.z, t1.z, t2.z, t3.z),
        vec4<f32>(t0.w, t1.w, t2.w, t3.w),
    );
}
