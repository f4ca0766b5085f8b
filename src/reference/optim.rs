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
    /// given to [`AdamWRef::new`], and with [`Error::InvalidArgument`] when
    /// `lr` is not finite and ≥ 0.
    pub fn step(&mut self, params: &mut [Vec<f64>], grads: &[&[f32]], lr: f64) -> Result<f64> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(format!(
                "AdamW reference: learning rate {lr} must be finite and >= 0"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One step by hand: at t = 1, `m̂ / √v̂ = sign(g)` (up to ε), so each
    /// value moves by `lr` after its decay, whatever the clip scale.
    #[test]
    fn one_step_by_hand() {
        let groups = [
            (1, ParamGroup::Decayed),
            (1, ParamGroup::NotDecayed),
            (2, ParamGroup::Lambda),
        ];
        let mut opt = AdamWRef::new(&groups, AdamWOptions::default()).unwrap();
        let mut p = vec![vec![1.0], vec![1.0], vec![0.005, 0.5]];
        let g: [&[f32]; 3] = [&[2.0], &[-1.0], &[1.0, 1.0]];
        let norm = opt.step(&mut p, &g, 0.01).unwrap();
        assert_eq!(norm, 7f64.sqrt());
        let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        close(p[0][0], 1.0 - 0.001 - 0.01);
        close(p[1][0], 1.0 + 0.01);
        assert_eq!(p[2][0], 0.0);
        close(p[2][1], 0.49);
        // The moments hold the clipped gradient g / √7 (β as the f32 options hold them).
        let (b1, b2) = (f64::from(0.9f32), f64::from(0.99f32));
        close(opt.m[0][0], (1.0 - b1) * 2.0 / 7f64.sqrt());
        close(opt.v[0][0], (1.0 - b2) * 4.0 / 7.0);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let mut opt = AdamWRef::new(&[(2, ParamGroup::Decayed)], AdamWOptions::default()).unwrap();
        let mut p = vec![vec![0.0; 2]];
        assert!(matches!(
            opt.step(&mut p, &[&[1.0]], 0.1),
            Err(Error::Shape(_))
        ));
        assert!(matches!(opt.step(&mut p, &[], 0.1), Err(Error::Shape(_))));
        assert!(matches!(
            opt.step(&mut p, &[&[1.0, 1.0]], f64::NAN),
            Err(Error::InvalidArgument(_))
        ));
        let bad = AdamWOptions {
            eps: -1.0,
            ..AdamWOptions::default()
        };
        assert!(matches!(
            AdamWRef::new(&[(2, ParamGroup::Decayed)], bad),
            Err(Error::InvalidArgument(_))
        ));
    }
}
