//! SAOBP kernels: two-hop messages, refinement, and the O(N²D) fused output.
//!
//! Shader: `shaders/saobp.wgsl`. Reference: [`crate::reference::saobp`](mod@crate::reference::saobp).
//! The pipeline that strings them together is [`crate::attention`](mod@crate::attention).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, Step};
use crate::kernels::{matmul, to_u32};
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("saobp.wgsl");

kernels! {
    "saobp" in SOURCE, params SaobpParams, workgroup 64 {
        /// Takes the echo terms out of `A·A`, giving `M`.
        REMOVE_ECHOES = "remove_echoes" (echo_a, echo_m);
        /// `m` and `R` from `A` and `M`.
        REFINE = "refine" (ref_a, ref_m, ref_lambda, ref_r, ref_mass);
        /// Per row `(a_i, r_i, c_i)`.
        DIAG_STATS = "diag_stats" (ds_a, ds_stats);
        /// `m` from `A` and its row stats, without `M`.
        MASS = "mass" (ms_a, ms_stats, ms_mass);
        /// `U' = [Y − a ⊙ V | r − a]`.
        TWO_HOP_VALUES = "two_hop_values" (tv_y, tv_v, tv_stats, tv_u);
        /// The refined output in O(N²D).
        FUSED_OUTPUT = "fused_output" (fo_y, fo_v, fo_au, fo_stats, fo_mass, fo_lambda, fo_out);
    }
}

/// The refinement strength λ: one value for every head, or one per head.
#[derive(Debug, Clone, PartialEq)]
pub enum Lambda {
    /// The same λ for every head.
    Scalar(f32),
    /// λ_h for each head `h`.
    PerHead(Vec<f32>),
}

impl Default for Lambda {
    /// λ = 0: refinement off, `R = A`.
    fn default() -> Self {
        Lambda::Scalar(0.0)
    }
}

impl From<f32> for Lambda {
    fn from(l: f32) -> Self {
        Lambda::Scalar(l)
    }
}

impl Lambda {
    /// One finite, non-negative λ per head, or an [`Error::InvalidArgument`].
    pub fn per_head(&self, heads: usize) -> Result<Vec<f32>> {
        let values = match self {
            Lambda::Scalar(l) => vec![*l; heads],
            Lambda::PerHead(v) if v.len() == heads => v.clone(),
            Lambda::PerHead(v) => {
                return Err(Error::invalid(format!(
                    "lambda has {} values but there are {heads} heads",
                    v.len()
                )))
            }
        };
        if let Some((h, l)) = values
            .iter()
            .enumerate()
            .find(|(_, l)| !(l.is_finite() && **l >= 0.0))
        {
            return Err(Error::invalid(format!(
                "lambda must be finite and >= 0, got {l} for head {h}"
            )));
        }
        Ok(values)
    }
}

/// Mirrors `Params` in `shaders/saobp.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SaobpParams {
    matrices: u32,
    n: u32,
    d: u32,
    heads: u32,
    _pad: [u32; 4],
}

/// Shapes of one SAOBP problem: `matrices` = B·H attention maps of `n`×`n`,
/// values `d` wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    params: SaobpParams,
    rows: u64,
    elements: usize,
}

pub(crate) fn plan(matrices: usize, heads: usize, n: usize, d: usize) -> Result<Plan> {
    Ok(Plan {
        params: SaobpParams {
            matrices: to_u32("matrices", matrices)?,
            n: to_u32("N", n)?,
            d: to_u32("D", d)?,
            heads: to_u32("heads", heads.max(1))?,
            _pad: [0; 4],
        },
        rows: (matrices * n) as u64,
        elements: matrices * n * d,
    })
}

/// `messages = M(a)`, both `[G, N, N]`: `A·A` by the matmul kernels, then the
/// echo terms (`k = i`, `k = j`) taken out.
pub(crate) fn messages<'a>(
    gpu: &Gpu,
    plan: &Plan,
    a: &'a Tensor,
    messages: &'a Tensor,
) -> Result<Vec<Step<'a>>> {
    let square = matmul::plan(a.shape(), a.shape(), &matmul::MatmulOptions::default())?;
    let n = plan.params.n as usize;
    let elements = plan.params.matrices as usize * n * n;
    let mut steps = matmul::steps(gpu, &square, a, a, messages)?;
    steps.push(
        Dispatch::new(
            &REMOVE_ECHOES,
            &plan.params,
            REMOVE_ECHOES.groups_for(elements),
        )
        .bind("echo_a", a)
        .bind("echo_m", messages)
        .step(),
    );
    Ok(steps)
}

