//! SAOBP kernels: two-hop messages, refinement, the O(N²D) fused output and
//! its O(N²D) backward ([`saobp_output_backward`]).
//!
//! Shader: `shaders/saobp.wgsl`. Reference: [`crate::reference::saobp`](mod@crate::reference::saobp).
//! The pipeline that strings them together is [`crate::attention`](mod@crate::attention).

use crate::error::{Error, Result};
use crate::gpu::{Binding, Dispatch, Gpu, Panels, Step};
use crate::kernels::matmul::{self, MapTexture};
use crate::kernels::{rows, to_u32};
use crate::shader::Kernel;
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
        /// Backward, per row: `W = [dMV | dm]` and the row's rowdots and share of dλ.
        OUTPUT_ADJOINTS = "output_adjoints" (oa_grad, oa_y, oa_v, oa_au, oa_stats, oa_lambda, oa_w, oa_row);
        /// Backward, per row: `dY` and `(da, dr, dc)` from `Aᵀ·W`.
        ROW_ADJOINTS = "row_adjoints" (ra_grad, ra_w, ra_p, ra_v, ra_stats, ra_row, ra_dy, ra_diag);
        /// Backward: adds the terms of `W·U'ᵀ`, `r`, `c` and `a` to `dY·Vᵀ`, giving `dA`.
        ATTENTION_GRAD = "attention_grad" (ag_a, ag_wu, ag_diag, ag_out);
        /// [`ATTENTION_GRAD`] by 4 × 4 blocks, `A` read from a texture.
        ATTENTION_GRAD_TEXTURE = "attention_grad_texture" (agt_map, agt_wu, ag_diag, agt_out);
        /// Backward: adds the diagonal terms to `Aᵀ·dY`, giving `dV`.
        VALUE_GRAD = "value_grad" (vg_w, vg_p, vg_stats, vg_out);
        /// [`FUSED_OUTPUT`] written into token rows ([`Merge`]).
        FUSED_OUTPUT_MERGED = "fused_output" (fo_y, fo_v, fo_au, fo_stats, fo_mass, fo_lambda, fo_out)
            as "fused_output_merged" with [MERGED = 1];
        /// [`VALUE_GRAD`] written into token rows ([`Merge`]).
        VALUE_GRAD_MERGED = "value_grad_merged" (vg_w, vg_p, vg_stats, vg_out, vg_merged)
            as "value_grad_merged" with [MERGED = 1];
        /// Backward: dλ per head, summed in a fixed order.
        LAMBDA_GRAD = "lambda_grad" (lg_row, lg_out);
        /// [`DIAG_STATS`] with one invocation per row ([`rows`]).
        DIAG_STATS_SERIAL = "diag_stats_serial" (ds_a, ds_stats);
        /// [`DIAG_STATS`] from `A` in a texture, one invocation per 4 rows.
        DIAG_STATS_TEXTURE = "diag_stats_texture" (dt_map, ds_stats);
        /// [`OUTPUT_ADJOINTS`] with one invocation per row, reading `G`, `Y`,
        /// `V` and `A·U'` as texels.
        OUTPUT_ADJOINTS_TEXTURE = "output_adjoints_texture" (adj_0, adj_1, adj_2, adj_3, oat_stats, oat_lambda, oat_w, oat_row);
        /// [`ROW_ADJOINTS`] with one invocation per row, reading `G`, `W`,
        /// `Aᵀ·W` and `V` as texels.
        ROW_ADJOINTS_TEXTURE = "row_adjoints_texture" (adj_0, adj_1, adj_2, adj_3, rat_stats, rat_row, rat_dy, rat_diag);
        /// [`OUTPUT_ADJOINTS`] with one invocation per row.
        OUTPUT_ADJOINTS_SERIAL = "output_adjoints_serial" (oa_grad, oa_y, oa_v, oa_au, oa_stats, oa_lambda, oa_w, oa_row);
        /// [`ROW_ADJOINTS`] with one invocation per row.
        ROW_ADJOINTS_SERIAL = "row_adjoints_serial" (ra_grad, ra_w, ra_p, ra_v, ra_stats, ra_row, ra_dy, ra_diag);
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
    width: u32,
    /// [`diag_stats_texture`] only: log2 of the rows per layer of `A`'s texture.
    map_shift: u32,
    /// The merged outputs only ([`Merge`]).
    merge_parts: u32,
    merge_part: u32,
    /// The `*_adjoints_texture` kernels only: log2 of the rows per layer of
    /// their four textures, in binding order.
    shifts: [u32; 4],
}

