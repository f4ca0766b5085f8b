//! AdamW on the GPU, as the spec's "Optimizer" states: decoupled weight
//! decay by group, global-norm gradient clipping with the norm reduced on
//! the GPU, and the λ ≥ 0 clamp. The learning-rate schedule is
//! [`lr_at`], computed on the host. [`accumulate`] averages the gradients
//! of a batch's micro-batches before the step.
//!
//! Shader: `shaders/optim.wgsl`. Reference: [`crate::reference::optim`](mod@crate::reference::optim).

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, Gpu, Step};
use crate::kernels::to_u32;
use crate::tensor::Tensor;

pub(crate) const SOURCE: &str = shader!("optim.wgsl");

kernels! {
    "optim" in SOURCE, params OptimParams, workgroup 64 {
        /// Squared sums of one gradient tensor, one per `CHUNK` elements.
        OPTIM_SUMSQ = "optim_sumsq" (sq_grad, sq_partials);
        /// The global norm from every partial sum, in one workgroup.
        OPTIM_NORM = "optim_norm" (fin_partials, fin_norm, fin_guard);
        /// The clipped AdamW update of one tensor, one invocation per element.
        OPTIM_ADAMW = "optim_adamw" (ad_param, ad_grad, ad_m, ad_v, ad_norm);
        /// One micro-batch's gradient added, scaled, into the step's sum.
        OPTIM_ACCUMULATE = "optim_accumulate" (ac_grad, ac_sum);
    }
}

/// Elements per partial sum: `CHUNK` in `shaders/optim.wgsl`.
const CHUNK: usize = 256;

/// Mirrors `Params` in `shaders/optim.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OptimParams {
    len: u32,
    offset: u32,
    count: u32,
    flags: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    scale: f32,
    pad: [u32; 3],
}

/// Which of the spec's groups a parameter tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamGroup {
    /// Weight decay applies: the 2-D weights (`wte`, `wpe`, every `weight`
    /// of `c_attn`, `c_proj`, `c_fc`).
    Decayed,
    /// No weight decay: biases and LayerNorm.
    NotDecayed,
    /// No weight decay, and clamped to ≥ 0 after each step: a learned λ.
    Lambda,
}

impl ParamGroup {
    /// Whether weight decay applies.
    pub fn decayed(self) -> bool {
        self == ParamGroup::Decayed
    }

    /// Whether the values are clamped to ≥ 0 after each step.
    pub fn clamped(self) -> bool {
        self == ParamGroup::Lambda
    }
}

/// Hyper-parameters of [`AdamW`]; the defaults are the spec's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWOptions {
    /// Decay of the first moment, in `[0, 1)`. Default 0.9.
    pub beta1: f32,
    /// Decay of the second moment, in `[0, 1)`. Default 0.99.
    pub beta2: f32,
    /// Added to the bias-corrected `√v`, finite and > 0. Default 1e-8.
    pub eps: f32,
    /// Decoupled weight decay of [`ParamGroup::Decayed`] tensors, finite
    /// and ≥ 0. Default 0.1.
    pub weight_decay: f32,
    /// Gradients are scaled by `min(1, max_norm / ‖g‖)`, `‖g‖` the global
    /// L2 norm over all tensors; `None` does not clip. Finite and > 0.
    /// Default `Some(1.0)`.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWOptions {
    fn default() -> Self {
        AdamWOptions {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: Some(1.0),
        }
    }
}

impl AdamWOptions {
    /// [`Error::InvalidArgument`] naming the first value out of its range.
    pub fn validate(&self) -> Result<()> {
        let beta = |name: &str, b: f32| {
            if (0.0..1.0).contains(&b) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "AdamW: {name} = {b} is not in [0, 1)"
                )))
            }
        };
        beta("beta1", self.beta1)?;
        beta("beta2", self.beta2)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::invalid(format!(
                "AdamW: eps = {} must be finite and > 0",
                self.eps
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(format!(
                "AdamW: weight_decay = {} must be finite and >= 0",
                self.weight_decay
            )));
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::invalid(format!(
                    "AdamW: max_grad_norm = {n} must be finite and > 0"
                )));
            }
        }
        Ok(())
    }
}