/// `mass_i = Σ_j M_ij`, `refined = (A + λM) / (1 + λ m)`.
pub(crate) fn refine<'a>(
    plan: &Plan,
    a: &'a Tensor,
    messages: &'a Tensor,
    lambda: &'a Tensor,
    refined: &'a Tensor,
    mass: &'a Tensor,
) -> Step<'a> {
    Dispatch::new(&REFINE, &plan.params, plan.rows)
        .bind("ref_a", a)
        .bind("ref_m", messages)
        .bind("ref_lambda", lambda)
        .bind("ref_r", refined)
        .bind("ref_mass", mass)
        .step()
}

/// Per row `(a_i, r_i, c_i)` into `stats` (`[G·N, 3]`).
pub(crate) fn diag_stats<'a>(plan: &Plan, a: &'a Tensor, stats: &'a Tensor) -> Step<'a> {
    Dispatch::new(&DIAG_STATS, &plan.params, plan.rows)
        .bind("ds_a", a)
        .bind("ds_stats", stats)
        .step()
}

/// Multi-hop mass `m` from `A` and its row stats, without `M`.
pub(crate) fn mass<'a>(
    plan: &Plan,
    a: &'a Tensor,
    stats: &'a Tensor,
    mass: &'a Tensor,
) -> Step<'a> {
    Dispatch::new(&MASS, &plan.params, plan.rows)
        .bind("ms_a", a)
        .bind("ms_stats", stats)
        .bind("ms_mass", mass)
        .step()
}

/// `U' = [Y − a ⊙ V | r − a]` (`[G, N, D + 1]`).
pub(crate) fn two_hop_values<'a>(
    plan: &Plan,
    y: &'a Tensor,
    v: &'a Tensor,
    stats: &'a Tensor,
    u: &'a Tensor,
) -> Step<'a> {
    let groups = TWO_HOP_VALUES.groups_for(plan.elements + plan.rows as usize);
    Dispatch::new(&TWO_HOP_VALUES, &plan.params, groups)
        .bind("tv_y", y)
        .bind("tv_v", v)
        .bind("tv_stats", stats)
        .bind("tv_u", u)
        .step()
}

/// Refined output from `Y = AV`, `AU'`, the row stats and λ; writes `m` too.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_output<'a>(
    plan: &Plan,
    y: &'a Tensor,
    v: &'a Tensor,
    au: &'a Tensor,
    stats: &'a Tensor,
    mass: &'a Tensor,
    lambda: &'a Tensor,
    out: &'a Tensor,
) -> Step<'a> {
    Dispatch::new(
        &FUSED_OUTPUT,
        &plan.params,
        FUSED_OUTPUT.groups_for(plan.elements),
    )
    .bind("fo_y", y)
    .bind("fo_v", v)
    .bind("fo_au", au)
    .bind("fo_stats", stats)
    .bind("fo_mass", mass)
    .bind("fo_lambda", lambda)
    .bind("fo_out", out)
    .step()
}

/// The materialized refinement of an attention map, from [`refine_map`].
#[derive(Debug, Clone)]
pub struct Refined {
    /// Two-hop messages `M` `[B, H, N, N]`.
    pub messages: Tensor,
    /// Multi-hop mass `m = Σ_j M_ij` `[B, H, N]`.
    pub mass: Tensor,
    /// `R = (A + λM) / (1 + λm)` `[B, H, N, N]`.
    pub refined: Tensor,
}

/// Checks that `a` is `[B, H, N, N]`; returns `(B, H, N)`.
pub(crate) fn check_map(a: &[usize]) -> Result<(usize, usize, usize)> {
    match *a {
        [b, h, n, n2] if n == n2 && b * h * n > 0 => Ok((b, h, n)),
        _ => Err(Error::shape(format!(
            "an attention map must be [B, H, N, N] and non-empty, got {a:?}"
        ))),
    }
}

/// SAOBP on any attention map `a` (`[B, H, N, N]`, rows stochastic or zero):
/// `M`, `m` and `R`, all materialized (N³ work per head).
pub async fn refine_map(gpu: &Gpu, a: &Tensor, lambda: &Lambda) -> Result<Refined> {
    let (b, h, n) = check_map(a.shape())?;
    a.check_finite("a")?;
    let lambda = Tensor::from_slice(gpu, &[h], &lambda.per_head(h)?)?;
    let plan = plan(b * h, h, n, 1)?;
    let out = Refined {
        messages: Tensor::scratch(gpu, a.shape())?,
        mass: Tensor::scratch(gpu, &[b, h, n])?,
        refined: Tensor::scratch(gpu, a.shape())?,
    };
    let mut steps = messages(gpu, &plan, a, &out.messages)?;
    steps.push(refine(
        &plan,
        a,
        &out.messages,
        &lambda,
        &out.refined,
        &out.mass,
    ));
    gpu.run(&steps).await?;
    drop(steps);
    Ok(out)
}

/// Blocking form of [`refine_map`].
#[cfg(not(target_arch = "wasm32"))]
pub fn refine_map_blocking(gpu: &Gpu, a: &Tensor, lambda: &Lambda) -> Result<Refined> {
    pollster::block_on(refine_map(gpu, a, lambda))
}