/// Columns of the fused form's wide operands (`U'`, `A·U'`, `W`, `Aᵀ·W`):
/// `d + 1`, padded with zero columns to whole texels, so that the matmul
/// copies `U'` and `W` into textures as they lie (and `A`, shared with
/// `A·V`, only once) where it would otherwise pack them.
pub(crate) fn wide(d: usize) -> usize {
    (d + 1).next_multiple_of(4)
}

/// Shapes of one SAOBP problem: `matrices` = B·H attention maps of `n`×`n`,
/// values `d` wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    params: SaobpParams,
    rows: u64,
    elements: usize,
}

impl Plan {
    /// The same problem with wide operands `width` columns wide (the
    /// streaming path's `U'` and `A·U'` are exactly `d + 1`).
    pub(crate) fn with_width(mut self, width: usize) -> Result<Plan> {
        self.params.width = to_u32("D", width)?;
        Ok(self)
    }
}

pub(crate) fn plan(matrices: usize, heads: usize, n: usize, d: usize) -> Result<Plan> {
    Ok(Plan {
        params: SaobpParams {
            matrices: to_u32("matrices", matrices)?,
            n: to_u32("N", n)?,
            d: to_u32("D", d)?,
            heads: to_u32("heads", heads.max(1))?,
            width: to_u32("D", wide(d))?,
            map_shift: 0,
            merge_parts: 0,
            merge_part: 0,
            shifts: [0; 4],
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
pub(crate) fn diag_stats<'a>(
    gpu: &Gpu,
    plan: &Plan,
    a: &'a Tensor,
    stats: &'a Tensor,
) -> Result<Step<'a>> {
    let kernels = (&DIAG_STATS, &DIAG_STATS_SERIAL);
    Ok(
        rows::dispatch(gpu, kernels, &plan.params, plan.rows, plan.params.n)?
            .bind("ds_a", a)
            .bind("ds_stats", stats)
            .step(),
    )
}

/// [`diag_stats`] from `A` in texture `map` (with its layer shift; texel
/// `i` holds floats `4i .. 4i + 4` of `A`, `N` a multiple of 4), one
/// invocation per 4 rows, each reading its rows and its columns as texels.
pub(crate) fn diag_stats_texture<'a>(
    plan: &Plan,
    (map, map_shift): (&Panels, u32),
    stats: &'a Tensor,
) -> Result<Step<'a>> {
    if !plan.params.n.is_multiple_of(4) {
        return Err(Error::Internal(format!(
            "diag_stats_texture needs whole texels per row, got N = {}",
            plan.params.n
        )));
    }
    let params = SaobpParams {
        map_shift,
        ..plan.params
    };
    let groups = DIAG_STATS_TEXTURE.groups_for(plan.rows as usize / 4);
    Ok(Dispatch::new(&DIAG_STATS_TEXTURE, &params, groups)
        .bind("dt_map", Binding::Texture(map.clone()))
        .bind("ds_stats", stats)
        .step())
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
    let groups = TWO_HOP_VALUES.groups_for(plan.rows as usize * plan.params.width as usize);
    Dispatch::new(&TWO_HOP_VALUES, &plan.params, groups)
        .bind("tv_y", y)
        .bind("tv_v", v)
        .bind("tv_stats", stats)
        .bind("tv_u", u)
        .step()
}

/// Where a per-head output `[B, H, n, d]` goes instead of its own tensor:
/// into token rows `[B·n, parts·H·d]` of `out`, as part `part` (the GPT's
/// merge of its heads, parts 1, or of dq, dk and dv into dqkv, parts 3).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Merge<'a> {
    pub out: &'a Tensor,
    pub parts: usize,
    pub part: usize,
}

impl Merge<'_> {
    /// `plan`'s parameters for this merge, after checking its sizes.
    fn params(&self, plan: &Plan) -> Result<SaobpParams> {
        if self.part >= self.parts || self.out.len() != plan.elements * self.parts {
            return Err(Error::shape(format!(
                "merged output: {} values for part {} of {} of {} values per part",
                self.out.len(),
                self.part,
                self.parts,
                plan.elements
            )));
        }
        Ok(SaobpParams {
            merge_parts: to_u32("parts", self.parts)?,
            merge_part: to_u32("part", self.part)?,
            ..plan.params
        })
    }
}