/// The spec's learning rate at step `step` (from 0) of `total`: a linear
/// warm-up `lr·(step+1)/100` over the first 100 steps, then a cosine from
/// `lr` at step 100 to `lr/10` at the last step, `total − 1` (held there
/// beyond it).
pub fn lr_at(step: usize, total: usize, lr: f64) -> f64 {
    const WARMUP: usize = 100;
    if step < WARMUP {
        return lr * (step + 1) as f64 / WARMUP as f64;
    }
    let last = total.saturating_sub(1);
    // A run no longer than the warm-up has no cosine: its step 100 is the last.
    let progress = if last <= WARMUP {
        1.0
    } else {
        ((step - WARMUP) as f64 / (last - WARMUP) as f64).min(1.0)
    };
    let floor = lr / 10.0;
    floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// AdamW over a fixed list of parameter tensors: the options, each tensor's
/// shape and group, and its first and second moments on the GPU (zeros at
/// first). Each [`AdamW::step`] is one GPU submission that reduces the
/// global gradient norm, clips, and updates every tensor in place; nothing
/// is read back. A step whose gradients hold NaN or ±Inf changes no
/// parameter and no moment (the GPU skips it; [`AdamW::last_grad_norm`]
/// then reads NaN or ±Inf), though [`AdamW::steps`] still counts it: the
/// host does not know without reading the norm back.
#[derive(Debug)]
pub struct AdamW {
    opts: AdamWOptions,
    shapes: Vec<Vec<usize>>,
    groups: Vec<ParamGroup>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    // Where each tensor's partial sums start, and their total count.
    offsets: Vec<u32>,
    partials: Tensor,
    // The global norm of the last step's gradients (before clipping).
    norm: Tensor,
    // [1] zero: the guard of a step that has none.
    no_guard: Tensor,
    t: u64,
}

impl AdamW {
    /// An optimizer for tensors of the given shapes and groups, in the order
    /// [`AdamW::step`] takes them.
    ///
    /// Fails with [`Error::InvalidArgument`] when an option is out of range
    /// and with [`Error::Shape`] when there is no tensor or one is empty.
    pub fn new(gpu: &Gpu, params: &[(&[usize], ParamGroup)], opts: AdamWOptions) -> Result<AdamW> {
        opts.validate()?;
        if params.is_empty() {
            return Err(Error::shape("AdamW needs at least one parameter tensor"));
        }
        let mut offsets = Vec::with_capacity(params.len());
        let mut count = 0usize;
        for (i, (shape, _)) in params.iter().enumerate() {
            let len = crate::tensor::numel(shape)?;
            if len == 0 {
                return Err(Error::shape(format!(
                    "AdamW: parameter {i} has shape {shape:?}, which holds no values"
                )));
            }
            to_u32("parameter length", len)?;
            offsets.push(to_u32("partial sums", count)?);
            count = count
                .checked_add(len.div_ceil(CHUNK))
                .ok_or_else(|| Error::shape("AdamW: too many parameters"))?;
        }
        to_u32("partial sums", count)?;
        let mut m = Vec::with_capacity(params.len());
        let mut v = Vec::with_capacity(params.len());
        for (shape, _) in params {
            m.push(Tensor::zeros(gpu, shape)?);
            v.push(Tensor::zeros(gpu, shape)?);
        }
        Ok(AdamW {
            opts,
            shapes: params.iter().map(|(s, _)| s.to_vec()).collect(),
            groups: params.iter().map(|&(_, g)| g).collect(),
            m,
            v,
            offsets,
            partials: Tensor::zeros(gpu, &[count])?,
            norm: Tensor::zeros(gpu, &[1])?,
            no_guard: Tensor::zeros(gpu, &[1])?,
            t: 0,
        })
    }

    /// The options.
    pub fn options(&self) -> &AdamWOptions {
        &self.opts
    }

    /// Steps taken so far: the bias correction of the next step uses this + 1.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The first and second moments of tensor `i`, or `None` past the end.
    pub fn moments(&self, i: usize) -> Option<(&Tensor, &Tensor)> {
        Some((self.m.get(i)?, self.v.get(i)?))
    }

    /// Restores a saved state: `t` steps taken, and each tensor's first and
    /// second moments (`moments[i] = (m, v)`, as [`AdamW::moments`] gives
    /// them, read back), so that a resumed run continues bit for bit.
    ///
    /// Fails with [`Error::Shape`] when the count or a length differs from
    /// the tensors this optimizer was made for, and with
    /// [`Error::InvalidArgument`] when a value is not finite or a second
    /// moment is negative.
    pub fn set_state(&mut self, gpu: &Gpu, t: u64, moments: &[(&[f32], &[f32])]) -> Result<()> {
        if moments.len() != self.shapes.len() {
            return Err(Error::shape(format!(
                "AdamW state holds {} tensors, the optimizer has {}",
                moments.len(),
                self.shapes.len()
            )));
        }
        for (i, ((m, v), shape)) in moments.iter().zip(&self.shapes).enumerate() {
            let len: usize = shape.iter().product();
            if m.len() != len || v.len() != len {
                return Err(Error::shape(format!(
                    "AdamW state of tensor {i}: {} and {} values for shape {shape:?}",
                    m.len(),
                    v.len()
                )));
            }
            if m.iter().chain(v.iter()).any(|x| !x.is_finite()) || v.iter().any(|&x| x < 0.0) {
                return Err(Error::invalid(format!(
                    "AdamW state of tensor {i} holds a non-finite value or a negative second moment"
                )));
            }
        }
        for (i, (m, v)) in moments.iter().enumerate() {
            self.m[i] = Tensor::from_slice(gpu, &self.shapes[i], m)?;
            self.v[i] = Tensor::from_slice(gpu, &self.shapes[i], v)?;
        }
        self.t = t;
        Ok(())
    }

    /// Checks `params` and `grads` against the tensors this optimizer was made for.
    fn check(&self, params: &[&Tensor], grads: &[&Tensor]) -> Result<()> {
        if params.len() != self.shapes.len() || grads.len() != self.shapes.len() {
            return Err(Error::shape(format!(
                "AdamW was made for {} tensors, got {} parameters and {} gradients",
                self.shapes.len(),
                params.len(),
                grads.len()
            )));
        }
        for (i, shape) in self.shapes.iter().enumerate() {
            for (what, t) in [("parameter", params[i]), ("gradient", grads[i])] {
                if t.shape() != shape.as_slice() {
                    return Err(Error::shape(format!(
                        "AdamW: {what} {i} has shape {:?}, expected {shape:?}",
                        t.shape()
                    )));
                }
            }
            params[i].check_finite(&format!("parameter {i}"))?;
            grads[i].check_finite(&format!("gradient {i}"))?;
        }
        Ok(())
    }

    /// The steps that write the global norm of `grads` into `self.norm`
    /// (`guard[0]` itself when that is not finite).
    fn norm_steps<'a>(&'a self, grads: &[&'a Tensor], guard: &'a Tensor) -> Result<Vec<Step<'a>>> {
        let mut steps = Vec::with_capacity(grads.len() + 1);
        for (g, &offset) in grads.iter().zip(&self.offsets) {
            let params = OptimParams {
                len: to_u32("gradient length", g.len())?,
                offset,
                ..OptimParams::default()
            };
            steps.push(
                Dispatch::new(&OPTIM_SUMSQ, &params, g.len().div_ceil(CHUNK) as u64)
                    .bind("sq_grad", g.buffer())
                    .bind("sq_partials", self.partials.buffer())
                    .step(),
            );
        }
        let params = OptimParams {
            count: to_u32("partial sums", self.partials.len())?,
            ..OptimParams::default()
        };
        steps.push(
            Dispatch::new(&OPTIM_NORM, &params, 1)
                .bind("fin_partials", self.partials.buffer())
                .bind("fin_norm", self.norm.buffer())
                .bind("fin_guard", guard.buffer())
                .step(),
        );
        Ok(steps)
    }

    /// One AdamW step at learning rate `lr` (e.g. [`lr_at`]): every
    /// `params[i]` is updated in place from `grads[i]`, clipped by the
    /// global norm of all `grads`. Nothing is read back; the norm stays on
    /// the GPU for [`AdamW::last_grad_norm`].
    ///
    /// Fails before any GPU work with [`Error::Shape`] when the counts or
    /// shapes differ from those given to [`AdamW::new`], with
    /// [`Error::InvalidArgument`] when `lr` is not finite and ≥ 0, and with
    /// [`Error::NonFinite`] when an uploaded tensor holds NaN or ±Inf.
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        params: &[&Tensor],
        grads: &[&Tensor],
        lr: f64,
    ) -> Result<()> {
        let t = self.t + 1;
        let steps = self.prepare_step(params, grads, lr, t, None)?;
        gpu.run(&steps).await?;
        drop(steps);
        self.t = t;
        Ok(())
    }

    /// The steps of AdamW's step number `t` (see [`AdamW::step`]), for a
    /// caller that submits them with others; it then calls
    /// [`AdamW::advance`] if the step counts. With `guard` (a `[1]` tensor, e.g. the loss the
    /// gradients came from), a guard that is not finite skips the step on
    /// the GPU as non-finite gradients do.
    pub(crate) fn prepare_step<'a>(
        &'a self,
        params: &[&'a Tensor],
        grads: &[&'a Tensor],
        lr: f64,
        t: u64,
        guard: Option<&'a Tensor>,
    ) -> Result<Vec<Step<'a>>> {
        if !(lr.is_finite() && lr >= 0.0 && (lr as f32).is_finite()) {
            return Err(Error::invalid(format!(
                "AdamW: learning rate {lr} must be finite and >= 0"
            )));
        }
        self.check(params, grads)?;
        if let Some(g) = guard {
            if g.len() != 1 {
                return Err(Error::shape(format!(
                    "AdamW: the guard holds {} values, not 1",
                    g.len()
                )));
            }
        }
        let o = self.opts;
        let (b1, b2) = (f64::from(o.beta1), f64::from(o.beta2));
        // Bias corrections in f64 on the host: β^t underflows gracefully there.
        let bc1 = 1.0 - b1.powf(t as f64);
        let bc2_sqrt = (1.0 - b2.powf(t as f64)).sqrt();
        let mut steps = self.norm_steps(grads, guard.unwrap_or(&self.no_guard))?;
        for i in 0..params.len() {
            let group = self.groups[i];
            let flags = u32::from(o.max_grad_norm.is_some()) | (u32::from(group.clamped()) << 1);
            let len = params[i].len();
            let p = OptimParams {
                len: to_u32("parameter length", len)?,
                offset: 0,
                count: 0,
                flags,
                lr: lr as f32,
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: if group.decayed() { o.weight_decay } else { 0.0 },
                bc1: bc1 as f32,
                bc2_sqrt: bc2_sqrt as f32,
                max_norm: o.max_grad_norm.unwrap_or(0.0),
                ..OptimParams::default()
            };
            steps.push(
                Dispatch::new(&OPTIM_ADAMW, &p, len.div_ceil(64) as u64)
                    .bind("ad_param", params[i].buffer())
                    .bind("ad_grad", grads[i].buffer())
                    .bind("ad_m", self.m[i].buffer())
                    .bind("ad_v", self.v[i].buffer())
                    .bind("ad_norm", self.norm.buffer())
                    .step(),
            );
        }
        Ok(steps)
    }

    /// Counts a step submitted through [`AdamW::prepare_step`] (the
    /// trainer's, which the `model` feature brings).
    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub(crate) fn advance(&mut self) {
        self.t += 1;
    }

    /// [`AdamW::step`], applied only if `guard[0]` (a `[1]` tensor on the
    /// GPU, e.g. the loss the gradients came from) is finite: otherwise the
    /// GPU skips the step as it skips non-finite gradients, and
    /// [`AdamW::last_grad_norm`] reads the guard's value. Nothing is read
    /// back first, so the guard's computation and the step can be queued
    /// together.
    pub async fn step_guarded(
        &mut self,
        gpu: &Gpu,
        params: &[&Tensor],
        grads: &[&Tensor],
        lr: f64,
        guard: &Tensor,
    ) -> Result<()> {
        let t = self.t + 1;
        let steps = self.prepare_step(params, grads, lr, t, Some(guard))?;
        gpu.run(&steps).await?;
        drop(steps);
        self.t = t;
        Ok(())
    }

    /// The `[1]` tensor of the last step's gradient norm (see
    /// [`AdamW::last_grad_norm`]), for copying it on the GPU (the
    /// trainer's, which the `model` feature brings).
    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub(crate) fn norm_tensor(&self) -> &Tensor {
        &self.norm
    }

    /// Blocking form of [`AdamW::step`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        gpu: &Gpu,
        params: &[&Tensor],
        grads: &[&Tensor],
        lr: f64,
    ) -> Result<()> {
        pollster::block_on(self.step(gpu, params, grads, lr))
    }

    /// The global L2 norm of the last step's gradients, before clipping
    /// (0 before the first step). Reads one value back.
    pub async fn last_grad_norm(&self, gpu: &Gpu) -> Result<f32> {
        Ok(self.norm.to_vec(gpu).await?[0])
    }

    /// Blocking form of [`AdamW::last_grad_norm`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn last_grad_norm_blocking(&self, gpu: &Gpu) -> Result<f32> {
        pollster::block_on(self.last_grad_norm(gpu))
    }

    /// The global L2 norm of `grads` (shaped as the parameters), reduced on
    /// the GPU as [`AdamW::step`] does, without updating anything; it
    /// replaces the value [`AdamW::last_grad_norm`] reads.
    ///
    /// Fails as [`AdamW::step`] does on the gradients.
    pub async fn grad_norm(&self, gpu: &Gpu, grads: &[&Tensor]) -> Result<f32> {
        // The gradients stand in for the parameters in the shape check.
        self.check(grads, grads)?;
        gpu.run(&self.norm_steps(grads, &self.no_guard)?).await?;
        self.last_grad_norm(gpu).await
    }

    /// Blocking form of [`AdamW::grad_norm`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn grad_norm_blocking(&self, gpu: &Gpu, grads: &[&Tensor]) -> Result<f32> {
        pollster::block_on(self.grad_norm(gpu, grads))
    }
}

