//! Batched matrix product with optional transposes: `C = alpha · op(A) · op(B)`.
//!
//! Shader: `shaders/matmul.wgsl`. Reference: [`crate::reference::matmul`](mod@crate::reference::matmul).

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, Kernel, Step};
use crate::kernels::to_u32;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("matmul.wgsl");

pub(crate) static MATMUL_BLOCKED: Kernel = Kernel {
    family: "matmul",
    source: SOURCE,
    entry: "matmul_blocked",
};

/// The source of a deliberately wrong `matmul_blocked` whose k loop stops one
/// term short (so `C` misses `A[:, K-1] · B[K-1, :]`), for showing that
/// [`crate::conformance`] catches a broken kernel. It is derived from the real
/// source, so the two never drift apart.
#[doc(hidden)]
pub fn skips_last_k_source() -> &'static str {
    static SOURCE_SKIPS_LAST_K: OnceLock<String> = OnceLock::new();
    SOURCE_SKIPS_LAST_K.get_or_init(|| SOURCE.replace("kk < p.k;", "kk + 1u < p.k;"))
}

/// The broken variant as a kernel. Only the conformance runner (native only)
/// dispatches it, and only when asked to.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) static MATMUL_SKIPS_LAST_K: std::sync::LazyLock<Kernel> =
    std::sync::LazyLock::new(|| Kernel {
        family: "faults/matmul_skips_last_k",
        source: skips_last_k_source(),
        entry: "matmul_blocked",
    });

/// Output tile edge of `matmul_blocked`.
const TILE: usize = 32;

/// Options of [`matmul`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulOptions {
    /// Use `Aᵀ`: A is stored `[.., K, M]`.
    pub trans_a: bool,
    /// Use `Bᵀ`: B is stored `[.., N, K]`.
    pub trans_b: bool,
    /// Factor applied to the product; must be finite.
    pub alpha: f32,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        MatmulOptions {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
        }
    }
}

/// Mirrors `Params` in `shaders/matmul.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
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

/// A validated product: its parameters and the shape of `C`.
#[derive(Debug, Clone)]
pub(crate) struct MatmulPlan {
    params: MatmulParams,
    /// Leading (batch) dimensions followed by `[M, N]`.
    pub out_shape: Vec<usize>,
}

/// Checks the shapes of `A` and `B` (rank >= 2; leading dimensions equal, or
/// absent on one side, which then broadcasts) and plans the product.
pub(crate) fn plan(a: &[usize], b: &[usize], opts: &MatmulOptions) -> Result<MatmulPlan> {
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::shape(format!(
            "matmul needs operands of rank >= 2, got {a:?} and {b:?}"
        )));
    }
    if !opts.alpha.is_finite() {
        return Err(Error::invalid(format!(
            "matmul alpha must be finite, got {}",
            opts.alpha
        )));
    }
    let (a_lead, a_mat) = a.split_at(a.len() - 2);
    let (b_lead, b_mat) = b.split_at(b.len() - 2);
    let (m, ka) = if opts.trans_a {
        (a_mat[1], a_mat[0])
    } else {
        (a_mat[0], a_mat[1])
    };
    let (kb, n) = if opts.trans_b {
        (b_mat[1], b_mat[0])
    } else {
        (b_mat[0], b_mat[1])
    };
    if ka != kb {
        return Err(Error::shape(format!(
            "matmul inner dimensions differ: A {a:?}{} has K = {ka}, B {b:?}{} has K = {kb}",
            if opts.trans_a { "ᵀ" } else { "" },
            if opts.trans_b { "ᵀ" } else { "" },
        )));
    }
    let lead = match (a_lead.is_empty(), b_lead.is_empty()) {
        (_, true) => a_lead,
        (true, false) => b_lead,
        (false, false) if a_lead == b_lead => a_lead,
        _ => {
            return Err(Error::shape(format!(
                "matmul batch dimensions differ: A {a:?}, B {b:?}"
            )))
        }
    };
    let batch: usize = lead.iter().product();
    let stride = |lead: &[usize], mat: &[usize]| {
        if lead.is_empty() {
            Ok(0)
        } else {
            to_u32("matrix size", mat[0] * mat[1])
        }
    };
    let params = MatmulParams {
        batch: to_u32("batch", batch)?,
        m: to_u32("M", m)?,
        n: to_u32("N", n)?,
        k: to_u32("K", ka)?,
        trans_a: opts.trans_a.into(),
        trans_b: opts.trans_b.into(),
        a_batch_stride: stride(a_lead, a_mat)?,
        b_batch_stride: stride(b_lead, b_mat)?,
        alpha: opts.alpha,
        tiles_m: to_u32("M tiles", m.div_ceil(TILE))?,
        tiles_n: to_u32("N tiles", n.div_ceil(TILE))?,
        _pad: 0,
    };
    let mut out_shape = lead.to_vec();
    out_shape.extend([m, n]);
    Ok(MatmulPlan { params, out_shape })
}

/// The dispatch computing `c = plan(a, b)`.
pub(crate) fn step<'a>(plan: &MatmulPlan, a: &'a Tensor, b: &'a Tensor, c: &'a Tensor) -> Step<'a> {
    step_with(&MATMUL_BLOCKED, plan, a, b, c)
}

/// [`step`] with another kernel of the same parameters and bindings.
fn step_with<'a>(
    kernel: &'static Kernel,
    plan: &MatmulPlan,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
) -> Step<'a> {
    let p = &plan.params;
    Step::Dispatch(Dispatch {
        kernel,
        params: bytemuck::bytes_of(p).to_vec(),
        buffers: vec![a.buffer(), b.buffer(), c.buffer()],
        workgroups: u64::from(p.batch) * u64::from(p.tiles_m) * u64::from(p.tiles_n),
    })
}

/// `C = alpha · op(A) · op(B)` over matching leading (batch) dimensions.
///
/// A is `[.., M, K]` (`[.., K, M]` with `trans_a`), B is `[.., K, N]`
/// (`[.., N, K]` with `trans_b`); an operand of rank 2 is shared by every batch
/// item. C is `[.., M, N]`.
pub async fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
    matmul_with(&MATMUL_BLOCKED, gpu, a, b, opts).await
}

/// [`matmul`] computed by `kernel` (the real one, or a deliberately wrong variant).
pub(crate) async fn matmul_with(
    kernel: &'static Kernel,
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    opts: &MatmulOptions,
) -> Result<Tensor> {
    let plan = plan(a.shape(), b.shape(), opts)?;
    a.check_finite("a")?;
    b.check_finite("b")?;
    let c = Tensor::scratch(gpu, &plan.out_shape)?;
    gpu.run(&[step_with(kernel, &plan, a, b, &c)]).await?;
    Ok(c)
}

/// Blocking form of [`matmul`].
#[cfg(not(target_arch = "wasm32"))]
pub fn matmul_blocking(gpu: &Gpu, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
    pollster::block_on(matmul(gpu, a, b, opts))
}