/// Refined output from `Y = AV`, `AU'`, the row stats and λ into `out`, or
/// into `merge`'s token rows when given; writes `m` too.
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
    merge: Option<Merge<'a>>,
) -> Result<Step<'a>> {
    let (kernel, params, out) = match merge {
        Some(m) => (&FUSED_OUTPUT_MERGED, m.params(plan)?, m.out),
        None => (&FUSED_OUTPUT, plan.params, out),
    };
    Ok(
        Dispatch::new(kernel, &params, kernel.groups_for(plan.elements))
            .bind("fo_y", y)
            .bind("fo_v", v)
            .bind("fo_au", au)
            .bind("fo_stats", stats)
            .bind("fo_mass", mass)
            .bind("fo_lambda", lambda)
            .bind("fo_out", out)
            .step(),
    )
}

/// The fused form's intermediates of `B·H` maps `N`×`N` with values `Dv`
/// wide: the row statistics `(a, r, c)`, `Y = A·V`, `U' = [Y − a ⊙ V | r − a]`
/// and `A·U'`. The forward writes them; the backward reads them, so a model
/// that keeps them skips recomputing two products per layer.
pub(crate) struct FusedIntermediates {
    pub stats: Tensor,
    pub y: Tensor,
    pub u: Tensor,
    pub au: Tensor,
}

impl FusedIntermediates {
    /// Scratch for `[b, h, n, dv]` values.
    pub fn new(gpu: &Gpu, [b, h, n, dv]: [usize; 4]) -> Result<FusedIntermediates> {
        let wide = [b, h, n, wide(dv)];
        Ok(FusedIntermediates {
            stats: Tensor::scratch(gpu, &[b * h * n, 3])?,
            y: Tensor::scratch(gpu, &[b, h, n, dv])?,
            u: Tensor::scratch(gpu, &wide)?,
            au: Tensor::scratch(gpu, &wide)?,
        })
    }

    /// Where the softmax may write `A` for both products of
    /// [`FusedIntermediates::steps`] (`A·V` and `A·U'`) so that neither
    /// copies it: a texture, where both read `A` copied as stored
    /// ([`matmul::map_texture`]); `None` otherwise.
    pub(crate) fn map_texture(
        &self,
        gpu: &Gpu,
        a: &Tensor,
        v: &Tensor,
    ) -> Result<Option<MapTexture>> {
        let plain = matmul::MatmulOptions::default();
        let y_plan = matmul::plan(a.shape(), v.shape(), &plain)?;
        let au_plan = matmul::plan(a.shape(), self.u.shape(), &plain)?;
        matmul::map_texture(gpu, &[(&y_plan, v), (&au_plan, &self.u)], a)
    }

    /// The steps writing them from `a` and `v`. Both products read `A`:
    /// packed once where the matmul packs operands. With `map`, `A` is
    /// already in its texture (written there by the softmax, whatever `a`
    /// holds), and the row statistics read it from there.
    pub(crate) fn steps<'a>(
        &'a self,
        gpu: &Gpu,
        plan: &Plan,
        a: &'a Tensor,
        v: &'a Tensor,
        map: Option<MapTexture>,
    ) -> Result<Vec<Step<'a>>> {
        let plain = matmul::MatmulOptions::default();
        let y_plan = matmul::plan(a.shape(), v.shape(), &plain)?;
        let au_plan = matmul::plan(a.shape(), self.u.shape(), &plain)?;
        let (mut shared, mut steps) = match map {
            Some(m) => {
                let stats = diag_stats_texture(plan, (&m.panels, m.shift), &self.stats)?;
                (m.shared, vec![stats])
            }
            None => (
                matmul::SharedA::default(),
                vec![diag_stats(gpu, plan, a, &self.stats)?],
            ),
        };
        steps.extend(matmul::steps_sharing_a(
            gpu,
            &y_plan,
            a,
            v,
            &self.y,
            &mut shared,
        )?);
        steps.push(two_hop_values(plan, &self.y, v, &self.stats, &self.u));
        steps.extend(matmul::steps_sharing_a(
            gpu,
            &au_plan,
            a,
            &self.u,
            &self.au,
            &mut shared,
        )?);
        Ok(steps)
    }

    /// [`FusedIntermediates::steps`], then the refined output `out` (or
    /// into `merge`'s token rows) and `m` into `mass`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn output_steps<'a>(
        &'a self,
        gpu: &Gpu,
        plan: &Plan,
        a: &'a Tensor,
        v: &'a Tensor,
        map: Option<MapTexture>,
        lambda: &'a Tensor,
        mass: &'a Tensor,
        out: &'a Tensor,
        merge: Option<Merge<'a>>,
    ) -> Result<Vec<Step<'a>>> {
        let mut steps = self.steps(gpu, plan, a, v, map)?;
        steps.push(fused_output(
            plan,
            &self.y,
            v,
            &self.au,
            &self.stats,
            mass,
            lambda,
            out,
            merge,
        )?);
        Ok(steps)
    }
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

