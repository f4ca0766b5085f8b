//! AdamW in float64, the twin of [`crate::kernels::optim`]: the same
//! clipping by global norm, decoupled decay by group and λ ≥ 0 clamp, as
//! the spec's "Optimizer" states.

use super::expect_len;
use crate::error::{Error, Result};
use crate::kernels::optim::{AdamWOptions, ParamGroup};

/// AdamW's state in f64: each tensor's group and moments, and the step count.
#[derive(Debug, Clone)]
pub struct AdamWRef {
    opts: AdamWOptions,
    groups: Vec<ParamGroup>,
    /// First moments, one vector per tensor.
    pub m: Vec<Vec<f64>>,
    /// Second moments, one vector per tensor.
    pub v: Vec<Vec<f64>>,
    t: u64,
}

impl AdamWRef {
    /// Zero moments for tensors of the given lengths and groups.
    ///
    /// Fails with [`Error::InvalidArgument`] when an option is out of range.
    pub fn new(params: &[(usize, ParamGroup)], opts: AdamWOptions) -> Result<AdamWRef> {
        opts.validate()?;
        Ok(AdamWRef {
            opts,
            groups: params.iter().map(|&(_, g)| g).collect(),
            m: params.iter().map(|&(n, _)| vec![0.0; n]).collect(),
            v: params.iter().map(|&(n, _)| vec![0.0; n]).collect(),
            t: 0,
        })
    }

    /// One step at learning rate `lr`, updating `params` in place from
    /// `grads`; returns the global L2 norm of `grads` before clipping.
    ///
    /// Fails with [`Error::Shape`] when counts or lengths differ from those
    /// given to [`AdamWRef::new`].
    pub fn step(&mut self, params: &mut [Vec<f64>], grads: &[&[f32]], lr: f64) -> Result<f64> {
        if params.len() != self.m.len() || grads.len() != self.m.len() {
            return Err(Error::shape(format!(
                "AdamW reference has {} tensors, got {} parameters and {} gradients",
                self.m.len(),
                params.len(),
                grads.len()
            )));
        }
        for (i, m) in self.m.iter().enumerate() {
            expect_len(&format!("parameter {i}"), params[i].len(), &[m.len()])?;
            expect_len(&format!("gradient {i}"), grads[i].len(), &[m.len()])?;
        }
        let norm = grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>()
            .sqrt();
        let o = self.opts;
        let scale = match o.max_grad_norm {
            Some(max) if norm > f64::from(max) => f64::from(max) / norm,
            _ => 1.0,
        };
        self.t += 1;
        let (b1, b2, eps) = (f64::from(o.beta1), f64::from(o.beta2), f64::from(o.eps));
        let bc1 = 1.0 - b1.powf(self.t as f64);
        let bc2 = 1.0 - b2.powf(self.t as f64);
        for (i, group) in self.groups.iter().enumerate() {
            let wd = if group.decayed() {
                f64::from(o.weight_decay)
            } else {
                0.0
            };
            let (p, m, v) = (&mut params[i], &mut self.m[i], &mut self.v[i]);
            for j in 0..p.len() {
                let g = f64::from(grads[i][j]) * scale;
                p[j] -= lr * wd * p[j];
                m[j] = b1 * m[j] + (1.0 - b1) * g;
                v[j] = b2 * v[j] + (1.0 - b2) * g * g;
                let m_hat = m[j] / bc1;
                let v_hat = v[j] / bc2;
                p[j] -= lr * m_hat / (v_hat.sqrt() + eps);
                if group.clamped() {
                    p[j] = p[j].max(0.0);
                }
            }
        }
        Ok(norm)
    }
}