/// The step of [`accumulate`], for a caller that submits it with others.
pub(crate) fn accumulate_step<'a>(
    sum: &'a Tensor,
    grad: &'a Tensor,
    scale: f32,
    first: bool,
) -> Result<Step<'a>> {
    if sum.shape() != grad.shape() {
        return Err(Error::shape(format!(
            "gradient accumulation: the sum is {:?} but the gradient {:?}",
            sum.shape(),
            grad.shape()
        )));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(format!(
            "gradient accumulation: scale {scale} is not finite"
        )));
    }
    let len = grad.len();
    let params = OptimParams {
        len: to_u32("gradient length", len)?,
        flags: u32::from(first) << 2,
        scale,
        ..OptimParams::default()
    };
    Ok(
        Dispatch::new(&OPTIM_ACCUMULATE, &params, len.div_ceil(64) as u64)
            .bind("ac_grad", grad.buffer())
            .bind("ac_sum", sum.buffer())
            .step(),
    )
}

/// Gradient accumulation: `sum = scale · grad` when `first`, else
/// `sum += scale · grad`, elementwise in f32. With `scale` = 1 / k over k
/// micro-batches of equal size, `sum` ends as the gradient of the mean loss
/// over all of them, which is how [`crate::model::Trainer`] trains a batch
/// in the memory of one micro-batch.
///
/// Fails with [`Error::Shape`] when the shapes differ and with
/// [`Error::InvalidArgument`] when `scale` is not finite.
pub async fn accumulate(
    gpu: &Gpu,
    sum: &Tensor,
    grad: &Tensor,
    scale: f32,
    first: bool,
) -> Result<()> {
    gpu.run(&[accumulate_step(sum, grad, scale, first)?]).await
}