/// Gradients of SAOBP's refined output, from [`saobp_output_backward`].
#[derive(Debug, Clone)]
pub struct OutputGradients {
    /// `∂L/∂A` `[B, H, N, N]`, with `A` taken as a free matrix: masked
    /// entries get a gradient too (the softmax's backward zeroes them).
    pub grad_attention: Tensor,
    /// `∂L/∂V` `[B, H, N, Dv]`.
    pub grad_v: Tensor,
    /// `∂L/∂λ_h` `[H]`, summed over the batch.
    pub grad_lambda: Tensor,
}

/// Checks the backward's shapes: `a` `[B, H, N, N]`, `v` and `grad_output`
/// `[B, H, N, Dv]` with `Dv > 0`; returns `(B, H, N, Dv)`.
fn check_backward(a: &[usize], v: &[usize], grad_output: &[usize]) -> Result<[usize; 4]> {
    let (b, h, n) = check_map(a)?;
    match *v {
        [vb, vh, vn, dv] if [vb, vh, vn] == [b, h, n] && dv > 0 => {
            if grad_output != v {
                return Err(Error::shape(format!(
                    "the output gradient must have V's shape {v:?}, got {grad_output:?}"
                )));
            }
            Ok([b, h, n, dv])
        }
        _ => Err(Error::shape(format!(
            "V must be [B, H, N, Dv] = [{b}, {h}, {n}, Dv] with Dv > 0 for an attention map \
             {a:?}, got {v:?}"
        ))),
    }
}

/// Backward of SAOBP's refined output `O = (Y + λ·M·V) / (1 + λm)` (the
/// fused mode's `O = R·V`) in O(N²D), never forming `M`: from the attention
/// map `a` (`[B, H, N, N]`, rows stochastic or zero), `v` (`[B, H, N, Dv]`),
/// λ and `grad_output = ∂L/∂O` (`[B, H, N, Dv]`), the gradients with respect
/// to `A`, `V` and each head's λ, as the spec's "Gradients" section writes
/// them.
///
/// The forward's row statistics, `Y = A·V` and `A·U'` are recomputed; the
/// other products are `Aᵀ·[dMV | dm]`, `dY·Vᵀ`, `[dMV | dm]·U'ᵀ` and
/// `Aᵀ·dY`, so the work is six products of N×N by N×(Dv or Dv + 1) per map,
/// plus passes over rows. Everything runs in one submission, and dλ is
/// reduced on the GPU in a fixed order, so a repeated call gives the same
/// bits. Shapes, λ and the inputs' finiteness are checked before any GPU
/// work ([`Error::Shape`], [`Error::InvalidArgument`], [`Error::NonFinite`]).
///
/// ```no_run
/// # fn main() -> saobp::Result<()> {
/// use saobp::{saobp_output_backward_blocking, Gpu, Lambda, Tensor};
/// let gpu = Gpu::from_env_blocking()?;
/// let (b, h, n, dv) = (1, 2, 4, 3);
/// // A causal map: row i spreads its attention evenly over keys 0..=i.
/// let a: Vec<f32> = (0..b * h * n * n)
///     .map(|x| {
///         let (i, j) = (x / n % n, x % n);
///         if j <= i { 1.0 / (i + 1) as f32 } else { 0.0 }
///     })
///     .collect();
/// let a = Tensor::from_slice(&gpu, &[b, h, n, n], &a)?;
/// let v: Vec<f32> = (0..b * h * n * dv).map(|x| (x as f32 * 0.7).sin()).collect();
/// let v = Tensor::from_slice(&gpu, &[b, h, n, dv], &v)?;
/// let grad_output = Tensor::from_slice(&gpu, &[b, h, n, dv], &vec![1.0; b * h * n * dv])?;
/// let lambda = Lambda::PerHead(vec![0.0, 0.5]);
/// let grads = saobp_output_backward_blocking(&gpu, &a, &v, &lambda, &grad_output)?;
/// let d_lambda = grads.grad_lambda.to_vec_blocking(&gpu)?; // one per head
/// assert_eq!(d_lambda.len(), h);
/// # Ok(()) }
/// ```
pub async fn saobp_output_backward(
    gpu: &Gpu,
    a: &Tensor,
    v: &Tensor,
    lambda: &Lambda,
    grad_output: &Tensor,
) -> Result<OutputGradients> {
    output_backward_merging(gpu, a, v, lambda, grad_output, None).await
}

