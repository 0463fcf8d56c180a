//! Optimisers: SGD with momentum and weight decay, and Adam; optional clipping of each
//! parameter's gradient to a maximum L2 norm. Both methods feed them a gradient: backprop's
//! ∂L/∂θ, or predictive coding's negated weight update −Δθ.

use crate::npz::Arrays;
use crate::sema::OptimizerConfig;
use ndarray::{ArrayD, Zip};
use std::collections::BTreeMap;

/// An optimiser with its state (momentum buffers, Adam moments and step count).
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    clip: Option<f64>,
    /// SGD: velocity; Adam: first moment.
    first: BTreeMap<String, ArrayD<f32>>,
    /// Adam: second moment.
    second: BTreeMap<String, ArrayD<f32>>,
    steps: u64,
}

/// The prefix of optimiser state arrays in checkpoints.
pub const STATE_PREFIX: &str = "optimizer.";

impl Optimizer {
    pub fn new(config: OptimizerConfig, clip: Option<f64>) -> Self {
        Optimizer {
            config,
            clip,
            first: BTreeMap::new(),
            second: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Applies one update to every parameter that has a gradient.
    pub fn step(&mut self, params: &mut Arrays, grads: &Arrays) {
        self.steps += 1;
        for (name, g) in grads {
            let Some(p) = params.get_mut(name) else {
                continue;
            };
            let scale = match self.clip {
                Some(c) => {
                    let norm = g
                        .iter()
                        .map(|&x| f64::from(x) * f64::from(x))
                        .sum::<f64>()
                        .sqrt();
                    if norm > c {
                        (c / norm) as f32
                    } else {
                        1.0
                    }
                }
                None => 1.0,
            };
            match self.config {
                OptimizerConfig::Sgd {
                    lr,
                    momentum,
                    weight_decay,
                } => {
                    let (lr, mu, wd) = (lr as f32, momentum as f32, weight_decay as f32);
                    if mu == 0.0 {
                        // p <- p - lr (g + wd p): no velocity to keep.
                        Zip::from(&mut *p)
                            .and(g)
                            .for_each(|p, &g| *p -= lr * (scale * g + wd * *p));
                        continue;
                    }
                    let v = self
                        .first
                        .entry(name.clone())
                        .or_insert_with(|| ArrayD::zeros(g.raw_dim()));
                    // v <- mu v + (g + wd p);  p <- p - lr v
                    Zip::from(&mut *p).and(&mut *v).and(g).for_each(|p, v, &g| {
                        *v = mu * *v + (scale * g + wd * *p);
                        *p -= lr * *v;
                    });
                }
                OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let t = self.steps as i32;
                    let (b1, b2) = (beta1 as f32, beta2 as f32);
                    let correction1 = 1.0 - b1.powi(t);
                    let correction2 = 1.0 - b2.powi(t);
                    let (lr, eps, wd) = (lr as f32, eps as f32, weight_decay as f32);
                    let m = self
                        .first
                        .entry(name.clone())
                        .or_insert_with(|| ArrayD::zeros(g.raw_dim()));
                    let v = self
                        .second
                        .entry(name.clone())
                        .or_insert_with(|| ArrayD::zeros(g.raw_dim()));
                    // m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
                    // p <- p - lr (m / c1) / (sqrt(v / c2) + eps)   (decoupled weight decay)
                    Zip::from(&mut *p)
                        .and(&mut *m)
                        .and(&mut *v)
                        .and(g)
                        .for_each(|p, m, v, &g| {
                            let g = scale * g;
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            let update = (*m / correction1) / ((*v / correction2).sqrt() + eps);
                            *p -= lr * (update + wd * *p);
                        });
                }
            }
        }
    }

    /// The optimiser's state as named arrays, for checkpoints.
    pub fn state(&self) -> Arrays {
        let mut out = Arrays::new();
        for (name, a) in &self.first {
            out.insert(format!("{STATE_PREFIX}first.{name}"), a.clone());
        }
        for (name, a) in &self.second {
            out.insert(format!("{STATE_PREFIX}second.{name}"), a.clone());
        }
        // Stored as two exact f32 halves so large step counts survive the round trip.
        let (hi, lo) = ((self.steps >> 24) as f32, (self.steps & 0xff_ffff) as f32);
        out.insert(
            format!("{STATE_PREFIX}steps"),
            ndarray::arr1(&[hi, lo]).into_dyn(),
        );
        out
    }

    /// Restores the state written by `state`.
    pub fn restore(&mut self, arrays: &Arrays) {
        self.first.clear();
        self.second.clear();
        for (key, a) in arrays {
            if let Some(name) = key.strip_prefix(&format!("{STATE_PREFIX}first.")) {
                self.first.insert(name.to_string(), a.clone());
            } else if let Some(name) = key.strip_prefix(&format!("{STATE_PREFIX}second.")) {
                self.second.insert(name.to_string(), a.clone());
            }
        }
        if let Some(s) = arrays.get(&format!("{STATE_PREFIX}steps")) {
            let v: Vec<f32> = s.iter().copied().collect();
            if let [hi, lo] = v.as_slice() {
                self.steps = ((*hi as u64) << 24) | (*lo as u64);
            }
        }
    }
}
