//! Optimizers over flat parameter and gradient slices, and gradient clipping.
//!
//! [`AdamW`] follows PyTorch's `torch.optim.AdamW` step for step (decoupled
//! weight decay, bias-corrected moments, ε added to the corrected √v), which
//! is what the tch trainer runs, so the two trainers follow the same
//! trajectory from the same gradients. [`Lion`] is Chen et al. (2023),
//! "Symbolic Discovery of Optimization Algorithms": the sign of an
//! interpolated momentum, with decoupled weight decay.

/// `torch.nn.utils.clip_grad_norm_`: scales `grads` so that their global L2
/// norm is at most `max_norm` (coefficient `max_norm / (norm + 1e-6)` when
/// below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grads.iter().map(|g| (*g as f64) * (*g as f64)).sum::<f64>().sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = coef as f32;
        for g in grads.iter_mut() {
            *g *= c;
        }
    }
    norm
}

/// AdamW with PyTorch's defaults for β and ε.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// β₁ (0.9).
    pub beta1: f64,
    /// β₂ (0.999).
    pub beta2: f64,
    /// ε (1e-8).
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Updates done.
    pub step: u64,
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
}

impl AdamW {
    /// Zero moments for `len` parameters.
    pub fn new(len: usize, weight_decay: f64) -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0, m: vec![0.0; len], v: vec![0.0; len] }
    }

    fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        assert!(params.len() == self.m.len() && grads.len() == self.m.len(), "optimizer of another model");
        self.step += 1;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let eps = self.eps as f32;
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            *p *= decay;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
        }
    }
}

/// Lion: `p ← p − lr·(sign(β₁m + (1−β₁)g) + λp)`, then `m ← β₂m + (1−β₂)g`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lion {
    /// β₁ (0.9).
    pub beta1: f64,
    /// β₂ (0.99).
    pub beta2: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
    /// Updates done.
    pub step: u64,
    /// Momentum.
    pub m: Vec<f32>,
}

impl Lion {
    /// Zero momentum for `len` parameters.
    pub fn new(len: usize, weight_decay: f64) -> Self {
        Self { beta1: 0.9, beta2: 0.99, weight_decay, step: 0, m: vec![0.0; len] }
    }

    fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        assert!(params.len() == self.m.len() && grads.len() == self.m.len(), "optimizer of another model");
        self.step += 1;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let (lr, wd) = (lr as f32, self.weight_decay as f32);
        for ((p, g), m) in params.iter_mut().zip(grads).zip(&mut self.m) {
            let c = b1 * *m + (1.0 - b1) * g;
            let sign = if c > 0.0 {
                1.0
            } else if c < 0.0 {
                -1.0
            } else {
                0.0
            };
            *p -= lr * (sign + wd * *p);
            *m = b2 * *m + (1.0 - b2) * g;
        }
    }
}

/// Either optimizer.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// [`AdamW`].
    AdamW(AdamW),
    /// [`Lion`].
    Lion(Lion),
}

impl Optimizer {
    /// Its name on the command line and in checkpoints: `adamw` or `lion`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::AdamW(_) => "adamw",
            Optimizer::Lion(_) => "lion",
        }
    }

    /// Updates done.
    pub fn step(&self) -> u64 {
        match self {
            Optimizer::AdamW(o) => o.step,
            Optimizer::Lion(o) => o.step,
        }
    }

    /// One update of `params` with `grads` at learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        match self {
            Optimizer::AdamW(o) => o.update(params, grads, lr),
            Optimizer::Lion(o) => o.update(params, grads, lr),
        }
    }

    /// The state to save: (name, values) of each moment buffer.
    pub fn moments(&self) -> Vec<(&'static str, &[f32])> {
        match self {
            Optimizer::AdamW(o) => vec![("m", &o.m), ("v", &o.v)],
            Optimizer::Lion(o) => vec![("m", &o.m)],
        }
    }

    /// Restores saved moments and the step count; `get(name)` gives each
    /// buffer. Refuses buffers of the wrong length.
    pub fn restore<'a>(&mut self, step: u64, get: impl Fn(&str) -> Option<&'a [f32]>) -> Result<(), String> {
        let fill = |name: &str, dst: &mut Vec<f32>| -> Result<(), String> {
            let src = get(name).ok_or_else(|| format!("the optimizer state has no `{name}`"))?;
            if src.len() != dst.len() {
                return Err(format!("the optimizer's `{name}` has {} values, the model {}", src.len(), dst.len()));
            }
            dst.copy_from_slice(src);
            Ok(())
        };
        match self {
            Optimizer::AdamW(o) => {
                fill("m", &mut o.m)?;
                fill("v", &mut o.v)?;
                o.step = step;
            }
            Optimizer::Lion(o) => {
                fill("m", &mut o.m)?;
                o.step = step;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One AdamW step by hand, as `torch.optim.AdamW` computes it.
    #[test]
    fn adamw_matches_torch_formula() {
        let mut opt = AdamW::new(2, 0.1);
        let mut p = vec![1.0f32, -2.0];
        let g = [0.5f32, -0.25];
        opt.update(&mut p, &g, 0.01);
        opt.update(&mut p, &g, 0.01);
        // Two steps by hand in f64.
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            for i in 0..2 {
                let gi = g[i] as f64;
                expect[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
                expect[i] -= 0.01 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        for i in 0..2 {
            assert!((p[i] as f64 - expect[i]).abs() < 1e-6, "{p:?} vs {expect:?}");
        }
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn lion_moves_by_the_sign() {
        let mut opt = Lion::new(3, 0.0);
        let mut p = vec![0.0f32; 3];
        opt.update(&mut p, &[2.0, -1e-6, 0.0], 0.1);
        assert_eq!(p, vec![-0.1, 0.1, 0.0]);
        assert!((opt.m[0] - 0.02).abs() < 1e-7);
    }

    #[test]
    fn clipping_scales_to_the_norm() {
        let mut g = vec![3.0f32, 4.0];
        assert!((clip_grad_norm(&mut g, 1.0) - 5.0).abs() < 1e-12);
        let n = (g[0] * g[0] + g[1] * g[1]).sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{g:?}");
        let mut small = vec![0.3f32, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }

    #[test]
    fn restore_checks_lengths() {
        let mut opt = Optimizer::AdamW(AdamW::new(3, 0.0));
        let m = [1.0f32, 2.0, 3.0];
        let short = [1.0f32];
        let err = opt.restore(7, |n| Some(if n == "m" { &m[..] } else { &short[..] })).unwrap_err();
        assert!(err.contains("`v` has 1 values, the model 3"), "{err}");
        opt.restore(7, |_| Some(&m[..])).unwrap();
        assert_eq!(opt.step(), 7);
        assert_eq!(opt.moments()[1].1, &m[..]);
    }
}