/// [`saobp_output_backward`], writing `∂L/∂V` into `v_merged`'s token rows
/// when given (its `grad_v` is then scratch), as the GPT's backward does.
pub(crate) async fn output_backward_merging(
    gpu: &Gpu,
    a: &Tensor,
    v: &Tensor,
    lambda: &Lambda,
    grad_output: &Tensor,
    v_merged: Option<Merge<'_>>,
) -> Result<OutputGradients> {
    let [b, h, n, dv] = check_backward(a.shape(), v.shape(), grad_output.shape())?;
    let lambda = lambda.per_head(h)?;
    for (name, t) in [("a", a), ("v", v), ("grad_output", grad_output)] {
        t.check_finite(name)?;
    }
    let plan = plan(b * h, h, n, dv)?;
    let lambda = Tensor::from_slice(gpu, &[h], &lambda)?;
    let fwd = FusedIntermediates::new(gpu, [b, h, n, dv])?;
    let scratch = BackwardScratch::new(gpu, [b, h, n, dv])?;
    let out = OutputGradients {
        grad_attention: Tensor::scratch(gpu, a.shape())?,
        grad_v: Tensor::scratch(gpu, v.shape())?,
        grad_lambda: Tensor::scratch(gpu, &[h])?,
    };
    // The forward's intermediates, as the fused output forms them.
    let mut steps = fwd.steps(gpu, &plan, a, v, None)?;
    steps.extend(output_backward_steps(
        gpu,
        &plan,
        a,
        v,
        &lambda,
        grad_output,
        &fwd,
        &scratch,
        Grads {
            attention: &out.grad_attention,
            v: &out.grad_v,
            lambda: &out.grad_lambda,
            v_merged,
        },
    )?);
    gpu.run(&steps).await?;
    drop(steps);
    Ok(out)
}

/// Scratch of [`output_backward_steps`] for `[b, h, n, dv]` values.
pub(crate) struct BackwardScratch {
    w: Tensor,
    row_terms: Tensor,
    p: Tensor,
    dy: Tensor,
    diag: Tensor,
    wu: Tensor,
}

impl BackwardScratch {
    pub fn new(gpu: &Gpu, [b, h, n, dv]: [usize; 4]) -> Result<BackwardScratch> {
        let (rows, wide) = (b * h * n, [b, h, n, wide(dv)]);
        Ok(BackwardScratch {
            w: Tensor::scratch(gpu, &wide)?,
            row_terms: Tensor::scratch(gpu, &[rows, 4])?,
            p: Tensor::scratch(gpu, &wide)?,
            dy: Tensor::scratch(gpu, &[b, h, n, dv])?,
            diag: Tensor::scratch(gpu, &[rows, 3])?,
            wu: Tensor::scratch(gpu, &[b, h, n, n])?,
        })
    }
}

/// Where [`output_backward_steps`] writes `∂L/∂A`, `∂L/∂V` and `∂L/∂λ`;
/// `∂L/∂V` into `v_merged`'s token rows when given (and `v` is scratch).
pub(crate) struct Grads<'a> {
    pub attention: &'a Tensor,
    pub v: &'a Tensor,
    pub lambda: &'a Tensor,
    pub v_merged: Option<Merge<'a>>,
}