/// Blocking form of [`accumulate`].
#[cfg(not(target_arch = "wasm32"))]
pub fn accumulate_blocking(
    gpu: &Gpu,
    sum: &Tensor,
    grad: &Tensor,
    scale: f32,
    first: bool,
) -> Result<()> {
    pollster::block_on(accumulate(gpu, sum, grad, scale, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_at_follows_the_spec_schedule() {
        let (lr, total) = (3e-3, 1001);
        let at = |step: usize, want: f64| {
            let got = lr_at(step, total, lr);
            assert!(
                (got - want).abs() <= 1e-15 * want,
                "lr_at({step}) = {got}, want {want}"
            );
        };
        at(0, lr / 100.0);
        at(49, lr * 0.5);
        at(99, lr);
        at(100, lr);
        // Half-way through the cosine (steps 100 to 1000): the mean of lr and lr/10.
        at(550, 0.55 * lr);
        at(total - 1, lr / 10.0);
        at(total + 5, lr / 10.0);
        assert!(lr_at(101, total, lr) < lr && lr_at(998, total, lr) > lr / 10.0);
        // A run that ends at step 100 goes straight to lr/10 there.
        assert!((lr_at(100, 101, lr) - lr / 10.0).abs() <= 1e-18);
    }

    #[test]
    fn options_out_of_range_are_invalid() {
        assert!(AdamWOptions::default().validate().is_ok());
        let bad = [
            AdamWOptions {
                beta1: 1.0,
                ..Default::default()
            },
            AdamWOptions {
                beta2: -0.1,
                ..Default::default()
            },
            AdamWOptions {
                beta2: f32::NAN,
                ..Default::default()
            },
            AdamWOptions {
                eps: 0.0,
                ..Default::default()
            },
            AdamWOptions {
                eps: f32::INFINITY,
                ..Default::default()
            },
            AdamWOptions {
                weight_decay: -1.0,
                ..Default::default()
            },
            AdamWOptions {
                max_grad_norm: Some(f32::NAN),
                ..Default::default()
            },
            AdamWOptions {
                max_grad_norm: Some(0.0),
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(
                matches!(o.validate(), Err(Error::InvalidArgument(_))),
                "{o:?}"
            );
        }
    }

    #[test]
    fn groups_decay_and_clamp_as_the_spec_says() {
        assert!(ParamGroup::Decayed.decayed() && !ParamGroup::Decayed.clamped());
        assert!(!ParamGroup::NotDecayed.decayed() && !ParamGroup::NotDecayed.clamped());
        assert!(!ParamGroup::Lambda.decayed() && ParamGroup::Lambda.clamped());
    }
}