/// Whether the output backward's row kernels read their operands as texels
/// on `gpu` (`output_adjoints_texture`, `row_adjoints_texture`;
/// [`rows::reads_texels`]): `D` whole texels, so that the wide operands are
/// `D + 4` wide, and four textures per kernel.
fn adjoint_texels(gpu: &Gpu, plan: &Plan) -> Result<bool> {
    let d = plan.params.d;
    Ok(rows::reads_texels(gpu, d, u64::from(d / 4), 4)? && plan.params.width == d + 4)
}

/// The steps of SAOBP's output backward ([`saobp_output_backward`]) into
/// `out`, from the forward's intermediates `fwd` of the same `a` and `v`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn output_backward_steps<'a>(
    gpu: &Gpu,
    plan: &Plan,
    a: &'a Tensor,
    v: &'a Tensor,
    lambda: &'a Tensor,
    grad_output: &'a Tensor,
    fwd: &'a FusedIntermediates,
    scratch: &'a BackwardScratch,
    out: Grads<'a>,
) -> Result<Vec<Step<'a>>> {
    let plain = matmul::MatmulOptions::default();
    let trans_a = matmul::MatmulOptions {
        trans_a: true,
        ..plain
    };
    let trans_b = matmul::MatmulOptions {
        trans_b: true,
        ..plain
    };
    let wide = fwd.u.shape();
    let p_plan = matmul::plan(a.shape(), wide, &trans_a)?;
    let dyv_plan = matmul::plan(v.shape(), v.shape(), &trans_b)?;
    let wu_plan = matmul::plan(wide, wide, &trans_b)?;
    let dv_plan = matmul::plan(a.shape(), v.shape(), &trans_a)?;
    let n = plan.params.n as usize;
    let s = scratch;

    // Through O, then through M·V and m: dU and w = Aᵀ·dm in one product.
    let d = plan.params.d;
    // The adjoints' row kernels read their operands as texels where they
    // can (see `adjoint_texels`); `G` and `V` are copied once for both.
    let texels = adjoint_texels(gpu, plan)?;
    let mut shared_gv = None;
    let mut steps = Vec::new();
    let copied = if texels {
        rows::texels(gpu, [grad_output, &fwd.y, v, &fwd.au])
    } else {
        None
    };
    match copied {
        Some((copy, [g, y, vt, au])) => {
            steps.extend(copy);
            let params = SaobpParams {
                shifts: [g.1, y.1, vt.1, au.1],
                ..plan.params
            };
            let k = &OUTPUT_ADJOINTS_TEXTURE;
            steps.push(
                Dispatch::new(k, &params, k.groups_for(plan.rows as usize))
                    .bind("adj_0", Binding::Texture(g.0.clone()))
                    .bind("adj_1", Binding::Texture(y.0))
                    .bind("adj_2", Binding::Texture(vt.0.clone()))
                    .bind("adj_3", Binding::Texture(au.0))
                    .bind("oat_stats", &fwd.stats)
                    .bind("oat_lambda", lambda)
                    .bind("oat_w", &s.w)
                    .bind("oat_row", &s.row_terms)
                    .step(),
            );
            shared_gv = Some((g, vt));
        }
        None => {
            let kernels = (&OUTPUT_ADJOINTS, &OUTPUT_ADJOINTS_SERIAL);
            steps.push(
                rows::dispatch(gpu, kernels, &plan.params, plan.rows, d)?
                    .bind("oa_grad", grad_output)
                    .bind("oa_y", &fwd.y)
                    .bind("oa_v", v)
                    .bind("oa_au", &fwd.au)
                    .bind("oa_stats", &fwd.stats)
                    .bind("oa_lambda", lambda)
                    .bind("oa_w", &s.w)
                    .bind("oa_row", &s.row_terms)
                    .step(),
            );
        }
    }
    let mut shared_t = matmul::SharedA::default();
    steps.extend(matmul::steps_sharing_a(
        gpu,
        &p_plan,
        a,
        &s.w,
        &s.p,
        &mut shared_t,
    )?);
    let copied = match shared_gv {
        Some(gv) => rows::texels(gpu, [&s.w, &s.p]).map(|(copy, wp)| (copy, gv, wp)),
        None => None,
    };
    match copied {
        Some((copy, (g, vt), [w, pt])) => {
            steps.extend(copy);
            let params = SaobpParams {
                shifts: [g.1, w.1, pt.1, vt.1],
                ..plan.params
            };
            let k = &ROW_ADJOINTS_TEXTURE;
            steps.push(
                Dispatch::new(k, &params, k.groups_for(plan.rows as usize))
                    .bind("adj_0", Binding::Texture(g.0))
                    .bind("adj_1", Binding::Texture(w.0))
                    .bind("adj_2", Binding::Texture(pt.0))
                    .bind("adj_3", Binding::Texture(vt.0))
                    .bind("rat_stats", &fwd.stats)
                    .bind("rat_row", &s.row_terms)
                    .bind("rat_dy", &s.dy)
                    .bind("rat_diag", &s.diag)
                    .step(),
            );
        }
        None => {
            let kernels = (&ROW_ADJOINTS, &ROW_ADJOINTS_SERIAL);
            steps.push(
                rows::dispatch(gpu, kernels, &plan.params, plan.rows, d)?
                    .bind("ra_grad", grad_output)
                    .bind("ra_w", &s.w)
                    .bind("ra_p", &s.p)
                    .bind("ra_v", v)
                    .bind("ra_stats", &fwd.stats)
                    .bind("ra_row", &s.row_terms)
                    .bind("ra_dy", &s.dy)
                    .bind("ra_diag", &s.diag)
                    .step(),
            );
        }
    }

    // dA: dY·Vᵀ, plus [dMV | dm]·U'ᵀ, plus the terms read off A.
    steps.extend(matmul::steps(gpu, &dyv_plan, &s.dy, v, out.attention)?);
    steps.extend(matmul::steps(gpu, &wu_plan, &s.w, &fwd.u, &s.wu)?);
    // The terms read off A: from the texture the Aᵀ products above copied it
    // into, where they copied it as stored (one lane at a time from a
    // storage buffer costs llvmpipe more than the rest of the kernel).
    let elements = plan.params.matrices as usize * n * n;
    steps.push(match shared_t.copied() {
        Some((map, map_shift)) if n.is_multiple_of(4) => {
            let params = SaobpParams {
                map_shift,
                ..plan.params
            };
            let blocks = elements / 16;
            Dispatch::new(
                &ATTENTION_GRAD_TEXTURE,
                &params,
                ATTENTION_GRAD_TEXTURE.groups_for(blocks),
            )
            .bind("agt_map", Binding::Texture(map))
            .bind("agt_wu", &s.wu)
            .bind("ag_diag", &s.diag)
            .bind("agt_out", out.attention)
            .step()
        }
        _ => Dispatch::new(
            &ATTENTION_GRAD,
            &plan.params,
            ATTENTION_GRAD.groups_for(elements),
        )
        .bind("ag_a", a)
        .bind("ag_wu", &s.wu)
        .bind("ag_diag", &s.diag)
        .bind("ag_out", out.attention)
        .step(),
    });

    // dV: Aᵀ·dY plus the diagonal terms; dλ per head.
    steps.extend(matmul::steps_sharing_a(
        gpu,
        &dv_plan,
        a,
        &s.dy,
        out.v,
        &mut shared_t,
    )?);
    let value_grad = |kernel: &'static Kernel, params: &SaobpParams| {
        Dispatch::new(kernel, params, kernel.groups_for(plan.elements))
            .bind("vg_w", &s.w)
            .bind("vg_p", &s.p)
            .bind("vg_stats", &fwd.stats)
            .bind("vg_out", out.v)
    };
    steps.push(match out.v_merged {
        Some(m) => value_grad(&VALUE_GRAD_MERGED, &m.params(plan)?)
            .bind("vg_merged", m.out)
            .step(),
        None => value_grad(&VALUE_GRAD, &plan.params).step(),
    });
    steps.push(
        Dispatch::new(&LAMBDA_GRAD, &plan.params, u64::from(plan.params.heads))
            .bind("lg_row", &s.row_terms)
            .bind("lg_out", out.lambda)
            .step(),
    );
    Ok(steps)
}

/// Blocking form of [`saobp_output_backward`].
#[cfg(not(target_arch = "wasm32"))]
pub fn saobp_output_backward_blocking(
    gpu: &Gpu,
    a: &Tensor,
    v: &Tensor,
    lambda: &Lambda,
    grad_output: &Tensor,
) -> Result<OutputGradients> {
    pollster::block_on(saobp_output_backward(gpu, a, v, lambda, grad_output))
}
